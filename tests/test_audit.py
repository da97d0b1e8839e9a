"""Secrets and file modes, audited where a user would find them.

Secrets: a build at -vv with --diff prints neither the root password, nor its hash, nor the Portainer Edge
id/key of a built-in cloud-init file (init_cloudinit_default_file); in a booted guest, neither the password
typed at the emergency shell nor the Edge id/key of a cloud-init file shows in the serial log or in any
process's command line, and the files under /run/kubesolo-os that hold them are 0600 root:root.

File modes: every entry of every archive of the initramfs (parsed here, tests/initramfs_archive.py), and
every file a booted guest has on its root and its persistent mounts (busybox find over SSH): no
world-writable entry except sticky directories, no setuid/setgid file outside ALLOWED_SETID, owner 0:0.
"""

from __future__ import annotations

import gzip
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import vmctl
from conftest import BUILD_VARS, REPO, ROOT_PASSWORD, ansible_playbook, role_defaults
from contract import CONTRACT
from guest import assert_kubesolo_alive
from initramfs_archive import Archive, Entry, read_archives
from test_cloudinit import bb
from test_init_shell import _run_role

# setuid/setgid files the image may carry, with the reason. None: everything in KubeSolo OS runs as root
# (busybox-static is installed without its setuid bit; sulogin and login run as root from the init).
ALLOWED_SETID: dict[str, str] = {}

EDGE_ID_BUILT_IN = "edge-id-built-in-7f3a91"
EDGE_KEY_BUILT_IN = "edge-key-built-in-9c1e44"
EDGE_ID_MEDIUM = "edge-id-medium-5b20d7"
EDGE_KEY_MEDIUM = "edge-key-medium-e81f06"
RUNDIR_SECRETS = ("kubesolo.env", "kubesolo.args", "cloud-init.yaml")


def mode_problems(entries: list[tuple[str, int, int, int]]) -> list[str]:
    """(path, mode, uid, gid) entries that break the rules. A symlink's mode bits mean nothing (always 0777);
    setgid on a directory only makes new entries inherit its group (no privilege), so it is not a setid file."""
    problems = []
    for path, mode, uid, gid in entries:
        if stat.S_ISLNK(mode):
            continue
        perms = stat.S_IMODE(mode)
        if perms & stat.S_IWOTH and not (stat.S_ISDIR(mode) and perms & stat.S_ISVTX):
            problems.append(f"{path}: world-writable ({perms:04o})")
        if perms & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISDIR(mode) and path not in ALLOWED_SETID:
            problems.append(f"{path}: setuid/setgid ({perms:04o}) and not in ALLOWED_SETID")
        if (uid, gid) != (0, 0):
            problems.append(f"{path}: owner {uid}:{gid}, not 0:0")
    return problems


def archive_problems(archives: list[Archive]) -> list[str]:
    return [f"archive {archive.index} ({archive.compression}): {problem}"
            for archive in archives
            for problem in mode_problems([("/" + e.name, e.mode, e.uid, e.gid) for e in archive.entries])]


# --------------------------------------------------------------------------------------------
# The rules and the archive reader, on archives made here.
# --------------------------------------------------------------------------------------------

def newc(entries: list[tuple[str, int, int, int, bytes]]) -> bytes:
    """A newc archive of (name, mode, uid, gid, data) entries, padded as the kernel expects."""
    out = bytearray()
    for ino, (name, mode, uid, gid, data) in enumerate([*entries, ("TRAILER!!!", 0, 0, 0, b"")], start=1):
        raw = name.encode() + b"\0"
        fields = [ino, mode, uid, gid, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0]
        out += b"070701" + b"".join(b"%08X" % value for value in fields) + raw
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out + b"\0" * (-len(out) % 512))


def test_mode_rules_catch_each_problem_in_every_archive(tmp_path: Path) -> None:
    """Three archives (zstd, plain, gzip) with NUL padding between them, as the kernel accepts them."""
    first = newc([("tmp", stat.S_IFDIR | 0o1777, 0, 0, b""),  # sticky: fine
                  ("bin/busybox", stat.S_IFREG | 0o755, 0, 0, b"\x7fELF"),
                  ("bin/sh", stat.S_IFLNK | 0o777, 0, 0, b"busybox"),  # symlink: fine
                  ("bin/su", stat.S_IFREG | 0o4755, 0, 0, b"")])
    second = newc([("var/drop", stat.S_IFDIR | 0o777, 0, 0, b""),
                   ("etc/motd", stat.S_IFREG | 0o646, 0, 0, b"hi\n")])
    third = newc([("usr/bin/wall", stat.S_IFREG | 0o2755, 0, 5, b""),
                  ("home/user/file", stat.S_IFREG | 0o644, 1000, 0, b"")])
    raw = tmp_path / "first.cpio"
    raw.write_bytes(first)
    subprocess.run(["zstd", "-q", "-f", str(raw)], check=True)
    compressed = (tmp_path / "first.cpio.zst").read_bytes()
    image = compressed + b"\0" * (4 + -len(compressed) % 4) + second + gzip.compress(third, mtime=0)
    archives = read_archives(image)
    assert [(a.compression, len(a.entries)) for a in archives] == [("zstd", 4), ("none", 2), ("gzip", 2)]
    assert archives[0].entries[2] == Entry("bin/sh", stat.S_IFLNK | 0o777, 0, 0, 1, 0, 7, (0, 0), b"busybox")
    assert archive_problems(archives) == [
        "archive 0 (zstd): /bin/su: setuid/setgid (4755) and not in ALLOWED_SETID",
        "archive 1 (none): /var/drop: world-writable (0777)",
        "archive 1 (none): /etc/motd: world-writable (0646)",
        "archive 2 (gzip): /usr/bin/wall: setuid/setgid (2755) and not in ALLOWED_SETID",
        "archive 2 (gzip): /usr/bin/wall: owner 0:5, not 0:0",
        "archive 2 (gzip): /home/user/file: owner 1000:0, not 0:0",
    ]


# --------------------------------------------------------------------------------------------
# The built image.
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_initramfs_entries_have_safe_modes_and_root_owners(built_image) -> None:
    archives = read_archives(built_image.initramfs.read_bytes())
    # One archive per layer, each fully read: the audit saw everything the kernel unpacks.
    assert len(archives) == len(role_defaults("initramfs")["initramfs_layers_order"])
    assert sum(len(a.entries) for a in archives) > 500
    assert archive_problems(archives) == []


@pytest.fixture(scope="session")
def secrets_build(built_image):
    """The test image built again at -vv with --diff, with a built-in cloud-init file that carries an Edge
    id and key, in its own, empty build tree (the download cache is shared)."""
    other = REPO / "build" / "test-secrets"
    # From an empty tree every task that handles a secret makes a change, so its diff would be printed.
    shutil.rmtree(other, ignore_errors=True)
    other.mkdir(parents=True)
    default = other / "cloud-init.default.yaml"
    default.write_text(f'#cloud-config\nkubesolo:\n  portainer_edge_id: "{EDGE_ID_BUILT_IN}"\n'
                       f'  portainer_edge_key: "{EDGE_KEY_BUILT_IN}"\n')
    default.chmod(0o600)
    run = ansible_playbook("build.yml", "-vv", "--diff", "-e", f"@{BUILD_VARS}",
                           "-e", f"kubesolo_os_build_dir={other}", "-e", f"kubesolo_os_output_dir={other}/output",
                           "-e", f"init_cloudinit_default_file={default}")
    return other, run


@pytest.mark.slow
def test_build_at_vv_with_diff_prints_no_secret(secrets_build) -> None:
    tree, run = secrets_build
    shadow = tree / "layers" / "init" / "etc" / "shadow"
    root_hash = next(line for line in shadow.read_text().splitlines() if line.startswith("root:")).split(":")[1]
    assert root_hash.startswith("$6$")
    built_in = tree / "layers" / "init" / "usr" / "lib" / "kubesolo-os" / "cloud-init.default.yaml"
    assert EDGE_KEY_BUILT_IN in built_in.read_text(), "the built-in cloud-init file was not embedded"
    assert stat.S_IMODE(built_in.stat().st_mode) == 0o600
    output = run.result.stdout + run.result.stderr
    assert "TASK [" in output and "task path:" in output, "not a verbose run"
    secrets = {"root password": ROOT_PASSWORD, "root password hash": root_hash, "its salt": root_hash.split("$")[-2],
               "Edge id": EDGE_ID_BUILT_IN, "Edge key": EDGE_KEY_BUILT_IN}
    for what, secret in secrets.items():
        assert secret not in output, f"the build printed the {what}"
        for path in (tree / "output").iterdir():
            if path.suffix in (".json", "") and path.is_file() and path.stat().st_size < 1_000_000:
                assert secret.encode() not in path.read_bytes(), f"{path} holds the {what}"


@pytest.fixture(scope="module")
def init_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The init layer rendered by the role (as tests/test_cloudinit.py renders it)."""
    workdir = tmp_path_factory.mktemp("init-role-audit")
    _run_role(workdir, workdir / "layers")
    return workdir / "layers" / "init"


def test_kubesolo_env_is_written_0600_under_the_inits_umask(init_layer: Path, tmp_path: Path) -> None:
    """Stage 90's KubeSolo environment file holds the Edge id/key: 0600 even though the init runs with umask
    022, and neither secret is logged (cloud-init.sh's ksi_ci_kubesolo under the host's busybox sh)."""
    config = tmp_path / "edge.yaml"
    config.write_text(f"kubesolo:\n  portainer_edge_id: {EDGE_ID_MEDIUM}\n  portainer_edge_key: {EDGE_KEY_MEDIUM}\n")
    script = f'umask 022; ksi_ci_check "{config}" "$KSI_CI_FLAT" && ksi_ci_kubesolo; echo "rc=$?"'
    result = bb(init_layer, tmp_path, script)
    assert "rc=0" in result.stdout, result.stderr
    env_file = tmp_path / "kubesolo.env"
    assert env_file.read_text().splitlines() == [f"KUBESOLO_PORTAINER_EDGE_ID={EDGE_ID_MEDIUM}",
                                                 f"KUBESOLO_PORTAINER_EDGE_KEY={EDGE_KEY_MEDIUM}"]
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert EDGE_ID_MEDIUM not in result.stderr + result.stdout and EDGE_KEY_MEDIUM not in result.stderr + result.stdout


# --------------------------------------------------------------------------------------------
# A booted guest: the password typed at the emergency shell, a cloud-init file with an Edge id/key.
# --------------------------------------------------------------------------------------------

def parse_stat(output: str) -> list[tuple[str, int, int, int]]:
    """find_problems() output ('%f %u %g %n' lines) as mode_problems() entries."""
    entries = []
    for line in output.splitlines():
        mode, uid, gid, path = line.split(" ", 3)
        entries.append((path, int(mode, 16), int(uid), int(gid)))
    return entries


def find_problems(roots: list[str], busybox: str = "") -> str:
    """A busybox find command printing (as stat's '%f %u %g %n') every entry on the file systems of ROOTS
    (-xdev) that mode_problems() rejects. Run in the guest, and on the host with BUSYBOX to compare."""
    return (f"{busybox} find {' '.join(roots)} -xdev ! -type l "
            "\\( \\( -perm -0002 ! \\( -type d -perm -1000 \\) \\) -o \\( -perm -4000 -o -perm -2000 \\) ! -type d"
            f" -o ! -user 0 -o ! -group 0 \\) -exec {busybox} stat -c '%f %u %g %n' {{}} \\;").strip()


@pytest.mark.slow
def test_booted_guest_shows_no_secret_and_no_unsafe_file(boot, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "node.yaml").write_text(
        "#cloud-config\nhostname: audit-node\n"
        f"kubesolo:\n  portainer_edge_id: {EDGE_ID_MEDIUM}\n  portainer_edge_key: {EDGE_KEY_MEDIUM}\n")
    data = vmctl.make_data_disk(tmp_path / "data.img")
    medium = vmctl.make_data_disk(tmp_path / "medium.img", size_mb=16, label="KSCIMEDIA", content=media)
    vm = boot("audit", disks=(data, medium),
              append="kubesolo.data=LABEL=KSOLODATA kubesolo.shell kubesolo.cloudinit=LABEL=KSCIMEDIA:/node.yaml")
    vm.wait(r"Emergency shell \(kubesolo\.shell given\)", r"[Pp]assword", timeout=180)
    vm.type(ROOT_PASSWORD + "\r")
    vm.wait_shell_prompt()
    vm.type("exit\r")
    vm.wait_booted(timeout=300)
    vm.wait(re.escape("[kubesolo-test-double] running"), timeout=120)
    assert_kubesolo_alive(vm)

    # The Edge id/key reached KubeSolo (through its environment), so the checks below are not vacuous.
    environ = vm.ssh("tr '\\0' '\\n' </proc/$(cat /run/kubesolo-os/kubesolo.pid)/environ").stdout.splitlines()
    assert f"KUBESOLO_PORTAINER_EDGE_KEY={EDGE_KEY_MEDIUM}" in environ
    processes = vm.ssh("ps -o pid,args; for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' <$f; echo; done").stdout
    assert "kubesolo" in processes
    for secret in (ROOT_PASSWORD, EDGE_ID_MEDIUM, EDGE_KEY_MEDIUM):
        assert secret not in vm.log, f"{secret} in the serial log"
        assert secret not in processes, f"{secret} on a command line"

    # The run directory's files that hold arguments, environment and the cloud-init copy: 0600 root:root.
    modes = vm.ssh("cd /run/kubesolo-os && stat -c '%a %u %g %n' " + " ".join(RUNDIR_SECRETS)).stdout.splitlines()
    assert modes == [f"600 0 0 {name}" for name in RUNDIR_SECRETS]
    assert EDGE_KEY_MEDIUM in vm.ssh("cat /run/kubesolo-os/kubesolo.env").stdout

    # File modes on the root and on every persistent mount.
    binds = [bind["dest"] for bind in CONTRACT["bind_mounts"]]
    roots = ["/", CONTRACT["data_mount"], *binds]
    mounted = vm.ssh("cat /proc/mounts").stdout
    for point in roots[1:]:
        assert re.search(rf"^\S+ {re.escape(point)} ", mounted, re.M), f"{point} is not mounted"
    found = vm.ssh(find_problems(roots), timeout=300).stdout
    assert mode_problems(parse_stat(found)) == [], found
    # The find really looks: a world-writable file, a setuid file and a foreign owner are each reported.
    vm.ssh("touch /var/log/ww /var/log/su /var/log/owned && chmod 0666 /var/log/ww && chmod 4755 /var/log/su && "
           "chown 1000:0 /var/log/owned")
    found = vm.ssh(find_problems(["/var/log"])).stdout
    assert sorted(problem.split(":")[0] for problem in mode_problems(parse_stat(found))) == [
        "/var/log/owned", "/var/log/su", "/var/log/ww"]
    vm.ssh("rm -f /var/log/ww /var/log/su /var/log/owned")


def test_guest_find_command_agrees_with_the_python_rules(tmp_path: Path) -> None:
    """The guest's find command, run here under the host's busybox (the image's package), reports exactly
    the entries mode_problems() rejects, on a tree with one entry of each kind."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static (requirements-apt.txt) is not installed"
    tree = tmp_path / "tree"
    kinds = {"sticky": (True, 0o1777), "ww-dir": (True, 0o777), "sgid-dir": (True, 0o2755), "plain": (False, 0o644),
             "ww-file": (False, 0o666), "suid": (False, 0o4755), "sgid": (False, 0o2711), "o-w": (False, 0o602)}
    tree.mkdir()
    tree.chmod(0o755)
    for name, (is_dir, mode) in kinds.items():
        path = tree / name
        path.mkdir() if is_dir else path.write_text("")
        path.chmod(mode)
    (tree / "owned").write_text("")
    subprocess.run(["chown", "1000:0", str(tree / "owned")], check=True)
    (tree / "group").write_text("")
    subprocess.run(["chown", "0:5", str(tree / "group")], check=True)
    (tree / "link").symlink_to("plain")
    expected = sorted({problem.split(":")[0] for problem in mode_problems(
        [(str(p), p.lstat().st_mode, p.lstat().st_uid, p.lstat().st_gid) for p in [tree, *tree.iterdir()]])})
    assert expected == sorted(str(tree / name) for name in ("ww-dir", "ww-file", "suid", "sgid", "o-w", "owned",
                                                            "group"))
    found = subprocess.run([busybox, "sh", "-c", find_problems([str(tree)], busybox)], capture_output=True,
                           text=True, timeout=60, check=True).stdout
    assert sorted(path for path, *_ in parse_stat(found)) == expected
    assert sorted({problem.split(":")[0] for problem in mode_problems(parse_stat(found))}) == expected
