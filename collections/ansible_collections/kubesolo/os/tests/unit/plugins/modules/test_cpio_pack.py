"""Unit tests of kubesolo.os.cpio_pack: exact bytes, GNU cpio round trips, determinism, the module interface."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kubesolo.os.plugins.modules import cpio_pack as cp

EPOCH = 1700000000  # 0x6553F100
DECOMPRESS = {
    "zstd": ["zstd", "-d", "-c"],
    "gzip": ["gzip", "-d", "-c"],
    "xz": ["xz", "-d", "-c"],
    "lz4": ["lz4", "-d", "-c"],
}


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def pack_bytes(entries: list[cp.Entry], tmp_path: Path) -> bytes:
    out = tmp_path / "out.cpio"
    with out.open("wb") as handle:
        size = cp.write_archive(entries, handle)
    data = out.read_bytes()
    assert len(data) == size
    return data


def parse_newc(data: bytes) -> list[dict[str, Any]]:
    """Minimal independent newc reader (stops at the trailer)."""
    fields = ["ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor"]
    fields += ["rdevmajor", "rdevminor", "namesize", "check"]
    members = []
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        values = {f: int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i, f in enumerate(fields)}
        name_end = pos + 110 + values["namesize"]
        name = data[pos + 110 : name_end - 1]
        assert data[name_end - 1] == 0
        pos = name_end + (-name_end % 4)
        body = data[pos : pos + values["filesize"]]
        pos += values["filesize"]
        pos += -pos % 4
        if name == b"TRAILER!!!":
            assert set(data[pos:]) <= {0}
            return members
        members.append({"name": name, "data": body, **values})


def make_tree(root: Path) -> Path:
    """A small staging tree with the kinds of file a layer holds."""
    (root / "bin").mkdir(parents=True)
    (root / "etc" / "ssl").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "empty-dir").mkdir()
    (root / "bin" / "busybox").write_bytes(b"\x7fELF" + bytes(range(256)) * 5)
    (root / "bin" / "busybox").chmod(0o755)
    (root / "bin" / "su").write_bytes(b"setuid")
    (root / "bin" / "su").chmod(0o4755)
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "etc" / "hostname").write_text("kubesolo\n")
    (root / "etc" / "shadow").write_text("root:*:1::::::\n")
    (root / "etc" / "shadow").chmod(0o600)
    (root / "etc" / "empty").write_bytes(b"")
    (root / "etc" / "ssl" / "certs").symlink_to("/usr/share/ca-certificates")
    (root / "lib" / "big.so").write_bytes((os.urandom(1000) + bytes(3000)) * 800 + b"tail")  # sent with sendfile()
    (root / "a-b").write_text("sorts between a and a/b\n")
    return root


def tree_state(root: Path) -> dict[str, tuple[Any, ...]]:
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            state[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            state[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            state[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def extract(archive: bytes, where: Path) -> Path:
    where.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
        input=archive,
        cwd=where,
        check=True,
        capture_output=True,
    )
    return where


# ---------------------------------------------------------------------------- exact bytes


def hdr(ino: int, mode: int, nlink: int, mtime: int, size: int, namesize: int, rdev: tuple[int, int] = (0, 0)) -> bytes:
    values = [ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], namesize, 0]
    return b"070701" + b"".join(b"%08X" % v for v in values)


TRAILER = (
    b"070701"
    + b"00000000" * 4
    + b"00000001"
    + b"00000000" * 6
    + b"0000000B"
    + b"00000000"
    + b"TRAILER!!!\0"
    + b"\0\0\0"
)


def test_single_file_archive_bytes(tmp_path: Path) -> None:
    entries = cp.build_entries(None, [{"name": "/hello", "content": "hi\n", "mode": "0644"}], clamp=EPOCH)
    expected = (
        b"070701"
        b"00000001"  # ino
        b"000081A4"  # mode: S_IFREG | 0644
        b"00000000"  # uid
        b"00000000"  # gid
        b"00000001"  # nlink
        b"6553F100"  # mtime 1700000000
        b"00000003"  # filesize
        b"00000000"  # devmajor
        b"00000000"  # devminor
        b"00000000"  # rdevmajor
        b"00000000"  # rdevminor
        b"00000006"  # namesize: "hello" + NUL
        b"00000000"  # check
        b"hello\0"  # 110 + 6 = 116: aligned, no padding
        b"hi\n\0"  # 3 data bytes + 1 padding
    )
    assert len(expected) == 120
    expected += TRAILER
    expected += b"\0" * (512 - len(expected))
    assert pack_bytes(entries, tmp_path) == expected


def test_symlink_archive_bytes_with_implicit_parent(tmp_path: Path) -> None:
    entries = cp.build_entries(None, [{"name": "./bin/sh", "type": "symlink", "target": "busybox"}], clamp=1)
    expected = (
        (b"070701" + b"00000001" + b"000041ED" + b"00000000" * 2 + b"00000001" + b"00000001" + b"00000000" * 5)
        + b"00000004"
        + b"00000000"
        + b"bin\0"
        + b"\0\0"
    )  # 110 + 4 = 114 -> 2 padding bytes
    expected += (
        (b"070701" + b"00000002" + b"0000A1FF" + b"00000000" * 2 + b"00000001" + b"00000001" + b"00000007")
        + b"00000000" * 4
        + b"00000007"
        + b"00000000"
        + b"bin/sh\0"
        + b"\0\0\0"
    )  # 117 -> 3 padding bytes
    expected += b"busybox\0"  # symlink target without NUL, padded to 4
    assert len(expected) == 244
    expected += TRAILER + b"\0" * (512 - 244 - len(TRAILER))
    assert pack_bytes(entries, tmp_path) == expected


def test_device_header_and_owner(tmp_path: Path) -> None:
    specs = [
        {"name": "dev/console", "type": "char", "mode": "0600", "major": 5, "minor": 1},
        {"name": "dev/sda", "type": "block", "major": 8, "minor": 0, "owner": 6, "group": 7},
    ]
    members = parse_newc(pack_bytes(cp.build_entries(None, specs, clamp=EPOCH), tmp_path))
    assert [m["name"] for m in members] == [b"dev", b"dev/console", b"dev/sda"]
    console, sda = members[1], members[2]
    assert console["mode"] == stat.S_IFCHR | 0o600
    assert (console["rdevmajor"], console["rdevminor"], console["filesize"]) == (5, 1, 0)
    assert sda["mode"] == stat.S_IFBLK | 0o600
    assert (sda["rdevmajor"], sda["rdevminor"], sda["uid"], sda["gid"]) == (8, 0, 6, 7)
    assert hdr(2, stat.S_IFCHR | 0o600, 1, EPOCH, 0, 12, (5, 1)) in pack_bytes(
        cp.build_entries(None, specs, clamp=EPOCH), tmp_path
    )


# ---------------------------------------------------------------------------- content and order


def test_gnu_cpio_extracts_the_tree(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    data = pack_bytes(cp.build_entries(src, [], clamp=EPOCH), tmp_path)
    out = extract(data, tmp_path / "out")
    assert tree_state(out) == tree_state(src)
    for path in out.rglob("*"):  # GNU cpio restores mtimes of regular files (directories change after)
        if path.is_file() and not path.is_symlink():
            assert path.stat().st_mtime == EPOCH, path


def test_order_ids_and_names(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    members = parse_newc(pack_bytes(cp.build_entries(src, [], clamp=EPOCH), tmp_path))
    names = [m["name"] for m in members]
    assert names == sorted(names)
    assert names[:3] == [b"a-b", b"bin", b"bin/busybox"]
    assert all(not n.startswith((b"/", b"./")) and n != b"." for n in names)
    assert [m["ino"] for m in members] == list(range(1, len(members) + 1))
    assert {(m["uid"], m["gid"], m["nlink"], m["devmajor"], m["devminor"]) for m in members} == {(0, 0, 1, 0, 0)}
    link = next(m for m in members if m["name"] == b"bin/sh")
    assert (link["data"], link["filesize"]) == (b"busybox", 7)
    assert next(m for m in members if m["name"] == b"empty-dir")["mode"] == stat.S_IFDIR | 0o755


def test_entries_override_staging_and_add_parents(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    host_file = tmp_path / "motd"
    host_file.write_text("welcome\n")
    host_file.chmod(0o640)
    specs = [
        {"name": "etc/hostname", "content": "node-1\n", "mode": "0600"},
        {"name": "etc/motd", "src": str(host_file)},
        {"name": "init", "type": "symlink", "target": "sbin/init"},
        {"name": "var/lib/kubesolo", "type": "dir", "mode": "0700"},
        {"name": "bin", "type": "dir", "mode": 0o711},
    ]
    members = {m["name"]: m for m in parse_newc(pack_bytes(cp.build_entries(src, specs, clamp=EPOCH), tmp_path))}
    assert members[b"etc/hostname"]["data"] == b"node-1\n"
    assert members[b"etc/hostname"]["mode"] == stat.S_IFREG | 0o600
    assert members[b"etc/motd"]["data"] == b"welcome\n"
    assert members[b"etc/motd"]["mode"] == stat.S_IFREG | 0o640
    assert members[b"init"]["data"] == b"sbin/init"
    assert members[b"var"]["mode"] == members[b"var/lib"]["mode"] == stat.S_IFDIR | 0o755
    assert members[b"var/lib/kubesolo"]["mode"] == stat.S_IFDIR | 0o700
    assert members[b"bin"]["mode"] == stat.S_IFDIR | 0o711
    assert members[b"bin/busybox"]["data"] == (src / "bin" / "busybox").read_bytes()


def test_entry_src_may_be_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real.bin").write_bytes(b"firmware")
    (tmp_path / "link.bin").symlink_to("real.bin")
    entries = cp.build_entries(None, [{"name": "lib/firmware/x.bin", "src": str(tmp_path / "link.bin")}], clamp=EPOCH)
    members = parse_newc(pack_bytes(entries, tmp_path))
    assert (members[-1]["name"], members[-1]["data"]) == (b"lib/firmware/x.bin", b"firmware")
    assert members[-1]["mode"] == stat.S_IFREG | 0o644


def test_real_mtimes_kept_without_clamp(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    os.utime(src / "f", (1234, 1234))
    members = parse_newc(pack_bytes(cp.build_entries(src, [{"name": "g", "content": ""}]), tmp_path))
    assert [(m["name"], m["mtime"]) for m in members] == [(b"f", 1234), (b"g", 0)]
    members = parse_newc(pack_bytes(cp.build_entries(src, [], clamp=1000), tmp_path))
    assert members[0]["mtime"] == 1000
    members = parse_newc(pack_bytes(cp.build_entries(src, [], clamp=5000), tmp_path))
    assert members[0]["mtime"] == 1234


def test_special_files_skipped_with_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep").write_text("x")
    os.mkfifo(src / "fifo")
    warnings: list[str] = []
    entries = cp.build_entries(src, [], clamp=EPOCH, special_files="skip", warn=warnings.append)
    assert [e.name for e in entries] == [b"keep"]
    assert len(warnings) == 1 and "fifo" in warnings[0]


# ---------------------------------------------------------------------------- determinism


def test_two_packs_identical_and_mtimes_clamped(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    first = pack_bytes(cp.build_entries(src, [], clamp=EPOCH), tmp_path)
    assert pack_bytes(cp.build_entries(src, [], clamp=EPOCH), tmp_path) == first
    for path in src.rglob("*"):
        os.utime(path, follow_symlinks=False)  # now, which is after EPOCH
    assert pack_bytes(cp.build_entries(src, [], clamp=EPOCH), tmp_path) == first


def test_same_tree_built_in_another_order_is_identical(tmp_path: Path) -> None:
    one = make_tree(tmp_path / "one")
    two = tmp_path / "two"
    two.mkdir()
    for path in sorted(one.rglob("*"), key=lambda p: str(p)[::-1]):  # a different creation order
        target = two / path.relative_to(one)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            target.symlink_to(os.readlink(path))
        elif path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            shutil.copy2(path, target)
    for path in one.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            (two / path.relative_to(one)).chmod(stat.S_IMODE(path.stat().st_mode))
    a = pack_bytes(cp.build_entries(one, [], clamp=EPOCH), tmp_path)
    b = pack_bytes(cp.build_entries(two, [], clamp=EPOCH), tmp_path)
    assert a == b


# ---------------------------------------------------------------------------- compression


@pytest.mark.parametrize("compression", ["zstd", "gzip", "xz", "lz4"])
def test_each_compression_round_trips(tmp_path: Path, compression: str) -> None:
    src = make_tree(tmp_path / "src")
    entries = cp.build_entries(src, [], clamp=EPOCH)
    raw = pack_bytes(entries, tmp_path)
    info = cp.pack(entries, str(tmp_path), compression, None, run)
    packed = Path(info["path"]).read_bytes()
    assert info["size"] == len(packed) < len(raw)
    assert info["sha256"] == hashlib.sha256(packed).hexdigest()
    assert info["uncompressed_size"] == len(raw)
    assert info["entries"] == len(entries)
    plain = subprocess.run([*DECOMPRESS[compression], info["path"]], check=True, capture_output=True).stdout
    assert plain == raw
    again = cp.pack(entries, str(tmp_path), compression, None, run)
    assert again["sha256"] == info["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".cpio_pack.")) == sorted(
        {Path(info["path"]).name, Path(again["path"]).name}
    )


def test_kernel_compatible_formats(tmp_path: Path) -> None:
    entries = cp.build_entries(None, [{"name": "f", "content": "x" * 1000}], clamp=EPOCH)
    xz = Path(cp.pack(entries, str(tmp_path), "xz", None, run)["path"]).read_bytes()
    assert xz[:6] == b"\xfd7zXZ\x00" and xz[7] == 0x01  # stream flags: check type 1 = CRC32
    lz4 = Path(cp.pack(entries, str(tmp_path), "lz4", None, run)["path"]).read_bytes()
    assert lz4[:4] == bytes.fromhex("02214c18")  # legacy frame magic 0x184C2102
    gz = Path(cp.pack(entries, str(tmp_path), "gzip", None, run)["path"]).read_bytes()
    assert gz[3] & 0x08 == 0 and gz[4:8] == b"\0\0\0\0"  # no file name, no timestamp (-n)
    zst = Path(cp.pack(entries, str(tmp_path), "zstd", None, run)["path"]).read_bytes()
    assert zst[:4] == bytes.fromhex("28b52ffd")


def test_uncompressed_pack(tmp_path: Path) -> None:
    entries = cp.build_entries(None, [{"name": "f", "content": "x"}], clamp=EPOCH)
    info = cp.pack(entries, str(tmp_path), "none", None, run)
    assert Path(info["path"]).read_bytes() == pack_bytes(entries, tmp_path)
    assert info["size"] == info["uncompressed_size"] == 512


def test_compression_level_checked() -> None:
    assert cp.compress_command("zstd", 9, "/t/a")[0] == ["zstd", "-q", "-T0", "-9", "-f", "/t/a", "-o", "/t/a.zst"]
    assert cp.compress_command("gzip", None, "/t/a") == (["gzip", "-n", "-9", "-q", "-k", "-f", "/t/a"], "/t/a.gz")
    with pytest.raises(cp.CpioError, match="outside 1-19"):
        cp.compress_command("zstd", 22, "/t/a")


def test_failed_compressor_leaves_no_files(tmp_path: Path) -> None:
    entries = cp.build_entries(None, [{"name": "f", "content": "x"}], clamp=EPOCH)

    def fail(argv: list[str]) -> None:
        Path(argv[-1] if argv[0] in ("zstd", "lz4") else argv[-1] + ".gz").write_bytes(b"partial")
        raise cp.CpioError("boom")

    with pytest.raises(cp.CpioError, match="boom"):
        cp.pack(entries, str(tmp_path), "zstd", None, fail)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- errors


def test_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    secret = src / "secret"
    secret.write_text("x")
    secret.chmod(0)
    if os.geteuid() == 0:  # root reads anything: simulate the refusal
        real_open = os.open

        def deny(path: Any, *args: Any, **kwargs: Any) -> int:
            if os.fsencode(path) == os.fsencode(secret):
                raise PermissionError(13, "Permission denied", path)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", deny)
    entries = cp.build_entries(src, [], clamp=EPOCH)
    with pytest.raises(cp.CpioError, match=r"cannot read .*/src/secret: Permission denied"):
        pack_bytes(entries, tmp_path)


def test_missing_entry_src_is_named(tmp_path: Path) -> None:
    with pytest.raises(cp.CpioError, match=r"entry etc/x: cannot read .*/nope: No such file"):
        cp.build_entries(None, [{"name": "etc/x", "src": str(tmp_path / "nope")}])


def test_name_limit(tmp_path: Path) -> None:
    ok = "x" * 4095  # namesize 4096 with the NUL
    assert cp.build_entries(None, [{"name": ok, "content": ""}])[0].name == ok.encode()
    long = "d/" * 2047 + "ff"  # 4096 bytes, namesize 4097
    with pytest.raises(cp.CpioError, match=r"name 'd/d/.*/ff' is 4096 bytes; the newc limit is 4095"):
        cp.build_entries(None, [{"name": long, "content": ""}])


def test_file_over_4_gib(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with (src / "huge").open("wb") as handle:
        handle.truncate(1 << 32)  # sparse
    with pytest.raises(cp.CpioError, match=r"src/huge: 4294967296 bytes is over the newc limit"):
        cp.build_entries(src, [], clamp=EPOCH)
    with pytest.raises(cp.CpioError, match=r"huge: 4294967296 bytes"):
        cp.build_entries(None, [{"name": "h", "src": str(src / "huge")}], clamp=EPOCH)


def test_mtime_outside_32_bits(tmp_path: Path) -> None:
    with pytest.raises(cp.CpioError, match="mtime: 4294967296 does not fit"):
        cp.build_entries(None, [{"name": "f", "content": ""}], clamp=1 << 32)
    with pytest.raises(cp.CpioError, match="mtime: -1 does not fit"):
        cp.build_entries(None, [{"name": "f", "content": ""}], clamp=-1)
    src = tmp_path / "src"
    src.mkdir()
    (src / "future").write_text("x")
    os.utime(src / "future", (1 << 33, 1 << 33))
    with pytest.raises(cp.CpioError, match=r"src/future: modification time 8589934592 does not fit"):
        cp.build_entries(src, [])
    assert cp.build_entries(src, [], clamp=EPOCH)[0].mtime == EPOCH  # clamping fixes it


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_special_files_fail_by_default(tmp_path: Path, kind: str) -> None:
    import socket

    src = tmp_path / "src"
    src.mkdir()
    if kind == "fifo":
        os.mkfifo(src / "thing")
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(src / "thing"))
        sock.close()
    with pytest.raises(cp.CpioError, match=rf"src/thing is a {'FIFO' if kind == 'fifo' else 'socket'}"):
        cp.build_entries(src, [], clamp=EPOCH)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "../etc"}, "contains '..'"),
        ({"name": "/", "type": "dir"}, "empty or the root"),
        ({"name": "f"}, "exactly one of src and content"),
        ({"name": "l", "type": "symlink"}, "needs a target"),
        ({"name": "c", "type": "char", "major": 1}, "needs major and minor"),
        ({"name": "d", "type": "dir", "content": "x"}, "only for type file"),
        ({"name": "f", "content": "", "mode": "0999"}, "octal string"),
        ({"name": "f", "content": "", "mode": "17777"}, "outside 0000-7777"),
        ({"name": "f", "content": "", "owner": -1}, "owner: -1 does not fit"),
    ],
)
def test_bad_entries(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(cp.CpioError, match=message):
        cp.build_entries(None, [spec])


def test_entry_under_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(cp.CpioError, match="parent etc is not a directory"):
        cp.build_entries(None, [{"name": "etc", "content": ""}, {"name": "etc/x", "content": ""}])
    with pytest.raises(cp.CpioError, match="given twice"):
        cp.build_entries(None, [{"name": "x", "content": ""}, {"name": "./x", "content": ""}])


def test_src_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(cp.CpioError, match="No such file"):
        cp.build_entries(tmp_path / "missing", [])
    (tmp_path / "file").write_text("")
    with pytest.raises(cp.CpioError, match="is not a directory"):
        cp.build_entries(tmp_path / "file", [])


def test_source_date_epoch_parsing() -> None:
    assert cp.mtime_from_env({}) is None
    assert cp.mtime_from_env({"SOURCE_DATE_EPOCH": " 42 "}) == 42
    with pytest.raises(cp.CpioError, match="not an integer"):
        cp.mtime_from_env({"SOURCE_DATE_EPOCH": "yesterday"})


# ---------------------------------------------------------------------------- the Ansible module


def run_module(args: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[int, dict[str, Any]]:
    args = {"_ansible_remote_tmp": str(tmp_path / "remote_tmp"), "_ansible_keep_remote_files": False, **args}
    with patch_module_args(args), pytest.raises(SystemExit) as exit_info:
        cp.main()
    return int(exit_info.value.code or 0), json.loads(capsys.readouterr().out)


def run_module_without_io(
    args: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, dict[str, Any]]:
    """run_module with archive writing and hashing forbidden: a no-op run that reaches either fails the test."""

    def no_io(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("an unchanged archive was written or hashed again")

    with monkeypatch.context() as patched:
        patched.setattr(cp, "write_archive", no_io)
        patched.setattr(cp, "sha256_file", no_io)
        return run_module(args, capsys, tmp_path)


@pytest.fixture
def layer(tmp_path: Path) -> dict[str, Any]:
    src = make_tree(tmp_path / "src")
    return {"src": str(src), "dest": str(tmp_path / "layer.cpio.zst"), "mtime": EPOCH, "compression_level": 3}


def test_module_changed_then_idempotent(
    layer: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, first = run_module(layer, capsys, tmp_path)
    assert rc == 0 and first["changed"] is True, first
    dest = Path(layer["dest"])
    data = dest.read_bytes()
    assert first["sha256"] == hashlib.sha256(data).hexdigest()
    assert first["size"] == len(data)
    assert first["compression"] == "zstd" and first["dest"] == layer["dest"]
    assert first["entries"] == len(cp.build_entries(layer["src"], [], EPOCH))
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    plain = subprocess.run(["zstd", "-d", "-c", str(dest)], check=True, capture_output=True).stdout
    assert len(plain) == first["uncompressed_size"]
    inode = dest.stat().st_ino
    for path in Path(layer["src"]).rglob("*"):
        os.utime(path, follow_symlinks=False)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1")  # the mtime option wins over the environment
    rc, second = run_module(layer, capsys, tmp_path)
    assert rc == 0 and second["changed"] is False and second["sha256"] == first["sha256"]
    assert dest.stat().st_ino == inode  # not rewritten
    assert first["recompressed"] is True and second["recompressed"] is False  # same archive: zstd not run again
    rc, third = run_module({**layer, "mode": "0600"}, capsys, tmp_path)
    assert third["changed"] is True and stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".layer.cpio.zst.")]


def test_module_source_date_epoch_from_env(
    layer: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    args = {k: v for k, v in layer.items() if k != "mtime"}
    rc, from_env = run_module({**args, "dest": str(tmp_path / "a")}, capsys, tmp_path)
    rc, from_option = run_module({**layer, "dest": str(tmp_path / "b")}, capsys, tmp_path)
    assert rc == 0 and from_env["sha256"] == from_option["sha256"]


def test_module_check_mode_writes_nothing(
    layer: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, result = run_module({**layer, "_ansible_check_mode": True, "_ansible_diff": True}, capsys, tmp_path)
    assert rc == 0 and result["changed"] is True
    assert not Path(layer["dest"]).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "remote_tmp") == before
    assert result["diff"]["before"] == ""
    assert f"sha256: {result['sha256']}" in result["diff"]["after"]
    rc, real = run_module(layer, capsys, tmp_path)
    assert rc == 0
    assert real["sha256"] == result["sha256"]
    Path(layer["dest"]).write_bytes(b"old")
    rc, result = run_module({**layer, "_ansible_check_mode": True, "_ansible_diff": True}, capsys, tmp_path)
    assert result["changed"] is True and Path(layer["dest"]).read_bytes() == b"old"
    assert result["diff"]["before"] == f"sha256: {hashlib.sha256(b'old').hexdigest()}\nsize: 3\n"
    assert f"entries: {real['entries']}\n" in result["diff"]["after"]


def test_module_entries_only_and_every_compression(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    entries = [
        {"name": "dev/console", "type": "char", "mode": "0600", "major": 5, "minor": 1},
        {"name": "init", "type": "symlink", "target": "sbin/init"},
    ]
    for compression, ext in [("zstd", "zst"), ("gzip", "gz"), ("xz", "xz"), ("lz4", "lz4"), ("none", "")]:
        dest = tmp_path / f"base.cpio.{ext}"
        args = {"entries": entries, "dest": str(dest), "mtime": 0, "compression": compression}
        rc, result = run_module(args, capsys, tmp_path)
        assert rc == 0 and result["changed"] and result["entries"] == 3, result
        data = dest.read_bytes()
        if compression != "none":
            data = subprocess.run([*DECOMPRESS[compression], str(dest)], check=True, capture_output=True).stdout
        assert [m["name"] for m in parse_newc(data)] == [b"dev", b"dev/console", b"init"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"mtime": 1 << 32}, "mtime: 4294967296 does not fit"),
        ({"compression": "gzip", "compression_level": 12}, "outside 1-9 for gzip"),
        ({"mode": "rw"}, "octal string"),
        ({"entries": [{"name": "x", "type": "symlink"}]}, "target"),
        ({"entries": [{"name": "x", "src": "/etc/hostname", "content": "y"}]}, "mutually exclusive"),
    ],
)
def test_module_errors(
    layer: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    extra: dict[str, Any],
    message: str,
) -> None:
    rc, result = run_module({**layer, **extra}, capsys, tmp_path)
    assert rc == 1 and result["failed"] is True
    assert message in result["msg"]
    assert not Path(layer["dest"]).exists()


def test_module_missing_dest_dir(layer: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, result = run_module({**layer, "dest": str(tmp_path / "no" / "x.cpio")}, capsys, tmp_path)
    assert rc == 1 and "does not exist" in result["msg"]
    rc, result = run_module(
        {**layer, "dest": str(tmp_path / "no" / "x.cpio"), "_ansible_check_mode": True}, capsys, tmp_path
    )
    assert rc == 0 and result["changed"] is True
    rc, result = run_module({"dest": str(tmp_path)}, capsys, tmp_path)
    assert rc == 1 and "one of the following is required: src, entries" in result["msg"]


def test_module_fixed_mtime_policy_ignores_when_the_tree_was_written(
    layer: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """With mtime_policy=fixed, files older than mtime get it too: a rebuilt tree packs identically."""
    old = EPOCH - 1000
    for path in Path(layer["src"]).rglob("*"):
        os.utime(path, (old, old), follow_symlinks=False)
    fixed = {**layer, "mtime_policy": "fixed", "compression": "none"}
    rc, first = run_module({**fixed, "dest": str(tmp_path / "a.cpio")}, capsys, tmp_path)
    assert rc == 0
    assert {entry["mtime"] for entry in parse_newc((tmp_path / "a.cpio").read_bytes())} == {EPOCH}
    for path in Path(layer["src"]).rglob("*"):
        os.utime(path, (old - 5, old - 5), follow_symlinks=False)
    rc, second = run_module({**fixed, "dest": str(tmp_path / "b.cpio")}, capsys, tmp_path)
    assert second["sha256"] == first["sha256"]
    run_module({**layer, "compression": "none", "dest": str(tmp_path / "c.cpio")}, capsys, tmp_path)
    assert {entry["mtime"] for entry in parse_newc((tmp_path / "c.cpio").read_bytes())} == {old - 5}


def test_module_recompresses_when_the_record_no_longer_holds(
    layer: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The skip-compression record is trusted only for the same archive, settings and intact dest."""
    rc, first = run_module(layer, capsys, tmp_path)
    assert rc == 0 and first["recompressed"] is True
    dest = Path(layer["dest"])
    good = dest.read_bytes()
    dest.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # damaged dest: same size, other bytes
    rc, repaired = run_module(layer, capsys, tmp_path)
    assert repaired["changed"] is True and repaired["recompressed"] is True and dest.read_bytes() == good
    rc, other_level = run_module({**layer, "compression_level": 5}, capsys, tmp_path)
    assert other_level["recompressed"] is True and other_level["changed"] is True
    (Path(layer["src"]) / "new-file").write_text("x")
    rc, new_content = run_module({**layer, "compression_level": 5}, capsys, tmp_path)
    assert new_content["recompressed"] is True and new_content["changed"] is True
    rc, again = run_module({**layer, "compression_level": 5}, capsys, tmp_path)
    assert again["recompressed"] is False and again["changed"] is False


def test_module_unchanged_inputs_cost_no_io(
    layer: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same inputs (headers and the files' identities) and an untouched dest: the no-op run writes, reads and
    hashes no archive (a layer with a 300 MB system image costs nothing). A file rewritten in place with its
    size and modification time put back still has a new change time: the archive is packed again."""
    rc, first = run_module(layer, capsys, tmp_path)
    assert rc == 0 and first["changed"] is True
    dest = Path(layer["dest"])

    rc, second = run_module_without_io(layer, capsys, tmp_path, monkeypatch)
    assert rc == 0 and second["changed"] is False and second["recompressed"] is False
    assert first["packed"] is True and second["packed"] is False
    assert second["sha256"] == first["sha256"] == hashlib.sha256(dest.read_bytes()).hexdigest()

    big = Path(layer["src"]) / "lib" / "big.so"
    old = big.stat()
    data = bytearray(big.read_bytes())
    data[100] ^= 0xFF
    with open(big, "r+b") as handle:  # in place: same inode and size
        handle.write(bytes(data))
    os.utime(big, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert big.stat().st_ino == old.st_ino and big.stat().st_mtime_ns == old.st_mtime_ns
    rc, third = run_module(layer, capsys, tmp_path)
    assert rc == 0 and third["changed"] is True and third["packed"] is True and third["sha256"] != first["sha256"]
    plain = subprocess.run(["zstd", "-d", "-c", str(dest)], check=True, capture_output=True).stdout
    assert bytes(data) in plain

    # dest touched (same bytes, new times): the record no longer holds, dest is compared by content again.
    os.utime(dest)
    rc, fourth = run_module(layer, capsys, tmp_path)
    assert rc == 0 and fourth["changed"] is False and fourth["sha256"] == third["sha256"]


def test_module_archives_pack_each_as_alone(
    layer: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """archives: several archives in one run, each byte-identical to the archive its own run would write, with
    per-archive entries and level; a changed input of one repacks that one only."""
    other = make_tree(tmp_path / "src2")
    (other / "only-here").write_text("second layer\n")
    extra = [{"name": "init", "type": "symlink", "target": "sbin/init"}]
    alone = tmp_path / "alone"
    alone.mkdir()
    run_module({**layer, "dest": str(alone / "a.cpio.zst")}, capsys, tmp_path)
    run_module({**layer, "src": str(other), "dest": str(alone / "b.cpio.zst"), "entries": extra,
                "compression_level": 9}, capsys, tmp_path)
    archives = [{"src": layer["src"], "dest": str(tmp_path / "a.cpio.zst")},
                {"src": str(other), "dest": str(tmp_path / "b.cpio.zst"), "entries": extra, "compression_level": 9}]
    args = {"archives": archives, "mtime": EPOCH, "compression_level": 3}
    rc, first = run_module(args, capsys, tmp_path)
    assert rc == 0 and first["changed"] is True, first
    assert [one["dest"] for one in first["archives"]] == [a["dest"] for a in archives]
    for name in ("a.cpio.zst", "b.cpio.zst"):
        assert (tmp_path / name).read_bytes() == (alone / name).read_bytes(), name
    assert first["archives"][1]["sha256"] == hashlib.sha256((tmp_path / "b.cpio.zst").read_bytes()).hexdigest()

    rc, second = run_module_without_io(args, capsys, tmp_path, monkeypatch)
    assert rc == 0 and second["changed"] is False
    assert [one["packed"] for one in second["archives"]] == [False, False]
    (other / "only-here").write_text("changed\n")
    rc, third = run_module(args, capsys, tmp_path)
    assert rc == 0 and third["changed"] is True
    assert [one["changed"] for one in third["archives"]] == [False, True]


def test_module_archives_errors_name_the_archive(
    layer: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad_entry = {"archives": [{"dest": str(tmp_path / "x.cpio"), "entries": [{"name": "x", "type": "symlink"}]}]}
    rc, result = run_module(bad_entry, capsys, tmp_path)
    assert rc == 1 and "x.cpio" in result["msg"] and "target" in result["msg"]
    rc, result = run_module({**layer, "archives": [{"src": layer["src"], "dest": layer["dest"]}]}, capsys, tmp_path)
    assert rc == 1 and "mutually exclusive" in result["msg"]
    rc, result = run_module({"archives": [{"dest": str(tmp_path / "y.cpio")}]}, capsys, tmp_path)
    assert rc == 1 and "src, entries" in result["msg"]
    missing = {"archives": [{"src": layer["src"], "dest": str(tmp_path / "ok.cpio.zst")},
                            {"src": layer["src"], "dest": str(tmp_path / "no" / "z.cpio.zst")}]}
    rc, result = run_module(missing, capsys, tmp_path)
    assert rc == 1 and "no" in result["msg"] and "does not exist" in result["msg"]
    assert (tmp_path / "ok.cpio.zst").is_file()  # those before the failing one are written
