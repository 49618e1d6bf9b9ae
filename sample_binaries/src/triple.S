// triple: load an IDT with limit 0 and execute ud2; #UD, then #GP and #DF cannot be
// delivered either, so the CPU triple-faults (QEMU -no-reboot then exits).
#include "runtime.h"

        .text
        .globl  kmain
kmain:
        PUTS    "triple: loading an empty IDT (limit 0) and executing ud2\n"
        lidt    [empty_idt]
        ud2
        // Never reached: if it is, say so and exit with a distinctive value.
        PUTS    "triple: still alive after ud2?!\n"
        mov     eax, 0xEE
        ret

        .data
        .p2align 1
empty_idt:
        .word   0                               // limit 0: not even vector 0 fits
        .long   0
