#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# Ansible module boilerplate: coding line, __future__ imports and __metaclass__, imports after the docs.

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cloudinit_validate
short_description: Validate a KubeSolo OS cloud-init file against the project's schema
version_added: "0.1.0"
description:
  - Parses a cloud-init file written in the strict YAML subset of KubeSolo OS (docs/cloud-init.md) and
    validates every key against the schema (files/cloud-init-schema.yml), with the same algorithm as the
    boot-time parser of the image, so a file this module accepts is accepted at boot and the other way round.
  - Fails, naming the key and the line, when the file has a syntax error, a value of the wrong type, or
    keys that break a rule (for example an interface with both name and mac). Unknown keys are warnings.
  - Each item of C(kubesolo.flags) must be a flag KubeSolo has (an unknown one is refused with the list of
    known flags), C(--name), C(--no-name) or C(--name=true|false) for a boolean, C(--name=VALUE) for a string
    or number, and each flag may be given once.
  - Secret values (Portainer Edge id and key, file contents) are never part of a message.
author:
  - KubeSolo OS developers (@kubesolo-os)
options:
  path:
    description:
      - The cloud-init file to validate. Exactly one of O(path) and O(content) is required.
    type: path
  content:
    description:
      - The text of a cloud-init file, instead of O(path).
    type: str
  schema:
    description:
      - The schema file (files/cloud-init-schema.yml of the project).
    type: path
    required: true
  persistent_dirs:
    description:
      - The directories C(write_files) may write below, the mount points of the boot contract's bind mounts
        (C(bind_mounts[].dest) of files/boot-contract.yml, loaded by the kubesolo_os role as C(kubesolo_os_boot)).
    type: list
    elements: str
    required: true
  flags:
    description:
      - KubeSolo's flag table (files/kubesolo-flags.yml of the project), against which the items of
        C(kubesolo.flags) are checked (unknown flags, booleans, flags without a value, repeats).
      - Default is C(kubesolo-flags.yml) in the directory of O(schema).
    type: path
  fail_on_warnings:
    description:
      - Fail on unknown keys too.
    type: bool
    default: false
notes:
  - The module only reads; it changes nothing.
requirements:
  - PyYAML (to read the schema file).
attributes:
  check_mode:
    support: full
    description: The module never changes anything; it validates in check mode too.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
"""

EXAMPLES = r"""
- name: Validate a node's cloud-init file
  kubesolo.os.cloudinit_validate:
    path: /srv/kubesolo/node1/cloud-init.yaml
    schema: "{{ playbook_dir }}/../files/cloud-init-schema.yml"
    persistent_dirs: "{{ kubesolo_os_boot.bind_mounts | map(attribute='dest') }}"

- name: Validate generated content, failing on unknown keys too
  kubesolo.os.cloudinit_validate:
    content: "{{ lookup('ansible.builtin.template', 'cloud-init.yaml.j2') }}"
    schema: files/cloud-init-schema.yml
    flags: files/kubesolo-flags.yml
    persistent_dirs: [/etc/kubesolo, /var/lib/kubesolo]
    fail_on_warnings: true
  register: validation
"""

RETURN = r"""
valid:
  description: Whether the file has no error.
  returned: always
  type: bool
  sample: false
errors:
  description: The errors, in line order.
  returned: always
  type: list
  elements: dict
  contains:
    key:
      description: The key, as a path (network.interfaces[0].gateway); empty for the top level.
      type: str
    line:
      description: The line of the file (1 is the first).
      type: int
    message:
      description: What is wrong (never the value).
      type: str
  sample: [{"key": "network.interfaces[0].gateway", "line": 7, "message": "not an IPv4 address"}]
warnings_found:
  description: The warnings (unknown keys), in line order, like RV(errors).
  returned: always
  type: list
  elements: dict
  sample: [{"key": "users", "line": 3, "message": "unknown key: ignored"}]
key_paths:
  description: Every key path the file sets (no values, which may be secret).
  returned: always
  type: list
  elements: str
  sample: ["hostname", "network", "network.interfaces"]
"""

import os
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubesolo.os.plugins.module_utils.cloudinit import check, load_schema

try:
    import yaml
except ImportError:  # pragma: no cover - reported by the module
    yaml = None


def run_module() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path"},
            "content": {"type": "str"},
            "schema": {"type": "path", "required": True},
            "flags": {"type": "path"},
            "persistent_dirs": {"type": "list", "elements": "str", "required": True},
            "fail_on_warnings": {"type": "bool", "default": False},
        },
        required_one_of=[("path", "content")],
        mutually_exclusive=[("path", "content")],
        supports_check_mode=True,
    )
    params: dict[str, Any] = module.params
    if yaml is None:
        module.fail_json(msg="PyYAML is required to read the schema")
    flags_file = params["flags"] or os.path.join(os.path.dirname(params["schema"]), "kubesolo-flags.yml")
    try:
        with open(params["schema"], encoding="utf-8") as handle:
            schema_data = yaml.safe_load(handle)
        with open(flags_file, encoding="utf-8") as handle:
            schema = load_schema(schema_data, yaml.safe_load(handle), params["persistent_dirs"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        module.fail_json(msg=f"cannot load the schema {params['schema']} and flag table {flags_file}: {exc}")
    source = params["path"] or "content"
    content: bytes | str
    if params["path"]:
        # Bytes: a byte that is not UTF-8 is reported on its line by the parser, like the boot does.
        try:
            with open(params["path"], "rb") as handle:
                content = handle.read()
        except OSError as exc:
            module.fail_json(msg=f"cannot read {params['path']}: {exc}")
    else:
        content = params["content"]
    result = check(content, schema)

    def as_dicts(diagnostics: list[Any]) -> list[dict[str, Any]]:
        return [{"key": d.key, "line": d.line, "message": d.message} for d in diagnostics]

    out: dict[str, Any] = {
        "changed": False,
        "valid": result.valid,
        "errors": as_dicts(result.errors),
        "warnings_found": as_dicts(result.warnings),
        "key_paths": [n.path for n in result.nodes],
    }
    for warning in result.warnings:
        module.warn(warning.text(source))
    if not result.valid:
        lines = "; ".join(d.text(source) for d in result.errors)
        module.fail_json(msg=f"invalid cloud-init file: {lines}", **out)
    if params["fail_on_warnings"] and result.warnings:
        module.fail_json(msg="cloud-init file has unknown keys: " + "; ".join(d.text(source) for d in result.warnings),
                         **out)
    module.exit_json(**out)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
