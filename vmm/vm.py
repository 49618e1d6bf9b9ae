"""The virtual machine and its run loop: a small state machine that runs the execution mode and
dispatches every exit, in one place, to the part of the monitor that services it."""

from __future__ import annotations

import gc
import os
import select
import signal
import sysconfig
import threading
import time
import traceback
from collections import Counter
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

from vmm.bus import PortBus
from vmm.clock import VirtualClock
from vmm.console import Console
from vmm.delivery import ExceptionDelivery, TripleFault
from vmm.emulate import Emulator, OutcomeKind
from vmm.errors import MonitorBug, UnsupportedGuestFeature
from vmm.engine import Engine
from vmm.guest_view import GuestFault, GuestView
from vmm.input_wake import InputWake
from vmm.interrupts import InterruptPlatform
from vmm.exits import ExitReason, RunResult, StopReason, VmExit
from vmm.memory import PhysicalMemory, UnbackedAccess
from vmm.privilege import io_permitted
from vmm.run_context import RunContext
from vmm.task_switch import TaskSwitch
from vmm.trace import Tracer
from vmm.modes import ExecutionMode
from vmm.x86 import IF, NMI, vector_name


_SOURCE_ROOT = Path(__file__).resolve().parent.parent        # vmm/, translator/, cache/ live here
_LIBRARY_ROOTS = tuple(Path(sysconfig.get_path(name)).resolve() for name in ("stdlib", "purelib", "platlib"))


def _where(error: BaseException) -> str:
    """Where an exception was raised: its innermost frame outside Python's and the installed
    libraries (a UcError is the monitor's call into Unicorn), relative to the source tree."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    ours = [frame for frame in frames
            if not any(Path(frame.filename).resolve().is_relative_to(root) for root in _LIBRARY_ROOTS)]
    frame = (ours or frames)[-1]
    path = Path(frame.filename).resolve()
    name = str(path.relative_to(_SOURCE_ROOT)) if path.is_relative_to(_SOURCE_ROOT) else frame.filename
    return f" ({name}:{frame.lineno} in {frame.name})"


# Python's collector during a run. The monitor's heap is long-lived (a translation cache of tens of
# thousands of blocks with their decoded instructions, shadow tables, devices) and a full
# collection walks all of it: 25 of them took 11.6 s of a Linux boot's 139 under bt (0.46 s
# each), and what the monitor drops (an evicted block, a fault's traceback) goes by reference
# counting or with the young objects, so the boot's peak memory was the same without them. A
# run collects young objects in batches of 50,000 allocations and the whole heap only after 100
# of the middle generation's collections (that boot: 15.0 s of GC -> 2.5 s in 102 collections,
# none of them full); the thresholds the caller had come back when the run ends.
RUN_COLLECTOR_THRESHOLDS = (50_000, 50, 100)


@contextmanager
def _collector_for_a_long_lived_heap():
    previous = gc.get_threshold()
    gc.set_threshold(*RUN_COLLECTOR_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)


class RunState(Enum):
    READY = "ready"
    RUNNING = "running"
    FINISHED = "finished"


class Limits:
    """The instruction and wall-clock budgets of one run (None: unlimited), and the two stops that
    come from outside the guest's flow: the time limit and the user's Ctrl-C.

    Neither can wait for the guest to exit (a guest spinning inside the engine never does), so a
    watchdog thread ends the run: at the deadline, or when SIGINT's wakeup byte arrives (the
    interpreter's own handler only runs once the main thread is back in Python), it notes why
    (`cause`: the first of the two wins), stops the engine (Unicorn's emu_stop is safe from
    another thread) and keeps stopping it every few milliseconds until the run loop notices, so
    a stop that lands between two engine runs is not lost. The modes look at `stop_due` whenever
    the engine returns (bt also before each engine run: its cache exits never reach the run
    loop), and the run loop after every exit: the same path for both causes in every mode."""

    RESTOP_INTERVAL = 0.005
    # The longest time limit: 31 years, far beyond any run, and below the longest wait the host
    # can make (threading.TIMEOUT_MAX, 9.2e9 s on Linux). nan, inf and larger values are refused
    # by MachineConfig.validate: leave --timeout out for a run without one.
    MAX_TIMEOUT = 1e9
    # The largest instruction limit: 300 years of guest time at 100 MHz, and a count the engine
    # can take (a size_t: 2**64 and more came back as the count modulo 2**64).
    MAX_INSTRUCTIONS = 10 ** 18

    def __init__(self, max_instructions: Optional[int] = None, timeout: Optional[float] = None) -> None:
        self.max_instructions = max_instructions
        self.timeout = timeout
        self.cause: Optional[ExitReason] = None      # TIME_LIMIT or INTERRUPT, set by the watchdog
        self.waiting_on_host = False                 # the main thread waits for gdb: Ctrl-C raises
        self._instructions_left = max_instructions
        self._finished = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._wakeup: Optional[tuple[int, int]] = None       # pipe: SIGINT's wakeup byte, finish()
        self._saved_signal: Optional[tuple] = None
        self._sigints = 0

    @property
    def stop_due(self) -> bool:
        """The run must end now (time limit or Ctrl-C): the mode returns `watchdog_exit`."""
        return self.cause is not None

    def watchdog_exit(self, eip: int) -> VmExit:
        """The exit a run the watchdog ended returns with (TIME_LIMIT or INTERRUPT)."""
        return VmExit(self.cause, eip=eip)

    def start(self, stop_engine: Callable[[], None]) -> None:
        """Called by the run loop as the run starts. Ctrl-C is watched only from the main thread
        (the only one that can own a signal handler) and only if SIGINT is not ignored."""
        self._stop_engine = stop_engine
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            read_end, write_end = os.pipe()
            os.set_blocking(write_end, False)
            self._wakeup = (read_end, write_end)
            previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
            previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            self._saved_signal = (previous_handler, previous_fd)
        if self.timeout is not None or self._wakeup is not None:
            self._thread = threading.Thread(target=self._watchdog, name="watchdog", daemon=True)
            self._thread.start()

    def _on_sigint(self, _signum, _frame) -> None:
        """The interpreter's handler, run in the main thread between two bytecodes (perhaps
        inside an engine hook): the watchdog thread has the wakeup byte and stops the run, so
        nothing is raised here, where it would land at a random point of the monitor (or be
        lost in a ctypes callback). Except while the main thread waits for gdb, which no engine
        stop ends, and on a second Ctrl-C: the first one's stop did not reach the monitor."""
        self._sigints += 1
        if self.waiting_on_host or self._sigints > 1:
            raise KeyboardInterrupt

    def _watchdog(self) -> None:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        watched = [self._wakeup[0]] if self._wakeup is not None else []
        while not self._finished.is_set():
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if watched:
                readable, _, _ = select.select(watched, [], [], wait)
                if readable and signal.SIGINT in os.read(watched[0], 512) and not self._finished.is_set():
                    self._stop(ExitReason.INTERRUPT)
                    return
            else:
                self._finished.wait(wait)
            if deadline is not None and time.monotonic() >= deadline and not self._finished.is_set():
                self._stop(ExitReason.TIME_LIMIT)
                return

    def _stop(self, cause: ExitReason) -> None:
        self.cause = cause
        while not self._finished.is_set():
            self._stop_engine()
            self._finished.wait(self.RESTOP_INTERVAL)

    def finish(self) -> None:
        """The run is over: the watchdog ends, SIGINT gets its previous handler back."""
        self._finished.set()
        if self._wakeup is not None:
            try:
                os.write(self._wakeup[1], b"\0")      # wakes the watchdog from select
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join()
        if self._saved_signal is not None:
            previous_handler, previous_fd = self._saved_signal
            signal.set_wakeup_fd(previous_fd)
            signal.signal(signal.SIGINT, previous_handler)
            self._saved_signal = None
        if self._wakeup is not None:
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None

    def remaining_instructions(self) -> Optional[int]:
        return self._instructions_left

    def consume(self, instructions: int) -> None:
        if self._instructions_left is not None:
            self._instructions_left = max(0, self._instructions_left - instructions)

    def used_all_instructions(self) -> None:
        self._instructions_left = 0


class VirtualMachine:
    """Owns one machine's state (engine, memory, devices) and runs it to a RunResult."""

    def __init__(self, engine: Engine, memory: PhysicalMemory, bus: PortBus, console: Console,
                 mode: ExecutionMode, limits: Limits, until_address: int, tracer: Optional[Tracer] = None,
                 gdb=None, clock: Optional[VirtualClock] = None) -> None:
        self.engine = engine
        self.clock = clock or VirtualClock()
        self.interrupts = InterruptPlatform(self.clock)
        self.memory = memory
        self.bus = bus
        self.console = console
        self.mode = mode
        self.limits = limits
        self.until_address = until_address    # never executed: see engine pitfall on `until`
        self.tracer = tracer or Tracer()
        self.gdb = gdb                               # vmm.gdbstub.GdbStub, or None
        self.debugger = gdb.debugger if gdb is not None else None
        self.exits: Counter = Counter()
        # Wall seconds spent on each exit, by reason: its dispatch (from the run loop, or from
        # an engine hook for the exits the untranslated modes take there) and the interrupt
        # window after it: where the time outside the guest goes (bt's cache exits are handled
        # inside the mode's execute, and not in here).
        self.exit_seconds: Counter = Counter()
        self.state = RunState.READY
        self.wall_time = 0.0
        self._result: Optional[RunResult] = None
        self._port_hook_exit: Optional[VmExit] = None
        self._handlers: dict[ExitReason, Callable[[VmExit], int]] = {
            ExitReason.PORT_IN: self._port_in,
            ExitReason.PORT_OUT: self._port_out,
            ExitReason.EXCEPTION: self._exception,
            ExitReason.CALLOUT: self._callout,
            ExitReason.HLT: self._hlt,
            ExitReason.INSTRUCTION_LIMIT: self._instruction_limit,
            ExitReason.TIME_LIMIT: self._time_limit,
            ExitReason.INTERRUPT: self._interrupt,
            ExitReason.MEMORY_FAULT: self._memory_fault,
            ExitReason.STOP_REQUEST: lambda vm_exit: 0,
            ExitReason.DEBUG: self._debug,
            ExitReason.EVENT: self._event,
        }
        # The mode sees the machine through this context only (vmm/run_context.py).
        # Host input for an armed device ends the mode's engine run (vmm/input_wake.py).
        self.input_wake = InputWake(mode.end_run_soon)
        self.context = RunContext(engine=engine, memory=memory, tracer=self.tracer, debugger=self.debugger,
                                  limits=limits, interrupts=self.interrupts, until_address=until_address,
                                  dispatch=self.dispatch, run_budget=self.run_budget, retire=self.retire,
                                  stop_requested=lambda: self.stop_requested, request_stop=self.request_stop,
                                  io_permitted=self.io_permitted, input_wake=self.input_wake)
        self.cpu = mode.attach(self.context)
        view = GuestView(self.cpu, memory)
        self.tasks = TaskSwitch(self.cpu, view, on_switch=mode.task_switched)   # for both below
        self.delivery = ExceptionDelivery(self.cpu, memory, self.tasks)
        self.emulator = Emulator(self.cpu, view, self._read_timestamp, self.tasks)
        self.context.emulator = self.emulator
        self.external_interrupts: Counter = Counter()
        self.io_denials = 0
        self.devices: dict = {}        # name -> device model with state(), filled by the builder
        self.screen = None             # the VGA text device (vmm/devices/vga.py), if any
        self.ide = None                              # the IDE channel (vmm/devices/ide.py), set by the builder
        self.at_exit: list[Callable[[], None]] = []  # device clean-up when the run ends (disks flushed)

    # -- the run loop ---------------------------------------------------------------------------
    def run(self) -> RunResult:
        if self.state is not RunState.READY:
            raise RuntimeError("a machine runs once")
        self.state = RunState.RUNNING
        started = time.perf_counter()          # before the limit's clock: the run lasts at least it
        self.limits.start(self.engine.stop)
        self.interrupts.watch_input(self.input_wake.arrived)
        try:
            with _collector_for_a_long_lived_heap():
                self._run_loop()
        except UnsupportedGuestFeature as error:
            self.request_stop(StopReason.UNSUPPORTED, str(error))
        except UnbackedAccess as error:  # --unassigned stop, from inside the engine's MMIO
            self.request_stop(StopReason.MEMORY_FAULT, f"{error} (--unassigned stop)" if error.kind else str(error))
        except KeyboardInterrupt:        # a Ctrl-C while waiting for gdb, or a second one
            self.request_stop(StopReason.INTERRUPTED, "interrupted by the user (Ctrl-C)")
        except Exception as error:       # noqa: BLE001 - whatever escapes is a monitor bug
            self._monitor_bug(error)
        finally:
            self.input_wake.close()
            self.limits.finish()
            self.tracer.close()
            if self.gdb is not None:
                if self._result is not None:
                    self.gdb.finished(self._result.exit_status)
                self.gdb.close()
            self.wall_time = time.perf_counter() - started
            self.state = RunState.FINISHED
            self.console.close()
            for close in self.at_exit:
                close()
        if not self._result.registers:
            try:
                self._result.registers = self.cpu.snapshot()
            except Exception as error:   # noqa: BLE001 - the state a monitor bug left may not read
                if self._result.reason is not StopReason.MONITOR_BUG:
                    self._monitor_bug(error)
        return self._result

    def _run_loop(self) -> None:
        if self.gdb is not None:
            with self._waiting_on_host():
                self.gdb.attach(self)
        clock = time.perf_counter
        while self._result is None:
            vm_exit = self.mode.execute()
            self.emulator.interrupt_shadow = False     # guest code ran since the last SS load
            self.dispatch(vm_exit)
            window = clock()
            if self.input_wake.pending:                # host input: the note taken, the window
                self.input_wake.take()                 # polls (one coming later: the next does)
            if self.interrupts.in_use and self._result is None:
                self._interrupt_window()
            self.exit_seconds[vm_exit.reason] += clock() - window
            if self.limits.stop_due and self._result is None:
                # the watchdog's stop landed outside guest code (a guest that exits all the time)
                self.dispatch(self.limits.watchdog_exit(self.cpu.reg("eip")))

    @contextmanager
    def _waiting_on_host(self):
        """The main thread waits on the host (gdb), where no engine stop reaches: Ctrl-C raises."""
        self.limits.waiting_on_host = True
        try:
            yield
        finally:
            self.limits.waiting_on_host = False

    def _monitor_bug(self, error: BaseException) -> None:
        """An exception the monitor did not expect ended the run: one line that names it and
        where it was raised (the innermost frame of the monitor's own code), status 123. It
        replaces any ending already requested: the state after it cannot be trusted."""
        text = " ".join(str(error).split()) or "(no message)"
        if not isinstance(error, MonitorBug):      # what the monitor did not expect: name the type
            text = f"{type(error).__name__}: {text}"
        self._result = RunResult(StopReason.MONITOR_BUG, f"monitor bug: {text}{_where(error)}")
        try:
            self.engine.stop()
        except Exception:                # noqa: BLE001
            pass

    # -- time and external interrupts -----------------------------------------------------------
    POLL_INTERVAL = 10_000     # instructions between looks at IF while an interrupt waits for it
                               # (modes that do not watch every way of setting IF; SS shadows)
    IDLE_SKIPS = 100_000       # timer events one hlt may skip over before it counts as halted for good

    def run_budget(self) -> Optional[int]:
        """How many guest instructions the mode may run before it returns an EVENT exit (None:
        no bound): up to the instruction limit, the next timer event, or, while an interrupt
        waits for the guest to set IF, the next poll. Once time is in use every run is bounded,
        so counted (at the largest limit when nothing nearer bounds it): the clock follows every
        instruction, and host input can end the run where it resumes exactly (direct mode cuts
        the engine's count: Engine.cut_count). Modes count instructions only when this is not
        None, and report what ran through `retire`."""
        left = self.limits.remaining_instructions()
        interrupts = self.interrupts
        if not interrupts.in_use:
            return None if left is None else max(1, left)
        if interrupts.pending() and (self.emulator.interrupt_shadow or not self.mode.watches_every_if_set):
            bound = self.POLL_INTERVAL
        else:
            next_event = interrupts.cycles_to_next_event()
            bound = Limits.MAX_INSTRUCTIONS if next_event is None else min(next_event, Limits.MAX_INSTRUCTIONS)
        return max(1, bound if left is None else min(bound, left))

    def retire(self, instructions: int) -> None:
        """Guest instructions the mode executed: the clock and the instruction limit move."""
        self.clock.retire(instructions)
        self.limits.consume(instructions)

    def _read_timestamp(self, in_run: bool = False) -> int:
        """The TSC: the clock as retired, or (`in_run`: read from a hook inside an engine run,
        vmm/modes/direct.py) with the run's instructions so far, as devices see it."""
        self.interrupts.guest_uses_time()
        return self.clock.now() if in_run else self.clock.cycles

    def _interrupt_window(self) -> None:
        """At an instruction boundary between two runs: take an NMI if one waits and NMIs are
        not blocked (whatever IF says), then an external interrupt if INTR is raised, the
        guest's IF is set, and no SS load just happened (sti's own shadow cannot be here: the
        modes never return right after a native sti). An interrupt left waiting makes the mode
        watch for the guest setting IF (watch_interrupt_window)."""
        interrupts = self.interrupts
        if interrupts.nmi_ready:                 # IF and the shadows do not hold an NMI back
            interrupts.take_nmi()
            self.external_interrupts[NMI] += 1
            self.mode.interrupt_delivered()
            self._deliver(NMI, return_eip=self.cpu.reg("eip"), external=True)
        interrupts.poll_input()                  # host input (the run loop took its wake's note)
        pending = interrupts.pending()
        if pending and not self.emulator.interrupt_shadow and self.cpu.reg("eflags") & IF:
            vector = self.interrupts.acknowledge()
            self.external_interrupts[vector] += 1
            self.mode.interrupt_delivered()
            self._deliver(vector, return_eip=self.cpu.reg("eip"), external=True)
            pending = self.interrupts.pending()
        # (while NMIs are blocked the watch also sees the handler's IRET, which unblocks them)
        self.mode.watch_interrupt_window((pending or interrupts.nmi_blocked) and self._result is None)

    @property
    def stop_requested(self) -> bool:
        return self._result is not None

    def request_stop(self, reason: StopReason, message: str, guest_value: Optional[int] = None) -> None:
        """End the run after the current exit; the first request wins."""
        if self._result is None:
            self._result = RunResult(reason, message, guest_value)
            if self._port_hook_exit is not None:   # the engine may run on: take the state now
                self._result.registers = self.mode.registers_after_io(self._port_hook_exit.port,
                                                                      self._port_hook_exit.size)
        self.engine.stop()

    def dispatch(self, vm_exit: VmExit) -> int:
        """The one place every exit is serviced. Returns the value an IN exit reads."""
        started = time.perf_counter()
        self.exits[vm_exit.reason] += 1
        if self.tracer.exits:
            self.tracer.exit(vm_exit)
        try:
            return self._handlers[vm_exit.reason](vm_exit)
        finally:
            self.exit_seconds[vm_exit.reason] += time.perf_counter() - started

    # -- exit handlers --------------------------------------------------------------------------
    def io_permitted(self, port: int, size: int) -> bool:
        """The CPU's I/O permission check, which the engine skips: outside ring 0 the access
        needs CPL <= IOPL or a clear TSS bitmap. A refusal is counted; the caller raises #GP(0)."""
        if self.cpu.cpl == 0 or io_permitted(self.cpu, self.emulator.view, port, size):
            return True
        self.io_denials += 1
        return False

    def _io_denied(self, vm_exit: VmExit) -> bool:
        """An access refused by the permission check: the mode turns it into #GP(0)."""
        if self.io_permitted(vm_exit.port, vm_exit.size):
            return False
        self.mode.deny_io(vm_exit.port, vm_exit.size)
        return True

    def _port_in(self, vm_exit: VmExit) -> int:
        if self._io_denied(vm_exit):
            return 0
        value = self.bus.read(vm_exit.port, vm_exit.size)
        if self.tracer.io:
            self.tracer.port("in", vm_exit.port, vm_exit.size, value, self.bus.device_name(vm_exit.port))
        # An IRQ raised by an IN (the IDE's next sector) does not end the run here: a stop inside
        # the hook of an INS lands on the element's own store, and the engine runs the element,
        # IN included, again (a data word lost). It is seen at the next OUT, hlt or event.
        if self.interrupts.clock_read_by_in:
            # A read of the PM timer: the run ends after it, so that the next read sees the
            # instructions run since (InterruptPlatform.reads_clock; an INS of it read again
            # loses nothing).
            self.interrupts.clock_read_by_in = False
            if self._result is None:
                self.mode.end_run_after_io(vm_exit.port, vm_exit.size)
        return value

    def _port_out(self, vm_exit: VmExit) -> int:
        if self._io_denied(vm_exit):
            return 0
        self._port_hook_exit = vm_exit
        if self.tracer.io:
            self.tracer.port("out", vm_exit.port, vm_exit.size, vm_exit.value, self.bus.device_name(vm_exit.port))
        try:
            self.bus.write(vm_exit.port, vm_exit.size, vm_exit.value)
        finally:
            self._port_hook_exit = None
        if self.interrupts.reprogrammed and self._result is None:
            # A PIT/PIC write may move the next event or raise INTR (an unmask, an EOI with
            # another request waiting), and a device may have raised its IRQ (the IDE on a
            # command or a sector written; or on an earlier IN): end the run after this OUT so
            # the next one is bounded anew and the interrupt window comes at once.
            self.interrupts.reprogrammed = False
            self.mode.end_run_after_io(vm_exit.port, vm_exit.size)
        return 0

    def _exception(self, vm_exit: VmExit) -> int:
        if vm_exit.software:
            self._deliver(vm_exit.vector, return_eip=vm_exit.eip, fault_eip=vm_exit.fault_eip, software=True)
        else:
            self._deliver(vm_exit.vector, return_eip=vm_exit.eip, error_code=vm_exit.error_code)
        return 0

    def _callout(self, vm_exit: VmExit) -> int:
        """Emulate a sensitive instruction handed over by translated code."""
        instruction = vm_exit.instruction
        try:
            outcome = self.emulator.emulate(instruction)
        except GuestFault as fault:
            self._deliver(fault.vector, return_eip=vm_exit.eip, error_code=fault.error_code)
            return 0
        except UnsupportedGuestFeature as error:
            self.request_stop(StopReason.UNSUPPORTED, str(error))
            return 0
        if outcome.kind is OutcomeKind.HALT:
            return self._hlt(vm_exit)
        if outcome.kind is OutcomeKind.INTERRUPT:
            self._deliver(outcome.vector, return_eip=instruction.end, fault_eip=vm_exit.eip, software=True)
        return 0

    def _deliver(self, vector: int, **how) -> None:
        if self.tracer.int:
            self.tracer.interrupt(vector, how["return_eip"], how.get("error_code"), how.get("software", False))
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

    def _debug(self, vm_exit: VmExit) -> int:
        """Stopped for the debugger: serve gdb until it resumes the guest."""
        from vmm.gdbstub import SIGINT, SIGTRAP
        with self._waiting_on_host():
            self.gdb.stopped(SIGINT if self.debugger.interrupted else SIGTRAP)
        return 0

    def _hlt(self, vm_exit: VmExit) -> int:
        """Idle until an interrupt: virtual time jumps to the next timer event. With IF clear,
        or nothing that could ever raise INTR, the CPU stays halted and the run ends."""
        resume = (vm_exit.eip + 1) & 0xFFFFFFFF
        self.cpu.set_reg("eip", resume)
        if self.interrupts.nmi_ready:
            return 0                          # an NMI wakes the CPU whatever IF says
        if self.cpu.reg("eflags") & IF and self.interrupts.in_use:
            while True:
                # Skip to the next event; while another device's timer (the RTC's) is armed,
                # events of a masked source (the PIT's) are skipped on until one interrupts.
                for _ in range(self.IDLE_SKIPS):
                    self.interrupts.poll_input()
                    next_event = self.interrupts.cycles_to_next_event()
                    if self.interrupts.pending() or next_event is None:
                        break
                    self.clock.skip_to(self.clock.cycles + next_event)
                    if not self.interrupts.other_timer_armed():
                        break
                if self.interrupts.pending():
                    return 0                  # the interrupt window after this exit takes it
                if not self.interrupts.wait_for_input(lambda: self.limits.stop_due):
                    break
                if self.interrupts.pending():
                    return 0                  # typed input raised a UART's IRQ
                # typed input set a deadline (a UART's character timeout): idle on to it
            if self.limits.stop_due:
                return 0                      # the run loop dispatches the watchdog's stop
            state = "enabled, nothing unmasked will interrupt"
        else:
            state = "enabled, no interrupt source" if self.cpu.reg("eflags") & IF else "disabled"
        self.request_stop(StopReason.HALTED, f"guest halted at eip {vm_exit.eip:#010x} (interrupts {state})")
        return 0

    def _event(self, vm_exit: VmExit) -> int:
        if self.limits.remaining_instructions() == 0:
            return self._instruction_limit(vm_exit)
        return 0                              # the interrupt window after this exit looks at INTR

    def _instruction_limit(self, vm_exit: VmExit) -> int:
        self.request_stop(StopReason.INSTRUCTION_LIMIT,
                          f"instruction limit reached ({self.limits.max_instructions} instructions) "
                          f"at eip {vm_exit.eip:#010x}")
        return 0

    def _time_limit(self, vm_exit: VmExit) -> int:
        self.request_stop(StopReason.TIME_LIMIT,
                          f"time limit reached ({self.limits.timeout:g} s) at eip {vm_exit.eip:#010x}")
        return 0

    def _interrupt(self, vm_exit: VmExit) -> int:
        self.request_stop(StopReason.INTERRUPTED, f"interrupted by the user (Ctrl-C) at eip {vm_exit.eip:#010x}")
        return 0

    def _memory_fault(self, vm_exit: VmExit) -> int:
        self.request_stop(StopReason.MEMORY_FAULT,
                          f"guest memory fault at eip {vm_exit.eip:#010x}: {vm_exit.detail}")
        return 0
