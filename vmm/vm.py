"""The virtual machine and its run loop: a small state machine that runs the execution mode and
dispatches every exit, in one place, to the part of the monitor that services it."""

from __future__ import annotations

import time
from collections import Counter
from enum import Enum
from typing import Callable, Optional

from vmm.bus import PortBus
from vmm.console import Console
from vmm.delivery import ExceptionDelivery, TripleFault, UnsupportedGuestFeature
from vmm.engine import Engine
from vmm.exits import ExitReason, RunResult, StopReason, VmExit
from vmm.memory import PhysicalMemory, UnbackedAccess
from vmm.modes import ExecutionMode
from vmm.x86 import BP, IF, OF_VEC, vector_name


class RunState(Enum):
    READY = "ready"
    RUNNING = "running"
    FINISHED = "finished"


class Limits:
    """The instruction and wall-clock budgets of one run (None: unlimited)."""

    def __init__(self, max_instructions: Optional[int] = None, timeout: Optional[float] = None) -> None:
        self.max_instructions = max_instructions
        self.timeout = timeout
        self._deadline: Optional[float] = None
        self._instructions_left = max_instructions

    def start(self) -> None:
        if self.timeout is not None:
            self._deadline = time.monotonic() + self.timeout

    def remaining_instructions(self) -> Optional[int]:
        return self._instructions_left

    def used_all_instructions(self) -> None:
        self._instructions_left = 0

    def remaining_microseconds(self) -> int:
        if self._deadline is None:
            return 0
        return max(1, int((self._deadline - time.monotonic()) * 1e6))


class VirtualMachine:
    """Owns one machine's state (engine, memory, devices) and runs it to a RunResult."""

    def __init__(self, engine: Engine, memory: PhysicalMemory, bus: PortBus, console: Console,
                 mode: ExecutionMode, limits: Limits, until_address: int) -> None:
        self.engine = engine
        self.memory = memory
        self.bus = bus
        self.console = console
        self.mode = mode
        self.limits = limits
        self.until_address = until_address    # never executed: see engine pitfall on `until`
        self.delivery = ExceptionDelivery(engine, memory)
        self.exits: Counter = Counter()
        self.state = RunState.READY
        self.wall_time = 0.0
        self._result: Optional[RunResult] = None
        self._handlers: dict[ExitReason, Callable[[VmExit], int]] = {
            ExitReason.PORT_IN: self._port_in,
            ExitReason.PORT_OUT: self._port_out,
            ExitReason.EXCEPTION: self._exception,
            ExitReason.HLT: self._hlt,
            ExitReason.INSTRUCTION_LIMIT: self._instruction_limit,
            ExitReason.TIME_LIMIT: self._time_limit,
            ExitReason.MEMORY_FAULT: self._memory_fault,
            ExitReason.STOP_REQUEST: lambda vm_exit: 0,
        }
        mode.attach(self)

    # -- the run loop ---------------------------------------------------------------------------
    def run(self) -> RunResult:
        if self.state is not RunState.READY:
            raise RuntimeError("a machine runs once")
        self.state = RunState.RUNNING
        self.limits.start()
        started = time.perf_counter()
        try:
            while self._result is None:
                self.dispatch(self.mode.execute(self))
        except KeyboardInterrupt:
            self.request_stop(StopReason.INTERRUPTED, "interrupted by the user")
        finally:
            self.wall_time = time.perf_counter() - started
            self.state = RunState.FINISHED
            self.console.close()
        self._result.registers = self.engine.snapshot_registers()
        return self._result

    @property
    def stop_requested(self) -> bool:
        return self._result is not None

    def request_stop(self, reason: StopReason, message: str, guest_value: Optional[int] = None) -> None:
        """End the run after the current exit; the first request wins."""
        if self._result is None:
            self._result = RunResult(reason, message, guest_value)
        self.engine.stop()

    def dispatch(self, vm_exit: VmExit) -> int:
        """The one place every exit is serviced. Returns the value an IN exit reads."""
        self.exits[vm_exit.reason] += 1
        return self._handlers[vm_exit.reason](vm_exit)

    # -- exit handlers --------------------------------------------------------------------------
    def _port_in(self, vm_exit: VmExit) -> int:
        return self.bus.read(vm_exit.port, vm_exit.size)

    def _port_out(self, vm_exit: VmExit) -> int:
        self.bus.write(vm_exit.port, vm_exit.size, vm_exit.value)
        return 0

    def _exception(self, vm_exit: VmExit) -> int:
        eip = self.engine.reg("eip")
        error_code, software = self.engine.last_exception_info()
        self.engine.reset_exception_state()
        if software:    # int n / int3 / into: EIP is past the instruction; blame its first byte
            self._deliver(vm_exit.vector, return_eip=eip, fault_eip=eip - self._int_length(vm_exit.vector, eip),
                          software=True)
        else:
            self._deliver(vm_exit.vector, return_eip=eip, error_code=error_code)
        return 0

    def _int_length(self, vector: int, next_eip: int) -> int:
        try:
            previous = self.memory.read(next_eip - 1, 1)[0]
        except UnbackedAccess:
            return 2
        return 1 if (vector, previous) in ((BP, 0xCC), (OF_VEC, 0xCE), (1, 0xF1)) else 2

    def _deliver(self, vector: int, **how) -> None:
        try:
            self.delivery.deliver(vector, **how)
        except TripleFault as fault:
            self.request_stop(StopReason.TRIPLE_FAULT,
                              f"triple fault: {fault} ({vector_name(vector)} at eip {how['return_eip']:#010x})")
        except UnsupportedGuestFeature as error:
            self.request_stop(StopReason.UNSUPPORTED, str(error))
        except UnbackedAccess as error:
            self.request_stop(StopReason.MEMORY_FAULT,
                              f"delivering {vector_name(vector)}: {error}")

    def _hlt(self, vm_exit: VmExit) -> int:
        # No device of this platform raises interrupts yet, so nothing can wake a halted CPU.
        eip = self.engine.reg("eip")
        state = "enabled" if self.engine.reg("eflags") & IF else "disabled"
        self.request_stop(StopReason.HALTED, f"guest halted at eip {eip - 1:#010x} (interrupts {state}, "
                                             f"no interrupt source)")
        return 0

    def _instruction_limit(self, vm_exit: VmExit) -> int:
        self.request_stop(StopReason.INSTRUCTION_LIMIT,
                          f"instruction limit reached ({self.limits.max_instructions} instructions) "
                          f"at eip {self.engine.reg('eip'):#010x}")
        return 0

    def _time_limit(self, vm_exit: VmExit) -> int:
        self.request_stop(StopReason.TIME_LIMIT,
                          f"time limit reached ({self.limits.timeout:g} s) at eip {self.engine.reg('eip'):#010x}")
        return 0

    def _memory_fault(self, vm_exit: VmExit) -> int:
        self.request_stop(StopReason.MEMORY_FAULT,
                          f"guest memory fault at eip {self.engine.reg('eip'):#010x}: {vm_exit.detail}")
        return 0
