"""files/build-output.sh: the stamp / compare / replace steps the build's shell tasks share."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import REPO

SCRIPT = REPO / "files" / "build-output.sh"


def bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f'set -euo pipefail; source "{SCRIPT}"\n{script}'], cwd=cwd,
                          capture_output=True, text=True, timeout=30, check=False)


def test_stamp_makes_an_output_current_until_inputs_or_file_change(tmp_path: Path) -> None:
    assert bash("output_current out stamp in1", tmp_path).returncode == 1  # no output yet
    (tmp_path / "out").write_bytes(b"data")
    assert bash("output_current out stamp in1", tmp_path).returncode == 1  # no stamp yet
    assert bash("output_stamp out stamp in1", tmp_path).returncode == 0
    assert bash("output_current out stamp in1", tmp_path).returncode == 0
    assert bash("output_current out stamp in2", tmp_path).returncode == 1  # other inputs
    os.utime(tmp_path / "out", ns=(0, 5))  # the file was touched (or rewritten) since
    assert bash("output_current out stamp in1", tmp_path).returncode == 1


def test_replace_only_when_the_bytes_differ(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"same")
    inode = out.stat().st_ino
    (tmp_path / "new").write_bytes(b"same")
    result = bash("output_replace new out", tmp_path)
    assert result.stdout == "unchanged\n" and out.stat().st_ino == inode and not (tmp_path / "new").exists()
    (tmp_path / "new").write_bytes(b"other")
    result = bash("output_replace new out", tmp_path)
    assert result.stdout == "written\n" and out.read_bytes() == b"other" and not (tmp_path / "new").exists()
    (tmp_path / "new").write_bytes(b"first")
    assert bash("output_replace new missing", tmp_path).stdout == "written\n"
