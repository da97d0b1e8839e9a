"""Boot tests of issue 15 (QEMU TCG, user networking restrict=on): data on KSOLODATA is never executed
by PID 1, and the boot never guesses between data devices.

Item 7: an old network/interfaces.sh is read as text: one that the ksolodata role of earlier releases
wrote is migrated to network/network.yaml (data) and applied; anything else (CRLF, a syntax error, a
command) is refused with a [WARN] and never run, and the boot goes on (with DHCP).
Item 5: two partitions labelled KSOLODATA: an [ERROR] naming both and how to choose; nothing mounted.
Item 6: a read-only data device is reported as read-only, not as an e2fsck failure.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
import vmctl
from contract import HANDOVER_MARKER
from guest import assert_kubesolo_alive

pytestmark = pytest.mark.slow

OK90 = re.escape(HANDOVER_MARKER)
LEGACY = Path(__file__).parent / "fixtures" / "legacy-network"


def disk_with(tmp_path: Path, name: str, files: dict[str, bytes], **kwargs) -> Path:
    tree = tmp_path / f"{name}-tree"
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    return vmctl.make_data_disk(tmp_path / f"{name}.img", content=tree, **kwargs)


def debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True,
                          check=True).stdout


def test_hand_written_interfaces_script_is_refused_and_never_run(boot, tmp_path):
    # CRLF line ends and an unterminated quote: sourced by PID 1 this ended the init shell (a panic).
    script = b"touch /run/pwned\r\nKUBESOLO_IFACE=eth0\r\nif [ \"$x\" -eq 1\r\necho 'unterminated\r\n"
    disk = disk_with(tmp_path, "legacy-bad", {"network/interfaces.sh": script})
    vm = boot("legacy-bad", disks=(disk,), append="kubesolo.data=LABEL=KSOLODATA")
    vm.wait_booted(timeout=300)
    assert_kubesolo_alive(vm)
    log = vm.log
    assert ("[WARN] /mnt/data/network/interfaces.sh is refused: it is never executed (PID 1 runs nothing from the "
            "data partition) and line 1 is not what earlier releases wrote") in log
    vm.wait_ssh()
    assert vm.ssh("test -e /run/pwned && echo RAN || echo never-ran").stdout.strip() == "never-ran"
    # DHCP took over; the file is left as it was.
    assert "10.0.2.15/24" in vm.ssh("ip -4 -o addr show dev eth0").stdout
    assert vm.ssh("sha256sum /mnt/data/network/interfaces.sh").stdout.split()[0] == hashlib.sha256(script).hexdigest()
    assert vm.ssh("test -e /mnt/data/network/network.yaml || echo absent").stdout.strip() == "absent"


def test_interfaces_script_of_the_old_role_is_migrated_to_data(boot, tmp_path):
    legacy = (LEGACY / "static.sh").read_bytes().replace(b"\n", b"\r\n")  # edited on Windows: CRLF
    disk = disk_with(tmp_path, "legacy-role", {"network/interfaces.sh": legacy})
    vm = boot("legacy-role", disks=(disk,), append="kubesolo.data=LABEL=KSOLODATA")
    vm.wait_booted(timeout=300)
    assert_kubesolo_alive(vm)
    log = vm.log
    assert ("[WARN] Migrated /mnt/data/network/interfaces.sh (never executed) to /mnt/data/network/network.yaml; "
            "the old file is kept as /mnt/data/network/interfaces.sh.migrated") in log
    assert "Applying the saved network settings /mnt/data/network/network.yaml" in log
    vm.wait_ssh()
    assert vm.ssh("pidof udhcpc || echo none").stdout.strip() == "none"
    assert "default via 10.0.2.2 dev eth0" in vm.ssh("ip -4 route").stdout
    assert vm.ssh("cat /etc/resolv.conf").stdout == "nameserver 10.0.2.3\nnameserver 10.0.2.4\n"
    vm.ssh("poweroff", check=False)
    vm.wait_exit(timeout=90)
    saved = debugfs(disk, "cat /network/network.yaml")
    assert "    - name: eth0\n      addresses: [10.0.2.15/24]\n      gateway: 10.0.2.2\n" in saved
    migrated = subprocess.run(["debugfs", "-R", "cat /network/interfaces.sh.migrated", str(disk)], capture_output=True,
                              check=True).stdout
    assert migrated == legacy
    assert "interfaces.sh " not in debugfs(disk, "ls -l /network") + " "


def test_two_data_partitions_are_refused_naming_both(boot, tmp_path):
    first = disk_with(tmp_path, "first", {"marker": b"first\n"})
    second = disk_with(tmp_path, "second", {"marker": b"second\n"})
    uuids = [subprocess.run(["blkid", "-o", "value", "-s", "UUID", str(d)], capture_output=True, text=True,
                            check=True).stdout.strip() for d in (first, second)]
    vm = boot("twodata", ssh=False, disks=(first,), readonly_disks=[second], append="kubesolo.data=LABEL=KSOLODATA")
    vm.allow_errors(r"Several devices match LABEL=KSOLODATA: ", r"Stage 20-persistent-mount\.sh failed")
    text = vm.wait(r"\[ERROR\] Several devices match LABEL=KSOLODATA: .*",
                   r"\[ERROR\] Stage 20-persistent-mount\.sh failed", errors_fail=False, timeout=240)
    line = re.search(r"\[ERROR\] Several devices match LABEL=KSOLODATA: (.*)", text).group(1)
    assert f"/dev/vda (UUID={uuids[0]}, 256 MiB)" in line and f"/dev/vdb (UUID={uuids[1]}, 256 MiB, read-only)" in line
    assert re.search(r"boot with kubesolo\.data=UUID=(\S+) or kubesolo\.data=UUID=(\S+), or remove the label", line)
    assert set(re.search(r"boot with kubesolo\.data=UUID=(\S+) or kubesolo\.data=UUID=(\S+),", line).groups()) == \
        set(uuids)
    assert HANDOVER_MARKER not in vm.log and "Mounted /dev/vd" not in vm.log
    vm.stop()
    for disk in (first, second):
        subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True, check=True)


def test_read_only_data_device_is_reported_as_read_only(boot, tmp_path):
    disk = disk_with(tmp_path, "ro", {"marker": b"ro\n"})
    vm = boot("rodata", ssh=False, readonly_disks=[disk], append="kubesolo.data=LABEL=KSOLODATA")
    vm.allow_errors(r"Data device /dev/vda \(LABEL=KSOLODATA\) is read-only", r"Stage 20-persistent-mount\.sh failed")
    vm.wait(r"\[ERROR\] Data device /dev/vda \(LABEL=KSOLODATA\) is read-only \(write protection\?\): it is not "
            r"checked or mounted\. Make it writable, or boot with kubesolo\.nopersist to run from RAM",
            r"\[ERROR\] Stage 20-persistent-mount\.sh failed", errors_fail=False, timeout=240)
    assert "e2fsck found errors" not in vm.log


def test_max_size_cloud_init_parses_in_seconds_under_tcg(boot, tmp_path):
    """Item 13: the boot's own parser (the image's busybox awk) on maximum-size worst cases, timed in the
    guest under TCG. The largest one is also the node's cloud-init file, so the boot itself parses it."""
    from test_cloudinit import MAX_BYTES, WORST_CASES

    files = {f"{name}.yaml": WORST_CASES[name]().encode() for name in sorted(WORST_CASES)}
    files["cloud-init.yaml"] = files["block.yaml"]
    disk = disk_with(tmp_path, "bigci", files)
    vm = boot("bigci", disks=(disk,), append="kubesolo.data=LABEL=KSOLODATA")
    vm.wait_booted(timeout=400)
    assert_kubesolo_alive(vm)
    assert "[OK] Cloud-init configuration /mnt/data/cloud-init.yaml is valid" in vm.log
    vm.wait_ssh()
    lib = "/usr/lib/kubesolo-os"
    report = []
    for name in sorted(WORST_CASES):
        path = f"/mnt/data/{name}.yaml"
        out = vm.ssh(f"read a _ </proc/uptime; awk -v schema={lib}/cloud-init.schema -v size=$(wc -c <{path}) "
                     f"-f {lib}/cloud-init.awk {path} >/dev/null; read b _ </proc/uptime; "
                     "echo \"$a $b\"; wc -c <" + path, timeout=300).stdout.split()
        seconds = float(out[1]) - float(out[0])
        assert MAX_BYTES - 4096 < int(out[2]) <= MAX_BYTES
        report.append(f"{name}: {int(out[2])} bytes in {seconds:.2f} s")
        assert seconds < 120, report  # the quadratic parser needed minutes for such files
    print("boot-time parse of maximum-size files under TCG (image busybox awk): " + "; ".join(report))
