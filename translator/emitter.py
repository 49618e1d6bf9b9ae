"""Code generation: turn a decoded guest block into translated code.

Innocuous instructions are copied byte for byte; each sensitive one becomes its inline
emulation or a callout site; the block's final control transfer becomes exit slots (patched
later into direct jumps to translated successors) or a flag-preserving probe of the lookup
table. The output is position independent: absolute references go only to monitor areas, and
jumps to other blocks are made by patching exit slots after placement.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from capstone import x86_const as X

from translator.classify import Handling
from translator.decoder import BlockEnd, GuestBlock, GuestInstruction
from translator.layout import (SCRATCH_BUDGET, SCRATCH_IO_SITE, SCRATCH_JUMP, SCRATCH_SPILL,
                               VCPU_CR, VCPU_GDTR, VCPU_IDTR, VCPU_IO_CHECK, VCPU_LDTR, VCPU_POPF_EXPECT,
                               VCPU_PUSHF_ADJUST, VCPU_SELECTOR, VCPU_TR, MonitorAddresses)

EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)
INT3 = 0xCC
# An exit slot: int3 and padding while unlinked, `jmp rel32` to the target once chained.
SLOT_SIZE = 5
UNLINKED_SLOT = bytes([INT3]) + b"\x90" * (SLOT_SIZE - 1)
WINDOW_SITE_DISARMED = b"\x66\x90"     # a 2-byte nop; armed, its first byte is int3
_PREFIXES = {0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67}
_SEGMENT_PREFIXES = {0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65}
_REGISTER_NUMBER = {}
for _number, _names in enumerate([("EAX", "AX", "AL"), ("ECX", "CX", "CL"), ("EDX", "DX", "DL"),
                                  ("EBX", "BX", "BL"), ("ESP", "SP", "AH"), ("EBP", "BP", "CH"),
                                  ("ESI", "SI", "DH"), ("EDI", "DI", "BH")]):
    for _name in _names:
        _REGISTER_NUMBER[getattr(X, f"X86_REG_{_name}")] = _number


INLINE_CACHE_ENTRIES = 4           # predicted targets per indirect branch before the table

# The guest's arithmetic flags parked in ah (SF ZF AF PF CF) and al (OF as 0/1) so that emitted
# code may compare; `add al, 0x7f; sahf` puts them back. In a restore list, FLAGS_IN_AX tells
# the monitor that the live flags are not the guest's: rebuild them from ax (before eax).
SAVE_FLAGS = b"\x9F\x0F\x90\xC0"      # lahf; seto al
RESTORE_FLAGS = b"\x04\x7F\x9E"       # add al, 0x7f; sahf
FLAGS_IN_AX = 8

# `jmp` to the next instruction: ends the engine's (Unicorn's) own translation block there.
ENGINE_BLOCK_BREAK = b"\xE9\0\0\0\0"
# Unicorn 2.1.1 mixes up its lazy flags when a flag-setting instruction precedes cmpxchg8b,
# loope or loopne in the same engine block (cmpxchg8b loses the flags; after loope/loopne
# pushf shows garbage). The translator starts a fresh engine block before each of them, where
# the flags are whole again. tests/test_translator.py pins the engine bug and the workaround.
_NEEDS_FRESH_ENGINE_BLOCK = {X.X86_INS_CMPXCHG8B, X.X86_INS_LOOPE, X.X86_INS_LOOPNE}
# String port I/O, which the engine lets touch memory before the I/O hook can refuse it: INS
# stores a dummy 0 at ES:EDI first, and a rep form with ECX = 0 calls no hook at all. Outside
# CPL <= IOPL the monitor checks the permission in front of it (ExitKind.IO_PERMISSION).
STRING_IO = {X.X86_INS_INSB, X.X86_INS_INSW, X.X86_INS_INSD,
             X.X86_INS_OUTSB, X.X86_INS_OUTSW, X.X86_INS_OUTSD}


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


@dataclass
class ExitSite:
    kind: ExitKind
    offset: int                    # host offset of the int3 that reports this exit
    guest_eip: int                 # BRANCH: the successor; others: the guest instruction concerned
    next_eip: int = 0              # CALLOUT: the instruction after the one emulated
    instruction: Optional[GuestInstruction] = None
    restore: tuple[int, ...] = ()  # registers to reload from the scratch page before the monitor
                                   # acts (FLAGS_IN_AX first: the guest's flags saved in ah/al)
    inline_cache: tuple = ()       # MISS: (offsets of the compare imm32s, indices of the
                                   # PREDICTED slots) of the same branch
    target: int = EAX              # MISS: the register holding the guest target
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
    restore: tuple[int, ...] = ()


@dataclass
class Rewrite:
    guest_eip: int
    text: str
    handling: Handling
    procedure: str
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


def _modrm_offset(raw: bytes) -> int:
    index = 0
    while raw[index] in _PREFIXES:
        index += 1
    if raw[index] == 0x0F:
        return index + (3 if raw[index + 1] in (0x38, 0x3A) else 2)
    return index + 1


def _prefixes(raw: bytes) -> bytes:
    index = 0
    while raw[index] in _PREFIXES:
        index += 1
    return raw[:index]


def _memory_operand(insn):
    for operand in insn.operands:
        if operand.type == X.X86_OP_MEM:
            return operand
    return None


def _registers_in_memory_operand(insn) -> set[int]:
    operand = _memory_operand(insn)
    if operand is None:
        return set()
    return {_REGISTER_NUMBER[r] for r in (operand.mem.base, operand.mem.index) if r in _REGISTER_NUMBER}


def _reencode_rm(insn, opcode: bytes, reg: int, keep_operand_size: bool = True) -> bytes:
    """The instruction's own r/m operand under a different opcode and reg field: e.g. the
    `[ebx+8]` of `jmp dword ptr [ebx+8]` as `mov eax, [ebx+8]`."""
    raw = bytes(insn.bytes)
    at = _modrm_offset(raw)
    prefixes = bytes(p for p in _prefixes(raw) if keep_operand_size or p != 0x66)
    modrm = (raw[at] & 0xC7) | (reg << 3)
    return prefixes + opcode + bytes([modrm]) + raw[at + 1:]


class Emitter:
    """Translates one GuestBlock into a Translation."""

    def __init__(self, addresses: MonitorAddresses) -> None:
        self.a = addresses

    # -- small encodings -----------------------------------------------------------------------
    def _scratch(self, register: int) -> int:
        return self.a.scratch + SCRATCH_SPILL + 4 * register

    @staticmethod
    def _mov_reg_abs(register: int, address: int, operand16: bool = False) -> bytes:
        return (b"\x66" if operand16 else b"") + bytes([0x8B, (register << 3) | 5]) + _u32(address)

    @staticmethod
    def _mov_abs_reg(address: int, register: int, operand16: bool = False) -> bytes:
        return (b"\x66" if operand16 else b"") + bytes([0x89, (register << 3) | 5]) + _u32(address)

    def _spill(self, *registers: int) -> bytes:
        return b"".join(self._mov_abs_reg(self._scratch(r), r) for r in registers)

    def _reload(self, *registers: int) -> bytes:
        return b"".join(self._mov_reg_abs(r, self._scratch(r)) for r in registers)

    # -- block ---------------------------------------------------------------------------------
    def breakpoint(self, address: int) -> Translation:
        """A block that is only a debugger breakpoint before the guest instruction at `address`."""
        self._owner = address
        out = Translation()
        out.pc_map.append(PcEntry(0, address))
        self._site(out, ExitSite(ExitKind.BREAKPOINT, 0, address))
        return out

    def translate(self, block: GuestBlock, *, budget: bool = False, chainable: bool = True,
                  profile: bool = False, predictions: int = INLINE_CACHE_ENTRIES) -> Translation:
        """`predictions`: inline-cache entries per indirect branch (fewer make a smaller block)."""
        out = Translation()
        self._predictions = predictions
        self._owner = block.address
        pending: list[tuple[int, ExitSite]] = []     # (offset of rel32 to fix, site) for jumps to sites
        code = out.code

        def mark(guest_eip: int, restore: tuple[int, ...] = ()) -> None:
            out.pc_map.append(PcEntry(len(code), guest_eip, restore))

        def site_later(rel_offset: int, site: ExitSite) -> None:
            pending.append((rel_offset, site))

        if budget and block.instructions:
            self._emit_budget_check(out, block, site_later, mark)
        out.body = len(code)
        if profile:
            self._emit_execution_counter(out, block, mark)

        last = block.instructions[-1] if block.instructions else None
        for instruction in block.instructions:
            self._owner = instruction.address
            rule = instruction.rule
            start = len(code)
            if rule.handling in (Handling.COPY, Handling.IO_HOOK) or rule.procedure == "interrupt_flag":
                if instruction.insn.id in _NEEDS_FRESH_ENGINE_BLOCK:
                    mark(instruction.address)
                    code += ENGINE_BLOCK_BREAK
                mark(instruction.address)
                if instruction.insn.id in STRING_IO:
                    self._emit_io_permission_guard(out, instruction, mark)
                if rule.handling is Handling.IO_HOOK:
                    # Say which guest instruction this is: inside the I/O hook the engine's EIP
                    # is stale, and a refused access must fault at exactly this instruction.
                    code += b"\xC7\x05" + _u32(self.a.scratch + SCRATCH_IO_SITE) + _u32(instruction.address)
                code += instruction.bytes
                if instruction.insn.id == X.X86_INS_STI:
                    self._window_site(out, instruction, mark)
                if rule.handling is Handling.IO_HOOK:
                    # End the engine's own block here: a device may stop the machine from the
                    # I/O hook, and the engine stops only between its blocks.
                    mark(instruction.end)
                    code += ENGINE_BLOCK_BREAK
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
        if block.end in (BlockEnd.PAGE, BlockEnd.LIMIT) or (block.end is BlockEnd.BRANCH and last is None):
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

    def _emit_io_permission_guard(self, out: Translation, instruction: GuestInstruction, mark) -> None:
        """In front of string I/O: while the virtual-CPU block says the guest's CPL is above its
        IOPL, an exit where the monitor checks the TSS bitmap (#GP, or on to the instruction).
        Flag-free (jecxz), with ECX spilled around the test; at CPL <= IOPL no exit."""
        code = out.code
        code += self._spill(ECX) + self._mov_reg_abs(ECX, self.a.vcpu + VCPU_IO_CHECK)
        mark(instruction.address, (ECX,))
        code += b"\xE3\x07"                                   # jecxz over the reload and the site
        code += self._reload(ECX)                               # 6 bytes
        mark(instruction.address)
        self._site(out, ExitSite(ExitKind.IO_PERMISSION, 0, instruction.address, instruction.end, instruction))
        mark(instruction.address, (ECX,))                       # where jecxz lands
        code += self._reload(ECX)
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

    def _slot(self, out: Translation, site: ExitSite) -> None:
        site.offset = len(out.code)
        site.owner = site.owner or self._owner
        out.exits.append(site)
        out.code += UNLINKED_SLOT

    # -- instruction budget --------------------------------------------------------------------
    def _emit_budget_check(self, out, block, site_later, mark) -> None:
        """Subtract the block's guest instruction count from the budget, saving and restoring
        the guest's flags without touching its stack (lahf/seto ... add al,0x7f/sahf)."""
        code = out.code
        mark(block.address, (EAX,))
        code += self._spill(EAX)
        code += SAVE_FLAGS
        mark(block.address, (FLAGS_IN_AX, EAX))
        count = len(block.instructions)
        code += b"\x81\x2D" + _u32(self.a.scratch + SCRATCH_BUDGET) + _u32(count)   # sub [budget], n
        code += b"\x0F\x82"                                           # jb -> budget exit
        site_later(len(code), ExitSite(ExitKind.BUDGET, 0, block.address, restore=(FLAGS_IN_AX, EAX)))
        code += b"\0\0\0\0"
        code += RESTORE_FLAGS
        mark(block.address, (EAX,))
        code += self._reload(EAX)
        code += ENGINE_BLOCK_BREAK

    def _emit_execution_counter(self, out, block, mark) -> None:
        """Count executions of this block without touching the guest's flags (--profile). The
        counter's address depends on where the block is placed: the cache writes it in at the
        offsets listed in counter_fixups."""
        code = out.code
        mark(block.address, (ECX,))
        code += self._spill(ECX)
        code += b"\x8B\x0D"                                        # mov ecx, [counter]
        out.counter_fixups.append(len(code))
        code += _u32(0)
        code += b"\x8D\x49\x01"                                    # lea ecx, [ecx + 1]
        code += b"\x89\x0D"                                        # mov [counter], ecx
        out.counter_fixups.append(len(code))
        code += _u32(0)
        code += self._reload(ECX)

    # -- inline emulations ---------------------------------------------------------------------
    def _emit_inline(self, out: Translation, instruction: GuestInstruction, mark, site_later) -> None:
        insn, procedure, code = instruction.insn, instruction.rule.procedure, out.code
        guest = instruction.address
        operand16 = 0x66 in _prefixes(instruction.bytes)
        if procedure == "pushf":
            mark(guest)
            code += b"\x66\x9C" if operand16 else b"\x9C"            # the guest-visible push
            mark(guest, (EAX, ECX))
            code += self._spill(EAX, ECX)
            code += b"\x8B\x04\x24"                                    # mov eax, [esp]
            code += self._mov_reg_abs(ECX, self.a.vcpu + VCPU_PUSHF_ADJUST)
            code += b"\x8D\x04\x08"                                    # lea eax, [eax+ecx]
            code += (b"\x66" if operand16 else b"") + b"\x89\x04\x24"  # mov [esp], eax/ax
            code += self._reload(ECX, EAX)
            return
        if procedure == "popf":
            mark(guest, (EAX,))
            code += self._spill(EAX)
            code += (b"\x0F\xB7\x04\x24" if operand16 else b"\x8B\x04\x24")   # movzx eax, word [esp] / mov eax, [esp]
            code += b"\x25" + _u32(0x3100)                             # and eax, IOPL|TF
            code += b"\x3B\x05" + _u32(self.a.vcpu + VCPU_POPF_EXPECT)  # cmp eax, [expect]
            code += self._reload(EAX)
            code += b"\x0F\x85"                                        # jne -> callout
            site_later(len(code), ExitSite(ExitKind.CALLOUT, 0, guest, instruction.end, instruction))
            code += b"\0\0\0\0"
            mark(guest)
            code += instruction.bytes                                  # popf: IF and flags natively
            self._window_site(out, instruction, mark)
            return
        if procedure in ("read_segment_register", "push_segment_register", "store_system_segment",
                         "smsw", "read_control_register"):
            self._emit_read_virtual(out, instruction, procedure, mark, operand16)
            return
        if procedure == "store_descriptor_table":
            table = VCPU_GDTR if insn.id == X.X86_INS_SGDT else VCPU_IDTR
            self._check_segment_prefix(instruction)
            mark(guest, (EAX, ECX))
            code += self._spill(EAX, ECX)
            code += _reencode_rm(insn, b"\x8D", EAX, keep_operand_size=False)   # lea eax, m
            code += self._mov_reg_abs(ECX, self.a.vcpu + table)
            code += b"\x89\x08"                                        # mov [eax], ecx
            if operand16:    # a 16-bit sgdt/sidt stores a 24-bit base: high byte zero
                code += b"\x0F\xB6\x0D" + _u32(self.a.vcpu + table + 4)   # movzx ecx, byte [base bits 16-23]
            else:
                code += self._mov_reg_abs(ECX, self.a.vcpu + table + 4)
            code += b"\x66\x89\x48\x04"                                # mov [eax+4], cx
            code += self._reload(ECX, EAX)
            return
        raise UntranslatableForm(procedure)

    def _check_segment_prefix(self, instruction: GuestInstruction) -> None:
        if any(p in _SEGMENT_PREFIXES for p in _prefixes(instruction.bytes)):
            raise UntranslatableForm("segment override on an emulated memory operand")

    def _emit_read_virtual(self, out, instruction, procedure, mark, operand16) -> None:
        """Instructions that read one virtual-CPU value into a register, memory or the stack."""
        insn, code, guest = instruction.insn, out.code, instruction.address
        if procedure == "push_segment_register":
            source = self.a.vcpu + VCPU_SELECTOR[insn.operands[0].reg]
            mark(guest)
            code += (b"\x66" if operand16 else b"") + b"\xFF\x35" + _u32(source)   # push dword [vcpu.sel]
            return
        if procedure == "read_segment_register":
            source, width16 = self.a.vcpu + VCPU_SELECTOR[insn.operands[1].reg], operand16
        elif procedure == "store_system_segment":
            source = self.a.vcpu + (VCPU_LDTR if insn.id == X.X86_INS_SLDT else VCPU_TR)
            width16 = operand16
        elif procedure == "smsw":
            source, width16 = self.a.vcpu + VCPU_CR[0], True   # smsw writes 16 bits, even to r32
        else:   # read_control_register: mov r32, crN
            number = int(insn.reg_name(insn.operands[1].reg)[2:])
            if number not in VCPU_CR:
                raise UntranslatableForm(f"cr{number}")
            source, width16 = self.a.vcpu_privileged + VCPU_CR[number], False
        destination = insn.operands[0]
        if destination.type == X.X86_OP_REG:
            mark(guest)
            code += self._mov_reg_abs(_REGISTER_NUMBER[destination.reg], source, width16)
            return
        # memory destination: always a 16-bit store, through a register the operand does not use
        self._check_segment_prefix(instruction)
        busy = _registers_in_memory_operand(insn)
        scratch = next(r for r in (EAX, ECX, EDX, EBX) if r not in busy)
        mark(guest, (scratch,))
        code += self._spill(scratch)
        code += self._mov_reg_abs(scratch, source, True)
        code += b"\x66" + _reencode_rm(insn, b"\x89", scratch, keep_operand_size=False)   # mov m16, r16
        code += self._reload(scratch)

    # -- control flow --------------------------------------------------------------------------
    def _emit_direct_branch(self, out: Translation, instruction: GuestInstruction, mark, chainable) -> None:
        insn, code, guest = instruction.insn, out.code, instruction.address
        target = insn.operands[0].imm & 0xFFFFFFFF
        fallthrough = instruction.end
        raw = instruction.bytes
        if 0x66 in _prefixes(raw):
            raise UnsupportedForm(f"16-bit near branch {instruction} at {guest:#x}")
        opcode = raw[len(_prefixes(raw))]
        if insn.id == X.X86_INS_CALL:
            mark(guest)
            code += b"\x68" + _u32(fallthrough)           # push the GUEST return address
            mark(target)
            self._slot(out, ExitSite(ExitKind.BRANCH, 0, target))
        elif insn.id == X.X86_INS_JMP:
            mark(target)
            self._slot(out, ExitSite(ExitKind.BRANCH, 0, target))
        elif opcode in (0xE0, 0xE1, 0xE2, 0xE3):          # loop*, jecxz/jcxz: rel8 only
            mark(guest)
            if insn.id in _NEEDS_FRESH_ENGINE_BLOCK:
                code += ENGINE_BLOCK_BREAK
            code += _prefixes(raw) + bytes([opcode, SLOT_SIZE])      # taken: skip the fallthrough slot
            mark(fallthrough)
            self._slot(out, ExitSite(ExitKind.BRANCH, 0, fallthrough))
            mark(target)
            self._slot(out, ExitSite(ExitKind.BRANCH, 0, target))
        else:                                             # jcc short or near
            condition = (opcode & 0x0F) if opcode != 0x0F else (raw[len(_prefixes(raw)) + 1] & 0x0F)
            mark(guest)
            code += bytes([0x0F, 0x80 | condition]) + _u32(SLOT_SIZE)   # taken: over the fallthrough slot
            mark(fallthrough)
            self._slot(out, ExitSite(ExitKind.BRANCH, 0, fallthrough))
            mark(target)
            self._slot(out, ExitSite(ExitKind.BRANCH, 0, target, branch=len(code) - 4 - SLOT_SIZE))

    def _emit_indirect_branch(self, out: Translation, instruction: GuestInstruction, mark) -> None:
        """An inline cache in front of the lookup table. The guest's flags go into ah/al (lahf;
        seto al) so that plain `cmp`/`je` can test the predictions (patched in by the monitor)
        against the target ([esp] for ret, the register, or else the operand loaded into ecx):
        Unicorn chains the blocks a `je` ends, while the flag-free `jecxz` returns to its
        dispatcher every time (measured: parking the flags costs about one `jecxz`, and each
        further compare almost nothing). A hit restores flags and registers and leaves through
        a chainable slot; a mismatch probes the lookup table with the target in ecx (hit: jump
        to the translation; miss: exit with the target in edx)."""
        insn, code, guest = instruction.insn, out.code, instruction.address
        if 0x66 in _prefixes(instruction.bytes):
            raise UnsupportedForm(f"16-bit indirect branch {instruction} at {guest:#x}")
        procedure = instruction.rule.procedure
        pop = 4 + (insn.operands[0].imm if insn.operands else 0) if procedure == "ret" else 0

        def complete_transfer() -> bytes:
            if procedure == "ret":
                if pop < 0x80:
                    return b"\x8D\x64\x24" + bytes([pop])                  # lea esp, [esp + pop]
                return b"\x8D\xA4\x24" + _u32(pop)
            if procedure == "indirect_call":
                return b"\x68" + _u32(instruction.end)                        # push guest return address
            return b""

        operand = insn.operands[0] if procedure != "ret" else None
        target_in_ecx = False
        if procedure == "ret":                                 # cmp dword [esp], prediction
            compare, load_target = b"\x81\x3C\x24", b"\x8B\x0C\x24"      # mov ecx, [esp]
        elif operand.type == X.X86_OP_REG and _REGISTER_NUMBER[operand.reg] != EAX:
            register = _REGISTER_NUMBER[operand.reg]        # cmp reg, prediction (ah/al hold the flags)
            compare, load_target = bytes([0x81, 0xF8 | register]), bytes([0x8B, 0xC8 | register])
        else:                                                  # target computed into ecx first
            compare, load_target = b"\x81\xF9", _reencode_rm(insn, b"\x8B", ECX)
            target_in_ecx = True

        def put_target_in_ecx() -> None:
            mark(guest, saved + (ECX,))
            code.extend(self._spill(ECX) + load_target)

        saved = ()
        if target_in_ecx:
            put_target_in_ecx()
        mark(guest, (EAX,) + saved)
        code += self._spill(EAX)
        code += SAVE_FLAGS
        saved = (FLAGS_IN_AX, EAX, ECX) if target_in_ecx else (FLAGS_IN_AX, EAX)
        mark(guest, saved)
        compares, branches = [], []
        for _ in range(self._predictions):
            code += compare                                                 # cmp <target>, prediction k
            compares.append(len(code))
            code += _u32(0)
            code += b"\x74\x00"                                             # je prediction k
            branches.append(len(code) - 1)
        code += b"\xEB\x00"                                                 # jmp general
        skip_at = len(code) - 1
        predicted_sites = []
        for k in range(self._predictions):
            assert len(code) - (branches[k] + 1) < 128
            code[branches[k]] = len(code) - (branches[k] + 1)
            mark(guest, saved)
            code += RESTORE_FLAGS
            mark(guest, saved[1:])
            code += self._reload(*saved[1:])
            mark(guest)
            code += complete_transfer()
            predicted_sites.append(len(out.exits))
            self._slot(out, ExitSite(ExitKind.PREDICTED, 0, 0))
        assert len(code) - (skip_at + 1) < 128
        code[skip_at] = len(code) - (skip_at + 1)
        if not target_in_ecx:
            put_target_in_ecx()
            saved = (FLAGS_IN_AX, EAX, ECX)
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
            learn = ExitSite(ExitKind.MISS, 0, guest, instruction.end, instruction, saved, cache, target=ECX)
            self._site(out, learn)
            learn_patch = (learn_at, b"\xEB" + bytes([len(code) - (learn_at + 2)]), learn.offset)
            learn.learn = learn_patch
        probing = (FLAGS_IN_AX, EAX, ECX, EDX)
        mark(guest, probing)
        table = self.a.lookup_table
        code += self._spill(EDX)
        code += b"\x8B\xD1"                                                 # mov edx, ecx
        code += b"\x0F\xB7\xC9"                                             # movzx ecx, cx
        code += b"\x3B\x14\xCD" + _u32(table)                               # cmp edx, [ecx*8 + table] (tag)
        code += b"\x75\x00"                                                 # jne miss
        jne_at = len(code) - 1
        code += b"\x8B\x0C\xCD" + _u32(table + 4)                           # mov ecx, [ecx*8 + table + 4]
        code += self._mov_abs_reg(self.a.scratch + SCRATCH_JUMP, ECX)
        code += RESTORE_FLAGS
        mark(guest, (EAX, ECX, EDX))
        code += self._reload(EAX, ECX, EDX)
        mark(guest)
        code += complete_transfer()
        code += b"\xFF\x25" + _u32(self.a.scratch + SCRATCH_JUMP)            # jmp [scratch.jump]
        code[jne_at] = len(code) - (jne_at + 1)
        mark(guest, probing)
        code += complete_transfer()
        miss = ExitSite(ExitKind.MISS, 0, guest, instruction.end, instruction, probing, cache, target=EDX)
        self._site(out, miss)
        miss.learn = learn_patch

    def _emit_callout(self, out: Translation, instruction: GuestInstruction, mark) -> None:
        mark(instruction.address)
        self._site(out, ExitSite(ExitKind.CALLOUT, 0, instruction.address, instruction.end, instruction))
