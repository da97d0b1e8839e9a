#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# Ansible module boilerplate: coding line, __future__ imports and __metaclass__, imports after the docs.

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: block_device_info
short_description: Describe a block device and check whether an image may be flashed to it
version_added: "0.1.0"
description:
  - Reads what is known about a target disk (model, vendor, serial, size, transport, removable flag, partition
    table, mounted file systems, whether the running system lives on it, an existing data partition) from
    C(lsblk -J -b -O), C(sfdisk -J), C(blkid -p), sysfs and C(/proc/mounts). Changes nothing.
  - Applies the safety rules of flashing, in this order, and returns the first one the target breaks in
    RV(refusal), with one message naming the rule and the variable that overrides it, if any.
    C(block-device) the path exists and is a block device; C(whole-disk) it is a disk, not a partition;
    C(system-disk) C(/), C(/boot), C(/boot/efi) and C(/usr) are not on it; C(not-mounted) none of its file
    systems is mounted, used as swap or held by device-mapper/md; C(writable) it is not read-only;
    C(removable) it is removable, on the USB transport, or an SD card (override O(allow_fixed_disk));
    C(sector-size) 512-byte logical sectors; C(size) the image fits; C(keep-data) with O(keep_data), an ext4
    partition labelled O(data_label) exists on the target and starts after the image's boot part.
  - The same rules are applied again by M(kubesolo.os.image_flash) before it writes.
author:
  - KubeSolo OS developers (@kubesolo-os)
options:
  device:
    description:
      - Path of the target device, for example C(/dev/sdb).
    type: path
    required: true
  image:
    description:
      - Image file to be written; enables the C(size) and C(keep-data) rules and returns RV(image).
    type: path
  allow_fixed_disk:
    description:
      - Accept a disk that is neither removable nor on the USB transport.
    type: bool
    default: false
  keep_data:
    description:
      - The image will be written around an existing data partition (check the C(keep-data) rule).
    type: bool
    default: false
  data_label:
    description:
      - File system label of the data partition, the boot contract's C(data_label) (files/boot-contract.yml,
        C(kubesolo_os_boot.data_label) once the kubesolo_os role loaded it).
    type: str
    required: true
notes:
  - Loop devices count as whole, non-removable disks.
requirements:
  - util-linux (C(lsblk), C(blkid)) and fdisk (C(sfdisk)) on the machine the device is attached to.
attributes:
  check_mode:
    support: full
    description: The module never changes anything.
  diff_mode:
    support: none
    description: Nothing is changed, so there is no diff.
"""

EXAMPLES = r"""
- name: Inspect the USB stick
  kubesolo.os.block_device_info:
    device: /dev/sdb
    image: output/kubesolo-os-0.1.0-amd64.img
    data_label: "{{ kubesolo_os_boot.data_label }}"
  register: stick

- name: Stop when the stick must not be written
  ansible.builtin.fail:
    msg: "{{ stick.refusal.msg }}"
  when: stick.refusal is not none
"""

RETURN = r"""
device:
  description: What is known about the target.
  returned: always
  type: dict
  contains:
    path:
      description: The path given.
      type: str
      sample: /dev/sdb
    realpath:
      description: The path with symbolic links resolved.
      type: str
      sample: /dev/sdb
    exists:
      description: Whether the path exists.
      type: bool
    is_block:
      description: Whether it is a block device.
      type: bool
    name:
      description: Kernel name.
      type: str
      sample: sdb
    type:
      description: The lsblk type (C(disk), C(loop), C(part) and so on).
      type: str
      sample: disk
    size:
      description: Size in bytes.
      type: int
      sample: 15518924800
    model:
      description: Model.
      type: str
      sample: Cruzer Blade
    vendor:
      description: Vendor.
      type: str
      sample: SanDisk
    serial:
      description: Serial number.
      type: str
      sample: 4C530001230511113232
    transport:
      description: The lsblk transport (C(usb), C(sata), C(nvme) and so on).
      type: str
      sample: usb
    removable:
      description: The removable flag of sysfs.
      type: bool
    in_use:
      description: Mounted file systems, swap and holders on the disk.
      type: list
      elements: str
    system_paths:
      description: Paths of the running system that live on the disk.
      type: list
      elements: str
    table:
      description: Partition table (C(label), C(id), C(partitions)), or null.
      type: dict
    data_partition:
      description: The partition holding the data file system, or null.
      type: dict
image:
  description: Size, partition table, data partition and boot part size (bytes before the data partition).
  returned: when O(image) is given
  type: dict
  sample: {path: output/kubesolo-os-0.1.0-amd64.img, size: 336592896, boot_bytes: 269484032}
refusal:
  description: The first rule the target breaks (C(rule), C(msg)), or null when it may be written.
  returned: always
  type: dict
  sample: {rule: removable, msg: "Refusing to write to /dev/sda: rule 'removable': ..."}
summary:
  description: One line for a confirmation prompt (model, size, serial).
  returned: always
  type: str
  sample: "/dev/sdb: SanDisk Cruzer Blade, 14.5 GiB, serial 4C530001230511113232, transport usb"
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubesolo.os.plugins.module_utils import blockdev


def summary(info: dict) -> str:
    if not info.get("is_block"):
        return f"{info['path']}: not a block device"
    name = " ".join(part for part in (info.get("vendor"), info.get("model")) if part) or "unknown model"
    return (f"{info['path']}: {name}, {blockdev.human(info.get('size', 0))} ({info.get('size', 0)} bytes), "
            f"serial {info.get('serial') or 'unknown'}, transport {info.get('transport') or 'none'}, "
            f"removable {'yes' if info.get('removable') else 'no'}")


def run_module() -> None:
    module = AnsibleModule(
        argument_spec={
            "device": {"type": "path", "required": True},
            "image": {"type": "path"},
            "allow_fixed_disk": {"type": "bool", "default": False},
            "keep_data": {"type": "bool", "default": False},
            "data_label": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    image = None
    if params["image"]:
        if not os.path.isfile(params["image"]):
            module.fail_json(msg=f"Image {params['image']} does not exist (set flash_image to an image file).")
        image = blockdev.image_info(module.run_command, params["image"], params["data_label"])
    info = blockdev.inspect(module.run_command, params["device"], params["data_label"])
    refusal = blockdev.refusal(info, image, params["allow_fixed_disk"], params["keep_data"], params["data_label"])
    result = {"changed": False, "device": info, "refusal": refusal, "summary": summary(info)}
    if image is not None:
        result["image"] = image
    module.exit_json(**result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
