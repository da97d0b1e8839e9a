"""The build pipeline: outputs, manifest, idempotence, reproducibility and input errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest
from conftest import BUILD_VARS, REPO, VENV_BIN, ansible_playbook, role_defaults, run, tool_env

pytestmark = pytest.mark.slow


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def test_outputs_exist_and_match_sha256sums(built_image):
    sums = (built_image.output / "SHA256SUMS").read_text().splitlines()
    listed = dict(reversed(line.split("  ", 1)) for line in sums)
    image = next(built_image.output.glob("kubesolo-os-*-amd64.img")).name  # roles/disk_image
    slot = next(built_image.output.glob("kubesolo-os-*-amd64-slot.img")).name  # roles/slot_image
    esp = next(built_image.output.glob("kubesolo-os-*-amd64-esp.img")).name
    assert set(listed) == {built_image.iso.name, image, slot, esp, "vmlinuz", "initramfs"}
    for name, digest in listed.items():
        assert sha256(built_image.output / name) == digest, name


def test_manifest_records_every_input(built_image):
    manifest = json.loads((built_image.output / "manifest.json").read_text())
    assert manifest["image"]["version"] == role_defaults("kubesolo_os")["kubesolo_os_version"]
    assert manifest["kernel"]["package"].startswith("linux-image-")
    assert manifest["kernel"]["release"].endswith("-amd64")
    assert manifest["kubesolo"]["verification"] == "local-source"
    assert len(manifest["kubesolo"]["sha256"]) == 64
    assert manifest["initramfs"]["compression"] == role_defaults("initramfs")["initramfs_compression"]
    assert [layer["name"] for layer in manifest["initramfs"]["layers"]] == role_defaults("initramfs")[
        "initramfs_layers_order"]
    names = {pkg["name"] for pkg in manifest["debian_packages"]}
    assert {"busybox-static", "isolinux", manifest["kernel"]["package"]} <= names
    assert all(pkg["version"] for pkg in manifest["debian_packages"])
    assert manifest["source_date_epoch"] > 0
    assert str(REPO) not in json.dumps(manifest), "the manifest must not leak build-host paths"


def test_modules_layer_holds_compressed_modules_that_depmod_indexes(built_image):
    """Modules are stored as kernel_module_compression says (the unpacked initramfs stays in RAM), and
    modules.dep names exactly those files, so kmod's modprobe finds them."""
    suffix = {"zstd": ".ko.zst", "xz": ".ko.xz", "none": ".ko"}[role_defaults("kernel")["kernel_module_compression"]]
    moddirs = list((REPO / "build" / "test" / "layers" / "modules" / "lib" / "modules").iterdir())
    assert len(moddirs) == 1
    files = {str(path.relative_to(moddirs[0])) for path in moddirs[0].rglob("*.ko*")}
    assert files and all(name.endswith(suffix) for name in files)
    listed = {line.split(":", 1)[0] for line in (moddirs[0] / "modules.dep").read_text().splitlines()}
    assert listed == files


def test_iso_menu_has_every_boot_entry(built_image, tmp_path):
    """The isolinux menu inside the ISO is generated from iso_boot_entries."""
    extracted = tmp_path / "isolinux.cfg"
    subprocess.run(
        ["xorriso", "-indev", str(built_image.iso), "-osirrox", "on",
         "-extract", "/isolinux/isolinux.cfg", str(extracted)],
        capture_output=True, text=True, check=True,
    )
    cfg = extracted.read_text()
    defaults = role_defaults("iso")
    for entry in defaults["iso_boot_entries"]:
        assert f"label {entry['label']}" in cfg
    assert f"default {defaults['iso_default_entry']}" in cfg
    assert f"timeout {defaults['iso_timeout_seconds'] * 10}" in cfg
    append_lines = [line for line in cfg.splitlines() if line.strip().startswith("append ")]
    assert len(append_lines) == len(defaults["iso_boot_entries"])
    for line in append_lines:
        assert "kubesolo.data=LABEL=KSOLODATA" in line
        assert "console=ttyS0,115200n8" in line and "console=tty0" in line


def test_iso_is_hybrid(built_image):
    """The ISO carries an MBR boot signature so it can be written to a USB stick as is."""
    with open(built_image.iso, "rb") as handle:
        mbr = handle.read(512)
    assert mbr[510:512] == b"\x55\xaa"


def test_rebuild_with_nothing_changed_reports_no_changes(built_image):
    rerun = ansible_playbook("build.yml", "-e", f"@{BUILD_VARS}")
    assert rerun.recap.get("changed", -1) == 0, rerun.changed_tasks()


REPRO_UMASK = 0o077  # the test runs under 022; 077 takes group and other bits away from every new file
REPRO_TZ = "Pacific/Kiritimati"  # UTC+14, a different calendar day from UTC for most of it


def test_two_builds_are_byte_identical_across_umask_tz_and_cache(built_image):
    """A second build in another build tree, from the same inputs, under another umask and time zone, with
    an EMPTY download/extraction cache of its own (the Debian packages are downloaded again), gives the
    same bytes: ISO, raw disk image, kernel, initramfs, manifest and checksums."""
    other = REPO / "build" / "test-repro"
    shutil.rmtree(other, ignore_errors=True)
    env = tool_env()
    env["TZ"] = REPRO_TZ
    run([
        "sh", "-c", f'umask {REPRO_UMASK:04o} && exec "$0" "$@"', str(VENV_BIN / "ansible-playbook"),
        "build.yml", "-e", f"@{BUILD_VARS}",
        "-e", f"kubesolo_os_build_dir={other}", "-e", f"kubesolo_os_output_dir={other}/output",
        "-e", f"kubesolo_os_cache_dir={other}/cache",
    ], timeout=2400, env=env)
    assert (other / "cache" / "debs").is_dir() and any((other / "cache" / "debs").iterdir()), \
        "the second build did not download into its own cache"
    names = sorted(path.name for path in built_image.output.iterdir())
    assert sorted(path.name for path in (other / "output").iterdir()) == names
    assert {"vmlinuz", "initramfs", "manifest.json", "SHA256SUMS", built_image.iso.name} <= set(names)
    differ = [name for name in names if sha256(other / "output" / name) != sha256(built_image.output / name)]
    assert differ == [], f"differ between the two builds: {differ}"


def test_missing_kubesolo_source_fails_naming_the_variable(built_image):
    run = ansible_playbook(
        "build.yml", "-e", f"@{BUILD_VARS}", "-e", "kubesolo_binary_src=/nonexistent/kubesolo",
        "--tags", "kubesolo", check=False,
    )
    assert run.result.returncode != 0
    assert "kubesolo_binary_src" in run.result.stdout


def test_root_password_is_stored_hashed_and_never_printed(built_image):
    """The emergency shell's password: only a SHA-512 crypt hash in the image, never in clear."""
    from conftest import ROOT_PASSWORD
    from passlib.hash import sha512_crypt

    assert ROOT_PASSWORD not in built_image.first_run.result.stdout
    shadow = REPO / "build" / "test" / "layers" / "init" / "etc" / "shadow"
    assert oct(shadow.stat().st_mode & 0o777) == "0o600"
    root_hash = next(line for line in shadow.read_text().splitlines() if line.startswith("root:")).split(":")[1]
    assert root_hash.startswith("$6$")
    assert sha512_crypt.verify(ROOT_PASSWORD, root_hash)
    for layer in (REPO / "build" / "test" / "layers").iterdir():
        for path in layer.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 1_000_000:
                assert ROOT_PASSWORD.encode() not in path.read_bytes(), path
