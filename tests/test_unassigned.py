"""Guest-physical memory with nothing behind it, and the MMIO bus that serves it: QEMU's PC reads
unassigned memory as 0 at every width and drops stores, above RAM, in the PCI hole and in the
range the monitor keeps for itself (0xFF000000-0xFFFBFFFF), in every mode and paging scheme.

The expected console output of each probe guest is what qemu-system-i386 (7.2, -machine pc -m 32,
tools/build_samples.py's command line) printed for the same bytes, recorded on 2026-12-08 with
`python -m tests.test_unassigned`; test_recorded_output_is_qemus re-checks it where QEMU is
installed.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.cli import run_vmm
from tests.guests import EXIT, PUTC, flat_gdt, run_source
from vmm.bus import MmioBus
from vmm.engine import Engine
from vmm.errors import BusError
from vmm.exits import StopReason
from vmm.memory import PhysicalMemory
from vmm.monitor_layout import BOOT_GDT_OFFSET, SCRATCH_OFFSET

COMBINATIONS = [("bt", "shadow"), ("bt", "nested"), ("direct", None), ("trap", "shadow"), ("trap", "nested"),
                ("vt", "shadow"), ("vt", "nested")]
COMBINATION_IDS = [f"{mode}-{paging}" if paging else mode for mode, paging in COMBINATIONS]

# Physical addresses with nothing behind them on QEMU's PC with 32 MiB: right above RAM, the PCI
# hole, under the I/O APIC, the monitor's boot GDT page and scratch page, the shadow pool, and the
# last page below the BIOS ROM.
UNASSIGNED = (0x2000000, 0x10000000, 0xFEBFF000, 0xFF000000, 0xFF0E9024, 0xFFD00000, 0xFFFBFFFC)
RAM_END = 0x2000000
PAGE_TABLE, LINEAR = 0x82000, 0x400000       # paging on: page n of LINEAR maps the n-th probe's frame

HEX = """
print_hex:
    push ecx
    mov ecx, 8
print_hex_next:
    rol eax, 4
    push eax
    and al, 0x0f
    add al, 0x30
    cmp al, 0x39
    jbe print_hex_digit
    add al, 0x27
print_hex_digit:
    call putc
    pop eax
    dec ecx
    jnz print_hex_next
    pop ecx
    ret
"""


def _show(last: bool = False) -> str:
    return f"    call print_hex\n    mov al, {10 if last else 32}\n    call putc\n"


def probe_guest(paging: bool) -> str:
    """Loads its own GDT (the boot GDT is then no longer the guest's), then for each unassigned
    address prints the byte, word and dword read there, the dword read back after a dword store
    and after a byte store; then a dword straddling the end of RAM: read, stored, read back as a
    dword and as its RAM word. With paging, every address is reached through a page of its own
    at LINEAR (and the straddle through two adjacent pages)."""
    s = "    mov esp, 0x90000\n" + flat_gdt(0x7000)
    addresses = list(UNASSIGNED)
    straddle = RAM_END - 2
    if paging:
        s += ("    mov edi, 0x81000\n    mov eax, 3\nidentity:\n    mov dword ptr [edi], eax\n    add eax, 0x1000\n"
              "    add edi, 4\n    cmp edi, 0x82000\n    jne identity\n    mov dword ptr [0x80000], 0x81003\n"
              f"    mov dword ptr [0x80004], {PAGE_TABLE | 3:#x}\n")
        frames = [address & ~0xFFF for address in addresses] + [RAM_END - 0x1000, RAM_END]
        for index, frame in enumerate(frames):
            s += f"    mov dword ptr [{PAGE_TABLE + index * 4:#x}], {frame | 3:#x}\n"
        s += "    mov eax, 0x80000\n    mov cr3, eax\n    mov eax, cr0\n    or eax, 0x80000000\n    mov cr0, eax\n"
        addresses = [LINEAR + index * 0x1000 + (address & 0xFFF) for index, address in enumerate(addresses)]
        straddle = LINEAR + len(UNASSIGNED) * 0x1000 + 0xFFE
    for address in addresses:
        s += f"    mov esi, {address:#x}\n"
        s += "    movzx eax, byte ptr [esi]\n" + _show() + "    movzx eax, word ptr [esi]\n" + _show()
        s += "    mov eax, dword ptr [esi]\n" + _show()
        s += "    mov dword ptr [esi], 0x12345678\n    mov eax, dword ptr [esi]\n" + _show()
        s += "    mov byte ptr [esi], 0x9a\n    mov eax, dword ptr [esi]\n" + _show(last=True)
    s += (f"    mov esi, {straddle:#x}\n    mov word ptr [esi], 0x2211\n    mov eax, dword ptr [esi]\n" + _show()
          + "    mov dword ptr [esi], 0x12345678\n    mov eax, dword ptr [esi]\n" + _show()
          + "    movzx eax, word ptr [esi]\n" + _show(last=True))
    return s + "    mov eax, 0x11\n" + EXIT + PUTC + HEX


_ROW = "00000000 00000000 00000000 00000000 00000000\n"
# What qemu-system-i386 printed (see the module docstring): every unassigned address reads 0 at
# every width and keeps nothing stored; the straddling dword keeps its RAM half only.
QEMU_OUTPUT = {False: _ROW * len(UNASSIGNED) + "00002211 00005678 00005678\n",
               True: _ROW * len(UNASSIGNED) + "00002211 00005678 00005678\n"}
QEMU_ENDING = 0x11


def _cases():
    # (trap and vt with shadow paging once ran a guest whose paging is off on the engine's
    # physical space itself, where the store to the shadow pool at 0xFFD00000 was refused: now
    # the engine walks the flat tables, where the monitor's range is unassigned memory.)
    for (mode, scheme), name in zip(COMBINATIONS, COMBINATION_IDS):
        for paging in (False, True):
            yield pytest.param(mode, scheme, paging, id=f"{name}-paging_{'on' if paging else 'off'}")


@pytest.mark.parametrize("mode, scheme, paging", _cases())
def test_unassigned_memory_reads_zero_and_drops_stores_as_on_qemu(tmp_path, mode, scheme, paging):
    result, out, vm = run_source(tmp_path, probe_guest(paging), mode=mode, paging=scheme, mem_mib=32, timeout=60)
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, QEMU_ENDING), result.message
    assert out.decode() == QEMU_OUTPUT[paging]
    # Every probe: 5 reads and 2 stores; the straddle: 2 reads, and its store as two byte
    # stores (QEMU's -d guest_errors shows the same two: "write at addr 0x2000000, size 1", ...).
    assert vm.memory.mmio.counters()["unassigned"] == {"reads": 5 * len(UNASSIGNED) + 2,
                                                        "writes": 2 * len(UNASSIGNED) + 2}
    # The monitor's own pages behind those addresses are untouched.
    assert b"\x78\x56\x34\x12" not in bytes(vm.memory.monitor_view(SCRATCH_OFFSET, 0x1000))
    assert bytes(vm.memory.monitor_view(BOOT_GDT_OFFSET + 8, 8)) != bytes(8)


@pytest.mark.parametrize("mode, scheme", [("direct", None), ("bt", "shadow"), ("trap", "nested")])
def test_unassigned_stop_ends_the_run_at_the_first_access(tmp_path, mode, scheme):
    source = "    mov eax, 7\n    mov dword ptr [0x3000000], eax\n    mov eax, dword ptr [0x3000000]\n" + EXIT
    result, _out, vm = run_source(tmp_path, source, mode=mode, paging=scheme, mem_mib=32, unassigned="stop")
    assert result.reason is StopReason.MEMORY_FAULT and result.exit_status == 121, result.message
    assert "write of no memory at physical 0x3000000" in result.message
    assert vm.memory.mmio.counters()["unassigned"] == {"reads": 0, "writes": 1}
    # Without the option the guest goes on: the store vanished, the read gave 0.
    result, _out, _vm = run_source(tmp_path, source, mode=mode, paging=scheme, mem_mib=32)
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0)


@pytest.mark.parametrize("mode, scheme", COMBINATIONS, ids=COMBINATION_IDS)
def test_unassigned_stop_names_the_address_behind_a_monitor_area(tmp_path, mode, scheme):
    # With the guest's paging off the monitor's areas lie in the engine's physical space at the
    # addresses the guest names (trap's ring views 0xFF410000, the shadow pool 0xFFD00000): the
    # access there is unassigned memory all the same, and the stop names the guest's own address
    # (trap and vt with shadow paging once stopped at the ring views or the pool for that reason,
    # or, vt, read the monitor's bytes).
    for address in (0xFF410010, 0xFFD00010):
        source = f"    mov eax, 7\n    mov dword ptr [{address:#x}], eax\n" + EXIT
        result, _out, _vm = run_source(tmp_path, source, mode=mode, paging=scheme, unassigned="stop")
        assert result.reason is StopReason.MEMORY_FAULT, result.message
        assert f"write of no memory at physical {address:#x} (+4)" in result.message


def test_guest_errors_trace_and_report_counters(tmp_path):
    guest = tmp_path / "guest.s"
    guest.write_text("    mov eax, dword ptr [0x2000000]\n    mov word ptr [0xff0e9024], 5\n" + EXIT)
    proc = run_vmm("run", str(guest), "-d", "guest_errors", "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    # QEMU's own words for the same accesses (qemu-system-i386 -d guest_errors).
    assert proc.stderr.decode().splitlines() == [
        "Invalid read at addr 0x2000000, size 4, region '(null)', reason: rejected",
        "Invalid write at addr 0xFF0E9024, size 2, region '(null)', reason: rejected"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counters"]["mmio"] == {"apic": {"reads": 0, "writes": 0}, "hpet": {"reads": 0, "writes": 0},
                                          "ioapic": {"reads": 0, "writes": 0}, "unassigned": {"reads": 1, "writes": 1}}
    proc = run_vmm("run", str(guest), "--unassigned", "never")
    assert proc.returncode == 2 and "--unassigned" in proc.stderr.decode() and b"Traceback" not in proc.stderr


def test_fetch_from_unassigned_memory_stops_as_a_memory_fault(tmp_path, mode):
    # QEMU executes the zeros it reads there (add [eax], al, one after another, for ever); the
    # engine cannot fetch from MMIO, so the monitor stops with a clear line instead.
    result, _out, _vm = run_source(tmp_path, "    mov eax, 0x2000000\n    jmp eax\n", mode=mode, mem_mib=32)
    assert result.reason is StopReason.MEMORY_FAULT, result.message
    assert "fetch" in result.message and "0x2000000" in result.message


# -- the bus itself ---------------------------------------------------------------------------------
class Registers:
    """A device of four byte registers that remembers every access."""
    name = "regs"

    def __init__(self):
        self.values = bytearray(4)
        self.accesses = []

    def io_read(self, offset, size):
        self.accesses.append(("read", offset, size))
        return int.from_bytes(self.values[offset:offset + size], "little")

    def io_write(self, offset, size, value):
        self.accesses.append(("write", offset, size, value))
        self.values[offset:offset + size] = value.to_bytes(size, "little")


def test_mmio_bus_dispatches_at_offsets_and_splits_accesses_across_a_boundary():
    bus, device = MmioBus(), Registers()
    bus.register(0xFEC00000, 4, device)
    bus.write(0xFEC00001, 2, 0xBBAA)
    assert device.accesses == [("write", 1, 2, 0xBBAA)]
    assert bus.read(0xFEC00000, 4) == 0x00BBAA00
    # A dword from the device's last byte on: one byte each, the rest unassigned (0, dropped).
    assert bus.read(0xFEC00003, 4) == 0
    bus.write(0xFEBFFFFE, 4, 0x44332211)
    assert device.values == bytearray(b"\x33\x44\xbb\x00")
    assert bus.counters() == {"regs": {"reads": 2, "writes": 3}, "unassigned": {"reads": 3, "writes": 2}}


def test_mmio_bus_rejects_overlaps_with_devices_and_reserved_ranges():
    bus = MmioBus()
    bus.reserve(0, 0x2000000, "guest RAM")
    bus.register(0xFEC00000, 0x1000, Registers())
    with pytest.raises(BusError, match="overlaps regs"):
        bus.register(0xFEC00800, 0x1000, Registers())
    with pytest.raises(BusError, match="overlaps guest RAM"):
        bus.register(0x1FFF000, 0x2000, Registers())
    with pytest.raises(BusError, match="outside the physical space"):
        bus.register(0xFFFFF000, 0x2000, Registers())


def test_ram_accesses_call_nothing_and_device_accesses_reach_the_device():
    # A loop of 1000 loads and stores to RAM, then one store to a device: the device's two
    # methods are the only Python called (the engine dispatches MMIO itself).
    engine = Engine()
    memory = PhysicalMemory(engine, 4)
    device = Registers()
    memory.mmio.register(0xFEE00000, 4, device)
    memory.serve_unassigned(True, lambda: 0)
    code = bytes.fromhex("b9e8030000"           # mov ecx, 1000
                         "8b0500500000"         # again: mov eax, [0x5000]
                         "a300500000"           # mov [0x5000], eax
                         "49" "75f3"            # dec ecx; jnz again
                         "c70500 00e0fe 78563412".replace(" ", "")     # mov dword [0xfee00000], 0x12345678
                         + "f4")
    memory.write(0x1000, code)
    engine.run(0x1000, memory.until_address)
    assert device.accesses == [("write", 0, 4, 0x12345678)]
    assert memory.mmio.counters()["unassigned"] == {"reads": 0, "writes": 0}


def test_recorded_output_is_qemus():
    if shutil.which("qemu-system-i386") is None:
        pytest.skip("qemu-system-i386 is not installed")
    from tools.fuzzlib.qemu import boot_under_qemu
    for paging in (False, True):
        proc = boot_under_qemu(probe_guest(paging))
        assert (proc.stdout.decode(), proc.returncode) == (QEMU_OUTPUT[paging], (QEMU_ENDING << 1) | 1)


if __name__ == "__main__":
    from tools.fuzzlib.qemu import boot_under_qemu
    for paging in (False, True):
        proc = boot_under_qemu(probe_guest(paging))
        print(f"paging={paging} status={proc.returncode}\n{proc.stdout.decode()}")
