// string_io: string port I/O (ins/outs, with and without rep) in ring 3, where the CPU checks
// the I/O permission (IOPL, then the TSS bitmap) before it touches memory or the port. Shown:
// a refused insb leaves its destination untouched, a refused rep form faults even with
// ECX = 0, a refused instruction leaves ESI, EDI and ECX as they were, and the allowed ones
// (the port the bitmap opens, any port at IOPL 3) move their data and registers. Exit 0 if all
// is right, else 0x1F.
#include "check.h"
#include "user.h"
#include "probe.h"

#define FAIL_EXIT       0x1F
#define GP_0            0x000D0000              // (vector << 16) | error code
#define KSTACK_SIZE     4096
#define FILL            0xA5A5A5A5              // what the buffer holds before each probe
#define LSR_IDLE        0x60                    // the UART's line status: transmitter empty

        .text
        .globl  kmain
kmain:
        push    ebx
        push    esi
        push    edi
        push    ebp
        mov     esi, offset name
        mov     eax, FAIL_EXIT
        call    check_begin
        call    idt_install_panic
        mov     eax, offset kstack + KSTACK_SIZE
        call    user_mode_init
        mov     eax, 13
        mov     edx, offset gp_entry
        mov     cl, GATE_INTR
        call    idt_set_gate
        mov     al, 0xFF                        // no interrupts from the PIC in this sample
        out     0x21, al
        out     0xA1, al

        mov     eax, offset phase1
        mov     edx, offset ustack + 4096
        mov     ecx, 0x202                      // IF, IOPL 0
        call    user_call
        call    check_phase1
        mov     eax, offset phase2
        mov     edx, offset ustack + 4096
        mov     ecx, 0x202 | EFL_IOPL3
        call    user_call
        call    check_phase2
        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

        PROBE_HANDLER gp_entry, 13, 1

// ---------------------------------------------------------------- ring 3
// refill: the buffer back to FILL, EDI and ESI at its start.
refill:
        mov     dword ptr [buffer], FILL
        mov     dword ptr [buffer + 4], FILL
        mov     edi, offset buffer
        mov     esi, offset buffer
        ret

phase1:                                         // IOPL 0: only port 0x80 is open
        cld
        mov     dx, UART_LSR                    // past the bitmap: closed
        call    refill
        PROBE   0, insb
        mov     eax, [buffer]
        VALUE   0
        mov     eax, edi
        sub     eax, offset buffer
        VALUE   1
        call    refill
        mov     dx, UART_LSR
        PROBE   1, insd
        mov     eax, [buffer]
        VALUE   2
        call    refill
        xor     ecx, ecx
        PROBE   2, rep insb
        call    refill
        xor     ecx, ecx
        PROBE   3, rep outsb
        call    refill
        mov     ecx, 3
        PROBE   4, rep insb
        mov     eax, ecx
        VALUE   3
        mov     eax, [buffer]
        VALUE   4
        call    refill
        PROBE   5, outsb
        mov     eax, esi
        sub     eax, offset buffer
        VALUE   5

        mov     dx, IO_PERMITTED_PORT           // the open port
        call    refill
        xor     ecx, ecx
        PROBE   6, rep insb
        call    refill
        mov     ecx, 2
        PROBE   7, rep outsb
        mov     eax, esi
        sub     eax, offset buffer
        VALUE   6
        mov     eax, ecx
        VALUE   7
        call    refill
        PROBE   8, outsw                        // ports 0x80 and 0x81: 0x81 is closed
        mov     eax, esi
        sub     eax, offset buffer
        VALUE   8
        int     USER_RETURN_VECTOR

phase2:                                         // IOPL 3: every port allowed
        cld
        mov     dx, UART_LSR
        call    refill
        PROBE   9, insb
        mov     eax, [buffer]
        VALUE   9
        call    refill
        mov     ecx, 2
        PROBE   10, rep insb
        mov     eax, [buffer]
        VALUE   10
        mov     eax, edi
        sub     eax, offset buffer
        VALUE   11
        call    refill
        xor     ecx, ecx
        PROBE   11, rep insb
        int     USER_RETURN_VECTOR

// ---------------------------------------------------------------- the kernel's checks
check_phase1:
        PUTS    "ring 3, IOPL 0:\n"
        FAULT   0, GP_0, "insb from a closed port: "
        READ    0, FILL, "  its destination: "
        READ    1, 0, "  EDI moved by: "
        FAULT   1, GP_0, "insd from a closed port: "
        READ    2, FILL, "  its destination: "
        FAULT   2, GP_0, "rep insb, ECX = 0, from a closed port: "
        FAULT   3, GP_0, "rep outsb, ECX = 0, to a closed port: "
        FAULT   4, GP_0, "rep insb, ECX = 3, from a closed port: "
        READ    3, 3, "  ECX after it: "
        READ    4, FILL, "  its destination: "
        FAULT   5, GP_0, "outsb to a closed port: "
        READ    5, 0, "  ESI moved by: "
        FAULT   6, NO_FAULT, "rep insb, ECX = 0, from the open port: "
        FAULT   7, NO_FAULT, "rep outsb, ECX = 2, to the open port: "
        READ    6, 2, "  ESI moved by: "
        READ    7, 0, "  ECX after it: "
        FAULT   8, GP_0, "outsw across a closed port: "
        READ    8, 0, "  ESI moved by: "
        ret

check_phase2:
        PUTS    "ring 3, IOPL 3:\n"
        FAULT   9, NO_FAULT, "insb from the line status port: "
        READ    9, (FILL & 0xFFFFFF00) | LSR_IDLE, "  the buffer: "
        FAULT   10, NO_FAULT, "rep insb, ECX = 2: "
        READ    10, (FILL & 0xFFFF0000) | (LSR_IDLE << 8) | LSR_IDLE, "  the buffer: "
        READ    11, 2, "  EDI moved by: "
        FAULT   11, NO_FAULT, "rep insb, ECX = 0: "
        ret

        .section .rodata
name:   .asciz  "string_io"

        .data
        .p2align 2
buffer:         .long   0, 0

        .bss
        .p2align 12
kstack:         .skip   KSTACK_SIZE
ustack:         .skip   4096
