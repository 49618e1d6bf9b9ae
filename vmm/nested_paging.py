"""Nested paging for the modes that deprivilege the guest kernel (bt, trap): the two-level
translation done by the "hardware", with no shadow tables and no traps on page-table writes.

The engine runs in its virtual-TLB mode: every TLB miss asks `fill`, which is the page walker
of a CPU with nested paging. First level, the guest's own tables (guest linear to guest
physical, accessed and dirty bits set in them as the CPU sets them, U/S checked against the
guest's ring, not the engine's); second level, the monitor's map (guest physical to the
engine's memory: guest RAM through the physical-to-machine map, and everything else through the
MMIO bus, where unassigned memory reads 0 as on QEMU: PhysicalMemory.engine_page). Code is
fetched from RAM only. Every linear address below 4 GiB is the guest's: the monitor's areas the
engine itself reads by linear address (bt's virtual CPU and translation cache, trap's ring views
of the GDT and LDT) are at MONITOR_LINEAR, far above anything a 32-bit guest address reaches, and
the fill answers there from the monitor's own map (docs/isolation.md). What the fill gives stays
in the engine's TLB until a flush, so the guest sees a TLB as on the reference machine; the
translator's instruction fetches go through a small instruction TLB with the same lifetime.

A Pager (vmm/guest_paging.py) as vmm/shadow_paging.py's ShadowPaging is, so the modes handle a
refused access one way whichever scheme is in use.
"""

from __future__ import annotations

import collections
from typing import Callable, Optional

from vmm.engine import PROT_EXEC, PROT_READ, PROT_WRITE
from vmm.errors import MonitorBug
from translator.x86decode import decode
from vmm.fault_address import fault_address
from vmm.memory import PageFault, PhysicalMemory, UnbackedAccess, linear_to_physical
from vmm.monitor_layout import MONITOR_LINEAR
from vmm.x86 import CR0_PG, CR0_WP, CR4_PSE, PAGE_SIZE, PTE_D, PTE_PS, PTE_RW

PROT_RX = PROT_READ | PROT_EXEC



# What the report counts for nested paging (its counters_report; the modes count true faults
# into the same Counter).
COUNTERS = ("tlb_fills", "tlb_flushes", "invlpg", "refused", "true_faults")

class NestedPaging:
    """`registers()` -> the guest's (cr0, cr3, cr4); `guest_ring()` -> 0 or 3; `code_frame(frame)`
    says whether a frame holds translated code (stores there must leave the engine);
    `supervisor_pages`: monitor pages guest ring 3 may not read."""

    virtual_tlb = True
    unpaged_directory = None     # while the guest's paging is off the fill answers one to one

    def __init__(self, engine, memory: PhysicalMemory, registers: Callable[[], tuple[int, int, int]],
                 guest_ring: Callable[[], int], code_frame: Callable[[int], bool] = lambda frame: False,
                 supervisor_pages: frozenset = frozenset(), monitor_linear: int = MONITOR_LINEAR) -> None:
        """monitor_linear: where the engine sees the monitor's region (docs/isolation.md): every
        address below 4 GiB is the guest's, 4-8 GiB its alias (the 32-bit wrap: bt's FS/GS base
        plus offset, a 32-bit engine's CS base plus EIP). An engine in long mode runs translated
        code (bt): guest pages are then never executable, and faulting code is 64-bit code."""
        self.engine, self.memory = engine, memory
        self.monitor_linear = monitor_linear
        self.translated = engine.long_mode
        self._guest_perms = PROT_READ if self.translated else PROT_RX
        self.registers, self.guest_ring, self.code_frame = registers, guest_ring, code_frame
        self.supervisor_pages = supervisor_pages
        self.counters = collections.Counter(dict.fromkeys(COUNTERS, 0))   # every one in the report
        self.active = None
        self._fetch_tlb: dict[int, int] = {}        # linear page -> frame (the translator's fetches)
        self._lent: set[int] = set()                # frames one guest instruction may write
        # the last refused access: (its page's linear address, "read"/"write"/"fetch", whether
        # something is mapped there). The engine reports the page only: the mode works out CR2.
        self.refusal: Optional[tuple[int, str, bool]] = None
        self._monitor = self._monitor_permissions()
        engine.use_virtual_tlb(self._fill)

    def _monitor_permissions(self) -> dict[int, int]:
        permissions = {}
        for base, size, perms in self.memory.monitor_mappings():
            for page in range(base >> 12, (base + size + PAGE_SIZE - 1) >> 12):
                permissions[page] = perms
        return permissions

    # -- the engine's TLB misses ---------------------------------------------------------------
    def _fill(self, linear: int, access: str) -> Optional[tuple[int, int]]:
        self.counters["tlb_fills"] += 1
        write = access == "write"
        if linear >= self.monitor_linear:
            return self._fill_monitor(linear, access)
        linear &= 0xFFFFFFFF                       # 4-8 GiB: the 32-bit wrap
        try:
            physical, writable = self._walk(linear, write, mark=True, fetch=access == "fetch")
        except (PageFault, UnbackedAccess):
            return self._refuse(linear, access, False)
        if write and not writable:               # translated code on the frame: the monitor's store
            return self._refuse(linear, access, True)
        if not self.memory.ram.contains(physical, PAGE_SIZE):      # a device, or unassigned memory
            return self.memory.engine_page(physical, wide=True), PROT_READ | (PROT_WRITE if writable else 0)
        return physical, self._guest_perms | (PROT_WRITE if writable else 0)

    def _fill_monitor(self, linear: int, access: str) -> Optional[tuple[int, int]]:
        """The monitor's own region, which only the engine reaches: translated code (bt), the
        CPU's own descriptor loads (trap's ring views)."""
        physical = self.memory.monitor.base + (linear - self.monitor_linear)
        perms = self._monitor.get(physical >> 12)
        if perms is None or (physical >> 12 in self.supervisor_pages and self.guest_ring() == 3) \
                or (access == "write" and not perms & PROT_WRITE) or (access == "fetch" and not perms & PROT_EXEC):
            return self._refuse(linear, access, perms is not None)
        return physical & ~0xFFF, perms

    def refused_address(self, code: bytes, eip: int, reg: Callable[[str], int],
                        segment_base: Callable[[str], int]) -> int:
        """The exact linear address of the last refused data access, made by the instruction
        `code` at `eip` (the engine names only the page; the instruction and its registers say
        where in it). The page itself where the bytes do not decode."""
        page, access, _present = self.refusal
        instruction = decode(code, eip, 64 if self.translated else 32)
        if instruction is None:
            return page
        return fault_address(instruction, page, access == "write", reg, segment_base)

    def _refuse(self, linear: int, access: str, present: bool) -> None:
        self.counters["refused"] += 1
        self.refusal = (linear & ~0xFFF, access, present)
        return None

    def _walk(self, linear: int, write: bool, mark: bool, fetch: bool = False) -> tuple[int, bool]:
        """(guest-physical page address, whether the engine may write it now) for one access;
        UnbackedAccess for a fetch from outside RAM."""
        cr0, cr3, cr4 = self.registers()
        user = self.guest_ring() == 3
        if not cr0 & CR0_PG:
            physical = linear & ~0xFFF
            if fetch:
                self._check_backed(physical)
            return physical, not self._watched(physical >> 12)
        physical = linear_to_physical(self.memory, cr0, cr3, linear, write, cr4=cr4, user=user, mark=mark)
        if fetch:
            self._check_backed(physical)
        if write:
            return physical & ~0xFFF, not self._watched(physical >> 12)
        # A read: writes stay refused until the guest's dirty bit is set (the first one walks
        # again and sets it), as the CPU's TLB holds a clean entry.
        return physical & ~0xFFF, self._may_write_clean(linear, cr0, cr3, cr4, user) and not self._watched(physical >> 12)

    def _may_write_clean(self, linear: int, cr0: int, cr3: int, cr4: int, user: bool) -> bool:
        pde = self.memory.read_table_entry((cr3 & ~0xFFF) + (linear >> 22) * 4)
        if pde & PTE_PS and cr4 & CR4_PSE:
            leaf, rights = pde, pde
        else:
            leaf = self.memory.read_table_entry((pde & ~0xFFF) + ((linear >> 12) & 0x3FF) * 4)
            rights = pde & leaf
        if not leaf & PTE_D:
            return False
        if rights & PTE_RW:
            return True
        return not user and not cr0 & CR0_WP

    def _watched(self, frame: int) -> bool:
        return frame not in self._lent and self.code_frame(frame)

    def _check_backed(self, physical: int) -> None:
        if not self.memory.ram.contains(physical & ~0xFFF, PAGE_SIZE):
            raise UnbackedAccess(physical, 1, "fetch")

    # -- the Pager protocol (vmm/guest_paging.py) ------------------------------------------------
    def fill(self, linear: int, write: bool, user: bool) -> Optional[int]:
        """After a refused access: PageFault (the guest's), the frame of a store into translated
        code, or None (allowed now: run it again)."""
        physical, writable = self._walk(linear, write, mark=True)
        if write and not writable:
            return physical >> 12
        return None

    def translate(self, linear: int, user: bool) -> int:
        """An instruction fetch by the translator, through the instruction TLB."""
        frame = self._fetch_tlb.get(linear >> 12)
        if frame is None:
            physical, _writable = self._walk(linear, False, mark=True, fetch=True)
            frame = self._fetch_tlb[linear >> 12] = physical >> 12
        return (frame << 12) | (linear & 0xFFF)

    def frame_of(self, linear: int) -> Optional[int]:
        try:
            return self._walk(linear, False, mark=False)[0] >> 12
        except (PageFault, UnbackedAccess):
            return None

    def load(self, cr0: int, cr3: int, cr4: int, user: bool = False) -> None:
        """A CR3 load or paging turned on: the TLB is flushed; there are no tables to switch."""
        self.counters["tlb_flushes"] += 1
        self.flush()
        return None

    def select_ring(self, user: bool) -> None:
        """The engine's TLB holds permissions of one guest ring (trap runs both at CPL 3)."""
        self.engine.flush_tlb()
        return None

    def reset(self) -> None:
        self.flush()

    def flush(self) -> None:
        self._fetch_tlb.clear()
        self.engine.flush_tlb()

    def invalidate_page(self, linear: int) -> bool:
        """invlpg: the whole TLB goes (the engine flushes no single page); inside a 4 MiB page
        the instruction TLB forgets all of it, as QEMU forgets a whole large page. Returns
        whether more than the one page went."""
        self.counters["invlpg"] += 1
        large = self._large_page(linear)
        if large:
            self._fetch_tlb = {page: frame for page, frame in self._fetch_tlb.items() if page >> 10 != linear >> 22}
        else:
            self._fetch_tlb.pop(linear >> 12, None)
        self.engine.flush_tlb()
        return large

    def _large_page(self, linear: int) -> bool:
        cr0, cr3, cr4 = self.registers()
        pde = self.memory.read_table_entry((cr3 & ~0xFFF) + (linear >> 22) * 4)
        return bool(pde & PTE_PS and cr4 & CR4_PSE)

    def protect_frame(self, frame: int) -> None:
        self.engine.flush_tlb()          # entries that let stores into the frame must go

    def release_frame(self, frame: int) -> None:
        pass                             # a store refused before is filled writable next time

    def page_table(self, frame: int) -> bool:
        return False                     # nothing is traced: page-table writes are free

    def lend_write(self, linear: int) -> bool:
        frame = self.frame_of(linear)
        if frame is None:
            return False
        self._lent.add(frame)
        self.engine.flush_tlb()
        return True

    def lend_monitor_page(self, access) -> None:
        """(The Pager protocol's: fill never raises MonitorPageAccess here, the monitor's region
        is answered by its own map above the guest's walk.)"""
        raise MonitorBug(f"nested paging lends no monitor page ({access})")

    def end_loans(self) -> None:
        if self._lent:
            self._lent.clear()
            self.engine.flush_tlb()

    @property
    def lending(self) -> bool:
        return bool(self._lent)

    def memory_written(self, address: int, size: int) -> None:
        pass                             # nothing derived from the guest's tables to update

    def counters_report(self) -> dict:
        report = dict(sorted(self.counters.items()))
        report["scheme"] = "nested"
        return report
