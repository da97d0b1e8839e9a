"""Static checks: ansible-lint (production profile), ruff, and shellcheck of the image's shell."""

from __future__ import annotations

import shutil

from conftest import REPO, VENV_BIN, run


def test_ansible_lint_production_profile():
    result = run([str(VENV_BIN / "ansible-lint"), "--profile", "production", "--nocolor"], timeout=900)
    assert result.returncode == 0


def test_ruff():
    run([str(VENV_BIN / "ruff"), "check", "."], timeout=300)


def test_shell_scripts_are_shellcheck_clean():
    """Shell shipped as plain files (not templates): repo scripts and the test double."""
    assert shutil.which("shellcheck"), "shellcheck is installed by make deps (requirements-apt.txt)"
    scripts = [
        REPO / "tests" / "fixtures" / "kubesolo-test-double",
        REPO / "scripts" / "bootstrap.sh",
        REPO / ".ci" / "run",
    ]
    run(["shellcheck", *map(str, scripts)], timeout=120)
