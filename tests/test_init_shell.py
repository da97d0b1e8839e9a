"""Unit tests of the init role's shell: rendered by the role, run under the host's `busybox sh`.

The role is applied once (and a second time, which must change nothing) with a throwaway
playbook into a temporary layers directory; the tests then source the rendered functions.sh
and call its pure functions with fake input, run /sbin/init (not as PID 1) against stub stages,
and shellcheck every rendered shell file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import role_defaults
from contract import HANDOVER_MARKER
from passlib.hash import sha512_crypt

REPO = Path(__file__).resolve().parent.parent
EPOCH = 1700000000
LIBDIR = "usr/lib/kubesolo-os"

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed")


def _ansible_playbook() -> str | None:
    candidate = Path(sys.executable).parent / "ansible-playbook"
    if candidate.exists():
        return str(candidate)
    return shutil.which("ansible-playbook")


def _run_role(workdir: Path, layers: Path, extra_vars: dict | None = None, *, expect_failure: bool = False) -> str:
    playbook = workdir / "render.yml"
    play = [
        {
            "name": "Render the init role",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "kubesolo_os_build_dir": str(workdir / "build"),
                "kubesolo_os_layers_dir": str(layers),
                "kubesolo_os_output_dir": str(workdir / "output"),
                "kubesolo_os_epoch": EPOCH,
                # What the kubesolo role records about the system image (stage 20 verifies it).
                "kubesolo_binary_path": "/" + LIBDIR + "/bin/kubesolo",
                "kubesolo_sysimage": {"sha256": "0" * 64, "sha512": "0" * 128, "size": 4096,
                                      "image_path": "/" + LIBDIR + "/kubesolo.sqfs"},
            },
            "roles": ["init"],
        }
    ]
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    # The caller's variables as extra vars: they must win over the role's vars/ (internal values a test may
    # still replace, e.g. init_cloudinit_schema_file), which outrank play vars.
    extra_file = workdir / "render-extra-vars.json"
    extra_file.write_text(json.dumps(extra_vars or {}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    result = subprocess.run(
        [_ansible_playbook(), "-i", "localhost,", "-e", f"@{extra_file}", str(playbook)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if expect_failure:
        assert result.returncode != 0, result.stdout
        return result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _changed(recap: str) -> int:
    match = re.search(r"localhost\s*:.*changed=(\d+)", recap)
    assert match, recap
    return int(match.group(1))


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if _ansible_playbook() is None:
        pytest.skip("ansible-playbook is not installed")
    workdir = tmp_path_factory.mktemp("init-role")
    layers = workdir / "layers"
    _run_role(workdir, layers)
    second = _run_role(workdir, layers)
    assert _changed(second) == 0, "second run of the init role changed something:\n" + second
    return layers / "init"


@pytest.fixture(scope="module")
def functions(layer: Path) -> Path:
    return layer / LIBDIR / "functions.sh"


def bb(functions: Path, script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run SCRIPT under busybox sh with functions.sh sourced; ARGS are $1...."""
    full_env = {"PATH": os.environ["PATH"], "KSI_LOG_CONSOLES": "", **(env or {})}
    return subprocess.run(
        [BUSYBOX, "sh", "-c", f'. "{functions}"\n{script}', "sh", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=30,
        check=False,
    )


# --------------------------------------------------------------------------------------------
# Kernel command line
# --------------------------------------------------------------------------------------------
PARSE = """
ksi_parse_cmdline "$1"
for v in $KSI_CMDLINE_VARS; do
    printf '%s\\n' "$(env | grep "^$v=" || echo "$v UNEXPORTED")"
done
"""


def parse(functions: Path, cmdline: str) -> tuple[dict[str, str], str]:
    result = bb(functions, PARSE, cmdline)
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=", 1) for line in result.stdout.splitlines())
    return values, result.stderr


def test_cmdline_defaults(functions: Path) -> None:
    values, stderr = parse(functions, "BOOT_IMAGE=/vmlinuz console=ttyS0,115200n8 quiet")
    assert values == {
        "KUBESOLO_DATA_DEV": "",
        "KUBESOLO_DATA_WAIT": "30",
        "KUBESOLO_DEBUG": "0",
        "KUBESOLO_SHELL": "0",
        "KUBESOLO_NOPERSIST": "0",
        "KUBESOLO_CLOUDINIT": "",
        "KUBESOLO_EXTRA_FLAGS": "",
        "KUBESOLO_SYSIMAGE": "",
    }
    assert stderr == ""


def test_cmdline_all_parameters(functions: Path) -> None:
    values, _ = parse(
        functions,
        "console=tty0 kubesolo.data=LABEL=KSOLODATA kubesolo.debug kubesolo.shell "
        "kubesolo.nopersist kubesolo.cloudinit=/mnt/data/cloud-init.yaml kubesolo.datawait=90\n",
    )
    assert values["KUBESOLO_DATA_DEV"] == "LABEL=KSOLODATA"
    assert values["KUBESOLO_DATA_WAIT"] == "90"
    assert values["KUBESOLO_DEBUG"] == "1"
    assert values["KUBESOLO_SHELL"] == "1"
    assert values["KUBESOLO_NOPERSIST"] == "1"
    assert values["KUBESOLO_CLOUDINIT"] == "/mnt/data/cloud-init.yaml"


def test_cmdline_quoted_flags_keep_inner_quotes_and_spaces(functions: Path) -> None:
    values, _ = parse(functions, "quiet kubesolo.flags=\"--debug --node-ip='x  y'\" kubesolo.data=/dev/vdb1 ro")
    assert values["KUBESOLO_EXTRA_FLAGS"] == "--debug --node-ip='x  y'"
    assert values["KUBESOLO_DATA_DEV"] == "/dev/vdb1"


def test_cmdline_whole_parameter_quoted(functions: Path) -> None:
    values, _ = parse(functions, '"kubesolo.flags=--node-ip=10.0.0.1 --startup-timeout=2" "kubesolo.cloudinit=/a b"')
    assert values["KUBESOLO_EXTRA_FLAGS"] == "--node-ip=10.0.0.1 --startup-timeout=2"
    assert values["KUBESOLO_CLOUDINIT"] == "/a b"


def test_cmdline_unterminated_quote_takes_the_rest(functions: Path) -> None:
    values, _ = parse(functions, 'kubesolo.flags="--startup-timeout=1 --node-ip=2 kubesolo.debug')
    assert values["KUBESOLO_EXTRA_FLAGS"] == "--startup-timeout=1 --node-ip=2 kubesolo.debug"
    assert values["KUBESOLO_DEBUG"] == "0"


def test_cmdline_flags_parameters_are_joined(functions: Path) -> None:
    values, _ = parse(functions, "kubesolo.flags=--startup-timeout=1 kubesolo.flags=--node-ip=2")
    assert values["KUBESOLO_EXTRA_FLAGS"] == "--startup-timeout=1 --node-ip=2"


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("kubesolo.debug", "1"),
        ("kubesolo.debug=1", "1"),
        ("kubesolo.debug=true", "1"),
        ("kubesolo.debug=yes", "1"),
        ("kubesolo.debug=0", "0"),
        ("kubesolo.debug=false", "0"),
        ("kubesolo.debug=off", "0"),
    ],
)
def test_cmdline_boolean_forms(functions: Path, param: str, expected: str) -> None:
    values, _ = parse(functions, param)
    assert values["KUBESOLO_DEBUG"] == expected


def test_cmdline_warns_on_unknown_and_bad_values(functions: Path) -> None:
    values, stderr = parse(functions, "kubesolo.foo=1 kubesolo.datawait=soon other.param=1")
    assert "[kubesolo-init] [WARN] Unknown boot parameter 'kubesolo.foo' ignored" in stderr
    assert "kubesolo.datawait='soon'" in stderr
    assert "other.param" not in stderr
    assert values["KUBESOLO_DATA_WAIT"] == "30"


def test_cmdline_is_never_evaluated(functions: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    values, _ = parse(functions, f'kubesolo.flags="$(touch {marker})" kubesolo.data=`touch\t{marker}`')
    assert not marker.exists()
    assert values["KUBESOLO_EXTRA_FLAGS"] == f"$(touch {marker})"
    assert values["KUBESOLO_DATA_DEV"] == "`touch"


# --------------------------------------------------------------------------------------------
# Word splitter
# --------------------------------------------------------------------------------------------
def split(functions: Path, text: str) -> tuple[list[str], int]:
    result = bb(functions, 'ksi_split_words "$1"', text)
    return result.stdout.split("\n")[:-1], result.returncode


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", []),
        ("   ", []),
        ("--startup-timeout=1 --node-ip=2", ["--startup-timeout=1", "--node-ip=2"]),
        ("  --startup-timeout=1\t\t--node-ip=2  ", ["--startup-timeout=1", "--node-ip=2"]),
        ("--node-ip='x  y'", ["--node-ip=x  y"]),
        ('--node-ip="x  y" --debug', ["--node-ip=x  y", "--debug"]),
        ('--apiserver-extra-sans=\'a,b\' --node-ip="q\\"uote"', ["--apiserver-extra-sans=a,b", '--node-ip=q"uote']),
        ("'' x", ["", "x"]),
        ("a\\ b c", ["a b", "c"]),
        ("it'\"'s", ['it"s']),
        ("'*' ? $HOME $(id) ;rm", ["*", "?", "$HOME", "$(id)", ";rm"]),
        ('"back\\\\slash" "keep\\n"', ["back\\slash", "keep\\n"]),
    ],
)
def test_split_words(functions: Path, text: str, words: list[str]) -> None:
    got, rc = split(functions, text)
    assert got == words
    assert rc == 0


def test_split_words_unterminated_quote(functions: Path) -> None:
    got, rc = split(functions, "--startup-timeout=1 --node-ip='x y")
    assert got == ["--startup-timeout=1", "--node-ip=x y"]
    assert rc == 1


# --------------------------------------------------------------------------------------------
# KubeSolo's arguments (ksi_kubesolo_args): KubeSolo's real flag contract (files/kubesolo-flags.yml)
# --------------------------------------------------------------------------------------------
BUILT_IN = ["--path=/var/lib/kubesolo", "--local-storage"]
KARGS = """
ksi_kubesolo_args "$1" "$2" "$3" "$4" > "$5"
echo "rc=$?" >&2
"""


def kargs(functions: Path, tmp_path: Path, *, host: str = "node-1", file: str | None = None, cloudinit: str = "",
          cmdline: str = "") -> tuple[list[str], str, int]:
    """KubeSolo's arguments for these sources, one per list item; the log; the status."""
    flags = tmp_path / "flags"
    flags.unlink(missing_ok=True)
    if file is not None:
        flags.write_text(file)
    out = tmp_path / "args"
    result = bb(functions, KARGS, host, str(flags), cloudinit, cmdline, str(out))
    status = re.search(r"rc=(\d+)", result.stderr)
    assert status, result.stderr
    return out.read_text().split("\n")[:-1], result.stderr, int(status.group(1))


def test_kubesolo_args_defaults_follow_kingpin(functions: Path, tmp_path: Path) -> None:
    """No user flags: the built-in arguments, booleans without `=true`, the hostname as extra SAN."""
    args, log, rc = kargs(functions, tmp_path)
    assert args == [*BUILT_IN, "--apiserver-extra-sans=node-1"]
    assert log == "rc=0\n" and rc == 0
    assert kargs(functions, tmp_path, host="")[0] == BUILT_IN


def test_kubesolo_args_round_trip_keeps_words_and_order(functions: Path, tmp_path: Path) -> None:
    file = ("# comment\n\n  --portainer-edge-id=abc  \n--node-ip=10.0.0.5\n   # indented\n"
            "--local-storage-shared-path=/mnt/a b")
    args, log, rc = kargs(functions, tmp_path, file=file, cloudinit="--load-balancer-ip=10.0.0.9",
                          cmdline="--startup-timeout=900 --portainer-edge-image='reg.example/agent:x y' --debug")
    assert rc == 0 and "[ERROR]" not in log, log
    assert args == [*BUILT_IN, "--apiserver-extra-sans=node-1", "--portainer-edge-id=abc", "--node-ip=10.0.0.5",
                    "--local-storage-shared-path=/mnt/a b", "--load-balancer-ip=10.0.0.9", "--startup-timeout=900",
                    "--portainer-edge-image=reg.example/agent:x y", "--debug"]


@pytest.mark.parametrize(
    ("given", "passed"),
    [
        ("--debug", "--debug"),
        ("--debug=true", "--debug"),
        ("--debug=TRUE", "--debug"),
        ("--debug=yes", "--debug"),
        ("--debug=1", "--debug"),
        ("--debug=on", "--debug"),
        ("--debug=false", "--no-debug"),
        ("--debug=No", "--no-debug"),
        ("--debug=0", "--no-debug"),
        ("--debug=off", "--no-debug"),
        ("--no-debug", "--no-debug"),
    ],
)
def test_kubesolo_args_booleans_become_flag_or_no_flag(functions: Path, tmp_path: Path, given: str,
                                                       passed: str) -> None:
    for source in ("file", "cloudinit", "cmdline"):
        args, log, _ = kargs(functions, tmp_path, **{source: given})
        assert args[3:] == [passed], (source, log)
        assert "[ERROR]" not in log


def test_kubesolo_args_user_value_replaces_the_built_in_one(functions: Path, tmp_path: Path) -> None:
    args, log, rc = kargs(functions, tmp_path, file="--local-storage=false\n--apiserver-extra-sans=a.example,10.0.0.7",
                          cmdline="--path=/var/lib/kubesolo/other")
    assert rc == 0
    assert args == ["--path=/var/lib/kubesolo/other", "--no-local-storage", "--apiserver-extra-sans=a.example,10.0.0.7"]
    assert f"--local-storage from {tmp_path}/flags replaces the built-in one" in log
    assert "--apiserver-extra-sans from" in log
    assert ("[WARN] --path from kubesolo.flags= replaces --path=/var/lib/kubesolo: KubeSolo keeps all its state there, "
            "so it must never change after the first start") in log
    assert "[ERROR]" not in log


def test_kubesolo_args_precedence_file_then_cloud_init_then_cmdline(functions: Path, tmp_path: Path) -> None:
    args, log, _ = kargs(functions, tmp_path, file="--startup-timeout=100\n--debug",
                         cloudinit="--startup-timeout=200\n--no-debug", cmdline="--startup-timeout=300")
    assert args[3:] == ["--startup-timeout=300", "--no-debug"]
    assert "[WARN] --startup-timeout from cloud-init kubesolo.flags replaces the one from" in log
    assert "[WARN] --startup-timeout from kubesolo.flags= replaces the one from cloud-init kubesolo.flags" in log
    args, _, _ = kargs(functions, tmp_path, file="--node-ip=10.0.0.1", cloudinit="--node-ip=10.0.0.2")
    assert args[3:] == ["--node-ip=10.0.0.2"]
    # In one source the last one wins, as for the others.
    args, log, _ = kargs(functions, tmp_path, cmdline="--node-ip=10.0.0.1 --debug --node-ip=10.0.0.3")
    assert args[3:] == ["--node-ip=10.0.0.3", "--debug"]
    assert "[WARN] --node-ip is given more than once in kubesolo.flags=: the last one is used" in log


def test_kubesolo_args_string_flag_value_as_next_word(functions: Path, tmp_path: Path) -> None:
    """kingpin's `--name VALUE` form, within one source."""
    args, log, _ = kargs(functions, tmp_path, cmdline="--node-ip 10.0.0.5 --startup-timeout 900",
                         file="--load-balancer-ip\n10.0.0.8")
    assert args[3:] == ["--load-balancer-ip=10.0.0.8", "--node-ip=10.0.0.5", "--startup-timeout=900"]
    assert "[ERROR]" not in log


@pytest.mark.parametrize(
    ("cmdline", "kept", "message"),
    [
        ("--bogus --debug", ["--debug"], "KubeSolo flags (kubesolo.flags=): unknown flag --bogus: not passed "
                                         "(KubeSolo would exit on it)"),
        ("--from-config-file=yes", [], "unknown flag --from-config-file"),
        ("--no-path", [], "unknown flag --no-path"),
        ("word --debug", ["--debug"], "'word' is not a flag (KubeSolo takes no positional arguments)"),
        ("''", [], "'' is not a flag"),
        ("-v", [], "'-v' is not a flag"),
        ("--", [], "'--' is not a flag"),
        ("--local-storage true", ["--local-storage"],
         "'true' after the boolean --local-storage (write --local-storage, --no-local-storage or "
         "--local-storage=true)"),
        ("--debug=maybe", [], "--debug=maybe is neither true nor false"),
        ("--no-debug=true", [], "--no-debug takes no value"),
        ("--node-ip", [], "--node-ip needs a value (--node-ip=VALUE)"),
        ("--node-ip --debug", ["--debug"], "--node-ip needs a value (--node-ip=VALUE)"),
        ("--startup-timeout=soon", [], "--startup-timeout needs a whole number"),
        ("--version", [], "--version makes KubeSolo print and exit"),
    ],
)
def test_kubesolo_args_drop_what_kubesolo_refuses_with_an_error(functions: Path, tmp_path: Path, cmdline: str,
                                                                kept: list[str], message: str) -> None:
    args, log, rc = kargs(functions, tmp_path, cmdline=cmdline)
    assert rc == 0
    base = ["--local-storage"] if cmdline.startswith("--local-storage") else []
    assert args == [*BUILT_IN, "--apiserver-extra-sans=node-1", *[k for k in kept if k not in base]], log
    assert f"[ERROR] KubeSolo flags (kubesolo.flags=): {message.removeprefix('KubeSolo flags (kubesolo.flags=): ')}" \
        in log, log
    if "unknown flag" in message:
        assert "KubeSolo knows these flags: --path --apiserver-extra-sans --node-ip" in log
        assert "--version" not in log.split("knows these flags:")[1]


def test_kubesolo_args_errors_name_the_flags_file(functions: Path, tmp_path: Path) -> None:
    args, log, _ = kargs(functions, tmp_path, file="--note=a b\n--node-ip 10.0.0.5\n")
    assert args == [*BUILT_IN, "--apiserver-extra-sans=node-1"]
    assert f"[ERROR] KubeSolo flags ({tmp_path}/flags): unknown flag --note: not passed" in log
    assert (f"[ERROR] KubeSolo flags ({tmp_path}/flags): '--node-ip ...' holds a blank (write --node-ip=VALUE as one "
            "argument)") in log


def test_kubesolo_args_never_log_secret_values(functions: Path, tmp_path: Path) -> None:
    args, log, _ = kargs(functions, tmp_path, file="--portainer-edge-key=s3cret-one\n--portainer-edge-key s3cret-two",
                         cmdline="--portainer-edge-key=s3cret-three s3cret-four")
    assert args[3:] == ["--portainer-edge-key=s3cret-three"]
    assert "s3cret" not in log, log
    assert "a word after --portainer-edge-key is not a flag" in log


def test_kubesolo_args_never_evaluate(functions: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    args, log, _ = kargs(functions, tmp_path, file=f"--node-ip=$(touch {marker})",
                         cmdline=f"\\$(touch${{IFS}}{marker}) '--load-balancer-ip=`touch {marker}`'")
    assert not marker.exists()
    assert args[3:] == [f"--node-ip=$(touch {marker})", f"--load-balancer-ip=`touch {marker}`"]
    assert "is not a flag" in log


def test_kubesolo_args_unterminated_quote(functions: Path, tmp_path: Path) -> None:
    args, _, rc = kargs(functions, tmp_path, cmdline="--debug --node-ip='10.0.0.5")
    assert rc == 1
    assert args[3:] == ["--debug", "--node-ip=10.0.0.5"]


def test_kubesolo_flag_table_rendered(functions: Path) -> None:
    """functions.sh carries files/kubesolo-flags.yml, the one table of KubeSolo's flags."""
    table = yaml.safe_load((REPO / "files/kubesolo-flags.yml").read_text())
    rendered = re.search(r"^    KSI_KUBESOLO_FLAGS='([^']*)'$", functions.read_text(), re.M).group(1).split()
    assert rendered == [f"{f['name']}:{f['type']}:{int(f['boot'])}:{int(f['secret'])}" for f in table["kubesolo_flags"]]


# --------------------------------------------------------------------------------------------
# Names and addresses
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mac", "name"),
    [
        ("52:54:00:12:34:56", "kubesolo-123456"),
        ("52:54:00:AB:cD:0F", "kubesolo-abcd0f"),
        ("00:00:00:00:00:00", None),
        ("52:54:00:12:34", None),
        ("52:54:00:12:34:5g", None),
        ("", None),
    ],
)
def test_hostname_from_mac(functions: Path, mac: str, name: str | None) -> None:
    result = bb(functions, 'ksi_hostname_from_mac "$1"', mac)
    if name is None:
        assert result.returncode == 1
        assert result.stdout == ""
    else:
        assert result.returncode == 0
        assert result.stdout == name + "\n"


def test_hostname_from_mac_custom_prefix(functions: Path) -> None:
    result = bb(functions, 'ksi_hostname_from_mac "$1" node-', "AA:BB:CC:DD:EE:FF")
    assert result.stdout == "node-ddeeff\n"


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("kubesolo-abcd0f", True),
        ("node1.example.com", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("Kubesolo-ABC", False),
        ("-lead", False),
        ("trail-", False),
        ("under_score", False),
        ("dot..dot", False),
        ("", False),
    ],
)
def test_valid_hostname(functions: Path, name: str, valid: bool) -> None:
    assert (bb(functions, 'ksi_valid_hostname "$1"', name).returncode == 0) is valid


@pytest.mark.parametrize(
    ("addr", "private"),
    [
        ("10.0.2.15/24", True),
        ("10.255.255.255", True),
        ("172.16.0.1", True),
        ("172.31.255.1/20", True),
        ("172.15.0.1", False),
        ("172.32.0.1", False),
        ("192.168.1.10/24", True),
        ("192.169.1.10", False),
        ("127.0.0.1", False),
        ("8.8.8.8", False),
        ("100.64.0.1", False),
        ("10.0.0", False),
        ("10.0.0.1.5", False),
        ("10.0.0.256", False),
        ("fd00::1", False),
    ],
)
def test_is_private_ipv4(functions: Path, addr: str, private: bool) -> None:
    assert (bb(functions, 'ksi_is_private_ipv4 "$1"', addr).returncode == 0) is private


# --------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------
def test_log_lines(functions: Path) -> None:
    result = bb(functions, 'log_info "hello world"; log_ok "Stage 90-kubesolo.sh complete"; log_warn w; log_error e')
    lines = result.stderr.splitlines()
    assert re.fullmatch(r"\[kubesolo-init\] \[ *[0-9]+\.[0-9]{2}\] hello world", lines[0])
    assert lines[1:] == [
        "[kubesolo-init] [OK] Stage 90-kubesolo.sh complete",
        "[kubesolo-init] [WARN] w",
        "[kubesolo-init] [ERROR] e",
    ]
    assert result.stdout == ""


def test_log_writes_to_extra_consoles(functions: Path, tmp_path: Path) -> None:
    console = tmp_path / "console"
    result = bb(functions, "log_ok hi", env={"KSI_LOG_CONSOLES": str(console)})
    assert result.stderr == "[kubesolo-init] [OK] hi\n"
    assert console.read_text() == "[kubesolo-init] [OK] hi\n"


# --------------------------------------------------------------------------------------------
# /sbin/init against stub stages (not PID 1: no handover)
# --------------------------------------------------------------------------------------------
def make_stub_libdir(layer: Path, root: Path, stages: dict[str, str]) -> Path:
    libdir = root / "lib"
    (libdir / "init.d").mkdir(parents=True)
    shutil.copy(layer / LIBDIR / "functions.sh", libdir / "functions.sh")
    for name in _stage_names(layer):
        body = stages.get(name, "")
        (libdir / "init.d" / name).write_text(f'echo {name} >> "$TRACE"\n{body}\nreturn 0\n')
    return libdir


def _stage_names(layer: Path) -> list[str]:
    return yaml.safe_load((REPO / "roles/init/vars/main.yml").read_text())["init_stages"]


def run_init(layer: Path, libdir: Path, root: Path) -> subprocess.CompletedProcess:
    emergency = root / "emergency"
    emergency.write_text(f'#!/bin/sh\necho shell >> "{root}/trace"\n')
    emergency.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "KSI_LOG_CONSOLES": "",
        "KSI_TEST_LIBDIR": str(libdir),
        "KSI_TEST_EMERGENCY_CMD": str(emergency),
        "TRACE": str(root / "trace"),
    }
    return subprocess.run(
        [BUSYBOX, "sh", str(layer / "sbin/init")], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_init_runs_stages_in_order_and_shares_variables(layer: Path, tmp_path: Path) -> None:
    names = _stage_names(layer)
    libdir = make_stub_libdir(
        layer,
        tmp_path,
        {
            "10-parse-cmdline.sh": "export FROM_TEN=hello",
            "20-persistent-mount.sh": '[ "$FROM_TEN" = hello ] || return 7\nSHELL_VAR=plain',
            "90-kubesolo.sh": '[ "$SHELL_VAR" = plain ] || return 9',
        },
    )
    result = run_init(layer, libdir, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "trace").read_text().split() == names
    ok_lines = [line for line in result.stderr.splitlines() if "[OK] Stage" in line]
    assert ok_lines == [f"[kubesolo-init] [OK] Stage {n} complete" for n in names]
    assert "[ERROR]" not in result.stderr
    assert all(line.startswith("[kubesolo-init] ") for line in result.stderr.splitlines())


def test_init_retries_from_the_failed_stage(layer: Path, tmp_path: Path) -> None:
    libdir = make_stub_libdir(
        layer,
        tmp_path,
        {"30-kernel-modules.sh": f'[ -e "{tmp_path}/once" ] || {{ touch "{tmp_path}/once"; return 3; }}'},
    )
    result = run_init(layer, libdir, tmp_path)
    assert result.returncode == 0, result.stderr
    trace = (tmp_path / "trace").read_text().split()
    assert trace[:6] == [
        "00-early-mount.sh",
        "10-parse-cmdline.sh",
        "20-persistent-mount.sh",
        "30-kernel-modules.sh",
        "shell",
        "30-kernel-modules.sh",
    ]
    assert trace.count("00-early-mount.sh") == 1
    assert "[kubesolo-init] [ERROR] Stage 30-kernel-modules.sh failed (exit 3)" in result.stderr
    assert result.stderr.splitlines()[-3:-1] == ["[kubesolo-init] [OK] Stage 90-kubesolo.sh complete", HANDOVER_MARKER]


def test_init_kubesolo_shell_after_stage_10(layer: Path, tmp_path: Path) -> None:
    libdir = make_stub_libdir(layer, tmp_path, {"10-parse-cmdline.sh": "export KUBESOLO_SHELL=1"})
    result = run_init(layer, libdir, tmp_path)
    assert result.returncode == 0, result.stderr
    trace = (tmp_path / "trace").read_text().split()
    assert trace[:3] == ["00-early-mount.sh", "10-parse-cmdline.sh", "shell"]
    assert trace[3] == "20-persistent-mount.sh"
    assert "[ERROR]" not in result.stderr


def test_init_prints_the_contract_handover_marker_once_after_the_last_stage(layer: Path, tmp_path: Path) -> None:
    """The marker is files/boot-contract.yml's handover_marker, printed once, after the last stage's [OK]."""
    libdir = make_stub_libdir(layer, tmp_path, {})
    result = run_init(layer, libdir, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines.count(HANDOVER_MARKER) == 1
    last_ok = max(i for i, line in enumerate(lines) if "[OK] Stage " in line)
    assert lines[last_ok] == f"[kubesolo-init] [OK] Stage {_stage_names(layer)[-1]} complete"
    assert lines.index(HANDOVER_MARKER) == last_ok + 1
    assert HANDOVER_MARKER.startswith("[kubesolo-init] ") and "Stage" not in HANDOVER_MARKER


def test_extra_stage_after_90_runs_before_the_handover_marker(tmp_path: Path) -> None:
    """A stage added after 90 (init_extra_stages) is rendered, sourced after stage 90, and the marker follows it."""
    template = tmp_path / "95-test-extra.sh.j2"
    template.write_text('# shellcheck shell=sh\n'
                        'echo "95-test-extra.sh {{ init_hostname_prefix }}" >> "$TRACE"\nreturn 0\n')
    layers = tmp_path / "layers"
    extra = {"init_extra_stages": [{"name": "95-test-extra.sh", "template": str(template)}]}
    _run_role(tmp_path, layers, extra)
    layer = layers / "init"
    rendered = layer / LIBDIR / "init.d/95-test-extra.sh"
    assert rendered.stat().st_mode & 0o777 == 0o755
    assert "kubesolo-" in rendered.read_text()  # rendered as a template
    root = tmp_path / "run"
    root.mkdir()
    libdir = make_stub_libdir(layer, root, {})
    shutil.copy(rendered, libdir / "init.d" / rendered.name)
    result = run_init(layer, libdir, root)
    assert result.returncode == 0, result.stderr
    assert (root / "trace").read_text().split() == [*_stage_names(layer), "95-test-extra.sh", "kubesolo-"]
    lines = result.stderr.splitlines()
    assert lines.index("[kubesolo-init] [OK] Stage 90-kubesolo.sh complete") < lines.index(
        "[kubesolo-init] [OK] Stage 95-test-extra.sh complete") < lines.index(HANDOVER_MARKER)
    # Dropped again: its file goes (init.d is exclusive), and the init no longer names it.
    _run_role(tmp_path, layers)
    assert not rendered.exists()
    assert "95-test-extra.sh" not in (layer / "sbin/init").read_text()


@pytest.mark.parametrize("stage", [{"name": "95-Bad.sh", "template": "/x.j2"},
                                   {"name": "90-kubesolo.sh", "template": "/x.j2"}, {"name": "95-x.sh"}])
def test_extra_stage_refused(tmp_path: Path, stage: dict) -> None:
    output = _run_role(tmp_path, tmp_path / "layers", {"init_extra_stages": [stage]}, expect_failure=True)
    assert "Invalid init_extra_stages" in output


# --------------------------------------------------------------------------------------------
# The hand-over to KubeSolo and DHCP (functions.sh, shared by /sbin/init, kubesolo-run, stage 50, cloud-init)
# --------------------------------------------------------------------------------------------
def test_boot_vars_list_names_every_kubesolo_variable_the_boot_sets(layer: Path, functions: Path) -> None:
    """KSI_BOOT_VARS (the one list ksi_kubesolo_exec unsets) holds every KUBESOLO_* variable any rendered
    file assigns except KubeSolo's own, none of KubeSolo's own, and KSI_CMDLINE_VARS is what stage 10 exports."""
    listed = bb(functions, 'printf "%s\\n" "$KSI_BOOT_VARS" "$KSI_CMDLINE_VARS"')
    boot_vars, cmdline_vars = (set(line.split()) for line in listed.stdout.splitlines())
    assert cmdline_vars < boot_vars
    assigned: set[str] = set()
    for path in [layer / "sbin/init", *(layer / LIBDIR).rglob("*")]:
        if path.is_file():
            assigned |= set(re.findall(r"\b(KUBESOLO_[A-Z_]+)=", path.read_text()))
    # KubeSolo's own variables (the flags' environment twins, written to kubesolo.env) are not the boot's;
    # KUBESOLO_DEBUG is both, which is why the boot's are unset before KubeSolo starts.
    flags = yaml.safe_load((REPO / "files/kubesolo-flags.yml").read_text())["kubesolo_flags"]
    twins = {flag["env"] for flag in flags if flag["env"]} - boot_vars
    assert "KUBESOLO_DEBUG" in boot_vars
    # Keys the boot writes into /etc/os-release (slot.sh's ksi_slot_os_release) are file keys, not variables.
    os_release_keys = {"KUBESOLO_OS_SLOT"}
    assert "KUBESOLO_OS_SLOT=" in (layer / LIBDIR / "slot.sh").read_text()
    assert assigned - twins - os_release_keys <= boot_vars, assigned - twins - os_release_keys - boot_vars
    assert "KUBESOLO_DATA_EXPLICIT" not in boot_vars
    values, _ = parse(functions, "quiet")
    assert set(values) == cmdline_vars


HANDOVER = r"""
KSI_RUNDIR=$1
KSI_KUBESOLO_BINARY=$2
KSI_KUBESOLO_ARGS_FILE=$1/kubesolo.args
for v in $KSI_BOOT_VARS; do export "$v=boot"; done
export KUBESOLO_PORTAINER_EDGE_ID=stale
ksi_kubesolo_exec "$3"
echo "returned $?"
"""


@pytest.mark.parametrize("mode", ["supervised", "pid1"])
def test_kubesolo_exec_hands_over_clean(functions: Path, tmp_path: Path, mode: str) -> None:
    """ksi_kubesolo_exec: the boot's KUBESOLO_* are gone, kubesolo.env is exported as data (never evaluated),
    the arguments arrive word for word, the limit is set, and supervised it records its PID."""
    run = tmp_path / "run"
    run.mkdir()
    binary = tmp_path / "kubesolo"
    binary.write_text('#!/bin/sh\nprintf "arg=%s\\n" "$@"\nenv | grep -E "^(KUBESOLO_|HTTP_PROXY)" | sort\n'
                      'echo "nofile=$(ulimit -n)"\n')
    binary.chmod(0o755)
    (run / "kubesolo.args").write_text("--path=/var/lib/kubesolo\n--node-ip=$(touch pwned) x\n")
    (run / "kubesolo.env").write_text(
        f"KUBESOLO_PORTAINER_EDGE_ID=abc def\nHTTP_PROXY=http://proxy:3128\n$(touch {tmp_path}/pwned)\n# note\n")
    result = bb(functions, HANDOVER, str(run), str(binary), mode)
    assert "returned" not in result.stdout, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert out[:2] == ["arg=--path=/var/lib/kubesolo", "arg=--node-ip=$(touch pwned) x"]
    assert [line for line in out if line.startswith(("KUBESOLO_", "HTTP_PROXY"))] == [
        "HTTP_PROXY=http://proxy:3128", "KUBESOLO_PORTAINER_EDGE_ID=abc def"]
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    defaults = role_defaults("init")
    nofile = defaults["init_kubesolo_nofile"]
    assert f"nofile={nofile}" in out or f"[WARN] Cannot set the open-files limit to {nofile}" in result.stderr
    if mode == "supervised":
        assert (run / "kubesolo.pid").read_text().strip().isdigit()
        assert f"Starting KubeSolo ({binary}, 2 arguments)" in result.stderr
    else:
        assert not (run / "kubesolo.pid").exists()
        assert f"Executing {binary} as PID 1" in result.stderr


def test_kubesolo_exec_refuses_without_binary_or_arguments(functions: Path, tmp_path: Path) -> None:
    result = bb(functions, HANDOVER, str(tmp_path), str(tmp_path / "missing"), "supervised")
    assert result.stdout.strip() == "returned 1"
    assert "[ERROR] Cannot start KubeSolo:" in result.stderr


def test_dhcp_is_one_udhcpc_call(layer: Path, functions: Path) -> None:
    """ksi_dhcp is the one udhcpc command line; stage 50 and cloud-init call it, with the role's settings."""
    result = bb(functions, 'udhcpc() { printf "%s\\n" "$@"; return 3; }\nksi_dhcp eth7\necho "rc=$?"')
    defaults = role_defaults("init")
    # udhcpc's output goes to the console (stderr), not into a caller's command substitution.
    assert (result.stderr + result.stdout).split() == [
        "-i", "eth7", "-t", str(defaults["init_dhcp_tries"]), "-T", str(defaults["init_dhcp_timeout"]),
        "-A", str(defaults["init_dhcp_retry_pause"]), "-b", "-p", "/run/udhcpc.eth7.pid", "-s",
        defaults["init_dhcp_script"], "rc=3"]
    for path in (LIBDIR + "/init.d/50-network.sh", LIBDIR + "/cloud-init.sh"):
        text = (layer / path).read_text()
        assert "ksi_dhcp " in text and not re.search(r"^\s*(if )?udhcpc ", text, re.M), path


# --------------------------------------------------------------------------------------------
# Rendered files
# --------------------------------------------------------------------------------------------
def test_rendered_layout_and_modes(layer: Path) -> None:
    assert (layer / "sbin/init").stat().st_mode & 0o777 == 0o755
    for name in _stage_names(layer):
        assert (layer / LIBDIR / "init.d" / name).stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in (layer / LIBDIR / "init.d").iterdir()) == sorted(_stage_names(layer))
    assert (layer / "etc/inittab").read_text().count("::respawn:/usr/lib/kubesolo-os/kubesolo-run") == 1
    assert not (layer / "etc/shadow").exists()
    assert not (layer / "root").exists()


def test_modules_list_matches_kubesolo_os_boot_modules(layer: Path) -> None:
    shared = role_defaults("kubesolo_os")
    listed = [
        line.strip()
        for line in (layer / LIBDIR / "modules.list").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert listed == shared["kubesolo_os_boot_modules"]


def test_sysctl_conf(layer: Path) -> None:
    text = (layer / "etc/sysctl.d/k8s.conf").read_text()
    settings = dict(
        (k.strip(), v.strip())
        for k, v in (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    )
    assert settings == {
        "net.bridge.bridge-nf-call-iptables": "1",
        "net.ipv4.ip_forward": "1",
        "fs.inotify.max_user_watches": "524288",
        "fs.inotify.max_user_instances": "8192",
        "net.netfilter.nf_conntrack_max": "131072",
        "vm.swappiness": "0",
    }


ROOTFS_MOUNTINFO = "1 1 0:2 / / rw - rootfs rootfs rw,size=180404k,nr_inodes=45101\n" \
    "15 1 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,mode=755\n"
LEFT_MOUNTINFO = "30 1 0:2 / / rw shared:1 - rootfs rootfs rw,size=180404k,nr_inodes=45101\n" \
    "31 30 0:22 / /proc rw,nosuid,nodev,noexec - proc proc rw\n"
HOST_MOUNTINFO = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n" \
    "23 22 0:21 / /proc rw - proc proc rw\n"


@pytest.mark.parametrize(("mountinfo", "is_rootfs"), [
    (ROOTFS_MOUNTINFO, True),  # the initramfs as the kernel leaves it: / is the namespace's first mount
    (LEFT_MOUNTINFO, False),  # after ksi_leave_rootfs: the same rootfs, but a bind mount with a parent
    (HOST_MOUNTINFO, False),  # a disk-based root
    ("", False),
])
def test_root_is_rootfs(functions: Path, tmp_path: Path, mountinfo: str, is_rootfs: bool) -> None:
    """ksi_root_is_rootfs applies the kernel's pivot_root test: / is a mount without a parent."""
    path = tmp_path / "mountinfo"
    path.write_text(mountinfo)
    result = bb(functions, 'ksi_root_is_rootfs "$1"', str(path))
    assert (result.returncode == 0) is is_rootfs, result.stderr
    assert bb(functions, 'ksi_root_is_rootfs "$1"', str(tmp_path / "missing")).returncode == 1


def test_leave_rootfs_runs_first_in_init_as_pid_1_only(layer: Path) -> None:
    """/sbin/init leaves the rootfs right after sourcing functions.sh, before any stage, only as PID 1."""
    init = (layer / "sbin/init").read_text()
    call = init.index('    ksi_leave_rootfs "$@" || true\n')
    assert init.rindex('if [ "$$" = 1 ]; then\n', 0, call) > init.index('. "$KSI_INIT_LIBDIR/functions.sh"')
    assert call < init.index("for ksi_stage in $KSI_STAGES")
    assert "no_pivot_root" not in init.lower() and "nopivot" not in init.lower()


def test_kubesolo_open_files_limit_in_both_handovers(layer: Path) -> None:
    """Both hand-overs (exec in /sbin/init, supervised in kubesolo-run) go through ksi_kubesolo_exec, which sets
    the limit before its exec; neither file has a hand-over of its own."""
    defaults = role_defaults("init")
    limit = f"ulimit -n {defaults['init_kubesolo_nofile']} "
    assert defaults["init_kubesolo_nofile"] == 65535  # upstream unit's LimitNOFILE
    functions = (layer / LIBDIR / "functions.sh").read_text()
    body = functions[functions.index("ksi_kubesolo_exec() {"):]
    body = body[:body.index("\n}\n")]
    assert limit in body and body.index(limit) < body.index('exec "$KSI_KUBESOLO_BINARY"')
    for path, mode in ((LIBDIR + "/kubesolo-run", "supervised"), ("sbin/init", "pid1")):
        text = (layer / path).read_text()
        assert f"ksi_kubesolo_exec {mode}\n" in text, path
        assert "ulimit" not in text and 'exec "$KSI_KUBESOLO_BINARY"' not in text and "kubesolo.env" not in text, path


def test_build_epoch_rendered(functions: Path) -> None:
    assert f"KSI_BUILD_EPOCH={EPOCH}\n" in functions.read_text()


def shell_files(layer: Path) -> list[Path]:
    files = [layer / "sbin/init", *sorted((layer / LIBDIR / "init.d").glob("*.sh"))]
    files += [layer / LIBDIR / name for name in ("functions.sh", "kubesolo-run", "shutdown")]
    return files


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck(layer: Path) -> None:
    result = subprocess.run(
        ["shellcheck", "-s", "sh", *map(str, shell_files(layer))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("path", ["sbin/init", f"{LIBDIR}/functions.sh", f"{LIBDIR}/kubesolo-run"])
def test_busybox_sh_parses(layer: Path, path: str) -> None:
    result = subprocess.run([BUSYBOX, "sh", "-n", str(layer / path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_variant_exec_ssh_password(tmp_path: Path) -> None:
    """The other branches of the templates: exec handover, SSH, root password, log file, no NTP."""
    layers = tmp_path / "layers"
    extra = {
        "init_handover": "exec",
        "init_ssh_enabled": True,
        "init_ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAtest test@example"],
        "init_root_password": "s3cret",
        "init_kubesolo_log": "/var/log/kubesolo.log",
        "init_ntp_servers": [],
    }
    _run_role(tmp_path, layers, extra)
    assert _changed(_run_role(tmp_path, layers, extra)) == 0
    layer = layers / "init"
    shadow = layer / "etc/shadow"
    assert shadow.stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"root:\$6\$[^:]+:19675:0:99999:7:::\n", shadow.read_text())
    assert "s3cret" not in shadow.read_text()
    # The hash checks the password; its salt is the setting's, never derived from the password (a salt taken
    # from a fast hash of the password lets anyone who reads the image test guesses without the rounds).
    crypt = shadow.read_text().split(":")[1]
    assert sha512_crypt.verify("s3cret", crypt)
    salt = sha512_crypt.from_string(crypt).salt
    assert salt == role_defaults("init")["init_root_password_salt"]
    assert salt not in hashlib.sha256(b"kubesolo-os:s3cret").hexdigest()
    keys = layer / "root/.ssh/authorized_keys"
    assert keys.stat().st_mode & 0o777 == 0o600
    assert (layer / "root/.ssh").stat().st_mode & 0o777 == 0o700
    assert not (layer / "etc/inittab").exists()
    assert "ksi_start_sshd\n" in (layer / LIBDIR / "init.d/50-network.sh").read_text()
    assert "KSI_ROOT_PASSWORD_SET=1" in (layer / "sbin/init").read_text()
    # Stage 70 without a hardware clock and with no NTP servers: a clear warning, and the boot goes on.
    clock = subprocess.run(
        [BUSYBOX, "sh", "-c",
         f'. "{layer / LIBDIR / "functions.sh"}"\n'
         'hwclock() { return 1; }\nksi_clock_clamp() { :; }\n'
         f'. "{layer / LIBDIR / "init.d/70-clock.sh"}"\necho "rc=$?"'],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": os.environ["PATH"], "KSI_LOG_CONSOLES": ""},
    )
    clock_out = clock.stdout + clock.stderr
    assert "rc=0" in clock_out, clock_out
    assert "[WARN] No time source (no hardware clock, no NTP)" in clock_out, clock_out
    result = subprocess.run(
        ["shellcheck", "-s", "sh", *map(str, shell_files(layer))], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_ssh_is_off_by_default(layer: Path) -> None:
    """With the role's defaults no authorized keys are shipped and dropbear is never started."""
    assert not (layer / "root").exists()
    assert "\nksi_start_sshd\n" not in (layer / LIBDIR / "init.d/50-network.sh").read_text()


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare")
def test_stage00_falls_back_to_cgroup_v1_without_cgroup2(functions: Path, layer: Path, tmp_path: Path) -> None:
    """A kernel without cgroup2: stage 00 mounts a tmpfs and one v1 hierarchy per enabled controller.

    The real stage runs under busybox sh in a private mount namespace whose /proc/filesystems and
    /proc/cgroups are fakes; `mount` and the clock and driver steps are stubbed, so nothing on the
    host changes."""
    (tmp_path / "filesystems").write_text("nodev\tsysfs\nnodev\ttmpfs\nnodev\tcgroup\n\text4\n")
    (tmp_path / "cgroups").write_text(
        "#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
        "cpuset\t0\t1\t1\ncpu\t0\t1\t1\nmemory\t0\t1\t0\npids\t0\t1\t1\n"
    )
    stage = tmp_path / "stage00.sh"
    stage.write_text(textwrap.dedent(f"""\
        . "{functions}"
        KSI_RUNDIR="{tmp_path}/run"
        mount() {{ echo "MOUNT $*"; }}
        ksi_is_mounted() {{ return 1; }}
        ksi_clock_clamp() {{ :; }}
        ksi_load_modaliases() {{ :; }}
        . "{layer / LIBDIR / 'init.d/00-early-mount.sh'}"
        echo "rc=$?"
        """))
    wrapper = (
        f'mount --bind "{tmp_path}/filesystems" /proc/filesystems && '
        f'mount --bind "{tmp_path}/cgroups" /proc/cgroups && '
        f'exec "{BUSYBOX}" sh "{stage}"'
    )
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", wrapper],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": os.environ["PATH"], "KSI_LOG_CONSOLES": ""},
    )
    out = result.stdout + result.stderr
    assert "rc=0" in out, out
    assert "[WARN] cgroup2 is not available: mounting cgroup v1 controllers" in out
    assert "MOUNT -t cgroup2" not in out
    assert re.search(r"MOUNT -t tmpfs -o \S+ cgroup_root /sys/fs/cgroup$", out, re.M), out
    for controller in ("cpuset", "cpu", "pids"):
        assert f"MOUNT -t cgroup -o nosuid,nodev,noexec,{controller} cgroup /sys/fs/cgroup/{controller}" in out
    assert "/sys/fs/cgroup/memory" not in out  # disabled controllers are left alone
