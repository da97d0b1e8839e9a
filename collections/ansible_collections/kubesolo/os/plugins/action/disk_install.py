# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Action plugin of kubesolo.os.disk_install: installs KubeSolo OS onto a disk of the managed host.

Runs on the controller. The images are read here (they are build outputs on the admin machine); the host is
driven with plain shell commands over the connection, and the images are streamed to its block devices on the
standard input of the command that writes them, so the node needs no Python and no room for a copy.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from typing import Any

from ansible.utils.display import Display
from ansible_collections.kubesolo.os.plugins.module_utils.disk_install import (
    ARGUMENT_SPEC,
    Images,
    InstallError,
    install,
)
from ansible_collections.kubesolo.os.plugins.plugin_utils.action import KubesoloAction

display = Display()
CHUNK = 64 * 1024


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_checked(path: str, sha256: str, what: str) -> bytes:
    if not os.path.isfile(path):
        raise InstallError(f"The {what} {path} does not exist: build it first (make build, or ansible-playbook "
                           "build.yml), or point the install at the build's output directory")
    with open(path, "rb") as handle:
        data = handle.read()
    if sha256 and _sha256(data) != sha256.lower():
        raise InstallError(f"The {what} {path} has sha256 {_sha256(data)}, not {sha256} (manifest.json): "
                           "refused (a partial copy, or an image from another build)")
    return data


def _esp_file(esp_path: str, path: str) -> bytes:
    """A file of the ESP image, read with mtools (no mount, no vfat needed)."""
    proc = subprocess.run(["mcopy", "-n", "-i", esp_path, f"::{path}", "-"], capture_output=True, check=False,
                          env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    if proc.returncode != 0 or not proc.stdout:
        raise InstallError(f"Cannot read {path} from the ESP image {esp_path} (mcopy: "
                           f"{proc.stderr.decode(errors='replace').strip() or 'empty'}); mtools is needed on the "
                           "controller (make deps installs it)")
    return proc.stdout


def load_images(params: dict[str, Any]) -> Images:
    layout = params["layout"]
    slot = _read_checked(params["slot_image"], params.get("slot_image_sha256") or "", "slot image")
    esp_full = _read_checked(params["esp_image"], params.get("esp_image_sha256") or "", "ESP image")
    esp_size = int(next(p for p in layout["partitions"] if p["name"] == layout["esp_label"])["size_mib"]) * 1024 * 1024
    if len(esp_full) != esp_size:
        raise InstallError(f"The ESP image {params['esp_image']} is {len(esp_full)} bytes, the layout's ESP "
                           f"{esp_size}")
    # FAT ignores free clusters: only the image up to its last non-zero block is written.
    end = len(esp_full)
    while end > 0 and not any(esp_full[end - CHUNK:end]):
        end -= CHUNK
    esp = esp_full[:max(end, CHUNK)]
    grub_cfg = f"{layout['esp_grub_dir']}/grub.cfg"
    paths = ["/EFI/BOOT/BOOTX64.EFI", grub_cfg, layout["bios_core_img_path"], layout["bios_boot_img_path"]]
    files = {path: _esp_file(params["esp_image"], path) for path in paths}
    boot = files[layout["bios_boot_img_path"]]
    if len(boot) != 512:
        raise InstallError(f"{layout['bios_boot_img_path']} in the ESP image is {len(boot)} bytes, not 512")
    return Images(version=params["version"], slot=slot, esp=esp, boot_code=boot[:440],
                  core=files[layout["bios_core_img_path"]],
                  esp_files={path: _sha256(data) for path, data in files.items()})


class ActionModule(KubesoloAction):
    _requires_connection = True

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result, params = self.begin(tmp, task_vars, ARGUMENT_SPEC)

        def run(command: str) -> tuple[int, str, str]:
            display.vvvv(f"disk_install: {command}")
            out = self._low_level_execute_command(f"export LC_ALL=C; {command}")
            return int(out.get("rc", 1)), str(out.get("stdout", "")), str(out.get("stderr", ""))

        def write(command: str, data: bytes) -> tuple[int, str, str]:
            display.vvv(f"disk_install: {command} <- {len(data)} bytes")
            out = self._low_level_execute_command(f"export LC_ALL=C; {command}", in_data=data)
            return int(out.get("rc", 1)), str(out.get("stdout", "")), str(out.get("stderr", ""))

        try:
            images = load_images(params)
            outcome = install(run, write, images, params["layout"], params, check_mode=bool(self._task.check_mode))
        except InstallError as exc:
            result.update(failed=True, msg=exc.msg, **exc.details)
            return result
        result.update(outcome)
        return result
