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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import vmctl
from contract import HANDOVER_MARKER

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
        self.wait(re.escape(HANDOVER_MARKER), timeout=timeout)
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


# --- KubeSolo still running after the handover ------------------------------------------------
# One check for every boot test and the molecule scenarios (issue 18): KubeSolo (the test double)
# started once, is still that same process after the supervisor's longest back-off, was never
# restarted, and nothing in the log says it exited. Run as a command for molecule:
#   python3 tests/guest.py kubesolo-alive --log SERIAL.LOG --pidfile QEMU.PID [--handover exec]
#                                 [--ssh-port PORT --ssh-key KEY] [--window SECONDS]

BOOT_START = "KubeSolo OS init starting (stages:"
DOUBLE_RUNNING = "[kubesolo-test-double] running"
KUBESOLO_STARTED = {"supervise": "Starting KubeSolo (", "exec": "as PID 1"}
NOT_ALIVE = ("KubeSolo exited", "[kubesolo-test-double] refused", "[kubesolo-test-double] stopping", "Kernel panic")


def restart_max_delay() -> int:
    """Seconds of the supervisor's longest back-off in the test image: init_kubesolo_restart_max_delay of
    tests/build-vars.yml, else the init role's default."""
    import yaml

    repo = Path(__file__).resolve().parent.parent
    for source in (repo / "tests" / "build-vars.yml", repo / "roles" / "init" / "defaults" / "main.yml"):
        value = (yaml.safe_load(source.read_text()) or {}).get("init_kubesolo_restart_max_delay")
        if value is not None:
            return int(value)
    raise AssertionError("init_kubesolo_restart_max_delay is not set")


def _last_boot_offset(log: Path) -> int:
    """Byte offset of the last boot's first init line in the serial log (a reboot appends to it)."""
    data = log.read_bytes() if log.exists() else b""
    # The init prints it once per boot (after it has left the initramfs rootfs and re-executed itself).
    return max(0, data.rfind(BOOT_START.encode()))


def check_kubesolo_alive(log: Path, pidfile: Path | None = None, *, handover: str = "supervise",
                         ssh: Callable[[str], str] | None = None, window: float | None = None,
                         timeout: float = 180, settle: float = 1.0) -> dict[str, float | int]:
    """Wait for the test double's "running" line of the last boot, then until the supervisor's longest
    back-off (window, default restart_max_delay()) has passed since KubeSolo started, and check:
    exactly one start (one pid= line, one running line) and none of NOT_ALIVE in the log; in exec mode its
    pid line is exactly pid=1, in supervise mode it is not. With ssh (a function running a guest command and
    returning its stdout): kubesolo.restarts is 0 and kubesolo.pid is that same, living, kubesolo process.
    Raises AssertionError naming what is wrong; returns the pid and the seconds waited."""
    if handover not in KUBESOLO_STARTED:
        raise ValueError(f"handover must be supervise or exec, not {handover!r}")
    window = float(restart_max_delay() if window is None else window)
    offset = _last_boot_offset(log)
    try:
        text, _ = vmctl.wait_for(log, [re.escape(DOUBLE_RUNNING)], timeout, fail_patterns=NOT_ALIVE, offset=offset,
                                 pidfile=pidfile)
    except vmctl.VMError as exc:
        raise AssertionError(f"KubeSolo did not come up and stay up: {exc}") from exc
    seen = time.monotonic()
    remaining = window
    if ssh is not None:
        # Guest clock: seconds since the supervisor (or init) started KubeSolo, from its log line's stamp.
        started = [line for line in text.splitlines() if KUBESOLO_STARTED[handover] in line]
        stamp = re.search(r"\[kubesolo-init\] \[\s*([0-9.]+)\]", started[-1]) if started else None
        if stamp:
            uptime = float(ssh("cut -d' ' -f1 /proc/uptime").split()[0])
            remaining = window - (uptime - float(stamp.group(1)))
    # The back-off's end, plus settle seconds for a respawned supervisor to log its line.
    time.sleep(max(0.0, remaining) + settle)
    text = vmctl.read_log(log, offset)
    for marker in NOT_ALIVE:
        assert marker not in text, f"{marker!r} in the serial log of {log}: KubeSolo did not stay up"
    pids = re.findall(r"^\[kubesolo-test-double\] pid=(\S*?)\r?$", text, re.M)
    assert len(pids) == 1, f"KubeSolo started {len(pids)} times in the last boot (pid lines {pids}) in {log}"
    assert text.count(DOUBLE_RUNNING) == 1, f"KubeSolo reported running {text.count(DOUBLE_RUNNING)} times in {log}"
    pid = int(pids[0])
    if handover == "exec":
        assert pid == 1, f"exec handover: KubeSolo reported pid={pids[0]}, not PID 1 ({log})"
    else:
        assert pid != 1, f"supervise handover: KubeSolo is PID 1 ({log})"
    if ssh is not None:
        if handover == "supervise":
            restarts = ssh("cat /run/kubesolo-os/kubesolo.restarts").strip()
            assert restarts == "0", f"kubesolo.restarts is {restarts!r}, not 0: the supervisor restarted KubeSolo"
            recorded = ssh("cat /run/kubesolo-os/kubesolo.pid").strip()
            assert recorded == str(pid), f"kubesolo.pid is {recorded}, the double reported pid={pid}"
        state = ssh(f"cut -d' ' -f3 /proc/{pid}/stat; readlink /proc/{pid}/exe").split()
        assert len(state) == 2 and state[0] in "RS" and state[1].endswith("/kubesolo"), \
            f"process {pid} is not a living kubesolo: {state}"
    return {"pid": pid, "waited": round(time.monotonic() - seen, 1)}


def assert_kubesolo_alive(vm: Guest, *, handover: str = "supervise", ssh: bool | None = None,
                          window: float | None = None, timeout: float = 180) -> dict[str, float | int]:
    """check_kubesolo_alive for a booted Guest; over SSH too when the guest has an SSH forward (or ssh=True)."""
    use_ssh = bool(vm.spec.ssh_port) if ssh is None else ssh
    runner = (lambda command: vm.ssh(command).stdout) if use_ssh else None
    if use_ssh:
        vm.wait_ssh()
    return check_kubesolo_alive(vm.spec.serial_log, vm.spec.pidfile, handover=handover, ssh=runner, window=window,
                                timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(description="Checks on a booted KubeSolo OS test VM.")
    sub = parser.add_subparsers(dest="command", required=True)
    alive = sub.add_parser("kubesolo-alive", help="KubeSolo still its first process after the longest back-off")
    alive.add_argument("--log", type=Path, required=True)
    alive.add_argument("--pidfile", type=Path)
    alive.add_argument("--handover", choices=sorted(KUBESOLO_STARTED), default="supervise")
    alive.add_argument("--ssh-port", type=int)
    alive.add_argument("--ssh-key", type=Path)
    alive.add_argument("--window", type=float)
    alive.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    runner = None
    if args.ssh_port:
        spec = vmctl.VMSpec(name="ssh", workdir=args.log.parent, ssh_port=args.ssh_port)
        guest = Guest(spec, ssh_key=args.ssh_key or Path())
        guest.wait_ssh()
        runner = lambda command: guest.ssh(command).stdout  # noqa: E731
    try:
        result = check_kubesolo_alive(args.log, args.pidfile, handover=args.handover, ssh=runner, window=args.window,
                                      timeout=args.timeout)
    except AssertionError as exc:
        print(f"guest: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
