"""An A/B machine for the upgrade tests: an installed disk and a TEST DOUBLE of its boot loader.

NOT the product's boot loader. The installed disk's real GRUB and its grub.cfg come from the `install` side
(playbooks/install.yml); until its layout is available here, this stand-in boots the disk the way the
agreed interface says that GRUB does (/work/coord/ab-interface.md, docs/ab-upgrades.md), so that the node
side (slot agent, watchdog, kubesolo-slot) and playbooks/upgrade.yml and rollback.yml run for real:

- the disk is the interface's GPT layout (bios-boot, ESP `KSOLOEFI` with /grub/grubenv, `KSOLO_A`,
  `KSOLO_B`, `KSOLODATA`), built with sfdisk, mkfs.vfat/mtools and mke2fs;
- before every boot the stand-in reads GRUB's environment from the ESP inside the disk image (mtools,
  grub-editenv), and, like grub.cfg: a KSOLO_TRIAL of A or B with tries 1-3 -> decrement and save the tries,
  boot that slot with `kubesolo.slot=<slot> kubesolo.trial`; else boot KSOLO_ACTIVE with `kubesolo.slot=`;
- it boots what is IN that slot partition: /boot/vmlinuz and /boot/initramfs read out of the slot's file
  system (unsquashfs at the partition's offset); a slot it cannot read is a failed boot, as for GRUB;
- QEMU runs with -no-reboot; a guest reboot (or a kernel panic with panic=10) ends QEMU and the stand-in boots
  again, like firmware + GRUB after a reset. `power_cut()` kills QEMU (SIGKILL) at once.

The slot image here is a squashfs holding boot/vmlinuz, boot/initramfs (the direct-boot initramfs, which
carries the KubeSolo system image) and boot/version: what the interface names, in the simplest form.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import guest as guest_mod
import vmctl

MIB = 1024 * 1024
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
# The boot contract's default entry (files/boot-contract.yml: `quiet`) + what grub.cfg adds.
APPEND = "console=ttyS0,115200n8 panic=10"


def run(*cmd: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True, **kwargs)


def slot_image(output: Path, dest_dir: Path) -> Path:
    """The slot image of a build: output/kubesolo-os-<v>-amd64-slot.img when the build makes one (manifest
    key slot_image), else this stand-in's squashfs of the build's kernel, initramfs and version, written
    with a manifest.json (the build's, plus slot_image) into dest_dir. Returns the directory to upgrade from
    (upgrade_output_dir)."""
    manifest = json.loads((output / "manifest.json").read_text())
    if "slot_image" in manifest:
        return output
    version = manifest["image"]["version"]
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = f"kubesolo-os-{version}-amd64-slot.img"
    image = dest_dir / name
    stamp = dest_dir / "inputs.sha256"
    inputs = run("sha256sum", str(output / "vmlinuz"), str(output / "initramfs")).stdout
    if not (image.exists() and stamp.exists() and stamp.read_text() == inputs):
        tree = dest_dir / "tree"
        shutil.rmtree(tree, ignore_errors=True)
        (tree / "boot").mkdir(parents=True)
        shutil.copyfile(output / "vmlinuz", tree / "boot" / "vmlinuz")
        shutil.copyfile(output / "initramfs", tree / "boot" / "initramfs")
        (tree / "boot" / "version").write_text(version + "\n")
        image.unlink(missing_ok=True)
        run("mksquashfs", str(tree), str(image), "-noappend", "-quiet", "-no-progress", "-all-root")
        shutil.rmtree(tree)
        stamp.write_text(inputs)
    sha = run("sha256sum", str(image)).stdout.split()[0]
    manifest["slot_image"] = {"file": name, "sha256": sha, "size": image.stat().st_size}
    (dest_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return dest_dir


@dataclass
class Layout:
    """Partition offsets and sizes (bytes) of the installed disk."""

    slot_mib: int = 160
    esp_mib: int = 64
    data_mib: int = 256

    def parts(self) -> list[tuple[str, str, int]]:
        return [("bios-boot", BIOS_BOOT, 1), ("KSOLOEFI", ESP, self.esp_mib), ("KSOLO_A", LINUX, self.slot_mib),
                ("KSOLO_B", LINUX, self.slot_mib), ("KSOLODATA", LINUX, self.data_mib)]

    def offset(self, name: str) -> int:
        start = 1  # MiB: sfdisk's default first-partition alignment
        for part, _, size in self.parts():
            if part == name:
                return start * MIB
            start += size
        raise KeyError(name)

    @property
    def disk_mib(self) -> int:
        return 1 + sum(size for _, _, size in self.parts()) + 1


def make_installed_disk(path: Path, upgrade_dir: Path, layout: Layout | None = None) -> Path:
    """A raw disk installed with the slot image of upgrade_dir in slot A (the stand-in of install.yml's
    result): GRUB environment ACTIVE=A, A's version, last result `installed`; an empty ext4 KSOLODATA."""
    layout = layout or Layout()
    manifest = json.loads((upgrade_dir / "manifest.json").read_text())
    image = upgrade_dir / manifest["slot_image"]["file"]
    version = manifest["image"]["version"]
    assert image.stat().st_size <= layout.slot_mib * MIB
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with path.open("wb") as handle:
        handle.truncate(layout.disk_mib * MIB)
    table = "label: gpt\n" + "".join(f"size={size}MiB, type={kind}, name={name}\n"
                                      for name, kind, size in layout.parts())
    run("sfdisk", "-q", str(path), input=table)
    work = path.with_suffix(".parts")
    work.mkdir(exist_ok=True)
    esp = work / "esp.img"
    esp.unlink(missing_ok=True)
    run("mkfs.vfat", "-F", "32", "-n", "KSOLOEFI", "-C", str(esp), str(layout.esp_mib * 1024))
    env = work / "grubenv"
    env.unlink(missing_ok=True)
    run("grub-editenv", str(env), "create")
    run("grub-editenv", str(env), "set", "KSOLO_ACTIVE=A", "KSOLO_TRIAL=", "KSOLO_TRIAL_TRIES=0",
        f"KSOLO_A_VERSION={version}", "KSOLO_B_VERSION=", "KSOLO_LAST_RESULT=installed",
        f"KSOLO_LAST_VERSION={version}")
    run("mmd", "-i", str(esp), "::/grub")
    run("mcopy", "-i", str(esp), str(env), "::/grub/grubenv")
    run("dd", f"if={esp}", f"of={path}", "bs=1M", f"seek={layout.offset('KSOLOEFI') // MIB}", "conv=notrunc,sparse",
        "status=none")
    run("dd", f"if={image}", f"of={path}", "bs=1M", f"seek={layout.offset('KSOLO_A') // MIB}", "conv=notrunc",
        "status=none")
    run("mke2fs", "-q", "-F", "-t", "ext4", "-L", "KSOLODATA", "-E", f"offset={layout.offset('KSOLODATA')}",
        str(path), f"{layout.data_mib * 1024}k")
    shutil.rmtree(work)
    return path


@dataclass
class Boot:
    slot: str
    trial: bool
    guest: guest_mod.Guest | None
    started: float
    note: str = ""


@dataclass
class ABMachine:
    """One node: the installed disk, booted again and again by the boot-loader stand-in (a thread) until
    stop(). Each boot has its own serial log; `boots` records what the stand-in chose."""

    name: str
    workdir: Path
    disk: Path
    ssh_key: Path
    layout: Layout = field(default_factory=Layout)
    memory_mb: int = 448
    ssh_port: int = field(default_factory=guest_mod.free_port)
    boots: list[Boot] = field(default_factory=list)
    allowed_errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- the boot loader stand-in -----------------------------------------------------------
    def _env_file(self) -> Path:
        return self.workdir / f"{self.name}.grubenv"

    def read_env(self) -> dict[str, str]:
        local = self._env_file()
        local.unlink(missing_ok=True)
        run("mcopy", "-n", "-i", f"{self.disk}@@{self.layout.offset('KSOLOEFI')}", "::/grub/grubenv", str(local))
        listed = run("grub-editenv", str(local), "list").stdout
        return dict(line.split("=", 1) for line in listed.splitlines() if "=" in line)

    def _save_tries(self, tries: int) -> None:
        local = self._env_file()
        run("grub-editenv", str(local), "set", f"KSOLO_TRIAL_TRIES={tries}")
        run("mcopy", "-o", "-n", "-i", f"{self.disk}@@{self.layout.offset('KSOLOEFI')}", str(local),
            "::/grub/grubenv")

    def choose(self) -> tuple[str, bool]:
        """grub.cfg's choice, with its save_env of the decremented tries."""
        env = self.read_env()
        trial, tries = env.get("KSOLO_TRIAL", ""), env.get("KSOLO_TRIAL_TRIES", "")
        if trial in ("A", "B") and tries in ("1", "2", "3"):
            self._save_tries(int(tries) - 1)
            return trial, True
        return env.get("KSOLO_ACTIVE", "A"), False

    def _extract(self, slot: str, dest: Path) -> bool:
        shutil.rmtree(dest, ignore_errors=True)
        result = subprocess.run(["unsquashfs", "-q", "-n", "-o", str(self.layout.offset(f"KSOLO_{slot}")), "-d",
                                 str(dest), str(self.disk), "boot/vmlinuz", "boot/initramfs"],
                                capture_output=True, text=True, timeout=300, check=False)
        return result.returncode == 0 and (dest / "boot" / "initramfs").exists()

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            slot, trial = self.choose()
            files = self.workdir / f"{self.name}.slot{slot}"
            n = len(self.boots)
            if not self._extract(slot, files):
                self.boots.append(Boot(slot, trial, None, time.monotonic(), note="slot unreadable"))
                failures += 1
                if failures > 3:
                    return
                continue
            spec = vmctl.VMSpec(
                name=f"{self.name}-boot{n}", workdir=self.workdir, kernel=files / "boot" / "vmlinuz",
                initrd=files / "boot" / "initramfs",
                append=f"{APPEND} quiet kubesolo.slot={slot}" + (" kubesolo.trial" if trial else ""),
                disks=[self.disk], memory_mb=self.memory_mb, ssh_port=self.ssh_port, reboot=False,
            )
            with self._lock:
                if self._stop.is_set():
                    return
                vmctl.start(spec)
                vm = guest_mod.Guest(spec, ssh_key=self.ssh_key, allowed_errors=list(self.allowed_errors))
                self.boots.append(Boot(slot, trial, vm, time.monotonic()))
            while not self._stop.is_set() and self._qemu_alive(spec):
                time.sleep(0.5)

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
            if self.boots and self.boots[-1].guest is not None:
                return self.boots[-1].guest
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: no boot started ({self.boots})")

    def wait_boot(self, count: int, timeout: float = 900) -> Boot:
        """Wait until the stand-in has started boot number `count` (1-based); returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.boots) >= count and self.boots[count - 1].guest is not None:
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
            vm = self.boots[-1].guest if self.boots else None
            if vm is None:
                return
            try:
                pid = int(vm.spec.pidfile.read_text().strip())
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for boot in self.boots:
                if boot.guest is not None:
                    boot.guest.stop()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def logs(self) -> str:
        return "".join(f"--- boot {i} slot {b.slot}{' trial' if b.trial else ''} {b.note}\n"
                       + (b.guest.log if b.guest else "") for i, b in enumerate(self.boots))

    def unexpected_errors(self) -> list[str]:
        return [f"{self.name} boot {i}: {line}" for i, b in enumerate(self.boots) if b.guest
                for line in b.guest.unexpected_errors()]

    def allow_errors(self, *patterns: str) -> None:
        """[ERROR] lines this test provokes on purpose, in every boot (past and future)."""
        self.allowed_errors.extend(patterns)
        for boot in self.boots:
            if boot.guest is not None:
                boot.guest.allow_errors(*patterns)
