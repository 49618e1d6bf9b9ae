"""Test helpers: build guest images (assembly snippets, synthetic ELF files) and run them."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from tests.samples import build_samples as bs
from vmm.builder import MachineConfig, build_machine
from vmm.console import BufferConsole
from vmm.exits import StopReason

LOAD = 0x100000

# Print the NUL-terminated string at ESI on COM1, then a subroutine tail. Keystone syntax.
PUTS = """
puts:
    push eax
    push edx
puts_next:
    mov al, byte ptr [esi]
    test al, al
    jz puts_done
    mov dx, 0x3f8
    out dx, al
    inc esi
    jmp puts_next
puts_done:
    pop edx
    pop eax
    ret
"""

# Write AL to COM1 (preserves every other register), a subroutine. Keystone syntax.
PUTC = """
putc:
    push edx
    mov dx, 0x3f8
    out dx, al
    pop edx
    ret
"""

EXIT = """
    mov dx, 0xf4
    out dx, eax
    cli
    hlt
"""


MODES = ("bt", "direct", "trap", "vt")       # every execution mode a platform guest runs under
needs_qemu = pytest.mark.skipif(shutil.which(bs.QEMU) is None, reason=f"{bs.QEMU} is not installed")

# The platform as QEMU's: a VGA and COM2 (nothing attached) beside the reference command line,
# the RTC's date fixed as the virtual clock's.
QEMU_PLATFORM = ["-vga", "std", "-serial", "null", "-rtc", "base=2000-01-01T00:00:00"]

# Print AL, AX or EAX in hex (hex8/hex16/hex32), a space or a newline on COM1; every register kept.
HEX = """
nl:
    push eax
    mov al, 10
    call putc
    pop eax
    ret
space:
    push eax
    mov al, 0x20
    call putc
    pop eax
    ret
hex32:
    push eax
    shr eax, 16
    call hex16
    pop eax
hex16:
    push eax
    shr eax, 8
    call hex8
    pop eax
hex8:
    push eax
    shr al, 4
    call hex4
    pop eax
hex4:
    push eax
    and al, 0xf
    cmp al, 10
    jb hex4_digit
    add al, 0x27
hex4_digit:
    add al, 0x30
    call putc
    pop eax
    ret
""" + PUTC
EXIT0 = "    mov eax, 0\n    out 0xf4, eax\n    cli\n    hlt\n"


# Read the PCI configuration dword CONFIG_ADDRESS EAX names into EAX (mechanism #1, 0xCF8/0xCFC).
CFG_READ = """
cfg_read:
    push edx
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    pop edx
    ret
"""


def pic_pair(master_mask: int, slave_mask: int) -> str:
    """Assembly: both i8259s initialized as a PC's (ICW1-4: master at vector 0x20, slave at 0x28
    on its IRQ 2, 8086 mode), then their masks."""
    return ("    mov al, 0x11\n    out 0x20, al\n    out 0xa0, al\n    mov al, 0x20\n    out 0x21, al\n"
            "    mov al, 0x28\n    out 0xa1, al\n    mov al, 0x04\n    out 0x21, al\n    mov al, 0x02\n"
            "    out 0xa1, al\n    mov al, 0x01\n    out 0x21, al\n    out 0xa1, al\n"
            f"    mov al, {master_mask:#04x}\n    out 0x21, al\n    mov al, {slave_mask:#04x}\n    out 0xa1, al\n")


# A timer handler's end: EOI to the master PIC, eax kept, and back.
EOI_IRET = "    push eax\n    mov al, 0x20\n    out 0x20, al\n    pop eax\n    iretd\n"


def cmos(index: int) -> str:
    """Read CMOS/RTC register `index` into AL."""
    return f"    mov al, {index:#x}\n    out 0x70, al\n    in al, 0x71\n"


def run_qemu_source(tmp_path: Path, source: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """Assemble `source`, wrap it for Multiboot and run it under qemu-system-i386 on QEMU_PLATFORM."""
    path = tmp_path / "guest.s"
    path.write_text(source)
    wrapped = tmp_path / "guest.mb.elf"
    wrapped.write_bytes(bs.multiboot_wrapped_image(path))
    return subprocess.run(bs.qemu_command(str(wrapped)) + QEMU_PLATFORM, input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30)


def qemu_recorded(source: str, expected: bytes, modes=MODES):
    """The two tests of a guest whose output was recorded from qemu-system-i386: every mode prints
    `expected` and ends at isa-debug-exit, and QEMU still prints it (so a recording that went stale
    with QEMU, or a guest edited without re-recording, fails). Bind both at module level:
    `test_x, test_x_under_qemu = qemu_recorded(X, X_EXPECTED)`."""
    @pytest.mark.parametrize("mode", modes)
    def under_each_mode(tmp_path, mode):
        result, output, _vm = run_source(tmp_path, source, mode=mode)
        assert result.reason is StopReason.DEBUG_EXIT, result.message
        assert output == expected

    @needs_qemu
    def under_qemu(tmp_path):
        assert run_qemu_source(tmp_path, source).stdout == expected

    return under_each_mode, under_qemu


def flat_gdt(base: int) -> str:
    """Assembly that builds a flat GDT at `base` (code 0x08, data 0x10; the pointer at base+0x20)
    and loads it: what a guest needs before the boot GDT's region can be left unmapped."""
    return (f"    mov dword ptr [{base + 0x08:#x}], 0x0000ffff\n    mov dword ptr [{base + 0x0c:#x}], 0x00cf9a00\n"
            f"    mov dword ptr [{base + 0x10:#x}], 0x0000ffff\n    mov dword ptr [{base + 0x14:#x}], 0x00cf9200\n"
            f"    mov word ptr [{base + 0x20:#x}], 0x17\n    mov dword ptr [{base + 0x22:#x}], {base:#x}\n"
            f"    lgdt [{base + 0x20:#x}]\n")


def paging_on(directory: int, cr0_bits: int = 0x80000000) -> str:
    """Assembly that loads CR3 with `directory` and sets `cr0_bits` (PG, and WP if asked) in CR0."""
    return (f"    mov eax, {directory:#x}\n    mov cr3, eax\n    mov eax, cr0\n"
            f"    or eax, {cr0_bits:#x}\n    mov cr0, eax\n")


def identity_paging(directory: int = 0x80000, table: int = 0x81000) -> str:
    """Assembly that maps the first 4 MiB one to one through one page table (every page present
    and writable, supervisor) and turns paging on with that directory."""
    return (f"    mov edi, {table:#x}\n    mov eax, 3\nfill:\n    mov dword ptr [edi], eax\n"
            f"    add eax, 0x1000\n    add edi, 4\n    cmp edi, {table + 0x1000:#x}\n    jne fill\n"
            f"    mov dword ptr [{directory:#x}], {table | 3:#x}\n" + paging_on(directory))


def watched_loop(rounds: int, paging: bool) -> str:
    """bench_bt's compute loop behind one pushfd/popfd pair (two holes for trap's watch, each run
    once), paging on or off; it ends writing 0 to isa-debug-exit. The guest of
    tests/test_watch_cost.py and bench/bench_untranslated.py."""
    return f"""
    mov esp, 0x90000
    pushfd
    popfd
{identity_paging() if paging else ""}
    mov ecx, {rounds}
    xor eax, eax
    mov esi, 0x200000
top:
    mov ebx, dword ptr [esi]
    add eax, ebx
    lea ebx, [eax + ecx*2]
    mov dword ptr [esi + 4], ebx
    xor eax, ebx
    shr ebx, 3
    dec ecx
    jnz top
    xor eax, eax
    mov dx, 0xf4
    out dx, eax
    cli
    hlt
"""


def idt_setup(vectors: dict[int, str], *, base: int = 0x8000, trap_vectors=(), limit: Optional[int] = None) -> str:
    """Assembly that fills an IDT at `base` with 32-bit gates (selector 0x08) for `vectors`
    (vector -> handler label) and loads it. Vectors in trap_vectors get trap gates."""
    lines = []
    for vector, label in vectors.items():
        access = 0x8F if vector in trap_vectors else 0x8E
        entry = base + vector * 8
        lines += [
            f"    mov eax, {label}",
            f"    mov word ptr [{entry:#x}], ax",
            f"    mov word ptr [{entry + 2:#x}], 0x08",
            f"    mov byte ptr [{entry + 4:#x}], 0",
            f"    mov byte ptr [{entry + 5:#x}], {access:#x}",
            "    shr eax, 16",
            f"    mov word ptr [{entry + 6:#x}], ax",
        ]
    limit = (max(vectors) + 1) * 8 - 1 if limit is None else limit
    lines += [
        f"    mov word ptr [0x7ff0], {limit:#x}",
        f"    mov dword ptr [0x7ff2], {base:#x}",
        "    lidt [0x7ff0]",
    ]
    return "\n".join(lines) + "\n"


def run_source(tmp_path: Path, source: str, stdin: bytes = b"", **config):
    """Assemble `source` as a .s guest, run it in a fresh machine; returns (result, output, vm)."""
    image = tmp_path / "guest.s"
    image.write_text(source)
    return run_image(str(image), stdin, **config)


def run_image(image: str, stdin: bytes = b"", **config):
    console = BufferConsole(stdin)
    vm, _image = build_machine(MachineConfig(image=image, **config), console)
    result = vm.run()
    return result, bytes(console.output), vm


def make_elf(code: bytes, *, paddr: int = LOAD, vaddr: Optional[int] = None, entry: Optional[int] = None,
             memsz: Optional[int] = None, elf_class: int = 1, machine: int = 3, e_type: int = 2,
             multiboot: bool = False) -> bytes:
    """A minimal ELF32 executable with one PT_LOAD segment holding `code` (optionally preceded by
    a Multiboot header)."""
    vaddr = paddr if vaddr is None else vaddr
    if multiboot:
        flags = 0x3
        code = struct.pack("<III", 0x1BADB002, flags, (-(0x1BADB002 + flags)) & 0xFFFFFFFF) + code
    entry = vaddr + (12 if multiboot else 0) if entry is None else entry
    memsz = len(code) if memsz is None else memsz
    header_size, phdr_size = 52, 32
    offset = 0x1000
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIIIIIHHHHHH", e_type, machine, 1, entry, header_size, 0, 0,
                                 header_size, phdr_size, 1, 40, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, offset, vaddr, paddr, len(code), memsz, 5, 0x1000)
    body = header + phdr
    return body + bytes(offset - len(body)) + code
