"""The ACPI tables of QEMU 7.2's pc machine (hw/i386/acpi-build.c) where SeaBIOS places them: the RSDP in the F segment; FACS, DSDT, FADT, MADT, HPET, WAET and RSDT in the high zone at the top of RAM."""

from __future__ import annotations

import struct

from vmm.devices.acpi_pm import GPE0_BASE, GPE0_LENGTH, PM_BASE, PM_CNT, PM_EVT, PM_TMR, SCI_IRQ
from vmm.devices.apic import APIC_BASE
from vmm.devices.hpet import HPET_BASE, HPET_EVENT_TIMER_BLOCK_ID
from vmm.devices.ioapic import IOAPIC_BASE
from vmm.devices.mc146818 import CENTURY

# SeaBIOS 1.16.2 under QEMU 7.2 (-machine pc -nodefaults -vga std), measured with a probe guest
# (tests/test_firmware.py): the RSDP at a fixed F-segment address, the tables QEMU's linker
# script loads allocated one after the other from the start of the high zone, the last 128 KiB of
# RAM below 4 GiB (the e820 map reserves it: vmm/loaders/multiboot.py).
RSDP_ADDRESS = 0xF59D0
HIGH_ZONE_SIZE = 0x20000
OEM_ID = b"BOCHS "
OEM_TABLE_ID = b"BXPC    "
OEM_REVISION = 1
CREATOR_ID = b"BXPC"
CREATOR_REVISION = 1
# QEMU's DSDT for that machine is 0x191a bytes of AML describing its PCI host, ISA devices, the
# HPET and hot-plug controllers. The monitor's holds the sleep-state packages only (what a kernel
# needs to power off), in the same room, so that every other table is at QEMU's address, byte for
# byte QEMU's.
QEMU_DSDT_LENGTH = 0x191A
FACS_LENGTH = 64

SMI_CMD = 0xB2                  # the APM control port (vmm/devices/acpi_pm.py)
ACPI_ENABLE, ACPI_DISABLE = 0xF1, 0xF0
# FADT flags: WBINVD, PROC_C1, SLP_BUTTON, RTC_S4, USE_PLATFORM_CLOCK (acpi-build.c's for PIIX4)
FADT_FLAGS = (1 << 0) | (1 << 2) | (1 << 5) | (1 << 7) | (1 << 15)

# AML: Scope (\) { Name (_S3, Package (4) {1, 1, 0, 0}) Name (_S4, Package (4) {2, 2, 0, 0})
# Name (_S5, Package (4) {0, 0, 0, 0}) }: QEMU's bytes. The first element is PM1a_CNT's SLP_TYP
# for the state (vmm/devices/acpi_pm.py: 0 powers off, 1 suspends, 2 is S4, also an off).
SLEEP_STATES_AML = bytes.fromhex(
    "10295c00"
    "085f53335f120604010100 00".replace(" ", "") +
    "085f53345f1208040a020a020000"
    "085f53355f12060400000000")


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    """An ACPI table: QEMU's header (OEM "BOCHS ", table "BXPC    ", creator "BXPC") and body,
    checksummed."""
    header = bytearray(struct.pack("<4sIBB6s8sI4sI", signature, 36 + len(body), revision, 0, OEM_ID, OEM_TABLE_ID,
                                   OEM_REVISION, CREATOR_ID, CREATOR_REVISION))
    data = header + body
    data[9] = _checksum(bytes(data))
    return bytes(data)


def facs() -> bytes:
    """64 bytes, all zero but the signature and length (no hardware signature, no waking vector)."""
    return struct.pack("<4sI", b"FACS", FACS_LENGTH) + bytes(FACS_LENGTH - 8)


def dsdt() -> bytes:
    return table(b"DSDT", 1, SLEEP_STATES_AML)


def fadt(facs_address: int, dsdt_address: int) -> bytes:
    """The revision 1 FADT of QEMU's pc: PIIX4 PM at 0x600 (PM1a event block, control block at
    0x604, the timer at 0x608), GPE0 at 0xAFE0, SCI on IRQ 9, SMI_CMD 0xB2, the RTC century."""
    body = struct.pack(
        "<IIBBHIBBBBIIIIIIIIBBBBBBBBHHHHBBBBBHBI",
        facs_address, dsdt_address,
        1, 0, SCI_IRQ, SMI_CMD, ACPI_ENABLE, ACPI_DISABLE, 0, 0,     # model, PM profile, SCI, SMI
        PM_BASE + PM_EVT, 0, PM_BASE + PM_CNT, 0, 0, PM_BASE + PM_TMR, GPE0_BASE, 0,
        4, 2, 0, 4, GPE0_LENGTH, 0, 0, 0,                             # block lengths, GPE1 base, CST
        0x0FFF, 0x0FFF, 0, 0,                                         # C2/C3 latency (none), flush
        0, 0, 0, 0, CENTURY, 0, 0, FADT_FLAGS)
    return table(b"FACP", 1, body)


def madt() -> bytes:
    """The local APIC (processor 0, APIC ID 0, enabled), the I/O APIC (ID 0, GSI base 0), the
    interrupt source overrides QEMU lists (IRQ0 -> GSI 2; the PCI IRQs 5, 9, 10, 11 level,
    active high), and LINT1 as NMI for every processor."""
    entries = [struct.pack("<BBBBI", 0, 8, 0, 0, 1),
               struct.pack("<BBBBII", 1, 12, 0, 0, IOAPIC_BASE, 0),
               struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)]
    for irq in (5, 9, 10, 11):
        entries.append(struct.pack("<BBBBIH", 2, 10, 0, irq, irq, 0x0D))     # level, active high
    entries.append(struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1))
    return table(b"APIC", 1, struct.pack("<II", APIC_BASE, 1) + b"".join(entries))    # PCAT_COMPAT


def hpet() -> bytes:
    """The HPET: its event timer block ID (the capabilities' low half), its base in memory space,
    number 0, minimum tick 0, no page protection."""
    address = struct.pack("<BBBBQ", 0, 0, 0, 0, HPET_BASE)
    return table(b"HPET", 1, struct.pack("<I", HPET_EVENT_TIMER_BLOCK_ID) + address + struct.pack("<BHB", 0, 0, 0))


def waet() -> bytes:
    """Windows ACPI Emulated devices Table: the PM timer is reliable (one read suffices)."""
    return table(b"WAET", 1, struct.pack("<I", 2))


def rsdt(addresses: list[int]) -> bytes:
    return table(b"RSDT", 1, struct.pack(f"<{len(addresses)}I", *addresses))


def rsdp(rsdt_address: int) -> bytes:
    """ACPI 1.0's 20-byte RSDP (revision 0), as QEMU builds it for the pc machine."""
    data = bytearray(struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 0, rsdt_address))
    data[8] = _checksum(bytes(data))
    return bytes(data)


def layout(ram_size: int) -> dict[str, tuple[int, bytes]]:
    """Every table by signature: (address, bytes), for `ram_size` bytes of RAM below 4 GiB."""
    zone = ram_size - HIGH_ZONE_SIZE
    placed: dict[str, tuple[int, bytes]] = {}
    facs_address, dsdt_address = zone, zone + FACS_LENGTH
    placed["FACS"] = (facs_address, facs())
    placed["DSDT"] = (dsdt_address, dsdt())
    at = dsdt_address + QEMU_DSDT_LENGTH
    for signature, data in (("FACP", fadt(facs_address, dsdt_address)), ("APIC", madt()), ("HPET", hpet()),
                            ("WAET", waet())):
        placed[signature] = (at, data)
        at += len(data)
    placed["RSDT"] = (at, rsdt([placed[name][0] for name in ("FACP", "APIC", "HPET", "WAET")]))
    placed["RSDP"] = (RSDP_ADDRESS, rsdp(at))
    return placed


def write_acpi_tables(memory) -> None:
    for address, data in layout(memory.ram_size).values():
        memory.write(address, data)
