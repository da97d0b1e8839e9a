"""The LARGE stand-in for KubeSolo (issue 14): the Go KubeSolo test double (tests/kubesolo-double, built by
tests/kubesolo_double.py) with random bytes appended. An ELF runs with trailing data, so it behaves exactly
like the double (it prints its meminfo line at start) while being as big, and as incompressible, as a
real-size KubeSolo. Made under build/ at test or benchmark time, never committed; remade only when the
double changes. Used by tests/test_sysimage.py and scripts/bench.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import kubesolo_double

MIB = 1024 * 1024
PADDING = 256 * MIB


def sha256(path: Path) -> str:
    """SHA-256 of a file (hex): what manifest.json and SHA256SUMS record."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sha512(path: Path) -> str:
    """SHA-512 of a file (hex): what the init checks the system image against (manifest.json's
    kubesolo.system_image.sha512)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha512").hexdigest()


def build(dest: Path, padding: int = PADDING) -> Path:
    """dest = the double + `padding` random bytes; returns dest."""
    double = kubesolo_double.build()
    stamp = dest.with_name(dest.name + ".double-sha256")
    want = f"{sha256(double)} {padding}"
    if dest.exists() and stamp.exists() and stamp.read_text().strip() == want \
            and dest.stat().st_size == double.stat().st_size + padding:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as out, open("/dev/urandom", "rb") as random:
        out.write(double.read_bytes())
        left = padding
        while left:
            chunk = random.read(min(left, 16 * MIB))
            out.write(chunk)
            left -= len(chunk)
    tmp.chmod(0o755)
    tmp.replace(dest)
    stamp.write_text(want + "\n")
    return dest
