"""Ansible callback for scripts/bench.py: writes each task's wall time as JSON lines.

Enabled only by the benchmark (ANSIBLE_CALLBACK_PLUGINS pointing here, ANSIBLE_CALLBACKS_ENABLED=task_timer,
BENCH_TASK_TIMES=<file>); the normal output callback is untouched.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_timer
type: aggregate
short_description: write per-task wall times to the file named by BENCH_TASK_TIMES (benchmark only)
description: Used by scripts/bench.py to find the slow tasks of a build.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._out = os.environ.get("BENCH_TASK_TIMES", "")
        self._task: tuple[str, str, str] | None = None
        self._start = 0.0
        self._changed = False
        self._skipped = False

    def _flush(self) -> None:
        if self._task is None or not self._out:
            return
        record = {"role": self._task[0], "task": self._task[1], "action": self._task[2],
                  "seconds": round(time.monotonic() - self._start, 3), "changed": self._changed,
                  "skipped": self._skipped}
        with open(self._out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self._task = None

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._flush()
        role = task._role.get_name() if task._role else ""
        self._task = (role, task.get_name(), task.action)
        self._start = time.monotonic()
        self._changed = False
        self._skipped = False

    def v2_runner_on_ok(self, result: Any) -> None:
        if result._result.get("changed"):
            self._changed = True

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._skipped = True

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._flush()
