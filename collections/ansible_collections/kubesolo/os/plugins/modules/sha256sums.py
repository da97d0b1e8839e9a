#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# Ansible module boilerplate: coding line, __future__ imports and __metaclass__, imports after the docs.

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: sha256sums
short_description: Checksum release artefacts and write a SHA256SUMS file, without hashing unchanged files again
version_added: "0.2.0"
description:
  - Computes the SHA-256 of each of O(files) in O(path) and writes O(dest) in the format of C(sha256sum)
    (C(<hex>  <name>), one line per file, in the order given), so that C(sha256sum -c) checks the artefacts.
  - A digest is remembered in O(cache) together with the file's size, inode, modification and change time
    (nanoseconds), and reused while all four are unchanged. A rebuilt artefact is replaced by a new file (new inode
    and times), and a file rewritten in place has a new change time even when its modification time is set back,
    so either is hashed again; a multi-hundred-megabyte disk image that did not change is not.
  - O(dest) is replaced atomically and only when its content changes.
author:
  - KubeSolo OS developers (@kubesolo-os)
options:
  path:
    description: Directory that holds the artefacts.
    type: path
    required: true
  files:
    description: File names (relative to O(path), without directories) to checksum. Each must exist (a regular
      file, or a symlink to one), unless O(missing=report).
    type: list
    elements: str
    required: true
  missing:
    description:
      - What a name of O(files) that is not a regular file in O(path) does. V(fail) fails the task naming it;
        V(report) leaves it out of RV(files) and lists it in RV(missing) (the caller decides, with its own message,
        so that a single run both looks at and checksums a file). V(report) cannot be combined with O(dest).
    type: str
    choices: [fail, report]
    default: fail
  dest:
    description: The checksum list to write (for example C(SHA256SUMS) in O(path)). Not written when omitted.
    type: path
  cache:
    description:
      - JSON file that remembers digests by size, inode, modification and change time (kept outside the published
        directory). No cache is used when omitted.
    type: path
  mode:
    description: Permission bits of O(dest).
    type: raw
    default: "0644"
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Computes the digests and reports whether O(dest) would change; writes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Shows the old and new content of O(dest).
seealso:
  - module: ansible.builtin.stat
"""

EXAMPLES = r"""
- name: Checksum the artefacts into SHA256SUMS
  kubesolo.os.sha256sums:
    path: /srv/build/output
    files: [kubesolo-os.iso, kubesolo-os.img]
    dest: /srv/build/output/SHA256SUMS
    cache: /srv/build/state/sha256.cache.json
  register: sums
"""

RETURN = r"""
files:
  description: The digest and size of each file, by name.
  returned: always
  type: dict
  sample: {kubesolo-os.iso: {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, size: 24313856}}
missing:
  description: Names of O(files) that are not regular files in O(path) (only with O(missing=report); else the task
    fails).
  returned: always
  type: list
  elements: str
  sample: []
hashed:
  description: Names of the files that were hashed in this run (the others came from O(cache)).
  returned: always
  type: list
  elements: str
  sample: [kubesolo-os.iso]
"""

import os
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubesolo.os.plugins.module_utils.buildutil import (
    BuildUtilError,
    parse_mode,
    read_state,
    sha256_file,
    write_atomic,
    write_state,
)


def load_cache(path: str | None) -> dict[str, Any]:
    return (read_state(path) or {}) if path else {}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            files=dict(type="list", elements="str", required=True),
            dest=dict(type="path"),
            cache=dict(type="path"),
            mode=dict(type="raw", default="0644"),
            missing=dict(type="str", default="fail", choices=["fail", "report"]),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        mode = parse_mode(params["mode"], "mode")
    except BuildUtilError as exc:
        module.fail_json(msg=str(exc))
    for name in params["files"]:
        if not name or "/" in name:
            module.fail_json(msg=f"files: {name!r} must be a plain file name in {params['path']}")
    missing = [n for n in params["files"] if not os.path.isfile(os.path.join(params["path"], n))]
    if params["missing"] == "report" and params["dest"]:
        module.fail_json(msg="missing=report cannot be combined with dest (the list would leave files out)")
    if missing and params["missing"] == "fail":
        module.fail_json(msg=f"missing from {params['path']}: {', '.join(missing)}", missing=missing)
    cache = load_cache(params["cache"])
    new_cache: dict[str, Any] = {}
    files: dict[str, dict[str, Any]] = {}
    hashed: list[str] = []
    for name in params["files"]:
        if name in missing:
            continue
        path = os.path.join(params["path"], name)
        st = os.stat(path)
        identity = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        record = cache.get(path)
        if isinstance(record, list) and len(record) == 2 and record[0] == identity:
            digest = str(record[1])
        else:
            digest = sha256_file(path)
            hashed.append(name)
        new_cache[path] = [identity, digest]
        files[name] = {"sha256": digest, "size": st.st_size}
    result: dict[str, Any] = {"changed": False, "files": files, "hashed": hashed, "missing": missing}
    if params["dest"]:
        text = "".join(f"{files[n]['sha256']}  {n}\n" for n in params["files"])
        dest = params["dest"]
        try:
            with open(dest, encoding="utf-8") as handle:
                before: str | None = handle.read()
        except (OSError, UnicodeDecodeError):
            before = None
        current_mode = os.stat(dest).st_mode & 0o7777 if before is not None else None
        if before != text or current_mode != mode:
            result["changed"] = True
            if module._diff:
                result["diff"] = {"before_header": dest, "after_header": dest, "before": before or "", "after": text}
            if not module.check_mode:
                try:
                    write_atomic(dest, text.encode(), mode, prefix=f".{os.path.basename(dest)}.")
                except OSError as exc:
                    module.fail_json(msg=f"cannot write {dest}: {exc.strerror}")
    if params["cache"] and new_cache != cache and not module.check_mode:
        try:
            write_state(params["cache"], new_cache, mkdir=True)
        except OSError as exc:
            module.warn(f"cannot write the cache {params['cache']}: {exc.strerror}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
