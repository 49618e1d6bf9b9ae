"""PCI configuration mechanism #1 (CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC) and bus 0's functions as QEMU's pc machine (i440FX + PIIX3) shows them, configured as SeaBIOS leaves them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

CONFIG_ADDRESS, CONFIG_DATA = 0xCF8, 0xCFC
CONFIG_SPACE = 256
ENABLE = 1 << 31                 # CONFIG_ADDRESS bit 31: the data port reaches configuration space

# Configuration header offsets and command bits (include/hw/pci/pci_regs.h)
VENDOR_ID, COMMAND, STATUS, CLASS_PROG, CACHE_LINE_SIZE, HEADER_TYPE = 0x00, 0x04, 0x06, 0x09, 0x0C, 0x0E
BAR0, SUBSYSTEM_VENDOR_ID, INTERRUPT_LINE, INTERRUPT_PIN = 0x10, 0x2C, 0x3C, 0x3D
HEADER_SIZE = 0x40
COMMAND_IO, COMMAND_MEMORY, COMMAND_MASTER = 0x1, 0x2, 0x4
COMMAND_SERR, COMMAND_INTX_DISABLE = 0x100, 0x400
BAR_SPACE_IO = 0x1
# Status bits a write of 1 clears (QEMU's pci_init_w1cmask): parity, target and master aborts, SERR
STATUS_W1C = 0x0100 | 0x0800 | 0x1000 | 0x2000 | 0x4000 | 0x8000
STATUS_FAST_BACK, STATUS_DEVSEL_MEDIUM = 0x0080, 0x0200

# Identities (QEMU 7.2: hw/pci-host/i440fx.c, hw/isa/piix3.c, hw/ide/piix.c) and the subsystem
# QEMU gives every function (1af4:1100, pci_default_sub_vendor/device_id)
INTEL = 0x8086
I440FX_ID, PIIX3_ISA_ID, PIIX3_IDE_ID = 0x1237, 0x7000, 0x7010
SUBSYSTEM = (0x1AF4, 0x1100)
HOST_BRIDGE_DEVFN, ISA_BRIDGE_DEVFN, IDE_DEVFN = 0x00, 0x08, 0x09     # 00:00.0, 00:01.0, 00:01.1
IDE_BMDMA_BAR, IDE_BMDMA_SIZE = 4, 16
SEABIOS_BMIBA = 0xC000           # where SeaBIOS puts the IDE's bus-master registers (measured)


@dataclass
class Bar:
    """An I/O BAR of `size` bytes (a power of two); on_map(base or None) follows where it answers."""
    index: int
    size: int
    on_map: Callable[[Optional[int]], None]
    mapped: Optional[int] = None


class PciFunction:
    """One function's 256-byte configuration space with QEMU's write rules (pci_default_write_config):
    a write-enable mask per byte (`wmask`: the command register's I/O, memory, bus-master, SERR and
    INTx-disable bits, cache line size, interrupt line, every byte past the header, and a BAR's
    address bits above its size), status bits that a 1 clears, everything else read-only. I/O
    BARs map where QEMU's pci_bar_address says: while the command register's I/O enable is set,
    at the BAR's address, unless 0 or running past 4 GiB."""

    def __init__(self, name: str, devfn: int, values: dict[int, int], bars: tuple[Bar, ...] = ()) -> None:
        self.name, self.devfn = name, devfn
        self.config = bytearray(CONFIG_SPACE)
        for offset, value in values.items():
            self.config[offset] = value
        self.wmask = bytearray(CONFIG_SPACE)
        self.wmask[CACHE_LINE_SIZE] = self.wmask[INTERRUPT_LINE] = 0xFF
        command_mask = COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE | COMMAND_SERR
        self.wmask[COMMAND:COMMAND + 2] = command_mask.to_bytes(2, "little")
        self.wmask[HEADER_SIZE:] = b"\xff" * (CONFIG_SPACE - HEADER_SIZE)
        self.w1cmask = bytearray(CONFIG_SPACE)
        self.w1cmask[STATUS:STATUS + 2] = STATUS_W1C.to_bytes(2, "little")
        self.bars = {bar.index: bar for bar in bars}
        for bar in bars:
            at = BAR0 + 4 * bar.index
            self.wmask[at:at + 4] = (~(bar.size - 1) & 0xFFFFFFFF).to_bytes(4, "little")
        self.update_mappings()

    def _word(self, offset: int) -> int:
        return int.from_bytes(self.config[offset:offset + 2], "little")

    @property
    def command(self) -> int:
        return self._word(COMMAND)

    @property
    def bus_master(self) -> bool:
        """The command register's bus-master enable: whether the function may reach memory."""
        return bool(self.command & COMMAND_MASTER)

    def read(self, offset: int, size: int) -> int:
        """`size` bytes from `offset` (never past the space: the caller clips, as QEMU does)."""
        return int.from_bytes(self.config[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            at = offset + i
            wmask, w1c = self.wmask[at], self.w1cmask[at]
            self.config[at] = ((self.config[at] & ~wmask) | (byte & wmask)) & ~(byte & w1c) & 0xFF
        if offset < BAR0 + 24 and BAR0 < offset + size or offset <= COMMAND < offset + size:
            self.update_mappings()

    def bar_address(self, bar: Bar) -> Optional[int]:
        """QEMU's pci_bar_address for an I/O BAR: None while I/O is disabled, or at address 0
        (the pc machine does not allow it), or when the range would reach 4 GiB."""
        if not self.command & COMMAND_IO:
            return None
        at = BAR0 + 4 * bar.index
        base = int.from_bytes(self.config[at:at + 4], "little") & ~(bar.size - 1)
        last = base + bar.size - 1
        if last <= base or last >= 0xFFFFFFFF or base == 0:
            return None
        return base

    def update_mappings(self) -> None:
        for bar in self.bars.values():
            base = self.bar_address(bar)
            if base != bar.mapped:
                bar.mapped = base
                bar.on_map(base)

    def state(self) -> dict:
        return {"devfn": self.devfn, "config": self.config.hex(),
                "bars": {index: bar.mapped for index, bar in self.bars.items()}}


def _header(device: int, command: int, status: int, revision: int, class_code: int,
            header_type: int = 0) -> dict[int, int]:
    values = {}
    for offset, value, size in ((VENDOR_ID, INTEL | device << 16, 4), (COMMAND, command | status << 16, 4),
                                (0x08, revision | class_code << 8, 4), (HEADER_TYPE, header_type, 1),
                                (SUBSYSTEM_VENDOR_ID, SUBSYSTEM[0] | SUBSYSTEM[1] << 16, 4)):
        for i in range(size):
            values[offset + i] = (value >> (8 * i)) & 0xFF
    return values


# The three functions as qemu-system-i386 7.2 (-machine pc, SeaBIOS 1.16) shows them at a
# Multiboot entry, recorded byte for byte by a probe guest (tests/test_pci.py keeps the dumps):
# every byte not listed reads 0.
def host_bridge(ram_bytes: int) -> PciFunction:
    """00:00.0, the i440FX host bridge: SeaBIOS's PAM settings (0x59-0x5F: F-segment read-only,
    the rest read/write), SMRAM closed (0x72); 0x57 holds the RAM size in 8 MiB units (at most
    255), as QEMU's i440fx_init writes it."""
    values = _header(I440FX_ID, command=0x0103, status=0, revision=0x02, class_code=0x060000)
    values.update({0x57: min(ram_bytes >> 23, 255), 0x59: 0x10, 0x5A: 0x11, 0x5B: 0x11, 0x5C: 0x11,
                   0x5D: 0x11, 0x5E: 0x11, 0x5F: 0x33, 0x72: 0x0A})
    return PciFunction("i440fx", HOST_BRIDGE_DEVFN, values)


def isa_bridge() -> PciFunction:
    """00:01.0, the PIIX3 PCI-to-ISA bridge, with the multi-function bit in its header type (so
    that a scan looks at 01.1): SeaBIOS's PIRQ routing (A, B -> IRQ 10; C, D -> 11), QEMU's reset
    values of the ISA and DMA control registers."""
    values = _header(PIIX3_ISA_ID, command=0x0103, status=STATUS_DEVSEL_MEDIUM, revision=0x00,
                     class_code=0x060100, header_type=0x80)
    values.update({0x4C: 0x4D, 0x4E: 0x03, 0x60: 0x0A, 0x61: 0x0A, 0x62: 0x0B, 0x63: 0x0B, 0x69: 0x02,
                   0x70: 0x80, 0x76: 0x0C, 0x77: 0x0C, 0x78: 0x02, 0xA0: 0x08, 0xA8: 0x0F})
    return PciFunction("piix3", ISA_BRIDGE_DEVFN, values)


def ide_function(on_map: Callable[[Optional[int]], None]) -> PciFunction:
    """00:01.1, the PIIX3 IDE controller in legacy mode (prog-if 0x80: the channels at 0x1F0 and
    0x170 with IRQs 14 and 15, whatever the BARs say; a bus master), its bus-master registers at
    BAR4 (16 I/O ports) where SeaBIOS put them, I/O and memory decoding on, bus mastering off
    (SeaBIOS does not turn it on: a driver must), IDE decode enabled in both timing registers
    (0x40, 0x42), no interrupt pin."""
    values = _header(PIIX3_IDE_ID, command=0x0103, status=STATUS_FAST_BACK | STATUS_DEVSEL_MEDIUM,
                     revision=0x00, class_code=0x010180)
    bmiba = BAR0 + 4 * IDE_BMDMA_BAR
    values.update({bmiba: (SEABIOS_BMIBA | BAR_SPACE_IO) & 0xFF, bmiba + 1: SEABIOS_BMIBA >> 8,
                   0x41: 0x80, 0x43: 0x80})
    return PciFunction("piix3-ide", IDE_DEVFN, values, (Bar(IDE_BMDMA_BAR, IDE_BMDMA_SIZE, on_map),))


class PciHost:
    """The i440FX's configuration mechanism #1 (QEMU's hw/pci/pci_host.c). CONFIG_ADDRESS takes
    only 4-byte writes at 0xCF8 and reads back whole from any of its ports (QEMU's read ignores
    the offset: a byte at 0xCFA is the register's low byte); 0xCF9 is the PIIX3's reset control,
    not this. CONFIG_DATA at 0xCFC-0xCFF reaches, while bit 31 is set, the byte of configuration
    space that the register number (bits 7-2 with bits 1-0 or'ed in) plus the port's low bits
    select, any width, clipped at the end of the space; a function that is not there (any bus
    but 0, any device and function but the ones given) reads all ones and drops writes. An
    access not aligned to its own width inside either register reads 0 and is dropped, as
    QEMU's memory core refuses it (measured: inw 0xCFD, inl 0xCFE read 0)."""

    name = "pci"
    access_width = 4

    def __init__(self, functions: list[PciFunction]) -> None:
        self.functions = {function.devfn: function for function in functions}
        self.config_address = 0
        # CONFIG_ADDRESS as two claims around the reset control register at 0xCF9
        self.address_ports = ((CONFIG_ADDRESS, 1, _ConfigAddress(self, 0)), (CONFIG_ADDRESS + 2, 2, _ConfigAddress(self, 2)))

    def _target(self, port_offset: int) -> tuple[Optional[PciFunction], int]:
        address = self.config_address | (port_offset & 3)
        bus, devfn = (address >> 16) & 0xFF, (address >> 8) & 0xFF
        return (self.functions.get(devfn) if bus == 0 else None), address & (CONFIG_SPACE - 1)

    # the data port, CONFIG_DATA (0xCFC-0xCFF)
    def io_read(self, offset: int, size: int) -> int:
        if offset & (size - 1):
            return 0                    # QEMU's memory core refuses an unaligned access: reads 0
        if not self.config_address & ENABLE:
            return 0xFFFFFFFF
        function, register = self._target(offset)
        if function is None:
            return 0xFFFFFFFF
        return function.read(register, min(size, CONFIG_SPACE - register))

    def io_write(self, offset: int, size: int, value: int) -> None:
        if offset & (size - 1) or not self.config_address & ENABLE:
            return
        function, register = self._target(offset)
        if function is None:
            return
        size = min(size, CONFIG_SPACE - register)
        function.write(register, size, value & ((1 << 8 * size) - 1))

    def function(self, devfn: int) -> Optional[PciFunction]:
        return self.functions.get(devfn)

    def state(self) -> dict:
        return {"config_address": self.config_address,
                "functions": {f"00:{devfn >> 3:02x}.{devfn & 7}": function.state()
                              for devfn, function in sorted(self.functions.items())}}


class _ConfigAddress:
    """CONFIG_ADDRESS at 0xCF8 and 0xCFA-0xCFB (0xCF9 is the reset control register)."""

    name = "pci"
    access_width = 4

    def __init__(self, host: PciHost, first: int) -> None:
        self.host, self.first = host, first          # the register's byte at this claim's first port

    def io_read(self, offset: int, size: int) -> int:
        if (self.first + offset) & (size - 1):
            return 0                    # unaligned in the register: refused, reads 0
        return self.host.config_address

    def io_write(self, offset: int, size: int, value: int) -> None:
        if self.first + offset == 0 and size == 4:
            self.host.config_address = value
