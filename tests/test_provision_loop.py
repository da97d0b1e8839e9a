"""The ksolodata role and module on loop devices of the host (local connection, Python target):
one test per safety rule. Disk discovery is restricted to the test's own loop devices with
ksolodata_candidates, so the host's real disks are never looked at. Every loop device is detached
(partx -d, losetup -d) when the test ends."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, VENV_BIN, tool_env
from contract import persistent_dirs
from loopdev import MIB, LoopDevices, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("partx"),
                                reason="needs root, losetup and partx")


@pytest.fixture
def loops(tmp_path):
    pool = LoopDevices(tmp_path)
    pool.mounts.append(tmp_path / "mnt")  # read_data() mounts there; unmounted if a test fails midway
    try:
        yield pool
    finally:
        pool.cleanup()


def provision(tmp_path: Path, candidates: list[str], *extra: str, **role_vars) -> tuple[int, dict, str]:
    """Run the ksolodata role on localhost; returns (rc, the module result, the output)."""
    playbook = tmp_path / "play.yml"
    role_vars = {"ksolodata_candidates": candidates, "ksolodata_min_size_gib": 0.25,
                 "ksolodata_hostname": "loop-node", **role_vars}
    playbook.write_text(yaml.safe_dump([{
        "name": "Provision a loop device", "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        "roles": [{"role": "ksolodata", "vars": role_vars}],
        "tasks": [{"name": "Result", "ansible.builtin.copy": {
            "content": "{{ {'result': ksolodata_result | default({}), 'summary': ksolodata_summary} | to_json }}",
            "dest": str(tmp_path / "result.json"), "mode": "0600"}, "check_mode": False}],
    }]))
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(playbook), *extra],
                          cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    result = json.loads((tmp_path / "result.json").read_text()) if (tmp_path / "result.json").exists() else {}
    (tmp_path / "result.json").unlink(missing_ok=True)
    return proc.returncode, result, output


def blkid(device: str) -> dict[str, str]:
    out = sh("/sbin/blkid", "-p", "-o", "export", device, check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def read_data(tmp_path: Path, partition: str, path: str) -> str:
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    sh("mount", "-o", "ro", partition, str(mnt))
    try:
        return (mnt / path).read_text()
    finally:
        sh("umount", str(mnt))


def test_blank_disk_provisioned_then_second_run_changes_nothing(loops, tmp_path):
    disk = loops.add()
    rc, check, out = provision(tmp_path, [disk], "--check", "--diff")
    assert rc == 0, out
    assert check["summary"]["status"] == "changed" and blkid(disk) == {}, "check mode touched the disk"
    rc, first, out = provision(tmp_path, [disk], ksolodata_network={"mode": "dhcp"},
                               ksolodata_kubesolo_config={"portainer-edge-key": "s3cret-key"})
    assert rc == 0 and first["summary"]["status"] == "changed", out
    assert "s3cret-key" not in out
    part = f"{disk}p1"
    assert blkid(part)["LABEL"] == "KSOLODATA" and blkid(part)["PART_ENTRY_NAME"] == "KSOLODATA"
    assert blkid(disk)["PTTYPE"] == "gpt"
    assert read_data(tmp_path, part, "etc-kubesolo/hostname") == "loop-node\n"
    assert "dhcp: true" in read_data(tmp_path, part, "network/network.yaml")
    mnt = tmp_path / "mnt"
    sh("mount", "-o", "ro", part, str(mnt))
    try:
        for name in ("kubesolo", "containerd", "etc-kubesolo", "log", "usr-local", "network"):
            assert (mnt / name).is_dir(), name
        assert oct((mnt / "etc-kubesolo" / "config.yaml").stat().st_mode & 0o777) == "0o600"
    finally:
        sh("umount", str(mnt))
    rc, second, out = provision(tmp_path, [disk], ksolodata_network={"mode": "dhcp"},
                                ksolodata_kubesolo_config={"portainer-edge-key": "s3cret-key"},
                                ksolodata_update_config=True)
    assert rc == 0 and second["summary"]["status"] == "ok", out


def test_existing_ksolodata_never_reformatted_config_only_when_asked(loops, tmp_path):
    disk = loops.add()
    assert provision(tmp_path, [disk])[0] == 0
    part = f"{disk}p1"
    uuid = blkid(part)["UUID"]
    rc, result, out = provision(tmp_path, [disk], ksolodata_device=disk, ksolodata_wipe=True,
                                ksolodata_hostname="renamed")
    assert rc == 0 and result["result"]["action"] == "existing", out
    assert blkid(part)["UUID"] == uuid
    assert result["summary"]["config_drift"] == ["etc-kubesolo/hostname"]
    assert read_data(tmp_path, part, "etc-kubesolo/hostname") == "loop-node\n"
    rc, result, out = provision(tmp_path, [disk], "--diff", ksolodata_hostname="renamed", ksolodata_update_config=True)
    assert rc == 0 and result["summary"]["status"] == "changed", out
    assert "+renamed" in out
    assert read_data(tmp_path, part, "etc-kubesolo/hostname") == "renamed\n"
    assert blkid(part)["UUID"] == uuid


def test_signature_refused_unless_wipe_and_named(loops, tmp_path):
    disk = loops.add()
    sh("/sbin/mke2fs", "-q", "-F", "-t", "ext4", "-L", "OTHERDATA", disk)
    before = blkid(disk)
    for extra in ({}, {"ksolodata_device": disk}, {"ksolodata_wipe": True}):
        rc, result, out = provision(tmp_path, [disk], **extra)
        assert rc == 0 and result["summary"]["status"] == "failed", out
        assert blkid(disk) == before
    assert "not blank (ext4 file system labelled OTHERDATA" in result["summary"]["msg"] or \
        "No disk can be chosen" in result["summary"]["msg"]
    rc, result, out = provision(tmp_path, [disk], ksolodata_device=disk, ksolodata_wipe=True)
    assert rc == 0 and result["summary"]["status"] == "changed", out
    assert blkid(f"{disk}p1")["LABEL"] == "KSOLODATA"
    assert result["result"]["wiped"] is True


def test_boot_and_in_use_devices_never_chosen(loops, tmp_path):
    iso_disk = loops.add(64)
    if shutil.which("xorriso"):
        (tmp_path / "iso").mkdir()
        (tmp_path / "iso" / "hello").write_text("boot medium\n")
        sh("xorriso", "-as", "mkisofs", "-quiet", "-V", "KUBESOLO", "-o", str(tmp_path / "boot.iso"),
           str(tmp_path / "iso"))
        sh("dd", f"if={tmp_path / 'boot.iso'}", f"of={iso_disk}", "conv=notrunc,fsync", "status=none")
    mounted_disk = loops.add()
    sh("/sbin/mke2fs", "-q", "-F", "-t", "ext4", "-L", "INUSE", mounted_disk)
    (tmp_path / "mnt").mkdir()
    sh("mount", mounted_disk, str(tmp_path / "mnt"))
    try:
        blank = loops.add()
        rc, result, out = provision(tmp_path, [iso_disk, mounted_disk, blank], "--check",
                                    ksolodata_min_size_gib=0.01)
        assert rc == 0 and result["result"]["device"] == blank, out
        refused = {r["device"]: " ".join(r["reasons"]) for r in result["result"]["refused"]}
        assert "mounted on" in refused[mounted_disk]
        if shutil.which("xorriso"):
            assert "ISO9660" in refused[iso_disk]
            rc, result, out = provision(tmp_path, [iso_disk], ksolodata_device=iso_disk, ksolodata_wipe=True,
                                        ksolodata_min_size_gib=0.01)
            assert result["summary"]["status"] == "failed" and "boot medium" in result["summary"]["msg"], out
        rc, result, out = provision(tmp_path, [mounted_disk], ksolodata_device=mounted_disk, ksolodata_wipe=True)
        assert result["summary"]["status"] == "failed" and "in use" in result["summary"]["msg"], out
        assert blkid(mounted_disk)["LABEL"] == "INUSE"
    finally:
        sh("umount", str(tmp_path / "mnt"), check=False)


def test_two_candidates_without_choice_refused_listing_them(loops, tmp_path):
    first, second = loops.add(), loops.add()
    rc, result, out = provision(tmp_path, [first, second])
    assert rc == 0 and result["summary"]["status"] == "failed", out
    assert first in result["summary"]["msg"] and second in result["summary"]["msg"]
    assert blkid(first) == {} and blkid(second) == {}


def test_small_disk_refused(loops, tmp_path):
    disk = loops.add(100)
    for extra in ({}, {"ksolodata_device": disk}):
        _rc, result, out = provision(tmp_path, [disk], ksolodata_min_size_gib=0.5, **extra)
        assert result["summary"]["status"] == "failed" and "minimum" in result["summary"]["msg"], out
    assert blkid(disk) == {}


def test_grow_only_when_asked(loops, tmp_path):
    disk = loops.add(300)
    assert provision(tmp_path, [disk])[0] == 0
    with LoopDevices.backing(disk).open("r+b") as handle:
        handle.truncate(600 * 1024 * 1024)
    sh("losetup", "-c", disk)
    rc, result, out = provision(tmp_path, [disk])
    assert result["result"]["growable_bytes"] > 250 * 1024 * 1024 and result["summary"]["status"] == "ok", out
    rc, result, out = provision(tmp_path, [disk], ksolodata_grow=True)
    assert rc == 0 and result["summary"]["status"] == "changed", out
    size = int(Path(f"/sys/block/{Path(disk).name}/{Path(disk).name}p1/size").read_text())
    assert size * 512 > 550 * 1024 * 1024
    rc, result, out = provision(tmp_path, [disk], ksolodata_grow=True)
    assert result["summary"]["status"] == "ok" and "growable_bytes" not in result["result"], out


def test_fleet_play_goes_on_past_failed_nodes_then_fails_naming_them(loops, tmp_path):
    """playbooks/provision-data.yml on three nodes: one provisions its loop device, one is refused (its
    only disk is too small), one cannot be reached (SSH to a closed port on 127.0.0.1). The good node is
    provisioned all the same; the summary lists every node and the run fails naming exactly the other two."""
    import guest

    good, small = loops.add(), loops.add(100)
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
             "ksolodata_min_size_gib": 0.25}
    inventory = tmp_path / "fleet.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"kubesolo_nodes": {"hosts": {
        "node-good": {**local, "ksolodata_candidates": [good], "ksolodata_hostname": "node-good"},
        "node-small": {**local, "ksolodata_candidates": [small]},
        "node-unreachable": {"ansible_host": "127.0.0.1", "ansible_port": guest.free_port(), "ansible_user": "root",
                             "ansible_ssh_common_args": "-o BatchMode=yes -o StrictHostKeyChecking=no "
                                                        "-o UserKnownHostsFile=/dev/null -o ConnectTimeout=5"},
    }}}}}))
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), "playbooks/provision-data.yml"],
                          cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    failed = re.search(r'"msg": "Not provisioned: (.*)"', out)
    assert failed, out
    assert sorted(failed.group(1).split(", ")) == ["node-small", "node-unreachable"], out
    # One line per node in the summary; the good node went on and was provisioned.
    summary = re.search(r"TASK \[Show the result of every node\].*?\n(.*?)\n\nTASK", out, re.S)
    assert summary, out
    assert re.search(r'"node-good: changed', summary.group(1)), summary.group(1)
    assert re.search(r'"node-small: failed: .*smaller than the minimum size', summary.group(1)), summary.group(1)
    assert re.search(r'"node-unreachable: unreachable: .*Connection refused', summary.group(1)), summary.group(1)
    assert blkid(f"{good}p1")["LABEL"] == "KSOLODATA"
    assert blkid(small) == {}, "the refused disk was written"


# --------------------------------------------------------------------------------------------
# Issue 15: typed role inputs (item 12), saved network settings as data (item 7)
# --------------------------------------------------------------------------------------------

def test_wrong_input_types_are_errors_naming_the_variable(loops, tmp_path):
    disk = loops.add()
    _rc, result, out = provision(tmp_path, [disk], ksolodata_network={"mode": "static", "interface": "eth0",
                                                                     "address": "10.0.0.5/24",
                                                                     "dns": "10.0.0.1,10.0.0.2"})
    assert result["summary"]["status"] == "failed", out
    assert "ksolodata_network.dns must be a list of strings" in result["summary"]["msg"]
    _rc, result, out = provision(tmp_path, [disk], ksolodata_hostname=5, ksolodata_candidates=disk,
                                ksolodata_network={"mode": "dhcp", "mtu": "1500"})
    msg = result["summary"]["msg"]
    assert "ksolodata_hostname must be a string, not a int" in msg, out
    assert "ksolodata_candidates must be a list of strings, not a str" in msg
    assert "ksolodata_network.mtu is not a known key" in msg
    assert blkid(disk) == {}, "a refused run touched the disk"


def test_network_settings_saved_as_validated_data_and_old_script_removed(loops, tmp_path):
    disk = loops.add()
    assert provision(tmp_path, [disk])[0] == 0
    part = f"{disk}p1"
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    sh("mount", part, str(mnt))
    try:
        (mnt / "network" / "interfaces.sh").write_text("KUBESOLO_IFACE=eth0\nreturn 0\n")
    finally:
        sh("umount", str(mnt))
    network = {"mode": "static", "address": "203.0.113.7/32", "gateway": "172.31.1.1", "dns": ["185.12.64.1"]}
    rc, result, out = provision(tmp_path, [disk], ksolodata_network=network, ksolodata_update_config=True)
    assert rc == 0 and result["summary"]["status"] == "changed", out
    saved = read_data(tmp_path, part, "network/network.yaml")
    assert "    - addresses: [203.0.113.7/32]\n      gateway: 172.31.1.1\n      dns: [185.12.64.1]\n" in saved
    from ansible_collections.kubesolo.os.plugins.module_utils import cloudinit

    schema = cloudinit.load_schema(yaml.safe_load((REPO / "files" / "cloud-init-schema.yml").read_text()),
                                    yaml.safe_load((REPO / "files" / "kubesolo-flags.yml").read_text()),
                                    persistent_dirs())
    assert cloudinit.check(saved.encode(), schema).valid
    assert "remove network/interfaces.sh" in result["summary"]["plan"]
    sh("mount", "-o", "ro", part, str(mnt))
    try:
        assert not (mnt / "network" / "interfaces.sh").exists()
    finally:
        sh("umount", str(mnt))
    # An invalid address is refused by the boot's own rules before anything is written.
    rc, result, out = provision(tmp_path, [disk], ksolodata_network=dict(network, address="203.0.113.7/33"),
                                ksolodata_update_config=True)
    assert result["summary"]["status"] == "failed" and "network.interfaces[0].addresses[0]" in out, out


# --------------------------------------------------------------------------------------------
# Issue 15: growing KSOLODATA (items 1 and 2)
# --------------------------------------------------------------------------------------------
GB = 1000**3


def fs_info(part: str) -> dict[str, str]:
    out = sh("tune2fs", "-l", part).stdout
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def grow_backing(disk: str, size_bytes: int) -> None:
    with LoopDevices.backing(disk).open("r+b") as handle:
        handle.truncate(size_bytes)
    sh("losetup", "-c", disk)


def test_grow_past_the_resize_inode_limit_to_70_and_200_gb(loops, tmp_path):
    """A 64 MiB KSOLODATA grown to 70 GB and then 200 GB (over 1024 times its size: the resize inode's
    reserve is exceeded); each time the file system fills the partition and e2fsck -fn passes."""
    disk = loops.add(64)
    assert provision(tmp_path, [disk], ksolodata_min_size_gib=0.05)[0] == 0
    part = f"{disk}p1"
    assert "resize_inode" in fs_info(part)["Filesystem features"]
    for size in (70 * GB, 200 * GB):
        grow_backing(disk, size)
        rc, result, out = provision(tmp_path, [disk], ksolodata_min_size_gib=0.05, ksolodata_grow=True)
        assert rc == 0 and result["summary"]["status"] == "changed", out
        sh("e2fsck", "-fn", part)
        info = fs_info(part)
        part_bytes = int(Path(f"/sys/class/block/{Path(part).name}/size").read_text()) * 512
        assert part_bytes > size - 2 * MIB
        fs_bytes = int(info["Block count"]) * int(info["Block size"])
        assert part_bytes - fs_bytes < int(info["Blocks per group"]) * int(info["Block size"]), (fs_bytes, part_bytes)
        # Nothing left to do: a second run changes nothing.
        rc, result, out = provision(tmp_path, [disk], ksolodata_min_size_gib=0.05, ksolodata_grow=True)
        assert result["summary"]["status"] == "ok", out


def test_grow_of_a_mounted_ksolodata_never_claims_what_it_did_not_do(loops, tmp_path):
    """Online: the partition grows while mounted; the file system grows online when the kernel lets
    resize2fs (a KubeSolo OS node); where it does not (this test machine lacks CAP_SYS_RESOURCE), the run
    fails saying so, and every re-run says so again instead of reporting a change."""
    disk = loops.add(300)
    assert provision(tmp_path, [disk])[0] == 0
    part = f"{disk}p1"
    mnt = tmp_path / "mounted"
    mnt.mkdir()
    sh("mount", part, str(mnt))
    loops.mounts.append(mnt)
    grow_backing(disk, 600 * MIB)
    for _attempt in range(2):
        _rc, result, out = provision(tmp_path, [disk], ksolodata_grow=True)
        status, msg = result["summary"]["status"], result["summary"]["msg"]
        part_bytes = int(Path(f"/sys/class/block/{Path(part).name}/size").read_text()) * 512
        assert part_bytes > 590 * MIB, "the partition did not grow"
        info = fs_info(part)
        fs_bytes = int(info["Block count"]) * int(info["Block size"])
        if status == "changed":
            assert fs_bytes > 550 * MIB, out
            break
        assert status == "failed", out
        assert "online resize2fs of" in msg and "(mounted) failed" in msg, msg
        assert fs_bytes < 310 * MIB
    sh("umount", str(mnt))
    loops.mounts.remove(mnt)
    sh("e2fsck", "-fn", part)
    # Unmounted, the same run grows the file system offline and reports it.
    _rc, result, out = provision(tmp_path, [disk], ksolodata_grow=True)
    info = fs_info(part)
    assert result["summary"]["status"] in ("changed", "ok"), out
    assert int(info["Block count"]) * int(info["Block size"]) > 550 * MIB
    sh("e2fsck", "-fn", part)


def test_provisioning_zero_nodes_is_an_error_naming_the_group(tmp_path):
    """Issue 15, item 4: an inventory without kubesolo_nodes hosts (or a --limit matching none) fails."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"edge": {"hosts": {"node-a": {}}}}}}))
    result = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), "playbooks/provision-data.yml"],
                            cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0, result.stdout
    assert "No node to provision: the group kubesolo_nodes has no hosts in this inventory" in result.stdout
    assert "All 0 nodes provisioned" not in result.stdout
    # A --limit that matches hosts, none of them in the group.
    inventory.write_text(yaml.safe_dump({"all": {"children": {"kubesolo_nodes": {"hosts": {"node-a": {}}},
                                                              "edge": {"hosts": {"node-b": {}}}}}}))
    result = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), "playbooks/provision-data.yml",
                             "--limit", "node-b"], cwd=REPO, env=tool_env(), capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode != 0, result.stdout
    assert "No node to provision: the group kubesolo_nodes has no host matching --limit node-b" in result.stdout
