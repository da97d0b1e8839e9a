# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Unit tests of kubesolo.os.elf_closure, against fake package roots made from host binaries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kubesolo.os.plugins.modules import elf_closure

HOST_LIB_DIRS = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"]
HOST_LS = shutil.which("ls") or "/bin/ls"

pytestmark = pytest.mark.skipif(
    not os.path.exists(HOST_LS) or elf_closure.read_elf(os.path.realpath(HOST_LS)) is None,
    reason="needs a dynamically linked host ls",
)


def host_lib(name: str) -> str:
    for directory in HOST_LIB_DIRS:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return os.path.realpath(path)
    raise LookupError(name)


def run_module(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        elf_closure.main()
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    """Lay out ls and its library closure like extracted Debian packages, one root per library.

    libc and the interpreter go under lib/x86_64-linux-gnu with the lib64 link (as libc6 ships them);
    every other library under usr/lib/x86_64-linux-gnu as <soname>.0.0 with a <soname> link to it.
    """
    made: dict[str, Path] = {}
    program = os.path.realpath(HOST_LS)
    main = tmp_path / "roots" / "coreutils"
    (main / "usr/bin").mkdir(parents=True)
    shutil.copy2(program, main / "usr/bin/ls")
    made["coreutils"] = main

    libc = tmp_path / "roots" / "libc6"
    (libc / "lib/x86_64-linux-gnu").mkdir(parents=True)
    (libc / "lib64").mkdir()
    made["libc6"] = libc

    info = elf_closure.read_elf(program)
    assert info is not None and info.interp
    interp_name = os.path.basename(info.interp)
    shutil.copy2(os.path.realpath(info.interp), libc / "lib/x86_64-linux-gnu" / interp_name)
    os.symlink("/lib/x86_64-linux-gnu/" + interp_name, libc / "lib64" / interp_name)

    queue = list(info.needed)
    seen: set[str] = set()
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        real = host_lib(name)
        lib_info = elf_closure.read_elf(real)
        assert lib_info is not None
        queue.extend(lib_info.needed)
        if name == interp_name:
            continue
        if name.startswith(("libc.so", "libm.so", "libpthread.so", "libdl.so")):
            shutil.copy2(real, libc / "lib/x86_64-linux-gnu" / name)
            continue
        root = tmp_path / "roots" / name
        libdir = root / "usr/lib/x86_64-linux-gnu"
        libdir.mkdir(parents=True)
        shutil.copy2(real, libdir / (name + ".0.0"))
        os.symlink(name + ".0.0", libdir / name)
        made[name] = root
    return made


def base_args(roots: dict[str, Path], tmp_path: Path, files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "roots": [str(path) for path in roots.values()],
        "dest": str(tmp_path / "image"),
        "state_file": str(tmp_path / "state.json"),
        "files": files if files is not None else [{"src": "usr/bin/ls", "links": ["bin/dir"]}],
    }


def test_read_elf_matches_readelf() -> None:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) not installed")
    program = os.path.realpath(HOST_LS)
    out = subprocess.run([readelf, "-d", "-l", "-W", program], capture_output=True, text=True, check=True).stdout
    needed = [line.split("[", 1)[1].split("]", 1)[0] for line in out.splitlines() if "(NEEDED)" in line]
    interp = out.split("[Requesting program interpreter: ", 1)[1].split("]", 1)[0]
    info = elf_closure.read_elf(program)
    assert info is not None
    assert info.needed == needed
    assert info.interp == interp
    assert info.elf_class == 2


def test_read_elf_non_elf(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    assert elf_closure.read_elf(str(script)) is None


def test_closure_installs_program_libraries_and_links(
    roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(base_args(roots, tmp_path), capsys)
    image = tmp_path / "image"
    assert result["changed"] is True
    assert result["files"] == ["/bin/dir", "/usr/bin/ls"]
    assert os.readlink(image / "bin/dir") == "../usr/bin/ls"
    libraries = result["libraries"]
    info = elf_closure.read_elf(os.path.realpath(HOST_LS))
    assert info is not None and info.interp
    assert info.interp in libraries
    assert os.path.islink(image / info.interp.lstrip("/"))
    assert "/lib/x86_64-linux-gnu/libc.so.6" in libraries
    for name in info.needed:
        if name in roots:
            link = image / "usr/lib/x86_64-linux-gnu" / name
            assert os.readlink(link) == name + ".0.0"
            assert (image / "usr/lib/x86_64-linux-gnu" / (name + ".0.0")).is_file()
    assert result["size"] > 0
    assert set(result["roots_used"]) == {str(path) for path in roots.values()}
    assert result["needed"]["/usr/bin/ls"] == sorted(result["needed"]["/usr/bin/ls"])
    assert os.access(image / "usr/bin/ls", os.X_OK)
    state = json.loads((tmp_path / "state.json").read_text())
    assert "usr/bin/ls" in state["paths"]
    if os.geteuid() == 0 and shutil.which("chroot"):
        # The closure is complete if ls runs in the image with no host library (no ld.so.cache needed).
        done = subprocess.run(
            ["chroot", str(image), "/usr/bin/ls", "/usr/bin"], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["ls"]


def test_second_run_is_idempotent(roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = run_module(base_args(roots, tmp_path), capsys)
    second = run_module(base_args(roots, tmp_path), capsys)
    assert first["changed"] is True
    assert second["changed"] is False
    assert second["added"] == second["updated"] == second["removed"] == []
    assert second["files"] == first["files"]
    assert second["libraries"] == first["libraries"]


def test_check_mode_touches_nothing(roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = base_args(roots, tmp_path)
    args["_ansible_check_mode"] = True
    args["_ansible_diff"] = True
    result = run_module(args, capsys)
    assert result["changed"] is True
    assert "/usr/bin/ls" in result["added"]
    assert "/usr/bin/ls" in result["diff"]["after"]
    assert result["diff"]["before"] == ""
    assert not (tmp_path / "image").exists()
    assert not (tmp_path / "state.json").exists()


def test_changed_file_is_replaced(roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_module(base_args(roots, tmp_path), capsys)
    target = tmp_path / "image/usr/bin/ls"
    target.write_bytes(b"garbage")
    result = run_module(base_args(roots, tmp_path), capsys)
    assert result["changed"] is True
    assert result["updated"] == ["/usr/bin/ls"]
    assert target.read_bytes() == (roots["coreutils"] / "usr/bin/ls").read_bytes()


def test_missing_library_fails_naming_program_and_library(
    roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = elf_closure.read_elf(os.path.realpath(HOST_LS))
    assert info is not None
    missing = next((name for name in info.needed if name in roots), None)
    if missing is None:
        pytest.skip("host ls needs no library outside libc")
    del roots[missing]
    args = base_args(roots, tmp_path)
    with patch_module_args(args), pytest.raises(SystemExit):
        elf_closure.main()
    result = json.loads(capsys.readouterr().out)
    assert result["failed"] is True
    assert "usr/bin/ls" in result["msg"]
    assert missing in result["msg"]
    assert not (tmp_path / "image").exists()


def test_missing_file_fails(roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(base_args(roots, tmp_path, [{"src": "usr/bin/nothere"}]), capsys)
    assert result["failed"] is True
    assert "usr/bin/nothere" in result["msg"]


def test_pruning_removes_only_what_is_no_longer_needed(
    roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = roots["coreutils"] / "etc/motd"
    data.parent.mkdir()
    data.write_text("hello\n")
    files = [{"src": "usr/bin/ls"}, {"src": "etc/motd", "dest": "/etc/motd.txt"}]
    first = run_module(base_args(roots, tmp_path, files), capsys)
    image = tmp_path / "image"
    foreign = image / "usr/lib/x86_64-linux-gnu/not-ours.so"
    foreign.write_text("keep me\n")
    assert (image / "etc/motd.txt").read_text() == "hello\n"

    result = run_module(base_args(roots, tmp_path, [{"src": "etc/motd", "dest": "/etc/motd.txt"}]), capsys)
    assert result["changed"] is True
    assert result["files"] == ["/etc/motd.txt"]
    assert result["libraries"] == []
    assert sorted(result["removed"]) == sorted(first["libraries"] + ["/usr/bin/ls"])
    assert not (image / "usr/bin/ls").exists()
    assert not os.path.lexists(image / "lib64")  # emptied directories the module made go too
    assert foreign.exists()  # never touches what it did not install
    assert result["roots_used"] == [str(roots["coreutils"])]
    again = run_module(base_args(roots, tmp_path, [{"src": "etc/motd", "dest": "/etc/motd.txt"}]), capsys)
    assert again["changed"] is False


def test_glob_keeps_symlinks_between_matches(
    roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugins = roots["coreutils"] / "usr/lib/x86_64-linux-gnu/xtables"
    plugins.mkdir(parents=True)
    shutil.copy2(roots["coreutils"] / "usr/bin/ls", plugins / "libxt_NAT.so")
    os.symlink("libxt_NAT.so", plugins / "libxt_MASQUERADE.so")
    (plugins / "README").write_text("not matched\n")
    result = run_module(base_args(roots, tmp_path, [{"src": "usr/lib/x86_64-linux-gnu/xtables/*.so"}]), capsys)
    image = tmp_path / "image/usr/lib/x86_64-linux-gnu/xtables"
    assert result["files"] == [
        "/usr/lib/x86_64-linux-gnu/xtables/libxt_MASQUERADE.so",
        "/usr/lib/x86_64-linux-gnu/xtables/libxt_NAT.so",
    ]
    assert os.readlink(image / "libxt_MASQUERADE.so") == "libxt_NAT.so"
    assert not (image / "README").exists()
    assert "/lib/x86_64-linux-gnu/libc.so.6" in result["libraries"]


def test_glob_rejects_dest(roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(base_args(roots, tmp_path, [{"src": "usr/bin/*", "dest": "bin/"}]), capsys)
    assert result["failed"] is True
    assert "glob" in result["msg"]


def test_missing_root_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = {"roots": [str(tmp_path / "absent")], "dest": str(tmp_path / "image"), "files": [{"src": "x"}]}
    result = run_module(args, capsys)
    assert result["failed"] is True
    assert "absent" in result["msg"]


def test_default_state_file_lives_in_dest(
    roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = base_args(roots, tmp_path)
    del args["state_file"]
    result = run_module(args, capsys)
    assert result["state_file"] == str(tmp_path / "image/.elf_closure.json")
    assert (tmp_path / "image/.elf_closure.json").is_file()


def test_directories_are_0755_whatever_the_umask(
    roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The image's modes must not depend on the build host's umask (reproducible builds)."""
    old = os.umask(0o077)
    try:
        run_module(base_args(roots, tmp_path), capsys)
    finally:
        os.umask(old)
    image = tmp_path / "image"
    directories = [path for path in image.rglob("*") if path.is_dir() and not path.is_symlink()]
    assert directories
    assert {path.relative_to(image).as_posix(): oct(path.stat().st_mode & 0o7777) for path in directories} == {
        path.relative_to(image).as_posix(): "0o755" for path in directories}
