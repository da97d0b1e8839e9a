"""Unit tests for kubesolo.os.sha256sums."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kubesolo.os.plugins.modules import sha256sums


def run_module(args: dict[str, Any], capsys: pytest.CaptureFixture[str], check: bool = False) -> dict[str, Any]:
    with patch_module_args({**args, "_ansible_check_mode": check}), pytest.raises(SystemExit):
        sha256sums.main()
    return json.loads(capsys.readouterr().out)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_writes_sums_and_reuses_cached_digests(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "output"
    out.mkdir()
    (out / "a.iso").write_bytes(b"iso" * 1000)
    (out / "b.img").write_bytes(b"img" * 1000)
    args = {"path": str(out), "files": ["b.img", "a.iso"], "dest": str(out / "SHA256SUMS"),
            "cache": str(tmp_path / "state/sums.json")}
    planned = run_module(args, capsys, check=True)
    assert planned["changed"] is True and not (out / "SHA256SUMS").exists() and not (tmp_path / "state").exists()
    first = run_module(args, capsys)
    expected = f"{digest(out / 'b.img')}  b.img\n{digest(out / 'a.iso')}  a.iso\n"
    assert (out / "SHA256SUMS").read_text() == expected  # the format of sha256sum, in the order given
    assert first["files"]["a.iso"] == {"sha256": digest(out / "a.iso"), "size": 3000}
    assert sorted(first["hashed"]) == ["a.iso", "b.img"]

    def no_hashing(path: str) -> str:
        raise AssertionError(f"{path} was hashed again although it did not change")

    with monkeypatch.context() as patched:
        patched.setattr(sha256sums, "sha256_file", no_hashing)
        second = run_module(args, capsys)
    assert second["changed"] is False and second["hashed"] == [] and second["files"] == first["files"]
    # A rebuilt artefact is a new file (new inode and mtime): it is hashed again.
    (out / "a.iso.new").write_bytes(b"new iso")
    os.replace(out / "a.iso.new", out / "a.iso")
    third = run_module(args, capsys)
    assert third["changed"] is True and third["hashed"] == ["a.iso"]
    assert f"{digest(out / 'a.iso')}  a.iso\n" in (out / "SHA256SUMS").read_text()


def test_missing_artefact_and_bad_name_fail_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.iso").write_bytes(b"x")
    result = run_module({"path": str(tmp_path), "files": ["a.iso", "b.img"], "dest": str(tmp_path / "S")}, capsys)
    assert result["failed"] is True and "b.img" in result["msg"] and "a.iso" not in result["msg"]
    assert not (tmp_path / "S").exists()
    result = run_module({"path": str(tmp_path), "files": ["../etc/passwd"]}, capsys)
    assert result["failed"] is True and "plain file name" in result["msg"]


def test_file_rewritten_in_place_is_hashed_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same size, same inode, modification time set back: the change time still tells, the digest is fresh."""
    (tmp_path / "kubesolo").write_bytes(b"A" * 4096)
    args = {"path": str(tmp_path), "files": ["kubesolo"], "cache": str(tmp_path / "state/sums.json")}
    first = run_module(args, capsys)
    before = (tmp_path / "kubesolo").stat()
    with open(tmp_path / "kubesolo", "r+b") as handle:
        handle.write(b"B")
    os.utime(tmp_path / "kubesolo", ns=(before.st_atime_ns, before.st_mtime_ns))
    after = (tmp_path / "kubesolo").stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (before.st_size, before.st_ino, before.st_mtime_ns)
    second = run_module(args, capsys)
    assert second["hashed"] == ["kubesolo"]
    fresh = second["files"]["kubesolo"]["sha256"]
    assert fresh == digest(tmp_path / "kubesolo") != first["files"]["kubesolo"]["sha256"]


def test_missing_report_lists_instead_of_failing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "kubesolo").write_bytes(b"binary")
    (tmp_path / "adir").mkdir()
    args = {"path": str(tmp_path), "files": ["kubesolo", "absent", "adir"], "missing": "report",
            "cache": str(tmp_path / "state.json")}
    result = run_module(args, capsys)
    assert result.get("failed") is not True
    assert result["missing"] == ["absent", "adir"]
    assert result["files"] == {"kubesolo": {"sha256": digest(tmp_path / "kubesolo"), "size": 6}}
    # The default still fails, naming what is missing; report with dest is refused (the list would be partial).
    assert "absent" in run_module({**args, "missing": "fail"}, capsys)["msg"]
    refused = run_module({**args, "dest": str(tmp_path / "SUMS")}, capsys)
    assert refused["failed"] is True and "dest" in refused["msg"] and not (tmp_path / "SUMS").exists()
