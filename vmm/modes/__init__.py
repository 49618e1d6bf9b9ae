"""Execution modes: the strategy that runs guest code on the engine until it exits to the monitor."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmm.cpu import GuestCpu
    from vmm.exits import VmExit
    from vmm.vm import VirtualMachine


class ExecutionMode(ABC):
    """One way of running the guest. `attach` installs what the mode needs on the engine once
    and returns the guest-visible CPU view; `execute` runs guest code and returns the exit that
    stopped it. Exits the monitor can service without stopping the engine (port I/O, and in
    direct mode exceptions) go to vm.dispatch from engine hooks."""

    name: str

    @abstractmethod
    def attach(self, vm: "VirtualMachine") -> "GuestCpu": ...

    @classmethod
    def from_config(cls, config) -> "ExecutionMode":
        return cls()

    @abstractmethod
    def registers_after_io(self, port: int, size: int) -> dict:
        """Guest registers just after the OUT whose hook is running, when a run ends there
        (isa-debug-exit): the engine itself may run on to the end of its block. An empty dict
        means the state the engine stops in is already exact."""

    def end_run_after_io(self, port: int, size: int) -> None:
        """Called from the hook of an OUT that reprogrammed the timer or the PIC: end the current
        run as soon after this instruction as the engine allows, with an EVENT exit."""

    def deny_io(self, port: int, size: int) -> None:
        """Called from the hook of an IN/OUT the guest may not execute (CPL > IOPL and the TSS
        bitmap forbids it; the engine itself never checks): end the run and report #GP(0) at
        that instruction, with the registers it found."""
        raise NotImplementedError

    def watch_interrupt_window(self, blocked: bool) -> None:
        """Called after every interrupt window: `blocked` is True while INTR is raised but the
        guest's IF is clear (or an SS load's shadow is open). While it is, the mode must return
        to the run loop as soon as guest code sets IF (after sti's one-instruction shadow), so
        that the interrupt is taken at that boundary and not at the next event."""

    def interrupt_delivered(self) -> None:
        """The run loop injected an external interrupt (vt counts it as an exit)."""

    def task_switched(self, how: str) -> None:
        """The monitor began a task switch (vmm/task_switch.py; how: jmp, call, iret or gate):
        vt counts it as an exit, as VT-x exits on every task switch."""

    def counters(self) -> dict:
        """Mode-specific counters for the report."""
        return {}

    @abstractmethod
    def execute(self, vm: "VirtualMachine") -> "VmExit": ...


def available_modes() -> dict[str, type[ExecutionMode]]:
    from vmm.modes.bt import BinaryTranslationMode
    from vmm.modes.direct import DirectMode
    from vmm.modes.trap import TrapAndEmulateMode
    from vmm.modes.vt import HardwareAssistedMode
    return {mode.name: mode for mode in (BinaryTranslationMode, DirectMode, TrapAndEmulateMode, HardwareAssistedMode)}


DEFAULT_MODE = "bt"
