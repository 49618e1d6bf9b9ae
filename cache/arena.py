"""The code arena: translated code in a monitor area mapped read/execute for the engine and written
only by the monitor through its host buffer, handed out in pieces the size of each block's code."""

from __future__ import annotations

from typing import Optional

# The smallest piece: translated blocks are 20 to 256 bytes, about 105 on average (the Linux
# boot), and a piece starts on a multiple of this, so that the block covering a host address is
# found among slot_size // GRANULE candidate starts (TranslationCache.block_at).
GRANULE = 32


class CodeArena:
    """The bytes at engine address `base` that `view` (the monitor's writable window) holds. The
    first `reserved` slots of `slot_size` bytes are fixed (bt's one-shot slot: address(0)); the
    rest is a buddy allocator of pieces of GRANULE << k bytes up to `slot_size` (a power of two
    of granules): a block takes the smallest piece its code fits, and a freed piece merges with
    its free buddy. Fixed 256-byte slots held a third of the blocks the same bytes hold now
    (and the Linux boot's working set did not fit). Knows nothing of what a block means."""

    def __init__(self, base: int, view: memoryview, slot_size: int, reserved: int = 1) -> None:
        if slot_size % GRANULE or (slot_size // GRANULE) & (slot_size // GRANULE - 1):
            raise ValueError(f"slot size {slot_size} is not a power of two of {GRANULE}-byte granules")
        self.base, self.view, self.slot_size = base, view, slot_size
        self.size = len(view)
        self.top_order = (slot_size // GRANULE).bit_length() - 1
        # Free pieces by order (offsets from base); allocated pieces: offset -> order.
        self._free: list[set[int]] = [set() for _ in range(self.top_order + 1)]
        self._free[self.top_order].update(range(reserved * slot_size, self.size - slot_size + 1, slot_size))
        self._allocated: dict[int, int] = {}
        self.free_bytes = len(self._free[self.top_order]) * slot_size
        # Granules code was ever written to: the engine can hold translations of its own only
        # there (the rest was never executed), so a block placed elsewhere needs no invalidation.
        self._written = bytearray(self.size // GRANULE)

    @staticmethod
    def order_for(size: int) -> int:
        """The order of the smallest piece that holds `size` bytes."""
        return max(0, (size - 1) // GRANULE).bit_length()

    def allocate(self, size: int) -> Optional[int]:
        """The engine address of a piece of at least `size` (1..slot_size) bytes, or None when
        no free piece is that large."""
        want = self.order_for(size)
        order = want
        while order <= self.top_order and not self._free[order]:
            order += 1
        if order > self.top_order:
            return None
        offset = self._free[order].pop()
        while order > want:           # split: the upper half stays free
            order -= 1
            self._free[order].add(offset + (GRANULE << order))
        self._allocated[offset] = want
        self.free_bytes -= GRANULE << want
        return self.base + offset

    def release(self, address: int) -> None:
        offset = address - self.base
        order = self._allocated.pop(offset)
        self.free_bytes += GRANULE << order
        while order < self.top_order:
            buddy = offset ^ (GRANULE << order)
            if buddy not in self._free[order]:
                break
            self._free[order].remove(buddy)
            offset = min(offset, buddy)
            order += 1
        self._free[order].add(offset)

    def piece_size(self, address: int) -> int:
        """The bytes of the allocated piece at `address`."""
        return GRANULE << self._allocated[address - self.base]

    def address(self, slot: int) -> int:
        """The engine address of reserved slot `slot`."""
        return self.base + slot * self.slot_size

    def never_written(self, address: int, size: int) -> bool:
        """Whether no code was ever written to [address, address + size)."""
        offset = address - self.base
        return 1 not in self._written[offset // GRANULE:(offset + size - 1) // GRANULE + 1]

    def write(self, address: int, data: bytes) -> None:
        offset = address - self.base
        self.view[offset:offset + len(data)] = data
        first, last = offset // GRANULE, (offset + len(data) - 1) // GRANULE + 1
        self._written[first:last] = b"\x01" * (last - first)

    def read(self, address: int, size: int) -> bytes:
        offset = address - self.base
        return bytes(self.view[offset:offset + size])
