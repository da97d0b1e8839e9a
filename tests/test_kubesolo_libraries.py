"""The kubesolo role checks the binary's shared libraries against the image (roles/kubesolo/tasks/libraries.yml).

The glibc release asset of KubeSolo is dynamically linked. The role is applied with ansible-playbook to
small real ELF programs assembled and linked here with binutils (as, ld): a static one (like the musl
asset), one that needs only libc, and one that needs a library the image lacks. The "image" is a tree
holding the host's libc and dynamic loader where the userland layer would have them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, VENV_BIN

pytestmark = pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None,
                                reason="binutils (as, ld) is not installed")

LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")
LOADER = "/lib64/ld-linux-x86-64.so.2"
MISSING = "libkubesolo-test-missing.so.1"
EXIT_ASM = ".globl _start\n_start:\n    mov $60, %eax\n    xor %edi, %edi\n    syscall\n"


def link(tmp: Path, name: str, *libs: str) -> Path:
    """An x86-64 program that only exits; with libs it is dynamically linked against them."""
    obj = tmp / f"{name}.o"
    subprocess.run(["as", "-o", str(obj), "-"], input=EXIT_ASM, text=True, check=True, timeout=60)
    out = tmp / name
    cmd = ["ld", "-o", str(out), str(obj)]
    if libs:
        cmd += ["-dynamic-linker", LOADER, "--no-as-needed", *libs]
    subprocess.run(cmd, check=True, timeout=60, capture_output=True)
    return out


def stub_library(tmp: Path, soname: str) -> Path:
    """A shared library with that soname (to link against; the image never gets it)."""
    obj = tmp / "stub.o"
    subprocess.run(["as", "-o", str(obj), "-"], input=".globl stub\nstub:\n    ret\n", text=True, check=True,
                   timeout=60)
    lib = tmp / "libstub.so"
    subprocess.run(["ld", "-shared", "-soname", soname, "-o", str(lib), str(obj)], check=True, timeout=60)
    return lib


def image_tree(tmp: Path) -> Path:
    """Where the userland layer keeps libraries: libc and the loader (copied from the host)."""
    root = tmp / "image"
    libdir = root / "lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    shutil.copy2(LIBC, libdir / "libc.so.6")
    shutil.copy2(os.path.realpath(LOADER), libdir / "ld-linux-x86-64.so.2")
    (root / "lib64").mkdir()
    (root / "lib64/ld-linux-x86-64.so.2").symlink_to("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    return root


def apply_role(tmp: Path, binary: Path) -> subprocess.CompletedProcess[str]:
    play = [{
        "name": "Install a KubeSolo binary",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "kubesolo_os_build_dir": str(tmp / "build"),
            "kubesolo_os_cache_dir": str(tmp / "cache"),
            "kubesolo_os_layers_dir": str(tmp / "layers"),
            "kubesolo_os_output_dir": str(tmp / "output"),
            "kubesolo_os_epoch": 1700000000,
            "kubesolo_binary_src": str(binary),
            "kubesolo_image_library_roots": [str(tmp / "image")],
            "kubesolo_image_library_dirs": ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib"],
        },
        "roles": ["kubesolo"],
        "tasks": [{"name": "Show the libraries", "ansible.builtin.debug": {"var": "kubesolo_binary_libraries"}}],
    }]
    playbook = tmp / "play.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(playbook)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    if not LIBC.exists():
        pytest.skip("the host has no x86-64 glibc to stand in for the image's")
    image_tree(tmp_path)
    return tmp_path


def test_static_binary_passes(tree: Path) -> None:
    result = apply_role(tree, link(tree, "kubesolo-static"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"kubesolo_binary_libraries": []' in result.stdout
    # The binary is installed into the system image (a squashfs in the kubesolo layer), not the layer itself.
    listing = subprocess.run(["unsquashfs", "-l", str(tree / "layers/kubesolo/usr/lib/kubesolo-os/kubesolo.sqfs")],
                             capture_output=True, text=True, check=True, timeout=60).stdout
    assert "squashfs-root/kubesolo" in listing.split()


def test_dynamic_binary_with_its_libraries_in_the_image_passes(tree: Path) -> None:
    result = apply_role(tree, link(tree, "kubesolo-glibc", str(LIBC)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/lib/x86_64-linux-gnu/libc.so.6" in result.stdout
    assert "/lib64/ld-linux-x86-64.so.2" in result.stdout
    # Nothing is copied: the check only reads the image.
    assert not (tree / "layers/kubesolo/lib").exists()


def test_dynamic_binary_missing_a_library_fails_naming_it(tree: Path) -> None:
    binary = link(tree, "kubesolo-needs-more", str(LIBC), str(stub_library(tree, MISSING)))
    result = apply_role(tree, binary)
    assert result.returncode != 0, result.stdout
    assert f"needs the library {MISSING}" in result.stdout, result.stdout
    assert "cannot run on this image" in result.stdout
    assert "kubesolo_release_variant" in result.stdout
