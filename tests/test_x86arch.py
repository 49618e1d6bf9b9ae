"""translator/x86arch.py, the one home of the IA-32 architectural constants: no other module of
the monitor defines one of its names again (PAGE_SIZE was defined three times, TF and IOPL_MASK
twice, the PTE bits twice under two spellings), and vmm/x86.py hands all of them to the monitor."""

from __future__ import annotations

import ast
from pathlib import Path

import translator.x86arch as arch
import vmm.x86

ROOT = Path(__file__).resolve().parent.parent
CONSTANTS = {name for name in vars(arch) if name.isupper()}


def _module_level_names(tree: ast.Module):
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    yield node.lineno, name.id


def test_no_module_defines_an_architectural_constant_again():
    again = []
    for package in ("vmm", "translator", "cache", "tools", "bench"):
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "translator" / "x86arch.py":
                continue
            for line, name in _module_level_names(ast.parse(path.read_text())):
                if name in CONSTANTS:
                    again.append(f"{path.relative_to(ROOT)}:{line} {name}")
    assert not again


def test_the_monitor_finds_every_constant_in_vmm_x86():
    assert all(getattr(vmm.x86, name) == getattr(arch, name) for name in CONSTANTS)


def test_page_table_bits_are_the_sdm_ones():
    """SDM vol. 3, table 4-5/4-6 (the same in the IA-32e entries the monitor writes)."""
    assert (arch.PTE_P, arch.PTE_RW, arch.PTE_US, arch.PTE_A, arch.PTE_D, arch.PTE_PS) == (1, 2, 4, 0x20, 0x40, 0x80)
    assert arch.PAGE_SIZE == 1 << arch.PAGE_SHIFT == 4096 and arch.PTE_NX == 1 << 63
