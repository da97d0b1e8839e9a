# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""The opening every action plugin of this collection shares (file_tree, ksolodata, disk_install).

Each one supports check mode, runs synchronously (no async) and, where it has an argument spec, validates its
arguments before anything else, with ``ActionBase.validate_argument_spec`` (ansible-core). Written here once so
that the plugins only hold what they do.
"""

from __future__ import annotations

from typing import Any

from ansible.plugins.action import ActionBase


class KubesoloAction(ActionBase):
    """Base of the collection's action plugins: check mode supported, no async, no file transfer."""

    TRANSFERS_FILES = False

    def begin(self, tmp: Any, task_vars: dict[str, Any] | None,
              argument_spec: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start the run: returns ActionBase's result dict and the validated arguments (the task's arguments
        as given when there is no spec). Raises AnsibleActionFail (from ansible-core) on invalid arguments."""
        self._supports_check_mode = True
        self._supports_async = False
        result = super().run(tmp, task_vars)
        if argument_spec is None:
            return result, dict(self._task.args)
        _validation, params = self.validate_argument_spec(argument_spec=argument_spec)
        return result, params
