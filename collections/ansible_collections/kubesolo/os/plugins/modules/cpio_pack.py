#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# Ansible module boilerplate: coding line, __future__ imports and __metaclass__, imports after the docs.

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cpio_pack
short_description: Write a deterministic newc (initramfs) cpio archive
version_added: "0.1.0"
description:
  - Writes a cpio archive in the C(newc) format (magic C(070701)), the format the Linux kernel unpacks as an
    initramfs, from a staging directory O(src) and/or a list of extra O(entries).
  - The output is deterministic. Entries are sorted by name in byte order (a parent always sorts before its
    children), owner and group are C(0) unless an extra entry says otherwise, inode numbers are given by position,
    every entry has a link count of 1 (hard links are stored as separate files), device numbers of the file
    system are C(0), and modification times are clamped to O(mtime).
  - Archive names are relative, without a leading C(/) or C(./) (as the kernel's C(gen_init_cpio) writes them,
    for example C(bin/sh)). The staging directory itself is not an entry (the kernel's root directory already
    exists). The archive ends with the C(TRAILER!!!) entry and is padded with NUL bytes to a multiple of 512.
  - The archive is optionally compressed with an external tool (C(zstd), C(gzip), C(xz), C(lz4)) using only the
    options that the kernel's decompressors accept.
  - O(dest) is replaced atomically (temporary file in the same directory, then rename) and only when the new
    bytes differ from the existing file (compared by SHA-256).
  - Compression is skipped when O(dest) already holds the same uncompressed archive compressed the same way. A
    record next to it (C(.<name>-cpio_pack.json)) keeps the SHA-256 of the uncompressed archive, the compression
    settings, a digest of the archive's inputs and the identity of O(dest) (size, inode, modification and change
    time in nanoseconds), and is trusted only while O(dest) still has that identity.
  - The inputs digest covers every header and inline content and, for data read from a file, that file's device,
    inode, size, modification and change time. While it and O(dest) are unchanged nothing is read, written or
    hashed (a layer holding a 300 MB system image costs no I/O in a no-op build); a file rewritten in place
    has a new change time, so the archive is then written and compared again.
author:
  - KubeSolo OS developers (@kubesolo-os)
options:
  src:
    description:
      - Staging directory whose contents become the archive (the directory itself is the archive root).
      - Symbolic links are stored as links, never followed. Regular files, directories, symbolic links and
        character and block devices are stored. See O(special_files) for sockets and FIFOs.
      - At least one of O(src) and O(entries) must be given.
    type: path
  entries:
    description:
      - Extra entries to add. An entry replaces an entry of the staging directory with the same name.
      - Missing parent directories of extra entries are added as directories with mode C(0755), owner C(0).
    type: list
    elements: dict
    suboptions:
      name:
        description:
          - Path inside the archive, for example C(dev/console). A leading C(/) or C(./) is removed; C(..)
            components are refused.
        type: str
        required: true
      type:
        description:
          - Kind of entry.
        type: str
        choices: [file, dir, symlink, char, block]
        default: file
      mode:
        description:
          - Permission bits as an octal string (quote it in YAML, for example V('0600')); may include the
            setuid, setgid and sticky bits. An integer is taken as already converted.
          - Default is C(0644) for a file with O(entries[].content), the permission bits of O(entries[].src) for a
            file with a source, C(0755) for a directory, C(0777) for a symbolic link and C(0600) for devices.
        type: raw
      owner:
        description:
          - Numeric user id.
        type: int
        default: 0
      group:
        description:
          - Numeric group id.
        type: int
        default: 0
      src:
        description:
          - File on the host whose contents become the entry's data (O(entries[].type=file) only).
          - Its modification time is clamped to O(mtime) like the staging directory's files.
        type: path
      content:
        description:
          - Inline contents of the file, written as UTF-8 (O(entries[].type=file) only).
          - One of O(entries[].src) and O(entries[].content) is required for a file.
        type: str
      target:
        description:
          - Target of a symbolic link (required for O(entries[].type=symlink)).
        type: str
      major:
        description:
          - Major device number (required for O(entries[].type=char) and O(entries[].type=block)).
        type: int
      minor:
        description:
          - Minor device number (required for O(entries[].type=char) and O(entries[].type=block)).
        type: int
  dest:
    description:
      - Archive file to write. Its directory must exist.
      - Required unless O(archives) is given.
    type: path
  archives:
    description:
      - Several archives packed in one run (one module start instead of one per archive, which is most of the cost
        of a no-op build), each exactly as O(src), O(entries), O(dest) and O(compression_level) would pack it; the
        other options apply to each. Packed in order; one that fails stops the run, naming its O(archives[].dest),
        and those before it are written.
      - Mutually exclusive with O(src), O(entries) and O(dest). The result is then in RV(archives).
    type: list
    elements: dict
    suboptions:
      src:
        description: As O(src).
        type: path
      entries:
        description: As O(entries) (same keys, checked the same way).
        type: list
        elements: dict
      dest:
        description: As O(dest).
        type: path
        required: true
      compression_level:
        description: As O(compression_level); defaults to O(compression_level).
        type: int
  mode:
    description:
      - Permission bits of O(dest), as an octal string. An integer is taken as already converted.
    type: raw
    default: "0644"
  mtime:
    description:
      - Upper bound (SOURCE_DATE_EPOCH) for every entry's modification time; later times are lowered to it.
      - Entries that have no file on the host (inline contents, links, devices and directories given in
        O(entries)) get exactly this time.
      - Default is the E(SOURCE_DATE_EPOCH) environment variable of the module; without it real modification
        times are kept and entries without a host file get C(0).
      - Must fit in 32 bits (C(0) to C(4294967295)), as must every stored time.
    type: int
  mtime_policy:
    description:
      - How O(mtime) applies to entries that have a file on the host.
      - C(clamp) lowers later times to O(mtime) and keeps earlier ones (the SOURCE_DATE_EPOCH convention).
      - C(fixed) gives every entry exactly O(mtime), so the archive does not depend on when the staging tree
        was written (a staging tree rebuilt from scratch has new, different mtimes).
      - Without O(mtime) or E(SOURCE_DATE_EPOCH) this has no effect.
    type: str
    choices: [clamp, fixed]
    default: clamp
  compression:
    description:
      - Compression of the archive. C(xz) is written with C(--check=crc32) (the kernel rejects CRC64) and
        C(lz4) in the legacy format C(-l) (the kernel rejects the frame format).
    type: str
    choices: [zstd, gzip, xz, lz4, none]
    default: zstd
  compression_level:
    description:
      - Compression level. Defaults to the tool's usual level (zstd C(3), gzip C(9), xz C(6), lz4 C(1)).
      - Valid ranges are zstd C(1)-C(19) (the C(--ultra) levels need more kernel memory and are refused),
        gzip C(1)-C(9), xz C(0)-C(9), lz4 C(1)-C(12).
    type: int
  special_files:
    description:
      - What to do with sockets and FIFOs found in O(src). They are never meant to be in an image (usually the
        leftover of a process that ran in the staging tree).
      - V(fail) stops with an error that names the file; V(skip) leaves them out with a warning.
    type: str
    choices: [fail, skip]
    default: fail
notes:
  - Limits of the format, checked before anything is written. A name with its NUL must fit in 4096 bytes (the
    kernel silently skips longer ones), a file must be smaller than 4 GiB (32-bit size field), and times must fit
    in 32 bits.
  - Compression runs C(zstd -q -T0 -LEVEL) (its output does not depend on the thread count), C(gzip -n -LEVEL),
    C(xz --check=crc32 -T1 -LEVEL) (xz output depends on the thread count, so it is pinned) or C(lz4 -l -LEVEL).
  - Several compressed archives can be concatenated into one initramfs; the kernel unpacks them in order and a
    later one overlays an earlier one.
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The archive is built in a temporary directory to learn whether O(dest) would change.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: partial
    details: Shows the SHA-256 and size before and after, and the entry count after, not the archive contents.
"""

EXAMPLES = r"""
- name: Pack a layer with the build's timestamp
  kubesolo.os.cpio_pack:
    src: "{{ kubesolo_os_layers_dir }}/userland"
    dest: "{{ kubesolo_os_build_dir }}/initramfs/userland.cpio.zst"
    mtime: "{{ kubesolo_os_epoch }}"
    compression: zstd
    compression_level: 9

- name: Pack a layer and add device nodes and an /init link
  kubesolo.os.cpio_pack:
    src: /srv/build/layers/init
    dest: /srv/build/initramfs/init.cpio.gz
    compression: gzip
    entries:
      - name: dev/console
        type: char
        mode: "0600"
        major: 5
        minor: 1
      - name: dev/null
        type: char
        mode: "0666"
        major: 1
        minor: 3
      - name: init
        type: symlink
        target: sbin/init
      - name: etc/hostname
        content: "kubesolo\n"

- name: Pack several layers in one run
  kubesolo.os.cpio_pack:
    archives:
      - src: /srv/build/layers/userland
        dest: /srv/build/initramfs/userland.cpio.zst
      - src: /srv/build/layers/init
        dest: /srv/build/initramfs/init.cpio.zst
        compression_level: 19
        entries:
          - name: init
            type: symlink
            target: sbin/init
    compression: zstd
    mtime: "{{ kubesolo_os_epoch }}"
  register: packed  # packed.archives[N].sha256 ...

- name: Uncompressed archive of extra entries only
  kubesolo.os.cpio_pack:
    dest: /tmp/early.cpio
    compression: none
    mtime: 0
    entries:
      - name: kernel/x86/microcode/GenuineIntel.bin
        src: /lib/firmware/intel-ucode.bin
"""

RETURN = r"""
dest:
  description: Path of the archive.
  returned: always
  type: str
  sample: /srv/build/initramfs/userland.cpio.zst
sha256:
  description: SHA-256 of the (compressed) archive as written.
  returned: always
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
size:
  description: Size of the (compressed) archive in bytes.
  returned: always
  type: int
  sample: 8403712
uncompressed_size:
  description: Size of the uncompressed cpio archive in bytes, padding included.
  returned: always
  type: int
  sample: 41670656
entries:
  description: Number of entries in the archive, the trailer not counted.
  returned: always
  type: int
  sample: 3258
compression:
  description: Compression used.
  returned: always
  type: str
  sample: zstd
recompressed:
  description: Whether the archive was compressed in this run (false when O(dest) already held it, see above).
  returned: always
  type: bool
  sample: false
packed:
  description:
    - Whether the archive was written (and hashed) in this run; false when its inputs and O(dest) matched the record,
      so that no file data was read.
  returned: always
  type: bool
  sample: false
archives:
  description:
    - With O(archives), the result of each archive in order, with the keys above (RV(dest), RV(sha256), RV(size),
      RV(uncompressed_size), RV(entries), RV(compression), RV(recompressed), RV(packed)) and C(changed). The
      top-level keys other than C(changed) are then not returned.
  returned: when O(archives) is given
  type: list
  elements: dict
  sample:
    - dest: /srv/build/initramfs/userland.cpio.zst
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      size: 8403712
      uncompressed_size: 41670656
      entries: 3258
      compression: zstd
      recompressed: false
      packed: false
      changed: false
"""

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.kubesolo.os.plugins.module_utils.buildutil import (
    parse_mode,
    read_state,
    run_checked,
    sha256_file,
    write_state,
)

MAGIC = b"070701"
HEADER_SIZE = 110
TRAILER = b"TRAILER!!!"
# Name plus its NUL; init/initramfs.c skips longer names (N_ALIGN(PATH_MAX)).
MAX_NAMESIZE = 4096
MAX_U32 = 0xFFFFFFFF
BLOCK = 512
# Files up to this size are read into the output buffer; larger ones are sent with sendfile().
SMALL_FILE = 1 << 20
FLUSH_AT = 8 << 20
COPY_CHUNK = 8 << 20

TYPE_BITS = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
}
DEFAULT_MODES = {"file": 0o644, "dir": 0o755, "symlink": 0o777, "char": 0o600, "block": 0o600}

# Tool, default level, (min, max) level, suffix of its output file.
COMPRESSORS: dict[str, tuple[str, int, tuple[int, int], str]] = {
    "zstd": ("zstd", 3, (1, 19), ".zst"),
    "gzip": ("gzip", 9, (1, 9), ".gz"),
    "xz": ("xz", 6, (0, 9), ".xz"),
    "lz4": ("lz4", 1, (1, 12), ".lz4"),
}

if TYPE_CHECKING:
    Runner = Callable[[list[str]], None]


class CpioError(Exception):
    """A problem with the input that prevents writing a valid archive."""


class Entry:
    """One archive member. Data comes from ``path`` (a host file) or ``data`` (inline bytes)."""

    __slots__ = ("data", "gid", "mode", "mtime", "name", "path", "rdevmajor", "rdevminor", "size", "uid")

    def __init__(
        self,
        name: bytes,
        mode: int,
        *,
        uid: int = 0,
        gid: int = 0,
        mtime: int = 0,
        size: int = 0,
        rdevmajor: int = 0,
        rdevminor: int = 0,
        path: bytes | None = None,
        data: bytes | None = None,
    ) -> None:
        self.name = name
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.size = size
        self.rdevmajor = rdevmajor
        self.rdevminor = rdevminor
        self.path = path
        self.data = data

    def __repr__(self) -> str:
        return f"Entry({self.name!r}, {self.mode:o}, size={self.size})"


def _show(name: bytes) -> str:
    return os.fsdecode(name)


def normalize_name(name: str | bytes) -> bytes:
    """Archive name as gen_init_cpio writes it: relative, no ``./``, no empty or ``.`` components."""
    raw = os.fsencode(name)
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise CpioError(f"archive name {_show(raw)!r} contains '..'")
    if not parts:
        raise CpioError(f"archive name {_show(raw)!r} is empty or the root directory")
    return b"/".join(parts)


def check_u32(value: int, what: str) -> int:
    if not 0 <= value <= MAX_U32:
        raise CpioError(f"{what}: {value} does not fit in the 32-bit field of the newc format")
    return value


def clamp_mtime(real: int, clamp: int | None, what: str) -> int:
    mtime = real if clamp is None or real < clamp else clamp
    if not 0 <= mtime <= MAX_U32:
        raise CpioError(f"{what}: modification time {mtime} does not fit in 32 bits (use mtime/SOURCE_DATE_EPOCH)")
    return mtime


def _file_entry(name: bytes, path: bytes, st: os.stat_result, clamp: int | None) -> Entry:
    if st.st_size > MAX_U32:
        raise CpioError(f"{_show(path)}: {st.st_size} bytes is over the newc limit of 4 GiB - 1")
    return Entry(
        name,
        st.st_mode,
        mtime=clamp_mtime(st.st_mtime_ns // 1_000_000_000, clamp, _show(path)),
        size=st.st_size,
        path=path,
    )


def scan_staging(
    root: str | bytes,
    clamp: int | None,
    special_files: str = "fail",
    warn: Callable[[str], None] | None = None,
) -> dict[bytes, Entry]:
    """Entries for everything below ``root`` (not ``root`` itself), keyed by archive name."""
    top = os.fsencode(root)
    try:
        if not stat.S_ISDIR(os.stat(top).st_mode):
            raise CpioError(f"src {_show(top)} is not a directory")
    except OSError as exc:
        raise CpioError(f"src {_show(top)}: {exc.strerror}") from None
    entries: dict[bytes, Entry] = {}
    pending: list[tuple[bytes, bytes]] = [(top, b"")]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as it:
                children = list(it)
        except OSError as exc:
            raise CpioError(f"cannot read directory {_show(directory)}: {exc.strerror}") from None
        for child in children:
            path = child.path
            name = prefix + child.name
            try:
                st = child.stat(follow_symlinks=False)
            except OSError as exc:
                raise CpioError(f"cannot stat {_show(path)}: {exc.strerror}") from None
            fmt = stat.S_IFMT(st.st_mode)
            if fmt == stat.S_IFREG:
                entries[name] = _file_entry(name, path, st, clamp)
                continue
            mtime = clamp_mtime(st.st_mtime_ns // 1_000_000_000, clamp, _show(path))
            if fmt == stat.S_IFDIR:
                entries[name] = Entry(name, st.st_mode, mtime=mtime)
                pending.append((path, name + b"/"))
            elif fmt == stat.S_IFLNK:
                try:
                    target = os.readlink(path)
                except OSError as exc:
                    raise CpioError(f"cannot read link {_show(path)}: {exc.strerror}") from None
                entries[name] = Entry(name, st.st_mode, mtime=mtime, size=len(target), data=target)
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                entries[name] = Entry(
                    name,
                    st.st_mode,
                    mtime=mtime,
                    rdevmajor=os.major(st.st_rdev),
                    rdevminor=os.minor(st.st_rdev),
                )
            else:
                kind = "socket" if fmt == stat.S_IFSOCK else "FIFO"
                if special_files == "skip":
                    if warn is not None:
                        warn(f"skipped {kind} {_show(path)}: sockets and FIFOs are not packed")
                    continue
                raise CpioError(f"{_show(path)} is a {kind}; remove it from the staging tree or set special_files=skip")
    return entries


def entry_from_spec(spec: Mapping[str, Any], clamp: int | None) -> Entry:
    """Entry for one item of the module's ``entries`` option."""
    if "name" not in spec or spec["name"] is None:
        raise CpioError("every item of entries needs a name")
    name = normalize_name(spec["name"])
    shown = _show(name)
    kind = spec.get("type") or "file"
    if kind not in TYPE_BITS:
        raise CpioError(f"entry {shown}: unknown type {kind!r}")
    uid = check_u32(int(spec.get("owner") or 0), f"entry {shown}: owner")
    gid = check_u32(int(spec.get("group") or 0), f"entry {shown}: group")
    mode_value = spec.get("mode")
    mode = None if mode_value is None else parse_mode(mode_value, f"entry {shown}", CpioError)
    fixed_mtime = 0 if clamp is None else clamp
    src, content, target = spec.get("src"), spec.get("content"), spec.get("target")
    if kind != "file" and (src is not None or content is not None):
        raise CpioError(f"entry {shown}: src and content are only for type file")
    if kind != "symlink" and target is not None:
        raise CpioError(f"entry {shown}: target is only for type symlink")
    if kind not in ("char", "block") and (spec.get("major") is not None or spec.get("minor") is not None):
        raise CpioError(f"entry {shown}: major and minor are only for types char and block")

    if kind == "file":
        if (src is None) == (content is None):
            raise CpioError(f"entry {shown}: a file needs exactly one of src and content")
        if content is not None:
            data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            entry = Entry(name, stat.S_IFREG | DEFAULT_MODES["file"], mtime=fixed_mtime, size=len(data), data=data)
        else:
            path = os.path.realpath(os.fsencode(src))  # a link is followed here; the data is read without following
            try:
                st = os.stat(path)
            except OSError as exc:
                raise CpioError(f"entry {shown}: cannot read {_show(path)}: {exc.strerror}") from None
            if not stat.S_ISREG(st.st_mode):
                raise CpioError(f"entry {shown}: {_show(path)} is not a regular file")
            entry = _file_entry(name, path, st, clamp)
            entry.mode = stat.S_IFREG | stat.S_IMODE(st.st_mode)
    elif kind == "symlink":
        if not target:
            raise CpioError(f"entry {shown}: a symlink needs a target")
        data = os.fsencode(target)
        entry = Entry(name, stat.S_IFLNK | DEFAULT_MODES["symlink"], mtime=fixed_mtime, size=len(data), data=data)
    elif kind in ("char", "block"):
        major, minor = spec.get("major"), spec.get("minor")
        if major is None or minor is None:
            raise CpioError(f"entry {shown}: a {kind} device needs major and minor")
        entry = Entry(
            name,
            TYPE_BITS[kind] | DEFAULT_MODES[kind],
            mtime=fixed_mtime,
            rdevmajor=check_u32(int(major), f"entry {shown}: major"),
            rdevminor=check_u32(int(minor), f"entry {shown}: minor"),
        )
    else:
        entry = Entry(name, stat.S_IFDIR | DEFAULT_MODES["dir"], mtime=fixed_mtime)
    if mode is not None:
        entry.mode = TYPE_BITS[kind] | mode
    entry.uid, entry.gid = uid, gid
    return entry


def build_entries(
    src: str | bytes | None,
    specs: Iterable[Mapping[str, Any]] = (),
    clamp: int | None = None,
    special_files: str = "fail",
    warn: Callable[[str], None] | None = None,
) -> list[Entry]:
    """Staging entries overlaid by extra entries, with missing parents added, sorted and checked."""
    if clamp is not None:
        check_u32(clamp, "mtime")
    entries = scan_staging(src, clamp, special_files, warn) if src is not None else {}
    extra_names: set[bytes] = set()
    for spec in specs:
        entry = entry_from_spec(spec, clamp)
        if entry.name in extra_names:
            raise CpioError(f"entry {_show(entry.name)} is given twice in entries")
        extra_names.add(entry.name)
        entries[entry.name] = entry
    parent_mtime = 0 if clamp is None else clamp
    for name in list(entries):
        parent = name.rpartition(b"/")[0]
        while parent and parent not in entries:
            entries[parent] = Entry(parent, stat.S_IFDIR | 0o755, mtime=parent_mtime)
            parent = parent.rpartition(b"/")[0]
    ordered = [entries[name] for name in sorted(entries)]
    for entry in ordered:
        if len(entry.name) + 1 > MAX_NAMESIZE:
            raise CpioError(
                f"name {_show(entry.name)!r} is {len(entry.name)} bytes; the newc limit is {MAX_NAMESIZE - 1}"
            )
        parent = entry.name.rpartition(b"/")[0]
        if parent and not stat.S_ISDIR(entries[parent].mode):
            raise CpioError(f"{_show(entry.name)}: its parent {_show(parent)} is not a directory in the archive")
    return ordered


def _header(ino: int, entry: Entry) -> bytes:
    name = entry.name
    namesize = len(name) + 1
    head = b"%s%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X" % (
        MAGIC,
        ino,
        entry.mode,
        entry.uid,
        entry.gid,
        1,
        entry.mtime,
        entry.size,
        0,
        0,
        entry.rdevmajor,
        entry.rdevminor,
        namesize,
        0,
    )
    return head + name + b"\0" * (1 + (-(HEADER_SIZE + namesize) % 4))


def _read_exact(path: bytes, size: int, out_fd: int | None, buf: bytearray) -> None:
    """Append the file's data to ``buf`` (``out_fd`` None) or send it to ``out_fd``; check its size."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CpioError(f"cannot read {_show(path)}: {exc.strerror}") from None
    try:
        done = 0
        if out_fd is None:
            while done < size:
                chunk = os.read(fd, size - done)
                if not chunk:
                    break
                buf += chunk
                done += len(chunk)
        else:
            use_sendfile = hasattr(os, "sendfile")
            while done < size:
                want = min(COPY_CHUNK, size - done)
                sent = 0
                if use_sendfile:
                    try:
                        sent = os.sendfile(out_fd, fd, done, want)
                    except OSError:
                        use_sendfile = False
                        continue
                else:
                    chunk = os.pread(fd, want, done)
                    sent = len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out_fd, view) :]
                if not sent:
                    break
                done += sent
        if done != size or os.pread(fd, 1, done):
            raise CpioError(f"{_show(path)} changed size while it was being packed")
    except OSError as exc:
        raise CpioError(f"cannot read {_show(path)}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytearray | bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_archive(entries: Iterable[Entry], out: BinaryIO | int) -> int:
    """Write the newc archive of ``entries`` (already sorted) to ``out``; return the bytes written."""
    fd = out if isinstance(out, int) else out.fileno()
    if not isinstance(out, int):
        out.flush()
    buf = bytearray()
    total = 0
    ino = 0
    for ino, entry in enumerate(entries, start=1):
        buf += _header(ino, entry)
        size = entry.size
        if size:
            if entry.data is not None:
                buf += entry.data
            elif size <= SMALL_FILE:
                _read_exact(entry.path, size, None, buf)  # type: ignore[arg-type]
            else:
                _write_all(fd, buf)
                total += len(buf)
                buf.clear()
                _read_exact(entry.path, size, fd, buf)  # type: ignore[arg-type]
                total += size
            buf += b"\0" * (-(total + len(buf)) % 4)
        if len(buf) >= FLUSH_AT:
            _write_all(fd, buf)
            total += len(buf)
            buf.clear()
    buf += _header(0, Entry(TRAILER, 0))
    buf += b"\0" * (-(total + len(buf)) % BLOCK)
    _write_all(fd, buf)
    return total + len(buf)


def compress_command(compression: str, level: int | None, src: str) -> tuple[list[str], str]:
    """Command line that compresses the file ``src`` into a new file, and that file's path."""
    if compression not in COMPRESSORS:
        raise CpioError(f"unknown compression {compression!r}")
    tool, default, (low, high), suffix = COMPRESSORS[compression]
    level = default if level is None else level
    if not low <= level <= high:
        raise CpioError(f"compression_level {level} is outside {low}-{high} for {compression}")
    out = src + suffix
    if compression == "zstd":
        argv = [tool, "-q", "-T0", f"-{level}", "-f", src, "-o", out]
    elif compression == "gzip":
        argv = [tool, "-n", f"-{level}", "-q", "-k", "-f", src]
    elif compression == "xz":
        argv = [tool, "--check=crc32", "-T1", f"-{level}", "-q", "-k", "-f", src]
    else:
        argv = [tool, "-l", f"-{level}", "-q", "-f", src, out]
    return argv, out


def pack(
    entries: list[Entry],
    workdir: str,
    compression: str,
    level: int | None,
    run: Runner,
    prefix: str = ".cpio_pack.",
    reuse: Callable[[str], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Write and compress the archive into a new file in ``workdir``; the caller renames or removes ``path``.

    ``reuse`` is asked with the SHA-256 of the uncompressed archive; when it returns the figures of an existing
    compressed archive of the same bytes, compression is skipped and ``path`` is None.
    """
    fd, raw = tempfile.mkstemp(dir=workdir, prefix=prefix, suffix=".cpio")
    made = [raw]
    try:
        try:
            uncompressed = write_archive(entries, fd)
        finally:
            os.close(fd)
        raw_sha256 = sha256_file(raw)
        if compression != "none" and reuse is not None:
            existing = reuse(raw_sha256)
            if existing is not None:
                os.unlink(raw)
                return {**existing, "path": None, "uncompressed_sha256": raw_sha256}
        path = raw
        if compression != "none":
            argv, path = compress_command(compression, level, raw)
            made.append(path)
            run(argv)
            os.unlink(raw)
            made.remove(raw)
        return {
            "path": path,
            "sha256": sha256_file(path),
            "size": os.path.getsize(path),
            "uncompressed_size": uncompressed,
            "uncompressed_sha256": raw_sha256,
            "entries": len(entries),
        }
    except BaseException:
        for name in made:
            with contextlib.suppress(OSError):
                os.unlink(name)
        raise


def mtime_from_env(environ: Mapping[str, str]) -> int | None:
    value = environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise CpioError(f"SOURCE_DATE_EPOCH {value!r} is not an integer") from None


STAMP_KEYS = ("sha256", "size", "uncompressed_size", "uncompressed_sha256", "entries")


def inputs_digest(entries: Iterable[Entry]) -> str:
    """Digest of what the archive is made of, without reading file data: every header and inline content, and
    for data read from a file that file's identity (device, inode, size, modification and change time in ns).
    Writing a file changes its times; the change time cannot be set back by a user."""
    digest = hashlib.sha256()
    for ino, entry in enumerate(entries, start=1):
        digest.update(_header(ino, entry))
        if entry.data is not None:
            digest.update(b"data %d\n" % len(entry.data))
            digest.update(entry.data)
        elif entry.path is not None and entry.size:
            st = os.stat(entry.path)
            digest.update(b"file %d %d %d %d %d\n" % (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                                      st.st_ctime_ns))
    return digest.hexdigest()


def file_identity(path: str) -> list[int]:
    """Size, inode, modification and change time (ns) of a file: any rewrite or replacement changes one."""
    st = os.stat(path)
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def stamp_path(dest: str) -> str:
    """Record of what the compressed dest holds, so that an unchanged archive is not compressed again."""
    return os.path.join(os.path.dirname(os.path.abspath(dest)), f".{os.path.basename(dest)}-cpio_pack.json")


def read_stamp(dest: str, compression: str, level: int | None, *, raw_sha256: str | None = None,
               inputs: str | None = None) -> dict[str, Any] | None:
    """The recorded figures of dest when it is the same archive (same uncompressed SHA-256, or same inputs)
    compressed the same way, and dest is still the file written then (same size, inode and times)."""
    stamp = read_state(stamp_path(dest))
    try:
        if (stamp is None or stamp.get("compression") != compression or stamp.get("level") != level
                or stamp.get("dest") != file_identity(dest)
                or (raw_sha256 is not None and stamp.get("uncompressed_sha256") != raw_sha256)
                or (inputs is not None and stamp.get("inputs") != inputs)):
            return None
        return {key: stamp[key] for key in STAMP_KEYS}
    except (OSError, KeyError):
        return None


def write_stamp(dest: str, compression: str, level: int | None, info: Mapping[str, Any], inputs: str) -> None:
    stamp = {"compression": compression, "level": level, "inputs": inputs, "dest": file_identity(dest),
             **{key: info[key] for key in STAMP_KEYS}}
    write_state(stamp_path(dest), stamp)


def _summary(info: Mapping[str, Any]) -> str:
    return "".join(f"{key}: {info[key]}\n" for key in ("entries", "sha256", "size") if key in info)


ENTRY_SPEC = {
    "name": {"type": "str", "required": True},
    "type": {"type": "str", "default": "file", "choices": ["file", "dir", "symlink", "char", "block"]},
    "mode": {"type": "raw"},
    "owner": {"type": "int", "default": 0},
    "group": {"type": "int", "default": 0},
    "src": {"type": "path"},
    "content": {"type": "str"},
    "target": {"type": "str"},
    "major": {"type": "int"},
    "minor": {"type": "int"},
}
ARGUMENT_SPEC = {
    "src": {"type": "path"},
    "entries": {
        "type": "list",
        "elements": "dict",
        "options": ENTRY_SPEC,
        "mutually_exclusive": [["src", "content"]],
        "required_if": [
            ["type", "symlink", ["target"]],
            ["type", "char", ["major", "minor"]],
            ["type", "block", ["major", "minor"]],
        ],
    },
    "dest": {"type": "path"},
    "archives": {
        "type": "list",
        "elements": "dict",
        "options": {
            "src": {"type": "path"},
            "entries": {"type": "list", "elements": "dict"},
            "dest": {"type": "path", "required": True},
            "compression_level": {"type": "int"},
        },
        "required_one_of": [["src", "entries"]],
    },
    "mode": {"type": "raw", "default": "0644"},
    "mtime": {"type": "int"},
    "mtime_policy": {"type": "str", "default": "clamp", "choices": ["clamp", "fixed"]},
    "compression": {"type": "str", "default": "zstd", "choices": ["zstd", "gzip", "xz", "lz4", "none"]},
    "compression_level": {"type": "int"},
    "special_files": {"type": "str", "default": "fail", "choices": ["fail", "skip"]},
}


def resolve(module: AnsibleModule, params: Mapping[str, Any]) -> dict[str, Any]:
    """Step 1: the checked inputs: file mode, mtime clamp, compression, and the archive's entries (params: the
    module's, or those of one of O(archives) merged into them)."""
    dest: str = params["dest"]
    compression: str = params["compression"]
    file_mode = parse_mode(params["mode"], "mode", CpioError)
    clamp = params["mtime"] if params["mtime"] is not None else mtime_from_env(os.environ)
    if compression != "none":
        compress_command(compression, params["compression_level"], "x")  # validate the level early
    if os.path.isdir(dest):
        raise CpioError(f"dest {dest} is a directory")
    dest_dir = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(dest_dir) and not module.check_mode:
        raise CpioError(f"directory {dest_dir} of dest does not exist")
    entries = build_entries(params["src"], params["entries"] or [], clamp, params["special_files"], module.warn)
    if params["mtime_policy"] == "fixed" and clamp is not None:
        for entry in entries:
            entry.mtime = clamp
    return {"dest": dest, "dest_dir": dest_dir, "compression": compression, "level": params["compression_level"],
            "file_mode": file_mode, "entries": entries}


def plan(module: AnsibleModule, inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step 2: the figures of dest when its recorded inputs are unchanged and dest is untouched since (nothing
    read, written or hashed); else the archive packed into a new file next to dest (or the figures of dest,
    when it already holds the same archive compressed the same way); and what dest holds now."""
    dest, compression, level = inputs["dest"], inputs["compression"], inputs["level"]
    digest = inputs_digest(inputs["entries"])
    known = read_stamp(dest, compression, level, inputs=digest) if compression != "none" else None
    if known is not None:
        work: dict[str, Any] = {**known, "path": None}
    else:
        work = pack(
            inputs["entries"],
            module.tmpdir if module.check_mode else inputs["dest_dir"],
            compression,
            level,
            lambda argv: run_checked(module, argv, what=f"compressing {dest}", resolve=True),
            prefix=f".{os.path.basename(dest)}.",
            reuse=lambda raw_sha256: read_stamp(dest, compression, level, raw_sha256=raw_sha256),
        )
    work["inputs"], work["packed"] = digest, known is None
    before: dict[str, Any] = {}
    if os.path.isfile(dest):
        before = {"sha256": work["sha256"] if work["path"] is None else sha256_file(dest),
                  "size": os.path.getsize(dest)}
    return work, before


def apply(module: AnsibleModule, inputs: dict[str, Any], work: dict[str, Any], before: dict[str, Any]) -> bool:
    """Step 3: dest replaced by the new archive (fsync'ed, given its mode, then renamed) unless it holds the
    same bytes, and the stamp recorded last (a chmod changes dest's change time, which the stamp holds); in
    check mode only the answer. Returns whether anything changed."""
    dest, compression, level, file_mode = inputs["dest"], inputs["compression"], inputs["level"], inputs["file_mode"]
    changed = False
    if before.get("sha256") == work["sha256"]:
        if work["path"] is not None:
            os.unlink(work["path"])
        if stat.S_IMODE(os.stat(dest).st_mode) != file_mode:
            changed = True
            if not module.check_mode:
                os.chmod(dest, file_mode)
    else:
        changed = True
        if module.check_mode:
            os.unlink(work["path"])
        else:
            os.chmod(work["path"], file_mode)
            with open(work["path"], "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(work["path"], dest)
    if compression != "none" and not module.check_mode:
        write_stamp(dest, compression, level, work, work["inputs"])
    return changed


def pack_one(module: AnsibleModule, params: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve, plan and apply one archive; its result (fails the module naming dest on an error)."""
    dest: str = params["dest"]
    result: dict[str, Any] = {"changed": False, "dest": dest, "compression": params["compression"]}
    work: dict[str, Any] | None = None
    try:
        inputs = resolve(module, params)
        work, before = plan(module, inputs)
        result.update({key: work[key] for key in ("sha256", "size", "uncompressed_size", "entries")})
        result["recompressed"] = work["path"] is not None
        result["packed"] = work["packed"]
        result["changed"] = apply(module, inputs, work, before)
        work = None
        if module._diff:
            result["diff"] = {
                "before_header": dest,
                "after_header": dest,
                "before": _summary(before),
                "after": _summary(result),
            }
    except CpioError as exc:
        module.fail_json(msg=str(exc), **result)
    except OSError as exc:
        module.fail_json(msg=f"{exc.filename or dest}: {exc.strerror}", **result)
    finally:
        if work is not None and work["path"] is not None and os.path.exists(work["path"]):
            os.unlink(work["path"])
    return result


def archive_params(module: AnsibleModule, archive: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of one of O(archives): its own merged into the module's, its entries checked against the
    same spec as O(entries)."""
    params = {**module.params, "archives": None, "src": archive["src"], "dest": archive["dest"]}
    if archive["compression_level"] is not None:
        params["compression_level"] = archive["compression_level"]
    validated = ArgumentSpecValidator({"entries": ARGUMENT_SPEC["entries"]}).validate(
        {"entries": archive["entries"] or []})
    if validated.error_messages:
        module.fail_json(msg=f"archives: {archive['dest']}: {'; '.join(validated.error_messages)}",
                         dest=archive["dest"])
    params["entries"] = validated.validated_parameters["entries"]
    return params


def run_module() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_one_of=[["src", "entries", "archives"], ["dest", "archives"]],
        mutually_exclusive=[["archives", "src"], ["archives", "entries"], ["archives", "dest"]],
        supports_check_mode=True,
    )
    if module.params["archives"] is None:
        module.exit_json(**pack_one(module, module.params))
    results, diffs = [], []
    for archive in module.params["archives"]:
        one = pack_one(module, archive_params(module, archive))
        if "diff" in one:
            diffs.append(one.pop("diff"))
        results.append(one)
    result: dict[str, Any] = {"changed": any(one["changed"] for one in results), "archives": results}
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
