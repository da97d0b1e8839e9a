"""A booted KubeSolo OS test VM: its serial log, its console input, and SSH into it.

Built on tests/vmctl.py (the one place that runs QEMU). Boot tests are judged by what the guest
prints on its serial console; state that the console cannot show is read over SSH (dropbear in the
test image, key-only, forwarded to 127.0.0.1).
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import vmctl

SSH_OPTIONS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "IdentitiesOnly=yes",
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=10",
    "-o", "LogLevel=ERROR",
]

MENU_DOWN = b"\x1b[B"
# Home: stops the menu's countdown (any key does, in isolinux's menu.c32 and in GRUB) and selects the first
# entry, so the entry is counted from the top whatever the default is.
MENU_HOME = b"\x1b[H"
# A root shell prompt: the login shells' PS1 (userland_ps1, `root@host:~# `) or the emergency shell's
# `(kubesolo-emergency) # `, wherever it is in the output (a kernel message may follow it).
SHELL_PROMPT = r"(?:\(kubesolo-emergency\) |[^\s@]+@[^\s:]+:[^\s#]*)# "
# busybox ash's cursor position query.
CURSOR_QUERY = "\x1b[6n"


def _drain(conn: socket.socket) -> None:
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for the guest's SSH forward."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Guest:
    spec: vmctl.VMSpec
    ssh_key: Path
    offset: int = 0
    started: float = field(default_factory=time.monotonic)
    allowed_errors: list[str] = field(default_factory=list)
    _serial: socket.socket | None = field(default=None, repr=False)

    # --- serial console -------------------------------------------------------------------
    @property
    def log(self) -> str:
        return vmctl.read_log(self.spec.serial_log)

    def wait(self, *patterns: str, timeout: float = 240, errors_fail: bool = True, poll: float = 0.25) -> str:
        """Wait for regexes in the serial output since the last mark(); returns that output."""
        text, _ = vmctl.wait_for(
            self.spec.serial_log, patterns, timeout,
            fail_patterns=(vmctl.ERROR_MARKER,) if errors_fail else (),
            offset=self.offset, pidfile=self.spec.pidfile, poll=poll,
        )
        return text

    def allow_errors(self, *patterns: str) -> None:
        """Declare the [ERROR] lines this test provokes on purpose (regexes searched in the line). Any other
        [ERROR] line in the serial log fails the test when its VMs are stopped (conftest.stop_guests)."""
        self.allowed_errors.extend(patterns)

    def unexpected_errors(self) -> list[str]:
        """The serial log's [ERROR] lines that no allow_errors() pattern matches."""
        lines = [line.strip() for line in self.log.splitlines() if vmctl.ERROR_MARKER in line]
        return [line for line in lines if not any(re.search(p, line) for p in self.allowed_errors)]

    def wait_booted(self, timeout: float = 240) -> float:
        """Wait for the stage-90 marker; returns seconds since QEMU started."""
        self.wait(re.escape(vmctl.SUCCESS_MARKER), timeout=timeout)
        return time.monotonic() - self.started

    def mark(self) -> None:
        """Later waits only look at output from here on."""
        self.offset = self.spec.serial_log.stat().st_size if self.spec.serial_log.exists() else 0

    def type(self, text: str | bytes, delay: float = 0.02) -> None:
        """Type into the serial console over one connection kept for the guest's lifetime
        (QEMU may drop bytes that arrive on a connection it has not taken up yet)."""
        if self._serial is None:
            self._serial = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._serial.connect(str(self.spec.serial_socket))
            # QEMU also sends the console output to this connection and stalls the guest's serial
            # port when nobody reads it: drain it (the log file has the same bytes).
            threading.Thread(target=_drain, args=(self._serial,), daemon=True).start()
            time.sleep(0.5)
        payload = text.encode() if isinstance(text, str) else text
        if delay <= 0:
            self._serial.sendall(payload)
            return
        for byte in payload:
            self._serial.sendall(bytes([byte]))
            time.sleep(delay)

    def choose_menu_entry(self, index: int, menu_pattern: str) -> None:
        """Pick the index-th entry (from the top) of the boot menu (isolinux or GRUB) with the arrow keys."""
        self.type(b"", delay=0)  # connect before the menu shows: its timeout is short
        self.wait(menu_pattern, timeout=120, poll=0.02)
        # First stop the countdown (a few seconds): a key at once, before any pause, so the menu cannot
        # boot its default while the entry is being chosen. Each escape sequence in one write: a lone ESC
        # followed by a pause is the Esc key.
        self.type(MENU_HOME, delay=0)
        time.sleep(0.3)
        for _ in range(index):
            self.type(MENU_DOWN, delay=0)
            time.sleep(0.3)
        self.type(b"\r", delay=0)

    def wait_shell_prompt(self, timeout: float = 60, errors_fail: bool = False) -> None:
        """Wait for a root shell prompt on the console and answer its terminal query.

        busybox ash asks the terminal for the cursor position (ESC [6n) and waits for the reply;
        a serial log is no terminal, so the reply is typed for it."""
        text = self.wait(SHELL_PROMPT, timeout=timeout, errors_fail=errors_fail, poll=0.1)
        prompt = list(re.finditer(SHELL_PROMPT, text))[-1]
        # The query follows the prompt, perhaps after a kernel message; it may also still be on its way.
        if CURSOR_QUERY not in text[prompt.end():]:
            time.sleep(0.5)
            text = vmctl.read_log(self.spec.serial_log, self.offset)
        if CURSOR_QUERY in text[prompt.end():]:
            self.type(b"\x1b[1;1R", delay=0)
        self.mark()

    # --- SSH ------------------------------------------------------------------------------
    def ssh_command(self, command: str) -> list[str]:
        assert self.spec.ssh_port, "this guest was started without an SSH forward"
        return ["ssh", *SSH_OPTIONS, "-i", str(self.ssh_key), "-p", str(self.spec.ssh_port),
                "root@127.0.0.1", command]

    def ssh(self, command: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.ssh_command(command), capture_output=True, text=True, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"ssh {command!r} exited {result.returncode}: {result.stdout}{result.stderr}")
        return result

    def wait_ssh(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            result = self.ssh("true", timeout=20, check=False)
            if result.returncode == 0:
                return
            last = result.stderr
            time.sleep(1)
        raise AssertionError(f"no SSH into {self.spec.name} within {timeout}s: {last}")

    def testinfra(self):
        """A testinfra host over SSH (no Python needed in the guest)."""
        import testinfra

        return testinfra.get_host(
            f"ssh://root@127.0.0.1:{self.spec.ssh_port}",
            ssh_identity_file=str(self.ssh_key),
            ssh_extra_args=" ".join(SSH_OPTIONS),
        )

    # --- lifecycle ------------------------------------------------------------------------
    def stop(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None
        vmctl.stop(self.spec.pidfile)

    def wait_exit(self, timeout: float = 60) -> None:
        """Wait until QEMU exits by itself (a guest poweroff, or a reboot with -no-reboot)."""
        deadline = time.monotonic() + timeout
        pid = int(self.spec.pidfile.read_text().strip()) if self.spec.pidfile.exists() else 0
        while pid and time.monotonic() < deadline:
            try:
                Path(f"/proc/{pid}").stat()
            except FileNotFoundError:
                return
            time.sleep(0.25)
        if pid:
            raise AssertionError(f"{self.spec.name} still running after {timeout}s")
