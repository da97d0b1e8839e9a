"""The boot contract as the tests read it: files/boot-contract.yml, loaded once, the one Python place.

The build roles, the flash and provisioning roles, the collection's modules (as arguments) and the
cloud-init validators read the same file (roles/kubesolo_os/tasks/contract.yml loads it into Ansible as
`kubesolo_os_boot`). Tests take the data label, data mount, bind mounts, boot menu and handover marker from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONTRACT_FILE = Path(__file__).resolve().parent.parent / "files" / "boot-contract.yml"
CONTRACT: dict[str, Any] = yaml.safe_load(CONTRACT_FILE.read_text())


# The line the init prints when every stage has run, right before it hands over to KubeSolo.
HANDOVER_MARKER: str = CONTRACT["handover_marker"]


def persistent_dirs(contract: dict[str, Any] = CONTRACT) -> list[str]:
    """The directories cloud-init's write_files may write below: the bind mounts' mount points."""
    return [bind["dest"] for bind in contract["bind_mounts"]]
