"""The A/B slot code of the image (roles/init: slot.sh, kubesolo-slot, stage 10) on the build host.

- GRUB's environment block: what the init's sh writes, `grub-editenv` reads, and the other way round
  (grub-common is on the build host); unknown keys survive; a value that is not allowed is refused and
  never evaluated; the block stays 1024 bytes.
- `kubesolo-slot` against real loop devices (the slots) with a stand-in sysfs naming them like GPT
  partitions and a directory for the ESP (the host kernel cannot mount FAT; the QEMU tests in
  test_upgrade.py use the real ESP): write + verify by reading back, the refusals (image larger than the
  slot, wrong SHA256, unknown slot, booted/active slot, no slots), arm, mark-good, switch.
- The health checks of the trial-boot watchdog against stand-in /proc files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from loopdev import LoopDevices, sh
from test_init_shell import BUSYBOX, LIBDIR, _run_role

GRUB_EDITENV = shutil.which("grub-editenv")
pytestmark = pytest.mark.skipif(BUSYBOX is None or GRUB_EDITENV is None, reason="busybox or grub-editenv missing")


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("slot-role")
    _run_role(workdir, workdir / "layers")
    return workdir / "layers" / "init" / LIBDIR


def bbsh(lib: Path, script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """SCRIPT under busybox sh with functions.sh and slot.sh sourced."""
    full = {"PATH": os.environ["PATH"], "KSI_LOG_CONSOLES": "", **(env or {})}
    return subprocess.run([BUSYBOX, "sh", "-c", f'. "{lib}/functions.sh"\n. "{lib}/slot.sh"\n{script}', "sh", *args],
                          capture_output=True, text=True, env=full, timeout=60, check=False)


def editenv(path: Path, *args: str) -> str:
    result = subprocess.run([GRUB_EDITENV, str(path), *args], capture_output=True, text=True, timeout=30, check=True)
    return result.stdout


def env_list(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in editenv(path, "list").splitlines())


WRITE = """
KSE_OTHER=
ksi_env_read "$1" >/dev/null 2>&1
KSE_ACTIVE=B KSE_TRIAL=A KSE_TRIES=1 KSE_A_VERSION=0.2.0 KSE_B_VERSION=0.1.0
KSE_LAST_RESULT=upgraded KSE_LAST_VERSION=0.1.0
ksi_env_write "$1" || { echo "$KSE_ERROR" >&2; exit 1; }
"""

READ = """
ksi_env_read "$1"; rc=$?
echo "rc=$rc"
echo "active=$KSE_ACTIVE trial=$KSE_TRIAL tries=$KSE_TRIES a=$KSE_A_VERSION b=$KSE_B_VERSION \
last=$KSE_LAST_RESULT/$KSE_LAST_VERSION"
echo "error=$KSE_ERROR"
"""


def test_grubenv_written_by_sh_is_read_by_grub_editenv(lib: Path, tmp_path: Path) -> None:
    env = tmp_path / "grubenv"
    editenv(env, "create")
    result = bbsh(lib, WRITE, str(env))
    assert result.returncode == 0, result.stderr
    data = env.read_bytes()
    assert len(data) == 1024
    assert data.startswith(b"# GRUB Environment Block\n") and data.endswith(b"#")
    assert env_list(env) == {
        "KSOLO_ACTIVE": "B", "KSOLO_TRIAL": "A", "KSOLO_TRIAL_TRIES": "1", "KSOLO_A_VERSION": "0.2.0",
        "KSOLO_B_VERSION": "0.1.0", "KSOLO_LAST_RESULT": "upgraded", "KSOLO_LAST_VERSION": "0.1.0"}
    # GRUB's own writer (what save_env does at boot) then ours again: both keep the other's keys.
    editenv(env, "set", "KSOLO_TRIAL_TRIES=0", "saved_entry=kubesolo-debug")
    result = bbsh(lib, READ, str(env))
    assert "rc=0" in result.stdout and "tries=0" in result.stdout and "active=B" in result.stdout, result.stdout
    assert bbsh(lib, WRITE, str(env)).returncode == 0
    assert env_list(env)["saved_entry"] == "kubesolo-debug"
    assert len(env.read_bytes()) == 1024
    assert not (tmp_path / "grubenv.new").exists()


def test_grubenv_written_by_grub_editenv_is_read_by_sh(lib: Path, tmp_path: Path) -> None:
    env = tmp_path / "grubenv"
    editenv(env, "create")
    editenv(env, "set", "KSOLO_ACTIVE=A", "KSOLO_TRIAL=B", "KSOLO_TRIAL_TRIES=2", "KSOLO_A_VERSION=1.0",
            "KSOLO_B_VERSION=1.1-rc1", "KSOLO_LAST_RESULT=rolled-back", "KSOLO_LAST_VERSION=1.1-rc1")
    result = bbsh(lib, READ, str(env))
    assert result.stdout.splitlines()[:2] == [
        "rc=0", "active=A trial=B tries=2 a=1.0 b=1.1-rc1 last=rolled-back/1.1-rc1"], result.stdout


def test_grubenv_values_are_data(lib: Path, tmp_path: Path) -> None:
    """A value that is not allowed is refused naming it, and nothing in the file is ever run."""
    env = tmp_path / "grubenv"
    marker = tmp_path / "ran"
    editenv(env, "create")
    editenv(env, "set", "KSOLO_ACTIVE=C", f"KSOLO_A_VERSION=$(touch {marker})", "KSOLO_TRIAL_TRIES=9",
            f"other=`touch {marker}`")
    result = bbsh(lib, READ, str(env))
    assert "rc=2" in result.stdout
    assert "KSOLO_ACTIVE='C' is not valid" in result.stdout and "KSOLO_TRIAL_TRIES='9' is not valid" in result.stdout
    assert "active=A" in result.stdout and "a= " in result.stdout
    # Writing keeps the unknown key verbatim, still unevaluated.
    assert bbsh(lib, WRITE, str(env)).returncode == 0
    assert env_list(env)["other"] == f"`touch {marker}`"
    assert not marker.exists()


def test_grubenv_refuses_what_does_not_fit_and_keeps_the_old_block(lib: Path, tmp_path: Path) -> None:
    env = tmp_path / "grubenv"
    editenv(env, "create")
    editenv(env, "set", *(f"k{i}={'x' * 60}" for i in range(14)))
    before = env.read_bytes()
    result = bbsh(lib, WRITE, str(env))
    assert result.returncode == 1
    assert "more than the 1024 of a GRUB environment block" in result.stderr
    assert env.read_bytes() == before


def test_grubenv_missing_or_foreign_file(lib: Path, tmp_path: Path) -> None:
    assert "is missing" in bbsh(lib, READ, str(tmp_path / "none")).stdout
    other = tmp_path / "other"
    other.write_text("KSOLO_ACTIVE=B\n")
    result = bbsh(lib, READ, str(other))
    assert "rc=1" in result.stdout and "is not a GRUB environment block" in result.stdout


# --------------------------------------------------------------------------------------------
# kubesolo-slot against loop devices
# --------------------------------------------------------------------------------------------
class Node:
    """Two loop devices as slots A and B, a stand-in sysfs naming them, an ESP directory, a run directory."""

    def __init__(self, lib: Path, root: Path, loops: LoopDevices, slot_mib: int = 8) -> None:
        self.lib = lib
        self.root = root
        self.sysfs = root / "sysfs"
        self.run = root / "run"
        (self.run / "esp" / "grub").mkdir(parents=True)
        self.env = self.run / "esp" / "grub" / "grubenv"
        editenv(self.env, "create")
        editenv(self.env, "set", "KSOLO_ACTIVE=A", "KSOLO_TRIAL=", "KSOLO_TRIAL_TRIES=0", "KSOLO_A_VERSION=0.1.0",
                "KSOLO_B_VERSION=", "KSOLO_LAST_RESULT=installed", "KSOLO_LAST_VERSION=0.1.0")
        self.devs = {}
        for slot, name in (("A", "KSOLO_A"), ("B", "KSOLO_B"), ("E", "KSOLOEFI")):
            dev = loops.add(slot_mib if slot != "E" else 1)
            self.devs[slot] = dev
            kname = Path(dev).name
            real = self.sysfs / "devices" / "disk0" / kname
            real.mkdir(parents=True)
            (real / "uevent").write_text(f"MAJOR=7\nMINOR=0\nDEVNAME={kname}\nDEVTYPE=partition\nPARTNAME={name}\n")
            (real / "size").write_text(f"{slot_mib * 2048 if slot != 'E' else 2048}\n")
            (self.sysfs / kname).symlink_to(real)
        self.booted("A")

    def booted(self, slot: str, trial: bool = False) -> None:
        self.run.mkdir(exist_ok=True)
        (self.run / "slot-state").write_text(f"booted={slot}\ntrial_boot={int(trial)}\n")

    def slot(self, *args: str, stdin: bytes = b"", proc: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        env = {"PATH": os.environ["PATH"], "KSI_TEST_LIBDIR": str(self.lib), "KSI_TEST_RUNDIR": str(self.run),
               "KSI_TEST_ESP_DIR": "1", "KSI_SLOT_SYSFS": str(self.sysfs),
               "KSI_OS_RELEASE": str(self.root / "os-release"), **({"KSI_PROC": str(proc)} if proc else {})}
        (self.root / "os-release").write_text("NAME=KubeSolo OS\nVERSION_ID=0.1.0\n")
        return subprocess.run([BUSYBOX, "sh", str(self.lib / "kubesolo-slot"), *args], input=stdin,
                              capture_output=True, env=env, timeout=120, check=False)


@pytest.fixture
def node(lib: Path, tmp_path: Path):
    loops = LoopDevices(tmp_path, "slot")
    try:
        yield Node(lib, tmp_path, loops)
    finally:
        loops.cleanup()


def slot_image(tmp_path: Path, version: str, filler_mib: int = 1) -> tuple[bytes, str]:
    """A squashfs slot image with /boot/version (as the build makes, with random filler)."""
    tree = tmp_path / f"tree-{version}"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot" / "version").write_text(version + "\n")
    (tree / "boot" / "filler").write_bytes(os.urandom(filler_mib * 1024 * 1024))
    image = tmp_path / f"slot-{version}.img"
    sh("mksquashfs", str(tree), str(image), "-noappend", "-quiet", "-no-progress")
    data = image.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def kv(result: subprocess.CompletedProcess[bytes]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in result.stdout.decode().splitlines() if "=" in line)


def test_status(node: Node) -> None:
    result = node.slot("status")
    assert result.returncode == 0, result.stderr
    state = kv(result)
    assert state["booted"] == "A" and state["active"] == "A" and state["a_version"] == "0.1.0"
    assert state["b_version"] == "" and state["last_result"] == "installed"
    assert state["b_bytes"] == str(8 * 1024 * 1024) and state["b_device"] == node.devs["B"]
    assert (node.run / "slot-state").read_text() == result.stdout.decode()


def test_write_verify_arm_mark_good_switch(node: Node, tmp_path: Path) -> None:
    data, digest = slot_image(tmp_path, "0.2.0")
    result = node.slot("write", "B", str(len(data)), digest, "0.2.0", stdin=data)
    assert result.returncode == 0, result.stderr
    assert kv(result) == {"changed": "yes", "slot": "B", "version": "0.2.0", "bytes": str(len(data)), "sha256": digest}
    assert Path(node.devs["B"]).read_bytes()[: len(data)] == data
    assert env_list(node.env)["KSOLO_B_VERSION"] == "0.2.0"

    result = node.slot("arm", "B")
    assert result.returncode == 0, result.stderr
    env = env_list(node.env)
    assert (env["KSOLO_ACTIVE"], env["KSOLO_TRIAL"], env["KSOLO_TRIAL_TRIES"]) == ("A", "B", "1")
    assert (env["KSOLO_LAST_RESULT"], env["KSOLO_LAST_VERSION"]) == ("", "0.2.0")

    # The trial boot of B: GRUB decremented the tries; marking good makes B the active slot.
    editenv(node.env, "set", "KSOLO_TRIAL_TRIES=0")
    node.booted("B", trial=True)
    result = node.slot("mark-good")
    assert result.returncode == 0, result.stderr
    env = env_list(node.env)
    assert (env["KSOLO_ACTIVE"], env["KSOLO_TRIAL"], env["KSOLO_LAST_RESULT"]) == ("B", "", "upgraded")
    assert kv(node.slot("mark-good"))["changed"] == "no"

    result = node.slot("switch")
    assert result.returncode == 0, result.stderr
    env = env_list(node.env)
    assert (env["KSOLO_ACTIVE"], env["KSOLO_LAST_RESULT"], env["KSOLO_LAST_VERSION"]) == ("A", "switched", "0.1.0")


def test_write_refusals(node: Node, tmp_path: Path) -> None:
    data, digest = slot_image(tmp_path, "0.2.0")

    def refused(*args: str, stdin: bytes = b"") -> str:
        result = node.slot(*args, stdin=stdin)
        assert result.returncode == 1, result
        return result.stderr.decode()

    assert "unknown slot 'C': the slots are A and B" in refused("write", "C", "1", digest)
    assert "slot A is the slot this system booted from" in refused("write", "A", str(len(data)), digest, stdin=data)
    too_big = 9 * 1024 * 1024
    message = refused("write", "B", str(too_big), digest)
    assert f"the slot image ({too_big} bytes, 9 MiB) is larger than slot B ({node.devs['B']}, 8388608 bytes, 8 MiB)" \
        in message
    assert "is not a SHA256" in refused("write", "B", str(len(data)), "abc")
    # A corrupted transfer: the write-back read does not match; the slot stays marked empty.
    editenv(node.env, "set", "KSOLO_B_VERSION=0.0.9")
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    message = refused("write", "B", str(len(data)), digest, stdin=bytes(bad))
    assert "wrong SHA256 after write-back read" in message and digest in message
    assert env_list(node.env)["KSOLO_B_VERSION"] == ""
    assert "input cut short" in refused("write", "B", str(len(data)), digest, stdin=data[:1000])
    assert "holds version 0.2.0, expected 0.3.0" in refused("write", "B", str(len(data)), digest, "0.3.0", stdin=data)
    assert "holds no verified image" in refused("arm", "B")
    assert "nothing to switch to" in refused("switch")
    assert kv(node.slot("mark-good"))["changed"] == "no"  # booted A is the active slot already
    node.booted("B")
    assert "slot B is not on trial (active slot A, trial '')" in refused("mark-good")


def test_no_slots_on_this_medium(node: Node) -> None:
    shutil.rmtree(node.sysfs)
    node.sysfs.mkdir()
    result = node.slot("status")
    assert result.returncode == 1
    assert "no slots on this boot medium (no GPT partition named KSOLO_A)" in result.stderr.decode()


# --------------------------------------------------------------------------------------------
# Health checks of the watchdog, os-release
# --------------------------------------------------------------------------------------------
TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


@pytest.mark.parametrize(("tcp", "tcp6", "listening"), [
    ("   0: 00000000:192B 00000000:0000 0A 0 0\n", "", True),
    ("   0: 0100007F:192B 00000000:0000 0A 0 0\n", "", True),
    ("", "   0: 00000000000000000000000000000000:192B 00000000000000000000000000000000:0000 0A 0\n", True),
    ("   0: 0100007F:192B 0100007F:A000 01 0 0\n", "", False),  # a connection, not a listener
    ("   0: 0A00020F:192B 00000000:0000 0A 0 0\n", "", False),  # only on 10.0.2.15
    ("   0: 00000000:192C 00000000:0000 0A 0 0\n", "", False),
])
def test_health_port(lib: Path, tmp_path: Path, tcp: str, tcp6: str, listening: bool) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(TCP_HEADER + tcp)
    (tmp_path / "net" / "tcp6").write_text(TCP_HEADER + tcp6)
    result = bbsh(lib, "ksi_health_port 6443", env={"KSI_PROC": str(tmp_path)})
    assert (result.returncode == 0) == listening


@pytest.mark.parametrize(("cmdline", "handed_over"), [
    (b"/bin/sh\0/sbin/init\0", False),
    (b"/bin/sh\0/init\0", False),
    (b"/bin/busybox\0init\0", True),
    (b"/usr/local/bin/kubesolo\0--path=/var/lib/kubesolo\0", True),
])
def test_health_handover(lib: Path, tmp_path: Path, cmdline: bytes, handed_over: bool) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "cmdline").write_bytes(cmdline)
    (tmp_path / "mounts").write_text("/dev/vda5 /mnt/data ext4 rw 0 0\n")
    result = bbsh(lib, "ksi_health_missing", env={"KSI_PROC": str(tmp_path)})
    missing = result.stdout.split()
    assert ("handover" not in missing) == handed_over
    assert "data-partition" not in missing and "port-6443" in missing


def test_health_data_is_not_the_ram_fallback(lib: Path, tmp_path: Path) -> None:
    (tmp_path / "mounts").write_text("tmpfs /mnt/data tmpfs rw 0 0\n")
    assert bbsh(lib, "ksi_health_data", env={"KSI_PROC": str(tmp_path)}).returncode == 1


def test_os_release_slot(lib: Path, tmp_path: Path) -> None:
    release = tmp_path / "os-release"
    release.write_text('NAME="KubeSolo OS"\nVERSION_ID=0.1.0\nKUBESOLO_OS_SLOT=A\n')
    script = 'ksi_slot_os_release B && ksi_running_version'
    result = bbsh(lib, script, env={"KSI_OS_RELEASE": str(release)})
    assert result.stdout.strip() == "0.1.0"
    assert release.read_text() == 'NAME="KubeSolo OS"\nVERSION_ID=0.1.0\nKUBESOLO_OS_SLOT=B\n'


def test_cmdline_slot_parameters(lib: Path) -> None:
    script = 'ksi_parse_cmdline "$1"; echo "slot=$KSI_BOOT_SLOT trial=$KSI_BOOT_TRIAL"; env | grep -c KSI_BOOT || true'
    result = bbsh(lib, script, "quiet kubesolo.slot=B kubesolo.trial panic=10")
    assert result.stdout.split() == ["slot=B", "trial=1", "0"]  # not exported: KubeSolo never sees them
    result = bbsh(lib, script, "kubesolo.slot=C")
    assert result.stdout.split()[0] == "slot=" and "kubesolo.slot='C' is not A or B" in result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck(lib: Path) -> None:
    files = [lib / "slot.sh", lib / "kubesolo-slot", lib / "init.d" / "10-parse-cmdline.sh"]
    result = subprocess.run(["shellcheck", "-s", "sh", *map(str, files)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout


def test_health_command(node: Node, tmp_path: Path) -> None:
    """`kubesolo-slot health`, the play's gate: the same checks as the node's watchdog, plus the slot decision."""
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "net").mkdir()
    (proc / "1" / "cmdline").write_bytes(b"/bin/busybox\0init\0")
    (proc / "mounts").write_text("/dev/vda5 /mnt/data ext4 rw 0 0\n")
    (proc / "net" / "tcp").write_text(TCP_HEADER + "   0: 00000000:192B 00000000:0000 0A 0 0\n")
    (proc / "net" / "tcp6").write_text(TCP_HEADER)
    node.booted("B", trial=True)
    (node.run / "slot-state").write_text("booted=B\ntrial_boot=1\nactive=A\n")
    result = node.slot("health", proc=proc)
    assert (result.returncode, kv(result)) == (1, {"healthy": "no", "missing": "slot-decision"})
    (node.run / "slot-state").write_text("booted=B\ntrial_boot=1\nactive=B\n")
    assert node.slot("health", proc=proc).returncode == 0
    result = node.slot("health", "--port", "6444", "port", "data", proc=proc)
    assert kv(result) == {"healthy": "no", "missing": "port-6444"}
    assert "unknown health check 'kubelet'" in node.slot("health", "kubelet", proc=proc).stderr.decode()
