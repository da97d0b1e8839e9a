# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Helpers shared by the build modules of kubesolo.os (cpio_pack, deb_packages, elf_closure, file_tree,
kmod_closure, sha256sums): hashing, directories and atomic writes independent of the umask, file modes,
state files, and the one checked command runner.

Each helper exists once here; a module that needs one imports it instead of keeping a copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

CHUNK = 1024 * 1024


class BuildUtilError(Exception):
    """A bad value handed to a helper (a mode that is not octal, ...); the message names it."""


# ---------------------------------------------------------------------------------------------------------
# Hashing
# ---------------------------------------------------------------------------------------------------------
def sha256_file(path: str | bytes) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (hex digest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------------------
def parse_mode(value: Any, what: str, error: type[Exception] = BuildUtilError) -> int:
    """A file mode from an octal string ('0644', '644', '0o644') or an integer already converted by the
    argument spec; 0000-7777. Otherwise raises error (the caller's exception class) naming what and the
    value; a boolean (YAML's unquoted yes/no) is refused."""
    wrong = f"{what}: mode {value!r} is not an octal number: write an octal string such as '0644' (quoted in YAML)"
    if isinstance(value, bool):
        raise error(wrong)
    if isinstance(value, int):
        mode = value
    else:
        text = str(value).strip()
        text = text[2:] if text.lower().startswith("0o") else text
        try:
            mode = int(text, 8)
        except ValueError:
            raise error(wrong) from None
    if not 0 <= mode <= 0o7777:
        raise error(f"{what}: mode {value!r} is outside 0000-7777")
    return mode


# ---------------------------------------------------------------------------------------------------------
# Directories and atomic writes (modes never depend on the build host's umask: reproducible builds)
# ---------------------------------------------------------------------------------------------------------
def makedirs(path: str, mode: int = 0o755) -> None:
    """Create path and its missing parents with mode (default 0755) whatever the umask.
    Existing directories are left as they are. Raises OSError as os.mkdir does."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        os.mkdir(directory)
        os.chmod(directory, mode)


def write_atomic(
    path: str,
    data: bytes | None = None,
    mode: int = 0o644,
    *,
    src: str | None = None,
    mtime_of: str | None = None,
    prefix: str = ".buildutil.",
    mkdir: bool = False,
) -> None:
    """Write data (or a copy of the file src) to path so that path is always the old file or the complete new
    one: a temporary file in the same directory, given mode, renamed over path. With mtime_of, the file takes
    that file's times; with mkdir, missing parent directories are made (0755). A directory at path is replaced.
    On any failure the temporary file is removed and path is left as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    if mkdir:
        makedirs(directory)
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            if src is not None:
                with open(src, "rb") as source:
                    shutil.copyfileobj(source, out, CHUNK)
            elif data is not None:
                out.write(data)
        os.chmod(tmp, mode)
        if mtime_of is not None:
            st = os.stat(mtime_of)
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------------------
# State files: a JSON record of what a step made (a stamp), compared on the next run, replaced atomically
# ---------------------------------------------------------------------------------------------------------
def read_state(path: str) -> dict[str, Any] | None:
    """The JSON object in path; None when it is missing, unreadable or not an object (a step then starts
    afresh: a state file is a cache, never the only copy of anything)."""
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = json.load(handle)
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def state_text(state: Mapping[str, Any], indent: int | None = None) -> str:
    """The canonical text of a state (sorted keys), as write_state writes it."""
    return json.dumps(dict(state), indent=indent, sort_keys=True) + ("\n" if indent is not None else "")


def write_state(path: str, state: Mapping[str, Any], *, indent: int | None = None, mkdir: bool = False) -> bool:
    """Replace the state file at path with state (atomically, 0644); returns False, writing nothing, when it
    already holds exactly that text."""
    text = state_text(state, indent)
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    except (OSError, UnicodeDecodeError):
        pass
    write_atomic(path, text.encode("utf-8"), 0o644, prefix="." + os.path.basename(path) + ".", mkdir=mkdir)
    return True


# ---------------------------------------------------------------------------------------------------------
# The one checked command runner
# ---------------------------------------------------------------------------------------------------------
C_ENV = {"LC_ALL": "C", "LANG": "C"}


def command_failure(argv: list[str], rc: int, out: Any, err: Any, what: str = "") -> str:
    """The message of a failed command, as mkosi's run() logs one: what failed, the exit code, the command
    line (shell-quoted) and what the command printed on stderr (else stdout)."""
    said = err if err else out
    if isinstance(said, bytes):
        said = said.decode("utf-8", "replace")
    line = shlex.join(str(a) for a in argv)
    head = f"{what}: " if what else ""
    return f"{head}command failed with exit code {rc}: {line}" + (f"\n{said.strip()}" if str(said).strip() else "")


def run_checked(
    module: Any,
    argv: list[str],
    *,
    what: str = "",
    cwd: str | None = None,
    environ_update: Mapping[str, str] | None = None,
    binary: bool = False,
    resolve: bool = False,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Run argv through module.run_command (never a shell) in the C locale; return (stdout, stderr).

    On a non-zero exit the module fails (fail_json, which cleanup handlers see as SystemExit) with a message
    naming the command and its stderr (command_failure), and cmd/rc/stdout/stderr in the result. resolve:
    look argv[0] up on the managed host first (a missing tool is an error naming it). binary: bytes in and
    out (module.run_command's binary_data, no decoding)."""
    if resolve:
        argv = [module.get_bin_path(argv[0], required=True), *argv[1:]]
    env = dict(C_ENV, **(environ_update or {}))
    if binary:
        kwargs.update(binary_data=True, encoding=None)
    rc, out, err = module.run_command(argv, cwd=cwd, environ_update=env, **kwargs)
    if rc != 0:
        shown_out = out.decode("utf-8", "replace") if isinstance(out, bytes) else out
        shown_err = err.decode("utf-8", "replace") if isinstance(err, bytes) else err
        module.fail_json(msg=command_failure(argv, rc, out, err, what), cmd=argv, rc=rc,
                         stdout=shown_out if not binary else "", stderr=shown_err)
    return out, err
