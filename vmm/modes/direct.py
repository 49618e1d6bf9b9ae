"""Direct execution: the guest's own code runs untranslated at ring 0 on the engine (the bare
machine). The reference every other mode is compared with, and their speed limit."""

from __future__ import annotations

from vmm.engine import StopCause
from vmm.exits import ExitReason, VmExit
from vmm.modes import ExecutionMode

HLT_OPCODE = 0xF4


class DirectMode(ExecutionMode):
    name = "direct"

    def attach(self, vm) -> None:
        engine = vm.engine
        engine.on_port_io(
            lambda port, size: vm.dispatch(VmExit(ExitReason.PORT_IN, port=port, size=size)),
            lambda port, size, value: vm.dispatch(VmExit(ExitReason.PORT_OUT, port=port, size=size, value=value)))
        engine.on_interrupt(lambda vector: vm.dispatch(VmExit(ExitReason.EXCEPTION, vector=vector)))

    def execute(self, vm) -> VmExit:
        engine = vm.engine
        count = vm.limits.remaining_instructions()
        cause = engine.run(engine.reg("eip"), vm.until_address, count=count or 0,
                           timeout_us=vm.limits.remaining_microseconds())
        if vm.stop_requested:
            return VmExit(ExitReason.STOP_REQUEST)
        if cause is StopCause.TIMEOUT:
            return VmExit(ExitReason.TIME_LIMIT)
        if cause is StopCause.MEMORY_FAULT:
            return VmExit(ExitReason.MEMORY_FAULT, detail=engine.memory_fault.message)
        if count:
            # Only `hlt` and an exhausted count return quietly. hlt leaves EIP just past itself;
            # the count stops before an instruction. A count that ran out right after a
            # non-hlt instruction ending in byte F4 would be taken for hlt: both end the run.
            eip = engine.reg("eip")
            if not vm.memory.ram.contains(eip - 1, 1) or vm.memory.read(eip - 1, 1)[0] != HLT_OPCODE:
                vm.limits.used_all_instructions()
                return VmExit(ExitReason.INSTRUCTION_LIMIT)
        return VmExit(ExitReason.HLT)
