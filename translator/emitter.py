"""Code generation: turn a decoded guest block into translated code, x86-64 host code that the
engine runs in long mode (docs/isolation.md).

Innocuous instructions are relocated (translator/x64.py: the same instruction with 32-bit
addressing, so no guest access reaches the monitor); what 64-bit mode lacks or widens (the
stack's push/pop/call/ret, pusha, enter/leave) is emitted as equivalent flag-free sequences;
each sensitive instruction becomes its inline emulation or a callout site; the block's final
control transfer becomes exit slots (patched later into direct jumps to translated successors)
or a flag-preserving probe of the lookup table. Emitted code keeps its temporaries in r8-r11 and
reaches the monitor's data through r15 (the monitor's base), registers guest code cannot name;
nothing is spilled where a guest could see it. The output is position independent: jumps to
other blocks are made by patching exit slots after placement.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from capstone import x86_const as X

from translator.classify import Handling, Procedure
from translator.decoder import BlockEnd, GuestBlock, GuestInstruction, stores_only_outside
from translator.layout import (SCRATCH_BUDGET, SCRATCH_IO_SITE, SCRATCH_STACK_TOP, SCRATCH_TSC_BASE, SCRATCH_TSC_VALUE,
                               VCPU_CR, VCPU_GDTR, VCPU_IDTR, VCPU_IO_CHECK, VCPU_LDTR, VCPU_POPF_EXPECT,
                               VCPU_PUSHF_ADJUST, VCPU_SELECTOR, VCPU_TR, VCPU_TSC_CHECK, MonitorAddresses)
from translator.x64 import NeedsEmulation, absolute_form, relocate
from translator.x86arch import IOPL_MASK, TF
from translator.x86decode import ADDRESS_SIZE, FLAT_SEGMENT_PREFIXES, REGISTER_NUMBER, SEGMENT_PREFIXES, split_prefixes

EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)
R8, R9, R10, R11, R15 = 8, 9, 10, 11, 15       # the monitor's: temporaries, and its base in r15
INT3 = 0xCC
# An exit slot: int3 and padding while unlinked, `jmp rel32` to the target once chained.
EXIT_SLOT_SIZE = 5                     # (not the 256-byte arena slot a whole block takes)
UNLINKED_SLOT = bytes([INT3]) + b"\x90" * (EXIT_SLOT_SIZE - 1)
WINDOW_SITE_DISARMED = b"\x66\x90"     # a 2-byte nop; armed, its first byte is int3


INLINE_CACHE_ENTRIES = 4           # predicted targets per indirect branch before the table

# The guest's arithmetic flags parked in ah (SF ZF AF PF CF) and al (OF as 0/1), the guest's eax
# in r9d, so that emitted code may compare; `add al, 0x7f; sahf; mov eax, r9d` puts them back.
# In a restore list FLAGS_IN_AX tells the monitor to rebuild the flags from ax first.
SAVE_FLAGS = b"\x41\x89\xC1" + b"\x9F\x0F\x90\xC0"      # mov r9d, eax; lahf; seto al
RESTORE_FLAGS = b"\x04\x7F\x9E" + b"\x44\x89\xC8"        # add al, 0x7f; sahf; mov eax, r9d
FLAGS_IN_AX = "flags in ax"
EAX_IN_R9 = (EAX, "r9")
# Restore lists name what the monitor must put back before the guest state is whole: the
# guest's flags from ax (FLAGS_IN_AX), or a guest register from a monitor register.

# `jmp` to the next instruction: ends the engine's (Unicorn's) own translation block there.
ENGINE_BLOCK_BREAK = b"\xE9\0\0\0\0"
# Unicorn 2.1.1 mixes up its lazy flags when a flag-setting instruction precedes cmpxchg8b,
# loope or loopne in the same engine block (cmpxchg8b loses the flags; after loope/loopne
# pushf shows garbage). The translator starts a fresh engine block before each of them, where
# the flags are whole again. tests/test_bt.py pins the engine bug and the workaround.
_NEEDS_FRESH_ENGINE_BLOCK = {X.X86_INS_CMPXCHG8B, X.X86_INS_LOOPE, X.X86_INS_LOOPNE}
# String port I/O, which the engine lets touch memory before the I/O hook can refuse it: INS
# stores a dummy 0 at ES:EDI first, and a rep form with ECX = 0 calls no hook at all. Outside
# CPL <= IOPL the monitor checks the permission in front of it (ExitKind.IO_PERMISSION).
STRING_IO = {X.X86_INS_INSB, X.X86_INS_INSW, X.X86_INS_INSD,
             X.X86_INS_OUTSB, X.X86_INS_OUTSW, X.X86_INS_OUTSD}
# Instructions that store the x87 instruction pointer: the engine stores the HOST address of the
# last x87 instruction, which the monitor replaces with the guest's (ExitKind.FPU_POINTER).
# String instructions: (whether they read DS:ESI, whether they write or read ES:EDI)
_STRING_SOURCES = {**{i: (True, True) for i in (X.X86_INS_MOVSB, X.X86_INS_MOVSW, X.X86_INS_MOVSD,
                                               X.X86_INS_CMPSB, X.X86_INS_CMPSW, X.X86_INS_CMPSD)},
                   **{i: (False, True) for i in (X.X86_INS_STOSB, X.X86_INS_STOSW, X.X86_INS_STOSD,
                                                X.X86_INS_SCASB, X.X86_INS_SCASW, X.X86_INS_SCASD)},
                   **{i: (True, False) for i in (X.X86_INS_LODSB, X.X86_INS_LODSW, X.X86_INS_LODSD)}}
FPU_POINTER_STORES = {X.X86_INS_FNSTENV: 12, X.X86_INS_FNSAVE: 12, X.X86_INS_FXSAVE: 8,
                      X.X86_INS_XSAVE: 8, X.X86_INS_XSAVEOPT: 8, X.X86_INS_XSAVEC: 8}


class ExitKind(Enum):
    BRANCH = "branch"              # static successor: chainable slot
    PREDICTED = "predicted"        # an indirect branch's inline-cached target: chainable slot
    MISS = "lookup miss"           # indirect target not predicted / not in the lookup table
    CALLOUT = "callout"            # the monitor emulates an instruction
    UNDECODABLE = "undecodable"    # raise #UD at the guest address
    NO_MEMORY = "no memory"        # instruction fetch from outside guest memory
    BUDGET = "instruction budget"  # --max-insns exhausted at block entry
    BREAKPOINT = "breakpoint"      # a debugger breakpoint at the guest address
    INTERRUPT_WINDOW = "interrupt window"   # after sti/popf: armed only while an interrupt waits for IF
    IO_PERMISSION = "I/O permission"        # string I/O above IOPL: the monitor checks the port first
    FPU_POINTER = "x87 pointer"             # after fnstenv/fxsave...: the monitor writes the guest's FIP
    STALE = "stale code"           # a self-checking block found its guest bytes changed at entry


@dataclass
class ExitSite:
    kind: ExitKind
    offset: int                    # host offset of the int3 that reports this exit
    guest_eip: int                 # BRANCH: the successor; others: the guest instruction concerned
    next_eip: int = 0              # CALLOUT: the instruction after the one emulated
    instruction: Optional[GuestInstruction] = None
    restore: tuple = ()            # what to put back before the monitor acts (FLAGS_IN_AX first,
                                   # then (guest register, monitor register) pairs)
    inline_cache: tuple = ()       # MISS: (offsets of the compare imm32s, indices of the
                                   # PREDICTED slots) of the same branch
    target: str = "r8d"            # MISS: the register holding the guest target
    branch: int = -1               # BRANCH: offset of a jcc's rel32 that reaches this slot too
    learn: tuple = ()              # MISS: (offset, bytes) of the patch that skips the learning
                                   # exit once all predictions are filled, and that exit's offset
    owner: int = 0                 # the guest instruction this exit belongs to

    @property
    def chainable(self) -> bool:
        return self.kind in (ExitKind.BRANCH, ExitKind.PREDICTED)


@dataclass
class PcEntry:
    """Host instructions from `offset` on belong to guest instruction `guest_eip`; a fault there
    is the guest's fault at that instruction once `restore` registers are reloaded."""
    offset: int
    guest_eip: int
    restore: tuple = ()


@dataclass
class Rewrite:
    guest_eip: int
    text: str
    handling: Handling
    procedure: Procedure
    host_offset: int
    host_size: int = 0


@dataclass
class Translation:
    code: bytearray = field(default_factory=bytearray)
    exits: list[ExitSite] = field(default_factory=list)
    pc_map: list[PcEntry] = field(default_factory=list)
    rewrites: list[Rewrite] = field(default_factory=list)
    counter_fixups: list[int] = field(default_factory=list)   # where the block's counter address goes
    body: int = 0                  # offset past the budget prologue (entered after a budget exit)
    checked: int = 0               # a self-checking block that cannot store into itself: offset
                                   # past its check, where a jump from the block itself may enter

    def pc_entry(self, offset: int) -> Optional[PcEntry]:
        """The entry covering host offset `offset` (entries are in increasing offset order)."""
        found = None
        for entry in self.pc_map:
            if entry.offset > offset:
                break
            found = entry
        return found


class UntranslatableForm(Exception):
    """An operand form the inline templates do not cover; the instruction becomes a callout."""


class UnsupportedForm(Exception):
    """An instruction form the translator does not handle at all (the run stops, `unsupported`)."""


def _u32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)


def _signed32(value: int) -> int:
    """value as a signed 32-bit displacement (an address computation that wraps at 4 GiB)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _prefixes(raw: bytes) -> bytes:
    return split_prefixes(raw)[0]


def _memory_operand(insn):
    for operand in insn.operands:
        if operand.type == X.X86_OP_MEM:
            return operand
    return None


def _registers_in_memory_operand(insn) -> set[int]:
    operand = _memory_operand(insn)
    if operand is None:
        return set()
    return {REGISTER_NUMBER[r] for r in (operand.mem.base, operand.mem.index) if r in REGISTER_NUMBER}


# -- x86-64 encodings --------------------------------------------------------------------------
def _rex(w: int = 0, reg: int = 0, index: int = 0, base: int = 0) -> bytes:
    value = 0x40 | (w << 3) | ((reg >> 3) << 2) | ((index >> 3) << 1) | (base >> 3)
    return bytes([value]) if value != 0x40 else b""


def _reg_reg(opcode: bytes, reg: int, rm: int, w: int = 0, prefix: bytes = b"") -> bytes:
    """opcode with a register r/m: e.g. 89 /r is `mov rm, reg`."""
    return prefix + _rex(w, reg, 0, rm) + opcode + bytes([0xC0 | (reg & 7) << 3 | (rm & 7)])


def _monitor(opcode: bytes, reg: int, offset: int, prefix: bytes = b"", w: int = 0) -> bytes:
    """opcode with the memory operand [r15 + offset] (a monitor area)."""
    return prefix + _rex(w, reg, 0, R15) + opcode + bytes([0x80 | (reg & 7) << 3 | 7]) + _u32(offset)


def _stack(opcode: bytes, reg: int, displacement: int, prefix: bytes = b"") -> bytes:
    """opcode with the guest's stack operand [esp + displacement], 32-bit addressing."""
    disp = displacement & 0xFFFFFFFF
    if -128 <= displacement < 128:
        return bytes([ADDRESS_SIZE]) + prefix + _rex(0, reg) + opcode + bytes([0x44 | (reg & 7) << 3, 0x24, disp & 0xFF])
    return bytes([ADDRESS_SIZE]) + prefix + _rex(0, reg) + opcode + bytes([0x84 | (reg & 7) << 3, 0x24]) + _u32(disp)


def _lea_esp(displacement: int) -> bytes:
    """lea esp, [esp + displacement]: the guest's stack pointer moves, flags untouched."""
    return _stack(b"\x8D", ESP, displacement)


def _frame(opcode: bytes, reg: int, displacement: int, prefix: bytes = b"") -> bytes:
    """opcode with the guest's frame operand [ebp + displacement], 32-bit addressing."""
    if -128 <= displacement < 128:
        return bytes([ADDRESS_SIZE]) + prefix + _rex(0, reg) + opcode + bytes([0x45 | (reg & 7) << 3, displacement & 0xFF])
    return bytes([ADDRESS_SIZE]) + prefix + _rex(0, reg) + opcode + bytes([0x85 | (reg & 7) << 3]) + _u32(displacement)


def _through(opcode: bytes, reg: int, address: int, prefix: bytes = b"") -> bytes:
    """opcode with the memory operand [address register] (a linear address worked out in r10
    or r11: zero-extended, so an access that crosses 4 GiB lands in the 4-8 GiB alias)."""
    return prefix + _rex(0, reg, 0, address) + opcode + bytes([(reg & 7) << 3 | (address & 7)])


def _relocated_operand(insn, opcode: bytes, reg: int, operand16: Optional[bool] = None) -> bytes:
    """The guest instruction's own memory operand under another opcode and reg field, relocated
    (32-bit addressing, an absolute [disp32] kept absolute): e.g. `mov r8d, [ebx+8]` from the
    `[ebx+8]` of `jmp dword ptr [ebx+8]`. operand16: add (True) or drop (False) the 0x66 prefix;
    None keeps the instruction's. Segment overrides: FS/GS kept, the flat ones dropped."""
    raw = bytes(insn.bytes)
    prefixes, _body = split_prefixes(raw)
    if ADDRESS_SIZE in prefixes:
        raise UntranslatableForm("16-bit addressing")
    kept = bytes(p for p in prefixes if p not in FLAT_SEGMENT_PREFIXES and p not in (0x66, 0xF0, 0xF2, 0xF3))
    wide = 0x66 in prefixes if operand16 is None else operand16
    at = insn.modrm_offset
    operand = absolute_form((raw[at] & 0xC7) | ((reg & 7) << 3)) + raw[at + 1:at + 1 + _memory_operand_length(insn, raw)]
    return bytes([ADDRESS_SIZE]) + (b"\x66" if wide else b"") + kept + _rex(0, reg) + opcode + operand


def _memory_operand_length(insn, raw: bytes) -> int:
    """Bytes after the ModRM byte that belong to the memory operand (SIB and displacement)."""
    modrm = raw[insn.modrm_offset]
    mod, rm = modrm >> 6, modrm & 7
    length = 0
    if rm == 4:
        length += 1
        if mod == 0 and raw[insn.modrm_offset + 1] & 7 == 5:
            return length + 4
    if mod == 1:
        return length + 1
    if mod == 2 or (mod == 0 and rm == 5):
        return length + 4
    return length


class Emitter:
    """Translates one GuestBlock into a Translation."""

    def __init__(self, addresses: MonitorAddresses) -> None:
        self.areas = addresses
        self._bases = {"ds": 0, "es": 0, "ss": 0, "cs": 0}
        self._any_base = False         # (flat segments, the common case: no operand needs a base)

    # -- block ---------------------------------------------------------------------------------
    def breakpoint(self, address: int) -> Translation:
        """A block that is only a debugger breakpoint before the guest instruction at `address`."""
        self._owner = address
        out = Translation()
        out.pc_map.append(PcEntry(0, address))
        self._site(out, ExitSite(ExitKind.BREAKPOINT, 0, address))
        return out

    def translate(self, block: GuestBlock, *, budget: bool = False, chainable: bool = True,
                  profile: bool = False, predictions: int = INLINE_CACHE_ENTRIES,
                  segment_bases: tuple = (0, 0, 0), code_base: int = 0, self_check: bool = False,
                  inline_timestamp: bool = False) -> Translation:
        """`predictions`: inline-cache entries per indirect branch (fewer make a smaller block).
        `segment_bases`: the guest's DS, ES and SS bases, which 64-bit host code ignores: memory
        operands through a segment with a non-zero base get it added explicitly. `code_base`:
        the CS base, added to `cs:` operands the same way (the block's addresses are EIPs,
        which is what calls push and branches compare, so nothing else needs it). `self_check`:
        the block compares its guest bytes with those it was translated from at every entry
        (a code page the guest writes often is not write-protected: _emit_self_check).
        `inline_timestamp`: rdtsc reads the virtual clock inline (needs `budget`: the monitor
        keeps the clock's base in the scratch page while time is counted); else it calls out."""
        self._inline_timestamp = inline_timestamp and budget
        self._bases = dict(zip(("ds", "es", "ss"), segment_bases))
        self._bases["cs"] = code_base
        self._any_base = any(self._bases.values())
        out = Translation()
        self._predictions = predictions
        self._owner = block.address
        pending: list[tuple[int, ExitSite]] = []     # (offset of rel32 to fix, site) for jumps to sites
        code = out.code

        def mark(guest_eip: int, restore: tuple = ()) -> None:
            out.pc_map.append(PcEntry(len(code), guest_eip, restore))

        def site_later(rel_offset: int, site: ExitSite) -> None:
            pending.append((rel_offset, site))

        if self_check and block.instructions:
            self._emit_self_check(out, block, mark)
            if stores_only_outside(block, segment_bases):
                out.checked = len(code)     # a jump from itself may enter past the check
        if budget and block.instructions:
            self._emit_budget_check(out, block, site_later, mark)
        out.body = len(code)
        if profile:
            self._emit_execution_counter(out, block, mark)

        last = block.instructions[-1] if block.instructions else None
        self._after = len(block.instructions)      # instructions of the block after the current one
        for instruction in block.instructions:
            self._owner = instruction.address
            self._after -= 1
            rule = instruction.rule
            start = len(code)
            if rule.handling in (Handling.COPY, Handling.IO_HOOK) or rule.procedure is Procedure.INTERRUPT_FLAG:
                self._emit_copy(out, instruction, mark)
            elif rule.handling is Handling.INLINE:
                try:
                    self._emit_inline(out, instruction, mark, site_later)
                except UntranslatableForm:
                    del code[start:]
                    out.pc_map = [e for e in out.pc_map if e.offset < start]
                    self._emit_callout(out, instruction, mark)
                    out.rewrites.append(Rewrite(instruction.address, str(instruction), Handling.CALLOUT,
                                                rule.procedure, start, len(code) - start))
                    if instruction is not last:     # a callout ends the block here
                        self._finish(out, pending)
                        return out
                    continue
            elif rule.handling is Handling.CHAIN:
                self._emit_direct_branch(out, instruction, mark, chainable)
            elif rule.handling is Handling.LOOKUP:
                self._emit_indirect_branch(out, instruction, mark)
            elif rule.handling is Handling.CALLOUT:
                self._emit_callout(out, instruction, mark)
            if rule.handling is not Handling.COPY:
                out.rewrites.append(Rewrite(instruction.address, str(instruction), rule.handling,
                                            rule.procedure, start, len(code) - start))

        self._owner = block.next_address if last is None or block.end is not BlockEnd.BRANCH else last.address
        if block.end in (BlockEnd.PAGE, BlockEnd.LIMIT, BlockEnd.WINDOW, BlockEnd.STORE) or (block.end is BlockEnd.BRANCH and last is None):
            mark(block.next_address)
            self._slot(out, ExitSite(ExitKind.BRANCH, 0, block.next_address))
        elif block.end is BlockEnd.UNDECODABLE:
            mark(block.next_address)
            self._site(out, ExitSite(ExitKind.UNDECODABLE, 0, block.next_address))
        elif block.end is BlockEnd.NO_MEMORY:
            mark(block.next_address)
            self._site(out, ExitSite(ExitKind.NO_MEMORY, 0, block.next_address))
        self._finish(out, pending)
        return out

    def _finish(self, out: Translation, pending) -> None:
        for rel_offset, site in pending:
            self._owner = site.owner or site.guest_eip
            target = len(out.code)
            if site.kind is ExitKind.BRANCH:
                self._slot(out, site)
            else:
                self._site(out, site)
            struct.pack_into("<i", out.code, rel_offset, target - (rel_offset + 4))

    def _site(self, out: Translation, site: ExitSite) -> None:
        site.offset = len(out.code)
        site.owner = site.owner or self._owner
        out.exits.append(site)
        out.code.append(INT3)

    def _slot(self, out: Translation, site: ExitSite) -> None:
        site.offset = len(out.code)
        site.owner = site.owner or self._owner
        out.exits.append(site)
        out.code += UNLINKED_SLOT

    # -- memory operands and segment bases --------------------------------------------------------
    @staticmethod
    def _segment_of(insn, operand=None) -> Optional[str]:
        """The segment a memory operand goes through: an override, else SS for ESP/EBP bases."""
        operand = operand or _memory_operand(insn)
        if operand is None:
            return None
        if operand.mem.segment:
            return insn.reg_name(operand.mem.segment)
        return "ss" if operand.mem.base in (X.X86_REG_ESP, X.X86_REG_EBP, X.X86_REG_SP, X.X86_REG_BP) else "ds"

    def _needs_base(self, insn) -> bool:
        """Whether a memory operand of the instruction goes through a DS/ES/SS with a base."""
        if not self._any_base or insn.id == X.X86_INS_LEA:
            return False
        return any(self._bases.get(self._segment_of(insn, op)) for op in insn.operands if op.type == X.X86_OP_MEM)

    def _guest_operand(self, insn, opcode: bytes, reg: int, operand16: Optional[bool] = None) -> bytes:
        """The guest's memory operand under another opcode and reg field (_relocated_operand),
        through a DS/ES/SS base if it has one."""
        if not self._needs_base(insn):
            return _relocated_operand(insn, opcode, reg, operand16)
        wide = 0x66 in _prefixes(bytes(insn.bytes)) if operand16 is None else operand16
        return self._address_in_r10(insn) + (b"\x66" if wide else b"") + _rex(0, reg, 0, R10) + opcode \
            + bytes([(reg & 7) << 3 | (R10 & 7)])

    def _address_in_r10(self, insn) -> bytes:
        """lea r10d, [operand]; lea r10d, [r10 + segment base]: the linear address, wrapped at
        4 GiB as in the guest."""
        base = self._bases[self._segment_of(insn)]
        return _relocated_operand(insn, b"\x8D", R10, operand16=False) + b"\x45\x8D\x92" + _u32(base)

    def _stack_access(self, opcode: bytes, reg: int, displacement: int, prefix: bytes = b"",
                      frame: bool = False, scratch: int = R10) -> bytes:
        """opcode with the guest's stack operand SS:[esp + displacement] (frame: SS:[ebp + ...]).
        64-bit mode ignores the SS base, so a block translated for a based SS works the linear
        address out first: `lea scratch, [esp + displacement + base]`, 32 bits wide, so it
        wraps at 4 GiB as the CPU's does; then the access goes through `scratch`. A flat SS
        (almost every guest) gets the plain operand: a nonzero base is another translation (the
        block key has the bases), never a test in translated code."""
        base = self._bases["ss"]
        plain = _frame if frame else _stack
        if not base:
            return plain(opcode, reg, displacement, prefix)
        return plain(b"\x8D", scratch, _signed32(displacement + base)) + _through(opcode, reg, scratch, prefix)

    def _emit_based_string(self, out: Translation, instruction: GuestInstruction, mark) -> None:
        """A string instruction through a DS/ES with a base: ESI and EDI are moved by the bases
        around it (lea, flags untouched; wrapping at 4 GiB as the guest's addresses do), and a
        fault in between puts them back (the "rebase" restore items)."""
        insn, code = instruction.insn, out.code
        source, destination = _STRING_SOURCES[insn.id]
        moves = []
        if source:
            segment = self._segment_of(insn, next(op for op in insn.operands if op.type == X.X86_OP_MEM
                                                 and op.mem.base in (X.X86_REG_ESI, X.X86_REG_SI)))
            if segment in ("fs", "gs"):
                segment = None                       # their bases apply natively
            if segment and self._bases.get(segment):
                moves.append((ESI, self._bases[segment]))
        if destination and self._bases["es"]:
            moves.append((EDI, self._bases["es"]))
        for register, base in moves:                  # lea esi/edi, [esi/edi + base]
            code += bytes([ADDRESS_SIZE, 0x8D, 0x80 | register << 3 | register]) + _u32(base)
        mark(instruction.address, tuple(("rebase", register, base) for register, base in moves))
        code += relocate(insn)
        for register, base in moves:
            code += bytes([ADDRESS_SIZE, 0x8D, 0x80 | register << 3 | register]) + _u32(-base)
        mark(instruction.address)

    def _rebased(self, instruction: GuestInstruction) -> bytes:
        """An innocuous instruction whose memory operand goes through a segment with a base:
        the address is worked out into r10 and the instruction made to use [r10]."""
        insn = instruction.insn
        raw = bytes(insn.bytes)
        prefixes, body = split_prefixes(raw)
        if insn.modrm_offset == 0 and body[0] in (0xA0, 0xA1, 0xA2, 0xA3) and ADDRESS_SIZE not in prefixes:
            # mov with a 32-bit offset: the base is known now, so is the linear address
            linear = (int.from_bytes(body[1:5], "little") + self._bases[self._segment_of(insn)]) & 0xFFFFFFFF
            kept = bytes(p for p in prefixes if p not in SEGMENT_PREFIXES)
            return bytes([ADDRESS_SIZE]) + kept + body[:1] + _u32(linear)
        if insn.modrm_offset == 0:
            raise UnsupportedForm(f"{instruction} through a segment with a base, at {instruction.address:#x}")
        if any(insn.reg_name(op.reg) in ("ah", "ch", "dh", "bh") for op in insn.operands if op.type == X.X86_OP_REG):
            raise UnsupportedForm(f"{instruction} (a high byte register) through a segment with a base")
        relocate(insn, keeps_fpu_pointer=True)             # the checks: NeedsEmulation if not copyable
        prefixes, _body = split_prefixes(raw)
        kept = bytes(p for p in prefixes if p not in SEGMENT_PREFIXES and p != ADDRESS_SIZE)
        opcode = raw[len(prefixes):insn.modrm_offset]
        if opcode == b"\x82":
            opcode = b"\x80"
        modrm = raw[insn.modrm_offset]
        rest = raw[insn.modrm_offset + 1 + _memory_operand_length(insn, raw):]
        reg = (modrm >> 3) & 7
        return self._address_in_r10(insn) + kept + _rex(0, 0, 0, R10) + opcode + bytes([reg << 3 | (R10 & 7)]) + rest

    # -- copies ---------------------------------------------------------------------------------
    def _emit_copy(self, out: Translation, instruction: GuestInstruction, mark) -> None:
        """An innocuous instruction (or port I/O, cli/sti): relocated, or the sequence that does
        what 64-bit mode would do differently."""
        code, rule = out.code, instruction.rule
        if instruction.insn.id in _NEEDS_FRESH_ENGINE_BLOCK:
            mark(instruction.address)
            code += ENGINE_BLOCK_BREAK
        mark(instruction.address)
        if instruction.insn.id in STRING_IO:
            self._emit_io_permission_guard(out, instruction, mark)
        if rule.handling is Handling.IO_HOOK:
            # Say which guest instruction this is: inside the I/O hook the engine's EIP is
            # stale, and a refused access must fault at exactly this instruction.
            code += b"\x41\xC7\x87" + _u32(self.areas.scratch + SCRATCH_IO_SITE) + _u32(instruction.address)
        fpu_pointer = instruction.insn.id in FPU_POINTER_STORES
        try:
            if not self._needs_base(instruction.insn):
                code += relocate(instruction.insn, keeps_fpu_pointer=fpu_pointer)
            elif instruction.insn.id in _STRING_SOURCES and rule.handling is Handling.COPY:
                self._emit_based_string(out, instruction, mark)
            else:
                code += self._rebased(instruction)
        except NeedsEmulation as why:
            self._emit_stack_instruction(out, instruction, mark, str(why))
        if fpu_pointer:
            # the engine stored the host address of the last x87 instruction in the image: an
            # exit lets the monitor put the guest's there, so no monitor address reaches the guest
            mark(instruction.end)
            self._site(out, ExitSite(ExitKind.FPU_POINTER, 0, instruction.address, instruction.end, instruction))
        if instruction.insn.id == X.X86_INS_STI:
            self._window_site(out, instruction, mark)
        if rule.handling is Handling.IO_HOOK:
            # End the engine's own block here: a device may stop the machine from the I/O
            # hook, and the engine stops only between its blocks.
            mark(instruction.end)
            code += ENGINE_BLOCK_BREAK

    def _emit_stack_instruction(self, out: Translation, instruction: GuestInstruction, mark, why: str) -> None:
        """push, pop, pusha, popa, enter, leave: 64-bit mode would move 8 bytes and use RSP, so
        each becomes 32-bit stores and loads at [esp+n] and a `lea esp`, flag-free, ordered so
        that a fault leaves the guest's registers as the CPU would (nothing changed)."""
        insn, code = instruction.insn, out.code
        operand16 = 0x66 in _prefixes(instruction.bytes)
        size = 2 if operand16 else 4
        prefix = b"\x66" if operand16 else b""
        iid = insn.id
        if iid == X.X86_INS_PUSH:
            operand = insn.operands[0]
            if operand.type == X.X86_OP_REG:
                code += self._stack_access(b"\x89", REGISTER_NUMBER[operand.reg], -size, prefix)   # mov [esp-n], reg
            elif operand.type == X.X86_OP_IMM:
                code += self._stack_access(b"\xC7", 0, -size, prefix) \
                    + operand.imm.to_bytes(8, "little", signed=operand.imm < 0)[:size]
            else:
                code += self._guest_operand(insn, b"\x8B", R8)                                 # mov r8d, m
                code += self._stack_access(b"\x89", R8, -size, prefix)                  # mov [esp-n], r8d
            code += _lea_esp(-size)
            return
        if iid == X.X86_INS_POP:
            operand = insn.operands[0]
            if operand.type == X.X86_OP_REG:
                register = REGISTER_NUMBER[operand.reg]
                code += self._stack_access(b"\x8B", register, 0, prefix)                 # mov reg, [esp]
                if register != ESP:       # pop esp: ESP is the value popped
                    code += _lea_esp(size)
                return
            # pop m: the operand's address is worked out with ESP already moved (as the CPU
            # does); if the store faults, ESP goes back (r11 holds it)
            code += self._stack_access(b"\x8B", R8, 0, prefix)                           # mov r8d, [esp]
            code += _reg_reg(b"\x89", ESP, R11)                                           # mov r11d, esp
            code += _lea_esp(size)
            mark(instruction.address, ((ESP, "r11"),))
            code += self._guest_operand(insn, b"\x89", R8)                                     # mov m, r8d
            mark(instruction.address)
            return
        if iid in (X.X86_INS_PUSHAL, X.X86_INS_PUSHAW):
            order = (EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI)    # ESP as it was before
            for k, register in enumerate(order, 1):
                code += self._stack_access(b"\x89", register, -k * size, prefix)
            code += _lea_esp(-8 * size)
            return
        if iid in (X.X86_INS_POPAL, X.X86_INS_POPAW):
            # both ends first (all of it is readable then), so no register changes before a fault
            code += self._stack_access(b"\x8B", R8, 0, prefix) + self._stack_access(b"\x8B", R8, 7 * size, prefix)
            for k, register in enumerate((EDI, ESI, EBP, None, EBX, EDX, ECX, EAX)):
                if register is not None:
                    code += self._stack_access(b"\x8B", register, k * size, prefix)
            code += _lea_esp(8 * size)
            return
        if iid == X.X86_INS_LEAVE:
            code += self._stack_access(b"\x8B", R8, 0, prefix, frame=True)             # mov r8d, [ebp]
            code += bytes([ADDRESS_SIZE, 0x8D, 0x65, size])                              # lea esp, [ebp + n]
            code += _reg_reg(b"\x89", R8, EBP, prefix=prefix)                            # mov ebp, r8d
            return
        if iid == X.X86_INS_ENTER:
            # push ebp; with a nesting level, copy level-1 frame pointers from [ebp-n*i] and push
            # the new frame's; then ebp = the new frame and esp drops by the frame size. Every
            # store is relative to the old ESP, so a fault changes no register.
            frame, level = insn.operands[0].imm & 0xFFFF, insn.operands[1].imm & 0x1F
            code += self._stack_access(b"\x89", EBP, -size, prefix)                      # mov [esp-n], ebp
            code += _stack(b"\x8D", R8, -size)                                            # lea r8d, [esp-n]
            for i in range(1, level):
                code += self._stack_access(b"\x8B", R9, -size * i, prefix, frame=True)   # mov r9d, [ebp-n*i]
                code += self._stack_access(b"\x89", R9, -size * (i + 1), prefix)
            if level:
                code += self._stack_access(b"\x89", R8, -size * (level + 1), prefix)     # push the frame pointer
            code += _lea_esp(-size * (level + 1 if level else 1))
            code += _reg_reg(b"\x89", R8, EBP, prefix=prefix)                            # mov ebp, r8d
            code += _lea_esp(-frame)
            return
        raise UnsupportedForm(f"{instruction} at {instruction.address:#x}: {why}")

    def _emit_io_permission_guard(self, out: Translation, instruction: GuestInstruction, mark) -> None:
        """In front of string I/O: while the virtual-CPU block says the guest's CPL is above its
        IOPL, an exit where the monitor checks the TSS bitmap (#GP, or on to the instruction).
        Flag-free (jrcxz, the guest's rcx kept in r9); at CPL <= IOPL no exit."""
        self._emit_vcpu_check(out, instruction, mark, VCPU_IO_CHECK, ExitKind.IO_PERMISSION)

    def _emit_vcpu_check(self, out: Translation, instruction: GuestInstruction, mark, flag: int,
                         kind: ExitKind) -> None:
        """An exit of `kind` at `instruction` while the virtual-CPU block's dword at `flag` is not
        0, and on to what follows while it is: flag-free (jrcxz, the guest's rcx kept in r9)."""
        code = out.code
        code += _reg_reg(b"\x89", ECX, R9, w=1)                                        # mov r9, rcx
        mark(instruction.address, ((ECX, "r9"),))
        code += _monitor(b"\x8B", ECX, self.areas.vcpu + flag)                         # mov ecx, [flag]
        code += b"\xE3\x04"                                                             # jrcxz over 4 bytes
        code += _reg_reg(b"\x89", R9, ECX, w=1)                                        # mov rcx, r9 (3)
        mark(instruction.address)
        self._site(out, ExitSite(kind, 0, instruction.address, instruction.end, instruction))
        mark(instruction.address, ((ECX, "r9"),))                                      # where jrcxz lands
        code += _reg_reg(b"\x89", R9, ECX, w=1)
        mark(instruction.address)

    def _window_site(self, out: Translation, instruction: GuestInstruction, mark) -> None:
        """After an instruction that may set IF natively (sti, popf): a 2-byte nop that the cache
        turns into an int3 exit while an interrupt is waiting for the guest to set IF, so that
        it is delivered at the right instruction boundary (after sti's shadow)."""
        mark(instruction.end)
        site = ExitSite(ExitKind.INTERRUPT_WINDOW, len(out.code), instruction.end, instruction=instruction,
                        owner=instruction.address)
        out.exits.append(site)
        out.code += WINDOW_SITE_DISARMED

    # -- self-checking blocks ------------------------------------------------------------------
    def _emit_self_check(self, out, block, mark) -> None:
        """At block entry, compare the guest's bytes at the block's linear address with the ones
        it was translated from; any difference leaves through the STALE exit before a guest
        instruction ran. 8 bytes at a time (the last 8 overlapping, never a byte past the
        block, which may be data the guest writes; a block under 8 bytes compares 4, 2, 1),
        each as `rcx = bytes - expected; jrcxz`, which leaves the guest's flags alone (its rcx
        waits in r9). The reads go through the guest's mappings like its own loads (a hidden
        fault fills the shadow). With stores ending such blocks (decoder.may_store), a store
        into code is seen at the next block entry, as the CPU sees it at the next instruction;
        DynamoRIO's sandboxing checks the same way."""
        code = out.code
        data = b"".join(instruction.bytes for instruction in block.instructions)
        if len(data) >= 8:
            chunks = [(offset, 8) for offset in range(0, len(data) - 8, 8)] + [(len(data) - 8, 8)]
        else:
            chunks, offset = [], 0
            for size in (4, 2, 1):
                if len(data) - offset >= size:
                    chunks.append((offset, size))
                    offset += size
        mark(block.address)
        code += b"\x49\x89\xC9"                                    # mov r9, rcx
        restore = ((ECX, "r9"),)
        mark(block.address, restore)
        code += b"\x41\xBA" + _u32(block.linear)                   # mov r10d, linear (zero-extended)
        to_stale = []
        for offset, size in chunks:
            disp = bytes([offset]) if offset < 128 else _u32(offset)
            mod = 0x40 if offset < 128 else 0x80
            load = {8: b"\x49\x8B", 4: b"\x41\x8B", 2: b"\x41\x0F\xB7", 1: b"\x41\x0F\xB6"}[size]
            code += load + bytes([mod | ECX << 3 | 2]) + disp            # mov/movzx rcx, [r10 + offset]
            expected = int.from_bytes(data[offset:offset + size], "little")
            code += b"\x49\xBB" + struct.pack("<Q", -expected & 0xFFFFFFFFFFFFFFFF)   # mov r11, -expected
            code += b"\x4A\x8D\x0C\x19"                            # lea rcx, [rcx + r11]
            code += b"\xE3\x05"                                      # jrcxz over the jump
            code += b"\xE9"                                          # jmp stale
            to_stale.append(len(code))
            code += b"\0\0\0\0"
        code += b"\x4C\x89\xC9"                                    # mov rcx, r9
        mark(block.address)
        code += b"\xEB\x01"                                          # jmp over the exit
        mark(block.address, restore)
        for rel_offset in to_stale:
            struct.pack_into("<i", code, rel_offset, len(code) - (rel_offset + 4))
        self._site(out, ExitSite(ExitKind.STALE, 0, block.address, restore=restore, owner=block.address))
        mark(block.address)

    # -- instruction budget --------------------------------------------------------------------
    def _emit_budget_check(self, out, block, site_later, mark) -> None:
        """Subtract the block's guest instruction count from the budget, the guest's flags parked
        in ax around it (its eax in r9). The budget is 64-bit: its high half is where the monitor
        asks, from another thread, for the run to end at the next block entry (host input:
        translator/layout.py, SCRATCH_WAKE), at no cost to the prologue."""
        code = out.code
        mark(block.address)
        code += SAVE_FLAGS
        mark(block.address, (FLAGS_IN_AX, EAX_IN_R9))
        count = len(block.instructions)
        code += _monitor(b"\x81", 5, self.areas.scratch + SCRATCH_BUDGET, w=1) + _u32(count)  # sub qword [budget], n
        code += b"\x0F\x8C"                                                                   # jl -> budget exit
        site_later(len(code), ExitSite(ExitKind.BUDGET, 0, block.address, restore=(FLAGS_IN_AX, EAX_IN_R9)))
        code += b"\0\0\0\0"
        code += RESTORE_FLAGS[:3]
        mark(block.address, (EAX_IN_R9,))
        code += RESTORE_FLAGS[3:]
        mark(block.address)
        code += ENGINE_BLOCK_BREAK

    def _emit_execution_counter(self, out, block, mark) -> None:
        """Count executions of this block without touching the guest's flags (--profile). The
        counter's offset depends on where the block is placed: the cache writes it in at the
        offsets listed in counter_fixups."""
        code = out.code
        mark(block.address)
        code += b"\x45\x8B\x8F"                                    # mov r9d, [r15 + counter]
        out.counter_fixups.append(len(code))
        code += _u32(0)
        code += b"\x45\x8D\x49\x01"                                # lea r9d, [r9 + 1]
        code += b"\x45\x89\x8F"                                    # mov [r15 + counter], r9d
        out.counter_fixups.append(len(code))
        code += _u32(0)

    # -- inline emulations ---------------------------------------------------------------------
    def _switch_to_monitor_stack(self, offset: int = SCRATCH_STACK_TOP) -> bytes:
        """mov r11, rsp; lea rsp, [r15 + scratch stack]: pushfq/popfq must not touch the guest's
        stack (they move 8 bytes there)."""
        return _reg_reg(b"\x89", ESP, R11, w=1) + _monitor(b"\x8D", ESP, self.areas.scratch + offset, w=1)

    _BACK_TO_GUEST_STACK = b"\x4C\x89\xDC"                        # mov rsp, r11

    def _emit_inline(self, out: Translation, instruction: GuestInstruction, mark, site_later) -> None:
        insn, procedure, code = instruction.insn, instruction.rule.procedure, out.code
        guest = instruction.address
        operand16 = 0x66 in _prefixes(instruction.bytes)
        size = 2 if operand16 else 4
        prefix = b"\x66" if operand16 else b""
        if procedure is Procedure.PUSHF:
            mark(guest)
            code += self._switch_to_monitor_stack()
            code += b"\x9C\x41\x58"                                            # pushfq; pop r8
            code += self._BACK_TO_GUEST_STACK
            code += _monitor(b"\x8B", R10, self.areas.vcpu + VCPU_PUSHF_ADJUST)  # mov r10d, [adjust]
            code += b"\x47\x8D\x04\x10"                                        # lea r8d, [r8 + r10]
            code += self._stack_access(b"\x89", R8, -size, prefix)             # mov [esp-n], r8d
            code += _lea_esp(-size)
            return
        if procedure is Procedure.POPF:
            mark(guest)
            load = self._stack_access(b"\x0F\xB7" if operand16 else b"\x8B", R8, 0)   # (movzx for popf)
            code += load                                                        # r8d = the image
            code += b"\x41\x81\xE0" + _u32(IOPL_MASK | TF)                       # and r8d, IOPL|TF
            code += _monitor(b"\x3B", R8, self.areas.vcpu + VCPU_POPF_EXPECT)    # cmp r8d, [expect]
            code += b"\x0F\x85"                                                 # jne -> callout
            site_later(len(code), ExitSite(ExitKind.CALLOUT, 0, guest, instruction.end, instruction))
            code += b"\0\0\0\0"
            code += load
            if operand16:          # popf: the upper half of EFLAGS stays
                code += self._switch_to_monitor_stack() + b"\x9C\x41\x5A" + self._BACK_TO_GUEST_STACK   # r10 = rflags
                code += b"\x41\x81\xE2" + _u32(0xFFFF0000)                      # and r10d, 0xffff0000
                code += b"\x45\x09\xD0"                                         # or r8d, r10d
            code += _lea_esp(size)
            code += self._switch_to_monitor_stack()
            code += b"\x41\x50\x9D"                                             # push r8; popfq
            code += self._BACK_TO_GUEST_STACK
            self._window_site(out, instruction, mark)
            return
        if procedure in (Procedure.READ_SEGMENT_REGISTER, Procedure.PUSH_SEGMENT_REGISTER,
                         Procedure.STORE_SYSTEM_SEGMENT, Procedure.SMSW, Procedure.READ_CONTROL_REGISTER):
            self._emit_read_virtual(out, instruction, procedure, mark, operand16)
            return
        if procedure is Procedure.RDTSC:
            self._emit_rdtsc(out, instruction, mark)
            return
        if procedure is Procedure.STORE_DESCRIPTOR_TABLE:
            table = VCPU_GDTR if insn.id == X.X86_INS_SGDT else VCPU_IDTR
            self._check_segment_prefix(instruction)
            mark(guest)
            code += self._guest_operand(insn, b"\x8D", R8, operand16=False)            # lea r8d, m
            code += _monitor(b"\x8B", R9, self.areas.vcpu + table)                # mov r9d, [limit, base low]
            code += b"\x45\x89\x08"                                               # mov [r8], r9d
            if operand16:    # a 16-bit sgdt/sidt stores a 24-bit base: high byte zero
                code += _monitor(b"\x0F\xB6", R9, self.areas.vcpu + table + 4)    # movzx r9d, byte [base 16-23]
            else:
                code += _monitor(b"\x8B", R9, self.areas.vcpu + table + 4)
            code += b"\x66\x45\x89\x48\x04"                                       # mov [r8+4], r9w
            return
        raise UntranslatableForm(procedure)

    def _emit_rdtsc(self, out: Translation, instruction: GuestInstruction, mark) -> None:
        """edx:eax = the virtual clock's cycles once this instruction retires, flag-free: the
        scratch page's base minus the budget left minus the block's instructions after this one
        (the prologue charged them all; translator/layout.py). While the virtual-CPU block says
        rdtsc faults (CR4.TSD outside ring 0) it exits to its callout, which raises the #GP."""
        if not self._inline_timestamp:
            raise UntranslatableForm("rdtsc before time is counted")
        code = out.code
        mark(instruction.address)
        self._emit_vcpu_check(out, instruction, mark, VCPU_TSC_CHECK, ExitKind.CALLOUT)
        code += _monitor(b"\x63", EAX, self.areas.scratch + SCRATCH_BUDGET, w=1)       # movsxd rax, [budget]
        code += b"\x48\xF7\xD0"                                                       # not rax: -left - 1
        code += _monitor(b"\x8B", EDX, self.areas.scratch + SCRATCH_TSC_BASE, w=1)     # mov rdx, [base]
        code += b"\x48\x8D\x84\x10" + _u32((1 - self._after) & 0xFFFFFFFF)          # lea rax, [rax+rdx+1-after]
        code += _monitor(b"\x89", EAX, self.areas.scratch + SCRATCH_TSC_VALUE, w=1)    # mov [value], rax
        code += b"\x89\xC0"                                                            # mov eax, eax
        code += _monitor(b"\x8B", EDX, self.areas.scratch + SCRATCH_TSC_VALUE + 4)     # mov edx, [value + 4]

    def _check_segment_prefix(self, instruction: GuestInstruction) -> None:
        if any(p in SEGMENT_PREFIXES for p in _prefixes(instruction.bytes)):
            raise UntranslatableForm("segment override on an emulated memory operand")

    def _emit_read_virtual(self, out, instruction, procedure, mark, operand16) -> None:
        """Instructions that read one virtual-CPU value into a register, memory or the stack."""
        insn, code, guest = instruction.insn, out.code, instruction.address
        if procedure is Procedure.PUSH_SEGMENT_REGISTER:
            source = self.areas.vcpu + VCPU_SELECTOR[insn.operands[0].reg]
            size = 2 if operand16 else 4
            mark(guest)
            code += _monitor(b"\x8B", R8, source)                                  # mov r8d, [vcpu.sel]
            code += self._stack_access(b"\x89", R8, -size, b"\x66" if operand16 else b"")
            code += _lea_esp(-size)
            return
        if procedure is Procedure.READ_SEGMENT_REGISTER:
            source, width16 = self.areas.vcpu + VCPU_SELECTOR[insn.operands[1].reg], operand16
        elif procedure is Procedure.STORE_SYSTEM_SEGMENT:
            source = self.areas.vcpu + (VCPU_LDTR if insn.id == X.X86_INS_SLDT else VCPU_TR)
            width16 = operand16
        elif procedure is Procedure.SMSW:
            source, width16 = self.areas.vcpu + VCPU_CR[0], True   # smsw writes 16 bits, even to r32
        else:   # read_control_register: mov r32, crN
            number = int(insn.reg_name(insn.operands[1].reg)[2:])
            if number not in VCPU_CR:
                raise UntranslatableForm(f"cr{number}")
            source, width16 = self.areas.vcpu_privileged + VCPU_CR[number], False
        destination = insn.operands[0]
        if destination.type == X.X86_OP_REG:
            mark(guest)
            code += _monitor(b"\x8B", REGISTER_NUMBER[destination.reg], source, b"\x66" if width16 else b"")
            return
        # memory destination: always a 16-bit store
        self._check_segment_prefix(instruction)
        mark(guest)
        code += _monitor(b"\x8B", R8, source)                                      # mov r8d, [source]
        code += self._guest_operand(insn, b"\x89", R8, operand16=True)                  # mov m16, r8w

    # -- control flow --------------------------------------------------------------------------
    def _emit_direct_branch(self, out: Translation, instruction: GuestInstruction, mark, chainable) -> None:
        insn, code, guest = instruction.insn, out.code, instruction.address
        target = insn.operands[0].imm & 0xFFFFFFFF
        fallthrough = instruction.end
        raw = instruction.bytes
        prefixes = _prefixes(raw)
        if 0x66 in prefixes:
            raise UnsupportedForm(f"16-bit near branch {instruction} at {guest:#x}")
        opcode = raw[len(prefixes)]
        if insn.id == X.X86_INS_CALL:
            mark(guest)
            code += self._stack_access(b"\xC7", 0, -4) + _u32(fallthrough)   # mov dword [esp-4], the GUEST return address
            code += _lea_esp(-4)
            mark(target)
            self._slot(out, ExitSite(ExitKind.BRANCH, 0, target))
        elif insn.id == X.X86_INS_JMP:
            mark(target)
            self._slot(out, ExitSite(ExitKind.BRANCH, 0, target))
        elif opcode in (0xE0, 0xE1, 0xE2, 0xE3) and ADDRESS_SIZE in prefixes:
            self._emit_cx_branch(out, instruction, opcode, target, mark)
        elif opcode in (0xE0, 0xE1, 0xE2, 0xE3):          # loop*, jecxz: rel8 only, ECX by 0x67
            mark(guest)
            if insn.id in _NEEDS_FRESH_ENGINE_BLOCK:
                code += ENGINE_BLOCK_BREAK
            code += bytes([ADDRESS_SIZE]) + prefixes + bytes([opcode, EXIT_SLOT_SIZE])   # taken: skip the fallthrough slot
            mark(fallthrough)
            self._slot(out, ExitSite(ExitKind.BRANCH, 0, fallthrough))
            mark(target)
            self._slot(out, ExitSite(ExitKind.BRANCH, 0, target))
        else:                                             # jcc short or near
            condition = (opcode & 0x0F) if opcode != 0x0F else (raw[len(prefixes) + 1] & 0x0F)
            mark(guest)
            code += bytes([0x0F, 0x80 | condition]) + _u32(EXIT_SLOT_SIZE)   # taken: over the fallthrough slot
            mark(fallthrough)
            self._slot(out, ExitSite(ExitKind.BRANCH, 0, fallthrough))
            mark(target)
            self._slot(out, ExitSite(ExitKind.BRANCH, 0, target, branch=len(code) - 4 - EXIT_SLOT_SIZE))

    def _emit_cx_branch(self, out: Translation, instruction: GuestInstruction, opcode: int, target: int,
                        mark) -> None:
        """loop/loope/loopne/jcxz counting in CX (a 0x67 prefix in 32-bit code), which 64-bit
        mode cannot encode: CX is decremented with lea (flags untouched) and tested with jrcxz on
        its zero-extended copy, the guest's rcx kept in r9."""
        code, guest, fallthrough = out.code, instruction.address, instruction.end
        mark(guest)
        if instruction.insn.id in _NEEDS_FRESH_ENGINE_BLOCK:
            code += ENGINE_BLOCK_BREAK
        if opcode != 0xE3:
            code += b"\x44\x8D\x41\xFF" + b"\x66\x44\x89\xC1"             # lea r8d, [rcx-1]; mov cx, r8w
        code += _reg_reg(b"\x89", ECX, R9, w=1) + b"\x0F\xB7\xC9"          # mov r9, rcx; movzx ecx, cx
        mark(guest, ((ECX, "r9"),))
        nonzero_size = 3 + (6 + 2 * EXIT_SLOT_SIZE if opcode in (0xE0, 0xE1) else EXIT_SLOT_SIZE)
        code += bytes([0xE3, nonzero_size])                                    # jrcxz zero
        code += _reg_reg(b"\x89", R9, ECX, w=1)                               # CX != 0: mov rcx, r9
        taken, not_taken = (fallthrough, target) if opcode == 0xE3 else (target, fallthrough)
        if opcode in (0xE0, 0xE1):          # loopne / loope: and ZF clear / set
            mark(guest)
            code += bytes([0x0F, 0x84 if opcode == 0xE1 else 0x85]) + _u32(EXIT_SLOT_SIZE)
            mark(fallthrough)
            self._slot(out, ExitSite(ExitKind.BRANCH, 0, fallthrough))
        mark(taken)
        self._slot(out, ExitSite(ExitKind.BRANCH, 0, taken))
        mark(guest, ((ECX, "r9"),))
        code += _reg_reg(b"\x89", R9, ECX, w=1)                               # CX == 0: mov rcx, r9
        mark(not_taken)
        self._slot(out, ExitSite(ExitKind.BRANCH, 0, not_taken))

    def _emit_indirect_branch(self, out: Translation, instruction: GuestInstruction, mark) -> None:
        """The guest target goes into r8d, then an inline cache in front of the lookup table. The
        guest's flags go into ah/al (its eax into r9d) so that plain `cmp`/`je` can test the
        predictions (patched in by the monitor): Unicorn chains the blocks a `je` ends, while a
        flag-free `jrcxz` returns to its dispatcher every time. A hit restores flags and eax and
        leaves through a chainable slot; a mismatch probes the lookup table (hit: `jmp r10` to
        the translation, whose address no guest instruction can reach; miss: exit with the
        target in r8d)."""
        insn, code, guest = instruction.insn, out.code, instruction.address
        if 0x66 in _prefixes(instruction.bytes):
            raise UnsupportedForm(f"16-bit indirect branch {instruction} at {guest:#x}")
        procedure = instruction.rule.procedure
        pop = 4 + (insn.operands[0].imm if insn.operands else 0) if procedure is Procedure.RET else 0

        def complete_transfer() -> bytes:
            if procedure is Procedure.RET:
                return _lea_esp(pop)
            if procedure is Procedure.INDIRECT_CALL:
                # push the guest return address (r11: on a lookup hit r10 holds the host target)
                return self._stack_access(b"\xC7", 0, -4, scratch=R11) + _u32(instruction.end) + _lea_esp(-4)
            return b""

        mark(guest)
        if procedure is Procedure.RET:
            code += self._stack_access(b"\x8B", R8, 0)                     # mov r8d, [esp]
        else:
            operand = insn.operands[0]
            if operand.type == X.X86_OP_REG:
                code += _reg_reg(b"\x89", REGISTER_NUMBER[operand.reg], R8)   # mov r8d, reg
            else:
                code += self._guest_operand(insn, b"\x8B", R8)                   # mov r8d, m
        code += SAVE_FLAGS
        saved = (FLAGS_IN_AX, EAX_IN_R9)
        mark(guest, saved)
        compares, branches = [], []
        # The branches to the predictions are short (rel8) unless the predicted paths are too
        # long for them (a call's push through a based SS): then near (rel32).
        predicted_path = len(RESTORE_FLAGS) + len(complete_transfer()) + EXIT_SLOT_SIZE
        short = self._predictions * predicted_path < 128      # the `jmp general` jumps over them all
        je, jmp = (b"\x74", b"\xEB") if short else (b"\x0F\x84", b"\xE9")
        width = 1 if short else 4
        for _ in range(self._predictions):
            code += b"\x41\x81\xF8"                                         # cmp r8d, prediction k
            compares.append(len(code))
            code += _u32(0)
            code += je + bytes(width)                                       # je prediction k
            branches.append(len(code) - width)
        code += jmp + bytes(width)                                          # jmp general
        skip_at = len(code) - width

        def aim(at: int) -> None:
            distance = len(code) - (at + width)
            assert not short or distance < 128
            code[at:at + width] = distance.to_bytes(width, "little")

        predicted_sites = []
        for k in range(self._predictions):
            aim(branches[k])
            mark(guest, saved)
            code += RESTORE_FLAGS[:3]
            mark(guest, (EAX_IN_R9,))
            code += RESTORE_FLAGS[3:]
            mark(guest)
            code += complete_transfer()
            predicted_sites.append(len(out.exits))
            self._slot(out, ExitSite(ExitKind.PREDICTED, 0, 0))
        aim(skip_at)
        # General case. Until every prediction is filled, leave here (after completing the
        # transfer) so the monitor can fill the next one; then it patches the 2-byte nop in front
        # into a jump over this exit and mismatches probe the table without leaving the cache.
        mark(guest, saved)
        cache, learn_patch = (), ()
        if self._predictions:
            cache = (tuple(compares), tuple(predicted_sites))
            learn_at = len(code)
            code += b"\x66\x90"                                             # nop, later jmp over
            code += complete_transfer()
            learn = ExitSite(ExitKind.MISS, 0, guest, instruction.end, instruction, saved, cache)
            self._site(out, learn)
            learn_patch = (learn_at, b"\xEB" + bytes([len(code) - (learn_at + 2)]), learn.offset)
            learn.learn = learn_patch
        mark(guest, saved)
        table = self.areas.lookup_table
        code += b"\x45\x89\xC2"                                             # mov r10d, r8d
        code += b"\x45\x0F\xB7\xD2"                                         # movzx r10d, r10w
        code += b"\x47\x3B\x84\xD7" + _u32(table)                           # cmp r8d, [r15 + r10*8 + table] (tag)
        code += b"\x75\x00"                                                 # jne miss
        jne_at = len(code) - 1
        code += b"\x47\x8B\x94\xD7" + _u32(table + 4)                       # mov r10d, [r15 + r10*8 + table + 4]
        code += b"\x4F\x8D\x14\x17"                                         # lea r10, [r15 + r10]
        code += RESTORE_FLAGS[:3]
        mark(guest, (EAX_IN_R9,))
        code += RESTORE_FLAGS[3:]
        mark(guest)
        code += complete_transfer()
        code += b"\x41\xFF\xE2"                                             # jmp r10
        code[jne_at] = len(code) - (jne_at + 1)
        mark(guest, saved)
        code += complete_transfer()
        miss = ExitSite(ExitKind.MISS, 0, guest, instruction.end, instruction, saved, cache)
        self._site(out, miss)
        miss.learn = learn_patch

    def _emit_callout(self, out: Translation, instruction: GuestInstruction, mark) -> None:
        mark(instruction.address)
        self._site(out, ExitSite(ExitKind.CALLOUT, 0, instruction.address, instruction.end, instruction))

