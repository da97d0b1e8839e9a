"""Static checks: ansible-lint (production profile), ruff, and shellcheck of the image's shell."""

from __future__ import annotations

import shutil

from conftest import REPO, VENV_BIN, run, tool_env


def test_ansible_lint_production_profile():
    result = run([str(VENV_BIN / "ansible-lint"), "--profile", "production", "--nocolor"], timeout=900)
    assert result.returncode == 0


def test_ruff():
    run([str(VENV_BIN / "ruff"), "check", "."], timeout=300)


def test_shell_scripts_are_shellcheck_clean():
    """Shell shipped as plain files (not templates): repo scripts."""
    assert shutil.which("shellcheck"), "shellcheck is installed by make deps (requirements-apt.txt)"
    scripts = [
        REPO / "scripts" / "bootstrap.sh",
        REPO / ".ci" / "run",
        REPO / "files" / "build-output.sh",
    ]
    run(["shellcheck", *map(str, scripts)], timeout=120)


def test_kubesolo_double_is_gofmt_and_vet_clean():
    """The KubeSolo test double (Go): formatted, and `go vet` finds nothing (GOPATH mode, Debian's kingpin)."""
    assert shutil.which("gofmt"), "gofmt comes with golang-go (requirements-apt.txt)"
    source = REPO / "tests" / "kubesolo-double"
    unformatted = run(["gofmt", "-l", str(source)], timeout=120).stdout.strip()
    assert unformatted == "", f"not gofmt-formatted: {unformatted}"
    env = {**tool_env(), "GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "CGO_ENABLED": "0", "GOFLAGS": "",
           "GOCACHE": str(REPO / "build" / "test-double" / "gocache")}
    run(["go", "vet", "."], cwd=source, env=env, timeout=600)
