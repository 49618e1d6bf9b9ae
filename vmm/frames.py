"""Host memory as machine frames: the frame pool machines draw RAM from, and each machine's physical-to-machine map."""

from __future__ import annotations

import bisect
import ctypes
import mmap
import threading
from dataclasses import dataclass
from typing import Iterable, Optional

from vmm.errors import ConfigError
from vmm.x86 import PAGE_SIZE

FRAME_SIZE = PAGE_SIZE
FRAME_SHIFT = 12


class PoolExhausted(ConfigError):
    """The pool has fewer free frames than a machine asks for."""


@dataclass(frozen=True)
class Extent:
    """Machine frames [frame, frame + pages) of one pool, contiguous in host memory."""
    frame: int
    pages: int

    @property
    def end(self) -> int:
        return self.frame + self.pages


@dataclass
class _Arena:
    """One anonymous host mapping: machine frames [first, first + frames)."""
    first: int
    frames: int
    buffer: mmap.mmap
    anchor: ctypes.c_ubyte            # pins the mapping (no close or resize while it exists)
    address: int                      # host address of frame `first`
    view: memoryview


class FramePool:
    """Host memory handed out in extents of whole 4 KiB frames; machine frame number = index in
    the pool. The memory is anonymous private mmaps, one per arena (`arena_frames` each, or one
    for the whole pool), pinned with ctypes so their host addresses are stable for mem_map_ptr;
    a frame costs nothing until first touched. Allocation is first fit over the free extents
    (lowest frame first), so a fragmented pool gives a machine several extents. Released
    frames are discarded (MADV_DONTNEED): they read as zero when handed out again, and their
    host memory goes back to the host. Machines share a pool only if they are given the same one."""

    def __init__(self, frames: int, *, arena_frames: Optional[int] = None) -> None:
        if frames <= 0:
            raise ConfigError(f"a frame pool needs at least one frame, got {frames}")
        self._lock = threading.Lock()
        self._arenas: list[_Arena] = []
        self._arena_firsts: list[int] = []
        self._free: list[list[int]] = []           # sorted [frame, pages], never across arenas
        self._frames_free = 0
        arena_frames = frames if arena_frames is None else arena_frames
        if arena_frames <= 0:
            raise ConfigError(f"arena_frames must be positive, got {arena_frames}")
        while frames:
            step = min(frames, arena_frames)
            self.add_arena(step)
            frames -= step

    @classmethod
    def for_bytes(cls, size: int, **options) -> "FramePool":
        """A pool just large enough for `size` bytes."""
        return cls(-(-size // FRAME_SIZE), **options)

    # -- host memory --------------------------------------------------------------------------------
    def add_arena(self, frames: int) -> Extent:
        """Grow the pool by `frames` frames of new host memory; returns them as an extent."""
        if frames <= 0:
            raise ConfigError(f"an arena needs at least one frame, got {frames}")
        buffer = mmap.mmap(-1, frames * FRAME_SIZE, flags=mmap.MAP_PRIVATE)
        anchor = ctypes.c_ubyte.from_buffer(buffer)
        with self._lock:
            first = self.frames_total
            self._arenas.append(_Arena(first, frames, buffer, anchor, ctypes.addressof(anchor), memoryview(buffer)))
            self._arena_firsts.append(first)
            self._free.append([first, frames])
            self._frames_free += frames
        return Extent(first, frames)

    def _arena(self, frame: int, pages: int = 1) -> _Arena:
        index = bisect.bisect_right(self._arena_firsts, frame) - 1
        arena = self._arenas[index] if index >= 0 else None
        if arena is None or frame < 0 or frame + pages > arena.first + arena.frames:
            raise ValueError(f"frames {frame:#x}+{pages} are not inside one arena of the pool")
        return arena

    def host_address(self, frame: int) -> int:
        """The host address of machine frame `frame` (stable for the pool's life)."""
        arena = self._arena(frame)
        return arena.address + (frame - arena.first) * FRAME_SIZE

    def view(self, frame: int, pages: int = 1) -> memoryview:
        """The host bytes of frames [frame, frame + pages), which must lie in one arena (an
        extent from allocate always does)."""
        arena = self._arena(frame, pages)
        start = (frame - arena.first) * FRAME_SIZE
        return arena.view[start:start + pages * FRAME_SIZE]

    # -- allocation ---------------------------------------------------------------------------------
    @property
    def frames_total(self) -> int:
        return sum(arena.frames for arena in self._arenas)

    @property
    def frames_free(self) -> int:
        return self._frames_free

    def free_extents(self) -> list[Extent]:
        with self._lock:
            return [Extent(frame, pages) for frame, pages in self._free]

    def allocate(self, pages: int) -> list[Extent]:
        """`pages` frames as extents in ascending frame order, first fit: the lowest free extents
        are used up before later ones are cut. All or nothing: PoolExhausted if they do not fit."""
        if pages <= 0:
            raise ValueError(f"allocate needs a positive number of pages, got {pages}")
        with self._lock:
            if pages > self._frames_free:
                raise PoolExhausted(f"frame pool exhausted: {pages} frames wanted, {self._frames_free} free "
                                    f"of {self.frames_total}")
            taken: list[Extent] = []
            wanted = pages
            while wanted:
                free = self._free[0]
                step = min(wanted, free[1])
                taken.append(Extent(free[0], step))
                if step == free[1]:
                    del self._free[0]
                else:
                    free[0] += step
                    free[1] -= step
                wanted -= step
            self._frames_free -= pages
            return taken

    def release(self, extents: Iterable[Extent]) -> None:
        """Give frames back: discarded (zero when next handed out) and merged with free
        neighbours in the same arena. ValueError for frames that are already free."""
        extents = sorted(extents, key=lambda e: e.frame)
        with self._lock:
            for extent, following in zip(extents, extents[1:] + [None]):
                self._arena(extent.frame, extent.pages)
                if extent.pages <= 0 or (following and extent.end > following.frame) or self._is_free(extent):
                    raise ValueError(f"frames {extent.frame:#x}+{extent.pages} are not allocated once")
            for extent in extents:
                self._discard(extent)
                self._insert_free(extent)
                self._frames_free += extent.pages

    def _is_free(self, extent: Extent) -> bool:
        """Whether any frame of `extent` is in the free list."""
        index = bisect.bisect_left(self._free, [extent.frame, 0])
        before = self._free[index - 1] if index else None
        after = self._free[index] if index < len(self._free) else None
        return bool((before and before[0] + before[1] > extent.frame) or (after and extent.end > after[0]))

    def _discard(self, extent: Extent) -> None:
        arena = self._arena(extent.frame, extent.pages)
        start, size = (extent.frame - arena.first) * FRAME_SIZE, extent.pages * FRAME_SIZE
        if hasattr(mmap, "MADV_DONTNEED"):
            arena.buffer.madvise(mmap.MADV_DONTNEED, start, size)     # private anonymous: zero-fill again
        else:
            ctypes.memset(arena.address + start, 0, size)

    def _insert_free(self, extent: Extent) -> None:
        free = self._free
        index = bisect.bisect_left(free, [extent.frame, 0])
        before = free[index - 1] if index else None
        after = free[index] if index < len(free) else None
        boundary = self._arena_firsts
        if before and before[0] + before[1] == extent.frame and extent.frame not in boundary:
            before[1] += extent.pages
            merged = before
        else:
            merged = [extent.frame, extent.pages]
            free.insert(index, merged)
            index += 1
        if after and merged[0] + merged[1] == after[0] and after[0] not in boundary:
            merged[1] += after[1]
            del free[index]

    def counters(self) -> dict:
        with self._lock:
            return {"frame_size": FRAME_SIZE, "frames_total": self.frames_total, "frames_free": self._frames_free,
                    "arenas": len(self._arenas), "free_extents": len(self._free)}


class PhysToMachine:
    """The P2M map of one machine: guest page frame number -> machine frame of its pool, as
    extents (guest_pfn, machine_frame, pages) in guest order. Plain ints throughout, so the map
    can be stored with a snapshot and rebuilt (PhysToMachine(extents)) on the other side of a migration."""

    def __init__(self, extents: Iterable[tuple[int, int, int]]) -> None:
        self._extents = sorted((int(g), int(m), int(n)) for g, m, n in extents)
        for (g, _m, n), (next_g, _nm, _nn) in zip(self._extents, self._extents[1:]):
            if g + n > next_g:
                raise ValueError(f"P2M extents overlap at guest pfn {next_g:#x}")
        if any(n <= 0 for _g, _m, n in self._extents):
            raise ValueError("P2M extents need a positive page count")
        self._starts = [g for g, _m, _n in self._extents]

    @classmethod
    def from_allocation(cls, guest_pfn: int, allocation: Iterable[Extent]) -> "PhysToMachine":
        """Guest frames from `guest_pfn` on, backed in order by the extents of a pool allocation."""
        extents = []
        for extent in allocation:
            extents.append((guest_pfn, extent.frame, extent.pages))
            guest_pfn += extent.pages
        return cls(extents)

    @property
    def extents(self) -> list[tuple[int, int, int]]:
        return list(self._extents)

    @property
    def pages(self) -> int:
        return sum(n for _g, _m, n in self._extents)

    def machine_extents(self) -> list[Extent]:
        """The pool extents behind the map (what to release)."""
        return [Extent(m, n) for _g, m, n in self._extents]

    def lookup(self, guest_pfn: int) -> int:
        """The machine frame behind guest frame `guest_pfn`; KeyError if none."""
        index = bisect.bisect_right(self._starts, guest_pfn) - 1
        if index >= 0:
            g, m, n = self._extents[index]
            if guest_pfn < g + n:
                return m + guest_pfn - g
        raise KeyError(f"guest pfn {guest_pfn:#x} is not in the P2M map")

    def runs(self, guest_pfn: int, pages: int):
        """(guest pfn, machine frame, pages) pieces covering guest frames [guest_pfn, guest_pfn +
        pages), each machine-contiguous inside one extent, in order; KeyError at the first frame
        the map does not hold."""
        while pages > 0:
            index = bisect.bisect_right(self._starts, guest_pfn) - 1
            if index < 0 or guest_pfn >= self._extents[index][0] + self._extents[index][2]:
                raise KeyError(f"guest pfn {guest_pfn:#x} is not in the P2M map")
            g, m, n = self._extents[index]
            step = min(pages, g + n - guest_pfn)
            yield guest_pfn, m + guest_pfn - g, step
            guest_pfn, pages = guest_pfn + step, pages - step

    def as_json(self) -> list[dict]:
        return [{"guest_pfn": g, "machine_frame": m, "pages": n} for g, m, n in self._extents]

    def __eq__(self, other) -> bool:
        return isinstance(other, PhysToMachine) and self._extents == other._extents

    def __repr__(self) -> str:
        return f"PhysToMachine({self._extents!r})"
