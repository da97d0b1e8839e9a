"""Shared fixtures: the repository, its tools, and the image built once for the whole session."""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

# Under CI a skipped test fails unless tests/skip_policy.py allows it (loaded for the whole session).
pytest_plugins = ["skip_policy"]

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
BUILD_VARS = REPO / "tests" / "build-vars.yml"
ARTIFACTS = REPO / "build" / "test-artifacts"
SSH_KEY = REPO / "build" / "test-ssh" / "id_ed25519"
ROOT_PASSWORD = "kubesolo-test-password"  # the test image's, from tests/build-vars.yml


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--real", action="store_true", default=False,
                     help="run the end-to-end tests with the real KubeSolo (marker `real`; `make test-real`)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `real` download and boot the real KubeSolo: only `pytest --real` (make test-real) runs
    them. Otherwise they are deselected, not skipped (a skip is a failure under CI), whatever -m says."""
    if config.getoption("--real"):
        return
    deselected = [item for item in items if item.get_closest_marker("real")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("real")]


def tool_env() -> dict[str, str]:
    """Environment for the project's tools: the venv first on PATH, the repo's ansible.cfg."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:/usr/sbin:/sbin:{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    return env


def run(cmd: list[str], *, timeout: float, cwd: Path = REPO, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure the assertion shows the end of its output."""
    result = subprocess.run(cmd, cwd=cwd, env=env or tool_env(), capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr)[-6000:]
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}:\n{output}", pytrace=False)
    return result


def role_defaults(role: str) -> dict:
    """A role's own values: its settings (defaults/main.yml) and its internal values (vars/main.yml,
    which win, as in Ansible), unrendered. The boot contract is tests/contract.py's CONTRACT."""
    values = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text()) or {}
    internal = REPO / "roles" / role / "vars" / "main.yml"
    if internal.exists():
        values.update(yaml.safe_load(internal.read_text()) or {})
    return values


@dataclass
class PlaybookRun:
    result: subprocess.CompletedProcess[str]
    seconds: float

    @property
    def recap(self) -> dict[str, int]:
        """Totals of the PLAY RECAP line (ok, changed, failed, ...)."""
        totals: dict[str, int] = {}
        for line in self.result.stdout.splitlines():
            if re.match(r"^\S+\s+: ok=", line):
                for key, value in re.findall(r"(\w+)=(\d+)", line):
                    totals[key] = totals.get(key, 0) + int(value)
        return totals

    def changed_tasks(self) -> list[str]:
        """Names of the tasks that reported a change (for a readable assertion message)."""
        names, current = [], ""
        for line in self.result.stdout.splitlines():
            if line.startswith("TASK ["):
                current = line
            elif line.startswith("changed:"):
                names.append(current)
        return names


def ansible_playbook(playbook: str, *extra: str, timeout: float = 1800, check: bool = True) -> PlaybookRun:
    if f"@{BUILD_VARS}" in extra:
        # The test build ships the KubeSolo test double (tests/build-vars.yml): build it first.
        import kubesolo_double

        kubesolo_double.build()
    started = time.monotonic()
    result = run([str(VENV_BIN / "ansible-playbook"), playbook, *extra], timeout=timeout, check=check)
    return PlaybookRun(result, time.monotonic() - started)


@dataclass
class BuiltImage:
    output: Path
    first_run: PlaybookRun

    @property
    def iso(self) -> Path:
        return next(self.output.glob("kubesolo-os-*-amd64.iso"))

    @property
    def vmlinuz(self) -> Path:
        return self.output / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.output / "initramfs"


def ensure_ssh_key() -> Path:
    """The key pair the test image authorizes (made once; kept so rebuilds stay identical)."""
    if not SSH_KEY.exists():
        SSH_KEY.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kubesolo-os-tests", "-f", str(SSH_KEY)],
                       check=True, timeout=60)
    return SSH_KEY


@pytest.fixture(scope="session")
def built_image() -> BuiltImage:
    """The image every boot test uses, built once with the kubesolo test double."""
    ensure_ssh_key()
    first = ansible_playbook("build.yml", "-e", f"@{BUILD_VARS}")
    output = REPO / "build" / "test" / "output"
    return BuiltImage(output=output, first_run=first)


BOOT_APPEND = "console=ttyS0,115200n8 panic=10"


def vm_pool(request) -> tuple:
    """A function that starts test VMs (each with its serial log kept in
    build/test-artifacts/boot/<test name>/), and the list of what it started (stop them at the end)."""
    import guest as guest_mod
    import vmctl

    workdir = ARTIFACTS / "boot" / request.node.name
    workdir.mkdir(parents=True, exist_ok=True)
    guests: list[guest_mod.Guest] = []

    def start(name: str = "vm", *, ssh: bool = True, memory_mb: int = 384, **spec_args) -> guest_mod.Guest:
        spec = vmctl.VMSpec(
            name=f"{request.node.name[:40]}-{name}".replace("[", "-").replace("]", ""),
            workdir=workdir,
            ssh_port=guest_mod.free_port() if ssh else None,
            memory_mb=memory_mb,
            **spec_args,
        )
        vmctl.start(spec)
        vm = guest_mod.Guest(spec, ssh_key=SSH_KEY)
        guests.append(vm)
        return vm

    return start, guests


def stop_guests(guests: list) -> None:
    """Stop every VM, then fail the test if one printed an [ERROR] line it did not declare with
    Guest.allow_errors(): every boot is checked for errors, also those printed after its last wait."""
    for vm in guests:
        vm.stop()
    problems = [f"{vm.spec.name}: {line}" for vm in guests for line in vm.unexpected_errors()]
    if problems:
        pytest.fail("unexpected [ERROR] lines in the serial log:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def boot(built_image, request):
    """Factory that boots the test image: its kernel and initramfs directly (append= adds kernel
    parameters), or its ISO with iso=True. Every VM is stopped when the test ends."""
    start_vm, guests = vm_pool(request)

    def start(name: str = "vm", *, iso: bool = False, append: str = "", disks: tuple[Path, ...] = (),
              image: BuiltImage | None = None, **spec_args):
        image = image or built_image
        return start_vm(
            name,
            iso=image.iso if iso else None,
            kernel=None if iso else image.vmlinuz,
            initrd=None if iso else image.initramfs,
            append=f"{BOOT_APPEND} {append}".strip(),
            disks=list(disks),
            **spec_args,
        )

    yield start
    stop_guests(guests)
