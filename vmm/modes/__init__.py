"""Execution modes: the strategy that runs guest code on the engine until it exits to the monitor."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from vmm.errors import ConfigError

if TYPE_CHECKING:
    from vmm.cpu import GuestCpu
    from vmm.exits import VmExit
    from vmm.run_context import RunContext


# The options that only some modes take: MachineConfig field -> (the option as the user writes
# it, its value when not given, what it belongs to). A mode lists those it takes in `options`.
# (--tcache-size is not one: a guest option every mode accepts and only bt uses, so that the
# same options can run a guest under each mode, as the differential fuzzer does.)
MODE_OPTIONS = {
    "profile": ("--profile", False, "it counts translated blocks"),
    "dump_cache": ("--dump-cache", None, "only binary translation has a translation cache"),
    "watch_holes": ("--no-hole-watch", True, "the only mode that watches for holes"),
    "vt_exits": ("--vt-exits", None, "the exit controls of hardware assistance"),
}


@dataclass(frozen=True)
class PendingStop:
    """Why a mode's hooks stopped the engine, recorded once per engine run (the first reason wins,
    as VirtualMachine.request_stop's does): `kind` is the mode's own Enum, `data` what handling
    it needs. The mode decodes it when the engine returns, instead of a flag per reason."""
    kind: enum.Enum
    data: object = None


class ExecutionMode(ABC):
    """One way of running the guest. `attach` installs what the mode needs on the engine once
    and returns the guest-visible CPU view; `execute` runs guest code and returns the exit that
    stopped it. The mode reaches the machine only through the RunContext that attach is given
    (vmm/run_context.py). Exits the monitor can service without stopping the engine (port I/O,
    and in direct mode exceptions) go to its `dispatch` from engine hooks."""

    name: str
    long_mode = False          # the engine runs this mode's code in long mode (bt: docs/isolation.md)
    options: frozenset = frozenset()      # the MODE_OPTIONS this mode takes
    paging_schemes: tuple = ()            # its memory-virtualization schemes (--paging), the default
                                          # first; none: the guest's paging runs on the engine's MMU
    # True: while watch_interrupt_window is armed, every way guest code can set IF returns to
    # the run loop at that boundary, so an interrupt waiting for IF needs no polling (run_budget)
    watches_every_if_set = False

    @classmethod
    def accepts(cls, config) -> None:
        """Raise ConfigError unless this mode can run with `config`: the options of other modes
        left unset, and a paging scheme it offers."""
        for field, (flag, unset, belongs) in MODE_OPTIONS.items():
            if field not in cls.options and getattr(config, field) != unset:
                takers = sorted(name for name, mode in available_modes().items() if field in mode.options)
                raise ConfigError(f"{flag} needs --mode {' or '.join(takers)} ({belongs})")
        if config.paging is not None and config.paging not in cls.paging_schemes:
            if not cls.paging_schemes:
                raise ConfigError(f"--paging does not apply to --mode {cls.name}: the guest's paging runs on the "
                                  f"engine's own MMU (the bare machine)")
            raise ConfigError(f"--paging {config.paging} is not available under --mode {cls.name} "
                              f"(available: {', '.join(cls.paging_schemes)})")

    @abstractmethod
    def attach(self, context: "RunContext") -> "GuestCpu": ...

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

    @abstractmethod
    def end_run_soon(self) -> None:
        """Called from another thread (host input arrived: vmm/input_wake.py): end the engine run
        going on at a point where it resumes exactly, with every instruction that ran retired,
        and return an EVENT exit (also, without running, while the context's input_pending
        holds). Only asked while time is in use: the runs are counted then. The engine's stop()
        does not do: from another thread it leaves EIP stale (Engine facts)."""

    def end_run_after_mmio(self) -> None:
        """Called from inside a guest's MMIO access (an APIC write that raised INTR or moved the
        APIC timer's next event), or a port access that set a device's deadline (a UART's
        character timeout): end the current run after this instruction if the mode can do
        it without stopping the engine inside the access (a stop there makes the engine run the
        access again); otherwise the run ends at its next exit or event, as here."""

    def instructions_in_flight(self) -> Optional[int]:
        """From inside a hook or an MMIO access of a counted run: the guest instructions the run
        has executed so far, not retired yet (the clock's `in_flight`: devices that read a free-
        running counter see them). None while no counted run is going on."""
        return None

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
        """Mode-specific counters for the report: the same keys on every run (0 when nothing
        happened), whatever the guest does."""
        return {}

    def dump(self) -> Optional[dict]:
        """The mode's own state as JSON for --dump-cache (bt: the translation cache); only modes
        that take the dump_cache option have one."""
        return None

    @abstractmethod
    def execute(self) -> "VmExit": ...


def available_modes() -> dict[str, type[ExecutionMode]]:
    from vmm.modes.bt import BinaryTranslationMode
    from vmm.modes.direct import DirectMode
    from vmm.modes.trap import TrapAndEmulateMode
    from vmm.modes.vt import HardwareAssistedMode
    return {mode.name: mode for mode in (BinaryTranslationMode, DirectMode, TrapAndEmulateMode, HardwareAssistedMode)}


DEFAULT_MODE = "bt"
