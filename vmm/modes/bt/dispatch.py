"""The hub of binary translation, in the DynamoRIO style: run translated code until it returns to
the monitor, find out why (one recorded PendingStop, or the engine's own stop cause), handle the
cache exit (exit sites, faults through CacheFaults) and go on, or leave with a VmExit. Also where
translated code is (TranslatedCode: the cache's blocks and the one-shot slot)."""

from __future__ import annotations

import enum
import struct
from typing import Callable, Optional

from capstone.x86_const import X86_INS_STI, X86_OP_MEM

from translator.classify import Procedure
from translator.decoder import MAX_INSTRUCTION_LENGTH
from translator.emitter import FLAGS_IN_AX, FPU_POINTER_STORES, ExitKind, Translation
from translator.layout import SCRATCH_IO_SITE
from translator.x86decode import GPR32
from vmm.engine import StopCause
from vmm.errors import MonitorBug
from vmm.exits import ExitReason, VmExit
from vmm.guest_view import GuestView
from vmm.memory import PageFault, UnbackedAccess
from vmm.modes import PendingStop
from vmm.modes.breakpoints import spend_resume_flag
from vmm.modes.bt.stops import CacheExit, CacheExitKind, Exit, Outcome, Resume, RunOneShot
from vmm.monitor_layout import ARENA_SLOT_SIZE, MONITOR_LINEAR
from vmm.x86 import AF, CF, DB, GP, IF, NM, OF, PF, PF_VEC, RF, SF, TF, UD, ZF, nm_is_ud

ONE_SHOT_SLOT = 0                        # reserved: single instructions run outside the cache


def _string_io_size(instruction) -> int:
    """The bytes each element of a string I/O instruction moves (insb/insw/insd, outs*)."""
    return next(operand.size for operand in instruction.insn.operands if operand.type == X86_OP_MEM)


class StopKind(enum.Enum):
    """Why a run of the engine ended, as a hook recorded it."""
    EMULATED = "emulated"                 # a callout or fault was serviced in the hook: the virtual
                                          # CPU is past it; the run loop's window comes next
    FAULT_OUTCOME = "fault outcome"       # a page fault classified in the hook, to be acted on
                                          # between runs (data: its Outcome, e.g. a one-shot)
    CACHE_EXIT = "cache_exit"             # an exit site or an exception of translated code (data: CacheExit)
    DENIED_IO = "denied_io"               # I/O the TSS bitmap refuses (data: the registers the hook saw)
    END_RUN = "end_run"                   # a device asked the run to end right after an OUT
    START_COUNTING = "start_counting"     # the guest began to use time: blocks count from the next run


class TranslatedCode:
    """Where translated code is: the cache's blocks, and the one-shot slot where a single guest
    instruction runs alone. Maps a host address back to the guest instruction and the registers
    translated code parked there."""

    def __init__(self, cache, decoder, emitter, engine) -> None:
        self.cache = cache
        self.decoder = decoder
        self.emitter = emitter
        self.engine = engine
        self.one_shot: Optional[Translation] = None
        self.one_shot_guest = None
        self.one_shot_host = cache.arena.address(ONE_SHOT_SLOT)
        self.one_shot_sites: dict[int, int] = {}      # host address of a one-shot exit -> exit index

    def prepare_one_shot(self, guest_eip: int, segment_bases, code_base: int) -> int:
        """Translate one guest instruction into the one-shot slot (no budget prologue); its host."""
        guest = self.decoder.decode_block(guest_eip, limit=1, base=code_base)
        translation = self.emitter.translate(guest, budget=False, chainable=False, segment_bases=segment_bases,
                                             code_base=code_base)
        host = self.cache.arena.address(ONE_SHOT_SLOT)
        self.cache.arena.write(host, bytes(translation.code))
        self.engine.invalidate_code(host, host + ARENA_SLOT_SIZE)
        self.one_shot, self.one_shot_host, self.one_shot_guest = translation, host, guest
        self.one_shot_sites = {host + site.offset: index for index, site in enumerate(translation.exits)}
        return host

    def in_one_shot(self, host_eip: int) -> bool:
        """Whether a host address is inside the one-shot translation now in its slot."""
        return self.one_shot is not None and self.one_shot_host <= host_eip < self.one_shot_host + ARENA_SLOT_SIZE

    def site_at(self, address: int) -> Optional[CacheExit]:
        """The exit site whose int3 is at a host address, as a cache exit (None: no site)."""
        found = self.cache.site_at(address)
        if found is not None:
            block, index = found
            return CacheExit(CacheExitKind.SITE, address, block, index, block.translation.exits[index])
        if address in self.one_shot_sites:
            index = self.one_shot_sites[address]
            return CacheExit(CacheExitKind.SITE, address, None, index, self.one_shot.exits[index])
        return None

    def locate(self, host_eip: int) -> tuple[Optional[int], tuple]:
        """Guest EIP and registers to restore for a stop at a host address inside translated code."""
        block = self.cache.block_at(host_eip)
        translation = block.translation if block is not None else None
        base = block.host if block is not None else None
        if block is None and self.in_one_shot(host_eip):
            translation, base = self.one_shot, self.one_shot_host
        if translation is None:
            return None, ()
        entry = translation.pc_entry(host_eip - base)
        return (entry.guest_eip, entry.restore) if entry is not None else (None, ())

    def holds(self, host_eip: int, guest_eip: int) -> bool:
        """Whether the translation at host_eip holds guest instruction guest_eip (after a string
        I/O element the engine can stop with a stale EIP elsewhere: then nothing is uncharged)."""
        block = self.cache.block_at(host_eip)
        guest = block.guest if block is not None else None
        if guest is None and self.in_one_shot(host_eip):
            guest = self.one_shot_guest
        return guest is not None and any(i.address == guest_eip for i in guest.instructions)

    def restore(self, registers) -> None:
        """Put back what translated code had parked (the emitter's restore lists): the guest's
        flags from ax, then guest registers from the monitor's registers that hold them."""
        engine = self.engine
        for item in registers:
            if item == FLAGS_IN_AX:           # lahf; seto al: ah = SF ZF AF PF CF, al = OF
                ax = engine.reg("eax")
                flags = engine.reg("eflags") & ~(SF | ZF | AF | PF | CF | OF)
                flags |= (ax >> 8) & (SF | ZF | AF | PF | CF)
                engine.set_reg("eflags", flags | (OF if ax & 0xFF else 0))
                continue
            if item[0] == "rebase":            # ESI/EDI moved by a segment base around a string op
                _kind, register, base = item
                engine.set_reg(GPR32[register], (engine.reg(GPR32[register]) - base) & 0xFFFFFFFF)
                continue
            register, holder = item
            engine.set_reg(GPR32[register], engine.reg(holder + "d"))


class Dispatcher:
    """Runs translated code and handles what brings it back. Hooks record one PendingStop (the
    first wins); each cache exit is handled to an Outcome (Resume | RunOneShot | Exit)."""

    def __init__(self, context, engine, cpu, memory, cache, code: TranslatedCode, decoder, paging, budget, faults,
                 scratch_view, block_for: Callable, deprivileged: Callable[[], bool],
                 enter_deprivileged: Callable[[int], int], count: Callable[[str], None], chaining: bool,
                 data_watch, global_block: Callable[[object], bool]) -> None:
        self.context = context
        self.engine = engine
        self.cpu = cpu
        self.memory = memory
        self.cache = cache
        self.code = code
        self.decoder = decoder
        self.paging = paging
        self.budget = budget
        self.faults = faults
        self.scratch_view = scratch_view
        self.block_for = block_for
        self.deprivileged = deprivileged
        self.enter_deprivileged = enter_deprivileged
        self.count = count
        self.chaining = chaining
        self.data_watch = data_watch          # the guest's data breakpoints (mode.py)
        self.global_block = global_block      # whether the guest maps a block's pages global
        self.debugger = context.debugger
        self.tracer = context.tracer
        self.pending: Optional[PendingStop] = None
        # Carried from one engine run (or one execute) to the next, not why a run ended:
        self._step_trap = False               # a callout ran under TF: #DB on the next execute
        self._step_stop_pending = False       # gdb's single step is one one-shot: stop after it
        self._event_after_one_shot = False    # the shadow of an sti runs alone, then the event
        self.in_engine = False                # translated code runs (the monitor is in one of its hooks)
        self._deferred_removals: list = []    # blocks written while they ran: dropped once the run ends

    # -- what hooks record ------------------------------------------------------------------------
    def running_block(self):
        """The cache block translated code is in while a hook of the engine runs (a device's DMA
        from the hook of an OUT), else None."""
        return self.cache.block_at(self.engine.reg64("rip")) if self.in_engine else None

    def remove_after_run(self, block) -> None:
        """A store from inside a hook hit the block running it: the block stays (its exits and
        the way back to its guest instructions with it) until the engine returns, and the run
        ends right after the I/O instruction (translated I/O ends the engine's block), so that
        the rest of the guest's instructions run from the bytes as they are now."""
        self._deferred_removals.append(block)
        self.record(StopKind.END_RUN)

    def _engine_run(self, begin: int) -> StopCause:
        self.in_engine = True
        try:
            return self.engine.run(begin, self.context.until_address)
        finally:
            self.in_engine = False

    def record(self, kind: StopKind, data=None) -> None:
        """Note why the engine should stop (the first reason of a run wins) and stop it."""
        if self.pending is None:
            self.pending = PendingStop(kind, data)
        self.engine.stop()

    def on_interrupt(self, vector: int) -> None:
        engine = self.engine
        eip = engine.reg64("rip")
        if vector == 3:               # int3: one of the translation's own exits
            site = self.code.site_at(eip - 1)
            if site is not None:
                if site.site.kind is ExitKind.CALLOUT and self._callout_in_hook(site):
                    return
                self.record(StopKind.CACHE_EXIT, site)
                return
        error_code, _software = engine.last_exception_info()
        engine.reset_exception_state()
        if vector == PF_VEC:          # only the monitor's tables exist: a store to a protected page
            stop = CacheExit(CacheExitKind.PAGE_FAULT, eip, vector=vector, error_code=error_code,
                             address=engine.reg64("cr2"))
            if not self._page_fault_in_hook(stop):
                self.record(StopKind.CACHE_EXIT, stop)
        else:
            self.record(StopKind.CACHE_EXIT, CacheExit(CacheExitKind.FAULT, eip, vector=vector,
                                                       error_code=error_code))

    # Procedures whose callouts are serviced inside the interrupt hook, with no return from the
    # engine: they neither read guest time (rdtsc, an MSR: the clock moves only when a run
    # returns) nor wait (hlt). Everything else, and everything under a debugger, a trace of
    # executions, the guest's TF or a data breakpoint, leaves the engine as before.
    IN_HOOK_PROCEDURES = frozenset({
        Procedure.IRET, Procedure.SOFTWARE_INTERRUPT, Procedure.FAST_SYSTEM_CALL, Procedure.FAR_CALL,
        Procedure.FAR_JMP, Procedure.FAR_RET, Procedure.LOAD_SEGMENT_REGISTER, Procedure.LOAD_FAR_POINTER,
        Procedure.WRITE_CONTROL_REGISTER, Procedure.CACHE_CONTROL, Procedure.CPUID, Procedure.POPF,
        Procedure.LOAD_DESCRIPTOR_TABLE, Procedure.LOAD_SYSTEM_SEGMENT, Procedure.WRITE_MSW,
        Procedure.DESCRIPTOR_ACCESS, Procedure.DEBUG_REGISTER, Procedure.DECIMAL_ADJUST, Procedure.BOUND,
        Procedure.ARPL})

    def _hook_may_serve(self, block) -> bool:
        """Whether an exit out of `block` may be serviced inside the engine's hook: nothing that
        watches single instructions or blocks (a debugger, a trace of executions, the guest's TF,
        a data breakpoint) and no stop already asked for in this run."""
        return not (block is None or self.debugger is not None or self.tracer.exec or block.key.single_step
                    or self.data_watch.armed or self.pending is not None or self._step_trap)

    def _callout_in_hook(self, stop: CacheExit) -> bool:
        """Service a callout from inside the engine's interrupt hook, which runs between the
        engine's blocks (the int3 has left its block), and go on in the block after it without
        stopping the engine: the run loop's work for a callout (dispatch, then the interrupt
        window) minus the return from the engine, its restart and the loop itself (the Linux
        boot makes 240,000 of them). False: not one for the hook."""
        site, block = stop.site, stop.block
        if site.instruction.rule.procedure not in self.IN_HOOK_PROCEDURES or not self._hook_may_serve(block):
            return False
        self.count(site.kind.value)
        self.count("callout_in_hook")
        self.code.restore(site.restore)
        self.cpu.eip = site.guest_eip
        self._uncharge_after_callout(stop)
        self._dispatch_in_hook(VmExit(ExitReason.CALLOUT, eip=site.guest_eip, instruction=site.instruction))
        self._go_on_in_hook()
        return True

    def _uncharge_after_callout(self, stop: CacheExit) -> None:
        """A callout out of the middle of its block (inline rdtsc's #GP path, popf changing IOPL
        or TF, an inline form that fell back): the prologue charged what follows it too."""
        site, block = stop.site, stop.block
        if self.budget.enabled and block is not None and site.instruction is not block.guest.instructions[-1]:
            self.budget.uncharge_rest_of_block(stop.host_eip, site.next_eip)

    def _page_fault_in_hook(self, stop: CacheExit) -> bool:
        """A page fault of translated code classified inside the engine's hook: a hidden fault
        of the shadow (filled) or a traced page-table store (carried out) goes on in the same
        block, and a true fault is delivered to the guest's handler, all without stopping the
        engine; anything else (a one-shot with a page lent, a memory fault) stops it with its
        outcome, which the loop acts on as before. False: not one for the hook."""
        if stop.address >= MONITOR_LINEAR or not self._hook_may_serve(self.cache.block_at(stop.host_eip)):
            return False
        outcome = self.faults.page_fault(stop)
        if isinstance(outcome, Resume):
            self.engine.set_reg64("rip", outcome.host)
        elif isinstance(outcome, Exit) and outcome.vm_exit.reason is ExitReason.EXCEPTION:
            self.count("fault_in_hook")
            self._dispatch_in_hook(outcome.vm_exit)
            self._go_on_in_hook()
        else:
            self.record(StopKind.FAULT_OUTCOME, outcome)
        return True

    def _dispatch_in_hook(self, vm_exit: VmExit) -> None:
        """The run loop's dispatch of an exit, from inside the hook."""
        self.context.emulator.interrupt_shadow = False      # guest code ran since the last exit
        # No block is running any more: the exit has left its block, which the monitor's own
        # stores (an exception frame) may invalidate as between two runs (running_block).
        self.in_engine = False
        try:
            self.context.dispatch(vm_exit)
        finally:
            self.in_engine = True

    def _window_would_act(self) -> bool:
        """Whether the run loop's interrupt window would do something now: take an NMI, deliver
        an external interrupt the guest can take (IF set), or arm its watch for the guest
        setting IF. With IF clear and the watch armed, the sti, popf or iret that sets IF
        leaves the cache itself: a stop at every callout of a cli section changes nothing (the
        Linux boot stopped 78,000 times so, for 20,000 interrupts delivered)."""
        context = self.context
        if context.nmi_ready:
            return True
        if not context.intr_raised:
            return False
        return not self.cache.windows_armed or bool(self.cpu.reg("eflags") & IF)

    def _go_on_in_hook(self) -> None:
        """After an exit serviced in the hook: go on at the virtual CPU's EIP, or stop the engine
        (StopKind.EMULATED) when the run loop's window would act (an interrupt to take or to
        watch for), a stop was asked for, the guest set TF, the engine's code buffer wants its
        flush, or the next block cannot be had here (a fetch fault: the next execute takes it)."""
        context = self.context
        if self.pending is None and not (self._window_would_act() or context.stop_requested or context.stop_due
                                         or self.cpu.virtual_flags & TF or self.engine.flush_due()):
            try:
                target = self.block_for(self.cpu.eip)
            except (PageFault, UnbackedAccess):
                target = None
            if target is not None and self.pending is None:
                self.engine.set_reg64("rip", target.host)
                return
        self.pending = PendingStop(StopKind.EMULATED)
        self.engine.stop()

    def deny_io(self) -> None:
        """Note the registers the hook sees (they go back before the #GP) and stop."""
        self.record(StopKind.DENIED_IO, {name: self.engine.reg(name) for name in GPR32})

    def io_site(self) -> int:
        """The guest address of the I/O instruction whose hook is running (the engine's EIP is
        stale there): translated I/O stores it in the scratch page just before it runs."""
        return struct.unpack_from("<I", self.scratch_view, SCRATCH_IO_SITE)[0]

    # -- the loop ---------------------------------------------------------------------------------
    def execute(self) -> VmExit:
        try:
            return self.execute_blocks()
        except PageFault as fault:       # the guest cannot fetch the code it goes to
            return self.faults.guest_page_fault(fault)
        except UnbackedAccess as error:  # its page tables send the fetch outside guest RAM
            if error.kind in ("read", "write"):     # a data access under --unassigned stop
                raise
            linear = (self.cpu.code_base + self.cpu.eip) & 0xFFFFFFFF
            return VmExit(ExitReason.MEMORY_FAULT, eip=self.cpu.eip,
                          detail=f"fetch of no memory at {linear:#x} (physical {error.address:#x})")

    def _run_one_shot(self, guest_eip: int) -> int:
        """One guest instruction alone outside the cache (no budget prologue: it counts here)."""
        self.budget.charge_one_shot()
        return self.code.prepare_one_shot(guest_eip, self.cpu.segment_bases, self.cpu.code_base)

    def _sync_guest_eip(self) -> None:
        guest_eip, restore = self.code.locate(self.engine.reg64("rip"))
        if guest_eip is not None:
            self.code.restore(restore)
            self.cpu.eip = guest_eip

    def execute_blocks(self) -> VmExit:
        context = self.context
        self.data_watch.refresh()             # (the guest's mappings may have changed)
        self.data_watch.take_hits()           # (an instruction that faulted completed nothing)
        if self._step_trap:
            self._step_trap = False
            return self._single_step(self.cpu.eip)
        begin: Optional[int] = None
        stepping = False
        debugger = self.debugger
        if debugger is not None:
            if debugger.interrupted or self._step_stop_pending:
                self._step_stop_pending = False
                return VmExit(ExitReason.DEBUG, eip=self.cpu.eip)
            if debugger.stepping or debugger.resume_over == self.cpu.eip:
                # one guest instruction alone, outside the cache (no breakpoint in front of it)
                self._step_stop_pending = debugger.stepping
                debugger.resume_over = None
                begin = self._run_one_shot(self.cpu.eip)
        while True:
            for block in self._deferred_removals:
                self.cache.remove(block, "smc")
            self._deferred_removals.clear()
            if begin is None:
                block = self.block_for(self.cpu.eip)
                begin = block.host
                stepping = block.key.single_step and bool(self.cpu.virtual_flags & TF)
            if self.tracer.exec:
                self.tracer.executed(self.cpu.eip, begin)
            self.pending = None
            if not self.deprivileged():
                begin = self.enter_deprivileged(begin)
                cause = self._engine_run(begin)
            elif context.stop_due or (debugger is not None and debugger.interrupted):
                # A stop from another thread (watchdog, gdb) that landed between two runs is
                # taken here, as if it had landed on the first instruction: a guest that keeps
                # leaving the engine for cache exits (faults, misses) never reaches the run loop.
                self.engine.set_reg("eip", begin)
                cause = StopCause.RETURNED
            else:
                cause = self._engine_run(begin)
            begin = None
            pending, self.pending = self.pending, None
            if pending is not None and pending.kind is StopKind.DENIED_IO:
                return self._denied_io_exit(pending.data)
            if pending is not None and pending.kind is StopKind.EMULATED:
                return VmExit(ExitReason.EVENT, eip=self.cpu.eip)
            fault_outcome = pending.data if pending is not None and pending.kind is StopKind.FAULT_OUTCOME else None
            if fault_outcome is None:             # (else: the loan or one-shot set up in the hook stands)
                self.faults.after_run()
            stop = pending.data if pending is not None and pending.kind is StopKind.CACHE_EXIT else None
            if cause is StopCause.TLB_REFUSED:      # nested paging: as a page fault would
                stop = self.faults.refused_access()
            if cause is StopCause.MEMORY_FAULT:
                self._sync_guest_eip()
                return VmExit(ExitReason.MEMORY_FAULT, eip=self.cpu.eip, detail=self.engine.memory_fault.message)
            if fault_outcome is not None or (stop is not None and stop.kind is CacheExitKind.PAGE_FAULT):
                outcome = fault_outcome or self.faults.page_fault(stop)
                if isinstance(outcome, RunOneShot):
                    begin, stepping = self._run_one_shot(outcome.eip), False
                    continue
                if isinstance(outcome, Resume):  # e.g. a hidden fault: the shadow entry is in place
                    begin = outcome.host
                    continue
                return outcome.vm_exit
            if stop is None:
                host_eip = self.engine.reg64("rip")
                self._sync_guest_eip()
                if self.budget.enabled:
                    self.budget.uncharge_rest_of_block(host_eip, self.cpu.eip)
                if pending is not None:          # END_RUN or START_COUNTING
                    return VmExit(ExitReason.EVENT, eip=self.cpu.eip)
                if debugger is not None and debugger.interrupted:
                    return VmExit(ExitReason.DEBUG, eip=self.cpu.eip)
                if context.stop_requested:
                    return VmExit(ExitReason.STOP_REQUEST, eip=self.cpu.eip)
                if context.stop_due:
                    return context.watchdog_exit(self.cpu.eip)
                raise MonitorBug(f"translated code returned at {self.engine.reg64('rip'):#x} for no reason")
            if stop.kind is CacheExitKind.FAULT:
                self.count("guest_exception")
                guest_eip = self.faults.to_guest_instruction(stop)
                vector = stop.vector
                if vector == NM and nm_is_ud(self.decoder.decode_one(guest_eip, self.cpu.code_base),
                                             self.cpu.control[4]):
                    vector = UD
                return VmExit(ExitReason.EXCEPTION, eip=guest_eip, vector=vector, error_code=stop.error_code)
            if context.stop_requested:
                self._sync_guest_eip()
                return VmExit(ExitReason.STOP_REQUEST, eip=self.cpu.eip)
            if stop.site.kind is ExitKind.IO_PERMISSION:   # inside an instruction: no step ends here
                outcome = self._io_permission_exit(stop)
                if isinstance(outcome, Exit):
                    return outcome.vm_exit
                begin = outcome.host
                continue
            event_after, self._event_after_one_shot = self._event_after_one_shot, False
            outcome = self._site_exit(stop, stepping, event_after)
            if isinstance(outcome, Exit):
                return outcome.vm_exit
            # (stepping stays that of the block the site left, a one-shot after sti included)
            begin = self._run_one_shot(outcome.eip) if isinstance(outcome, RunOneShot) else outcome.host
            if self._step_stop_pending:        # the single step is done
                self._step_stop_pending = False
                return VmExit(ExitReason.DEBUG, eip=self.cpu.eip)
            if context.stop_due:
                return context.watchdog_exit(self.cpu.eip)

    # -- exit sites -------------------------------------------------------------------------------
    def _site_exit(self, stop: CacheExit, stepping: bool, event_after: bool = False) -> Outcome:
        """Handle an exit from translated code through one of its sites. event_after: the one
        instruction run after an sti (its shadow) is done: the interrupt window comes now."""
        site = stop.site
        self.count(site.kind.value)
        if site.kind is not ExitKind.MISS:     # a miss reads the target from eax first
            self.code.restore(site.restore)
        if site.kind is ExitKind.INTERRUPT_WINDOW:
            return self._window_exit(stop)
        if site.kind in (ExitKind.BRANCH, ExitKind.PREDICTED):
            self.cpu.eip = site.guest_eip
            if stepping:
                return Exit(self._single_step(self.cpu.eip))
            if self.data_watch.hits:
                return Exit(self._watchpoint(self.cpu.eip))
            if event_after:
                return Exit(VmExit(ExitReason.EVENT, eip=self.cpu.eip))
            target = self.block_for(site.guest_eip)
            if self._may_chain(stop.block):
                source = stop.block
                self.cache.link(source, stop.site_index, target,
                                global_target=self.cache.crosses_pages(source, target) and self.global_block(target))
            return Resume(target.host)
        if site.kind is ExitKind.MISS:
            target_eip = self.engine.reg(site.target)
            self.code.restore(site.restore)
            self.cpu.eip = target_eip
            if stepping:
                return Exit(self._single_step(self.cpu.eip))
            if self.data_watch.hits:
                return Exit(self._watchpoint(self.cpu.eip))
            if event_after:
                return Exit(VmExit(ExitReason.EVENT, eip=self.cpu.eip))
            target = self.block_for(target_eip)
            self.cache.install_lookup(target)
            if self._may_chain(stop.block):
                self.cache.predict(stop.block, site, target_eip)
            return Resume(target.host)
        self.cpu.eip = site.guest_eip
        if site.kind is ExitKind.CALLOUT:
            self._uncharge_after_callout(stop)
            self._step_trap = stepping
            return Exit(VmExit(ExitReason.CALLOUT, eip=site.guest_eip, instruction=site.instruction))
        if site.kind is ExitKind.UNDECODABLE:
            return Exit(self._undecodable(site.guest_eip))
        if site.kind is ExitKind.NO_MEMORY:
            if self.paging.on:
                return self.faults.fetch_fault(stop, site.guest_eip)
            linear = (self.cpu.code_base + site.guest_eip) & 0xFFFFFFFF
            return Exit(VmExit(ExitReason.MEMORY_FAULT, eip=site.guest_eip,
                               detail=f"fetch of no memory at {linear:#x}"))
        if site.kind is ExitKind.BREAKPOINT:
            return self._breakpoint_exit(site.guest_eip)
        if site.kind is ExitKind.BUDGET:
            outcome = self.budget.block_exit(stop.block)
            return Exit(outcome) if isinstance(outcome, VmExit) else Resume(outcome)
        if site.kind is ExitKind.FPU_POINTER:
            return self._fpu_pointer_exit(stop)
        if site.kind is ExitKind.STALE:     # nothing of the block ran: its new translation instead
            self.cache.remove(stop.block, "smc")
            return Resume(self.block_for(site.guest_eip).host)
        raise MonitorBug(f"unknown exit {site.kind}")

    def _may_chain(self, block) -> bool:
        """Whether a block's exits may lead straight into other blocks: not a one-instruction
        block (the guest's TF, an armed data breakpoint), which comes back after each."""
        return self.chaining and block is not None and block.alive and not block.key.single_step

    # -- #DB: the guest's TF and hardware breakpoints (DR6 as QEMU sets it) ----------------------------
    def _single_step(self, eip: int) -> VmExit:
        """The guest's single-step trap after an instruction (EIP `eip`, the next one)."""
        self.cpu.debug.single_step(eip, self.data_watch.take_hits())
        spend_resume_flag(self.cpu)
        return VmExit(ExitReason.EXCEPTION, eip=eip, vector=DB)

    def _watchpoint(self, eip: int) -> VmExit:
        """The instruction before `eip` hit a guest data breakpoint: #DB after it (a trap)."""
        self.cpu.debug.data_breakpoint(self.data_watch.take_hits(), eip)
        spend_resume_flag(self.cpu)
        return VmExit(ExitReason.EXCEPTION, eip=eip, vector=DB)

    def _breakpoint_exit(self, eip: int) -> Outcome:
        """A block that starts at a breakpoint: gdb's first; the guest's (an instruction
        breakpoint DR7 enables) is #DB in front of the instruction, unless EFLAGS.RF is set (a
        #DB handler resumed over it), which lets it run once, alone, and is spent."""
        debugger = self.debugger
        if debugger is not None and eip in debugger.breakpoints:
            return Exit(VmExit(ExitReason.DEBUG, eip=eip))
        eflags = self.cpu.reg("eflags")
        if eflags & RF:
            self.cpu.set_reg("eflags", eflags & ~RF)
            return RunOneShot(eip)
        self.cpu.debug.instruction_breakpoint(eip)
        return Exit(VmExit(ExitReason.EXCEPTION, eip=eip, vector=DB))

    def _fpu_pointer_exit(self, stop: CacheExit) -> Outcome:
        """After fnstenv/fnsave/fxsave/xsave: the image holds the host address of the last x87
        instruction; the guest gets the address of that instruction in its own code (0 where
        the translation is gone), as the CPU and QEMU store it."""
        site = stop.site
        insn = site.instruction.insn
        # the registers the operand uses are as the instruction found them (it changes none)
        linear = self.context.emulator.operand_address(insn, next(op for op in insn.operands if op.type == X86_OP_MEM))
        at = FPU_POINTER_STORES[insn.id]
        view = GuestView(self.cpu, self.memory, cpu_access=False)
        stored = int.from_bytes(view.read(linear + at, 4), "little")
        guest_eip, _restore = self.code.locate(MONITOR_LINEAR + stored)
        view.write(linear + at, (guest_eip or 0).to_bytes(4, "little"))
        if at == 8:           # fxsave/xsave: the 64-bit image's upper half covers FCS: as 32-bit code leaves it
            view.write(linear + 12, bytes(4))
        self.cpu.eip = site.next_eip
        return Resume(stop.host_eip + 1)

    def _undecodable(self, guest_eip: int) -> VmExit:
        """Bytes that do not decode: #UD, or #GP(0) for an instruction longer than 15 bytes. The
        CPU (and QEMU) fetches that one up to its 16th byte first: a page fault there wins."""
        base = self.cpu.code_base
        if not self.decoder.too_long(guest_eip, base):
            return VmExit(ExitReason.EXCEPTION, eip=guest_eip, vector=UD)
        if self.paging.on:
            try:
                self.paging.code_address((base + guest_eip + MAX_INSTRUCTION_LENGTH) & 0xFFFFFFFF)
            except PageFault as fault:
                return self.faults.guest_page_fault(fault)
        return VmExit(ExitReason.EXCEPTION, eip=guest_eip, vector=GP, error_code=0)

    def _io_permission_exit(self, stop: CacheExit) -> Outcome:
        """String I/O at CPL > IOPL: the TSS bitmap is checked before the instruction runs
        (the engine's INS would store to ES:EDI before its I/O hook could refuse, and a rep
        form with ECX = 0 reaches no hook). Allowed: on to the instruction; else #GP(0)."""
        site = stop.site
        self.count(site.kind.value)
        if self.context.io_permitted(self.engine.reg("edx") & 0xFFFF, _string_io_size(site.instruction)):
            return Resume(stop.host_eip + 1)
        self.cpu.eip = site.guest_eip
        if self.budget.enabled:
            self.budget.uncharge_rest_of_block(stop.host_eip, site.guest_eip)
        return Exit(VmExit(ExitReason.EXCEPTION, eip=site.guest_eip, vector=GP, error_code=0))

    def _window_exit(self, stop: CacheExit) -> Outcome:
        """An armed site after sti or popf: the rest of the block does not run now. After popf
        the interrupt window comes at once; after sti one more instruction runs first (its
        shadow), alone outside the cache."""
        guest_eip = stop.site.guest_eip
        if self.budget.enabled:
            self.budget.uncharge_rest_of_block(stop.host_eip, guest_eip)
        self.cpu.eip = guest_eip
        if stop.site.instruction.insn.id == X86_INS_STI:
            self._event_after_one_shot = True
            return RunOneShot(guest_eip)
        return Exit(VmExit(ExitReason.EVENT, eip=guest_eip))

    def _denied_io_exit(self, registers: dict) -> VmExit:
        guest_eip = self.io_site()
        host_eip = self.engine.reg64("rip")
        if self.budget.enabled and self.code.holds(host_eip, guest_eip):
            self.budget.uncharge_rest_of_block(host_eip, guest_eip)
        for name, value in registers.items():
            self.engine.set_reg(name, value)
        self.cpu.eip = guest_eip
        return VmExit(ExitReason.EXCEPTION, eip=guest_eip, vector=GP, error_code=0)
