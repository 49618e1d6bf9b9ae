"""ELF32 i386 executables: PT_LOAD segments at their physical addresses, .bss zeroed."""

from __future__ import annotations

import struct

from vmm.errors import ImageError
from vmm.loaders import LoadedImage, check_placement

ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
ET_EXEC = 2
EM_386 = 3
PT_LOAD = 1
_MACHINE_NAMES = {0: "none", 3: "Intel 80386", 8: "MIPS", 20: "PowerPC", 40: "ARM", 62: "x86-64",
                  183: "AArch64", 243: "RISC-V"}
_HEADER = struct.Struct("<16sHHIIIIIHHHHHH")     # Elf32_Ehdr, 52 bytes
_PROGRAM_HEADER = struct.Struct("<IIIIIIII")      # Elf32_Phdr, 32 bytes


def _check_no_overlap(name: str, segments: list[tuple[int, int, int]]) -> None:
    """Refuse segments whose physical ranges (.bss included) overlap: one would silently
    overwrite the other. QEMU refuses overlapping file contents ("Some ROM regions are
    overlapping") and some overlaps involving .bss, and boots the rest with what its ROM copy
    order leaves; no linker makes such an image."""
    placed = sorted((paddr, paddr + memsz, index) for index, paddr, memsz in segments)   # (index: its header)
    for (low, end, index), (next_low, next_end, next_index) in zip(placed, placed[1:]):
        if next_low < end:
            first, second = sorted(((low, end, index), (next_low, next_end, next_index)), key=lambda s: s[2])
            raise ImageError(f"{name}: segments {first[2]} ({first[0]:#x}-{first[1] - 1:#x}) and {second[2]} "
                             f"({second[0]:#x}-{second[1] - 1:#x}) overlap in memory")


def load(name: str, data: bytes, memory, reserved=(), kind: str = "elf") -> LoadedImage:
    if len(data) < 6:
        raise ImageError(f"{name}: truncated ELF header ({len(data)} bytes)")
    if data[4] == ELFCLASS64:
        raise ImageError(f"{name}: ELF64 image; this machine runs 32-bit x86 guests (ELFCLASS32)")
    if data[4] != ELFCLASS32:
        raise ImageError(f"{name}: unknown ELF class {data[4]}")
    if data[5] != ELFDATA2LSB:
        raise ImageError(f"{name}: big-endian ELF image; x86 images are little-endian")
    if len(data) < _HEADER.size:
        raise ImageError(f"{name}: truncated ELF header ({len(data)} of {_HEADER.size} bytes)")
    (_ident, e_type, e_machine, _version, e_entry, e_phoff, _shoff, _flags, _ehsize,
     e_phentsize, e_phnum, *_rest) = _HEADER.unpack_from(data)
    if e_machine != EM_386:
        machine = _MACHINE_NAMES.get(e_machine, "unknown")
        raise ImageError(f"{name}: wrong machine: e_machine {e_machine} ({machine}), expected {EM_386} (Intel 80386)")
    if e_type != ET_EXEC:
        raise ImageError(f"{name}: ELF type {e_type} is not an executable (ET_EXEC)")
    if e_phnum == 0:
        raise ImageError(f"{name}: no program headers")
    if e_phentsize < _PROGRAM_HEADER.size:
        raise ImageError(f"{name}: program header entry size {e_phentsize} is too small")
    if e_phoff + e_phnum * e_phentsize > len(data):
        raise ImageError(f"{name}: truncated: program headers end at {e_phoff + e_phnum * e_phentsize:#x}, "
                         f"file has {len(data):#x} bytes")

    segments, indices = [], []          # indices: each segment's program header, for messages
    for index in range(e_phnum):
        (p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _pflags, _align) = \
            _PROGRAM_HEADER.unpack_from(data, e_phoff + index * e_phentsize)
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        if p_filesz > p_memsz:
            raise ImageError(f"{name}: segment {index}: file size {p_filesz:#x} exceeds memory size {p_memsz:#x}")
        if p_offset + p_filesz > len(data):
            raise ImageError(f"{name}: truncated: segment {index} needs bytes up to {p_offset + p_filesz:#x}, "
                             f"file has {len(data):#x}")
        check_placement(memory, f"{name}: segment {index}", p_paddr, p_memsz, reserved)
        segments.append((p_vaddr, p_paddr, p_offset, p_filesz, p_memsz))
        indices.append(index)
    if not segments:
        raise ImageError(f"{name}: no loadable (PT_LOAD) segments")
    _check_no_overlap(name, [(index, paddr, memsz) for index, (_v, paddr, _o, _f, memsz) in zip(indices, segments)])

    for _vaddr, paddr, offset, filesz, memsz in segments:
        memory.write(paddr, data[offset:offset + filesz])
        memory.fill(paddr + filesz, memsz - filesz)          # .bss

    entry = e_entry
    for vaddr, paddr, _offset, _filesz, memsz in segments:   # a higher-half entry is virtual
        if vaddr <= e_entry < vaddr + memsz:
            entry = e_entry - vaddr + paddr
            break
    if not memory.ram.contains(entry, 1):
        raise ImageError(f"{name}: entry point {entry:#x} lies outside guest RAM")
    low = min(paddr for _v, paddr, *_ in segments)
    high = max(paddr + memsz for _v, paddr, _o, _f, memsz in segments)
    return LoadedImage(kind, entry, low, high, [(paddr, memsz) for _v, paddr, _o, _f, memsz in segments])
