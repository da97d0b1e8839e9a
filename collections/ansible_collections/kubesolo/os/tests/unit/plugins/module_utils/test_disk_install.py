# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Unit tests of kubesolo.os module_utils/disk_install: slot size, GPT script, target choice and the plan of a
re-install, on probe outputs of disk layouts (the loop-device and QEMU tests in tests/test_install.py run it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from ansible_collections.kubesolo.os.plugins.module_utils import disk_install as d
from ansible_collections.kubesolo.os.plugins.module_utils.ksolodata import parse_probe
from ansible_collections.kubesolo.os.tests.unit.plugins.module_utils.test_ksolodata import (
    CDROM,
    GIB_SECTORS,
    disk,
    probe,
)

LAYOUT = yaml.safe_load((Path(__file__).parents[8] / "files" / "installed-disk.yml").read_text())
MIB = 1024 * 1024


def installed(name: str = "vda", gib: float = 8, data: bool = True) -> str:
    parts, start = [], 2048
    for part in LAYOUT["partitions"]:
        size = 1024 * 2048 if part.get("slot") else part.get("size_mib", 0) * 2048
        if part.get("data"):
            if not data:
                break
            size = int(gib * GIB_SECTORS) - start - 34
        blkid = {"PART_ENTRY_NAME": part["name"]}
        if part.get("data"):
            blkid.update(TYPE="ext4", LABEL="KSOLODATA")
        parts.append({"start": start, "size": size, "blkid": blkid})
        start += size
    return disk(name, gib, blkid={"PTTYPE": "gpt"}, parts=parts)


def images(slot: bytes = b"s" * 3 * MIB) -> d.Images:
    return d.Images(version="1.0", slot=slot, esp=b"e" * 4096, boot_code=b"b" * 440, core=b"c" * 1024,
                    esp_files={"/grub/grub.cfg": "x"})


def test_slot_size_is_twice_the_image_at_least_1024_mib_in_64_mib_steps():
    assert d.slot_size_sectors(LAYOUT, 21 * MIB) == 1024 * 2048
    assert d.slot_size_sectors(LAYOUT, 600 * MIB) == 1216 * 2048  # 1200 MiB rounded up to 64 MiB steps
    assert d.slot_size_sectors(LAYOUT, 21 * MIB, slot_size_mib=200) == 200 * 2048
    with pytest.raises(d.InstallError, match="does not fit in a slot of 10 MiB"):
        d.slot_size_sectors(LAYOUT, 21 * MIB, slot_size_mib=10)


def test_sfdisk_script_follows_the_layout_and_leaves_out_the_data_partition_when_asked():
    script = d.sfdisk_script(LAYOUT, 2048 * 1024, data_partition=True)
    lines = script.splitlines()
    assert lines[:2] == ["label: gpt", "unit: sectors"]
    assert lines[2] == 'start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name="bios-boot"'
    assert lines[4].startswith("start=135168, size=2097152,") and lines[5].startswith("start=2232320, size=2097152,")
    assert lines[6] == 'start=4329472, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="KSOLODATA"'
    assert "KSOLODATA" not in d.sfdisk_script(LAYOUT, 2048 * 1024, data_partition=False)


def plan(text: str, **params) -> d.Plan:
    disks = parse_probe(text)
    return d.plan_install(lambda _c: (1, "", ""), disks, images(), LAYOUT, {"label": "KSOLODATA", **params})


def test_the_boot_cd_and_a_usb_stick_are_passed_over_for_the_blank_internal_disk():
    stick = disk("sda", 16, removable=1, usb=True)
    chosen = plan(probe(CDROM, stick, disk("vda", 8)))
    assert chosen.disk.path == "/dev/vda" and chosen.action == "create" and chosen.data_partition
    assert {r["device"] for r in chosen.refused} == {"/dev/sr0", "/dev/sda"}


def test_named_disk_with_data_needs_wipe_and_a_data_partition_is_never_erased():
    used = disk("vda", 8, blkid={"PTTYPE": "dos"}, parts=[{"blkid": {"TYPE": "xfs"}}])
    with pytest.raises(d.InstallError, match=r"not blank.*install_wipe"):
        plan(probe(used), device="/dev/vda")
    assert plan(probe(used), device="/dev/vda", wipe=True).steps[0].description.startswith("erase the start")
    data = disk("vdb", 8, blkid={"PTTYPE": "gpt"}, parts=[{"blkid": {"TYPE": "ext4", "LABEL": "KSOLODATA"}}])
    with pytest.raises(d.InstallError, match="never reformatted"):
        plan(probe(data), device="/dev/vdb", wipe=True)
    with pytest.raises(d.InstallError, match="too small"):
        plan(probe(disk("vdc", 1)), device="/dev/vdc")


def test_an_installed_disk_is_chosen_again_and_only_what_differs_is_written():
    slot = b"s" * 3 * MIB
    good = {  # what the disk reads back: boot code and core as the images, slot A and the ESP different
        "head -c 440 /dev/vda | sha256sum": hashlib.sha256(b"b" * 440).hexdigest(),
        "head -c 1024 /dev/vda1 | sha256sum": hashlib.sha256(b"c" * 1024).hexdigest(),
    }

    def run(command: str) -> tuple[int, str, str]:
        if command in good:
            return 0, good[command] + "  -\n", ""
        if command.startswith(f"head -c {len(slot)} /dev/vda3"):
            return 0, "0" * 64 + "  -\n", ""
        return 0, "/grub/grub.cfg x\n", ""  # the ESP's files are current

    disks = parse_probe(probe(CDROM, installed("vda")))
    result = d.plan_install(run, disks, images(slot), LAYOUT, {"label": "KSOLODATA"})
    assert result.action == "update" and result.disk.path == "/dev/vda"
    assert [s.description.split(" (")[0] for s in result.steps] == ["write slot A", "write the EFI system partition"]


def test_ksolodata_on_another_disk_is_kept_and_one_on_the_boot_stick_is_only_a_warning():
    other = disk("vdb", 2, blkid={"TYPE": "ext4", "LABEL": "KSOLODATA"})
    kept = plan(probe(disk("vda", 8), other))
    assert kept.disk.path == "/dev/vda" and not kept.data_partition
    assert "KSOLODATA" not in d.sfdisk_script(LAYOUT, kept.slot_sectors, kept.data_partition)
    stick = disk("sda", 8, removable=1, usb=True, blkid={"PTTYPE": "dos"},
                 parts=[{"blkid": {"TYPE": "ext4", "LABEL": "KSOLODATA"}, "dev": "8:1"}])
    warned = plan(probe(stick, disk("vda", 8), mounts="/dev/sda1 /mnt/data ext4 rw 0 0\n"))
    assert warned.data_partition and any("boot medium also holds KSOLODATA" in w for w in warned.warnings)
