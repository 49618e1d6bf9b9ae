"""Multiboot v1: find the header, load a.out-kludge images, and build the boot information the
way qemu-system-i386 -kernel does (same addresses, command line, modules and memory map)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Optional

from vmm.errors import ImageError
from vmm.loaders import LoadedImage, check_placement, read_image
from vmm.memory import PhysicalMemory, Region
from vmm.x86 import PAGE_SIZE

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002           # EAX at entry
HEADER_SEARCH_LIMIT = 8192
FLAG_ADDRESS_FIELDS = 1 << 16           # the "a.out kludge": load by the header's addresses

# Where QEMU's Multiboot option ROM puts the structures (hw/i386/multiboot.c)
E820_MAP_ADDRESS = 0x9000
INFO_ADDRESS = 0x9500
INFO_SIZE = 88
RESERVED_AREA = Region("Multiboot information area", E820_MAP_ADDRESS, INFO_ADDRESS + INFO_SIZE - E820_MAP_ADDRESS)
BOOTLOADER_NAME = b"qemu"
BOOT_DEVICE = 0x8000FFFF

INFO_FLAGS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)   # mem, boot device,
# cmdline, modules, memory map, boot loader name
MODULE_ENTRY_SIZE = 16
E820_RAM, E820_RESERVED = 1, 2


@dataclass
class MultibootHeader:
    offset: int
    flags: int
    fields: tuple   # header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr


def find_header(data: bytes) -> Optional[MultibootHeader]:
    """The first 4-byte-aligned header in the first 8 KiB whose checksum is valid."""
    limit = min(len(data), HEADER_SEARCH_LIMIT) - 12
    for offset in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, offset)
        if magic == HEADER_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            fields = struct.unpack_from("<5I", data, offset + 12) if len(data) >= offset + 32 else (0,) * 5
            return MultibootHeader(offset, flags, fields)
    return None


def check_no_broken_header(name: str, data: bytes) -> None:
    """For an image without a valid header: refuse one whose first 8 KiB hold the header magic
    with a bad checksum. QEMU skips such a header, takes the image for something else and
    refuses it ("Error loading uncompressed kernel without PVH ELF Note" for an ELF file);
    booting it as a plain image, with the Multiboot boot state, would hide the broken header."""
    limit = min(len(data), HEADER_SEARCH_LIMIT) - 12
    for offset in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, offset)
        if magic == HEADER_MAGIC:
            raise ImageError(f"{name}: bad Multiboot header checksum at offset {offset:#x}: magic + flags + "
                             f"checksum is {(magic + flags + checksum) & 0xFFFFFFFF:#x}, not 0 "
                             f"(QEMU refuses the image too)")


def split_module_list(text: str) -> list[str]:
    """The modules an --initrd value names, read as QEMU reads -initrd: separated by commas, a
    doubled comma standing for a comma inside a name (QEMU's option syntax; each may carry
    arguments after a space). ValueError for an empty name, which QEMU cannot open either
    (an empty value, or one ending in a comma, QEMU boots with a boot-information area one
    byte longer than without it: refused here rather than copied)."""
    if not text:
        raise ValueError("an empty value names no module file")
    names, current, at = [], [], 0
    while at < len(text):
        if text.startswith(",,", at):
            current.append(",")
            at += 2
        elif text[at] == ",":
            names.append("".join(current))
            current, at = [], at + 1
        else:
            current.append(text[at])
            at += 1
    names.append("".join(current))
    if "" in names:
        raise ValueError(f"empty module name in {text!r} (a comma inside a file name is written ',,')")
    return names


def module_list_text(modules: list[str]) -> str:
    """The -initrd value QEMU would be given for `modules` (split_module_list's inverse)."""
    return ",".join(module.replace(",", ",,") for module in modules)


def load_with_address_fields(name: str, data: bytes, header: MultibootHeader,
                             memory: PhysicalMemory, reserved=()) -> LoadedImage:
    header_addr, load_addr, load_end_addr, bss_end_addr, entry = header.fields
    if header_addr < load_addr or header_addr - load_addr > header.offset:
        raise ImageError(f"{name}: Multiboot header_addr {header_addr:#x} is inconsistent with load_addr {load_addr:#x}")
    text_offset = header.offset - (header_addr - load_addr)
    load_size = (load_end_addr - load_addr) if load_end_addr else len(data) - text_offset
    if load_size < 0 or text_offset + load_size > len(data):
        raise ImageError(f"{name}: truncated: Multiboot load_end_addr needs {text_offset + load_size:#x} bytes, "
                         f"file has {len(data):#x}")
    total = max(bss_end_addr - load_addr, load_size) if bss_end_addr else load_size
    check_placement(memory, f"{name}: kernel", load_addr, total, reserved)
    memory.write(load_addr, data[text_offset:text_offset + load_size])
    memory.fill(load_addr + load_size, total - load_size)
    return LoadedImage("multiboot", entry, load_addr, load_addr + total, [(load_addr, total)])


def _check_boot_information_room(memory: PhysicalMemory, image: LoadedImage, kernel_path: str,
                                 start: int, end: int) -> None:
    """The module list and the command lines go on the page after the image, where QEMU puts
    them: refuse an image that leaves no room there in guest RAM."""
    name = os.path.basename(kernel_path)
    movable = image.kind in ("flat", "asm")          # placed by --load-addr, not by the image
    what = f"{name}: no room for the boot information after the image (command line and module list at " \
           f"{start:#x}-{end - 1:#x}"
    if not memory.ram.contains(start, end - start):
        raise ImageError(f"{what}, outside guest RAM 0-{memory.ram.end - 1:#x}); "
                         f"{'lower --load-addr or raise --mem' if movable else 'raise --mem'}")
    if RESERVED_AREA.overlaps(start, end - start):
        raise ImageError(f"{what} would overlap the {RESERVED_AREA.name} {RESERVED_AREA.base:#x}-"
                         f"{RESERVED_AREA.end - 1:#x}){'; choose another --load-addr' if movable else ''}")


def _write_around_image(memory: PhysicalMemory, image: LoadedImage, address: int, data: bytes) -> None:
    """Write `data` at `address` except where a loaded segment lies: QEMU 7.2 leaves EBX at 0x9500
    and the memory map at 0x9000 whatever the image, and where a segment covers them the guest
    reads the image's bytes (measured: kvm-unit-tests' realmode.flat loads 0x8000-0xa84b and
    passes; tests/test_pcplatform.py records it), so the image's bytes win here too."""
    pieces = [(address, address + len(data))]
    for base, size in image.segments:
        pieces = [cut for start, end in pieces for cut in
                  ((start, min(end, base)), (max(start, base + size), end)) if cut[0] < cut[1]]
    for start, end in pieces:
        memory.write(start, data[start - address:end - address])


def _page_align(value: int) -> int:
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def e820_map(ram_size: int) -> list[tuple[int, int, int]]:
    """The memory map SeaBIOS reports on QEMU's pc machine for `ram_size` bytes below 4 GiB."""
    return [
        (0x00000000, 0x0009FC00, E820_RAM),
        (0x0009FC00, 0x00000400, E820_RESERVED),
        (0x000F0000, 0x00010000, E820_RESERVED),
        (0x00100000, ram_size - 0x00100000 - 0x20000, E820_RAM),
        (ram_size - 0x20000, 0x20000, E820_RESERVED),
        (0xFFFC0000, 0x00040000, E820_RESERVED),
    ]


def write_boot_information(memory: PhysicalMemory, image: LoadedImage, kernel_path: str,
                           append: str, modules: list[str]) -> int:
    """Lay out modules, command lines and the information structure exactly as QEMU does.
    Returns the physical address of the information structure (EBX at entry)."""
    module_data = []
    for spec in modules:
        filename = spec.split(" ", 1)[0]
        try:
            module_data.append((spec, read_image(filename)))
        except ImageError as error:
            raise ImageError(f"module {error}") from None

    kernel_cmdline = f"{kernel_path} {append}".encode()
    module_cmdlines = b"".join(spec.encode() + b"\0" for spec in modules)
    # QEMU keeps room for the module command lines as long as its -initrd string (with its
    # doubled commas) and puts the boot loader name after that room and the kernel's line.
    initrd_room = len(module_list_text(modules).encode()) + 1 if modules else 0
    info_offset = _page_align(image.high - image.low)
    modules_base = image.low + info_offset
    cmdlines_base = modules_base + MODULE_ENTRY_SIZE * len(modules)
    kernel_cmdline_address = cmdlines_base + len(module_cmdlines)
    bootloader_address = cmdlines_base + initrd_room + len(kernel_cmdline) + 1
    area_end = bootloader_address + len(BOOTLOADER_NAME) + 1
    _check_boot_information_room(memory, image, kernel_path, modules_base, area_end)
    memory.write(cmdlines_base, module_cmdlines + kernel_cmdline + b"\0")
    memory.write(bootloader_address, BOOTLOADER_NAME + b"\0")

    # QEMU sizes the area by the file names, the command line and "qemu", then page-aligns it.
    area = info_offset + len(kernel_path.encode()) + 1 + len(append.encode()) + 1 + MODULE_ENTRY_SIZE * len(modules)
    area += len(BOOTLOADER_NAME) + 1 + initrd_room
    offset = _page_align(area)
    cmdline_address = cmdlines_base
    for index, (spec, data) in enumerate(module_data):
        start = image.low + offset
        check_placement(memory, f"module {spec.split(' ', 1)[0]}", start, max(len(data), 1), (RESERVED_AREA,))
        memory.write(start, data)
        memory.write(modules_base + index * MODULE_ENTRY_SIZE,
                     struct.pack("<IIII", start, start + len(data), cmdline_address, 0))
        cmdline_address += len(spec.encode()) + 1
        offset = _page_align(offset + len(data))

    entries = e820_map(memory.ram_size)
    _write_around_image(memory, image, E820_MAP_ADDRESS, b"".join(struct.pack("<IQQI", 20, base, length, kind)
                                            for base, length, kind in entries))
    # Like QEMU's option ROM, take mem_lower/mem_upper (KiB) from the RAM entries of the map.
    mem_lower = next(length for base, length, kind in entries if base == 0 and kind == E820_RAM) >> 10
    mem_upper = next(length for base, length, kind in entries if base == 0x100000 and kind == E820_RAM) >> 10
    info = bytearray(INFO_SIZE)
    struct.pack_into("<IIII", info, 0, INFO_FLAGS, mem_lower, mem_upper, BOOT_DEVICE)
    struct.pack_into("<III", info, 16, kernel_cmdline_address, len(modules), modules_base)
    struct.pack_into("<II", info, 44, len(entries) * 24, E820_MAP_ADDRESS)
    struct.pack_into("<I", info, 64, bootloader_address)
    _write_around_image(memory, image, INFO_ADDRESS, bytes(info))
    return INFO_ADDRESS
