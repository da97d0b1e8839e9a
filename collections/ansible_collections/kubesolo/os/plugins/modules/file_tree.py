#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# Ansible module boilerplate: coding line, __future__ imports and __metaclass__, imports after the docs.

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: file_tree
short_description: Make a directory tree hold the given directories, symbolic links and files, in one call
version_added: "0.2.0"
description:
  - Brings the directories, symbolic links and files of a whole tree (an image layer, an ISO or boot partition
    tree) to the declared state in one module run, where M(ansible.builtin.file), M(ansible.builtin.copy) and
    M(ansible.builtin.template) in a loop would cost one module run per item. A build that changes nothing
    therefore stays fast.
  - Only what differs is written. A file is replaced atomically (temporary file in the same directory, then
    rename) when its bytes differ; its mode is corrected in place when only the mode differs. Unchanged files
    keep their modification time.
  - Files come from O(files[].content) (text), O(files[].src) (a file on the managed host, copied byte for
    byte) or, through the action plugin, O(files[].template) (a Jinja2 template of the role, rendered on the
    controller like M(ansible.builtin.template)).
  - O(exclusive) directories hold only what is declared in them; anything else there is removed. O(absent)
    paths are removed.
  - Every path is relative to O(root); a leading C(/) is ignored and C(..) is refused, so nothing outside
    O(root) is touched.
author:
  - KubeSolo OS developers (@kubesolo-os)
options:
  root:
    description:
      - Root directory of the tree. It is created (mode C(0755)) when missing.
    type: path
    required: true
  directories:
    description:
      - Directories to create. Missing parents are created with mode C(0755).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Path below O(root).
        type: str
        required: true
      mode:
        description: Permission bits as an octal string (quote it in YAML, for example V('0700')).
        type: raw
        default: "0755"
  symlinks:
    description:
      - Symbolic links to create or correct. An existing file or link at the path is replaced; an existing
        directory is an error.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Path of the link below O(root).
        type: str
        required: true
      target:
        description: Target of the link, stored as given (it is not resolved against O(root)).
        type: str
        required: true
  files:
    description:
      - Regular files. Each needs exactly one of O(files[].content), O(files[].src) and O(files[].template).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Path below O(root).
        type: str
        required: true
      mode:
        description: Permission bits as an octal string (quote it in YAML, for example V('0600')).
        type: raw
        default: "0644"
      content:
        description: Text content, written as UTF-8.
        type: str
      src:
        description: File on the managed host whose bytes are copied (for binaries and large files).
        type: path
      template:
        description:
          - Template of the role (looked up in its C(templates/) directory like the C(src) of
            M(ansible.builtin.template)), rendered on the controller by the action plugin with the task's
            variables. The module itself receives the rendered text as O(files[].content).
        type: str
      vars:
        description:
          - Variables for O(files[].template) only, on top of the task's (for example the medium a menu is
            rendered for), so that one task renders the same template several times instead of a loop of tasks.
          - Used by the action plugin; ignored without O(files[].template).
        type: dict
  exclusive:
    description:
      - Directories below O(root) that must hold only the declared entries (directories, links and files declared
        directly in them); every other entry in them is removed. Their subdirectories are not pruned unless they
        are listed too.
    type: list
    elements: str
    default: []
  absent:
    description:
      - Paths below O(root) to remove (directories with their contents). A missing path is fine.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Reports what would be created, updated and removed without touching the tree.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: One diff per changed path; text files show their old and new content (up to 256 KiB each).
extends_documentation_fragment: []
notes:
  - Owners are not managed (the build runs as root and the image packer sets owner C(0)).
seealso:
  - module: ansible.builtin.file
  - module: ansible.builtin.template
  - module: kubesolo.os.cpio_pack
"""

EXAMPLES = r"""
- name: Write the init layer in one call
  kubesolo.os.file_tree:
    root: /srv/build/layers/init
    directories:
      - path: /etc/sysctl.d
    symlinks:
      - path: /bin/sh
        target: busybox
    files:
      - path: /sbin/init
        template: sbin/init.j2
        mode: "0755"
      - path: /etc/hostname
        content: "kubesolo\n"
      - path: /usr/lib/kubesolo-os/cloud-init.awk
        src: /srv/src/cloud-init.awk
    exclusive:
      - /usr/lib/kubesolo-os/init.d
    absent:
      - /etc/inittab
"""

RETURN = r"""
created:
  description: Paths (relative to O(root), with a leading C(/)) that did not exist and were (or would be) created.
  returned: always
  type: list
  elements: str
  sample: ["/etc/sysctl.d", "/sbin/init"]
updated:
  description: Existing paths whose content, target or mode was (or would be) changed.
  returned: always
  type: list
  elements: str
  sample: ["/usr/lib/kubesolo-os/init.d/80-containerd.sh"]
removed:
  description: Paths that were (or would be) removed, through O(exclusive) or O(absent).
  returned: always
  type: list
  elements: str
  sample: ["/usr/lib/kubesolo-os/init.d/99-old.sh"]
entries:
  description: Number of declared directories, links and files.
  returned: always
  type: int
  sample: 42
"""

import filecmp
import os
import shutil
import stat
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubesolo.os.plugins.module_utils.buildutil import parse_mode, write_atomic

DIFF_LIMIT = 256 * 1024

ARGUMENT_SPEC: dict[str, Any] = dict(
    root=dict(type="path", required=True),
    directories=dict(type="list", elements="dict", default=[], options=dict(
        path=dict(type="str", required=True),
        mode=dict(type="raw", default="0755"),
    )),
    symlinks=dict(type="list", elements="dict", default=[], options=dict(
        path=dict(type="str", required=True),
        target=dict(type="str", required=True),
    )),
    files=dict(type="list", elements="dict", default=[], options=dict(
        path=dict(type="str", required=True),
        mode=dict(type="raw", default="0644"),
        content=dict(type="str"),
        src=dict(type="path"),
        template=dict(type="str"),
        vars=dict(type="dict"),
    )),
    exclusive=dict(type="list", elements="str", default=[]),
    absent=dict(type="list", elements="str", default=[]),
)


class TreeError(Exception):
    """A declaration that cannot be carried out; the message names the path and the problem."""


def relpath(path: str) -> str:
    """Normalise a declared path to '/a/b' (relative to the root) and refuse '..' and empty paths."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise TreeError(f"path {path!r} contains '..': every path must stay below root")
    return "/" + "/".join(parts)


def read_text(path: str) -> str | None:
    try:
        if os.path.getsize(path) > DIFF_LIMIT:
            return None
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


class Tree:
    def __init__(self, root: str, check_mode: bool, want_diff: bool) -> None:
        self.root = root.rstrip("/") or "/"
        self.check_mode = check_mode
        self.want_diff = want_diff
        self.created: list[str] = []
        self.updated: list[str] = []
        self.removed: list[str] = []
        self.diff: list[dict[str, str]] = []
        self.planned: set[str] = set()  # directories created (or, in check mode, to be created)

    def real(self, rel: str) -> str:
        return self.root + rel if self.root != "/" else rel

    def note(self, kind: str, rel: str, before: str = "", after: str = "") -> None:
        {"created": self.created, "updated": self.updated, "removed": self.removed}[kind].append(rel)
        if self.want_diff:
            self.diff.append({"before_header": self.real(rel), "after_header": self.real(rel),
                              "before": before, "after": after})

    def lstat(self, rel: str) -> os.stat_result | None:
        try:
            return os.lstat(self.real(rel))
        except FileNotFoundError:
            return None

    def directory(self, rel: str, mode: int) -> None:
        if rel in self.planned:
            return
        st = self.lstat(rel)
        if st is None:
            self.parent(rel)
            self.planned.add(rel)
            self.note("created", rel, "absent\n", f"directory {mode:04o}\n")
            if not self.check_mode:
                os.mkdir(self.real(rel))
                os.chmod(self.real(rel), mode)
            return
        if not stat.S_ISDIR(st.st_mode):
            raise TreeError(f"{self.real(rel)} exists and is not a directory (it must be one)")
        if stat.S_IMODE(st.st_mode) != mode:
            self.note("updated", rel, f"directory {stat.S_IMODE(st.st_mode):04o}\n", f"directory {mode:04o}\n")
            if not self.check_mode:
                os.chmod(self.real(rel), mode)

    def parent(self, rel: str) -> None:
        parent = os.path.dirname(rel)
        if parent != "/" and parent not in self.planned and self.lstat(parent) is None:
            self.directory(parent, 0o755)

    def symlink(self, rel: str, target: str) -> None:
        self.parent(rel)
        st = self.lstat(rel)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise TreeError(f"{self.real(rel)} is a directory; refusing to replace it with a link to {target}")
        if st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(self.real(rel)) == target:
            return
        before = f"-> {os.readlink(self.real(rel))}\n" if st is not None and stat.S_ISLNK(st.st_mode) else (
            "absent\n" if st is None else "regular file\n")
        self.note("created" if st is None else "updated", rel, before, f"-> {target}\n")
        if not self.check_mode:
            if st is not None:
                os.unlink(self.real(rel))
            os.symlink(target, self.real(rel))

    def file(self, rel: str, mode: int, content: bytes | None, src: str | None) -> None:
        self.parent(rel)
        path = self.real(rel)
        st = self.lstat(rel)
        if src is not None and not os.path.isfile(src):
            raise TreeError(f"source {src} of {path} does not exist or is not a regular file")
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise TreeError(f"{path} is a directory; refusing to replace it with a file")
        same = False
        if st is not None and stat.S_ISREG(st.st_mode):
            if content is not None:
                same = st.st_size == len(content) and self._bytes(path) == content
            elif src is not None:
                same = st.st_size == os.path.getsize(src) and filecmp.cmp(src, path, shallow=False)
        if same:
            if stat.S_IMODE(st.st_mode) != mode:
                self.note("updated", rel, f"mode {stat.S_IMODE(st.st_mode):04o}\n", f"mode {mode:04o}\n")
                if not self.check_mode:
                    os.chmod(path, mode)
            return
        before = "absent\n" if st is None else (read_text(path) or "(binary or large file)\n")
        if content is not None:
            after = content.decode("utf-8") if len(content) <= DIFF_LIMIT else "(large file)\n"
        else:
            after = f"(copy of {src})\n"
        self.note("created" if st is None else "updated", rel, before, after)
        if self.check_mode:
            return
        write_atomic(path, content, mode, src=src, prefix=".file_tree.")

    @staticmethod
    def _bytes(path: str) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

    def remove(self, rel: str) -> None:
        st = self.lstat(rel)
        if st is None:
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        self.note("removed", rel, "directory\n" if is_dir else (read_text(self.real(rel)) or "(file)\n"), "absent\n")
        if self.check_mode:
            return
        if is_dir:
            shutil.rmtree(self.real(rel))
        else:
            os.unlink(self.real(rel))


def apply(params: dict[str, Any], check_mode: bool, want_diff: bool) -> dict[str, Any]:
    """Carry out the declaration; returns the module result (without 'changed')."""
    tree = Tree(params["root"], check_mode, want_diff)
    declared: set[str] = set()

    def declare(rel: str, what: str) -> str:
        if rel == "/":
            raise TreeError(f"{what}: the root itself cannot be declared")
        if rel in declared:
            raise TreeError(f"{what}: {rel} is declared twice")
        declared.add(rel)
        return rel

    directories = [(declare(relpath(d["path"]), "directories"),
                    parse_mode(d["mode"], f"directory {d['path']}", TreeError))
                   for d in params["directories"]]
    symlinks = [(declare(relpath(s["path"]), "symlinks"), s["target"]) for s in params["symlinks"]]
    files: list[tuple[str, int, bytes | None, str | None]] = []
    for f in params["files"]:
        given = [k for k in ("content", "src", "template") if f.get(k) is not None]
        if given == ["template"]:
            raise TreeError(f"file {f['path']}: 'template' is rendered by the action plugin; "
                            "call the module through kubesolo.os.file_tree (not ansible.legacy)")
        if len(given) != 1:
            raise TreeError(f"file {f['path']}: give exactly one of content, src and template (got {given or 'none'})")
        content = f["content"].encode("utf-8") if f.get("content") is not None else None
        files.append((declare(relpath(f["path"]), "files"), parse_mode(f["mode"], f"file {f['path']}", TreeError),
                      content, f.get("src")))
    exclusive = [relpath(p) for p in params["exclusive"]]
    absent = [relpath(p) for p in params["absent"]]
    for rel in absent:
        if rel in declared:
            raise TreeError(f"absent: {rel} is also declared as a directory, link or file")

    if tree.lstat("/") is None and tree.root != "/":
        tree.created.append("/")
        if not check_mode:
            os.makedirs(tree.root, mode=0o755)
    for rel, mode in sorted(directories):
        tree.directory(rel, mode)
    for rel, target in symlinks:
        tree.symlink(rel, target)
    for rel, mode, content, src in files:
        tree.file(rel, mode, content, src)
    for directory in exclusive:
        real = tree.real(directory)
        if not os.path.isdir(real):
            continue
        for name in sorted(os.listdir(real)):
            rel = (directory.rstrip("/") + "/" + name)
            if rel not in declared:
                tree.remove(rel)
    for rel in absent:
        tree.remove(rel)
    result: dict[str, Any] = {"created": tree.created, "updated": tree.updated, "removed": tree.removed,
                              "entries": len(declared)}
    if want_diff:
        result["diff"] = tree.diff
    return result


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = apply(module.params, module.check_mode, module._diff)
    except TreeError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"{exc.filename or module.params['root']}: {exc.strerror}")
    changed = bool(result["created"] or result["updated"] or result["removed"])
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
