"""Unit tests of the kubesolo.os.key_value filter."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.kubesolo.os.plugins.filter.key_value import FilterModule, key_value


def test_parses_status_lines_and_ignores_the_rest():
    text = "booted=A\r\nactive=A\ntrial=\nmessage without equals\nA_VERSION=upper case is not a key\nurl=a=b\n\n"
    assert key_value(text) == {"booted": "A", "active": "A", "trial": "", "url": "a=b"}


def test_later_line_wins_and_empty_text_is_empty():
    assert key_value("x=1\nx=2") == {"x": "2"}
    assert key_value("") == {}


def test_refuses_what_is_not_text():
    with pytest.raises(AnsibleFilterError, match="expects a string"):
        key_value(None)


def test_registered_under_its_name():
    assert FilterModule().filters()["key_value"] is key_value
