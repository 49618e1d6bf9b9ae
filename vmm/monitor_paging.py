"""The engine's page tables under binary translation: an identity map of guest RAM and of the
monitor's mapped areas, owned by the monitor, with per-page write protection. Its entries for
the monitor's region also go into every shadow page directory (vmm/shadow_paging.py).

Why paging at all while the guest's own paging is off: a store the engine refuses through
Unicorn's memory permissions is reported at the start of the engine's translation block, not
at the store; a page fault from a read-only PTE is precise (EIP at the store, CR2 the address).
Write-protecting guest code pages this way gives exact self-modifying-code detection. This is
also where shadow page tables will live when guests turn paging on.
"""

from __future__ import annotations

import array
import struct
import sys

from vmm.engine import PROT_READ, PROT_WRITE
from vmm.memory import PAGE_SIZE

# Monitor-region areas (offsets from MONITOR_BASE), the same under every mode that uses them
DIRECTORY_OFFSET = 0x4000
TABLES_OFFSET = 0x100000                 # 4 KiB page tables for up to 3 GiB of RAM + the monitor
TABLES_SIZE = 0x310000

PRESENT, WRITABLE, USER, ACCESSED, DIRTY = 0x1, 0x2, 0x4, 0x20, 0x40
# Accessed and dirty are preset: the tables are read-only to the engine, so the page walker
# must never need to update them.
PDE_FLAGS = PRESENT | WRITABLE | USER | ACCESSED
PTE_READ_ONLY = PRESENT | USER | ACCESSED | DIRTY
PTE_WRITABLE = PTE_READ_ONLY | WRITABLE
ENTRIES = 1024


class MonitorPageTables:
    """`directory_view`/`tables_view` are the monitor's windows on the page directory (4 KiB) and
    a pool of page tables; `*_address` are where the engine sees them."""

    def __init__(self, directory_view: memoryview, directory_address: int,
                 tables_view: memoryview, tables_address: int) -> None:
        self.directory = directory_view
        self.directory_address = directory_address
        self.tables = tables_view
        self.tables_address = tables_address
        self._next_table = 0
        self.directory[:PAGE_SIZE] = bytes(PAGE_SIZE)

    def _table_for(self, address: int) -> int:
        """Offset in the pool of the page table covering `address`, created on first use."""
        index = address >> 22
        (pde,) = struct.unpack_from("<I", self.directory, index * 4)
        if pde & PRESENT:
            return (pde & ~0xFFF) - self.tables_address
        offset = self._next_table
        if offset + PAGE_SIZE > len(self.tables):
            raise MemoryError("monitor page-table pool exhausted")
        self._next_table += PAGE_SIZE
        self.tables[offset:offset + PAGE_SIZE] = bytes(PAGE_SIZE)
        struct.pack_into("<I", self.directory, index * 4, (self.tables_address + offset) | PDE_FLAGS)
        return offset

    def map_identity(self, base: int, size: int, writable: bool, user: bool = True) -> None:
        """user=False: supervisor-only, a fault for translated guest ring-3 code (real CPL 3)."""
        flags = PTE_WRITABLE if writable else PTE_READ_ONLY
        if not user:
            flags &= ~USER
        page, end = base, base + size
        while page < end:               # one page table's run of entries at a time
            table = self._table_for(page)
            first = (page >> 12) & 0x3FF
            count = min(ENTRIES - first, (end - page + PAGE_SIZE - 1) // PAGE_SIZE)
            entries = array.array("I", range(page | flags, (page + count * PAGE_SIZE) | flags, PAGE_SIZE))
            if sys.byteorder != "little":
                entries.byteswap()
            self.tables[table + first * 4:table + (first + count) * 4] = entries.tobytes()
            page += count * PAGE_SIZE

    @classmethod
    def build(cls, memory) -> "MonitorPageTables":
        """Map the directory and table areas (read-only to the engine) and identity-map guest RAM
        and every monitor area mapped so far, with their permissions."""
        directory_address = memory.map_monitor_area(DIRECTORY_OFFSET, PAGE_SIZE, PROT_READ)
        tables_address = memory.map_monitor_area(TABLES_OFFSET, TABLES_SIZE, PROT_READ)
        tables = cls(memory.monitor_view(DIRECTORY_OFFSET, PAGE_SIZE), directory_address,
                     memory.monitor_view(TABLES_OFFSET, TABLES_SIZE), tables_address)
        tables.map_identity(memory.ram.base, memory.ram.size, writable=True)
        for base, size, perms in memory.monitor_mappings():
            tables.map_identity(base, size, writable=bool(perms & PROT_WRITE))
        return tables

    def set_writable(self, page_address: int, writable: bool) -> None:
        table = self._table_for(page_address)
        at = table + ((page_address >> 12) & 0x3FF) * 4
        (pte,) = struct.unpack_from("<I", self.tables, at)
        struct.pack_into("<I", self.tables, at, (pte | WRITABLE) if writable else (pte & ~WRITABLE))
