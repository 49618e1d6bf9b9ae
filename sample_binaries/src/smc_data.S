// smc_data: data kept inside the code stream, as hand-written kernels and the fuzzer's programs
// keep it: a store into that data (into the page, and the engine block, that is running), then
// a patch of a function on the same page that already ran, and a call of it. The CPU and QEMU
// run the patched code; Unicorn 2.1.1 run untranslated keeps running the old one (after a
// store into the page of the running block it no longer sees stores into that page's code),
// which is why direct, trap and vt leave this sample out. Exit 0 if all is right, else 0x1E.
#include "check.h"

#define FAIL_EXIT       0x1E

        .section .smc, "awx"
smc_data_run:
        call    patched
        jmp     1f
inline_data:
        .long   0
1:      mov     dword ptr [inline_data], 1      // a store into the running block's page
        mov     dword ptr [patched + 1], 0x11111111
        call    patched
        ret

patched:
        mov     eax, 0x44444444
        ret

        .text
        .globl  kmain
kmain:
        push    esi
        mov     esi, offset name
        mov     eax, FAIL_EXIT
        call    check_begin
        PUTS    "code patched after a store into data in the running block:\n"
        call    smc_data_run
        CHECK_HEX 0x11111111, "the patched function returns: "
        mov     eax, [inline_data]
        CHECK_HEX 1, "the data in the code stream: "
        call    check_end
        pop     esi
        ret

        .section .rodata
name:   .asciz  "smc_data"
