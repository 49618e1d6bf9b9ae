"""Linux's bzImage by the 32-bit boot protocol: parse the setup header, load the protected-mode
kernel at 1 MiB, the initrd where qemu-system-i386 -kernel puts it, and build boot_params (the
"zero page") as QEMU's loader plus the kernel's own real-mode setup code leave it under SeaBIOS."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from vmm.errors import ImageError
from vmm.loaders import LoadedImage, check_placement, read_image
from vmm.loaders.multiboot import e820_map
from vmm.memory import PhysicalMemory
from vmm.x86 import PAGE_SIZE

# Documentation/arch/x86/boot.rst and arch/x86/include/uapi/asm/bootparam.h
HEADER_MAGIC = b"HdrS"                  # at 0x202
MAGIC_OFFSET = 0x202
SETUP_HEADER_START = 0x1F1              # the header inside both the image and boot_params
MIN_PROTOCOL = 0x204                    # 32-bit syssize, LOADED_HIGH kernels: what we boot
LOADED_HIGH = 0x01                      # loadflags: the protected-mode part runs at 0x100000
CAN_USE_HEAP = 0x80                     # loadflags: heap_end_ptr is valid
HEADER_END = 0x268                      # the fields up to kernel_info_offset (protocol 2.15)
SECTOR = 512

PROTECTED_MODE_ADDRESS = 0x100000
# Where QEMU's x86_load_linux puts the real-mode part (boot_params) and the command line for
# protocol >= 2.02 (hw/i386/x86.c): real_addr 0x10000, cmdline_addr 0x20000.
BOOT_PARAMS_ADDRESS = 0x10000
BOOT_PARAMS_SIZE = 0x1000
CMDLINE_ADDRESS = 0x20000
QEMU_LOADER_TYPE = 0xB0                 # type_of_loader: QEMU's ID (boot.rst: 0xB "Qemu")
# heap_end_ptr as QEMU sets it: the setup heap ends below the command line.
HEAP_END = CMDLINE_ADDRESS - BOOT_PARAMS_ADDRESS - 0x200
# The top of RAM QEMU keeps out of the initrd's way (its acpi_data_size, 128 KiB: where SeaBIOS
# puts the ACPI tables, reserved in the e820 map).
ACPI_DATA_SIZE = 0x20000

# boot_params offsets (bootparam.h)
EXT_MEM_K = 0x002
ALT_MEM_K = 0x1E0
E820_ENTRIES = 0x1E8
E820_TABLE = 0x2D0
E820_ENTRY_SIZE = 20
# setup header offsets (the same in the image and in boot_params)
SETUP_SECTS, VID_MODE, VERSION, TYPE_OF_LOADER, LOADFLAGS = 0x1F1, 0x1FA, 0x206, 0x210, 0x211
CODE32_START, RAMDISK_IMAGE, RAMDISK_SIZE, HEAP_END_PTR = 0x214, 0x218, 0x21C, 0x224
CMD_LINE_PTR, INITRD_ADDR_MAX, CMDLINE_SIZE = 0x228, 0x22C, 0x238
PREF_ADDRESS, INIT_SIZE = 0x258, 0x260
RELOCATABLE = 0x234

# screen_info (0x000-0x03F) as the kernel's setup code leaves it under QEMU's SeaBIOS and VGA,
# measured (/sys/kernel/boot_params/data of this kernel under qemu-system-i386 7.2 -display
# none): cursor at column 0 row 3, video mode 3 (80x25 colour text), page 0, EGA BX 3, 25 lines,
# VGA, 16-pixel characters. ext_mem_k (0x002) is filled from the RAM size.
SCREEN_INFO = bytes.fromhex("0003 0000 0000 0350 0000 0300 0000 1901 1000")

# QEMU's vga= (hw/i386/x86.c): the names it knows; any other value is a number (strtol, base 0).
VGA_MODES = {"normal": 0xFFFF, "ext": 0xFFFE, "ask": 0xFFFD}


class BootProtocolError(ImageError):
    """A bzImage (or its initrd) that cannot be booted: bad input, status 2."""

    exit_status = 2


@dataclass
class SetupHeader:
    """The fields of a bzImage's setup header that loading needs."""
    version: int
    setup_sects: int
    loadflags: int
    code32_start: int
    initrd_addr_max: int
    cmdline_size: int
    pref_address: int
    init_size: int
    relocatable: bool

    @property
    def setup_size(self) -> int:
        """Bytes of the real-mode part (boot sector and setup), which the file starts with."""
        return ((self.setup_sects or 4) + 1) * SECTOR     # 0 means 4 (boot.rst)


def is_bzimage(data: bytes) -> bool:
    """The "HdrS" magic where the boot protocol puts it (QEMU recognises a Linux kernel so)."""
    return data[MAGIC_OFFSET:MAGIC_OFFSET + 4] == HEADER_MAGIC


def parse_header(name: str, data: bytes) -> SetupHeader:
    """The setup header, refused unless this loader can boot it (protocol 2.04+, LOADED_HIGH)."""
    if len(data) < HEADER_END:
        raise BootProtocolError(f"{name}: truncated bzImage: {len(data)} bytes, the setup header needs {HEADER_END}")
    version = struct.unpack_from("<H", data, VERSION)[0]
    if version < MIN_PROTOCOL:
        raise BootProtocolError(f"{name}: Linux boot protocol {version >> 8}.{version & 0xFF:02d} is older "
                                f"than 2.04, which this loader needs (32-bit syssize, loaded high)")
    loadflags = data[LOADFLAGS]
    if not loadflags & LOADED_HIGH:
        raise BootProtocolError(f"{name}: a zImage (loadflags {loadflags:#04x} lack LOADED_HIGH): only "
                                f"bzImages, loaded at 1 MiB, are booted")
    (initrd_addr_max,) = struct.unpack_from("<I", data, INITRD_ADDR_MAX)
    # Fields a protocol adds read 0 in older headers' bytes: use boot.rst's defaults there.
    cmdline_size = struct.unpack_from("<I", data, CMDLINE_SIZE)[0] if version >= 0x206 else 255
    pref_address = struct.unpack_from("<Q", data, PREF_ADDRESS)[0] if version >= 0x20A else PROTECTED_MODE_ADDRESS
    init_size = struct.unpack_from("<I", data, INIT_SIZE)[0] if version >= 0x20A else 0
    header = SetupHeader(version, data[SETUP_SECTS], loadflags, struct.unpack_from("<I", data, CODE32_START)[0],
                         initrd_addr_max, cmdline_size, pref_address, init_size,
                         version >= 0x205 and bool(data[RELOCATABLE]))
    if len(data) <= header.setup_size:
        raise BootProtocolError(f"{name}: truncated bzImage: {len(data)} bytes hold no protected-mode kernel "
                                f"after the {header.setup_size}-byte setup")
    syssize = struct.unpack_from("<I", data, 0x1F4)[0] * 16
    if len(data) - header.setup_size < syssize:
        raise BootProtocolError(f"{name}: truncated bzImage: the header's syssize says {syssize:#x} bytes of "
                                f"protected-mode kernel, the file has {len(data) - header.setup_size:#x}")
    return header


def load(name: str, data: bytes, memory: PhysicalMemory) -> LoadedImage:
    """Put the protected-mode part at 1 MiB. The kernel decompresses itself to pref_address (or
    where KASLR picks) and needs init_size bytes there: refuse a RAM that cannot hold that."""
    header = parse_header(name, data)
    kernel = data[header.setup_size:]
    usable_end = memory.ram_size - ACPI_DATA_SIZE
    footprint_end = max(PROTECTED_MODE_ADDRESS + len(kernel), header.pref_address + header.init_size)
    if footprint_end > usable_end:
        raise BootProtocolError(f"{name}: the kernel needs RAM up to {footprint_end:#x} (loaded at 1 MiB, "
                                f"decompressed at {header.pref_address:#x}, init_size {header.init_size:#x}); "
                                f"--mem {memory.ram_size >> 20} gives usable RAM up to {usable_end:#x}: raise --mem")
    check_placement(memory, f"{name}: protected-mode kernel", PROTECTED_MODE_ADDRESS, len(kernel))
    memory.write(PROTECTED_MODE_ADDRESS, kernel)
    return LoadedImage("linux", header.code32_start, PROTECTED_MODE_ADDRESS, PROTECTED_MODE_ADDRESS + len(kernel),
                       [(PROTECTED_MODE_ADDRESS, len(kernel))])


def vga_mode(append: str, default: int) -> int:
    """vid_mode as QEMU sets it from a vga= on the command line (else the header's value)."""
    at = append.find("vga=")
    if at < 0:
        return default
    value = append[at + 4:].split(" ", 1)[0]
    if value in VGA_MODES:
        return VGA_MODES[value]
    digits = value.lower()
    base = 16 if digits.startswith("0x") else 8 if digits.startswith("0") and len(digits) > 1 else 10
    prefix = 2 if base == 16 else 0
    end = prefix
    allowed = "0123456789abcdef"[:base]
    while end < len(digits) and digits[end] in allowed:
        end += 1
    return int(digits[prefix:end], base) & 0xFFFF if end > prefix else 0


def initrd_address(header: SetupHeader, ram_size: int, size: int) -> int:
    """QEMU's placement: as high as initrd_addr_max and the RAM below the ACPI zone allow, page
    aligned down (x86_load_linux)."""
    initrd_max = header.initrd_addr_max if header.version >= 0x203 else 0x37FFFFFF
    initrd_max = min(initrd_max, ram_size - ACPI_DATA_SIZE - 1)
    return (initrd_max - size) & ~(PAGE_SIZE - 1)


def write_boot_params(memory: PhysicalMemory, image_path: str, image: LoadedImage, append: str,
                      initrds: list[str]) -> int:
    """Command line, initrd and boot_params in guest RAM; returns boot_params' address (ESI)."""
    name = os.path.basename(image_path)
    data = read_image(image_path)
    header = parse_header(name, data)
    ram_size = memory.ram_size

    cmdline = append.encode()
    if len(cmdline) > header.cmdline_size:
        raise BootProtocolError(f"{name}: the command line is {len(cmdline)} bytes; the kernel takes at most "
                                f"{header.cmdline_size}")
    memory.write(CMDLINE_ADDRESS, cmdline + b"\0")

    params = bytearray(BOOT_PARAMS_SIZE)
    params[:len(SCREEN_INFO)] = SCREEN_INFO
    # The memory sizes SeaBIOS reports (int 15h AH=88h, capped at 63 MiB; AX=E801h, the RAM
    # above 1 MiB less the ACPI zone), which the setup code stores.
    struct.pack_into("<H", params, EXT_MEM_K, min((ram_size >> 10) - 1024, 0xFC00))
    struct.pack_into("<I", params, ALT_MEM_K, (ram_size - ACPI_DATA_SIZE - 0x100000) >> 10)
    entries = e820_map(ram_size)
    params[E820_ENTRIES] = len(entries)
    for index, (base, length, kind) in enumerate(entries):
        struct.pack_into("<QQI", params, E820_TABLE + index * E820_ENTRY_SIZE, base, length, kind)

    header_end = MAGIC_OFFSET + data[0x201]           # the header runs to 0x202 + the jump's offset
    params[SETUP_HEADER_START:header_end] = data[SETUP_HEADER_START:header_end]
    struct.pack_into("<H", params, VID_MODE, vga_mode(append, struct.unpack_from("<H", data, VID_MODE)[0]))
    params[TYPE_OF_LOADER] = QEMU_LOADER_TYPE
    params[LOADFLAGS] |= CAN_USE_HEAP
    struct.pack_into("<H", params, HEAP_END_PTR, HEAP_END)
    struct.pack_into("<I", params, CMD_LINE_PTR, CMDLINE_ADDRESS)

    if len(initrds) > 1:
        raise BootProtocolError(f"{name}: a Linux kernel takes one --initrd file, not {len(initrds)}")
    if initrds:
        try:
            initrd = read_image(initrds[0])
        except ImageError as error:
            raise BootProtocolError(f"initrd {error}") from None
        address = initrd_address(header, ram_size, len(initrd))
        kernel_end = max(image.high, header.pref_address + header.init_size)
        if address < kernel_end:
            raise BootProtocolError(f"initrd {initrds[0]}: {len(initrd):#x} bytes do not fit between the kernel "
                                    f"(up to {kernel_end:#x}) and {min(header.initrd_addr_max, ram_size - ACPI_DATA_SIZE - 1):#x}"
                                    f": raise --mem")
        memory.write(address, initrd)
        struct.pack_into("<II", params, RAMDISK_IMAGE, address, len(initrd))
    memory.write(BOOT_PARAMS_ADDRESS, bytes(params))
    return BOOT_PARAMS_ADDRESS
