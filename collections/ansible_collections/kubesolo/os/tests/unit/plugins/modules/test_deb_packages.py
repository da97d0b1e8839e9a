"""Unit tests for kubesolo.os.deb_packages: parsers on recorded apt output, and real runs against the host's apt."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kubesolo.os.plugins.modules import deb_packages

# --- recorded apt output (Debian 12) ------------------------------------------------------------------------------

# apt-cache depends --recurse --no-recommends ... ca-certificates util-linux (shortened), plus made-up blocks for
# the cases bookworm's closure does not show: a virtual without an alternative, one without providers, and
# dependency types the flags would normally hide.
DEPENDS_OUTPUT = """\
ca-certificates
  Depends: openssl
 |Depends: debconf
  Depends: <debconf-2.0>
    cdebconf
    debconf
util-linux
  PreDepends: libc6
  PreDepends: libsystemd0
    libelogind0
  Depends: util-linux-extra
openssl
  Depends: libc6
  Depends: libssl3
debconf
cdebconf
  Depends: libc6
  Depends: libnewt0.52
  Depends: debconf
libc6
  Depends: libgcc-s1
libsystemd0
  Depends: libc6
libelogind0
  Depends: libc6
  Depends: libcap2
util-linux-extra
  Depends: libc6
libssl3
  Depends: libc6
libnewt0.52
  Depends: libc6
libgcc-s1
  Depends: gcc-12-base
  Depends: libc6
gcc-12-base
<debconf-2.0>
mailer
  Depends: <mail-transport-agent>
    postfix
    exim4-daemon-light
  Depends: <nothing-provides-this>
  Recommends: bsd-mailx
  Suggests: mutt
postfix
  PreDepends: libc6:amd64
exim4-daemon-light
  Depends: libc6
"""

# apt-cache show --no-all-versions busybox-static:amd64 ca-certificates:amd64 (shortened).
SHOW_OUTPUT = """\
Package: busybox-static
Source: busybox (1:1.35.0-4+deb12u1)
Version: 1:1.35.0-4+deb12u1+b1
Architecture: amd64
Description: Standalone rescue shell with tons of builtin utilities
Tag: admin::recovery, interface::shell, role::program, scope::utility,
 use::login, works-with::file
Filename: pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_amd64.deb
Size: 928188
SHA256: 3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744

Package: ca-certificates
Version: 20250419~deb12u2
Architecture: all
Depends: openssl (>= 1.1.1), debconf (>= 0.5) | debconf-2.0
Filename: pool/updates/main/c/ca-certificates/ca-certificates_20250419~deb12u2_all.deb
Size: 160948
SHA256: b9f76b5271a7ac373fd5e7e1b5b826a71ddd702b42a0d104955ecb1acfffc94b

"""


def test_parse_control_records() -> None:
    records = deb_packages.parse_control_records(SHOW_OUTPUT)
    assert [r["Package"] for r in records] == ["busybox-static", "ca-certificates"]
    busybox, certs = records
    assert busybox["Version"] == "1:1.35.0-4+deb12u1+b1"
    assert busybox["Source"] == "busybox (1:1.35.0-4+deb12u1)"  # a ':' in the value is kept
    assert busybox["Tag"].endswith("\nuse::login, works-with::file")  # continuation line
    assert busybox["SHA256"] == "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744"
    assert certs["Architecture"] == "all"
    assert deb_packages.parse_control_records("") == []


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("busybox-static", ("busybox-static", None)),
        ("busybox-static=1:1.35.0-4+deb12u1+b1", ("busybox-static", "1:1.35.0-4+deb12u1+b1")),
        (" iptables = 1.8.9-2 ", ("iptables", "1.8.9-2")),
        ("iptables=", ("iptables", None)),
    ],
)
def test_split_spec(spec: str, expected: tuple[str, str | None]) -> None:
    assert deb_packages.split_spec(spec) == expected


def test_deb_filename_quotes_the_epoch() -> None:
    assert (
        deb_packages.deb_filename("busybox-static", "1:1.35.0-4+deb12u1+b1", "amd64")
        == "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
    )
    assert deb_packages.deb_filename("ca-certificates", "20250419~deb12u2", "all") == (
        "ca-certificates_20250419~deb12u2_all.deb"
    )
    assert deb_packages.qualified("kmod", None, "amd64") == "kmod:amd64"
    assert deb_packages.qualified("kmod", "30+20221128-1", "arm64") == "kmod:arm64=30+20221128-1"


def test_parse_depends() -> None:
    graph = deb_packages.parse_depends(DEPENDS_OUTPUT)
    # An alternatives group: a real package, then a virtual one with its providers.
    assert graph["ca-certificates"] == [
        [("openssl", [])],
        [("debconf", []), ("<debconf-2.0>", ["cdebconf", "debconf"])],
    ]
    # "libelogind0" under a real package is another provider of it, not an alternative.
    assert graph["util-linux"] == [[("libc6", [])], [("libsystemd0", [])], [("util-linux-extra", [])]]
    # Recommends/Suggests are ignored, architecture qualifiers dropped, virtual headers skipped.
    assert graph["mailer"] == [
        [("<mail-transport-agent>", ["postfix", "exim4-daemon-light"])],
        [("<nothing-provides-this>", [])],
    ]
    assert graph["postfix"] == [[("libc6", [])]]
    assert graph["debconf"] == []
    assert "<debconf-2.0>" not in graph


def test_closure_takes_first_alternative_and_first_provider() -> None:
    graph = deb_packages.parse_depends(DEPENDS_OUTPUT)
    closure, unsatisfied = deb_packages.dependency_closure(graph, ["ca-certificates", "util-linux"], set())
    assert closure == {
        "ca-certificates",
        "openssl",
        "libssl3",
        "debconf",
        "libc6",
        "libgcc-s1",
        "gcc-12-base",
        "util-linux",
        "libsystemd0",
        "util-linux-extra",
    }
    assert unsatisfied == []

    closure, unsatisfied = deb_packages.dependency_closure(graph, ["mailer"], set())
    assert closure == {"mailer", "postfix", "libc6", "libgcc-s1", "gcc-12-base"}
    assert unsatisfied == ["mailer: <nothing-provides-this>"]


def test_closure_prefers_an_explicitly_named_provider() -> None:
    graph = deb_packages.parse_depends(DEPENDS_OUTPUT)
    closure = deb_packages.dependency_closure(graph, ["mailer", "exim4-daemon-light"], set())[0]
    assert "exim4-daemon-light" in closure
    assert "postfix" not in closure
    closure = deb_packages.dependency_closure(graph, ["ca-certificates", "cdebconf"], set())[0]
    assert "debconf" in closure  # cdebconf itself depends on debconf
    assert "libnewt0.52" in closure


def test_closure_exclude_prunes_but_keeps_named_packages() -> None:
    graph = deb_packages.parse_depends(DEPENDS_OUTPUT)
    closure = deb_packages.dependency_closure(graph, ["ca-certificates"], {"debconf", "openssl"})[0]
    # debconf excluded does not fall back to the next alternative (cdebconf); openssl's libssl3 is not followed.
    assert closure == {"ca-certificates"}
    closure = deb_packages.dependency_closure(graph, ["ca-certificates", "openssl"], {"openssl", "libgcc-s1"})[0]
    assert closure == {"ca-certificates", "openssl", "libssl3", "libc6", "debconf"}


# --- real runs against the host's apt -----------------------------------------------------------------------------

needs_apt = pytest.mark.skipif(
    not (shutil.which("apt-get") and shutil.which("dpkg-deb") and os.path.isdir("/var/lib/apt/lists")),
    reason="needs apt-get and dpkg-deb with apt lists",
)


def run_module(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """Run the module in-process; return its JSON result (failed results included)."""
    with patch_module_args(args), pytest.raises(SystemExit):
        deb_packages.main()
    return json.loads(capsys.readouterr().out)


def module_args(tmp_path: Path, names: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "names": names,
        "cache_dir": str(tmp_path / "debs"),
        "extract_dir": str(tmp_path / "pkgroot"),
        **extra,
    }


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_packages(result: dict[str, Any], tmp_path: Path) -> dict[str, dict[str, Any]]:
    assert not result.get("failed"), result.get("msg")
    packages = result["packages"]
    assert [p["name"] for p in packages] == sorted(p["name"] for p in packages)
    for pkg in packages:
        assert set(pkg) == {"name", "version", "architecture", "filename", "sha256", "root"}
        assert os.path.isabs(pkg["filename"]) and os.path.isabs(pkg["root"])
        assert pkg["filename"].startswith(str(tmp_path / "debs") + "/")
        assert os.path.isfile(pkg["filename"])
        assert sha256(pkg["filename"]) == pkg["sha256"]
        assert pkg["root"] == str(tmp_path / "pkgroot" / f"{pkg['name']}_{pkg['version']}")
        assert os.path.isdir(pkg["root"])
    assert not list((tmp_path / "pkgroot").glob(".*.tmp-*"))
    return {p["name"]: p for p in packages}


@needs_apt
def test_real_download_extract_and_rerun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # check mode resolves only
    result = run_module({**module_args(tmp_path, ["busybox-static"]), "_ansible_check_mode": True}, capsys)
    assert result["changed"] is True
    assert result["downloaded"] == ["busybox-static"]
    assert not (tmp_path / "debs").exists() and not (tmp_path / "pkgroot").exists()
    planned = result["packages"]

    result = run_module(module_args(tmp_path, ["busybox-static"]), capsys)
    assert result["changed"] is True
    packages = check_packages(result, tmp_path)
    assert list(packages) == ["busybox-static"]
    busybox = packages["busybox-static"]
    assert result["packages"] == planned
    assert os.path.basename(busybox["filename"]).startswith("busybox-static_")
    if ":" in busybox["version"]:
        assert "%3a" in busybox["filename"]
    assert os.path.isfile(os.path.join(busybox["root"], "bin", "busybox"))

    # iptables with its closure, leaving out libc6 and what only libc6 pulls in
    args = module_args(tmp_path, ["iptables", "busybox-static"], recursive=True, exclude=["libc6", "iptables"])
    result = run_module(args, capsys)
    assert result["changed"] is True
    packages = check_packages(result, tmp_path)
    assert {"iptables", "busybox-static", "libxtables12", "libnftnl11", "libmnl0"} <= set(packages)
    assert "libc6" not in packages  # excluded
    assert "libgcc-s1" not in packages  # only reached through libc6
    assert "busybox-static" not in result["downloaded"]  # reused from the cache
    assert os.path.isfile(os.path.join(packages["iptables"]["root"], "usr", "sbin", "xtables-nft-multi"))

    # second run: nothing to do
    result = run_module(args, capsys)
    assert result["changed"] is False
    assert result["downloaded"] == [] and result["extracted"] == []
    assert check_packages(result, tmp_path) == packages

    # a tree without its marker (interrupted run) is extracted again; a corrupt .deb is downloaded again
    marker = tmp_path / "pkgroot" / f".{os.path.basename(packages['libmnl0']['root'])}.extracted"
    marker.unlink()
    (tmp_path / "pkgroot" / f".{os.path.basename(packages['libmnl0']['root'])}.tmp-stale").mkdir()
    Path(packages["libnftnl11"]["filename"]).write_bytes(b"not a deb")
    result = run_module(args, capsys)
    assert result["changed"] is True
    assert result["extracted"] == ["libmnl0"]
    assert result["downloaded"] == ["libnftnl11"]
    check_packages(result, tmp_path)


@needs_apt
def test_pinned_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    planned = run_module({**module_args(tmp_path, ["kmod"]), "_ansible_check_mode": True}, capsys)
    version = planned["packages"][0]["version"]
    result = run_module({**module_args(tmp_path, [f"kmod={version}"]), "_ansible_check_mode": True}, capsys)
    assert result["packages"] == planned["packages"]


@needs_apt
def test_unknown_package_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for recursive in (False, True):
        args = module_args(tmp_path, ["busybox-static", "no-such-package-kubesolo"], recursive=recursive)
        result = run_module(args, capsys)
        assert result["failed"] is True
        assert "no-such-package-kubesolo" in result["msg"]
        assert "busybox-static" not in result["msg"]
        assert "apt-get update" in result["msg"]
    result = run_module(module_args(tmp_path, ["busybox-static=0.0-0"]), capsys)
    assert result["failed"] is True
    assert "busybox-static=0.0-0 (version not available)" in result["msg"]
    assert not (tmp_path / "debs").exists()


def fake_apt_cache(directory: Path) -> Path:
    """Test double: an apt-cache that always fails, to prove that an answer came from the module's cache."""
    directory.mkdir(parents=True, exist_ok=True)
    tool = directory / "apt-cache"
    tool.write_text("#!/bin/sh\necho 'test double: apt-cache must not be asked' >&2\nexit 99\n")
    tool.chmod(0o755)
    return directory


@needs_apt
def test_apt_answers_and_verified_debs_are_cached(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    args = module_args(tmp_path, ["kmod"], recursive=True, exclude=["libc6"])
    first = run_module(args, capsys)
    packages = check_packages(first, tmp_path)
    assert (tmp_path / "debs" / deb_packages.QUERY_CACHE_NAME).is_file()
    verified = json.loads((tmp_path / "debs" / deb_packages.VERIFIED_CACHE_NAME).read_text())
    assert {os.path.basename(p["filename"]) for p in packages.values()} <= set(verified)

    def no_hashing(path: str) -> str:
        raise AssertionError(f"{path} was hashed again although it did not change")

    with monkeypatch.context() as patched:
        patched.setenv("PATH", f"{fake_apt_cache(tmp_path / 'bin')}:{os.environ['PATH']}")
        patched.setattr(deb_packages, "sha256_file", no_hashing)
        second = run_module(args, capsys)
        assert second["changed"] is False and second["packages"] == first["packages"]
        # A changed apt state (apt-get update, a new source or pin) invalidates the answers: apt-cache is asked.
        patched.setattr(deb_packages, "apt_state", lambda: "another state")
        third = run_module(args, capsys)
        assert third["failed"] is True and "test double" in third["msg"]


def test_apt_state_follows_the_lists(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deb.debian.org_Packages").write_text("a")
    before = deb_packages.apt_state((str(lists),))
    assert deb_packages.apt_state((str(lists),)) == before
    (lists / "deb.debian.org_Packages").write_text("ab")
    assert deb_packages.apt_state((str(lists),)) != before


@needs_apt
def test_metapackage_is_replaced_by_its_concrete_dependency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = {**module_args(tmp_path, ["linux-image-amd64"], metapackage_depends="^linux-image-[0-9]"),
            "_ansible_check_mode": True}
    result = run_module(args, capsys)
    assert not result.get("failed"), result.get("msg")
    [kernel] = result["packages"]
    assert kernel["name"].startswith("linux-image-6.") and kernel["name"].endswith("-amd64")
    assert result["metapackages"] == {"linux-image-amd64": kernel["name"]}
    concrete = run_module({**args, "names": [kernel["name"]]}, capsys)
    assert concrete["packages"] == result["packages"] and concrete["metapackages"] == {}
    wrong = run_module({**args, "names": ["busybox-static"]}, capsys)
    assert wrong["failed"] is True and "busybox-static" in wrong["msg"] and "^linux-image-[0-9]" in wrong["msg"]
