"""Unit tests of module_utils/buildutil: the helpers every build module shares."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kubesolo.os.plugins.module_utils import buildutil


def module() -> AnsibleModule:
    with patch_module_args({}):
        return AnsibleModule(argument_spec={})


def test_sha256_file(tmp_path: Path) -> None:
    data = os.urandom(3 * buildutil.CHUNK + 17)
    (tmp_path / "f").write_bytes(data)
    assert buildutil.sha256_file(str(tmp_path / "f")) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("value, mode", [("0644", 0o644), ("755", 0o755), ("0o600", 0o600), (0o4755, 0o4755)])
def test_parse_mode(value: Any, mode: int) -> None:
    assert buildutil.parse_mode(value, "m") == mode


@pytest.mark.parametrize("value, message", [("rw", "is not an octal number"), ("0999", "octal string such as"),
                                            (True, "octal string"), ("17777", "outside 0000-7777")])
def test_parse_mode_refuses_naming_what_and_raises_the_callers_error(value: Any, message: str) -> None:
    class MyError(Exception):
        pass

    with pytest.raises(MyError, match=message) as caught:
        buildutil.parse_mode(value, "file /etc/x", MyError)
    assert str(caught.value).startswith("file /etc/x: ")


def test_write_atomic_mode_ignores_the_umask_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out"
    old = os.umask(0o077)
    try:
        buildutil.write_atomic(str(target), b"new", 0o644, mkdir=True)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o755
    with pytest.raises(FileNotFoundError):
        buildutil.write_atomic(str(target), src=str(tmp_path / "missing"))
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out"]  # no temporary file left behind


def test_write_atomic_copies_a_file_with_its_times(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x" * 10)
    os.utime(src, ns=(1_000_000_000, 2_000_000_000))
    buildutil.write_atomic(str(tmp_path / "dst"), src=str(src), mode=0o755, mtime_of=str(src))
    assert (tmp_path / "dst").read_bytes() == b"x" * 10
    assert (tmp_path / "dst").stat().st_mtime_ns == 2_000_000_000
    assert stat.S_IMODE((tmp_path / "dst").stat().st_mode) == 0o755


def test_state_files_stamp_compare_replace(tmp_path: Path) -> None:
    path = str(tmp_path / "state" / "x.json")
    assert buildutil.read_state(path) is None
    assert buildutil.write_state(path, {"b": [1], "a": 1}, mkdir=True) is True
    assert Path(path).read_text() == '{"a": 1, "b": [1]}'
    assert buildutil.read_state(path) == {"a": 1, "b": [1]}
    mtime = os.stat(path).st_mtime_ns
    assert buildutil.write_state(path, {"a": 1, "b": [1]}) is False  # same text: not rewritten
    assert os.stat(path).st_mtime_ns == mtime
    assert buildutil.write_state(path, {"a": 1}, indent=1) is True
    assert Path(path).read_text() == '{\n "a": 1\n}\n'
    Path(path).write_text("[1, 2]")  # not an object: no state
    assert buildutil.read_state(path) is None
    Path(path).write_text("{broken")
    assert buildutil.read_state(path) is None


def test_run_checked_returns_the_output(tmp_path: Path) -> None:
    out, err = buildutil.run_checked(module(), ["sh", "-c", 'printf "%s" "$LC_ALL"; echo warn >&2'], resolve=True)
    assert out == "C" and err == "warn\n"
    out, _err = buildutil.run_checked(module(), ["printf", "\\377"], binary=True)
    assert out == b"\xff"


def test_run_checked_fails_naming_the_command_and_its_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with patch_module_args({}), pytest.raises(SystemExit):
        buildutil.run_checked(AnsibleModule(argument_spec={}),
                              ["sh", "-c", "echo out; echo 'no such thing' >&2; exit 3", "a b"],
                              what="making the image")
    result = json.loads(capsys.readouterr().out)
    assert result["failed"] is True and result["rc"] == 3
    assert result["msg"] == ("making the image: command failed with exit code 3: "
                             "sh -c 'echo out; echo '\"'\"'no such thing'\"'\"' >&2; exit 3' 'a b'\nno such thing")
    assert result["stderr"] == "no such thing\n" and result["stdout"] == "out\n"
    assert result["cmd"][0] == "sh"
