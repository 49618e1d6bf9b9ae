// Guest entry point: load our own flat GDT, reload segments, set up a stack, call kmain, exit.
//
// Contract with the sample:  uint32_t kmain(uint32_t boot_eax, uint32_t boot_ebx)  (cdecl,
// arguments on the stack).  kmain's return value is written to the isa-debug-exit port.
// The boot EAX/EBX are also kept in the globals boot_eax / boot_ebx.
#include "runtime.h"

        .section .text.start, "ax"
        .globl  _start
_start:
        cli
        cld
        mov     esi, eax                        // keep the boot registers: EAX = magic,
        mov     edi, ebx                        // EBX = Multiboot info pointer (if any)

        // Our own GDT.  lgdt's operand is read through DS; every loader we support
        // (Multiboot, our monitor's ELF/flat loaders) enters with flat segments.
        lgdt    [gdt_descriptor]
        jmp     KERNEL_CS:reload_cs             // far jump reloads CS from the new GDT
reload_cs:
        mov     ax, KERNEL_DS
        mov     ds, ax
        mov     es, ax
        mov     fs, ax
        mov     gs, ax
        mov     ss, ax
        mov     esp, offset stack_top
        xor     ebp, ebp

        mov     [boot_eax], esi
        mov     [boot_ebx], edi

        // Program the line control register ourselves (8N1, DLAB=0) so that THR
        // writes go to the transmitter whatever state the firmware left.
        mov     dx, UART_LCR
        mov     al, 0x03
        out     dx, al

        push    edi                             // kmain(boot_eax, boot_ebx)
        push    esi
        call    kmain
        add     esp, 8
        jmp     exit                            // exit(EAX) never returns

        .data
        .p2align 3
        .globl  gdt
gdt:
        .quad   0x0000000000000000              // 0x00: null descriptor
        .quad   0x00CF9A000000FFFF              // 0x08: code, base 0, limit 4 GiB, 32-bit, DPL0
        .quad   0x00CF92000000FFFF              // 0x10: data, base 0, limit 4 GiB, 32-bit, DPL0
gdt_end:
        .p2align 1
gdt_descriptor:
        .word   gdt_end - gdt - 1               // limit = 23
        .long   gdt

        .globl  boot_eax, boot_ebx
        .p2align 2
boot_eax:
        .long   0
boot_ebx:
        .long   0

        .bss
        .p2align 4
stack_bottom:
        .skip   16384
        .globl  stack_top
stack_top:
