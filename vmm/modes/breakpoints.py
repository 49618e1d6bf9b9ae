"""The guest's hardware breakpoints (DR7: vmm/debug_registers.py) on the engine: memory hooks on its data breakpoints (DataWatch, every mode), and where its code runs untranslated (direct, trap, vt) code hooks at its instruction breakpoints (EngineBreakpoints), #DB delivered as QEMU 7.2 delivers it."""

from __future__ import annotations

from typing import Callable, Optional

from vmm.errors import MonitorBug, UnsupportedGuestFeature
from vmm.exits import ExitReason, VmExit
from vmm.memory import PageFault, UnbackedAccess, linear_to_physical
from vmm.x86 import DB, PAGE_SIZE, RF

# A data access reported by the engine starts in the hooked range: it may start this far below
# a breakpoint and still reach into it (16: the widest SSE access).
_WIDEST_ACCESS = 16


class DataWatch:
    """Memory hooks on the guest's enabled data breakpoints, and the breakpoints the instruction
    running hit (`hits`, B0-B3); on_hit() is called at each hit, inside the access.

    Unicorn 2.1.1 gives a memory hook the PHYSICAL address of the access once its MMU pages
    (measured; always under bt, whose engine runs on the monitor's tables), so each
    breakpoint's linear range is hooked where the guest's tables map it now (`physical(linear)`
    -> the address, None where nothing is mapped), looked up again at each `refresh` (before
    each engine run). Not modelled: an access through another linear address of the same frame
    hits too, where QEMU's watchpoints are linear; a mapping changed inside a run counts from the
    next run. Hooks exist only while a data breakpoint is enabled and mapped: with one, every
    load and store of code the engine translates takes the slow path, and a hook only sees code
    translated after it came, so `retranslate()` drops the engine's translations of guest code
    when the first comes and the last goes."""

    def __init__(self, engine, physical: Callable[[int], Optional[int]], retranslate: Callable[[], None],
                 on_hit: Callable[[], None] = lambda: None) -> None:
        self.engine, self.physical, self.retranslate, self.on_hit = engine, physical, retranslate, on_hit
        self.debug = None
        self._places: tuple = ()          # (index, writes only, physical start, length) of each piece
        self._hooks: list = []
        self.hits = 0

    def use(self, debug) -> None:
        """The CPU view's debug registers (vmm/debug_registers.py)."""
        self.debug = debug

    @property
    def armed(self) -> bool:
        """Whether a data breakpoint is enabled (mapped or not)."""
        return self.debug is not None and bool(self.debug.data_breakpoints)

    def refresh(self) -> None:
        """Hook the data breakpoints DR7 enables where their linear ranges map now."""
        places = self._where() if self.armed else ()
        if places == self._places:
            return
        had_hooks = bool(self._hooks)
        for hook in self._hooks:
            self.engine.remove_hook(hook)
        self._places = places
        self._hooks = [self.engine.on_memory_access(max(0, start - _WIDEST_ACCESS + 1), start + length - 1,
                                                    self._access, reads=not writes_only)
                       for _index, writes_only, start, length in places]
        if had_hooks != bool(self._hooks):
            self.retranslate()

    def _where(self) -> tuple:
        places = []
        for breakpoint in self.debug.data_breakpoints:
            linear, end = breakpoint.address, breakpoint.address + breakpoint.length
            while linear < end:              # (a range may cross a page)
                length = min(end, (linear | (PAGE_SIZE - 1)) + 1) - linear
                physical = self.physical(linear & 0xFFFFFFFF)
                if physical is not None:
                    places.append((breakpoint.index, breakpoint.writes_only, physical, length))
                linear += length
        return tuple(places)

    def _access(self, address: int, size: int, write: bool) -> None:
        hits = 0
        for index, writes_only, start, length in self._places:
            if (write or not writes_only) and address < start + length and start < address + size:
                hits |= 1 << index
        if hits:
            self.hits |= hits
            self.on_hit()

    def take_hits(self) -> int:
        hits, self.hits = self.hits, 0
        return hits


def spend_resume_flag(cpu) -> None:
    """An instruction completed: EFLAGS.RF, which lets one instruction pass its breakpoint, is
    clear in the EFLAGS a #DB trap after it saves (QEMU clears it after the instruction where a
    breakpoint is near; the engine only at the end of its block)."""
    eflags = cpu.reg("eflags")
    if eflags & RF:
        cpu.set_reg("eflags", eflags & ~RF)


def guest_physical(memory, cpu: Callable[[], object]) -> Callable[[int], Optional[int]]:
    """physical(linear) through the guest's page tables as the CPU view `cpu()` has them (CR0,
    CR3, CR4), quietly (no accessed bits, no CR2); None where they map nothing."""
    def physical(linear: int) -> Optional[int]:
        view = cpu()
        try:
            return linear_to_physical(memory, view.reg("cr0"), view.reg("cr3"), linear, False, cr4=view.reg("cr4"))
        except (PageFault, UnbackedAccess, UnsupportedGuestFeature):
            return None
    return physical


class EngineBreakpoints:
    """Arms what the guest's DR7 enables on the engine, only while it is enabled (no hook, no
    cost otherwise):

    - an instruction breakpoint is a code hook at its linear address: before the instruction
      runs the hook stops the run with #DB at it (a fault), DR6's B0-B3 saying which; with
      EFLAGS.RF set (a #DB handler's iret sets it) the instruction runs instead, and RF is spent
      (QEMU resets RF after one instruction where a breakpoint is near; the engine keeps it to
      the end of its block). The instruction after mov ss / pop ss is no exception: QEMU takes
      the #DB there too;
    - a data breakpoint is a memory hook where its range maps (DataWatch): the instruction
      completes, and the run, counted while one is armed (the engine's count hook, which stops
      it exactly), ends in front of the next one with #DB (a trap, EIP at the next
      instruction). Accesses the monitor makes for the guest (emulated instructions, exception
      frames) are not watched.

    Changes to what is armed are applied when the next engine run starts (the translations of
    those addresses are dropped, so that the hooks reach code translated earlier); a change made
    inside a run (trap emulates mov drN in its interrupt hook) ends the run after the
    instruction."""

    def __init__(self, mode) -> None:
        self.mode = mode
        self.engine = mode.engine
        self.debug = None
        self._code_hooks: dict[int, object] = {}
        self.data = DataWatch(self.engine, guest_physical(mode.memory, lambda: mode.cpu), self._drop_translations,
                              self._data_hit)
        self._changed = False
        self.in_run = False               # an engine run is going on
        self._resumed_at: Optional[int] = None    # the breakpoint EFLAGS.RF let pass last
        self.hit_at: Optional[int] = None         # EIP of the instruction whose access hit last
        self._completing = False                  # complete_hit_instruction's run: no stop

    def use(self, debug) -> None:
        """The CPU view's debug registers (a mode may replace its view while attaching)."""
        self.debug = debug
        self.data.use(debug)
        debug.listeners.append(self._armed_changed)

    @property
    def counted(self) -> bool:
        """Whether every run must be counted: a data breakpoint is armed (its #DB comes in front
        of the next instruction through the engine's count)."""
        return self.data.armed

    def _armed_changed(self) -> None:
        self._changed = True
        if self.in_run:
            self.mode.end_run_after_instruction()

    def arm(self) -> None:
        """Before an engine run: install the hooks for what DR7 enables now, the data
        breakpoints' where their ranges map now."""
        self.data.refresh()
        if not self._changed:
            return
        self._changed = False
        engine, wanted = self.engine, self.debug.instruction_breakpoints
        changed = wanted ^ set(self._code_hooks)
        if not changed:
            return
        for hook in self._code_hooks.values():
            engine.remove_hook(hook)
        self._code_hooks = {address: engine.on_code(address, self._instruction_breakpoint) for address in wanted}
        self._resumed_at = None
        self._retranslate(changed)

    def _retranslate(self, addresses) -> None:
        """What the engine translated at these linear addresses goes (a hook only reaches code
        translated after it came): by the frames they map to now, whatever else maps them; where
        one maps nothing, all guest code goes."""
        for linear in addresses:
            physical = self.data.physical(linear)
            if physical is None:
                self._drop_translations()
                return
            self._drop_translations(physical, 1)

    def _drop_translations(self, address: Optional[int] = None, size: int = 0) -> None:
        """Drop what the engine translated from guest RAM [address, address + size) (all of it by
        default), by host frame. Not Unicorn's flush, which took 2.3 s the first time in a
        direct machine (70 ms under vt; later ones 10-40 ms): this takes well under 1 ms."""
        memory = self.mode.memory
        if address is None:
            address, size = memory.ram.base, memory.ram.end - memory.ram.base
        for host, length in memory.host_ranges(address, size):
            self.engine.invalidate_host_code(host, length)

    def _instruction_breakpoint(self, address: int) -> None:
        mode, engine = self.mode, self.engine
        if mode.io_denied or address not in self.debug.instruction_breakpoints:
            return
        eflags = engine.reg("eflags")
        if eflags & RF:                   # resumed over this breakpoint: it runs once
            engine.set_reg("eflags", eflags & ~RF)
            self._resumed_at = address
            return
        self._resumed_at = None
        eip = (address - mode.cpu.segment_base("cs")) & 0xFFFFFFFF
        self.debug.instruction_breakpoint(eip)
        mode.record_exit(VmExit(ExitReason.EXCEPTION, eip=eip, vector=DB, error_code=0), eip)

    def instruction_faulted(self, eip: int) -> None:
        """The instruction at `eip` raised an exception: if it is the one RF let pass its
        breakpoint, it did not complete, so RF is set again (it runs again after a hidden page
        fault, and a fault's saved EFLAGS has it, as QEMU's, which clears RF only after the
        instruction)."""
        if self._resumed_at is not None and (eip + self.mode.cpu.segment_base("cs")) & 0xFFFFFFFF == self._resumed_at:
            self.engine.set_reg("eflags", self.engine.reg("eflags") | RF)

    def _data_hit(self) -> None:
        if self.mode.io_denied:
            self.data.hits = 0
        elif not self._completing:
            self.hit_at = self.engine.reg("eip")       # (inside the access: the accessing instruction)
            self.mode.end_run_after_instruction(watchpoint=True)

    def complete_hit_instruction(self, run: Callable[[int], None]) -> bool:
        """After a run ended for a data breakpoint hit: if the engine is still at the instruction
        that hit, it did not complete. That is a store into the engine block running it: Unicorn
        abandons the block and runs the store again, which the count, cut inside the access, no
        longer lets run, so each run would stop there again (and the endless new blocks end in
        a segfault). `run(count)` runs from there, its hits kept but not stopping it: one
        instruction, or, if the store abandoned its block again (the block now starts at it),
        two, the abandoned attempt counting as one. True: it ran."""
        hit_at, self.hit_at = self.hit_at, None
        if hit_at is None or self.engine.reg("eip") != hit_at:
            return False
        self._completing = True
        try:
            for count in (1, 2):
                run(count)
                if self.engine.reg("eip") != hit_at:
                    return True
        finally:
            self._completing = False
        raise MonitorBug(f"the store at {hit_at:#x} that hit a data breakpoint does not complete")

    def take_hits(self) -> int:
        return self.data.take_hits()

    def watchpoint_exit(self, eip: int) -> Optional[VmExit]:
        """The run ended after an instruction that hit data breakpoints: #DB at `eip`, the next."""
        hits = self.take_hits()
        if not hits:
            return None
        self.debug.data_breakpoint(hits, eip)
        spend_resume_flag(self.mode.cpu)
        return VmExit(ExitReason.EXCEPTION, eip=eip, vector=DB, error_code=0)
