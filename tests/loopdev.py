"""Loop devices over sparse files for the media and provisioning tests; every device is detached at teardown.

The host kernel does not scan partition tables of loop devices: ``scan_partitions`` runs ``partx -a`` so the
partition nodes of an image that has a table appear (../shared/notes/test-machine.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path

MIB = 1024 * 1024


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=check)


class LoopDevices:
    """Loop devices of one test, over sparse files in its work directory."""

    def __init__(self, workdir: Path, name: str = "disk", scan_partitions: bool = False) -> None:
        self.workdir = workdir
        self.name = name
        self.scan_partitions = scan_partitions
        self.devices: list[str] = []
        self.mounts: list[Path] = []  # unmounted (in reverse) before the devices are detached

    def add(self, size_mib: int = 600) -> str:
        """Attach a new sparse file of ``size_mib`` MiB; returns the /dev/loopN path."""
        backing = self.workdir / f"{self.name}-{len(self.devices)}.img"
        with open(backing, "wb") as handle:
            handle.truncate(size_mib * MIB)
        device = sh("losetup", "-f", "--show", str(backing)).stdout.strip()
        self.devices.append(device)
        if self.scan_partitions:
            sh("partx", "-a", device, check=False)
        return device

    @staticmethod
    def backing(device: str) -> Path:
        """The file behind an attached loop device."""
        return Path(Path(f"/sys/block/{Path(device).name}/loop/backing_file").read_text().strip())

    def cleanup(self) -> None:
        for point in reversed(self.mounts):
            sh("umount", "-R", str(point), check=False)
        for device in reversed(self.devices):
            sh("partx", "-d", device, check=False)
            sh("losetup", "-d", device, check=False)
        self.mounts.clear()
        self.devices.clear()
