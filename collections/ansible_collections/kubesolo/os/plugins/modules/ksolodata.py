#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# Ansible module boilerplate (sanity tests want it; imports follow the documentation strings):

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ksolodata
short_description: Prepare the data partition of a KubeSolo OS node, safely and idempotently
version_added: "0.2.0"
description:
  - Inspects the node's disks (C(/sys/block), C(blkid -p), C(/proc/mounts)), chooses the disk for the
    KubeSolo OS data partition, creates a GPT with one partition named O(label), makes an ext4 file
    system labelled O(label) on it, and writes the node's configuration files and directories on it.
  - An existing file system labelled O(label) is never reformatted; its directories and files are only
    updated when O(update_config=true). Optionally (O(grow=true)) a last partition that does not reach
    the end of its disk is grown together with its file system.
  - A disk with any partition table, file system, RAID or LVM signature is refused unless O(wipe=true)
    and the disk is named in O(device). The boot medium (a disk with an ISO9660 file system, an
    optical drive, the disk of C(/)) and any disk with a mounted or held partition is never chosen and
    is refused when named. Several candidate disks without O(device) are refused, listing them; so are
    disks below O(min_size_gib), and removable/USB disks unless O(allow_removable=true).
  - The action plugin of the same name runs this module on targets with Python, and on targets without
    Python (KubeSolo OS nodes over SSH) it runs the same logic on the controller and drives the node
    with shell commands the image has (C(/sbin/blkid), C(/sbin/sfdisk), C(/sbin/mke2fs), busybox).
author:
  - KubeSolo OS developers (@kubesolo-os)
options:
  device:
    description:
      - Whole disk to use, for example C(/dev/vdb). Empty to choose automatically.
    type: str
    default: ""
  wipe:
    description:
      - Erase a non-blank O(device). Has no effect without O(device).
    type: bool
    default: false
  min_size_gib:
    description:
      - Disks smaller than this many GiB are refused.
    type: float
    default: 1.0
  allow_removable:
    description:
      - Let removable and USB disks be chosen automatically.
    type: bool
    default: false
  candidates:
    description:
      - Allow-list of disks to look at (for example loop devices in tests). Empty means every disk of
        the node. Existing O(label) file systems are only searched among these.
    type: list
    elements: str
    default: []
  grow:
    description:
      - Grow an existing O(label) partition that is the last one on its disk to the end of the disk.
    type: bool
    default: false
  update_config:
    description:
      - Update O(directories) and O(files) on an existing O(label) file system (a new one always gets them).
    type: bool
    default: false
  label:
    description:
      - File system label and GPT partition name, the boot contract's C(data_label) (files/boot-contract.yml,
        C(kubesolo_os_boot.data_label) once the kubesolo_os role loaded it), which the image looks for.
    type: str
    required: true
  directories:
    description:
      - Directories to create on the data file system (relative paths), with their modes.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Path relative to the root of the data file system.
        type: str
        required: true
      mode:
        description: Octal mode of a directory that is created.
        type: str
        default: "0755"
  files:
    description:
      - Files to write on the data file system; content and mode are compared, only differences are written.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Path relative to the root of the data file system.
        type: str
        required: true
      content:
        description: Exact content of the file.
        type: str
        required: true
      mode:
        description: Octal mode.
        type: str
        default: "0644"
  redacted_files:
    description:
      - Like O(files) for secrets (KubeSolo configuration); their content is never logged nor shown in diffs.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Path relative to the root of the data file system.
        type: str
        required: true
      content:
        description: Exact content of the file (never logged).
        type: str
        required: true
      mode:
        description: Octal mode.
        type: str
        default: "0600"
  remove_files:
    description:
      - Files to delete from the data file system (relative paths), e.g. a file an earlier release used
        that a new one replaces. Like O(files), only acted on when the configuration is written (a new
        file system, or O(update_config=true)); an absent file is no change.
    type: list
    elements: str
    default: []
  mount_dir:
    description:
      - Where the data file system is mounted temporarily when it is not mounted already.
    type: str
    default: /run/ksolodata
  executor:
    description:
      - How the action plugin drives the node. V(auto) runs this module where Python is found and shell
        commands otherwise; V(module) and V(shell) force one way.
    type: str
    choices: [auto, module, shell]
    default: auto
attributes:
  check_mode:
    support: full
    description: Reports the plan (commands and files) without running any of it.
  diff_mode:
    support: full
    description: Shows the configuration files that change; secrets are redacted.
notes:
  - Needs root on the node.
"""

EXAMPLES = r"""
- name: Prepare the data partition on the only blank disk of the node
  kubesolo.os.ksolodata:
    label: "{{ kubesolo_os_boot.data_label }}"
    files:
      - path: etc-kubesolo/hostname
        content: "node-1\n"

- name: Erase a named disk and put the data partition on it
  kubesolo.os.ksolodata:
    label: "{{ kubesolo_os_boot.data_label }}"
    device: /dev/sdb
    wipe: true
"""

RETURN = r"""
action:
  description: V(create) when the partition was (or would be) made, V(existing) when one was found.
  returned: success
  type: str
device:
  description: The disk holding KSOLODATA.
  returned: success
  type: str
  sample: /dev/vdb
partition:
  description: The device of the KSOLODATA file system.
  returned: success
  type: str
  sample: /dev/vdb1
plan:
  description: What was (or, in check mode, would be) done, in order.
  returned: always
  type: list
  elements: str
disks:
  description: Every disk looked at, with its size, signatures and why it counts as boot medium or in use.
  returned: always
  type: list
  elements: dict
refused:
  description: Disks passed over by the automatic choice, with the reasons.
  returned: success
  type: list
  elements: dict
config_drift:
  description: Files and directories that differ on an existing partition when O(update_config=false).
  returned: when differences were found and not applied
  type: list
  elements: str
growable_bytes:
  description: Free space after an existing last partition.
  returned: when there is some
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubesolo.os.plugins.module_utils.ksolodata import KsolodataError, provision

FILE_OPTIONS = {
    "path": {"type": "str", "required": True},
    "content": {"type": "str", "required": True},
    "mode": {"type": "str", "default": "0644"},
}
REDACTED_FILE_OPTIONS = {
    "path": {"type": "str", "required": True},
    "content": {"type": "str", "required": True, "no_log": True},
    "mode": {"type": "str", "default": "0600"},
}

ARGUMENT_SPEC = {
    "device": {"type": "str", "default": ""},
    "wipe": {"type": "bool", "default": False},
    "min_size_gib": {"type": "float", "default": 1.0},
    "allow_removable": {"type": "bool", "default": False},
    "candidates": {"type": "list", "elements": "str", "default": []},
    "grow": {"type": "bool", "default": False},
    "update_config": {"type": "bool", "default": False},
    "label": {"type": "str", "required": True},
    "directories": {"type": "list", "elements": "dict", "default": [],
                    "options": {"path": {"type": "str", "required": True},
                                "mode": {"type": "str", "default": "0755"}}},
    "files": {"type": "list", "elements": "dict", "default": [], "options": FILE_OPTIONS},
    "redacted_files": {"type": "list", "elements": "dict", "default": [], "options": REDACTED_FILE_OPTIONS},
    "remove_files": {"type": "list", "elements": "str", "default": []},
    "mount_dir": {"type": "str", "default": "/run/ksolodata"},
    "executor": {"type": "str", "default": "auto", "choices": ["auto", "module", "shell"]},
}


def provision_params(params: dict) -> dict:
    """Module parameters as provision() wants them (secret files flagged)."""
    files = [dict(f, secret=False) for f in params.get("files") or []]
    files += [dict(f, secret=True) for f in params.get("redacted_files") or []]
    return dict(params, files=files)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)

    def run(command: str) -> tuple[int, str, str]:
        rc, out, err = module.run_command(command, use_unsafe_shell=True, environ_update={"LC_ALL": "C"})
        return rc, out, err

    try:
        result = provision(run, provision_params(module.params), check_mode=module.check_mode)
    except KsolodataError as exc:
        module.fail_json(msg=exc.msg, **exc.details)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
