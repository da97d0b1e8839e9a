"""Unit tests for kubesolo.os.file_tree (the module; the template rendering of its action plugin is exercised by
tests/test_file_tree_action.py through ansible-playbook)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kubesolo.os.plugins.modules import file_tree


def run_module(args: dict[str, Any], capsys: pytest.CaptureFixture[str], check: bool = False,
               diff: bool = False) -> dict[str, Any]:
    with patch_module_args({**args, "_ansible_check_mode": check, "_ansible_diff": diff}), pytest.raises(SystemExit):
        file_tree.main()
    return json.loads(capsys.readouterr().out)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def tree_args(root: Path, source: Path) -> dict[str, Any]:
    return {
        "root": str(root),
        "directories": [{"path": "/etc/kubesolo", "mode": "0700"}, {"path": "tmp", "mode": "1777"}],
        "symlinks": [{"path": "/var/run", "target": "../run"}],
        "files": [
            {"path": "/etc/hostname", "content": "kubesolo\n"},
            {"path": "/sbin/init", "content": "#!/bin/sh\n", "mode": "0755"},
            {"path": "/usr/lib/blob", "src": str(source)},
        ],
    }


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 4096)
    return path


def test_creates_then_is_idempotent(tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "layer"
    args = tree_args(root, source)
    planned = run_module(args, capsys, check=True)
    assert planned["changed"] is True and not root.exists()  # check mode touches nothing
    first = run_module(args, capsys)
    assert first["changed"] is True and first["created"] == planned["created"]
    assert {"/etc/kubesolo", "/tmp", "/var", "/var/run", "/etc/hostname", "/sbin", "/sbin/init",
            "/usr/lib/blob"} <= set(first["created"])
    assert (root / "etc/hostname").read_text() == "kubesolo\n" and mode_of(root / "etc/hostname") == 0o644
    assert mode_of(root / "sbin/init") == 0o755 and mode_of(root / "etc/kubesolo") == 0o700
    assert mode_of(root / "tmp") == 0o1777 and mode_of(root / "var") == 0o755
    assert os.readlink(root / "var/run") == "../run"
    assert (root / "usr/lib/blob").read_bytes() == source.read_bytes()
    inode = (root / "etc/hostname").stat().st_ino
    second = run_module(args, capsys)
    assert second["changed"] is False and second["created"] == second["updated"] == second["removed"] == []
    assert (root / "etc/hostname").stat().st_ino == inode  # unchanged files are not rewritten
    assert second["entries"] == 6


def test_updates_only_what_differs_with_diff(tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "layer"
    args = tree_args(root, source)
    run_module(args, capsys)
    os.chmod(root / "sbin/init", 0o700)
    (root / "etc/hostname").write_text("old\n")
    os.unlink(root / "var/run")
    os.symlink("/elsewhere", root / "var/run")
    blob_inode = (root / "usr/lib/blob").stat().st_ino
    planned = run_module(args, capsys, check=True, diff=True)
    assert sorted(planned["updated"]) == ["/etc/hostname", "/sbin/init", "/var/run"]
    assert (root / "etc/hostname").read_text() == "old\n"
    diffs = {d["after_header"]: d for d in planned["diff"]}
    assert diffs[str(root / "etc/hostname")]["before"] == "old\n"
    assert diffs[str(root / "etc/hostname")]["after"] == "kubesolo\n"
    assert diffs[str(root / "sbin/init")]["after"] == "mode 0755\n"
    result = run_module(args, capsys)
    assert sorted(result["updated"]) == ["/etc/hostname", "/sbin/init", "/var/run"]
    assert (root / "etc/hostname").read_text() == "kubesolo\n" and mode_of(root / "sbin/init") == 0o755
    assert os.readlink(root / "var/run") == "../run"
    assert (root / "usr/lib/blob").stat().st_ino == blob_inode
    source.write_bytes(b"new bytes")
    assert run_module(args, capsys)["updated"] == ["/usr/lib/blob"]
    assert (root / "usr/lib/blob").read_bytes() == b"new bytes"


def test_exclusive_and_absent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "layer"
    stages = root / "lib/init.d"
    stages.mkdir(parents=True)
    (stages / "99-old.sh").write_text("old")
    (stages / "sub").mkdir()
    (root / "etc").mkdir()
    (root / "etc/inittab").write_text("x")
    args = {"root": str(root), "files": [{"path": "/lib/init.d/00-a.sh", "content": "a", "mode": "0755"}],
            "exclusive": ["/lib/init.d"], "absent": ["/etc/inittab", "/not/there"]}
    planned = run_module(args, capsys, check=True)
    assert sorted(planned["removed"]) == ["/etc/inittab", "/lib/init.d/99-old.sh", "/lib/init.d/sub"]
    assert (stages / "99-old.sh").exists()
    result = run_module(args, capsys)
    assert sorted(os.listdir(stages)) == ["00-a.sh"] and not (root / "etc/inittab").exists()
    assert result["removed"] == planned["removed"]
    assert run_module(args, capsys)["changed"] is False


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"files": [{"path": "../escape", "content": "x"}]}, "contains '..'"),
        ({"files": [{"path": "/a", "content": "x", "src": "/etc/hostname"}]}, "exactly one of content, src"),
        ({"files": [{"path": "/a"}]}, "exactly one of content, src"),
        ({"files": [{"path": "/a", "template": "a.j2"}]}, "rendered by the action plugin"),
        ({"files": [{"path": "/a", "content": "x", "mode": "rw"}]}, "not an octal number"),
        ({"files": [{"path": "/a", "content": "x"}], "directories": [{"path": "a"}]}, "declared twice"),
        ({"files": [{"path": "/a", "content": "x"}], "absent": ["/a"]}, "also declared"),
        ({"files": [{"path": "/dir", "content": "x"}]}, "is a directory"),
        ({"files": [{"path": "/a", "src": "/no/such/file"}]}, "does not exist"),
        ({"directories": [{"path": "/file"}]}, "is not a directory"),
    ],
)
def test_bad_input_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: dict[str, Any],
                                 message: str) -> None:
    root = tmp_path / "layer"
    (root / "dir").mkdir(parents=True)
    (root / "file").write_text("x")
    result = run_module({"root": str(root), **extra}, capsys)
    assert result["failed"] is True and message in result["msg"], result["msg"]
    assert sorted(os.listdir(root)) == ["dir", "file"]  # nothing was written before the error
