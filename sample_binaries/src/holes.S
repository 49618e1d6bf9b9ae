// holes: what a pure trap-and-emulate monitor cannot hide on the 386. The kernel prints what it
// reads through two sensitive but unprivileged instructions. On the bare machine (QEMU), under
// binary translation and under hardware assistance they show the kernel's own state; with the
// kernel deprivileged to ring 3 (vmm run --mode trap) `mov ax, cs` shows RPL 3, and a popf that
// should set IF again after cli silently keeps it clear, and the monitor's report names both.
// Not self-checking: the output is what differs. Exit 0.
#include "runtime.h"

        .text
        .globl  kmain
kmain:
        PUTS    "mov ax, cs: 0x"
        xor     eax, eax
        mov     ax, cs
        call    print_hex16
        call    newline

        pushfd                                  // the kernel's flags, IF included
        pop     edx
        or      edx, 0x200
        cli
        PUTS    "IF after cli: "
        call    print_if
        push    edx                             // restore them: IF set again
        popfd
        PUTS    "IF after popf of flags with IF set: "
        call    print_if
        cli
        xor     eax, eax
        ret

// print_if: "1" or "0" and a newline for EFLAGS.IF now.
print_if:
        pushfd
        pop     eax
        shr     eax, 9
        and     eax, 1
        call    print_dec
        jmp     newline
