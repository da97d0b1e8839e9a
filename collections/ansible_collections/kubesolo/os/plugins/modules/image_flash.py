#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# Ansible module boilerplate: coding line, __future__ imports and __metaclass__, imports after the docs.

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: image_flash
short_description: Write a disk image to a USB stick, verify it, and give its data partition the rest of the stick
version_added: "0.1.0"
description:
  - Applies the safety rules of M(kubesolo.os.block_device_info) to O(device) (whole disk, not the running
    system's disk, nothing mounted, removable or USB unless O(allow_fixed_disk), large enough) and refuses
    with one message naming the broken rule unless O(confirm) is the same path as O(device).
  - Writes the image with progress reporting (to O(progress_file)), flushes, drops the device's caches, then
    reads the written bytes back and compares their SHA256 with the image's. A mismatch fails the task.
  - Then makes the data partition (an ext4 file system labelled O(data_label)) use the rest of the device
    (O(grow)); the partition is extended to the end of the device and the file system resized with
    C(e2fsck -f -p) and C(resize2fs), to any size (a resize inode too small for the stick is removed
    first), then checked with C(e2fsck -f -n); an image without such a partition (an ISO) gets one created
    after it.
  - With O(keep_data) only the image's boot part (every byte before its data partition) is written, and the
    partition table is rewritten so that the device's existing data partition keeps its start (and grows
    to the end of the device with O(grow)). Not one byte of the data partition is written. This is the
    upgrade path of a stick.
  - B(Test hook) (for the test suite only). When the environment variable E(KUBESOLO_FLASH_TEST_CORRUPT_HOOK)
    is set, the command it names is run with the device path as its last argument after the write and before
    the read-back (the tests use it to corrupt the device and see the verify fail). Nothing sets it by default;
    the module warns whenever it runs.
author:
  - KubeSolo OS developers (@kubesolo-os)
options:
  device:
    description:
      - The target disk, for example C(/dev/sdb).
    type: path
    required: true
  image:
    description:
      - The raw image file to write.
    type: path
    required: true
  confirm:
    description:
      - Must be exactly O(device); the module refuses to write otherwise.
    type: str
    required: true
  allow_fixed_disk:
    description:
      - Accept a disk that is neither removable nor on the USB transport.
    type: bool
    default: false
  keep_data:
    description:
      - Keep the device's existing data partition; write only the image's boot part.
    type: bool
    default: false
  grow:
    description:
      - Make the data partition and its file system fill the rest of the device.
    type: bool
    default: true
  data_label:
    description:
      - File system label of the data partition, the boot contract's C(data_label) (files/boot-contract.yml,
        C(kubesolo_os_boot.data_label) once the kubesolo_os role loaded it).
    type: str
    required: true
  block_size_mib:
    description:
      - Size of each write, in MiB.
    type: int
    default: 4
  progress_file:
    description:
      - File the progress (bytes written, percent, throughput) is written to about once a second, for a
        playbook that polls it while the module runs asynchronously.
    type: path
notes:
  - Partition tables are written as MBR (C(dos)) with 512-byte sectors, like the image's.
  - The module opens the device with C(O_EXCL), so the kernel refuses if anything still holds it.
requirements:
  - util-linux (C(lsblk), C(blkid), C(partx), C(blockdev)), fdisk (C(sfdisk)), e2fsprogs (C(e2fsck),
    C(resize2fs), C(mke2fs), C(tune2fs)).
attributes:
  check_mode:
    support: full
    description: Applies every rule and reports what would be written and the partition table that would result.
  diff_mode:
    support: full
    description: The partition table before and after.
"""

EXAMPLES = r"""
- name: Flash the image to the stick
  kubesolo.os.image_flash:
    device: /dev/sdb
    confirm: /dev/sdb
    image: output/kubesolo-os-0.1.0-amd64.img
    data_label: "{{ kubesolo_os_boot.data_label }}"

- name: Upgrade a stick, keeping its data partition
  kubesolo.os.image_flash:
    device: /dev/sdb
    confirm: /dev/sdb
    image: output/kubesolo-os-0.2.0-amd64.img
    data_label: "{{ kubesolo_os_boot.data_label }}"
    keep_data: true
"""

RETURN = r"""
written_bytes:
  description: Bytes written to the device (0 in check mode).
  returned: always
  type: int
  sample: 336592896
sha256:
  description: SHA256 of the bytes written, equal to what was read back.
  returned: when written
  type: str
write_seconds:
  description: Seconds the write and flush took.
  returned: when written
  type: float
write_mib_per_second:
  description: Write throughput including the flush.
  returned: when written
  type: float
verify_seconds:
  description: Seconds the read-back and comparison took.
  returned: when written
  type: float
kept_data:
  description: Whether an existing data partition was kept.
  returned: always
  type: bool
data_partition:
  description: The data partition after the run (number, start and size in sectors), or null.
  returned: always
  type: dict
  sample: {number: 2, start: 526336, size: 30736384}
grown:
  description: Whether the data partition or its file system was grown (or created).
  returned: always
  type: bool
grow_log:
  description: What growing the file system did (e.g. the resize inode removed), one line each.
  returned: when an existing data file system was grown
  type: list
  elements: str
plan:
  description: What is (or would be) done, one line per step.
  returned: always
  type: list
  elements: str
test_hook_ran:
  description: Whether the test-only corrupt hook ran.
  returned: always
  type: bool
"""

import contextlib
import fcntl
import hashlib
import os
import shlex
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubesolo.os.plugins.module_utils import blockdev

SECTOR = blockdev.SECTOR
MIB = blockdev.MIB
MBR_MAX_SECTORS = 2**32 - 1
BLKFLSBUF = 0x1261
TEST_HOOK_ENV = "KUBESOLO_FLASH_TEST_CORRUPT_HOOK"
GPT_BACKUP_BYTES = 33 * SECTOR


class Progress:
    """Writes progress lines to a file (replaced atomically) about once a second."""

    def __init__(self, path: str | None, what: str, total: int) -> None:
        self.path, self.what, self.total = path, what, total
        self.started = time.monotonic()
        self.last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.path or (not force and now - self.last < 1.0):
            return
        self.last = now
        elapsed = max(now - self.started, 1e-6)
        percent = 100.0 * done / self.total if self.total else 100.0
        line = (f"{self.what}: {done / MIB:.1f} of {self.total / MIB:.1f} MiB ({percent:.0f}%), "
                f"{done / MIB / elapsed:.1f} MiB/s, {elapsed:.0f}s\n")
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(line)
        os.replace(tmp, self.path)


def table_text(table: dict | None) -> str:
    if not table:
        return "no partition table\n"
    lines = [f"label: {table.get('label')}", f"label-id: {table.get('id')}"]
    for part in table["partitions"]:
        lines.append(f"{part['number']}: start={part['start']}, size={part['size']}, type={part['type']}"
                     + (", bootable" if part.get("bootable") else ""))
    return "\n".join(lines) + "\n"


def sfdisk_script(table: dict) -> str:
    lines = ["label: dos", f"label-id: {table['id']}", "unit: sectors", ""]
    by_number = {part["number"]: part for part in table["partitions"]}
    for number in range(1, max(by_number) + 1 if by_number else 1):
        part = by_number.get(number)
        if part is None:
            lines.append("size=0, type=0")  # keep the numbering
            continue
        lines.append(f"start={part['start']}, size={part['size']}, type={part['type']}"
                     + (", bootable" if part.get("bootable") else ""))
    return "\n".join(lines) + "\n"


def plan_layout(info: dict[str, Any], image: dict[str, Any], keep_data: bool, grow: bool,
                label: str) -> tuple[dict | None, dict | None, list]:
    """The partition table after the run, the data partition in it, and the plan's steps."""
    dev_sectors = min(info["size"] // SECTOR, MBR_MAX_SECTORS)
    table = image["table"]
    data = image["data_partition"]
    steps = []
    if keep_data:
        existing = info["data_partition"]
        steps.append(f"write the image's boot part ({image['boot_bytes']} bytes) to {info['path']}, "
                     f"keeping the {label} partition at sector {existing['start']}")
        size = dev_sectors - existing["start"] if grow else existing["size"]
        size = max(size, existing["size"])
        new_data = {"number": data["number"], "start": existing["start"], "size": size, "type": "83",
                    "bootable": False}
    else:
        steps.append(f"write the whole image ({image['size']} bytes) to {info['path']}")
        if data is None:
            if not grow or table is None or table.get("label") != "dos" or len(table["partitions"]) >= 4:
                steps.append(f"no {label} partition in the image: none is created")
                return table, None, steps
            start = -(-image["size"] // MIB) * (MIB // SECTOR)
            if dev_sectors - start < 8 * MIB // SECTOR:
                steps.append(f"no room after the image for a {label} partition")
                return table, None, steps
            used = {part["number"] for part in table["partitions"]}
            number = min(n for n in range(1, 5) if n not in used)
            new_data = {"number": number, "start": start, "size": dev_sectors - start, "type": "83",
                        "bootable": False, "create": True}
            steps.append(f"create a {label} ext4 partition {number} from sector {start} to the end")
            parts = table["partitions"] + [new_data]
            return dict(table, partitions=sorted(parts, key=lambda p: p["number"])), new_data, steps
        size = dev_sectors - data["start"] if grow else data["size"]
        new_data = dict(data, size=max(size, data["size"]))
    if new_data["size"] > (data or new_data)["size"] or keep_data:
        steps.append(f"{label} partition {new_data['number']}: start {new_data['start']}, "
                     f"{new_data['size']} sectors ({blockdev.human(new_data['size'] * SECTOR)})")
    parts = [p for p in table["partitions"] if p["number"] != new_data["number"]] + [new_data]
    return dict(table, partitions=sorted(parts, key=lambda p: p["number"])), new_data, steps


def drop_caches(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, BLKFLSBUF, 0)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def write_image(image: str, device: str, nbytes: int, block: int, progress: Progress) -> tuple[str, float]:
    digest = hashlib.sha256()
    started = time.monotonic()
    progress.update(0, force=True)
    fd = os.open(device, os.O_WRONLY | os.O_EXCL)
    try:
        with open(image, "rb") as src:
            done = 0
            while done < nbytes:
                chunk = src.read(min(block, nbytes - done))
                if not chunk:
                    raise OSError(f"{image} ended after {done} bytes")
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                done += len(chunk)
                progress.update(done)
        progress.what = progress.what + " (flushing)"
        progress.update(done, force=True)
        os.fsync(fd)
        drop_caches(fd)
    finally:
        os.close(fd)
    return digest.hexdigest(), time.monotonic() - started


def read_back(device: str, nbytes: int, block: int, progress: Progress) -> tuple[str, float]:
    digest = hashlib.sha256()
    started = time.monotonic()
    fd = os.open(device, os.O_RDONLY)
    try:
        drop_caches(fd)
        done = 0
        while done < nbytes:
            chunk = os.read(fd, min(block, nbytes - done))
            if not chunk:
                break
            digest.update(chunk)
            done += len(chunk)
            progress.update(done)
        progress.update(done, force=True)
    finally:
        os.close(fd)
    return digest.hexdigest(), time.monotonic() - started


def zero_range(device: str, offset: int, length: int) -> None:
    fd = os.open(device, os.O_WRONLY | os.O_EXCL)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        os.write(fd, b"\0" * length)
        os.fsync(fd)
    finally:
        os.close(fd)


def reread_partitions(module: AnsibleModule, device: str) -> None:
    """Make the kernel see the new table: BLKRRPART, else partx (loop devices without partscan)."""
    rc, _out, _err = module.run_command(["blockdev", "--rereadpt", device])
    if rc != 0:
        module.run_command(["partx", "-d", device])
        module.run_command(["partx", "-a", device])
    module.run_command(["partx", "-u", device])


def partition_node(module: AnsibleModule, name: str, number: int, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    sysdir = os.path.join("/sys/class/block", name)
    while True:
        for entry in sorted(os.listdir(sysdir)):
            if blockdev.read_sysfs(os.path.join(sysdir, entry, "partition")) == str(number):
                node = f"/dev/{entry}"
                if os.path.exists(node):
                    return node
        if time.monotonic() > deadline:
            module.fail_json(msg=f"Partition {number} of /dev/{name} did not appear after rereading the table.")
        time.sleep(0.5)


def run_module() -> None:
    module = AnsibleModule(
        argument_spec={
            "device": {"type": "path", "required": True},
            "image": {"type": "path", "required": True},
            "confirm": {"type": "str", "required": True},
            "allow_fixed_disk": {"type": "bool", "default": False},
            "keep_data": {"type": "bool", "default": False},
            "grow": {"type": "bool", "default": True},
            "data_label": {"type": "str", "required": True},
            "block_size_mib": {"type": "int", "default": 4},
            "progress_file": {"type": "path"},
        },
        supports_check_mode=True,
    )
    p = module.params
    device, label = p["device"], p["data_label"]
    result: dict[str, Any] = {"changed": False, "written_bytes": 0, "kept_data": False, "grown": False,
                              "data_partition": None, "plan": [], "test_hook_ran": False}
    if p["confirm"] != device:
        module.fail_json(msg=f"Refusing to write to {device}: rule 'confirmation': the confirmation "
                             f"({p['confirm']!r}) is not the same device path. Override: flash_confirm: {device}.",
                         rule="confirmation", **result)
    if not os.path.isfile(p["image"]):
        module.fail_json(msg=f"Image {p['image']} does not exist (set flash_image to an image file).", **result)
    image = blockdev.image_info(module.run_command, p["image"], label)
    info = blockdev.inspect(module.run_command, device, label)
    refusal = blockdev.refusal(info, image, p["allow_fixed_disk"], p["keep_data"], label)
    if refusal:
        module.fail_json(msg=refusal["msg"], rule=refusal["rule"], **result)

    new_table, new_data, steps = plan_layout(info, image, p["keep_data"], p["grow"], label)
    nbytes = image["boot_bytes"] if p["keep_data"] else image["size"]
    steps.insert(1, f"read the {nbytes} bytes back and compare their SHA256 with the image's")
    if new_data is not None and p["grow"]:
        steps.append(f"grow the {label} file system to fill its partition (e2fsck -f -p, resize2fs)"
                     if not new_data.get("create") else f"make an ext4 file system labelled {label} on it")
    result.update(plan=steps, kept_data=p["keep_data"], data_partition=new_data, changed=True)
    if module._diff:
        result["diff"] = {"before": table_text(info["table"]), "after": table_text(new_table),
                          "before_header": f"{device} partition table", "after_header": f"{device} partition table"}
    if module.check_mode:
        module.exit_json(msg="Would " + "; then ".join(steps), **result)

    block = max(1, p["block_size_mib"]) * MIB
    what = f"Writing {os.path.basename(p['image'])} to {device}"
    try:
        sha, seconds = write_image(p["image"], device, nbytes, block, Progress(p["progress_file"], what, nbytes))
    except OSError as exc:
        module.fail_json(msg=f"Writing {p['image']} to {device} failed: {exc}", **result)
    result.update(written_bytes=nbytes, sha256=sha, write_seconds=round(seconds, 2),
                  write_mib_per_second=round(nbytes / MIB / max(seconds, 1e-6), 1))

    hook = os.environ.get(TEST_HOOK_ENV)
    if hook:
        module.warn(f"{TEST_HOOK_ENV} is set: running the test-only hook {hook!r} before the read-back.")
        module.run_command([*shlex.split(hook), device], check_rc=True)
        result["test_hook_ran"] = True

    back, vseconds = read_back(device, nbytes, block, Progress(p["progress_file"], f"Verifying {device}", nbytes))
    result["verify_seconds"] = round(vseconds, 2)
    if back != sha:
        module.fail_json(msg=f"Verify failed: the SHA256 of the {nbytes} bytes read back from {device} ({back}) "
                             f"differs from the image's ({sha}). The stick may be faulty or fake; do not boot it.",
                         read_back_sha256=back, **result)

    if (new_table is not None and new_table != image["table"]) or p["keep_data"]:
        if not p["keep_data"] and info["size"] - image["size"] >= GPT_BACKUP_BYTES:
            zero_range(device, info["size"] - GPT_BACKUP_BYTES, GPT_BACKUP_BYTES)  # a stale backup GPT
        module.run_command(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never",
                            "--wipe-partitions", "never", device], data=sfdisk_script(new_table), check_rc=True)
    reread_partitions(module, device)

    if new_data is not None and p["grow"]:
        node = partition_node(module, info["name"], new_data["number"])
        if new_data.get("create"):
            module.run_command(["mke2fs", "-q", "-F", "-t", "ext4", "-L", label, node], check_rc=True)
        else:
            # Any size up to the MBR limit: the resize-inode limit is handled (blockdev.ext4_grow_script).
            rc, out, err = module.run_command(["/bin/sh", "-c", blockdev.ext4_grow_script(node, mounted=False)])
            if rc != 0:
                module.fail_json(msg=f"Growing the {label} file system on {node} failed: {(out + err).strip()}",
                                 **result)
            result["grow_log"] = out.strip().splitlines()
        result["grown"] = True
        result["data_node"] = node
    module.exit_json(msg="Wrote and verified " + device, **result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
