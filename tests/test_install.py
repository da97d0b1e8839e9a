"""Install to disk (issue 17): the build's slot and ESP images, playbooks/install.yml on loop devices of the host
(local connection: the safety rules, --check, idempotence, re-install keeping the data), and the real thing in
QEMU: a node booted from the ISO with SSH is installed over SSH onto a blank virtio disk, then boots from that
disk alone under SeaBIOS and OVMF; a re-install from the ISO keeps a file written on KSOLODATA.

Disk discovery on the host is restricted to the test's own loop devices (install_candidates)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SSH_KEY, VENV_BIN, stop_guests, tool_env, vm_pool
from guest import assert_kubesolo_alive
from loopdev import MIB, LoopDevices, sh
from test_disk_image import clean_rebuild  # noqa: F401  (session fixture: the second, clean build)
from test_provision_loop import read_data

LAYOUT = yaml.safe_load((REPO / "files" / "installed-disk.yml").read_text())
CONTRACT = yaml.safe_load((REPO / "files" / "boot-contract.yml").read_text())
DATA_LABEL = CONTRACT["data_label"]
ROOT = os.geteuid() == 0 and bool(shutil.which("losetup")) and bool(shutil.which("partx"))


@pytest.fixture(scope="module")
def output(request) -> Path:
    override = os.environ.get("KUBESOLO_TEST_OUTPUT_DIR")
    return Path(override) if override else request.getfixturevalue("built_image").output


@pytest.fixture(scope="module")
def manifest(output) -> dict:
    return json.loads((output / "manifest.json").read_text())


def mtools(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


def esp_file(esp: Path | str, path: str) -> bytes:
    return mtools("mcopy", "-n", "-i", str(esp), f"::{path}", "-").stdout


def grubenv(data: bytes) -> dict[str, str]:
    assert len(data) == LAYOUT["grubenv_size"] and data.startswith(b"# GRUB Environment Block\n"), data[:64]
    lines = data.decode().rstrip("#").splitlines()[1:]
    return dict(line.split("=", 1) for line in lines if "=" in line)


# --- the build's images ---------------------------------------------------------------------------

def test_slot_image_holds_kernel_initramfs_system_image_and_version(output, manifest, tmp_path):
    slot = output / manifest["slot_image"]["file"]
    assert slot.name == f"kubesolo-os-{manifest['image']['version']}-amd64-slot.img"
    data = slot.read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest["slot_image"]["sha256"]
    assert len(data) == manifest["slot_image"]["size"]
    assert f"{manifest['slot_image']['sha256']}  {slot.name}" in (output / "SHA256SUMS").read_text()
    assert data[:4] == b"hsqs"
    tree = tmp_path / "slot"
    sh("unsquashfs", "-no-xattrs", "-d", str(tree), str(slot))
    assert sorted(p.name for p in (tree / "boot").iterdir()) == ["initramfs", "kubesolo.sqfs", "version", "vmlinuz"]
    assert (tree / "boot" / "version").read_text() == manifest["image"]["version"] + "\n"
    assert (tree / "boot" / "vmlinuz").read_bytes() == (output / "vmlinuz").read_bytes()
    system = manifest["kubesolo"]["system_image"]
    assert hashlib.sha256((tree / "boot" / "kubesolo.sqfs").read_bytes()).hexdigest() == system["sha256"]
    # GRUB 2.06 reads gzip/xz/lzo squashfs only (compression id at offset 20: 1 = gzip).
    assert int.from_bytes(data[20:22], "little") in (1, 3, 4)


def test_esp_image_holds_grub_for_bios_and_uefi_and_the_installed_environment(output, manifest):
    esp = output / manifest["esp_image"]["file"]
    esp_mib = next(p for p in LAYOUT["partitions"] if p["name"] == LAYOUT["esp_label"])["size_mib"]
    assert esp.stat().st_size == 64 * MIB == esp_mib * MIB
    assert hashlib.sha256(esp.read_bytes()).hexdigest() == manifest["esp_image"]["sha256"]
    info = sh("blkid", "-p", "-o", "export", str(esp)).stdout
    assert "TYPE=vfat" in info and "LABEL=KSOLOEFI" in info and "VERSION=FAT32" in info, info
    assert esp_file(esp, "/EFI/BOOT/BOOTX64.EFI")[:2] == b"MZ"
    env = grubenv(esp_file(esp, LAYOUT["grubenv_path"]))
    version = manifest["image"]["version"]
    assert env == {"KSOLO_ACTIVE": "A", "KSOLO_TRIAL": "", "KSOLO_TRIAL_TRIES": "0", "KSOLO_A_VERSION": version,
                   "KSOLO_B_VERSION": "", "KSOLO_LAST_RESULT": "installed", "KSOLO_LAST_VERSION": version}
    # BIOS: boot.img loads core.img from the first sector of the bios-boot partition; core.img's block list
    # loads the rest of it (what grub-bios-setup would write).
    boot = esp_file(esp, LAYOUT["bios_boot_img_path"])
    core = esp_file(esp, LAYOUT["bios_core_img_path"])
    assert len(boot) == 512 and boot[510:512] == b"\x55\xaa"
    assert int.from_bytes(boot[0x5C:0x64], "little") == LAYOUT["first_sector"]
    assert int.from_bytes(core[500:508], "little") == LAYOUT["first_sector"] + 1
    assert int.from_bytes(core[508:510], "little") == -(-len(core) // 512) - 1
    assert int.from_bytes(core[510:512], "little") == 0x820
    assert len(core) <= next(p for p in LAYOUT["partitions"] if p["name"] == "bios-boot")["size_mib"] * MIB


def test_grub_menu_boots_the_active_slot_and_counts_a_trial_down(output, manifest):
    cfg = esp_file(output / manifest["esp_image"]["file"], "/grub/grub.cfg").decode()
    assert 'load_env --file "${ksolo_env}"' in cfg
    # Only a trial writes to the environment, and it counts down 3 -> 2 -> 1 -> 0 before the kernel starts.
    assert cfg.count("save_env") == 1 and 'save_env --file "${ksolo_env}" KSOLO_TRIAL_TRIES' in cfg
    for before, after in (("3", "2"), ("2", "1"), ("1", "0")):
        assert re.search(rf'"\${{KSOLO_TRIAL_TRIES}}" = {before} \]; then\n\s+set KSOLO_TRIAL_TRIES={after}\n', cfg)
    entries = re.findall(r"^\s*linux (\S+) (.*)$", cfg, re.M)
    assert len(entries) == len(CONTRACT["boot_entries"]) + 1  # every entry of the contract, and the other slot
    for kernel, params in entries:
        assert kernel.endswith("/boot/vmlinuz") and "panic=10" in params
        assert f"kubesolo.data=LABEL={DATA_LABEL}" in params
        assert re.search(r"kubesolo\.sysimage=PARTLABEL=KSOLO_\$\{ksolo_(slot|other)\}:/boot/kubesolo\.sqfs", params)


def test_slot_and_esp_images_are_reproducible(output, manifest, clean_rebuild):  # noqa: F811
    for key in ("slot_image", "esp_image"):
        name = manifest[key]["file"]
        assert hashlib.sha256((clean_rebuild / name).read_bytes()).hexdigest() == manifest[key]["sha256"], name


# --- install.yml on loop devices (local connection) ----------------------------------------------

@pytest.fixture
def loops(tmp_path):
    if not ROOT:
        pytest.skip("needs root, losetup and partx")
    pool = LoopDevices(tmp_path)
    pool.mounts.append(tmp_path / "mnt")
    try:
        yield pool
    finally:
        pool.cleanup()


def install(output: Path, candidates: list[str], *extra: str, **variables) -> tuple[int, str]:
    """Run playbooks/install.yml on localhost; returns (rc, output)."""
    extra_vars = {"install_hosts": "localhost", "install_output_dir": str(output), "install_candidates": candidates,
                  "install_min_data_size_mib": 256, **variables}
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "playbooks/install.yml", "-e", json.dumps(extra_vars),
                           *extra], cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=600, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def changed(out: str) -> int:
    found = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)", out)
    assert found, out[-3000:]
    return int(found.group(1))


def partitions(disk: str) -> dict[int, dict]:
    table = json.loads(sh("sfdisk", "--json", disk).stdout)["partitiontable"]
    return {int(re.search(r"(\d+)$", p["node"]).group(1)): p for p in table["partitions"]}


def sha(device: str, length: int) -> str:
    with open(device, "rb") as handle:
        return hashlib.sha256(handle.read(length)).hexdigest()


def write_data_file(tmp_path: Path, partition: str, name: str, text: str) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    sh("mount", partition, str(mnt))
    try:
        (mnt / name).write_text(text)
    finally:
        sh("umount", str(mnt))


def test_check_mode_then_install_then_a_second_run_changes_nothing(output, manifest, loops, tmp_path):
    disk = loops.add(3 * 1024)
    rc, out = install(output, [disk], "--check")
    assert rc == 0 and changed(out) == 1, out[-3000:]
    assert "would create the GPT on" in out and "write slot A" in out
    assert sha(disk, 4 * MIB) == hashlib.sha256(b"\0" * 4 * MIB).hexdigest(), "--check wrote to the disk"

    started = time.monotonic()
    rc, out = install(output, [disk], install_device=disk)
    print(f"local install onto a loop device: {time.monotonic() - started:.1f}s")
    assert rc == 0 and changed(out) == 1, out[-3000:]
    parts = partitions(disk)
    assert [parts[p["number"]]["name"] for p in LAYOUT["partitions"]] == [p["name"] for p in LAYOUT["partitions"]]
    for p in LAYOUT["partitions"]:
        assert parts[p["number"]]["type"] == p["type"]
    slot = output / manifest["slot_image"]["file"]
    slot_mib = max(LAYOUT["slot_min_size_mib"], 2 * -(-slot.stat().st_size // MIB))
    assert parts[3]["size"] == parts[4]["size"] == -(-slot_mib // 64) * 64 * 2048
    assert parts[1]["start"] == LAYOUT["first_sector"] and parts[5]["start"] + parts[5]["size"] <= 3 * 1024 * 2048
    assert sha(f"{disk}p3", slot.stat().st_size) == manifest["slot_image"]["sha256"]
    esp = (output / manifest["esp_image"]["file"]).read_bytes()
    assert esp_file(f"{disk}p2", "/grub/grub.cfg") == esp_file(output / manifest["esp_image"]["file"], "/grub/grub.cfg")
    assert grubenv(esp_file(f"{disk}p2", LAYOUT["grubenv_path"]))["KSOLO_ACTIVE"] == "A"
    with open(disk, "rb") as handle:
        mbr = handle.read(512)
        handle.seek(LAYOUT["first_sector"] * 512)
        core_on_disk = handle.read(512)
    boot = esp_file(output / manifest["esp_image"]["file"], LAYOUT["bios_boot_img_path"])
    assert mbr[:440] == boot[:440] and mbr[510:] == b"\x55\xaa" and mbr[450] == 0xEE  # GRUB + protective MBR
    assert core_on_disk == esp_file(output / manifest["esp_image"]["file"], LAYOUT["bios_core_img_path"])[:512]
    info = sh("blkid", "-p", "-o", "export", f"{disk}p5").stdout
    assert f"LABEL={DATA_LABEL}" in info and "TYPE=ext4" in info
    sh("fsck.vfat", "-n", f"{disk}p2")
    assert len(esp) == 64 * MIB

    rc, out = install(output, [disk])  # found again without naming it: the disk with the installed layout
    assert rc == 0 and changed(out) == 0, out[-3000:]
    assert "already holds KubeSolo OS" in out
    rc, out = install(output, [disk], "--check")
    assert rc == 0 and changed(out) == 0, out[-3000:]


def test_reinstall_rewrites_what_differs_and_keeps_ksolodata(output, manifest, loops, tmp_path):
    disk = loops.add(3 * 1024)
    rc, out = install(output, [disk], install_device=disk)
    assert rc == 0, out[-3000:]
    write_data_file(tmp_path, f"{disk}p5", "survivor", "written before the re-install\n")
    data_before = sha(f"{disk}p5", 8 * MIB)
    with open(f"{disk}p3", "r+b") as handle:  # a damaged slot A
        handle.write(b"\0" * MIB)
    rc, out = install(output, [disk], "--check")
    assert rc == 0 and changed(out) == 1 and "would write slot A" in out, out[-3000:]
    assert "create the GPT" not in out and "make ext4" not in out
    rc, out = install(output, [disk])
    assert rc == 0 and changed(out) == 1, out[-3000:]
    assert "write slot A" in out and "write the EFI system partition (slot A was rewritten" in out
    assert "write GRUB's boot code" not in out, "an unchanged part was written again"
    assert sha(f"{disk}p3", manifest["slot_image"]["size"]) == manifest["slot_image"]["sha256"]
    assert read_data(tmp_path, f"{disk}p5", "survivor") == "written before the re-install\n"
    assert sha(f"{disk}p5", 8 * MIB) == data_before


def refused(out: str) -> str:
    found = re.search(r'"msg": "(.*?)"', out[out.find("fatal:"):]) if "fatal:" in out else None
    assert found, out[-3000:]
    return found.group(1)


def test_wrong_disks_are_refused_and_left_untouched(output, loops, tmp_path):
    blank_small = loops.add(1024)
    used = loops.add(3 * 1024)
    sh("mkfs.ext4", "-q", "-F", "-L", "somebodys-data", used)
    data_disk = loops.add(3 * 1024)
    sh("sh", "-c", f"printf 'label: gpt\\nstart=2048, name=\"{DATA_LABEL}\"\\n' | sfdisk -q {data_disk}")
    sh("partx", "-a", data_disk, check=False)
    sh("mkfs.ext4", "-q", "-F", "-L", DATA_LABEL, f"{data_disk}p1")
    mounted = loops.add(3 * 1024)
    sh("mkfs.ext4", "-q", "-F", mounted)
    before = {d: sha(d, 4 * MIB) for d in (blank_small, used, data_disk)}  # (mounting changes `mounted`)

    rc, out = install(output, [blank_small], install_device=blank_small)
    assert rc != 0 and "too small" in refused(out)
    rc, out = install(output, [used], install_device=used)
    assert rc != 0 and "not blank" in refused(out) and "install_wipe" in refused(out)
    rc, out = install(output, [used], install_wipe=True)
    assert rc != 0 and "install_wipe needs the disk named" in refused(out)
    rc, out = install(output, [used, data_disk], install_device=f"{data_disk}p1")
    assert rc != 0 and "is a partition" in refused(out)
    rc, out = install(output, [data_disk], install_device=data_disk, install_wipe=True)
    assert rc != 0 and f"holds the data partition {DATA_LABEL}" in refused(out) and "never reformatted" in refused(out)
    loops.mounts.insert(0, tmp_path / "busy")
    (tmp_path / "busy").mkdir()
    sh("mount", mounted, str(tmp_path / "busy"))
    rc, out = install(output, [mounted], install_device=mounted, install_wipe=True)
    assert rc != 0 and "mounted on" in refused(out)
    rc, out = install(output, [blank_small, used, data_disk, mounted])
    assert rc != 0 and "No disk can be chosen" in refused(out)
    sh("umount", str(tmp_path / "busy"))
    assert {d: sha(d, 4 * MIB) for d in before} == before, "a refused disk was written"
    assert "PTTYPE" not in sh("blkid", "-p", "-o", "export", mounted).stdout, "the mounted disk was partitioned"

    # Named and wiped: the ext4 file system (not a data partition) goes.
    rc, out = install(output, [used], install_device=used, install_wipe=True)
    assert rc == 0 and "erase the start" in out, out[-3000:]
    assert partitions(used)[5]["name"] == DATA_LABEL


def test_ksolodata_on_another_disk_is_kept_and_the_target_gets_none(output, loops, tmp_path):
    data_disk = loops.add(512)
    sh("mkfs.ext4", "-q", "-F", "-L", DATA_LABEL, data_disk)
    target = loops.add(3 * 1024)
    rc, out = install(output, [data_disk, target])
    assert rc == 0, out[-3000:]
    assert f"{DATA_LABEL} stays on {data_disk}" in out
    assert sorted(partitions(target)) == [1, 2, 3, 4]
    assert f"LABEL={DATA_LABEL}" in sh("blkid", "-p", "-o", "export", data_disk).stdout


# --- the real thing: install from the ISO over SSH, boot from the disk (BIOS and UEFI) --------------

@pytest.fixture
def vms(request):
    start, guests = vm_pool(request)
    yield functools.partial(start, memory_mb=512)
    stop_guests(guests)


def install_over_ssh(output: Path, port: int, *extra: str) -> tuple[int, str, float]:
    inventory = {"all": {"children": {"kubesolo_nodes": {"hosts": {"node": {
        "ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": "root",
        "ansible_ssh_private_key_file": str(SSH_KEY),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes",
    }}}}}}
    inventory_file = output.parent / f"install-inventory-{port}.yml"
    inventory_file.write_text(yaml.safe_dump(inventory))
    started = time.monotonic()
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inventory_file), "playbooks/install.yml",
                           "-e", json.dumps({"install_output_dir": str(output), "install_min_data_size_mib": 256}),
                           *extra], cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=900, check=False)
    inventory_file.unlink()
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def node_changed(out: str) -> int:
    found = re.search(r"node\s+: ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", out)
    assert found, out[-4000:]
    return int(found.group(1))


def assert_booted_from_slot_a(vm, manifest) -> None:
    assert re.search(r"GNU GRUB +version \d", vm.log)
    assert re.search(r"Booting `KubeSolo OS - slot A " + re.escape(manifest["image"]["version"]), vm.log)
    assert "Boot medium PARTLABEL=KSOLO_A is /dev/vda3" in vm.log
    vm.wait_ssh(timeout=180)
    cmdline = vm.ssh("cat /proc/cmdline").stdout
    assert "kubesolo.slot=A" in cmdline and "panic=10" in cmdline and "kubesolo.trial" not in cmdline, cmdline
    mounts = vm.ssh("cat /proc/mounts").stdout
    assert re.search(r"^/dev/vda5 /mnt/data ext4 ", mounts, re.M), mounts
    assert re.search(r"^/dev/vda3 /run/kubesolo-os/medium squashfs ro", mounts, re.M), mounts
    assert_kubesolo_alive(vm)


def test_install_from_the_iso_then_boot_from_the_disk_under_bios_and_uefi(output, manifest, vms, tmp_path):
    disk = tmp_path / "internal.img"
    with open(disk, "wb") as handle:
        handle.truncate(3 * 1024 * MIB)
    iso = next(output.glob("kubesolo-os-*-amd64.iso"))
    vm = vms("iso", iso=iso, disks=[disk])
    vm.wait_booted(timeout=300)
    vm.wait_ssh(timeout=180)

    rc, out, _seconds = install_over_ssh(output, vm.spec.ssh_port, "--check")
    assert rc == 0 and node_changed(out) == 1 and "would create the GPT on /dev/vda" in out, out[-4000:]
    assert vm.ssh("blkid -p /dev/vda; echo rc=$?").stdout.strip().endswith("rc=2"), "--check wrote to the disk"
    rc, out, seconds = install_over_ssh(output, vm.spec.ssh_port)
    print(f"install over SSH from the ISO (TCG): {seconds:.1f}s; slot image {manifest['slot_image']['size']} bytes")
    assert rc == 0 and node_changed(out) == 1, out[-4000:]
    assert "installed KubeSolo OS" in out and "/dev/vda" in out
    rc, out, _seconds = install_over_ssh(output, vm.spec.ssh_port)
    assert rc == 0 and node_changed(out) == 0, out[-4000:]
    vm.ssh("poweroff", check=False)
    vm.wait_exit(timeout=120)

    # The ISO is gone: SeaBIOS boots the disk's MBR -> core.img -> the A/B menu -> slot A.
    bios = vms("disk-bios", disks=[disk])
    seconds = bios.wait_booted(timeout=300)
    print(f"installed disk, BIOS: handover after {seconds:.1f}s")
    assert_booted_from_slot_a(bios, manifest)
    assert "First boot on this data partition" in bios.log
    bios.ssh("echo written-on-the-installed-disk > /var/lib/kubesolo/install-marker && sync")
    bios.ssh("poweroff", check=False)
    bios.wait_exit(timeout=120)

    # Re-install from the ISO over a damaged slot A: slot A and the ESP are written again, the data is kept.
    again = vms("iso-again", iso=iso, disks=[disk])
    again.wait_booted(timeout=300)
    again.wait_ssh(timeout=180)
    again.ssh("dd if=/dev/zero of=/dev/vda3 bs=1M count=1 conv=fsync 2>/dev/null")
    rc, out, _seconds = install_over_ssh(output, again.spec.ssh_port)
    assert rc == 0 and node_changed(out) == 1 and "write slot A" in out, out[-4000:]
    assert "create the GPT" not in out and "make ext4" not in out
    again.ssh("poweroff", check=False)
    again.wait_exit(timeout=120)

    # UEFI: OVMF runs \EFI\BOOT\BOOTX64.EFI from the ESP -> the same menu -> slot A, with the data kept.
    uefi = vms("disk-uefi", disks=[disk], firmware="uefi")
    seconds = uefi.wait_booted(timeout=300)
    print(f"installed disk, UEFI: handover after {seconds:.1f}s")
    assert_booted_from_slot_a(uefi, manifest)
    assert "First boot on this data partition" not in uefi.log
    assert uefi.ssh("cat /var/lib/kubesolo/install-marker").stdout.strip() == "written-on-the-installed-disk"
    # Booted from its installed disk, install.yml leaves the node alone (never the boot medium).
    rc, out, _seconds = install_over_ssh(output, uefi.spec.ssh_port)
    assert rc == 0 and node_changed(out) == 0 and "the node runs from it" in out, out[-4000:]


def esp_env_on_disk(disk_file: Path) -> dict[str, str]:
    offset = next(p for p in LAYOUT["partitions"] if p["name"] == LAYOUT["esp_label"])["number"]
    start = partitions_of_file(disk_file)[offset]["start"] * 512
    return grubenv(esp_file(f"{disk_file}@@{start}", LAYOUT["grubenv_path"]))


def partitions_of_file(disk_file: Path) -> dict[int, dict]:
    table = json.loads(sh("sfdisk", "--json", str(disk_file)).stdout)["partitiontable"]
    return {int(re.search(r"(\d+)$", p["node"]).group(1)): p for p in table["partitions"]}


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_grub_boots_an_armed_trial_once_counting_it_down_then_the_active_slot(output, manifest, loops, vms, tmp_path,
                                                                               firmware):
    """GRUB's side of the boot counter, on the real boot loaders: a trial of slot B armed with one try boots slot
    B once (saving KSOLO_TRIAL_TRIES=0 on the FAT ESP before the kernel starts), the next boot is slot A's. Each
    VM is stopped as soon as the boot is seen, before anything on the node could write the environment."""
    disk = loops.add(3 * 1024)
    rc, out = install(output, [disk], install_device=disk)
    assert rc == 0, out[-3000:]
    slot = (output / manifest["slot_image"]["file"]).read_bytes()
    with open(f"{disk}p4", "r+b") as handle:
        handle.write(slot)
    env = grubenv(esp_file(f"{disk}p2", LAYOUT["grubenv_path"]))
    env.update(KSOLO_TRIAL="B", KSOLO_TRIAL_TRIES="1", KSOLO_B_VERSION=manifest["image"]["version"])
    text = "# GRUB Environment Block\n" + "".join(f"{k}={v}\n" for k, v in env.items())
    (tmp_path / "grubenv").write_text(text + "#" * (LAYOUT["grubenv_size"] - len(text)))
    mtools("mcopy", "-o", "-i", f"{disk}p2", str(tmp_path / "grubenv"), f"::{LAYOUT['grubenv_path']}")
    backing = LoopDevices.backing(disk)
    loops.cleanup()

    trial = vms("trial", disks=[backing], firmware=firmware, ssh=False, network=False)
    trial.wait(r"Booting `KubeSolo OS - slot B", timeout=240)
    trial.wait(re.escape("Boot medium PARTLABEL=KSOLO_B is /dev/vda4"), timeout=240)
    trial.stop()
    after = esp_env_on_disk(backing)
    assert after == {**env, "KSOLO_TRIAL_TRIES": "0"}, after

    normal = vms("after-trial", disks=[backing], firmware=firmware, ssh=False, network=False)
    normal.wait(r"Booting `KubeSolo OS - slot A", timeout=240)
    normal.stop()
    assert esp_env_on_disk(backing) == after, "GRUB wrote the environment on a normal boot"
