"""The classification table: one case per entry (docs/classification.md lists the same rows)."""

from pathlib import Path

import pytest
from capstone import CS_ARCH_X86, CS_MODE_32, Cs

from translator.classify import Category, Handling, classify, table, traps_when_deprivileged
from translator.decoder import GuestInstruction

C, H = Category, Handling
CASES = [
    # innocuous: copied
    ("01d8", "add eax, ebx", C.INNOCUOUS, H.COPY),
    ("8b4304", "mov eax, [ebx+4]", C.INNOCUOUS, H.COPY),
    ("f3a5", "rep movsd", C.INNOCUOUS, H.COPY),
    ("0fc70d00002000", "cmpxchg8b [0x200000]", C.INNOCUOUS, H.COPY),
    ("0f0b", "ud2 (raises #UD in place)", C.INNOCUOUS, H.COPY),
    ("50", "push eax (a sequence in 64-bit host code, still not sensitive)", C.INNOCUOUS, H.COPY),
    # innocuous, but not in the host's 64-bit mode: the monitor carries them out
    ("6200", "bound (may raise #BR)", C.INNOCUOUS, H.CALLOUT),
    ("6318", "arpl", C.INNOCUOUS, H.CALLOUT),
    ("27", "daa", C.INNOCUOUS, H.CALLOUT),
    ("2f", "das", C.INNOCUOUS, H.CALLOUT),
    ("37", "aaa", C.INNOCUOUS, H.CALLOUT),
    ("3f", "aas", C.INNOCUOUS, H.CALLOUT),
    ("d40a", "aam", C.INNOCUOUS, H.CALLOUT),
    ("d50a", "aad", C.INNOCUOUS, H.CALLOUT),
    ("d6", "salc", C.INNOCUOUS, H.CALLOUT),
    ("50", "push eax", C.INNOCUOUS, H.COPY),
    # direct control flow: exit slots
    ("eb00", "jmp rel8", C.DIRECT_BRANCH, H.CHAIN),
    ("e900000000", "jmp rel32", C.DIRECT_BRANCH, H.CHAIN),
    ("7400", "je rel8", C.DIRECT_BRANCH, H.CHAIN),
    ("0f8500000000", "jne rel32", C.DIRECT_BRANCH, H.CHAIN),
    ("e800000000", "call rel32", C.DIRECT_BRANCH, H.CHAIN),
    ("e200", "loop", C.DIRECT_BRANCH, H.CHAIN),
    ("e100", "loope", C.DIRECT_BRANCH, H.CHAIN),
    ("e000", "loopne", C.DIRECT_BRANCH, H.CHAIN),
    ("e300", "jecxz", C.DIRECT_BRANCH, H.CHAIN),
    ("67e300", "jcxz", C.DIRECT_BRANCH, H.CHAIN),
    # indirect control flow: lookup table
    ("ffe0", "jmp eax", C.INDIRECT_BRANCH, H.LOOKUP),
    ("ff248500101000", "jmp [table+eax*4]", C.INDIRECT_BRANCH, H.LOOKUP),
    ("ffd0", "call eax", C.INDIRECT_BRANCH, H.LOOKUP),
    ("ff13", "call [ebx]", C.INDIRECT_BRANCH, H.LOOKUP),
    ("c3", "ret", C.INDIRECT_BRANCH, H.LOOKUP),
    ("c20800", "ret 8", C.INDIRECT_BRANCH, H.LOOKUP),
    # far control flow: callouts
    ("ea001010000800", "jmp far ptr16:32", C.FAR_TRANSFER, H.CALLOUT),
    ("ff28", "jmp far m16:32", C.FAR_TRANSFER, H.CALLOUT),
    ("9a001010000800", "call far ptr16:32", C.FAR_TRANSFER, H.CALLOUT),
    ("ff18", "call far m16:32", C.FAR_TRANSFER, H.CALLOUT),
    ("cb", "retf", C.FAR_TRANSFER, H.CALLOUT),
    ("ca0400", "retf 4", C.FAR_TRANSFER, H.CALLOUT),
    ("cf", "iretd", C.FAR_TRANSFER, H.CALLOUT),
    ("66cf", "iret", C.FAR_TRANSFER, H.CALLOUT),
    ("cd80", "int 0x80", C.FAR_TRANSFER, H.CALLOUT),
    ("cc", "int3", C.FAR_TRANSFER, H.CALLOUT),
    ("ce", "into", C.FAR_TRANSFER, H.CALLOUT),
    ("f1", "int1", C.FAR_TRANSFER, H.CALLOUT),
    ("0f34", "sysenter", C.FAR_TRANSFER, H.CALLOUT),
    ("0f35", "sysexit", C.FAR_TRANSFER, H.CALLOUT),
    # privileged
    ("f4", "hlt", C.PRIVILEGED, H.CALLOUT),
    ("fa", "cli", C.PRIVILEGED, H.INLINE),
    ("fb", "sti", C.PRIVILEGED, H.INLINE),
    ("0f0110", "lgdt [eax]", C.PRIVILEGED, H.CALLOUT),
    ("0f0118", "lidt [eax]", C.PRIVILEGED, H.CALLOUT),
    ("0f00d0", "lldt ax", C.PRIVILEGED, H.CALLOUT),
    ("0f00d8", "ltr ax", C.PRIVILEGED, H.CALLOUT),
    ("0f0130", "lmsw [eax]", C.PRIVILEGED, H.CALLOUT),
    ("0f06", "clts", C.PRIVILEGED, H.CALLOUT),
    ("0f20c0", "mov eax, cr0", C.PRIVILEGED, H.INLINE),
    ("0f22d8", "mov cr3, eax", C.PRIVILEGED, H.CALLOUT),
    ("0f21c0", "mov eax, dr0", C.PRIVILEGED, H.CALLOUT),
    ("0f23c0", "mov dr0, eax", C.PRIVILEGED, H.CALLOUT),
    ("0f0138", "invlpg [eax]", C.PRIVILEGED, H.CALLOUT),
    ("0f09", "wbinvd", C.PRIVILEGED, H.CALLOUT),
    ("0f08", "invd", C.PRIVILEGED, H.CALLOUT),
    ("0f32", "rdmsr", C.PRIVILEGED, H.CALLOUT),
    ("0f30", "wrmsr", C.PRIVILEGED, H.CALLOUT),
    ("0f33", "rdpmc", C.PRIVILEGED, H.CALLOUT),
    ("e460", "in al, 0x60", C.PRIVILEGED, H.IO_HOOK),
    ("ec", "in al, dx", C.PRIVILEGED, H.IO_HOOK),
    ("e680", "out 0x80, al", C.PRIVILEGED, H.IO_HOOK),
    ("ef", "out dx, eax", C.PRIVILEGED, H.IO_HOOK),
    ("f36c", "rep insb", C.PRIVILEGED, H.IO_HOOK),
    ("6f", "outsd", C.PRIVILEGED, H.IO_HOOK),
    # sensitive but unprivileged: the 386's virtualization holes
    ("9c", "pushfd", C.SENSITIVE, H.INLINE),
    ("669c", "pushf", C.SENSITIVE, H.INLINE),
    ("9d", "popfd", C.SENSITIVE, H.INLINE),
    ("669d", "popf", C.SENSITIVE, H.INLINE),
    ("0f0100", "sgdt [eax]", C.SENSITIVE, H.INLINE),
    ("0f0108", "sidt [eax]", C.SENSITIVE, H.INLINE),
    ("0f00c0", "sldt eax", C.SENSITIVE, H.INLINE),
    ("0f00c8", "str eax", C.SENSITIVE, H.INLINE),
    ("0f01e0", "smsw eax", C.SENSITIVE, H.INLINE),
    ("8cc8", "mov eax, cs", C.SENSITIVE, H.INLINE),
    ("8c18", "mov [eax], ds", C.SENSITIVE, H.INLINE),
    ("0e", "push cs", C.SENSITIVE, H.INLINE),
    ("16", "push ss", C.SENSITIVE, H.INLINE),
    ("0fa0", "push fs", C.SENSITIVE, H.INLINE),
    ("8ed8", "mov ds, eax", C.SENSITIVE, H.CALLOUT),
    ("1f", "pop ds", C.SENSITIVE, H.CALLOUT),
    ("17", "pop ss", C.SENSITIVE, H.CALLOUT),
    ("0fa9", "pop gs", C.SENSITIVE, H.CALLOUT),
    ("c500", "lds", C.SENSITIVE, H.CALLOUT),
    ("c400", "les", C.SENSITIVE, H.CALLOUT),
    ("0fb200", "lss", C.SENSITIVE, H.CALLOUT),
    ("0fb400", "lfs", C.SENSITIVE, H.CALLOUT),
    ("0fb500", "lgs", C.SENSITIVE, H.CALLOUT),
    ("0f0200", "lar", C.SENSITIVE, H.CALLOUT),
    ("0f0300", "lsl", C.SENSITIVE, H.CALLOUT),
    ("0f00e0", "verr", C.SENSITIVE, H.CALLOUT),
    ("0f00e8", "verw", C.SENSITIVE, H.CALLOUT),
    ("0fa2", "cpuid", C.SENSITIVE, H.CALLOUT),
    ("0f31", "rdtsc", C.SENSITIVE, H.INLINE),
    ("0f01f9", "rdtscp", C.SENSITIVE, H.CALLOUT),
]

_capstone = Cs(CS_ARCH_X86, CS_MODE_32)
_capstone.detail = True


@pytest.mark.parametrize("code, text, category, handling", CASES, ids=[case[1] for case in CASES])
def test_classification(code, text, category, handling):
    insn = next(_capstone.disasm(bytes.fromhex(code), 0x100000, 1))
    rule = classify(insn)
    assert (rule.category, rule.handling) == (category, handling)
    assert rule.ends_block == (handling in (H.CHAIN, H.LOOKUP, H.CALLOUT))


# Table rows covered by a sibling case above (same rule, another condition code or width).
_SIBLINGS = {"ja", "jae", "jb", "jbe", "jg", "jge", "jl", "jle", "jno", "jnp", "jns", "jo", "jp", "js",
             "insw", "insd", "outsb", "outsw", "syscall", "sysret"}


def test_every_explicit_table_entry_has_a_case():
    covered = {_capstone.insn_name(next(_capstone.disasm(bytes.fromhex(code), 0, 1)).id) for code, *_ in CASES}
    missing = {name for name, _rule in table()} - covered - _SIBLINGS
    assert not missing


def test_documentation_lists_every_table_row():
    text = (Path(__file__).resolve().parent.parent / "docs" / "classification.md").read_text()
    for name, rule in table():
        assert f"| `{name}` | {rule.category.value} | {rule.handling.value} | {rule.procedure} |" in text, name


# traps_when_deprivileged: does the instruction trap when a ring-0 kernel runs at ring 3? One case per
# category (and per kind where the answer differs within a category). The last field is the answer
# from the bare Rule, which cannot tell a load of SS from one of DS.
TRAP_CASES = [
    ("01d8", "add eax, ebx", C.INNOCUOUS, False, False),
    ("0f0b", "ud2 (faults, but no privilege trap)", C.INNOCUOUS, False, False),
    ("e900000000", "jmp rel32", C.DIRECT_BRANCH, False, False),
    ("e800000000", "call rel32", C.DIRECT_BRANCH, False, False),
    ("c3", "ret", C.INDIRECT_BRANCH, False, False),
    ("ffd0", "call eax", C.INDIRECT_BRANCH, False, False),
    ("cd80", "int 0x80: through the IDT to the monitor", C.FAR_TRANSFER, True, True),
    ("cc", "int3", C.FAR_TRANSFER, True, True),
    ("cf", "iretd to the ring-0 kernel: #GP", C.FAR_TRANSFER, True, True),
    ("0f34", "sysenter", C.FAR_TRANSFER, True, True),
    ("ea001010000800", "jmp far ptr16:32: no trap, the RPL leaks", C.FAR_TRANSFER, False, False),
    ("9a001010000800", "call far ptr16:32", C.FAR_TRANSFER, False, False),
    ("ff18", "call far m16:32", C.FAR_TRANSFER, False, False),
    ("cb", "retf", C.FAR_TRANSFER, False, False),
    ("0f0110", "lgdt [eax]", C.PRIVILEGED, True, True),
    ("0f22c0", "mov cr0, eax", C.PRIVILEGED, True, True),
    ("0f20c0", "mov eax, cr0", C.PRIVILEGED, True, True),
    ("fa", "cli (IOPL 0)", C.PRIVILEGED, True, True),
    ("ec", "in al, dx (IOPL 0)", C.PRIVILEGED, True, True),
    ("f4", "hlt", C.PRIVILEGED, True, True),
    ("9c", "pushfd: a hole", C.SENSITIVE, False, False),
    ("9d", "popfd: a hole", C.SENSITIVE, False, False),
    ("0f0100", "sgdt [eax]: a hole", C.SENSITIVE, False, False),
    ("8cc8", "mov eax, cs: a hole", C.SENSITIVE, False, False),
    ("0e", "push cs: a hole", C.SENSITIVE, False, False),
    ("0f0200", "lar: a hole", C.SENSITIVE, False, False),
    ("8ed8", "mov ds, eax: a hole (compressed descriptors load)", C.SENSITIVE, False, False),
    ("c400", "les: a hole", C.SENSITIVE, False, False),
    ("8cd0", "mov eax, ss: a hole (reads it)", C.SENSITIVE, False, False),
    ("8c10", "mov [eax], ss: a hole (stores it)", C.SENSITIVE, False, False),
    ("16", "push ss: a hole", C.SENSITIVE, False, False),
    ("8ed0", "mov ss, eax: RPL 0 != CPL 3, #GP", C.SENSITIVE, True, False),
    ("17", "pop ss: #GP", C.SENSITIVE, True, False),
    ("0fb200", "lss: #GP", C.SENSITIVE, True, False),
]


@pytest.mark.parametrize("code, text, category, traps, rule_alone", TRAP_CASES, ids=[case[1] for case in TRAP_CASES])
def test_traps_when_deprivileged(code, text, category, traps, rule_alone):
    insn = next(_capstone.disasm(bytes.fromhex(code), 0x100000, 1))
    rule = classify(insn)
    assert rule.category is category
    # the same answer from the Capstone instruction and a decoded GuestInstruction
    assert traps_when_deprivileged(insn) is traps
    assert traps_when_deprivileged(GuestInstruction(insn, rule)) is traps
    assert traps_when_deprivileged(rule) is rule_alone


def test_trap_cases_cover_every_category():
    assert {case[2] for case in TRAP_CASES} == set(Category)


def test_every_sensitive_unprivileged_rule_is_a_hole_and_every_privileged_one_traps():
    for name, rule in table():
        if rule.category is C.SENSITIVE:
            assert not traps_when_deprivileged(rule), name
        if rule.category is C.PRIVILEGED:
            assert traps_when_deprivileged(rule), name


def test_mov_is_classified_by_opcode_as_its_register_operands_say():
    """classify() tells a mov of a control or debug register by its opcode (0F 20-23), without
    parsing operands: for every ModRM byte of every mov opcode (and the 0F 24-27 neighbours)
    the rule is the one the operands' registers give (the rule before the shortcut)."""
    from capstone import x86_const as X
    from translator.x86decode import decode
    control = {getattr(X, f"X86_REG_CR{n}") for n in range(16)}
    debug = {getattr(X, f"X86_REG_DR{n}") for n in range(16)}
    checked = 0
    for opcode in [bytes([0x0F, second]) for second in range(0x20, 0x28)] + \
            [bytes([first]) for first in (0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x8E, 0xC6, 0xC7)]:
        for modrm in range(256):
            insn = decode(opcode + bytes([modrm]) + b"\x78\x56\x34\x12\x01\x02\x03\x04", 0x1000)
            if insn is None or insn.id != X.X86_INS_MOV:
                continue
            registers = {op.reg for op in insn.operands if op.type == X.X86_OP_REG}
            rule = classify(insn)
            if registers & control:
                assert rule.procedure.value == ("read_control_register" if opcode == b"\x0F\x20"
                                                else "write_control_register"), insn
            elif registers & debug:
                assert rule.procedure.value == "debug_register", insn
            elif opcode in (b"\x8C", b"\x8E"):
                assert rule.procedure.value == ("read_segment_register" if opcode == b"\x8C"
                                                else "load_segment_register"), insn
            else:
                assert rule.handling is Handling.COPY, insn
            checked += 1
    assert checked > 2400
