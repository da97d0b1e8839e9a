"""The one "KubeSolo stays up" check of the boot tests (guest.check_kubesolo_alive), on serial logs written
here: it must fail on each way a KubeSolo that does not stay up shows in the log."""

from __future__ import annotations

from pathlib import Path

import guest
import pytest
from contract import HANDOVER_MARKER

BOOT = ("[kubesolo-init] [   0.50] KubeSolo OS init starting (stages: 00 10)\n"
        f"{HANDOVER_MARKER}\n")
SUPERVISED = "[kubesolo-init] [   9.10] Starting KubeSolo (/usr/local/bin/kubesolo, 3 arguments)\n"
EXECUTED = "[kubesolo-init] [   9.10] Executing /usr/local/bin/kubesolo as PID 1\n"


def double(pid: int) -> str:
    return (f"[kubesolo-test-double] pid={pid}\r\n[kubesolo-test-double] argc=0\r\n"
            "[kubesolo-test-double] listening on :6443\r\n[kubesolo-test-double] running\r\n")


def check(tmp_path: Path, text: str, **kwargs) -> dict:
    log = tmp_path / "serial.log"
    log.write_text(text)
    return guest.check_kubesolo_alive(log, window=0, timeout=2, settle=0, **kwargs)


def test_a_kubesolo_that_stays_up_passes(tmp_path: Path):
    assert check(tmp_path, BOOT + SUPERVISED + double(412))["pid"] == 412
    assert check(tmp_path, BOOT + EXECUTED + double(1), handover="exec")["pid"] == 1


def test_only_the_last_boot_counts(tmp_path: Path):
    first = BOOT + SUPERVISED + double(300) + "[kubesolo-init] [WARN] KubeSolo exited: restart 1 in 1s\n"
    assert check(tmp_path, first + BOOT + SUPERVISED + double(412))["pid"] == 412


@pytest.mark.parametrize(
    ("text", "handover", "message"),
    [
        (BOOT + SUPERVISED + double(412) + "[kubesolo-init] [WARN] KubeSolo exited: restart 1 in 1s\n" + double(420),
         "supervise", "did not come up and stay up|KubeSolo exited"),
        (BOOT + SUPERVISED + "[kubesolo-test-double] refused: could not find non-loopback private IP address\n",
         "supervise", "did not come up"),
        (BOOT + SUPERVISED + double(412) + double(413), "supervise", "started 2 times"),
        (BOOT + EXECUTED + double(12), "exec", "not PID 1"),
        (BOOT + EXECUTED + double(10), "exec", "not PID 1"),
        (BOOT + EXECUTED + double(1) + "Kernel panic - not syncing: Attempted to kill init!\n", "exec", "Kernel panic"),
        (BOOT + SUPERVISED + double(1), "supervise", "is PID 1"),
        (BOOT + SUPERVISED + double(412) + "[kubesolo-test-double] stopping\n", "supervise", "stopping"),
        (BOOT + SUPERVISED, "supervise", "did not come up"),
    ],
)
def test_each_way_of_not_staying_up_fails(tmp_path: Path, text: str, handover: str, message: str):
    with pytest.raises(AssertionError, match=message):
        check(tmp_path, text, handover=handover)


def test_over_ssh_restarts_and_pid_must_match(tmp_path: Path):
    answers = {"cat /run/kubesolo-os/kubesolo.restarts": "0\n", "cat /run/kubesolo-os/kubesolo.pid": "412\n",
               "cut -d' ' -f1 /proc/uptime": "20.00\n",
               "cut -d' ' -f3 /proc/412/stat; readlink /proc/412/exe": "S\n/usr/lib/kubesolo-os/bin/kubesolo\n"}
    assert check(tmp_path, BOOT + SUPERVISED + double(412), ssh=lambda c: answers[c])["pid"] == 412
    restarted = {**answers, "cat /run/kubesolo-os/kubesolo.restarts": "1\n"}
    with pytest.raises(AssertionError, match=r"kubesolo\.restarts is '1'"):
        check(tmp_path, BOOT + SUPERVISED + double(412), ssh=lambda c: restarted[c])
    zombie = {**answers, "cut -d' ' -f3 /proc/412/stat; readlink /proc/412/exe": "Z\n"}
    with pytest.raises(AssertionError, match="not a living kubesolo"):
        check(tmp_path, BOOT + SUPERVISED + double(412), ssh=lambda c: zombie[c])


def test_window_is_the_test_images_longest_back_off():
    import yaml
    from conftest import BUILD_VARS

    assert guest.restart_max_delay() == yaml.safe_load(BUILD_VARS.read_text())["init_kubesolo_restart_max_delay"]
