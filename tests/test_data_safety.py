"""Data safety of the boot's own writes (issue 15): what the init writes on KSOLODATA.

Item 3: with a full data partition, the KubeSolo config, write_files and the saved hostname keep their
old content (never 0 bytes) and each failed write is a [WARN]. The real stage code (rendered by the init
role) runs under the host's busybox on a real, full ext4 file system mounted at /etc/kubesolo inside a
private mount and UTS namespace (so the host's /etc and hostname are never touched).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from contract import persistent_dirs
from test_init_shell import _run_role

BUSYBOX = shutil.which("busybox")
LIBDIR = "usr/lib/kubesolo-os"

pytestmark = pytest.mark.skipif(BUSYBOX is None or shutil.which("unshare") is None,
                                reason="needs busybox and unshare")


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("init-role-safety")
    _run_role(workdir, workdir / "layers")
    return workdir / "layers" / "init"


OLD = {"config.yaml": "old: config\n", "hostname": "old-name\n", "motd": "old motd\n"}
CLOUD_INIT = """hostname: new-name
write_files:
  - path: /etc/kubesolo/motd
    content: |
      a new message of the day that does not fit
kubesolo:
  config: |
    new: config
"""


def test_full_data_partition_keeps_the_old_files_and_warns(layer: Path, tmp_path: Path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for name, text in OLD.items():
        (tree / name).write_text(text)
    image = tmp_path / "data.ext4"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "1024", "-m", "0", "-d", str(tree), str(image), "2M"],
                   check=True, capture_output=True, timeout=60)
    (tmp_path / "ci.yaml").write_text(CLOUD_INIT)
    lib = layer / LIBDIR
    script = f"""
. "{lib}/functions.sh"
KSI_LIBDIR="{lib}"
KSI_RUNDIR="{tmp_path}/run"
mkdir -p "$KSI_RUNDIR"
. "{lib}/cloud-init.sh"
KSI_CI_FLAT="$KSI_RUNDIR/flat"
ksi_ci_check "{tmp_path}/ci.yaml" "$KSI_CI_FLAT" ci.yaml || echo INVALID
ksi_ci_files
ksi_ci_kubesolo
KUBESOLO_IFACE=lo
. "{lib}/init.d/60-hostname.sh"
"""
    (tmp_path / "script.sh").write_text(script)
    inner = (f"mount -t tmpfs none /etc && mkdir /etc/kubesolo && mount -o loop {image} /etc/kubesolo && "
             # Fill the file system completely (root's reserve is 0: -m 0). ext4 reserves blocks for delayed
             # allocation while dd writes and gives some back at writeback: fill again after each sync.
             "for i in 1 2 3 4 5 6 7 8 9 10; do dd if=/dev/zero of=/etc/kubesolo/filler$i bs=1k 2>/dev/null; sync; "
             "[ \"$(df -k --output=avail /etc/kubesolo | tail -n 1)\" -gt 0 ] || break; done; "
             "echo \"free-kib=$(df -k --output=avail /etc/kubesolo | tail -n 1)\"; "
             f"{BUSYBOX} sh {tmp_path}/script.sh; umount /etc/kubesolo")
    result = subprocess.run(["unshare", "-m", "-u", "--propagation", "private", "sh", "-c", inner],
                            capture_output=True, text=True, timeout=120, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                                                "KSI_LOG_CONSOLES": ""}, check=False)
    assert "INVALID" not in result.stdout, result.stderr
    assert re.search(r"^free-kib=\s*0$", result.stdout, re.M), ("the data file system was not full", result.stdout)
    log = result.stderr
    assert "[WARN] cloud-init line 3: write_files[0]: cannot write /etc/kubesolo/motd" in log, log
    assert "[WARN] cloud-init: cannot write /etc/kubesolo/config.yaml" in log, log
    assert "[WARN] Cannot save the hostname to /etc/kubesolo/hostname" in log, log
    assert "wrote /etc/kubesolo" not in log and "Saved the hostname" not in log
    # The file system: every old file intact, no temporary file left behind, and it is clean.
    for name, text in OLD.items():
        content = subprocess.run(["debugfs", "-R", f"cat /{name}", str(image)], capture_output=True, text=True,
                                 check=True).stdout
        assert content == text, name
    listing = subprocess.run(["debugfs", "-R", "ls -p /", str(image)], capture_output=True, text=True,
                             check=True).stdout
    assert ".new" not in listing, listing
    subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, check=True)


def test_atomic_write_replaces_the_file_when_there_is_room(layer: Path, tmp_path: Path):
    target = tmp_path / "dir" / "file"
    target.parent.mkdir()
    target.write_text("old\n")
    script = (f'. "{layer / LIBDIR}/functions.sh"; KSI_RUNDIR="{tmp_path}/run"; '
              f'printf "new\\n" | ksi_write_atomic "{target}" 0640; echo "rc=$?"')
    result = subprocess.run([BUSYBOX, "sh", "-c", script], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "KSI_LOG_CONSOLES": ""}, check=False)
    assert result.stdout.strip() == "rc=0", result.stderr
    assert target.read_text() == "new\n" and target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["file"]


# --------------------------------------------------------------------------------------------
# Item 7: the old network/interfaces.sh is data to migrate, never a script to run
# --------------------------------------------------------------------------------------------
LEGACY = Path(__file__).parent / "fixtures" / "legacy-network"  # exactly what the old ksolodata role wrote


def migrate(layer: Path, tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    legacy = tmp_path / "interfaces.sh"
    legacy.write_bytes(text.encode())
    lib = layer / LIBDIR
    script = (f'. "{lib}/functions.sh"; KSI_LIBDIR="{lib}"; KSI_RUNDIR="{tmp_path}"; . "{lib}/cloud-init.sh"; '
              f'ksi_net_migrate "{legacy}"')
    return subprocess.run([BUSYBOX, "sh", "-c", script], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "KSI_LOG_CONSOLES": ""}, check=False)


def _data(text: str) -> dict:
    import yaml
    from ansible_collections.kubesolo.os.plugins.module_utils import cloudinit
    from conftest import REPO

    schema = cloudinit.load_schema(yaml.safe_load((REPO / "files" / "cloud-init-schema.yml").read_text()),
                                    yaml.safe_load((REPO / "files" / "kubesolo-flags.yml").read_text()),
                                    persistent_dirs())
    result = cloudinit.check(text.encode(), schema)
    assert result.valid, result.flat()
    return result.data()


def test_migrates_what_the_old_role_wrote_even_with_crlf(layer: Path, tmp_path: Path):
    text = (LEGACY / "static.sh").read_text()
    for variant in (text, text.replace("\n", "\r\n")):
        result = migrate(layer, tmp_path, variant)
        assert result.returncode == 0, result.stderr
        assert _data(result.stdout) == {"network": {"interfaces": [
            {"name": "eth0", "addresses": ["10.0.2.15/24"], "gateway": "10.0.2.2",
             "dns": ["10.0.2.3", "10.0.2.4"]}]}}
    # The interface left to stage 50's choice becomes the primary entry (no name).
    picked = text.replace("KUBESOLO_IFACE=eth0", "KUBESOLO_IFACE=$(ksi_net_pick) || return 1")
    result = migrate(layer, tmp_path, picked)
    assert _data(result.stdout)["network"]["interfaces"] == [
        {"addresses": ["10.0.2.15/24"], "gateway": "10.0.2.2", "dns": ["10.0.2.3", "10.0.2.4"]}]
    # DHCP on the picked interface is the default: nothing to write.
    result = migrate(layer, tmp_path, (LEGACY / "dhcp.sh").read_text())
    assert result.returncode == 0 and result.stdout == "", result.stderr
    named = (LEGACY / "dhcp.sh").read_text().replace("KUBESOLO_IFACE=$(ksi_net_pick) || return 1",
                                                     "KUBESOLO_IFACE=eth1")
    assert _data(migrate(layer, tmp_path, named).stdout) == {
        "network": {"interfaces": [{"name": "eth1", "dhcp": "true"}]}}


@pytest.mark.parametrize("text, line", [
    # Hand-written scripts: never run, never migrated; the first foreign line is named.
    ("ip addr add 10.0.2.15/24 dev eth0\nreturn 0\n", 1),
    ("KUBESOLO_IFACE=eth0\r\nip link set \"$KUBESOLO_IFACE\" up || return 1\r\nif [ \"$x\" -eq 1\r\n", 3),
    ("KUBESOLO_IFACE='unterminated\n", 1),
    ("KUBESOLO_IFACE=eth0\ntouch /run/pwned\nreturn 0\n", 2),
    ("KUBESOLO_IFACE=eth0;reboot\n", 1),
    ("echo \"nameserver 1.1.1.1\" >>/etc/resolv.conf\nreturn 0\n", 0),  # neither static nor DHCP
])
def test_anything_else_is_refused_without_running_it(layer: Path, tmp_path: Path, text: str, line: int):
    result = migrate(layer, tmp_path, text)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == str(line)
    assert not Path("/run/pwned").exists()


@pytest.mark.parametrize("name, valid", [
    ("a" * 63, True),
    ("a" * 64, False),  # one label of 64
    ("a" * 40 + "." + "b" * 23, True),  # 64 in all
    ("a" * 40 + "." + "b" * 24, False),  # 65 in all: sethostname refuses it
])
def test_saved_hostname_longer_than_the_kernel_allows_is_refused(layer: Path, name: str, valid: bool):
    """Item 10, stage 60's check of a saved name (the parsers' check is in the cloud-init fixtures)."""
    result = subprocess.run([BUSYBOX, "sh", "-c", f'. "{layer / LIBDIR}/functions.sh"; ksi_valid_hostname "$1"',
                             "sh", name], capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "KSI_LOG_CONSOLES": ""}, check=False)
    assert (result.returncode == 0) is valid
