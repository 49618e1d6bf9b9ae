"""The IA-32 instruction classification: which instructions the translator may copy, which end a
block, and which it must rewrite (inline emulation) or hand to the monitor (callout).

Popek and Goldberg call an instruction *sensitive* when it reads or changes the machine's
privileged state, and *privileged* when it traps outside ring 0. The 386 is not virtualizable
by trap-and-emulate because some sensitive instructions are not privileged: they run at any
ring and silently show or ignore the real state (pushf/popf, sgdt/sidt/sldt/str/smsw,
lar/lsl/verr/verw, reads and pushes of segment registers). The binary translator handles all of
them. docs/classification.md is the table in prose; tests/test_classify.py has a case per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from capstone import x86_const as X


class Category(Enum):
    INNOCUOUS = "innocuous"                   # same effect at any privilege: copied
    DIRECT_BRANCH = "direct control flow"     # target in the instruction
    INDIRECT_BRANCH = "indirect control flow" # target in a register, memory or the stack
    FAR_TRANSFER = "far control flow"         # changes CS or goes through a gate
    PRIVILEGED = "privileged"                 # traps (#GP) outside ring 0 (or above IOPL)
    SENSITIVE = "sensitive, unprivileged"     # shows or ignores privileged state without trapping


class Handling(Enum):
    COPY = "copy"              # bytes copied unchanged (ident translation)
    CHAIN = "exit slot"        # ends the block; each target gets a patchable exit slot
    LOOKUP = "lookup"          # ends the block; target found in the in-cache lookup table
    INLINE = "inline"          # rewritten into code that reads the virtual-CPU block, no exit
    CALLOUT = "callout"        # ends the block; the monitor emulates it (vmm/emulate.py)
    IO_HOOK = "I/O callout"    # copied; the engine's port I/O hook calls the monitor for each access


class Procedure(Enum):
    """What carries out a classified instruction: an inline template or branch form
    (translator/emitter.py) and, for every callout and inline rule, the monitor's emulation
    (vmm/emulate.py's Emulator._<value>), which trap and vt also use (vmm/modes/trap.py,
    vmm/modes/vt.py). One list for all of them, here because the translator imports nothing of
    vmm while vmm may import the translator. Every procedure a callout or inline rule names has
    its emulation (tests/test_procedures.py)."""
    # control flow the translator rewrites itself (no emulation: the modes run it natively)
    BRANCH = "branch"
    CALL = "call"
    RET = "ret"
    INDIRECT_JMP = "indirect_jmp"
    INDIRECT_CALL = "indirect_call"
    PORT_IO = "port_io"                         # the engine's I/O hook, not a callout
    # far transfers
    FAR_JMP = "far_jmp"
    FAR_CALL = "far_call"
    FAR_RET = "far_ret"
    IRET = "iret"
    SOFTWARE_INTERRUPT = "software_interrupt"
    FAST_SYSTEM_CALL = "fast_system_call"
    # privileged
    LOAD_DESCRIPTOR_TABLE = "load_descriptor_table"
    LOAD_SYSTEM_SEGMENT = "load_system_segment"
    WRITE_MSW = "write_msw"
    HLT = "hlt"
    CACHE_CONTROL = "cache_control"
    MSR = "msr"
    RDPMC = "rdpmc"
    INTERRUPT_FLAG = "interrupt_flag"
    READ_CONTROL_REGISTER = "read_control_register"
    WRITE_CONTROL_REGISTER = "write_control_register"
    DEBUG_REGISTER = "debug_register"
    # sensitive, unprivileged
    PUSHF = "pushf"
    POPF = "popf"
    STORE_DESCRIPTOR_TABLE = "store_descriptor_table"
    STORE_SYSTEM_SEGMENT = "store_system_segment"
    SMSW = "smsw"
    READ_SEGMENT_REGISTER = "read_segment_register"
    PUSH_SEGMENT_REGISTER = "push_segment_register"
    LOAD_SEGMENT_REGISTER = "load_segment_register"
    DESCRIPTOR_ACCESS = "descriptor_access"
    LOAD_FAR_POINTER = "load_far_pointer"
    CPUID = "cpuid"
    RDTSC = "rdtsc"
    # innocuous, but missing from the 64-bit host that runs translated code
    DECIMAL_ADJUST = "decimal_adjust"
    BOUND = "bound"
    ARPL = "arpl"

    def __str__(self) -> str:          # tables, dumps and messages show the plain name
        return self.value


@dataclass(frozen=True)
class Rule:
    category: Category
    handling: Handling
    procedure: Optional[Procedure] = None   # what implements it (None: copied unchanged)

    @property
    def ends_block(self) -> bool:
        return self.handling in (Handling.CHAIN, Handling.LOOKUP, Handling.CALLOUT)


def _rules(category, handling, ids, procedure: Procedure):
    return {i: Rule(category, handling, procedure) for i in ids}


_BY_ID: dict[int, Rule] = {}
_BY_ID.update(_rules(Category.DIRECT_BRANCH, Handling.CHAIN, [
    X.X86_INS_JAE, X.X86_INS_JA, X.X86_INS_JBE, X.X86_INS_JB, X.X86_INS_JE, X.X86_INS_JGE,
    X.X86_INS_JG, X.X86_INS_JLE, X.X86_INS_JL, X.X86_INS_JNE, X.X86_INS_JNO, X.X86_INS_JNP,
    X.X86_INS_JNS, X.X86_INS_JO, X.X86_INS_JP, X.X86_INS_JS, X.X86_INS_JECXZ, X.X86_INS_JCXZ,
    X.X86_INS_LOOP, X.X86_INS_LOOPE, X.X86_INS_LOOPNE], Procedure.BRANCH))
_BY_ID[X.X86_INS_RET] = Rule(Category.INDIRECT_BRANCH, Handling.LOOKUP, Procedure.RET)
_BY_ID.update(_rules(Category.FAR_TRANSFER, Handling.CALLOUT, [X.X86_INS_LJMP], Procedure.FAR_JMP))
_BY_ID.update(_rules(Category.FAR_TRANSFER, Handling.CALLOUT, [X.X86_INS_LCALL], Procedure.FAR_CALL))
_BY_ID.update(_rules(Category.FAR_TRANSFER, Handling.CALLOUT, [X.X86_INS_RETF], Procedure.FAR_RET))
_BY_ID.update(_rules(Category.FAR_TRANSFER, Handling.CALLOUT, [X.X86_INS_IRET, X.X86_INS_IRETD], Procedure.IRET))
_BY_ID.update(_rules(Category.FAR_TRANSFER, Handling.CALLOUT,
                     [X.X86_INS_INT, X.X86_INS_INT3, X.X86_INS_INTO, X.X86_INS_INT1], Procedure.SOFTWARE_INTERRUPT))
_BY_ID.update(_rules(Category.FAR_TRANSFER, Handling.CALLOUT,
                     [X.X86_INS_SYSENTER, X.X86_INS_SYSEXIT, X.X86_INS_SYSCALL, X.X86_INS_SYSRET], Procedure.FAST_SYSTEM_CALL))
_BY_ID.update(_rules(Category.PRIVILEGED, Handling.CALLOUT, [X.X86_INS_LGDT, X.X86_INS_LIDT], Procedure.LOAD_DESCRIPTOR_TABLE))
_BY_ID.update(_rules(Category.PRIVILEGED, Handling.CALLOUT, [X.X86_INS_LLDT, X.X86_INS_LTR], Procedure.LOAD_SYSTEM_SEGMENT))
_BY_ID.update(_rules(Category.PRIVILEGED, Handling.CALLOUT, [X.X86_INS_LMSW, X.X86_INS_CLTS], Procedure.WRITE_MSW))
_BY_ID.update(_rules(Category.PRIVILEGED, Handling.CALLOUT, [X.X86_INS_HLT], Procedure.HLT))
_BY_ID.update(_rules(Category.PRIVILEGED, Handling.CALLOUT,
                     [X.X86_INS_INVLPG, X.X86_INS_WBINVD, X.X86_INS_INVD], Procedure.CACHE_CONTROL))
_BY_ID.update(_rules(Category.PRIVILEGED, Handling.CALLOUT, [X.X86_INS_RDMSR, X.X86_INS_WRMSR], Procedure.MSR))
_BY_ID.update(_rules(Category.PRIVILEGED, Handling.CALLOUT, [X.X86_INS_RDPMC], Procedure.RDPMC))
# cli/sti: the virtual IF is the deprivileged context's EFLAGS.IF (see docs/translation.md), so
# the instruction itself, executed at CPL 1 with the real IOPL at 1, is its inline emulation.
_BY_ID.update(_rules(Category.PRIVILEGED, Handling.INLINE, [X.X86_INS_CLI, X.X86_INS_STI], Procedure.INTERRUPT_FLAG))
_BY_ID.update(_rules(Category.PRIVILEGED, Handling.IO_HOOK, [
    X.X86_INS_IN, X.X86_INS_OUT, X.X86_INS_INSB, X.X86_INS_INSW, X.X86_INS_INSD,
    X.X86_INS_OUTSB, X.X86_INS_OUTSW, X.X86_INS_OUTSD], Procedure.PORT_IO))
_BY_ID.update(_rules(Category.SENSITIVE, Handling.INLINE, [X.X86_INS_PUSHF, X.X86_INS_PUSHFD], Procedure.PUSHF))
_BY_ID.update(_rules(Category.SENSITIVE, Handling.INLINE, [X.X86_INS_POPF, X.X86_INS_POPFD], Procedure.POPF))
_BY_ID.update(_rules(Category.SENSITIVE, Handling.INLINE, [X.X86_INS_SGDT, X.X86_INS_SIDT], Procedure.STORE_DESCRIPTOR_TABLE))
_BY_ID.update(_rules(Category.SENSITIVE, Handling.INLINE, [X.X86_INS_SLDT, X.X86_INS_STR], Procedure.STORE_SYSTEM_SEGMENT))
_BY_ID.update(_rules(Category.SENSITIVE, Handling.INLINE, [X.X86_INS_SMSW], Procedure.SMSW))
_BY_ID.update(_rules(Category.SENSITIVE, Handling.CALLOUT,
                     [X.X86_INS_LAR, X.X86_INS_LSL, X.X86_INS_VERR, X.X86_INS_VERW], Procedure.DESCRIPTOR_ACCESS))
_BY_ID.update(_rules(Category.SENSITIVE, Handling.CALLOUT,
                     [X.X86_INS_LDS, X.X86_INS_LES, X.X86_INS_LFS, X.X86_INS_LGS, X.X86_INS_LSS], Procedure.LOAD_FAR_POINTER))
_BY_ID.update(_rules(Category.SENSITIVE, Handling.CALLOUT, [X.X86_INS_CPUID], Procedure.CPUID))
# rdtsc reads the virtual clock inline while the budget counts (translator/layout.py); rdtscp,
# which also reads an MSR, and rdtsc before time is counted or under the realtime clock, call out.
_BY_ID.update(_rules(Category.SENSITIVE, Handling.INLINE, [X.X86_INS_RDTSC], Procedure.RDTSC))
_BY_ID.update(_rules(Category.SENSITIVE, Handling.CALLOUT, [X.X86_INS_RDTSCP], Procedure.RDTSC))

# Innocuous instructions that the host's 64-bit mode does not have (translated code is 64-bit:
# docs/isolation.md): the monitor carries them out. Not sensitive; a callout for the host's sake.
_BY_ID.update(_rules(Category.INNOCUOUS, Handling.CALLOUT,
                     [X.X86_INS_DAA, X.X86_INS_DAS, X.X86_INS_AAA, X.X86_INS_AAS, X.X86_INS_AAM, X.X86_INS_AAD,
                      X.X86_INS_SALC], Procedure.DECIMAL_ADJUST))
_BY_ID.update(_rules(Category.INNOCUOUS, Handling.CALLOUT, [X.X86_INS_BOUND], Procedure.BOUND))
_BY_ID.update(_rules(Category.INNOCUOUS, Handling.CALLOUT, [X.X86_INS_ARPL], Procedure.ARPL))

_SEGMENT_REGISTERS = {X.X86_REG_CS, X.X86_REG_SS, X.X86_REG_DS, X.X86_REG_ES, X.X86_REG_FS, X.X86_REG_GS}

INNOCUOUS = Rule(Category.INNOCUOUS, Handling.COPY)
# The rules classify() picks by opcode or operands, beyond the table by instruction id.
_BY_FORM: set[Rule] = set()


def _by_form(category: Category, handling: Handling, procedure: Procedure) -> Rule:
    rule = Rule(category, handling, procedure)
    _BY_FORM.add(rule)
    return rule


_JUMP = _by_form(Category.DIRECT_BRANCH, Handling.CHAIN, Procedure.BRANCH)
_CALL = _by_form(Category.DIRECT_BRANCH, Handling.CHAIN, Procedure.CALL)
_FAR_JMP = _by_form(Category.FAR_TRANSFER, Handling.CALLOUT, Procedure.FAR_JMP)
_FAR_CALL = _by_form(Category.FAR_TRANSFER, Handling.CALLOUT, Procedure.FAR_CALL)
_INDIRECT_JMP = _by_form(Category.INDIRECT_BRANCH, Handling.LOOKUP, Procedure.INDIRECT_JMP)
_INDIRECT_CALL = _by_form(Category.INDIRECT_BRANCH, Handling.LOOKUP, Procedure.INDIRECT_CALL)
_READ_CONTROL_REGISTER = _by_form(Category.PRIVILEGED, Handling.INLINE, Procedure.READ_CONTROL_REGISTER)
_WRITE_CONTROL_REGISTER = _by_form(Category.PRIVILEGED, Handling.CALLOUT, Procedure.WRITE_CONTROL_REGISTER)
_DEBUG_REGISTER = _by_form(Category.PRIVILEGED, Handling.CALLOUT, Procedure.DEBUG_REGISTER)
_READ_SEGMENT_REGISTER = _by_form(Category.SENSITIVE, Handling.INLINE, Procedure.READ_SEGMENT_REGISTER)
_LOAD_SEGMENT_REGISTER = _by_form(Category.SENSITIVE, Handling.CALLOUT, Procedure.LOAD_SEGMENT_REGISTER)
_PUSH_SEGMENT_REGISTER = _by_form(Category.SENSITIVE, Handling.INLINE, Procedure.PUSH_SEGMENT_REGISTER)


_MOV_0F = {0x20: _READ_CONTROL_REGISTER, 0x22: _WRITE_CONTROL_REGISTER, 0x21: _DEBUG_REGISTER, 0x23: _DEBUG_REGISTER}


def _register_operands(insn) -> list[int]:
    return [op.reg for op in insn.operands if op.type == X.X86_OP_REG]


def classify(insn) -> Rule:
    """The rule for one decoded Capstone instruction (detail mode)."""
    rule = _BY_ID.get(insn.id)
    if rule is not None:
        return rule
    iid = insn.id
    if iid == X.X86_INS_JMP:
        if insn.opcode[0] in (0xEB, 0xE9):
            return _JUMP
        return _FAR_JMP if _modrm_reg(insn) == 5 else _INDIRECT_JMP
    if iid == X.X86_INS_CALL:
        if insn.opcode[0] == 0xE8:
            return _CALL
        return _FAR_CALL if _modrm_reg(insn) == 3 else _INDIRECT_CALL
    if iid == X.X86_INS_MOV:
        # By opcode, not by operands (the commonest instruction; its operands are parsed only if
        # asked for): control registers are 0F 20 (read) and 0F 22, debug registers 0F 21 and
        # 0F 23 (tests/test_classify.py checks every ModRM against the operands' registers).
        opcode = insn.opcode
        first = opcode[0]
        if first == 0x0F:
            return _MOV_0F.get(opcode[1], INNOCUOUS)
        if first == 0x8C:
            return _READ_SEGMENT_REGISTER
        if first == 0x8E:
            return _LOAD_SEGMENT_REGISTER
        return INNOCUOUS
    if iid == X.X86_INS_PUSH and _register_operands(insn) and _register_operands(insn)[0] in _SEGMENT_REGISTERS:
        return _PUSH_SEGMENT_REGISTER
    if iid == X.X86_INS_POP and _register_operands(insn) and _register_operands(insn)[0] in _SEGMENT_REGISTERS:
        return _LOAD_SEGMENT_REGISTER
    return INNOCUOUS


def rules() -> frozenset[Rule]:
    """Every rule classify() can return (for the checks that each procedure has its emulation)."""
    return frozenset(_BY_ID.values()) | _BY_FORM | {INNOCUOUS}


# Far transfers that reach the monitor even when the guest kernel runs at ring 3: int n (and
# int3/into/int1) through the IDT, iret back to a ring-0 kernel (a return to a more privileged
# level is #GP), and the fast system calls (sysenter/syscall enter ring 0; sysexit/sysret are
# #GP outside ring 0, syscall/sysret #UD in 32-bit mode).
_TRAPPING_FAR_TRANSFERS = frozenset({Procedure.SOFTWARE_INTERRUPT, Procedure.IRET, Procedure.FAST_SYSTEM_CALL})


def traps_when_deprivileged(rule_or_insn) -> bool:
    """Whether the instruction traps to the monitor when a kernel written for ring 0 runs
    deprivileged at ring 3, the question pure trap-and-emulate virtualization asks (Popek and
    Goldberg: possible only if every sensitive instruction traps). The ONE place this is decided
    (vmm/audit.py reports it; docs/classification.md explains it).

    `rule_or_insn`: a Rule, a decoded GuestInstruction (its rule), or a Capstone instruction in
    detail mode (classified here). By category:

    - PRIVILEGED: yes, #GP at CPL > 0 (port I/O and cli/sti at IOPL 0 included).
    - SENSITIVE: no, these are the 386's holes: they run at CPL 3 and silently show or ignore the
      real state (pushf/popf, sgdt/sidt/sldt/str/smsw, lar/lsl/verr/verw, mov r/m,Sreg, push Sreg,
      cpuid, rdtsc, and loads of DS/ES/FS/GS, which succeed on the compressed descriptors).
      Except loads of SS (mov ss, pop ss, lss): SS's RPL must equal the CPL, so the kernel's own
      RPL-0 stack selector is #GP at ring 3. That needs the instruction: a bare Rule cannot tell
      `mov ss` from `mov ds` and answers no.
    - FAR_TRANSFER: int n/int3/into/int1, iret (back to the ring-0 kernel) and the fast system
      calls yes; far jmp/call/ret between the kernel's segments no: they do not trap and the
      CS they push or load carries the real RPL.
    - INNOCUOUS, DIRECT_BRANCH, INDIRECT_BRANCH: no; not sensitive, the same at any ring (an
      instruction that faults for other reasons, such as ud2 or div, is no privilege trap).
    """
    insn = None
    if isinstance(rule_or_insn, Rule):
        rule = rule_or_insn
    elif isinstance(getattr(rule_or_insn, "rule", None), Rule):
        rule, insn = rule_or_insn.rule, rule_or_insn.insn
    else:
        rule, insn = classify(rule_or_insn), rule_or_insn
    if rule.category is Category.PRIVILEGED:
        return True
    if rule.category is Category.FAR_TRANSFER:
        return rule.procedure in _TRAPPING_FAR_TRANSFERS
    if rule.category is Category.SENSITIVE:
        return insn is not None and _loads_ss(insn)
    return False


def _loads_ss(insn) -> bool:
    """mov ss, r/m; pop ss; lss (not `mov r/m, ss`, which reads it)."""
    if insn.id == X.X86_INS_LSS:
        return True
    if insn.id not in (X.X86_INS_MOV, X.X86_INS_POP) or not insn.operands:
        return False
    destination = insn.operands[0]
    return destination.type == X.X86_OP_REG and destination.reg == X.X86_REG_SS


def _modrm_reg(insn) -> int:
    return (insn.modrm >> 3) & 7


def table() -> list[tuple[str, Rule]]:
    """(mnemonic, rule) for every explicitly classified instruction, for documentation and tools."""
    from translator.x86decode import instruction_name
    rows = [(instruction_name(iid), rule) for iid, rule in _BY_ID.items()]
    return sorted(rows, key=lambda row: (row[1].category.value, row[0]))
