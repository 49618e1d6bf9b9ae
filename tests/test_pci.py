"""PCI configuration mechanism #1 and bus 0 (vmm/devices/pci.py) against qemu-system-i386 7.2's pc
machine: a guest that scans bus 0 and dumps the configuration space of every function it finds,
byte for byte as QEMU showed it to the same guest (recorded below, re-checked by the needs_qemu
tests), the register quirks of CONFIG_ADDRESS, CONFIG_DATA and the bus-master block measured
the same way, and unit tests of the write rules (masks, write-1-to-clear, BAR sizing and moving)."""

from __future__ import annotations

import subprocess

import pytest

from tests.guests import CFG_READ, MODES, needs_qemu
from tests.samples import build_samples as bs
from tests.test_ide import LIB
from vmm.bus import PortBus
from vmm.devices.pci import (CONFIG_DATA, IDE_BMDMA_SIZE, IDE_DEVFN, PciHost, host_bridge, ide_function,
                             isa_bridge)

LOAD = 0x100000
EXIT0 = "    mov al, 0\n    mov dx, 0xf4\n    out dx, al\n    cli\n    hlt\n"

# Every function of bus 0 (device 0-31, function 0-7) whose vendor ID is not 0xFFFF: its
# CONFIG_ADDRESS, then its 256 bytes as 64 dwords, 8 a line.
SCAN = """
    mov ebx, 0x80000000
scan:
    mov eax, ebx
    call cfg_read
    cmp ax, 0xffff
    je next
    mov eax, ebx
    call hex32
    call nl
    mov esi, 0
dump:
    mov eax, ebx
    or eax, esi
    call cfg_read
    call hex32
    call space
    add esi, 4
    test esi, 31
    jnz dump
    call nl
    cmp esi, 256
    jne dump
next:
    add ebx, 0x100
    cmp ebx, 0x80010000
    jne scan
"""

# What qemu-system-i386 7.2 (-machine pc -m 32 -nodefaults, SeaBIOS 1.16, an IDE disk at
# index 0) shows the scan. It also has 00:01.3, the PIIX4 power-management function (ACPI PM
# I/O at 0x600, SMBus at 0x700), which the monitor does not present (the ACPI PM timer is the
# firmware tables' work, and nothing here probes the function); with -vga std, QEMU adds
# 00:02.0, the standard VGA (1234:1111), which the monitor's ISA-only VGA text has no function
# for either. Everything else matches byte for byte.
QEMU_FUNCTIONS = """80000000
12378086 00000103 06000002 00000000 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 11001AF4 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00000000 04000000 11111000 33111111 
00000000 00000000 00000000 00000000 000A0000 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
80000800
70008086 02000103 06010000 00800000 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 11001AF4 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 0003004D 00000000 00000000 00000000 00000000 
0B0B0A0A 00000000 00000200 00000000 00000080 0C0C0000 00000002 00000000 
00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
00000008 00000000 0000000F 00000000 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
80000900
70108086 02800103 01018000 00000000 00000000 00000000 00000000 00000000 
0000C001 00000000 00000000 11001AF4 00000000 00000000 00000000 00000000 
80008000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
"""
QEMU_PM_FUNCTION = """80000B00
71138086 02800103 06800003 00000000 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 11001AF4 00000000 00000000 00000000 00000109 
00000601 00000000 00000000 00000000 00000000 00000000 02000000 10000000 
60000000 08000000 00000000 00000000 00000000 00000000 00000000 00000000 
00000001 00000000 00000000 00000000 00000701 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00090000 00000000 00000000 00000000 
00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
"""

# The registers' quirks, each line as QEMU printed it: CONFIG_ADDRESS read back whole from
# 0xCF8 and 0xCFA at byte and word width (QEMU's read ignores the offset; a dword at 0xCFA is
# unaligned: 0), a word write there ignored; CONFIG_DATA at unaligned offsets (read 0), at aligned ones, of the IDE's ID dword;
# the bus-master block (BAR4 at 0xC000, SeaBIOS's): bytes 0-15 (1 and 3 read 0xFF), a word and
# a dword at the command register (all ones), the PRD pointer (bits 1-0 read 0), unaligned
# accesses inside a register (read 0, writes dropped), aligned partial ones, and a dword read
# at 0xCF9 (the reset control register, QEMU: 0).
QUIRKS = """
    mov dx, 0xcf8
    mov eax, 0x80000924
    out dx, eax
    in al, dx
    call hex8
    call space
    mov dx, 0xcfa
    in al, dx
    call hex8
    call space
    mov dx, 0xcf8
    in ax, dx
    call hex16
    call space
    mov dx, 0xcfa
    in ax, dx
    call hex16
    call space
    in eax, dx
    call hex32
    call space
    mov ax, 0x1234
    mov dx, 0xcf8
    out dx, ax
    in eax, dx
    call hex32
    call nl
    mov eax, 0x80000900
    out dx, eax
    mov dx, 0xcfd
    in ax, dx
    call hex16
    call space
    in al, dx
    call hex8
    call space
    mov dx, 0xcfe
    in ax, dx
    call hex16
    call space
    in eax, dx
    call hex32
    call space
    mov dx, 0xcfc
    in ax, dx
    call hex16
    call space
    mov dx, 0xcff
    in eax, dx
    call hex32
    call space
    mov dx, 0xcf8
    mov eax, 0x00000900
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    call hex32
    call space
    mov dx, 0xcf8
    mov eax, 0x80010000
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    call hex32
    call space
    mov dx, 0xcf8
    mov eax, 0x80001000
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    call hex32
    call nl
    mov dx, 0xc000
bm:
    in al, dx
    call hex8
    call space
    inc dx
    cmp dx, 0xc010
    jne bm
    mov dx, 0xc000
    in ax, dx
    call hex16
    call space
    in eax, dx
    call hex32
    call space
    mov dx, 0xc004
    in eax, dx
    call hex32
    call space
    mov eax, 0xffffffff
    out dx, eax
    in eax, dx
    call hex32
    call space
    mov eax, 0x12345678
    out dx, eax
    mov dx, 0xc002
    in ax, dx
    call hex16
    call space
    mov dx, 0xc003
    in ax, dx
    call hex16
    call space
    mov dx, 0xc006
    in ax, dx
    call hex16
    call space
    mov dx, 0xc005
    in eax, dx
    call hex32
    call space
    in al, dx
    call hex8
    call space
    mov ax, 0xabcd
    out dx, ax
    mov dx, 0xc004
    in eax, dx
    call hex32
    call space
    mov dx, 0xc006
    mov ax, 0xabcd
    out dx, ax
    mov dx, 0xc004
    in eax, dx
    call hex32
    call space
    mov dx, 0xc005
    mov al, 0xef
    out dx, al
    mov dx, 0xc004
    in eax, dx
    call hex32
    call space
    mov dx, 0xc001
    in eax, dx
    call hex32
    call nl
"""
QEMU_QUIRKS = """24 24 0924 0924 00000000 80000924
0000 80 7010 00000000 8086 00000000 FFFFFFFF FFFFFFFF FFFFFFFF
00 FF 00 FF 00 00 00 00 00 FF 00 FF 00 00 00 00 FFFF FFFFFFFF 00000000 FFFFFFFC FFFF 0000 1234 00000000 56 12345678 ABCD5678 ABCDEF78 00000000
"""


def source(body: str) -> str:
    return "    mov esp, 0x90000\n    jmp start\n" + LIB + CFG_READ + "start:\n" + body + EXIT0


def run_guest(tmp_path, body: str, mode: str = "bt", mem_mib: int = 32) -> str:
    from vmm.builder import MachineConfig, build_machine
    from vmm.console import BufferConsole
    from vmm.disks import parse_drive
    guest = tmp_path / "pci.s"
    guest.write_text(source(body))
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(512 * 100))
    console = BufferConsole(b"")
    vm, _ = build_machine(MachineConfig(image=str(guest), mode=mode, mem_mib=mem_mib,
                                        drives=[parse_drive(f"file={disk},if=ide,index=0")]), console)
    result = vm.run()
    assert result.reason.value == "debug_exit", result.message
    return bytes(console.output).decode()


def run_qemu(tmp_path, body: str, *options: str) -> str:
    from vmm.loaders.assembly import assemble
    code = assemble(source(body), LOAD)
    kernel = tmp_path / "pci.elf"
    kernel.write_bytes(bs.wrap_multiboot(LOAD, [(LOAD, code, len(code))]))
    disk = tmp_path / "qdisk.img"
    disk.write_bytes(bytes(512 * 100))
    command = bs.qemu_command(str(kernel)) + ["-drive", f"file={disk},if=ide,index=0,format=raw", *options]
    proc = subprocess.run(command, capture_output=True, timeout=60)
    assert proc.returncode == bs.qemu_status(0), proc.stderr
    return proc.stdout.decode()


@pytest.mark.parametrize("mode", MODES)
def test_a_scan_of_bus_0_finds_qemus_three_functions_byte_for_byte(tmp_path, mode):
    assert run_guest(tmp_path, SCAN, mode) == QEMU_FUNCTIONS


@needs_qemu
def test_qemu_shows_the_scan_the_recorded_functions(tmp_path):
    assert run_qemu(tmp_path, SCAN) == QEMU_FUNCTIONS + QEMU_PM_FUNCTION


def test_the_host_bridge_holds_the_ram_size_in_8_mib_units(tmp_path):
    """QEMU's i440fx_init writes min(RAM / 8 MiB, 255) at 0x57 (measured: -m 8 -> 01, 32 -> 04,
    256 -> 20, 3000 -> FF)."""
    assert [host_bridge(mib << 20).read(0x57, 1) for mib in (8, 32, 256, 3000)] == [0x01, 0x04, 0x20, 0xFF]
    dump = run_guest(tmp_path, SCAN, mem_mib=256)
    assert dump.splitlines()[3].split()[5] == "20000000"


@pytest.mark.parametrize("mode", ["bt", "direct"])
def test_the_registers_quirks_are_qemus(tmp_path, mode):
    assert run_guest(tmp_path, QUIRKS, mode) == QEMU_QUIRKS


@needs_qemu
def test_qemu_shows_the_recorded_quirks(tmp_path):
    assert run_qemu(tmp_path, QUIRKS) == QEMU_QUIRKS


# ---------------------------------------------------------------------------------------------
# The functions alone
class _Claim:
    name = "bmdma"
    access_width = 4

    def io_read(self, offset, size):
        return 0x5A

    def io_write(self, offset, size, value):
        pass


def machine():
    bus = PortBus()
    claim = _Claim()
    ide = ide_function(lambda base: bus.map_overlay(base, IDE_BMDMA_SIZE, claim))
    host = PciHost([host_bridge(32 << 20), isa_bridge(), ide])
    for base, length, port in host.address_ports:
        bus.register(base, length, port)
    bus.register(CONFIG_DATA, 4, host)
    return bus, ide


def config(bus, devfn, register, size=4, value=None):
    bus.write(0xCF8, 4, 0x80000000 | devfn << 8 | register & 0xFC)
    if value is None:
        return bus.read(0xCFC + (register & 3), size)
    bus.write(0xCFC + (register & 3), size, value)


def test_a_bar_written_with_all_ones_reads_its_size_and_moving_it_moves_the_ports():
    bus, ide = machine()
    assert bus.read(0xC000, 1) == 0x5A                        # where SeaBIOS left it
    config(bus, IDE_DEVFN, 0x20, value=0xFFFFFFFF)
    assert config(bus, IDE_DEVFN, 0x20) == 0xFFFFFFF1         # 16 bytes of I/O
    assert bus.read(0xC000, 1) == 0xFF                        # at 0xFFFFFFF0 it reaches 4 GiB: unmapped
    config(bus, IDE_DEVFN, 0x20, value=0xD008)                # the low bits are the size's: read-only
    assert config(bus, IDE_DEVFN, 0x20) == 0xD001
    assert bus.read(0xD000, 1) == 0x5A and bus.read(0xD00F, 1) == 0x5A and bus.read(0xD010, 1) == 0xFF
    config(bus, IDE_DEVFN, 0x04, 2, 0x0006)                   # I/O decoding off: nowhere
    assert bus.read(0xD000, 1) == 0xFF and ide.bus_master
    config(bus, IDE_DEVFN, 0x04, 2, 0x0001)                   # on again, bus mastering off
    assert bus.read(0xD000, 1) == 0x5A and not ide.bus_master
    config(bus, IDE_DEVFN, 0x20, value=0)                     # address 0: not mapped on a pc
    assert bus.read(0, 1) == 0xFF
    config(bus, IDE_DEVFN, 0x20, value=0x1F1)                 # over the IDE's own ports: the BAR wins
    assert bus.read(0x1F0, 1) == 0x5A
    config(bus, IDE_DEVFN, 0x20, value=0xC000)
    assert bus.read(0x1F0, 1) == 0xFF and bus.device_name(0x1F0) == "unassigned"   # nothing registered there here


def test_read_only_registers_status_bits_and_absent_functions():
    bus, _ide = machine()
    config(bus, IDE_DEVFN, 0x00, value=0x12345678)            # IDs, class, header: read-only
    config(bus, IDE_DEVFN, 0x08, value=0)
    assert config(bus, IDE_DEVFN, 0x00) == 0x70108086 and config(bus, IDE_DEVFN, 0x08) == 0x01018000
    config(bus, IDE_DEVFN, 0x04, value=0xFFFFFFFF)            # command: I/O, memory, master, SERR, INTx
    assert config(bus, IDE_DEVFN, 0x04) == 0x02800507         # status: its set bits are not write-1-to-clear
    config(bus, IDE_DEVFN, 0x3C, value=0xFFFFFFFF)            # interrupt line writable, pin not
    assert config(bus, IDE_DEVFN, 0x3C) == 0x000000FF
    config(bus, IDE_DEVFN, 0x10, value=0xFFFFFFFF)            # BAR0-3: legacy mode, not there
    assert config(bus, IDE_DEVFN, 0x10) == 0
    config(bus, IDE_DEVFN, 0x40, value=0x12345678)            # device-specific space: writable, as QEMU's
    assert config(bus, IDE_DEVFN, 0x40) == 0x12345678
    assert config(bus, 0x10, 0x00) == 0xFFFFFFFF              # 00:02.0: nothing
    bus.write(0xCF8, 4, 0x80010000)                           # bus 1: nothing
    assert bus.read(0xCFC, 4) == 0xFFFFFFFF
    bus.write(0xCF8, 4, 0x00000900)                           # enable bit clear: the data port reads ones
    assert bus.read(0xCFC, 4) == 0xFFFFFFFF
    bus.write(0xCF8, 4, 0x80000903)                           # bits 1-0 of the register are or'ed in
    assert bus.read(0xCFC, 1) == bus.read(0xCFE, 1) == 0x70   # (QEMU's config_reg | (port & 3)): byte 3


def test_every_config_access_with_every_value_keeps_the_bus_sane():
    """A fuzz of the data port: every register of every function (and absent ones) at every
    width with patterned values; nothing raises, IDs stay, the BAR is always mapped where the
    configuration says."""
    bus, ide = machine()
    for devfn in (0x00, 0x08, 0x09, 0x0B, 0x10):
        for register in range(0, 256):
            for size in (1, 2, 4):
                for value in (0, 0xFFFFFFFF, 0xA5A5A5A5, register * 0x01010101):
                    bus.write(0xCF8, 4, 0x80000000 | devfn << 8 | (register & 0xFC))
                    bus.write(0xCFC + (register & 3), size, value & ((1 << 8 * size) - 1))
                    bus.read(0xCFC + (register & 3), size)
    assert config(bus, 0x00, 0) == 0x12378086 and config(bus, 0x08, 0) == 0x70008086
    assert config(bus, IDE_DEVFN, 0) == 0x70108086
    bar = ide.bars[4]
    assert bar.mapped == ide.bar_address(bar)
