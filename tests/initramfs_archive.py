"""Reads an initramfs as the kernel does: several cpio "newc" archives, each compressed on its own (or not),
concatenated, with NUL padding allowed between them (../shared/notes/image-formats.md; Linux
Documentation/driver-api/early-userspace/buffer-format.rst). For the tests only: it checks the
structure strictly and raises ArchiveError naming the offset of anything it does not understand.

Compressions: uncompressed, gzip, xz/lzma, bzip2 (Python's own), zstd (frames found by their headers,
decompressed by the zstd tool of requirements-apt.txt).
"""

from __future__ import annotations

import bz2
import lzma
import stat
import subprocess
import zlib
from dataclasses import dataclass, field

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class ArchiveError(ValueError):
    """The initramfs is not what the kernel would unpack."""


@dataclass(frozen=True)
class Entry:
    name: str
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    size: int
    rdev: tuple[int, int]
    data: bytes = field(repr=False)

    @property
    def kind(self) -> str:
        return {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
                stat.S_IFBLK: "block", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}.get(stat.S_IFMT(self.mode), "?")


@dataclass
class Archive:
    index: int
    offset: int  # where its (compressed) bytes start in the initramfs
    compression: str
    entries: list[Entry]


def _zstd_frame_end(data: bytes, pos: int) -> int:
    """End offset of the zstd frame starting at pos (RFC 8878, section 3.1.1)."""
    try:
        descriptor = data[pos + 4]
        fcs_flag, single_segment, checksum, dict_flag = descriptor >> 6, descriptor >> 5 & 1, descriptor >> 2 & 1, \
            descriptor & 3
        p = pos + 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
        p += (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
        while True:
            header = int.from_bytes(data[p:p + 3], "little")
            if p + 3 > len(data):
                raise IndexError
            last, block_type, size = header & 1, header >> 1 & 3, header >> 3
            if block_type == 3:
                raise ArchiveError(f"zstd frame at {pos}: reserved block type at {p}")
            p += 3 + (1 if block_type == 1 else size)
            if last:
                break
        p += 4 if checksum else 0
    except IndexError:
        raise ArchiveError(f"zstd frame at {pos} is truncated") from None
    if p > len(data):
        raise ArchiveError(f"zstd frame at {pos} is truncated")
    return p


def _decompress_one(data: bytes, pos: int) -> tuple[str, bytes, int]:
    """Decompress the one compressed (or plain) member at pos: (compression, cpio bytes, end offset)."""
    head = data[pos:pos + 6]
    if head == NEWC_MAGIC:
        return "none", b"", pos  # parsed in place
    if head.startswith(ZSTD_MAGIC):
        end = _zstd_frame_end(data, pos)
        result = subprocess.run(["zstd", "-dc", "-q"], input=data[pos:end], capture_output=True, timeout=120,
                                check=False)
        if result.returncode != 0:
            raise ArchiveError(f"zstd frame at {pos}: {result.stderr.decode(errors='replace').strip()}")
        return "zstd", result.stdout, end
    if head.startswith(b"\x1f\x8b"):
        obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
        name = "gzip"
    elif head.startswith(b"\xfd7zXZ\x00"):
        obj, name = lzma.LZMADecompressor(lzma.FORMAT_XZ), "xz"
    elif head.startswith(b"\x5d\x00\x00"):
        obj, name = lzma.LZMADecompressor(lzma.FORMAT_ALONE), "lzma"
    elif head.startswith(b"BZh"):
        obj, name = bz2.BZ2Decompressor(), "bzip2"
    else:
        raise ArchiveError(f"unknown data at offset {pos}: {head!r}")
    try:
        out = obj.decompress(data[pos:])
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise ArchiveError(f"{name} member at {pos}: {exc}") from None
    if not obj.eof:
        raise ArchiveError(f"{name} member at {pos} is truncated")
    return name, out, len(data) - len(obj.unused_data)


def parse_newc(data: bytes, pos: int = 0, where: str = "") -> tuple[list[Entry], int]:
    """Entries of one newc archive starting at pos, and the offset just after its trailer."""
    entries: list[Entry] = []
    while True:
        if data[pos:pos + 6] != NEWC_MAGIC:
            raise ArchiveError(f"{where}no newc header at offset {pos}: {data[pos:pos + 6]!r}")
        try:
            fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise ArchiveError(f"{where}bad newc header at offset {pos}") from None
        _ino, mode, uid, gid, nlink, mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, _check = fields
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode("utf-8", "surrogateescape")
        if namesize < 1 or data[name_start + namesize - 1:name_start + namesize] != b"\0":
            raise ArchiveError(f"{where}entry name at offset {name_start} is not NUL-terminated")
        data_start = (name_start + namesize + 3) & ~3
        if data_start + size > len(data):
            raise ArchiveError(f"{where}entry {name!r} at offset {pos} runs past the end")
        pos = (data_start + size + 3) & ~3
        if name == TRAILER:
            return entries, pos
        body = data[data_start:data_start + size]
        entries.append(Entry(name, mode, uid, gid, nlink, mtime, size, (rmaj, rmin), body))


def read_archives(data: bytes) -> list[Archive]:
    """Every archive of an initramfs image, in the order the kernel unpacks them."""
    archives: list[Archive] = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            pos += 1
            continue
        compression, plain, end = _decompress_one(data, pos)
        if compression == "none":
            entries, used = parse_newc(data[pos:], 0, f"archive {len(archives)} (at {pos}): ")
            end = pos + used
        else:
            entries, used = parse_newc(plain, 0, f"archive {len(archives)} ({compression} at {pos}): ")
            if plain[used:].strip(b"\0"):
                raise ArchiveError(f"archive {len(archives)} ({compression} at {pos}): data after its trailer")
        archives.append(Archive(len(archives), pos, compression, entries))
        pos = end
    if not archives:
        raise ArchiveError("no archive in the initramfs")
    return archives
