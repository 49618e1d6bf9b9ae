"""IA-32 architectural rules the monitor needs (TLB flushes, FPU controls, vector classes, descriptors) over the constants of translator/x86arch.py, re-exported here."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from translator.x86decode import split_prefixes

# The numbers themselves (EFLAGS, CR0/CR4 bits, vectors, PAGE_SIZE, PTE bits, descriptor types,
# MSRs) are defined once, in translator/x86arch.py, where the translator may import them too;
# the monitor imports them from here with the rules below.
from translator.x86arch import *  # noqa: E402,F401,F403

# The x87/MMX/SSE controls: which of those instructions fault (#NM, #UD) and how. Modes that keep
# the guest's CR0/CR4 virtual put these bits of them into the engine's (fpu_controls), so that
# the guest's own instructions fault natively as the guest set them up.
FPU_CONTROLS = {0: CR0_MP | CR0_EM | CR0_TS | CR0_NE, 4: CR4_OSFXSR | CR4_OSXMMEXCPT}
# CR4 bits whose change invalidates every TLB entry, global ones included (SDM vol. 3, 4.10.4.1;
# QEMU's cpu_x86_update_cr4 flushes on the same ones): PSE, PAE, PGE
CR4_TLB_BITS = CR4_PSE | CR4_PAE | CR4_PGE

VECTOR_NAMES = {
    0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
    9: "coprocessor segment overrun", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF",
    16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE",
}

# Exceptions that push an error code (SDM vol. 3, 6.13)
ERROR_CODE_VECTORS = frozenset({DF_VEC, TS, NP, SS, GP, PF_VEC, AC_VEC})

# Double-fault classes (SDM vol. 3, table 6-4)
CONTRIBUTORY = frozenset({DE, TS, NP, SS, GP})


def flushes_tlb(number: int, old: int, new: int) -> bool:
    """Whether a write of `new` over `old` into control register `number`, with paging on,
    invalidates the whole TLB: any CR3 load, CR0.PG or CR0.WP changed, a CR4 TLB bit changed."""
    if number == 3:
        return True
    changed = old ^ new
    return bool(changed & (CR0_PG | CR0_WP)) if number == 0 else number == 4 and bool(changed & CR4_TLB_BITS)


def fpu_controls(number: int, real: int, guest: int) -> int:
    """The engine's CR0 or CR4 (`real`) with the x87/MMX/SSE control bits of the guest's."""
    mask = FPU_CONTROLS[number]
    return (real & ~mask) | (guest & mask)


def nm_is_ud(insn, cr4: int) -> bool:
    """Whether a #NM (CR0.TS set) the engine raised at `insn` (a Capstone instruction, detail
    mode) is #UD on the reference: with CR4.OSFXSR clear, QEMU 7.2 raises #UD before it looks at
    CR0.TS for the SSE instructions (an XMM operand, ldmxcsr/stmxcsr, the 0F 38 and 0F 3A maps),
    where the engine (QEMU 5's order) raises #NM."""
    if cr4 & CR4_OSFXSR or insn is None:
        return False
    raw = bytes(insn.bytes)
    opcode = len(split_prefixes(raw)[0])
    if insn.mnemonic in ("ldmxcsr", "stmxcsr") or raw[opcode:opcode + 2] in (b"\x0f\x38", b"\x0f\x3a"):
        return True
    return any(op.type == 1 and insn.reg_name(op.reg).startswith("xmm") for op in insn.operands)   # 1: register


def vector_name(vector: int) -> str:
    return VECTOR_NAMES.get(vector, f"vector {vector:#x}")


def needs_double_fault(first: int, second: int) -> bool:
    """True when `second`, raised while delivering `first`, turns into #DF (SDM table 6-5)."""
    if first in CONTRIBUTORY:
        return second in CONTRIBUTORY
    if first == PF_VEC:
        return second in CONTRIBUTORY or second == PF_VEC
    return False


def selector_error_code(index_kind: str, index: int, external: bool) -> int:
    """Error code naming a descriptor: bit 0 EXT, bit 1 IDT, bit 2 TI (LDT), bits 3.. the index."""
    code = int(external)
    if index_kind == "idt":
        code |= 2 | (index << 3)
    else:
        code |= index & 0xFFFC   # a selector: index and TI bit, RPL dropped
    return code


# Gate and segment descriptors (SDM vol. 3, 3.4.5 and 6.11)

# Decoded descriptors by their 8 raw bytes: every exception delivery and iret decodes the same
# few gates and segments again (frozen dataclasses, so one object serves every caller).
_DECODED_GATES: dict = {}
_DECODED_SEGMENTS: dict = {}
_DECODED_MAX = 4096


def _remember(cache: dict, raw: bytes, decoded) -> None:
    if len(cache) >= _DECODED_MAX:          # a guest that builds descriptors without end
        cache.clear()
    cache[raw] = decoded


@dataclass(frozen=True)
class Gate:
    offset: int
    selector: int
    type: int
    dpl: int
    present: bool
    raw_count: int = 0       # byte 4 of the descriptor (call gates: parameter count)

    @classmethod
    def decode(cls, raw: bytes) -> "Gate":
        gate = _DECODED_GATES.get(raw) if cls is Gate and type(raw) is bytes else None
        if gate is not None:
            return gate
        low, high = struct.unpack("<II", raw)
        access = (high >> 8) & 0xFF
        gate = cls(offset=(high & 0xFFFF0000) | (low & 0xFFFF), selector=low >> 16,
                   type=access & 0x1F, dpl=(access >> 5) & 3, present=bool(access & 0x80),
                   raw_count=high & 0xFF)
        if cls is Gate and type(raw) is bytes:
            _remember(_DECODED_GATES, raw, gate)
        return gate

    @property
    def parameter_count(self) -> int:
        """Call gates: the stack words copied to the inner ring's stack."""
        return self.raw_count & 0x1F

    @property
    def is_interrupt_gate(self) -> bool:
        return self.type in (GATE_INTERRUPT_16, GATE_INTERRUPT_32)

    @property
    def is_32bit(self) -> bool:
        return self.type in (GATE_INTERRUPT_32, GATE_TRAP_32)


@dataclass(frozen=True)
class SegmentDescriptor:
    base: int
    limit: int        # in bytes, granularity applied
    type: int         # 4-bit type field
    system: bool      # S=0: system segment or gate
    dpl: int
    present: bool
    big: bool         # D/B

    @classmethod
    def decode(cls, raw: bytes) -> "SegmentDescriptor":
        descriptor = _DECODED_SEGMENTS.get(raw) if cls is SegmentDescriptor and type(raw) is bytes else None
        if descriptor is not None:
            return descriptor
        low, high = struct.unpack("<II", raw)
        base = (low >> 16) | ((high & 0xFF) << 16) | (high & 0xFF000000)
        limit = (low & 0xFFFF) | (high & 0x000F0000)
        if high & (1 << 23):
            limit = (limit << 12) | 0xFFF
        access = (high >> 8) & 0xFF
        descriptor = cls(base=base, limit=limit, type=access & 0xF, system=not access & 0x10,
                         dpl=(access >> 5) & 3, present=bool(access & 0x80), big=bool(high & (1 << 22)))
        if cls is SegmentDescriptor and type(raw) is bytes:
            _remember(_DECODED_SEGMENTS, raw, descriptor)
        return descriptor

    @property
    def is_code(self) -> bool:
        return not self.system and bool(self.type & 0x8)

    @property
    def is_writable_data(self) -> bool:
        return not self.system and not self.type & 0x8 and bool(self.type & 0x2)


def encode_segment(base: int, limit: int, access: int, flags: int = 0xC) -> bytes:
    """An 8-byte segment descriptor; access = P|DPL|S|type, flags = G|D/B|L|AVL (limit in units)."""
    value = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | ((access & 0xFF) << 40)
    value |= ((limit >> 16) & 0xF) << 48 | (flags & 0xF) << 52 | ((base >> 24) & 0xFF) << 56
    return struct.pack("<Q", value)
