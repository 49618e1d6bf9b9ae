"""Guest image loading: recognise the image kind, place it in guest RAM, and say where to enter."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vmm.errors import ImageError
from vmm.memory import PhysicalMemory, Region

ELF_MAGIC = b"\x7fELF"
ASSEMBLY_SUFFIXES = (".s", ".asm")


@dataclass
class LoadedImage:
    """What a loader placed in memory: its kind, entry point and physical extent."""
    kind: str                    # "multiboot", "linux", "elf", "flat" or "asm"
    entry: int
    low: int                     # lowest physical address loaded
    high: int                    # one past the highest (including zeroed .bss)
    segments: list[tuple[int, int]] = field(default_factory=list)   # (address, size)


def check_placement(memory: PhysicalMemory, what: str, address: int, size: int,
                    reserved: tuple[Region, ...] = ()) -> None:
    """Refuse to put `size` bytes at `address` unless they lie wholly in guest RAM, clear of the
    monitor's region and of the regions the boot protocol reserves."""
    end = address + size
    if memory.monitor.overlaps(address, size):
        raise ImageError(f"{what} at {address:#x}-{end - 1:#x} overlaps the monitor's memory "
                         f"({memory.monitor.base:#x}-{memory.monitor.end - 1:#x})")
    if not memory.ram.contains(address, size):
        raise ImageError(f"{what} at {address:#x}-{end - 1:#x} lies outside guest RAM "
                         f"(0-{memory.ram.end - 1:#x}; raise --mem?)")
    for region in reserved:
        if region.overlaps(address, size):
            raise ImageError(f"{what} at {address:#x}-{end - 1:#x} overlaps the {region.name} "
                             f"({region.base:#x}-{region.end - 1:#x})")


def read_image(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not a guest image") from None
    except OSError as error:
        raise ImageError(f"{path}: cannot read: {error.strerror}") from None
    if not data:
        raise ImageError(f"{path}: empty file")
    return data


def load_image(path: str, memory: PhysicalMemory, load_address: int,
               reserved: tuple[Region, ...] = ()) -> LoadedImage:
    """Load the image at `path`, choosing the loader by content (bzImage, Multiboot, ELF) or
    suffix (assembly)."""
    from vmm.loaders import assembly, bzimage, elf, flat, multiboot

    data = read_image(path)
    name = os.path.basename(path)
    if bzimage.is_bzimage(data):        # QEMU looks for "HdrS" before a Multiboot header too
        return bzimage.load(name, data, memory)
    header = multiboot.find_header(data)
    if header is None and not path.lower().endswith(ASSEMBLY_SUFFIXES):   # (source text holds no header)
        multiboot.check_no_broken_header(name, data)
    if header and header.flags & multiboot.FLAG_ADDRESS_FIELDS:
        return multiboot.load_with_address_fields(name, data, header, memory, reserved)
    if data.startswith(ELF_MAGIC):
        return elf.load(name, data, memory, reserved, kind="multiboot" if header else "elf")
    if path.lower().endswith(ASSEMBLY_SUFFIXES):
        return assembly.load(name, data, memory, load_address, reserved)
    return flat.load(name, data, memory, load_address, reserved)
