# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Unit tests of kubesolo.os module_utils/ksolodata: disk inventory parsing, target selection, safety rules
and the plan, on probe outputs (/sys/block, blkid -p -o export, /proc/mounts) of many disk layouts."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from ansible_collections.kubesolo.os.plugins.module_utils import ksolodata as k

FIXTURES = Path(__file__).parent / "fixtures"
GIB_SECTORS = k.GIB // k.SECTOR


def disk(name: str, gib: float = 8, blkid: dict | None = None, parts: list[dict] | None = None, removable: int = 0,
         usb: bool = False, holders: tuple[str, ...] = (), dev: str = "", scsi_type: str = "") -> str:
    """Probe output of one disk, as probe_script() prints it on a node."""
    bus = "/usb1/1-1/1-1:1.0/host2/target2:0:0/2:0:0:0" if usb else "/0000:00:04.0/virtio2"
    lines = [f"@disk {name}", f"size={int(gib * GIB_SECTORS)}", f"removable={removable}", "ro=0",
             f"dev={dev or '8:0'}", f"devpath=/sys/devices/pci0000:00{bus}/block/{name}", f"scsi_type={scsi_type}"]
    lines += [f"holder={h}" for h in holders]
    lines += ["@blkid", *(f"{key}={value}" for key, value in (blkid or {}).items()), "@endblkid"]
    for number, part in enumerate(parts or [], start=1):
        pname = f"{name}{'p' if name[-1].isdigit() else ''}{number}"
        lines += [f"@part {pname}", f"number={number}", f"start={part.get('start', 2048)}",
                  f"size={part.get('size', int(gib * GIB_SECTORS) - 4096)}", f"dev={part.get('dev', '8:1')}"]
        lines += [f"holder={h}" for h in part.get("holders", ())]
        lines += ["@blkid", *(f"{key}={value}" for key, value in part.get("blkid", {}).items()), "@endblkid"]
    return "\n".join(lines) + "\n"


def probe(*disks: str, mounts: str = "", rootdev: str = "") -> str:
    return "".join(disks) + "@mounts\n" + mounts + "@endmounts\n" + f"@rootdev {rootdev}\n"


# The label the module is given (the play passes the boot contract's data_label; a fixture here).
LABEL = "KSOLODATA"
KSOLODATA_PART = {"blkid": {"TYPE": "ext4", "LABEL": LABEL, "PART_ENTRY_NAME": LABEL}}
CDROM = disk("sr0", gib=0.3, blkid={"TYPE": "iso9660", "LABEL": "KUBESOLO"}, scsi_type="5", dev="11:0")


def decide(text: str, **kw) -> k.Decision:
    return k.decide(k.parse_probe(text, kw.pop("candidates", None)), **{"label": LABEL, **kw})


# --- parsing ------------------------------------------------------------------------------------

def test_parse_reads_sizes_partitions_and_signatures():
    disks = k.parse_probe(probe(disk("sda", 16, {"PTTYPE": "gpt"}, [{"blkid": {"TYPE": "xfs"}}])))
    (sda,) = disks
    assert sda.size_bytes == 16 * k.GIB
    assert sda.partitions[0].path == "/dev/sda1"
    assert sda.signatures() == ["gpt partition table", "sda1: xfs file system"]


def test_parse_skips_ram_loop_and_empty_devices_unless_allowed():
    text = probe(disk("ram0", 0.01), disk("loop0", 1), disk("zram0", 2), disk("vdb", 0), disk("vdc", 4))
    assert [d.name for d in k.parse_probe(text)] == ["vdc"]
    assert [d.name for d in k.parse_probe(text, ["/dev/loop0"])] == ["loop0"]


def test_partition_names_of_nvme_and_loop_disks():
    assert k.Disk("nvme0n1").partition_path(1) == "/dev/nvme0n1p1"
    assert k.Disk("loop7").partition_path(1) == "/dev/loop7p1"
    assert k.Disk("sdb").partition_path(1) == "/dev/sdb1"


def test_recorded_debian_vm_root_disk_is_never_a_candidate():
    disks = k.parse_probe((FIXTURES / "debian-vm-root-on-vda.txt").read_text())
    (vda,) = disks
    assert "holds the root file system /" in vda.boot_reasons
    with pytest.raises(k.KsolodataError, match="No disk can be chosen"):
        k.decide(disks, label=LABEL)
    with pytest.raises(k.KsolodataError, match="boot medium or in use"):
        k.decide(disks, device="/dev/vda", wipe=True, label=LABEL)


def test_root_device_found_by_device_number():
    # / on /dev/root (no path in /proc/mounts): matched by stat's device number 8:2 = 2050.
    parts = [{"dev": "8:1", "blkid": {"TYPE": "vfat"}}, {"dev": "8:2", "blkid": {"TYPE": "ext4"}}]
    text = probe(disk("sda", 32, {"PTTYPE": "gpt"}, parts),
                 disk("sdb", 32, dev="8:16"), mounts="/dev/root / ext4 rw 0 0\n", rootdev="2050")
    decision = decide(text)
    assert decision.disk.name == "sdb"
    assert decision.refused[0]["device"] == "/dev/sda"
    assert "holds the root file system /" in decision.refused[0]["reasons"]


# --- rule: an existing KSOLODATA is never reformatted ----------------------------------------------

def test_existing_ksolodata_is_used_as_is():
    text = probe(disk("vda", 8, {"PTTYPE": "gpt"}, [KSOLODATA_PART]), disk("vdb", 8))
    decision = decide(text)
    assert (decision.action, decision.partition) == ("existing", "/dev/vda1")
    assert k.create_steps(decision, LABEL) and decision.action != "create"


def test_existing_mounted_ksolodata_on_kubesolo_node():
    text = probe(CDROM, disk("vda", 8, {"PTTYPE": "gpt"}, [KSOLODATA_PART]),
                 mounts="/dev/vda1 /mnt/data ext4 rw,noatime 0 0\n/dev/vda1 /var/lib/kubesolo ext4 rw 0 0\n")
    decision = decide(text)
    assert decision.action == "existing" and decision.mountpoint == "/mnt/data"


def test_existing_ksolodata_wins_even_with_wipe_and_device():
    text = probe(disk("vda", 8, {"PTTYPE": "gpt"}, [KSOLODATA_PART]))
    assert decide(text, device="/dev/vda", wipe=True).action == "existing"


def test_naming_another_disk_than_the_existing_ksolodata_is_refused():
    text = probe(disk("vda", 8, {"PTTYPE": "gpt"}, [KSOLODATA_PART]), disk("vdb", 8))
    with pytest.raises(k.KsolodataError, match="already holds KSOLODATA"):
        decide(text, device="/dev/vdb", wipe=True)


def test_two_ksolodata_file_systems_are_refused():
    text = probe(disk("vda", 8, {"PTTYPE": "gpt"}, [KSOLODATA_PART]), disk("vdb", 8, {"TYPE": "ext4",
                                                                                      "LABEL": "KSOLODATA"}))
    with pytest.raises(k.KsolodataError, match="More than one"):
        decide(text)


def test_ksolodata_label_on_a_non_ext4_file_system_is_refused():
    part = {"blkid": {"TYPE": "vfat", "LABEL": "KSOLODATA"}}
    with pytest.raises(k.KsolodataError, match="not ext4"):
        decide(probe(disk("vda", 8, {"PTTYPE": "dos"}, [part])))


def test_growable_space_after_the_last_partition():
    part = dict(KSOLODATA_PART, size=2 * GIB_SECTORS)
    decision = decide(probe(disk("vda", 8, {"PTTYPE": "gpt"}, [part])))
    assert decision.grow_sectors == 8 * GIB_SECTORS - 34 - 2048 - 2 * GIB_SECTORS
    assert "resize2fs" in k.grow_steps(decision)[1].command and "resize_inode" in k.grow_steps(decision)[1].command
    full = decide(probe(disk("vda", 8, {"PTTYPE": "gpt"}, [KSOLODATA_PART])))
    assert full.grow_sectors == 0


def test_not_last_partition_is_not_growable():
    swap = {"start": 2048 + 2 * GIB_SECTORS, "size": GIB_SECTORS, "blkid": {"TYPE": "swap"}}
    parts = [dict(KSOLODATA_PART, size=GIB_SECTORS), swap]
    assert decide(probe(disk("vda", 8, {"PTTYPE": "gpt"}, parts))).grow_sectors == 0


# --- rule: signatures are refused unless wipe + explicit device -------------------------------------

SIGNED = {
    "gpt-empty": {"PTTYPE": "gpt"},
    "dos-empty": {"PTTYPE": "dos"},
    "ext4-whole-disk": {"TYPE": "ext4", "LABEL": "OTHERDATA"},
    "xfs-whole-disk": {"TYPE": "xfs"},
    "md-raid-member": {"TYPE": "linux_raid_member"},
    "lvm-pv": {"TYPE": "LVM2_member"},
    "luks": {"TYPE": "crypto_LUKS"},
    "swap": {"TYPE": "swap"},
}


@pytest.mark.parametrize("name", sorted(SIGNED))
def test_signature_refused_without_wipe(name):
    text = probe(disk("vdb", 8, SIGNED[name]))
    with pytest.raises(k.KsolodataError, match="not blank"):
        decide(text, device="/dev/vdb")
    with pytest.raises(k.KsolodataError, match="No disk can be chosen"):
        decide(text)


@pytest.mark.parametrize("name", sorted(SIGNED))
def test_signature_wiped_only_when_named_with_wipe(name):
    text = probe(disk("vdb", 8, SIGNED[name]))
    decision = decide(text, device="/dev/vdb", wipe=True)
    assert decision.action == "create"
    steps = k.create_steps(decision, LABEL, wipe=True)
    assert "--wipe always" in steps[1].command and "dd if=/dev/zero" in steps[0].command
    with pytest.raises(k.KsolodataError):
        decide(text, wipe=True)  # wipe without a named device never applies


def test_partition_with_filesystem_refused():
    text = probe(disk("sdb", 8, {"PTTYPE": "gpt"}, [{"blkid": {"TYPE": "ntfs", "LABEL": "Windows"}}]))
    with pytest.raises(k.KsolodataError, match="ntfs file system labelled Windows"):
        decide(text, device="/dev/sdb")


def test_naming_a_partition_is_refused():
    text = probe(disk("sdb", 8, {"PTTYPE": "gpt"}, [{"blkid": {}}]))
    with pytest.raises(k.KsolodataError, match="is a partition"):
        decide(text, device="/dev/sdb1", wipe=True)


def test_unknown_device_is_refused():
    with pytest.raises(k.KsolodataError, match="not a disk on this node"):
        decide(probe(disk("sdb")), device="/dev/sdz")


# --- rule: the boot device is never chosen automatically (and refused when named) -------------------

def test_cdrom_boot_medium_is_skipped():
    decision = decide(probe(CDROM, disk("vda", 8)))
    assert decision.disk.name == "vda"
    assert decision.refused[0]["device"] == "/dev/sr0"


def test_usb_stick_with_hybrid_iso_is_boot_medium():
    stick = disk("sdb", 8, {"PTTYPE": "dos", "TYPE": "iso9660"}, [{"blkid": {"TYPE": "iso9660"}}], removable=1,
                 usb=True)
    text = probe(stick, disk("sda", 64))
    assert decide(text, allow_removable=True).disk.name == "sda"
    with pytest.raises(k.KsolodataError, match="boot medium"):
        decide(text, device="/dev/sdb", wipe=True)


@pytest.mark.parametrize("mounts", ["/dev/sda1 /boot ext4 rw 0 0\n", "/dev/sda2 / ext4 rw 0 0\n"])
def test_disk_with_mounted_partition_never_chosen(mounts):
    text = probe(disk("sda", 64, {"PTTYPE": "gpt"}, [{"blkid": {"TYPE": "ext4"}}, {"blkid": {"TYPE": "ext4"}}]),
                 mounts=mounts)
    with pytest.raises(k.KsolodataError, match="mounted on"):
        decide(text, device="/dev/sda", wipe=True)


def test_disk_held_by_lvm_or_raid_never_chosen():
    text = probe(disk("sdc", 64, {"PTTYPE": "gpt"}, [{"holders": ["dm-0"], "blkid": {"TYPE": "LVM2_member"}}]))
    with pytest.raises(k.KsolodataError, match="in use by dm-0"):
        decide(text, device="/dev/sdc", wipe=True)
    whole = probe(disk("sdd", 64, {"TYPE": "linux_raid_member"}, holders=("md0",)))
    with pytest.raises(k.KsolodataError, match="in use by md0"):
        decide(whole, device="/dev/sdd", wipe=True)


# --- rule: several candidates without a choice are refused, listing them -----------------------------

def test_two_blank_disks_are_refused_listing_both():
    text = probe(CDROM, disk("vda", 8), disk("vdb", 16))
    with pytest.raises(k.KsolodataError, match="Several disks") as info:
        decide(text)
    assert info.value.details["candidates"] == ["/dev/vda", "/dev/vdb"]
    assert "/dev/vda (8589934592 bytes)" in info.value.msg
    assert decide(text, device="/dev/vdb").disk.name == "vdb"


def test_three_disks_one_blank_chooses_the_blank_one():
    text = probe(disk("vda", 8, {"TYPE": "ext4", "LABEL": "OTHERDATA"}), disk("vdb", 8),
                 disk("vdc", 8, {"PTTYPE": "dos"}))
    decision = decide(text)
    assert decision.disk.name == "vdb" and decision.partition == "/dev/vdb1"
    assert {r["device"] for r in decision.refused} == {"/dev/vda", "/dev/vdc"}


# --- rule: minimum size; removable disks ----------------------------------------------------------

def test_small_disk_refused_named_or_not():
    text = probe(disk("vdb", 0.5))
    with pytest.raises(k.KsolodataError, match="smaller than the minimum"):
        decide(text, min_size_gib=1)
    with pytest.raises(k.KsolodataError, match="below the minimum"):
        decide(text, device="/dev/vdb", min_size_gib=1)
    assert decide(text, min_size_gib=0.25).disk.name == "vdb"


@pytest.mark.parametrize(("removable", "usb"), [(1, False), (0, True), (1, True)])
def test_removable_and_usb_not_auto_selected_unless_allowed(removable, usb):
    text = probe(disk("sdb", 16, removable=removable, usb=usb))
    with pytest.raises(k.KsolodataError, match="removable/USB"):
        decide(text)
    assert decide(text, allow_removable=True).disk.name == "sdb"
    assert decide(text, device="/dev/sdb").disk.name == "sdb"  # named explicitly: allowed


def test_read_only_disk_refused():
    text = probe(disk("sdb", 16).replace("ro=0", "ro=1"))
    with pytest.raises(k.KsolodataError, match="read-only"):
        decide(text, device="sdb")


# --- plans and provision() with a fake node ----------------------------------------------------------

class FakeNode:
    """Answers provision()'s commands from a probe text and an in-memory data partition."""

    def __init__(self, probe_text: str, files: dict[str, tuple[str, bytes]] | None = None,
                 dirs: dict[str, str] | None = None):
        self.probe_text = probe_text
        self.files = files or {}
        self.dirs = dirs or {}
        self.commands: list[str] = []

    def __call__(self, command: str) -> tuple[int, str, str]:
        self.commands.append(command)
        if command.startswith("for d in"):
            return 0, self.probe_text, ""
        if "@file" in command or "@dir" in command:
            out = []
            for path, (mode, content) in self.files.items():
                if f"/{path}" in command:
                    out += [f"@file {path} {mode}", base64.b64encode(content).decode(), "@endfile"]
            out += [f"@dir {path} {mode}" for path, mode in self.dirs.items() if f"/{path}'" in command
                    or f"/{path} " in command]
            return 0, "\n".join(out) + "\n", ""
        return 0, "", ""


PARAMS = {
    "label": LABEL,
    "directories": [{"path": "kubesolo", "mode": "0700"}, {"path": "network", "mode": "0755"}],
    "files": [{"path": "etc-kubesolo/hostname", "content": "node-1\n", "mode": "0644"},
              {"path": "etc-kubesolo/config.yaml", "content": "edge-key: s3cret\n", "mode": "0600", "secret": True}],
    "min_size_gib": 1,
}


def test_check_mode_runs_nothing_but_the_probe():
    node = FakeNode(probe(CDROM, disk("vda", 8)))
    result = k.provision(node, PARAMS, check_mode=True)
    assert result["changed"] and result["action"] == "create"
    assert len(node.commands) == 1
    assert result["plan"][:2] == ["create a GPT on /dev/vda with one partition named KSOLODATA",
                                  "make ext4 labelled KSOLODATA on /dev/vda1"]
    secret_diff = next(d for d in result["diff"] if d["after_header"] == "etc-kubesolo/config.yaml")
    assert "s3cret" not in str(secret_diff) and "<secret:" in secret_diff["after"]


def test_create_runs_sfdisk_mkfs_then_writes_config():
    node = FakeNode(probe(CDROM, disk("vda", 8)))
    result = k.provision(node, PARAMS)
    joined = "\n".join(node.commands)
    assert "/sbin/sfdisk --quiet --wipe never" in joined
    assert "/sbin/mke2fs -q -F -t ext4 -L KSOLODATA /dev/vda1" in joined
    assert "mount -t ext4 -o rw /dev/vda1 /run/ksolodata" in joined and "umount /run/ksolodata" in joined
    assert result["changed"] and len(result["executed"]) == 2 + 2 + 2


def test_existing_unchanged_config_is_idempotent():
    node = FakeNode(probe(disk("vda", 8, {"PTTYPE": "gpt"}, [KSOLODATA_PART]),
                          mounts="/dev/vda1 /mnt/data ext4 rw 0 0\n"),
                    files={"etc-kubesolo/hostname": ("644", b"node-1\n"),
                           "etc-kubesolo/config.yaml": ("600", b"edge-key: s3cret\n")},
                    dirs={"kubesolo": "700", "network": "755"})
    result = k.provision(node, dict(PARAMS, update_config=True))
    assert not result["changed"] and result["plan"] == []
    assert not any(c.startswith(("mount", "mkdir")) for c in node.commands)


def test_existing_config_drift_only_reported_unless_update_config():
    node = FakeNode(probe(disk("vda", 8, {"PTTYPE": "gpt"}, [KSOLODATA_PART]),
                          mounts="/dev/vda1 /mnt/data ext4 rw 0 0\n"),
                    files={"etc-kubesolo/hostname": ("644", b"old\n")}, dirs={"kubesolo": "700", "network": "755"})
    result = k.provision(node, PARAMS)
    assert not result["changed"]
    assert result["config_drift"] == ["etc-kubesolo/hostname", "etc-kubesolo/config.yaml"]
    updated = k.provision(node, dict(PARAMS, update_config=True))
    assert updated["changed"]
    assert any("base64 -d" in c and "hostname" in c for c in node.commands)


def test_mode_only_change_is_detected():
    changes = k.config_changes([{"path": "a", "content": "x", "mode": "0600"}], [], ({"a": ("644", b"x")}, {}))
    assert changes[0]["diff"]["before"] == "mode 644\n" and changes[0]["mode"] == "600"


def test_file_state_round_trip():
    text = "@file etc-kubesolo/hostname 644\nbm9kZS0x\nCg==\n@endfile\n@dir network 755\n"
    files, dirs = k.parse_file_state(text)
    assert files == {"etc-kubesolo/hostname": ("644", b"node-1\n")} and dirs == {"network": "755"}


def test_failed_command_names_the_step():
    class Failing(FakeNode):
        def __call__(self, command):
            rc, out, err = super().__call__(command)
            return (1, "sfdisk: cannot open /dev/vda", "") if "sfdisk" in command else (rc, out, err)

    with pytest.raises(k.KsolodataError, match="Failed to create a GPT on /dev/vda"):
        k.provision(Failing(probe(disk("vda", 8))), PARAMS)


def test_probe_script_restricted_to_candidates():
    script = k.probe_script(["/dev/loop3"])
    assert "/sys/block/loop3" in script and "/sys/block/*" not in script
    assert "/sys/block/*" in k.probe_script()


@pytest.mark.parametrize(("name", "valid"), [("node-1", True), ("Node1", False), ("-a", False), ("a" * 64, False)])
def test_hostname_validation(name, valid):
    assert k.hostname_valid(name) is valid


def test_provision_without_a_label_is_refused_before_touching_the_node():
    """The label is the play's (the boot contract's data_label): there is no built-in default to fall back on."""
    node = FakeNode(probe(disk("vda", 8)))
    with pytest.raises(k.KsolodataError, match="No label given"):
        k.provision(node, {key: value for key, value in PARAMS.items() if key != "label"})
    assert node.commands == []
