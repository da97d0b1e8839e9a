# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Action plugin of kubesolo.os.ksolodata: runs the module where the node has Python, otherwise runs the
same decision logic (module_utils/ksolodata.py) on the controller and drives the node with shell commands.
"""

from __future__ import annotations

from typing import Any

from ansible.utils.display import Display
from ansible_collections.kubesolo.os.plugins.module_utils.ksolodata import KsolodataError, provision
from ansible_collections.kubesolo.os.plugins.modules.ksolodata import ARGUMENT_SPEC, provision_params
from ansible_collections.kubesolo.os.plugins.plugin_utils.action import KubesoloAction

display = Display()

PYTHON_PROBE = "command -v python3 >/dev/null 2>&1 && echo yes || echo no"


class ActionModule(KubesoloAction):
    _requires_connection = True

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result, params = self.begin(tmp, task_vars, ARGUMENT_SPEC)
        executor = params["executor"]
        if executor == "auto":
            if self._connection.transport == "local":
                executor = "module"
            else:
                probe = self._low_level_execute_command(PYTHON_PROBE)
                executor = "module" if probe.get("stdout", "").strip().endswith("yes") else "shell"
        if executor == "module":
            result.update(self._execute_module(module_name="kubesolo.os.ksolodata", module_args=dict(self._task.args),
                                               task_vars=task_vars))
            result["executor"] = "module"
            return result

        def run(command: str) -> tuple[int, str, str]:
            display.vvvv(f"ksolodata: {command}")
            out = self._low_level_execute_command(f"export LC_ALL=C; {command}")
            return int(out.get("rc", 1)), str(out.get("stdout", "")), str(out.get("stderr", ""))

        try:
            outcome = provision(run, provision_params(params), check_mode=bool(self._task.check_mode))
        except KsolodataError as exc:
            result.update(failed=True, msg=exc.msg, **exc.details)
            return result
        if not self._task.diff:
            outcome.pop("diff", None)
        result.update(outcome)
        result["executor"] = "shell"
        return result
