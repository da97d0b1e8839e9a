#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# Ansible module boilerplate (sanity tests want it; imports follow the documentation strings):

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ksolodata_reboot
short_description: Reboot a KubeSolo OS node (no Python needed) and wait until its data partition is mounted again
version_added: "0.2.0"
description:
  - M(ansible.builtin.reboot) for nodes without Python. It reboots with O(reboot_command), waits until the
    node's C(/proc/sys/kernel/random/boot_id) changes and O(test_command) succeeds over the connection.
  - Only the distribution detection (setup module) and the shutdown command search (find module) of the
    builtin plugin are replaced; everything else, including the options, is M(ansible.builtin.reboot)'s.
  - This is an action plugin; the file only documents it.
author:
  - KubeSolo OS developers (@kubesolo-os)
options:
  reboot_command:
    description:
      - Command that reboots the node.
    type: str
    default: /sbin/reboot
  data_mount:
    description:
      - Where the image mounts the data partition, the boot contract's C(data_mount) (files/boot-contract.yml,
        C(kubesolo_os_boot.data_mount) once the kubesolo_os role loaded it). Without O(test_command), the node
        passes when an ext4 file system is mounted there. One of O(data_mount) and O(test_command) is required.
    type: str
  test_command:
    description:
      - Command that must succeed after the reboot. Default, with O(data_mount), checks that an ext4 file system
        is mounted on O(data_mount).
    type: str
  reboot_timeout:
    description:
      - Seconds to wait for the node to come back and pass O(test_command).
    type: int
    default: 600
  connect_timeout:
    description:
      - Seconds to wait for each connection attempt.
    type: int
  pre_reboot_delay:
    description:
      - Seconds to wait before rebooting.
    type: int
    default: 0
  post_reboot_delay:
    description:
      - Seconds to wait after the node is back before checking it.
    type: int
    default: 0
  msg:
    description:
      - Message (unused by busybox reboot; kept for compatibility with ansible.builtin.reboot).
    type: str
    default: Reboot initiated by Ansible
  boot_time_command:
    description:
      - Command whose output changes with each boot.
    type: str
    default: cat /proc/sys/kernel/random/boot_id
attributes:
  check_mode:
    support: full
    description: Reports a reboot without doing it.
  diff_mode:
    support: none
    description: Nothing to show.
notes:
  - Refuses to run over the local connection (it would reboot the controller).
seealso:
  - module: ansible.builtin.reboot
"""

EXAMPLES = r"""
- name: Reboot the node and wait for the data partition to be mounted
  kubesolo.os.ksolodata_reboot:
    data_mount: "{{ kubesolo_os_boot.data_mount }}"
    reboot_timeout: 300
"""

RETURN = r"""
rebooted:
  description: Whether the node rebooted.
  returned: always
  type: bool
elapsed:
  description: Seconds from the reboot until the node passed the test command.
  returned: always
  type: int
"""
