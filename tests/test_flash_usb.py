"""playbooks/flash-usb.yml against loop devices: every refusal, a verified write, a verify failure,
the keep-data upgrade of a stick; then the flashed stick booted in QEMU (xhci + usb-storage) under
SeaBIOS and OVMF, and the ISO under OVMF.

Loop devices are whole but not removable disks: the tests pass flash_allow_fixed_disk=true, except in
the test of the removable rule. Every loop device is detached when its test ends.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import VENV_BIN, run, stop_guests, tool_env, vm_pool
from contract import HANDOVER_MARKER
from guest import assert_kubesolo_alive
from loopdev import MIB, LoopDevices, sh

pytestmark = pytest.mark.slow

PLAYBOOK = "playbooks/flash-usb.yml"
OK90 = re.escape(HANDOVER_MARKER)


def sha256_of(path: str | Path, length: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        done = 0
        while done < length:
            chunk = handle.read(min(1 << 20, length - done))
            if not chunk:
                break
            digest.update(chunk)
            done += len(chunk)
    return digest.hexdigest()


@pytest.fixture
def loops(tmp_path):
    manager = LoopDevices(tmp_path, name="stick", scan_partitions=True)
    try:
        yield manager
    finally:
        manager.cleanup()


def flash(image: Path, device: str, *extra: str, fixed: bool = True, confirm: str | None = "same",
          env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    args = [str(VENV_BIN / "ansible-playbook"), PLAYBOOK, "-e", f"usb_device={device}", "-e", f"flash_image={image}"]
    if fixed:
        args += ["-e", "flash_allow_fixed_disk=true"]
    if confirm is not None:
        args += ["-e", f"flash_confirm={device if confirm == 'same' else confirm}"]
    result = run([*args, *extra], timeout=900, check=check, env={**tool_env(), **(env or {})})
    return result


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout[-3000:]
    found = re.findall(r"Refusing to write to \S+: rule '[\w-]+': .*?(?:No variable overrides this rule\.|"
                       r"Override: [^\"]*?\.)(?=\"|\s*$)", result.stdout, re.M)
    assert found, result.stdout[-3000:]
    return found[0]


@pytest.fixture(scope="module")
def output(request) -> Path:
    """The session build's output directory; KUBESOLO_TEST_OUTPUT_DIR points at another build's (for
    iterating on these tests without rebuilding build/test)."""
    override = os.environ.get("KUBESOLO_TEST_OUTPUT_DIR")
    return Path(override) if override else request.getfixturevalue("built_image").output


@pytest.fixture(scope="module")
def image(output) -> Path:
    return next(output.glob("kubesolo-os-*-amd64.img"))


@pytest.fixture(scope="module")
def iso(output) -> Path:
    return next(output.glob("kubesolo-os-*-amd64.iso"))


def untouched(device: str, length: int = 8 * MIB) -> bool:
    return sha256_of(device, length) == hashlib.sha256(b"\0" * length).hexdigest()


# --------------------------------------------------------------------------------------------
# Refusals: one message naming the rule and the overriding variable; nothing written.
# --------------------------------------------------------------------------------------------

def test_refuses_a_partition(image, loops):
    disk = loops.add(700)
    subprocess.run(["sfdisk", "--quiet", disk], input="label: dos\nstart=2048, type=83\n", text=True, check=True,
                   capture_output=True)
    sh("partx", "-a", disk, check=False)
    message = refusal(flash(image, f"{disk}p1"))
    assert "rule 'whole-disk'" in message and f"a partition of {disk}" in message
    assert "No variable overrides this rule." in message


def test_refuses_a_non_removable_disk_unless_allowed(image, loops):
    disk = loops.add(700)
    message = refusal(flash(image, disk, fixed=False))
    assert "rule 'removable'" in message and "Override: flash_allow_fixed_disk: true." in message
    assert untouched(disk)


def test_refuses_a_disk_with_a_mounted_file_system(image, loops, tmp_path):
    disk = loops.add(700)
    subprocess.run(["sfdisk", "--quiet", disk], input="label: dos\nstart=2048, type=83\n", text=True, check=True,
                   capture_output=True)
    sh("partx", "-a", disk, check=False)
    sh("mkfs.ext4", "-q", "-F", f"{disk}p1")
    point = tmp_path / "mnt"
    point.mkdir()
    sh("mount", f"{disk}p1", str(point))
    loops.mounts.append(point)
    message = refusal(flash(image, disk))
    assert "rule 'not-mounted'" in message and f"{disk}p1 on {point}" in message


def test_refuses_the_disk_the_running_system_lives_on(image):
    """Against the real root disk, in check mode (nothing could be written even if the rule failed)."""
    out = sh("lsblk", "-n", "-o", "PKNAME,NAME,MOUNTPOINTS", "-l").stdout.splitlines()
    root = next((line.split() for line in out if line.split()[-1:] == ["/"]), None)
    if root is None:
        pytest.skip("/ is not on a block device here")
    disk = f"/dev/{root[0] if len(root) == 3 else root[-2]}"
    message = refusal(flash(image, disk, "--check"))
    assert "rule 'system-disk'" in message and "No variable overrides this rule." in message


def test_refuses_a_disk_too_small(image, loops):
    disk = loops.add(100)
    message = refusal(flash(image, disk))
    assert "rule 'size'" in message and "too small" in message
    assert untouched(disk)


def test_refuses_without_confirmation_or_with_another_device(image, loops):
    disk = loops.add(700)
    other = loops.add(700)
    message = refusal(flash(image, disk, confirm=None))  # stdin is not a terminal: nothing typed
    assert "rule 'confirmation'" in message and f"Override: flash_confirm={disk}." in message
    message = refusal(flash(image, disk, confirm=other))
    assert "rule 'confirmation'" in message
    assert untouched(disk) and untouched(other)


def test_refuses_keep_data_without_a_data_partition(image, loops):
    disk = loops.add(700)
    message = refusal(flash(image, disk, "-e", "flash_keep_data=true"))
    assert "rule 'keep-data'" in message and "Override: flash_keep_data: false" in message
    assert untouched(disk)


def test_check_mode_reports_and_touches_nothing(image, loops):
    disk = loops.add(700)
    result = flash(image, disk, "--check", "--diff", check=True)
    assert "write the whole image" in result.stdout and "grow the KSOLODATA file system" in result.stdout
    assert untouched(disk, 700 * MIB)


# --------------------------------------------------------------------------------------------
# Writing: verify, grow, verify failure, keep-data upgrade.
# --------------------------------------------------------------------------------------------

def data_partition(device: str) -> dict:
    table = sh("sfdisk", "-d", device).stdout
    start, size = re.search(r"p2 : start=\s*(\d+), size=\s*(\d+), type=83", table).groups()
    return {"start": int(start), "size": int(size)}


def fs_blocks(node: str) -> int:
    out = sh("dumpe2fs", "-h", node).stdout
    count = int(re.search(r"^Block count:\s+(\d+)", out, re.M).group(1))
    size = int(re.search(r"^Block size:\s+(\d+)", out, re.M).group(1))
    return count * size


def test_flash_verifies_and_grows_ksolodata_to_the_end(image, loops):
    disk = loops.add(1024)
    started = time.monotonic()
    result = flash(image, disk, check=True)
    seconds = time.monotonic() - started
    report = re.search(r"wrote (\d+) bytes in ([\d.]+) s \(([\d.]+) MiB/s\), verified \(SHA256 (\w+)\) in ([\d.]+) s",
                       result.stdout)
    assert report, result.stdout[-3000:]
    size = image.stat().st_size
    assert int(report.group(1)) == size and report.group(4) == sha256_of(image, size)
    progress = r"(?:Writing kubesolo-os-\S+ to|Verifying) /dev/loop\d+(?: \(flushing\))?: [\d.]+ of [\d.]+ MiB \(\d+%\)"
    assert re.search(progress, result.stdout), "no progress was shown"
    print(f"flash of {size / MIB:.0f} MiB to a loop device: write {report.group(2)} s ({report.group(3)} MiB/s), "
          f"verify {report.group(5)} s, playbook {seconds:.1f} s")
    # The boot part is the image's; KSOLODATA fills the disk and its file system its partition.
    boot_bytes = data_partition(disk)["start"] * 512
    assert _same_except_table(image, disk, boot_bytes)
    part = data_partition(disk)
    assert part["start"] + part["size"] == 1024 * 2048
    assert fs_blocks(f"{disk}p2") == part["size"] * 512
    sh("e2fsck", "-fn", f"{disk}p2")
    assert "LABEL=\"KSOLODATA\"" in sh("blkid", f"{disk}p2").stdout


@pytest.mark.parametrize("gigabytes", [70, 200])
def test_flash_to_a_big_stick_ends_with_a_clean_ksolodata_filling_it(image, loops, gigabytes):
    """Issue 15, item 1: over about 64 GiB the built file system's resize inode cannot describe the new
    size; the image has none and the module handles one that has (e2fsck -fn must pass either way)."""
    disk = loops.add(gigabytes * 1000**3 // MIB)
    result = flash(image, disk, check=True)
    assert "KSOLODATA new, grown" in result.stdout
    part = data_partition(disk)
    assert part["start"] + part["size"] == gigabytes * 1000**3 // MIB * 2048
    sh("e2fsck", "-fn", f"{disk}p2")
    per_group = 32768 * 4096
    assert part["size"] * 512 - fs_blocks(f"{disk}p2") < per_group


def test_keep_data_grows_an_old_ksolodata_that_has_a_resize_inode_past_its_limit(image, loops, tmp_path):
    """A stick flashed by an earlier release (KSOLODATA with a 64 MiB resize-inode reserve) moved to a
    70 GB stick: the keep-data upgrade grows it cleanly, the files stay."""
    disk = loops.add(70 * 1000**3 // MIB)
    flash(image, disk, "-e", "flash_grow_data=false", check=True)
    node = f"{disk}p2"
    # Stand in for the old release's data partition: an ext4 with a resize inode, and a file on it.
    sh("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "KSOLODATA", node)
    assert "resize_inode" in sh("dumpe2fs", "-h", node).stdout
    marker = tmp_path / "marker"
    marker.write_text("kept\n")
    sh("debugfs", "-w", "-R", f"write {marker} kubesolo-marker", node)
    result = flash(image, disk, "-e", "flash_keep_data=true", check=True)
    assert "KSOLODATA kept, grown" in result.stdout
    assert "removing it" in result.stdout
    sh("e2fsck", "-fn", node)
    part = data_partition(disk)
    assert part["size"] * 512 - fs_blocks(node) < 32768 * 4096
    assert sh("debugfs", "-R", "cat kubesolo-marker", node).stdout == "kept\n"


def _same_except_table(image: Path, disk: str, length: int) -> bool:
    """The first `length` bytes equal, apart from the partition entries (bytes 446-509) that grew."""
    with open(image, "rb") as src, open(disk, "rb") as dst:
        a, b = src.read(length), dst.read(length)
    return a[:446] == b[:446] and a[510:] == b[510:]


def test_verify_failure_is_reported(image, loops, tmp_path):
    disk = loops.add(700)
    hook = tmp_path / "corrupt.sh"
    hook.write_text("#!/bin/sh\n# test-only: corrupt one block of the target between write and read-back\n"
                    'dd if=/dev/urandom of="$1" bs=4096 seek=2000 count=1 conv=notrunc,fsync status=none\n')
    hook.chmod(0o755)
    result = flash(image, disk, env={"KUBESOLO_FLASH_TEST_CORRUPT_HOOK": str(hook)})
    assert result.returncode != 0
    assert "Verify failed: the SHA256 of the" in result.stdout
    assert "test-only hook" in result.stdout + result.stderr


def test_keep_data_upgrade_rewrites_the_boot_part_and_keeps_the_files(image, loops, tmp_path):
    disk = loops.add(1024)
    # A stick flashed without growing, then used: a file on KSOLODATA.
    flash(image, disk, "-e", "flash_grow_data=false", check=True)
    before = data_partition(disk)
    marker = tmp_path / "marker"
    marker.write_text("survives the upgrade\n")
    sh("debugfs", "-w", "-R", f"write {marker} kubesolo-marker", f"{disk}p2")
    # The boot part gets damaged (stands for the old release's boot files).
    with open(disk, "r+b") as handle:
        handle.seek(2 * MIB)
        handle.write(b"\xff" * MIB)
    result = flash(image, disk, "-e", "flash_keep_data=true", check=True)
    assert "KSOLODATA kept, grown" in result.stdout
    boot_bytes = before["start"] * 512
    assert re.search(rf"wrote {boot_bytes} bytes", result.stdout)
    after = data_partition(disk)
    assert after["start"] == before["start"] and after["start"] + after["size"] == 1024 * 2048
    assert sh("debugfs", "-R", "cat kubesolo-marker", f"{disk}p2").stdout == "survives the upgrade\n"
    assert fs_blocks(f"{disk}p2") == after["size"] * 512
    assert _same_except_table(image, disk, boot_bytes)
    sh("e2fsck", "-fn", f"{disk}p2")


# --------------------------------------------------------------------------------------------
# Booting the media (firmware boots the medium itself: no -kernel).
# --------------------------------------------------------------------------------------------

@pytest.fixture
def boot_medium(request):
    """Factory booting a raw medium (usb_disk= or iso=) under a firmware; VMs stopped at the end."""
    start, guests = vm_pool(request)
    yield functools.partial(start, memory_mb=512)
    stop_guests(guests)


def flashed_stick(image: Path, loops: LoopDevices, size_mib: int) -> Path:
    disk = loops.add(size_mib)
    flash(image, disk, check=True)
    backing = LoopDevices.backing(disk)
    loops.cleanup()
    return backing


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_flashed_stick_boots_and_keeps_ksolodata(image, loops, boot_medium, firmware):
    stick = flashed_stick(image, loops, 768)
    first = boot_medium("first", usb_disk=stick, firmware=firmware)
    seconds = first.wait_booted(timeout=300)
    print(f"{firmware} USB stick: stage-90 marker after {seconds:.1f}s")
    first.wait_ssh(timeout=180)
    mounts = first.ssh("cat /proc/mounts").stdout
    assert re.search(r"^/dev/sd[a-z]2 /mnt/data ext4 ", mounts, re.M), mounts
    assert "First boot on this data partition" in first.log
    size = int(first.ssh("df -k /mnt/data | tail -1").stdout.split()[1])
    assert size > 400 * 1024, "KSOLODATA was not grown to the stick"
    assert_kubesolo_alive(first)
    first.ssh(f"echo written-under-{firmware} > /var/lib/kubesolo/usb-marker && sync")
    first.ssh("poweroff", check=False)
    first.wait_exit(timeout=120)

    second = boot_medium("second", usb_disk=stick, firmware=firmware)
    second.wait_booted(timeout=300)
    second.wait_ssh(timeout=180)
    assert second.ssh("cat /var/lib/kubesolo/usb-marker").stdout.strip() == f"written-under-{firmware}"
    assert "First boot on this data partition" not in second.log
    assert_kubesolo_alive(second)


def test_iso_boots_under_ovmf_as_a_cd(iso, boot_medium, tmp_path):
    import vmctl

    data = vmctl.make_data_disk(tmp_path / "data.img", size_mb=64)
    vm = boot_medium("iso-uefi", iso=iso, firmware="uefi", disks=[data])
    seconds = vm.wait_booted(timeout=300)
    print(f"uefi CD (ISO): stage-90 marker after {seconds:.1f}s")
    assert re.search(r"GNU GRUB +version \d", vm.log)  # GRUB's menu header, mirrored on the serial port
    vm.wait_ssh(timeout=180)
    cmdline = vm.ssh("cat /proc/cmdline").stdout
    assert "kubesolo.data=LABEL=KSOLODATA" in cmdline and "console=ttyS0,115200n8" in cmdline
    assert re.search(r"^/dev/vda /mnt/data ext4 ", vm.ssh("cat /proc/mounts").stdout, re.M)
    assert_kubesolo_alive(vm)


def test_iso_written_raw_to_a_stick_boots_under_ovmf(iso, boot_medium, tmp_path):
    stick = tmp_path / "iso-stick.img"
    sh("cp", "--sparse=always", str(iso), str(stick))
    with open(stick, "r+b") as handle:
        handle.truncate(256 * MIB)
    vm = boot_medium("iso-usb-uefi", usb_disk=stick, firmware="uefi", ssh=False)
    seconds = vm.wait_booted(timeout=300)
    print(f"uefi USB stick (ISO written raw): stage-90 marker after {seconds:.1f}s")
    assert_kubesolo_alive(vm)  # serial log only: this VM has no SSH forward
