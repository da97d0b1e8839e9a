# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Unit tests of kubesolo.os.kmod_closure.

Most tests use a small hand-made module tree (fake .ko files with a hand-written modules.dep, modules.softdep,
modules.alias and modules.builtin). Two tests run against the real Debian kernel package in the
build cache (or at $KUBESOLO_KERNEL_ROOT): skipped when it is absent, except in CI (see real_kernel_root).
"""

from __future__ import annotations

import glob
import lzma
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kubesolo.os.plugins.modules import kmod_closure

REL = "9.9.9-test"
REPO = Path(__file__).resolve().parents[8]

MODULES = {
    # relative path: content
    "kernel/net/alpha/alpha.ko": b"alpha",
    "kernel/net/beta.ko": b"beta",
    "kernel/lib/lib-crc.ko": b"libcrc",
    "kernel/crypto/crcx_generic.ko": b"crcx generic",
    "kernel/arch/crcx-fast.ko": b"crcx fast",
    "kernel/lib/gamma.ko": b"gamma",
    "kernel/drivers/usb/xhci-pci.ko": b"xhci",
    "kernel/drivers/usb/xhci-hcd.ko": b"xhcihcd",
    "kernel/drivers/net/delta.ko": b"delta",
    "kernel/drivers/net/epsilon.ko": b"epsilon",
}
MODULES_DEP = """\
kernel/net/alpha/alpha.ko: kernel/net/beta.ko kernel/lib/lib-crc.ko
kernel/net/beta.ko:
kernel/lib/lib-crc.ko:
kernel/crypto/crcx_generic.ko:
kernel/arch/crcx-fast.ko:
kernel/lib/gamma.ko:
kernel/drivers/usb/xhci-pci.ko: kernel/drivers/usb/xhci-hcd.ko
kernel/drivers/usb/xhci-hcd.ko:
kernel/drivers/net/delta.ko:
kernel/drivers/net/epsilon.ko:
"""
MODULES_SOFTDEP = """\
# Soft dependencies extracted from modules themselves.
softdep lib_crc pre: crcx post: gamma
softdep delta ignored-without-pre
softdep epsilon pre: platform:nothing-here
"""
MODULES_ALIAS = """\
alias crypto-crcx crcx_generic
alias crcx crcx_generic
alias crcx crcx_fast
alias pci:v00008086d*sv*sd*bc0Csc03i30* xhci_pci
"""
MODULES_BUILTIN = "kernel/lib/crc16.ko\nkernel/fs/ext9/ext9.ko\n"
BUILTIN_MODINFO = b"crc16.license=GPL\0ext9.alias=fs-ext9\0ext9.description=Ninth extended fs\0"


def make_kernel(root: Path, with_index: bool = True) -> Path:
    moddir = root / "lib" / "modules" / REL
    for rel, data in MODULES.items():
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        (moddir / rel).write_bytes(data)
    if with_index:
        (moddir / "modules.dep").write_text(MODULES_DEP)
        (moddir / "modules.softdep").write_text(MODULES_SOFTDEP)
        (moddir / "modules.alias").write_text(MODULES_ALIAS)
    (moddir / "modules.builtin").write_text(MODULES_BUILTIN)
    (moddir / "modules.builtin.modinfo").write_bytes(BUILTIN_MODINFO)
    (moddir / "modules.order").write_text("".join(f"{rel}\n" for rel in MODULES))
    return moddir


class Exit(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result)
        self.result = result


class Fail(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result.get("msg"))
        self.result = result


@pytest.fixture(autouse=True)
def _patch_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    def exit_json(self: basic.AnsibleModule, **kwargs: Any) -> None:
        raise Exit(kwargs)

    def fail_json(self: basic.AnsibleModule, msg: str, **kwargs: Any) -> None:
        raise Fail({"msg": msg, **kwargs})

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)


@pytest.fixture
def depmod_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace depmod (the fake .ko files are not ELF) by a stand-in that writes a modules.dep listing."""
    calls: list[str] = []

    def fake_depmod(module: basic.AnsibleModule, base: str, release: str) -> None:
        calls.append(base)
        moddir = Path(base) / "lib" / "modules" / release
        found = sorted(str(p.relative_to(moddir)) for p in moddir.rglob("*.ko*"))
        (moddir / "modules.dep").write_text("".join(f"{rel}:\n" for rel in found))

    monkeypatch.setattr(kmod_closure, "run_depmod", fake_depmod)
    return calls


def run(check_mode: bool = False, **args: Any) -> dict[str, Any]:
    if check_mode:
        args["_ansible_check_mode"] = True
    with patch_module_args(args), pytest.raises(Exit) as exc:
        kmod_closure.main()
    return exc.value.result


def fail(**args: Any) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(Fail) as exc:
        kmod_closure.main()
    return exc.value.result


def test_normalize_keeps_bracket_ranges() -> None:
    assert kmod_closure.normalize("nls_iso8859-1") == "nls_iso8859_1"
    assert kmod_closure.normalize("a-b[x-z]-c") == "a_b[x-z]_c"
    assert kmod_closure.name_of_path("kernel/x/crc32c-intel.ko.xz") == "crc32c_intel"


def test_closure_over_dep_softdep_and_alias(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    res = run(root=str(tmp_path / "src"), modules=["alpha"], dest=str(tmp_path / "img"))
    assert res["changed"] is True
    assert res["release"] == REL
    # alpha -> beta, lib_crc (modules.dep); lib_crc -> pre: crcx (alias: both), post: gamma (softdep)
    assert res["modules"] == ["alpha", "beta", "crcx_fast", "crcx_generic", "gamma", "lib_crc"]
    assert res["files"] == 6
    assert res["size"] == sum(len(MODULES[rel]) for rel in res["added"])
    destdir = tmp_path / "img" / "lib" / "modules" / REL
    assert (destdir / "kernel/arch/crcx-fast.ko").read_bytes() == b"crcx fast"
    assert oct((destdir / "kernel/lib/gamma.ko").stat().st_mode & 0o777) == "0o644"
    assert (destdir / "modules.builtin").read_text() == MODULES_BUILTIN
    assert (destdir / "modules.builtin.modinfo").read_bytes() == BUILTIN_MODINFO
    # modules.order is reduced to the set, in the kernel's order.
    assert (destdir / "modules.order").read_text().splitlines() == [rel for rel in MODULES if rel in res["added"]]
    assert len(depmod_calls) == 1
    assert "gamma" in res["diff"]["after"] and res["diff"]["before"] == ""


def test_idempotent_and_check_mode(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    args = {"root": str(tmp_path / "src"), "modules": ["alpha"], "dest": str(tmp_path / "img")}
    first = run(check_mode=True, **args)
    assert first["changed"] is True
    assert not (tmp_path / "img").exists()
    assert depmod_calls == []
    run(**args)
    second = run(**args)
    assert second["changed"] is False
    assert second["added"] == second["removed"] == second["updated"] == []
    assert len(depmod_calls) == 1
    assert run(check_mode=True, **args)["changed"] is False


def test_alias_and_dash_underscore(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    res = run(root=str(tmp_path / "src"), modules=["crypto-crcx", "xhci-pci"], dest=str(tmp_path / "img"))
    assert res["modules"] == ["crcx_generic", "xhci_hcd", "xhci_pci"]
    # A modalias pattern resolves as well.
    res = run(
        root=str(tmp_path / "src"), modules=["pci:v00008086d00001E31sv0sd0bc0Csc03i30"], dest=str(tmp_path / "img")
    )
    assert res["modules"] == ["xhci_hcd", "xhci_pci"]


def test_builtin_is_reported_not_an_error(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    res = run(root=str(tmp_path / "src"), modules=["crc16", "fs-ext9", "ext9", "beta"], dest=str(tmp_path / "img"))
    assert res["builtin"] == ["crc16", "ext9", "fs-ext9"]
    assert res["modules"] == ["beta"]


def test_unknown_name_fails_naming_it(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    res = fail(root=str(tmp_path / "src"), modules=["beta", "no_such_mod", "other-missing"], dest=str(tmp_path / "img"))
    assert "no_such_mod" in res["msg"] and "other-missing" in res["msg"]
    assert res["unknown"] == ["no_such_mod", "other-missing"]
    assert not (tmp_path / "img").exists()


def test_optional_may_be_missing_and_is_requested(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    res = run(
        root=str(tmp_path / "src"),
        modules=["beta", "no_such_mod"],
        optional=["no-such-mod", "gamma"],
        dest=str(tmp_path / "img"),
    )
    assert res["missing"] == ["no-such-mod", "no_such_mod"]
    assert res["modules"] == ["beta", "gamma"]


def test_unresolved_softdep_is_skipped(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    res = run(root=str(tmp_path / "src"), modules=["epsilon", "delta"], dest=str(tmp_path / "img"))
    assert res["modules"] == ["delta", "epsilon"]
    assert res["softdeps_unresolved"] == ["platform:nothing-here"]


def test_prunes_files_no_longer_in_set(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    dest = tmp_path / "img"
    destdir = dest / "lib" / "modules" / REL
    run(root=str(tmp_path / "src"), modules=["alpha", "xhci_pci"], dest=str(dest))
    stray = destdir / "kernel" / "stray" / "old.ko"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"old")
    (destdir / "kernel/net/beta.ko").write_bytes(b"tampered")

    res = run(root=str(tmp_path / "src"), modules=["beta"], dest=str(dest), _ansible_diff=True)
    assert res["changed"] is True
    assert res["modules"] == ["beta"]
    assert res["updated"] == ["kernel/net/beta.ko"]
    assert "kernel/stray/old.ko" in res["removed"] and "kernel/drivers/usb/xhci-pci.ko" in res["removed"]
    assert sorted(str(p.relative_to(destdir)) for p in destdir.rglob("*") if p.is_file() or p.is_dir()) == [
        "kernel",
        "kernel/net",
        "kernel/net/beta.ko",
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.dep",
        "modules.order",
    ]
    assert (destdir / "kernel/net/beta.ko").read_bytes() == b"beta"
    assert "xhci_pci" in res["diff"]["before"] and "xhci_pci" not in res["diff"]["after"]
    assert len(depmod_calls) == 2


def test_release_selection(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    (tmp_path / "src" / "lib" / "modules" / "1.0.0-other").mkdir()
    res = fail(root=str(tmp_path / "src"), modules=["beta"], dest=str(tmp_path / "img"))
    assert "1.0.0-other" in res["msg"] and REL in res["msg"]
    assert run(root=str(tmp_path / "src"), release=REL, modules=["beta"], dest=str(tmp_path / "img"))["files"] == 1
    res = fail(root=str(tmp_path / "src"), release="0.0.0", modules=["beta"], dest=str(tmp_path / "img"))
    assert "0.0.0" in res["msg"]


def test_depmod_false_does_not_run_depmod(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    res = run(root=str(tmp_path / "src"), modules=["beta"], dest=str(tmp_path / "img"), depmod=False)
    assert res["changed"] is True
    assert depmod_calls == []
    assert (
        run(root=str(tmp_path / "src"), modules=["beta"], dest=str(tmp_path / "img"), depmod=False)["changed"] is False
    )


@pytest.fixture
def real_kernel_root() -> Path:
    """The extracted Debian kernel package, for the tests that run kmod_closure (and so depmod) on it.

    Looked up when the test runs, not when it is collected: in the full suite the image build (tests/, which
    pytest runs first) has extracted it by then. In CI a missing package is a failure, not a skip, so these
    tests cannot silently stop running."""
    if shutil.which("depmod", path="/usr/sbin:/sbin:/usr/bin") is None:
        pytest.skip("needs kmod's depmod")
    candidates = [os.environ.get("KUBESOLO_KERNEL_ROOT", "")]
    pkgroot = REPO / "build" / "cache" / "pkgroot"
    candidates += sorted(glob.glob(str(pkgroot / "linux-image-*")))
    candidates += sorted(glob.glob(str(pkgroot / "local" / "linux-image-*")))
    for candidate in candidates:
        if candidate and glob.glob(os.path.join(candidate, "lib", "modules", "*", "kernel", "net")):
            return Path(candidate)
    message = "no extracted Debian kernel package in build/cache/pkgroot (nor at $KUBESOLO_KERNEL_ROOT)"
    if os.environ.get("CI"):
        pytest.fail(message + ": the full suite builds the image before the unit tests run")
    pytest.skip(message)


def test_real_debian_kernel_nf_conntrack_pulls_crc32c(tmp_path: Path, real_kernel_root: Path) -> None:
    dest = tmp_path / "img"
    res = run(root=str(real_kernel_root), modules=["nf_conntrack", "crc32"], dest=str(dest))
    # nf_conntrack depends on libcrc32c, whose softdep "pre: crc32c" is the alias of crc32c_generic/_intel.
    assert {"nf_conntrack", "libcrc32c", "crc32c_generic"} <= set(res["modules"])
    assert res["builtin"] == ["crc32"]
    destdir = dest / "lib" / "modules" / res["release"]
    assert (destdir / "modules.dep").is_file() and (destdir / "modules.softdep").is_file()
    assert "softdep libcrc32c pre: crc32c" in (destdir / "modules.softdep").read_text()
    assert run(root=str(real_kernel_root), modules=["nf_conntrack", "crc32"], dest=str(dest))["changed"] is False
    modprobe = shutil.which("modprobe", path="/usr/sbin:/sbin:/usr/bin")
    if modprobe:
        emptycfg = tmp_path / "modprobe.d"
        emptycfg.mkdir()
        out = subprocess.run(
            [modprobe, "-C", str(emptycfg), "-d", str(dest), "-S", res["release"], "--show-depends", "nf_conntrack"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        lines = out.splitlines()
        crc = next(i for i, line in enumerate(lines) if "crc32c_generic.ko" in line)
        lib = next(i for i, line in enumerate(lines) if "libcrc32c.ko" in line)
        assert crc < lib


def test_real_depmod_index_is_0644_whatever_the_umask(tmp_path: Path, real_kernel_root: Path) -> None:
    """depmod's index files do not take the build host's umask (reproducible builds)."""
    old = os.umask(0o077)
    try:
        res = run(root=str(real_kernel_root), modules=["overlay"], dest=str(tmp_path / "img"))
    finally:
        os.umask(old)
    destdir = tmp_path / "img" / "lib" / "modules" / res["release"]
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in destdir.glob("modules.*")}
    assert "modules.dep" in modes and "modules.alias.bin" in modes
    assert modes == dict.fromkeys(modes, "0o644")
    assert oct(destdir.stat().st_mode & 0o777) == "0o755"


def test_index_file_missing_from_source_is_removed(tmp_path: Path, depmod_calls: list[str]) -> None:
    moddir = make_kernel(tmp_path / "src")
    args = {"root": str(tmp_path / "src"), "modules": ["beta"], "dest": str(tmp_path / "img")}
    run(**args)
    copied = tmp_path / "img" / "lib" / "modules" / REL / "modules.builtin.modinfo"
    assert copied.is_file()
    (moddir / "modules.builtin.modinfo").unlink()
    assert run(**args)["changed"] is True
    assert not copied.exists()
    assert run(**args)["changed"] is False


def test_xz_compression_stores_ko_xz_and_is_idempotent(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    args = {"root": str(tmp_path / "src"), "modules": ["alpha"], "dest": str(tmp_path / "img"), "compression": "xz"}
    res = run(**args)
    destdir = tmp_path / "img" / "lib" / "modules" / REL
    assert res["added"] == sorted(f"{rel}.xz" for rel in MODULES if kmod_closure.name_of_path(rel) in res["modules"])
    assert not list(destdir.rglob("*.ko"))
    stored = (destdir / "kernel/net/alpha/alpha.ko.xz").read_bytes()
    assert lzma.decompress(stored) == b"alpha"
    # CRC32 check (what an in-kernel xz decoder accepts); the size reported is the uncompressed one.
    assert stored[6:8] == b"\x00\x01"
    assert res["size"] == sum(len(MODULES[rel[: -len(".xz")]]) for rel in res["added"])
    assert res["stored_size"] == sum((destdir / rel).stat().st_size for rel in res["added"])
    # modules.order keeps the kernel's uncompressed names; depmod matches them to the .ko.xz files.
    assert "kernel/net/alpha/alpha.ko" in (destdir / "modules.order").read_text().splitlines()
    assert "kernel/net/alpha/alpha.ko.xz:" in (destdir / "modules.dep").read_text()
    again = run(**args)
    assert again["changed"] is False and again["updated"] == []
    # Byte-identical output: a second tree from the same source.
    run(**{**args, "dest": str(tmp_path / "img2")})
    assert (tmp_path / "img2" / "lib" / "modules" / REL / "kernel/net/alpha/alpha.ko.xz").read_bytes() == stored


def test_switching_compression_replaces_the_files(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    args = {"root": str(tmp_path / "src"), "modules": ["beta"], "dest": str(tmp_path / "img")}
    run(**args)
    res = run(**args, compression="xz")
    assert res["added"] == ["kernel/net/beta.ko.xz"] and res["removed"] == ["kernel/net/beta.ko"]
    # A stored file whose content differs (once uncompressed) is rewritten.
    destdir = tmp_path / "img" / "lib" / "modules" / REL
    (destdir / "kernel/net/beta.ko.xz").write_bytes(lzma.compress(b"tampered"))
    assert run(**args, compression="xz")["updated"] == ["kernel/net/beta.ko.xz"]
    res = run(**args, compression="none")
    assert res["added"] == ["kernel/net/beta.ko"] and res["removed"] == ["kernel/net/beta.ko.xz"]
    assert (destdir / "kernel/net/beta.ko").read_bytes() == b"beta"


def test_compressed_source_modules_are_decompressed_first(tmp_path: Path, depmod_calls: list[str]) -> None:
    moddir = make_kernel(tmp_path / "src")
    (moddir / "kernel/net/beta.ko.xz").write_bytes(lzma.compress(b"beta", check=lzma.CHECK_CRC64))
    (moddir / "kernel/net/beta.ko").unlink()
    (moddir / "modules.dep").write_text(MODULES_DEP.replace("kernel/net/beta.ko", "kernel/net/beta.ko.xz"))
    res = run(root=str(tmp_path / "src"), modules=["beta"], dest=str(tmp_path / "img"), compression="none")
    assert res["added"] == ["kernel/net/beta.ko"] and res["size"] == 4
    assert (tmp_path / "img" / "lib" / "modules" / REL / "kernel/net/beta.ko").read_bytes() == b"beta"


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd program")
def test_zstd_compression_is_deterministic(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    args = {"root": str(tmp_path / "src"), "modules": ["gamma"], "compression": "zstd"}
    res = run(**args, dest=str(tmp_path / "img"))
    assert res["added"] == ["kernel/lib/gamma.ko.zst"]
    stored = tmp_path / "img" / "lib" / "modules" / REL / "kernel/lib/gamma.ko.zst"
    out = subprocess.run(["zstd", "-d", "-c", "-q", str(stored)], check=True, capture_output=True).stdout
    assert out == b"gamma"
    assert run(**args, dest=str(tmp_path / "img"))["changed"] is False
    run(**args, dest=str(tmp_path / "img2"))
    assert (tmp_path / "img2" / "lib" / "modules" / REL / "kernel/lib/gamma.ko.zst").read_bytes() == stored.read_bytes()


def test_unindexed_compressed_files_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A depmod that cannot read the compression leaves the files out of modules.dep: the task fails."""
    make_kernel(tmp_path / "src")

    def blind_depmod(module: basic.AnsibleModule, base: str, release: str) -> None:
        (Path(base) / "lib" / "modules" / release / "modules.dep").write_text("")

    monkeypatch.setattr(kmod_closure, "run_depmod", blind_depmod)
    res = fail(root=str(tmp_path / "src"), modules=["beta"], dest=str(tmp_path / "img"), compression="xz")
    assert res["unindexed"] == ["kernel/net/beta.ko.xz"]
    assert "xz" in res["msg"]


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd program")
def test_real_debian_kernel_zstd_set_is_indexed_by_depmod(tmp_path: Path, real_kernel_root: Path) -> None:
    """depmod indexes the .ko.zst files, and modprobe resolves the dependencies through them."""
    dest = tmp_path / "img"
    res = run(root=str(real_kernel_root), modules=["overlay", "nf_conntrack"], dest=str(dest), compression="zstd")
    destdir = dest / "lib" / "modules" / res["release"]
    assert not list(destdir.rglob("*.ko")) and len(list(destdir.rglob("*.ko.zst"))) == res["files"]
    assert res["stored_size"] < res["size"] / 2
    dep = (destdir / "modules.dep").read_text()
    assert "kernel/fs/overlayfs/overlay.ko.zst:" in dep
    modprobe = shutil.which("modprobe", path="/usr/sbin:/sbin:/usr/bin")
    if modprobe:
        emptycfg = tmp_path / "modprobe.d"
        emptycfg.mkdir()
        out = subprocess.run(
            [modprobe, "-C", str(emptycfg), "-d", str(dest), "-S", res["release"], "--show-depends", "nf_conntrack"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert "libcrc32c.ko.zst" in out and "nf_conntrack.ko.zst" in out


# ---------------------------------------------------------------------------------------------------------
# The record of the last run: a no-op reuses the result; any changed input does the full work again
# ---------------------------------------------------------------------------------------------------------
def test_unchanged_inputs_reuse_the_recorded_result(
    tmp_path: Path, depmod_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_kernel(tmp_path / "src")
    args = {"root": str(tmp_path / "src"), "modules": ["alpha"], "dest": str(tmp_path / "img")}
    first = run(**args)
    assert first["reused"] is False
    assert (tmp_path / ".img-kmod_closure.json").is_file()
    assert not list((tmp_path / "img").rglob("*kmod_closure*"))  # the record is not part of the layer

    def no_work(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the source index was loaded although no input changed")

    monkeypatch.setattr(kmod_closure, "load_source_index", no_work)
    again = run(**args)
    assert again["reused"] is True and again["changed"] is False
    assert depmod_calls == [str(tmp_path / "img")]
    for key in kmod_closure.STATE_RESULT_KEYS:
        assert again[key] == first[key], key
    assert run(check_mode=True, **args)["reused"] is True


def test_changed_source_module_is_copied_again(tmp_path: Path, depmod_calls: list[str]) -> None:
    moddir = make_kernel(tmp_path / "src")
    args = {"root": str(tmp_path / "src"), "modules": ["alpha"], "dest": str(tmp_path / "img")}
    run(**args)
    source = moddir / "kernel/net/beta.ko"
    mtime = source.stat().st_mtime_ns
    source.write_bytes(b"BETA")  # same size, same mtime: only the change time tells
    os.utime(source, ns=(mtime, mtime))
    res = run(**args)
    assert res["reused"] is False and res["changed"] is True
    assert res["updated"] == ["kernel/net/beta.ko"]
    assert (tmp_path / "img" / "lib" / "modules" / REL / "kernel/net/beta.ko").read_bytes() == b"BETA"
    assert len(depmod_calls) == 2
    assert run(**args)["reused"] is True


def test_changed_module_list_or_option_rebuilds(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    args: dict[str, Any] = {"root": str(tmp_path / "src"), "modules": ["beta"], "dest": str(tmp_path / "img")}
    run(**args)
    res = run(**{**args, "modules": ["beta", "gamma"]})
    assert res["reused"] is False and res["added"] == ["kernel/lib/gamma.ko"]
    res = run(**{**args, "modules": ["beta", "gamma"], "compression": "xz"})
    assert res["reused"] is False and sorted(res["added"]) == ["kernel/lib/gamma.ko.xz", "kernel/net/beta.ko.xz"]
    # A new index file in the source (a kernel package that ships modules.dep after all) is an input too.
    res = run(**{**args, "modules": ["delta"], "compression": "xz"})
    assert res["reused"] is False and res["modules"] == ["delta"]


def test_touched_destination_is_repaired(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    args = {"root": str(tmp_path / "src"), "modules": ["alpha"], "dest": str(tmp_path / "img")}
    run(**args)
    destdir = tmp_path / "img" / "lib" / "modules" / REL
    (destdir / "kernel/lib/gamma.ko").unlink()
    res = run(**args)
    assert res["reused"] is False and res["added"] == ["kernel/lib/gamma.ko"]
    (destdir / "modules.dep").write_text("damaged\n")
    res = run(**args)
    assert res["reused"] is False and res["changed"] is True
    assert "kernel/lib/gamma.ko" in (destdir / "modules.dep").read_text()
    (destdir / "kernel" / "extra").mkdir()
    res = run(**args)
    assert res["reused"] is False and res["changed"] is True and not (destdir / "kernel" / "extra").exists()
    # A damaged record is only a cache: the full work is done again.
    (tmp_path / ".img-kmod_closure.json").write_text("{not json")
    res = run(**args)
    assert res["reused"] is False and res["changed"] is False
    assert run(**args)["reused"] is True


def test_remove_other_releases(tmp_path: Path, depmod_calls: list[str]) -> None:
    make_kernel(tmp_path / "src")
    old = tmp_path / "img" / "lib" / "modules" / "1.0.0-old"
    (old / "kernel").mkdir(parents=True)
    (old / "kernel" / "x.ko").write_bytes(b"x")
    args = {"root": str(tmp_path / "src"), "modules": ["beta"], "dest": str(tmp_path / "img")}
    assert run(**args)["removed_releases"] == []  # kept unless asked
    assert old.is_dir()
    res = run(check_mode=True, remove_other_releases=True, **args)
    assert res["changed"] is True and res["removed_releases"] == ["1.0.0-old"] and old.is_dir()
    res = run(remove_other_releases=True, **args)
    assert res["changed"] is True and res["removed_releases"] == ["1.0.0-old"] and not old.exists()
    assert run(remove_other_releases=True, **args)["reused"] is True
    # A tree of another release appearing later is an input change: removed by the next run.
    (old.parent / "2.0.0-later").mkdir()
    res = run(remove_other_releases=True, **args)
    assert res["reused"] is False and res["removed_releases"] == ["2.0.0-later"]
    assert sorted(p.name for p in old.parent.iterdir()) == [REL]
