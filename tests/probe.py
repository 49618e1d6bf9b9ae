"""Exception probes: a guest that runs a list of instructions (in ring 0 or ring 3, paging on or
off) and logs every exception it takes (vector, error code, which listed instruction the saved
EIP names, CR2, ECX, CS), resuming each fault at the next listed instruction; the log is printed
on COM1, so the same guest runs under the monitor and under qemu-system-i386 and the two logs
are compared line by line.

The handler finds the saved EIP among the listed instructions' addresses: a fault that reports
any other EIP is logged with index -1 and ends the run (a handler on the CPU would go astray
there too). Faults resume at the next listed instruction; traps (#DB, #BP, #OF) at the saved EIP.
"""

from __future__ import annotations

import re
import shutil

from tests.guests import PUTC

GDT, TSS, IDT, LOG = 0x6000, 0x6100, 0x8000, 0x7000
PAGE_DIRECTORY, PAGE_TABLE = 0x300000, 0x301000
KERNEL_STACK, USER_STACK = 0x90000, 0x80000
FINISH_VECTOR, KERNEL_ONLY_VECTOR = 0x80, 0x81          # DPL 3 (ring 3 ends through it) / DPL 0
ERROR_CODE_VECTORS = (8, 10, 11, 12, 13, 14, 17, 21)
MAX_ENTRIES = 24

# lgdt/lidt without the 0x66 prefix Keystone adds (docs/architecture.md, Engine facts)
LGDT = ".byte 0x0f, 0x01, 0x15\n.long {address:#x}"
LIDT = ".byte 0x0f, 0x01, 0x1d\n.long {address:#x}"


def _descriptor(base: int, limit: int, access: int, flags: int) -> tuple[int, int]:
    low = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    high = ((base >> 16) & 0xFF) | (access << 8) | (((limit >> 16) & 0xF) << 16) | (flags << 20) \
        | (base & 0xFF000000)
    return low, high


_GDT = [(0, 0), _descriptor(0, 0xFFFFF, 0x9A, 0xC), _descriptor(0, 0xFFFFF, 0x92, 0xC),
        _descriptor(0, 0xFFFFF, 0xFA, 0xC), _descriptor(0, 0xFFFFF, 0xF2, 0xC),
        _descriptor(TSS, 0x67, 0x89, 0x0)]
USER_CS, USER_DS, TSS_SELECTOR = 0x1B, 0x23, 0x28


def _store(address: int, value: int) -> str:
    return f"    mov dword ptr [{address:#x}], {value:#x}\n"


def _gate(vector: int, label: str, dpl: int = 0) -> str:
    entry = IDT + vector * 8
    return (f"    mov eax, {label}\n    mov word ptr [{entry:#x}], ax\n    mov word ptr [{entry + 2:#x}], 0x08\n"
            f"    mov word ptr [{entry + 4:#x}], {0x8E00 | dpl << 13:#x}\n    shr eax, 16\n"
            f"    mov word ptr [{entry + 6:#x}], ax\n")


_HEX32 = """
hex32:
    push ecx
    push edx
    mov ecx, 8
hex32_next:
    rol eax, 4
    push eax
    and eax, 0xf
    add eax, 0x30
    cmp eax, 0x39
    jbe hex32_digit
    add eax, 0x27
hex32_digit:
    mov dx, 0x3f8
    out dx, al
    pop eax
    dec ecx
    jnz hex32_next
    pop edx
    pop ecx
    ret
""" + PUTC


def probe_source(body: list, *, ring3: bool = False, iopl: int = 0, interrupts: bool = False, paging: bool = False,
                 absent: tuple = (), tail: str = "", setup: str = "", marks: tuple = ()) -> str:
    """Keystone source of a probe guest. `body`: one instruction (or a few lines) per item, each
    labelled; `interrupts`: ring 3 runs with IF set; `absent`: labels whose pages are not present
    (paging); `tail`: assembly placed after everything (code the body jumps to); `setup`: ring-0
    assembly run before the body; `marks`: labels whose addresses are printed after the log."""
    lines = ["start:", f"    mov esp, {KERNEL_STACK:#x}", _store(LOG, 0)]
    for index, (low, high) in enumerate(_GDT):
        lines += [_store(GDT + 8 * index, low), _store(GDT + 8 * index + 4, high)]
    lines += [f"    mov word ptr [{GDT + 0x30:#x}], {8 * len(_GDT) - 1:#x}", _store(GDT + 0x32, GDT),
              LGDT.format(address=GDT + 0x30),
              "    mov eax, reload\n    push 0x08\n    push eax\n    retf\nreload:",
              "    mov ax, 0x10\n    mov ds, ax\n    mov es, ax\n    mov ss, ax\n    mov fs, ax\n    mov gs, ax"]
    lines += [_store(TSS + 4, KERNEL_STACK - 0x1000), _store(TSS + 8, 0x10), _store(TSS + 0x64, 0x680000),
              f"    mov ax, {TSS_SELECTOR:#x}\n    ltr ax"]
    for vector in range(32):
        lines.append(_gate(vector, f"exception_{vector}"))
    lines += [_gate(FINISH_VECTOR, "finish", dpl=3), _gate(KERNEL_ONLY_VECTOR, "finish"),
              f"    mov word ptr [{IDT - 0x10:#x}], {(KERNEL_ONLY_VECTOR + 1) * 8 - 1:#x}",
              _store(IDT - 0xE, IDT), LIDT.format(address=IDT - 0x10)]
    if paging:
        lines += [f"    mov edi, {PAGE_TABLE:#x}\n    mov eax, 7\nmap_next:\n    mov dword ptr [edi], eax\n"
                  f"    add edi, 4\n    add eax, 0x1000\n    cmp edi, {PAGE_TABLE + 0x1000:#x}\n    jb map_next",
                  _store(PAGE_DIRECTORY, PAGE_TABLE | 7)]
        for label in absent:
            lines.append(f"    mov eax, {label}\n    shr eax, 12\n    mov dword ptr [{PAGE_TABLE:#x} + eax*4], 0")
        lines.append(f"    mov eax, {PAGE_DIRECTORY:#x}\n    mov cr3, eax\n    mov eax, cr0\n"
                     f"    or eax, 0x80000000\n    mov cr0, eax")
    lines.append(setup)
    lines.append("\n".join(f"    xor {r}, {r}" for r in ("eax", "ecx", "edx", "ebx", "esi", "edi", "ebp")))
    if ring3:
        eflags = 0x2 | iopl << 12 | (0x200 if interrupts else 0)
        lines += [f"    push {USER_DS:#x}\n    push {USER_STACK:#x}\n    push {eflags:#x}\n"
                  f"    push {USER_CS:#x}\n    mov eax, probe_0\n    push eax",
                  f"    mov ax, {USER_DS:#x}\n    mov ds, ax\n    mov es, ax\n    xor eax, eax\n    iretd"]
    for index, item in enumerate(body):
        lines += [f"probe_{index}:", "    " + item.strip().replace("\n", "\n    ")]
    lines += [f"probe_{len(body)}:", f"    int {FINISH_VECTOR:#x}" if ring3 else "    jmp finish"]
    lines.append("table:\n" + "\n".join(f"    .long probe_{i}, probe_{min(i + 1, len(body))}"
                                         for i in range(len(body) + 1)))
    for vector in range(32):
        push_error = "" if vector in ERROR_CODE_VECTORS else "    push 0\n"
        lines.append(f"exception_{vector}:\n{push_error}    push {vector}\n    jmp common")
    print_marks = "".join(f"    mov al, 0x4c\n    call putc\n    mov al, 0x20\n    call putc\n    mov eax, {index}\n"
                          f"    call hex32\n    mov al, 0x20\n    call putc\n    mov eax, {label}\n    call hex32\n"
                          f"    mov al, 0x0a\n    call putc\n" for index, label in enumerate(marks))
    lines.append(f"""
common:
    push eax
    push ebx
    push ecx
    push edx
    mov ebx, dword ptr [{LOG:#x}]
    shl ebx, 5
    mov eax, dword ptr [esp + 16]
    mov dword ptr [{LOG + 0x20:#x} + ebx], eax
    mov eax, dword ptr [esp + 20]
    mov dword ptr [{LOG + 0x24:#x} + ebx], eax
    mov eax, dword ptr [esp + 24]
    mov dword ptr [{LOG + 0x2C:#x} + ebx], eax
    mov eax, cr2
    mov dword ptr [{LOG + 0x30:#x} + ebx], eax
    mov eax, dword ptr [esp + 4]
    mov dword ptr [{LOG + 0x34:#x} + ebx], eax
    mov eax, dword ptr [esp + 28]
    mov dword ptr [{LOG + 0x38:#x} + ebx], eax
    inc dword ptr [{LOG:#x}]
    mov eax, dword ptr [esp + 24]
    xor ecx, ecx
find:
    cmp ecx, {len(body) + 1}
    jae lost
    cmp eax, dword ptr [table + ecx*8]
    je found
    inc ecx
    jmp find
lost:
    mov dword ptr [{LOG + 0x28:#x} + ebx], 0xffffffff
    jmp finish
found:
    mov dword ptr [{LOG + 0x28:#x} + ebx], ecx
    cmp dword ptr [{LOG:#x}], {MAX_ENTRIES}
    jae finish
    mov eax, dword ptr [esp + 16]
    cmp eax, 1
    je resume
    cmp eax, 3
    je resume
    cmp eax, 4
    je resume
    mov eax, dword ptr [table + ecx*8 + 4]
    mov dword ptr [esp + 24], eax
resume:
    pop edx
    pop ecx
    pop ebx
    pop eax
    add esp, 8
    iretd

finish:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    xor esi, esi
print_next:
    cmp esi, dword ptr [{LOG:#x}]
    jae print_done
    mov ebx, esi
    shl ebx, 5
    mov al, 0x58
    call putc
    xor edi, edi
print_field:
    mov al, 0x20
    call putc
    mov eax, dword ptr [{LOG + 0x20:#x} + ebx + edi*4]
    call hex32
    inc edi
    cmp edi, 7
    jb print_field
    mov al, 0x0a
    call putc
    inc esi
    jmp print_next
print_done:
{print_marks}    mov al, 0x2e
    call putc
    mov al, 0x0a
    call putc
    xor eax, eax
    mov dx, 0xf4
    out dx, eax
    cli
    hlt
""")
    lines.append(_HEX32)
    lines.append(tail)
    return "\n".join(lines) + "\n"


FIELDS = ("vector", "error", "index", "eip", "cr2", "ecx", "cs")
_LINE = re.compile(rb"^X((?: [0-9a-f]{8}){7})$")
_MARK = re.compile(rb"^L ([0-9a-f]{8}) ([0-9a-f]{8})$")


def parse(output: bytes) -> list:
    """The exception log a probe printed: one dict per exception (index -1: the saved EIP was
    none of the listed instructions), or None if the guest never reached its end. The marks'
    addresses come as entries {"mark": n, "address": a} after the exceptions."""
    lines = output.split(b"\n")
    if b"." not in lines:
        return None
    entries = []
    for line in lines:
        match = _LINE.match(line)
        if match:
            values = [int(word, 16) for word in match.group(1).split()]
            entry = dict(zip(FIELDS, values))
            if entry["index"] == 0xFFFFFFFF:
                entry["index"] = -1
            entries.append(entry)
        match = _MARK.match(line)
        if match:
            entries.append({"mark": int(match.group(1), 16), "address": int(match.group(2), 16)})
    return entries


def brief(entries, fields=("vector", "error", "index")) -> list:
    """The exceptions as tuples of `fields` (vector, error code, instruction index by default),
    a mark's address as the tuple ("mark", address)."""
    if entries is None:
        return None
    return [("mark", entry["address"]) if "mark" in entry else tuple(entry[name] for name in fields)
            for entry in entries]


def qemu_available() -> bool:
    return shutil.which("qemu-system-i386") is not None


def run_under_qemu(source: str) -> list:
    """The probe's log under qemu-system-i386 (the reference)."""
    from tools.fuzzlib.qemu import boot_under_qemu
    return parse(boot_under_qemu(source, timeout=60).stdout)


def run_under_monitor(tmp_path, source: str, **config) -> list:
    from tests.guests import run_source
    _result, output, _vm = run_source(tmp_path, source, **{"timeout": 120, **config})
    return parse(output)
