"""The code arena (cache/arena.py): pieces of each block's size, buddies merged when freed, the
reserved one-shot slot untouched, and the cache finding the block that holds a host address."""

from __future__ import annotations

import random

import pytest

from cache.arena import GRANULE, CodeArena
from vmm.monitor_layout import ARENA_SIZE, ARENA_SLOT_SIZE, MAX_TCACHE_BLOCKS

BASE = 0x7F0000500000


def arena(size: int = 16 * ARENA_SLOT_SIZE) -> CodeArena:
    return CodeArena(BASE, memoryview(bytearray(size)), ARENA_SLOT_SIZE)


def test_a_block_takes_the_smallest_power_of_two_of_granules_that_holds_it():
    code = arena()
    for size, piece in ((1, 32), (32, 32), (33, 64), (100, 128), (129, 256), (256, 256)):
        address = code.allocate(size)
        assert code.piece_size(address) == piece and (address - BASE) % piece == 0


def test_the_reserved_slot_is_never_handed_out():
    code = arena(4 * ARENA_SLOT_SIZE)
    pieces = [code.allocate(GRANULE) for _ in range(3 * ARENA_SLOT_SIZE // GRANULE)]
    assert None not in pieces and code.allocate(1) is None
    assert min(pieces) == BASE + ARENA_SLOT_SIZE == code.address(1) and code.address(0) == BASE


def test_freed_buddies_merge_back_into_whole_slots():
    code = arena(8 * ARENA_SLOT_SIZE)
    rng = random.Random(7)
    pieces = []
    while (address := code.allocate(rng.randint(1, ARENA_SLOT_SIZE))) is not None:
        pieces.append(address)
    rng.shuffle(pieces)
    for address in pieces:
        code.release(address)
    assert code.free_bytes == 7 * ARENA_SLOT_SIZE
    assert sorted(code.allocate(ARENA_SLOT_SIZE) for _ in range(7)) == [BASE + k * ARENA_SLOT_SIZE for k in range(1, 8)]


def test_the_arena_holds_as_many_blocks_of_average_code_as_the_cache_numbers():
    """Fixed 256-byte slots held 32,767 blocks whatever their size: the Linux boot's blocks
    (about 105 bytes) were evicted and translated again 28,000 times."""
    code = arena(ARENA_SIZE)
    held = 0
    while held < MAX_TCACHE_BLOCKS and code.allocate(105) is not None:
        held += 1
    assert held == (ARENA_SIZE - ARENA_SLOT_SIZE) // 128 == 2 * (ARENA_SIZE // ARENA_SLOT_SIZE - 1)


def test_a_slot_size_that_is_not_a_power_of_two_of_granules_is_refused():
    with pytest.raises(ValueError):
        CodeArena(BASE, memoryview(bytearray(4096)), 3 * GRANULE)


class _Engine:
    """The engine as the cache sees it: only what it invalidates."""
    def __init__(self) -> None:
        self.invalidated = []

    def invalidate_code(self, begin: int, end: int) -> None:
        self.invalidated.append((begin, end))


def test_a_block_placed_where_no_code_ever_was_costs_no_engine_invalidation():
    """Each invalidation counts toward the engine's full flush of its own translations
    (vmm/engine.py, flush_before_full): a piece never written cannot hold one, a reused piece can."""
    from cache.tcache import BlockKey, TranslationCache
    from translator.decoder import GuestBlock
    from translator.emitter import Translation
    from translator.layout import LOOKUP_ENTRIES, LOOKUP_ENTRY_SIZE
    engine = _Engine()
    cache = TranslationCache(engine, arena(4 * ARENA_SLOT_SIZE), memoryview(bytearray(LOOKUP_ENTRIES * LOOKUP_ENTRY_SIZE)),
                             2, lambda page, on: None, BASE)
    first = cache.add(BlockKey(0x1000), GuestBlock(0x1000), Translation(code=bytearray(b"\xCC" * 100)))
    cache.add(BlockKey(0x2000), GuestBlock(0x2000), Translation(code=bytearray(b"\xCC" * 100)))
    assert engine.invalidated == []
    third = cache.add(BlockKey(0x3000), GuestBlock(0x3000), Translation(code=bytearray(b"\xCC" * 100)))
    assert not first.alive and third.host == first.host          # the evicted block's piece, reused
    assert engine.invalidated == [(third.host, third.host + 128)]
    assert cache.block_at(third.host + 99) is third and cache.block_at(third.host + 128) is not third
