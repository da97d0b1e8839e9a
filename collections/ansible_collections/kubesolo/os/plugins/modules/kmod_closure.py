#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# Ansible module boilerplate (header, docs before imports) that ruff would otherwise flag:

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kmod_closure
short_description: Copy a kernel module set, closed over its dependencies, into an image tree
version_added: "0.1.0"
description:
  - Resolves kernel module names (or aliases such as C(crypto-crc32c)) against an extracted kernel package,
    closes the set over C(modules.dep) B(and) C(modules.softdep) (C(pre:) and C(post:) soft dependencies,
    which C(modprobe) loads too; for example C(libcrc32c) needs C(crc32c) first), and copies the module
    files to the same relative paths under O(dest)C(/lib/modules/<release>/).
  - A name listed in C(modules.builtin) (or a built-in module's alias) is reported in RV(builtin) instead of
    failing. A name that is neither a module, an alias nor built in fails the task, naming it, unless it is
    listed in O(optional).
  - The module owns every file below the sub-directories of O(dest)C(/lib/modules/<release>/) (normally
    just C(kernel/)); files there that are not part of the set are removed, and so are directories left empty.
  - The kernel's C(modules.builtin) and C(modules.builtin.modinfo) are copied next to them and
    C(modules.order) is copied reduced to the set, so that C(depmod) and C(modprobe) in the image know the
    built-in modules. Then C(depmod -b dest <release>) regenerates the index when anything changed.
  - Debian kernel packages do not ship C(modules.dep) (their postinst generates it). When the source has no
    C(modules.dep), the module generates the index in a scratch directory (the source is not modified).
  - C(depmod) always runs with an empty configuration directory and under umask C(022), so neither the build host's
    C(/etc/depmod.d) nor its umask can change the result (the index files are C(0644)).
  - A record next to O(dest) (C(.<name>-kmod_closure.json)) keeps the result of the last run with a digest of its
    inputs (the options, the identity (device, inode, size, modification and change time in nanoseconds) of every
    file below the source C(lib/modules/<release>/) and below O(dest)C(/lib/modules/), and that of C(depmod)). While
    that digest is unchanged the module returns the recorded result without reading, decompressing or indexing
    anything (a no-op build costs a directory walk); any change to the source kernel, the options, the module
    files or index in O(dest) (a rewrite changes a file's change time) makes it do the full work again.
  - With O(compression=xz) or O(compression=zstd) the module files are stored compressed (C(.ko.xz), C(.ko.zst)) and
    C(depmod) indexes them under those names. C(modprobe) of kmod built with that compression decompresses them in
    userspace, so the kernel needs no C(CONFIG_MODULE_DECOMPRESS); busybox's C(modprobe) cannot load them.
author:
  - KubeSolo OS developers (!UNKNOWN)
options:
  root:
    description:
      - Root of an extracted kernel package; it contains C(lib/modules/<release>/) (or C(usr/lib/modules/<release>/)).
    type: path
    required: true
  release:
    description:
      - Kernel release (the C(uname -r) string, for example C(6.1.0-56-amd64)).
      - May be omitted when exactly one release exists under O(root).
    type: str
  modules:
    description:
      - Module names or aliases to include. C(-) and C(_) are equivalent, as for C(modprobe).
    type: list
    elements: str
    default: []
  optional:
    description:
      - Names that may be missing from this kernel without failing the task.
      - They are requested too (they need not be repeated in O(modules)); any that exist are included.
    type: list
    elements: str
    default: []
  dest:
    description:
      - Root of the image tree; modules go to C(<dest>/lib/modules/<release>/).
    type: path
    required: true
  remove_other_releases:
    description:
      - Remove everything in O(dest)C(/lib/modules/) other than the tree of this release (module trees of kernels
        built before), so that the image holds one kernel's modules.
    type: bool
    default: false
  depmod:
    description:
      - Run C(depmod -b <dest> <release>) when the set changed (or its index is missing).
    type: bool
    default: true
  compression:
    description:
      - How module files are stored in O(dest). V(none) copies them as the source has them uncompressed.
      - V(xz) writes C(.ko.xz) (CRC32 check, 1 MiB dictionary, as the kernel's own C(modules_install) does);
        V(zstd) writes C(.ko.zst) (C(zstd -19), single-threaded). Both are deterministic, so rebuilds are
        byte-identical.
      - Source modules that are already compressed (C(.ko.xz), C(.ko.zst), C(.ko.gz)) are decompressed first.
      - A file in O(dest) counts as up to date when its uncompressed content equals the source's.
    type: str
    choices: [none, xz, zstd]
    default: none
notes:
  - Modules are written with mode C(0644), keeping the source's modification time; directories get mode C(0755).
  - Soft dependencies that this kernel cannot satisfy are skipped, as C(modprobe) does, and reported in
    RV(softdeps_unresolved).
requirements:
  - C(depmod) from kmod on the build host (unless O(depmod=false) and the source ships C(modules.dep)); with
    O(compression) it must support that compression (C(depmod --version) lists C(+XZ) / C(+ZSTD)).
  - The C(zstd) program for O(compression=zstd) (or for zstd-compressed source modules).
attributes:
  check_mode:
    support: full
    description: Computes the set and the changes without writing anything.
  diff_mode:
    support: full
    description: Lists the modules added and removed.
"""

EXAMPLES = r"""
- name: Copy the Kubernetes module set into the modules layer
  kubesolo.os.kmod_closure:
    root: build/cache/pkgroot/linux-image-6.1.0-56-amd64_6.1.192-2
    modules:
      - br_netfilter
      - overlay
      - nf_conntrack
      - crypto-crc32c
    optional:
      - ip_vs_sh
    dest: build/layers/modules
    compression: zstd
    remove_other_releases: true
  register: kmods

- name: Show what the set holds
  ansible.builtin.debug:
    msg: "{{ kmods.files }} modules, {{ kmods.size }} bytes for {{ kmods.release }}"
"""

RETURN = r"""
release:
  description: Kernel release the set was built for.
  returned: always
  type: str
  sample: 6.1.0-56-amd64
modules:
  description: Sorted names of every module in the closed set (module names, with C(_)).
  returned: always
  type: list
  elements: str
  sample: [bridge, br_netfilter, crc32c_generic, crc32c_intel, libcrc32c, llc, nf_conntrack, stp]
builtin:
  description: Requested names (as given) that are built into the kernel.
  returned: always
  type: list
  elements: str
  sample: [crc32]
missing:
  description: Names from O(optional) that this kernel does not have at all.
  returned: always
  type: list
  elements: str
  sample: [ip_vs_sh]
softdeps_unresolved:
  description: Soft dependencies of modules in the set that name nothing in this kernel (skipped).
  returned: always
  type: list
  elements: str
  sample: ["platform:idma64"]
files:
  description: Number of module files in the set.
  returned: always
  type: int
  sample: 18
size:
  description: Total size in bytes of the module files, uncompressed.
  returned: always
  type: int
  sample: 2530000
stored_size:
  description: Total size in bytes of the module files as stored in O(dest) (compressed, per O(compression)).
  returned: when not in check mode
  type: int
  sample: 610000
added:
  description: Relative paths (below C(lib/modules/<release>/)) of module files that were (or would be) added,
    with the suffix of O(compression).
  returned: always
  type: list
  elements: str
  sample: [kernel/net/bridge/bridge.ko.zst]
removed:
  description: Relative paths of files that were (or would be) removed from the managed tree.
  returned: always
  type: list
  elements: str
  sample: [kernel/drivers/net/dummy.ko]
updated:
  description: Relative paths of module files whose content was (or would be) replaced.
  returned: always
  type: list
  elements: str
  sample: []
removed_releases:
  description: Entries of O(dest)C(/lib/modules/) other than this release that were (or would be) removed
    (with O(remove_other_releases)).
  returned: always
  type: list
  elements: str
  sample: [6.1.0-55-amd64]
reused:
  description: Whether the result was taken from the record of the previous run because no input changed
    (nothing was read, compared or indexed).
  returned: always
  type: bool
  sample: true
depmod_changed:
  description: Whether C(depmod) ran and its output (or the copied built-in lists) differ from before.
  returned: always
  type: bool
  sample: true
"""

import fnmatch
import gzip
import hashlib
import json
import lzma
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubesolo.os.plugins.module_utils.buildutil import (
    makedirs,
    read_state,
    run_checked,
    sha256_file,
    write_atomic,
    write_state,
)

MODULE_DIRS = ("lib/modules", "usr/lib/modules")
COPIED_META = ("modules.builtin", "modules.builtin.modinfo")
DEPMOD_EXTRA_DIRS = ["/usr/sbin", "/sbin"]
# compression option -> file suffix after .ko; and the suffix of every compressed module kmod reads.
COMPRESSION_SUFFIX = {"none": "", "xz": ".xz", "zstd": ".zst"}
COMPRESSED_SUFFIXES = {".xz": "xz", ".zst": "zstd", ".gz": "gzip"}
# As the kernel's modules_install: CRC32 (what an in-kernel xz decoder checks) and a 1 MiB dictionary,
# which bounds the decoder's memory; larger ones gain nothing on files of at most a few MiB.
XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 20}]
# From a file, so the frame records the content size; one thread, so the output never depends on the host.
ZSTD_COMPRESS = ["-q", "--no-progress", "-19", "--single-thread", "-c", "--"]


def normalize(name: str) -> str:
    """Module name as kmod compares it: '-' and '_' are the same (outside [] ranges)."""
    out = []
    in_brackets = False
    for ch in name:
        if ch == "[":
            in_brackets = True
        elif ch == "]":
            in_brackets = False
        out.append("_" if ch == "-" and not in_brackets else ch)
    return "".join(out)


def name_of_path(relpath: str) -> str:
    """Module name of a module file path: basename without .ko(.xz|.zst|.gz), normalized."""
    base = os.path.basename(relpath)
    idx = base.find(".ko")
    if idx > 0:
        base = base[:idx]
    return normalize(base)


class KmodIndex:
    """What kmod knows about one kernel: module files, dependencies, soft dependencies, aliases, built-ins."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}  # module name -> path relative to the module directory
        self.deps: dict[str, list[str]] = {}  # module name -> module names (from modules.dep)
        self.softdeps: dict[str, list[str]] = {}  # module name -> names/aliases (pre: and post:)
        self.aliases: dict[str, set[str]] = {}  # normalized alias without wildcards -> module names
        # (literal prefix, normalized pattern with wildcards, module name)
        self.alias_patterns: list[tuple[str, str, str]] = []
        self.builtin: set[str] = set()
        self.builtin_aliases: dict[str, set[str]] = {}

    @classmethod
    def load(cls, moddir: str) -> KmodIndex:
        index = cls()
        with open(os.path.join(moddir, "modules.dep"), encoding="utf-8") as fh:
            for line in fh:
                if ":" not in line:
                    continue
                path, _colon, rest = line.partition(":")
                path = path.strip()
                name = name_of_path(path)
                index.paths[name] = path
                index.deps[name] = [name_of_path(dep) for dep in rest.split()]
        index._load_softdeps(os.path.join(moddir, "modules.softdep"))
        index._load_aliases(os.path.join(moddir, "modules.alias"))
        index._load_builtin(moddir)
        return index

    def _load_softdeps(self, path: str) -> None:
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                words = line.split()
                if len(words) < 3 or words[0] != "softdep":
                    continue
                # As libkmod does: only words after "pre:" or "post:" count.
                mode = None
                targets = self.softdeps.setdefault(normalize(words[1]), [])
                for word in words[2:]:
                    if word in ("pre:", "post:"):
                        mode = word
                    elif mode is not None and word not in targets:
                        targets.append(word)

    def _load_aliases(self, path: str) -> None:
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                words = line.split()
                if len(words) != 3 or words[0] != "alias":
                    continue
                pattern, modname = normalize(words[1]), normalize(words[2])
                wild = min((pattern.find(ch) for ch in "*?[" if ch in pattern), default=-1)
                if wild >= 0:
                    self.alias_patterns.append((pattern[:wild], pattern, modname))
                else:
                    self.aliases.setdefault(pattern, set()).add(modname)

    def _load_builtin(self, moddir: str) -> None:
        path = os.path.join(moddir, "modules.builtin")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                self.builtin.update(name_of_path(line.strip()) for line in fh if line.strip())
        path = os.path.join(moddir, "modules.builtin.modinfo")
        if os.path.exists(path):
            with open(path, "rb") as fh:
                entries = fh.read().split(b"\0")
            for raw in entries:
                entry = raw.decode("utf-8", "replace")
                modname, dot, rest = entry.partition(".")
                if not dot or "=" not in rest:
                    continue
                key, _eq, value = rest.partition("=")
                modname = normalize(modname)
                self.builtin.add(modname)
                if key == "alias":
                    self.builtin_aliases.setdefault(normalize(value), set()).add(modname)

    def resolve(self, name: str) -> tuple[str, set[str]]:
        """Look a name up as modprobe does: module, built-in, alias, built-in alias.

        Returns (kind, module names) with kind one of module, builtin, alias, none.
        """
        norm = normalize(name)
        if norm in self.paths:
            return "module", {norm}
        if norm in self.builtin:
            return "builtin", set()
        found = set(self.aliases.get(norm, ()))
        found.update(
            mod
            for prefix, pattern, mod in self.alias_patterns
            if norm.startswith(prefix) and fnmatch.fnmatchcase(norm, pattern)
        )
        # An alias may name a module that is built in; only files count here.
        files = {mod for mod in found if mod in self.paths}
        if files:
            return "alias", files
        if found & self.builtin or norm in self.builtin_aliases:
            return "builtin", set()
        return "none", set()

    def closure(self, names: set[str]) -> tuple[set[str], set[str]]:
        """Close module names over modules.dep and modules.softdep; return (set, unresolved softdeps)."""
        result: set[str] = set()
        unresolved: set[str] = set()
        todo = sorted(names)
        while todo:
            name = todo.pop()
            if name in result:
                continue
            result.add(name)
            nxt = [dep for dep in self.deps.get(name, []) if dep in self.paths]
            for soft in self.softdeps.get(name, []):
                kind, mods = self.resolve(soft)
                if kind == "none":
                    unresolved.add(soft)
                nxt.extend(mods)
            todo.extend(mod for mod in nxt if mod not in result)
        return result, unresolved


def find_release(module: AnsibleModule, root: str, release: str | None) -> tuple[str, str]:
    """Return (release, source module directory)."""
    if release:
        for sub in MODULE_DIRS:
            candidate = os.path.join(root, sub, release)
            if os.path.isdir(candidate):
                return release, candidate
        module.fail_json(msg=f"No modules for release {release} under {root} (looked in {', '.join(MODULE_DIRS)})")
    found: dict[str, str] = {}
    for sub in MODULE_DIRS:
        base = os.path.join(root, sub)
        if os.path.isdir(base) and not os.path.islink(base):
            for entry in sorted(os.listdir(base)):
                if os.path.isdir(os.path.join(base, entry)):
                    found.setdefault(entry, os.path.join(base, entry))
    if len(found) != 1:
        module.fail_json(
            msg=f"Cannot pick the kernel release under {root}: found {sorted(found) or 'none'}; set release",
        )
    rel = next(iter(found))
    return rel, found[rel]


def depmod_path(module: AnsibleModule) -> str:
    return module.get_bin_path("depmod", required=True, opt_dirs=DEPMOD_EXTRA_DIRS)


def run_depmod(module: AnsibleModule, base: str, release: str) -> None:
    emptycfg = tempfile.mkdtemp(prefix="depmod.d-", dir=module.tmpdir)
    try:
        cmd = [depmod_path(module), "-b", base, "-C", emptycfg, release]
        # depmod creates its index files 0666 & ~umask: under umask 022 whatever the build host's umask, so
        # the image does not depend on it (reproducible builds).
        old_umask = os.umask(0o022)
        try:
            run_checked(module, cmd, what=f"indexing the modules of {release} (depmod)")
        finally:
            os.umask(old_umask)
    finally:
        shutil.rmtree(emptycfg, ignore_errors=True)


def load_source_index(module: AnsibleModule, srcdir: str, release: str) -> KmodIndex:
    """Index of the source kernel; generated by depmod in a scratch tree when the package has none."""
    if os.path.exists(os.path.join(srcdir, "modules.dep")):
        return KmodIndex.load(srcdir)
    scratch = tempfile.mkdtemp(prefix="kmod-index-", dir=module.tmpdir)
    try:
        moddir = os.path.join(scratch, "lib", "modules", release)
        os.makedirs(moddir)
        for entry in os.listdir(srcdir):
            src = os.path.join(srcdir, entry)
            if os.path.isdir(src) or entry in (*COPIED_META, "modules.order"):
                os.symlink(os.path.realpath(src), os.path.join(moddir, entry))
        run_depmod(module, scratch, release)
        return KmodIndex.load(moddir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def plain_relpath(relpath: str) -> str:
    """Path of a module file without its compression suffix (kernel/x.ko.xz -> kernel/x.ko)."""
    root, ext = os.path.splitext(relpath)
    return root if ext in COMPRESSED_SUFFIXES and root.endswith(".ko") else relpath


def compression_of(relpath: str) -> str:
    """Compression of a module file, from its name: xz, zstd, gzip or none."""
    root, ext = os.path.splitext(relpath)
    return COMPRESSED_SUFFIXES[ext] if ext in COMPRESSED_SUFFIXES and root.endswith(".ko") else "none"


def zstd_path(module: AnsibleModule) -> str:
    return module.get_bin_path("zstd", required=True)


def read_module(module: AnsibleModule, path: str) -> bytes:
    """Uncompressed content of a module file, whatever its compression."""
    kind = compression_of(path)
    with open(path, "rb") as fh:
        data = fh.read()
    if kind == "xz":
        return lzma.decompress(data)
    if kind == "gzip":
        return gzip.decompress(data)
    if kind == "zstd":
        out, _err = run_checked(module, [zstd_path(module), "-q", "-d", "-c", "--", path],
                                what=f"decompressing {path}", binary=True)
        return out
    return data


def stored_bytes(module: AnsibleModule, src: str, compression: str) -> bytes:
    """Bytes of the file that stores the module src in the given compression (deterministic)."""
    if compression == compression_of(src):
        with open(src, "rb") as fh:
            return fh.read()
    if compression == "xz":
        return lzma.compress(
            read_module(module, src), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=XZ_FILTERS
        )
    if compression == "zstd":
        scratch = None
        if compression_of(src) != "none":
            fd, scratch = tempfile.mkstemp(prefix="kmod-", suffix=".ko", dir=module.tmpdir)
            with os.fdopen(fd, "wb") as fh:
                fh.write(read_module(module, src))
        try:
            out, _err = run_checked(module, [zstd_path(module), *ZSTD_COMPRESS, scratch or src],
                                    what=f"compressing {src}", binary=True)
            return out
        finally:
            if scratch:
                os.unlink(scratch)
    return read_module(module, src)


def managed_files(destdir: str) -> tuple[set[str], set[str]]:
    """Files (and symlinks) and directories below the sub-directories of destdir, relative to it."""
    files: set[str] = set()
    dirs: set[str] = set()
    if not os.path.isdir(destdir):
        return files, dirs
    for entry in os.listdir(destdir):
        top = os.path.join(destdir, entry)
        if os.path.islink(top) or not os.path.isdir(top):
            continue
        dirs.add(entry)
        for dirpath, dirnames, filenames in os.walk(top):
            rel = os.path.relpath(dirpath, destdir)
            for dirname in dirnames:
                full = os.path.join(dirpath, dirname)
                # A symlink to a directory is not descended into: treat it as a file to remove.
                (files if os.path.islink(full) else dirs).add(os.path.join(rel, dirname))
            files.update(os.path.join(rel, filename) for filename in filenames)
    return files, dirs


def same_module(module: AnsibleModule, src: str, dst: str) -> bool:
    """Whether dst holds the module src: equal content once both are uncompressed."""
    if os.path.islink(dst) or not os.path.isfile(dst):
        return False
    if compression_of(src) == compression_of(dst) and os.path.getsize(src) == os.path.getsize(dst):
        with open(src, "rb") as sfh, open(dst, "rb") as dfh:
            if sfh.read() == dfh.read():
                return True
    try:
        return read_module(module, src) == read_module(module, dst)
    except (lzma.LZMAError, OSError, EOFError):
        return False


def read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def desired_meta(srcdir: str, relpaths: set[str]) -> dict[str, bytes | None]:
    """Contents of the non-generated index files: built-in lists as is, modules.order reduced to the set.

    None means the source has no such file (a copy left in the destination is removed).
    """
    meta: dict[str, bytes | None] = {}
    for name in COPIED_META:
        meta[name] = read_bytes(os.path.join(srcdir, name))
    order = read_bytes(os.path.join(srcdir, "modules.order"))
    if order is None:
        meta["modules.order"] = None
    else:
        lines = order.decode("utf-8").splitlines()
        # The kernel's modules.order names uncompressed files (depmod matches it that way too).
        plain = {plain_relpath(rel) for rel in relpaths}
        kept = [line for line in lines if plain_relpath(line.strip()) in plain]
        meta["modules.order"] = "".join(line + "\n" for line in kept).encode("utf-8")
    return meta


def indexed_paths(destdir: str) -> list[str]:
    """Module paths that modules.dep names (relative, as depmod writes them)."""
    with open(os.path.join(destdir, "modules.dep"), encoding="utf-8") as fh:
        return [line.partition(":")[0].strip() for line in fh if ":" in line]


def index_matches(destdir: str, relpaths: set[str]) -> bool:
    """Whether destdir has a modules.dep that indexes exactly these module files (not damaged or stale)."""
    try:
        return set(indexed_paths(destdir)) == relpaths
    except (OSError, UnicodeDecodeError):
        return False


def snapshot(destdir: str) -> dict[str, str]:
    """sha256 of every top-level file of the module directory (the index files)."""
    result: dict[str, str] = {}
    if not os.path.isdir(destdir):
        return result
    for entry in sorted(os.listdir(destdir)):
        path = os.path.join(destdir, entry)
        if os.path.isfile(path) and not os.path.islink(path):
            result[entry] = sha256_file(path)
    return result


# ---------------------------------------------------------------------------------------------------------
# The record of the last run: its result, valid while the digest of every input is unchanged
# ---------------------------------------------------------------------------------------------------------
STATE_VERSION = 1
# Result keys that describe the set (kept in the record); the others describe what a run did.
STATE_RESULT_KEYS = ("release", "modules", "builtin", "missing", "softdeps_unresolved", "files", "size", "stored_size")


def state_path(dest: str) -> str:
    """The record of dest's last run: next to dest (never inside it: dest is packed into the image)."""
    return os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}-kmod_closure.json")


def update_tree_identity(digest: Any, label: str, top: str) -> None:
    """Feed digest every entry below top (not following symlinks) with its type and identity: device, inode,
    size, modification and change time in ns (a rewrite, replacement, chmod or touch changes one of them),
    and a symlink's target."""
    digest.update(f"tree {label} {top}\n".encode())
    if not os.path.isdir(top):
        digest.update(b"absent\n")
        return
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        rel = os.path.relpath(dirpath, top)
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            target = os.readlink(path) if os.path.islink(path) else ""
            digest.update(f"{rel}/{name}\0{st.st_mode} {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} "
                          f"{st.st_ctime_ns}\0{target}\n".encode("utf-8", "surrogateescape"))
        for name in dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            digest.update(f"{rel}/{name}/\0{st.st_mode}\n".encode("utf-8", "surrogateescape"))


def program_identity(module: AnsibleModule, name: str, opt_dirs: list[str]) -> str:
    """Path and identity of a program the result depends on (an upgraded depmod may index differently)."""
    path = module.get_bin_path(name, opt_dirs=opt_dirs)
    if not path:
        return f"{name} absent"
    st = os.stat(path)
    return f"{name} {os.path.realpath(path)} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"


def inputs_digest(module: AnsibleModule, srcdir: str, release: str, dest: str) -> str:
    """Digest of everything the result depends on: the options, the source module directory (index files and
    modules), everything below dest/lib/modules (the set, its index, trees of other releases) and depmod."""
    params = {key: module.params[key] for key in ARGUMENT_SPEC}
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": STATE_VERSION, "params": params, "srcdir": srcdir, "release": release},
                             sort_keys=True).encode())
    digest.update(program_identity(module, "depmod", DEPMOD_EXTRA_DIRS).encode())
    update_tree_identity(digest, "source", srcdir)
    update_tree_identity(digest, "dest", os.path.join(dest, "lib", "modules"))
    return digest.hexdigest()


def recorded_result(dest: str, inputs: str) -> dict[str, Any] | None:
    """The recorded result when the record was written for exactly these inputs."""
    state = read_state(state_path(dest))
    if state is None or state.get("inputs") != inputs or not isinstance(state.get("result"), dict):
        return None
    result = state["result"]
    return result if all(key in result for key in STATE_RESULT_KEYS) else None


ARGUMENT_SPEC = {
    "root": {"type": "path", "required": True},
    "release": {"type": "str"},
    "modules": {"type": "list", "elements": "str", "default": []},
    "optional": {"type": "list", "elements": "str", "default": []},
    "dest": {"type": "path", "required": True},
    "remove_other_releases": {"type": "bool", "default": False},
    "depmod": {"type": "bool", "default": True},
    "compression": {"type": "str", "default": "none", "choices": list(COMPRESSION_SUFFIX)},
}


def resolve(module: AnsibleModule, index: KmodIndex, release: str) -> tuple[set[str], list[str], list[str], set[str]]:
    """Step 1: the requested names (modules, then optional) resolved against the source kernel's index:
    the modules with their dependency closure, the names built in, the optional names absent, and the soft
    dependencies that nothing satisfies. An unknown name that is not optional fails the module."""
    params = module.params
    optional = {normalize(name) for name in params["optional"]}
    requested: list[str] = []
    for name in [*params["modules"], *params["optional"]]:
        if name not in requested:
            requested.append(name)
    wanted: set[str] = set()
    builtin: list[str] = []
    missing: list[str] = []
    unknown: list[str] = []
    for name in requested:
        kind, mods = index.resolve(name)
        if kind == "builtin":
            builtin.append(name)
        elif kind == "none":
            (missing if normalize(name) in optional else unknown).append(name)
        wanted.update(mods)
    if unknown:
        module.fail_json(
            msg=(
                f"Unknown kernel module(s) for {release}: {', '.join(sorted(unknown))} "
                "(neither a module, an alias nor built in; list them in optional to allow this)"
            ),
            release=release,
            unknown=sorted(unknown),
        )
    closed, unresolved = index.closure(wanted)
    return closed, builtin, missing, unresolved


def plan(module: AnsibleModule, index: KmodIndex, srcdir: str, destdir: str, closed: set[str]) -> dict[str, Any]:
    """Step 2: what the destination must become: the module files to add, update and remove (compared once
    uncompressed), the directories left empty, the index files to rewrite and whether depmod must run."""
    compression = module.params["compression"]
    suffix = COMPRESSION_SUFFIX[compression]
    # Path in dest (with the suffix of the chosen compression) -> path in the source.
    sources = {plain_relpath(index.paths[name]) + suffix: index.paths[name] for name in closed}
    existing, existing_dirs = managed_files(destdir)
    kept = sorted(rel for rel in sources if rel in existing)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        same = dict(
            pool.map(
                lambda rel: (rel, same_module(module, os.path.join(srcdir, sources[rel]), os.path.join(destdir, rel))),
                kept,
            )
        )
    # Directories that would be left empty (or are empty already).
    needed_dirs = set()
    for rel in sources:
        parent = os.path.dirname(rel)
        while parent:
            needed_dirs.add(parent)
            parent = os.path.dirname(parent)
    meta = desired_meta(srcdir, set(sources.values()))
    releases_dir = os.path.dirname(destdir)
    other_releases = []
    if module.params["remove_other_releases"] and os.path.isdir(releases_dir) and not os.path.islink(releases_dir):
        other_releases = sorted(entry for entry in os.listdir(releases_dir) if entry != os.path.basename(destdir))
    work = {
        "compression": compression,
        "sources": sources,
        "existing": existing,
        "added": sorted(rel for rel in sources if rel not in existing),
        "updated": [rel for rel in kept if not same[rel]],
        "removed": sorted(existing - set(sources)),
        "stale_dirs": sorted(existing_dirs - needed_dirs, key=lambda d: d.count(os.sep), reverse=True),
        "meta": meta,
        "meta_changed": sorted(name for name, data in meta.items() if read_bytes(os.path.join(destdir, name)) != data),
    }
    work["other_releases"] = other_releases
    work["files_changed"] = bool(work["added"] or work["updated"] or work["removed"] or work["stale_dirs"]
                                 or other_releases)
    work["need_depmod"] = module.params["depmod"] and (
        work["files_changed"] or work["meta_changed"] or not index_matches(destdir, set(sources))
    )
    return work


def apply(module: AnsibleModule, work: dict[str, Any], srcdir: str, dest: str, destdir: str, release: str) -> bool:
    """Step 3: remove, write (compressed in parallel, atomically) and re-index; returns whether depmod changed
    the index files. Fails when depmod left a module file out of its index."""
    for entry in work["other_releases"]:
        path = os.path.join(os.path.dirname(destdir), entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    for rel in work["removed"]:
        path = os.path.join(destdir, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    for rel in work["stale_dirs"]:
        path = os.path.join(destdir, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
    sources, compression = work["sources"], work["compression"]
    writes = [*work["added"], *work["updated"]]
    # Compression (zstd -19, xz -9e) is the slow part of a cold build: one file per core at a time.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        contents = pool.map(
            lambda rel: (rel, stored_bytes(module, os.path.join(srcdir, sources[rel]), compression)), writes
        )
        for rel, data in contents:
            write_atomic(os.path.join(destdir, rel), data, 0o644, mtime_of=os.path.join(srcdir, sources[rel]),
                         prefix=".kmod-", mkdir=True)
    makedirs(destdir)
    for name in work["meta_changed"]:
        data = work["meta"][name]
        if data is None:
            os.unlink(os.path.join(destdir, name))
        else:
            write_atomic(os.path.join(destdir, name), data, 0o644, prefix=".kmod-", mkdir=True)
    if not work["need_depmod"]:
        return bool(work["meta_changed"])
    before = snapshot(destdir)
    run_depmod(module, dest, release)
    after = snapshot(destdir)
    # A depmod without this compression skips such files with a mere warning: modprobe could not find them.
    unindexed = sorted(set(sources) - set(indexed_paths(destdir)))
    if unindexed:
        module.fail_json(
            msg=f"depmod did not index {len(unindexed)} module file(s), e.g. {unindexed[0]}: does the build "
            f"host's depmod support {compression} (depmod --version)?",
            unindexed=unindexed,
        )
    return bool(work["meta_changed"]) or before != after


def run_module() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    root = os.path.abspath(params["root"])
    dest = os.path.abspath(params["dest"])
    if not os.path.isdir(root):
        module.fail_json(msg=f"root {root} is not a directory")

    release, srcdir = find_release(module, root, params["release"])
    destdir = os.path.join(dest, "lib", "modules", release)
    inputs = inputs_digest(module, srcdir, release, dest)
    known = recorded_result(dest, inputs)
    if known is not None:
        module.exit_json(
            changed=False, reused=True, added=[], removed=[], updated=[], removed_releases=[], depmod_changed=False,
            **{key: known[key] for key in STATE_RESULT_KEYS},
        )
    index = load_source_index(module, srcdir, release)
    closed, builtin, missing, unresolved = resolve(module, index, release)
    work = plan(module, index, srcdir, destdir, closed)
    sources = work["sources"]

    size = sum(
        os.path.getsize(path) if compression_of(path) == "none" else len(read_module(module, path))
        for path in (os.path.join(srcdir, rel) for rel in sources.values())
    )
    before_names = sorted({name_of_path(rel) for rel in work["existing"] if ".ko" in os.path.basename(rel)})
    result = {
        "changed": work["files_changed"] or bool(work["meta_changed"]) or bool(work["need_depmod"]),
        "release": release,
        "modules": sorted(closed),
        "builtin": sorted(builtin),
        "missing": sorted(missing),
        "softdeps_unresolved": sorted(unresolved),
        "files": len(sources),
        "size": size,
        "added": work["added"],
        "removed": work["removed"],
        "updated": work["updated"],
        "removed_releases": work["other_releases"],
        "reused": False,
        "depmod_changed": bool(work["meta_changed"]) or bool(work["need_depmod"]),
        "diff": {
            "before_header": f"{destdir} (modules)",
            "after_header": f"{destdir} (modules)",
            "before": "".join(f"{name}\n" for name in before_names),
            "after": "".join(f"{name}\n" for name in sorted(closed)),
        },
    }
    if module.check_mode:
        module.exit_json(**result)

    result["depmod_changed"] = apply(module, work, srcdir, dest, destdir, release)
    result["stored_size"] = sum(os.path.getsize(os.path.join(destdir, rel)) for rel in sources)
    result["changed"] = work["files_changed"] or result["depmod_changed"]
    # Recorded last, with the digest of dest as it is now: the next run with the same inputs reuses the result.
    write_state(state_path(dest), {"inputs": inputs_digest(module, srcdir, release, dest),
                                   "result": {key: result[key] for key in STATE_RESULT_KEYS}}, mkdir=True)
    module.exit_json(**result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
