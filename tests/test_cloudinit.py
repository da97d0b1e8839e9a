"""Cloud-init (docs/cloud-init.md): the Python validator and the boot-time busybox awk parser.

One set of fixtures (tests/fixtures/cloud-init/{valid,invalid}) drives both parsers: they must print
the same nodes and the same diagnostics (level, key, line) for every fixture; every invalid fixture
is rejected by both, naming the key and the line recorded in its expected.yml. The shipped examples
must be valid. The shell helpers run under the host's `busybox sh`; the boot tests apply a file in
QEMU and reject an invalid one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_collections.kubesolo.os.plugins.module_utils import cloudinit
from conftest import REPO, VENV_BIN, run, tool_env
from contract import HANDOVER_MARKER, persistent_dirs
from test_init_shell import _run_role

FIXTURES = REPO / "tests" / "fixtures" / "cloud-init"
EXAMPLES = REPO / "files" / "cloud-init" / "examples"
SCHEMA_FILE = REPO / "files" / "cloud-init-schema.yml"
LIBDIR = "usr/lib/kubesolo-os"
BUSYBOX = shutil.which("busybox")
FLAGS_FILE = REPO / "files" / "kubesolo-flags.yml"
SCHEMA = cloudinit.load_schema(yaml.safe_load(SCHEMA_FILE.read_text()), yaml.safe_load(FLAGS_FILE.read_text()),
                               persistent_dirs())

VALID = sorted((FIXTURES / "valid").glob("*.yaml"))
INVALID = sorted((FIXTURES / "invalid").glob("*.yaml"))
VALID_EXPECTED = yaml.safe_load((FIXTURES / "valid" / "expected.yml").read_text()) or {}
INVALID_EXPECTED = yaml.safe_load((FIXTURES / "invalid" / "expected.yml").read_text())

needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed")


@pytest.fixture(scope="module")
def ci_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The init layer rendered by the role (cloud-init.awk, cloud-init.schema, cloud-init.sh)."""
    workdir = tmp_path_factory.mktemp("init-role-ci")
    _run_role(workdir, workdir / "layers")
    return workdir / "layers" / "init"


def python_flat(path: Path) -> list[str]:
    return cloudinit.check(path.read_bytes(), SCHEMA).flat()


def awk_flat(layer: Path, path: Path, size: bool = True, timeout: float = 60) -> list[str]:
    """The boot parser's records; size: pass the file's size as the boot does (else awk counts it)."""
    result = subprocess.run(
        [BUSYBOX, "awk", "-v", f"schema={layer / LIBDIR / 'cloud-init.schema'}",
         *(["-v", f"size={path.stat().st_size}"] if size else []), "-f",
         str(layer / LIBDIR / "cloud-init.awk"), str(path)],
        capture_output=True, text=True, timeout=timeout, check=False, errors="surrogateescape",
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def diagnostics(flat: list[str], level: str) -> list[tuple[str, int]]:
    return [(f[3], int(f[2])) for f in (line.split("\t") for line in flat) if f[0] == "D" and f[1] == level]


# --------------------------------------------------------------------------------------------
# Both parsers on every fixture
# --------------------------------------------------------------------------------------------

def test_fixture_lists_are_complete():
    assert set(INVALID_EXPECTED) == {p.name for p in INVALID}
    assert set(VALID_EXPECTED) <= {p.name for p in VALID}
    assert len(VALID) >= 5 and len(INVALID) >= 20


@needs_busybox
@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_both_parsers_agree(ci_layer: Path, path: Path):
    py, awk = python_flat(path), awk_flat(ci_layer, path)
    assert py == awk
    assert diagnostics(py, "ERROR") == []
    expected = [(w["key"], w["line"]) for w in VALID_EXPECTED.get(path.name, {}).get("warnings", [])]
    assert diagnostics(py, "WARN") == expected
    # The subset is real YAML.
    yaml.safe_load(path.read_text())


@needs_busybox
@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_fixture_rejected_by_both_naming_the_key(ci_layer: Path, path: Path):
    py, awk = python_flat(path), awk_flat(ci_layer, path)
    assert py == awk
    expected = INVALID_EXPECTED[path.name]
    assert (expected["key"], expected["line"]) in diagnostics(py, "ERROR")
    assert (expected["key"], expected["line"]) in diagnostics(awk, "ERROR")


@needs_busybox
@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(ci_layer: Path, path: Path):
    py, awk = python_flat(path), awk_flat(ci_layer, path)
    assert py == awk
    assert [line for line in py if line.startswith("D")] == []


def test_examples_shipped():
    assert {p.stem for p in EXAMPLES.glob("*.yaml")} == {"dhcp", "static-ip", "portainer-edge", "proxy", "air-gapped"}


def test_schema_table_rendered_from_the_schema(ci_layer: Path):
    table = (ci_layer / LIBDIR / "cloud-init.schema").read_text()
    rows = [line.split("\t") for line in table.splitlines() if line.startswith("K\t")]
    assert [(r[1], r[2]) for r in rows] == [(k, v["type"]) for k, v in SCHEMA["keys"].items()]
    dirs = [line.split("\t")[1] for line in table.splitlines() if line.startswith("P\t")]
    assert dirs == SCHEMA["persistent_dirs"] == persistent_dirs()


def test_cross_key_rules_rendered_from_the_schema(ci_layer: Path):
    table = (ci_layer / LIBDIR / "cloud-init.schema").read_text()
    rows = [line.split("\t")[1:] for line in table.splitlines() if line.startswith("R\t")]
    assert rows == [[r["mapping"], r["rule"], " ".join(r["keys"]), r["if_key"], r["if_value"], r["message"]]
                    for r in SCHEMA["rules"]]
    assert len(rows) == 6


EXTRA_RULES_FILE = """\
proxy:
  http_proxy: http://proxy.example:3128
ntp:
  servers: []
kubesolo:
  portainer_edge_id: some-id
"""


@needs_busybox
def test_rule_added_only_to_the_schema_is_enforced_by_both_parsers(tmp_path: Path):
    """A cross-key rule is data: added to a copy of files/cloud-init-schema.yml (nothing else changed), the
    Python validator and the boot parser (the init role rendered with that schema) both enforce it alike."""
    data = yaml.safe_load(SCHEMA_FILE.read_text())
    data["rules"] += [
        {"mapping": "proxy", "rule": "together", "keys": ["http_proxy", "https_proxy"],
         "message": "give http_proxy and https_proxy together"},
        {"mapping": "ntp", "rule": "required", "keys": ["servers"], "message": "needs at least one server"},
        {"mapping": "kubesolo", "rule": "forbidden_if", "if_key": "portainer_edge_id", "if_value": "some-id",
         "keys": ["portainer_edge_id"], "message": "this id is reserved"},
    ]
    schema_file = tmp_path / "cloud-init-schema.yml"
    schema_file.write_text(yaml.safe_dump(data, sort_keys=False))
    schema = cloudinit.load_schema(data, yaml.safe_load(FLAGS_FILE.read_text()), persistent_dirs())
    _run_role(tmp_path, tmp_path / "layers", {"init_cloudinit_schema_file": str(schema_file)})
    layer = tmp_path / "layers" / "init"
    config = tmp_path / "extra-rules.yaml"
    config.write_text(EXTRA_RULES_FILE)
    py, awk = cloudinit.check(config.read_bytes(), schema).flat(), awk_flat(layer, config)
    assert py == awk
    errors = [line.split("\t")[2:] for line in py if line.startswith("D\tERROR\t")]
    assert ["2", "proxy.https_proxy", "give http_proxy and https_proxy together"] in errors
    assert ["4", "ntp.servers", "needs at least one server"] in errors
    assert ["6", "kubesolo.portainer_edge_id", "this id is reserved"] in errors
    # The shipped schema does not have these rules: only its own (the edge key is missing).
    shipped = [line.split("\t")[3] for line in python_flat(config) if line.startswith("D\tERROR\t")]
    assert shipped == ["kubesolo.portainer_edge_key"]


@needs_busybox
def test_unknown_rule_is_refused_by_both_parsers(ci_layer: Path, tmp_path: Path):
    data = yaml.safe_load(SCHEMA_FILE.read_text())
    data["rules"].append({"mapping": "proxy", "rule": "implies", "keys": ["http_proxy"], "message": "m"})
    with pytest.raises(ValueError, match="unknown rule"):
        cloudinit.load_schema(data, yaml.safe_load(FLAGS_FILE.read_text()), persistent_dirs())
    schema = tmp_path / "cloud-init.schema"
    schema.write_text((ci_layer / LIBDIR / "cloud-init.schema").read_text()
                      + "R\tproxy\timplies\thttp_proxy\t\t\tm\n")
    config = tmp_path / "c.yaml"
    config.write_text("hostname: node-1\n")
    result = subprocess.run([BUSYBOX, "awk", "-v", f"schema={schema}", "-f", str(ci_layer / LIBDIR / "cloud-init.awk"),
                             str(config)], capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.splitlines() == [f"D\tERROR\t0\t\tunknown rule implies in the schema {schema}"]
    # A schema that cannot be read is refused the same way (its error used to be lost: no output, no error).
    result = subprocess.run([BUSYBOX, "awk", "-v", f"schema={tmp_path}/missing", "-f",
                             str(ci_layer / LIBDIR / "cloud-init.awk"), str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.splitlines() == [f"D\tERROR\t0\t\tcannot read the schema {tmp_path}/missing"]


@needs_busybox
def test_unknown_flag_is_refused_naming_the_known_flags(ci_layer: Path, tmp_path: Path):
    """Both validators name an unknown KubeSolo flag and list the flags KubeSolo has (from the one table)."""
    table = yaml.safe_load(FLAGS_FILE.read_text())["kubesolo_flags"]
    known = ", ".join(f"--{f['name']}" for f in table if f["boot"])
    assert known.startswith("--path, --apiserver-extra-sans, --node-ip") and "--version" not in known
    expected = f"D\tERROR\t4\tkubesolo.flags[1]\tunknown KubeSolo flag --from-config-file; known flags: {known}"
    path = FIXTURES / "invalid" / "flag-unknown.yaml"
    assert expected in python_flat(path)
    assert expected in awk_flat(ci_layer, path)
    result = bb(ci_layer, tmp_path, f'ksi_ci_check "{path}" "$KSI_CI_FLAT" node.yaml')
    assert (f"[kubesolo-init] [ERROR] cloud-init node.yaml line 4: kubesolo.flags[1]: unknown KubeSolo flag "
            f"--from-config-file; known flags: {known}") in result.stderr


def test_flag_rules_messages():
    """What the validator says for each way a flag item breaks KubeSolo's contract (never the value)."""
    flags = SCHEMA["kubesolo_flags"]
    cases = {
        "--debug": "", "--debug=TRUE": "", "--no-debug": "", "--node-ip=10.0.0.1": "", "--node-ip=": "",
        "--startup-timeout=-1": "",
        "debug": "not a KubeSolo flag (--name or --name=value)",
        "--Debug": "not a KubeSolo flag (--name or --name=value)",
        "--debug=maybe": "--debug is a boolean: write --debug, --no-debug or --debug=true|false",
        "--no-debug=false": "--no-debug takes no value",
        "--portainer-edge-key": "--portainer-edge-key needs a value: write --portainer-edge-key=VALUE",
        "--startup-timeout=1e3": "--startup-timeout needs a whole number",
        "--version": "--version makes KubeSolo print and exit: not allowed at boot",
        "--no-path": "unknown KubeSolo flag --no-path; known flags: " + flags["known"],
    }
    assert {value: cloudinit.check_flag(value, flags) for value in cases} == cases


def test_schema_table_has_the_flag_table(ci_layer: Path):
    table = yaml.safe_load(FLAGS_FILE.read_text())
    rows = [line.split("\t") for line in (ci_layer / LIBDIR / "cloud-init.schema").read_text().splitlines()]
    assert [r[1:] for r in rows if r[0] == "F"] == [[f["name"], f["type"], str(int(f["boot"]))]
                                                     for f in table["kubesolo_flags"]]
    assert [r[1] for r in rows if r[0] == "BT"] == table["bool_true"]
    assert [r[1] for r in rows if r[0] == "BF"] == table["bool_false"]


def test_schema_is_documented():
    doc = (REPO / "docs" / "cloud-init.md").read_text()
    for key in SCHEMA["keys"]:
        assert f"`{key}`" in doc, key


def test_kubesolo_flags_are_documented():
    """roles/init/README.md lists every flag of the one table, with its type and environment twin."""
    doc = (REPO / "roles" / "init" / "README.md").read_text()
    for flag in yaml.safe_load(FLAGS_FILE.read_text())["kubesolo_flags"]:
        assert re.search(rf"^\| `--{flag['name']}` \| {flag['type']} \| `{flag['env']}` \|", doc, re.M), flag["name"]


# --------------------------------------------------------------------------------------------
# Size limit and linear time (issue 15, item 13)
# --------------------------------------------------------------------------------------------
MAX_BYTES = SCHEMA["max_bytes"]


def _fill(head: str, unit, limit: int = MAX_BYTES) -> str:
    """head, then unit(i) lines for i = 0, 1, ... as long as the text stays within limit bytes."""
    parts, size, i = [head], len(head.encode()), 0
    while True:
        line = unit(i)
        if size + len(line.encode()) > limit:
            return "".join(parts)
        parts.append(line)
        size += len(line.encode())
        i += 1


# Worst cases for the old quadratic parser, each just under the maximum size.
WORST_CASES = {
    # One block value of the whole file (it was concatenated line by line, then escaped char by char).
    "block": lambda: _fill("write_files:\n  - path: /etc/kubesolo/big\n    content: |\n",
                           lambda i: "      " + "x" * 70 + "\n"),
    # Thousands of unknown keys (each was compared with every skipped path) and their warnings (sorted
    # by insertion).
    "unknown-keys": lambda: _fill("write_files:\n",
                                  lambda i: f"  - path: /etc/kubesolo/f{i}\n    content: x\n    mode{i}: 1\n"),
    # Long double-quoted lines full of escapes (built char by char).
    "quoted": lambda: _fill("sysctls:\n", lambda i: f"  k.v{i}: \"" + "a\\tb\\\\" * 400 + "\"\n"),
    # Many diagnostics on earlier lines (the cross-key rules add them last).
    "cross-key-errors": lambda: _fill("network:\n  interfaces:\n",
                                      lambda i: f"    - name: e{i % 10}\n      mac: 02:00:00:00:00:01\n"),
}


@needs_busybox
@pytest.mark.parametrize("case", sorted(WORST_CASES))
def test_max_size_file_parses_in_linear_time_and_both_agree(ci_layer: Path, tmp_path: Path, case: str):
    import time

    path = tmp_path / f"{case}.yaml"
    path.write_text(WORST_CASES[case]())
    assert MAX_BYTES - 4096 < path.stat().st_size <= MAX_BYTES
    started = time.monotonic()
    awk = awk_flat(ci_layer, path, timeout=120)
    seconds = time.monotonic() - started
    assert python_flat(path) == awk
    assert not any(line.startswith("D\tERROR\t1\t\tthe file is larger") for line in awk)
    # The quadratic parser took 90 s for "block" on the host; linear takes about 2 s at most.
    assert seconds < 20, f"{case}: {seconds:.1f} s"


@needs_busybox
@pytest.mark.parametrize("size_given", [True, False], ids=["size-given", "size-counted"])
def test_file_over_the_maximum_is_refused_by_both_with_one_error(ci_layer: Path, tmp_path: Path, size_given: bool):
    path = tmp_path / "big.yaml"
    path.write_text(_fill("hostname: node-1\nsysctls:\n", lambda i: f"  k.v{i}: {i}\n", MAX_BYTES + 4096))
    assert path.stat().st_size > MAX_BYTES
    expected = [f"D\tERROR\t1\t\tthe file is larger than the maximum of {MAX_BYTES} bytes (docs/cloud-init.md)"]
    assert python_flat(path) == expected
    assert awk_flat(ci_layer, path, size=size_given) == expected
    # Exactly the maximum passes.
    path.write_bytes(path.read_bytes()[:MAX_BYTES].rsplit(b"\n", 1)[0].ljust(MAX_BYTES - 1, b" ") + b"\n")
    assert path.stat().st_size == MAX_BYTES
    assert python_flat(path) == awk_flat(ci_layer, path, size=size_given)
    assert not any(line.startswith("D\tERROR") for line in python_flat(path))


@needs_busybox
def test_shell_check_refuses_a_file_over_the_maximum(ci_layer: Path, tmp_path: Path):
    path = tmp_path / "big.yaml"
    path.write_text("hostname: node-1\n" + "# padding\n" * (MAX_BYTES // 10 + 1))
    result = bb(ci_layer, tmp_path, f'ksi_ci_check "{path}" "$KSI_CI_FLAT" node.yaml; echo "rc=$?"')
    assert "rc=1" in result.stdout
    assert (f"[ERROR] cloud-init node.yaml line 1: (top level): the file is larger than the maximum of {MAX_BYTES} "
            "bytes") in result.stderr


def test_validator_names_the_line_of_a_non_utf8_byte():
    """The module reads bytes: a Latin-1 file is refused on its line, not with a decoding traceback."""
    result = cloudinit.check((FIXTURES / "invalid" / "not-utf8.yaml").read_bytes(), SCHEMA)
    assert [d.text() for d in result.errors] == ["cloud-init line 6: (top level): not valid UTF-8 text "
                                                 "(save the file as UTF-8)"]


def test_python_data_view():
    data = cloudinit.check((FIXTURES / "valid" / "full.yaml").read_text(), SCHEMA).data()
    assert data["network"]["interfaces"][0]["addresses"] == ["10.0.2.15/24", "10.0.2.200/24"]
    assert data["sysctls"]["net.ipv4.ip_local_port_range"] == "1024 65000"
    assert data["write_files"][1]["content"] == '#!/bin/sh\necho "hello: world"'


# --------------------------------------------------------------------------------------------
# Shell helpers (busybox sh), with a stand-in `ip`
# --------------------------------------------------------------------------------------------

def bb(layer: Path, tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    lib = layer / LIBDIR
    prelude = (f'. "{lib}/functions.sh"\nKSI_LIBDIR="{lib}"\nKSI_RUNDIR="{tmp_path}"\n'
               f'. "{lib}/cloud-init.sh"\nKSI_CI_FLAT="{tmp_path}/flat"\n')
    return subprocess.run([BUSYBOX, "sh", "-c", prelude + script], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "KSI_LOG_CONSOLES": ""}, check=False)


@needs_busybox
def test_shell_check_logs_key_and_line_and_rejects(ci_layer: Path, tmp_path: Path):
    result = bb(ci_layer, tmp_path, f'ksi_ci_check "{FIXTURES}/invalid/bad-gateway.yaml" "$KSI_CI_FLAT" node.yaml; '
                                    'echo "rc=$?"')
    assert "[kubesolo-init] [ERROR] cloud-init node.yaml line 7: network.interfaces[0].gateway: not an IPv4 address" \
        in result.stderr
    assert "rc=1" in result.stdout


@needs_busybox
def test_shell_get_exact_values_and_no_secrets_logged(ci_layer: Path, tmp_path: Path):
    script = f'''ksi_ci_check "{FIXTURES}/valid/full.yaml" "$KSI_CI_FLAT" || echo FAILED
ksi_ci_get kubesolo.config >"{tmp_path}/config"
ksi_ci_get "write_files[1].content" >"{tmp_path}/hello"
ksi_ci_list network.interfaces[0].dns
ksi_ci_count write_files
ksi_ci_no_proxy 10.0.2.15
ksi_ci_flags
'''
    result = bb(ci_layer, tmp_path, script)
    assert "FAILED" not in result.stdout, result.stderr
    assert (tmp_path / "config").read_text() == "# KubeSolo configuration\nlocal-storage: true\ndebug: false\n"
    assert (tmp_path / "hello").read_text() == '#!/bin/sh\necho "hello: world"'
    lines = result.stdout.splitlines()
    assert lines[:3] == ["10.0.2.3", "10.0.2.4", "2"]  # full.yaml's flags, as the file gives them:
    assert lines[3] == (".example.com,192.168.0.0/16,10.42.0.0/16,10.43.0.0/16,.svc,.cluster.local,localhost,"
                        "127.0.0.1,10.0.2.15")
    assert lines[4:] == ["--debug", "--node-ip=10.0.2.15"]
    assert (tmp_path / "flat").stat().st_mode & 0o777 == 0o600
    assert "c2VjcmV0LWtleQ" not in result.stderr and "edge-id-1234" not in result.stderr


IP_STUB = '''
ip() {
    echo "ip $*" >>"$KSI_RUNDIR/ip.log"
    case "$*" in "route add"*) return 2 ;; esac
    return 0
}
'''


@needs_busybox
def test_shell_network_failure_is_rolled_back(ci_layer: Path, tmp_path: Path):
    config = tmp_path / "net.yaml"
    config.write_text("network:\n  interfaces:\n    - name: lo\n      addresses: [10.9.0.5/24, 10.9.0.6/24]\n"
                      "      gateway: 192.0.2.1\n      dns: [10.9.0.1]\n")
    script = IP_STUB + f'ksi_ci_check "{config}" "$KSI_CI_FLAT" && ksi_ci_network; echo "rc=$?"'
    result = bb(ci_layer, tmp_path, script)
    assert "rc=1" in result.stdout, result.stderr
    calls = (tmp_path / "ip.log").read_text().splitlines()
    assert calls == [
        "ip link set lo up",
        "ip addr add 10.9.0.5/24 dev lo",
        "ip addr add 10.9.0.6/24 dev lo",
        "ip route add default via 192.0.2.1 dev lo onlink",
        "ip addr del 10.9.0.6/24 dev lo",
        "ip addr del 10.9.0.5/24 dev lo",
    ]
    assert re.search(r"\[ERROR\] cloud-init line 5: network\.interfaces\[0\]\.gateway: cannot add the default route "
                     r"via 192\.0\.2\.1 on lo: network configuration rolled back", result.stderr)


@needs_busybox
def test_shell_network_unknown_interface_touches_nothing(ci_layer: Path, tmp_path: Path):
    config = tmp_path / "net.yaml"
    config.write_text("network:\n  interfaces:\n    - name: lo\n      dhcp: true\n"
                      "    - mac: 02:00:00:00:00:99\n      addresses: [10.9.0.5/24]\n")
    script = IP_STUB + f'''ksi_ci_check "{config}" "$KSI_CI_FLAT" || echo INVALID
sleep() {{ :; }}
ksi_ci_network; echo "rc=$?"'''
    result = bb(ci_layer, tmp_path, script)
    assert "INVALID" not in result.stdout and "rc=1" in result.stdout, result.stderr
    assert not (tmp_path / "ip.log").exists()
    assert "[ERROR] cloud-init line 5: network.interfaces[1]: no interface with MAC 02:00:00:00:00:99" in result.stderr


# --------------------------------------------------------------------------------------------
# Ansible: the module, the standalone playbook, the build's embedded default
# --------------------------------------------------------------------------------------------

def validate_playbook(path: Path) -> subprocess.CompletedProcess[str]:
    return run([str(VENV_BIN / "ansible-playbook"), "playbooks/validate-config.yml", "-e", f"cloudinit_file={path}"],
               timeout=300, check=False, env=tool_env())


def test_validate_playbook_accepts_a_valid_file():
    result = validate_playbook(EXAMPLES / "air-gapped.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_validate_playbook_names_the_line_of_a_non_utf8_byte():
    result = validate_playbook(FIXTURES / "invalid" / "not-utf8.yaml")
    assert result.returncode != 0
    assert "line 6: (top level): not valid UTF-8 text" in result.stdout


def test_validate_playbook_rejects_an_invalid_file_naming_key_and_line():
    result = validate_playbook(FIXTURES / "invalid" / "bad-gateway.yaml")
    assert result.returncode != 0
    assert "line 7: network.interfaces[0].gateway: not an IPv4 address" in result.stdout


def test_build_embeds_a_valid_default_and_refuses_an_invalid_one(tmp_path: Path):
    good = tmp_path / "good"
    good.mkdir()
    _run_role(good, good / "layers", {"init_cloudinit_default_file": str(EXAMPLES / "dhcp.yaml")})
    embedded = good / "layers" / "init" / LIBDIR / "cloud-init.default.yaml"
    assert embedded.read_text() == (EXAMPLES / "dhcp.yaml").read_text()
    assert embedded.stat().st_mode & 0o777 == 0o600
    with pytest.raises(AssertionError, match=r"line 7: network\.interfaces\[0\]\.gateway"):
        bad = tmp_path / "bad"
        bad.mkdir()
        _run_role(bad, bad / "layers", {"init_cloudinit_default_file": str(FIXTURES / "invalid" / "bad-gateway.yaml")})


# --------------------------------------------------------------------------------------------
# Boot tests (QEMU): a file applied from the boot medium form, an invalid one rejected
# --------------------------------------------------------------------------------------------
TEST_CA = (FIXTURES / "valid" / "full.yaml").read_text().split("ca_certs:\n  - |\n", 1)[1].split("sysctls:")[0]


def _indent(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" for line in text.splitlines())


@pytest.mark.slow
def test_boot_applies_cloud_init(boot, tmp_path: Path):
    import vmctl

    key = tmp_path / "ci_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cloud-init-key", "-f", str(key)],
                   check=True, timeout=60)
    ca = "\n".join(line.strip() for line in TEST_CA.strip().splitlines()) + "\n"
    config = f"""#cloud-config
hostname: ci-node-01
network:
  interfaces:
    - name: eth0
      addresses: [10.0.2.15/24, 10.0.2.200/24]
      gateway: 10.0.2.2
      dns: [10.0.2.3]
ntp:
  servers: [10.0.2.2]
ssh_authorized_keys:
  - {key.with_suffix('.pub').read_text().strip()}
proxy:
  http_proxy: http://10.0.2.2:3128
  https_proxy: http://10.0.2.2:3128
  no_proxy: [.corp.example]
ca_certs:
  - |
{_indent(ca, 4)}sysctls:
  vm.max_map_count: 262144
write_files:
  - path: /etc/kubesolo/hello.txt
    permissions: "0640"
    content: hello from cloud-init
  - path: /etc/kubesolo/containerd/config.toml
    content: "version = 2 # from cloud-init"
kubesolo:
  config: |
    local-storage: true
  flags: [--debug=true, --startup-timeout=900, --local-storage=false]
  portainer_edge_id: edge-id-secret-1
  portainer_edge_key: edge-key-secret-2
"""
    assert cloudinit.check(config, SCHEMA).valid
    media = tmp_path / "media"
    (media / "cloud-init").mkdir(parents=True)
    (media / "cloud-init" / "node.yaml").write_text(config)
    data = vmctl.make_data_disk(tmp_path / "data.img")
    medium = vmctl.make_data_disk(tmp_path / "medium.img", size_mb=16, label="KSCIMEDIA", content=media)
    from conftest import SSH_KEY
    vm = boot("ci", disks=(data, medium), append="kubesolo.data=LABEL=KSOLODATA "
                                                   "kubesolo.cloudinit=LABEL=KSCIMEDIA:/cloud-init/node.yaml")
    vm.wait_booted(timeout=300)
    text = vm.wait(re.escape("[kubesolo-test-double] running"), timeout=120)
    log = vm.log
    assert "[OK] Cloud-init configuration /run/kubesolo-os/cloud-init.yaml is valid" in log
    assert "[OK] Network configured from cloud-init: eth0" in log
    assert "Hostname from cloud-init: ci-node-01" in log
    assert "edge-key-secret-2" not in log and "edge-id-secret-1" not in log
    # The cloud-init key (not built into the image) logs in.
    vm.ssh_key = key
    vm.wait_ssh()
    assert vm.ssh("hostname").stdout.strip() == "ci-node-01"
    addrs = vm.ssh("ip -4 -o addr show dev eth0").stdout
    assert "10.0.2.15/24" in addrs and "10.0.2.200/24" in addrs
    assert "default via 10.0.2.2 dev eth0" in vm.ssh("ip route").stdout
    assert vm.ssh("cat /etc/resolv.conf").stdout.strip() == "nameserver 10.0.2.3"
    assert vm.ssh("cat /proc/sys/vm/max_map_count").stdout.strip() == "262144"
    assert ca.splitlines()[1] in vm.ssh("cat /etc/ssl/certs/ca-certificates.crt").stdout
    assert vm.ssh("cat /etc/kubesolo/hello.txt").stdout == "hello from cloud-init"
    assert vm.ssh("stat -c %a /etc/kubesolo/hello.txt /etc/kubesolo/config.yaml").stdout.split() == ["640", "600"]
    # A containerd config from write_files is a drop-in of KubeSolo's containerd on this very boot (stage 80).
    assert vm.ssh("cat /etc/containerd/config.d/kubesolo-os-custom.toml").stdout == "version = 2 # from cloud-init"
    # Cloud-init's flags, booleans translated as KubeSolo's kingpin needs them, replacing the built-in one.
    from test_boot import double_args
    assert double_args(text) == ["--path=/var/lib/kubesolo", "--no-local-storage", "--apiserver-extra-sans=ci-node-01",
                                 "--debug", "--startup-timeout=900"]
    environ = vm.ssh("tr '\\0' '\\n' </proc/$(cat /run/kubesolo-os/kubesolo.pid)/environ").stdout.splitlines()
    assert "HTTP_PROXY=http://10.0.2.2:3128" in environ and "https_proxy=http://10.0.2.2:3128" in environ
    no_proxy = next(e for e in environ if e.startswith("NO_PROXY=")).split("=", 1)[1].split(",")
    for entry in (".corp.example", "10.42.0.0/16", "10.43.0.0/16", ".svc", ".cluster.local", "localhost",
                  "10.0.2.15"):
        assert entry in no_proxy, entry
    assert "KUBESOLO_PORTAINER_EDGE_KEY=edge-key-secret-2" in environ
    # The image's own key still works too.
    vm.ssh_key = SSH_KEY
    vm.ssh("true")
    # KubeSolo (the double) took these arguments and is still its first process.
    from guest import assert_kubesolo_alive
    assert_kubesolo_alive(vm)


@pytest.mark.slow
def test_boot_rejects_invalid_cloud_init(boot, tmp_path: Path):
    content = tmp_path / "content"
    content.mkdir()
    shutil.copyfile(FIXTURES / "invalid" / "boot-bad-dns.yaml", content / "cloud-init.yaml")
    import vmctl

    data = vmctl.make_data_disk(tmp_path / "data.img", content=content)
    vm = boot("bad", disks=(data,), mac="52:54:00:ab:cd:01", append="kubesolo.data=LABEL=KSOLODATA")
    vm.allow_errors(r"cloud-init /mnt/data/cloud-init\.yaml line 9: ", r"Cloud-init configuration .* rejected")
    vm.wait(re.escape(HANDOVER_MARKER), timeout=300, errors_fail=False)
    log = vm.log
    assert ("[kubesolo-init] [ERROR] cloud-init /mnt/data/cloud-init.yaml line 9: network.interfaces[0].dns[1]: "
            "not an IPv4 address") in log
    assert "[ERROR] Cloud-init configuration /mnt/data/cloud-init.yaml rejected: nothing from it is applied" in log
    vm.wait_ssh()
    # No half-applied network: DHCP's address only, the MAC-derived name.
    addrs = vm.ssh("ip -4 -o addr show dev eth0").stdout
    assert "10.0.2.15/24" in addrs and "10.0.2.200" not in addrs
    assert vm.ssh("hostname").stdout.strip() == "kubesolo-abcd01"
    # A rejected file leaves KubeSolo running with the image's own arguments.
    from guest import assert_kubesolo_alive
    assert_kubesolo_alive(vm)


@needs_busybox
@pytest.mark.parametrize("address, gateway, onlink", [
    ("10.9.0.5/32", "10.9.0.1", True),  # a /32 (cloud providers): the gateway is outside it
    ("10.9.0.5/24", "10.9.0.1", False),
    ("10.9.0.5/8", "10.200.0.1", False),
    ("10.9.0.5/24", "10.9.1.1", True),
])
def test_shell_gateway_outside_the_addresses_is_added_on_link(ci_layer: Path, tmp_path: Path, address: str,
                                                             gateway: str, onlink: bool):
    """Issue 15, item 11 (the boot test with a real kernel is test_boot's persistent node)."""
    config = tmp_path / "net.yaml"
    config.write_text(f"network:\n  interfaces:\n    - name: lo\n      addresses: [{address}]\n"
                      f"      gateway: {gateway}\n")
    stub = 'ip() { echo "ip $*" >>"$KSI_RUNDIR/ip.log"; return 0; }\n'
    result = bb(ci_layer, tmp_path, stub + f'ksi_ci_check "{config}" "$KSI_CI_FLAT" && ksi_ci_network; echo "rc=$?"')
    assert "rc=0" in result.stdout, result.stderr
    route = [c for c in (tmp_path / "ip.log").read_text().splitlines() if c.startswith("ip route add")]
    assert route == [f"ip route add default via {gateway} dev lo" + (" onlink" if onlink else "")]


QUOTED_EDGES = [
    "'it''s'", "''", "'a'''", "'''a'", "'a'' b' # c", '""', '"a\\"b"', '"a\\\\"', '"\\\\\\""', '"a\\tb\\nc"',
    '"a\\', '"a\\"', '"a\\x"', "'unterminated", '"x" y', "'x'y", '"a\\\\\\\\b"', "'a\"b'", "\"a'b\"",
    '"\\n\\n"', "'#'", '"#" # c',
]


@needs_busybox
@pytest.mark.parametrize("scalar", QUOTED_EDGES)
def test_quoted_scalar_edge_cases_agree(ci_layer: Path, tmp_path: Path, scalar: str):
    path = tmp_path / "q.yaml"
    path.write_text(f"sysctls:\n  k.v: {scalar}\nntp:\n  servers: [{scalar}]\n")
    assert python_flat(path) == awk_flat(ci_layer, path)
