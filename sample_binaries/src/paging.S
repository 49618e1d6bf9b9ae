// paging: an identity-mapped kernel turns paging on and uses it as a kernel does, checking
// what the CPU shows at every step: CR0/CR3, the entries the CPU marks accessed and dirty,
// page faults taken by its own #PF handler (CR2, the error code and the saved EIP) and fixed
// there (demand paging of data and of code, copy-on-write), accesses and a `rep movsd` that
// cross into a page not present, CR0.WP at ring 0, 4 MiB pages (CR4.PSE), the accessed and
// dirty bits that exception delivery itself sets (the IDT's page, the stack's page), and one
// code frame mapped at two linear addresses, patched through one of them. Exit 0 if all is
// right, else 0x18.
#include "check.h"
#include "paging.h"

#define FAIL_EXIT       0x18
#define TEST_VA         0x40000000              // PDE 0x100: pt_test, pages mapped per test
#define BIG_VA          0x01000000              // PDE 4: a 4 MiB page onto BIG_PA
#define BIG_RO_VA       0x01400000              // PDE 5: the same 4 MiB frame, read-only
#define BIG_PA          0x00400000
#define ABSENT_VA       0x80000000              // PDE 0x200: not present
#define BP_VECTOR       3

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
        mov     eax, BP_VECTOR
        mov     edx, offset bp_entry
        call    idt_set_gate
        mov     esi, offset idt                 // the live IDT gets a page of its own
        mov     edi, offset idt_page
        mov     ecx, 256 * 2
        cld
        rep     movsd
        lidt    [idt_page_descriptor]

        call    build_tables
        call    paging_on
        call    demand_paging
        call    crossing
        call    write_protect
        call    copy_on_write
        call    large_pages
        call    accessed_dirty
        call    delivery_bits
        call    code_aliases
        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

bp_entry:
        iretd

// build_tables: 0-4 MiB one to one in 4 KiB pages, supervisor (page 0 absent: null pointers
// fault), and an empty table for the test region at TEST_VA.
build_tables:
        mov     eax, offset page_dir
        mov     edx, offset pt_low
        mov     ecx, PG_KERNEL
        call    identity_map_low
        mov     eax, offset pt_test
        or      eax, PG_KERNEL
        mov     [page_dir + (TEST_VA >> 22) * 4], eax
        ret

// ---------------------------------------------------------------- paging on
paging_on:
        PUTS    "paging on, identity-mapped kernel:\n"
        mov     eax, offset page_dir
        call    paging_enable
        mov     eax, cr0
        CHECK_HEX 0x80000011, "CR0: "
        mov     eax, cr3
        mov     ebx, offset page_dir
        CHECK_HEX ebx, "CR3: "
        mov     eax, [magic]
        CHECK_HEX 0x5AFE5AFE, "a kernel variable through the identity map: "
        PDE_BITS PG_AD, offset paging_on
        CHECK_HEX PG_A, "PDE of the kernel's table: accessed (A/D): "
        PTE_BITS PG_A, offset paging_on
        CHECK_HEX PG_A, "PTE of this code page: accessed: "
        PTE_BITS PG_AD, esp
        CHECK_HEX PG_AD, "PTE of the stack page: accessed and dirty: "
        mov     eax, TEST_VA
        mov     edx, offset frame_a
        or      edx, PG_KERNEL
        call    map_page
        mov     dword ptr [TEST_VA + 0x10], 0x11223344
        mov     eax, [frame_a + 0x10]
        CHECK_HEX 0x11223344, "a store through another linear page lands in its frame: "
        ret

// ---------------------------------------------------------------- #PF, fixed or skipped
demand_paging:
        PUTS    "page faults taken by the kernel's handler:\n"
        mov     dword ptr [frame_b + 0x10], 0xB0B0B0B0
        mov     eax, offset frame_b
        or      eax, PG_KERNEL
        mov     [pf_fix_frame], eax
        mov     dword ptr [pf_fixer], offset fix_map
np_read:
        mov     eax, [TEST_VA + 0x1010]
        CHECK_HEX 0xB0B0B0B0, "read of a page not present, mapped by the handler, read again: "
        mov     eax, [pf_cr2]
        CHECK_HEX 0x40001010, "  CR2: "
        mov     eax, [pf_error]
        CHECK_HEX 0, "  error code (supervisor read, not present): "
        mov     eax, [pf_eip]
        mov     ebx, offset np_read
        CHECK_HEX ebx, "  saved EIP: the read: "

        mov     eax, offset frame_c
        or      eax, PG_KERNEL
        mov     [pf_fix_frame], eax
        mov     dword ptr [pf_fixer], offset fix_map
np_write:
        mov     dword ptr [TEST_VA + 0x2020], 0xC0C0C0C0
        mov     eax, [frame_c + 0x20]
        CHECK_HEX 0xC0C0C0C0, "write to a page not present, mapped by the handler, the store ran again: "
        mov     eax, [pf_cr2]
        CHECK_HEX 0x40002020, "  CR2: "
        mov     eax, [pf_error]
        CHECK_HEX PF_ERR_W, "  error code (supervisor write, not present): "
        mov     eax, [pf_eip]
        mov     ebx, offset np_write
        CHECK_HEX ebx, "  saved EIP: the store: "

        mov     esi, offset code_good           // demand paging of code
        mov     edi, offset frame_code
        mov     ecx, offset code_good_end - code_good
        rep     movsb
        mov     eax, offset frame_code
        or      eax, PG_KERNEL
        mov     [pf_fix_frame], eax
        mov     dword ptr [pf_fixer], offset fix_map
        mov     eax, TEST_VA + 0x3000
        call    eax
        CHECK_HEX 0x600DC0DE, "call into a page not present, mapped by the handler, the code ran: "
        mov     eax, [pf_cr2]
        CHECK_HEX 0x40003000, "  CR2: "
        mov     eax, [pf_error]
        CHECK_HEX 0, "  error code (supervisor fetch, not present): "
        mov     eax, [pf_eip]
        CHECK_HEX 0x40003000, "  saved EIP: the call's target: "

        mov     eax, 0x1234ABCD
        PF_TRY  mov eax, [ABSENT_VA + 0x44]
        CHECK_HEX 0x1234ABCD, "read through a PDE not present: skipped, EAX kept "
        mov     eax, [pf_cr2]
        CHECK_HEX 0x80000044, "  CR2: "
        mov     eax, [pf_error]
        CHECK_HEX 0, "  error code: "
        PF_TRY  mov dword ptr [ABSENT_VA + 0x48], 1
        mov     eax, [pf_cr2]
        CHECK_HEX 0x80000048, "write through a PDE not present: CR2 "
        mov     eax, [pf_error]
        CHECK_HEX PF_ERR_W, "  error code: "
        PF_TRY  mov eax, [8]
        mov     eax, [pf_cr2]
        CHECK_HEX 8, "null pointer read (page 0 not mapped): CR2 "
        mov     eax, [pf_error]
        CHECK_HEX 0, "  error code: "
        mov     eax, [pf_count]
        CHECK_DEC 6, "page faults so far: "
        ret

// ---------------------------------------------------------------- across a page boundary
crossing:
        PUTS    "accesses across a page boundary, the second page not present:\n"
        mov     eax, TEST_VA + 0x4000
        mov     edx, offset frame_d
        or      edx, PG_KERNEL
        call    map_page
        mov     dword ptr [frame_d + 0xFFC], 0x44332211
        mov     dword ptr [frame_e], 0x88776655
        mov     eax, offset frame_e
        or      eax, PG_KERNEL
        mov     [pf_fix_frame], eax
        mov     dword ptr [pf_fixer], offset fix_map
        mov     eax, [TEST_VA + 0x4FFE]
        CHECK_HEX 0x66554433, "4-byte read at 0x40004ffe, the handler maps 0x40005000: "
        mov     eax, [pf_cr2]
        CHECK_HEX 0x40005000, "  CR2: the second page "
        mov     eax, [pf_error]
        CHECK_HEX 0, "  error code: "

        mov     eax, TEST_VA + 0x6000
        mov     edx, offset frame_f
        or      edx, PG_KERNEL
        call    map_page
        mov     eax, offset frame_g
        or      eax, PG_KERNEL
        mov     [pf_fix_frame], eax
        mov     dword ptr [pf_fixer], offset fix_map_noting
        mov     eax, 0xDDCCBBAA
        mov     [TEST_VA + 0x6FFE], eax
        mov     eax, [seen_at_fault]
        CHECK_HEX 0, "4-byte write at 0x40006ffe: first page untouched when the fault came: "
        mov     eax, [frame_f + 0xFFC]
        CHECK_HEX 0xBBAA0000, "  then the store ran again: first page "
        mov     eax, [frame_g]
        CHECK_HEX 0x0000DDCC, "  second page "
        mov     eax, [pf_cr2]
        CHECK_HEX 0x40007000, "  CR2: "
        mov     eax, [pf_error]
        CHECK_HEX PF_ERR_W, "  error code: "

        mov     eax, TEST_VA + 0x8000
        mov     edx, offset frame_h
        or      edx, PG_KERNEL
        call    map_page
        mov     eax, offset frame_i
        or      eax, PG_KERNEL
        mov     [pf_fix_frame], eax
        mov     dword ptr [pf_fixer], offset fix_map
        mov     esi, offset pattern
        mov     edi, TEST_VA + 0x8FF0
        mov     ecx, 8
        rep     movsd
        mov     eax, [pf_ecx]
        CHECK_HEX 4, "rep movsd of 8 dwords to 0x40008ff0: ECX at the fault "
        mov     eax, [pf_edi]
        CHECK_HEX 0x40009000, "  EDI at the fault: "
        mov     eax, [pf_cr2]
        CHECK_HEX 0x40009000, "  CR2: "
        mov     eax, ecx
        CHECK_HEX 0, "  ECX after the resumed copy: "
        mov     eax, edi
        CHECK_HEX 0x40009010, "  EDI after: "
        mov     eax, [frame_h + 0xFFC]
        CHECK_HEX 4, "  last dword in the first page: "
        mov     eax, [frame_i + 0xC]
        CHECK_HEX 8, "  last dword in the second page: "
        ret

fix_map_noting:
        mov     ecx, [frame_f + 0xFFC]
        mov     [seen_at_fault], ecx
        jmp     fix_map

// ---------------------------------------------------------------- CR0.WP
write_protect:
        PUTS    "read-only pages at ring 0 (CR0.WP):\n"
        mov     dword ptr [frame_ro], 0xAAAA
        mov     eax, TEST_VA + 0xA000
        mov     edx, offset frame_ro
        or      edx, PG_P
        call    map_page
        mov     ebx, [pf_count]
        mov     dword ptr [TEST_VA + 0xA000], 0x1111
        mov     eax, [frame_ro]
        CHECK_HEX 0x1111, "WP clear: the kernel writes a read-only page: "
        mov     eax, [pf_count]
        CHECK_HEX ebx, "  no fault: page faults still "
        mov     eax, cr0
        or      eax, CR0_WP
        mov     cr0, eax
        invlpg  [TEST_VA + 0xA000]
        mov     eax, cr0
        CHECK_HEX 0x80010011, "CR0 with WP: "
        PF_TRY  mov dword ptr [TEST_VA + 0xA000], 0x2222
        mov     eax, [pf_cr2]
        CHECK_HEX 0x4000A000, "WP set: the same write faults: CR2 "
        mov     eax, [pf_error]
        CHECK_HEX 3, "  error code (supervisor write, protection): "
        mov     eax, [TEST_VA + 0xA000]
        CHECK_HEX 0x1111, "  the page kept "
        ret

// ---------------------------------------------------------------- copy-on-write
copy_on_write:
        PUTS    "copy-on-write: one frame read-only at two pages, the handler copies it:\n"
        mov     dword ptr [frame_shared], 0x5AAED000
        mov     dword ptr [frame_shared + 8], 0x5AAED008
        mov     eax, TEST_VA + 0xB000
        mov     edx, offset frame_shared
        or      edx, PG_P
        call    map_page
        mov     eax, TEST_VA + 0xC000
        call    map_page
        mov     eax, [TEST_VA + 0xB008]
        CHECK_HEX 0x5AAED008, "read through the first page: "
        mov     eax, offset frame_cow
        or      eax, PG_KERNEL
        mov     [pf_fix_frame], eax
        mov     dword ptr [pf_fixer], offset fix_cow
        mov     ebx, [pf_count]
cow_store:
        mov     dword ptr [TEST_VA + 0xB008], 0xC0FFEE08
        mov     eax, [pf_error]
        CHECK_HEX 3, "write to it: #PF error code "
        mov     eax, [pf_eip]
        mov     ecx, offset cow_store
        CHECK_HEX ecx, "  saved EIP: the store "
        mov     eax, [TEST_VA + 0xB008]
        CHECK_HEX 0xC0FFEE08, "  after the copy the store ran again: "
        mov     eax, [TEST_VA + 0xB000]
        CHECK_HEX 0x5AAED000, "  the rest of the page was copied: "
        mov     eax, [TEST_VA + 0xC008]
        CHECK_HEX 0x5AAED008, "  the other page still reads the shared frame: "
        mov     eax, [frame_shared + 8]
        CHECK_HEX 0x5AAED008, "  the shared frame is unchanged: "
        PTE_BITS 0xFFF, TEST_VA + 0xB000
        CHECK_HEX 0x063, "  the new entry's flags (P RW A D): "
        PTE_BITS PG_FRAME, TEST_VA + 0xB000
        mov     ecx, offset frame_cow
        CHECK_HEX ecx, "  its frame: the copy "
        inc     ebx
        mov     dword ptr [TEST_VA + 0xB00C], 1
        mov     eax, [pf_count]
        CHECK_HEX ebx, "  a second write does not fault: page faults "
        ret

// ---------------------------------------------------------------- 4 MiB pages
large_pages:
        PUTS    "4 MiB pages (CR4.PSE):\n"
        mov     eax, cr4
        or      eax, CR4_PSE
        mov     cr4, eax
        mov     eax, cr4
        CHECK_HEX CR4_PSE, "CR4: "
        mov     dword ptr [page_dir + (BIG_VA >> 22) * 4], BIG_PA | PG_PS | PG_KERNEL
        mov     dword ptr [page_dir + (BIG_RO_VA >> 22) * 4], BIG_PA | PG_PS | PG_P
        mov     dword ptr [BIG_VA + 0x1234], 0xB16B16B1
        mov     dword ptr [BIG_VA + 0x3FFFFC], 0xE0DE0DE0
        mov     eax, TEST_VA + 0xD000
        mov     edx, BIG_PA + 0x1000
        or      edx, PG_KERNEL
        call    map_page
        mov     eax, TEST_VA + 0xE000
        mov     edx, BIG_PA + 0x3FF000
        or      edx, PG_KERNEL
        call    map_page
        mov     eax, [TEST_VA + 0xD234]
        CHECK_HEX 0xB16B16B1, "written at 0x01001234, read through a 4 KiB page of 0x00401000: "
        mov     eax, [TEST_VA + 0xEFFC]
        CHECK_HEX 0xE0DE0DE0, "the large page's last dword, through a 4 KiB page of 0x007ff000: "
        mov     eax, [BIG_RO_VA + 0x1234]
        CHECK_HEX 0xB16B16B1, "the same frame through the read-only large page: "
        PF_TRY  mov dword ptr [BIG_RO_VA + 0x2000], 1
        mov     eax, [pf_cr2]
        CHECK_HEX 0x01402000, "write to the read-only large page: CR2 "
        mov     eax, [pf_error]
        CHECK_HEX 3, "  error code: "
        PDE_BITS 0xFFF, BIG_VA
        CHECK_HEX 0x0E3, "PDE of the written large page (PS D A RW P): "
        PDE_BITS 0xFFF, BIG_RO_VA
        CHECK_HEX 0x0A1, "PDE of the read-only one (PS A P): "
        ret

// ---------------------------------------------------------------- accessed and dirty bits
accessed_dirty:
        PUTS    "accessed and dirty bits:\n"
        mov     edx, offset frame_x
        or      edx, PG_KERNEL
        mov     eax, TEST_VA + 0x10000
        call    map_page
        add     edx, PAGE_SIZE                  // frame_y, frame_z, frame_w follow frame_x
        mov     eax, TEST_VA + 0x11000
        call    map_page
        add     edx, PAGE_SIZE
        mov     eax, TEST_VA + 0x12000
        call    map_page
        add     edx, PAGE_SIZE
        mov     eax, TEST_VA + 0x13000
        call    map_page
        mov     eax, TEST_VA
        call    pde_for
        and     dword ptr [eax], ~PG_A
        mov     eax, cr3                        // flush the TLB: the next use walks again
        mov     cr3, eax
        PDE_BITS PG_AD, TEST_VA
        CHECK_HEX 0, "PDE of the test region after clearing A: "
        mov     eax, [TEST_VA + 0x10000]
        PTE_BITS PG_AD, TEST_VA + 0x10000
        CHECK_HEX PG_A, "read: PTE accessed, not dirty: "
        PDE_BITS PG_AD, TEST_VA
        CHECK_HEX PG_A, "  and its PDE accessed: "
        mov     dword ptr [TEST_VA + 0x11000], 1
        PTE_BITS PG_AD, TEST_VA + 0x11000
        CHECK_HEX PG_AD, "write: PTE accessed and dirty: "
        PTE_BITS PG_AD, TEST_VA + 0x12000
        CHECK_HEX 0, "untouched page: neither: "
        mov     eax, [TEST_VA + 0x13000]
        PTE_BITS PG_AD, TEST_VA + 0x13000
        CHECK_HEX PG_A, "read, then "
        mov     dword ptr [TEST_VA + 0x13004], 2
        PTE_BITS PG_AD, TEST_VA + 0x13000
        CHECK_HEX PG_AD, "  a write to the same page sets dirty: "

        mov     eax, TEST_VA
        call    pde_for
        and     dword ptr [eax], ~PG_A
        mov     eax, cr3
        mov     cr3, eax
        PF_TRY  mov eax, [TEST_VA + 0x3F0000]
        mov     eax, [pf_cr2]
        CHECK_HEX 0x403F0000, "read of a PTE not present: CR2 "
        PDE_BITS PG_AD, TEST_VA
        CHECK_HEX PG_A, "  the PDE it went through is marked accessed: "
        mov     eax, TEST_VA + 0xA000           // the read-only page of the WP test
        call    pte_for
        and     dword ptr [eax], ~PG_AD
        invlpg  [TEST_VA + 0xA000]
        PF_TRY  mov dword ptr [TEST_VA + 0xA000], 3
        mov     eax, [pf_error]
        CHECK_HEX 3, "write to a read-only page (WP): error code "
        PTE_BITS PG_AD, TEST_VA + 0xA000
        CHECK_HEX 0, "  the refused PTE is not marked: "
        ret

// ---------------------------------------------------------------- bits set by delivery
delivery_bits:
        PUTS    "accessed and dirty bits set by exception delivery:\n"
        mov     eax, offset idt_page
        call    pte_for
        and     dword ptr [eax], ~PG_AD
        mov     eax, offset fresh_stack
        call    pte_for
        and     dword ptr [eax], ~PG_AD
        mov     eax, cr3
        mov     cr3, eax
        PTE_BITS PG_AD, offset idt_page
        CHECK_HEX 0, "PTE of the IDT's page, cleared: "
        mov     [saved_esp], esp
        mov     esp, offset fresh_stack + PAGE_SIZE
        int3
        mov     esp, [saved_esp]
        PTE_BITS PG_AD, offset idt_page
        CHECK_HEX PG_A, "after int3: the IDT's page accessed (the CPU read the gate): "
        PTE_BITS PG_AD, offset fresh_stack
        CHECK_HEX PG_AD, "  the stack page the frame went to, accessed and dirty: "
        ret

// ---------------------------------------------------------------- code at two linear addresses
code_aliases:
        PUTS    "one code frame at two linear pages, patched through one of them:\n"
        mov     esi, offset code_ones
        mov     edi, offset frame_code2
        mov     ecx, offset code_ones_end - code_ones
        rep     movsb
        mov     eax, TEST_VA + 0x14000
        mov     edx, offset frame_code2
        or      edx, PG_KERNEL
        call    map_page
        mov     eax, TEST_VA + 0x15000
        mov     edx, offset frame_code2
        or      edx, PG_P
        call    map_page
        mov     eax, TEST_VA + 0x15000
        call    eax
        CHECK_HEX 0x11111111, "call through the read-only page: "
        mov     eax, TEST_VA + 0x14000
        call    eax
        CHECK_HEX 0x11111111, "call through the writable page: "
        mov     dword ptr [TEST_VA + 0x14001], 0x22222222
        mov     eax, TEST_VA + 0x15000
        call    eax
        CHECK_HEX 0x22222222, "patched through the writable page, called through the other: "
        ret

// Code copied into frames (position independent).
code_good:
        mov     eax, 0x600DC0DE
        ret
code_good_end:
code_ones:
        mov     eax, 0x11111111
        ret
code_ones_end:

        .section .rodata
name:   .asciz  "paging"
        .p2align 2
pattern:
        .long   1, 2, 3, 4, 5, 6, 7, 8

        .data
        .p2align 2
magic:          .long   0x5AFE5AFE
saved_esp:      .long   0
seen_at_fault:  .long   0xFFFFFFFF
        .p2align 1
idt_page_descriptor:
        .word   256 * 8 - 1
        .long   idt_page

        .bss
        .p2align 12
page_dir:       .skip   PAGE_SIZE
pt_low:         .skip   PAGE_SIZE
pt_test:        .skip   PAGE_SIZE
idt_page:       .skip   PAGE_SIZE
fresh_stack:    .skip   PAGE_SIZE
frame_a:        .skip   PAGE_SIZE
frame_b:        .skip   PAGE_SIZE
frame_c:        .skip   PAGE_SIZE
frame_code:     .skip   PAGE_SIZE
frame_d:        .skip   PAGE_SIZE
frame_e:        .skip   PAGE_SIZE
frame_f:        .skip   PAGE_SIZE
frame_g:        .skip   PAGE_SIZE
frame_h:        .skip   PAGE_SIZE
frame_i:        .skip   PAGE_SIZE
frame_ro:       .skip   PAGE_SIZE
frame_shared:   .skip   PAGE_SIZE
frame_cow:      .skip   PAGE_SIZE
frame_x:        .skip   PAGE_SIZE
frame_y:        .skip   PAGE_SIZE
frame_z:        .skip   PAGE_SIZE
frame_w:        .skip   PAGE_SIZE
frame_code2:    .skip   PAGE_SIZE
