"""The suite's own checks, proven on made-up serial logs (no QEMU): they fail when they must.

Each test here failed against the check it covers before that check was fixed (issue 18, item 6)."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import guest as guest_mod
import pytest
import vmctl
import yaml
from conftest import REPO, stop_guests
from contract import HANDOVER_MARKER

INIT = REPO / "roles" / "init" / "templates" / "usr" / "lib" / "kubesolo-os"


class FakeSerial:
    """A VM's serial port without the VM: a log file the test writes and a socket that records typing."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.spec = vmctl.VMSpec(name=f"checks-{name}-{time.monotonic_ns()}", workdir=tmp_path)
        self.spec.serial_log.write_text("")
        self.received = bytearray()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.spec.serial_socket))
        self.server.listen(1)
        threading.Thread(target=self._serve, daemon=True).start()
        self.guest = guest_mod.Guest(self.spec, ssh_key=tmp_path / "unused")

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:  # closed before anything connected
            return
        with conn:
            while data := conn.recv(4096):
                self.received += data

    def write(self, text: str) -> None:
        with self.spec.serial_log.open("a") as handle:
            handle.write(text)

    def close(self) -> None:
        self.guest.stop()
        self.server.close()
        self.spec.serial_socket.unlink(missing_ok=True)


@pytest.fixture
def serial(tmp_path: Path):
    made: list[FakeSerial] = []

    def make(name: str) -> FakeSerial:
        made.append(FakeSerial(tmp_path, name))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


def test_wait_for_fails_on_an_error_read_in_the_same_poll_as_the_marker(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("[kubesolo-init] [ERROR] Stage 80-containerd.sh failed\n"
                   f"{HANDOVER_MARKER}\n")
    with pytest.raises(vmctl.VMError, match=r"Stage 80-containerd\.sh failed"):
        vmctl.wait_for(log, [re.escape(HANDOVER_MARKER)], timeout=5)


def test_every_boot_is_checked_for_undeclared_errors(serial) -> None:
    fake = serial("errors")
    fake.write("[kubesolo-init] [OK] Stage 20 complete\r\n"
               "[kubesolo-init] [ERROR] Data device /dev/vdz did not appear within 3s\r\n"
               "[kubesolo-init] [ERROR] Stage 20-persistent-mount.sh failed\r\n")
    vm = fake.guest
    vm.allow_errors(r"Data device /dev/vdz did not appear")
    assert vm.unexpected_errors() == ["[kubesolo-init] [ERROR] Stage 20-persistent-mount.sh failed"]
    with pytest.raises(pytest.fail.Exception, match=r"Stage 20-persistent-mount\.sh failed"):
        stop_guests([vm])
    vm.allow_errors(r"Stage 20-persistent-mount\.sh failed")
    stop_guests([vm])


def test_shell_prompt_is_found_when_a_kernel_message_follows_it(serial) -> None:
    fake = serial("prompt")
    fake.write("Give root password for system maintenance\r\n(or type Control-D for normal startup):\r\n"
               "root@(none):~# \x1b[6n\r\n[   12.345678] random: crng init done\r\n")
    started = time.monotonic()
    fake.guest.wait_shell_prompt(timeout=10)
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while b"\x1b[1;1R" not in fake.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.received == b"\x1b[1;1R", "the cursor position query was not answered"


def test_emergency_prompt_without_a_query_is_found(serial) -> None:
    fake = serial("emergency")
    fake.write("(kubesolo-emergency) # [   13.000000] virtio_net virtio0 eth0: renamed\r\n")
    fake.guest.wait_shell_prompt(timeout=10)
    fake.guest.stop()
    assert fake.received == b""


def test_menu_selection_stops_the_countdown_before_moving(serial) -> None:
    fake = serial("menu")
    threading.Timer(0.5, fake.write, ["\x1b[2J KubeSolo OS 1.0.0 \r\n Automatic boot in 3 seconds...\r\n"]).start()
    fake.guest.choose_menu_entry(2, r"KubeSolo OS \d")
    fake.guest.stop()
    time.sleep(0.2)
    assert bytes(fake.received) == guest_mod.MENU_HOME + guest_mod.MENU_DOWN * 2 + b"\r"


def test_molecule_mount_check_matches_only_the_mount_line() -> None:
    """molecule/default/verify.yml's regex: the mount line of stage 20, not the line announcing the wait."""
    tasks = yaml.safe_load((REPO / "molecule" / "default" / "verify.yml").read_text())[0]["tasks"]
    task = next(t for t in tasks if t["name"] == "The data partition was mounted from its label")
    condition = task["ansible.builtin.assert"]["that"][0]
    quoted = re.search(r"search\('(.*)'(, multiline=True)?\)", condition)
    assert quoted, condition
    # Jinja decodes the string literal's escapes (\r is a CR) before the regex sees it.
    pattern = re.compile(quoted.group(1).replace("\\r", "\r"), re.M if quoted.group(2) else 0)
    stage = (INIT / "init.d" / "20-persistent-mount.sh.j2").read_text()
    # The log lines as stage 20 writes them (kept in step with its template).
    assert 'log_info "Waiting up to ${KUBESOLO_DATA_WAIT}s for data device $KUBESOLO_DATA_DEV"' in stage
    assert 'log_ok "Mounted $ksi_pm_dev ($KUBESOLO_DATA_DEV) on $KSI_DATA_MOUNT"' in stage
    waiting = "[kubesolo-init] [    2.51] Waiting up to 30s for data device LABEL=KSOLODATA\r\n"
    mounted = "[kubesolo-init] [OK] Mounted /dev/vda (LABEL=KSOLODATA) on /mnt/data\r\n"
    assert not pattern.search(waiting)
    assert not pattern.search(waiting + "[kubesolo-init] [WARN] No partition labelled KSOLODATA appeared\r\n")
    assert pattern.search(waiting + mounted)
