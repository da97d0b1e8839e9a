"""pytest plugin: under CI, a skipped test is a failure unless it is on ALLOWED_SKIPS.

A test that skips because a tool is missing proves nothing, and a run that exits 0 with 124 such skips
(as once happened with busybox) hides it. CI (`.ci/run`, with the environment variable CI set to a true
value) installs everything the suite needs from requirements-apt.txt and requirements.txt, so there a skip
means something is missing or broken. Outside CI (a developer's machine) skips stay skips.

Loaded for the whole session from tests/conftest.py (`pytest_plugins`), so it also covers the
collection's unit tests when they run in the same session, as in CI.

- A skip while a test runs (pytest.skip, a skipif mark, a skipping fixture) turns that test's report into
  a failure whose message names the skip's reason and this file.
- A skip of a whole module at collection (pytest.skip(allow_module_level=True), importorskip) has no test
  report to fail: it is listed at the end of the run and the run's exit status is set to "tests failed".
- xfail is not a skip and is left alone.

tests/test_skip_policy.py proves both behaviours by running pytest with this plugin on small test files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class AllowedSkip:
    nodeid: str  # the test's node id relative to the repository root (parametrized ids included)
    reason: str  # regex the skip's reason must match: the same test skipping for another reason still fails
    why: str  # why this skip is acceptable in CI


# Keep this list short; every entry says why the skip cannot be avoided by installing something.
ALLOWED_SKIPS: tuple[AllowedSkip, ...] = (
    AllowedSkip(
        nodeid="tests/test_flash_usb.py::test_refuses_the_disk_the_running_system_lives_on",
        reason=r"^/ is not on a block device here$",
        why="depends on the machine's storage, not on a package: in a container or on a tmpfs root there is no "
            "system disk to refuse (the CI machines have one, /dev/vda, so there it runs)",
    ),
)

_FALSE = {"", "0", "false", "no", "off"}


def ci_enabled() -> bool:
    """CI is set to a true value (`CI=true`, as CI providers and .ci/run's callers set it)."""
    return os.environ.get("CI", "").strip().lower() not in _FALSE


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def allowed(nodeid: str, reason: str) -> AllowedSkip | None:
    for entry in ALLOWED_SKIPS:
        if entry.nodeid == nodeid and re.search(entry.reason, reason):
            return entry
    return None


_collect_skips: list[tuple[str, str]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not ci_enabled() or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _reason(report)
    if allowed(report.nodeid, reason):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI: {reason}\n"
        "A skip in CI hides a test that did not run: install what it needs (requirements-apt.txt, "
        "requirements.txt) or, if the skip cannot be avoided, add it with a reason to ALLOWED_SKIPS in "
        "tests/skip_policy.py."
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if ci_enabled() and report.skipped:
        reason = _reason(report)
        if not allowed(report.nodeid, reason):
            _collect_skips.append((report.nodeid, reason))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _collect_skips:
        terminalreporter.section("skipped under CI (tests/skip_policy.py)", red=True)
        for nodeid, reason in _collect_skips:
            terminalreporter.line(f"{nodeid}: skipped at collection under CI: {reason}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _collect_skips and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
