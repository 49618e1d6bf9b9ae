"""DMA remapping, IOMMU-like: every guest-physical range a bus-master device names is checked and translated through the physical-to-machine map to the monitor's backing; anything but guest RAM is refused, never performed."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from vmm.x86 import PAGE_SIZE

if TYPE_CHECKING:
    from vmm.memory import PhysicalMemory


class DmaRefused(Exception):
    """A device access to guest-physical [address, address + size) that is not all guest RAM."""

    def __init__(self, address: int, size: int, what: str, where: str) -> None:
        super().__init__(f"{what} at {address:#x} (+{size:#x}): {where}")
        self.address, self.size, self.what, self.where = address, size, what, where


class DmaRemapper:
    """What a bus master reaches of memory: guest RAM only. A range is translated page run by
    page run through the machine's P2M map (guest frame -> machine frame of the frame pool ->
    host bytes), as an IOMMU's remapping table would, and refused whole (DmaRefused, nothing
    read or written) if any byte of it is past RAM, in a hole, on a device's MMIO range or in
    the monitor's own region. A device checks every range of a transfer before it moves any
    byte. Stores go to the frames and then to the memory's observers (PhysicalMemory.written),
    the path of the monitor's own stores into guest RAM: translated code on the pages written
    is dropped, traced page tables are seen (vmm/modes/bt, shadow paging; the untranslated
    modes drop the engine's own translations)."""

    def __init__(self, memory: "PhysicalMemory") -> None:
        self.memory = memory
        self.counters = Counter({"reads": 0, "writes": 0, "bytes_read": 0, "bytes_written": 0, "refused": 0})

    def where(self, address: int, size: int) -> str:
        """What is at [address, address + size) for a refusal's message."""
        memory = self.memory
        last = address + size - 1
        if memory.monitor.overlaps(address, size):
            return "the monitor's memory"
        for claim in memory.mmio.ranges:
            if address <= claim.end - 1 and claim.base <= last:
                return f"MMIO ({claim.device.name})"
        if address < memory.ram.end <= last:
            return f"runs past the end of guest RAM ({memory.ram.end:#x})"
        return "outside guest RAM (unassigned)" if address >= memory.ram.end else "not guest RAM"

    def map(self, address: int, size: int, what: str = "DMA") -> list[memoryview]:
        """Host views of guest RAM [address, address + size), in order (one per machine-contiguous
        run of frames); DmaRefused unless every byte is guest RAM."""
        memory = self.memory
        if size <= 0:
            return []
        if address < 0 or address + size > 1 << 32 or not memory.ram.contains(address, size):
            self.counters["refused"] += 1
            raise DmaRefused(address, size, what, self.where(address, size))
        first, last = address // PAGE_SIZE, (address + size - 1) // PAGE_SIZE
        views, offset, left = [], address % PAGE_SIZE, size
        try:
            for _pfn, frame, pages in memory.p2m.runs(first, last - first + 1):
                length = min(left, pages * PAGE_SIZE - offset)
                views.append(memory.pool.view(frame, pages)[offset:offset + length])
                offset, left = 0, left - length
        except KeyError:            # a hole in the map itself: not RAM either
            self.counters["refused"] += 1
            raise DmaRefused(address, size, what, "no frame behind it in the P2M map") from None
        return views

    def read(self, address: int, size: int, what: str = "DMA read") -> bytes:
        """A device reads guest RAM (a PRD entry, a buffer going to the disk)."""
        return self.read_views(self.map(address, size, what))

    def read_views(self, views: list[memoryview]) -> bytes:
        """The bytes behind views that map() gave."""
        data = b"".join(bytes(view) for view in views)
        self.counters["reads"] += 1
        self.counters["bytes_read"] += len(data)
        return data

    def write_views(self, address: int, views: list[memoryview], data: bytes) -> None:
        """Store `data` through views that map() gave for [address, address + len(data)), then
        tell the memory's observers (translated code, traced tables), as a monitor store does."""
        done = 0
        for view in views:
            view[:] = data[done:done + len(view)]
            done += len(view)
        self.counters["writes"] += 1
        self.counters["bytes_written"] += len(data)
        self.memory.written(address, len(data))

    def write(self, address: int, data: bytes, what: str = "DMA write") -> None:
        """A device writes guest RAM (a buffer coming from the disk)."""
        self.write_views(address, self.map(address, len(data), what), data)

    def state(self) -> dict:
        return dict(self.counters)
