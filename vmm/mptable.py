"""The MP floating pointer and MP configuration table as SeaBIOS 1.16 builds them for QEMU's pc with one CPU (src/fw/mptable.c), at the F-segment addresses where QEMU 7.2's SeaBIOS leaves them."""

from __future__ import annotations

import struct

from vmm.devices.apic import APIC_BASE
from vmm.devices.ioapic import IOAPIC_BASE

# Where SeaBIOS 1.16.2 (Debian's bios-256k.bin, the one QEMU 7.2 boots) puts them, measured under
# qemu-system-i386 -machine pc -nodefaults -vga std: the floating pointer in the F segment, where
# a scan of 0xF0000-0xFFFFF finds it (xv6's mp.c looks at the EBDA's first KiB, then there), the
# configuration table right behind it.
FLOATING_POINTER = 0xF5BA0
CONFIG_TABLE = 0xF5BB0

SPEC_REVISION = 4               # MP 1.4
OEM_ID = b"BOCHSCPU"
PRODUCT_ID = b"0.1         "
# The processor entry as SeaBIOS fills it from the BSP: the local APIC's version (the low byte of
# QEMU's 0x50014), CPUID.1's EAX and EDX. These are QEMU's default CPU model's (qemu32): the table
# is QEMU's, whatever the engine's own CPUID answers (docs/architecture.md, Firmware tables).
APIC_VERSION = 0x14
CPU_SIGNATURE = 0x00000663
CPU_FEATURES = 0x0781ABFD
IOAPIC_ID = 0                   # SeaBIOS's BUILD_IOAPIC_ID
IOAPIC_VERSION = 0x11           # what SeaBIOS writes, not the chip's 0x20
PCI_BUS, ISA_BUS = 0, 1

ENTRY_PROCESSOR, ENTRY_BUS, ENTRY_IOAPIC, ENTRY_IO_INTERRUPT, ENTRY_LOCAL_INTERRUPT = 0, 1, 2, 3, 4
INT_TYPE_INT, INT_TYPE_NMI, INT_TYPE_EXTINT = 0, 1, 3
CPU_ENABLED, CPU_BOOTSTRAP = 1, 2

# The PCI interrupts SeaBIOS lists: one entry per function with an interrupt pin. QEMU's pc
# without a NIC has one: the PIIX4 power-management function at 00:01.3, pin INTA, routed to
# IRQ 9 (active high: SeaBIOS's irqflag 1). (bus-IRQ = device << 2 | pin - 1, ISA IRQ)
PCI_INTERRUPTS = ((1 << 2 | 0, 9),)
# The IRQs SeaBIOS keeps for PCI (its pci_irqs: 5, 9, 10, 11) get no ISA entry; IRQ 2 is the
# cascade; IRQ 0 arrives on I/O APIC pin 2.
PCI_IRQS = (5, 9, 10, 11)


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def _with_checksum(data: bytearray, offset: int) -> bytes:
    data[offset] = _checksum(bytes(data))
    return bytes(data)


def config_table() -> bytes:
    """The MP configuration table ("PCMP") with its entries, checksummed."""
    entries = [
        struct.pack("<BBBBII8x", ENTRY_PROCESSOR, 0, APIC_VERSION, CPU_ENABLED | CPU_BOOTSTRAP, CPU_SIGNATURE,
                    CPU_FEATURES),
        struct.pack("<BB6s", ENTRY_BUS, PCI_BUS, b"PCI   "),
        struct.pack("<BB6s", ENTRY_BUS, ISA_BUS, b"ISA   "),
        struct.pack("<BBBBI", ENTRY_IOAPIC, IOAPIC_ID, IOAPIC_VERSION, 1, IOAPIC_BASE),
    ]
    for source, irq in PCI_INTERRUPTS:
        entries.append(struct.pack("<BBHBBBB", ENTRY_IO_INTERRUPT, INT_TYPE_INT, 1, PCI_BUS, source, IOAPIC_ID, irq))
    for irq in range(16):
        if irq == 2 or irq in PCI_IRQS:
            continue
        entries.append(struct.pack("<BBHBBBB", ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, ISA_BUS, irq, IOAPIC_ID,
                                   2 if irq == 0 else irq))
    entries.append(struct.pack("<BBHBBBB", ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, ISA_BUS, 0, 0, 0))     # LINT0
    entries.append(struct.pack("<BBHBBBB", ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, ISA_BUS, 0, 0xFF, 1))     # LINT1
    body = b"".join(entries)
    header = bytearray(struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", 44 + len(body), SPEC_REVISION, 0, OEM_ID,
                                   PRODUCT_ID, 0, 0, len(entries), APIC_BASE, 0, 0, 0))
    return _with_checksum(header + body, 7)


def floating_pointer(config_address: int = CONFIG_TABLE) -> bytes:
    """The 16-byte "_MP_" structure: the table's address, length 1 (16 bytes), MP 1.4, no
    default configuration and no IMCR (feature bytes 0), checksummed."""
    data = bytearray(struct.pack("<4sIBBB5s", b"_MP_", config_address, 1, SPEC_REVISION, 0, bytes(5)))
    return _with_checksum(data, 10)


def write_mp_tables(memory) -> None:
    memory.write(FLOATING_POINTER, floating_pointer())
    memory.write(CONFIG_TABLE, config_table())
