"""The physical-to-machine map: machines draw RAM frames from a host frame pool, one shared pool
keeps machines apart, a fragmented pool gives a machine several extents, the report shows the map."""

import struct

import pytest

from tests.guests import EXIT
from vmm.builder import MachineConfig, build_machine
from vmm.console import BufferConsole
from vmm.engine import Engine
from vmm.exits import StopReason
from vmm.frames import FRAME_SIZE, Extent, FramePool, PhysToMachine, PoolExhausted
from vmm.memory import MIB, PhysicalMemory, UnbackedAccess
from vmm.x86 import PAGE_SIZE
from vmm.report import build_report

@pytest.fixture(params=["direct", "bt", "trap", "vt"])
def mode(request):
    """Every execution mode: RAM backing is below all of them."""
    return request.param


MEM_MIB = 2
RAM_PAGES = MEM_MIB * MIB // PAGE_SIZE
PAGES = (10, 11, 12)


def _value(tag: int, pfn: int, where: int) -> int:
    return (tag << 24) | (pfn << 12) | where


def isolation_guest(tag: int) -> str:
    """Read guest-physical pages 10-12 (EDI: the OR of what was there), then store values naming
    `tag` at the start and end of each page and load them back (EBX: their sum)."""
    lines = ["    mov esp, 0x90000", "    xor edi, edi", "    xor ebx, ebx"]
    for pfn in PAGES:
        for where in (0, PAGE_SIZE - 4):
            lines.append(f"    or edi, dword ptr [{pfn * PAGE_SIZE + where:#x}]")
    for pfn in PAGES:
        for where in (0, PAGE_SIZE - 4):
            lines.append(f"    mov dword ptr [{pfn * PAGE_SIZE + where:#x}], {_value(tag, pfn, where):#x}")
    for pfn in PAGES:
        for where in (0, PAGE_SIZE - 4):
            lines.append(f"    add ebx, dword ptr [{pfn * PAGE_SIZE + where:#x}]")
    return "\n".join(lines) + "\n    mov eax, 0\n" + EXIT


def _sum(tag: int) -> int:
    return sum(_value(tag, pfn, where) for pfn in PAGES for where in (0, PAGE_SIZE - 4)) & 0xFFFFFFFF


def build(tmp_path, name: str, source: str, mode: str, pool: FramePool):
    image = tmp_path / f"{name}.s"
    image.write_text(source)
    vm, _image = build_machine(MachineConfig(image=str(image), mode=mode, mem_mib=MEM_MIB), BufferConsole(), pool)
    return vm


def assert_holds_own_values(vm, pool: FramePool, tag: int) -> None:
    for pfn in PAGES:
        frame_bytes = pool.view(vm.memory.p2m.lookup(pfn))
        for where in (0, PAGE_SIZE - 4):
            expected = struct.pack("<I", _value(tag, pfn, where))
            assert vm.memory.read(pfn * PAGE_SIZE + where, 4) == expected
            assert bytes(frame_bytes[where:where + 4]) == expected, f"pool frame of pfn {pfn}"


def test_two_machines_on_one_pool_get_different_frames_and_keep_their_own_values(tmp_path, mode):
    pool = FramePool(3 * RAM_PAGES)
    a = build(tmp_path, "a", isolation_guest(0xA1), mode, pool)
    b = build(tmp_path, "b", isolation_guest(0xB2), mode, pool)
    assert pool.frames_free == RAM_PAGES
    frames_a = {a.memory.p2m.lookup(pfn) for pfn in range(RAM_PAGES)}
    frames_b = {b.memory.p2m.lookup(pfn) for pfn in range(RAM_PAGES)}
    assert len(frames_a) == len(frames_b) == RAM_PAGES and not frames_a & frames_b
    for pfn in PAGES:
        assert a.memory.p2m.lookup(pfn) != b.memory.p2m.lookup(pfn)

    for vm, tag in ((a, 0xA1), (b, 0xB2)):
        result = vm.run()
        assert result.reason is StopReason.DEBUG_EXIT, result.message
        assert result.registers["edi"] == 0, "fresh frames read as zero"
        assert result.registers["ebx"] == _sum(tag), "the guest read back its own values"
    assert_holds_own_values(a, pool, 0xA1)         # b's run left a's frames alone
    assert_holds_own_values(b, pool, 0xB2)

    # Freeing a's frames returns them to the pool, discarded; b keeps its own.
    freed = a.memory.p2m.machine_extents()
    a.memory.release()
    assert pool.frames_free == 2 * RAM_PAGES
    free = pool.free_extents()
    assert all(any(f.frame <= e.frame and e.end <= f.end for f in free) for e in freed)
    assert bytes(pool.view(freed[0].frame, freed[0].pages)) == bytes(freed[0].pages * FRAME_SIZE)
    with pytest.raises(UnbackedAccess):
        a.memory.read(10 * PAGE_SIZE, 4)
    assert_holds_own_values(b, pool, 0xB2)

    # The next machine gets those frames (first fit) and finds them zeroed.
    c = build(tmp_path, "c", isolation_guest(0xC3), mode, pool)
    assert c.memory.p2m.machine_extents() == freed
    result = c.run()
    assert (result.registers["edi"], result.registers["ebx"]) == (0, _sum(0xC3))
    assert_holds_own_values(b, pool, 0xB2)


def fragmented_pool() -> FramePool:
    """A pool whose free list is holes of 11 and 246 frames, then 255 frames at the end: a
    machine of 512 pages gets guest pfns 0-10, 11-256 and 257-511 from three extents."""
    pool = FramePool(11 + 1 + 246 + 1 + 255)
    hole1, _kept1, hole2, _kept2 = (pool.allocate(n) for n in (11, 1, 246, 1))
    pool.release(hole1 + hole2)
    return pool


SPAN_PATTERN = bytes(range(0x40, 0x50))             # the monitor writes it over 0xAFF8-0xB007
SPAN_VALUE = 0xA1B2C3D4


def boundary_guest() -> str:
    """Code that crosses the extent boundary at 0x101000 (a nop slide, then an instruction whose
    bytes straddle it), a load of the monitor's bytes across 0xB000, a store and load across it."""
    return f"""
    .space 0xffe, 0x90
    mov eax, 0x11223344
    mov esi, dword ptr [0xaffc]
    mov dword ptr [0xaffe], {SPAN_VALUE:#x}
    mov ebp, dword ptr [0xaffe]
    mov ecx, eax
    mov eax, 0
""" + EXIT


def test_a_fragmented_pool_gives_several_extents_and_the_guest_runs_across_them(tmp_path, mode):
    pool = fragmented_pool()
    vm = build(tmp_path, "frag", boundary_guest(), mode, pool)
    p2m = vm.memory.p2m
    assert p2m.extents == [(0, 0, 11), (11, 12, 246), (257, 259, 255)]
    assert [p2m.lookup(pfn) for pfn in (10, 11, 12, 256, 257)] == [10, 12, 13, 257, 259]
    assert pool.frames_free == 0

    vm.memory.write(0xAFF8, SPAN_PATTERN)           # a monitor write across the boundary
    assert vm.memory.read(0xAFF8, 16) == SPAN_PATTERN
    assert bytes(pool.view(10)[-8:]) + bytes(pool.view(12)[:8]) == SPAN_PATTERN
    result = vm.run()
    assert result.reason is StopReason.DEBUG_EXIT, result.message
    assert result.registers["ecx"] == 0x11223344, "the instruction across 0x101000 ran"
    assert result.registers["esi"] == struct.unpack("<I", SPAN_PATTERN[4:8])[0]
    assert result.registers["ebp"] == SPAN_VALUE
    expected = SPAN_PATTERN[:6] + struct.pack("<I", SPAN_VALUE) + SPAN_PATTERN[10:]
    assert vm.memory.read(0xAFF8, 16) == expected
    assert bytes(pool.view(10)[-8:]) + bytes(pool.view(12)[:8]) == expected
    # The instruction across 0x101000: the end of one extent and the start of the next.
    code = vm.memory.read_code(0x100FFE, 5)
    assert code == bytes(pool.view(257)[-2:]) + bytes(pool.view(259)[:3]) == b"\xb8\x44\x33\x22\x11"


def test_the_report_shows_the_map_and_the_pool(tmp_path):
    pool = fragmented_pool()
    source = tmp_path / "frag.s"
    source.write_text(boundary_guest())
    config = MachineConfig(image=str(source), mode="direct", mem_mib=MEM_MIB)
    vm, image = build_machine(config, BufferConsole(), pool)
    report = build_report(config, image, vm, vm.run())
    assert report["exit"]["reason"] == "debug_exit" and report["memory_mib"] == MEM_MIB
    assert report["physical_to_machine"] == [
        {"guest_pfn": 0, "machine_frame": 0, "pages": 11},
        {"guest_pfn": 11, "machine_frame": 12, "pages": 246},
        {"guest_pfn": 257, "machine_frame": 259, "pages": 255}]
    assert report["frame_pool"]["frames_total"] == 514 and report["frame_pool"]["frames_free"] == 0


def test_a_machine_without_a_pool_gets_a_private_one_of_its_size(tmp_path):
    one = PhysicalMemory(Engine(), MEM_MIB)
    two = PhysicalMemory(Engine(), MEM_MIB)
    assert one.pool is not two.pool
    assert one.p2m.extents == two.p2m.extents == [(0, 0, RAM_PAGES)]
    assert one.pool.frames_total == RAM_PAGES and one.pool.frames_free == 0
    one.write(10 * PAGE_SIZE, b"one")
    assert two.read(10 * PAGE_SIZE, 3) == bytes(3)


def test_pool_allocation_is_first_fit_and_release_merges():
    pool = FramePool(100)
    a, b, c = pool.allocate(10), pool.allocate(20), pool.allocate(30)
    assert (a, b, c) == ([Extent(0, 10)], [Extent(10, 20)], [Extent(30, 30)])
    pool.release(a + c)
    assert pool.free_extents() == [Extent(0, 10), Extent(30, 70)]
    assert pool.allocate(15) == [Extent(0, 10), Extent(30, 5)]
    with pytest.raises(ValueError):
        pool.release([Extent(40, 2)])                # never allocated
    with pytest.raises(PoolExhausted):
        pool.allocate(66)
    assert pool.frames_free == 65                    # all or nothing
    pool.release(b)
    pool.release([Extent(0, 10), Extent(30, 5)])
    assert pool.free_extents() == [Extent(0, 100)] and pool.frames_free == 100
    with pytest.raises(ValueError):
        pool.release([Extent(0, 1)])                 # a double free


def test_extents_never_cross_host_mappings():
    pool = FramePool(10, arena_frames=4)             # arenas of 4, 4 and 2 frames
    assert pool.counters()["arenas"] == 3
    extents = pool.allocate(9)
    assert extents == [Extent(0, 4), Extent(4, 4), Extent(8, 1)]
    pool.release(extents)
    assert pool.free_extents() == [Extent(0, 4), Extent(4, 4), Extent(8, 2)]
    addresses = [pool.host_address(frame) for frame in range(10)]
    assert all(address % FRAME_SIZE == 0 for address in addresses)
    pool.view(0)[:4] = b"host"
    assert bytes(pool.view(0)[:4]) == b"host"
    with pytest.raises(ValueError):
        pool.view(3, 2)                              # across two mappings


def test_a_machine_on_a_pool_of_several_mappings_runs(tmp_path, mode):
    pool = FramePool(RAM_PAGES, arena_frames=RAM_PAGES // 4)
    vm = build(tmp_path, "arenas", boundary_guest(), mode, pool)
    assert len(vm.memory.p2m.extents) == 4
    vm.memory.write(0xAFF8, SPAN_PATTERN)
    result = vm.run()
    assert (result.registers["ecx"], result.registers["ebp"]) == (0x11223344, SPAN_VALUE)


def test_the_p2m_map_is_plain_ints_and_rebuilds():
    p2m = PhysToMachine.from_allocation(0, [Extent(7, 3), Extent(20, 2)])
    assert p2m.extents == [(0, 7, 3), (3, 20, 2)] and p2m.pages == 5
    assert PhysToMachine(p2m.extents) == p2m
    assert [p2m.lookup(pfn) for pfn in range(5)] == [7, 8, 9, 20, 21]
    with pytest.raises(KeyError):
        p2m.lookup(5)
    with pytest.raises(ValueError):
        PhysToMachine([(0, 0, 4), (3, 10, 1)])


def test_a_machine_that_does_not_fit_the_pool_takes_nothing(tmp_path):
    pool = FramePool(RAM_PAGES - 1)
    with pytest.raises(PoolExhausted):
        build(tmp_path, "big", "hlt\n", "direct", pool)
    assert pool.frames_free == RAM_PAGES - 1


def test_a_machine_whose_image_fails_gives_its_frames_back(tmp_path):
    pool = FramePool(RAM_PAGES)
    image = tmp_path / "bad.s"
    image.write_text("this is not an instruction\n")
    with pytest.raises(Exception):
        build_machine(MachineConfig(image=str(image), mem_mib=MEM_MIB), BufferConsole(), pool)
    assert pool.frames_free == RAM_PAGES
