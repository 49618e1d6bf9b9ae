"""Guest paging as the monitor virtualizes it, one service for bt, trap and vt: over a Pager (shadow
or nested paging) it applies the guest's control-register writes and invlpg, and classifies every
fault on guest memory into a Verdict that the mode acts on in its own way (bt with a one-shot
translation, trap and vt with the real TF lent for one instruction).

Trap's shadows also hold the pages of its ring views of the GDT and LDT (vmm/shadow_tables.py),
supervisor-only, at their linear addresses in the monitor's region: a guest access its own tables
allow there is the MonitorPage verdict, which trap serves by emulating the instruction or by one
single-stepped instruction with the guest's translation lent (GuestPaging.lend_monitor_page).
While the guest's paging is off, shadow paging pages the engine on flat tables (PagingOff's
directory) where the monitor's range is unassigned memory, and a guest access at a page the
engine keeps there is the same verdict, its "own frame" the unassigned memory at that address.
Nested paging keeps those pages above 4 GiB (monitor_linear), out of the guest's reach."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Union

from vmm.errors import MonitorBug
from vmm.exits import ExitReason, VmExit
from vmm.fault_address import plain_store
from vmm.memory import PageFault, PhysicalMemory, UnbackedAccess
from vmm.monitor_layout import MONITOR_LINEAR
from vmm.nested_paging import NestedPaging
from vmm.shadow_paging import MonitorPageAccess, ShadowPaging
from vmm.x86 import CR0_PG, FPU_CONTROLS, PAGE_SIZE, PF_VEC, flushes_tlb, fpu_controls


class Pager(Protocol):
    """What a memory-virtualization scheme gives GuestPaging: vmm/shadow_paging.py's ShadowPaging
    (tables the engine walks, filled on hidden faults) and vmm/nested_paging.py's NestedPaging
    (the engine's virtual TLB, filled by a two-level walk)."""

    virtual_tlb: bool                        # the engine's TLB misses call the pager (nested)
    unpaged_directory: Optional[int]         # the engine's tables while the guest's paging is off
                                             # (two-level shadow paging: the flat tables), else None
    counters: collections.Counter            # the report's counters (true faults counted here too)
    code_frame: Callable[[int], bool]        # whether a frame holds translated code (bt)

    def load(self, cr0: int, cr3: int, cr4: int, user: bool = False) -> Optional[int]:
        """A TLB flush (CR3 load, paging on, a change of what the tables mean): the engine's new
        page directory, None where the engine has none (nested)."""

    def select_ring(self, user: bool) -> Optional[int]:
        """The guest changed rings without a flush (trap: ring compression)."""

    def reset(self) -> None:
        """Paging went off: forget every translation."""

    def invalidate_page(self, linear: int) -> bool:
        """invlpg; True when more than the one page went (a 4 MiB page)."""

    def fill(self, linear: int, write: bool, user: bool) -> Optional[int]:
        """After a fault or refusal: None when the access may run again now, else the frame the
        guest allows the store to but the monitor keeps read-only. PageFault (the guest's),
        UnbackedAccess (its tables point outside its RAM)."""

    def translate(self, linear: int, user: bool) -> int:
        """An instruction fetch by the monitor (the translator): physical address, through the
        pager's TLB."""

    def frame_of(self, linear: int) -> Optional[int]:
        """The frame the running address space maps at `linear`, if any."""

    def page_table(self, frame: int) -> bool:
        """Whether the frame holds a guest page table whose stores the pager traces."""

    def protect_frame(self, frame: int) -> None: ...
    def release_frame(self, frame: int) -> None: ...
    def lend_write(self, linear: int) -> bool: ...

    def lend_monitor_page(self, access: MonitorPageAccess) -> None:
        """The guest's own frame in place of a monitor page for one instruction (only a pager
        with monitor pages in its tables raises MonitorPageAccess: trap's shadows)."""

    def end_loans(self) -> None: ...

    @property
    def lending(self) -> bool: ...

    def memory_written(self, address: int, size: int) -> None: ...
    def counters_report(self) -> dict: ...


# -- what a fault on guest memory is (GuestPaging.fault) -----------------------------------------
@dataclass(frozen=True)
class Hidden:
    """The monitor's own fault: the translation is in place now, the access runs again."""


@dataclass(frozen=True)
class Traced:
    """A plain `mov` into a traced guest page table, carried out by the monitor: the guest goes
    on after the instruction (`length` bytes of the faulting code)."""
    length: int


@dataclass(frozen=True)
class Lend:
    """The guest's tables allow the store, but the monitor keeps `frame` read-only (a page table,
    translated code): the instruction runs alone with the page lent (GuestPaging.lend)."""
    frame: int


@dataclass(frozen=True)
class MonitorPage:
    """The guest's tables allow the access (or its paging is off), but at its linear address the
    engine's tables keep one of the monitor's pages (trap's ring views, supervisor-only, which
    the CPU's descriptor loads read; the flat tables' absent pages): the mode emulates the
    instruction, or runs it alone with the guest's own frame lent there, unassigned memory
    outside its RAM (GuestPaging.lend_monitor_page), after which the monitor's page comes back."""
    access: MonitorPageAccess


@dataclass(frozen=True)
class GuestPF:
    """A true fault: the guest's own tables refuse the access (GuestPaging.guest_page_fault)."""
    fault: PageFault


@dataclass(frozen=True)
class NoMemory:
    """The guest's tables send the access outside its RAM (`physical`)."""
    physical: int


Verdict = Union[Hidden, Traced, Lend, MonitorPage, GuestPF, NoMemory]


# -- what a control-register write does to the mapping (GuestPaging.control_register_written) -----
@dataclass(frozen=True)
class TablesLoaded:
    """A TLB flush: the engine walks `directory` from now on (None under nested paging: the
    engine's TLB was flushed, there are no tables to switch)."""
    directory: Optional[int]


@dataclass(frozen=True)
class PagingOff:
    """The guest turned paging off: every translation is gone. The engine walks `directory` from
    now on (shadow paging of trap and vt: the flat tables, where the monitor's range is
    unassigned memory), None where the pager has no tables for it (nested paging's virtual TLB
    goes on answering; bt pages on its own tables)."""
    directory: Optional[int] = None


MappingChange = Union[TablesLoaded, PagingOff]


class GuestPaging:
    """The guest's paging, virtualized: `cpu` keeps the guest's control registers (`control`),
    `pager` does the work. The mode acts on what it returns (a MappingChange, a Verdict); the
    service never touches the mode's own structures (bt's cache, the engine's CR3)."""

    def __init__(self, pager: Pager, cpu, engine, memory: PhysicalMemory, *, address_bits: int = 32) -> None:
        """address_bits: how the faulting code the monitor decodes is addressed (64: bt's
        translated code)."""
        self.pager = pager
        self.cpu = cpu
        self.engine = engine
        self.memory = memory
        self.address_bits = address_bits

    @staticmethod
    def monitor_linear(scheme: str) -> Optional[int]:
        """Where an untranslated mode's engine sees the monitor areas it reads by linear address
        (trap's ring views of the GDT and LDT), None for their physical address. Nested paging's
        virtual TLB answers for any linear address: MONITOR_LINEAR, above anything a 32-bit guest
        address reaches (as bt's), so that every address below 4 GiB is the guest's. Two-level
        shadow tables cannot name it: the pages stay at their physical addresses, supervisor-only,
        and the guest's own access there is the MonitorPage verdict."""
        return MONITOR_LINEAR if scheme == "nested" else None

    @classmethod
    def untranslated(cls, context, cpu, scheme: str, ring_compression: bool, monitor_pages=()) -> "GuestPaging":
        """For the modes that run guest code untranslated (trap, vt): nested paging through the
        engine's virtual TLB, or shadow paging on two-level tables. monitor_pages: the linear
        addresses of the monitor pages the engine reads through every shadow, supervisor-only
        (trap's ring views: its shadows hold nothing else of the monitor's); without them (vt)
        the shadows map the guest's linear space alone. Under nested paging they are at
        monitor_linear(), where no guest address reaches. `context`: the mode's RunContext, for
        the engine and guest memory."""
        engine, memory = context.engine, context.memory
        if scheme == "nested":
            control = cpu.control
            pager = NestedPaging(engine, memory, lambda: (control[0], control[3], control[4]), lambda: cpu.cpl)
        else:
            pager = ShadowPaging.build(memory, None, engine.flush_tlb,
                                       ring_compression=ring_compression, monitor_pages=monitor_pages)
            memory.write_observers.append(pager.memory_written)
        return cls(pager, cpu, engine, memory)

    @property
    def on(self) -> bool:
        """Whether the guest's paging is on (CR0.PG)."""
        return bool(self.cpu.control[0] & CR0_PG)

    @property
    def virtual_tlb(self) -> bool:
        return self.pager.virtual_tlb

    @property
    def counters(self) -> collections.Counter:
        return self.pager.counters

    # -- the guest's paging registers ------------------------------------------------------------
    def control_register_written(self, number: int, old: int) -> Optional[MappingChange]:
        """The guest wrote CR0, CR3 or CR4 (the virtual CPU holds the new value). Its x87/SSE
        controls act on the engine's at once; a CR3 load, or a change of what the guest's tables
        mean, is a TLB flush (TablesLoaded); paging turned off is PagingOff; else None."""
        control, engine = self.cpu.control, self.engine
        new = control[number]
        if number in FPU_CONTROLS:
            engine.set_reg(f"cr{number}", fpu_controls(number, engine.reg(f"cr{number}"), new))
        if number == 0 and (old ^ new) & CR0_PG and not new & CR0_PG:
            self.pager.reset()
            return self.unpaged()
        if control[0] & CR0_PG and flushes_tlb(number, old, new):
            return TablesLoaded(self.pager.load(control[0], control[3], control[4], user=self.cpu.cpl == 3))
        return None

    def unpaged(self) -> PagingOff:
        """What the mapping is while the guest's paging is off (as at entry)."""
        return PagingOff(self.pager.unpaged_directory)

    def ring_changed(self) -> Optional[int]:
        """The guest changed rings (trap, where both run at CPL 3): the directory of the new
        ring's view, if the engine must switch to it."""
        if self.on or self.pager.virtual_tlb:
            return self.pager.select_ring(self.cpu.cpl == 3)
        return None

    def invalidate_page(self, linear: int) -> Optional[bool]:
        """invlpg: None while paging is off (nothing to drop), else whether more than the one page
        went."""
        if not self.on:
            return None
        return self.pager.invalidate_page(linear)

    # -- guest memory as the monitor fetches and watches it ---------------------------------------
    def code_address(self, linear: int) -> int:
        """Where the guest fetches `linear` from, through the pager's TLB (PageFault if its
        tables do not let this ring, UnbackedAccess outside its RAM)."""
        if not self.on:
            return linear
        return self.pager.translate(linear, self.cpu.cpl == 3)

    def frame_of(self, linear: int) -> Optional[int]:
        return self.pager.frame_of(linear)

    def page_table(self, frame: int) -> bool:
        """Whether stores into `frame` are traced (it holds a guest page table)."""
        return self.pager.page_table(frame)

    def watch_code_frame(self, frame: int, watched: bool) -> None:
        """A frame gained translated code (no mapping may write it) or lost its last."""
        if watched:
            self.pager.protect_frame(frame)
        else:
            self.pager.release_frame(frame)

    def memory_written(self, address: int, size: int) -> None:
        """The monitor stored into guest memory: the traced page tables it changed are looked at."""
        self.pager.memory_written(address, size)

    def prefill(self, linear: int) -> None:
        """Give the engine the translation of `linear` for a supervisor read it makes inside a
        register write, where no fault can be taken (vt's descriptor loads); a refusal is left
        to the engine's own read, which faults as the CPU's would."""
        if self.on and self.pager.frame_of(linear) is None:
            try:
                self.pager.fill(linear & 0xFFFFFFFF, False, False)
            except (PageFault, UnbackedAccess):
                pass

    # -- faults ----------------------------------------------------------------------------------
    def fault(self, linear: int, write: bool, user: bool, code: Callable[[], bytes],
              reg: Callable[[str], int], fetch: bool = False) -> Verdict:
        """What a fault (or nested refusal) at `linear` is. `code()` gives the faulting
        instruction's bytes and `reg` its registers, for a store into a traced page table that
        the monitor carries out itself when it is a plain `mov` (not on a frame that holds
        translated code: that one must invalidate, and runs lent). A `fetch` is served from
        guest RAM only: anywhere else (a device, unassigned memory) is NoMemory."""
        pager = self.pager
        try:
            if fetch:
                pager.translate(linear, user)
            frame = pager.fill(linear, write, user)
        except PageFault as fault:
            return GuestPF(fault)
        except UnbackedAccess as error:
            return NoMemory(error.address)
        except MonitorPageAccess as access:
            return MonitorPage(access)
        if frame is None:
            return Hidden()
        if pager.page_table(frame) and not pager.code_frame(frame):
            pager.counters["tracing_faults"] += 1
            length = self._store_plainly(code(), reg, linear, frame)
            if length is not None:
                return Traced(length)
        return Lend(frame)

    def _store_plainly(self, code: bytes, reg: Callable[[str], int], linear: int, frame: int) -> Optional[int]:
        """A plain `mov` into the traced `frame` (the usual PTE write) carried out, its bytes
        stored through memory.write (so the pager looks at the change); its length. None for any
        other store (it must run lent)."""
        store = plain_store(code, reg, self.address_bits)
        offset = linear & 0xFFF
        if store is None or offset + store[1] > PAGE_SIZE:
            return None
        length, size, value = store
        self.pager.counters["stores_emulated"] += 1
        self.memory.write((frame << 12) | offset, value.to_bytes(size, "little"))
        return length

    def lend(self, linear: int) -> None:
        """Let the next guest instruction store at `linear`: the page(s) a store of up to 16
        bytes there may touch, writable until end_loans()."""
        self.pager.lend_write(linear)
        if linear & 0xFFF > PAGE_SIZE - 16:
            self.pager.lend_write((linear + 15) & 0xFFFFFFFF)

    def lend_monitor_page(self, verdict: MonitorPage) -> None:
        """Let the next guest instruction reach its own frame where the shadow keeps a monitor
        page (a store only if the access was one, never into a frame the monitor watches), until
        end_loans() puts the monitor's page back."""
        self.pager.lend_monitor_page(verdict.access)

    @property
    def lending(self) -> bool:
        return self.pager.lending

    def end_loans(self) -> None:
        """The lent store ran (or faulted): protect the pages again, look at what it changed."""
        if self.pager.lending:
            self.pager.end_loans()

    def guest_page_fault(self, fault: PageFault, eip: int) -> VmExit:
        """A true fault: the guest's #PF at `eip`, with its CR2."""
        self.pager.counters["true_faults"] += 1
        self.cpu.set_reg("cr2", fault.linear)
        return VmExit(ExitReason.EXCEPTION, eip=eip, vector=PF_VEC, error_code=fault.error_code)

    # -- nested paging's refusals ----------------------------------------------------------------
    @property
    def refusal(self) -> tuple[int, str, bool]:
        """The access the engine's virtual TLB refused last: (its page, "read"/"write"/"fetch",
        whether something is mapped there). The engine reports only the page."""
        return self._nested().refusal

    def refused_address(self, code: bytes, eip: int, reg: Callable[[str], int],
                        segment_base: Callable[[str], int]) -> int:
        """The exact linear address of the refused data access, made by the instruction `code`
        at `eip` (CR2): worked out from the instruction and its registers."""
        return self._nested().refused_address(code, eip, reg, segment_base)

    def _nested(self) -> NestedPaging:
        if not isinstance(self.pager, NestedPaging):
            raise MonitorBug("a virtual-TLB refusal without nested paging")
        return self.pager

    def counters_report(self) -> dict:
        return self.pager.counters_report()
