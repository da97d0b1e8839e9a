"""A/B upgrades in QEMU: playbooks/upgrade.yml and rollback.yml against booted nodes (issue 17).

Each node is an installed disk (tests/ab_machine.py: the build's ESP image with GRUB and the A/B grub.cfg, its
slot image in slot A, the layout of files/installed-disk.yml) booted under SeaBIOS or OVMF with -no-reboot, so
every reset goes through the real GRUB and its boot counter. Everything on the node is the product. Builds:

- v1: the suite's test image (0.1.0, tests/build-vars.yml), installed in slot A once per session; each test
  boots its own sparse copy of that disk;
- v2: the same with kubesolo_os_version 0.2.0 (build/test-v2);
- never: 0.2.0-never, whose KubeSolo stand-in starts and never becomes healthy (the double's NEVER-HEALTHY
  mode), with init_upgrade_health_timeout 60 s;
- panic: 0.2.0-panic, whose kernel panics at the handover (exec handover, the double's EXIT mode as PID 1).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import guest
import kubesolo_double
import pytest
import yaml
from ab_machine import ABMachine, make_installed_disk
from conftest import ARTIFACTS, BUILD_VARS, REPO, ansible_playbook, ensure_ssh_key, tool_env

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")

STATE_FILE = "/var/lib/kubesolo/upgrade-test-state"
SSH_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o LogLevel=ERROR"


def build_variant(name: str, version: str, *extra: str) -> Path:
    """build.yml with the test settings into build/test-<name>; returns its output directory."""
    out = REPO / "build" / f"test-{name}"
    ansible_playbook("build.yml", "-e", f"@{BUILD_VARS}", "-e", f"kubesolo_os_version={version}",
                     "-e", f"kubesolo_os_build_dir={out}", "-e", f"kubesolo_os_output_dir={out}/output", *extra)
    return out / "output"


@pytest.fixture(scope="session")
def v1(built_image) -> Path:
    return built_image.output


@pytest.fixture(scope="session")
def v2() -> Path:
    return build_variant("v2", "0.2.0")


@pytest.fixture(scope="session")
def never_healthy() -> Path:
    double = kubesolo_double.build(REPO / "build" / "test-double-never" / "kubesolo", mode="never")
    return build_variant("never", "0.2.0-never", "-e", f"kubesolo_binary_src={double}",
                         "-e", "init_upgrade_health_timeout=60")


@pytest.fixture(scope="session")
def panics() -> Path:
    double = kubesolo_double.build(REPO / "build" / "test-double-exit" / "kubesolo", mode="exit")
    return build_variant("panic", "0.2.0-panic", "-e", f"kubesolo_binary_src={double}", "-e", "init_handover=exec")


@pytest.fixture(scope="session")
def installed_disk(v1: Path) -> Path:
    """The v1 installed disk, made once; tests boot copies of it."""
    return make_installed_disk(ARTIFACTS / "upgrade" / "installed-v1.img", v1)


@pytest.fixture
def machines(installed_disk: Path, request):
    """Factory of A/B machines, each on its own copy of the installed disk; all stopped at the end, and the
    test fails on an [ERROR] line it did not declare."""
    started: list[ABMachine] = []
    workdir = ARTIFACTS / "upgrade" / request.node.name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)

    def make(name: str = "node-1", firmware: str = "bios") -> ABMachine:
        disk = workdir / f"{name}.img"
        subprocess.run(["cp", "--sparse=always", str(installed_disk), str(disk)], check=True, timeout=120)
        machine = ABMachine(name=name, workdir=workdir, disk=disk, ssh_key=ensure_ssh_key(), firmware=firmware)
        started.append(machine)
        return machine.start()

    yield make
    for machine in started:
        machine.stop()
        (workdir / f"{machine.name}.log").write_text(machine.logs())
    problems = [line for machine in started for line in machine.unexpected_errors()]
    if problems:
        pytest.fail("unexpected [ERROR] lines:\n" + "\n".join(problems), pytrace=False)


def inventory(path: Path, nodes: dict[str, dict]) -> Path:
    hosts = {name: {"ansible_host": "127.0.0.1", "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(ensure_ssh_key()), "ansible_ssh_common_args": SSH_ARGS,
                    **values} for name, values in nodes.items()}
    path.write_text(yaml.safe_dump({"all": {"children": {"kubesolo_nodes": {"hosts": hosts}}}}))
    return path


def play(playbook: str, inv: Path, *extra: str, timeout: float = 2400) -> subprocess.CompletedProcess[str]:
    env = tool_env()
    env["ANSIBLE_HOST_KEY_CHECKING"] = "False"
    return subprocess.run([str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(inv), playbook, *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def status(machine: ABMachine) -> dict[str, str]:
    out = machine.ssh("/usr/lib/kubesolo-os/kubesolo-slot status").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def first_boot(machine: ABMachine) -> None:
    """Boot 1 (slot A, v1) up to the handover and SSH; write the data the upgrade must keep."""
    boot = machine.wait_boot(1)
    boot.guest.wait_booted(timeout=400)
    assert boot.booted() == ("A", False, "0.1.0")
    machine.wait_ssh()


def summary(result: subprocess.CompletedProcess[str], host: str) -> str:
    """The node's line of the play summary (the task `Summary of the node`)."""
    lines = re.findall(r'"msg": "(' + re.escape(host) + r': [^"]*; running [^"]*)"', result.stdout)
    return lines[-1] if lines else ""


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_upgrade_keeps_data_then_noop_then_rollback_on_request(machines, v2: Path, tmp_path: Path,
                                                                firmware: str) -> None:
    node = machines(firmware=firmware)
    first_boot(node)
    node.ssh(f"echo kubesolo-state-before-upgrade > {STATE_FILE}")
    hostname = node.ssh("hostname").stdout.strip()
    saved_hostname = node.ssh("cat /etc/kubesolo/hostname").stdout.strip()
    assert node.ssh("grep KUBESOLO_OS_SLOT /etc/os-release").stdout.strip() == "KUBESOLO_OS_SLOT=A"
    assert status(node)["a_version"] == "0.1.0"
    inv = inventory(tmp_path / "hosts.yml", {"node-1": {"ansible_port": node.ssh_port}})

    # --check: the plan, nothing changed.
    check = play("playbooks/upgrade.yml", inv, "-e", f"upgrade_output_dir={v2}", "--check")
    assert check.returncode == 0, check.stdout[-4000:] + check.stderr
    assert "write 0.2.0" in check.stdout and "into slot B" in check.stdout
    assert "planned: write" in summary(check, "node-1")
    assert status(node)["b_version"] == "" and len(node.boots) == 1

    started = time.monotonic()
    result = play("playbooks/upgrade.yml", inv, "-e", f"upgrade_output_dir={v2}")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    line = summary(result, "node-1")
    assert line.startswith("node-1: upgraded; running 0.2.0 from slot B (active B); slot A 0.1.0, slot B 0.2.0; "
                           "last result upgraded 0.2.0"), line
    print(f"upgrade of one node ({firmware}): {elapsed:.0f} s in all; {line}")
    with (ARTIFACTS / "upgrade" / "timings.txt").open("a") as timings:
        timings.write(f"upgrade {firmware} {elapsed:.0f}s {line}\n")

    trial = node.boots[1]
    assert trial.booted() == ("B", True, "0.2.0")
    trial.guest.wait(r"\[OK\] Slot B \(version 0\.2\.0\) is healthy: marked good", timeout=5)
    state = status(node)
    assert (state["booted"], state["active"], state["trial"], state["running_version"]) == ("B", "B", "", "0.2.0")
    assert node.ssh(f"cat {STATE_FILE}").stdout.strip() == "kubesolo-state-before-upgrade"
    assert node.ssh("hostname").stdout.strip() == hostname
    assert node.ssh("cat /etc/kubesolo/hostname").stdout.strip() == saved_hostname
    assert node.ssh("grep KUBESOLO_OS_SLOT /etc/os-release").stdout.strip() == "KUBESOLO_OS_SLOT=B"

    # The same version again: nothing to do, no reboot.
    again = play("playbooks/upgrade.yml", inv, "-e", f"upgrade_output_dir={v2}")
    assert again.returncode == 0, again.stdout[-4000:]
    assert "up to date" in summary(again, "node-1")
    assert re.search(r"node-1\s+: ok=\d+\s+changed=0 ", again.stdout), again.stdout[-2000:]
    assert len(node.boots) == 2

    # Back to the other slot on request: first the plan only, then for real.
    plan = play("playbooks/rollback.yml", inv, "--check")
    assert plan.returncode == 0, plan.stdout[-4000:]
    assert "switch to slot A (0.1.0) and reboot" in plan.stdout and len(node.boots) == 2
    assert status(node)["active"] == "B"
    back = play("playbooks/rollback.yml", inv)
    assert back.returncode == 0, back.stdout[-6000:] + back.stderr
    assert node.boots[-1].booted() == ("A", False, "0.1.0")
    state = status(node)
    assert (state["booted"], state["active"], state["running_version"], state["last_result"]) == \
        ("A", "A", "0.1.0", "switched")
    assert node.ssh(f"cat {STATE_FILE}").stdout.strip() == "kubesolo-state-before-upgrade"


@pytest.mark.parametrize("broken", ["never_healthy", "panics"])
def test_broken_build_rolls_back_by_itself(machines, broken: str, request, tmp_path: Path) -> None:
    build = request.getfixturevalue(broken)
    node = machines()
    node.allow_errors(r"Trial of slot B failed: not healthy after 60 s \(missing: port-6443\)")
    first_boot(node)
    inv = inventory(tmp_path / "hosts.yml", {"node-1": {"ansible_port": node.ssh_port}})
    started = time.monotonic()
    result = play("playbooks/upgrade.yml", inv, "-e", f"upgrade_output_dir={build}")
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    line = summary(result, "node-1")
    assert line.startswith("node-1: rolled back; running 0.1.0 from slot A (active A)"), result.stdout[-6000:]
    assert "last result rolled-back 0.2.0-" in line
    assert "did not become healthy" in result.stdout
    with (ARTIFACTS / "upgrade" / "timings.txt").open("a") as timings:
        timings.write(f"rollback {broken} {elapsed:.0f}s {line}\n")
    slots = [b.booted()[:2] for b in node.boots]
    assert slots == [("A", False), ("B", True), ("A", False)], slots
    trial_log = node.boots[1].guest.log
    if broken == "panics":
        assert "Kernel panic" in trial_log and "[kubesolo-test-double] refused: built to exit" in trial_log
    else:
        assert "never-healthy: not serving :6443" in trial_log
        assert "Rebooting into the active slot (rollback)" in trial_log
    node.boots[2].guest.wait(r"\[WARN\] The trial boot of slot B \(version 0\.2\.0-[a-z]+\) failed: "
                             r"rolled back to slot A \(version 0\.1\.0\)", timeout=120)
    state = status(node)
    assert (state["booted"], state["active"], state["trial"], state["last_result"]) == ("A", "A", "", "rolled-back")


def test_power_cuts_while_writing_and_after_arming(machines, v2: Path) -> None:
    node = machines()
    first_boot(node)
    manifest = yaml.safe_load((v2 / "manifest.json").read_text())["slot_image"]
    image = v2 / manifest["file"]
    command = node.current.ssh_command(
        f"/usr/lib/kubesolo-os/kubesolo-slot write B {manifest['size']} {manifest['sha256']} 0.2.0")

    # 1. Power cut while slot B is being written: the node boots slot A again, B is marked empty.
    with image.open("rb") as stdin:
        writer = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(4)
        assert writer.poll() is None, "the write finished before the power cut: the image is too small"
        node.power_cut()
        writer.wait(timeout=60)
    boot = node.wait_boot(2)
    assert boot.booted() == ("A", False, "0.1.0")
    boot.guest.wait_booted(timeout=400)
    node.wait_ssh()
    state = status(node)
    assert (state["active"], state["b_version"], state["trial"]) == ("A", "", "")

    # 2. A complete write, armed, and the power cut right after: the trial boots and is marked good.
    with image.open("rb") as stdin:
        subprocess.run(command, stdin=stdin, capture_output=True, check=True, timeout=900)
    node.ssh("/usr/lib/kubesolo-os/kubesolo-slot arm B")
    node.power_cut()
    boot = node.wait_boot(3)
    assert boot.booted() == ("B", True, "0.2.0")
    boot.guest.wait(r"\[OK\] Slot B \(version 0\.2\.0\) is healthy: marked good", timeout=600)
    node.wait_ssh()
    state = status(node)
    assert (state["booted"], state["active"], state["last_result"]) == ("B", "B", "upgraded")


def test_fleet_batch_with_a_broken_node_stops_the_rollout(machines, v2: Path, never_healthy: Path,
                                                          tmp_path: Path) -> None:
    good, bad = machines("node-good"), machines("node-bad")
    bad.allow_errors(r"Trial of slot B failed: not healthy after 60 s")
    first_boot(good)
    first_boot(bad)
    later_port = guest.free_port()  # nothing listens there: a node of a later batch that must not be touched
    inv = inventory(tmp_path / "hosts.yml", {
        "node-good": {"ansible_port": good.ssh_port, "upgrade_output_dir": str(v2)},
        "node-bad": {"ansible_port": bad.ssh_port, "upgrade_output_dir": str(never_healthy)},
        "node-later": {"ansible_port": later_port, "upgrade_output_dir": str(v2)},
    })
    result = play("playbooks/upgrade.yml", inv, "-e", "upgrade_serial=2")
    assert result.returncode != 0
    assert summary(result, "node-good").startswith("node-good: upgraded; running 0.2.0 from slot B"), \
        result.stdout[-6000:]
    assert summary(result, "node-bad").startswith("node-bad: rolled back; running 0.1.0 from slot A")
    # The second batch (node-later) never started: no task ran on it.
    assert "node-later" not in result.stdout.split("PLAY RECAP")[0], result.stdout[-3000:]
    assert status(good)["active"] == "B" and status(bad)["active"] == "A"
