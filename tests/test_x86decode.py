"""translator/x86decode.py, the one Capstone wrapper: its tables agree with what Capstone decodes,
and no other module of the monitor makes a Capstone instance."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from translator.x86decode import (GPR8, GPR16, GPR32, LEGACY_PREFIXES, PREFIX_GROUPS, REGISTER_NUMBER,
                                  SUBREGISTERS, decode, instruction_length, instruction_name, listing,
                                  split_prefixes)

ROOT = Path(__file__).resolve().parent.parent


def _sources():
    for package in ("vmm", "translator", "cache", "tools"):
        yield from (ROOT / package).rglob("*.py")


def test_only_the_wrapper_makes_a_capstone_instance():
    makers = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Cs":
                makers.append(str(path.relative_to(ROOT)))
    assert makers == ["translator/x86decode.py"]


def test_translator_imports_nothing_of_vmm():
    """The wrapper sits in translator/ so that both sides can use it with imports one way."""
    for path in (ROOT / "translator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("vmm"), path.name
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("vmm") for alias in node.names), path.name


@pytest.mark.parametrize("names, code", [(GPR32, b"\x89"), (GPR16, b"\x66\x89"), (GPR8, b"\x88")])
def test_register_numbers_are_the_modrm_encodings(names, code):
    for number, name in enumerate(names):
        insn = decode(code + bytes([0xC0 | number << 3]), 0)           # mov eax/ax/al, <register n>
        source = insn.operands[1]
        assert insn.reg_name(source.reg) == name
        assert REGISTER_NUMBER[source.reg] == number
        full, shift, bits = SUBREGISTERS[name]
        assert bits == 8 * source.size and full == GPR32[number % 4 if bits == 8 else number]
        assert shift == (8 if bits == 8 and number >= 4 else 0)
    assert len(SUBREGISTERS) == 8 + 8 + 8


def test_legacy_prefixes_are_what_capstone_takes_as_prefixes():
    """Every byte in front of `add [eax], eax` (which takes lock) and of cmpsd (which takes repne/repe):
    Capstone records it as a prefix of one of them exactly when it is one of ours."""
    for byte in range(256):
        recorded = False
        for carrier in (b"\x01\x00", b"\xa7"):
            insn = decode(bytes([byte]) + carrier + b"\x90", 0)
            recorded |= insn is not None and insn.size == 1 + len(carrier) and byte in insn.prefix
        assert recorded == (byte in LEGACY_PREFIXES), hex(byte)
    assert set(PREFIX_GROUPS) == LEGACY_PREFIXES
    assert split_prefixes(b"\xf3\x66\x2e\xa5\x66") == (b"\xf3\x66\x2e", b"\xa5\x66")


def test_lengths_names_and_64_bit_listing():
    assert instruction_length(b"\x66\xb8\x34\x12") == 4 and instruction_length(b"\xb8\x34\x12") is None
    assert decode(b"\x0f\x0b", 0x1000).mnemonic == "ud2" and decode(b"\x0f", 0) is None
    assert instruction_name(decode(b"\xfa", 0).id) == "cli"
    assert [mnemonic for _a, _s, mnemonic, _o in listing(b"\x41\x89\xc1\xc3", 0x7F0000000000)] == ["mov", "ret"]
    assert decode(b"\x41\x89\xc1", 0, bits=64).op_str == "r9d, eax"
