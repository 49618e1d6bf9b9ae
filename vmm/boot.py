"""The CPU state at guest entry, as QEMU's Multiboot option ROM leaves it (32-bit protected mode,
ring 0, flat segments from a boot GDT, paging and interrupts off, EAX/EBX per Multiboot), or as
Linux's 32-bit boot protocol asks (the same, with its selectors and ESI = boot_params)."""

from __future__ import annotations

from vmm.engine import Engine
from vmm.memory import PhysicalMemory
from vmm.monitor_layout import BOOT_GDT_OFFSET
from vmm.x86 import CR0_ET, CR0_PE, EFLAGS_FIXED, encode_segment

# The boot GDT lives in the monitor region (QEMU keeps its copy in the option ROM), with the same
# selectors: 0x08 flat 32-bit code, 0x10 flat 32-bit data, 0x18/0x20 16-bit code/data. The
# region is read-only to the engine, so every descriptor has its accessed bit already set: a
# segment load must never need to write it (a refused descriptor write inside reg_write leaves
# Unicorn 2.1.1 unable to map or unmap memory afterwards).
BOOT_CODE_SELECTOR = 0x08
BOOT_DATA_SELECTOR = 0x10
BOOT_GDT = b"".join([
    bytes(8),
    encode_segment(0, 0xFFFFF, 0x9B, 0xC),
    encode_segment(0, 0xFFFFF, 0x93, 0xC),
    encode_segment(0, 0x0FFFF, 0x9F, 0x0),
    encode_segment(0, 0x0FFFF, 0x93, 0x0),
])
REAL_MODE_IDT_LIMIT = 0x3FF    # the IDTR the firmware leaves behind: the real-mode vector table
RESET_LDT_LIMIT = 0xFFFF       # LDTR keeps its reset base 0 / limit 0xFFFF until the first lldt


# Linux's 32-bit boot protocol (Documentation/arch/x86/boot.rst) wants __BOOT_CS 0x10 and
# __BOOT_DS 0x18, flat, as its setup code's own GDT (arch/x86/boot/pm.c) has them.
LINUX_CODE_SELECTOR = 0x10
LINUX_DATA_SELECTOR = 0x18
LINUX_BOOT_GDT = b"".join([
    bytes(16),
    encode_segment(0, 0xFFFFF, 0x9B, 0xC),
    encode_segment(0, 0xFFFFF, 0x93, 0xC),
])


def enter_protected_mode(engine: Engine, memory: PhysicalMemory, entry: int, eax: int, ebx: int,
                         gdt: bytes = BOOT_GDT, code: int = BOOT_CODE_SELECTOR, data: int = BOOT_DATA_SELECTOR) -> None:
    gdt_address = memory.monitor_write(BOOT_GDT_OFFSET, gdt)
    engine.set_table_register("gdtr", gdt_address, len(gdt) - 1)
    engine.set_table_register("idtr", 0, REAL_MODE_IDT_LIMIT)
    engine.set_table_register("ldtr", 0, RESET_LDT_LIMIT)
    engine.set_reg("cr0", CR0_PE | CR0_ET)     # PE, plus ET as on every 387-class CPU
    engine.set_reg("cr4", 0)    # Unicorn's reset leaves SSE enabled (hflags) with CR4.OSFXSR clear
    engine.set_reg("cs", code)
    for segment in ("ds", "es", "fs", "gs", "ss"):
        engine.set_reg(segment, data)
    engine.set_reg("eflags", EFLAGS_FIXED)
    for register in ("ecx", "edx", "esp", "ebp", "esi", "edi"):
        engine.set_reg(register, 0)
    engine.set_reg("eax", eax)
    engine.set_reg("ebx", ebx)
    engine.set_reg("eip", entry)


def enter_linux(engine: Engine, memory: PhysicalMemory, entry: int, boot_params: int) -> None:
    """The 32-bit boot protocol's entry: flat segments 0x10/0x18, interrupts off, ESI = boot_params,
    EBP, EDI and EBX zero."""
    enter_protected_mode(engine, memory, entry, 0, 0, LINUX_BOOT_GDT, LINUX_CODE_SELECTOR, LINUX_DATA_SELECTOR)
    engine.set_reg("esi", boot_params)
