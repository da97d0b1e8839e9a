# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Block device inspection and the safety rules of flashing an image (kubesolo.os.block_device_info,
kubesolo.os.image_flash).

Everything here only reads: lsblk, sfdisk -J, blkid -p, sysfs and /proc. Each rule that refuses a target
returns one message naming the rule and the playbook variable that overrides it, if any.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from typing import Any

# run(cmd) -> (rc, stdout, stderr); AnsibleModule.run_command fits.
Runner = Callable[[list], "tuple[int, str, str]"]

SECTOR = 512
MIB = 1024 * 1024
ROOT_PATHS = ("/", "/boot", "/boot/efi", "/usr")


def sysfs_block(name: str) -> str:
    return os.path.join("/sys/class/block", name)


def read_sysfs(path: str, default: str = "") -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return default


def disks_of_sysfs(path: str, seen: set | None = None) -> set:
    """Whole-disk kernel names a sysfs block device lives on (partition -> disk, dm/md -> slaves' disks)."""
    seen = seen if seen is not None else set()
    real = os.path.realpath(path)
    if real in seen or not os.path.isdir(real):
        return set()
    seen.add(real)
    if os.path.exists(os.path.join(real, "partition")):
        return {os.path.basename(os.path.dirname(real))}
    slaves = os.path.join(real, "slaves")
    names = sorted(os.listdir(slaves)) if os.path.isdir(slaves) else []
    if not names:
        return {os.path.basename(real)}
    result: set = set()
    for slave in names:
        result |= disks_of_sysfs(os.path.join(slaves, slave), seen)
    return result


def system_disks(paths: tuple = ROOT_PATHS) -> dict:
    """Map disk kernel name -> mount points of the running system (/, /boot, ...) that live on it."""
    found: dict = {}
    for path in paths:
        if path != "/" and not os.path.ismount(path):
            continue
        try:
            dev = os.stat(path).st_dev
        except OSError:
            continue
        major, minor = os.major(dev), os.minor(dev)
        if major == 0:  # overlay, tmpfs, ...: not on a block device
            continue
        for disk in disks_of_sysfs(f"/sys/dev/block/{major}:{minor}"):
            found.setdefault(disk, []).append(path)
    return found


def parse_mounts(text: str) -> list:
    """(source, mount point) pairs of /proc/mounts or /proc/swaps-like text (octal escapes decoded)."""
    pairs = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].startswith("/dev/"):
            pairs.append((fields[0], fields[1].replace("\\040", " ")))
    return pairs


def disk_of_node(node: str) -> str:
    """Kernel name of the whole disk a /dev node belongs to ('' when it is not a block device)."""
    try:
        st = os.stat(node)
    except OSError:
        return ""
    if not stat.S_ISBLK(st.st_mode):
        return ""
    disks = disks_of_sysfs(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    return sorted(disks)[0] if len(disks) == 1 else ",".join(sorted(disks))


def mounts_on_disk(name: str, mounts_text: str, swaps_text: str) -> list:
    """Mounted file systems and active swap on the disk (any of its partitions, or devices stacked on it)."""
    uses = []
    for source, point in parse_mounts(mounts_text):
        if name in disk_of_node(source).split(","):
            uses.append(f"{source} on {point}")
    for line in swaps_text.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0].startswith("/dev/") and name in disk_of_node(fields[0]).split(","):
            uses.append(f"{fields[0]} as swap")
    return uses


def holders_of(name: str) -> list:
    """Devices stacked on the disk or its partitions (device-mapper, md, ...)."""
    base = os.path.join("/sys/block", name)
    holders = []
    dirs = [base] + [os.path.join(base, e) for e in sorted(os.listdir(base)) if os.path.exists(
        os.path.join(base, e, "partition"))] if os.path.isdir(base) else []
    for directory in dirs:
        hdir = os.path.join(directory, "holders")
        if os.path.isdir(hdir):
            holders += [f"{os.path.basename(directory)} held by {h}" for h in sorted(os.listdir(hdir))]
    return holders


def partition_table(run: Runner, path: str) -> dict | None:
    """sfdisk -J of a disk or image file: {label, id, partitions: [{number, start, size, type, bootable}]}."""
    rc, out, _err = run(["sfdisk", "-J", path])
    if rc != 0 or not out.strip():
        return None
    table = json.loads(out).get("partitiontable", {})
    parts = []
    for entry in table.get("partitions", []):
        node = entry.get("node", "")
        digits = ""
        for char in reversed(node):
            if not char.isdigit():
                break
            digits = char + digits
        parts.append({
            "number": int(digits) if digits else len(parts) + 1,
            "start": int(entry["start"]),
            "size": int(entry["size"]),
            "type": str(entry.get("type", "")),
            "bootable": bool(entry.get("bootable", False)),
        })
    return {"label": table.get("label"), "id": table.get("id"), "partitions": parts}


def probe(run: Runner, path: str, offset: int, size: int) -> dict:
    """blkid -p of the bytes [offset, offset+size) of a disk or file (no partition node needed)."""
    rc, out, _err = run(["blkid", "-p", "-o", "export", "-O", str(offset), "-S", str(size), path])
    if rc != 0:
        return {}
    values = {}
    for line in out.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    return values


def find_data_partition(run: Runner, path: str, table: dict | None, label: str) -> dict | None:
    """The partition holding an ext4 file system with the given label, from the partition table."""
    for part in (table or {}).get("partitions", []):
        found = probe(run, path, part["start"] * SECTOR, part["size"] * SECTOR)
        if found.get("LABEL") == label and found.get("TYPE", "").startswith("ext"):
            return dict(part, fstype=found.get("TYPE"), uuid=found.get("UUID", ""))
    return None


def image_info(run: Runner, image: str, label: str) -> dict:
    """Size, partition table and data partition of an image file; boot_bytes is what precedes the data."""
    size = os.path.getsize(image)
    table = partition_table(run, image)
    data = find_data_partition(run, image, table, label)
    return {
        "path": image,
        "size": size,
        "table": table,
        "data_partition": data,
        "boot_bytes": data["start"] * SECTOR if data else size,
    }


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{size} B"


def inspect(run: Runner, device: str, label: str, mounts_text: str | None = None,
            swaps_text: str | None = None) -> dict[str, Any]:
    """Everything the rules need to know about a target device."""
    real = os.path.realpath(device)
    info: dict[str, Any] = {"path": device, "realpath": real, "exists": os.path.exists(real), "is_block": False}
    if not info["exists"]:
        return info
    info["is_block"] = stat.S_ISBLK(os.stat(real).st_mode)
    if not info["is_block"]:
        return info
    rc, out, err = run(["lsblk", "-J", "-b", "-O", real])
    if rc != 0:
        info["error"] = err.strip() or f"lsblk exited {rc}"
        return info
    dev = json.loads(out)["blockdevices"][0]
    name = dev.get("kname") or dev["name"]
    sysdir = sysfs_block(name)
    if mounts_text is None:
        mounts_text = read_sysfs("/proc/mounts")
    if swaps_text is None:
        swaps_text = read_sysfs("/proc/swaps")
    table = partition_table(run, real)
    info.update({
        "name": name,
        "type": dev.get("type", ""),
        "partition": os.path.exists(os.path.join(sysdir, "partition")),
        "parent": os.path.basename(os.path.dirname(os.path.realpath(sysdir)))
        if os.path.exists(os.path.join(sysdir, "partition")) else "",
        "size": int(dev.get("size") or 0),
        "model": (dev.get("model") or "").strip(),
        "vendor": (dev.get("vendor") or "").strip(),
        "serial": (dev.get("serial") or "").strip(),
        "transport": dev.get("tran") or "",
        "removable": read_sysfs(os.path.join(sysdir, "removable"), "0") == "1",
        "sd_card": read_sysfs(os.path.join(sysdir, "device", "type")) == "SD",
        "read_only": read_sysfs(os.path.join(sysdir, "ro"), "0") == "1",
        "logical_sector_size": int(read_sysfs(os.path.join(sysdir, "queue", "logical_block_size"), "512") or 512),
        "in_use": mounts_on_disk(name, mounts_text, swaps_text) + holders_of(name),
        "system_paths": system_disks().get(name, []),
        "table": table,
    })
    info["data_partition"] = find_data_partition(run, real, table, label)
    return info


def refusal(info: dict[str, Any], image: dict[str, Any] | None, allow_fixed_disk: bool, keep_data: bool,
            label: str) -> dict[str, str] | None:
    """The first safety rule the target breaks, as {rule, msg}; None when it may be written."""
    dev = info["path"]

    def refuse(rule: str, why: str, override: str = "") -> dict[str, str]:
        tail = f" Override: {override}." if override else " No variable overrides this rule."
        return {"rule": rule, "msg": f"Refusing to write to {dev}: rule '{rule}': {why}.{tail}"}

    if not info["exists"]:
        return refuse("block-device", "it does not exist")
    if not info["is_block"]:
        return refuse("block-device", f"{info['realpath']} is not a block device")
    if info.get("error"):
        return refuse("block-device", f"it cannot be inspected ({info['error']})")
    if info["partition"] or info["type"] not in ("disk", "loop"):
        what = f"a partition of /dev/{info['parent']}" if info["partition"] else f"of type {info['type']}"
        return refuse("whole-disk", f"it is not a whole disk ({what}); set usb_device to the disk itself")
    if info["system_paths"]:
        paths = info["system_paths"]
        return refuse("system-disk", "it is the disk the running system lives on ("
                      + ", ".join(paths) + (" is" if len(paths) == 1 else " are") + " on it)")
    if info["in_use"]:
        return refuse("not-mounted", "it holds mounted or active file systems (" + "; ".join(info["in_use"])
                      + "); unmount them first")
    if info["read_only"]:
        return refuse("writable", "it is read-only (write-protect switch?)")
    if not allow_fixed_disk and not (info["removable"] or info["transport"] == "usb" or info["sd_card"]):
        return refuse("removable", f"it is not a removable or USB disk (removable=0, transport="
                      f"{info['transport'] or 'none'})", "flash_allow_fixed_disk: true")
    if info["logical_sector_size"] != SECTOR:
        return refuse("sector-size", f"its logical sector size is {info['logical_sector_size']}, the image needs "
                      f"{SECTOR}-byte sectors")
    if image is None:
        return None
    keep = "flash_keep_data: false (overwrites the whole stick)"
    if keep_data:
        data = info.get("data_partition")
        if image.get("data_partition") is None:
            return refuse("keep-data", f"the image has no {label} partition, so it cannot be written around one",
                          keep)
        if not data:
            return refuse("keep-data", f"it has no {label} ext4 partition to keep", keep)
        if data["start"] * SECTOR < image["boot_bytes"]:
            return refuse("keep-data", f"its {label} partition starts at byte {data['start'] * SECTOR}, inside "
                          f"the new image's boot part ({image['boot_bytes']} bytes)", keep)
        return None
    if info["size"] < image["size"]:
        return refuse("size", f"it is too small ({human(info['size'])}; the image needs {human(image['size'])})")
    return None


# --- growing an ext4 file system ------------------------------------------------------------------

def ext4_grow_script(node: str, mounted: bool, sbin: str = "/sbin") -> str:
    """POSIX sh (busybox ash or dash) that grows the ext4 file system on ``node`` to fill its partition.

    Offline: ``e2fsck -f -p`` first (errors it cannot fix stop it); when the file system has a resize
    inode whose reserved group descriptor blocks cannot describe the new size (an ext4 made at 64 MiB
    reserves room for about 1024 times that: a stick over 64 GiB exceeds it, and resize2fs then fails
    with "Illegal doubly indirect block found", leaving a file system e2fsck rejects), the resize inode is
    removed first (``tune2fs -O ^resize_inode`` and the ``e2fsck -f -y`` it requires, only on a file system
    that was just found clean); resize2fs then grows it without one (flex_bg moves what it must), to any
    size up to the MBR and GPT limits. Online (mounted): resize2fs asks the kernel, which converts to
    meta_bg by itself when the reserve runs out. Either way the result is checked: the block count must
    reach the partition's size (less one block group) and, offline, ``e2fsck -f -n`` must pass. Exits
    non-zero with one line saying what failed; prints what it did.
    """
    q = "'" + node.replace("'", "'\\''") + "'"
    script = f"""P={q}
S={sbin}
fail() {{ echo "$*"; exit 1; }}
tail_of() {{ printf '%s' "$out" | tail -n "$1" | tr '\n' ' '; }}
val() {{ printf '%s\\n' "$INFO" | sed -n "s/^$1:[[:space:]]*//p" | head -n 1; }}
part_bytes() {{ echo $(( $(cat "/sys/class/block/${{P##*/}}/size") * 512 )); }}
read_info() {{ INFO=$("$S/tune2fs" -l "$P" 2>&1) || fail "tune2fs -l $P failed: $INFO"; }}
"""
    if mounted:
        script += """read_info
before=$(val 'Block count')
out=$("$S/resize2fs" "$P" 2>&1) || fail "online resize2fs of $P (mounted) failed: $(tail_of 2)"
"""
    else:
        script += """"$S/e2fsck" -f -p "$P" >/dev/null 2>&1
rc=$?
[ "$rc" -le 1 ] ||
    fail "e2fsck -f -p $P exited $rc: the file system has errors it cannot fix; repair it by hand (e2fsck $P) first"
read_info
before=$(val 'Block count')
case $(val 'Filesystem features') in
    *resize_inode*)
        bs=$(val 'Block size')
        bpg=$(val 'Blocks per group')
        rgdt=$(val 'Reserved GDT blocks')
        ds=$(val 'Group descriptor size')
        dpb=$(( bs / ${ds:-32} ))
        groups=$(( (before + bpg - 1) / bpg ))
        room=$(( ((groups + dpb - 1) / dpb + ${rgdt:-0}) * dpb ))
        need=$(( ($(part_bytes) / bs + bpg - 1) / bpg ))
        if [ "$need" -gt "$room" ]; then
            echo "the resize inode of $P reserves room for $room block groups, $need are needed: removing it"
            out=$("$S/tune2fs" -O ^resize_inode "$P" 2>&1) || fail "tune2fs -O ^resize_inode $P failed: $out"
            "$S/e2fsck" -f -y "$P" >/dev/null 2>&1
            rc=$?
            [ "$rc" -le 1 ] || fail "e2fsck -f -y $P exited $rc after removing the resize inode"
        fi
        ;;
esac
out=$("$S/resize2fs" "$P" 2>&1) || fail "resize2fs $P failed: $(tail_of 2)"
out=$("$S/e2fsck" -f -n "$P" 2>&1) || fail "e2fsck -f -n $P reports errors after growing: $(tail_of 3)"
"""
    script += """read_info
after=$(val 'Block count')
bs=$(val 'Block size')
bpg=$(val 'Blocks per group')
[ $(( (after + bpg) * bs )) -ge "$(part_bytes)" ] ||
    fail "the file system on $P did not grow to its partition ($after blocks of $bs bytes, $(part_bytes) bytes)"
echo "grew the ext4 file system on $P from $before to $after blocks of $bs bytes"
"""
    return script
