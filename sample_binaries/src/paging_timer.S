// paging_timer: a paging kernel with a clock. It takes a page fault, then starts the timer
// (the i8259 pair at 0x20, the i8254 at 100 Hz) and waits for ticks with sti; hlt; CR2 must
// still hold the fault's address, and the faults that follow must arrive as themselves: a
// #PF, a #GP from a segment load, then page faults on eight pages touched one per timer tick
// and mapped on demand by the handler, each seen with its own CR2. Exit 0 if all is right,
// else 0x1D.
#include "check.h"
#include "paging.h"

#define FAIL_EXIT       0x1D
#define TEST_VA         0x40000000              // PDE 0x100: pt_test
#define ABSENT_VA       0x80000000              // PDE 0x200: not present
#define TIMER_VECTOR    0x20
#define GP_VECTOR       13
#define EOI             0x20
#define DEMAND_PAGES    8

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
        mov     eax, PF_VECTOR
        mov     edx, offset pf_entry
        mov     cl, GATE_INTR
        call    idt_set_gate
        mov     eax, GP_VECTOR
        mov     edx, offset gp_entry
        call    idt_set_gate
        mov     eax, TIMER_VECTOR
        mov     edx, offset timer_entry
        call    idt_set_gate
        mov     eax, offset page_dir
        mov     edx, offset pt_low
        mov     ecx, PG_KERNEL
        call    identity_map_low
        mov     eax, offset pt_test
        or      eax, PG_KERNEL
        mov     [page_dir + (TEST_VA >> 22) * 4], eax
        mov     eax, offset page_dir
        call    paging_enable

        PUTS    "a page fault, then timer interrupts:\n"
        PF_TRY  mov eax, [ABSENT_VA + 0x40]
        mov     eax, [pf_cr2]
        CHECK_HEX 0x80000040, "read through a PDE not present: CR2 "
        mov     al, 0xFE                        // IRQ0 only
        call    pic_remap
        mov     ax, 11932                       // 100 Hz
        call    pit_periodic
1:      sti
        hlt
        cli
        cmp     dword ptr [ticks], 5
        jb      1b
        mov     eax, 1
        CHECK_TRUE "five ticks taken with sti; hlt"
        mov     eax, cr2
        CHECK_HEX 0x80000040, "CR2 afterwards, still the fault's address: "

        PUTS    "the next exceptions:\n"
        mov     ebx, [pf_count]
        inc     ebx
        PF_TRY  mov eax, [ABSENT_VA + 0x80]
        mov     eax, [pf_count]
        CHECK_HEX ebx, "a read through a PDE not present is one more #PF: page faults "
        mov     eax, [pf_cr2]
        CHECK_HEX 0x80000080, "  CR2: "
        mov     eax, [pf_error]
        CHECK_HEX 0, "  error code: "
        mov     dword ptr [gp_error], 0xFFFFFFFF
        mov     dword ptr [gp_resume], offset after_gp
        mov     ax, 0x33                        // past the GDT's limit
        mov     es, ax
after_gp:
        mov     eax, [gp_error]
        CHECK_HEX 0x30, "mov es, a selector past the GDT: #GP, error code "

        PUTS    "pages mapped on demand, one per timer tick:\n"
        mov     dword ptr [pf_count], 0
        mov     dword ptr [ticks], 0
        xor     ebx, ebx
2:      mov     eax, ebx                        // frame_pool + ebx pages, at TEST_VA + ebx pages
        shl     eax, 12
        add     eax, offset frame_pool
        or      eax, PG_KERNEL
        mov     [pf_fix_frame], eax
        mov     dword ptr [pf_fixer], offset fix_map
        sti
        hlt
        cli
        mov     eax, ebx
        shl     eax, 12
        mov     ecx, ebx
        add     ecx, 0xA0
        mov     [TEST_VA + 0x10 + eax], ecx     // faults, the handler maps the frame
        mov     eax, [pf_cr2]
        mov     [cr2_seen + ebx * 4], eax
        inc     ebx
        cmp     ebx, DEMAND_PAGES
        jb      2b
        mov     al, 0xFF
        out     0x21, al
        mov     eax, [pf_count]
        CHECK_DEC DEMAND_PAGES, "page faults: "
        cmp     dword ptr [ticks], DEMAND_PAGES
        setae   al
        movzx   eax, al
        CHECK_TRUE "a tick before each"
        xor     ebx, ebx
        xor     edx, edx                        // the CR2s that were wrong
3:      mov     eax, ebx
        shl     eax, 12
        add     eax, TEST_VA + 0x10
        cmp     [cr2_seen + ebx * 4], eax
        je      4f
        inc     edx
4:      mov     eax, ebx
        shl     eax, 12
        mov     ecx, ebx
        add     ecx, 0xA0
        cmp     [frame_pool + eax + 0x10], ecx
        je      5f
        inc     edx
5:      inc     ebx
        cmp     ebx, DEMAND_PAGES
        jb      3b
        mov     eax, edx
        CHECK_DEC 0, "pages with a wrong CR2 or a store that went astray: "
        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

timer_entry:
        push    eax
        inc     dword ptr [ticks]
        mov     al, EOI
        out     0x20, al
        pop     eax
        iretd

// #GP: note the error code, resume at gp_resume.
gp_entry:
        push    eax
        mov     eax, [esp + 4]
        mov     [gp_error], eax
        mov     eax, [gp_resume]
        mov     [esp + 8], eax
        pop     eax
        add     esp, 4
        iretd

        .section .rodata
name:   .asciz  "paging_timer"

        .data
        .p2align 2
ticks:          .long   0
gp_error:       .long   0
gp_resume:      .long   0
cr2_seen:       .fill   DEMAND_PAGES, 4, 0

        .bss
        .p2align 12
page_dir:       .skip   PAGE_SIZE
pt_low:         .skip   PAGE_SIZE
pt_test:        .skip   PAGE_SIZE
frame_pool:     .skip   DEMAND_PAGES * PAGE_SIZE
