#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# Ansible module boilerplate (sanity tests want it; imports follow the documentation strings):

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: elf_closure
short_description: Copy programs into an image tree together with their shared-library closure
version_added: "0.1.0"
description:
  - Copies programs (and plain data files) from extracted Debian package roots into an image tree
    such as an initramfs layer, together with every shared library they need.
  - The C(DT_NEEDED) entries and the program interpreter (C(PT_INTERP)) are read by parsing the ELF
    headers in Python, never by running C(ldd) (which would run host libraries). Libraries are
    resolved recursively, in the order of O(lib_dirs), across all O(roots) as if they were one merged
    tree (the first root holding a path wins).
  - Symbolic links met while resolving a library or a listed file (for example the soname link
    C(libfoo.so.1 -> libfoo.so.1.2.3) or C(/lib64/ld-linux-x86-64.so.2)) are recreated in the image
    and the real file is copied to the path the link resolves to.
  - Non-ELF files (scripts, configuration, data) are copied as plain files. ELF files that are loaded
    with C(dlopen()) (plugins such as C(xtables/*.so)) must be listed in O(files); their closure is
    then resolved too.
  - Directories it creates in the image tree are C(0755) whatever the umask of the build host.
  - Remembers what it installed in O(state_file); paths installed by an earlier run that are no longer
    needed are removed. Paths it never installed are never removed.
author:
  - KubeSolo OS developers (!UNKNOWN)
options:
  roots:
    description:
      - Extracted package directories to search, in order.
      - Every root must exist.
    type: list
    elements: path
    required: true
  files:
    description:
      - Files to install.
    type: list
    elements: dict
    required: true
    suboptions:
      src:
        description:
          - Path of the file relative to a root, for example C(usr/sbin/xtables-nft-multi).
          - May be a glob pattern (C(*), C(?), C([...]), C(**)); every match in any root is installed at
            its own path, directories among the matches are skipped, and O(files[].dest) and
            O(files[].links) must then be left unset.
          - If the file is a symbolic link and O(files[].dest) is the same path, the link is kept and its
            target installed too; with a different O(files[].dest) the content is copied there.
        type: str
        required: true
      dest:
        description:
          - Path of the file in the image, relative to O(dest) (a leading C(/) is allowed).
          - Defaults to O(files[].src).
        type: str
      links:
        description:
          - Extra names in the image that become symbolic links (relative) to O(files[].dest),
            for example C(usr/sbin/iptables).
        type: list
        elements: str
        default: []
  dest:
    description:
      - Root of the image tree. Created when missing.
    type: path
    required: true
  lib_dirs:
    description:
      - Directories, relative to the roots, searched for C(DT_NEEDED) libraries, in order.
      - C(DT_RPATH)/C(DT_RUNPATH) entries of the program (C($ORIGIN) is expanded) are searched first.
    type: list
    elements: str
    default:
      - lib/x86_64-linux-gnu
      - usr/lib/x86_64-linux-gnu
      - lib64
      - lib
      - usr/lib
  state_file:
    description:
      - JSON file recording the paths this module installed on its last run, so that paths no longer
        needed are removed on the next run.
      - Defaults to C(.elf_closure.json) inside O(dest). Put it outside O(dest) when O(dest) is packed
        into an image as it is (an initramfs layer), so the record does not end up in the image.
    type: path
attributes:
  check_mode:
    support: full
    description: Reports what would be copied and removed without touching O(dest).
  diff_mode:
    support: full
    description: Lists the paths added to and removed from O(dest).
notes:
  - Owners are not changed (files belong to the user running the module); modes and modification
    times of the source files are kept.
  - Only files are compared (size, mode and content); a path listed twice with different content fails.
  - A library whose ELF class or machine differs from the program needing it is skipped, as the dynamic
    loader does.
seealso:
  - module: kubesolo.os.deb_packages
"""

EXAMPLES = r"""
- name: Install iptables (nft and legacy backends) with its libraries and plugins
  kubesolo.os.elf_closure:
    roots: "{{ fetched.packages | map(attribute='root') | list }}"
    dest: "{{ kubesolo_os_layers_dir }}/userland"
    state_file: "{{ kubesolo_os_build_dir }}/state/userland.elf_closure.json"
    files:
      - src: usr/sbin/xtables-nft-multi
        links:
          - usr/sbin/iptables
          - usr/sbin/iptables-save
          - usr/sbin/iptables-restore
      - src: usr/sbin/xtables-legacy-multi
        links:
          - usr/sbin/iptables-legacy
      - src: usr/lib/x86_64-linux-gnu/xtables/*.so
      - src: etc/ethertypes

- name: Copy a program under another name
  kubesolo.os.elf_closure:
    roots:
      - /build/cache/pkgroot/busybox-static_1.35.0-4+deb12u1+b1
    dest: /build/layers/userland
    files:
      - src: bin/busybox
        dest: /bin/busybox
        links: [bin/sh]
"""

RETURN = r"""
files:
  description: Image paths of the listed files and their links (absolute inside the image), sorted.
  returned: always
  type: list
  elements: str
  sample: ["/usr/sbin/iptables", "/usr/sbin/xtables-nft-multi"]
libraries:
  description: Image paths of the libraries, interpreter and soname links installed for them, sorted.
  returned: always
  type: list
  elements: str
  sample: ["/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
size:
  description: Total size in bytes of the regular files installed (files and libraries).
  returned: always
  type: int
  sample: 4194304
added:
  description: Image paths that were (or in check mode would be) created.
  returned: always
  type: list
  elements: str
updated:
  description: Image paths whose content, mode or link target was (or would be) replaced.
  returned: always
  type: list
  elements: str
removed:
  description: Image paths installed by the previous run that were (or would be) removed.
  returned: always
  type: list
  elements: str
roots_used:
  description: The roots at least one installed path was taken from, in the order of O(roots).
  returned: always
  type: list
  elements: str
needed:
  description: For each listed ELF file (image path), the image paths of the libraries it needs (transitively).
  returned: always
  type: dict
  sample: {"/usr/sbin/xtables-nft-multi": ["/lib/x86_64-linux-gnu/libc.so.6"]}
state_file:
  description: The state file used.
  returned: always
  type: str
"""

import contextlib
import filecmp
import glob
import os
import posixpath
import stat
import struct
import tempfile
from collections import deque
from typing import Any, NamedTuple

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubesolo.os.plugins.module_utils.buildutil import (
    makedirs,
    read_state,
    write_atomic,
    write_state,
)

DEFAULT_LIB_DIRS = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib"]
MAX_SYMLINK_HOPS = 40
STATE_VERSION = 1

PT_LOAD = 1
PT_DYNAMIC = 2
PT_INTERP = 3
DT_NULL = 0
DT_NEEDED = 1
DT_STRTAB = 5
DT_STRSZ = 10
DT_RPATH = 15
DT_RUNPATH = 29


class ElfError(Exception):
    """The file starts like an ELF file but cannot be parsed."""


class ClosureError(Exception):
    """The closure cannot be built (missing file or library, conflicting entries)."""


class ElfInfo(NamedTuple):
    elf_class: int
    machine: int
    interp: str | None
    needed: list[str]
    rpath: list[str]
    runpath: list[str]


class Entry(NamedTuple):
    kind: str  # "file" or "link"
    source: str  # absolute source path of a file; link target text of a link
    mode: int
    size: int
    root: str | None
    group: str  # "files" or "libraries"


def read_elf(path: str) -> ElfInfo | None:
    """Parse the ELF headers of path; None if it is not an ELF file."""
    with open(path, "rb") as handle:
        ident = handle.read(64)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            return None
        elf_class, data = ident[4], ident[5]
        if elf_class not in (1, 2) or data not in (1, 2):
            raise ElfError("unknown ELF class or byte order")
        end = "<" if data == 1 else ">"
        try:
            if elf_class == 2:
                (machine,) = struct.unpack_from(end + "H", ident, 18)
                (phoff,) = struct.unpack_from(end + "Q", ident, 32)
                phentsize, phnum = struct.unpack_from(end + "HH", ident, 54)
                ph_fmt, dyn_fmt = end + "IIQQQQQQ", end + "qQ"
            else:
                (machine,) = struct.unpack_from(end + "H", ident, 18)
                (phoff,) = struct.unpack_from(end + "I", ident, 28)
                phentsize, phnum = struct.unpack_from(end + "HH", ident, 42)
                ph_fmt, dyn_fmt = end + "IIIIIIII", end + "iI"
        except struct.error as exc:
            raise ElfError("truncated ELF header") from exc

        loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
        interp: str | None = None
        dynamic: tuple[int, int] | None = None
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
        if len(table) < phentsize * phnum or (phnum and phentsize < struct.calcsize(ph_fmt)):
            raise ElfError("truncated program header table")
        for index in range(phnum):
            fields = struct.unpack_from(ph_fmt, table, index * phentsize)
            if elf_class == 2:
                p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = fields[:6]
            else:
                p_type, p_offset, p_vaddr, _paddr, p_filesz = fields[:5]
            if p_type == PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
            elif p_type == PT_INTERP:
                handle.seek(p_offset)
                interp = handle.read(p_filesz).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")

        needed: list[str] = []
        rpath: list[str] = []
        runpath: list[str] = []
        if dynamic is not None:
            handle.seek(dynamic[0])
            blob = handle.read(dynamic[1])
            entry_size = struct.calcsize(dyn_fmt)
            tags: list[tuple[int, int]] = []
            strtab = strsz = None
            for offset in range(0, len(blob) - entry_size + 1, entry_size):
                tag, value = struct.unpack_from(dyn_fmt, blob, offset)
                if tag == DT_NULL:
                    break
                if tag == DT_STRTAB:
                    strtab = value
                elif tag == DT_STRSZ:
                    strsz = value
                elif tag in (DT_NEEDED, DT_RPATH, DT_RUNPATH):
                    tags.append((tag, value))
            if tags:
                if strtab is None:
                    raise ElfError("dynamic section without a string table")
                str_offset = _vaddr_to_offset(loads, strtab)
                handle.seek(str_offset)
                strings = handle.read(strsz if strsz else 1 << 20)
                for tag, value in tags:
                    text = strings[value:].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    if tag == DT_NEEDED:
                        needed.append(text)
                    elif tag == DT_RPATH:
                        rpath.extend(part for part in text.split(":") if part)
                    else:
                        runpath.extend(part for part in text.split(":") if part)
    return ElfInfo(elf_class, machine, interp, needed, rpath, runpath)


def _vaddr_to_offset(loads: list[tuple[int, int, int]], vaddr: int) -> int:
    for seg_vaddr, seg_offset, seg_filesz in loads:
        if seg_vaddr <= vaddr < seg_vaddr + seg_filesz:
            return vaddr - seg_vaddr + seg_offset
    if not loads:
        return vaddr  # some tools leave file offsets in objects without PT_LOAD
    raise ElfError(f"string table address 0x{vaddr:x} is in no loadable segment")


def clean_rel(path: str) -> str:
    """Normalise an image or root path to a relative POSIX path; reject escapes."""
    rel = posixpath.normpath("/" + path).lstrip("/")
    if not rel or rel == ".":
        raise ClosureError(f"empty path {path!r}")
    return rel


class Union:
    """The roots seen as one merged tree (the first root holding a path wins)."""

    def __init__(self, roots: list[str]) -> None:
        self.roots = roots

    def _first(self, rel: str) -> str | None:
        for root in self.roots:
            if os.path.lexists(os.path.join(root, rel)):
                return root
        return None

    def resolve(self, rel: str) -> tuple[list[tuple[str, str, str]], str, str] | None:
        """Follow symlinks inside the union.

        Returns (links met as (path, target, root), root of the real file, real path) or None if missing.
        """
        parts = deque(part for part in rel.split("/") if part)
        done: list[str] = []
        links: list[tuple[str, str, str]] = []
        hops = 0
        while parts:
            part = parts.popleft()
            if part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/".join([*done, part])
            root = self._first(candidate)
            if root is None:
                return None
            full = os.path.join(root, candidate)
            if os.path.islink(full):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ClosureError(f"too many levels of symbolic links resolving {rel}")
                target = os.readlink(full)
                links.append((candidate, target, root))
                if target.startswith("/"):
                    done = []
                parts.extendleft(reversed([part for part in target.split("/") if part]))
            else:
                done.append(part)
        if not done:
            return None
        real = "/".join(done)
        root = self._first(real)
        if root is None:
            return None
        return links, root, real

    def glob(self, pattern: str) -> list[str]:
        found: dict[str, None] = {}
        for root in self.roots:
            for match in sorted(glob.glob(os.path.join(glob.escape(root), pattern), recursive=True)):
                rel = os.path.relpath(match, root)
                if os.path.isdir(match) and not os.path.islink(match):
                    continue
                found.setdefault(rel.replace(os.sep, "/"), None)
        return sorted(found)


class Closure:
    def __init__(self, roots: list[str], lib_dirs: list[str]) -> None:
        self.union = Union(roots)
        self.lib_dirs = [clean_rel(item) for item in lib_dirs]
        self.entries: dict[str, Entry] = {}
        self.needed: dict[str, list[str]] = {}
        self._elf_cache: dict[str, ElfInfo | None] = {}

    def elf(self, path: str) -> ElfInfo | None:
        if path not in self._elf_cache:
            try:
                self._elf_cache[path] = read_elf(path)
            except (ElfError, OSError) as exc:
                raise ClosureError(f"cannot read ELF headers of {path}: {exc}") from exc
        return self._elf_cache[path]

    def add(self, rel: str, entry: Entry) -> None:
        old = self.entries.get(rel)
        if old is not None:
            if old.kind != entry.kind or old.source != entry.source:
                raise ClosureError(
                    f"/{rel} is wanted twice with different content: "
                    f"{old.kind} {old.source} and {entry.kind} {entry.source}"
                )
            if old.group == "files" or entry.group == "libraries":
                return
        self.entries[rel] = entry

    def add_links(self, links: list[tuple[str, str, str]], group: str) -> None:
        for path, target, root in links:
            self.add(path, Entry("link", target, 0o777, 0, root, group))

    def add_real(self, rel: str, root: str, real: str, group: str) -> str:
        source = os.path.join(root, real)
        info = os.stat(source)
        if not stat.S_ISREG(info.st_mode):
            raise ClosureError(f"{source} is not a regular file")
        self.add(rel, Entry("file", source, stat.S_IMODE(info.st_mode), info.st_size, root, group))
        return source

    def add_file(self, src: str, dest: str | None, links: list[str]) -> None:
        if glob.has_magic(src):
            if dest is not None or links:
                raise ClosureError(f"files entry {src}: a glob pattern takes neither dest nor links")
            matches = self.union.glob(src)
            if not matches:
                raise ClosureError(f"files entry {src} matches nothing in any root")
            for match in matches:
                self.add_file(match, None, [])
            return
        src_rel = clean_rel(src)
        dest_rel = clean_rel(dest) if dest else src_rel
        resolved = self.union.resolve(src_rel)
        if resolved is None:
            raise ClosureError(f"{src_rel} is in none of the roots: {', '.join(self.union.roots)}")
        chain, root, real = resolved
        if dest_rel == src_rel:
            self.add_links(chain, "files")
            source = self.add_real(real, root, real, "files")
        else:
            source = self.add_real(dest_rel, root, real, "files")
        for link in links:
            link_rel = clean_rel(link)
            if link_rel == dest_rel:
                continue
            target = posixpath.relpath(dest_rel, posixpath.dirname(link_rel) or ".")
            self.add(link_rel, Entry("link", target, 0o777, 0, None, "files"))
        if self.elf(source) is not None:
            self.needed["/" + dest_rel] = self._close(src_rel, source, posixpath.dirname(real))

    def _close(self, program: str, source: str, origin: str) -> list[str]:
        """Add the interpreter and the libraries source needs (recursively); return their image paths."""
        seen: set[str] = {source}
        found: list[str] = []
        queue: deque[tuple[str, str, str]] = deque([(source, origin, program)])
        while queue:
            path, origin_dir, requester = queue.popleft()
            info = self.elf(path)
            if info is None:
                continue
            wanted: list[tuple[str, list[str]]] = []
            if info.interp:
                wanted.append((info.interp, []))
            search = [*([] if info.runpath else info.rpath), *info.runpath]
            dirs = [self._expand(item, origin_dir) for item in search] + self.lib_dirs
            wanted.extend((name, dirs) for name in info.needed)
            for name, dirs_for in wanted:
                hit = self._find_library(name, dirs_for, info)
                if hit is None:
                    what = "interpreter" if name == info.interp else "library"
                    searched = ", ".join(dirs_for or [name.lstrip("/")])
                    via = "" if requester == program else f" (needed by {requester})"
                    raise ClosureError(
                        f"{program} needs the {what} {name}{via}, which is in none of the roots (searched {searched})"
                    )
                chain, root, real = hit
                self.add_links(chain, "libraries")
                lib_source = self.add_real(real, root, real, "libraries")
                found.extend("/" + link[0] for link in chain)
                found.append("/" + real)
                if lib_source not in seen:
                    seen.add(lib_source)
                    queue.append((lib_source, posixpath.dirname(real), real))
        return sorted(set(found))

    @staticmethod
    def _expand(item: str, origin_dir: str) -> str:
        for token in ("${ORIGIN}", "$ORIGIN"):
            item = item.replace(token, "/" + origin_dir)
        return clean_rel(item)

    def _find_library(
        self, name: str, dirs: list[str], requester: ElfInfo
    ) -> tuple[list[tuple[str, str, str]], str, str] | None:
        candidates = [clean_rel(name)] if "/" in name else [posixpath.join(item, name) for item in dirs]
        for candidate in candidates:
            hit = self.union.resolve(candidate)
            if hit is None:
                continue
            info = self.elf(os.path.join(hit[1], hit[2]))
            if info is None or info.elf_class != requester.elf_class or info.machine != requester.machine:
                continue
            return hit
        return None


def entry_is_current(path: str, entry: Entry) -> bool:
    if entry.kind == "link":
        return os.path.islink(path) and os.readlink(path) == entry.source
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    info = os.stat(path)
    if info.st_size != entry.size or stat.S_IMODE(info.st_mode) != entry.mode:
        return False
    return filecmp.cmp(path, entry.source, shallow=False)


def install(path: str, entry: Entry) -> None:
    parent = os.path.dirname(path)
    makedirs(parent)
    if os.path.isdir(path) and not os.path.islink(path):
        raise ClosureError(f"{path} is a directory in the image; cannot replace it with a {entry.kind}")
    if entry.kind != "link":
        write_atomic(path, src=entry.source, mode=entry.mode, mtime_of=entry.source, prefix=".elf_closure.")
        return
    fd, tmp = tempfile.mkstemp(prefix=".elf_closure.", dir=parent)
    os.close(fd)
    try:
        os.unlink(tmp)
        os.symlink(entry.source, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def load_state(path: str) -> list[str]:
    """The paths an earlier run installed (its state file); none when there is no readable one."""
    try:
        return [clean_rel(item) for item in (read_state(path) or {}).get("paths", [])]
    except (AttributeError, TypeError, ClosureError):
        return []


def parents(rels: list[str]) -> set[str]:
    result: set[str] = set()
    for rel in rels:
        parent = posixpath.dirname(rel)
        while parent:
            result.add(parent)
            parent = posixpath.dirname(parent)
    return result


def run(module: AnsibleModule) -> dict[str, Any]:
    params = module.params
    roots = [os.path.abspath(root) for root in params["roots"]]
    for root in roots:
        if not os.path.isdir(root):
            raise ClosureError(f"root {root} does not exist or is not a directory")
    dest = os.path.abspath(params["dest"])
    state_file = params["state_file"] or os.path.join(dest, ".elf_closure.json")

    closure = Closure(roots, params["lib_dirs"])
    for spec in params["files"]:
        closure.add_file(spec["src"], spec.get("dest"), spec.get("links") or [])
    state_rel = os.path.relpath(state_file, dest).replace(os.sep, "/")
    if state_rel in closure.entries:
        raise ClosureError(f"state_file {state_file} collides with an installed path")

    wanted = closure.entries
    old = load_state(state_file)
    added: list[str] = []
    updated: list[str] = []
    for rel in sorted(wanted):
        path = os.path.join(dest, rel)
        if not os.path.lexists(path):
            added.append(rel)
        elif not entry_is_current(path, wanted[rel]):
            updated.append(rel)
    removed = []
    for rel in sorted(set(old) - set(wanted)):
        path = os.path.join(dest, rel)
        if os.path.islink(path) or os.path.isfile(path):
            removed.append(rel)

    new_state = {"version": STATE_VERSION, "paths": sorted(wanted)}
    if not module.check_mode:
        for rel in removed:
            os.unlink(os.path.join(dest, rel))
        keep = parents(sorted(wanted))
        for parent in sorted(parents(removed) - keep, key=lambda item: -item.count("/")):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(dest, parent))
        for rel in [*added, *updated]:
            install(os.path.join(dest, rel), wanted[rel])
        write_state(state_file, new_state, indent=1, mkdir=True)

    def image(rels: list[str]) -> list[str]:
        return ["/" + rel for rel in rels]

    used = {entry.root for entry in wanted.values() if entry.root}
    result: dict[str, Any] = {
        "changed": bool(added or updated or removed),
        "files": image(sorted(rel for rel, entry in wanted.items() if entry.group == "files")),
        "libraries": image(sorted(rel for rel, entry in wanted.items() if entry.group == "libraries")),
        "size": sum(entry.size for entry in wanted.values() if entry.kind == "file"),
        "added": image(added),
        "updated": image(updated),
        "removed": image(removed),
        "roots_used": [root for root in roots if root in used],
        "needed": closure.needed,
        "state_file": state_file,
    }
    if module._diff:
        before = sorted(set(removed) | (set(wanted) - set(added)))
        after = sorted(wanted)
        result["diff"] = {
            "before_header": dest + " (installed paths)",
            "after_header": dest + " (installed paths)",
            "before": "".join(f"/{rel}\n" for rel in before),
            "after": "".join(f"/{rel}\n" for rel in after),
        }
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "roots": {"type": "list", "elements": "path", "required": True},
            "files": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "src": {"type": "str", "required": True},
                    "dest": {"type": "str"},
                    "links": {"type": "list", "elements": "str", "default": []},
                },
            },
            "dest": {"type": "path", "required": True},
            "lib_dirs": {"type": "list", "elements": "str", "default": DEFAULT_LIB_DIRS},
            "state_file": {"type": "path"},
        },
        supports_check_mode=True,
    )
    try:
        result = run(module)
    except ClosureError as exc:
        module.fail_json(msg=f"elf_closure: {exc}")
    except OSError as exc:
        module.fail_json(msg=f"elf_closure: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
