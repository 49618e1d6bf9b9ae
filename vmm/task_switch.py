"""Hardware task switches (jmp/call to a TSS or a task gate, a task gate in the IDT, iret with NT)
performed on the GuestCpu view for every mode, as QEMU's switch_tss_ra does them.

The steps and their order are QEMU's (target/i386/tcg/seg_helper.c), which the reference machine
runs: the new TSS descriptor's checks (#NP, #TS with the selector, #GP for a task gate that
names no available TSS), the whole new TSS read and the old one probed, then the old task's
busy bit cleared (jmp, iret), its state saved (EIP, EFLAGS, the general and segment registers;
not CR3 nor the LDT selector), the back link written and NT set (call, and an exception or
interrupt through a task gate), the new busy bit set (jmp, call). That is the commit point:
CR0.TS is set, TR loaded, CR3 loaded if the new TSS is 32-bit and paging is on, then EIP,
EFLAGS and the general registers, the LDT and the segment registers with their checks, whose
faults are the new task's. Like QEMU, the switch ignores the TSS's T bit (no #DB), marks no
segment descriptor accessed, clears DR7's local enables once the new task is loaded, and a
fault after the commit point is delivered with the state loaded so far; the segment registers
it did not get to load are left null (QEMU leaves their new selectors with an unusable cache).
A 16-bit TSS is switched too (16-bit fields, FS and GS null, the upper halves of the registers
kept). Virtual-8086 tasks are not modelled.
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Callable, Optional

from vmm.errors import UnsupportedGuestFeature
from vmm.guest_view import GuestFault, GuestView, accessed_bits_kept
from vmm.x86 import (AC, AF, CF, CR0_PG, CR0_TS, DF, GATE_TASK, GP, ID, IF, IOPL_MASK, NP, NT, OF, PF, RF,
                     SF, TF, TS, VM, ZF, Gate, SegmentDescriptor)

JMP, CALL, IRET, GATE = "jmp", "call", "iret", "gate"   # how a switch started (GATE: the IDT)

TSS_BUSY = 1 << 9               # in the descriptor's high dword: type 9 -> 11, 1 -> 3
TSS32_MIN_LIMIT, TSS16_MIN_LIMIT = 103, 43
_TSS_TYPES = (1, 9)             # available 16-bit and 32-bit TSS
# EFLAGS bits a switch loads from the new TSS (QEMU's cpu_load_eflags mask, plus the arithmetic
# flags and DF it always loads); a 16-bit TSS only has the low 16 of them.
_LOADED_FLAGS = TF | AC | ID | IF | IOPL_MASK | VM | RF | NT | CF | PF | AF | ZF | SF | OF | DF
_GENERAL = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
_SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")       # the TSS's order (QEMU's segs[])
_DATA_SEGMENTS = ("es", "ds", "fs", "gs")


class TaskFault(GuestFault):
    """A fault after the commit point: the new task's. `eip` is the new task's EIP, which a
    switch through the IDT leaves as the faulting EIP (QEMU restores the far jmp's, call's or
    iret's own address instead, as for any fault of those instructions)."""

    def __init__(self, vector: int, error_code: int, eip: int) -> None:
        super().__init__(vector, error_code)
        self.eip = eip


class _Tss:
    """The fields of a TSS a switch loads, read in one piece."""

    def __init__(self, raw: bytes, is32: bool) -> None:
        if is32:                                 # raw = bytes 0x1C..0x68
            self.cr3, self.eip, self.eflags = struct.unpack_from("<III", raw, 0)
            self.registers = struct.unpack_from("<8I", raw, 0x0C)
            self.segments = [value & 0xFFFF for value in struct.unpack_from("<6I", raw, 0x2C)]
            self.ldt = struct.unpack_from("<H", raw, 0x44)[0]
            self.trap = struct.unpack_from("<I", raw, 0x48)[0] & 1
        else:                                    # raw = bytes 0x0E..0x2C
            self.cr3, self.trap = 0, 0
            self.eip, self.eflags = struct.unpack_from("<HH", raw, 0)
            self.registers = struct.unpack_from("<8H", raw, 0x04)
            self.segments = list(struct.unpack_from("<4H", raw, 0x14)) + [0, 0]
            self.ldt = struct.unpack_from("<H", raw, 0x1C)[0]


class TaskSwitch:
    """Performs task switches on a GuestCpu through the guest's view of memory. `on_switch`
    (how: JMP, CALL, IRET or GATE) hears of each one begun; `performed` counts them."""

    def __init__(self, cpu, view: GuestView, on_switch: Optional[Callable[[str], None]] = None) -> None:
        self.cpu = cpu
        self.view = view
        self.on_switch = on_switch
        self.performed: Counter = Counter()

    # -- the ways in -------------------------------------------------------------------------------
    def far_transfer(self, selector: int, raw: bytes, *, call: bool, next_eip: int) -> None:
        """jmp/call far to an available TSS or a task gate (QEMU's helper_ljmp_protected and
        helper_lcall_protected): the descriptor's DPL must admit CPL and RPL."""
        descriptor = SegmentDescriptor.decode(raw)
        if descriptor.dpl < self.cpu.cpl or descriptor.dpl < selector & 3:
            raise GuestFault(GP, selector & 0xFFFC)
        self.switch(selector, raw, CALL if call else JMP, next_eip)

    def iret(self, next_eip: int) -> None:
        """iret with EFLAGS.NT: back to the task the back link of the current TSS names, which
        must be a busy TSS of the GDT (#TS with its selector)."""
        base, _limit = self.cpu.table_register("tr")
        link = self.view.read_int(base, 2)
        raw = self.view.raw_descriptor(link) if not link & 4 else None
        if raw is None or (struct.unpack("<I", raw[4:])[0] >> 8) & 0x17 != 3:   # system, busy TSS
            raise GuestFault(TS, link & 0xFFFC)
        self.switch(link, raw, IRET, next_eip)

    def through_gate(self, gate_raw: bytes, vector: int, return_eip: int) -> bool:
        """An exception or interrupt whose IDT entry is a (present) task gate: switch as a call
        does. Returns whether the new TSS is 32-bit (the width of an error code pushed next)."""
        return self.switch(vector * 8, gate_raw, GATE, return_eip)

    # -- the switch ----------------------------------------------------------------------------
    def switch(self, selector: int, raw: bytes, how: str, next_eip: int) -> bool:
        """Switch to the task of TSS (or task gate) `selector` whose descriptor is `raw`;
        next_eip is saved as the old task's EIP. Returns whether the new TSS is 32-bit."""
        cpu, view = self.cpu, self.view
        descriptor = SegmentDescriptor.decode(raw)
        if descriptor.type == GATE_TASK:
            if not descriptor.present:
                raise GuestFault(NP, selector & 0xFFFC)
            selector = Gate.decode(raw).selector
            if selector & 4:
                raise GuestFault(TS, selector & 0xFFFC)
            raw = view.raw_descriptor(selector)
            if raw is None:
                raise GuestFault(GP, selector & 0xFFFC)
            descriptor = SegmentDescriptor.decode(raw)
            if not descriptor.system or descriptor.type & 7 != 1:
                raise GuestFault(GP, selector & 0xFFFC)
        if not descriptor.present:
            raise GuestFault(NP, selector & 0xFFFC)
        is32 = bool(descriptor.type & 8)
        if selector & 4 or descriptor.limit < (TSS32_MIN_LIMIT if is32 else TSS16_MIN_LIMIT):
            raise GuestFault(TS, selector & 0xFFFC)
        new = _Tss(view.read((descriptor.base + 0x1C) & 0xFFFFFFFF, 0x4C) if is32
                   else view.read((descriptor.base + 0x0E) & 0xFFFFFFFF, 0x1E), is32)
        if is32 and new.eflags & VM:
            raise UnsupportedGuestFeature("a task switch into virtual-8086 mode: not modelled")

        old_selector = cpu.table_selector("tr")
        old_base, _old_limit = cpu.table_register("tr")
        old32 = self._is_32bit_tss(old_selector)
        # QEMU touches both ends of the old TSS first, so that its saves cannot fault half-way.
        for offset in (0, TSS32_MIN_LIMIT if old32 else TSS16_MIN_LIMIT):
            address = (old_base + offset) & 0xFFFFFFFF
            view.write(address, view.read(address, 1))

        self.performed[how] += 1
        if self.on_switch is not None:
            self.on_switch(how)
        if how in (JMP, IRET):
            self._set_busy(old_selector, False)
        old_eflags = cpu.reg("eflags")
        if how == IRET:
            old_eflags &= ~NT
        self._save(old_base, old32, next_eip, old_eflags)
        new_eflags = new.eflags
        if how in (CALL, GATE):
            view.write_int(descriptor.base, 2, old_selector)
            new_eflags |= NT
        if how in (JMP, CALL, GATE):
            self._set_busy(selector, True)

        # The commit point: from here on a fault is the new task's.
        cpu.set_reg("cr0", cpu.reg("cr0") | CR0_TS)
        busy_cleared = raw[:5] + bytes([raw[5] & ~0x02]) + raw[6:]
        cpu.set_table_selector("tr", selector, busy_cleared)
        if is32 and cpu.reg("cr0") & CR0_PG:
            cpu.set_reg("cr3", new.cr3)
        cpu.set_reg("eip", new.eip)
        try:
            self._load(new, new_eflags, is32)
        except GuestFault as fault:
            raise TaskFault(fault.vector, fault.error_code, new.eip) from None
        cpu.debug.task_switched()          # DR7's local breakpoints end with the task
        return is32

    # -- pieces --------------------------------------------------------------------------------
    def _is_32bit_tss(self, selector: int) -> bool:
        """The width of the current TSS, from its descriptor (TR after reset is a 32-bit one)."""
        if not selector & 0xFFFC:
            return True
        descriptor = self.view.descriptor(selector)
        return descriptor is None or bool(descriptor.type & 8)

    def _set_busy(self, selector: int, busy: bool) -> None:
        """The busy bit of a GDT descriptor, written as QEMU's tss_set_busy does (no limit check)."""
        gdt_base, _limit = self.cpu.table_register("gdtr")
        address = (gdt_base + (selector & ~7) + 4) & 0xFFFFFFFF
        high = self.view.read_int(address, 4)
        self.view.write_int(address, 4, high | TSS_BUSY if busy else high & ~TSS_BUSY)

    def _save(self, base: int, is32: bool, eip: int, eflags: int) -> None:
        cpu, view = self.cpu, self.view
        registers = [cpu.reg(name) for name in _GENERAL]
        selectors = [cpu.reg(name) for name in _SEGMENTS]
        if is32:
            view.write((base + 0x20) & 0xFFFFFFFF, struct.pack("<10I", eip, eflags, *registers))
            for index, value in enumerate(selectors):
                view.write_int((base + 0x48 + 4 * index) & 0xFFFFFFFF, 2, value)
        else:
            view.write((base + 0x0E) & 0xFFFFFFFF,
                       struct.pack("<10H", eip & 0xFFFF, eflags & 0xFFFF, *(value & 0xFFFF for value in registers)))
            view.write((base + 0x22) & 0xFFFFFFFF, struct.pack("<4H", *selectors[:4]))

    def _load(self, new: _Tss, new_eflags: int, is32: bool) -> None:
        """EFLAGS, the general registers, the LDT and the segment registers of the new task."""
        cpu = self.cpu
        mask = _LOADED_FLAGS if is32 else _LOADED_FLAGS & 0xFFFF
        cpu.set_reg("eflags", (cpu.reg("eflags") & ~mask) | (new_eflags & mask) | 2)
        for name, value in zip(_GENERAL, new.registers):
            cpu.set_reg(name, value if is32 else (cpu.reg(name) & 0xFFFF0000) | value)
        esp = cpu.reg("esp")
        pending = list(_DATA_SEGMENTS)       # data segment registers not loaded yet
        es, cs, ss, ds, fs, gs = new.segments
        try:
            self._load_ldt(new.ldt)
            cpl = cs & 3
            cs_raw = self._checked_segment("cs", cs, cpl)
            ss_raw = self._checked_segment("ss", ss, cpl)
            with accessed_bits_kept(self.view, cs, ss):
                cpu.change_privilege(cs, cs_raw, ss, ss_raw, esp)
            for name, selector in zip(_DATA_SEGMENTS, (es, ds, fs, gs)):
                raw = self._checked_segment(name, selector, cpl)
                with accessed_bits_kept(self.view, selector):
                    cpu.load_segment(name, selector, raw)
                pending.remove(name)
        except GuestFault:
            # Those not loaded are left null: base 0, like QEMU's selector-only loads, which
            # keep the new selector with an unusable cache until the handler reloads them.
            for name in pending:
                cpu.load_segment(name, 0, None)
            raise
        code = self.view.descriptor(cs)
        if code is not None and new.eip > code.limit:
            raise GuestFault(GP, 0)

    def _load_ldt(self, selector: int) -> None:
        if selector & 4:
            self.cpu.set_table_selector("ldtr", 0, None)
            raise GuestFault(TS, selector & 0xFFFC)
        if not selector & 0xFFFC:
            self.cpu.set_table_selector("ldtr", 0, None)
            return
        gdt_base, gdt_limit = self.cpu.table_register("gdtr")
        raw = None
        if (selector & ~7) + 7 <= gdt_limit:
            raw = self.view.read((gdt_base + (selector & ~7)) & 0xFFFFFFFF, 8)
        descriptor = SegmentDescriptor.decode(raw) if raw is not None else None
        if descriptor is None or not descriptor.system or descriptor.type != 2 or not descriptor.present:
            self.cpu.set_table_selector("ldtr", 0, None)
            raise GuestFault(TS, selector & 0xFFFC)
        self.cpu.set_table_selector("ldtr", selector, raw)

    def _checked_segment(self, name: str, selector: int, cpl: int) -> Optional[bytes]:
        """The raw descriptor of a segment register loaded from the new TSS, after QEMU's
        tss_load_seg checks: #TS with the selector, #NP for a segment not present; None for a
        null data segment selector."""
        error = selector & 0xFFFC
        if not error:
            if name in ("cs", "ss"):
                raise GuestFault(TS, error)
            return None
        raw = self.view.raw_descriptor(selector)
        if raw is None:
            raise GuestFault(TS, error)
        descriptor = SegmentDescriptor.decode(raw)
        if descriptor.system:
            raise GuestFault(TS, error)
        rpl, dpl = selector & 3, descriptor.dpl
        if name == "cs":
            if not descriptor.is_code or dpl != rpl:
                raise GuestFault(TS, error)
        elif name == "ss":
            if not descriptor.is_writable_data or dpl != cpl or dpl != rpl:
                raise GuestFault(TS, error)
        else:
            if descriptor.is_code and not descriptor.type & 2:           # execute-only code
                raise GuestFault(TS, error)
            if descriptor.type < 12 and (dpl < cpl or dpl < rpl):       # data or non-conforming
                raise GuestFault(TS, error)
        if not descriptor.present:
            raise GuestFault(NP, error)
        return raw
