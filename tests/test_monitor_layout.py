"""The monitor region's map (vmm/monitor_layout.py): areas that do not overlap, the docs' table made
from it, and every area a real machine maps found in it with the permissions it lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guests import EXIT, run_source
from vmm.monitor_layout import AREAS, MONITOR_BASE, MONITOR_SIZE, markdown_table

DOCS = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def test_areas_lie_in_the_region_in_order_and_do_not_overlap():
    for area in AREAS:
        assert 0 <= area.offset and area.end <= MONITOR_SIZE, area.name
        assert area.offset % 0x1000 == 0 and area.size % 0x1000 == 0, area.name
    for before, after in zip(AREAS, AREAS[1:]):
        assert before.end <= after.offset, f"{before.name} overlaps {after.name}"
    assert len({area.name for area in AREAS}) == len(AREAS)


def test_docs_monitor_region_table_is_the_layout():
    """docs/architecture.md's "Monitor region" table is markdown_table(); after changing the map,
    paste `python -c 'from vmm.monitor_layout import markdown_table; print(markdown_table())'`."""
    text = DOCS.read_text()
    start = text.index("| offset | size | area | engine access | owner |")
    end = text.index("\n\n", start)
    assert text[start:end] == markdown_table()


@pytest.mark.parametrize("config", [dict(mode="bt"), dict(mode="bt", paging="nested"), dict(mode="trap"),
                                    dict(mode="vt", paging="shadow"), dict(mode="direct")])
def test_every_area_a_machine_maps_is_in_the_layout(tmp_path, config):
    """A guest that turns paging on (so the shadow pool and monitor tables are made) runs to its
    exit; every monitor mapping the machine made lies inside one area, with that area's perms."""
    source = f"""
    mov dword ptr [0x9000], 0x87
    mov eax, 0x9000
    mov cr3, eax
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov eax, 0x2a
{EXIT}"""
    result, _output, vm = run_source(tmp_path, source, **config)
    assert result.guest_value == 0x2a, result.message
    mappings = vm.memory.monitor_mappings()
    assert mappings
    for address, size, perms in mappings:
        offset = address - MONITOR_BASE
        owners = [area for area in AREAS if area.offset <= offset and offset + size <= area.end]
        assert len(owners) == 1, f"{offset:#x}+{size:#x} is in no area of the map"
        assert perms == owners[0].perms, owners[0].name


def test_the_config_layer_takes_the_cache_capacity_from_the_layout_not_from_bt():
    """builder.py and cli.py check and document --tcache-size with the layout's numbers; they import
    nothing of bt's internals (design review P4)."""
    import ast
    root = DOCS.parent.parent
    for name in ("vmm/builder.py", "vmm/cli.py"):
        for node in ast.walk(ast.parse((root / name).read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("vmm.modes.bt"), (name, node.module)
