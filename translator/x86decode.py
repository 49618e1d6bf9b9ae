"""The ONE Capstone wrapper (as vmm/engine.py is for Unicorn): decode an instruction, 32- or 64-bit, with details; instruction lengths; legacy prefixes; register-number maps.

It lives in translator/ because both sides decode: the translator decodes guest code, and vmm/
decodes faulting instructions, translated code and port I/O. Dependencies run one way (vmm ->
translator, never back), so the one wrapper both can import must sit on the translator's side.
Other modules may import capstone's constants (x86_const); only this one makes a `Cs`."""

from __future__ import annotations

from typing import Iterator, Optional

from capstone import CS_ARCH_X86, CS_MODE_32, CS_MODE_64, Cs
from capstone import x86_const as X

MAX_INSTRUCTION_LENGTH = 15

# Legacy prefixes (SDM vol. 2, 2.1.1), by group: a repeated group means what its last prefix means
# (QEMU's decoder).
LOCK, REPNE, REP = 0xF0, 0xF2, 0xF3
OPERAND_SIZE, ADDRESS_SIZE = 0x66, 0x67
FLAT_SEGMENT_PREFIXES = frozenset({0x2E, 0x36, 0x3E, 0x26})     # cs ss ds es: no-ops in 64-bit mode (bases 0)
SEGMENT_PREFIXES = FLAT_SEGMENT_PREFIXES | {0x64, 0x65}          # and fs gs
PREFIX_GROUPS = {LOCK: 0, REPNE: 1, REP: 1, **dict.fromkeys(SEGMENT_PREFIXES, 2), OPERAND_SIZE: 3, ADDRESS_SIZE: 4}
LEGACY_PREFIXES = frozenset(PREFIX_GROUPS)

# General registers by encoding number (ModRM reg/rm): the 32-, 16- and 8-bit names.
GPR32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
GPR16 = tuple(name[1:] for name in GPR32)
GPR8 = ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh")
# Capstone register id -> encoding number, for every general register of 32-bit code.
REGISTER_NUMBER = {getattr(X, f"X86_REG_{name.upper()}"): number
                   for names in (GPR32, GPR16, GPR8) for number, name in enumerate(names)}
# Register name -> (the 32-bit register holding it, shift, bits).
SUBREGISTERS = {}
for _number, _full in enumerate(GPR32):
    SUBREGISTERS[_full] = (_full, 0, 32)
    SUBREGISTERS[GPR16[_number]] = (_full, 0, 16)
    if _number < 4:
        SUBREGISTERS[GPR8[_number]] = (_full, 0, 8)
        SUBREGISTERS[GPR8[_number + 4]] = (_full, 8, 8)
# Capstone segment-register id -> the segment register's name.
SEGMENT_NAMES = {X.X86_REG_CS: "cs", X.X86_REG_SS: "ss", X.X86_REG_DS: "ds", X.X86_REG_ES: "es",
                 X.X86_REG_FS: "fs", X.X86_REG_GS: "gs"}

_disassemblers: dict[tuple[int, bool, bool], Cs] = {}


def _disassembler(bits: int, detail: bool, skipdata: bool = False) -> Cs:
    """One Capstone instance per configuration, made on first use and kept (making one costs)."""
    key = (bits, detail, skipdata)
    disassembler = _disassemblers.get(key)
    if disassembler is None:
        disassembler = Cs(CS_ARCH_X86, CS_MODE_64 if bits == 64 else CS_MODE_32)
        disassembler.detail = detail
        disassembler.skipdata = skipdata
        _disassemblers[key] = disassembler
    return disassembler


def decode(code: bytes, address: int, bits: int = 32):
    """One instruction (a Capstone CsInsn with operand details), or None if the bytes do not
    decode. bits=64: translated code (binary translation runs the engine in long mode)."""
    return next(_disassembler(bits, True).disasm(code, address, 1), None)


def instruction_length(code: bytes, bits: int = 32) -> Optional[int]:
    """The length of the instruction `code` starts with, or None if it does not decode."""
    for _address, size, _mnemonic, _operands in _disassembler(bits, False).disasm_lite(code, 0, 1):
        return size
    return None


def listing(code: bytes, address: int, bits: int = 64) -> Iterator[tuple[int, int, str, str]]:
    """(address, size, mnemonic, operands) of each instruction, up to bytes that do not decode."""
    return _disassembler(bits, False).disasm_lite(code, address)


def listing_with_data(code: bytes, address: int, bits: int = 64):
    """Every byte accounted for: instructions, and `.byte` lines where nothing decodes (CsInsn
    objects without details)."""
    return _disassembler(bits, False, skipdata=True).disasm(code, address)


def instruction_name(instruction_id: int) -> str:
    """Capstone's mnemonic for an instruction id (X86_INS_*)."""
    return _disassembler(32, False).insn_name(instruction_id)


def split_prefixes(raw: bytes) -> tuple[bytes, bytes]:
    """(legacy prefixes, the rest) of an instruction's bytes."""
    index = 0
    while index < len(raw) and raw[index] in LEGACY_PREFIXES:
        index += 1
    return raw[:index], raw[index:]
