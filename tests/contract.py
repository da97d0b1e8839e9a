"""The boot contract (files/boot-contract.yml) as the tests read it: one load, one constant per fact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONTRACT_FILE = Path(__file__).resolve().parent.parent / "files" / "boot-contract.yml"
CONTRACT: dict[str, Any] = yaml.safe_load(CONTRACT_FILE.read_text())

# The line the init prints when every stage has run, right before it hands over to KubeSolo.
HANDOVER_MARKER: str = CONTRACT["handover_marker"]
