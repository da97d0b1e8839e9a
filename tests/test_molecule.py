"""Molecule scenarios: each boots the built image in QEMU and verifies it."""

from __future__ import annotations

import pytest
from conftest import ARTIFACTS, REPO, VENV_BIN, run, tool_env

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
