"""The ONE Capstone wrapper (as vmm/engine.py is for Unicorn): decode an instruction, 32- or 64-bit, with details; instruction lengths; legacy prefixes; register-number maps.

It lives in translator/ because both sides decode: the translator decodes guest code, and vmm/
decodes faulting instructions, translated code and port I/O. Dependencies run one way (vmm ->
translator, never back), so the one wrapper both can import must sit on the translator's side.
Other modules may import capstone's constants (x86_const); only this one makes a `Cs`."""

from __future__ import annotations

import ctypes
import itertools
import struct
from typing import Iterator, Optional

from capstone import CS_ARCH_X86, CS_MODE_32, CS_MODE_64, Cs, _cs, _cs_detail, _cs_insn
from capstone import x86 as _x86
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


# The C structures Capstone fills (cs_insn, cs_detail's x86 part, cs_x86_op), read with struct from
# their bytes instead of through ctypes attribute by attribute (capstone/__init__.py, x86.py): the
# binding's CsInsn copies every instruction's 1.8 KiB detail, and its first operand access builds
# two dozen ctypes copies, about 20 us an instruction in all; this is about 2.
_INSN = struct.Struct("<I4xQH24s32s160s6xQ")
_INSN_SIZE = ctypes.sizeof(_cs_insn)
assert _INSN.size == _INSN_SIZE and _cs_insn.detail.offset == _INSN_SIZE - 8
_X86_OFFSET = _cs_detail.arch.offset
_X86_SIZE = ctypes.sizeof(_x86.CsX86)
_X86 = struct.Struct("<4s4sBBBB4xqIb3xIIII?3xIQB")          # prefix .. op_count
_OPERAND = struct.Struct("<I4xIIIiqBB2xI?")                  # type, value (as mem), size, access, avx
_OPERANDS_OFFSET, _OPERAND_SIZE = _x86.CsX86.operands.offset, ctypes.sizeof(_x86.X86Op)
_OP_COUNT_OFFSET = _x86.CsX86.op_count.offset
_ENCODING = struct.Struct("<BBBBB")
_ENCODING_OFFSET = _x86.CsX86.encoding.offset
assert (_X86.size, _OPERAND.size) == (_x86.CsX86.op_count.offset + 1, _x86.X86Op.avx_zero_opmask.offset + 1)


class MemoryOperand:
    """cs_x86_op_mem: segment, base, index (register ids), scale, disp."""
    __slots__ = ("segment", "base", "index", "scale", "disp")

    def __init__(self, segment: int, base: int, index: int, scale: int, disp: int) -> None:
        self.segment, self.base, self.index, self.scale, self.disp = segment, base, index, scale, disp


class Operand:
    """cs_x86_op as Capstone's binding shows it (reg, imm and mem read the same union)."""
    __slots__ = ("type", "reg", "imm", "mem", "size", "access", "avx_bcast", "avx_zero_opmask")

    def __init__(self, data: bytes, offset: int) -> None:
        (self.type, segment, base, index, scale, disp, self.size, self.access, self.avx_bcast,
         self.avx_zero_opmask) = _OPERAND.unpack_from(data, offset)
        self.reg = segment
        imm = segment | base << 32
        self.imm = imm - (1 << 64) if imm >> 63 else imm
        self.mem = MemoryOperand(segment, base, index, scale, disp)


# The x86 detail fields, as CsInsn names them; read from the detail bytes at first use, the
# operands apart from the rest: most instructions the translator copies need only the encoding
# fields (relocation reads modrm_offset and modrm), and the operand objects cost the most.
_DETAIL_FIELDS = frozenset({"prefix", "opcode", "rex", "addr_size", "modrm", "sib", "disp", "sib_index",
                            "sib_scale", "sib_base", "xop_cc", "sse_cc", "avx_cc", "avx_sae", "avx_rm",
                            "eflags", "fpu_flags", "modrm_offset", "disp_offset", "disp_size",
                            "imm_offset", "imm_size"})


class Instruction:
    """A decoded instruction with the interface of Capstone's CsInsn in detail mode (id, address,
    size, bytes, mnemonic, op_str, reg_name, and the x86 detail: prefix, opcode, modrm, operands,
    modrm_offset...), built from the C structure's bytes: the detail is parsed at the first
    access of one of its fields. Anything else CsInsn offers comes from a CsInsn of the same
    bytes, made when first asked for."""
    __slots__ = ("id", "address", "size", "_bytes", "_text", "_detail", "_bits", "_full",
                 "prefix", "opcode", "rex", "addr_size", "modrm", "sib", "disp", "sib_index", "sib_scale",
                 "sib_base", "xop_cc", "sse_cc", "avx_cc", "avx_sae", "avx_rm", "eflags", "fpu_flags",
                 "operands", "modrm_offset", "disp_offset", "disp_size", "imm_offset", "imm_size")

    def __init__(self, iid: int, address: int, size: int, raw: bytes, text: tuple, detail: Optional[bytes],
                 bits: int) -> None:
        self.id, self.address, self.size = iid, address, size
        self._bytes, self._text, self._detail, self._bits, self._full = raw, text, detail, bits, None

    @property
    def bytes(self) -> bytearray:
        return bytearray(self._bytes)

    @property
    def raw(self) -> bytes:
        """The instruction's bytes (immutable: no copy)."""
        return self._bytes

    @property
    def mnemonic(self) -> str:
        return self._text[0].split(b"\0", 1)[0].decode("ascii")

    @property
    def op_str(self) -> str:
        return self._text[1].split(b"\0", 1)[0].decode("ascii")

    def reg_name(self, reg_id: int, default=None):
        return _disassembler(self._bits, True).reg_name(reg_id, default)

    def insn_name(self, default=None):
        return _disassembler(self._bits, True).insn_name(self.id, default)

    def _parse_detail(self) -> None:
        data = self._detail
        if data is None:
            raise AttributeError("no detail")
        (prefix, opcode, self.rex, self.addr_size, self.modrm, self.sib, self.disp, self.sib_index,
         self.sib_scale, self.sib_base, self.xop_cc, self.sse_cc, self.avx_cc, self.avx_sae, self.avx_rm,
         flags, _count) = _X86.unpack_from(data)
        self.prefix, self.opcode = list(prefix), list(opcode)
        self.eflags = self.fpu_flags = flags
        (self.modrm_offset, self.disp_offset, self.disp_size, self.imm_offset,
         self.imm_size) = _ENCODING.unpack_from(data, _ENCODING_OFFSET)

    def _parse_operands(self) -> None:
        data = self._detail
        if data is None:
            raise AttributeError("no detail")
        self.operands = [Operand(data, _OPERANDS_OFFSET + k * _OPERAND_SIZE) for k in range(data[_OP_COUNT_OFFSET])]

    def __getattr__(self, name: str):
        # (only for names not set yet: a detail field before the parse, or CsInsn's others)
        if name == "operands":
            self._parse_operands()
            return self.operands
        if name in _DETAIL_FIELDS:
            self._parse_detail()
            return object.__getattribute__(self, name)
        if name.startswith("__") or name in Instruction.__slots__:
            raise AttributeError(name)
        if self._full is None:
            self._full = next(_disassembler(self._bits, True).disasm(self._bytes, self.address, 1))
        return getattr(self._full, name)

    def __repr__(self) -> str:
        return f"<Instruction {self.address:#x} [{self._bytes.hex()}]: {self.mnemonic} {self.op_str}>"


# Capstone's iterating decoder, into one cs_insn (and its detail) per configuration allocated once
# and kept: no allocation per instruction (cs_disasm mallocs an array and a detail per call).
_disasm_iter = _cs["cs_disasm_iter"]
_disasm_iter.restype = ctypes.c_bool
_disasm_iter.argtypes = (ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t),
                         ctypes.POINTER(ctypes.c_uint64), ctypes.c_void_p)
_cs_malloc = _cs["cs_malloc"]
_cs_malloc.restype = ctypes.c_void_p
_cs_malloc.argtypes = (ctypes.c_size_t,)
_iter_buffers: dict[int, tuple] = {}


def _iterator(bits: int) -> tuple:
    """(handle, the cs_insn, code pointer, size, address cells) for decode_run, made once."""
    state = _iter_buffers.get(bits)
    if state is None:
        disassembler = _disassembler(bits, True)
        insn = _cs_malloc(disassembler.csh)
        if not insn:
            raise MemoryError("cs_malloc")
        state = _iter_buffers[bits] = (disassembler, insn, ctypes.c_void_p(), ctypes.c_size_t(), ctypes.c_uint64())
    return state


def decode_stream(code: bytes, address: int, bits: int = 32) -> Iterator[Instruction]:
    """The instructions from the start of `code` (at `address`) on, with details, each decoded
    when asked for; up to where the bytes stop decoding or end inside one (an instruction is
    only returned whole: the bytes after it are never needed)."""
    disassembler, insn, _pointer, _size, _at = _iterator(bits)
    buffer = ctypes.create_string_buffer(code, len(code))
    pointer, size, at = ctypes.c_void_p(ctypes.addressof(buffer)), ctypes.c_size_t(len(code)), ctypes.c_uint64(address)
    pointer_ref, size_ref, at_ref = ctypes.byref(pointer), ctypes.byref(size), ctypes.byref(at)
    handle = disassembler.csh
    # (insn is shared: each step copies it out before yielding, so streams may interleave)
    while _disasm_iter(handle, pointer_ref, size_ref, at_ref, insn):
        iid, start, length, raw, mnemonic, operands, detail = _INSN.unpack(ctypes.string_at(insn, _INSN_SIZE))
        if mnemonic[0] == _AVX:
            # cs_disasm_iter (Capstone 5.0) gives VEX compares other ids than cs_disasm does
            # (vcmpeqps: X86_INS_VCMPPD, not X86_INS_VCMP): AVX goes through the binding's path
            yield next(disassembler.disasm(raw[:length], start, 1))
            continue
        yield Instruction(iid, start, length, raw[:length], (mnemonic, operands),
                          ctypes.string_at(detail + _X86_OFFSET, _X86_SIZE) if detail and iid else None, bits)


_AVX = ord("v")


def decode_run(code: bytes, address: int, count: int, bits: int = 32) -> list[Instruction]:
    """Up to `count` instructions of decode_stream."""
    return list(itertools.islice(decode_stream(code, address, bits), count))


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
