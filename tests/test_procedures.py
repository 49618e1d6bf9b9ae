"""The procedures that classify, the emitter, the emulator, trap and vt share: one Enum
(translator.classify.Procedure), checked here so that the rooms cannot drift apart."""

from __future__ import annotations

import pytest
from capstone import CS_ARCH_X86, CS_MODE_32, Cs

from translator.classify import Handling, Procedure, classify, rules
from vmm.emulate import Emulator
from vmm.modes import trap, vt
from tests.guests import run_source
from tests.test_classify import CASES
from vmm.exits import StopReason

# Rules whose procedure the translator carries out itself and every mode runs natively.
NATIVE_HANDLINGS = (Handling.CHAIN, Handling.LOOKUP, Handling.IO_HOOK)


def test_every_callout_and_inline_rule_has_an_emulation():
    """A callout reaches Emulator.emulate; an inline rule does too when its form cannot be
    inlined, and under trap and vt. A procedure without its method would stop a guest
    'unsupported' at run time."""
    missing = {rule.procedure for rule in rules()
               if rule.handling in (Handling.CALLOUT, Handling.INLINE) and not Emulator.has_emulation(rule.procedure)}
    assert not missing


def test_only_native_rules_lack_an_emulation():
    without = {rule.handling for rule in rules() if rule.procedure is not None
               and not Emulator.has_emulation(rule.procedure)}
    assert without <= set(NATIVE_HANDLINGS)
    assert all(rule.procedure is None for rule in rules() if rule.handling is Handling.COPY)


def test_every_procedure_is_named_by_a_rule():
    """No member of the Enum that no instruction can reach (a stale name)."""
    assert {rule.procedure for rule in rules()} - {None} == set(Procedure)


@pytest.mark.parametrize("code", [case[0] for case in CASES])
def test_rules_lists_what_classify_returns(code):
    capstone = Cs(CS_ARCH_X86, CS_MODE_32)
    capstone.detail = True
    insn = next(capstone.disasm(bytes.fromhex(code), 0x1000, 1))
    assert classify(insn) in rules()


@pytest.mark.parametrize("name, procedures", [
    ("trap.RETURNS", trap.RETURNS),
    ("vt.TASK_SWITCH_PROCEDURES", vt.TASK_SWITCH_PROCEDURES),
    *((f"vt.INSTRUCTION_EXITS[{reason!r}]", procedures) for reason, procedures in vt.INSTRUCTION_EXITS.items()),
])
def test_mode_tables_name_emulated_procedures(name, procedures):
    """trap follows these returns natively and emulates them when they trap; vt emulates the
    instructions of each watched exit reason at the exit: each must be a real, emulated procedure."""
    named = {rule.procedure for rule in rules()}
    for procedure in procedures:
        assert isinstance(procedure, Procedure), (name, procedure)
        assert procedure in named and Emulator.has_emulation(procedure), (name, procedure)


@pytest.mark.parametrize("mode, paging", [("bt", "shadow"), ("trap", "shadow"), ("vt", "shadow")])
def test_clearing_cr0_pe_stops_unsupported_naming_no_other_mode(tmp_path, mode, paging):
    """The emulation of `mov cr0` is shared by every mode that emulates CR0 writes; its message
    said "under binary translation" under trap and vt too. (QEMU enters real mode; the monitor
    does not model it and says so.)"""
    source = "mov eax, cr0\nand eax, 0xfffffffe\nmov cr0, eax\nhlt\n"
    result, _output, _vm = run_source(tmp_path, source, mode=mode, paging=paging, max_instructions=1000)
    assert result.reason is StopReason.UNSUPPORTED
    assert "real mode is not modelled" in result.message and "binary translation" not in result.message
