"""An A/B machine for the upgrade tests: an installed disk, booted by its own GRUB, again and again.

- `make_installed_disk` assembles the disk the install writes (files/installed-disk.yml: GPT bios-boot, ESP
  `KSOLOEFI`, `KSOLO_A`, `KSOLO_B`, `KSOLODATA`) from a build's outputs: the ESP image (GRUB for UEFI and BIOS,
  the A/B grub.cfg, GRUB's environment of a disk with this version in slot A), boot.img's code in the MBR,
  core.img in the bios-boot partition, the slot image in slot A, an empty ext4 KSOLODATA. It stands in for
  playbooks/install.yml (the `install` side), which the install tests check; the pieces are the product's.
- `ABMachine` boots that disk in QEMU under SeaBIOS or OVMF with -no-reboot: each reset of the guest (a
  reboot, a kernel panic with panic=10) ends QEMU and the machine starts it again from the disk, so every boot
  goes through the real GRUB, its grub.cfg and its boot counter in GRUB's environment. Each boot has its own
  serial log; `power_cut()` kills QEMU (SIGKILL) at once, and the next boot follows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import guest as guest_mod
import vmctl
import yaml
from ansible_collections.kubesolo.os.plugins.module_utils import disk_install
from contract import CONTRACT

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent
LAYOUT = yaml.safe_load((REPO / "files" / "installed-disk.yml").read_text())
BOOTED = re.compile(r"\[kubesolo-init\] \[ *[0-9.]+\] Booted slot ([AB]) \(version ([^)]*)\)(, trial boot)?")


def run(*cmd: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True, **kwargs)


def manifest(output: Path) -> dict:
    return json.loads((output / "manifest.json").read_text())


def partition_offsets(disk: Path) -> dict[str, int]:
    """GPT partition name -> byte offset, as sfdisk reads the disk's table."""
    table = json.loads(run("sfdisk", "-J", str(disk)).stdout)["partitiontable"]
    return {part["name"]: part["start"] * 512 for part in table["partitions"]}


def make_installed_disk(path: Path, output: Path, data_mib: int = 256) -> Path:
    """The disk an install of the build in `output` gives (see the module's docstring); the partition table
    and the slot size are the install's own (module_utils/disk_install.py: sfdisk_script, slot_size_sectors)."""
    info = manifest(output)
    slot, esp = output / info["slot_image"]["file"], output / info["esp_image"]["file"]
    slot_sectors = disk_install.slot_size_sectors(LAYOUT, slot.stat().st_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with path.open("wb") as handle:
        handle.truncate(disk_install.needed_sectors(LAYOUT, slot_sectors, data_mib, True) * 512)
    run("sfdisk", "-q", str(path), input=disk_install.sfdisk_script(LAYOUT, slot_sectors, True, CONTRACT["data_label"]))
    offsets = partition_offsets(path)
    names = {p["number"]: p["name"] for p in LAYOUT["partitions"] if not p.get("data")}
    esp_name, bios_name = names[2], names[1]
    run("dd", f"if={esp}", f"of={path}", "bs=1M", f"seek={offsets[esp_name] // MIB}", "conv=notrunc", "status=none")
    run("dd", f"if={slot}", f"of={path}", "bs=1M", f"seek={offsets['KSOLO_A'] // MIB}", "conv=notrunc",
        "status=none")
    work = path.with_suffix(".bios")
    work.mkdir(exist_ok=True)
    for name in ("bios_boot_img_path", "bios_core_img_path"):
        run("mcopy", "-n", "-o", "-i", str(esp), "::" + LAYOUT[name], str(work / Path(LAYOUT[name]).name))
    # boot.img's code (440 bytes) in the MBR, before the partition table; core.img in the bios-boot partition.
    run("dd", f"if={work / 'boot.img'}", f"of={path}", "bs=440", "count=1", "conv=notrunc", "status=none")
    run("dd", f"if={work / 'core.img'}", f"of={path}", "bs=512", f"seek={offsets[bios_name] // 512}",
        "conv=notrunc", "status=none")
    shutil.rmtree(work)
    run("mke2fs", "-q", "-F", "-t", "ext4", "-L", "KSOLODATA", "-E", f"offset={offsets['KSOLODATA']}", str(path),
        f"{(path.stat().st_size - offsets['KSOLODATA']) // 1024 - 64}k")
    return path


@dataclass
class Boot:
    guest: guest_mod.Guest
    started: float

    def booted(self, timeout: float = 300) -> tuple[str, bool, str]:
        """(slot, trial boot, version) as the node's init logged them (`Booted slot B (version X), trial boot`)."""
        deadline = time.monotonic() + timeout
        while True:
            match = BOOTED.search(self.guest.log)
            if match:
                return match.group(1), bool(match.group(3)), match.group(2)
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.guest.spec.name}: no 'Booted slot' line in {timeout}s")
            time.sleep(0.5)


@dataclass
class ABMachine:
    """One node: the installed disk, booted again and again (a thread) until stop(). `boots` lists each boot."""

    name: str
    workdir: Path
    disk: Path
    ssh_key: Path
    firmware: str = "bios"
    memory_mb: int = 448
    ssh_port: int = field(default_factory=guest_mod.free_port)
    boots: list[Boot] = field(default_factory=list)
    allowed_errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _loop(self) -> None:
        while not self._stop.is_set():
            spec = vmctl.VMSpec(
                name=f"{self.name}-boot{len(self.boots)}", workdir=self.workdir, disks=[self.disk],
                firmware=self.firmware, memory_mb=self.memory_mb, ssh_port=self.ssh_port, reboot=False,
            )
            if self.firmware == "uefi":
                # One firmware variable store for the machine, as on real hardware.
                store = self.workdir / f"{self.name}.OVMF_VARS.fd"
                if not store.exists():
                    shutil.copyfile(vmctl.OVMF_VARS, store)
                shutil.copyfile(store, self.workdir / f"{spec.name}.OVMF_VARS.fd")
            with self._lock:
                if self._stop.is_set():
                    return
                vmctl.start(spec)
                vm = guest_mod.Guest(spec, ssh_key=self.ssh_key, allowed_errors=list(self.allowed_errors))
                self.boots.append(Boot(vm, time.monotonic()))
            while not self._stop.is_set() and self._qemu_alive(spec):
                time.sleep(0.5)
            if self.firmware == "uefi":
                shutil.copyfile(self.workdir / f"{spec.name}.OVMF_VARS.fd", self.workdir / f"{self.name}.OVMF_VARS.fd")

    @staticmethod
    def _qemu_alive(spec: vmctl.VMSpec) -> bool:
        try:
            pid = int(spec.pidfile.read_text().strip())
        except (OSError, ValueError):
            return False
        return Path(f"/proc/{pid}").exists()

    # --- control ----------------------------------------------------------------------------
    def start(self) -> ABMachine:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    @property
    def current(self) -> guest_mod.Guest:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.boots:
                return self.boots[-1].guest
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: no boot started ({self.boots})")

    def wait_boot(self, count: int, timeout: float = 900) -> Boot:
        """Wait until the stand-in has started boot number `count` (1-based); returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.boots) >= count:
                return self.boots[count - 1]
            if self._thread is not None and not self._thread.is_alive():
                break
            time.sleep(0.5)
        raise AssertionError(f"{self.name}: boot {count} did not start within {timeout}s: {self.boots}")

    def ssh(self, command: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.current.ssh(command, timeout=timeout, check=check)

    def wait_ssh(self, timeout: float = 300) -> None:
        self.current.wait_ssh(timeout=timeout)

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL to the running QEMU (no shutdown, no cache flush of the guest)."""
        with self._lock:
            if not self.boots:
                return
            vm = self.boots[-1].guest
            try:
                pid = int(vm.spec.pidfile.read_text().strip())
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for boot in self.boots:
                boot.guest.stop()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def logs(self) -> str:
        return "".join(f"--- boot {i} ({b.guest.spec.name})\n" + b.guest.log for i, b in enumerate(self.boots))

    def unexpected_errors(self) -> list[str]:
        return [f"{self.name} boot {i}: {line}" for i, b in enumerate(self.boots)
                for line in b.guest.unexpected_errors()]

    def allow_errors(self, *patterns: str) -> None:
        """[ERROR] lines this test provokes on purpose, in every boot (past and future)."""
        self.allowed_errors.extend(patterns)
        for boot in self.boots:
            boot.guest.allow_errors(*patterns)
