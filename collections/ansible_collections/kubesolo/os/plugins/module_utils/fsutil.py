# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""File-system helpers shared by the build modules (kubesolo.os.elf_closure, kubesolo.os.kmod_closure).

The image's modes must not depend on the build host's umask (reproducible builds), so directories
are created here with an explicit mode instead of os.makedirs (whose mode the umask masks).
"""

from __future__ import annotations

import os


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
