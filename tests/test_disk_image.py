"""The raw disk image (roles/disk_image): layout, boot files, menus shared with the ISO, reproducibility.

Everything is read from the image file itself (sfdisk, blkid -p, mtools, debugfs): nothing is mounted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BUILD_VARS, REPO, ansible_playbook, role_defaults
from contract import CONTRACT

pytestmark = pytest.mark.slow

DEFAULTS = role_defaults("disk_image")
MIB = 1024 * 1024
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def disk_image(built) -> Path:
    return next(built.output.glob("kubesolo-os-*-amd64.img"))


def partitions(path: Path) -> list[dict]:
    out = subprocess.run(["sfdisk", "-J", str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["partitiontable"]["partitions"]


def probe(path: Path, offset: int, size: int) -> dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-o", "export", "-O", str(offset), "-S", str(size), str(path)],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def fat_read(image: Path, offset: int, path: str) -> bytes:
    return subprocess.run(["mtype", "-i", f"{image}@@{offset}", f"::{path}"], capture_output=True, check=True,
                          env=MTOOLS_ENV).stdout


def fat_list(image: Path, offset: int, path: str) -> str:
    return subprocess.run(["mdir", "-a", "-b", "-i", f"{image}@@{offset}", f"::{path}"], capture_output=True,
                          text=True, check=True, env=MTOOLS_ENV).stdout


def iso_esp_offset(iso: Path) -> int:
    esp = next(p for p in partitions(iso) if p["type"] == "ef")
    return esp["start"] * 512


def iso_file(iso: Path, path: str, tmp_path: Path) -> str:
    target = tmp_path / Path(path).name
    subprocess.run(["xorriso", "-indev", str(iso), "-osirrox", "on", "-extract", path, str(target)],
                   capture_output=True, check=True)
    return target.read_text()


def test_layout_mbr_boot_partition_and_ksolodata(built_image, tmp_path):
    image = disk_image(built_image)
    boot_mib, data_mib = DEFAULTS["disk_image_boot_size_mib"], DEFAULTS["disk_image_data_size_mib"]
    assert image.name == f"kubesolo-os-{role_defaults('kubesolo_os')['kubesolo_os_version']}-amd64.img"
    assert image.stat().st_size == (1 + boot_mib + data_mib) * MIB
    parts = partitions(image)
    assert [(p["start"], p["size"], p["type"], p.get("bootable", False)) for p in parts] == [
        (2048, boot_mib * 2048, "ef", True),
        (2048 + boot_mib * 2048, data_mib * 2048, "83", False),
    ]
    boot = probe(image, MIB, boot_mib * MIB)
    assert boot["TYPE"] == "vfat" and boot["LABEL"] == DEFAULTS["disk_image_boot_label"]
    data = probe(image, (1 + boot_mib) * MIB, data_mib * MIB)
    assert data["TYPE"] == "ext4" and data["LABEL"] == "KSOLODATA"
    assert data["UUID"] == DEFAULTS["disk_image_data_uuid"]
    # BIOS: syslinux's MBR boot code (from the fetched syslinux-common package) and the boot signature.
    mbr_bin = next((REPO / "build" / "cache" / "pkgroot").glob("syslinux-common_*/usr/lib/syslinux/mbr/mbr.bin"))
    with open(image, "rb") as handle:
        mbr = handle.read(512)
    assert mbr[:440] == mbr_bin.read_bytes()[:440]
    assert mbr[510:] == b"\x55\xaa"
    # The data partition is an empty, clean ext4 file system.
    data_copy = tmp_path / "ksolodata.ext4"
    with open(image, "rb") as handle, open(data_copy, "wb") as out:
        handle.seek((1 + boot_mib) * MIB)
        out.write(handle.read(data_mib * MIB))
    check = subprocess.run(["e2fsck", "-fn", str(data_copy)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    print(f"disk image: {image.stat().st_size} bytes ({image.stat().st_size / MIB:.0f} MiB, "
          f"{image.stat().st_blocks * 512 / MIB:.1f} MiB allocated); ISO: {built_image.iso.stat().st_size} bytes")


def test_boot_partition_holds_kernel_initramfs_syslinux_and_grub(built_image):
    image = disk_image(built_image)
    assert fat_read(image, MIB, "/boot/vmlinuz") == built_image.vmlinuz.read_bytes()
    # The media's initramfs (no kubesolo layer) and the KubeSolo system image the init mounts from here.
    assert fat_read(image, MIB, "/boot/initramfs") == (REPO / "build" / "test" / "initramfs-media").read_bytes()
    manifest = json.loads((built_image.output / "manifest.json").read_text())
    system = manifest["kubesolo"]["system_image"]
    sysimage = fat_read(image, MIB, system["media_path"])
    assert hashlib.sha256(sysimage).hexdigest() == system["sha256"] and len(sysimage) == system["size"]
    assert hashlib.sha512(sysimage).hexdigest() == system["sha512"]  # what the init checks at boot
    listing = fat_list(image, MIB, "/syslinux")
    for name in ("ldlinux.sys", "ldlinux.c32", "menu.c32", "libutil.c32", "libcom32.c32", "syslinux.cfg"):
        assert re.search(rf"/{re.escape(name)}$", listing, re.M | re.I), (name, listing)
    efi = fat_read(image, MIB, "/EFI/BOOT/BOOTX64.EFI")
    assert efi[:2] == b"MZ"
    # The same GRUB binary as the ISO's EFI system partition (same inputs, same bytes).
    assert efi == fat_read(built_image.iso, iso_esp_offset(built_image.iso), "/EFI/BOOT/BOOTX64.EFI")


def test_menus_are_the_isos_generated_from_one_list(built_image, tmp_path):
    """syslinux.cfg == the ISO's isolinux.cfg, grub.cfg == the ISO's grub.cfg; both carry every entry of
    the boot contract's boot_entries with the same kernel command line."""
    image = disk_image(built_image)
    syslinux_cfg = fat_read(image, MIB, "/syslinux/syslinux.cfg").decode()
    grub_cfg = fat_read(image, MIB, "/EFI/BOOT/grub.cfg").decode()
    # The same menus but for the medium the init takes the system image from: the FAT boot partition by its
    # label here, the ISO 9660 file system by its volume id there.
    sysimage = role_defaults("kubesolo")["kubesolo_sysimage_media_path"]
    on_disk = f"kubesolo.sysimage=LABEL={DEFAULTS['disk_image_boot_label']}:{sysimage}"
    on_iso = f"kubesolo.sysimage=LABEL={role_defaults('iso')['iso_volume_id']}:{sysimage}"
    iso_syslinux = iso_file(built_image.iso, "/isolinux/isolinux.cfg", tmp_path)
    iso_grub = fat_read(built_image.iso, iso_esp_offset(built_image.iso), "/EFI/BOOT/grub.cfg").decode()
    entries = CONTRACT["boot_entries"]
    for disk_cfg, iso_cfg in ((syslinux_cfg, iso_syslinux), (grub_cfg, iso_grub)):
        assert disk_cfg.count(on_disk) == len(entries) and iso_cfg.count(on_iso) == len(entries)
        assert disk_cfg.replace(on_disk, on_iso) == iso_cfg
    appends = re.findall(r"^\s*append (.*)$", syslinux_cfg, re.M)
    linuxes = re.findall(r"^\s*linux /boot/vmlinuz (.*)$", grub_cfg, re.M)
    labels = re.findall(r"^label (\S+)$", syslinux_cfg, re.M)
    ids = re.findall(r"--id (\S+) \{", grub_cfg)
    assert labels == ids == [entry["label"] for entry in entries]
    assert appends == linuxes and len(appends) == len(entries)
    for line, entry in zip(appends, entries, strict=True):
        assert line.endswith(entry["params"]) and f"kubesolo.data=LABEL={CONTRACT['data_label']}" in line


@pytest.fixture(scope="session")
def clean_rebuild(built_image):
    """The same build again from an empty build directory (shared download cache only)."""
    other = REPO / "build" / "test-disk-repro"
    shutil.rmtree(other, ignore_errors=True)
    ansible_playbook("build.yml", "-e", f"@{BUILD_VARS}", "-e", f"kubesolo_os_build_dir={other}",
                     "-e", f"kubesolo_os_output_dir={other}/output", "--skip-tags", "release")
    return other / "output"


def test_disk_image_is_reproducible(built_image, clean_rebuild):
    image = disk_image(built_image)
    assert sha256(clean_rebuild / image.name) == sha256(image)
    assert sha256(clean_rebuild / built_image.iso.name) == sha256(built_image.iso)


def test_data_size_is_a_variable(built_image, clean_rebuild):
    """disk_image_data_size_mib sets the KSOLODATA size (only the disk_image role is rerun)."""
    other = REPO / "build" / "test-disk-repro"
    run = ansible_playbook("build.yml", "-e", f"@{BUILD_VARS}", "-e", f"kubesolo_os_build_dir={other}",
                           "-e", f"kubesolo_os_output_dir={other}/output", "-e", "disk_image_data_size_mib=24",
                           "--skip-tags", "release")
    assert run.result.returncode == 0
    image = next((other / "output").glob("kubesolo-os-*-amd64.img"))
    assert partitions(image)[1]["size"] == 24 * 2048
    assert image.stat().st_size == (1 + DEFAULTS["disk_image_boot_size_mib"] + 24) * MIB
