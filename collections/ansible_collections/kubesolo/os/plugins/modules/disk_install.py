#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# Ansible module boilerplate (sanity tests want it; imports follow the documentation strings):

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: disk_install
short_description: Install KubeSolo OS onto a disk (A/B slots, GRUB for BIOS and UEFI), keeping its data
version_added: "0.2.0"
description:
  - Writes the installed-disk layout (O(layout), the contents of C(files/installed-disk.yml)) onto a disk of the
    managed host, a KubeSolo OS node booted from the ISO or a USB stick (over SSH, no Python needed) or the
    controller itself - a GPT with a bios-boot partition (GRUB's core.img), the EFI system partition (written
    from O(esp_image) - GRUB for UEFI, the A/B menu, the GRUB environment with slot A active), slots A and B,
    and the data partition (ext4 labelled O(label), the rest of the disk). Slot A gets O(slot_image); GRUB's
    boot code goes into the MBR.
  - "Safety rules (those of provision-data.yml and flash-usb.yml): never the boot medium or a disk in use, never
    a read-only, too small or (unless O(allow_removable)) removable/USB disk; a disk holding anything (partition
    table, file system, RAID/LVM signature) is refused unless it already has the installed layout (a
    re-install) or is named in O(device) with O(wipe=true). A data partition O(label) is never reformatted: on
    the target disk's installed layout it is kept; on another disk it is kept and used (the target gets no data
    partition); anywhere else on the target disk the install is refused, even with O(wipe)."
  - Without O(device), exactly one disk with the installed layout, or else exactly one blank disk, must qualify.
  - A re-install writes only what differs (boot code, core.img, slot A, the ESP when one of its boot files
    differs or slot A was written); an installed disk holding this image changes nothing. A node that runs from
    its installed disk is reported and left alone (use the upgrade).
  - Every written piece is read back from the device (caches dropped) and its SHA-256 compared.
  - The images are checked against O(slot_image_sha256) / O(esp_image_sha256) (from C(manifest.json)) before
    anything is written.
  - This is an action plugin (it runs on the controller and streams the images over the connection); the
    file only documents it.
author:
  - KubeSolo OS developers (@kubesolo-os)
options:
  slot_image:
    description: Path of the slot image on the controller (C(kubesolo-os-<version>-<arch>-slot.img)).
    type: path
    required: true
  slot_image_sha256:
    description: Expected SHA-256 of O(slot_image); a mismatch refuses the install. Empty skips the check.
    type: str
    default: ""
  esp_image:
    description: Path of the ESP image on the controller (C(kubesolo-os-<version>-<arch>-esp.img)).
    type: path
    required: true
  esp_image_sha256:
    description: Expected SHA-256 of O(esp_image); a mismatch refuses the install. Empty skips the check.
    type: str
    default: ""
  version:
    description: Version of the image (reported, and recorded in the ESP image's GRUB environment).
    type: str
    required: true
  layout:
    description: The installed-disk layout (C(files/installed-disk.yml)).
    type: dict
    required: true
  label:
    description: File system label (and GPT name) of the data partition.
    type: str
    required: true
  device:
    description: The disk to install onto (a whole disk, e.g. C(/dev/vda)). Empty chooses automatically.
    type: str
    default: ""
  wipe:
    description: Erase O(device) when it holds anything but a KubeSolo OS install (never a data partition).
    type: bool
    default: false
  allow_removable:
    description: Accept a removable or USB disk.
    type: bool
    default: false
  slot_size_mib:
    description:
      - Size of each slot partition in MiB on a new layout. 0 takes max(C(slot_min_size_mib), C(slot_image_factor)
        x the slot image) rounded up to C(slot_size_step_mib) (from O(layout)). An installed disk keeps its size.
    type: int
    default: 0
  min_data_size_mib:
    description: Smallest data partition a new layout may leave (the disk must have room for it).
    type: int
    default: 1024
  candidates:
    description: Only look at these disks (tests restrict discovery to their loop devices).
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description: Inspects the disks and reports the plan; nothing is written.
  diff_mode:
    support: none
    description: The plan lists what would be written.
notes:
  - The controller needs mtools (to read the ESP image).
seealso:
  - module: kubesolo.os.ksolodata
"""

EXAMPLES = r"""
- name: Install KubeSolo OS onto the node's only blank disk
  kubesolo.os.disk_install:
    slot_image: output/kubesolo-os-1.0.0-amd64-slot.img
    esp_image: output/kubesolo-os-1.0.0-amd64-esp.img
    version: 1.0.0
    layout: "{{ lookup('ansible.builtin.file', 'files/installed-disk.yml') | from_yaml }}"
    label: KSOLODATA
"""

RETURN = r"""
device:
  description: The disk installed onto (or that would be).
  returned: when a disk was chosen
  type: str
action:
  description: C(create) (new GPT), C(update) (the disk had the installed layout) or C(running) (the node runs from it).
  returned: when a disk was chosen
  type: str
plan:
  description: What is (or would be) written, in order; empty when the disk already holds the image.
  returned: when a disk was chosen
  type: list
  elements: str
executed:
  description: The steps done (they were each verified by reading back).
  returned: when a disk was chosen
  type: list
  elements: str
warnings:
  description: Things to know (a data partition kept on another disk, one on the boot medium).
  returned: when a disk was chosen
  type: list
  elements: str
slot_size_mib:
  description: Size of each slot of a new layout.
  returned: when a disk was chosen
  type: int
disks:
  description: Every disk looked at, with its size, signatures and why it is in use.
  returned: always
  type: list
  elements: dict
"""
