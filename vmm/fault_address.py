"""What a faulting instruction accessed, worked out from its bytes and the registers it ran with:
the exact linear address of a refused access, for CR2 (the engine's virtual TLB reports only the
page), and the size and value of a plain store, which the monitor can carry out itself."""

from __future__ import annotations

import functools
from typing import Callable

from capstone import CS_AC_READ, CS_AC_WRITE
from capstone import x86_const as X

from translator.x86decode import SEGMENT_NAMES as _SEGMENTS
from translator.x86decode import SUBREGISTERS as _SUB_REGISTERS
from translator.x86decode import decode
from vmm.x86 import PAGE_SIZE

_STACK_BASES = (X.X86_REG_ESP, X.X86_REG_EBP, X.X86_REG_SP, X.X86_REG_BP)
_PUSHES = {"push": None, "pushfd": 4, "pushf": 2, "pushal": 32, "pushad": 32, "pushaw": 16, "pusha": 16,
           "call": 4, "enter": 4}
_POPS = {"pop": None, "popfd": 4, "popf": 2, "popal": 32, "popad": 32, "popaw": 16, "popa": 16,
         "ret": 4, "retf": 8, "iretd": 12, "iret": 6}


def _accesses(insn, reg: Callable[[str], int], segment_base: Callable[[str], int]) -> list[tuple[int, int, bool, bool]]:
    """(linear, size, read, write) of the memory the instruction touches."""
    found = []
    if insn.mnemonic != "lea":
        for op in insn.operands:
            if op.type != X.X86_OP_MEM:
                continue
            mem = op.mem
            address = mem.disp
            if mem.base:
                address += reg(insn.reg_name(mem.base))
            if mem.index:
                address += reg(insn.reg_name(mem.index)) * mem.scale
            segment = _SEGMENTS.get(mem.segment) or ("ss" if mem.base in _STACK_BASES else "ds")
            linear = (segment_base(segment) + (address & 0xFFFFFFFF)) & 0xFFFFFFFF
            access = op.access or (CS_AC_READ | CS_AC_WRITE)
            found.append((linear, op.size, bool(access & CS_AC_READ), bool(access & CS_AC_WRITE)))
    mnemonic = insn.mnemonic.split()[-1]
    if mnemonic.startswith("xlat"):        # [ebx + al]: Capstone shows no operand (64-bit) or the base only
        found = [((segment_base("ds") + reg("ebx") + (reg("eax") & 0xFF)) & 0xFFFFFFFF, 1, True, False)]
    stack = (segment_base("ss") + reg("esp")) & 0xFFFFFFFF
    if mnemonic in _PUSHES:
        size = _PUSHES[mnemonic] or (insn.operands[0].size if insn.operands else 4)
        found.append(((stack - size) & 0xFFFFFFFF, size, False, True))
    elif mnemonic in _POPS:
        size = _POPS[mnemonic] or (insn.operands[0].size if insn.operands else 4)
        found.append((stack, size, True, False))
    elif mnemonic == "leave":
        found.append(((segment_base("ss") + reg("ebp")) & 0xFFFFFFFF, 4, True, False))
    return found


def fault_address(insn, page: int, write: bool, reg: Callable[[str], int],
                  segment_base: Callable[[str], int]) -> int:
    """Where in `page` (its linear address) the instruction's refused read or write went: its
    first byte there (an access that starts on the page before reports the page's start)."""
    for linear, size, reads, writes in _accesses(insn, reg, segment_base):
        if (writes if write else reads) or (reads and writes):
            end = linear + max(size, 1)
            if linear < page + PAGE_SIZE and page < end:
                return max(linear, page)
            if end > 1 << 32 and page < end - (1 << 32):        # wraps around 4 GiB into page 0
                return page
    return page


@functools.lru_cache(maxsize=1024)
def store_recipe(code: bytes, bits: int = 32):
    """For code starting with `mov m, r` or `mov m, imm` (no prefix but a segment or operand-size
    override, and in 64-bit code the address-size one every guest access has), a store whose
    whole effect is the bytes written: (instruction length, store size, register or None,
    shift, immediate). None for anything else. Cached by the bytes: the same page-table write
    faults again and again."""
    insn = decode(code, 0, bits)
    if insn is None or insn.mnemonic != "mov" or len(insn.operands) != 2 or insn.prefix[0] \
            or (insn.prefix[3] and bits == 32) or (bits == 64 and insn.rex):
        return None
    destination, source = insn.operands
    if destination.type != X.X86_OP_MEM or destination.size not in (1, 2, 4):
        return None
    if source.type == X.X86_OP_IMM:
        return insn.size, destination.size, None, 0, source.imm
    if source.type == X.X86_OP_REG and insn.reg_name(source.reg) in _SUB_REGISTERS:
        full, shift, _bits = _SUB_REGISTERS[insn.reg_name(source.reg)]
        return insn.size, destination.size, full, shift, 0
    return None


def plain_store(code: bytes, reg: Callable[[str], int], bits: int = 32):
    """(instruction length, store size, value) of a plain store (see store_recipe), or None."""
    recipe = store_recipe(bytes(code[:16]), bits)
    if recipe is None:
        return None
    length, size, register, shift, immediate = recipe
    value = (reg(register) >> shift) if register is not None else immediate
    return length, size, value & ((1 << (8 * size)) - 1)
