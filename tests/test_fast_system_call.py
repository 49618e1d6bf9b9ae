"""sysenter and sysexit, which Linux's vDSO uses for every system call when CPUID says SEP: in
every mode as qemu-system-i386 runs them (Unicorn 2.1.1 runs sysenter as a no-op, and without
the monitor the guest saw #GP(0) or, under direct, a callout at a stale EIP)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guests import PUTC, run_source

# Ring 0 loads a GDT (0x08/0x10 kernel, 0x1b/0x23 user), sets IA32_SYSENTER_CS/ESP/EIP, and
# sysexits to ring 3 with IF set; ring 3 saves CS, SS, ESP and EFLAGS, loads ECX/EDX and
# sysenters; ring 0 prints CS, SS, ESP, EFLAGS (IF cleared by sysenter), EDX, ECX and ring 3's
# CS, SS, ESP, EFLAGS, then writes 0x21 to isa-debug-exit.
GUEST = """    mov esp, 0x90000
    mov dword ptr [0x8000], 0
    mov dword ptr [0x8004], 0
    mov dword ptr [0x8008], 0x0000ffff
    mov dword ptr [0x800c], 0x00cf9a00
    mov dword ptr [0x8010], 0x0000ffff
    mov dword ptr [0x8014], 0x00cf9200
    mov dword ptr [0x8018], 0x0000ffff
    mov dword ptr [0x801c], 0x00cffa00
    mov dword ptr [0x8020], 0x0000ffff
    mov dword ptr [0x8024], 0x00cff200
    mov word ptr [0x8030], 0x27
    mov dword ptr [0x8032], 0x8000
    lgdt [0x8030]
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov ecx, 0x174
    mov eax, 0x08
    xor edx, edx
    wrmsr
    mov ecx, 0x175
    mov eax, 0x80000
    wrmsr
    mov ecx, 0x176
    mov eax, kernel_entry
    wrmsr
    mov ecx, 0x70000
    mov edx, user
    sti
    sysexit
user:
    mov eax, cs
    mov ebx, ss
    mov esi, esp
    pushfd
    pop edi
    mov ecx, 0x12345678
    mov edx, 0x9abcdef0
    sysenter
kernel_entry:
    mov ebp, esp
    push edi
    push esi
    push ebx
    push eax
    push ecx
    push edx
    pushfd
    push ebp
    mov eax, ss
    push eax
    mov eax, cs
    push eax
    mov ecx, 10
print_all:
    pop eax
    call hex32
    mov al, 0x20
    call putc
    loop print_all
    mov al, 0x0a
    call putc
    mov eax, 0x21
    out 0xf4, eax
    cli
    hlt
hex32:
    push ecx
    mov ecx, 8
hex_digit:
    rol eax, 4
    push eax
    and al, 0x0f
    add al, 0x30
    cmp al, 0x39
    jbe hex_print
    add al, 7
hex_print:
    call putc
    pop eax
    loop hex_digit
    pop ecx
    ret
""" + PUTC

# What qemu-system-i386 7.2 printed for GUEST (test_expectation_is_qemus runs it again).
QEMU_OUTPUT = b"00000008 00000010 00080000 00000046 9ABCDEF0 12345678 0000001B 00000023 00070000 00000246 \n"


@pytest.mark.parametrize("mode, paging", [("direct", None), ("bt", None), ("vt", None), ("trap", None)])
def test_sysenter_and_sysexit_as_on_qemu(tmp_path, mode, paging):
    result, output, _vm = run_source(tmp_path, GUEST, mode=mode, paging=paging)
    assert result.guest_value == 0x21, output
    if mode == "trap":      # mov r, cs/ss shows the compressed ring there (the 386's hole)
        output = output.replace(b"0000000B 00000013", b"00000008 00000010", 1)
    assert output == QEMU_OUTPUT


@pytest.mark.skipif(shutil.which("qemu-system-i386") is None, reason="qemu-system-i386 is not installed")
def test_expectation_is_qemus(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tools.build_samples import multiboot_wrapped_image, qemu_command
    source = tmp_path / "guest.s"
    source.write_text(GUEST)
    image = tmp_path / "guest.elf"
    image.write_bytes(multiboot_wrapped_image(source))
    proc = subprocess.run(qemu_command(str(image)), capture_output=True, timeout=30)
    assert (proc.stdout, proc.returncode) == (QEMU_OUTPUT, (0x21 << 1) | 1)
