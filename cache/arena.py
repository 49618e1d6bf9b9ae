"""The code arena: translated code lives in fixed-size slots of a monitor area mapped read/execute
for the engine and written only by the monitor through its host buffer."""

from __future__ import annotations

from typing import Optional


class CodeArena:
    """`count` slots of `slot_size` bytes at engine address `base`; `view` is the monitor's
    writable window on the same bytes. Knows nothing of what a block means."""

    def __init__(self, base: int, view: memoryview, slot_size: int, count: int) -> None:
        self.base, self.view, self.slot_size, self.count = base, view, slot_size, count
        self._free = list(range(count - 1, -1, -1))

    def allocate(self) -> Optional[int]:
        return self._free.pop() if self._free else None

    def release(self, slot: int) -> None:
        self._free.append(slot)

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
        return len(self._free)
