# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Action plugin of kubesolo.os.ksolodata_reboot: ansible.builtin.reboot for nodes without Python.

ansible.builtin.reboot asks the setup module for the distribution and the find module for the shutdown
command, which need Python on the node. This subclass skips both: the node is a KubeSolo OS (busybox)
node, the command is O(reboot_command) (default C(/sbin/reboot)), and everything else (boot_id before and
after, connection retries, the post-reboot O(test_command)) is the builtin plugin's own code.
"""

from __future__ import annotations

import shlex
from typing import Any

from ansible.plugins.action.reboot import ActionModule as RebootActionModule

DEFAULT_REBOOT_COMMAND = "/sbin/reboot"


def data_mount_test(data_mount: str) -> str:
    """The default test command: an ext4 file system is mounted on data_mount (a line of /proc/mounts)."""
    return f"grep -qF {shlex.quote(f' {data_mount} ext4 ')} /proc/mounts"


class ActionModule(RebootActionModule):
    _VALID_ARGS = RebootActionModule._VALID_ARGS | frozenset(("data_mount",))

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        data_mount = self._task.args.get("data_mount")
        if not self._task.args.get("test_command"):
            if not data_mount or not str(data_mount).startswith("/"):
                return {"failed": True, "rebooted": False,
                        "msg": "ksolodata_reboot needs data_mount (an absolute path: the boot contract's data_mount, "
                               "kubesolo_os_boot.data_mount) or test_command"}
            self._task.args["test_command"] = data_mount_test(str(data_mount))
        return super().run(tmp, task_vars)

    def get_distribution(self, task_vars: dict[str, Any]) -> dict[str, str]:
        return {"name": "kubesolo-os", "version": "", "family": "busybox"}

    def get_shutdown_command(self, task_vars: dict[str, Any], distribution: dict[str, str]) -> str:
        return str(self._task.args.get("reboot_command") or DEFAULT_REBOOT_COMMAND).split(" ", 1)[0]

    def get_shutdown_command_args(self, distribution: dict[str, str]) -> str:
        command = str(self._task.args.get("reboot_command") or DEFAULT_REBOOT_COMMAND)
        return command.split(" ", 1)[1] if " " in command else ""
