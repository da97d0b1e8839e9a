"""The boot contract (files/boot-contract.yml) is the one source of the data label, the data mount, the bind
mounts, the data-partition files and the boot menu (issue 16).

- A grep-style check: the label and the mount never appear as literals in the product (roles, playbooks, the
  collection's plugins, scripts, files) outside the contract file, documentation and comments.
- The contract file is checked when it is loaded: a broken one fails every playbook, naming the rule.
- One build with a DIFFERENT contract (another label, mount, cloud-init file name, an extra bind mount, an extra
  boot entry as the default): the init, the image's directories, the cloud-init schema, both menus of the ISO
  and of the raw image, the flash playbook, the provisioning playbook and the cloud-init validator all follow
  it; the image, booted in QEMU, mounts a disk with the new label on the new mount point.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BUILD_VARS, REPO, VENV_BIN, ansible_playbook, ensure_ssh_key, run, stop_guests, vm_pool
from contract import CONTRACT, CONTRACT_FILE, persistent_dirs

LITERALS = (CONTRACT["data_label"], CONTRACT["data_mount"])
# Product files: what builds, flashes, provisions and validates. Tests, molecule scenarios and Markdown
# documentation may name the contract's values (they describe or exercise it).
PRODUCT_PREFIXES = ("roles/", "playbooks/", "files/", "scripts/", "inventory/",
                    "collections/ansible_collections/kubesolo/os/plugins/")
PRODUCT_FILES = ("build.yml", "Makefile")
# Ansible module documentation (YAML inside the module file) is documentation, like the role READMEs.
DOC_VARIABLES = {"DOCUMENTATION", "EXAMPLES", "RETURN"}


def product_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    paths = [p for p in listed.decode().split("\0") if p]
    keep = [p for p in paths if (p.startswith(PRODUCT_PREFIXES) or p in PRODUCT_FILES) and not p.endswith(".md")]
    return [REPO / p for p in keep if (REPO / p) != CONTRACT_FILE and (REPO / p).is_file()]


def code_of_python(text: str) -> list[tuple[int, str]]:
    """The string constants of a Python file, without docstrings and module documentation (comments are not
    in the AST): where a literal would be a second copy of a contract value."""
    tree = ast.parse(text)
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            skip.add(id(body[0].value))
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in DOC_VARIABLES
                                                for t in node.targets):
            skip.add(id(node.value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip]


def code_of_text(text: str) -> list[tuple[int, str]]:
    """The lines of a YAML, Jinja, shell or awk file that are not comments (# ..., {# ... #})."""
    text = re.sub(r"\{#.*?#\}", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return [(number, line) for number, line in enumerate(text.splitlines(), 1) if not line.lstrip().startswith("#")]


def test_contract_values_are_not_repeated_in_the_product():
    """The data label and the data mount are literals only in files/boot-contract.yml: every role, playbook,
    module and script takes them from there (a module's default restating them would be a second copy)."""
    files = product_files()
    assert any(p.name == "ksolodata.py" for p in files) and any(p.name == "main.yml" for p in files)
    found = []
    for path in files:
        text = path.read_text(errors="replace")
        pieces = code_of_python(text) if path.suffix == ".py" else code_of_text(text)
        for number, piece in pieces:
            for literal in LITERALS:
                if literal in piece:
                    found.append(f"{path.relative_to(REPO)}:{number}: {literal}")
    assert not found, "contract values repeated outside files/boot-contract.yml:\n" + "\n".join(found)


def test_the_grep_check_sees_a_repeated_value():
    """The check above is not blind: a module default and a task value restating the label are found, a
    comment and module documentation are not."""
    label = CONTRACT["data_label"]
    module = f'"""Doc: {label}."""\nDOCUMENTATION = "default: {label}"\n# {label}\nSPEC = {{"default": "{label}"}}\n'
    assert [line for line, piece in code_of_python(module) if label in piece] == [4]
    task = f"# Prepare {label}\n{{# {label} #}}\n- name: x\n  x:\n    label: {label}\n"
    assert [line for line, piece in code_of_text(task) if label in piece] == [5]


def test_tests_read_the_same_file_as_the_playbooks():
    defaults = yaml.safe_load((REPO / "roles" / "kubesolo_os" / "defaults" / "main.yml").read_text())
    assert defaults["kubesolo_os_boot_contract"] == "{{ role_path }}/../../files/boot-contract.yml"
    assert (REPO / "roles" / "kubesolo_os" / defaults["kubesolo_os_boot_contract"].split("}}/", 1)[1]).resolve() \
        == CONTRACT_FILE
    assert CONTRACT["default_entry"] in [entry["label"] for entry in CONTRACT["boot_entries"]]


# --------------------------------------------------------------------------------------------------------
# The contract is checked when it is loaded.
# --------------------------------------------------------------------------------------------------------

def validate(cloudinit_file: Path, contract: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["-e", f"kubesolo_os_boot_contract={contract}"] if contract else []
    return run([str(VENV_BIN / "ansible-playbook"), "playbooks/validate-config.yml", "-e",
                f"cloudinit_file={cloudinit_file}", *extra], timeout=300, check=False)


@pytest.mark.parametrize(("change", "rule"), [
    ({"data_label": "KSOLODATA-TOO-LONG-LABEL"}, "data_label is 1-16"),
    ({"data_mount": "mnt/data"}, "data_mount an absolute path"),
    ({"default_entry": "nowhere"}, "default_entry one of those labels"),
    ({"bind_mounts": [{"src": "log", "dest": "/var/log", "mode": "755"}]}, "mode"),
])
def test_a_broken_contract_fails_naming_the_rule(tmp_path, change, rule):
    contract = tmp_path / "contract.yml"
    contract.write_text(yaml.safe_dump({**CONTRACT, **change}))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = validate(empty, contract)
    assert result.returncode != 0
    assert "The boot contract" in result.stdout and rule in result.stdout, result.stdout[-3000:]


def test_the_derived_shorthands_cannot_be_set_apart(tmp_path):
    """kubesolo_os_data_label follows the contract; -e of it alone would split the image from the tools."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = run([str(VENV_BIN / "ansible-playbook"), "playbooks/validate-config.yml", "-e",
                  f"cloudinit_file={empty}", "-e", "kubesolo_os_data_label=OTHER"], timeout=300, check=False)
    assert result.returncode != 0 and "cannot be set (-e): change the contract" in result.stdout


# --------------------------------------------------------------------------------------------------------
# One build with another contract: everything follows it.
# --------------------------------------------------------------------------------------------------------

OTHER = {
    **CONTRACT,
    "data_label": "KSOTESTDATA",
    "data_mount": "/mnt/ksotest",
    "data_files": {"cloudinit": "node.yaml", "network": "net/settings.yaml",
                   "legacy_network_script": "net/interfaces.sh"},
    "bind_mounts": [*CONTRACT["bind_mounts"], {"src": "srv-data", "dest": "/srv/data", "mode": "0750"}],
    "boot_entries": [*CONTRACT["boot_entries"],
                     {"label": "kubesolo-contract", "title": "KubeSolo OS (contract test)", "params": "quiet"}],
    "default_entry": "kubesolo-contract",
}
BUILD = REPO / "build" / "test-contract"


@pytest.fixture(scope="module")
def other_contract(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("contract") / "boot-contract.yml"
    path.write_text(yaml.safe_dump(OTHER, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def other_build(other_contract) -> Path:
    """The test image built with the other contract, in its own build directory (shared download cache)."""
    ensure_ssh_key()
    shutil.rmtree(BUILD, ignore_errors=True)
    ansible_playbook("build.yml", "-e", f"@{BUILD_VARS}", "-e", f"kubesolo_os_build_dir={BUILD}",
                     "-e", f"kubesolo_os_output_dir={BUILD}/output",
                     "-e", f"kubesolo_os_boot_contract={other_contract}")
    return BUILD


def iso_file(iso: Path, inside: str, dest: Path) -> str:
    subprocess.run(["xorriso", "-indev", str(iso), "-osirrox", "on", "-extract", inside, str(dest)],
                   capture_output=True, check=True)
    return dest.read_text()


@pytest.mark.slow
def test_the_image_follows_another_contract(other_build, tmp_path):
    init = other_build / "layers" / "init" / "usr" / "lib" / "kubesolo-os"
    functions = (init / "functions.sh").read_text()
    assert "KSI_DATA_LABEL=KSOTESTDATA" in functions and "KSI_DATA_MOUNT=/mnt/ksotest" in functions
    stage20 = (init / "init.d" / "20-persistent-mount.sh").read_text()
    binds = re.findall(r'^ksi_bind "\$KSI_DATA_MOUNT/"(\S+) (\S+) \|\| return 1$', stage20, re.M)
    assert binds == [(b["src"], b["dest"]) for b in OTHER["bind_mounts"]]
    schema = (init / "cloud-init.schema").read_text()
    assert [line.split("\t")[1] for line in schema.splitlines() if line.startswith("P\t")] == persistent_dirs(OTHER)
    assert "KSI_CI_DATA_FILE=node.yaml" in (init / "cloud-init.sh").read_text()
    network = (init / "init.d" / "50-network.sh").read_text()
    assert "/mnt/ksotest/net/settings.yaml" in network and "/mnt/ksotest/net/interfaces.sh" in network
    userland = other_build / "layers" / "userland"
    assert oct((userland / "srv" / "data").stat().st_mode & 0o7777) == "0o750"
    assert (userland / "mnt" / "ksotest").is_dir() and not (userland / "mnt" / "data").exists()
    for bind in OTHER["bind_mounts"]:
        assert oct((userland / bind["dest"].lstrip("/")).stat().st_mode & 0o7777) == oct(int(bind["mode"], 8))

    iso = next((other_build / "output").glob("kubesolo-os-*-amd64.iso"))
    isolinux = iso_file(iso, "/isolinux/isolinux.cfg", tmp_path / "isolinux.cfg")
    grub = iso_file(iso, "/EFI/BOOT/grub.cfg", tmp_path / "grub.cfg")
    labels = [entry["label"] for entry in OTHER["boot_entries"]]
    assert re.findall(r"^label (\S+)$", isolinux, re.M) == labels == re.findall(r"--id (\S+) \{", grub)
    assert "default kubesolo-contract" in isolinux and "set default=kubesolo-contract" in grub
    for line in re.findall(r"^\s*(?:append|linux /boot/vmlinuz) (.*)$", isolinux + grub, re.M):
        assert "kubesolo.data=LABEL=KSOTESTDATA" in line and "LABEL=KSOLODATA" not in line


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup"), reason="needs root and losetup")
def test_flash_and_provisioning_follow_another_contract(other_build, other_contract, tmp_path):
    from loopdev import LoopDevices, sh
    from test_flash_usb import flash
    from test_provision_loop import blkid, provision

    image = next((other_build / "output").glob("kubesolo-os-*-amd64.img"))
    loops = LoopDevices(tmp_path, name="contract", scan_partitions=True)
    try:
        # Flash: the image's data partition is found by the contract's label, and grown.
        stick = loops.add(700)
        # With the default contract the image's data partition is not recognised (a new one would be made).
        with_default = flash(image, stick, "--check")
        assert with_default.returncode == 0, with_default.stdout[-3000:]
        assert f"create a {CONTRACT['data_label']} ext4 partition 3" in with_default.stdout
        result = flash(image, stick, "-e", f"kubesolo_os_boot_contract={other_contract}")
        assert result.returncode == 0, result.stdout[-3000:]
        assert "KSOTESTDATA new, grown" in result.stdout
        assert blkid(f"{stick}p2")["LABEL"] == "KSOTESTDATA"

        # Provisioning: label, partition name, the bind-mount directories with their modes, the data files.
        disk = loops.add(300)
        rc, out, text = provision(tmp_path, [disk], "-e", f"kubesolo_os_boot_contract={other_contract}",
                                  ksolodata_network={"mode": "dhcp"})
        assert rc == 0 and out["summary"]["status"] == "changed", text[-3000:]
        part = f"{disk}p1"
        assert blkid(part)["LABEL"] == "KSOTESTDATA" and blkid(part)["PART_ENTRY_NAME"] == "KSOTESTDATA"
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        sh("mount", "-o", "ro", part, str(mnt))
        try:
            for bind in OTHER["bind_mounts"]:
                assert oct((mnt / bind["src"]).stat().st_mode & 0o7777) == oct(int(bind["mode"], 8)), bind
            assert "dhcp: true" in (mnt / "net" / "settings.yaml").read_text()
            assert not (mnt / "network").exists()
        finally:
            sh("umount", str(mnt))
    finally:
        loops.cleanup()


def test_the_cloudinit_validator_follows_the_contract(other_contract, tmp_path):
    """write_files below a bind mount of the contract: valid with it, refused with a contract without it."""
    config = tmp_path / "node.yaml"
    config.write_text("write_files:\n  - path: /srv/data/motd\n    content: hello\n")
    assert validate(config, other_contract).returncode == 0
    refused = validate(config)
    assert refused.returncode != 0 and "write_files[0].path" in refused.stdout
    assert "must be below one of " + " ".join(persistent_dirs()) in refused.stdout


@pytest.mark.slow
def test_the_image_built_with_another_contract_boots_on_its_label(other_build, request, tmp_path):
    """QEMU: a disk labelled KSOTESTDATA is mounted on /mnt/ksotest, /srv/data is bind-mounted from it, and the
    cloud-init file is read under its contract name (node.yaml)."""
    import vmctl

    content = tmp_path / "content"
    content.mkdir()
    (content / "node.yaml").write_text("hostname: contract-node\n")
    disk = tmp_path / "data.img"
    vmctl.make_data_disk(disk, size_mb=128, label="KSOTESTDATA", content=content)
    start, guests = vm_pool(request)
    try:
        vm = start("contract", kernel=other_build / "output" / "vmlinuz", initrd=other_build / "output" / "initramfs",
                   append="console=ttyS0,115200n8 panic=10 kubesolo.data=LABEL=KSOTESTDATA", disks=[disk])
        vm.wait_booted()
        vm.wait_ssh()
        mounts = vm.ssh("cat /proc/mounts").stdout
        assert re.search(r"^/dev/vda /mnt/ksotest ext4 ", mounts, re.M), mounts
        assert re.search(r"^/dev/vda /srv/data ext4 ", mounts, re.M), mounts
        assert vm.ssh("hostname").stdout.strip() == "contract-node"
        assert vm.ssh("stat -c %a /mnt/ksotest/srv-data").stdout.strip() == "750"
    finally:
        stop_guests(guests)


def test_the_reboot_waits_for_the_mount_it_is_given():
    """kubesolo.os.ksolodata_reboot has no built-in mount point: the play passes the contract's data_mount (its
    test command checks that mount), and without it (or a test_command) the task fails before rebooting."""
    from types import SimpleNamespace

    from ansible_collections.kubesolo.os.plugins.action import ksolodata_reboot

    command = ksolodata_reboot.data_mount_test("/mnt/ksotest")
    assert command == "grep -qF ' /mnt/ksotest ext4 ' /proc/mounts"
    mounts = "/dev/vda /mnt/ksotest ext4 rw,noatime 0 0\n"
    assert subprocess.run(["sh", "-c", command.replace("/proc/mounts", "/dev/stdin")], input=mounts, text=True,
                          check=False).returncode == 0
    assert subprocess.run(["sh", "-c", ksolodata_reboot.data_mount_test(CONTRACT["data_mount"]).replace(
        "/proc/mounts", "/dev/stdin")], input=mounts, text=True, check=False).returncode == 1
    plugin = ksolodata_reboot.ActionModule.__new__(ksolodata_reboot.ActionModule)
    plugin._task = SimpleNamespace(args={"reboot_timeout": 10})
    result = plugin.run(task_vars={})
    assert result["failed"] and "needs data_mount" in result["msg"] and not result["rebooted"]
    assert "data_mount" in ksolodata_reboot.ActionModule._VALID_ARGS
