"""Exception and interrupt delivery through the guest's own IDT, as a ring-0 IA-32 CPU does it.

Unicorn never consults the IDT: every exception and `int n` comes back to the monitor, which
performs the CPU's delivery here: gate lookup and checks, the frame on the stack, the flag
changes, the jump to the handler; a fault during delivery becomes #DF, and one during #DF a
triple fault (shutdown).
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Optional

from vmm.cpu import GuestCpu
from vmm.errors import VmmError
from vmm.memory import PAGE_SIZE, PageFault, PhysicalMemory, linear_to_physical
from vmm.x86 import (DF, ERROR_CODE_VECTORS, GATE_INTERRUPT_16, GATE_INTERRUPT_32, GATE_TASK,
                     GATE_TRAP_16, GATE_TRAP_32, GP, IF, NP, NT, PF_VEC, RF, TF, VM, Gate,
                     SegmentDescriptor, needs_double_fault, selector_error_code, vector_name)

_GATE_TYPES = (GATE_INTERRUPT_16, GATE_TRAP_16, GATE_INTERRUPT_32, GATE_TRAP_32)


class TripleFault(Exception):
    """The CPU shuts down: an exception could not be delivered even as a double fault."""


class UnsupportedGuestFeature(VmmError):
    """The guest relies on CPU behaviour this monitor does not model yet."""


class _DeliveryFault(Exception):
    """A new exception raised while delivering another one."""

    def __init__(self, vector: int, error_code: int = 0) -> None:
        super().__init__(vector_name(vector))
        self.vector, self.error_code = vector, error_code


class ExceptionDelivery:
    """Delivers vectors to the guest. `delivered` counts successful deliveries by vector."""

    def __init__(self, cpu: GuestCpu, memory: PhysicalMemory) -> None:
        self.cpu = cpu
        self.memory = memory
        self.delivered: Counter = Counter()

    def deliver(self, vector: int, *, return_eip: int, fault_eip: Optional[int] = None,
                error_code: Optional[int] = None, software: bool = False) -> None:
        """Enter the guest's handler for `vector`.

        return_eip: the EIP saved in the frame (the faulting instruction for faults, the next one
        for traps and int n). fault_eip: the instruction to blame if delivery itself faults
        (defaults to return_eip). error_code: pushed when the vector architecturally has one.
        software: raised by int n / int3 / into (gate DPL is checked, no error code, EXT=0)."""
        fault_eip = return_eip if fault_eip is None else fault_eip
        while True:
            try:
                self._deliver_once(vector, return_eip, error_code, software)
                self.delivered[vector] += 1
                return
            except _DeliveryFault as second:
                if vector == DF:
                    raise TripleFault(f"{vector_name(second.vector)} while delivering #DF") from None
                if needs_double_fault(vector, second.vector):
                    vector, error_code = DF, 0
                else:                        # handled serially: the second one replaces the first
                    vector, error_code = second.vector, second.error_code
                software, return_eip = False, fault_eip

    # -- one delivery attempt ------------------------------------------------------------------
    def _deliver_once(self, vector: int, return_eip: int, error_code: Optional[int],
                      software: bool) -> None:
        external = not software
        cpl = self.cpu.cpl
        idt_base, idt_limit = self.cpu.table_register("idtr")
        gate_error = selector_error_code("idt", vector, external)
        if vector * 8 + 7 > idt_limit:
            raise _DeliveryFault(GP, gate_error)
        gate = Gate.decode(self._read_linear(idt_base + vector * 8, 8))
        if gate.type == GATE_TASK and gate.present:
            raise UnsupportedGuestFeature(f"task gate at IDT vector {vector:#x}: task switches are not modelled")
        if gate.type not in _GATE_TYPES:
            raise _DeliveryFault(GP, gate_error)
        if software and gate.dpl < cpl:
            raise _DeliveryFault(GP, gate_error)
        if not gate.present:
            raise _DeliveryFault(NP, gate_error)
        target = self._code_segment(gate.selector, external)
        if target.dpl > cpl:
            raise _DeliveryFault(GP, selector_error_code("gdt", gate.selector, external))
        if target.dpl < cpl:
            raise UnsupportedGuestFeature("interrupt from a less privileged ring: stack switches are not modelled yet")

        width = 4 if gate.is_32bit else 2
        eflags = self.cpu.reg("eflags")
        cs = self.cpu.reg("cs")
        frame = [eflags, cs, return_eip]
        if not software and vector in ERROR_CODE_VECTORS:
            frame.append(error_code or 0)
        esp = self.cpu.reg("esp")
        ss_base = self._segment_base(self.cpu.reg("ss"))
        for value in frame:
            esp = (esp - width) & 0xFFFFFFFF
            self._write_linear(ss_base + esp, value.to_bytes(4, "little")[:width])

        eflags &= ~(TF | NT | RF | VM)
        if gate.is_interrupt_gate:
            eflags &= ~IF
        self.cpu.set_reg("esp", esp)
        self.cpu.set_reg("eflags", eflags)
        if gate.selector != cs:
            self.cpu.set_reg("cs", gate.selector)
        offset = gate.offset if gate.is_32bit else gate.offset & 0xFFFF
        self.cpu.set_reg("eip", offset)

    # -- descriptor and memory access as the CPU performs them ---------------------------------
    def _descriptor(self, selector: int) -> Optional[SegmentDescriptor]:
        """The descriptor a selector names, or None when it lies beyond its table's limit."""
        if selector & 4:
            ldt_selector = self.cpu.table_selector("ldtr")
            if not ldt_selector & 0xFFFC:
                return None
            ldt = self._descriptor(ldt_selector)
            if ldt is None:
                return None
            base, limit = ldt.base, ldt.limit
        else:
            base, limit = self.cpu.table_register("gdtr")
        index = selector & 0xFFF8
        if index + 7 > limit:
            return None
        return SegmentDescriptor.decode(self._read_linear(base + index, 8))

    def _code_segment(self, selector: int, external: bool) -> SegmentDescriptor:
        if not selector & 0xFFFC:
            raise _DeliveryFault(GP, int(external))
        descriptor = self._descriptor(selector)
        if descriptor is None or not descriptor.is_code:
            raise _DeliveryFault(GP, selector_error_code("gdt", selector, external))
        if not descriptor.present:
            raise _DeliveryFault(NP, selector_error_code("gdt", selector, external))
        return descriptor

    def _segment_base(self, selector: int) -> int:
        if not selector & 0xFFFC:
            return 0
        descriptor = self._descriptor(selector)
        return descriptor.base if descriptor else 0

    def _physical(self, linear: int, write: bool) -> int:
        try:
            return linear_to_physical(self.memory, self.cpu.reg("cr0"), self.cpu.reg("cr3"),
                                      linear, write)
        except PageFault as fault:
            self.cpu.set_reg("cr2", fault.linear)
            raise _DeliveryFault(PF_VEC, fault.error_code) from None

    def _page_chunks(self, linear: int, size: int):
        """(linear, length) pieces of an access, none crossing a page boundary."""
        while size:
            length = min(size, PAGE_SIZE - (linear & (PAGE_SIZE - 1)))
            yield linear, length
            linear, size = (linear + length) & 0xFFFFFFFF, size - length

    def _read_linear(self, linear: int, size: int) -> bytes:
        return b"".join(self.memory.read(self._physical(piece, False), length)
                        for piece, length in self._page_chunks(linear, size))

    def _write_linear(self, linear: int, data: bytes) -> None:
        pieces = [(self._physical(piece, True), length) for piece, length in self._page_chunks(linear, len(data))]
        done = 0
        for physical, length in pieces:      # all translations succeed before any byte is stored
            self.memory.write(physical, data[done:done + length])
            done += length
