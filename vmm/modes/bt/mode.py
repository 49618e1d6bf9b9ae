"""Binary translation, in the VMware style (the mode's facade: attach, execute, counters, dump,
options, wiring its collaborators: vcpu, budget, faults, dispatch, and the guest-paging service
vmm/guest_paging.py): guest code never runs as it
is. The guest's blocks are translated (translator/) into the translation cache (cache/) and run
there, guest ring 0 deprivileged at CPL 1 and guest ring 3 at CPL 3, against a virtual CPU whose
sensitive state lives in the monitor.

Isolation (docs/isolation.md): translated code is 64-bit code that the engine runs in long mode.
Every guest memory access is made with 32-bit addressing and so stays in linear [0, 4 GiB) (or
its 4-8 GiB alias), which is the guest's alone; the monitor's region is mapped far above, at
MONITOR_LINEAR, reached only through r15, and guest pages are never executable.

Deprivileging: the engine runs translated code at CPL 1 with the real IOPL at 1, real
segment registers holding the guest's selectors with RPL 1 over a shadow GDT (guest descriptors
with DPL 0 made DPL 1, accessed bits preset), and the real TF always clear. The guest-visible
values (CS, IOPL, TF, descriptor-table registers, control registers) live in the virtual-CPU
block, which translated code reads and only the monitor writes. The virtual IF is the real
EFLAGS.IF of this deprivileged context: the engine never takes host interrupts, so the bit is
free to carry the guest's, and cli/sti/popf change it natively at IOPL 1 with no exit.
Guest ring 3 runs at CPL 3 with the real IOPL at 0 or 3 (docs/translation.md, "Guest ring 3").
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Optional

from cache.arena import CodeArena
from cache.tcache import BlockKey, TranslatedBlock, TranslationCache
from translator.decoder import BlockEnd, Decoder, GuestBlock
from translator.emitter import INLINE_CACHE_ENTRIES, Emitter, ExitKind, Translation, UnsupportedForm
from translator.layout import REAL_IOPL, MonitorAddresses
from vmm.cpu import GuestCpu
from vmm.emulate import UnsupportedInstruction
from vmm.engine import PROT_EXEC, PROT_READ, PROT_WRITE
from vmm.exits import ExitReason, VmExit
from vmm.modes import ExecutionMode
from vmm.modes.breakpoints import DataWatch, guest_physical
from vmm.modes.bt.budget import InstructionBudget
from vmm.modes.bt.dispatch import ONE_SHOT_SLOT, Dispatcher, StopKind, TranslatedCode
from vmm.modes.bt.faults import CacheFaults
from vmm.modes.bt.vcpu import CODE64_SELECTOR, TranslatedCpu, VcpuBlock, code64_descriptor, code_selector
from vmm.shadow_tables import ShadowTables
from vmm.nested_paging import NestedPaging
from vmm.shadow_paging import ShadowPaging
from vmm.guest_paging import GuestPaging, PagingOff
from vmm.guest_view import GuestView
from vmm.memory import PageFault, UnbackedAccess, mapped_global
from vmm.monitor_layout import (ARENA_OFFSET, ARENA_SIZE, ARENA_SLOT_SIZE, DEFAULT_TCACHE_BLOCKS, MAX_TCACHE_BLOCKS,
                                LOOKUP_OFFSET, LOOKUP_SIZE, MONITOR_LINEAR, PROFILE_OFFSET, PROFILE_SIZE, SCRATCH_OFFSET, SCRATCH_SIZE,
                                SHADOW_GDT_OFFSET, SHADOW_GDT_SIZE, SHADOW_LDT_OFFSET, SHADOW_LDT_SIZE,
                                VCPU_OFFSET, VCPU_PRIVILEGED_OFFSET, VCPU_PRIVILEGED_SIZE, VCPU_SIZE)
from vmm.monitor_paging import LongModeTables
from vmm.x86 import CR4_PGE, IOPL_MASK, PAGE_SIZE, TF


# The monitor-region areas bt uses (offsets, sizes, where the TLB wants them) and the cache's
# capacity: vmm/monitor_layout.py.


# The report's counters, each present on every run (0 when nothing happened): the translation
# cache's (cache/tcache.py; invalidations_CAUSE for each cause bt invalidates for), and the
# exits that stay inside the translator: one per exit-site kind and the faults handled here.
CACHE_COUNTERS = ("lookups", "hits", "misses", "lookup_table_installs", "blocks_translated",
                  "instructions_translated", "bytes_translated", "links_made", "links_broken",
                  "predictions_set", "evictions", "invalidations", "invalidations_smc",
                  "invalidations_breakpoint", "invalidations_counting", "invalidations_self_check",
                  "self_checking_pages", "mapping_changes",
                  "interrupt_windows_armed", "interrupt_windows_disarmed", "events")
CACHE_EXIT_KINDS = tuple(kind.value for kind in ExitKind) + (
    "hidden_page_fault", "true_page_fault", "tracing_fault", "smc_store", "write_lent", "memory_fault",
    "guest_exception", "callout_in_hook", "fault_in_hook")


class BinaryTranslationMode(ExecutionMode):
    name = "bt"
    long_mode = True
    options = frozenset({"profile", "dump_cache"})
    paging_schemes = ("shadow", "nested")
    # sti and popf set IF natively only in front of an armed window site; iret, task switches
    # and every other callout that can set it reach the run loop's window (one serviced in the
    # engine's hook stops the engine while INTR is raised)
    watches_every_if_set = True

    def __init__(self, capacity: int = DEFAULT_TCACHE_BLOCKS, profile: bool = False, paging: str = "shadow") -> None:
        self.capacity = capacity
        self.profile = profile
        self.paging_scheme = paging
        self.exit_counts: dict[str, int] = dict.fromkeys(CACHE_EXIT_KINDS, 0)
        self.translation_seconds = 0.0
        self._counted_run = False       # a run with the budget counting is under way

    # -- set-up --------------------------------------------------------------------------------
    def attach(self, context) -> GuestCpu:
        self.context = context
        self.engine = engine = context.engine
        self.memory = memory = context.memory
        self.monitor_tables = tables = LongModeTables(memory)

        def area(offset: int, size: int, perms: int, user: bool = True) -> int:
            """Map a monitor area (physically, and at MONITOR_LINEAR + offset); its linear address."""
            memory.map_monitor_area(offset, size, perms)
            return tables.map_monitor(offset, size, writable=bool(perms & PROT_WRITE),
                                      executable=bool(perms & PROT_EXEC), user=user)
        self.vcpu_address = area(VCPU_OFFSET, VCPU_SIZE, PROT_READ)
        self.vcpu_privileged_address = area(VCPU_PRIVILEGED_OFFSET, VCPU_PRIVILEGED_SIZE, PROT_READ, user=False)
        self.scratch_address = area(SCRATCH_OFFSET, SCRATCH_SIZE, PROT_READ | PROT_WRITE)
        self.shadow = ShadowTables(engine, memory, SHADOW_GDT_OFFSET, SHADOW_LDT_OFFSET, kernel_ring=1,
                                   read=self._read_linear, linear_base=MONITOR_LINEAR,
                                   monitor_descriptors={CODE64_SELECTOR[ring]: code64_descriptor(ring) for ring in (1, 3)})
        tables.map_monitor(SHADOW_GDT_OFFSET, SHADOW_GDT_SIZE, writable=False, executable=False, user=False)
        tables.map_monitor(SHADOW_LDT_OFFSET, SHADOW_LDT_SIZE, writable=False, executable=False, user=False)
        area(LOOKUP_OFFSET, LOOKUP_SIZE, PROT_READ)
        arena_address = area(ARENA_OFFSET, ARENA_SIZE, PROT_READ | PROT_EXEC)
        area(PROFILE_OFFSET, PROFILE_SIZE, PROT_READ | PROT_WRITE)
        self.real_cr3 = tables.root_address      # the engine's CR3: the identity map, or a shadow
        self.scratch_view = memory.monitor_view(SCRATCH_OFFSET, SCRATCH_SIZE)
        # (the arena's first slot, reserved, is the one-shot slot: ONE_SHOT_SLOT)
        arena = CodeArena(arena_address, memory.monitor_view(ARENA_OFFSET, ARENA_SIZE), ARENA_SLOT_SIZE,
                          reserved=ONE_SHOT_SLOT + 1)
        self.cache = TranslationCache(engine, arena, memory.monitor_view(LOOKUP_OFFSET, LOOKUP_SIZE),
                                      min(self.capacity, MAX_TCACHE_BLOCKS), self._protect_page, MONITOR_LINEAR,
                                      memory.monitor_view(PROFILE_OFFSET, PROFILE_SIZE), PROFILE_OFFSET)
        self.cache.global_block = self._global_block      # lookup entries a CR3 load keeps
        self.decoder = Decoder(lambda linear, size: self._quiet_view.fetch_code(linear, size))
        # The per-block instruction count (the budget prologue) is emitted only while someone
        # needs it: an instruction limit, or a guest that uses time (then from that moment on).
        self.emitter = Emitter(MonitorAddresses(VCPU_OFFSET, SCRATCH_OFFSET, LOOKUP_OFFSET, VCPU_PRIVILEGED_OFFSET))
        self.code = TranslatedCode(self.cache, self.decoder, self.emitter, engine)
        self.budget = InstructionBudget(self.scratch_view, context.limits, context.limits.max_instructions is not None,
                                        self.cache, self.code.in_one_shot,
                                        lambda: self.dispatcher.record(StopKind.START_COUNTING),
                                        lambda: context.input_pending, lambda: context.clock.cycles)
        context.on_first_use(self.budget.start_counting)
        self.vcpu_block = VcpuBlock(memory.monitor_view(VCPU_OFFSET, VCPU_SIZE),
                                    memory.monitor_view(VCPU_PRIVILEGED_OFFSET, VCPU_PRIVILEGED_SIZE))
        self.cpu = TranslatedCpu(self, self.vcpu_block)
        # The guest's hardware breakpoints (DR7): blocks end in front of its instruction
        # breakpoints; data breakpoints are memory hooks where their ranges map.
        self.data_watch = DataWatch(engine, guest_physical(memory, lambda: self.cpu),
                                    lambda: self.cache.flush("breakpoint"))
        self.data_watch.use(self.cpu.debug)
        self._guest_breakpoints: frozenset = frozenset()       # the instruction breakpoints blocks end at
        self._single_instruction_blocks = False                 # (while a data breakpoint is armed)
        self.cpu.debug.listeners.append(self._guest_breakpoints_changed)
        code_frame = self.cache.write_protected      # (a self-checking page is written freely)
        if self.paging_scheme == "nested":
            control = self.cpu.control
            pager = NestedPaging(engine, memory, lambda: (control[0], control[3], control[4]),
                                 lambda: self.cpu.cpl, code_frame,
                                 supervisor_pages=frozenset({(memory.monitor.base + VCPU_PRIVILEGED_OFFSET) >> 12}),
                                 monitor_linear=MONITOR_LINEAR)
        else:
            pager = ShadowPaging.build(memory, tables, self._flush_tlb, code_frame=code_frame)
        # translated code is 64-bit: the faulting instructions the service decodes are too
        self.paging = GuestPaging(pager, self.cpu, engine, memory, address_bits=64)
        # the translator's fetches go through the pager's TLB (stale code runs until the
        # guest's flush, as on QEMU), and reach guest RAM only
        self._quiet_view = GuestView(self.cpu, memory, cpu_access=False, code_address=self.paging.code_address)
        self.tracer = context.tracer
        self.debugger = context.debugger
        if self.debugger is not None:
            self.debugger.on_breakpoints_changed = self._breakpoints_changed
        # Tracing every block execution needs every block transition to pass the monitor.
        self.chaining = not context.tracer.exec
        self.cache.use_lookup_table = self.chaining
        self._deprivileged = False
        self.faults = CacheFaults(self.cache, self.paging, memory, engine, self.cpu, self.budget, self.code.locate,
                                  self.code.restore, self._protect_page, self._block_for, self._count)
        self.dispatcher = Dispatcher(context, engine, self.cpu, memory, self.cache, self.code, self.decoder,
                                     self.paging, self.budget, self.faults, self.scratch_view, self._block_for,
                                     lambda: self._deprivileged, self._enter_deprivileged, self._count, self.chaining,
                                     self.data_watch, self._global_block)
        io_site = self.dispatcher.io_site
        engine.on_port_io(      # (translated I/O notes its guest address in the scratch page)
            lambda port, size: context.dispatch(VmExit(ExitReason.PORT_IN, eip=io_site(), port=port, size=size)),
            lambda port, size, value: context.dispatch(VmExit(ExitReason.PORT_OUT, eip=io_site(), port=port,
                                                              size=size, value=value)))
        engine.on_interrupt(self._on_interrupt)
        memory.write_observers.append(self._monitor_wrote)
        self.rebuild_shadow_gdt()
        self.vcpu_block.virtual_state_changed(self.cpu)
        return self.cpu

    def registers_after_io(self, port: int, size: int) -> dict:
        """Translated I/O instructions end the engine's block (see the emitter), so the engine
        stops right after one whose hook asked to stop: the state it stops in is exact."""
        return {}

    def dump(self) -> dict:
        from cache.dump import dump_cache
        return dump_cache(self.cache)

    def _breakpoints_changed(self, address) -> None:
        if address is None:
            self.cache.flush("breakpoint")
        else:
            self.cache.invalidate_range(address, 1, "breakpoint")

    def _guest_breakpoints_changed(self) -> None:
        """The guest changed what its DR7 arms (a callout, outside the engine). Blocks end in
        front of an enabled instruction breakpoint, and a block starting at one is a breakpoint
        exit: the blocks holding an address that became or ceased to be one go. While a data
        breakpoint is armed every block is one instruction, never chained, so that its #DB
        comes right after the instruction (dispatch.py): when that starts or stops, or the
        memory hooks come or go, everything is translated again (Unicorn's memory hooks only see
        code it translates afterwards: the cache's code is new code to it)."""
        debug = self.cpu.debug
        if self._single_instruction_blocks or self.data_watch.armed:
            self._single_instruction_blocks = self.data_watch.armed
            if self.data_watch.armed:       # self-checks would read guest code as the guest
                self.cache.stop_self_checking()
            else:
                self.cache.self_checking_allowed = True
            self.cache.flush("breakpoint")
            self.data_watch.refresh()
        else:
            for linear in self._guest_breakpoints ^ debug.instruction_breakpoints:
                try:
                    address = self.paging.code_address(linear)
                except (PageFault, UnbackedAccess):      # (where it maps no code of this address space)
                    self.cache.flush("breakpoint")
                    break
                self.cache.invalidate_range(address, 1, "breakpoint")
        self._guest_breakpoints = debug.instruction_breakpoints

    def counters(self) -> dict:
        cache = {name: self.cache.counters[name] for name in sorted(set(CACHE_COUNTERS) | set(self.cache.counters))}
        cache["blocks_cached"] = len(self.cache)
        cache["translation_seconds"] = round(self.translation_seconds, 6)
        # (the engine's own translations of the cache's code, dropped whole when half its buffer
        # is full: every one is made again as it runs)
        cache["engine_code_buffer_flushes"] = self.engine.buffer_flushes
        return {"translation_cache": cache, "cache_exits": dict(sorted(self.exit_counts.items())),
                "shadow_paging": self.paging.counters_report()}

    def _count(self, kind: str) -> None:
        self.exit_counts[kind] = self.exit_counts.get(kind, 0) + 1

    # -- shadow descriptors (the virtual-CPU block: vcpu.py) ----------------------------------------------
    def segment_bases_changed(self) -> None:
        """A CS, DS, ES or SS base changed: translations are keyed by the bases, but the lookup
        table is not (it holds one translation per guest EIP)."""
        self.cache.clear_lookup_table()

    def rebuild_shadow_gdt(self) -> None:
        base, limit = self.cpu.tables["gdtr"]
        self.shadow.load_gdt(base, limit)

    def refresh_shadow(self, selector: int, raw: bytes) -> None:
        self.shadow.refresh(selector, raw)

    def load_shadow_ldt(self, selector: int, raw: Optional[bytes]) -> None:
        self.shadow.load_ldt(selector, raw)

    def _enter_deprivileged(self, host_target: int) -> int:
        """Once, before the first translated block: the engine leaves the boot state (32-bit,
        CPL 0, paging off) for long mode on the monitor's tables, at CPL 1 on the monitor's
        64-bit code segment, with r15 pointing at the monitor's region."""
        cpu, engine = self.cpu, self.engine
        engine.enter_long_mode(self.real_cr3)
        for name in ("ds", "es", "fs", "gs"):
            selector = cpu.selectors[name]
            engine.set_reg(name, (selector & ~3) | 1 if selector & 0xFFFC else 0)
        engine.set_privilege(1, (cpu.selectors["ss"] & ~3) | 1, code_selector(0))
        engine.set_reg("eflags", (engine.reg("eflags") & ~(IOPL_MASK | TF)) | REAL_IOPL)
        engine.set_reg64("r15", MONITOR_LINEAR)
        self._deprivileged = True
        return host_target

    # -- guest paging (the service: vmm/guest_paging.py) -------------------------------------------
    def control_register_written(self, number: int, old: int) -> None:
        """The guest wrote CR0, CR3 or CR4 (the virtual CPU holds the new value). On a TLB flush
        the engine moves to the shadow of the guest's address space (or back to the identity map
        when paging goes off), and translations into other pages are unlinked."""
        change = self.paging.control_register_written(number, old)
        if change is None:
            return
        if isinstance(change, PagingOff):
            self.real_cr3 = self.monitor_tables.root_address
        elif change.directory is not None:      # (nested paging: no tables to switch)
            self.real_cr3 = change.directory
        # The engine moves first: the shadow it was on may be gone (a CR0.WP change rebuilds
        # the address space's shadow), and unlinking invalidates the engine's translations
        # through its current tables: a lookup that faults there left Unicorn's exception
        # state set, and the guest's next fault became a double fault.
        self._flush_tlb()
        self.cache.mapping_changed(keep_global=number == 3)

    def _global_block(self, block: TranslatedBlock) -> bool:
        """Whether the guest's tables map every page of the block global (CR4.PGE): links into
        it survive CR3 loads, as the CPU's global TLB entries do. A guest that changes a global
        mapping must invlpg it or toggle CR4.PGE (QEMU flushes globals at a CR3 load too: a guest
        relying on that runs the old code here through such a link)."""
        control = self.cpu.control
        if not self.paging.on or not control[4] & CR4_PGE:
            return False
        try:
            return all(mapped_global(self.memory, control[3], control[4], page * PAGE_SIZE)
                       for page in block.linear_pages)
        except UnbackedAccess:
            return False

    def invalidate_page(self, linear: int) -> None:
        """invlpg."""
        large = self.paging.invalidate_page(linear)
        if large is not None:
            self.cache.mapping_changed(None if large else linear // PAGE_SIZE)

    def _ranges(self, guest: GuestBlock) -> Optional[tuple[tuple[int, int], ...]]:
        """The guest-physical ranges of a block just decoded (its pages are in the shadow now);
        None with paging off: its bytes are at their linear addresses (the cache's default)."""
        if not self.paging.on:
            return None
        ranges, linear = [], guest.linear
        end = linear + max(guest.guest_size, 1)
        while linear < end:
            length = min(end - linear, PAGE_SIZE - linear % PAGE_SIZE)
            start = self.paging.code_address(linear)
            ranges.append((start, start + length))
            linear += length
        return tuple(ranges)

    def _read_linear(self, address: int, size: int) -> bytes:
        """The guest's linear memory as the monitor reads it for itself (no bits set)."""
        return self._quiet_view.read(address, size)

    # -- translation ---------------------------------------------------------------------------
    def _key(self, eip: int) -> BlockKey:
        """What the block at `eip` is translated for. A code segment with a base (rare) puts
        the code at linear cs_base + eip and is part of the key, as in QEMU's TB key."""
        cs_base = self.cpu.code_base
        linear = (cs_base + eip) & 0xFFFFFFFF
        physical = self.paging.code_address(linear) if self.paging.on else -1
        # (one-instruction blocks for the guest's TF, and while a data breakpoint is armed)
        return BlockKey(eip, single_step=bool(self.cpu.virtual_flags & TF) or self._single_instruction_blocks,
                        physical=physical, segment_bases=self.cpu.segment_bases, cs_base=cs_base)

    def _translate(self, key: BlockKey) -> TranslatedBlock:
        started = time.perf_counter()
        try:
            return self._translate_block(key)
        finally:
            self.translation_seconds += time.perf_counter() - started

    def _translate_block(self, key: BlockKey) -> TranslatedBlock:
        breakpoints = frozenset(self.debugger.breakpoints) if self.debugger is not None else frozenset()
        guest = self.cpu.debug.instruction_breakpoints     # linear addresses
        if guest:
            breakpoints |= {(linear - key.cs_base) & 0xFFFFFFFF for linear in guest}
        if key.eip in breakpoints:
            return self.cache.add(key, GuestBlock(key.eip, end=BlockEnd.BRANCH), self.emitter.breakpoint(key.eip))
        guest, translation, ranges = self.translation_for(key, breakpoints)
        block = self.cache.add(key, guest, translation, ranges)
        if self.chaining and not key.single_step:
            self._link_within_page(block)
        if self.tracer.in_asm or self.tracer.out_asm:
            self.tracer.translated(guest, translation, block.host)
        return block

    def translation_for(self, key: BlockKey, breakpoints: frozenset = frozenset()
                        ) -> tuple[GuestBlock, Translation, Optional[tuple]]:
        """The block at `key` decoded (ending before `breakpoints`) and translated, and where its
        bytes are (_ranges), not yet in the cache (bench/bench_translate.py --replay translates
        cached keys again with it)."""
        limit, predictions = (1 if key.single_step else 32), INLINE_CACHE_ENTRIES
        # On a page the guest writes often the block ends after stores and checks its bytes: known
        # before decoding when its first byte is on one, after it when only a later byte is.
        first_frame = (key.physical if key.physical != -1 else (key.cs_base + key.eip) & 0xFFFFFFFF) // PAGE_SIZE
        self_check = first_frame in self.cache.self_checking
        guest = None
        while True:     # a block that does not fit a slot is shortened, a lone indirect branch
            guest = self.decoder.decode_block(key.eip, limit=limit, stop_before=breakpoints,   # predicts less
                                              base=key.cs_base, end_after_store=self_check,
                                              data_bases=key.segment_bases, again=guest)
            ranges = self._ranges(guest)
            if not self_check and self.cache.checks_itself(guest, ranges):
                self_check = True
                continue
            translation = self.emitter.translate(guest, budget=self.budget.enabled, chainable=not key.single_step,
                                                 profile=self.profile, predictions=predictions,
                                                 segment_bases=key.segment_bases, code_base=key.cs_base,
                                                 self_check=self_check, inline_timestamp=self._inline_timestamp())
            if len(translation.code) <= ARENA_SLOT_SIZE or (len(guest.instructions) <= 1 and not predictions):
                return guest, translation, ranges
            if len(guest.instructions) > 1:
                limit = len(guest.instructions) // 2
            else:
                predictions //= 2

    def _link_within_page(self, block: TranslatedBlock) -> None:
        """Chain a new block's static exits at once to blocks already translated on its own first
        linear page (a loop's back edge, a branch to code that ran before): their keys are the
        block's but for the EIP and, on the same page, the physical address, which needs no walk
        of the guest's tables. Other exits are chained at their first exit, as before (the Linux
        boot took 330,000 of those)."""
        key, page = block.key, block.guest.linear // PAGE_SIZE
        for index, site in enumerate(block.translation.exits):
            if site.kind is not ExitKind.BRANCH or index in block.links:
                continue
            linear = (key.cs_base + site.guest_eip) & 0xFFFFFFFF
            if linear // PAGE_SIZE != page:
                continue
            physical = -1 if key.physical == -1 else (key.physical & ~(PAGE_SIZE - 1)) | (linear % PAGE_SIZE)
            target = self.cache.translated(replace(key, eip=site.guest_eip, physical=physical))
            if target is not None:
                self.cache.link(block, index, target)

    def _inline_timestamp(self) -> bool:
        """Whether rdtsc may read the virtual clock inline: the budget counts and the guest
        already uses time (a first rdtsc's callout is what turns time on). Under the realtime
        clock the TSC is the host's, which only the callout reads."""
        context = self.context
        return self.budget.enabled and context.time_in_use and not context.clock.realtime

    def _block_for(self, eip: int) -> TranslatedBlock:
        """The translation of the block at `eip` (PageFault: the guest cannot fetch it)."""
        key = self._key(eip)
        block = self.cache.find(key)
        if block is not None and len(block.ranges) > 1 and self.paging.on \
                and self._ranges(block.guest) != block.ranges:
            self.cache.remove(block, "remap")       # its second page maps elsewhere now
            block = None
        if block is None:
            try:
                block = self._translate(key)
            except UnsupportedForm as error:
                raise UnsupportedInstruction(f"not translatable: {error}") from None
        return block

    def _protect_page(self, page: int, protect: bool) -> None:
        """Write-protect a guest-physical page that holds translated code (or release it), in the
        identity map and in every shadow that maps it."""
        if self.memory.ram.contains(page * PAGE_SIZE, 1):
            self.monitor_tables.set_writable(page * PAGE_SIZE, not protect)
        self.paging.watch_code_frame(page, protect)
        self._flush_tlb()

    def _flush_tlb(self) -> None:
        if self._deprivileged:
            self.engine.set_reg("cr3", self.real_cr3)

    def _monitor_wrote(self, address: int, size: int) -> None:
        """The monitor stored into guest memory (emulation, exception frames, accessed and dirty
        bits, a device's DMA): the engine's write protection did not see it, so invalidate
        overlapping translations and look at the guest page tables it may have changed here.
        A DMA started by an OUT can write over the very block running that OUT: that block goes
        once the engine returns (the run ends right after the OUT)."""
        if self.memory.ram.contains(address, 1):
            running = self.dispatcher.running_block()       # a device's DMA from an I/O hook
            self.cache.invalidate_range(address, size, "smc", keep=running)
            if running is not None and running.covers(address, size):
                self.dispatcher.remove_after_run(running)
            self.paging.memory_written(address, size)

    # -- running (the hub: dispatch.py) -------------------------------------------------------------
    def _on_interrupt(self, vector: int) -> None:
        self.dispatcher.on_interrupt(vector)

    @classmethod
    def from_config(cls, config) -> "BinaryTranslationMode":
        return cls(capacity=config.tcache_blocks or DEFAULT_TCACHE_BLOCKS, profile=config.profile,
                   paging=config.paging or "shadow")

    def end_run_after_io(self, port: int, size: int) -> None:
        """Translated I/O ends the engine's block, so a stop here lands right after the OUT."""
        self.dispatcher.record(StopKind.END_RUN)

    def end_run_soon(self) -> None:
        """(Another thread.) While time is in use every block's prologue charges the budget:
        its high half made negative, the run ends at the next block entry, through the budget
        exit, the block not charged (InstructionBudget.wake, block_exit). stop() would leave
        the engine's RIP stale (Engine facts) and make translated code run twice."""
        self.budget.wake()

    def end_run_after_mmio(self) -> None:
        """The budget counter runs out at the next block entry: a clean EVENT exit there, with no
        stop inside the access (while time is not counted yet, the run ends at its next exit)."""
        self.budget.end_at_next_block()

    def deny_io(self, port: int, size: int) -> None:
        """Note the registers the hook sees (they go back before the #GP) and stop. Which guest
        instruction it is, translated I/O stores in the scratch page just before it runs: in an
        I/O hook the engine's EIP is stale (the start of some earlier engine block)."""
        self.dispatcher.deny_io()

    def execute(self) -> VmExit:
        """Run translated code. With counting on, the budget counter starts at what the run
        loop allows and the instructions retired go to the context's retire when the run returns."""
        if self.budget.take_start():
            self.cache.flush("counting")
        if not self.budget.enabled:
            return self.dispatcher.execute()
        self.budget.begin_run(self.context.run_budget())
        self._counted_run = True
        try:
            vm_exit = self.dispatcher.execute()
        finally:
            self._counted_run = False
        self.context.retire(self.budget.retired())
        return vm_exit

    def instructions_in_flight(self) -> Optional[int]:
        """The budget charged so far: whole blocks, the running one included (block granularity)."""
        return self.budget.retired() if self._counted_run else None

    def watch_interrupt_window(self, blocked: bool) -> None:
        """While an interrupt waits for IF, the sites after translated sti/popf are exits."""
        self.cache.arm_interrupt_windows(blocked)
