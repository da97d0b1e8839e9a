# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Action plugin of kubesolo.os.ksolodata_reboot: ansible.builtin.reboot for nodes without Python.

ansible.builtin.reboot asks the setup module for the distribution and the find module for the shutdown
command, which need Python on the node. This subclass skips both: the node is a KubeSolo OS (busybox)
node, the command is O(reboot_command) (default C(/sbin/reboot)), and everything else (boot_id before and
after, connection retries, the post-reboot O(test_command)) is the builtin plugin's own code.
"""

from __future__ import annotations

from typing import Any

from ansible.plugins.action.reboot import ActionModule as RebootActionModule

DEFAULT_REBOOT_COMMAND = "/sbin/reboot"
DEFAULT_TEST_COMMAND = "grep -q ' /mnt/data ext4 ' /proc/mounts"


class ActionModule(RebootActionModule):
    def get_distribution(self, task_vars: dict[str, Any]) -> dict[str, str]:
        return {"name": "kubesolo-os", "version": "", "family": "busybox"}

    def get_shutdown_command(self, task_vars: dict[str, Any], distribution: dict[str, str]) -> str:
        return str(self._task.args.get("reboot_command") or DEFAULT_REBOOT_COMMAND).split(" ", 1)[0]

    def get_shutdown_command_args(self, distribution: dict[str, str]) -> str:
        command = str(self._task.args.get("reboot_command") or DEFAULT_REBOOT_COMMAND)
        return command.split(" ", 1)[1] if " " in command else ""

    def run_test_command(self, distribution: dict[str, str], **kwargs: Any) -> None:
        if not self._task.args.get("test_command"):
            self._task.args["test_command"] = DEFAULT_TEST_COMMAND
        super().run_test_command(distribution, **kwargs)
