"""translator/x64.py against the engine itself: each guest instruction runs once as 32-bit code
(the engine in 32-bit mode) and once relocated as 64-bit code (the engine in long mode, the code
far above 4 GiB, r8-r15 full of garbage), from the same registers and memory; both must end in
the same registers, flags, memory and exception. And the isolation property the relocation exists
for: no relocated access reaches memory above 4 GiB, whatever the registers say."""

from __future__ import annotations

import random
import struct

import pytest
from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, UC_MODE_64, Uc, UcError
from unicorn import x86_const as U

from translator.x64 import NeedsEmulation, relocate
from vmm.loaders.assembly import new_assembler

RAM = 0x400000
DATA, DATA_SIZE = 0x10000, 0x20000
CODE32 = 0x1000
MONITOR_PHYSICAL = 0x100000000          # the monitor's memory: above 4 GiB, physical and linear
MONITOR_LINEAR = 0x7F0000000000
CODE64 = MONITOR_LINEAR + 0x1000
GPRS = ("EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI")
FLAGS = 0x8D5 | 0x400                   # CF PF AF ZF SF OF, and DF

_ks = new_assembler()        # not a bare Ks: its radix may be hex (vmm/loaders/assembly.py)
_cs = Cs(CS_ARCH_X86, CS_MODE_32)
_cs.detail = True


def _decode(text: str, address: int = CODE32):
    code = bytes(_ks.asm(text, address)[0])
    return next(_cs.disasm(code, address))


def _long_mode_engine() -> Uc:
    """Long mode, 4-level tables: 0-4 GiB identity (2 MiB pages) with 4-8 GiB an alias of it
    (the 32-bit wrap of an FS/GS base plus offset), and the monitor's 2 MiB at MONITOR_LINEAR."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, RAM)
    uc.mem_map(MONITOR_PHYSICAL, 0x200000)
    pml4, pdpt, pd, monitor_pdpt, monitor_pd = (MONITOR_PHYSICAL + 0x100000 + 0x1000 * i for i in range(5))

    def entry(address, value):
        uc.mem_write(address, struct.pack("<Q", value))
    entry(pml4, pdpt | 7)
    entry(pml4 + 8 * ((MONITOR_LINEAR >> 39) & 511), monitor_pdpt | 7)
    for gib in range(8):
        entry(pdpt + 8 * gib, pd | 7)        # every GiB of 0-8 GiB onto the same directory:
    for index in range(RAM >> 21):           # only the machine's RAM is present
        entry(pd + 8 * index, (index << 21) | 0x87)
    entry(monitor_pdpt, monitor_pd | 7)
    entry(monitor_pd, MONITOR_PHYSICAL | 0x87)
    uc.reg_write(U.UC_X86_REG_CR3, pml4)
    uc.reg_write(U.UC_X86_REG_CR4, 0x620)    # PAE, OSFXSR, OSXMMEXCPT
    uc.reg_write(U.UC_X86_REG_CR0, 0x80000033)
    return uc


GDT = 0x800


def _descriptor(base: int, access: int) -> bytes:
    return struct.pack("<HHBBBB", 0xFFFF, base & 0xFFFF, (base >> 16) & 0xFF, access, 0xCF, base >> 24)


def _flat_engine(fs_base: int) -> Uc:
    """Protected mode, flat code and data, FS based at fs_base (selector 0x18)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, RAM)
    uc.mem_write(GDT, bytes(8) + _descriptor(0, 0x9A) + _descriptor(0, 0x92) + _descriptor(fs_base, 0x92))
    uc.reg_write(U.UC_X86_REG_GDTR, (0, GDT, 0x1F, 0))
    uc.reg_write(U.UC_X86_REG_CR4, 0x600)
    uc.reg_write(U.UC_X86_REG_CR0, 0x33)
    uc.reg_write(U.UC_X86_REG_FS, 0x18)
    return uc


def _run(uc: Uc, code_address: int, code: bytes, registers: dict, data: bytes, fs_base: int,
         count: int = 1) -> dict:
    uc.mem_write(DATA, data)
    uc.mem_write(code_address if code_address < RAM else code_address - MONITOR_LINEAR + MONITOR_PHYSICAL,
                 code + b"\xF4")
    for name, value in registers.items():
        uc.reg_write(getattr(U, f"UC_X86_REG_{name}"), value)
    if uc.ctl_get_mode() == UC_MODE_64:
        uc.reg_write(U.UC_X86_REG_FS_BASE, fs_base)
    exceptions = []

    def on_interrupt(uc, vector, _data):
        exceptions.append(vector)
        uc.emu_stop()
    hook = uc.hook_add(UC_HOOK_INTR, on_interrupt)
    error = None
    try:
        uc.emu_start(code_address, code_address + len(code) + 1, count=count + 1)
    except UcError as caught:
        error = str(caught)
    uc.hook_del(hook)
    state = {name: uc.reg_read(getattr(U, f"UC_X86_REG_{name}")) & 0xFFFFFFFF for name in GPRS}
    state["EFLAGS"] = uc.reg_read(U.UC_X86_REG_EFLAGS) & FLAGS
    state["memory"] = bytes(uc.mem_read(DATA, DATA_SIZE))
    # An access outside the machine's memory is a page fault with paging (long mode) and an
    # unmapped access without (the 32-bit reference): the same event here.
    outside = "no memory" if exceptions[:1] == [14] or (error and "UNMAPPED" in error) else None
    state["exception"] = outside or exceptions[:1] or error
    return state


def _compare(text: str, seed: int = 1) -> None:
    """`text`: one instruction, or several lines run in a row (set-up first)."""
    insns = [_decode(line) for line in text.split("\n")]
    guest = b"".join(bytes(insn.bytes) for insn in insns)
    host = b"".join(relocate(insn) for insn in insns)
    rng = random.Random(f"{text}:{seed}")
    registers = {name: DATA + rng.randrange(0x4000, DATA_SIZE - 0x4000) for name in GPRS}
    registers["ECX"] = rng.randrange(0, 9)                  # rep counts, shift counts
    registers["EAX"] = rng.getrandbits(32)
    registers["EDX"] = rng.choice((rng.getrandbits(32), rng.randrange(1, 64)))
    registers["EFLAGS"] = 0x2 | rng.getrandbits(12) & 0x8D5
    data = rng.randbytes(DATA_SIZE)
    fs_base = DATA
    reference = _run(_flat_engine(fs_base), CODE32, guest, registers, data, fs_base, len(insns))
    long_mode = _long_mode_engine()
    for number in range(8, 16):                             # the monitor's registers: garbage
        long_mode.reg_write(getattr(U, f"UC_X86_REG_R{number}"), rng.getrandbits(64))
    relocated = _run(long_mode, CODE64, host, registers, data, fs_base, len(insns))
    for key in reference:
        if key == "memory":
            assert relocated[key] == reference[key], f"{text}: memory differs"
        else:
            assert relocated[key] == reference[key], f"{text}: {key} {relocated[key]} != {reference[key]}"


COPIED = [
    # ALU, register and memory forms, every size
    "add eax, ebx", "sub dword ptr [ebx + 8], ecx", "adc al, byte ptr [esi]", "sbb word ptr [edi - 2], 0x1234",
    "and ecx, dword ptr [ebx + esi*4 + 0x10]", "or byte ptr [ebp], 0x80", "xor edx, dword ptr [esp + 4]",
    "cmp dword ptr [eax*2 + 0x18000], 5", "test byte ptr [ebx], 3", "neg dword ptr [esi]", "not ax",
    "lock add dword ptr [ebx], eax", "lock xadd dword ptr [esi], ecx", "xchg dword ptr [edi], edx",
    "lock cmpxchg dword ptr [ebx], ecx", "cmpxchg8b qword ptr [esi]",
    # the absolute [disp32] form, RIP-relative in 64-bit mode unless re-encoded
    "mov eax, dword ptr [0x18000]", "mov dword ptr [0x18004], 0x11223344", "add byte ptr [0x18008], 7",
    "mov eax, dword ptr [ebx*4 + 0x10000]",
    # moffs, string instructions, xlat
    ".byte 0xa1, 0x00, 0x80, 0x01, 0x00", ".byte 0xa3, 0x10, 0x80, 0x01, 0x00",
    ".byte 0xf3, 0xa5", "rep movsb", "rep stosd", "lodsw", "repe cmpsb", "repne scasd", "xlatb", "std\n.byte 0xa5",
    # inc/dec short forms (REX prefixes in 64-bit mode) and the 0x82 alias
    "inc eax", "dec edi", "inc si", "dec esp", ".byte 0x82, 0xc0, 0x05", ".byte 0x82, 0x03, 0x7f",
    # shifts, multiply, divide, bits
    "shl dword ptr [ebx], cl", "rcr eax, 3", "shld dword ptr [esi], edx, 5", "imul ecx, dword ptr [edi], 7",
    "mul dword ptr [ebx]", "div ecx", "idiv byte ptr [esi]", "bt dword ptr [ebx], ecx", "bts dword ptr [esi], 35",
    "bsf eax, dword ptr [edi]", "bswap ecx", "setne byte ptr [ebx + 1]", "cmovl eax, dword ptr [esi]",
    "movzx eax, byte ptr [ebx]", "movsx ecx, word ptr [esi + 2]", "lea eax, [ebx + ecx*8 + 0x7fffffff]",
    "lea esi, [0x1234]", "lea eax, [esi + edi]",
    # segment overrides: FS has a base; DS/ES/SS are flat
    "mov eax, dword ptr fs:[ebx]", "add dword ptr fs:[0x100], ecx", "mov ecx, dword ptr ds:[esi]",
    "mov edx, dword ptr ss:[ebp + 4]", "mov dword ptr es:[edi], eax",
    # flags, x87, SSE
    "lahf", "sahf", "cmc", "cld", "std", "fld dword ptr [ebx]", "fistp dword ptr [esi]", "fnstsw ax",
    "movups xmm1, xmmword ptr [esi]", "movd dword ptr [edi], xmm1", "paddd xmm0, xmmword ptr [ebx]",
    "fxrstor [ebx]",
    # faults: #DE, #UD
    "mov ecx, 0\ndiv ecx", "ud2",
]


@pytest.mark.parametrize("text", COPIED)
def test_relocated_instruction_does_what_the_guest_instruction_does(text):
    for seed in range(3):
        _compare(text, seed)


@pytest.mark.parametrize("text", [
    "push eax", "pop ebx", "push 5", "push dword ptr [ebx]", "pop dword ptr [esi]", "pushfd", "popfd",
    "pushal", "popal", "call 0x2000", "ret", "ret 8", "leave", "enter 8, 0", "jmp eax", "call dword ptr [ebx]",
    "jne 0x1100", "loop 0x1010", "jecxz 0x1010", "daa", "aam", "into", "bound eax, qword ptr [ebx]",
    ".byte 0xc4, 0x03", "arpl word ptr [ebx], ax", "push es", "pop ds", "push fs", "pop gs",
    "mov ss, ax", ".byte 0x0f, 0xb2, 0x23", "mov ax, word ptr [bx + si]", "fnstenv [ebx]", "fxsave [ebx]",
])
def test_what_cannot_be_copied_says_why(text):
    with pytest.raises(NeedsEmulation):
        relocate(_decode(text))


@pytest.mark.parametrize("text", ["mov eax, dword ptr [ebx + esi*4 + 0x10]", ".byte 0xf3, 0xa5", "xlatb",
                                  "mov dword ptr fs:[ebx], eax", "cmpxchg8b qword ptr [esi]",
                                  ".byte 0xa1, 0x00, 0x00, 0x00, 0xff"])
def test_no_register_value_reaches_the_monitor(text):
    # The isolation property itself: with every guest register aimed at the top of the 32-bit
    # space (where a 32-bit monitor lives) and FS based there, the relocated access faults in the
    # unmapped part of the guest's 4 GiB and never touches the monitor's memory above 4 GiB.
    insn = _decode(text)
    uc = _long_mode_engine()
    marker = b"MONITOR!" * 512
    uc.mem_write(MONITOR_PHYSICAL + 0x8000, marker)
    registers = {name: 0xFFFFF000 for name in GPRS}
    registers["ECX"] = 4
    state = _run(uc, CODE64, relocate(insn), registers, bytes(DATA_SIZE), 0xFFFFFFF0)
    assert state["exception"], "the access went somewhere that exists"
    assert bytes(uc.mem_read(MONITOR_PHYSICAL + 0x8000, len(marker))) == marker
    assert all(state[name] == registers[name] for name in ("EBX", "ESI", "EDI"))
