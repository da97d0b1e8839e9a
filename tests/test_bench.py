"""The benchmark (scripts/bench.py) runs in its quick mode and writes a well-formed report.

Only the form is checked, not the targets: timings depend on the machine and its load.
"""

from __future__ import annotations

import json

import pytest
from conftest import REPO, VENV_BIN, ensure_ssh_key, run

pytestmark = pytest.mark.slow

OUT = REPO / "build" / "bench-quick"
TARGETS = {"noop_rebuild_s", "template_rebuild_s", "cpio_pack_vs_gnu_ratio", "stages_added_s", "memory_in_use_mb",
           "iso_without_kubesolo_mb"}


@pytest.fixture(scope="module")
def report() -> dict:
    ensure_ssh_key()
    run([str(VENV_BIN / "python"), "scripts/bench.py", "--quick", "--out", str(OUT)], timeout=1800)
    return json.loads((OUT / "bench.json").read_text())


def test_every_target_is_measured_and_judged(report):
    assert set(report["targets"]) == TARGETS
    for name, target in report["targets"].items():
        assert target["verdict"] in ("PASS", "FAIL"), name
        assert isinstance(target["value"], (int, float)) and target["value"] > 0, name


def test_every_figure_lists_its_runs(report):
    assert report["environment"]["runs"] == 1
    for kind in ("cold", "noop", "template"):
        assert len(report["builds"][kind]["runs"]) == 1
        assert report["builds"][kind]["seconds"] > 0
    assert report["builds"]["noop"]["runs"][0]["changed"] == 0
    assert len(report["cpio"]["runs"]) == 1 and report["cpio"]["gnu_cpio_s"] > 0
    assert {"zstd-9", "gzip-9", "xz-6", "lz4-9", "none"} <= set(report["compression"])
    for key, choice in report["compression"].items():
        assert choice["size_bytes"] > 0 and len(choice["runs"]) == 1, key
        assert choice["boot_unpack_s"] >= 0, key
    assert len(report["boot"]["runs"]) == 1


def test_boot_and_sizes_are_broken_down(report):
    boot = report["boot"]
    assert 0 < boot["floor_s"] < boot["image_s"]
    assert [name[:2] for name in boot["stages"]] == ["00", "10", "20", "30", "40", "50", "60", "70", "80", "90"]
    sizes = report["sizes"]
    assert set(sizes["layers"]) == {"userland", "modules", "kubesolo", "init"}
    assert sizes["iso_bytes"] > sizes["initramfs_bytes"] > 0
    memory = report["memory"]["runs"][0]
    assert 0 < memory["in_use_mb"] < memory["mem_total_kb"] * 1024 / 1e6
    # The limits are in MB (10^6 bytes); /proc/meminfo's "kB" is KiB.
    assert memory["in_use_mb"] == round((memory["mem_total_kb"] - memory["mem_available_kb"]) * 1024 / 1e6, 2)
    iso_without_kubesolo = sizes["iso_bytes"] - sizes["layers"]["kubesolo"]["compressed_bytes"]
    assert sizes["iso_without_kubesolo_mb"] == round(iso_without_kubesolo / 1e6, 2)


def test_markdown_table_has_every_target(report):
    text = (OUT / "bench.md").read_text()
    for name in TARGETS:
        assert f"| {name} |" in text
