# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Install KubeSolo OS onto a disk: target selection, safety rules, the plan and its execution.

Pure Python, run on the controller by the ``kubesolo.os.disk_install`` action plugin. Nothing here opens a
device itself: ``install()`` gets ``run(command) -> (rc, stdout, stderr)`` and ``write(command, data) ->
(rc, stdout, stderr)`` (the command reads ``data`` on its standard input), so the same logic drives a
KubeSolo OS node over SSH (busybox, no Python) and a local disk. The node needs only what the image
carries: sysfs, ``blkid``, ``sfdisk``, ``mke2fs``, ``dd``, ``head``, ``sha256sum`` and, to read the EFI
system partition, ``mount -t vfat`` (or mtools where they are installed, as on an admin machine whose
kernel has no vfat).

The disk layout (partition numbers, names, GPT types, sizes) is the ``layout`` argument: the contents of
``files/installed-disk.yml``. The disk inventory and the boot-medium rules are module_utils/ksolodata's
(the same rules as provision-data.yml and flash-usb.yml).
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubesolo.os.plugins.module_utils.ksolodata import (
    MKE2FS,
    SFDISK,
    Disk,
    KsolodataError,
    find_existing,
    parse_probe,
    probe_script,
)

MIB = 1024 * 1024
SECTOR = 512
Runner = Callable[[str], tuple[int, str, str]]
Writer = Callable[[str, bytes], tuple[int, str, str]]


class InstallError(KsolodataError):
    """A safety rule refused the install, or a step failed. The message says which and why."""


@dataclass
class Images:
    """What is written, read on the controller: the slot image, the ESP image's used part and the BIOS
    boot pieces (from the ESP image), with the SHA-256 of every file GRUB needs on the ESP."""

    version: str
    slot: bytes
    esp: bytes  # the ESP image without its trailing zero blocks (FAT ignores free clusters)
    boot_code: bytes  # the first 440 bytes of GRUB's boot.img (the MBR's code area)
    core: bytes  # GRUB's core.img for the bios-boot partition
    esp_files: dict[str, str]  # path on the ESP -> SHA-256 (boot loader files and menu, not grubenv)

    @property
    def slot_sha256(self) -> str:
        return hashlib.sha256(self.slot).hexdigest()


@dataclass
class Step:
    description: str
    command: str
    data: bytes | None = None
    verify: tuple[str, int, str] | None = None  # (device, length, sha256) read back after writing


@dataclass
class Plan:
    disk: Disk
    action: str  # "create" (new GPT) or "update" (the disk already has the installed layout)
    slot_sectors: int
    data_partition: bool  # the layout's data partition is made/kept on this disk
    steps: list[Step] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)


def _q(value: str) -> str:
    return shlex.quote(value)


def _layout_part(layout: dict[str, Any], **match: Any) -> dict[str, Any]:
    for part in layout["partitions"]:
        if all(part.get(k) == v for k, v in match.items()):
            return part
    raise InstallError(f"installed-disk layout has no partition with {match}")


def slot_size_sectors(layout: dict[str, Any], slot_bytes: int, slot_size_mib: int = 0) -> int:
    """The slot partitions' size: slot_size_mib when given, else max(slot_min_size_mib, slot_image_factor x
    the slot image) rounded up to slot_size_step_mib. Refuses a size the slot image does not fit in."""
    image_mib = -(-slot_bytes // MIB)
    if slot_size_mib:
        size_mib = int(slot_size_mib)
    else:
        step = int(layout["slot_size_step_mib"])
        size_mib = max(int(layout["slot_min_size_mib"]), int(layout["slot_image_factor"]) * image_mib)
        size_mib = -(-size_mib // step) * step
    if size_mib * MIB < slot_bytes:
        raise InstallError(f"The slot image ({slot_bytes} bytes) does not fit in a slot of {size_mib} MiB "
                           "(install_slot_size_mib)")
    return size_mib * 2048


def is_installed_layout(disk: Disk, layout: dict[str, Any]) -> bool:
    """The disk carries the installed layout: a GPT whose partitions 1-4 have the layout's names (the data
    partition may be on another disk)."""
    if disk.blkid.get("PTTYPE") != "gpt":
        return False
    names = {p.number: p.partlabel for p in disk.partitions}
    return all(names.get(part["number"]) == part["name"] for part in layout["partitions"] if not part.get("data"))


def in_use_reasons(disk: Disk, layout: dict[str, Any]) -> list[str]:
    """Why the disk is the boot medium or in use. On a disk with the installed layout, its data partition
    being mounted does not count: a node booted from the ISO mounts the installed disk's data partition, and a
    re-install never touches it (the other partitions must be free)."""
    reasons = list(disk.boot_reasons)
    if is_installed_layout(disk, layout):
        data = [p for p in disk.partitions if p.number == _layout_part(layout, data=True)["number"]]
        if data:
            reasons = [r for r in reasons if not r.startswith(f"{data[0].name} mounted on ")]
    return reasons


def needed_sectors(layout: dict[str, Any], slot_sectors: int, min_data_mib: int, data_partition: bool) -> int:
    fixed = sum(int(p.get("size_mib", 0)) * 2048 for p in layout["partitions"])
    slots = sum(slot_sectors for p in layout["partitions"] if p.get("slot"))
    # First sector, the data partition (when on this disk) and the backup GPT (33 sectors).
    return int(layout["first_sector"]) + fixed + slots + (min_data_mib * 2048 if data_partition else 0) + 34


def sfdisk_script(layout: dict[str, Any], slot_sectors: int, data_partition: bool) -> str:
    lines = ["label: gpt", "unit: sectors"]
    start = int(layout["first_sector"])
    for part in layout["partitions"]:
        if part.get("data") and not data_partition:
            continue
        if part.get("data"):
            size = ""  # the rest of the disk
        else:
            sectors = slot_sectors if part.get("slot") else int(part["size_mib"]) * 2048
            size = f", size={sectors}"
        lines.append(f"start={start}{size}, type={part['type']}, name=\"{part['name']}\"")
        if size:
            start += int(size.split("=")[1])
    return "\n".join(lines) + "\n"


def choose_disk(disks: list[Disk], layout: dict[str, Any], device: str, wipe: bool, allow_removable: bool,
                need_bytes: int, label: str) -> tuple[Disk, list[dict[str, Any]]]:
    """Apply the safety rules and pick the target disk (raises InstallError when refused).

    A named device must be a whole disk that is not the boot medium nor in use, not read-only, big enough,
    not removable/USB unless allowed; one holding data (any signature) is refused unless it already has the
    installed layout (a re-install) or ``wipe`` is true. A disk holding the data label outside the installed
    layout is refused even with ``wipe`` (data is never reformatted). Without ``device`` exactly one disk
    with the installed layout, or else exactly one blank disk that passes the same rules, is chosen.
    """
    def reasons_for(disk: Disk, named: bool) -> list[str]:
        installed = is_installed_layout(disk, layout)
        reasons = in_use_reasons(disk, layout)
        if disk.ro:
            reasons.append("read-only")
        if not installed and disk.size_bytes < need_bytes:
            reasons.append(f"too small ({disk.size_bytes} bytes, the layout needs {need_bytes})")
        if (disk.removable or disk.usb) and not allow_removable:
            reasons.append("removable/USB disk (set install_allow_removable to allow)")
        foreign_data = [p.path for p in disk.partitions if p.label == label] if not installed else []
        if disk.blkid.get("LABEL") == label:
            foreign_data.append(disk.path)
        if foreign_data:
            reasons.append(f"holds the data partition {label} ({', '.join(foreign_data)}) outside the installed "
                           "layout: it is never reformatted (move the data, or install onto another disk)")
        elif not installed and disk.signatures():
            sigs = "; ".join(disk.signatures())
            if not (named and wipe):
                hint = " (name it with install_wipe: true to erase it)" if named else ""
                reasons.append(f"not blank: {sigs}{hint}")
        return reasons

    if device:
        name = device.rsplit("/", 1)[-1]
        disk = next((d for d in disks if d.name == name), None)
        if disk is None:
            part_of = next((d for d in disks for p in d.partitions if p.name == name), None)
            if part_of is not None:
                raise InstallError(f"{device} is a partition: name the whole disk ({part_of.path})")
            raise InstallError(f"{device} is not a disk on this host (disks: "
                               f"{', '.join(d.path for d in disks) or 'none'})")
        reasons = reasons_for(disk, named=True)
        if reasons:
            raise InstallError(f"{disk.path} refused: {'; '.join(reasons)}", disk=disk.summary())
        return disk, []
    if wipe:
        raise InstallError("install_wipe needs the disk named with install_device: a disk is never erased that "
                           "was not chosen by name")
    refused, installed, blank = [], [], []
    for disk in disks:
        reasons = reasons_for(disk, named=False)
        if reasons:
            refused.append({"device": disk.path, "reasons": reasons})
        elif is_installed_layout(disk, layout):
            installed.append(disk)
        else:
            blank.append(disk)
    chosen = installed or blank
    if len(chosen) == 1:
        return chosen[0], refused
    if not chosen:
        listing = "; ".join(f"{r['device']}: {', '.join(r['reasons'])}" for r in refused) or "no disks at all"
        raise InstallError(f"No disk can be chosen for the install automatically ({listing}); name one with "
                           "install_device", refused=refused)
    listing = ", ".join(f"{d.path} ({d.size_bytes} bytes)" for d in chosen)
    raise InstallError(f"Several disks could take the install: {listing}; choose one with install_device",
                       candidates=[d.path for d in chosen])


# --- reading the disk's current state ---------------------------------------------------------------

def sha_command(device: str, length: int) -> str:
    return f"head -c {length} {_q(device)} | sha256sum"


def read_sha(run: Runner, device: str, length: int) -> str:
    rc, out, _err = run(sha_command(device, length))
    return out.split()[0] if rc == 0 and out.split() else ""


def esp_files_command(esp: str, paths: list[str]) -> str:
    """Prints "<path> <sha256>" for each file on the FAT partition esp ("-" when it cannot be read): with
    mtools when they are installed (admin machines; their kernel may have no vfat), else by mounting it
    read-only (a KubeSolo OS node has vfat and no mtools)."""
    files = " ".join(_q(p) for p in paths)
    return (
        f"esp={_q(esp)}; "
        "if command -v mcopy >/dev/null 2>&1; then "
        f"for f in {files}; do s=$(MTOOLS_SKIP_CHECK=1 mcopy -n -i \"$esp\" \"::$f\" - 2>/dev/null | sha256sum); "
        "echo \"$f ${s%% *}\"; done; "
        "else m=/run/kubesolo-install-esp; modprobe -q vfat 2>/dev/null; mkdir -p $m; "
        "if mount -t vfat -o ro \"$esp\" $m 2>/dev/null; then "
        f"for f in {files}; do s=$(sha256sum \"$m$f\" 2>/dev/null) || s=-; echo \"$f ${{s%% *}}\"; done; "
        "umount $m; else for f in " + files + "; do echo \"$f -\"; done; fi; fi"
    )


def read_esp_files(run: Runner, esp: str, paths: list[str]) -> dict[str, str]:
    rc, out, _err = run(esp_files_command(esp, paths))
    found = {}
    for line in out.splitlines() if rc == 0 else []:
        path, _sep, digest = line.strip().partition(" ")
        if path in paths:
            found[path] = digest
    return found


# --- the plan -------------------------------------------------------------------------------------

def write_step(description: str, device: str, data: bytes) -> Step:
    # cat writes the stream to the device; sync makes it durable before the read-back (which then comes
    # from the device, not from the page cache: the caches are dropped first).
    return Step(description, f"cat > {_q(device)} && sync", data,
                verify=(device, len(data), hashlib.sha256(data).hexdigest()))


def plan_install(run: Runner, disks: list[Disk], images: Images, layout: dict[str, Any], params: dict[str, Any]
                 ) -> Plan:
    label = params.get("label") or "KSOLODATA"
    min_data_mib = int(params.get("min_data_size_mib", 1024))
    slot_sectors = slot_size_sectors(layout, len(images.slot), int(params.get("slot_size_mib") or 0))

    # KSOLODATA elsewhere: kept where it is when on another (non-boot) disk; one on the boot medium is
    # ignored (a stick's own data partition) with a warning.
    device = params.get("device") or ""
    named = device.rsplit("/", 1)[-1] if device else ""
    elsewhere = [(d, p) for d, p in find_existing(disks, label)
                 if d.name != named and not is_installed_layout(d, layout)]
    kept = [(d, p) for d, p in elsewhere if not d.boot_reasons]
    warnings = [f"{(p.path if p else d.path)} on the boot medium also holds {label}: remove that medium before "
                "booting from the installed disk (two data partitions are refused at boot)"
                for d, p in elsewhere if d.boot_reasons]
    if len(kept) > 1:
        raise InstallError(f"More than one file system labelled {label} ("
                           f"{', '.join(p.path if p else d.path for d, p in kept)}): remove all but one by hand")
    data_partition = not kept
    need = needed_sectors(layout, slot_sectors, min_data_mib, data_partition) * SECTOR
    disk, refused = choose_disk(disks, layout, device, bool(params.get("wipe")), bool(params.get("allow_removable")),
                                need, label)
    if kept and kept[0][0].name == disk.name:
        raise InstallError(f"{disk.path} holds {label} outside the installed layout")
    if kept:
        warnings.append(f"{label} stays on {kept[0][1].path if kept[0][1] else kept[0][0].path} (kept and reused): "
                        f"{disk.path} gets no data partition")

    a = _layout_part(layout, slot="A")
    esp_part = _layout_part(layout, name=layout["esp_label"])
    bios = layout["partitions"][0]
    data = _layout_part(layout, data=True)
    plan = Plan(disk=disk, action="update" if is_installed_layout(disk, layout) else "create",
                slot_sectors=slot_sectors, data_partition=data_partition, warnings=warnings, refused=refused)
    path = disk.partition_path
    if plan.action == "create":
        if disk.signatures():
            plan.steps.append(Step(f"erase the start of {disk.path} (install_wipe)",
                                   f"dd if=/dev/zero of={_q(disk.path)} bs=1M count=1 conv=fsync 2>&1"))
        script = sfdisk_script(layout, slot_sectors, data_partition)
        made = [p for p in layout["partitions"] if data_partition or not p.get("data")]
        wait = " ".join(_q(path(p["number"])) for p in made)
        plan.steps.append(Step(
            f"create the GPT on {disk.path} ({', '.join(p['name'] for p in made)})",
            f"printf %s {_q(script)} | {SFDISK} --quiet --wipe always --wipe-partitions always {_q(disk.path)} 2>&1 "
            f"&& {{ partx -a {_q(disk.path)} 2>/dev/null; partx -u {_q(disk.path)} 2>/dev/null; true; }} "
            f"&& i=0; for p in {wait}; do while [ ! -b \"$p\" ] && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done; "
            "[ -b \"$p\" ] || { echo \"$p did not appear\"; exit 1; }; done"))
        plan.steps.append(write_step("write GRUB's boot code into the MBR", disk.path, images.boot_code))
        plan.steps.append(write_step("write GRUB's core.img into the bios-boot partition", path(bios["number"]),
                                     images.core))
        plan.steps.append(write_step(f"write slot A ({images.version}, {len(images.slot)} bytes)", path(a["number"]),
                                     images.slot))
        plan.steps.append(write_step("write the EFI system partition (GRUB, A/B menu, environment: slot A active)",
                                     path(esp_part["number"]), images.esp))
        if data_partition:
            plan.steps.append(Step(f"make ext4 labelled {label} on {path(data['number'])}",
                                   f"{MKE2FS} -q -F -t ext4 -L {_q(label)} {_q(path(data['number']))} 2>&1"))
        return plan

    # Re-install onto the installed layout: only what differs is written; the data partition is kept.
    parts = {p.number: p for p in disk.partitions}
    slot_part = parts[a["number"]]
    if slot_part.size * SECTOR < len(images.slot):
        raise InstallError(f"The slot image ({len(images.slot)} bytes) does not fit in {slot_part.path} "
                           f"({slot_part.size * SECTOR} bytes, the slot size of this installed disk)")
    slot_written = False
    if read_sha(run, disk.path, len(images.boot_code)) != hashlib.sha256(images.boot_code).hexdigest():
        plan.steps.append(write_step("write GRUB's boot code into the MBR", disk.path, images.boot_code))
    if read_sha(run, path(bios["number"]), len(images.core)) != hashlib.sha256(images.core).hexdigest():
        plan.steps.append(write_step("write GRUB's core.img into the bios-boot partition", path(bios["number"]),
                                     images.core))
    if read_sha(run, slot_part.path, len(images.slot)) != images.slot_sha256:
        plan.steps.append(write_step(f"write slot A ({images.version}, {len(images.slot)} bytes)", slot_part.path,
                                     images.slot))
        slot_written = True
    on_disk = read_esp_files(run, path(esp_part["number"]), sorted(images.esp_files))
    stale = sorted(p for p, digest in images.esp_files.items() if on_disk.get(p) != digest)
    if stale or slot_written:
        why = f"{', '.join(stale)} differ" if stale else "slot A was rewritten"
        plan.steps.append(write_step(f"write the EFI system partition ({why}; environment: slot A active)",
                                     path(esp_part["number"]), images.esp))
    if data_partition:
        data_part = parts.get(data["number"])
        if data_part is None:
            plan.warnings.append(f"{disk.path} has no partition {data['number']} ({label}): the node runs without "
                                 "persistent data until one is provisioned")
        elif data_part.label != label:
            if data_part.fstype or data_part.blkid.get("PTTYPE"):
                what = data_part.fstype or "data"
                raise InstallError(f"{data_part.path} (named {data_part.partlabel}) holds {what}, not ext4 labelled "
                                   f"{label}: fix it by hand (it is never reformatted)")
            plan.steps.append(Step(f"make ext4 labelled {label} on {data_part.path} (it was empty)",
                                   f"{MKE2FS} -q -F -t ext4 -L {_q(label)} {_q(data_part.path)} 2>&1"))
    return plan


def execute(run: Runner, write: Writer, plan: Plan) -> list[str]:
    done = []
    for step in plan.steps:
        if step.data is not None:
            rc, out, err = write(step.command, step.data)
        else:
            rc, out, err = run(step.command)
        if rc != 0:
            raise InstallError(f"Failed to {step.description} (exit {rc}): {(out + err).strip()[-1500:]}",
                               executed=done)
        if step.verify:
            device, length, digest = step.verify
            run("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; true")
            got = read_sha(run, device, length)
            if got != digest:
                raise InstallError(f"Verification failed after the step '{step.description}': {device} reads back "
                                   f"sha256 {got or '(unreadable)'}, wrote {digest}", executed=done)
        done.append(step.description)
    return done


def install(run: Runner, write: Writer, images: Images, layout: dict[str, Any], params: dict[str, Any],
            check_mode: bool = False) -> dict[str, Any]:
    """Inspect the host's disks, apply the safety rules, plan and (unless check_mode) write.

    params: device, wipe, allow_removable, candidates, slot_size_mib, min_data_size_mib, label.
    Returns the Ansible result (changed, msg, device, action, plan, executed, warnings, slot_size_mib...).
    """
    candidates = params.get("candidates") or None
    rc, out, err = run(probe_script(candidates))
    if rc != 0:
        raise InstallError(f"Cannot inspect the disks (exit {rc}): {err.strip()}")
    disks = parse_probe(out, candidates)
    slot_names = {p["name"] for p in layout["partitions"] if p.get("slot")}
    # A node running from its installed disk (a slot is mounted): nothing is written there (never the boot
    # medium); the run reports it and succeeds, so that install.yml over an installed fleet is a no-op.
    running = [d for d in disks if is_installed_layout(d, layout)
               and any(p.mountpoints and p.partlabel in slot_names for p in d.partitions)]
    device = params.get("device") or ""
    if running and (not device or device.rsplit("/", 1)[-1] == running[0].name):
        disk = running[0]
        return {"changed": False, "device": disk.path, "action": "running", "plan": [], "executed": [],
                "warnings": [], "disks": [d.summary() for d in disks],
                "msg": f"{disk.path} holds an installed KubeSolo OS and the node runs from it: nothing written "
                       "(use playbooks/upgrade.yml to change its system)"}
    plan = plan_install(run, disks, images, layout, params)
    descriptions = [s.description for s in plan.steps]
    result: dict[str, Any] = {
        "device": plan.disk.path, "action": plan.action, "plan": descriptions, "warnings": plan.warnings,
        "refused": plan.refused, "slot_size_mib": plan.slot_sectors // 2048, "data_partition": plan.data_partition,
        "version": images.version, "slot_sha256": images.slot_sha256, "disks": [d.summary() for d in disks],
        "changed": bool(plan.steps), "executed": [],
    }
    if check_mode or not plan.steps:
        verb = "would" if check_mode else "did"
        result["msg"] = (f"{plan.disk.path}: {verb} " + "; ".join(descriptions) if plan.steps
                         else f"{plan.disk.path} already holds KubeSolo OS {images.version} in slot A: nothing to do")
        return result
    result["executed"] = execute(run, write, plan)
    result["msg"] = (f"installed KubeSolo OS {images.version} on {plan.disk.path} (slot A, "
                     f"{plan.slot_sectors // 2048} MiB slots; {'; '.join(descriptions)})")
    return result


__all__ = ["ARGUMENT_SPEC", "Images", "InstallError", "Plan", "Step", "install", "is_installed_layout", "plan_install",
           "sfdisk_script", "slot_size_sectors"]


# Options of kubesolo.os.disk_install (documented in plugins/modules/disk_install.py).
ARGUMENT_SPEC: dict[str, Any] = {
    "slot_image": {"type": "path", "required": True},
    "slot_image_sha256": {"type": "str", "default": ""},
    "esp_image": {"type": "path", "required": True},
    "esp_image_sha256": {"type": "str", "default": ""},
    "version": {"type": "str", "required": True},
    "layout": {"type": "dict", "required": True},
    "label": {"type": "str", "required": True},
    "device": {"type": "str", "default": ""},
    "wipe": {"type": "bool", "default": False},
    "allow_removable": {"type": "bool", "default": False},
    "slot_size_mib": {"type": "int", "default": 0},
    "min_data_size_mib": {"type": "int", "default": 1024},
    "candidates": {"type": "list", "elements": "str", "default": []},
}
