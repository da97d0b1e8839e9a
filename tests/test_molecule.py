"""Molecule scenarios: each boots the built image in QEMU and verifies it."""

from __future__ import annotations

import pytest
from conftest import ARTIFACTS, REPO, VENV_BIN, run, tool_env
from vmctl import ERROR_MARKER

pytestmark = pytest.mark.slow


def test_molecule_default_first_boot(built_image):
    env = tool_env()
    env["KUBESOLO_OS_ISO"] = str(built_image.iso)
    result = run([str(VENV_BIN / "molecule"), "test", "-s", "default"], cwd=REPO, env=env, timeout=1200, check=False)
    serial_log = ARTIFACTS / "molecule-default" / "kubesolo-default.serial.log"
    if result.returncode != 0:
        tail = serial_log.read_text(errors="replace")[-4000:] if serial_log.exists() else "(no serial log)"
        pytest.fail(
            f"molecule test -s default failed:\n{(result.stdout + result.stderr)[-5000:]}\n"
            f"--- serial log ({serial_log}) ---\n{tail}",
            pytrace=False,
        )
    assert_no_error_lines(serial_log)


def assert_no_error_lines(*logs) -> None:
    """No [ERROR] line of the init in a whole serial log (every boot of that VM, reboots included)."""
    for log in logs:
        errors = [line for line in log.read_text(errors="replace").splitlines() if ERROR_MARKER in line]
        assert errors == [], f"{log}: {errors}"


def test_molecule_fleet(built_image):
    """Two QEMU nodes provisioned over SSH by playbooks/provision-data.yml, rebooted, checked by testinfra."""
    env = tool_env()
    env["KUBESOLO_OS_ISO"] = str(built_image.iso)
    result = run([str(VENV_BIN / "molecule"), "test", "-s", "fleet"], cwd=REPO, env=env, timeout=2400, check=False)
    workdir = ARTIFACTS / "molecule-fleet"
    if result.returncode != 0:
        tails = []
        for node in ("fleet-node-1", "fleet-node-2"):
            log = workdir / f"{node}.serial.log"
            tail = log.read_text(errors="replace")[-2500:] if log.exists() else "(no serial log)"
            tails.append(f"--- serial log {log} ---\n{tail}")
        pytest.fail(f"molecule test -s fleet failed:\n{(result.stdout + result.stderr)[-6000:]}\n" + "\n".join(tails),
                    pytrace=False)
    assert_no_error_lines(*(workdir / f"{node}.serial.log" for node in ("fleet-node-1", "fleet-node-2")))
