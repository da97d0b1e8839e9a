"""Boot stages 00-90, proven by booting the test image in QEMU (TCG, user networking restrict=on).

Direct kernel boots (-kernel/-initrd/-append) cover the boot parameters; the four boot menu entries
are booted from the ISO itself. The serial log is the evidence where the console shows it; SSH
(testinfra, dropbear in the test image) where state must be inspected.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import vmctl
from conftest import REPO, ROOT_PASSWORD, ansible_playbook, role_defaults
from contract import CONTRACT, HANDOVER_MARKER
from guest import assert_kubesolo_alive
from test_container_runtime import PIVOT_PROBE

pytestmark = pytest.mark.slow

MENU = CONTRACT["boot_entries"]
BOOT_MODULES = role_defaults("kubesolo_os")["kubesolo_os_boot_modules"]
MODULE_SUFFIX = {"zstd": ".ko.zst", "xz": ".ko.xz", "none": ".ko"}[role_defaults("kernel")["kernel_module_compression"]]
INIT = role_defaults("init")
SYSCTLS = INIT["init_sysctls"]
OK90 = re.escape(HANDOVER_MARKER)
DOUBLE_RUNNING = re.escape("[kubesolo-test-double] running")
IMAGE_BINARY = "/usr/lib/kubesolo-os/bin/kubesolo"


def menu_index(label: str) -> int:
    return [entry["label"] for entry in MENU].index(label)


def double_args(text: str) -> list[str]:
    """The arguments the kubesolo test double recorded, from its last start in text."""
    last_start = text.rfind("[kubesolo-test-double] argc=")
    return re.findall(r"\[kubesolo-test-double\] arg\[\d+\]=(.*?)\r?\n", text[last_start:])


def data_disk(tmp_path: Path, name: str, content: dict[str, str] | None = None, **kwargs) -> Path:
    tree = None
    if content:
        tree = tmp_path / f"{name}-content"
        for rel, text in content.items():
            target = tree / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            if rel.startswith("usr-local/bin/"):
                target.chmod(0o755)
    return vmctl.make_data_disk(tmp_path / f"{name}.img", content=tree, **kwargs)


def assert_left_rootfs(host) -> str:
    """/ of PID 1 is no longer the initramfs rootfs (the first mount of the namespace, whose parent is
    itself, where pivot_root fails): it is the bind mount ksi_leave_rootfs made. Returns its line."""
    root_line = next(line for line in host.file("/proc/1/mountinfo").content_string.splitlines()
                     if line.split()[4] == "/")
    mount_id, parent_id = root_line.split()[:2]
    assert mount_id != parent_id, f"/ is still the initramfs rootfs: {root_line}"
    # And pivot_root(2) itself works there (EINVAL on the rootfs), as runc needs it.
    probe = host.run(PIVOT_PROBE)
    assert "pivot-root-works" in probe.stdout, probe.stdout + probe.stderr
    return root_line


def assert_kubesolo_nofile(host, pid: str) -> None:
    limits = host.run(f"cat /proc/{pid}/limits").stdout
    nofile = str(INIT["init_kubesolo_nofile"])
    assert re.search(rf"^Max open files\s+{nofile}\s+{nofile}\s+files", limits, re.M), limits


# Typed into a console shell: prints root-parent-41 once / has a parent mount (left the rootfs),
# root-parent-40 on the rootfs; the typed command itself never shows either string.
ROOT_PARENT_CMD = "awk '$5==\"/\"{print \"root-parent-\" ($1!=$2)+40}' /proc/self/mountinfo\r"


def fs_uuid(image: Path) -> str:
    return subprocess.run(["blkid", "-o", "value", "-s", "UUID", str(image)], capture_output=True, text=True,
                          check=True).stdout.strip()


def read_from_image(image: Path, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True,
                          check=True).stdout


# --------------------------------------------------------------------------------------------
# A persistent node: first boot, then a second boot of the same data disk.
# --------------------------------------------------------------------------------------------

def test_persistent_node_first_and_second_boot(boot, tmp_path):
    disk = data_disk(tmp_path, "data", {
        # KubeSolo flags from a config file under /etc/kubesolo (one per line, comments allowed): a
        # boolean as =true (translated), a flag KubeSolo does not have (dropped with an [ERROR]), a
        # value the kernel command line replaces.
        "etc-kubesolo/flags": "# extra flags for KubeSolo\n--portainer-edge-async=true\n--from-config-file=yes\n"
                              "--startup-timeout=300\n",
        # A user's own tool in the persistent /usr/local, and an old KubeSolo left there.
        "usr-local/bin/mytool": "#!/bin/sh\necho mine\n",
        "usr-local/bin/kubesolo": "#!/bin/sh\necho '[old-kubesolo] must not run'\nsleep 3600\n",
        # A custom containerd configuration kept on the data partition.
        "etc-kubesolo/containerd/config.toml": "version = 2\n# custom-containerd-config\n",
    })
    flags = ("--node-ip=10.0.2.15 --debug=true --startup-timeout=900 --load-balancer-ip='10.0.2.15' "
             "--local-storage-shared-path='/var/lib/kubesolo/a b' \\$(touch${IFS}/tmp/pwned)")
    vm = boot("first", disks=(disk,), mac="52:54:00:ab:cd:ef",
              append=f'kubesolo.data=LABEL=KSOLODATA kubesolo.bogus=1 kubesolo.flags="{flags}"')
    # The user's flags produce [ERROR]s of stage 90 (dropped flags), by design.
    vm.allow_errors(r"KubeSolo flags \(/etc/kubesolo/flags\): unknown flag --from-config-file: not passed",
                    r"KubeSolo flags \(kubesolo\.flags=\): '\$\(touch\$\{IFS\}/tmp/pwned\)' is not a flag")
    vm.wait(OK90, timeout=240, errors_fail=False)
    vm.wait(DOUBLE_RUNNING, timeout=60, errors_fail=False)
    text = vm.log
    print(f"first boot: KubeSolo running after {time.monotonic() - vm.started:.1f}s")

    # Stage 10: unknown kubesolo.* parameters are warned about.
    assert "[kubesolo-init] [WARN] Unknown boot parameter 'kubesolo.bogus' ignored" in vm.log
    # Stage 90: the arguments, in order, each a separate word, never evaluated.
    # KubeSolo's contract: booleans --x (never =true), one value per flag (the kernel command line's
    # --startup-timeout replaces the file's), nothing KubeSolo would refuse (--from-config-file and the
    # positional word are dropped, each with an [ERROR] naming it).
    args = double_args(text)
    assert args == ["--path=/var/lib/kubesolo", "--local-storage", "--apiserver-extra-sans=kubesolo-abcdef",
                    "--portainer-edge-async", "--startup-timeout=900", "--node-ip=10.0.2.15", "--debug",
                    "--load-balancer-ip=10.0.2.15", "--local-storage-shared-path=/var/lib/kubesolo/a b"]
    assert ("[kubesolo-init] [ERROR] KubeSolo flags (/etc/kubesolo/flags): unknown flag --from-config-file: not passed "
            "(KubeSolo would exit on it)") in text
    assert "[kubesolo-init] [ERROR] KubeSolo flags (kubesolo.flags=): '$(touch${IFS}/tmp/pwned)' is not a flag" in text
    assert "[kubesolo-test-double] flag startup-timeout=900" in text
    assert "[old-kubesolo]" not in vm.log
    # The double (kingpin) accepted them and is still the same process after the longest back-off.
    assert_kubesolo_alive(vm)
    # The success marker comes before the handover.
    assert vm.log.index(HANDOVER_MARKER) < vm.log.index("[kubesolo-test-double] pid=")

    vm.wait_ssh()
    host = vm.testinfra()
    assert not host.file("/tmp/pwned").exists, "kubesolo.flags was evaluated by a shell"

    # Stage 00: virtual file systems, cgroup v2.
    mounts = host.file("/proc/mounts").content_string
    for point, fstype in [("/proc", "proc"), ("/sys", "sysfs"), ("/dev", "devtmpfs"), ("/dev/pts", "devpts"),
                          ("/dev/shm", "tmpfs"), ("/tmp", "tmpfs"), ("/run", "tmpfs"),
                          ("/sys/fs/cgroup", "cgroup2")]:
        assert re.search(rf"^\S+ {re.escape(point)} {fstype} ", mounts, re.M), (point, fstype)
    # Stage 00: drivers of the hardware present loaded by modalias before the disk wait.
    for module in ("virtio_blk", "virtio_net"):
        assert host.file(f"/sys/module/{module}").is_directory, module
    # Stage 00: a CPU-feature module the CPU cannot run is skipped by kmod, not loaded and failed on every
    # soft dependency (crc32c_intel needs SSE4.2, which QEMU's default CPU model lacks).
    cpu_skips = host.file("/run/modprobe.d/kubesolo-os-cpu.conf")
    if "sse4_2" in host.file("/proc/cpuinfo").content_string.split():
        assert not cpu_skips.exists or "install crc32c_intel :" not in cpu_skips.content_string
    else:
        assert "install crc32c_intel :" in cpu_skips.content_string.splitlines()
        assert not host.file("/sys/module/crc32c_intel").exists
        assert host.file("/sys/module/crc32c_generic").is_directory
    # Stage 20: ext4 data partition, the five bind mounts, first-boot structure.
    assert re.search(rf"^/dev/vda {re.escape(CONTRACT['data_mount'])} ext4 ", mounts, re.M)
    for bind in CONTRACT["bind_mounts"]:
        assert host.mount_point(bind["dest"]).exists, bind
        assert host.file(f"{CONTRACT['data_mount']}/{bind['src']}").is_directory, bind
    assert "First boot on this data partition" in vm.log
    # /usr/local persists, yet KubeSolo is the image's.
    assert host.file("/usr/local/bin/kubesolo").linked_to == IMAGE_BINARY
    assert host.run("/usr/local/bin/mytool").stdout.strip() == "mine"
    # Stage 30: every module of modules.list is loaded (or built in), from compressed files, which only
    # kmod's modprobe reads; login shells route `modprobe` to it too.
    for module in BOOT_MODULES:
        assert host.run(f"test -d /sys/module/{module}").rc == 0, module
    assert host.run("/sbin/modinfo -n overlay").stdout.strip().endswith(MODULE_SUFFIX)
    assert "kmod version" in host.run("sh -l -c 'modprobe --version'").stdout
    # Stage 40: every sysctl applied.
    for key, value in SYSCTLS.items():
        assert host.file(f"/proc/sys/{key.replace('.', '/')}").content_string.strip() == str(value), key
    # Stage 50: DHCP on the first physical interface, a private address up.
    assert "10.0.2.15/24" in host.run("ip -4 -o addr show dev eth0").stdout
    # Stage 60: MAC-derived hostname, in /etc/hostname and /etc/hosts, saved on the data partition.
    assert host.run("hostname").stdout.strip() == "kubesolo-abcdef"
    assert host.file("/etc/hostname").content_string.strip() == "kubesolo-abcdef"
    assert re.search(r"^127\.0\.1\.1\s+kubesolo-abcdef", host.file("/etc/hosts").content_string, re.M)
    assert host.file("/mnt/data/etc-kubesolo/hostname").content_string.strip() == "kubesolo-abcdef"
    # Stage 80: CNI and containerd directories, but no /opt/cni/bin (KubeSolo links it), the custom
    # containerd config as a drop-in KubeSolo's containerd imports, / rshared, cgroup controllers.
    for directory in ("/run/containerd", "/var/lib/containerd", "/etc/cni/net.d"):
        assert host.file(directory).is_directory, directory
    assert not host.file("/opt/cni/bin").exists
    dropin = host.file(INIT["init_containerd_dropin"])
    assert "# custom-containerd-config" in dropin.content_string
    assert dropin.mode == 0o600
    assert not host.file("/etc/containerd/config.toml").exists
    root_line = assert_left_rootfs(host)
    assert "shared:" in root_line
    controllers = host.file("/sys/fs/cgroup/cgroup.subtree_control").content_string.split()
    assert {"cpuset", "cpu", "io", "memory", "pids"} <= set(controllers)
    # Handover: busybox init is PID 1 and supervises KubeSolo, with upstream's open-files limit.
    assert host.run("readlink /proc/1/exe").stdout.strip() == "/bin/busybox"
    assert_kubesolo_nofile(host, "$(cat /run/kubesolo-os/kubesolo.pid)")
    assert "[kubesolo-test-double] pid=1\n" not in text

    # Supervision: a KubeSolo that dies is started again.
    vm.mark()
    host.run("kill $(cat /run/kubesolo-os/kubesolo.pid)")
    vm.wait(r"Starting KubeSolo", DOUBLE_RUNNING, timeout=60)
    # Orphans are reaped by PID 1: an orphan that exits disappears (a zombie would keep its /proc entry).
    orphan = int(host.run("sh -c 'sleep 1 & echo $!'").stdout)
    deadline = time.monotonic() + 30
    while host.file(f"/proc/{orphan}").exists and time.monotonic() < deadline:
        time.sleep(0.2)
    stat = host.run(f"cat /proc/{orphan}/stat 2>/dev/null").stdout
    assert not host.file(f"/proc/{orphan}").exists, f"orphan {orphan} not reaped within 30s: {stat}"

    # Stage 30 failures are warnings: an unknown module in modules.list.
    result = host.run(
        "cp /usr/lib/kubesolo-os/modules.list /tmp/modules.list.orig && "
        "echo no_such_module_xyz >> /usr/lib/kubesolo-os/modules.list && "
        "sh -c '. /usr/lib/kubesolo-os/functions.sh; . /usr/lib/kubesolo-os/init.d/30-kernel-modules.sh' 2>&1; "
        "cp /tmp/modules.list.orig /usr/lib/kubesolo-os/modules.list")
    assert "[WARN]" in result.stdout and "no_such_module_xyz" in result.stdout

    # The flag KubeSolo does not have is taken out of the flags file (the next boot has no [ERROR]).
    host.run("sed -i '/--from-config-file/d' /etc/kubesolo/flags")
    # State that must survive a reboot, and saved network settings for the next boot: data in the
    # cloud-init network schema (never executed), with a /32 address whose gateway is outside it (added
    # on-link, as cloud providers need; the kernel refuses the route otherwise).
    host.run("echo state > /var/lib/kubesolo/state-file && echo log > /var/log/node.log && "
             "echo tool2 > /usr/local/bin/mytool2")
    host.run("printf '%s\\n' 'network:' '  interfaces:' '    - name: eth0' '      addresses: [10.0.2.15/32]' "
             "'      gateway: 10.0.2.2' '      dns: [10.0.2.3]' > /mnt/data/network/network.yaml")
    # poweroff: KubeSolo is stopped, the data partition unmounted cleanly.
    vm.ssh("poweroff", check=False)
    vm.wait_exit(timeout=90)
    state = subprocess.run(["dumpe2fs", "-h", str(disk)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Filesystem state:\s+clean$", state, re.M), state
    subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True, check=True)

    # Second boot of the same disk, by UUID, on a machine with another MAC address.
    second = boot("second", disks=(disk,), mac="52:54:00:11:22:33", reboot=False,
                  append=f"kubesolo.data=UUID={fs_uuid(disk)}")
    second.wait_booted()
    text = second.wait(DOUBLE_RUNNING, timeout=60)
    assert_kubesolo_alive(second)
    assert "First boot on this data partition" not in second.log
    assert "Applying the saved network settings /mnt/data/network/network.yaml" in second.log
    assert "gateway 10.0.2.2 is outside the addresses of eth0: added on-link" in second.log
    second.wait_ssh()
    host = second.testinfra()
    assert "10.0.2.15/32" in host.run("ip -4 -o addr show dev eth0").stdout
    assert "default via 10.0.2.2 dev eth0 onlink" in host.run("ip -4 route").stdout
    assert host.run("pidof udhcpc").rc != 0, "DHCP runs although the saved settings are static"
    assert host.run("hostname").stdout.strip() == "kubesolo-abcdef"  # the node name is stable
    assert "--apiserver-extra-sans=kubesolo-abcdef" in double_args(text)
    assert host.file("/var/lib/kubesolo/state-file").content_string.strip() == "state"
    assert host.file("/var/log/node.log").content_string.strip() == "log"
    assert host.file("/usr/local/bin/mytool2").content_string.strip() == "tool2"
    assert host.file("/usr/local/bin/kubesolo").linked_to == IMAGE_BINARY
    # SSH is key-only: a password login is refused even for the right root password.
    refused = subprocess.run(
        ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
         "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive",
         "-p", str(second.spec.ssh_port), "root@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused.stderr
    # reboot, like poweroff, stops KubeSolo and unmounts the data partition cleanly (QEMU runs with
    # -no-reboot here, so the reboot ends it and the disk can be checked).
    second.mark()
    second.ssh("reboot", check=False)
    second.wait_exit(timeout=90)
    state = subprocess.run(["dumpe2fs", "-h", str(disk)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Filesystem state:\s+clean$", state, re.M), state


# --------------------------------------------------------------------------------------------
# The boot menu entries, booted from the ISO.
# --------------------------------------------------------------------------------------------

ISOLINUX_MENU = r"KubeSolo OS \d"


def test_iso_entry_nopersist_keeps_the_data_partition_unmounted(boot, tmp_path):
    disk = data_disk(tmp_path, "data")
    vm = boot("nopersist", iso=True, disks=(disk,))
    vm.choose_menu_entry(menu_index("kubesolo-nopersist"), ISOLINUX_MENU)
    vm.wait_booted()
    assert "kubesolo.nopersist: RAM-only mode" in vm.log
    vm.wait_ssh()
    host = vm.testinfra()
    mounts = host.file("/proc/mounts").content_string
    assert "/dev/vda" not in mounts
    assert re.search(r"^tmpfs /mnt/data tmpfs ", mounts, re.M)
    assert host.mount_point("/var/lib/kubesolo").exists
    assert "kubesolo.nopersist" in host.file("/proc/cmdline").content_string
    # Booted from the ISO: no A/B slot (issue 17), and it says so.
    assert re.search(r"\[kubesolo-init\] \[ *[0-9.]+\] Booted from a removable or boot medium \(no slot\)", vm.log)
    assert "KUBESOLO_OS_SLOT=none" in host.file("/etc/os-release").content_string.splitlines()
    assert "booted=none" in host.file("/run/kubesolo-os/slot-state").content_string.splitlines()
    assert_left_rootfs(host)
    assert_kubesolo_alive(vm)


def test_iso_entry_debug_traces_the_stages(boot):
    vm = boot("debug", iso=True)
    vm.choose_menu_entry(menu_index("kubesolo-debug"), ISOLINUX_MENU)
    vm.wait_booted()
    log = vm.log
    # set -x trace of the stages, on the serial console.
    assert re.search(r"^\+ ", log, re.M), "no set -x trace in the serial log"
    assert "debug=1" in log
    # The kernel's own log is verbose too (loglevel=7).
    assert re.search(r"^\[\s*\d+\.\d+\] ", log, re.M)
    # The rootfs was left once, before stage 00.
    assert log.count("Leaving the initramfs rootfs") == 1
    assert log.index("Leaving the initramfs rootfs") < log.index("Stage 00-early-mount.sh starting")
    vm.wait_ssh()
    assert_left_rootfs(vm.testinfra())
    assert_kubesolo_alive(vm)


def test_iso_entry_shell_opens_a_protected_shell_after_stage_10(boot):
    vm = boot("shell", iso=True, ssh=False)
    vm.choose_menu_entry(menu_index("kubesolo-shell"), ISOLINUX_MENU)
    text = vm.wait(r"\[OK\] Stage 10-parse-cmdline\.sh complete", r"Emergency shell \(kubesolo\.shell given\)",
                   r"[Pp]assword", timeout=180)
    assert "Stage 20-persistent-mount.sh starting" not in text
    # The emergency shell is protected by the build-time root password.
    vm.type(ROOT_PASSWORD + "\r")
    vm.wait_shell_prompt()
    vm.type("echo shell-$((6*7))\r")
    vm.wait(r"shell-42", timeout=30)
    # The emergency shell already runs on the bind mount, not on the rootfs.
    vm.type(ROOT_PARENT_CMD)
    vm.wait(r"root-parent-41", timeout=30)
    vm.type("exit\r")
    vm.wait(r"Stage 20-persistent-mount\.sh starting", OK90, timeout=180)
    assert_kubesolo_alive(vm)


# --------------------------------------------------------------------------------------------
# Boot parameters and failure handling (direct kernel boot).
# --------------------------------------------------------------------------------------------

def test_named_data_device_that_never_appears_stops_the_boot_and_exit_retries(boot):
    vm = boot("missing", ssh=False, append="kubesolo.data=/dev/vdz kubesolo.datawait=3")
    vm.allow_errors(r"Data device /dev/vdz did not appear", r"Stage 20-persistent-mount\.sh failed")
    vm.wait(r"\[ERROR\] Data device /dev/vdz did not appear within 3s",
            r"\[ERROR\] Stage 20-persistent-mount\.sh failed", r"[Pp]assword", errors_fail=False, timeout=180)
    assert HANDOVER_MARKER not in vm.log
    vm.type(ROOT_PASSWORD + "\r")
    vm.wait_shell_prompt()
    # From the shell: run from RAM this time, then exit to retry from the failed stage.
    vm.type(ROOT_PARENT_CMD)
    vm.wait(r"root-parent-41", timeout=30)
    vm.type("echo KUBESOLO_NOPERSIST=1 > /run/kubesolo-os/emergency.env; exit\r")
    vm.wait(r"Retrying the boot from stage 20-persistent-mount\.sh", OK90, timeout=180, errors_fail=False)
    assert_kubesolo_alive(vm)


def test_unrepairable_file_system_is_never_mounted_or_formatted(boot, tmp_path):
    disk = data_disk(tmp_path, "broken")
    uuid = fs_uuid(disk)
    # Destroy the root directory and mark the file system as having errors (as the kernel does when
    # it meets them), so that e2fsck -p checks it and cannot repair it on its own.
    for request in ("clri <2>", "ssv state 2"):
        subprocess.run(["debugfs", "-w", "-R", request, str(disk)], capture_output=True, check=True)
    vm = boot("broken", ssh=False, disks=(disk,), append="kubesolo.data=/dev/vda")
    vm.allow_errors(r"e2fsck found errors it could not fix on /dev/vda", r"Stage 20-persistent-mount\.sh failed")
    vm.wait(r"\[ERROR\] e2fsck found errors it could not fix on /dev/vda", r"\[ERROR\] Stage 20-persistent-mount",
            errors_fail=False, timeout=180)
    vm.stop()
    assert fs_uuid(disk) == uuid, "the data partition was reformatted"
    assert HANDOVER_MARKER not in vm.log


def test_no_data_partition_falls_back_to_ram_with_a_warning(boot):
    """The menu's default kubesolo.data=LABEL=KSOLODATA with no such disk: RAM-only, the boot goes on.
    Without a network card there is no private address: a clear warning, not a failure of the boot; KubeSolo
    (the double, like the real one) then refuses to start, and the supervisor restarts it with back-off."""
    vm = boot("ramonly", ssh=False, network=False, append="kubesolo.data=LABEL=KSOLODATA kubesolo.datawait=3")
    vm.wait_booted()
    vm.wait(re.escape("[kubesolo-test-double] refused: could not find non-loopback private IP address"),
            re.escape("[kubesolo-init] [WARN] KubeSolo exited: restart 1 in 1s"),
            re.escape("[kubesolo-init] [WARN] KubeSolo exited: restart 2 in 2s"), timeout=60)
    log = vm.log
    assert "[WARN] No partition labelled KSOLODATA appeared within 3s: RAM-only mode" in log
    assert "[WARN] No private (RFC 1918) IPv4 address is up" in log
    with pytest.raises(AssertionError, match="KubeSolo did not come up and stay up"):
        assert_kubesolo_alive(vm, timeout=5)


def test_data_partition_found_by_label_without_kubesolo_data_and_clock_not_before_build(boot, tmp_path):
    disk = data_disk(tmp_path, "auto")
    vm = boot("auto", disks=(disk,), extra_args=["-rtc", "base=1990-01-01T00:00:00"])
    vm.wait_booted()
    log = vm.log
    assert "kubesolo.data not given: found LABEL=KSOLODATA on /dev/vda" in log
    assert "Clock was before the image build time" in log
    manifest_epoch = int(re.search(r'"source_date_epoch": (\d+)', (vm_image_manifest()).read_text()).group(1))
    vm.wait_ssh()
    assert int(vm.ssh("date +%s").stdout) >= manifest_epoch
    assert_kubesolo_alive(vm)


def vm_image_manifest() -> Path:
    return REPO / "build" / "test" / "output" / "manifest.json"


# --------------------------------------------------------------------------------------------
# The spec's literal handover: KubeSolo exec'ed as PID 1.
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def exec_image(built_image):
    from conftest import BUILD_VARS, BuiltImage

    other = REPO / "build" / "test-exec"
    run = ansible_playbook("build.yml", "-e", f"@{BUILD_VARS}", "-e", "init_handover=exec",
                           "-e", f"kubesolo_os_build_dir={other}", "-e", f"kubesolo_os_output_dir={other}/output")
    return BuiltImage(output=other / "output", first_run=run)


def test_exec_handover_makes_kubesolo_pid_1(boot, exec_image):
    vm = boot("exec", image=exec_image, append="kubesolo.data=LABEL=KSOLODATA kubesolo.datawait=1")
    vm.wait_booted()
    text = vm.wait(DOUBLE_RUNNING, timeout=60)
    assert re.search(r"^\[kubesolo-test-double\] pid=1\r?$", text, re.M)  # exactly PID 1, not 1xx
    assert "Executing /usr/local/bin/kubesolo as PID 1" in text
    # Still PID 1 after the longest back-off window, no panic (a PID 1 that exits panics the kernel).
    assert assert_kubesolo_alive(vm, handover="exec")["pid"] == 1
    # KubeSolo as PID 1 runs on the bind mount (pivot_root works) with upstream's open-files limit.
    vm.wait_ssh()
    host = vm.testinfra()
    assert_left_rootfs(host)
    assert_kubesolo_nofile(host, "1")
