"""The exact linear address of a refused access, for CR2: the engine's virtual TLB reports only
the page, so the address is worked out from the instruction and the registers it ran with."""

from __future__ import annotations

from typing import Callable

from capstone import CS_AC_READ, CS_AC_WRITE, CS_ARCH_X86, CS_MODE_32, Cs
from capstone import x86_const as X

PAGE_SIZE = 4096
_STACK_BASES = (X.X86_REG_ESP, X.X86_REG_EBP, X.X86_REG_SP, X.X86_REG_BP)
_SEGMENTS = {X.X86_REG_CS: "cs", X.X86_REG_SS: "ss", X.X86_REG_DS: "ds", X.X86_REG_ES: "es",
             X.X86_REG_FS: "fs", X.X86_REG_GS: "gs"}
_PUSHES = {"push": None, "pushfd": 4, "pushf": 2, "pushal": 32, "pushad": 32, "pushaw": 16, "pusha": 16,
           "call": 4, "enter": 4}
_POPS = {"pop": None, "popfd": 4, "popf": 2, "popal": 32, "popad": 32, "popaw": 16, "popa": 16,
         "ret": 4, "retf": 8, "iretd": 12, "iret": 6}


_capstone = None


def decode(code: bytes, address: int):
    """One instruction with operand details, or None."""
    global _capstone
    if _capstone is None:
        _capstone = Cs(CS_ARCH_X86, CS_MODE_32)
        _capstone.detail = True
    return next(_capstone.disasm(code, address, 1), None)


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
            linear = (segment_base(segment) + address) & 0xFFFFFFFF
            access = op.access or (CS_AC_READ | CS_AC_WRITE)
            found.append((linear, op.size, bool(access & CS_AC_READ), bool(access & CS_AC_WRITE)))
    mnemonic = insn.mnemonic.split()[-1]
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
