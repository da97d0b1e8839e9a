"""Containers really run on KubeSolo OS: a real containerd + runc + CNI bridge inside the booted image.

The test image cannot run the real KubeSolo (no network to its release host), but what KubeSolo needs
from the OS to run pods is what any containerd needs: a root where runc's pivot_root works, overlayfs
snapshots on the data partition, a CNI bridge network with masquerading, and state that survives a
reboot. So this test builds a variant of the test image with Debian's `containerd`, `runc` and
`containernetworking-plugins` (tests/container-runtime-vars.yml, through the userland role's
`userland_packages_extra` / `userland_files_extra`; never in the product image), boots it with a
KSOLODATA disk and, over SSH, starts containerd the way KubeSolo does: root, state and socket under
/var/lib/kubesolo/containerd, default runc options (pivot_root, no `no_pivot_root`), the overlayfs
snapshotter, the drop-ins of /etc/containerd/config.d imported, CNI plugins under
/var/lib/kubesolo/containerd/cni/plugins with /opt/cni/bin a symlink to them, a bridge conflist for
KubeSolo's pod network 10.42.0.0/16 in /etc/cni/net.d. The container image is built here (an OCI
layout holding busybox-static from the build's package cache; no registry) and imported with
`ctr images import`. Everything the guest does stays inside the guest (the container pings its
bridge gateway); QEMU's user network is restricted.

On the initramfs rootfs (before the init left it) runc fails with
`pivot_root .: invalid argument` and no container starts: this test failed there.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import vmctl
from conftest import BOOT_APPEND, BUILD_VARS, REPO, BuiltImage, ansible_playbook, ensure_ssh_key, vm_pool
from guest import assert_kubesolo_alive

pytestmark = pytest.mark.slow

RUNTIME_VARS = REPO / "tests" / "container-runtime-vars.yml"
BUILD_DIR = REPO / "build" / "test-runtime"
MEMORY_MB = 1024

K = "/var/lib/kubesolo"
SOCK = f"{K}/containerd/containerd.sock"
CTR = f"ctr -a {SOCK} -n k8s.io"
PLUGINS = f"{K}/containerd/cni/plugins"
CNI_CONF = f"{K}/containerd/cni/conf"
IMAGE = "docker.io/kubesolo-test/busybox:1.0"
EPOCH = 1700000000

# containerd's own config as KubeSolo writes it (<path>/containerd/config.toml): root, state and socket
# under --path, the drop-in directory imported; the runc runtime with its default options.
CONTAINERD_CONFIG = f"""version = 2
root = "{K}/containerd/root"
state = "{K}/containerd/state"
imports = ["/etc/containerd/config.d/*.toml"]

[grpc]
  address = "{SOCK}"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"""

# A user's custom containerd settings on the data partition; stage 80 installs them as a drop-in.
CUSTOM_DROPIN = 'version = 2\n# custom drop-in from KSOLODATA\n[metrics]\n  address = "127.0.0.1:1338"\n'

BRIDGE_CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "kubesolo-test",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipMasq": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.42.0.0/16"}]],
                     "routes": [{"dst": "0.0.0.0/0"}]},
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}

# KubeSolo's start, reproduced: plugins copied to <path>/containerd/cni/plugins and /opt/cni/bin
# linked there (stage 80 must have left /opt/cni/bin free), the conflist linked into /etc/cni/net.d,
# then containerd in the background; waits for its socket.
START_CONTAINERD = f"""set -e
mkdir -p {PLUGINS} {CNI_CONF} /var/log
for plugin in bridge host-local loopback portmap; do cp -f /usr/lib/cni/$plugin {PLUGINS}/; done
if [ -e /opt/cni/bin ] || [ -L /opt/cni/bin ]; then echo "/opt/cni/bin exists before KubeSolo's start" >&2; exit 3; fi
ln -s {PLUGINS} /opt/cni/bin
cat > {CNI_CONF}/10-bridge.conflist <<'EOF'
{json.dumps(BRIDGE_CONFLIST, indent=2)}
EOF
ln -sf {CNI_CONF}/10-bridge.conflist /etc/cni/net.d/10-bridge.conflist
cat > {K}/containerd/config.toml <<'EOF'
{CONTAINERD_CONFIG}EOF
setsid containerd --config {K}/containerd/config.toml </dev/null >>/var/log/containerd.log 2>&1 &
i=0
until {CTR} version >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 120 ] || {{ tail -20 /var/log/containerd.log >&2; exit 4; }}; sleep 1
done
echo containerd-ready
"""

# Inside the container: its mounts, its address, its routes, and two pings to the default gateway.
PROBE = ("cat /proc/self/mountinfo; echo ===; ip -4 -o addr show; echo ===; ip route; echo ===; "
         "gw=$(ip route | awk '/^default/ {print $3}'); ping -c 2 -W 5 $gw && echo ping-ok-$gw")

# pivot_root(2) itself, in a private mount namespace: EINVAL on the rootfs, fine on a real mount.
PIVOT_PROBE = ("unshare -m sh -c 'mount --make-rprivate / && mkdir -p /tmp/pr && mount -t tmpfs pr /tmp/pr && "
               "mkdir /tmp/pr/old && cd /tmp/pr && pivot_root . old && echo pivot-root-works'")


# --------------------------------------------------------------------------------------------
# The OCI image (built here, no registry)
# --------------------------------------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.mtime = EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _entry(name: str, kind: bytes, mode: int, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = linkname
    return info


def oci_image_tar(busybox: Path, name: str) -> bytes:
    """An OCI image layout tarball (oci-layout, index.json, blobs/sha256/...) of one layer: busybox-static
    at /bin/busybox and /bin/sh linked to it; `ctr images import` names it from its annotation."""
    layer = _tar_bytes([
        *[(_entry(d, tarfile.DIRTYPE, 0o755), None) for d in ("bin", "dev", "etc", "proc", "sys")],
        (_entry("tmp", tarfile.DIRTYPE, 0o1777), None),
        (_entry("bin/busybox", tarfile.REGTYPE, 0o755), busybox.read_bytes()),
        (_entry("bin/sh", tarfile.SYMTYPE, 0o777, "busybox"), None),
    ])
    platform = {"architecture": "amd64", "os": "linux"}
    config = json.dumps({
        **platform,
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{_sha256(layer)}"]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{_sha256(config)}", "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{_sha256(layer)}", "size": len(layer)}],
    }).encode()
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": f"sha256:{_sha256(manifest)}", "size": len(manifest), "platform": platform,
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1.0"},
        }],
    }).encode()
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_entry("oci-layout", tarfile.REGTYPE, 0o644), b'{"imageLayoutVersion":"1.0.0"}'),
        (_entry("index.json", tarfile.REGTYPE, 0o644), index),
        (_entry("blobs", tarfile.DIRTYPE, 0o755), None),
        (_entry("blobs/sha256", tarfile.DIRTYPE, 0o755), None),
    ]
    members += [(_entry(f"blobs/sha256/{_sha256(blob)}", tarfile.REGTYPE, 0o644), blob)
                for blob in (layer, config, manifest)]
    return _tar_bytes(members)


def test_oci_image_tar_is_a_valid_layout(tmp_path):
    """The layout the test imports: every blob named by its digest, the index pointing at the manifest."""
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF fake")
    data = oci_image_tar(busybox, IMAGE)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, blob in files.items():
        if name.startswith("blobs/sha256/"):
            assert name.rsplit("/", 1)[1] == _sha256(blob)
    index = json.loads(files["index.json"])
    manifest = json.loads(files[f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"])
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == IMAGE
    layer = files[f"blobs/sha256/{manifest['layers'][0]['digest'][7:]}"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        assert tar.getmember("bin/sh").linkname == "busybox"
        assert tar.extractfile("bin/busybox").read() == b"\x7fELF fake"
    assert oci_image_tar(busybox, IMAGE) == data  # reproducible


# --------------------------------------------------------------------------------------------
# The variant image and its VMs
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runtime_image() -> BuiltImage:
    ensure_ssh_key()
    run = ansible_playbook("build.yml", "-e", f"@{BUILD_VARS}", "-e", f"@{RUNTIME_VARS}",
                           "-e", f"kubesolo_os_build_dir={BUILD_DIR}",
                           "-e", f"kubesolo_os_output_dir={BUILD_DIR}/output")
    return BuiltImage(output=BUILD_DIR / "output", first_run=run)


@pytest.fixture(scope="module")
def oci_tar(runtime_image) -> bytes:
    found = sorted((REPO / "build" / "cache" / "pkgroot").glob("busybox-static_*/bin/busybox"))
    assert found, "the build's package cache has no busybox-static"
    return oci_image_tar(found[-1], IMAGE)


@pytest.fixture
def runtime_vm(runtime_image, request):
    start_vm, guests = vm_pool(request)

    def start(name: str, disk: Path, append: str = ""):
        return start_vm(name, kernel=runtime_image.vmlinuz, initrd=runtime_image.initramfs,
                        append=f"{BOOT_APPEND} kubesolo.data=LABEL=KSOLODATA {append}".strip(),
                        disks=[disk], memory_mb=MEMORY_MB, reboot=False)

    yield start
    for vm in guests:
        vm.stop()


def data_disk(tmp_path: Path) -> Path:
    content = tmp_path / "content"
    (content / "etc-kubesolo" / "containerd").mkdir(parents=True)
    (content / "etc-kubesolo" / "containerd" / "config.toml").write_text(CUSTOM_DROPIN)
    return vmctl.make_data_disk(tmp_path / "data.img", size_mb=512, content=content)


def sh(vm, command: str, timeout: float = 180) -> str:
    """Run a command in the guest over SSH; fails with its output when it exits non-zero."""
    return vm.ssh(command, timeout=timeout).stdout


def upload(vm, data: bytes, path: str) -> None:
    subprocess.run(vm.ssh_command(f"cat > {path}"), input=data, capture_output=True, timeout=120, check=True)


def boot(runtime_vm, name: str, disk: Path, append: str = ""):
    vm = runtime_vm(name, disk, append)
    vm.wait_booted(timeout=300)
    assert_kubesolo_alive(vm)  # also waits for SSH
    return vm


def start_containerd(vm) -> None:
    assert "containerd-ready" in sh(vm, START_CONTAINERD)
    # KubeSolo's layout: the socket and state under --path; /opt/cni/bin a link to its plugins.
    assert sh(vm, f"test -S {SOCK} && readlink /opt/cni/bin").strip() == PLUGINS


def import_image(vm, oci: bytes) -> None:
    upload(vm, oci, "/tmp/busybox-oci.tar")
    sh(vm, f"{CTR} images import /tmp/busybox-oci.tar && rm /tmp/busybox-oci.tar", timeout=300)
    assert IMAGE in sh(vm, f"{CTR} images ls -q").split()


def run_container(vm, name: str, backing_fs: str) -> str:
    """Start a container on the CNI bridge, check it from the guest and from inside; returns its address."""
    sh(vm, f"{CTR} run -d --cni {IMAGE} {name} /bin/sh -c 'sleep 3600'", timeout=300)
    # Its root file system: an overlay mounted by containerd, whose upper layer lives on backing_fs.
    rootfs = f"{K}/containerd/state/io.containerd.runtime.v2.task/k8s.io/{name}/rootfs"
    mount = next((line for line in sh(vm, "cat /proc/mounts").splitlines() if line.split()[1] == rootfs), "")
    assert mount.split()[2:3] == ["overlay"], mount
    upper = re.search(r"upperdir=([^,\s]+)", mount).group(1)
    assert upper.startswith(f"{K}/containerd/root/io.containerd.snapshotter.v1.overlayfs/snapshots/"), upper
    mount_point = sh(vm, f"df -P {upper} | awk 'NR==2 {{print $NF}}'").strip()
    backing = [line.split() for line in sh(vm, "cat /proc/mounts").splitlines() if line.split()[1] == mount_point][-1]
    assert backing[2] == backing_fs, backing
    if backing_fs == "ext4":  # the data partition itself
        assert backing[0] == "/dev/vda" and 'LABEL="KSOLODATA"' in sh(vm, "blkid /dev/vda"), backing
    # From inside: / is the overlay; an address in 10.42.0.0/16 on eth0; the bridge gateway answers.
    out = sh(vm, f"{CTR} task exec --exec-id probe-{name} {name} /bin/sh -c {quote(PROBE)}", timeout=120)
    mounts, addrs, routes, ping = out.split("===\n")
    root = next(line for line in mounts.splitlines() if line.split()[4] == "/")
    assert " - overlay overlay " in root, root
    address = re.search(r"eth0\s+inet (10\.42\.\d+\.\d+)/16", addrs)
    assert address, addrs
    assert re.search(r"^default via 10\.42\.0\.1 dev eth0", routes, re.M), routes
    assert "ping-ok-10.42.0.1" in ping and " 0% packet loss" in ping, ping
    return address.group(1)


def quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def assert_runtime_prerequisites(vm) -> None:
    # / of the guest is a real mount, where pivot_root(2) works (it fails on the initramfs rootfs).
    assert "pivot-root-works" in sh(vm, PIVOT_PROBE)
    # runc is used with its defaults: nothing asks for no_pivot_root.
    config = sh(vm, f"containerd --config {K}/containerd/config.toml config dump")
    assert not re.search(r"(?i)no_?pivot_?root\s*=\s*true", config), config
    # The user's drop-in from KSOLODATA (stage 80) is imported by containerd: its metrics listener.
    assert '"127.0.0.1:1338"' in config
    assert ":1338 " in sh(vm, "netstat -ltn")


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------

def test_containers_run_on_the_data_partition_and_survive_a_reboot(runtime_vm, oci_tar, tmp_path):
    disk = data_disk(tmp_path)
    vm = boot(runtime_vm, "first", disk)
    start_containerd(vm)
    assert_runtime_prerequisites(vm)
    import_image(vm, oci_tar)
    address = run_container(vm, "c1", "ext4")
    # The bridge network masquerades the pod network (the CNI bridge plugin's ipMasq rule).
    nat = sh(vm, "iptables -t nat -S")
    assert re.search(r"-j MASQUERADE", nat), nat
    assert re.search(rf"-s {re.escape(address)}(/32)? .*-j CNI-", nat), nat
    # containerd found nothing to complain about on this root.
    log = sh(vm, "cat /var/log/containerd.log")
    assert "pivot_root" not in log, log[-3000:]

    # Power off with the container still running: the data partition is still unmounted cleanly.
    vm.ssh("poweroff", check=False)
    vm.wait_exit(timeout=120)
    state = subprocess.run(["dumpe2fs", "-h", str(disk)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Filesystem state:\s+clean$", state, re.M), state

    # Second boot of the same disk: the imported image is still there and runs again.
    second = boot(runtime_vm, "second", disk)
    start_containerd(second)
    assert IMAGE in sh(second, f"{CTR} images ls -q").split()
    sh(second, f"{CTR} containers rm c1 2>/dev/null || true")
    run_container(second, "c2", "ext4")


def test_containers_run_in_nopersist_mode(runtime_vm, oci_tar, tmp_path):
    vm = boot(runtime_vm, "nopersist", data_disk(tmp_path), append="kubesolo.nopersist")
    assert "/dev/vda" not in sh(vm, "cat /proc/mounts")
    start_containerd(vm)
    assert "pivot-root-works" in sh(vm, PIVOT_PROBE)
    assert IMAGE not in sh(vm, f"{CTR} images ls -q").split()
    import_image(vm, oci_tar)
    run_container(vm, "c1", "tmpfs")
