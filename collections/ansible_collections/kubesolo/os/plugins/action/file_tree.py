# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Action plugin of kubesolo.os.file_tree: renders the files given as ``template`` on the controller (with the
task's variables and the role's template search path, as ansible.builtin.template does) and hands the whole
tree to the module in one run.
"""

from __future__ import annotations

import os
from typing import Any

from ansible import constants as C
from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.template import trust_as_template
from ansible_collections.kubesolo.os.plugins.plugin_utils.action import KubesoloAction


class ActionModule(KubesoloAction):
    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result, args = self.begin(tmp, task_vars)
        task_vars = task_vars or {}
        files = []
        for entry in args.get("files") or []:
            if not isinstance(entry, dict):
                raise AnsibleActionFail(f"files: every entry must be a dictionary, got {entry!r}")
            entry = dict(entry)
            template = entry.pop("template", None)
            extra = entry.pop("vars", None) or {}
            if not isinstance(extra, dict):
                raise AnsibleActionFail(f"file {entry.get('path')}: vars must be a dictionary")
            if template is not None:
                if entry.get("content") is not None or entry.get("src") is not None:
                    raise AnsibleActionFail(f"file {entry.get('path')}: give exactly one of content, src and template")
                entry["content"] = self._render(str(template), str(entry.get("path", "")), {**task_vars, **extra})
            files.append(entry)
        if "files" in args:
            args["files"] = files
        result.update(self._execute_module(module_name="kubesolo.os.file_tree", module_args=args,
                                           task_vars=task_vars))
        return result

    def _render(self, template: str, dest: str, task_vars: dict[str, Any]) -> str:
        try:
            source = self._find_needle("templates", template)
        except AnsibleError as exc:
            raise AnsibleActionFail(to_text(exc)) from exc
        data = trust_as_template(self._loader.get_text_file_contents(source))
        # Same search path as ansible.builtin.template, so {% include %} and {% import %} work alike.
        searchpath = list(task_vars.get("ansible_search_path", []))
        searchpath.extend([self._loader._basedir, os.path.dirname(source)])
        searchpath = [p for base in searchpath for p in (os.path.join(base, "templates"), base)]
        variables = dict(task_vars)
        variables.setdefault("ansible_managed", C.config.get_config_value("DEFAULT_MANAGED_STR"))
        variables.update(template_path=template, template_fullpath=source, template_destpath=dest)
        templar = self._templar.copy_with_new_env(searchpath=searchpath, available_variables=variables)
        # ansible.builtin.template's defaults, so a template renders to the same bytes with either.
        rendered = templar.template(data, escape_backslashes=False,
                                    overrides=dict(trim_blocks=True, lstrip_blocks=False, newline_sequence="\n"))
        return "" if rendered is None else str(rendered)
