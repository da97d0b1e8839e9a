"""ansible-test sanity for the repo-local collection (run from inside the collection tree)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from conftest import REPO, VENV_BIN, run, tool_env

COLLECTION = REPO / "collections" / "ansible_collections" / "kubesolo" / "os"


def install_offline_pip_bootstrap() -> None:
    """Place the offline get-pip stand-in where ansible-test looks before downloading."""
    source = next((REPO / ".venv" / "lib").glob("python3*/site-packages/ansible_test/_internal/python_requirements.py"))
    version = re.search(r"pip='([\d.]+)'", source.read_text())
    assert version, f"cannot find the pip version ansible-test bootstraps in {source}"
    cache = Path.home() / ".ansible" / "test" / "cache" / f"get_pip_{version.group(1).replace('.', '_')}.py"
    cache.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "tests" / "fixtures" / "get_pip_offline.py", cache)


def test_ansible_test_sanity():
    install_offline_pip_bootstrap()
    result = run(
        [str(VENV_BIN / "ansible-test"), "sanity", "--python", "3.11", "--color", "no"],
        cwd=COLLECTION, env=tool_env(), timeout=1500,
    )
    assert "ERROR" not in result.stdout
