"""RunContext: the narrow interface through which an execution mode runs guest code on the machine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from vmm.emulate import Emulator
    from vmm.engine import Engine
    from vmm.exits import VmExit
    from vmm.gdbstub import Debugger
    from vmm.input_wake import InputWake
    from vmm.clock import VirtualClock
    from vmm.interrupts import InterruptPlatform
    from vmm.memory import PhysicalMemory
    from vmm.trace import Tracer
    from vmm.vm import Limits


class RunContext:
    """What a mode needs from the machine, and nothing else: the VirtualMachine creates one and
    hands it to `ExecutionMode.attach`; the mode keeps it instead of the VM.

    - wiring (attach): the engine and guest memory, the tracer, the never-executed `until`;
    - the run's budget: `run_budget()` before each run, `retire(n)` for what ran;
    - the limits (`limits`, which bt's per-block budget reads) and the stops that come from
      outside the guest's flow (`stop_due`, `watchdog_exit`): time limit and Ctrl-C; and host
      input, which ends a run without ending the whole run (`input_pending`: an EVENT exit);
    - the interrupt platform as a mode sees it: `on_first_use` (time comes into use: start
      counting), whether an OUT reprograms a timer, whether INTR is raised, an IRET's end of NMI
      blocking; and the CPU's built-in devices' MSRs and CPUID bits (`cpu_devices`);
    - exits: `dispatch` (the run loop's one place, also called from engine hooks), and the end
      of the whole run (`stop_requested`, `request_stop`);
    - the emulator (trap's and vt's traps, bt's operand addresses), the I/O permission check,
      and the debugger (None without --gdb)."""

    def __init__(self, *, engine: "Engine", memory: "PhysicalMemory", tracer: "Tracer",
                 debugger: Optional["Debugger"], limits: "Limits", interrupts: "InterruptPlatform",
                 until_address: int, dispatch: Callable[["VmExit"], int],
                 run_budget: Callable[[], Optional[int]], retire: Callable[[int], None],
                 stop_requested: Callable[[], bool], request_stop: Callable[..., None],
                 io_permitted: Callable[[int, int], bool], input_wake: "InputWake") -> None:
        self.engine = engine
        self.memory = memory
        self.tracer = tracer
        self.debugger = debugger
        self.limits = limits
        self.until_address = until_address       # never executed: see the engine pitfall on `until`
        self.dispatch = dispatch
        self.run_budget = run_budget
        self.retire = retire
        self.request_stop = request_stop
        self.io_permitted = io_permitted
        self._interrupts = interrupts
        self._stop_requested = stop_requested
        self._input_wake = input_wake
        # The emulator works on the CPU view that attach returns, so the VM builds it after
        # attach and sets it here; modes use it only while running.
        self.emulator: Optional["Emulator"] = None

    # -- stops -----------------------------------------------------------------------------------
    @property
    def stop_requested(self) -> bool:
        """The run is over once this exit is handled (a device or handler asked: request_stop)."""
        return self._stop_requested()

    @property
    def stop_due(self) -> bool:
        """The watchdog ended the run (time limit or Ctrl-C): return `watchdog_exit`."""
        return self.limits.stop_due

    def watchdog_exit(self, eip: int) -> "VmExit":
        return self.limits.watchdog_exit(eip)

    @property
    def input_pending(self) -> bool:
        """Host input arrived for an armed device and the run loop has not polled it yet: the
        mode ends its run (as an EVENT exit) or does not start one (vmm/input_wake.py)."""
        return self._input_wake.pending

    # -- the interrupt platform ------------------------------------------------------------------
    def on_first_use(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the guest starts to use time (its runs are bounded from then on)."""
        self._interrupts.on_first_use.append(callback)

    @property
    def clock(self) -> "VirtualClock":
        """Guest time (vmm/clock.py)."""
        return self._interrupts.clock

    @property
    def time_in_use(self) -> bool:
        """Whether the guest uses time yet (from then on it stays so)."""
        return self._interrupts.in_use

    def reprograms_timer(self, port: int) -> bool:
        """Whether an OUT to `port` reprograms the PIT or the RTC (the run's bound may move)."""
        return self._interrupts.reprograms_timer(port)

    @property
    def nmi_ready(self) -> bool:
        """An NMI waits and NMIs are not blocked (safe inside a hook)."""
        return self._interrupts.nmi_ready

    @property
    def intr_raised(self) -> bool:
        """The CPU's INTR line now (safe inside an I/O hook)."""
        return self._interrupts.intr_raised

    def iret_executed(self) -> None:
        """The guest completed an IRET: NMIs are no longer blocked."""
        self._interrupts.iret_executed()

    @property
    def cpu_devices(self) -> "InterruptPlatform":
        """What answers for the devices built into the CPU (the local APIC): the MSRs and CPUID
        bits that the engine's own CPU lacks (read_msr, write_msr, cpuid)."""
        return self._interrupts
