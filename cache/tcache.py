"""The translation cache: translated blocks by key, least-recently-used eviction, chaining in both
directions, the in-cache lookup table, and invalidation by guest page (self-modifying code)."""

from __future__ import annotations

import array
import collections
import functools
import struct
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

from lru import LRU

from cache.arena import GRANULE, CodeArena
from translator.decoder import GuestBlock
from translator.emitter import EXIT_SLOT_SIZE, INT3, UNLINKED_SLOT, WINDOW_SITE_DISARMED, ExitKind, ExitSite, Translation
from translator.layout import LOOKUP_ENTRIES, LOOKUP_ENTRY_SIZE
from translator.x86arch import PAGE_SIZE


@functools.lru_cache(maxsize=1)
def _empty_lookup_table() -> bytes:
    """The same 512 KiB for every machine: entry i holds the tag i ^ 1 (never a hit) and no
    target. Built once per process from ranges, without a Python loop per entry."""
    words = array.array("I", bytes(LOOKUP_ENTRIES * LOOKUP_ENTRY_SIZE))
    words[0::4] = array.array("I", range(1, LOOKUP_ENTRIES, 2))      # even entries: tag i + 1
    words[2::4] = array.array("I", range(0, LOOKUP_ENTRIES, 2))      # odd entries: tag i - 1
    if sys.byteorder != "little":
        words.byteswap()
    return words.tobytes()


@dataclass(frozen=True)
class BlockKey:
    """Everything a translation depends on besides the guest bytes."""
    eip: int
    single_step: bool = False      # blocks of one instruction, never chained (guest EFLAGS.TF)
    physical: int = -1             # where the code is in guest-physical memory (-1: paging off)
    segment_bases: tuple = (0, 0, 0)   # DS, ES, SS bases the code was translated for (64-bit host
                                       # code adds a non-zero base itself, as QEMU's ADDSEG flag)
    cs_base: int = 0               # the code segment's base: the code is at linear cs_base + eip
                                   # (QEMU's TB key has cs_base too)
    # The physical address lets two address spaces that map the same code at the same linear
    # address share its translation, and keeps apart two codes that one linear address maps in
    # turn (as QEMU keys its translation blocks by physical and virtual PC).


def byte_ranges(guest: GuestBlock, ranges: Optional[tuple[tuple[int, int], ...]] = None) -> tuple[tuple[int, int], ...]:
    """Where a block's bytes are in guest-physical memory: `ranges` (one per linear page, where
    the guest's paging put them), or, with paging off (None), at their linear addresses."""
    return ranges if ranges is not None else ((guest.linear, guest.linear + max(guest.guest_size, 1)),)


def frames_of(ranges) -> set[int]:
    """The guest-physical page numbers `ranges` cover."""
    return {page for start, end in ranges for page in range(start // PAGE_SIZE, (end - 1) // PAGE_SIZE + 1)}


@dataclass(eq=False)
class TranslatedBlock:
    key: BlockKey
    guest: GuestBlock
    number: int                                 # 1..capacity, its --profile counter's index
    host: int                                   # engine address of the translated code
    translation: Translation
    links: dict[int, "TranslatedBlock"] = field(default_factory=dict)       # exit index -> target
    incoming: set[tuple["TranslatedBlock", int]] = field(default_factory=set)
    alive: bool = True
    # Guest-physical [start, end) ranges of the block's bytes, one per linear page it spans
    # (where the guest's paging put them when it was translated).
    ranges: tuple[tuple[int, int], ...] = ()
    linear_pages: frozenset = frozenset()       # the linear page numbers of its bytes (GuestBlock.pages)

    @property
    def frames(self) -> set[int]:
        """Guest-physical page numbers whose bytes this translation depends on."""
        return frames_of(self.ranges)

    @property
    def host_size(self) -> int:
        return len(self.translation.code)

    def site_address(self, index: int) -> int:
        return self.host + self.translation.exits[index].offset

    def covers(self, address: int, size: int) -> bool:
        """Whether guest-physical bytes [address, address+size) overlap an instruction of this block."""
        return any(start < address + size and address < end for start, end in self.ranges)

    def __hash__(self) -> int:
        return id(self)


# A page of code the guest stores into this often (each store a fault, an invalidation of what it
# overlaps and a one-shot of the store, about 100 us) mixes code and data (xv6 links a program's
# data right after its text): it is not write-protected any more, and its blocks check their own
# bytes at every entry instead (translator/emitter.py, _emit_self_check), as VMware's
# translator and DynamoRIO do for such pages. A page stays self-checking for the rest of the run.
SELF_CHECK_AFTER = 8


class TranslationCache:
    """Owns the arena, the lookup table and every translated block. `protect_page(page, on)`
    write-protects (on=True) or releases a guest page for the engine."""

    def __init__(self, engine, arena: CodeArena, lookup_view: memoryview, capacity: int,
                 protect_page: Callable[[int, bool], None], host_base: int,
                 counters_view: Optional[memoryview] = None, counters_base: int = 0) -> None:
        if capacity < 1 or counters_view is not None and (capacity + 1) * 4 > len(counters_view):
            raise ValueError(f"capacity {capacity} outside 1..{len(counters_view) // 4 - 1}")
        self.engine = engine
        self.arena = arena
        self.capacity = capacity
        self.protect_page = protect_page
        self.lookup_view = lookup_view
        # Lookup-table entries hold a translation's address as an offset from host_base (the
        # monitor's base, which translated code keeps in r15 and adds back).
        self.host_base = host_base
        # --profile: one u32 per block number (0 is the one-shot slot's, which counts nothing)
        self.counters_view, self.counters_base = counters_view, counters_base
        self._blocks = LRU(capacity)
        self._numbers = list(range(capacity, 0, -1))      # free block numbers, lowest last
        self._by_host: dict[int, TranslatedBlock] = {}    # engine address of its code -> block
        self._pages: dict[int, set[TranslatedBlock]] = collections.defaultdict(set)
        self.self_checking: set[int] = set()       # pages not protected: their blocks check themselves
        self._code_page_stores: collections.Counter = collections.Counter()
        # Off while the guest has a data breakpoint armed: the checks' reads of guest code would
        # hit it as the guest's own reads (vmm/modes/breakpoints.py hooks guest memory).
        self.self_checking_allowed = True
        # Guest page -> bitmap of its bytes that translated instructions hold (bit i: byte i),
        # built from _pages when first asked, dropped when a block comes or goes there: a store
        # that misses them (the monitor's pushes and accessed bits next to code) costs one test,
        # not a look at every block of the page (QEMU keeps such a code bitmap per page too).
        self._code_bits: dict[int, int] = {}
        self._sites: dict[int, tuple[TranslatedBlock, int]] = {}
        self.counters = collections.Counter()
        self.events: collections.deque = collections.deque(maxlen=4096)   # (event, guest eip, cause)
        self.use_lookup_table = True      # off: every indirect branch exits (exec tracing)
        self._window_sites: set[int] = set()      # host addresses of INTERRUPT_WINDOW sites
        # Links that leave their linear page (or enter a block spanning two), by each linear
        # page of their target: an invlpg breaks those into its page only, without a look at
        # every link (the Linux boot's 40,000 invlpg each walked 500 of them: 64 s).
        self._cross_page_links: dict[int, set[tuple[TranslatedBlock, int]]] = collections.defaultdict(set)
        # The same for links into blocks whose pages the guest maps global (the caller says so at
        # link time): a CR3 load keeps them, as the CPU keeps global TLB entries; invlpg and a
        # full flush (CR4.PGE, CR0, CR4 changes) break them. A Linux context switch broke and
        # relinked every cross-page link of its kernel (global) code.
        self._global_links: dict[int, set[tuple[TranslatedBlock, int]]] = collections.defaultdict(set)
        # Lookup-table entries installed since the last clear: of blocks in pages the guest maps
        # global (`global_block`, the mode's: a CR3 load keeps those, as the CPU keeps global TLB
        # entries; a Linux context switch emptied the table of its kernel's return targets and
        # each came back through a miss), and of the others; the linear page of each.
        self.global_block: Callable[[TranslatedBlock], bool] = lambda block: False
        self._lookup_installed: set[int] = set()         # entry offsets, not global
        self._global_lookups: set[int] = set()           # entry offsets, global
        self._lookup_pages: dict[int, set[int]] = collections.defaultdict(set)   # guest page -> offsets
        self._lookup_page_of: dict[int, int] = {}        # entry offset -> its guest page
        self._lookup_table_cleared = False       # once cleared whole, only installed entries need it
        self.windows_armed = False
        # --profile: a block's counter goes with its number, which a removal frees. remove()
        # first adds the count to removed_executions and passes (block, count) to on_remove
        # (vmm/audit.py attributes it to the block's instructions), so no execution is lost.
        self.removed_executions = 0
        self.on_remove: Optional[Callable[[TranslatedBlock, int], None]] = None
        self.clear_lookup_table()

    # -- lookup --------------------------------------------------------------------------------
    def find(self, key: BlockKey) -> Optional[TranslatedBlock]:
        self.counters["lookups"] += 1
        block = self._blocks.get(key)
        self.counters["hits" if block is not None else "misses"] += 1
        return block

    def translated(self, key: BlockKey) -> Optional[TranslatedBlock]:
        """The block for `key` if there is one (the monitor's own look: no lookup counted)."""
        return self._blocks.get(key)

    def __len__(self) -> int:
        return len(self._blocks)

    def blocks(self) -> list[TranslatedBlock]:
        """Most recently used first."""
        return list(self._blocks.values())

    def block_at(self, host_address: int) -> Optional[TranslatedBlock]:
        """The block whose code piece holds `host_address`. Pieces start on granules and are at
        most a slot long, and never overlap: the nearest start at or below the address decides."""
        by_host = self._by_host
        start = host_address - (host_address - self.arena.base) % GRANULE
        for candidate in range(start, start - self.arena.slot_size, -GRANULE):
            block = by_host.get(candidate)
            if block is not None:
                return block if host_address < candidate + self.arena.piece_size(candidate) else None
        return None

    def site_at(self, host_address: int) -> Optional[tuple[TranslatedBlock, int]]:
        return self._sites.get(host_address)

    # -- insertion -----------------------------------------------------------------------------
    def add(self, key: BlockKey, guest: GuestBlock, translation: Translation,
            ranges: Optional[tuple[tuple[int, int], ...]] = None) -> TranslatedBlock:
        """ranges: where the block's bytes are in guest-physical memory (default: at their linear
        addresses, paging off)."""
        if len(translation.code) > self.arena.slot_size:
            raise ValueError(f"translation of {guest.address:#x} is {len(translation.code)} bytes, "
                             f"slot is {self.arena.slot_size}")
        while len(self._blocks) >= self.capacity:
            self._evict_least_recently_used()
        host = self.arena.allocate(len(translation.code))
        while host is None:          # the arena is full: room is made as the capacity makes it
            self._evict_least_recently_used()
            host = self.arena.allocate(len(translation.code))
        number = self._numbers.pop()
        block = TranslatedBlock(key, guest, number, host, translation,
                                ranges=byte_ranges(guest, ranges), linear_pages=frozenset(guest.pages))
        code = translation.code
        if translation.counter_fixups:
            code = bytearray(code)
            struct.pack_into("<I", self.counters_view, number * 4, 0)
            for offset in translation.counter_fixups:
                struct.pack_into("<I", code, offset, self.counters_base + number * 4)
        piece = self.arena.piece_size(host)
        stale = not self.arena.never_written(host, piece)     # (the engine may hold a translation there)
        self.arena.write(host, code)
        if stale:
            self.engine.invalidate_code(host, host + piece)
        self._blocks[key] = block
        self._by_host[host] = block
        for index, site in enumerate(translation.exits):
            self._sites[block.host + site.offset] = (block, index)
            if site.kind is ExitKind.INTERRUPT_WINDOW:
                self._window_sites.add(block.host + site.offset)
                if self.windows_armed:
                    self._set_window(block.host + site.offset, True)
        for page in block.frames:
            if not self._pages[page] and page not in self.self_checking:
                self.protect_page(page, True)
            self._pages[page].add(block)
            self._code_bits.pop(page, None)
        if not key.single_step:
            self._install_lookup(block)
        self.counters["blocks_translated"] += 1
        self.counters["instructions_translated"] += len(guest.instructions)
        self.counters["bytes_translated"] += len(translation.code)
        return block

    def _evict_least_recently_used(self) -> None:
        _key, victim = self._blocks.peek_last_item()
        self.remove(victim, "capacity")
        self.counters["evictions"] += 1

    def stop_self_checking(self) -> None:
        """Every page goes back to write protection (the caller flushes the cache: the pages are
        protected again as their blocks come back) and self-checking is off until allowed."""
        self.self_checking_allowed = False
        self.self_checking.clear()
        self._code_page_stores.clear()

    # -- chaining ------------------------------------------------------------------------------
    @staticmethod
    def crosses_pages(source: TranslatedBlock, target: TranslatedBlock) -> bool:
        """Whether a link from `source` to `target` leads into another linear page (or into a
        block spanning two): a change of the guest's mapping may make it lead elsewhere."""
        return len(target.ranges) > 1 or target.guest.linear // PAGE_SIZE != source.guest.linear // PAGE_SIZE

    def link(self, source: TranslatedBlock, index: int, target: TranslatedBlock, global_target: bool = False) -> None:
        """Patch exit `index` of `source` into a direct jump to `target` (`global_target`: the
        guest maps the target's pages global, so a CR3 load keeps the link)."""
        if not (source.alive and target.alive) or index in source.links:
            return
        site = source.site_address(index)
        # A direct jump: Unicorn chains its own blocks through it. (An indirect jump through a
        # cell measured 2-4 times slower: Unicorn 2.1.1 leaves its block cache for those.) A
        # self-checking block that cannot store into itself loops to itself past its check.
        entry = target.host + (target.translation.checked if source is target else 0)
        jump = b"\xE9" + struct.pack("<i", entry - (site + 5))
        self._write_code(site, jump.ljust(EXIT_SLOT_SIZE, b"\x90"))
        self._aim_branch(source, index, entry)
        source.links[index] = target
        target.incoming.add((source, index))
        if self.crosses_pages(source, target):
            links = self._global_links if global_target else self._cross_page_links
            for page in target.linear_pages:
                links[page].add((source, index))
        self.counters["links_made"] += 1

    def unlink(self, source: TranslatedBlock, index: int) -> None:
        """Always unlink before the target's space is reused (DynamoRIO's rule)."""
        target = source.links.pop(index, None)
        if target is None:
            return
        target.incoming.discard((source, index))
        for by_page in (self._cross_page_links, self._global_links):
            for page in target.linear_pages:
                links = by_page.get(page)
                if links is not None:
                    links.discard((source, index))
                    if not links:
                        del by_page[page]
        if source.alive:
            self._write_code(source.site_address(index), UNLINKED_SLOT)
            self._aim_branch(source, index, source.site_address(index))
        self.counters["links_broken"] += 1

    def _aim_branch(self, block: TranslatedBlock, index: int, address: int) -> None:
        """A jcc whose taken side is exit `index` jumps straight to the target once linked
        (one engine block less per taken branch) and back at the slot when unlinked."""
        branch = block.translation.exits[index].branch
        if branch >= 0:
            at = block.host + branch
            self.arena.write(at, struct.pack("<i", address - (at + 4)))
            self.engine.invalidate_code(at, at + 4)

    def predict(self, block: TranslatedBlock, miss: ExitSite, target: int) -> None:
        """Add `target` to an indirect branch's inline cache: the next empty prediction's compare
        gets it, and once all predictions are filled the learning exit
        becomes a nop (later mismatches go to the lookup table without leaving the cache)."""
        if not miss.inline_cache:
            return
        compares, slots = miss.inline_cache
        sites = [block.translation.exits[index] for index in slots]
        predictions = [site.guest_eip for site in sites]
        if target in predictions or 0 not in predictions:
            return
        k = predictions.index(0)
        sites[k].guest_eip = target
        self.arena.write(block.host + compares[k], struct.pack("<I", target))      # cmp ecx, target
        self.engine.invalidate_code(block.host + compares[k], block.host + compares[k] + 4)
        if all(site.guest_eip for site in sites):
            patch_offset, patch, learn_site = miss.learn
            self._write_code(block.host + patch_offset, patch)
            self._sites.pop(block.host + learn_site, None)
        self.counters["predictions_set"] += 1

    def _write_code(self, address: int, data: bytes) -> None:
        self.arena.write(address, data)
        self.engine.invalidate_code(address, address + EXIT_SLOT_SIZE)

    # -- removal -------------------------------------------------------------------------------
    def remove(self, block: TranslatedBlock, cause: str) -> None:
        """Evict or invalidate, in a fixed order: unlink everything chained to it, then what it
        chains to, drop it from the lookup table, the key map, the page index and the site map,
        and only then free its code piece and number for reuse."""
        if not block.alive:
            return
        for source, index in list(block.incoming):
            self.unlink(source, index)
        for index in list(block.links):
            self.unlink(block, index)
        self._remove_lookup(block.guest.address, block.host)
        if self._blocks.get(block.key) is block:
            del self._blocks[block.key]
        for page in block.frames:
            self._pages[page].discard(block)
            self._code_bits.pop(page, None)
            if not self._pages[page]:
                del self._pages[page]
                self.protect_page(page, False)
        for site in block.translation.exits:
            self._sites.pop(block.host + site.offset, None)
            self._window_sites.discard(block.host + site.offset)
        executions = self.executions(block)
        if executions is not None:        # --profile: keep the count before the number is reused
            self.removed_executions += executions
            if self.on_remove is not None:
                self.on_remove(block, executions)
        block.alive = False
        del self._by_host[block.host]
        self.arena.release(block.host)
        self._numbers.append(block.number)
        self.events.append(("evicted" if cause == "capacity" else "invalidated", block.guest.address, cause))
        self.counters["events"] += 1          # the deque keeps the last 4096
        if cause != "capacity":
            self.counters["invalidations"] += 1
            self.counters[f"invalidations_{cause}"] += 1

    def invalidate_range(self, address: int, size: int, cause: str,
                         keep: Optional[TranslatedBlock] = None) -> list[TranslatedBlock]:
        """Remove every block whose guest bytes overlap [address, address+size), but `keep`."""
        removed = []
        for page in range(address // PAGE_SIZE, (address + size - 1) // PAGE_SIZE + 1):
            blocks = self._pages.get(page)
            if not blocks or not self._holds_code(page, address, size):
                continue
            for block in list(blocks):
                if block is not keep and block.covers(address, size):
                    self.remove(block, cause)
                    removed.append(block)
        return removed

    def _holds_code(self, page: int, address: int, size: int) -> bool:
        """Whether translated instructions hold a byte of [address, address+size) on `page`."""
        bits = self._code_bits.get(page)
        if bits is None:
            bits, first = 0, page * PAGE_SIZE
            for block in self._pages[page]:
                for start, end in block.ranges:
                    start, end = max(start, first), min(end, first + PAGE_SIZE)
                    if start < end:
                        bits |= ((1 << (end - start)) - 1) << (start - first)
            self._code_bits[page] = bits
        start = max(address - page * PAGE_SIZE, 0)
        end = min(address + size - page * PAGE_SIZE, PAGE_SIZE)
        return bool(bits >> start & ((1 << (end - start)) - 1))

    def executions(self, block: TranslatedBlock) -> Optional[int]:
        """How often the block ran (--profile), counted by the translated code itself."""
        if not block.translation.counter_fixups:
            return None
        return struct.unpack_from("<I", self.counters_view, block.number * 4)[0]

    def page_has_code(self, page: int) -> bool:
        return bool(self._pages.get(page))

    def write_protected(self, page: int) -> bool:
        """Whether stores into the page fault: it holds code and does not check itself."""
        return bool(self._pages.get(page)) and page not in self.self_checking

    def checks_itself(self, guest: GuestBlock, ranges=None) -> bool:
        """Whether a block decoded there (`ranges` as add() takes them) must check its own bytes:
        one of its pages is self-checking."""
        return bool(self.self_checking) and not self.self_checking.isdisjoint(frames_of(byte_ranges(guest, ranges)))

    def code_page_written(self, page: int) -> None:
        """A guest store faulted on this write-protected page of code (what it overlaps is
        invalidated already). The SELF_CHECK_AFTER-th makes it a self-checking page: its blocks
        go (retranslated with the check when next run) and the protection with them."""
        self._code_page_stores[page] += 1
        if self._code_page_stores[page] < SELF_CHECK_AFTER or page in self.self_checking \
                or not self.self_checking_allowed:
            return
        self.self_checking.add(page)
        self.counters["self_checking_pages"] += 1
        for block in list(self._pages.get(page, ())):
            self.remove(block, "self_check")
        self.protect_page(page, False)

    def mapping_changed(self, page: Optional[int] = None, keep_global: bool = False) -> None:
        """The guest's linear-to-physical mapping may have changed (CR3 load, paging on or off;
        `page`: invlpg of that linear page only): what finds blocks by linear address alone may
        now be wrong. The lookup table forgets those entries and the links into another linear
        page (or into a block spanning two) that may now lead elsewhere are broken; links within
        a page stay, since a block is only entered where its page maps to its code. Blocks stay:
        they are keyed by physical address too. `keep_global`: a CR3 load, which leaves the
        links into global pages."""
        indexes = [self._cross_page_links]
        if page is not None or not keep_global:
            indexes.append(self._global_links)
        for by_page in indexes:
            for linear_page in (list(by_page) if page is None else [page]):
                for source, index in list(by_page.get(linear_page, ())):
                    self.unlink(source, index)
        if page is None:
            self.clear_lookup_table(keep_global)
        else:
            for offset in self._lookup_pages.pop(page, ()):
                self._forget_lookup(offset)
        self.counters["mapping_changes"] += 1

    def flush(self, cause: str) -> None:
        for block in list(self._blocks.values()):
            self.remove(block, cause)

    # -- interrupt windows ---------------------------------------------------------------------
    def arm_interrupt_windows(self, armed: bool) -> None:
        """Turn the sites after every translated sti/popf into exits (armed) or nops. Armed while
        an interrupt waits for the guest's IF: then setting IF natively leaves the cache."""
        if armed == self.windows_armed:
            return
        self.windows_armed = armed
        self.counters["interrupt_windows_armed" if armed else "interrupt_windows_disarmed"] += 1
        for address in self._window_sites:
            self._set_window(address, armed)

    def _set_window(self, address: int, armed: bool) -> None:
        self._write_code(address, bytes([INT3]) + WINDOW_SITE_DISARMED[1:] if armed else WINDOW_SITE_DISARMED)

    # -- the lookup table (probed by translated code) ------------------------------------------
    def clear_lookup_table(self, keep_global: bool = False) -> None:
        """Empty entries hold a tag whose low 16 bits differ from their index: never a hit. Only
        the entries installed since the last clear are reset, unless most of the table is; with
        none installed since, nothing is (a guest switching address spaces in a loop without an
        indirect branch had the whole 512 KiB rewritten at each CR3 load: 20 us a switch).
        `keep_global`: a CR3 load, which leaves the entries of blocks in global pages."""
        if keep_global:
            for offset in self._lookup_installed:
                self._clear_lookup_entry(offset)
                self._lookup_pages[self._lookup_page_of.pop(offset)].discard(offset)
            self._lookup_installed = set()
            return
        installed = self._lookup_installed | self._global_lookups
        if self._lookup_table_cleared and not installed:
            return
        if len(installed) > LOOKUP_ENTRIES // 16 or not self._lookup_table_cleared:
            self.lookup_view[:] = _empty_lookup_table()
        else:
            for offset in installed:
                self._clear_lookup_entry(offset)
        self._lookup_table_cleared = True
        self._lookup_installed, self._global_lookups = set(), set()
        self._lookup_pages = collections.defaultdict(set)
        self._lookup_page_of = {}

    def _clear_lookup_entry(self, offset: int) -> None:
        index = offset // LOOKUP_ENTRY_SIZE
        struct.pack_into("<II", self.lookup_view, offset, index ^ 1, 0)

    def _forget_lookup(self, offset: int) -> None:
        """Clear one installed entry and everything that says where it is."""
        self._clear_lookup_entry(offset)
        self._untrack_lookup(offset)

    def _untrack_lookup(self, offset: int) -> None:
        """Drop what says where an installed entry is (its set and its page)."""
        self._lookup_installed.discard(offset)
        self._global_lookups.discard(offset)
        page = self._lookup_page_of.pop(offset, None)
        if page is not None:
            self._lookup_pages[page].discard(offset)

    def _install_lookup(self, block: TranslatedBlock) -> None:
        """Tagged by the guest EIP (what translated code looks up); the entry belongs to the
        linear page of the block (invlpg of that page clears it). Entries are for the CS base
        running: the monitor clears the table when that changes."""
        if not self.use_lookup_table:
            return
        guest = block.guest.address
        offset = (guest & (LOOKUP_ENTRIES - 1)) * LOOKUP_ENTRY_SIZE
        if offset in self._lookup_page_of:          # another block's entry goes (overwritten below)
            self._untrack_lookup(offset)
        struct.pack_into("<II", self.lookup_view, offset, guest, block.host - self.host_base)
        page = block.guest.linear // PAGE_SIZE
        (self._global_lookups if self.global_block(block) else self._lookup_installed).add(offset)
        self._lookup_pages[page].add(offset)
        self._lookup_page_of[offset] = page
        self.counters["lookup_table_installs"] += 1

    def _remove_lookup(self, guest: int, host: int) -> None:
        offset = (guest & (LOOKUP_ENTRIES - 1)) * LOOKUP_ENTRY_SIZE
        tag, target = struct.unpack_from("<II", self.lookup_view, offset)
        if tag == guest and target == host - self.host_base:
            self._forget_lookup(offset)

    def install_lookup(self, block: TranslatedBlock) -> None:
        """Point the table entry for this block's guest address at it (after a colliding entry
        took the slot)."""
        if not block.key.single_step:
            self._install_lookup(block)
