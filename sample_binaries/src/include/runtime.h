// Shared constants and macros for the sample guest kernels (included by every .S file).
#ifndef SAMPLE_RUNTIME_H
#define SAMPLE_RUNTIME_H

// ---- Multiboot v1 -------------------------------------------------------
#define MB_HEADER_MAGIC     0x1BADB002
#define MB_BOOT_MAGIC       0x2BADB002
#define MB_HEADER_FLAGS     0x00000003   // bit0: align modules on 4 KiB, bit1: want memory info (NO bit 16)

// ---- Segment selectors (see gdt in crt0.S) ------------------------------
#define KERNEL_CS           0x08
#define KERNEL_DS           0x10

// ---- COM1 16550 UART ----------------------------------------------------
#define COM1                0x3F8
#define UART_RBR            (COM1 + 0)  // read, DLAB=0
#define UART_THR            (COM1 + 0)  // write, DLAB=0
#define UART_DLL            (COM1 + 0)  // DLAB=1
#define UART_IER            (COM1 + 1)  // DLAB=0
#define UART_DLM            (COM1 + 1)  // DLAB=1
#define UART_IIR            (COM1 + 2)  // read
#define UART_FCR            (COM1 + 2)  // write
#define UART_LCR            (COM1 + 3)
#define UART_MCR            (COM1 + 4)
#define UART_LSR            (COM1 + 5)
#define UART_MSR            (COM1 + 6)
#define UART_SCR            (COM1 + 7)
#define LSR_DR              0x01
#define LSR_THRE            0x20

// ---- isa-debug-exit -----------------------------------------------------
#define DEBUG_EXIT_PORT     0xF4

#ifdef __ASSEMBLER__
        .intel_syntax noprefix

// PUTS "text": print a literal string (may contain commas and \n escapes).
// Preserves all registers and flags are not relied upon by callers.
        .macro PUTS text:vararg
        .pushsection .rodata
.Lputs_str\@:
        .asciz \text
        .popsection
        push    esi
        mov     esi, offset .Lputs_str\@
        call    puts
        pop     esi
        .endm
#endif

#endif
