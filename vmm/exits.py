"""Why the guest left the CPU (ExitReason), why a run ended (StopReason), and the exit statuses."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional


class ExitReason(Enum):
    """Every way control comes back from guest code to the monitor. Dispatched in VirtualMachine."""
    PORT_IN = "port_in"
    PORT_OUT = "port_out"
    EXCEPTION = "exception"              # a CPU exception (#UD included) or int n/int3/into
    CALLOUT = "callout"                  # translated code hands a sensitive instruction to emulate
    HLT = "hlt"
    INSTRUCTION_LIMIT = "instruction_limit"
    TIME_LIMIT = "time_limit"            # the watchdog stopped the engine at the deadline
    INTERRUPT = "interrupt"              # the watchdog stopped the engine: the user pressed Ctrl-C
    MEMORY_FAULT = "memory_fault"        # an access to physical memory that does not exist
    STOP_REQUEST = "stop_request"        # a device or a handler asked the machine to stop
    DEBUG = "debug"                      # a breakpoint, a finished single step, or gdb's Ctrl-C
    EVENT = "event"                      # the instructions the run loop allowed are done: the clock
                                         # reached a timer event, a poll point or the instruction limit

    # Members are singletons: the identity hash, in C. Enum's own hashes the name in Python, and
    # every exit looks its reason up 7 times (counters, the handler, the seconds per reason).
    __hash__ = object.__hash__


@dataclass
class VmExit:
    """One exit, described in guest terms by the execution mode that produced it."""
    reason: ExitReason
    eip: int = 0                 # guest EIP: the faulting/next instruction, or where the CPU stopped;
                                 # port exits: the I/O instruction (untranslated modes find it only
                                 # while exits are traced, -d exits: else 0)
    port: int = 0
    size: int = 0
    value: int = 0
    vector: int = 0
    error_code: int = 0
    software: bool = False       # raised by int n / int3 / into: EIP is after the instruction
    fault_eip: int = 0           # for software interrupts: the int instruction itself
    instruction: object = None   # CALLOUT: the decoded guest instruction (translator.decoder)
    detail: str = ""


class StopReason(Enum):
    """How a run ended; each has its own process exit status (see EXIT_STATUS)."""
    DEBUG_EXIT = "debug_exit"            # the guest wrote to isa-debug-exit
    HALTED = "halted"                    # hlt with nothing left that could wake the CPU
    TRIPLE_FAULT = "triple_fault"        # an exception while delivering a double fault: shutdown
    RESET = "reset"                      # the guest reset the machine (port 0x92, 0xCF9, the keyboard
                                         # controller): the end of the run, as QEMU's -no-reboot makes it
    POWERED_OFF = "powered_off"          # the guest powered the machine off (ACPI S5 through PM1a_CNT)
    MEMORY_FAULT = "memory_fault"
    UNSUPPORTED = "unsupported"          # the guest used a feature this monitor does not model
    INSTRUCTION_LIMIT = "instruction_limit"
    TIME_LIMIT = "time_limit"
    INTERRUPTED = "interrupted"          # the user pressed Ctrl-C
    MONITOR_BUG = "monitor_bug"          # an impossible state or an unexpected exception in the monitor


# Statuses for stops the guest did not choose. A debug-exit run exits with the guest's value & 0xFF.
EXIT_STATUS = {
    StopReason.HALTED: 0,
    StopReason.POWERED_OFF: 0,           # QEMU exits 0 when its guest shuts it down
    StopReason.TRIPLE_FAULT: 120,
    StopReason.RESET: 119,
    StopReason.MEMORY_FAULT: 121,
    StopReason.UNSUPPORTED: 122,
    StopReason.INSTRUCTION_LIMIT: 124,
    StopReason.TIME_LIMIT: 125,
    StopReason.MONITOR_BUG: 123,
    StopReason.INTERRUPTED: 130,
}


@dataclass
class RunResult:
    reason: StopReason
    message: str
    guest_value: Optional[int] = None    # the value written to isa-debug-exit
    registers: dict = field(default_factory=dict)

    @property
    def exit_status(self) -> int:
        if self.reason is StopReason.DEBUG_EXIT:
            return self.guest_value & 0xFF
        return EXIT_STATUS[self.reason]
