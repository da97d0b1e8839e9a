# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Unit tests of kubesolo.os.image_flash and kubesolo.os.block_device_info: the safety rules, the layout
plan, and check mode (nothing is written). Devices are described by hand-made dicts; no real disk is used.
The end-to-end tests against loop devices are in tests/test_flash_usb.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kubesolo.os.plugins.module_utils import blockdev
from ansible_collections.kubesolo.os.plugins.modules import block_device_info, image_flash

MIB = 1024 * 1024
IMAGE_TABLE = {"label": "dos", "id": "0x4b534f53", "partitions": [
    {"number": 1, "start": 2048, "size": 524288, "type": "ef", "bootable": True},
    {"number": 2, "start": 526336, "size": 131072, "type": "83", "bootable": False},
]}
# The label the play passes (the boot contract's data_label; a fixture here).
LABEL = "KSOLODATA"
IMAGE = {"path": "img", "size": (526336 + 131072) * 512, "table": IMAGE_TABLE,
         "data_partition": dict(IMAGE_TABLE["partitions"][1], fstype="ext4"), "boot_bytes": 526336 * 512}


def stick(**changes: Any) -> dict[str, Any]:
    info = {"path": "/dev/sdz", "realpath": "/dev/sdz", "exists": True, "is_block": True, "name": "sdz",
            "type": "disk", "partition": False, "parent": "", "size": 8 * 1024 * MIB, "model": "Stick",
            "vendor": "ACME", "serial": "123", "transport": "usb", "removable": True, "sd_card": False,
            "read_only": False, "logical_sector_size": 512, "in_use": [], "system_paths": [], "table": None,
            "data_partition": None}
    info.update(changes)
    return info


def rule(info: dict[str, Any], allow_fixed: bool = False, keep: bool = False) -> dict[str, str] | None:
    return blockdev.refusal(info, IMAGE, allow_fixed, keep, LABEL)


def test_a_usb_stick_that_fits_may_be_written():
    assert rule(stick()) is None
    assert rule(stick(transport="", removable=True)) is None
    assert rule(stick(transport="mmc", removable=False, sd_card=True)) is None


@pytest.mark.parametrize(("changes", "name", "override"), [
    ({"exists": False}, "block-device", None),
    ({"is_block": False}, "block-device", None),
    ({"partition": True, "parent": "sdz", "type": "part"}, "whole-disk", None),
    ({"type": "rom"}, "whole-disk", None),
    ({"system_paths": ["/"]}, "system-disk", None),
    ({"in_use": ["/dev/sdz1 on /media/x"]}, "not-mounted", None),
    ({"read_only": True}, "writable", None),
    ({"removable": False, "transport": "sata"}, "removable", "flash_allow_fixed_disk: true"),
    ({"logical_sector_size": 4096}, "sector-size", None),
    ({"size": 100 * MIB}, "size", None),
])
def test_each_rule_refuses_with_one_message_naming_it(changes, name, override):
    found = rule(stick(**changes))
    assert found is not None and found["rule"] == name
    assert f"rule '{name}'" in found["msg"] and found["msg"].startswith("Refusing to write to /dev/sdz")
    if override:
        assert f"Override: {override}." in found["msg"]
    else:
        assert "No variable overrides this rule." in found["msg"]


def test_system_disk_wins_over_mounted_and_fixed_disk_may_be_allowed():
    assert rule(stick(system_paths=["/"], in_use=["/dev/sdz1 on /"]))["rule"] == "system-disk"
    assert rule(stick(removable=False, transport="sata"), allow_fixed=True) is None


def test_keep_data_needs_a_data_partition_after_the_boot_part():
    found = rule(stick(), keep=True)
    assert found["rule"] == "keep-data" and "flash_keep_data: false" in found["msg"]
    early = stick(data_partition={"number": 2, "start": 4096, "size": 1000, "type": "83"})
    assert rule(early, keep=True)["rule"] == "keep-data"
    ok = stick(data_partition={"number": 2, "start": 526336, "size": 131072, "type": "83"})
    assert rule(ok, keep=True) is None


def test_plan_grows_the_data_partition_to_the_end():
    info = stick()
    table, data, steps = image_flash.plan_layout(info, IMAGE, keep_data=False, grow=True, label=LABEL)
    end = info["size"] // 512
    assert data["start"] == 526336 and data["start"] + data["size"] == end
    assert table["partitions"][0] == IMAGE_TABLE["partitions"][0]
    assert steps[0].startswith("write the whole image")


def test_plan_keeps_the_existing_data_partition_start():
    info = stick(data_partition={"number": 3, "start": 600000, "size": 5000, "type": "83"})
    table, data, steps = image_flash.plan_layout(info, IMAGE, keep_data=True, grow=False, label=LABEL)
    assert data["number"] == 2 and data["start"] == 600000 and data["size"] == 5000
    assert "keeping the KSOLODATA partition at sector 600000" in steps[0]
    script = image_flash.sfdisk_script(table)
    assert "start=600000, size=5000, type=83" in script and "start=2048, size=524288, type=ef, bootable" in script


def test_plan_creates_a_data_partition_after_an_image_without_one():
    iso = {"path": "iso", "size": 23 * MIB, "data_partition": None, "boot_bytes": 23 * MIB,
           "table": {"label": "dos", "id": "0x1", "partitions": [
               {"number": 1, "start": 64, "size": 47000, "type": "0", "bootable": True}]}}
    table, data, _steps = image_flash.plan_layout(stick(), iso, keep_data=False, grow=True, label=LABEL)
    assert data["create"] and data["number"] == 2 and data["start"] == 23 * 2048
    assert [p["number"] for p in table["partitions"]] == [1, 2]


def run_module(module, args: dict[str, Any], capsys) -> dict[str, Any]:
    args = {"data_label": LABEL, **args}
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def test_image_flash_refuses_a_confirmation_naming_another_device(capsys, tmp_path):
    image = tmp_path / "x.img"
    image.write_bytes(b"\0" * 1024)
    result = run_module(image_flash, {"device": "/dev/sdz", "confirm": "/dev/sdy", "image": str(image)}, capsys)
    assert result["failed"] and result["rule"] == "confirmation"
    assert "Override: flash_confirm: /dev/sdz." in result["msg"]


def test_image_flash_refuses_a_regular_file_in_check_mode(capsys, tmp_path):
    image = tmp_path / "x.img"
    image.write_bytes(b"\0" * 1024)
    target = tmp_path / "not-a-disk"
    target.write_bytes(b"keep")
    result = run_module(image_flash, {"device": str(target), "confirm": str(target), "image": str(image),
                                      "_ansible_check_mode": True}, capsys)
    assert result["failed"] and result["rule"] == "block-device"
    assert target.read_bytes() == b"keep"


def test_block_device_info_reports_a_missing_device(capsys, tmp_path):
    result = run_module(block_device_info, {"device": str(tmp_path / "nothing")}, capsys)
    assert not result["changed"] and result["refusal"]["rule"] == "block-device"
    assert "does not exist" in result["refusal"]["msg"]


def test_parse_mounts_decodes_spaces():
    text = "/dev/sdz1 /media/my\\040stick vfat rw 0 0\nproc /proc proc rw 0 0\n"
    assert blockdev.parse_mounts(text) == [("/dev/sdz1", "/media/my stick")]


@pytest.mark.parametrize("module", [image_flash, block_device_info])
def test_the_data_label_is_a_required_argument(module, capsys):
    """No module re-declares the label: without data_label (the play passes the contract's) it fails."""
    with patch_module_args({"device": "/dev/sdz", "confirm": "/dev/sdz", "image": "x.img"}), pytest.raises(SystemExit):
        module.main()
    result = json.loads(capsys.readouterr().out)
    assert result["failed"] and "missing required arguments: data_label" in result["msg"]
