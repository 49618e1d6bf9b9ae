"""The code arena: translated code lives in fixed-size slots of a monitor area mapped read/execute
for the engine and written only by the monitor through its host buffer."""

from __future__ import annotations

from typing import Optional


class CodeArena:
    """`count` slots of `slot_size` bytes at engine address `base`; `view` is the monitor's
    writable window on the same bytes. Knows nothing of what a block means."""

    PAGE = 4096

    def __init__(self, base: int, view: memoryview, slot_size: int, count: int) -> None:
        self.base, self.view, self.slot_size, self.count = base, view, slot_size, count
        self._per_page = self.PAGE // slot_size
        self._free_by_page: dict[int, set[int]] = {}
        for slot in range(count):
            self._free_by_page.setdefault(slot // self._per_page, set()).add(slot)
        self._free_count = count

    def allocate(self, near: Optional[int] = None) -> Optional[int]:
        """A free slot, in the same 4 KiB page as engine address `near` when one is free there:
        the engine chains its own translated blocks directly only within a page, so blocks
        that jump to each other should share one."""
        if not self._free_count:
            return None
        page = None
        if near is not None and self.slot_of(near) is not None:
            page = self.slot_of(near) // self._per_page
        if page not in self._free_by_page:
            page = min(self._free_by_page)
        slots = self._free_by_page[page]
        slot = min(slots)
        slots.discard(slot)
        if not slots:
            del self._free_by_page[page]
        self._free_count -= 1
        return slot

    def release(self, slot: int) -> None:
        self._free_by_page.setdefault(slot // self._per_page, set()).add(slot)
        self._free_count += 1

    def address(self, slot: int) -> int:
        return self.base + slot * self.slot_size

    def slot_of(self, address: int) -> Optional[int]:
        if self.base <= address < self.base + self.count * self.slot_size:
            return (address - self.base) // self.slot_size
        return None

    def write(self, address: int, data: bytes) -> None:
        offset = address - self.base
        self.view[offset:offset + len(data)] = data

    def read(self, address: int, size: int) -> bytes:
        offset = address - self.base
        return bytes(self.view[offset:offset + size])

    @property
    def free_slots(self) -> int:
        return self._free_count
