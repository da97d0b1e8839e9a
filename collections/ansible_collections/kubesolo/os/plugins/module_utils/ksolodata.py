# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""KSOLODATA provisioning: disk inventory, target selection, safety rules and the command plan.

Pure Python, shared by the ``kubesolo.os.ksolodata`` module (targets with Python) and action plugin
(targets without Python, driven with low-level shell commands). Nothing here runs a command itself:
``provision()`` gets a ``run(command) -> (rc, stdout, stderr)`` callable, so the same logic runs over
``subprocess`` on the node and over Ansible's connection from the controller.

The node is inspected with commands a busybox image has: ``/sys/block`` (sizes, removable flag,
holders, partitions), ``/sbin/blkid -p -o export`` (low-level probe: partition tables, file systems,
RAID and LVM signatures, GPT partition names), ``/proc/mounts`` and ``stat`` of ``/``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubesolo.os.plugins.module_utils.blockdev import ext4_grow_script

SECTOR = 512
GIB = 1024**3
# GPT type of a Linux file system partition.
LINUX_FS_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
# Real tools by full path: busybox sh runs its own applets first for bare names.
BLKID = "/sbin/blkid"
SFDISK = "/sbin/sfdisk"
MKE2FS = "/sbin/mke2fs"
E2FSCK = "/sbin/e2fsck"
RESIZE2FS = "/sbin/resize2fs"
SBIN = "/sbin"
# Devices never considered as data disks: RAM disks, compressed RAM, device-mapper/RAID/loop
# block devices (loop only unless named in the candidate allow-list), floppies and optical drives.
IGNORED_PREFIXES = ("ram", "zram", "dm-", "md", "loop", "fd", "nbd", "sr")
SIGNATURE_NAMES = {
    "linux_raid_member": "RAID member (md)",
    "isw_raid_member": "RAID member (Intel)",
    "ddf_raid_member": "RAID member (DDF)",
    "LVM2_member": "LVM physical volume",
    "crypto_LUKS": "LUKS encrypted volume",
    "iso9660": "ISO9660 boot medium",
}


class KsolodataError(Exception):
    """A safety rule refused the operation, or a command failed. The message says which and why."""

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


@dataclass
class Partition:
    name: str
    number: int = 0
    start: int = 0  # sectors
    size: int = 0  # sectors
    dev: str = ""  # MAJ:MIN
    holders: list[str] = field(default_factory=list)
    blkid: dict[str, str] = field(default_factory=dict)
    mountpoints: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"

    @property
    def fstype(self) -> str:
        return self.blkid.get("TYPE", "")

    @property
    def label(self) -> str:
        return self.blkid.get("LABEL", "")

    @property
    def partlabel(self) -> str:
        return self.blkid.get("PART_ENTRY_NAME", "")


@dataclass
class Disk:
    name: str
    size: int = 0  # sectors
    removable: bool = False
    ro: bool = False
    devpath: str = ""
    dev: str = ""
    scsi_type: str = ""
    holders: list[str] = field(default_factory=list)
    blkid: dict[str, str] = field(default_factory=dict)
    partitions: list[Partition] = field(default_factory=list)
    mountpoints: list[str] = field(default_factory=list)
    boot_reasons: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"

    @property
    def size_bytes(self) -> int:
        return self.size * SECTOR

    @property
    def usb(self) -> bool:
        return "/usb" in self.devpath

    @property
    def cdrom(self) -> bool:
        return self.name.startswith("sr") or self.scsi_type == "5"

    def partition_path(self, number: int) -> str:
        sep = "p" if self.name[-1].isdigit() else ""
        return f"/dev/{self.name}{sep}{number}"

    def signatures(self) -> list[str]:
        """Everything that shows the disk holds data: partition table, file systems, RAID, LVM."""
        found = []
        if self.blkid.get("PTTYPE"):
            found.append(f"{self.blkid['PTTYPE']} partition table")
        kind = self.blkid.get("TYPE")
        if kind:
            label = f" labelled {self.blkid['LABEL']}" if self.blkid.get("LABEL") else ""
            found.append(f"{SIGNATURE_NAMES.get(kind, kind + ' file system')}{label} on the whole disk")
        for part in self.partitions:
            what = SIGNATURE_NAMES.get(part.fstype, f"{part.fstype} file system") if part.fstype else "partition"
            label = f" labelled {part.label}" if part.label else ""
            found.append(f"{part.name}: {what}{label}")
        return found

    def summary(self) -> dict[str, Any]:
        return {
            "device": self.path,
            "size_bytes": self.size_bytes,
            "removable": self.removable,
            "usb": self.usb,
            "signatures": self.signatures(),
            "boot_or_in_use": self.boot_reasons,
        }


# --- gathering ----------------------------------------------------------------------------------

def probe_script(candidates: list[str] | None = None) -> str:
    """POSIX sh (busybox) that prints the disk inventory parse_probe() reads.

    With ``candidates`` only those disks are looked at (tests restrict discovery to their loop devices).
    """
    if candidates:
        names = " ".join(shlex.quote("/sys/block/" + c.rsplit("/", 1)[-1]) for c in candidates)
        skip = "@none@"
    else:
        names = "/sys/block/*"
        skip = "ram*|zram*|loop*|fd*|nbd*|dm-*|md*"
    return (
        f"for d in {names}; do [ -d \"$d\" ] || continue; n=${{d##*/}}; "
        "echo \"@disk $n\"; echo \"size=$(cat $d/size)\"; echo \"removable=$(cat $d/removable 2>/dev/null)\"; "
        "echo \"ro=$(cat $d/ro 2>/dev/null)\"; echo \"dev=$(cat $d/dev)\"; "
        "echo \"devpath=$(readlink -f $d)\"; echo \"scsi_type=$(cat $d/device/type 2>/dev/null)\"; "
        "for h in $d/holders/*; do [ -e \"$h\" ] && echo \"holder=${h##*/}\"; done; "
        f"case $n in {skip}) ;; *) "
        "echo @blkid; " + BLKID + " -p -o export /dev/$n 2>/dev/null; echo @endblkid;; esac; "
        "for p in $d/$n*; do [ -r \"$p/partition\" ] || continue; echo \"@part ${p##*/}\"; "
        "echo \"number=$(cat $p/partition)\"; echo \"start=$(cat $p/start)\"; echo \"size=$(cat $p/size)\"; "
        "echo \"dev=$(cat $p/dev)\"; "
        "for h in $p/holders/*; do [ -e \"$h\" ] && echo \"holder=${h##*/}\"; done; "
        "echo @blkid; " + BLKID + " -p -o export /dev/${p##*/} 2>/dev/null; echo @endblkid; done; "
        "done; echo @mounts; cat /proc/mounts; echo @endmounts; echo \"@rootdev $(stat -c %d / 2>/dev/null)\""
    )


def _split_dev(number: int) -> str:
    major = ((number >> 8) & 0xFFF) | ((number >> 32) & ~0xFFF)
    minor = (number & 0xFF) | ((number >> 12) & ~0xFF)
    return f"{major}:{minor}"


def parse_probe(text: str, candidates: list[str] | None = None) -> list[Disk]:
    """Disks from the output of probe_script(), with their boot/in-use reasons worked out."""
    disks: list[Disk] = []
    current: Disk | Partition | None = None
    in_blkid = in_mounts = False
    mounts: list[tuple[str, str, str]] = []
    rootdev = ""
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if in_blkid:
            if line == "@endblkid":
                in_blkid = False
            elif "=" in line and current is not None:
                key, _sep, value = line.partition("=")
                current.blkid[key] = value
            continue
        if in_mounts:
            if line == "@endmounts":
                in_mounts = False
            else:
                fields = line.split()
                if len(fields) >= 3:
                    mounts.append((fields[0], fields[1].replace("\\040", " "), fields[2]))
            continue
        if line.startswith("@disk "):
            current = Disk(name=line[6:].strip())
            disks.append(current)
        elif line.startswith("@part ") and disks:
            current = Partition(name=line[6:].strip())
            disks[-1].partitions.append(current)
        elif line == "@blkid":
            in_blkid = True
        elif line == "@mounts":
            in_mounts = True
        elif line.startswith("@rootdev"):
            value = line[8:].strip()
            rootdev = _split_dev(int(value)) if value.isdigit() else ""
        elif "=" in line and current is not None:
            key, _sep, value = line.partition("=")
            _set_attr(current, key.strip(), value.strip())
    wanted = {c.rsplit("/", 1)[-1] for c in candidates or []}
    kept = []
    for disk in disks:
        if wanted:
            if disk.name not in wanted:
                continue
        elif disk.name.startswith(IGNORED_PREFIXES) and not disk.name.startswith("sr"):
            continue
        if disk.size == 0 and not disk.cdrom:
            continue
        disk.partitions.sort(key=lambda p: p.number)
        _mark_in_use(disk, mounts, rootdev)
        kept.append(disk)
    return kept


def _set_attr(target: Disk | Partition, key: str, value: str) -> None:
    if key == "holder":
        target.holders.append(value)
    elif key in ("size", "start", "number"):
        setattr(target, key, int(value) if value.isdigit() else 0)
    elif key in ("removable", "ro"):
        setattr(target, key, value == "1")
    elif key in ("dev", "devpath", "scsi_type"):
        setattr(target, key, value)


def _mark_in_use(disk: Disk, mounts: list[tuple[str, str, str]], rootdev: str) -> None:
    reasons = disk.boot_reasons
    by_path = {}
    for source, target, _fstype in mounts:
        by_path.setdefault(source, []).append(target)
    disk.mountpoints = by_path.get(disk.path, [])
    for part in disk.partitions:
        part.mountpoints = by_path.get(part.path, [])
    if disk.cdrom:
        reasons.append("optical drive (boot medium)")
    if disk.blkid.get("TYPE") == "iso9660" or any(p.fstype == "iso9660" for p in disk.partitions):
        reasons.append("holds an ISO9660 file system (boot medium)")
    if rootdev and (disk.dev == rootdev or any(p.dev == rootdev for p in disk.partitions)):
        reasons.append("holds the root file system /")
    if disk.mountpoints:
        reasons.append(f"mounted on {', '.join(disk.mountpoints)}")
    for part in disk.partitions:
        if part.mountpoints:
            reasons.append(f"{part.name} mounted on {', '.join(part.mountpoints)}")
        if part.holders:
            reasons.append(f"{part.name} in use by {', '.join(part.holders)}")
    if disk.holders:
        reasons.append(f"in use by {', '.join(disk.holders)}")


# --- decision -----------------------------------------------------------------------------------

@dataclass
class Decision:
    action: str  # "existing" or "create"
    disk: Disk
    partition: str  # device path of the KSOLODATA file system
    partition_number: int = 1
    mountpoint: str = ""  # where it is mounted already ("" when not mounted)
    grow_sectors: int = 0  # free sectors after an existing partition (when it is the last one)
    part_sectors: int = 0  # size of the existing partition
    fs_short_bytes: int = 0  # how much smaller than its partition the file system is (set by provision())
    refused: list[dict[str, Any]] = field(default_factory=list)  # disks passed over and why


def find_existing(disks: list[Disk], label: str) -> list[tuple[Disk, Partition | None]]:
    """Every file system labelled ``label`` (a partition, or a whole disk without partition table)."""
    found: list[tuple[Disk, Partition | None]] = []
    for disk in disks:
        if disk.blkid.get("LABEL") == label and not disk.partitions:
            found.append((disk, None))
        for part in disk.partitions:
            if part.label == label:
                found.append((disk, part))
    return found


def _match(disks: list[Disk], device: str) -> tuple[Disk | None, Partition | None]:
    name = device.rsplit("/", 1)[-1]
    for disk in disks:
        if disk.name == name:
            return disk, None
        for part in disk.partitions:
            if part.name == name:
                return disk, part
    return None, None


def refusal_reasons(disk: Disk, min_bytes: int, allow_removable: bool) -> list[str]:
    """Why a disk cannot be chosen automatically (empty: it is a candidate)."""
    reasons = list(disk.boot_reasons)
    if disk.ro:
        reasons.append("read-only")
    if disk.size_bytes < min_bytes:
        reasons.append(f"smaller than the minimum size ({disk.size_bytes} < {min_bytes} bytes)")
    if (disk.removable or disk.usb) and not allow_removable:
        reasons.append("removable/USB disk (set ksolodata_allow_removable to allow)")
    reasons.extend(f"not blank: {sig}" for sig in disk.signatures())
    return reasons


def decide(disks: list[Disk], device: str = "", wipe: bool = False, min_size_gib: float = 1.0,
           allow_removable: bool = False, *, label: str) -> Decision:
    """Apply the safety rules and choose where the data file system (``label``) lives; KsolodataError if refused.

    1. An existing ``label`` file system is always used as it is (never reformatted); more than one is
       refused, and so is naming a different device than the one holding it.
    2. A device named in ``device`` must be a whole disk that is not the boot medium nor in use, at
       least ``min_size_gib``; one holding any signature is refused unless ``wipe`` is true.
    3. Without ``device`` exactly one blank, big enough, non-boot, non-removable (unless allowed) disk
       must exist; none or several are refused, listing the disks.
    """
    min_bytes = int(min_size_gib * GIB)
    existing = find_existing(disks, label)
    if len(existing) > 1:
        where = ", ".join(p.path if p else d.path for d, p in existing)
        raise KsolodataError(f"More than one file system labelled {label} ({where}): the boot would pick one "
                             "at random; remove the label from all but one by hand", existing=where)
    if existing:
        disk, part = existing[0]
        if device:
            named_disk, named_part = _match(disks, device)
            other_part = bool(named_part and part and named_part.name != part.name)
            if named_disk is None or named_disk.name != disk.name or other_part:
                raise KsolodataError(f"{device} was named, but {part.path if part else disk.path} already holds "
                                     f"{label}: it is never reformatted and a second one is never made")
        if part is None:
            return Decision("existing", disk, disk.path, 0, mountpoint=(disk.mountpoints or [""])[0])
        if part.fstype != "ext4":
            raise KsolodataError(f"{part.path} is labelled {label} but holds {part.fstype or 'no'} file system, "
                                 "not ext4: fix it by hand (it is never reformatted)")
        last = max(disk.partitions, key=lambda p: p.start)
        free = 0
        if last.name == part.name:
            usable_end = disk.size - 34 if disk.blkid.get("PTTYPE") == "gpt" else disk.size
            free = max(0, usable_end - (part.start + part.size))
            free = free if free >= 2048 else 0  # ignore alignment slack below 1 MiB
        return Decision("existing", disk, part.path, part.number, mountpoint=(part.mountpoints or [""])[0],
                        grow_sectors=free, part_sectors=part.size)

    if device:
        disk, part = _match(disks, device)
        if disk is None:
            raise KsolodataError(f"{device} is not a disk on this node (disks: "
                                 f"{', '.join(d.path for d in disks) or 'none'})")
        if part is not None:
            raise KsolodataError(f"{device} is a partition: name the whole disk ({disk.path}); its partition "
                                 "table is replaced (with ksolodata_wipe: true)")
        if disk.boot_reasons:
            raise KsolodataError(f"{disk.path} is the boot medium or in use ({'; '.join(disk.boot_reasons)}): "
                                 f"it is never used for {label}", disk=disk.summary())
        if disk.ro:
            raise KsolodataError(f"{disk.path} is read-only")
        if disk.size_bytes < min_bytes:
            raise KsolodataError(f"{disk.path} is {disk.size_bytes} bytes, below the minimum of "
                                 f"{min_size_gib} GiB (ksolodata_min_size_gib)", disk=disk.summary())
        signatures = disk.signatures()
        if signatures and not wipe:
            raise KsolodataError(f"{disk.path} is not blank ({'; '.join(signatures)}): refused; set "
                                 "ksolodata_wipe: true to erase it", disk=disk.summary())
        return Decision("create", disk, disk.partition_path(1))

    candidates, refused = [], []
    for disk in disks:
        reasons = refusal_reasons(disk, min_bytes, allow_removable)
        if reasons:
            refused.append({"device": disk.path, "reasons": reasons})
        else:
            candidates.append(disk)
    if not candidates:
        listing = "; ".join(f"{r['device']}: {', '.join(r['reasons'])}" for r in refused) or "no disks at all"
        raise KsolodataError(f"No disk can be chosen for {label} automatically ({listing}); name one with "
                             "ksolodata_device", refused=refused)
    if len(candidates) > 1:
        listing = ", ".join(f"{d.path} ({d.size_bytes} bytes)" for d in candidates)
        raise KsolodataError(f"Several disks could hold {label}: {listing}; choose one with ksolodata_device",
                             candidates=[d.path for d in candidates])
    chosen = candidates[0]
    return Decision("create", chosen, chosen.partition_path(1), refused=refused)


# --- plans --------------------------------------------------------------------------------------

@dataclass
class Step:
    description: str
    command: str


def create_steps(decision: Decision, label: str, wipe: bool = False) -> list[Step]:
    disk = decision.disk.path
    part = decision.partition
    script = f"label: gpt\\nstart=2048, type={LINUX_FS_GUID}, name=\"{label}\"\\n"
    wipe_opts = "--wipe always --wipe-partitions always" if wipe else "--wipe never --wipe-partitions always"
    steps = []
    if wipe:
        # Old signatures inside the first MiB and at the end (backup GPT, md 0.90) go with sfdisk's wipe;
        # zero the first MiB too so no stale boot sector or metadata survives.
        steps.append(Step(f"erase the start of {disk}", f"dd if=/dev/zero of={disk} bs=1M count=1 conv=fsync 2>&1"))
    steps += [
        Step(f"create a GPT on {disk} with one partition named {label}",
             f"printf '{script}' | {SFDISK} --quiet {wipe_opts} {disk} 2>&1; "
             f"{SFDISK} -d {disk} 2>/dev/null | grep -q 'name=\"{label}\"' || exit 1; "
             f"partx -a {disk} 2>/dev/null; partx -u {disk} 2>/dev/null; "
             f"[ -b {part} ] || partprobe {disk} 2>/dev/null; "
             f"i=0; while [ ! -b {part} ] && [ $i -lt 15 ]; do sleep 1; i=$((i+1)); done; [ -b {part} ]"),
        Step(f"make ext4 labelled {label} on {part}", f"{MKE2FS} -q -F -t ext4 -L {label} {part} 2>&1"),
    ]
    return steps


def grow_steps(decision: Decision) -> list[Step]:
    """Grow the partition (when there is room after it) and its ext4 file system (when it is smaller than
    the partition). Every command's failure fails the step: nothing is claimed that did not happen."""
    disk, part, num = decision.disk.path, decision.partition, decision.partition_number
    steps = []
    if decision.grow_sectors:
        # --no-reread: sfdisk refuses a disk in use (KSOLODATA mounted) otherwise; the kernel learns the
        # new size of the partition with partx -u (BLKPG, allowed while mounted), which is then checked.
        name = part.rsplit("/", 1)[-1]
        new_size = decision.part_sectors + decision.grow_sectors
        steps.append(Step(
            f"grow partition {num} of {disk} to the end of the disk",
            # The backup GPT to the new end of the disk (not needed, and refused, on an MBR disk).
            f"set -e; {SFDISK} --relocate gpt-bak-std {disk} 2>&1 || true; "
            f"echo ', +' | {SFDISK} --quiet --no-reread --no-tell-kernel -N {num} {disk} 2>&1; "
            f"partx -u -n {num} {disk} 2>&1 || true; "
            f"size=$(cat /sys/class/block/{name}/size); "
            f"[ \"$size\" -ge {new_size - 2048} ] || {{ echo \"the partition table says partition {num} is "
            f"larger now, but the kernel still sees $size sectors for {part}: reboot, then run again\"; exit 1; }}"))
    steps.append(Step(f"grow the ext4 file system on {part}" + (" (online)" if decision.mountpoint else ""),
                      ext4_grow_script(part, mounted=bool(decision.mountpoint), sbin=SBIN)))
    return steps


def fs_shortfall(run: Callable[[str], tuple[int, str, str]], decision: Decision) -> int:
    """Bytes by which the ext4 file system on the partition is smaller than the partition (0: fills it,
    within one block group)."""
    rc, out, _err = run(f"{SBIN}/tune2fs -l {decision.partition} 2>/dev/null")
    if rc != 0:
        return 0
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    try:
        blocks = int(info["Block count"].strip())
        size = int(info["Block size"].strip())
        per_group = int(info["Blocks per group"].strip())
    except (KeyError, ValueError):
        return 0
    short = decision.part_sectors * SECTOR - blocks * size
    return short if short > per_group * size else 0


def _q(value: str) -> str:
    return shlex.quote(value)


def file_state_command(root: str, paths: list[str], dirs: list[str]) -> str:
    """Prints mode and base64 content of each file, and mode of each directory, below root."""
    parts = []
    for path in paths:
        full = _q(f"{root}/{path}")
        parts.append(f"if [ -f {full} ]; then echo \"@file {path} $(stat -c %a {full})\"; base64 {full}; "
                     "echo @endfile; fi")
    for path in dirs:
        full = _q(f"{root}/{path}")
        parts.append(f"if [ -d {full} ]; then echo \"@dir {path} $(stat -c %a {full})\"; fi")
    return "; ".join(parts) or "true"


def parse_file_state(text: str) -> tuple[dict[str, tuple[str, bytes]], dict[str, str]]:
    files: dict[str, tuple[str, bytes]] = {}
    dirs: dict[str, str] = {}
    current: list[str] | None = None
    name = mode = ""
    for line in text.splitlines():
        if current is not None:
            if line == "@endfile":
                files[name] = (mode, base64.b64decode("".join(current)))
                current = None
            else:
                current.append(line.strip())
        elif line.startswith("@file "):
            _tag, name, mode = line.split(" ", 2)
            current = []
        elif line.startswith("@dir "):
            _tag, dname, dmode = line.split(" ", 2)
            dirs[dname] = dmode
    return files, dirs


def _norm_mode(mode: str) -> str:
    return format(int(str(mode), 8), "o")


def write_file_command(root: str, path: str, content: bytes, mode: str) -> str:
    full = f"{root}/{path}"
    parent = full.rsplit("/", 1)[0]
    data = base64.b64encode(content).decode()
    return (f"umask 077; mkdir -p {_q(parent)} && printf '%s' {_q(data)} | base64 -d > {_q(full + '.ksolodata')} "
            f"&& chmod {_norm_mode(mode)} {_q(full + '.ksolodata')} && mv -f {_q(full + '.ksolodata')} {_q(full)}")


def _redact(content: bytes) -> str:
    return f"<secret: {len(content)} bytes, sha256 {hashlib.sha256(content).hexdigest()[:12]}>\n"


def config_changes(files: list[dict[str, Any]], dirs: list[dict[str, str]],
                   state: tuple[dict[str, tuple[str, bytes]], dict[str, str]],
                   remove: list[str] | None = None) -> list[dict[str, Any]]:
    """Which directories to create, files to write and files to remove; each change carries a diff
    (secrets redacted)."""
    have_files, have_dirs = state
    changes: list[dict[str, Any]] = []
    for path in remove or []:
        if path in have_files:
            changes.append({"kind": "remove", "path": path, "mode": have_files[path][0], "state": "remove",
                            "diff": {"before_header": path, "after_header": path,
                                     "before": have_files[path][1].decode("utf-8", "replace"), "after": ""}})
    for entry in dirs:
        if entry["path"] not in have_dirs:
            changes.append({"kind": "dir", "path": entry["path"], "mode": entry["mode"],
                            "diff": {"before_header": entry["path"], "after_header": entry["path"],
                                     "before": {"state": "absent"}, "after": {"state": "directory",
                                                                              "mode": entry["mode"]}}})
    for entry in files:
        content = entry["content"].encode() if isinstance(entry["content"], str) else entry["content"]
        mode = _norm_mode(entry.get("mode") or "0644")
        old = have_files.get(entry["path"])
        if old is not None and old[1] == content and _norm_mode(old[0]) == mode:
            continue
        secret = bool(entry.get("secret"))
        show = _redact if secret else (lambda b: b.decode("utf-8", "replace"))
        before = "" if old is None else show(old[1])
        after = show(content)
        if old is not None and old[1] == content:
            before, after = f"mode {old[0]}\n", f"mode {mode}\n"
        changes.append({"kind": "file", "path": entry["path"], "mode": mode, "content": content, "secret": secret,
                        "state": "create" if old is None else "update",
                        "diff": {"before_header": entry["path"], "after_header": entry["path"],
                                 "before": before, "after": after}})
    return changes


# --- execution ----------------------------------------------------------------------------------

def _check(run: Callable[[str], tuple[int, str, str]], step: Step, executed: list[str]) -> str:
    rc, out, err = run(step.command)
    executed.append(step.description)
    if rc != 0:
        raise KsolodataError(f"Failed to {step.description} (exit {rc}): {(out + err).strip()[-1500:]}")
    return out


def provision(run: Callable[[str], tuple[int, str, str]], params: dict[str, Any],
              check_mode: bool = False) -> dict[str, Any]:
    """Inspect the node, apply the safety rules, then (unless check_mode) partition, format and configure.

    params: device, wipe, min_size_gib, allow_removable, candidates, grow, update_config, label,
    directories [{path, mode}], files [{path, content, mode, secret}], mount_dir.
    Returns the Ansible result (changed, msg, device, partition, action, plan, changes, diff, disks).
    """
    label = params.get("label") or ""
    if not label:
        raise KsolodataError("No label given: pass the boot contract's data_label (kubesolo_os_boot.data_label)")
    candidates = params.get("candidates") or None
    rc, out, err = run(probe_script(candidates))
    if rc != 0:
        raise KsolodataError(f"Cannot inspect the disks (exit {rc}): {err.strip()}")
    disks = parse_probe(out, candidates)
    result: dict[str, Any] = {"changed": False, "disks": [d.summary() for d in disks]}
    decision = decide(disks, params.get("device") or "", bool(params.get("wipe")),
                      float(params.get("min_size_gib", 1.0)), bool(params.get("allow_removable")), label=label)
    result.update(action=decision.action, device=decision.disk.path, partition=decision.partition,
                  refused=decision.refused)
    plan: list[Step] = []
    wiped = False
    if decision.action == "create":
        wiped = bool(decision.disk.signatures())
        plan += create_steps(decision, label, wiped)
    else:
        if decision.grow_sectors:
            result["growable_bytes"] = decision.grow_sectors * SECTOR
        if params.get("grow") and decision.partition_number:
            # A file system smaller than its partition (an earlier grow whose file system step failed,
            # e.g. online without the kernel's help) is grown too; nothing to do is no change.
            decision.fs_short_bytes = fs_shortfall(run, decision)
            if decision.grow_sectors or decision.fs_short_bytes:
                plan += grow_steps(decision)
    result["wiped"] = wiped
    update = decision.action == "create" or bool(params.get("update_config"))
    files = params.get("files") or []
    dirs = params.get("directories") or []
    remove = list(params.get("remove_files") or [])
    executed: list[str] = []
    diffs: list[dict[str, Any]] = []

    if check_mode and decision.action == "create":
        changes = config_changes(files, dirs, ({}, {}))
        result.update(changed=True, plan=[s.description for s in plan] + _describe(changes),
                      diff=[c["diff"] for c in changes],
                      msg=f"would create {label} on {decision.disk.path}")
        return result

    if not check_mode:
        for step in plan:
            _check(run, step, executed)
    mount_dir = decision.mountpoint
    mounted_here = False
    changes: list[dict[str, Any]] = []
    try:
        if not mount_dir:
            mount_dir = params.get("mount_dir") or "/run/ksolodata"
            opts = "ro,noload" if check_mode else "rw"
            _check(run, Step(f"mount {decision.partition} on {mount_dir}",
                             f"mkdir -p {_q(mount_dir)} && mount -t ext4 -o {opts} {decision.partition} {_q(mount_dir)}"
                             " 2>&1"), [])
            mounted_here = True
        rc, out, err = run(file_state_command(mount_dir, [f["path"] for f in files] + remove,
                                              [d["path"] for d in dirs]))
        if rc != 0:
            raise KsolodataError(f"Cannot read the configuration on {decision.partition}: {err.strip()}")
        changes = config_changes(files, dirs, parse_file_state(out), remove)
        diffs = [c["diff"] for c in changes]
        if not update:
            result["config_drift"] = [c["path"] for c in changes]
            changes = []
        elif not check_mode:
            for change in changes:
                if change["kind"] == "dir":
                    command = f"mkdir -p {_q(mount_dir + '/' + change['path'])} && chmod {change['mode']} " \
                              f"{_q(mount_dir + '/' + change['path'])}"
                elif change["kind"] == "remove":
                    command = f"rm -f {_q(mount_dir + '/' + change['path'])}"
                else:
                    command = write_file_command(mount_dir, change["path"], change["content"], change["mode"])
                _check(run, Step(f"{'create' if change['kind'] == 'dir' else change['state']} {change['path']}",
                                 command), executed)
            if changes:
                run("sync")
    finally:
        if mounted_here:
            run(f"umount {_q(mount_dir)}")
    result["plan"] = [s.description for s in plan] + _describe(changes)
    result["changed"] = bool(plan or changes)
    result["diff"] = diffs if update else []
    result["executed"] = executed
    verb = "would" if check_mode else "did"
    if decision.action == "create":
        result["msg"] = f"created {label} on {decision.partition}"
    elif result["changed"]:
        result["msg"] = f"{label} exists on {decision.partition}; {verb}: {', '.join(result['plan'])}"
    else:
        result["msg"] = f"{label} exists on {decision.partition}; nothing to do"
    return result


def _describe(changes: list[dict[str, Any]]) -> list[str]:
    out = []
    for change in changes:
        if change["kind"] == "dir":
            out.append(f"create directory {change['path']} ({change['mode']})")
        elif change["kind"] == "remove":
            out.append(f"remove {change['path']}")
        else:
            out.append(f"{change['state']} {change['path']} ({change['mode']})")
    return out


def hostname_valid(name: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*", name))
