// alias_smc: code rewritten through another mapping of its frame, as a kernel does when it
// loads a program into a frame through its own mapping of physical memory and runs it at
// another linear address. The CPU (and QEMU, by physical page) notices every store into code
// it has run, whatever linear address the store went through: a store through a page mapped
// after the code ran, then stores through the kernel's identity mapping of the frame (the
// same one that loaded the first program, so its translation was cached before any code of
// the frame ran), followed by an invlpg of the code's page, a CR3 reload, and one more store
// through the identity mapping. Exit 0 if all is right, else 0x1C.
#include "check.h"
#include "paging.h"

#define FAIL_EXIT       0x1C
#define TEST_VA         0x40000000              // PDE 0x100: pt_test
#define V_RUN           0x40090000              // the frame, read-only: where the code runs
#define V_WRITE         0x40091000              // the frame, writable
#define PROGRAM_SIZE    6                       // mov eax, imm32; ret

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
        mov     eax, offset page_dir
        mov     edx, offset pt_low
        mov     ecx, PG_KERNEL
        call    identity_map_low
        mov     eax, offset pt_test
        or      eax, PG_KERNEL
        mov     [page_dir + (TEST_VA >> 22) * 4], eax
        mov     eax, offset page_dir
        call    paging_enable

        PUTS    "one code frame, run at 0x40090000, rewritten through other mappings:\n"
        mov     esi, offset program_a           // loaded through the identity mapping
        call    load_identity
        mov     eax, V_RUN
        mov     edx, offset frame_code
        or      edx, PG_P
        call    map_page
        call    run
        CHECK_HEX 0xC0DE000A, "loaded through the kernel's identity mapping, run: "

        mov     eax, V_WRITE
        mov     edx, offset frame_code
        or      edx, PG_KERNEL
        call    map_page
        mov     esi, offset program_b
        mov     edi, V_WRITE
        call    load
        call    run
        CHECK_HEX 0xC0DE000B, "rewritten through a page mapped after it ran: "

        mov     esi, offset program_c
        call    load_identity
        call    run
        CHECK_HEX 0xC0DE000C, "rewritten through the identity mapping again: "
        invlpg  [V_RUN]
        call    run
        CHECK_HEX 0xC0DE000C, "  after invlpg of the page it runs at: "
        mov     eax, cr3
        mov     cr3, eax
        call    run
        CHECK_HEX 0xC0DE000C, "  after a CR3 reload: "
        mov     esi, offset program_d
        call    load_identity
        call    run
        CHECK_HEX 0xC0DE000D, "rewritten through the identity mapping after the reload: "
        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

// load_identity: copy the program at ESI into the frame through its identity mapping.
load_identity:
        mov     edi, offset frame_code
// load: copy the program at ESI (PROGRAM_SIZE bytes) to EDI.
load:
        mov     ecx, PROGRAM_SIZE
        rep     movsb
        ret

run:
        mov     eax, V_RUN
        jmp     eax                             // returns to run's caller

// The programs (position independent, PROGRAM_SIZE bytes each).
program_a:
        mov     eax, 0xC0DE000A
        ret
program_b:
        mov     eax, 0xC0DE000B
        ret
program_c:
        mov     eax, 0xC0DE000C
        ret
program_d:
        mov     eax, 0xC0DE000D
        ret

        .section .rodata
name:   .asciz  "alias_smc"

        .bss
        .p2align 12
page_dir:       .skip   PAGE_SIZE
pt_low:         .skip   PAGE_SIZE
pt_test:        .skip   PAGE_SIZE
frame_code:     .skip   PAGE_SIZE
