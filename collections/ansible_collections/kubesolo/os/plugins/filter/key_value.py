"""The kubesolo.os.key_value filter: ``key=value`` lines (the output of ``kubesolo-slot status``) as a dict.

Written here because no builtin filter parses this shape in one step: ``community.general`` is not a dependency
of this collection, and the Jinja expression it replaces (split, select, regex_replace, split, dict) was repeated
in four tasks of the upgrade role.
"""

from __future__ import annotations

import re
from typing import Any

from ansible.errors import AnsibleFilterError

# The keys kubesolo-slot prints: lowercase letters, digits and underscores (roles/init's kubesolo-slot).
_LINE = re.compile(r"^([a-z0-9_]+)=(.*)$")


def key_value(text: Any) -> dict[str, str]:
    """``key=value`` lines of ``text`` (str) as a dict of str; other lines (messages, blank lines) are ignored.

    A carriage return at a line end (an SSH session with a terminal) is dropped; the value is everything after
    the first ``=``; a later line wins over an earlier one with the same key. Raises AnsibleFilterError when
    ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise AnsibleFilterError(f"key_value expects a string (command output), got {type(text).__name__}")
    pairs: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line.rstrip("\r"))
        if match:
            pairs[match.group(1)] = match.group(2)
    return pairs


class FilterModule:
    """kubesolo.os filters."""

    def filters(self) -> dict[str, Any]:
        return {"key_value": key_value}
