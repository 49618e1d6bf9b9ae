"""Guest instructions as x86-64 host code: the same operation on the same 32-bit state, with every
memory access confined to the guest's 4 GiB by 32-bit addressing (docs/isolation.md).

Translated code runs in the engine's 64-bit mode; the guest's eight registers are the low halves
of rax..rdi (their upper halves stay zero: every 32-bit operation zero-extends them, 8- and
16-bit ones keep them) and r8-r15 belong to the monitor, which guest code cannot name (it has no
REX prefix: 0x40-0x4F are inc/dec in 32-bit code and are re-encoded here). Every guest memory
operand gets the address-size prefix 0x67, so its effective address is computed in 32 bits and
zero-extended, as in the guest: a guest access reaches linear [0, 4 GiB), or [0, 8 GiB) through
an FS or GS base near the top (the monitor maps 4-8 GiB as an alias of 0-4 GiB, which is the
32-bit wrap), and never the monitor's memory far above. The invariants the copied form relies on:
the operand's DS, ES, SS or CS has base 0 (64-bit mode ignores their bases: an operand through a
based one is not copied as it is, translator/emitter.py adds the base) and the guest's registers
have zero upper halves.

What cannot be copied this way raises NeedsEmulation with the reason: instructions that do not
exist in 64-bit mode, those whose operand size is 64 bits there (the stack: push, pop, call,
ret, enter, leave, pushf, popf), 16-bit addressing (0x67 in 32-bit code), stack-segment loads
(64-bit mode lets CPL < 3 load a null SS), and control transfers (the translator makes those).
"""

from __future__ import annotations

from capstone import x86_const as X

from translator.x86decode import ADDRESS_SIZE, MAX_INSTRUCTION_LENGTH, split_prefixes

# One-byte opcodes that are invalid (or mean something else) in 64-bit mode: push/pop of ES, CS,
# SS, DS; the BCD adjustments; pusha/popa; bound (EVEX there); arpl (movsxd there); far call and
# jump with an immediate pointer; les/lds (VEX there); into; aam/aad; salc.
_NOT_IN_64_BIT = frozenset({0x06, 0x07, 0x0E, 0x16, 0x17, 0x1E, 0x1F, 0x27, 0x2F, 0x37, 0x3F,
                            0x60, 0x61, 0x62, 0x63, 0x9A, 0xC4, 0xC5, 0xCE, 0xD4, 0xD5, 0xD6, 0xEA})
# One-byte opcodes whose stack accesses are 64 bits wide in 64-bit mode.
_STACK = frozenset(range(0x50, 0x60)) | {0x68, 0x6A, 0x8F, 0x9C, 0x9D, 0xC2, 0xC3, 0xC8, 0xC9,
                                          0xCA, 0xCB, 0xCF, 0xE8}
_BRANCHES = frozenset(range(0x70, 0x80)) | {0xE0, 0xE1, 0xE2, 0xE3, 0xE9, 0xEB}
# Instructions whose memory operand is implicit (no ModRM): movs/cmps/stos/lods/scas, ins/outs,
# xlat, and mov with a 32-bit offset (moffs, which 0x67 keeps at 4 bytes in 64-bit mode).
_IMPLICIT_MEMORY = frozenset({0xA4, 0xA5, 0xA6, 0xA7, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF,
                              0x6C, 0x6D, 0x6E, 0x6F, 0xD7, 0xA0, 0xA1, 0xA2, 0xA3})
# Two-byte (0F xx) opcodes: push/pop FS and GS; near jcc; lss.
_STACK_0F = frozenset({0xA0, 0xA1, 0xA8, 0xA9})
_BRANCHES_0F = frozenset(range(0x80, 0x90))
_LSS = 0xB2
_MOV_TO_SEGMENT = 0x8E
_SS = 2
# FF /r: inc, dec, call, call far, jmp, jmp far, push (only /0 and /1 are copied)
_FF_COPIED = frozenset({0, 1})
# Ones that store the x87 instruction pointer, which the engine sets to the HOST address of the
# code running (a monitor address the guest must not see): fnstenv/fnsave/fxsave/xsave*.
_STORES_FPU_POINTER = frozenset({X.X86_INS_FNSTENV, X.X86_INS_FNSAVE, X.X86_INS_FXSAVE,
                                 X.X86_INS_XSAVE, X.X86_INS_XSAVEOPT, X.X86_INS_XSAVEC,
                                 X.X86_INS_XSAVES})


class NeedsEmulation(Exception):
    """The instruction cannot run as a copy in 64-bit mode; the translator emits it otherwise."""


def absolute_form(modrm: int) -> bytes:
    """The ModRM byte (and SIB) that keep a 32-bit instruction's memory operand meaning the same
    in 64-bit mode: [disp32] (mod 00, r/m 101) is RIP-relative there, so it becomes a SIB with no
    base and no index (absolute); every other form stays as it is."""
    if modrm >> 6 == 0 and modrm & 7 == 5:
        return bytes([(modrm & 0xF8) | 4, 0x25])
    return bytes([modrm])


def relocate(insn, *, keeps_fpu_pointer: bool = False) -> bytes:
    """The 64-bit host bytes of a 32-bit guest instruction (a Capstone instruction in detail
    mode), or NeedsEmulation. keeps_fpu_pointer: the caller replaces the x87 instruction pointer
    that fnstenv/fnsave/fxsave/xsave* store (the engine's is a host address)."""
    raw = bytes(insn.bytes)
    prefixes, body = split_prefixes(raw)
    opcode = body[0]
    if ADDRESS_SIZE in prefixes:
        raise NeedsEmulation("16-bit addressing")
    if opcode == 0x0F:
        second = body[1]
        if second in _STACK_0F:
            raise NeedsEmulation("a 64-bit stack access in 64-bit mode")
        if second in _BRANCHES_0F:
            raise NeedsEmulation("a control transfer")
        if second == _LSS:
            raise NeedsEmulation("a stack-segment load")
    else:
        if opcode in _NOT_IN_64_BIT:
            raise NeedsEmulation("not an instruction in 64-bit mode")
        if opcode in _STACK:
            raise NeedsEmulation("a 64-bit stack access in 64-bit mode")
        if opcode in _BRANCHES:
            raise NeedsEmulation("a control transfer")
        if opcode == 0xFF and (body[1] >> 3) & 7 not in _FF_COPIED:
            raise NeedsEmulation("a control transfer or a 64-bit stack access in 64-bit mode")
        if opcode == _MOV_TO_SEGMENT and (body[1] >> 3) & 7 == _SS:
            raise NeedsEmulation("a stack-segment load")
        if 0x40 <= opcode <= 0x4F:       # inc/dec r32: REX prefixes in 64-bit mode
            return prefixes + bytes([0xFF, (0xC8 if opcode >= 0x48 else 0xC0) | (opcode & 7)])
        if opcode == 0x82:               # an alias of 0x80 that 64-bit mode lacks
            body = b"\x80" + body[1:]
    if insn.id in _STORES_FPU_POINTER and not keeps_fpu_pointer:
        raise NeedsEmulation("stores the x87 instruction pointer")
    if _has_modrm_memory(insn, prefixes):
        at = insn.modrm_offset - len(prefixes)
        body = body[:at] + absolute_form(body[at]) + body[at + 1:]
        host = bytes([ADDRESS_SIZE]) + prefixes + body
    elif body[0] in _IMPLICIT_MEMORY:
        host = bytes([ADDRESS_SIZE]) + prefixes + body
    else:
        host = prefixes + body
    if len(host) > MAX_INSTRUCTION_LENGTH:
        raise NeedsEmulation("longer than 15 bytes once relocated")
    return host


def _has_modrm_memory(insn, prefixes: bytes) -> bool:
    offset = insn.modrm_offset
    if offset == 0 or offset < len(prefixes):
        return False
    return insn.modrm >> 6 != 3
