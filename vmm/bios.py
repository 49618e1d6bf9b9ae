"""Low memory as SeaBIOS leaves it for a Multiboot kernel on QEMU's pc machine: the BIOS data area
(0x400-0x4FF), the extended BIOS data area below 640 KiB, the text screen SeaBIOS printed, and the
firmware tables (MP, ACPI: vmm/mptable.py, vmm/acpi.py)."""

from __future__ import annotations

import struct

from vmm.acpi import write_acpi_tables
from vmm.devices.vga import TEXT_MEMORY, boot_text_memory
from vmm.mptable import write_mp_tables

BDA_ADDRESS = 0x400
EBDA_SEGMENT = 0x9FC0           # 1 KiB at 0x9FC00-0x9FFFF (the e820 map reserves it)
EBDA_ADDRESS = EBDA_SEGMENT << 4
EBDA_KIB = 1
BASE_MEMORY_KIB = 639           # 0x413: conventional memory below the EBDA
TIMER_TICKS = 0x46C             # ticks since midnight, SeaBIOS's count at the moment it booted

# The BIOS data area as qemu-system-i386 7.2 shows it at the Multiboot entry with the platform's
# devices (-vga std, COM1 and COM2; recorded with a probe guest, tests/test_pcplatform.py): the
# COM port table (0x400: 0x3F8, 0x2F8), the EBDA segment (0x40E), the equipment word (0x410:
# 0x0426, two serial ports, 80x25 colour, PS/2 mouse, FPU), base memory (0x413: 639 KiB), the
# keyboard buffer (0x41A-0x41D, 0x480-0x483), the video state of mode 3 (0x449-0x466,
# 0x484-0x48A, 0x4A8: 80 columns, 25 rows, cursor at row 2, CRTC at 0x3D4) and the serial
# timeouts (0x47C). Only the tick count at 0x46C depends on the time of day.
_BDA = {
    0x400: "f8 03 f8 02 00 00 00 00 00 00 00 00 00 00 c0 9f",
    0x410: "26 04 00 7f 02 00 00 00 00 00 1e 00 1e 00 00 00",
    0x440: "00 00 00 00 00 00 00 00 00 03 50 00 00 10 00 00",
    0x450: "00 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
    0x460: "07 06 00 d4 03 00 00 00 00 00 00 00 00 00 00 00",
    0x470: "00 00 00 00 00 00 c0 00 00 00 00 00 0a 0a 00 00",
    0x480: "1e 00 3e 00 18 10 00 60 f9 51 08 00 00 00 00 00",
    0x490: "00 00 00 00 00 00 10 00 00 00 00 00 00 00 00 00",
    0x4A0: "00 00 00 00 00 00 00 00 20 68 00 c0 00 00 00 00",
    0x4B0: "00 00 00 00 00 00 00 00 00 40 03 00 c6 68 00 00",
}


def bios_data_area() -> bytes:
    """The 256 bytes at 0x400, the tick count left 0."""
    area = bytearray(256)
    for address, text in _BDA.items():
        row = bytes.fromhex(text.replace(" ", ""))
        assert len(row) == 16, hex(address)
        area[address - BDA_ADDRESS:address - BDA_ADDRESS + 16] = row
    return bytes(area)


def ticks_since_midnight(epoch_seconds: int) -> int:
    """SeaBIOS's timer_setup: the RTC's time of day in 18.2 Hz ticks (PIT_TICK_RATE / 65536)."""
    milliseconds = (epoch_seconds % 86400) * 1000
    return milliseconds * 1193180 // 65536000


def write_firmware_state(memory, start_epoch: int) -> None:
    """Fill the BDA, the EBDA (its first byte is its size in KiB), the text page, the MP tables
    (F segment) and the ACPI tables (RSDP in the F segment, the others at the top of RAM)."""
    area = bytearray(bios_data_area())
    struct.pack_into("<I", area, TIMER_TICKS - BDA_ADDRESS, ticks_since_midnight(start_epoch))
    memory.write(BDA_ADDRESS, bytes(area))
    memory.write(EBDA_ADDRESS, bytes([EBDA_KIB]) + bytes(EBDA_KIB * 1024 - 1))
    memory.write(TEXT_MEMORY, boot_text_memory())
    write_mp_tables(memory)
    write_acpi_tables(memory)
