#!/usr/bin/env python3
"""Start, watch and stop KubeSolo OS test VMs under QEMU.

The one place that runs QEMU for the test suite: the molecule scenarios call it as a command,
the pytest boot tests import it. Boot tests are judged by what the guest prints on its first
serial port, which QEMU writes to a log file.

QEMU always runs under TCG (KVM hangs on the test machines) with user networking restricted
to the guest (``restrict=on``); host forwards bind to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from contract import CONTRACT, HANDOVER_MARKER

ERROR_MARKER = "[kubesolo-init] [ERROR]"

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


class VMError(RuntimeError):
    """A VM could not be started, or did not print what was expected."""


@dataclass
class VMSpec:
    """What to boot and with which hardware."""

    name: str
    workdir: Path
    iso: Path | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    disks: list[Path] = field(default_factory=list)
    readonly_disks: list[Path] = field(default_factory=list)  # virtio disks after `disks`, write-protected
    usb_disk: Path | None = None
    memory_mb: int = 512
    cpus: int = 1
    ssh_port: int | None = None
    firmware: str = "bios"  # bios (SeaBIOS) or uefi (OVMF)
    mac: str | None = None
    reboot: bool = True
    network: bool = True
    # False only for `make test-real` (the real KubeSolo pulls images): the guest may then reach outside.
    restrict: bool = True
    extra_args: list[str] = field(default_factory=list)

    @property
    def serial_log(self) -> Path:
        return self.workdir / f"{self.name}.serial.log"

    @property
    def pidfile(self) -> Path:
        return self.workdir / f"{self.name}.pid"

    @property
    def serial_socket(self) -> Path:
        """Unix socket of the first serial port, for typing into the guest (kept short: 108 bytes)."""
        return Path("/tmp") / f"ksos-vm-{self.name}.sock"


def qemu_command(spec: VMSpec) -> list[str]:
    """The QEMU command line for a spec (pure: no side effects)."""
    cmd = [
        "qemu-system-x86_64",
        "-name", spec.name,
        "-accel", "tcg",
        "-m", str(spec.memory_mb),
        "-smp", str(spec.cpus),
        "-display", "none",
        "-monitor", "none",
        # The first serial port is a socket (to type into) whose output QEMU also logs to a file.
        "-chardev", f"socket,id=ser0,path={spec.serial_socket},server=on,wait=off,"
                    f"logfile={spec.serial_log},logappend=off",
        "-serial", "chardev:ser0",
        "-daemonize",
        "-pidfile", str(spec.pidfile),
    ]
    if not spec.reboot:
        cmd.append("-no-reboot")
    if spec.firmware == "uefi":
        vars_copy = spec.workdir / f"{spec.name}.OVMF_VARS.fd"
        if not vars_copy.exists():
            shutil.copyfile(OVMF_VARS, vars_copy)
        cmd += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ]
    elif spec.firmware != "bios":
        raise VMError(f"unknown firmware {spec.firmware!r}: use bios or uefi")
    if spec.kernel:
        cmd += ["-kernel", str(spec.kernel)]
        if spec.initrd:
            cmd += ["-initrd", str(spec.initrd)]
        cmd += ["-append", spec.append]
    if spec.iso:
        cmd += ["-drive", f"file={spec.iso},media=cdrom,readonly=on,if=ide,index=2", "-boot", "order=dc"]
    for disk in spec.disks:
        cmd += ["-drive", f"file={disk},if=virtio,format=raw,cache=unsafe"]
    for disk in spec.readonly_disks:
        cmd += ["-drive", f"file={disk},if=virtio,format=raw,readonly=on"]
    if spec.usb_disk:
        cmd += [
            "-device", "qemu-xhci,id=xhci",
            "-drive", f"if=none,id=usbstick,format=raw,file={spec.usb_disk},cache=unsafe",
            "-device", "usb-storage,bus=xhci.0,drive=usbstick,bootindex=0",
        ]
    if not spec.network:
        cmd += ["-nic", "none"]
        return cmd + spec.extra_args
    nic = f"user,model=virtio-net-pci,restrict={'on' if spec.restrict else 'off'}"
    if spec.mac:
        nic += f",mac={spec.mac}"
    if spec.ssh_port:
        nic += f",hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"
    cmd += ["-nic", nic]
    return cmd + spec.extra_args


def start(spec: VMSpec) -> int:
    """Start the VM in the background; returns QEMU's pid. The serial log starts empty."""
    spec.workdir.mkdir(parents=True, exist_ok=True)
    stop(spec.pidfile)
    spec.serial_log.write_bytes(b"")
    cmd = qemu_command(spec)
    (spec.workdir / f"{spec.name}.cmdline").write_text(" ".join(cmd) + "\n")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise VMError(f"QEMU failed to start {spec.name}: {result.stderr.strip()}")
    return int(spec.pidfile.read_text().strip())


def send(socket_path: Path, data: bytes | str, delay: float = 0.0) -> None:
    """Type into the guest's first serial port (one byte at a time when delay > 0)."""
    payload = data.encode() if isinstance(data, str) else data
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(socket_path))
        if delay <= 0:
            conn.sendall(payload)
        else:
            for byte in payload:
                conn.sendall(bytes([byte]))
                time.sleep(delay)
        # Give QEMU time to read everything before the connection closes.
        time.sleep(0.2)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(pidfile: Path, timeout: float = 10.0) -> bool:
    """Stop the QEMU recorded in pidfile (and only that one). True if one was running."""
    if not pidfile.exists():
        return False
    try:
        pid = int(pidfile.read_text().strip())
    except ValueError:
        pidfile.unlink()
        return False
    # Only signal a QEMU: a stale pidfile may name a recycled pid.
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        pidfile.unlink(missing_ok=True)
        return False
    if not comm.startswith("qemu"):
        pidfile.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return True


def read_log(path: Path, offset: int = 0) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def wait_for(
    log: Path,
    patterns: Sequence[str],
    timeout: float,
    fail_patterns: Sequence[str] = (ERROR_MARKER,),
    offset: int = 0,
    pidfile: Path | None = None,
    poll: float = 0.25,
) -> tuple[str, float]:
    """Wait until every regex in patterns has appeared in the serial log (after offset).

    Raises VMError naming what was missing when a fail pattern shows first, QEMU exits, or time
    runs out. Returns the log text read and the seconds waited.
    """
    started = time.monotonic()
    compiled = [re.compile(p) for p in patterns]
    failing = [re.compile(re.escape(p)) if not p.startswith("re:") else re.compile(p[3:]) for p in fail_patterns]
    text = ""
    while True:
        text = read_log(log, offset)
        # Failures first: an error printed in the same poll as the last awaited pattern still fails.
        for pattern in failing:
            match = pattern.search(text)
            if match:
                line_end = text.find("\n", match.start())
                line = text[match.start(): line_end if line_end != -1 else None]
                raise VMError(f"guest reported a failure: {line.strip()!r} (log: {log})")
        if all(p.search(text) for p in compiled):
            return text, time.monotonic() - started
        if pidfile is not None and pidfile.exists():
            pid = int(pidfile.read_text().strip() or 0)
            if pid and not _pid_alive(pid):
                raise VMError(f"QEMU exited before {missing(compiled, text)} appeared (log: {log})")
        if time.monotonic() - started > timeout:
            raise VMError(f"timed out after {timeout:.0f}s waiting for {missing(compiled, text)} (log: {log})")
        time.sleep(poll)


def missing(patterns: Sequence[re.Pattern[str]], text: str) -> str:
    return ", ".join(repr(p.pattern) for p in patterns if not p.search(text))


def make_data_disk(
    path: Path, size_mb: int = 256, label: str = CONTRACT["data_label"], fs: str | None = "ext4",
    content: Path | None = None
) -> Path:
    """A raw disk image holding one file system over the whole disk (no partition table),
    optionally filled with the files of a directory (mke2fs -d)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size_mb * 1024 * 1024)
    if fs:
        populate = ["-d", str(content)] if content else []
        subprocess.run(
            ["mkfs." + fs, "-q", "-F", "-L", label, *populate, str(path)],
            check=True, capture_output=True, timeout=120,
        )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_start = sub.add_parser("start", help="start a VM in the background")
    p_start.add_argument("--name", required=True)
    p_start.add_argument("--workdir", type=Path, required=True)
    p_start.add_argument("--iso", type=Path)
    p_start.add_argument("--kernel", type=Path)
    p_start.add_argument("--initrd", type=Path)
    p_start.add_argument("--append", default="")
    p_start.add_argument("--disk", type=Path, action="append", default=[])
    p_start.add_argument("--usb-disk", type=Path)
    p_start.add_argument("--memory", type=int, default=512)
    p_start.add_argument("--ssh-port", type=int)
    p_start.add_argument("--firmware", choices=["bios", "uefi"], default="bios")
    p_start.add_argument("--mac")

    p_wait = sub.add_parser("wait", help="wait for patterns in a serial log")
    p_wait.add_argument("--log", type=Path, required=True)
    p_wait.add_argument("--pattern", action="append", default=[])
    p_wait.add_argument("--timeout", type=float, default=300)
    p_wait.add_argument("--pidfile", type=Path)

    p_stop = sub.add_parser("stop", help="stop the VM recorded in a pidfile")
    p_stop.add_argument("--pidfile", type=Path, required=True)

    p_disk = sub.add_parser("disk", help="make a raw disk image with one file system")
    p_disk.add_argument("--path", type=Path, required=True)
    p_disk.add_argument("--size-mb", type=int, default=256)
    p_disk.add_argument("--label", default=CONTRACT["data_label"])
    p_disk.add_argument("--fs", default="ext4", help="file system type, or 'none' for a blank disk")

    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            spec = VMSpec(
                name=args.name, workdir=args.workdir, iso=args.iso, kernel=args.kernel, initrd=args.initrd,
                append=args.append, disks=args.disk, usb_disk=args.usb_disk, memory_mb=args.memory,
                ssh_port=args.ssh_port, firmware=args.firmware, mac=args.mac,
            )
            print(start(spec))
        elif args.command == "wait":
            _, waited = wait_for(args.log, args.pattern or [re.escape(HANDOVER_MARKER)], args.timeout,
                                 pidfile=args.pidfile)
            print(f"{waited:.1f}")
        elif args.command == "stop":
            print("stopped" if stop(args.pidfile) else "not running")
        elif args.command == "disk":
            make_data_disk(args.path, args.size_mb, args.label, None if args.fs == "none" else args.fs)
    except VMError as exc:
        print(f"vmctl: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
