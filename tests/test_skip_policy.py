"""tests/skip_policy.py, proven by running pytest with it on small test files, with and without CI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import skip_policy

TESTS = Path(__file__).resolve().parent

SAMPLE = textwrap.dedent('''
    import pytest

    def test_passes():
        pass

    def test_skips_in_the_body():
        pytest.skip("busybox is not installed")

    @pytest.mark.skipif(True, reason="shellcheck is not installed")
    def test_skipif_mark():
        pass

    @pytest.fixture
    def needs_tool():
        pytest.skip("needs a tool")

    def test_skips_in_a_fixture(needs_tool):
        pass

    @pytest.mark.xfail(reason="known bug", strict=True)
    def test_expected_failure():
        assert False
''')

MODULE_SKIP = textwrap.dedent('''
    import pytest

    pytest.skip("whole module needs a tool", allow_module_level=True)

    def test_never_collected():
        pass
''')


def run_sample(tmp_path: Path, files: dict[str, str], ci: str | None) -> tuple[subprocess.CompletedProcess[str],
                                                                             dict[str, str]]:
    """Run pytest with the plugin on FILES in a fresh directory; returns the run and each test's outcome."""
    for rel, text in files.items():
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(TESTS)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "skip_policy", "-p", "no:cacheprovider", "-v",
         "--rootdir", str(tmp_path), *files],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    outcomes = dict(re.findall(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", result.stdout, re.M))
    return result, outcomes


def test_without_ci_skips_stay_skips(tmp_path: Path) -> None:
    result, _outcomes = run_sample(tmp_path, {"test_sample.py": SAMPLE}, ci=None)
    assert result.returncode == 0, result.stdout
    assert re.search(r"\b1 passed, 3 skipped, 1 xfailed\b", result.stdout), result.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_every_skip_fails(tmp_path: Path, ci: str) -> None:
    result, outcomes = run_sample(tmp_path, {"test_sample.py": SAMPLE}, ci=ci)
    assert result.returncode == 1, result.stdout
    assert outcomes == {
        "test_sample.py::test_passes": "PASSED",
        "test_sample.py::test_skips_in_the_body": "FAILED",
        "test_sample.py::test_skipif_mark": "ERROR",  # a skipif mark skips in setup
        "test_sample.py::test_skips_in_a_fixture": "ERROR",
        "test_sample.py::test_expected_failure": "XFAIL",
    }, result.stdout
    assert "skipped under CI: busybox is not installed" in result.stdout
    assert "skipped under CI: shellcheck is not installed" in result.stdout
    assert " skipped" not in result.stdout.splitlines()[-1]


def test_ci_false_is_not_ci(tmp_path: Path) -> None:
    result, _ = run_sample(tmp_path, {"test_sample.py": SAMPLE}, ci="false")
    assert result.returncode == 0, result.stdout


def test_under_ci_a_module_skipped_at_collection_fails_the_run(tmp_path: Path) -> None:
    files = {"test_sample.py": "def test_passes():\n    pass\n", "test_module_skip.py": MODULE_SKIP}
    result, _ = run_sample(tmp_path, files, ci=None)
    assert result.returncode == 0, result.stdout
    result, _ = run_sample(tmp_path, files, ci="true")
    assert result.returncode == 1, result.stdout
    assert "test_module_skip.py: skipped at collection under CI: whole module needs a tool" in result.stdout


def test_the_allow_list_lets_only_its_own_reason_through(tmp_path: Path) -> None:
    """Every entry of the real allow-list, replayed at its node id: its own reason passes, another fails."""
    assert skip_policy.ALLOWED_SKIPS, "an empty allow-list needs no test (delete this one)"
    files: dict[str, str] = {}
    expected: dict[str, str] = {}
    for entry in skip_policy.ALLOWED_SKIPS:
        assert entry.why.strip(), entry
        path, name = entry.nodeid.split("::")
        reason = entry.reason.strip("^$").replace("\\", "")
        assert re.search(entry.reason, reason), "write the reason as a plain regex this test can replay"
        files[path] = files.get(path, "import pytest\n") + (
            f"\ndef {name}():\n    pytest.skip({reason!r})\n"
            f"\ndef {name}_other():\n    pytest.skip('some other reason')\n")
        expected[entry.nodeid] = "SKIPPED"
        expected[f"{entry.nodeid}_other"] = "FAILED"
    result, outcomes = run_sample(tmp_path, files, ci="true")
    assert outcomes == expected, result.stdout
