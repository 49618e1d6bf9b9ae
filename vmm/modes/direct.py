"""Direct execution: the guest's own code runs untranslated at ring 0 on the engine (the bare
machine). The reference every other mode is compared with, and their speed limit."""

from __future__ import annotations

from vmm.cpu import GuestCpu
from vmm.engine import StopCause
from vmm.exits import ExitReason, VmExit
from vmm.memory import UnbackedAccess
from vmm.modes import ExecutionMode
from vmm.x86 import BP, DB, IF, OF_VEC

HLT_OPCODE = 0xF4
_ONE_BYTE_INTS = ((BP, 0xCC), (OF_VEC, 0xCE), (DB, 0xF1))   # int3, into, int1


_CAPSTONE = None


def instruction_length(code: bytes):
    global _CAPSTONE
    if _CAPSTONE is None:
        from capstone import CS_ARCH_X86, CS_MODE_32, Cs
        _CAPSTONE = Cs(CS_ARCH_X86, CS_MODE_32)
    for _address, size, _mnemonic, _operands in _CAPSTONE.disasm_lite(code, 0, 1):
        return size
    return None


_PREFIXES = (0x66, 0x67, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0xF0, 0xF2, 0xF3)


def _skip_prefixes(code: bytes) -> int:
    """Index of the opcode byte of the instruction `code` starts with."""
    at = 0
    while at < len(code) - 1 and code[at] in _PREFIXES:
        at += 1
    return at


def _is_out_to(code: bytes, port: int, size: int, dx: int) -> bool:
    """Whether `code` starts with an OUT of `size` bytes to `port`."""
    at = _skip_prefixes(code)
    operand16 = 0x66 in code[:at]
    opcode = code[at]
    width = 1 if opcode in (0xE6, 0xEE) else (2 if operand16 else 4)
    if opcode in (0xE6, 0xE7):
        return code[at + 1] == port and width == size
    return opcode in (0xEE, 0xEF) and dx == port and width == size


class DirectMode(ExecutionMode):
    name = "direct"

    def attach(self, vm) -> GuestCpu:
        engine = vm.engine
        self.memory = vm.memory
        engine.on_port_io(
            lambda port, size: vm.dispatch(VmExit(ExitReason.PORT_IN, port=port, size=size)),
            lambda port, size, value: vm.dispatch(VmExit(ExitReason.PORT_OUT, port=port, size=size, value=value)))
        engine.on_interrupt(lambda vector: vm.dispatch(self._exception_exit(engine, vector)))
        if vm.tracer.exec:
            engine.on_block(lambda address, _size: vm.tracer.executed(address))
        self.engine = engine
        self.debugger = vm.debugger
        self._breakpoint_hooks: dict[int, object] = {}
        self._hit_breakpoint = False
        if self.debugger is not None:
            self.debugger.on_breakpoints_changed = self._sync_breakpoints
        self.cpu = GuestCpu(engine)
        self._vm = vm
        self._end_run_requested = False
        # Once the guest uses time the run loop bounds every run: end the unbounded one now.
        vm.interrupts.on_first_use.append(self._end_run)
        return self.cpu

    def _end_run(self) -> None:
        self._end_run_requested = True
        self.engine.stop()

    # -- debugger: a code hook per breakpoint, the engine's count for single steps ---------------
    def _sync_breakpoints(self, _address) -> None:
        wanted = self.debugger.breakpoints
        for address in list(self._breakpoint_hooks):
            if address not in wanted:
                self.engine.remove_hook(self._breakpoint_hooks.pop(address))
                self.engine.invalidate_code(address, address + 1)
        for address in wanted - set(self._breakpoint_hooks):
            self._breakpoint_hooks[address] = self.engine.on_code(address, self._breakpoint)
            self.engine.invalidate_code(address, address + 1)   # hooks added later are not in old code

    def _breakpoint(self, address: int) -> None:
        if self.debugger.resume_over == address:
            self.debugger.resume_over = None      # resuming from this breakpoint: run it once
            return
        self._hit_breakpoint = True
        self.engine.stop()                        # stops before the instruction executes

    def end_run_after_io(self, port: int, size: int) -> None:
        """Stop the engine: like QEMU's own TCG it takes effect at the end of the engine's block
        (the instructions after the OUT in that block run first). An EIP written inside the
        hook is not honoured, so the interrupt window cannot come earlier. Only when INTR is
        raised and IF set: a reprogrammed timer is picked up at the next event instead."""
        if self._vm.interrupts.pic.output and self.engine.reg("eflags") & IF:
            self._end_run()

    def registers_after_io(self, port: int, size: int) -> dict:
        """Inside a port I/O hook the general registers are current but the engine's EIP is the
        start of its translation block. The OUT being serviced is the first one in that
        straight-line code with this port and size (an earlier one would have stopped the run
        already), so decode forward to it; the run ends just after it."""
        snapshot = self.cpu.snapshot()
        eip = snapshot["eip"]
        for _ in range(64):
            try:
                code = self.memory.read(eip, 16)
            except UnbackedAccess:
                break
            length = instruction_length(code)
            if length is None:
                break
            if _is_out_to(code, port, size, snapshot["edx"] & 0xFFFF):
                snapshot["eip"] = eip + length
                break
            eip += length
        return snapshot

    def _exception_exit(self, engine, vector: int) -> VmExit:
        """Delivered from inside the interrupt hook: the engine's state is the guest's."""
        eip = engine.reg("eip")
        error_code, software = engine.last_exception_info()
        engine.reset_exception_state()
        fault_eip = eip
        if software:    # EIP is past the int instruction; blame its first byte if delivery faults
            fault_eip = eip - (1 if (vector, self._byte_before(eip)) in _ONE_BYTE_INTS else 2)
        return VmExit(ExitReason.EXCEPTION, eip=eip, vector=vector, error_code=error_code,
                      software=software, fault_eip=fault_eip)

    def _byte_before(self, eip: int) -> int:
        try:
            return self.memory.read(eip - 1, 1)[0]
        except UnbackedAccess:
            return -1

    def execute(self, vm) -> VmExit:
        engine = vm.engine
        count = vm.run_budget()
        debugger = self.debugger
        stepping = debugger is not None and debugger.stepping
        if debugger is not None and debugger.interrupted:
            return VmExit(ExitReason.DEBUG, eip=engine.reg("eip"))
        self._hit_breakpoint = False
        if count and not stepping:
            cause, count = self._run_counted(vm, count)
        else:
            cause = engine.run(engine.reg("eip"), vm.until_address, count=1 if stepping else 0)
        if vm.stop_requested:
            return VmExit(ExitReason.STOP_REQUEST)
        eip = engine.reg("eip")
        if self._end_run_requested:     # cut short: the instructions it ran are not counted
            self._end_run_requested = False
            if self._byte_before(eip) != HLT_OPCODE:
                return VmExit(ExitReason.EVENT, eip=eip)
            return VmExit(ExitReason.HLT, eip=eip - 1)
        if debugger is not None and (stepping or self._hit_breakpoint or debugger.interrupted):
            if cause is not StopCause.MEMORY_FAULT:
                return VmExit(ExitReason.DEBUG, eip=eip)
        if vm.limits.expired:
            return VmExit(ExitReason.TIME_LIMIT, eip=eip)
        if cause is StopCause.MEMORY_FAULT:
            return VmExit(ExitReason.MEMORY_FAULT, eip=eip, detail=engine.memory_fault.message)
        if count and not stepping:
            # Only `hlt` and an exhausted count return quietly. hlt leaves EIP just past itself;
            # the count stops before an instruction. A count that ran out right after a
            # non-hlt instruction ending in byte F4 would be taken for hlt.
            if self._byte_before(eip) != HLT_OPCODE:
                vm.retire(count)
                return VmExit(ExitReason.EVENT, eip=eip)
        return VmExit(ExitReason.HLT, eip=eip - 1)

    def _run_counted(self, vm, count: int):
        """Run exactly `count` instructions (the engine's count), except that an instruction
        that blocks interrupts for one more (sti, mov ss, pop ss) is never the last: an
        interrupt taken at the end must not land in its shadow. Returns (cause, count run)."""
        engine = self.engine
        if count > 1:
            cause = engine.run(engine.reg("eip"), vm.until_address, count=count - 1)
            if (cause is not StopCause.RETURNED or vm.stop_requested or self._end_run_requested
                    or self._hit_breakpoint or vm.limits.expired
                    or self._byte_before(engine.reg("eip")) == HLT_OPCODE):
                return cause, count
        if self._opens_shadow(engine.reg("eip")):
            count += 1
            cause = engine.run(engine.reg("eip"), vm.until_address, count=2)
        else:
            cause = engine.run(engine.reg("eip"), vm.until_address, count=1)
        return cause, count

    def _opens_shadow(self, eip: int) -> bool:
        try:
            code = self.memory.read(eip, 16)
        except UnbackedAccess:
            return False
        at = _skip_prefixes(code)
        opcode = code[at]
        return opcode in (0xFB, 0x17) or (opcode == 0x8E and (code[at + 1] >> 3) & 7 == 2)   # sti, pop ss, mov ss
