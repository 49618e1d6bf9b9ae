"""Exception and interrupt delivery through the guest's own IDT, as an IA-32 CPU does it.

Unicorn never consults the IDT: every exception and `int n` comes back to the monitor, which
performs the CPU's delivery here: gate lookup and checks, the switch to the inner ring's stack
from the TSS when the handler is more privileged, the frame on the stack, the flag changes, the
jump to the handler; or, for a task gate, a task switch (vmm/task_switch.py) and the error code
on the new task's stack. In real mode, the vector table at the IDTR's base instead. A fault
during delivery becomes #DF, and one during #DF a triple fault (shutdown).
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

from vmm.cpu import GuestCpu
from vmm.guest_view import GuestFault, GuestView, accessed_bits_kept
from vmm.memory import PhysicalMemory
from vmm.privilege import inner_stack
from vmm.task_switch import TaskFault, TaskSwitch
from vmm.x86 import (AC, CR0_PE, DF_VEC, ERROR_CODE_VECTORS, GATE_INTERRUPT_16, GATE_INTERRUPT_32, GATE_TASK,
                     GATE_TRAP_16, GATE_TRAP_32, GP, IF, NP, NT, RF, TF, VM, Gate,
                     SegmentDescriptor, needs_double_fault, selector_error_code, vector_name)

_GATE_TYPES = (GATE_INTERRUPT_16, GATE_TRAP_16, GATE_INTERRUPT_32, GATE_TRAP_32)
_IDT_GATE_TYPES = _GATE_TYPES + (GATE_TASK,)


class TripleFault(Exception):
    """The CPU shuts down: an exception could not be delivered even as a double fault."""


class _DeliveryFault(Exception):
    """A new exception raised while delivering another one."""

    def __init__(self, vector: int, error_code: int = 0) -> None:
        super().__init__(vector_name(vector))
        self.vector, self.error_code = vector, error_code


class ExceptionDelivery:
    """Delivers vectors to the guest. `delivered` counts successful deliveries by vector."""

    def __init__(self, cpu: GuestCpu, memory: PhysicalMemory, tasks: Optional[TaskSwitch] = None) -> None:
        self.cpu = cpu
        self.view = GuestView(cpu, memory)
        self.tasks = tasks if tasks is not None else TaskSwitch(cpu, self.view)
        self.delivered: Counter = Counter()

    def deliver(self, vector: int, *, return_eip: int, fault_eip: Optional[int] = None,
                error_code: Optional[int] = None, software: bool = False, external: bool = False) -> None:
        """Enter the guest's handler for `vector`.

        return_eip: the EIP saved in the frame (the faulting instruction for faults, the next one
        for traps and int n). fault_eip: the instruction to blame if delivery itself faults
        (defaults to return_eip). error_code: pushed when the vector architecturally has one.
        software: raised by int n / int3 / into (gate DPL is checked, no error code, EXT=0).
        external: an interrupt from the PIC (no error code whatever the vector)."""
        fault_eip = return_eip if fault_eip is None else fault_eip
        while True:
            try:
                self._deliver_once(vector, return_eip, error_code, software, external)
                self.delivered[vector] += 1
                return
            except (_DeliveryFault, GuestFault) as second:
                if vector == DF_VEC:
                    raise TripleFault(f"{vector_name(second.vector)} while delivering #DF") from None
                if isinstance(second, TaskFault):    # raised in the new task: its EIP
                    fault_eip = second.eip
                if needs_double_fault(vector, second.vector):
                    vector, error_code = DF_VEC, 0
                else:                        # handled serially: the second one replaces the first
                    vector, error_code = second.vector, second.error_code
                software, external, return_eip = False, False, fault_eip

    # -- one delivery attempt ------------------------------------------------------------------
    def _deliver_once(self, vector: int, return_eip: int, error_code: Optional[int],
                      software: bool, interrupt: bool = False) -> None:
        if not self.cpu.reg("cr0") & CR0_PE:
            self._deliver_real(vector, return_eip)
            return
        external = not software
        cpl = self.cpu.cpl
        idt_base, idt_limit = self.cpu.table_register("idtr")
        gate_error = selector_error_code("idt", vector, external)
        if vector * 8 + 7 > idt_limit:
            raise _DeliveryFault(GP, gate_error)
        raw_gate = self.view.read(idt_base + vector * 8, 8)
        gate = Gate.decode(raw_gate)
        if gate.type not in _IDT_GATE_TYPES:
            raise _DeliveryFault(GP, gate_error)
        if software and gate.dpl < cpl:
            raise _DeliveryFault(GP, gate_error)
        if not gate.present:
            raise _DeliveryFault(NP, gate_error)
        if gate.type == GATE_TASK:
            self._through_task_gate(raw_gate, vector, return_eip, error_code, software or interrupt)
            return
        target = self._code_segment(gate.selector, external)
        if target.dpl > cpl:
            raise _DeliveryFault(GP, selector_error_code("gdt", gate.selector, external))
        conforming = bool(target.type & 4)
        new_cpl = cpl if conforming else target.dpl

        width = 4 if gate.is_32bit else 2
        eflags = self.cpu.reg("eflags")
        cs = self.cpu.reg("cs")
        esp = self.cpu.reg("esp")
        frame = [eflags, cs, return_eip]
        if new_cpl < cpl:
            # From an outer ring: the handler's stack comes from the TSS, and the interrupted
            # SS:ESP is saved on it first (SDM vol. 3, 6.12.1).
            new_ss, esp, ss_raw = inner_stack(self.cpu, self.view, new_cpl)
            frame = [self.cpu.reg("ss"), self.cpu.reg("esp")] + frame
            ss_base = SegmentDescriptor.decode(ss_raw).base        # (inner_stack read it: no second walk)
        else:
            ss_base = self.cpu.segment_base("ss")
        if not software and not interrupt and vector in ERROR_CODE_VECTORS:
            frame.append(error_code or 0)
        stack = b""
        for value in frame:
            esp = (esp - width) & 0xFFFFFFFF
            stack = value.to_bytes(4, "little")[:width] + stack
        self.view.write((ss_base + esp) & 0xFFFFFFFF, stack)

        eflags &= ~(TF | NT | RF | VM)
        if gate.is_interrupt_gate:
            eflags &= ~IF
        new_cs = (gate.selector & ~3) | new_cpl
        if new_cpl < cpl:
            with accessed_bits_kept(self.view, new_cs, new_ss):
                self.cpu.change_privilege(new_cs, self.view.raw_descriptor(new_cs), new_ss, ss_raw, esp)
        else:
            # QEMU always loads CS. Loading the same selector again only matters when CS's hidden
            # part is empty: the engine's own task switch (direct, vt with nested paging) leaves
            # it so when it faults before loading the new CS.
            self.cpu.set_reg("esp", esp)
            if new_cs != cs or not self.cpu.segment_present("cs"):
                with accessed_bits_kept(self.view, new_cs):
                    self.cpu.load_segment("cs", new_cs, self.view.raw_descriptor(new_cs))
        self.cpu.set_reg("eflags", eflags)
        offset = gate.offset if gate.is_32bit else gate.offset & 0xFFFF
        self.cpu.set_reg("eip", offset)

    def _deliver_real(self, vector: int, return_eip: int) -> None:
        """Real mode: the handler's CS:IP from the vector table at the IDTR's base, FLAGS, CS and
        IP pushed as words at SS:SP (SP wrapping at 64 KiB), no error code; IF, TF, AC and RF
        cleared (QEMU 7.2's do_interrupt_real; the CS limit stays what it was, as there)."""
        idt_base, idt_limit = self.cpu.table_register("idtr")
        if vector * 4 + 3 > idt_limit:
            raise _DeliveryFault(GP, vector * 8 + 2)
        entry = self.view.read_int(idt_base + vector * 4, 4)
        eflags, esp = self.cpu.reg("eflags"), self.cpu.reg("esp")
        ss_base, sp = self.cpu.segment_base("ss"), esp & 0xFFFF
        for value in (eflags, self.cpu.reg("cs"), return_eip):
            sp = (sp - 2) & 0xFFFF
            self.view.write_int((ss_base + sp) & 0xFFFFFFFF, 2, value & 0xFFFF)
        self.cpu.set_reg("esp", (esp & ~0xFFFF) | sp)
        self.cpu.load_segment("cs", entry >> 16, None)
        self.cpu.set_reg("eip", entry & 0xFFFF)
        self.cpu.set_reg("eflags", eflags & ~(IF | TF | AC | RF))

    def _through_task_gate(self, raw_gate: bytes, vector: int, return_eip: int, error_code: Optional[int],
                           no_error_code: bool) -> None:
        """A task gate: switch to its task (as a call: back link, NT), then push the error code
        the vector has on the new task's stack, as wide as the new TSS (QEMU's
        do_interrupt_protected). A fault pushing it is the new task's too."""
        is32 = self.tasks.through_gate(raw_gate, vector, return_eip)
        if no_error_code or vector not in ERROR_CODE_VECTORS:
            return
        width = 4 if is32 else 2
        ss = self.view.descriptor(self.cpu.reg("ss"))
        mask = 0xFFFFFFFF if ss is None or ss.big else 0xFFFF
        esp = self.cpu.reg("esp")
        new_sp = (esp - width) & mask
        try:
            self.view.write_int((self.cpu.segment_base("ss") + new_sp) & 0xFFFFFFFF, width, error_code or 0)
        except GuestFault as fault:
            raise TaskFault(fault.vector, fault.error_code, self.cpu.reg("eip")) from None
        self.cpu.set_reg("esp", (esp & ~mask) | new_sp)

    # -- descriptors and memory through the guest's own tables --------------------------------
    def _code_segment(self, selector: int, external: bool) -> SegmentDescriptor:
        if not selector & 0xFFFC:
            raise _DeliveryFault(GP, int(external))
        descriptor = self.view.descriptor(selector)
        if descriptor is None or not descriptor.is_code:
            raise _DeliveryFault(GP, selector_error_code("gdt", selector, external))
        if not descriptor.present:
            raise _DeliveryFault(NP, selector_error_code("gdt", selector, external))
        return descriptor
