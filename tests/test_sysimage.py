"""The KubeSolo system image (issue 14): a real-size binary builds with the default sizes, stays out of RAM
when booting from a medium, and a medium whose system image is missing or corrupted stops the boot.

The large stand-in is the Go KubeSolo test double (tests/kubesolo-double) with 256 MiB of random bytes
appended (an ELF runs with trailing data): incompressible, like the issue's. It is made under build/large at
test time, never committed, and built into its own image there once per session (large_image)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import kubesolo_double
import large_double
import pytest
from conftest import BUILD_VARS, REPO, BuiltImage, ansible_playbook, ensure_ssh_key, role_defaults, vm_pool
from contract import HANDOVER_MARKER
from guest import assert_kubesolo_alive
from loopdev import LoopDevices

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
LARGE_DIR = REPO / "build" / "large"
PADDING = large_double.PADDING
VM_MEMORY_MIB = 512
# MemTotal - MemAvailable at handover when booted from a medium (issue 14), in MB (10^6 bytes).
MEMORY_LIMIT_MB = 100
OK90 = re.escape(HANDOVER_MARKER)
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
SYSIMAGE = role_defaults("kubesolo")["kubesolo_sysimage_media_path"]


def large_stand_in() -> Path:
    """The double padded with 256 MiB of random bytes (tests/large_double.py)."""
    return large_double.build(LARGE_DIR / "kubesolo", PADDING)


def large_build(*extra: str):
    return ansible_playbook("build.yml", "-e", f"@{BUILD_VARS}",
                            "-e", f"kubesolo_binary_src={large_stand_in()}",
                            "-e", f"kubesolo_os_build_dir={LARGE_DIR}",
                            "-e", f"kubesolo_os_output_dir={LARGE_DIR}/output", *extra)


@pytest.fixture(scope="session")
def large_image() -> BuiltImage:
    """The image built with the 256 MiB stand-in and every size at its default."""
    ensure_ssh_key()
    first = large_build()
    return BuiltImage(output=LARGE_DIR / "output", first_run=first)


def raw_image(image: BuiltImage) -> Path:
    return next(image.output.glob("kubesolo-os-*-amd64.img"))


def partitions(image: Path) -> list[dict]:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True, timeout=60).stdout)
    return table["partitiontable"]["partitions"]


def fat_read(image: Path, path: str) -> bytes:
    return subprocess.run(["mtype", "-i", f"{image}@@{MIB}", f"::{path}"], capture_output=True, check=True,
                          env=MTOOLS_ENV, timeout=120).stdout


def iso_extract(iso: Path, path: str, dest: Path) -> Path:
    subprocess.run(["xorriso", "-indev", str(iso), "-osirrox", "on", "-extract", path, str(dest)],
                   capture_output=True, check=True, timeout=300)
    return dest


@pytest.fixture
def medium(request):
    """Boots a medium under SeaBIOS (iso= as a CD, usb_disk= as a USB stick) in a 512 MiB VM."""
    start, guests = vm_pool(request)

    def boot(name: str, **spec_args):
        return start(name, ssh=False, memory_mb=VM_MEMORY_MIB, append="", **spec_args)

    yield boot
    for vm in guests:
        vm.stop()


def memory_at_handover(log: str) -> tuple[float, float]:
    """(MemTotal - MemAvailable, Shmem) in MB from the double's meminfo line (kubesolo_double.meminfo)."""
    memory = kubesolo_double.meminfo(log)
    assert memory, "the KubeSolo test double printed no meminfo line"
    return memory.in_use_mb, memory.shmem_mb


def assert_booted_from_the_medium(vm, what: str) -> None:
    seconds = vm.wait_booted(timeout=600)
    log = vm.wait(re.escape("[kubesolo-test-double] running"), kubesolo_double.MEMINFO_RE.pattern, timeout=180)
    log = vm.log
    assert re.search(r"\[OK\] KubeSolo system image /run/kubesolo-os/medium/boot/kubesolo\.sqfs verified", log), \
        "the system image was not mounted from the medium"
    assert "[kubesolo-test-double] refused" not in log
    in_use, shmem = memory_at_handover(log)
    print(f"{what}: stage-90 marker after {seconds:.1f}s; MemTotal - MemAvailable at handover {in_use:.1f} MB, "
          f"Shmem {shmem:.1f} MB ({VM_MEMORY_MIB} MiB VM)")
    assert in_use <= MEMORY_LIMIT_MB, f"{in_use:.1f} MB in use at handover (limit {MEMORY_LIMIT_MB} MB)"
    assert_kubesolo_alive(vm)


# --------------------------------------------------------------------------------------------
# Build with the 256 MiB stand-in and the default sizes
# --------------------------------------------------------------------------------------------

def test_large_binary_builds_with_default_sizes(large_image, tmp_path):
    defaults = role_defaults("disk_image")
    manifest = json.loads((large_image.output / "manifest.json").read_text())
    system = manifest["kubesolo"]["system_image"]
    assert system["size"] > PADDING, system
    # The raw image: the boot partition grew to hold the system image, with the documented margin.
    image = raw_image(large_image)
    boot, data = partitions(image)
    boot_mib = boot["size"] // 2048
    assert boot_mib > defaults["disk_image_boot_size_mib"]
    assert boot_mib % defaults["disk_image_boot_size_step_mib"] == 0
    assert boot_mib * MIB >= system["size"] * (100 + defaults["disk_image_boot_margin_percent"]) / 100
    assert data["start"] == 2048 + boot["size"] and data["size"] == defaults["disk_image_data_size_mib"] * 2048
    # The system image is on both media, byte for byte the one the manifest (and the init) names.
    on_stick = tmp_path / "stick.sqfs"
    subprocess.run(["mcopy", "-n", "-i", f"{image}@@{MIB}", f"::{SYSIMAGE}", str(on_stick)], check=True,
                   env=MTOOLS_ENV, timeout=300)
    assert large_double.sha256(on_stick) == system["sha256"]
    assert large_double.sha512(on_stick) == system["sha512"]
    on_stick.unlink()
    from_iso = iso_extract(large_image.iso, SYSIMAGE, tmp_path / "iso.sqfs")
    assert large_double.sha256(from_iso) == system["sha256"] and large_double.sha512(from_iso) == system["sha512"]
    # The media's initramfs does not carry the binary; the direct-boot one does (in its kubesolo layer).
    media_initramfs = fat_read(image, "/boot/initramfs")
    assert len(media_initramfs) < 64 * MIB
    assert large_image.initramfs.stat().st_size > PADDING
    layers = {layer["name"] for layer in manifest["initramfs"]["layers"]}
    assert "kubesolo" in layers and manifest["initramfs"]["media_excluded_layers"] == ["kubesolo"]
    print(f"large build: {large_image.first_run.seconds:.0f}s; system image {system['size']} bytes; "
          f"boot partition {boot_mib} MiB; raw image {image.stat().st_size // MIB} MiB; "
          f"ISO {large_image.iso.stat().st_size // MIB} MiB; media initramfs {len(media_initramfs) / MIB:.1f} MiB")


def task_output(run, task: str, item: str | None = None) -> str:
    """What `ansible-playbook -v` printed for a task (for one loop item)."""
    section = run.result.stdout.split(f"TASK [{task}")[1].split("\nTASK [")[0]
    return section if item is None else section.split(f"(item={item})")[1].split("(item=")[0]


def task_result(section: str) -> dict:
    """The result dict `ansible-playbook -v` printed for a task (the JSON after `=> `)."""
    result, _end = json.JSONDecoder().raw_decode(section[section.index("=> ") + 3:])
    return result


def test_large_rebuild_changes_nothing(large_image):
    """A no-op rebuild reads none of the 256 MiB: no hashing of the source, no staging copy or compare, no new
    image or digest of it, no rewrite of the kubesolo layer's archive (each is keyed on file identities)."""
    again = large_build("-v")
    assert again.recap.get("changed", -1) == 0, again.changed_tasks()
    assert '"hashed": []' in task_output(again, "kubesolo : Look at and checksum the local KubeSolo source")
    assert '"stdout": "unchanged ' in task_output(again, "kubesolo : Make the system image")
    # Every layer is packed by one cpio_pack run (archives): none, the kubesolo layer included, was packed again.
    packed = task_result(task_output(again, "initramfs : Pack each layer"))["archives"]
    assert any(archive["dest"].endswith("/kubesolo.cpio.zst") for archive in packed), packed
    assert [archive["packed"] for archive in packed] == [False] * len(packed), packed
    print(f"no-op rebuild with the 256 MiB stand-in: {again.seconds:.1f}s")


# --------------------------------------------------------------------------------------------
# Boots in a 512 MiB VM: the ISO as a CD, the raw image as a USB stick
# --------------------------------------------------------------------------------------------

def test_large_iso_boots_as_cd_in_512_mib(large_image, medium):
    vm = medium("iso-cd", iso=large_image.iso)
    assert_booted_from_the_medium(vm, "ISO as CD")


def test_large_raw_image_boots_as_usb_stick_in_512_mib(large_image, medium, tmp_path):
    stick = tmp_path / "stick.img"
    shutil.copyfile(raw_image(large_image), stick)
    vm = medium("usb-stick", usb_disk=stick)
    assert_booted_from_the_medium(vm, "raw image as USB stick")


# --------------------------------------------------------------------------------------------
# A medium whose system image is missing or corrupted (the small test image: only stage 20 matters)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["missing", "corrupted"])
def test_damaged_system_image_stops_the_boot_with_an_error(built_image, medium, tmp_path, damage):
    stick = tmp_path / "stick.img"
    shutil.copyfile(raw_image(built_image), stick)
    target = f"{stick}@@{MIB}"
    if damage == "missing":
        subprocess.run(["mdel", "-i", target, f"::{SYSIMAGE}"], check=True, env=MTOOLS_ENV, timeout=60)
        expected = (rf"\[ERROR\] KubeSolo system image {re.escape(SYSIMAGE)} is missing on the boot medium "
                    r"LABEL=KSOLOBOOT")
    else:
        data = bytearray(fat_read(stick, SYSIMAGE))
        data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
        changed = tmp_path / "kubesolo.sqfs"
        changed.write_bytes(bytes(data))
        subprocess.run(["mcopy", "-o", "-i", target, str(changed), f"::{SYSIMAGE}"], check=True, env=MTOOLS_ENV,
                       timeout=60)
        expected = (r"\[ERROR\] KubeSolo system image \S+ is corrupted or changed: SHA-512 [0-9a-f]{128}, "
                    r"this initramfs expects")
    vm = medium(damage, usb_disk=stick)
    vm.wait(expected, timeout=300, errors_fail=False)
    # A missing file stops stage 20 at once; a corrupted one is found when its SHA-512 (computed in the background
    # since stage 20) is compared in stage 90, before KubeSolo's arguments are even written.
    stage = "20-persistent-mount" if damage == "missing" else "90-kubesolo"
    vm.wait(rf"\[ERROR\] Stage {stage}\.sh failed", r"Emergency shell", timeout=120, errors_fail=False)
    log = vm.log
    assert HANDOVER_MARKER not in log
    assert "[kubesolo-test-double]" not in log and "Starting KubeSolo" not in log
    assert "KubeSolo arguments:" not in log and "mounted read-only on /usr/lib/kubesolo-os/bin" not in log
    if damage == "missing":
        assert "Stage 30-kernel-modules.sh starting" not in log


# --------------------------------------------------------------------------------------------
# system-image.sh itself, under the host's busybox sh (a real squashfs, mounted through a loop device)
# --------------------------------------------------------------------------------------------

SYSIMAGE_SCRIPT = r'''
. "$LIBDIR/functions.sh"
. "$LIBDIR/system-image.sh"
KSI_RUNDIR=$T/run
KSI_SYSIMAGE_MEDIUM=$T/run/medium
KSI_SYSIMAGE_INITRAMFS=$T/kubesolo.sqfs
KSI_SYSIMAGE_MOUNT=$T/bin
KSI_SYSIMAGE_BINARY=$T/bin/kubesolo
KSI_SYSIMAGE_SIZE=$SIZE
KSI_SYSIMAGE_SHA512=$SHA
KSI_SYSIMAGE_WAIT=1
KUBESOLO_SYSIMAGE=$SPEC
ksi_sysimage_start || { echo "start failed"; return 0 2>/dev/null || exit 0; }
ksi_sysimage_finish && echo "finished" || echo "finish failed"
'''


@pytest.fixture
def sysimage_shell(built_image, tmp_path):
    """Runs stage 20's start and stage 90's finish of the rendered system-image.sh on a real squashfs."""
    busybox = shutil.which("busybox")
    if busybox is None or subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        pytest.skip("needs busybox and root (loop mount)")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "kubesolo").write_text("#!/bin/sh\necho stand-in\n")
    (tree / "kubesolo").chmod(0o755)
    image = tmp_path / "kubesolo.sqfs"
    subprocess.run(["mksquashfs", str(tree), str(image), "-quiet", "-no-progress", "-all-root"], check=True,
                   timeout=60, capture_output=True)
    libdir = REPO / "build" / "test" / "layers" / "init" / "usr" / "lib" / "kubesolo-os"
    mounted = tmp_path / "bin"

    def run(spec: str = "", *, size: int | None = None, digest: str | None = None,
            script: str = SYSIMAGE_SCRIPT) -> str:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "KSI_LOG_CONSOLES": "", "LIBDIR": str(libdir),
               "T": str(tmp_path), "SPEC": spec, "SIZE": str(image.stat().st_size if size is None else size),
               "SHA": large_double.sha512(image) if digest is None else digest}
        result = subprocess.run([busybox, "sh", "-c", script], env=env, capture_output=True, text=True,
                                timeout=60, check=False)
        return result.stdout + result.stderr

    yield run, image, mounted
    subprocess.run(["umount", str(mounted)], capture_output=True, check=False)


def test_sysimage_shell_verifies_then_mounts_read_only(sysimage_shell):
    run, image, mounted = sysimage_shell
    out = run()
    assert "finished" in out and "[ERROR]" not in out, out
    assert f"[OK] KubeSolo system image {image} verified" in out
    assert (mounted / "kubesolo").read_text() == "#!/bin/sh\necho stand-in\n"
    assert re.search(rf"^\S+ {re.escape(str(mounted))} squashfs ro[,\s]", Path("/proc/mounts").read_text(), re.M)
    # A retry (after the emergency shell) finds it mounted and succeeds.
    assert "finished" in run()


@pytest.mark.parametrize(("case", "expected"), [
    ("size", r"\[ERROR\] KubeSolo system image \S+ is (\d+) bytes, this initramfs expects (\d+): the medium"),
    ("digest", r"\[ERROR\] KubeSolo system image \S+ is corrupted or changed: SHA-512 [0-9a-f]{128}, "
               r"this initramfs expects f{128} "),
    ("spec", r"\[ERROR\] kubesolo\.sysimage=nonsense is not DEV:/PATH"),
    ("medium", r"\[ERROR\] Boot medium LABEL=NO-SUCH-MEDIUM \(holding the KubeSolo system image /boot/x\.sqfs\) "
               r"did not appear within 1s"),
])
def test_sysimage_shell_refuses_what_is_not_the_builds_image(sysimage_shell, case, expected):
    run, image, mounted = sysimage_shell
    size = image.stat().st_size
    out = {
        "size": lambda: run(size=size - 1),
        "digest": lambda: run(digest="f" * 128),
        "spec": lambda: run("nonsense"),
        "medium": lambda: run("LABEL=NO-SUCH-MEDIUM:/boot/x.sqfs"),
    }[case]()
    match = re.search(expected, out)
    assert match, out
    if case == "size":
        assert int(match.group(2)) == int(match.group(1)) - 1 == size - 1
    assert "finished" not in out
    assert not (mounted / "kubesolo").exists()


def test_sysimage_shell_from_a_medium_restores_the_read_ahead(sysimage_shell, tmp_path):
    """The boot media's path (kubesolo.sysimage=DEV:/PATH) on a real loop device with a file system: the
    medium is mounted read-only, the image verified and mounted, and the disk's read-ahead, raised while the
    image is hashed (init_sysimage_readahead_kb), is back to what it was."""
    run, image, mounted = sysimage_shell
    loops = LoopDevices(tmp_path, "medium")
    try:
        # ext4 made from a directory (this host's kernel has no vfat; the init mounts whatever the medium holds).
        tree = tmp_path / "medium-tree"
        (tree / "boot").mkdir(parents=True)
        shutil.copyfile(image, tree / "boot" / "kubesolo.sqfs")
        backing = tmp_path / "medium.img"
        subprocess.run(["mkfs.ext4", "-q", "-L", "KSOLOBOOT", "-d", str(tree), str(backing), "64M"], check=True,
                       capture_output=True, timeout=60)
        device = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True, capture_output=True,
                                text=True, timeout=60).stdout.strip()
        loops.devices.append(device)
        read_ahead = Path(f"/sys/block/{Path(device).name}/queue/read_ahead_kb")
        read_ahead.write_text("96\n")
        loops.mounts += [tmp_path / "run" / "medium", mounted]
        out = run(f"{device}:/boot/kubesolo.sqfs")
        assert "finished" in out and "[ERROR]" not in out, out
        assert f"Boot medium {device} is {device}, mounted read-only" in out
        assert re.search(rf"^{re.escape(device)} {re.escape(str(tmp_path / 'run' / 'medium'))} ext4 ro[,\s]",
                         Path("/proc/mounts").read_text(), re.M)
        assert (mounted / "kubesolo").read_text() == "#!/bin/sh\necho stand-in\n"
        assert read_ahead.read_text().strip() == "96"
        # The file the hash raises to init_sysimage_readahead_kb (busybox sh runs its own sha512sum applet, so
        # nothing can stand in front of it to watch): the queue of the disk that holds the medium.
        assert (tmp_path / "run" / "sysimage.blk").read_text().strip() == device
        probe = run(script='. "$LIBDIR/functions.sh"; . "$LIBDIR/system-image.sh"; KSI_RUNDIR=$T/run\n'
                           'ksi_sysimage_readahead_file').strip()
        assert Path(probe).resolve() == read_ahead.resolve()
        assert role_defaults("init")["init_sysimage_readahead_kb"] > 128
    finally:
        loops.cleanup()


def test_init_hashes_with_the_userlands_gnu_sha512sum(built_image):
    """The init verifies the system image with GNU sha512sum (1.5x faster than the busybox applet, which busybox
    sh would run for a bare `sha512sum`): the path it calls is a real ELF program in the userland layer."""
    path = role_defaults("init")["init_sysimage_sha512sum"]
    tool = REPO / "build" / "test" / "layers" / "userland" / path.lstrip("/")
    assert tool.is_file() and not tool.is_symlink(), f"{path} is not a program of its own in the userland layer"
    assert tool.read_bytes()[:4] == b"\x7fELF"
    script = REPO / "build" / "test" / "layers" / "init" / "usr" / "lib" / "kubesolo-os" / "system-image.sh"
    assert f"KSI_SYSIMAGE_SHA512SUM={path}\n" in script.read_text()
