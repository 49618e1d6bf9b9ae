"""Emulation procedures: what the monitor does for each sensitive instruction the translator hands
it (a callout), performed on the guest-visible CPU and the guest's view of memory.

Each procedure either completes the instruction (and leaves EIP at the next instruction or the
transfer target), raises GuestFault for an exception the instruction takes (delivered by the
caller as a fault at the instruction), or returns an Outcome the run loop acts on.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from capstone import x86_const as X

from translator.classify import Category, Procedure
from translator.x86decode import SEGMENT_NAMES as _SEGMENTS
from translator.x86decode import SUBREGISTERS
from vmm import cpu_model
from vmm.errors import UnsupportedGuestFeature
from vmm.guest_view import GuestFault, GuestView
from vmm.memory import UnbackedAccess
from vmm.privilege import check_outer_stack, inner_stack, iopl, null_outer_data_segments
from vmm.task_switch import TaskSwitch
from vmm.x86 import (AC, AF, BP, BR, CF, DF, GP, ID, IF, IOPL_MASK, NP, NT, OF, OF_VEC, PF, RF, SF, SS, TF, UD, VM,
                     ZF, CR0_ET, CR0_MSW, CR0_PE, CR0_TS, CR4_PCE, CR4_TSD, GATE_CALL_16, GATE_CALL_32, GATE_TASK,
                     LDT_TYPE, MSR_TSC_AUX, TSS_AVAILABLE_16, TSS_AVAILABLE_32, Gate, SegmentDescriptor, encode_segment)

MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176
# The hidden parts sysenter and sysexit load (QEMU's helper_sysenter/sysexit): flat 4 GiB,
# 32-bit, accessed; code execute/read, stack read/write; DPL 0 or 3.
_FLAT_CODE = {dpl: encode_segment(0, 0xFFFFF, 0x9B | dpl << 5, 0xC) for dpl in (0, 3)}
_FLAT_DATA = {dpl: encode_segment(0, 0xFFFFF, 0x93 | dpl << 5, 0xC) for dpl in (0, 3)}
_CONTROL_REGISTERS = (0, 2, 3, 4)       # the others are #UD (QEMU: CR8 only in long mode)
# Register name -> (full register, shift, mask)
_SUBREGISTERS = {name: (full, shift, (1 << bits) - 1) for name, (full, shift, bits) in SUBREGISTERS.items()}
# EFLAGS bits a ring-0 popf/iret may change (VM, VIF, VIP and RF are left alone here; a 32-bit
# iret also loads RF)
_EFLAGS_WRITABLE = CF | PF | AF | ZF | SF | TF | IF | DF | OF | IOPL_MASK | NT | AC | ID


def _writable_flags(cpl: int, eflags: int, size: int) -> int:
    """The EFLAGS bits popf/iret may change at `cpl`: IOPL only at ring 0, IF only at CPL <= IOPL
    (elsewhere both are silently kept, the 386's virtualization hole)."""
    mask = _EFLAGS_WRITABLE
    if cpl > 0:
        mask &= ~IOPL_MASK
    if cpl > iopl(eflags):
        mask &= ~IF
    return mask if size == 4 else mask & 0xFFFF


class UnsupportedInstruction(UnsupportedGuestFeature):
    """The guest used an instruction form the monitor does not emulate yet."""


class OutcomeKind(Enum):
    CONTINUE = "continue"         # the instruction is done; EIP is at the next one or the target
    HALT = "halt"                 # hlt: the run loop waits for an interrupt
    INTERRUPT = "interrupt"       # int n/int3/into: the run loop delivers `vector` as a software interrupt


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    vector: int = 0


CONTINUE = Outcome(OutcomeKind.CONTINUE)
HALT = Outcome(OutcomeKind.HALT)
# A far transfer to one of these switches tasks (an available TSS, or a task gate naming one).
_TASK_TARGETS = (TSS_AVAILABLE_16, GATE_TASK, TSS_AVAILABLE_32)


_ARITHMETIC_FLAGS = CF | PF | AF | ZF | SF | OF


class Emulator:
    def __init__(self, cpu, view: GuestView, timestamp, tasks: Optional[TaskSwitch] = None) -> None:
        self.cpu = cpu
        self.view = view
        self.tasks = tasks if tasks is not None else TaskSwitch(cpu, view)
        self.timestamp = timestamp       # rdtsc: () -> the virtual clock's cycles
        self.interrupt_shadow = False    # set by a load of SS: no interrupt before the next instruction
        # Instructions emulated, by procedure (the report's counters.callouts): which sensitive
        # instructions a guest leans on, and so which are worth emulating inline.
        self.emulated: Counter = Counter()

    @classmethod
    def has_emulation(cls, procedure: Optional[Procedure]) -> bool:
        """Whether there is an emulation for this procedure: the method named after it."""
        return procedure is not None and hasattr(cls, "_" + procedure.value)

    def counters(self) -> dict[str, int]:
        """Instructions emulated by procedure, every procedure there is an emulation for."""
        return {procedure.value: self.emulated[procedure.value]
                for procedure in Procedure if self.has_emulation(procedure)}

    def emulates(self, instruction) -> bool:
        """Whether there is an emulation procedure for this instruction."""
        return self.has_emulation(instruction.rule.procedure)

    def emulate(self, instruction) -> Outcome:
        rule = instruction.rule
        if not self.has_emulation(rule.procedure):
            raise UnsupportedInstruction(f"no emulation for {instruction} at {instruction.address:#010x}")
        procedure = getattr(self, "_" + rule.procedure.value)
        insn = instruction.insn
        self.emulated[rule.procedure.value] += 1
        if rule.category is Category.PRIVILEGED and self.cpu.cpl > 0 \
                and rule.procedure not in (Procedure.INTERRUPT_FLAG, Procedure.RDPMC):
            raise GuestFault(GP, 0)           # outside ring 0 every privileged instruction faults
        self._next = instruction.end
        outcome = procedure(insn)
        if outcome is None:
            self.cpu.set_reg("eip", self._next)
            return CONTINUE
        return outcome

    # -- instructions the 64-bit host lacks (translated code is 64-bit) -------------------------
    def _decimal_adjust(self, insn):
        """daa das aaa aas aam aad salc: run on a 32-bit scratch engine from the guest's eax and
        flags, so the results (the undefined flags too) are the engine's own."""
        from vmm.engine import ScratchCpu
        scratch = getattr(self, "_scratch_cpu", None)
        if scratch is None:
            scratch = self._scratch_cpu = ScratchCpu()
        eflags = self.cpu.reg("eflags")
        eax, after, vector = scratch.run(bytes(insn.bytes), self.cpu.reg("eax"), eflags & _ARITHMETIC_FLAGS | 2)
        if vector is not None:            # aam 0: #DE
            raise GuestFault(vector)
        self.cpu.set_reg("eax", eax)
        self.cpu.set_reg("eflags", (eflags & ~_ARITHMETIC_FLAGS) | (after & _ARITHMETIC_FLAGS))

    def _bound(self, insn):
        """bound r, m: #BR unless lower <= r <= upper (signed, the operand size's)."""
        register, memory = insn.operands
        size = register.size
        value = self._read(insn, register)
        address = self.operand_address(insn, memory)
        lower = self.view.read_int(address, size)
        upper = self.view.read_int((address + size) & 0xFFFFFFFF, size)
        sign = 1 << (8 * size - 1)
        signed = [(v ^ sign) - sign for v in (value, lower, upper)]
        if not signed[1] <= signed[0] <= signed[2]:
            raise GuestFault(BR)

    def _arpl(self, insn):
        """arpl r/m16, r16: raise the destination selector's RPL to the source's, ZF says so."""
        destination, source = insn.operands
        old, new = self._read(insn, destination, 2), self._read(insn, source, 2)
        eflags = self.cpu.reg("eflags")
        if old & 3 < new & 3:
            self._write(insn, destination, (old & ~3) | (new & 3), 2)
            eflags |= ZF
        else:
            eflags &= ~ZF
        self.cpu.set_reg("eflags", eflags)

    # -- operands ------------------------------------------------------------------------------
    def _register(self, name: str) -> int:
        full, shift, mask = _SUBREGISTERS[name]
        return (self.cpu.reg(full) >> shift) & mask

    def _set_register(self, name: str, value: int) -> None:
        full, shift, mask = _SUBREGISTERS[name]
        old = self.cpu.reg(full)
        self.cpu.set_reg(full, (old & ~(mask << shift)) | ((value & mask) << shift))

    def operand_address(self, insn, operand) -> int:
        """The linear address of a memory operand of `insn`, from the guest's registers and
        segment bases (the default segment SS for ESP/EBP bases, else DS)."""
        mem = operand.mem
        address = mem.disp
        if mem.base:
            address += self._register(insn.reg_name(mem.base))
        if mem.index:
            address += self._register(insn.reg_name(mem.index)) * mem.scale
        segment = _SEGMENTS.get(mem.segment) if mem.segment else None
        if segment is None:
            segment = "ss" if mem.base in (X.X86_REG_ESP, X.X86_REG_EBP) else "ds"
        return (self.cpu.segment_base(segment) + address) & 0xFFFFFFFF

    def _read(self, insn, operand, size: Optional[int] = None) -> int:
        size = size or operand.size
        if operand.type == X.X86_OP_REG:
            name = insn.reg_name(operand.reg)
            return self.cpu.reg(_SEGMENTS[operand.reg]) if operand.reg in _SEGMENTS else self._register(name)
        if operand.type == X.X86_OP_IMM:
            return operand.imm & ((1 << (8 * size)) - 1)
        return self.view.read_int(self.operand_address(insn, operand), size)

    def _write(self, insn, operand, value: int, size: Optional[int] = None) -> None:
        size = size or operand.size
        if operand.type == X.X86_OP_REG:
            self._set_register(insn.reg_name(operand.reg), value)
        else:
            self.view.write_int(self.operand_address(insn, operand), size, value)

    def _push(self, value: int, size: int = 4) -> None:
        esp = (self.cpu.reg("esp") - size) & 0xFFFFFFFF
        self.view.write_int((self.cpu.segment_base("ss") + esp) & 0xFFFFFFFF, size, value)
        self.cpu.set_reg("esp", esp)

    def _pop(self, size: int = 4) -> int:
        esp = self.cpu.reg("esp")
        value = self.view.read_int((self.cpu.segment_base("ss") + esp) & 0xFFFFFFFF, size)
        self.cpu.set_reg("esp", (esp + size) & 0xFFFFFFFF)
        return value

    @staticmethod
    def _operand16(insn) -> bool:
        return 0x66 in insn.prefix         # the operand-size prefix, not a 0x66 byte elsewhere

    def _set_zf(self, value: bool) -> None:
        flags = self.cpu.reg("eflags")
        self.cpu.set_reg("eflags", flags | ZF if value else flags & ~ZF)

    # -- segments ------------------------------------------------------------------------------
    def load_segment(self, segment: str, selector: int) -> None:
        """A protected-mode segment register load with the CPU's checks (SDM vol. 2, MOV)."""
        selector &= 0xFFFF
        cpl = self.cpu.cpl
        index_error = selector & 0xFFFC
        if not selector & 0xFFFC:
            if segment in ("ss", "cs"):
                raise GuestFault(GP, 0)
            self.cpu.load_segment(segment, selector, None)
            return
        raw = self.view.raw_descriptor(selector)
        if raw is None:
            raise GuestFault(GP, index_error)
        descriptor = SegmentDescriptor.decode(raw)
        rpl, dpl = selector & 3, descriptor.dpl
        if segment == "ss":
            if rpl != cpl or dpl != cpl or not descriptor.is_writable_data:
                raise GuestFault(GP, index_error)
            if not descriptor.present:
                raise GuestFault(SS, index_error)
        elif segment == "cs":
            if not descriptor.is_code:
                raise GuestFault(GP, index_error)
            conforming = bool(descriptor.type & 4)
            if (conforming and dpl > cpl) or (not conforming and (dpl != cpl or rpl > cpl)):
                raise GuestFault(GP, index_error)
            if not descriptor.present:
                raise GuestFault(NP, index_error)
        else:
            readable = descriptor.is_writable_data or (not descriptor.system and not descriptor.type & 8) \
                or (descriptor.is_code and descriptor.type & 2)
            if descriptor.system or not readable:
                raise GuestFault(GP, index_error)
            conforming_code = descriptor.is_code and descriptor.type & 4
            if not conforming_code and (rpl > dpl or cpl > dpl):
                raise GuestFault(GP, index_error)
            if not descriptor.present:
                raise GuestFault(NP, index_error)
        if segment != "cs" and not raw[5] & 1:
            # Data and stack loads mark the descriptor accessed in the guest's table (QEMU does
            # this for them, never for CS).
            raw = raw[:5] + bytes([raw[5] | 1]) + raw[6:]
            self.view.write((self.view.descriptor_address(selector) + 5) & 0xFFFFFFFF, raw[5:6])
        self.cpu.load_segment(segment, selector, raw)

    def _load_segment_register(self, insn):
        if insn.id == X.X86_INS_POP:
            segment = _SEGMENTS[insn.operands[0].reg]
            esp = self.cpu.reg("esp")
            selector = self.view.read_int((self.cpu.segment_base("ss") + esp) & 0xFFFFFFFF,
                                          2 if self._operand16(insn) else 4)
            self.load_segment(segment, selector)
            self.cpu.set_reg("esp", esp + (2 if self._operand16(insn) else 4))
        else:
            segment = _SEGMENTS[insn.operands[0].reg]
            if segment == "cs":
                raise GuestFault(UD)      # mov cs, r/m is undefined (QEMU: #UD, not a load)
            self.load_segment(segment, self._read(insn, insn.operands[1], 2))
        self.interrupt_shadow = segment == "ss"

    def _load_far_pointer(self, insn):
        destination, source = insn.operands
        size = 2 if self._operand16(insn) else 4
        address = self.operand_address(insn, source)
        offset = self.view.read_int(address, size)
        selector = self.view.read_int((address + size) & 0xFFFFFFFF, 2)
        segment = {X.X86_INS_LDS: "ds", X.X86_INS_LES: "es", X.X86_INS_LFS: "fs",
                   X.X86_INS_LGS: "gs", X.X86_INS_LSS: "ss"}[insn.id]
        self.load_segment(segment, selector)
        self._write(insn, destination, offset, size)

    # -- far control transfers -----------------------------------------------------------------
    def _far_target(self, insn) -> tuple[int, int]:
        operand = insn.operands[0]
        if operand.type == X.X86_OP_IMM:          # ptr16:32 (capstone gives selector, offset)
            return insn.operands[0].imm & 0xFFFF, insn.operands[1].imm & 0xFFFFFFFF
        size = 2 if self._operand16(insn) else 4
        address = self.operand_address(insn, operand)
        return self.view.read_int((address + size) & 0xFFFFFFFF, 2), self.view.read_int(address, size)

    def _far_transfer(self, insn, call: bool) -> None:
        """jmp far / call far: straight to a code segment, through a call gate (to the
        same ring, or for call to a more privileged one on the TSS's stack with the gate's
        parameters copied; SDM vol. 2, CALL and JMP), or to another task (a TSS or a task gate:
        vmm/task_switch.py)."""
        selector, offset = self._far_target(insn)
        size = 2 if self._operand16(insn) else 4
        if not selector & 0xFFFC:
            raise GuestFault(GP, 0)
        raw = self.view.raw_descriptor(selector)
        if raw is None:
            raise GuestFault(GP, selector & 0xFFFC)
        descriptor = SegmentDescriptor.decode(raw)
        if descriptor.system:
            if descriptor.type in (GATE_CALL_16, GATE_CALL_32):
                self._through_call_gate(selector, Gate.decode(raw), call)
                return
            if descriptor.type in _TASK_TARGETS:
                self.tasks.far_transfer(selector, raw, call=call, next_eip=self._next)
                self._next = self.cpu.reg("eip")
                return
            raise GuestFault(GP, selector & 0xFFFC)
        self._check_code_segment(selector, descriptor, same_ring=True)
        if call:
            self._push_return(size)
        self.load_segment("cs", (selector & ~3) | self.cpu.cpl)
        self._next = offset if size == 4 else offset & 0xFFFF

    def _check_code_segment(self, selector: int, descriptor: SegmentDescriptor, same_ring: bool) -> None:
        """A far transfer's target code segment. same_ring: no privilege change is possible
        (direct jmp/call: a non-conforming target must have DPL = CPL and RPL <= CPL)."""
        cpl = self.cpu.cpl
        if not descriptor.is_code:
            raise GuestFault(GP, selector & 0xFFFC)
        conforming = bool(descriptor.type & 4)
        if descriptor.dpl > cpl or (same_ring and not conforming and
                                    (descriptor.dpl != cpl or selector & 3 > cpl)):
            raise GuestFault(GP, selector & 0xFFFC)
        if not descriptor.present:
            raise GuestFault(NP, selector & 0xFFFC)

    def _push_return(self, size: int) -> None:
        """Push CS:EIP of the next instruction; ESP unchanged if a push faults."""
        esp = self.cpu.reg("esp")
        try:
            self._push(self.cpu.reg("cs"), size)
            self._push(self._next, size)
        except GuestFault:
            self.cpu.set_reg("esp", esp)
            raise

    def _through_call_gate(self, gate_selector: int, gate: Gate, call: bool) -> None:
        cpl = self.cpu.cpl
        if gate.dpl < cpl or gate.dpl < gate_selector & 3:
            raise GuestFault(GP, gate_selector & 0xFFFC)
        if not gate.present:
            raise GuestFault(NP, gate_selector & 0xFFFC)
        target = gate.selector
        if not target & 0xFFFC:
            raise GuestFault(GP, 0)
        code = self.view.descriptor(target)
        if code is None:
            raise GuestFault(GP, target & 0xFFFC)
        self._check_code_segment(target, code, same_ring=not call)
        width = 4 if gate.type == GATE_CALL_32 else 2
        offset = gate.offset if width == 4 else gate.offset & 0xFFFF
        conforming = bool(code.type & 4)
        if call and not conforming and code.dpl < cpl:
            new_cpl = code.dpl
            ss, esp = self.cpu.reg("ss"), self.cpu.reg("esp")
            new_ss, new_esp, ss_raw = inner_stack(self.cpu, self.view, new_cpl)
            old_base = self.cpu.segment_base("ss")
            count = gate.parameter_count
            parameters = [self.view.read_int((old_base + esp + width * i) & 0xFFFFFFFF, width) for i in range(count)]
            frame = [ss, esp] + parameters[::-1] + [self.cpu.reg("cs"), self._next]
            stack = b"".join(value.to_bytes(4, "little")[:width] for value in reversed(frame))
            new_esp = (new_esp - len(stack)) & 0xFFFFFFFF
            self.view.write((self.view.segment_base(new_ss) + new_esp) & 0xFFFFFFFF, stack)
            new_cs = (target & ~3) | new_cpl
            self.cpu.change_privilege(new_cs, self.view.raw_descriptor(new_cs), new_ss, ss_raw, new_esp)
        else:
            if call:
                self._push_return(width)
            self.load_segment("cs", (target & ~3) | cpl)
        self._next = offset

    def switches_task(self, instruction) -> bool:
        """Whether this far jmp/call or iret, run now, would switch tasks: iret with NT set, or a
        far transfer to an available TSS or a task gate (vt's task-switch exit). A quiet look: if
        it cannot read the operand or descriptor, the instruction itself will fault the same way."""
        insn = instruction.insn
        if instruction.rule.procedure is Procedure.IRET:
            return bool(self.cpu.reg("eflags") & NT)
        if instruction.rule.procedure not in (Procedure.FAR_JMP, Procedure.FAR_CALL):
            return False
        quiet = GuestView(self.cpu, self.view.memory, cpu_access=False)
        operand = insn.operands[0]
        try:
            if operand.type == X.X86_OP_IMM:
                selector = operand.imm & 0xFFFF
            else:
                size = 2 if self._operand16(insn) else 4
                selector = quiet.read_int((self.operand_address(insn, operand) + size) & 0xFFFFFFFF, 2)
            raw = quiet.raw_descriptor(selector) if selector & 0xFFFC else None
        except (GuestFault, UnbackedAccess):
            return False
        descriptor = SegmentDescriptor.decode(raw) if raw is not None else None
        return descriptor is not None and descriptor.system and descriptor.type in _TASK_TARGETS

    def _far_jmp(self, insn):
        self._far_transfer(insn, call=False)

    def _far_call(self, insn):
        self._far_transfer(insn, call=True)

    def _far_ret(self, insn):
        size = 2 if self._operand16(insn) else 4
        esp = self.cpu.reg("esp")
        base = self.cpu.segment_base("ss")
        offset = self.view.read_int((base + esp) & 0xFFFFFFFF, size)
        selector = self.view.read_int((base + esp + size) & 0xFFFFFFFF, 2)
        release = insn.operands[0].imm if insn.operands else 0
        esp = (esp + 2 * size + release) & 0xFFFFFFFF
        if selector & 3 > self.cpu.cpl:
            self._return_to_outer_ring(selector, base, esp, size, release)
        elif selector & 3 < self.cpu.cpl:
            raise GuestFault(GP, selector & 0xFFFC)
        else:
            self.load_segment("cs", selector)
            self.cpu.set_reg("esp", esp)
        self._next = offset

    def _return_to_outer_ring(self, cs: int, stack_base: int, esp: int, size: int, release: int = 0) -> None:
        """The tail of iret / far ret to a less privileged ring: check the new CS, pop SS:ESP,
        switch both, then null the data segments the outer ring may not use."""
        rpl = cs & 3
        if not cs & 0xFFFC:
            raise GuestFault(GP, 0)
        code = self.view.descriptor(cs)
        if code is None or not code.is_code:
            raise GuestFault(GP, cs & 0xFFFC)
        conforming = bool(code.type & 4)
        if (conforming and code.dpl > rpl) or (not conforming and code.dpl != rpl):
            raise GuestFault(GP, cs & 0xFFFC)
        if not code.present:
            raise GuestFault(NP, cs & 0xFFFC)
        new_esp = self.view.read_int((stack_base + esp) & 0xFFFFFFFF, size)
        ss = self.view.read_int((stack_base + esp + size) & 0xFFFFFFFF, 2)
        ss_raw = check_outer_stack(self.view, ss, rpl)
        self.cpu.change_privilege(cs, self.view.raw_descriptor(cs), ss, ss_raw, (new_esp + release) & 0xFFFFFFFF)
        null_outer_data_segments(self.cpu, self.view, rpl)

    def _iret(self, insn):
        size = 2 if insn.id == X.X86_INS_IRET else 4
        flags, cpl = self.cpu.reg("eflags"), self.cpu.cpl
        if flags & NT:                          # a return to the task in the back link
            self.tasks.iret(next_eip=self._next)
            self._next = self.cpu.reg("eip")
            self._nmis_unblocked()
            return
        esp = self.cpu.reg("esp")
        base = self.cpu.segment_base("ss")
        eip = self.view.read_int((base + esp) & 0xFFFFFFFF, size)
        cs = self.view.read_int((base + esp + size) & 0xFFFFFFFF, 2)
        new_flags = self.view.read_int((base + esp + 2 * size) & 0xFFFFFFFF, size)
        if cpl == 0 and size == 4 and new_flags & VM:
            raise UnsupportedInstruction("iret to virtual-8086 mode: not modelled")
        if cs & 3 > cpl:
            self._return_to_outer_ring(cs, base, (esp + 3 * size) & 0xFFFFFFFF, size)
        elif cs & 3 < cpl:
            raise GuestFault(GP, cs & 0xFFFC)
        else:
            self.load_segment("cs", cs)
            self.cpu.set_reg("esp", esp + 3 * size)
        mask = _writable_flags(cpl, flags, size)          # the rules of the ring iret ran in
        if size == 4:
            mask |= RF          # iret loads RF (QEMU's helper_iret_protected): a #DB handler's resume flag
        self.cpu.set_reg("eflags", (self.cpu.reg("eflags") & ~mask) | (new_flags & mask))
        self._next = eip
        self._nmis_unblocked()

    def _nmis_unblocked(self) -> None:
        """An IRET that completed ends the CPU's NMI blocking (QEMU: helper_iret_protected)."""
        if self.cpu.platform is not None:
            self.cpu.platform.iret_executed()

    def _software_interrupt(self, insn):
        if insn.id == X.X86_INS_INTO:
            if not self.cpu.reg("eflags") & OF:
                return None
            return Outcome(OutcomeKind.INTERRUPT, OF_VEC)
        if insn.id == X.X86_INS_INT1:
            # icebp (0xF1): QEMU is built without WANT_ICEBP and decodes it as no instruction
            # (#UD, measured; the engine too). The CPU would raise #DB.
            raise GuestFault(UD)
        vector = {X.X86_INS_INT3: BP}.get(insn.id)
        return Outcome(OutcomeKind.INTERRUPT, insn.operands[0].imm & 0xFF if vector is None else vector)

    def _fast_system_call(self, insn):
        """sysenter and sysexit as QEMU's helper_sysenter/helper_sysexit do them: #GP(0) while
        IA32_SYSENTER_CS is 0 (or for sysexit outside ring 0), else flat segments derived from
        it, whatever the GDT holds there. syscall/sysret: #UD (no EFER.SCE in a 32-bit CPU)."""
        if insn.id not in (X.X86_INS_SYSENTER, X.X86_INS_SYSEXIT):
            raise GuestFault(UD)
        cs_msr = self.cpu.read_msr(MSR_SYSENTER_CS) & 0xFFFF
        if not self.cpu.reg("cr0") & CR0_PE or cs_msr == 0:
            raise GuestFault(GP, 0)
        if insn.id == X.X86_INS_SYSENTER:
            cs, ss = cs_msr & 0xFFFC, (cs_msr + 8) & 0xFFFC
            esp, eip = self.cpu.read_msr(MSR_SYSENTER_ESP) & 0xFFFFFFFF, self.cpu.read_msr(MSR_SYSENTER_EIP)
            flags = self.cpu.reg("eflags") & ~(VM | IF | RF)
            self.cpu.change_privilege(cs, _FLAT_CODE[0], ss, _FLAT_DATA[0], esp)
            self.cpu.set_reg("eflags", flags)
        else:
            if self.cpu.cpl != 0:
                raise GuestFault(GP, 0)
            cs, ss = ((cs_msr + 16) & 0xFFFC) | 3, ((cs_msr + 24) & 0xFFFC) | 3
            esp, eip = self.cpu.reg("ecx"), self.cpu.reg("edx")
            flags = self.cpu.reg("eflags")
            self.cpu.change_privilege(cs, _FLAT_CODE[3], ss, _FLAT_DATA[3], esp)
            self.cpu.set_reg("eflags", flags)
        self._next = eip & 0xFFFFFFFF

    # -- system state --------------------------------------------------------------------------
    def _hlt(self, insn):
        self.cpu.set_reg("eip", self._next)
        return HALT

    def _load_descriptor_table(self, insn):
        address = self.operand_address(insn, insn.operands[0])
        limit = self.view.read_int(address, 2)
        base = self.view.read_int((address + 2) & 0xFFFFFFFF, 4)
        if self._operand16(insn):
            base &= 0xFFFFFF
        self.cpu.set_table_register("gdtr" if insn.id == X.X86_INS_LGDT else "idtr", base, limit)

    def _store_descriptor_table(self, insn):
        base, limit = self.cpu.table_register("gdtr" if insn.id == X.X86_INS_SGDT else "idtr")
        if self._operand16(insn):
            base &= 0xFFFFFF
        self.view.write(self.operand_address(insn, insn.operands[0]), struct.pack("<HI", limit, base))

    def _load_system_segment(self, insn):
        selector = self._read(insn, insn.operands[0], 2)
        name = "ldtr" if insn.id == X.X86_INS_LLDT else "tr"
        if selector & 4:
            raise GuestFault(GP, selector & 0xFFFC)
        if not selector & 0xFFFC:
            # a null LDT; QEMU's helper_ltr also takes a null selector, leaving TR invalid (base
            # and limit 0) without the #GP(0) the SDM documents
            self.cpu.set_table_selector(name, 0, None)
            return
        raw = self.view.raw_descriptor(selector)
        if raw is None:
            raise GuestFault(GP, selector & 0xFFFC)
        descriptor = SegmentDescriptor.decode(raw)
        wanted = (LDT_TYPE,) if name == "ldtr" else (TSS_AVAILABLE_16, TSS_AVAILABLE_32)
        if not descriptor.system or descriptor.type not in wanted:
            raise GuestFault(GP, selector & 0xFFFC)
        if not descriptor.present:
            raise GuestFault(NP, selector & 0xFFFC)
        if name == "tr":          # mark the TSS busy in the guest's GDT, as ltr does
            address = self.view.descriptor_address(selector)
            self.view.write((address + 5) & 0xFFFFFFFF, bytes([raw[5] | 0x02]))
        self.cpu.set_table_selector(name, selector, raw)

    def _store_system_segment(self, insn):
        value = self.cpu.table_selector("ldtr" if insn.id == X.X86_INS_SLDT else "tr")
        operand = insn.operands[0]
        self._write(insn, operand, value, operand.size if operand.type == X.X86_OP_REG else 2)

    def _smsw(self, insn):
        self._write(insn, insn.operands[0], self.cpu.reg("cr0"), 2)

    def _read_segment_register(self, insn):
        destination, source = insn.operands
        self._write(insn, destination, self.cpu.reg(_SEGMENTS[source.reg]),
                    destination.size if destination.type == X.X86_OP_REG else 2)

    def _push_segment_register(self, insn):
        self._push(self.cpu.reg(_SEGMENTS[insn.operands[0].reg]), 2 if self._operand16(insn) else 4)

    def _read_control_register(self, insn):
        number = int(insn.reg_name(insn.operands[1].reg)[2:])
        if number not in _CONTROL_REGISTERS:
            raise GuestFault(UD)          # CR1, CR5-CR7 (ring 0; elsewhere #GP comes first)
        self._write(insn, insn.operands[0], self.cpu.reg(f"cr{number}"))

    def _write_control_register(self, insn):
        number = int(insn.reg_name(insn.operands[0].reg)[2:])
        if number not in _CONTROL_REGISTERS:
            raise GuestFault(UD)
        value = self._read(insn, insn.operands[1], 4)
        if number == 0:
            self._set_cr0(value)
        else:
            self.cpu.set_reg(f"cr{number}", value)

    def _set_cr0(self, value: int) -> None:
        if not value & CR0_PE:
            raise UnsupportedInstruction("leaving protected mode: real mode is not modelled where the monitor emulates CR0")
        self.cpu.set_reg("cr0", value | CR0_ET)        # ET is hardwired to one on a 387-class CPU

    def _write_msw(self, insn):
        cr0 = self.cpu.reg("cr0")
        if insn.id == X.X86_INS_CLTS:
            self._set_cr0(cr0 & ~CR0_TS)
            return
        msw = self._read(insn, insn.operands[0], 2)
        self._set_cr0((cr0 & ~(CR0_MSW & ~CR0_PE)) | (msw & CR0_MSW) | (cr0 & CR0_PE))   # lmsw cannot clear PE

    def _debug_register(self, insn):
        """mov drN, r32 / mov r32, drN on the CPU view's debug registers (vmm/debug_registers.py:
        DR4/DR5 aliases, #UD under CR4.DE, DR6/DR7's fixed ones, what DR7 arms)."""
        destination, source = insn.operands
        write = insn.reg_name(destination.reg).startswith("dr")
        number = int(insn.reg_name((destination if write else source).reg)[2:])
        cr4 = self.cpu.reg("cr4")
        if write:
            self.cpu.debug.write(number, self._read(insn, source, 4), cr4)
        else:
            self._write(insn, destination, self.cpu.debug.read(number, cr4))

    def _cache_control(self, insn):
        if insn.id == X.X86_INS_INVLPG:
            self.cpu.invalidate_page(self.operand_address(insn, insn.operands[0]))
        return None        # wbinvd/invd: no caches are modelled

    def _msr(self, insn):
        number = self.cpu.reg("ecx")
        try:
            if insn.id == X.X86_INS_RDMSR:
                value = self.cpu.read_msr(number)
                self.cpu.set_reg("eax", value & 0xFFFFFFFF)
                self.cpu.set_reg("edx", value >> 32)
            else:
                self.cpu.write_msr(number, (self.cpu.reg("edx") << 32) | self.cpu.reg("eax"))
        except ValueError:
            raise GuestFault(GP, 0) from None

    def _rdpmc(self, insn):
        # QEMU's helper_rdpmc: #GP(0) outside ring 0 unless CR4.PCE is set; then, having no
        # performance counters, #UD (measured: #UD at ring 0, and at ring 3 with PCE set).
        if self.cpu.cpl > 0 and not self.cpu.reg("cr4") & CR4_PCE:
            raise GuestFault(GP, 0)
        raise GuestFault(UD, 0)

    def _interrupt_flag(self, insn):
        """cli/sti where they reach the monitor (a trap under trap-and-emulate): allowed at CPL <=
        IOPL. After sti, interrupts wait one more instruction (the modes watch the window)."""
        flags = self.cpu.reg("eflags")
        if self.cpu.cpl > iopl(flags):
            raise GuestFault(GP, 0)
        self.cpu.set_reg("eflags", flags & ~IF if insn.id == X.X86_INS_CLI else flags | IF)
        if insn.id == X.X86_INS_STI and not flags & IF:
            self.interrupt_shadow = True

    def _popf(self, insn):
        size = 2 if insn.id == X.X86_INS_POPF else 4
        value = self._pop(size)
        flags = self.cpu.reg("eflags")
        mask = _writable_flags(self.cpu.cpl, flags, size)
        self.cpu.set_reg("eflags", (flags & ~mask) | (value & mask))

    def _pushf(self, insn):
        self._push(self.cpu.reg("eflags") & ~(RF | VM), 2 if insn.id == X.X86_INS_PUSHF else 4)   # the image clears both

    def _descriptor_access(self, insn):
        """lar/lsl/verr/verw: ZF=1 and a result only when the descriptor is visible at CPL/RPL."""
        selector = self._read(insn, insn.operands[-1], 2)
        raw = self.view.raw_descriptor(selector) if selector & 0xFFFC else None
        ok = False
        if raw is not None:
            descriptor = SegmentDescriptor.decode(raw)
            conforming_code = descriptor.is_code and descriptor.type & 4
            visible = conforming_code or max(self.cpu.cpl, selector & 3) <= descriptor.dpl
            if insn.id in (X.X86_INS_VERR, X.X86_INS_VERW):
                if descriptor.is_code:
                    ok = insn.id == X.X86_INS_VERR and bool(descriptor.type & 2) and visible
                elif not descriptor.system:
                    ok = visible and (insn.id == X.X86_INS_VERR or descriptor.is_writable_data)
            else:
                valid_system = {X.X86_INS_LAR: (1, 2, 3, 4, 5, 9, 11, 12), X.X86_INS_LSL: (1, 2, 3, 9, 11)}[insn.id]
                ok = visible and (not descriptor.system or descriptor.type in valid_system)
                if ok:
                    low, high = struct.unpack("<II", raw)
                    value = high & 0x00F0FF00 if insn.id == X.X86_INS_LAR else descriptor.limit
                    destination = insn.operands[0]
                    self._write(insn, destination, value & ((1 << (8 * destination.size)) - 1))
        self._set_zf(ok)

    def _cpuid(self, insn):
        leaf = self.cpu.reg("eax")
        values = self.cpu.cpuid_seen(leaf, cpu_model.cpuid(leaf, self.cpu.reg("ecx")))
        for name, value in zip(("eax", "ebx", "ecx", "edx"), values):
            self.cpu.set_reg(name, value)

    def _rdtsc(self, insn):
        if self.cpu.cpl and self.cpu.reg("cr4") & CR4_TSD:     # QEMU's helper_rdtsc(p)
            raise GuestFault(GP, 0)
        value = self.timestamp()
        self.cpu.set_reg("eax", value & 0xFFFFFFFF)
        self.cpu.set_reg("edx", (value >> 32) & 0xFFFFFFFF)
        if insn.id == X.X86_INS_RDTSCP:
            self.cpu.set_reg("ecx", self.cpu.read_msr(MSR_TSC_AUX) & 0xFFFFFFFF)
