#!/usr/bin/env python3
"""Builds the KubeSolo TEST DOUBLE (tests/kubesolo-double/main.go) that the test image ships
instead of the real KubeSolo (tests/build-vars.yml: kubesolo_binary_src).

The double parses its arguments with kingpin v2, the parser KubeSolo uses, and checks what KubeSolo
needs from the OS (see main.go). It is built offline from Debian's packages (requirements-apt.txt:
golang-go, golang-gopkg-alecthomas-kingpin.v2-dev) as a static binary, with GOPATH mode
(GO111MODULE=off, GOPATH=/usr/share/gocode). The build is skipped while the source is unchanged.

Usage: python3 tests/kubesolo_double.py [--never-healthy] [DEST]   (default: build/test-double/kubesolo)
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "tests" / "kubesolo-double"
DEFAULT_DEST = REPO / "build" / "test-double" / "kubesolo"
GOPATH = "/usr/share/gocode"

# The line the double prints when it starts (main.go: `say("meminfo %s", meminfo())`), i.e. at the handover:
# /proc/meminfo's MemTotal, MemAvailable and Shmem in kB (KiB). The one parser of it (tests and benchmark).
MEMINFO_RE = re.compile(r"\[kubesolo-test-double\] meminfo MemTotal=(\d+) MemAvailable=(\d+) Shmem=(\d+)")
MB = 1000 * 1000  # the issues state memory limits in MB (10^6 bytes)


class Meminfo(NamedTuple):
    """The double's meminfo line: memory in use (MemTotal - MemAvailable) and Shmem in MB, MemTotal in KiB."""

    in_use_mb: float
    shmem_mb: float
    mem_total_kb: int


def meminfo(log: str) -> Meminfo | None:
    """The double's meminfo line in a serial log, None when it has not printed it (yet)."""
    match = MEMINFO_RE.search(log)
    if match is None:
        return None
    total, available, shmem = (int(value) for value in match.groups())
    return Meminfo((total - available) * 1024 / MB, shmem * 1024 / MB, total)


def source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE.glob("*.go")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def build(dest: Path = DEFAULT_DEST, *, never_healthy: bool = False, mode: str = "serve") -> Path:
    """Build the double into dest (if its source changed); returns dest. Raises RuntimeError with
    the compiler's output when the build fails (for example without Debian's Go packages).
    mode (main.healthMode, see main.go): serve (default); never (never_healthy=True: never serves :6443);
    exit (refuses at once: PID 1 under the exec handover, so the kernel panics)."""
    if never_healthy:
        mode = "never"
    if mode not in ("serve", "never", "exit"):
        raise ValueError(f"unknown test double mode {mode!r}: serve, never or exit")
    dest.parent.mkdir(parents=True, exist_ok=True)
    stamp = dest.with_name(dest.name + ".sha256")
    ldflags = "-s -w" + (f" -X main.healthMode={mode}" if mode != "serve" else "")
    want = source_digest() + (f" {mode}" if mode != "serve" else "")
    if dest.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return dest
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, CGO_ENABLED="0", GOFLAGS="",
               GOCACHE=str(dest.parent / "gocache"))
    tmp = dest.with_name(dest.name + ".tmp")
    result = subprocess.run(["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), "."],
                            cwd=SOURCE, env=env, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"building the KubeSolo test double failed (go build in {SOURCE}):\n"
                           f"{result.stdout}{result.stderr}")
    tmp.replace(dest)
    stamp.write_text(want + "\n")
    return dest


if __name__ == "__main__":
    args = [arg for arg in sys.argv[1:] if arg != "--never-healthy"]
    print(build(Path(args[0]) if args else DEFAULT_DEST, never_healthy="--never-healthy" in sys.argv[1:]))
