"""Shadow page tables: the tables the engine's MMU really walks while a guest has paging on
under bt, trap or vt with --paging shadow, built by the monitor from the guest's own tables
(two-level for trap and vt; IA-32e for bt, whose engine runs in long mode).

The guest's page tables map guest-linear to guest-physical pages and are only ever read by the
monitor; the engine's CR3 points at a shadow directory of this module, whose entries map the
same linear pages to the same frames with the protections the monitor needs on top of the
guest's. Shadow entries are made lazily: a linear page without one faults in the engine (a
hidden fault, which the guest never sees), the monitor walks the guest's tables as the CPU would
(setting the guest's accessed and dirty bits), and either fills the entry or reflects a true
fault to the guest with its CR2 and error code.

The shadow behaves as the guest's TLB, as on the reference machine (QEMU): an entry, once
filled, keeps its translation until the guest flushes it (invlpg, a CR3 load). Guest page-table
pages are write-protected in every shadow; a store to one is caught (a tracing fault), carried
out, and the entries it changed are dropped from the shadows of the other address spaces at
once and from the running one at its next flush. Shadows of recently used address spaces stay
cached across CR3 loads, so switching back to one costs no rebuild.

Write permission in a shadow entry is granted only once the guest's dirty bit is set (the first
write faults, so the monitor sets the bit as the CPU does) and never on a frame the monitor
watches: a guest page table, or a frame holding translated code (self-modifying code).

Views: under binary translation the guest kernel runs at CPL 1, which the MMU already treats as
supervisor, so one shadow per address space serves both guest rings. Under trap-and-emulate the
kernel runs at CPL 3 like its processes, so each address space has two shadows (ring
compression): a kernel view where every page the guest kernel may touch is a user page, and a
user view with the guest's own U/S bits; the engine's CR3 follows the guest's ring.

The monitor's pages: under trap the engine reads its shadow descriptor tables by linear address,
so every shadow maps those pages (`monitor_pages`), supervisor-only and read-only: the CPU's
descriptor loads are supervisor accesses, the guest at CPL 3 faults on them. Nothing else of
the monitor is in a shadow. The guest's own use of such a linear address is served from its own
tables: a fault the walk refuses is the guest's #PF, and an access it allows gets the guest's
translation lent to the page for one instruction (MonitorPageAccess, `lend_monitor_page`), after
which the monitor's entry comes back.

While the guest's paging is off (no shadow active) the engine walks the flat tables
(vmm/monitor_paging.py's FlatTables, two-level shadows only: trap, vt), built in the pool:
guest-physical addresses one to one and the monitor's range unassigned memory. Of the monitor
they keep the same pages, and the guest's access at one is served the same way: its "own
frame" there is the unassigned memory at that physical address.
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass, field
from typing import Callable, Optional

from vmm.engine import PROT_READ
from vmm.monitor_layout import POOL_OFFSET, POOL_SIZE
from vmm.errors import MonitorBug
from vmm.monitor_paging import LONG_TABLE_FLAGS, MONITOR_PML4_INDEX, FlatTables, LongModeTables
from vmm.memory import PhysicalMemory, UnbackedAccess, linear_to_physical
from vmm.x86 import CR0_PG, CR0_WP, CR4_PSE, PAGE_SIZE, PTE_A, PTE_D, PTE_NX, PTE_P, PTE_PS, PTE_RW, PTE_US

SHARED, KERNEL, USER = "shared", "kernel", "user"     # views (see the module docstring)

ENTRIES = 1024
SHADOW_PDE = PTE_P | PTE_RW | PTE_US | PTE_A
# Accessed and dirty are preset in every shadow entry: the engine's walker never writes them.
SHADOW_PTE_BASE = PTE_P | PTE_A | PTE_D
_AD = PTE_A | PTE_D


class MonitorPageAccess(Exception):
    """The guest's tables allow an access at a linear address where the monitor keeps a page of
    its own in every shadow: the access must run with the guest's translation lent."""

    def __init__(self, linear: int, physical: int, write: bool) -> None:
        super().__init__(f"guest access at {linear:#x} (physical {physical:#x}), a monitor page")
        self.linear, self.physical, self.write = linear, physical, write


@dataclass
class ShadowEntry:
    frame: int                  # guest-physical page number
    leaf: int                   # guest-physical address of the guest's PTE (or 4 MiB PDE)
    user: bool                  # the guest's U/S, both levels combined
    guest_writable: bool        # the guest's R/W, both levels combined
    dirty: bool                 # the guest's dirty bit was set when the entry was made


@dataclass(eq=False)
class AddressSpace:
    """The shadow of one guest page directory."""
    directory_frame: int
    directory_page: int                                     # pool unit of the shadow directory (the root)
    view: str = SHARED
    directories: tuple = ()                                 # IA-32e: the units of its 4 directories
    tables: dict[int, int] = field(default_factory=dict)    # directory index -> pool page
    entries: dict[int, ShadowEntry] = field(default_factory=dict)      # linear page -> entry
    guest_tables: dict[int, Optional[int]] = field(default_factory=dict)    # index -> guest table frame (None: 4 MiB)
    stale_pages: set[int] = field(default_factory=set)     # linear pages to drop at the next flush
    stale_indices: set[int] = field(default_factory=set)   # directory indices to drop at the next flush

    def __hash__(self) -> int:
        return id(self)


class PagePool:
    """Fixed units of monitor memory for shadow directories and tables: one 4 KiB page each for
    two-level tables, two contiguous pages for IA-32e ones (a guest table of 1024 entries is two
    tables of 512 eight-byte entries there)."""

    def __init__(self, view: memoryview, address: int, unit: int = PAGE_SIZE) -> None:
        self.view, self.address, self.unit = view, address, unit
        self.free = list(range(len(view) // unit - 1, -1, -1))

    def allocate(self) -> Optional[int]:
        if not self.free:
            return None
        page = self.free.pop()
        self.view[page * self.unit:(page + 1) * self.unit] = bytes(self.unit)
        return page

    def release(self, page: int) -> None:
        self.free.append(page)

    def physical(self, page: int) -> int:
        return self.address + page * self.unit



# What the report counts for shadow paging (its counters_report; bt and trap count true and
# tracing faults into the same Counter).
COUNTERS = ("hidden_faults", "true_faults", "tracing_faults", "fetch_fills", "stores_emulated",
            "page_table_writes", "page_tables_traced", "entries_filled", "entries_dropped", "invlpg",
            "shadows_built", "shadows_evicted", "shadow_switches", "shadow_reuses", "pool_exhausted",
            "flooded_tables_unshadowed")
# Write-flood detection (KVM's detect_write_flooding): a traced page table stored into this many
# times with no shadow entry made from it in between is no longer used as one (a freed table
# being cleared, a page reused for data): the shadows built from it are dropped and it is no
# longer traced, so the rest of the stores run at full speed. A fill that walks it traces it again.
FLOOD_WRITES = 3

class ShadowPaging:
    """The shadows of up to `max_spaces` guest address spaces. `monitor_directory` is the
    monitor's own page directory (its entries for the monitor region go into every shadow);
    `flush_tlb()` drops the engine's TLB after an entry lost a permission or went away;
    `code_frame(frame)` says whether a frame holds translated code (kept read-only)."""

    virtual_tlb = False

    def __init__(self, memory: PhysicalMemory, pool: PagePool, monitor_pages: Optional[dict[int, int]],
                 flush_tlb: Callable[[], None], code_frame: Callable[[int], bool], max_spaces: int = 8,
                 ring_compression: bool = False, long_mode_tables=None) -> None:
        """long_mode_tables: the monitor's LongModeTables when the engine runs in long mode
        (binary translation): shadows are then IA-32e tables whose top entry for the monitor is
        the monitor's own; else two-level tables holding monitor_pages ({linear page number:
        the engine's entry}) besides the guest's."""
        self.memory, self.pool = memory, pool
        self.monitor_pages = monitor_pages or {}
        # The engine's tables while the guest's paging is off (two-level shadows: trap, vt; bt
        # pages on its own LongModeTables then).
        self.flat = None if long_mode_tables is not None else \
            FlatTables(memory, self.monitor_pages, self._table_page_for_flat)
        # (space, page, guest frame); space None: the flat tables' page
        self._lent_monitor: list[tuple[Optional[AddressSpace], int, int]] = []
        self.long_mode = long_mode_tables
        self.flush_tlb, self.code_frame = flush_tlb, code_frame
        self.max_spaces = max_spaces * (2 if ring_compression else 1)
        self.ring_compression = ring_compression
        self.spaces: collections.OrderedDict[tuple[int, str], AddressSpace] = collections.OrderedDict()
        self.active: Optional[AddressSpace] = None
        self.cr0 = self.cr4 = 0
        self.reverse: dict[int, set[tuple[AddressSpace, int]]] = collections.defaultdict(set)  # frame -> entries
        self.traced: dict[int, bytes] = {}                  # guest page-table frame -> its last seen bytes
        self.unused_writes: dict[int, int] = {}             # traced frame -> stores since a fill walked it
        self.tracers: dict[int, set[tuple[AddressSpace, int]]] = collections.defaultdict(set)
        # frame -> (space, -1) for a directory, (space, index) for the table under that index
        self._lent: list[tuple[AddressSpace, int]] = []     # entries writable for one instruction
        self.counters = collections.Counter(dict.fromkeys(COUNTERS, 0))   # every one in the report

    def _table_page_for_flat(self) -> tuple[memoryview, int]:
        """A zeroed pool page for the flat tables, theirs for good (taken before any shadow)."""
        unit = self.pool.allocate()
        return self.pool.view[unit * PAGE_SIZE:(unit + 1) * PAGE_SIZE], self.pool.physical(unit)

    @property
    def unpaged_directory(self) -> Optional[int]:
        """The directory the engine walks while the guest's paging is off (the flat tables),
        None where the monitor pages the engine otherwise then (bt)."""
        return self.flat.directory_address if self.flat is not None else None

    @classmethod
    def build(cls, memory: PhysicalMemory, monitor_tables, flush_tlb: Callable[[], None], *,
              code_frame: Callable[[int], bool] = lambda frame: False, ring_compression: bool = False,
              monitor_pages=()) -> "ShadowPaging":
        """Map the pool into the engine's physical space only (its walker reads it; no linear
        mapping reaches it) next to the monitor's own tables (vmm/monitor_paging.py).
        monitor_pages: linear addresses of the monitor pages (identity-mapped) the engine must
        reach through every shadow, supervisor-only and read-only (trap's descriptor tables);
        without them the shadows map the guest's linear space alone (vt: VT-x without EPT, the
        monitor runs on tables of its own, and every guest address is the guest's)."""
        address = memory.map_monitor_area(POOL_OFFSET, POOL_SIZE, PROT_READ)
        if isinstance(monitor_tables, LongModeTables):
            pool = PagePool(memory.monitor_view(POOL_OFFSET, POOL_SIZE), address, 2 * PAGE_SIZE)
            return cls(memory, pool, None, flush_tlb, code_frame, long_mode_tables=monitor_tables)
        pool = PagePool(memory.monitor_view(POOL_OFFSET, POOL_SIZE), address)
        pages = {linear >> 12: (linear & ~0xFFF) | SHADOW_PTE_BASE for linear in monitor_pages}
        return cls(memory, pool, pages, flush_tlb, code_frame, ring_compression=ring_compression)

    # -- the guest's paging registers ------------------------------------------------------------
    def load(self, cr0: int, cr3: int, cr4: int, user: bool = False) -> int:
        """The guest loaded CR3 (or turned paging on): a TLB flush. `user`: the guest runs in ring
        3 (chooses the view under ring compression). Returns the physical address of the shadow
        directory for the engine's CR3."""
        if (cr0 ^ self.cr0) & (CR0_PG | CR0_WP) or (cr4 ^ self.cr4) & CR4_PSE:
            self.reset()                     # the meaning of every entry changed
        self.cr0, self.cr4 = cr0, cr4
        for space in self.spaces.values():
            self._drop_stale(space)
        previous = self.active
        space = self._space(cr3 >> 12, self._view(user))
        if space is not previous:
            self.counters["shadow_switches"] += 1
        self.unused_writes.pop(space.directory_frame, None)
        return self._root(space)

    def select_ring(self, user: bool) -> int:
        """Under ring compression: the guest changed rings (no TLB flush). Returns the shadow
        directory of the view for that ring."""
        space = self._space(self.active.directory_frame, self._view(user))
        return self._root(space)

    def _view(self, user: bool) -> str:
        if not self.ring_compression:
            return SHARED
        return USER if user else KERNEL

    def _space(self, frame: int, view: str) -> AddressSpace:
        key = (frame, view)
        space = self.spaces.get(key)
        if space is None:
            space = self._new_space(frame, view)
        else:
            self.spaces.move_to_end(key)
            if space is not self.active:
                self.counters["shadow_reuses"] += 1
        self.active = space
        return space

    def reset(self) -> None:
        """Forget every shadow (paging turned off, or CR0.WP / CR4.PSE changed)."""
        for space in list(self.spaces.values()):
            self._discard_space(space)
        self.active = None
        self.flush_tlb()

    def invalidate_page(self, linear: int) -> bool:
        """invlpg: drop the running shadow's entry for the page; inside a 4 MiB page, all of it (as
        QEMU drops a whole large page). Returns whether more than the one page went."""
        if self.active is None:
            return False
        page, index = linear >> 12, linear >> 22
        self.counters["invlpg"] += 1
        large = False
        for space in [s for s in self.spaces.values() if s.directory_frame == self.active.directory_frame]:
            if index in space.guest_tables and space.guest_tables[index] is None:
                self._drop_index(space, index)
                large = True
            else:
                self._drop_page(space, page)
            space.stale_pages.discard(page)
        self.flush_tlb()
        return large

    # -- faults --------------------------------------------------------------------------------
    def fill(self, linear: int, write: bool, user: bool) -> Optional[int]:
        """A fault in the engine at `linear`. Walks the guest's tables as the CPU would for this
        access (PageFault if the guest's tables refuse it: a true fault). Returns None when the
        shadow entry is now in place (retry the access), or the frame when the access is allowed
        but the monitor keeps the frame read-only (a page table, translated code, or a write the
        guest's CR0.WP=0 allows to a read-only user page): the caller lets that one instruction
        write through `lend_write`."""
        space = self.active
        if space is None and self.flat is not None:      # the guest's paging is off: flat tables
            if self.flat.serves(linear >> 12):
                raise MonitorPageAccess(linear, linear, write)
            raise MonitorBug(f"a page fault at {linear:#x} on the flat tables, where only the monitor's "
                             f"pages fault")
        if linear >> 12 in self.monitor_pages:
            frame_address = linear_to_physical(self.memory, self.cr0, self.active_cr3, linear, write,
                                               cr4=self.cr4, user=user, mark=True)
            raise MonitorPageAccess(linear, frame_address, write)
        entry = space.entries.get(linear >> 12)
        if entry is not None and write and self._entry_allows_write(entry, user):
            # The guest's TLB holds a writable translation (no walk, as on the CPU): the engine
            # was refused by the monitor's own protection of the frame.
            if not self._writable(space, entry):
                return entry.frame
            self._set_writable(space, linear >> 12, True)
            return None
        frame_address = linear_to_physical(self.memory, self.cr0, self.active_cr3, linear, write,
                                           cr4=self.cr4, user=user, mark=True)
        entry = self._make_entry(space, linear)
        if write and not self._writable(space, entry):
            return frame_address >> 12
        self.counters["hidden_faults"] += 1
        return None

    def _entry_allows_write(self, entry: ShadowEntry, user: bool) -> bool:
        if not entry.dirty or (user and not entry.user):
            return False
        return entry.guest_writable or (not user and not self.cr0 & CR0_WP)

    def frame_of(self, linear: int) -> Optional[int]:
        entry = self.active.entries.get(linear >> 12) if self.active is not None else None
        return entry.frame if entry is not None else None

    def translate(self, linear: int, user: bool) -> int:
        """An instruction fetch at `linear` (the translator reading guest code): the running
        shadow's entry if it has one, as a TLB would serve it, else a walk that makes one."""
        entry = self.active.entries.get(linear >> 12)
        if entry is None or (user and not entry.user):
            physical = linear_to_physical(self.memory, self.cr0, self.active_cr3, linear, False,
                                          cr4=self.cr4, user=user, mark=True)
            self._check_backed(physical)
            if linear >> 12 in self.monitor_pages:      # (the monitor's entry stays)
                return physical
            entry = self._make_entry(self.active, linear)
            self.counters["fetch_fills"] += 1
        return (entry.frame << 12) | (linear & 0xFFF)

    def _check_backed(self, physical: int) -> None:
        """Code is fetched from guest RAM only: a guest entry pointing anywhere else for a fetch
        is code the monitor cannot run (data accesses there reach the MMIO bus: _pte)."""
        if not self.memory.ram.contains(physical & ~0xFFF, PAGE_SIZE):
            raise UnbackedAccess(physical, 1, "fetch")

    @property
    def active_cr3(self) -> int:
        return self.active.directory_frame << 12

    # -- write protection ------------------------------------------------------------------------
    def protect_frame(self, frame: int) -> None:
        """The monitor now watches `frame` (translated code on it): no shadow entry may write it."""
        changed = False
        for space, page in self.reverse.get(frame, ()):
            changed |= self._set_writable(space, page, False)
        if changed:
            self.flush_tlb()

    def release_frame(self, frame: int) -> None:
        """Writes to `frame` need no watching any more (its translations are gone)."""
        for space, page in list(self.reverse.get(frame, ())):
            self._set_writable(space, page, self._writable(space, space.entries[page]))

    def page_table(self, frame: int) -> bool:
        """Whether `frame` holds a guest page table (or directory) that a shadow was built from:
        its stores are traced."""
        return frame in self.traced

    def lend_write(self, linear: int) -> bool:
        """Let the next guest instruction write the page at `linear` through the running shadow
        (if it has an entry for it); `end_loans()` takes the permission back."""
        page = linear >> 12
        if self.active is None or page not in self.active.entries:
            return False
        self._lent.append((self.active, page))
        self._set_writable(self.active, page, True)
        return True

    def lend_monitor_page(self, access: MonitorPageAccess) -> None:
        """Let the next guest instruction reach its own frame at a linear address where the
        running shadow (with the guest's paging off, the flat tables) maps a monitor page (the
        access the guest's walk allowed: a store only if it was one, and never into a frame the
        monitor watches); outside its RAM the frame is a device's or unassigned memory, served
        where PhysicalMemory.engine_page says. `end_loans()` puts the monitor's entry back."""
        page, frame = access.linear >> 12, access.physical >> 12
        writable = access.write and frame not in self.traced and not self.code_frame(frame)
        address = frame << 12
        if not self.memory.ram.contains(address, PAGE_SIZE):    # a device, or unassigned memory
            address = self.memory.engine_page(address, wide=False)
        entry = address | SHADOW_PTE_BASE | PTE_US | (PTE_RW if writable else 0)
        self._lent_monitor.append((self.active, page, frame))
        if self.active is None:
            self.flat.lend(page, entry)
        else:
            self._write_pte(self.active, page, entry)
        self.flush_tlb()

    def end_loans(self) -> None:
        """After the instruction ran: protect the pages again, and look at what it changed in
        the guest's page tables."""
        lent_monitor, self._lent_monitor = self._lent_monitor, []
        for space, page, _frame in lent_monitor:
            if space is None:
                self.flat.restore(page)
            elif self.spaces.get((space.directory_frame, space.view)) is space:
                self._write_pte(space, page, self.monitor_pages[page])
        lent, self._lent = self._lent, []
        for space, page in lent:
            entry = space.entries.get(page)
            if entry is not None:
                self._set_writable(space, page, self._writable(space, entry))
                if entry.frame in self.traced:
                    self._page_table_changed(entry.frame)
        if lent or lent_monitor:
            self.flush_tlb()

    @property
    def lending(self) -> bool:
        return bool(self._lent or self._lent_monitor)

    def memory_written(self, address: int, size: int) -> None:
        """Guest memory changed (a guest store let through, or the monitor's own): if it holds a
        guest page table, find the entries that changed and drop what was made from them."""
        if not self.traced:
            return
        for frame in range(address >> 12, ((address + size - 1) >> 12) + 1):
            if frame in self.traced:
                self._page_table_changed(frame)

    # -- internals -------------------------------------------------------------------------------
    def _new_space(self, frame: int, view: str) -> AddressSpace:
        while len(self.spaces) >= self.max_spaces:
            self._evict_one()
        page = self._allocate()
        space = AddressSpace(frame, page, view)
        if self.long_mode is not None:
            self._new_long_mode_root(space)
        self._map_monitor_pages(space)
        self.spaces[(frame, view)] = space
        self._trace(frame, space, -1)
        self.counters["shadows_built"] += 1
        return space

    def _allocate(self) -> int:
        page = self.pool.allocate()
        while page is None:
            if not self._evict_one():
                self.counters["pool_exhausted"] += 1
                active = self.active
                for index in list(active.tables):
                    self._drop_index(active, index, release=True)
                self.flush_tlb()
                self._map_monitor_pages(active)
            page = self.pool.allocate()
        return page

    def _map_monitor_pages(self, space: AddressSpace) -> None:
        for page, pte in self.monitor_pages.items():
            self._write_pte(space, page, pte)

    def _evict_one(self) -> bool:
        """Discard the least recently used shadow other than the running one."""
        for space in self.spaces.values():
            if space is not self.active:
                self._discard_space(space)
                self.counters["shadows_evicted"] += 1
                return True
        return False

    def _discard_space(self, space: AddressSpace) -> None:
        for index in list(space.tables):
            self._drop_index(space, index, release=True)
        self._untrace(space.directory_frame, space, -1)
        self.pool.release(space.directory_page)
        for unit in space.directories:
            self.pool.release(unit)
        del self.spaces[(space.directory_frame, space.view)]
        if self.active is space:
            self.active = None

    def _make_entry(self, space: AddressSpace, linear: int) -> ShadowEntry:
        """After a successful walk (which set the guest's accessed/dirty bits): the shadow entry."""
        index, page = linear >> 22, linear >> 12
        directory = space.directory_frame << 12
        pde = self.memory.read_u32(directory + index * 4)
        if pde & PTE_PS and self.cr4 & CR4_PSE:
            leaf, rights = directory + index * 4, pde
            table_frame = None
            frame = ((pde & 0xFFC00000) >> 12) | ((linear >> 12) & 0x3FF)
        else:
            table_frame = pde >> 12
            leaf = (table_frame << 12) + ((linear >> 12) & 0x3FF) * 4
            pte = self.memory.read_u32(leaf)
            rights = pde & pte
            frame = pte >> 12
        if space.guest_tables.get(index, table_frame) != table_frame:
            self._drop_index(space, index)          # the directory entry points elsewhere now
        if index not in space.guest_tables:
            space.guest_tables[index] = table_frame
            if table_frame is not None:
                self._trace(table_frame, space, index)
        self.unused_writes.pop(space.directory_frame, None)     # both are in use as page tables
        self.unused_writes.pop(table_frame, None)
        old = space.entries.get(page)
        if old is not None:
            self.reverse[old.frame].discard((space, page))
        leaf_value = self.memory.read_u32(leaf)
        entry = ShadowEntry(frame, leaf, bool(rights & PTE_US), bool(rights & PTE_RW), bool(leaf_value & PTE_D))
        space.entries[page] = entry
        self.reverse[frame].add((space, page))
        self._write_pte(space, page, self._pte(space, entry))
        self.counters["entries_filled"] += 1
        return entry

    def _writable(self, space: AddressSpace, entry: ShadowEntry) -> bool:
        if not entry.dirty or entry.frame in self.traced or self.code_frame(entry.frame):
            return False
        if entry.guest_writable:
            return True
        # With CR0.WP clear the guest kernel may write read-only pages: always in the kernel
        # view; in a shared view a supervisor-only page can be writable (ring 3 cannot reach
        # it), a user page is lent per write.
        return not self.cr0 & CR0_WP and (space.view == KERNEL or (space.view == SHARED and not entry.user))

    def _pte(self, space: AddressSpace, entry: ShadowEntry) -> int:
        """The shadow entry: a RAM frame where the guest names it; a device's or unassigned
        memory's where the engine serves it (PhysicalMemory.engine_page: the same address below
        the monitor's range, an alias or the shared unassigned page above)."""
        user = entry.user or space.view == KERNEL
        address = entry.frame << 12
        if not self.memory.ram.contains(address, PAGE_SIZE):
            address = self.memory.engine_page(address, wide=self.long_mode is not None)
        return (address | SHADOW_PTE_BASE | (PTE_US if user else 0)
                | (PTE_RW if self._writable(space, entry) else 0) | (PTE_NX if self.long_mode is not None else 0))

    # -- the table format: two-level 32-bit, or IA-32e (long mode) --------------------------------
    def _root(self, space: AddressSpace) -> int:
        """The physical address the engine's CR3 takes for this shadow."""
        return self.pool.physical(space.directory_page)

    def _new_long_mode_root(self, space: AddressSpace) -> None:
        """An IA-32e root: one unit holds the PML4 and the PDPT ([0, 4 GiB) and its 4-8 GiB
        alias, over four directories in two more units); the monitor's PML4 entry is shared."""
        space.directories = (self._allocate(), self._allocate())
        root = space.directory_page * self.pool.unit
        pdpt = self.pool.physical(space.directory_page) + PAGE_SIZE
        struct.pack_into("<Q", self.pool.view, root, pdpt | LONG_TABLE_FLAGS)
        struct.pack_into("<Q", self.pool.view, root + MONITOR_PML4_INDEX * 8, self.long_mode.monitor_entry)
        for gib in range(8):
            directory = self.pool.physical(space.directories[(gib & 3) >> 1]) + (gib & 1) * PAGE_SIZE
            struct.pack_into("<Q", self.pool.view, root + PAGE_SIZE + gib * 8, directory | LONG_TABLE_FLAGS)

    def _set_directory_entry(self, space: AddressSpace, index: int, table: Optional[int]) -> None:
        """Point the guest directory index `index` (4 MiB of linear space) at a table unit, or
        clear it. IA-32e: two 2 MiB entries, at the unit's two pages."""
        if self.long_mode is None:
            struct.pack_into("<I", self.pool.view, space.directory_page * PAGE_SIZE + index * 4,
                             0 if table is None else self.pool.physical(table) | SHADOW_PDE)
            return
        directory = index >> 8                     # 1 GiB (256 guest entries) per directory
        at = space.directories[directory >> 1] * self.pool.unit + (directory & 1) * PAGE_SIZE + (index & 255) * 16
        if table is None:
            struct.pack_into("<QQ", self.pool.view, at, 0, 0)
        else:
            address = self.pool.physical(table)
            struct.pack_into("<QQ", self.pool.view, at, address | LONG_TABLE_FLAGS,
                             (address + PAGE_SIZE) | LONG_TABLE_FLAGS)

    def _pte_at(self, table: int, page: int) -> tuple[int, str]:
        """Where in the pool the entry for linear `page` is, in a table unit, and its format."""
        if self.long_mode is None:
            return table * PAGE_SIZE + (page & 0x3FF) * 4, "<I"
        return table * self.pool.unit + (page & 0x3FF) * 8, "<Q"

    def _table_page(self, space: AddressSpace, index: int) -> int:
        page = space.tables.get(index)
        if page is None:
            page = self._allocate()
            space.tables[index] = page
            self._set_directory_entry(space, index, page)
        return page

    def _write_pte(self, space: AddressSpace, page: int, value: int) -> None:
        table = self._table_page(space, page >> 10)
        at, layout = self._pte_at(table, page)
        struct.pack_into(layout, self.pool.view, at, value)

    def _set_writable(self, space: AddressSpace, page: int, writable: bool) -> bool:
        """Returns whether a permission was taken away (the engine's TLB must forget it)."""
        table = space.tables.get(page >> 10)
        if table is None:
            return False
        at, layout = self._pte_at(table, page)
        (pte,) = struct.unpack_from(layout, self.pool.view, at)
        if not pte & PTE_P:
            return False
        new = (pte | PTE_RW) if writable else (pte & ~PTE_RW)
        struct.pack_into(layout, self.pool.view, at, new)
        return bool(pte & PTE_RW) and not writable

    def _drop_page(self, space: AddressSpace, page: int) -> None:
        entry = space.entries.pop(page, None)
        if entry is None:
            return
        self.reverse[entry.frame].discard((space, page))
        if not self.reverse[entry.frame]:
            del self.reverse[entry.frame]
        self._write_pte(space, page, 0)
        self.counters["entries_dropped"] += 1

    def _drop_index(self, space: AddressSpace, index: int, release: bool = False) -> None:
        """Drop every entry under one directory index (and stop tracing its guest table)."""
        for page in [p for p in space.entries if p >> 10 == index]:
            self._drop_page(space, page)
        table_frame = space.guest_tables.pop(index, None)
        if table_frame is not None:
            self._untrace(table_frame, space, index)
        if release and index in space.tables:
            self.pool.release(space.tables.pop(index))
            self._set_directory_entry(space, index, None)

    def _drop_stale(self, space: AddressSpace) -> None:
        if not (space.stale_pages or space.stale_indices):
            return
        for index in space.stale_indices:
            self._drop_index(space, index)
        for page in space.stale_pages:
            self._drop_page(space, page)
        space.stale_pages.clear()
        space.stale_indices.clear()
        self.flush_tlb()

    def _trace(self, frame: int, space: AddressSpace, index: int) -> None:
        if frame not in self.traced:
            self.traced[frame] = self.memory.read(frame << 12, PAGE_SIZE) if self._in_ram(frame) else bytes(PAGE_SIZE)
            self.counters["page_tables_traced"] += 1
            self.protect_frame(frame)
        self.tracers[frame].add((space, index))

    def _untrace(self, frame: int, space: AddressSpace, index: int) -> None:
        users = self.tracers.get(frame)
        if users is None:
            return
        users.discard((space, index))
        if not users:
            del self.tracers[frame]
            del self.traced[frame]
            self.unused_writes.pop(frame, None)
            self.release_frame(frame)

    def _in_ram(self, frame: int) -> bool:
        return self.memory.ram.contains(frame << 12, PAGE_SIZE)

    def _page_table_changed(self, frame: int) -> None:
        """Compare a traced page with its last seen bytes: entries whose meaning changed make the
        shadow entries built from them stale. Accessed/dirty bits being set is no change (the
        monitor's own walks set them)."""
        if self._flooded(frame):
            return
        old = self.traced[frame]
        new = self.memory.read(frame << 12, PAGE_SIZE) if self._in_ram(frame) else old
        if new == old:
            return
        self.traced[frame] = new
        self.counters["page_table_writes"] += 1
        changed = []
        difference = int.from_bytes(old, "little") ^ int.from_bytes(new, "little")
        while difference:               # one entry per lowest differing bit, as big-int steps
            at = ((difference & -difference).bit_length() - 1) // 32 * 4
            difference &= ~(0xFFFFFFFF << (at * 8))
            (before,), (after,) = struct.unpack_from("<I", old, at), struct.unpack_from("<I", new, at)
            if (before ^ after) & ~_AD == 0 and after & before == before:
                continue                # accessed/dirty bits set: no change of meaning
            changed.append(at // 4)
        for space, index in list(self.tracers.get(frame, ())):
            for entry in changed:
                if index < 0:        # the directory: a whole 4 MiB of linear space
                    if space is self.active:
                        space.stale_indices.add(entry)
                    else:
                        self._drop_index(space, entry)
                else:
                    page = (index << 10) | entry
                    if space is self.active:
                        space.stale_pages.add(page)
                    else:
                        self._drop_page(space, page)

    def _flooded(self, frame: int) -> bool:
        """Count a store into the traced `frame`; at FLOOD_WRITES with no use in between, drop
        every shadow entry built from it, which ends its tracing, and say so. Not while the
        running shadow has entries from it: those must keep their translation until the guest
        flushes its TLB (the stale-TLB behaviour QEMU shows), so they stay traced."""
        writes = self.unused_writes[frame] = self.unused_writes.get(frame, 0) + 1
        tracers = self.tracers.get(frame, ())
        if writes < FLOOD_WRITES or any(space is self.active for space, _index in tracers):
            return False
        for space, index in list(tracers):
            if index < 0:            # a directory: its whole shadow goes
                if self.spaces.get((space.directory_frame, space.view)) is space:
                    self._discard_space(space)
            else:
                self._drop_index(space, index, release=True)
        self.counters["flooded_tables_unshadowed"] += 1
        return True

    def counters_report(self) -> dict:
        report = dict(sorted(self.counters.items()))
        report["scheme"] = "shadow"
        report["shadows_cached"] = len(self.spaces)
        report["pool_pages_free"] = len(self.pool.free)
        return report
