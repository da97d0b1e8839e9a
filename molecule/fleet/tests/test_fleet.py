"""testinfra checks of the fleet scenario, run over SSH after provisioning and the reboot."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DATA = "/mnt/data"


def _vars(host) -> dict:
    return host.ansible.get_variables()


def test_ksolodata_is_mounted(host):
    mounts = host.file("/proc/mounts").content_string
    line = next((m for m in mounts.splitlines() if m.split()[1:2] == [DATA]), "")
    assert line.split()[2] == "ext4", line
    device = line.split()[0]
    label = host.run(f"/sbin/blkid -o value -s LABEL {device}")
    assert label.stdout.strip() == "KSOLODATA"
    partname = host.run(f"/sbin/blkid -p -o value -s PART_ENTRY_NAME {device}")
    assert partname.stdout.strip() == "KSOLODATA"
    assert device == "/dev/vdb1"
    for dest in ("/var/lib/kubesolo", "/etc/kubesolo", "/var/log", "/usr/local"):
        assert f" {dest} " in mounts, f"{dest} is not bind-mounted"


def test_provisioned_hostname(host):
    expected = _vars(host)["ksolodata_hostname"]
    assert host.run("hostname").stdout.strip() == expected
    assert host.file(f"{DATA}/etc-kubesolo/hostname").content_string.strip() == expected


def test_provisioned_network(host):
    network = _vars(host)["ksolodata_network"]
    saved = host.file(f"{DATA}/network/network.yaml")
    assert saved.exists and "ksolodata" in saved.content_string
    assert not host.file(f"{DATA}/network/interfaces.sh").exists
    addresses = host.run("ip -4 -o addr show").stdout
    assert "10.0.2.15/24" in addresses
    dhcp = host.run("pidof udhcpc")
    if network["mode"] == "static":
        assert dhcp.rc != 0, "udhcpc runs although the node is configured statically"
        assert "nameserver 10.0.2.3" in host.file("/etc/resolv.conf").content_string
        assert "default via 10.0.2.2" in host.run("ip -4 route").stdout
    else:
        assert dhcp.rc == 0, "udhcpc does not run on the DHCP node"


def test_kubesolo_config_is_private(host):
    config = host.file("/etc/kubesolo/config.yaml")
    assert config.exists
    assert config.mode == 0o600
    assert "portainer-edge-id: fleet-test" in config.content_string


def test_other_disks_untouched(host):
    if host.backend.get_hostname() == "fleet-node-2":
        # The disk holding another file system was refused by the automatic choice.
        probe = host.run("/sbin/blkid -p -o export /dev/vda").stdout
        assert "TYPE=ext4" in probe and "LABEL=OTHERDATA" in probe
        assert "PTTYPE" not in probe
    else:
        # The second blank disk was not named, so it stays blank.
        assert host.run("/sbin/blkid -p /dev/vda").rc == 2


def test_kubesolo_stays_up_after_the_reboot(host):
    """The one check of the test suite (tests/guest.py): after provisioning and the reboot, KubeSolo started
    once, is still that process after the supervisor's longest back-off, and kubesolo.restarts is 0."""
    workdir = Path(_vars(host)["fleet_workdir"])
    project = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", workdir.parents[2]))
    sys.path.insert(0, str(project / "tests"))
    import guest

    name = host.backend.get_hostname()
    result = guest.check_kubesolo_alive(workdir / f"{name}.serial.log", workdir / f"{name}.pid",
                                        ssh=lambda command: host.check_output(command))
    assert result["pid"] != 1
