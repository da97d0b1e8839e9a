"""ansible-test sanity for the repo-local collection (run from inside the collection tree)."""

from __future__ import annotations

from conftest import REPO, VENV_BIN, run, tool_env

COLLECTION = REPO / "collections" / "ansible_collections" / "kubesolo" / "os"


def test_ansible_test_sanity():
    env = tool_env()
    result = run(
        [str(VENV_BIN / "ansible-test"), "sanity", "--python", "3.11", "--color", "no"],
        cwd=COLLECTION, env=env, timeout=1500,
    )
    assert "ERROR" not in result.stdout
