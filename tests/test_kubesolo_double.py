"""The KubeSolo TEST DOUBLE (tests/kubesolo-double/main.go), run on the host: it must refuse what KubeSolo
refuses, with kingpin's own message, and declare exactly KubeSolo's flags (files/kubesolo-flags.yml).

Each run is in fresh network and UTS namespaces (unshare): the double's API port and the host name it checks
stay off the host; without --node-ip it sees no private address there. Fast: no image, no QEMU.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import kubesolo_double
import pytest
import yaml
from conftest import REPO
from test_init_shell import functions, kargs, layer  # noqa: F401  (fixtures: the rendered init layer)

TABLE = yaml.safe_load((REPO / "files" / "kubesolo-flags.yml").read_text())
FLAGS = {f["name"]: f for f in TABLE["kubesolo_flags"]}

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare (network and UTS namespaces)")


@pytest.fixture(scope="module")
def double() -> Path:
    return kubesolo_double.build()


def run_double(double: Path, args: list[str], *, env: dict[str, str] | None = None, hostname: str = "kubesolo-test",
               timeout: float = 30) -> tuple[int, str, str]:
    """Run the double in its own network and UTS namespaces; stop it with SIGTERM once it says "running".
    Returns its exit status, stdout (the report) and stderr (kingpin's errors)."""
    cmd = ["unshare", "--net", "--uts", "sh", "-c", 'hostname "$1" && shift && exec "$@"', "sh", hostname,
           str(double), *args]
    full_env = {"PATH": os.environ["PATH"], "KUBESOLO_TEST_DOUBLE_LOG": "stdout", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    out = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if line.strip() == "[kubesolo-test-double] running":
                proc.send_signal(signal.SIGTERM)
        stderr = proc.stderr.read() if proc.stderr else ""
        status = proc.wait()
    finally:
        watchdog.cancel()
    return status, "".join(out), stderr


def effective(report: str) -> dict[str, str]:
    return dict(re.findall(r"^\[kubesolo-test-double\] flag ([a-z0-9-]+)=(.*)$", report, re.M))


def base_args(tmp_path: Path) -> list[str]:
    return [f"--path={tmp_path / 'state'}", "--node-ip=10.0.0.5"]


# --------------------------------------------------------------------------------------------
# The declared flags are KubeSolo's (the one table)
# --------------------------------------------------------------------------------------------

def help_flags(text: str) -> dict[str, dict[str, str]]:
    """Flags of kingpin's --help-long (2.2 prints `--name=DEFAULT`; 2.4 adds `--[no-]name` and `($ENV)`)."""
    out = {}
    for match in re.finditer(r"^  (?:-\w, | {4})--(\[no-\])?([a-z0-9-]+)(=(\"[^\"]*\"|\S+))?", text, re.M):
        _negatable, name, has_value, default = match.groups()
        value = (default or "").strip('"')
        out[name] = {"type": "value" if has_value else "bool", "default": value if has_value else ""}
    out.pop("help", None)
    return out


def test_help_long_declares_exactly_the_flag_table(double: Path):
    result = subprocess.run([str(double), "--help-long"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    declared = help_flags(result.stdout + result.stderr)
    assert set(declared) == set(FLAGS)
    for name, entry in FLAGS.items():
        kind = "bool" if entry["type"] == "bool" else "value"
        assert declared[name]["type"] == kind, name
        if kind == "value":
            assert declared[name]["default"] == str(entry["default"]), name
        if entry["type"] == "int":
            assert re.search(rf"--{name}={entry['default']}\s", result.stdout), name  # unquoted: a number


def test_help_parser_reads_upstream_kingpins_format_too():
    """KubeSolo itself uses kingpin 2.4 (`--[no-]name` for booleans, `($ENV)` in the help text): the same parser
    reads it, so `make test-real` checks the real binary's flags against the table the same way."""
    sample = """usage: kubesolo [<flags>]

Flags:
  -h, --[no-]help              Show context-sensitive help (also try --help-long and --help-man).
  -v, --[no-]version           Show the version and exit.
      --path="/var/lib/kubesolo"
                               Path to the directory ... ($KUBESOLO_PATH)
      --[no-]local-storage     Enable local storage. Defaults to false. ($KUBESOLO_LOCAL_STORAGE)
      --startup-timeout=600    Maximum time in seconds ... ($KUBESOLO_STARTUP_TIMEOUT)
"""
    assert help_flags(sample) == {
        "version": {"type": "bool", "default": ""},
        "path": {"type": "value", "default": "/var/lib/kubesolo"},
        "local-storage": {"type": "bool", "default": ""},
        "startup-timeout": {"type": "value", "default": "600"},
    }


def test_environment_twins_and_defaults(double: Path, tmp_path: Path):
    """Every flag's KUBESOLO_* twin sets it (the table's env names); unset, each has the table's default."""
    status, report, stderr = run_double(double, base_args(tmp_path)[1:], env={"KUBESOLO_PATH": str(tmp_path / "s")})
    assert status == 0, stderr
    defaults = effective(report)
    for name, entry in FLAGS.items():
        if name in ("version", "path", "node-ip"):
            continue
        shown = defaults[name]
        expected = str(entry["default"]) if not entry["secret"] else "<unset>"
        assert shown == (expected if entry["type"] != "bool" or expected else "false"), name
    assert defaults["path"] == str(tmp_path / "s")

    env, expected = {}, {}
    for name, entry in FLAGS.items():
        if not entry["env"]:
            continue
        assert entry["env"] == "KUBESOLO_" + name.upper().replace("-", "_"), name
        if entry["type"] == "bool":
            value = "false" if entry["default"] == "true" else "true"
            shown = value
        elif entry["type"] == "int":
            value = shown = "1234"
        elif name == "path":
            value = shown = str(tmp_path / "env-path")
        elif name in ("node-ip", "load-balancer-ip"):
            value = shown = "10.0.0.9"
        else:
            value = f"env-{name}"
            shown = "<set>" if entry["secret"] else value
        env[entry["env"]], expected[name] = value, shown
    status, report, stderr = run_double(double, [], env=env)
    assert status == 0, stderr
    assert {k: v for k, v in effective(report).items() if k in expected} == expected
    # A flag on the command line wins over its twin.
    status, report, _ = run_double(double, ["--startup-timeout=7", "--no-debug"],
                                   env={**env, "KUBESOLO_DEBUG": "true"})
    assert status == 0
    assert effective(report)["startup-timeout"] == "7" and effective(report)["debug"] == "false"


def test_booleans_are_flag_and_no_flag(double: Path, tmp_path: Path):
    args = [*base_args(tmp_path), "--no-local-storage", "--no-load-balancer", "--debug", "--portainer-edge-async"]
    status, report, stderr = run_double(double, args)
    assert status == 0, stderr
    flags = effective(report)
    assert (flags["local-storage"], flags["load-balancer"], flags["debug"], flags["portainer-edge-async"]) == \
        ("false", "false", "true", "true")
    assert re.search(r"^\[kubesolo-test-double\] argc=6$", report, re.M)
    assert "[kubesolo-test-double] listening on :6443" in report
    assert report.rstrip().endswith("[kubesolo-test-double] stopping")


# --------------------------------------------------------------------------------------------
# Refusals: kingpin's exact messages, then the OS requirements
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--local-storage=true"], "kubesolo: error: unexpected true, try --help"),
        (["--local-storage", "true"], "kubesolo: error: unexpected true, try --help"),
        (["--debug=false"], "kubesolo: error: unexpected false, try --help"),
        (["--path=/a", "--path=/b"], "kubesolo: error: flag 'path' cannot be repeated, try --help"),
        (["--local-storage", "--no-local-storage"],
         "kubesolo: error: flag 'local-storage' cannot be repeated, try --help"),
        (["--from-config-file=yes"], "kubesolo: error: unknown long flag '--from-config-file', try --help"),
        (["--note=a b"], "kubesolo: error: unknown long flag '--note', try --help"),
        (["--no-path"], "kubesolo: error: unknown long flag '--no-path', try --help"),
        (["word"], "kubesolo: error: unexpected word, try --help"),
        (["--node-ip"], "kubesolo: error: expected argument for flag '--node-ip', try --help"),
        (["--node-ip", "--debug"], "kubesolo: error: expected argument for flag '--node-ip', try --help"),
    ],
)
def test_kingpin_refusals(double: Path, tmp_path: Path, args: list[str], message: str):
    status, report, stderr = run_double(double, [*args])
    assert status == 1
    assert stderr.strip() == message
    assert "running" not in report


def test_refuses_a_number_that_is_not_one(double: Path):
    status, _, stderr = run_double(double, ["--startup-timeout=soon"])
    assert status == 1
    assert stderr.startswith("kubesolo: error: ") and '"soon"' in stderr


def test_refuses_a_bad_environment_twin(double: Path):
    status, _, stderr = run_double(double, [], env={"KUBESOLO_LOCAL_STORAGE": "maybe"})
    assert status == 1
    assert stderr.startswith("kubesolo: error: ") and "maybe" in stderr


def test_refuses_without_a_private_address(double: Path, tmp_path: Path):
    status, report, _ = run_double(double, [f"--path={tmp_path / 'state'}"])
    assert status == 1
    assert "[kubesolo-test-double] refused: could not find non-loopback private IP address (give --node-ip)" in report


def test_refuses_a_bad_node_name(double: Path, tmp_path: Path):
    status, report, _ = run_double(double, base_args(tmp_path), hostname="Upper-Case")
    assert status == 1
    assert ('[kubesolo-test-double] refused: hostname "Upper-Case" is not a valid node name (lowercase RFC 1123)'
            in report)


def test_refuses_a_relative_path(double: Path):
    status, report, _ = run_double(double, ["--path=var/lib/kubesolo", "--node-ip=10.0.0.5"])
    assert status == 1
    assert '[kubesolo-test-double] refused: --path "var/lib/kubesolo" is not an absolute path' in report


def test_refuses_a_root_runc_cannot_pivot_root_out_of(double: Path, tmp_path: Path):
    """A root that is not a mount point (here: a chroot into a plain directory; in the image: the initramfs
    rootfs): the double's pivot_root probe fails as runc's would, and it refuses."""
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    shutil.copy(double, root / "kubesolo")
    script = 'mount -t proc proc "$1/proc" && hostname kubesolo-test && exec chroot "$1" /kubesolo --path=/state ' \
             '--node-ip=10.0.0.5'
    result = subprocess.run(["unshare", "--mount", "--net", "--uts", "sh", "-c", script, "sh", str(root)],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={"PATH": os.environ["PATH"], "KUBESOLO_TEST_DOUBLE_LOG": "stdout"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[kubesolo-test-double] refused: a container runtime cannot pivot_root here" in result.stdout


# --------------------------------------------------------------------------------------------
# The init's argument builder makes argument lists the double (kingpin) accepts
# --------------------------------------------------------------------------------------------

def test_init_argument_builder_output_is_accepted(double: Path, functions: Path, tmp_path: Path):  # noqa: F811
    """Every source, with what kingpin would refuse mixed in: stage 90's list runs the double."""
    state = tmp_path / "state"
    args, log, _ = kargs(functions, tmp_path, host="node-1",
                         file=f"--path={state}\n--local-storage=false\n--bogus\n--node-ip 10.0.0.1",
                         cloudinit="--debug=true\n--startup-timeout=900",
                         cmdline="--node-ip=10.0.0.5 word --debug=false --load-balancer=no --startup-timeout 901")
    assert "[ERROR]" in log  # --bogus, 'word' and the line with a blank were dropped
    status, report, stderr = run_double(double, args)
    assert status == 0, stderr + report
    flags = effective(report)
    assert (flags["path"], flags["local-storage"], flags["debug"], flags["load-balancer"], flags["node-ip"],
            flags["startup-timeout"], flags["apiserver-extra-sans"]) == \
        (str(state), "false", "false", "false", "10.0.0.5", "901", "node-1")


def test_meminfo_line_is_what_the_shared_parser_reads(double: Path, tmp_path: Path):
    """The benchmark and the system-image tests read the handover memory from the double's meminfo line through
    kubesolo_double.meminfo (one parser): it must match what the double really prints (here: the host's)."""
    status, report, stderr = run_double(double, base_args(tmp_path))
    assert status == 0, stderr
    memory = kubesolo_double.meminfo(report)
    assert memory is not None, report
    host = dict(re.findall(r"^(\w+):\s+(\d+) kB$", Path("/proc/meminfo").read_text(), re.M))
    assert memory.mem_total_kb == int(host["MemTotal"])
    assert 0 < memory.in_use_mb < memory.mem_total_kb * 1024 / kubesolo_double.MB
    assert kubesolo_double.meminfo("[kubesolo-test-double] running\n") is None


def test_never_healthy_mode_starts_but_never_serves_the_api_port(tmp_path: Path):
    """The rollback tests' stand-in (tests/test_upgrade.py): it still checks and reports everything, runs
    until stopped, and never listens on :6443. Built with --never-healthy, or the variable on the host."""
    never = kubesolo_double.build(tmp_path / "never" / "kubesolo", never_healthy=True)
    for binary, env in ((never, {}), (kubesolo_double.build(), {"KUBESOLO_TEST_DOUBLE_NEVER_HEALTHY": "1"})):
        status, report, stderr = run_double(binary, base_args(tmp_path), env=env)
        assert status == 0, stderr
        assert "[kubesolo-test-double] never-healthy: not serving :6443" in report
        assert "listening on" not in report
        assert report.rstrip().endswith("[kubesolo-test-double] stopping")


def test_exit_mode_refuses_at_once(tmp_path: Path):
    """The panic test's stand-in (tests/test_upgrade.py): it reports, then exits 1 like a fatal start-up error;
    as PID 1 under the exec handover that panics the kernel."""
    status, report, _ = run_double(kubesolo_double.build(tmp_path / "exit" / "kubesolo", mode="exit"),
                                   base_args(tmp_path))
    assert status == 1
    assert "[kubesolo-test-double] refused: built to exit (test double mode exit)" in report
    assert "listening on" not in report and "running" not in report
    with pytest.raises(ValueError, match="unknown test double mode 'sometimes'"):
        kubesolo_double.build(tmp_path / "x" / "kubesolo", mode="sometimes")
