// tlb: what a kernel sees when it edits a live page-table entry, before and after it flushes
// the translation (invlpg, a CR3 reload). The reference machine keeps the old translation
// until the flush, so each check reads in one straight run of instructions (no output, no
// other page touched in between: nothing can evict the entry): a data page moved to another
// frame, a page made not present and one made present, a read-only page made writable (the
// write walks the tables again: no fault) and a writable one made read-only, a CR3 reload,
// a code page moved to another frame (the old code runs until invlpg), a 4 MiB page moved and
// flushed by an invlpg of another address inside it, accessed/dirty bits that stay clear
// while the translation is cached, and a global page (CR4.PGE) flushed by invlpg and by a
// change of CR4.PGE. Exit 0 if all is right, else 0x19.
#include "check.h"
#include "paging.h"

#define FAIL_EXIT       0x19
#define TEST_VA         0x40000000              // PDE 0x100: pt_test
#define V_DATA          0x40080000              // pages at TLB slots away from the kernel's
#define V_ABSENT        0x40081000
#define V_GONE          0x40082000
#define V_UPGRADE       0x40083000
#define V_DOWNGRADE     0x40084000
#define V_CR3           0x40085000
#define V_CODE          0x40086000
#define V_ACCESSED      0x40087000
#define V_DIRTY         0x40088000
#define V_GLOBAL        0x40089000
#define BIG_VA          0x01000000              // PDE 4: a 4 MiB page
#define BIG_PA1         0x00400000
#define BIG_PA2         0x00800000

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
        mov     eax, offset page_dir
        mov     edx, offset pt_low
        mov     ecx, PG_KERNEL
        call    identity_map_low
        mov     eax, offset pt_test
        or      eax, PG_KERNEL
        mov     [page_dir + (TEST_VA >> 22) * 4], eax
        mov     eax, offset page_dir
        call    paging_enable
        mov     eax, cr0
        or      eax, CR0_WP
        mov     cr0, eax
        mov     eax, cr4
        or      eax, CR4_PSE
        mov     cr4, eax

        call    moved_page
        call    presence
        call    permissions
        call    cr3_reload
        call    moved_code
        call    moved_large_page
        call    cached_bits
        call    global_page
        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

// map: EAX = linear, EDX = a kernel (identity) address of a frame, ECX = flags. EBX = the PTE.
map:
        or      edx, ecx
        call    map_page
        call    pte_for
        mov     ebx, eax
        ret

// ---------------------------------------------------------------- a data page moved
moved_page:
        PUTS    "a data page moved to another frame:\n"
        mov     dword ptr [frame_old], 0x01D01D01
        mov     dword ptr [frame_new], 0x0E30E30E
        mov     eax, V_DATA
        mov     edx, offset frame_old
        mov     ecx, PG_KERNEL
        call    map
        mov     edx, offset frame_new
        or      edx, PG_KERNEL
        mov     eax, [V_DATA]                   // the translation is cached
        mov     [ebx], edx                      // the PTE now names the new frame
        mov     ecx, [V_DATA]
        invlpg  [V_DATA]
        mov     esi, [V_DATA]
        CHECK_HEX 0x01D01D01, "read before the edit: "
        mov     eax, ecx
        CHECK_HEX 0x01D01D01, "after the edit, before invlpg: still the old frame "
        mov     eax, esi
        CHECK_HEX 0x0E30E30E, "after invlpg: the new frame "
        ret

// ---------------------------------------------------------------- presence
presence:
        PUTS    "pages made present and not present:\n"
        mov     dword ptr [frame_absent], 0xAB5E0000
        mov     eax, V_ABSENT
        call    pte_for
        mov     ebx, eax
        mov     dword ptr [ebx], 0
        invlpg  [V_ABSENT]
        mov     edi, [pf_count]
        PF_TRY  mov eax, [V_ABSENT]
        mov     edx, offset frame_absent
        or      edx, PG_KERNEL
        mov     [ebx], edx                      // present now, and no invlpg
        mov     esi, [pf_count]
        mov     ecx, [V_ABSENT]
        mov     ebp, [pf_count]
        mov     eax, esi
        sub     eax, edi
        CHECK_DEC 1, "read of a page not present: page faults "
        mov     eax, ecx
        CHECK_HEX 0xAB5E0000, "made present without invlpg (a missing page is not cached): "
        mov     eax, ebp
        sub     eax, esi
        CHECK_DEC 0, "  page faults "

        mov     dword ptr [frame_gone], 0x60E60E00
        mov     eax, V_GONE
        mov     edx, offset frame_gone
        mov     ecx, PG_KERNEL
        call    map
        mov     edi, [pf_count]
        mov     eax, [V_GONE]
        mov     dword ptr [ebx], 0              // not present, and no invlpg
        mov     ecx, [V_GONE]
        mov     esi, [pf_count]
        invlpg  [V_GONE]
        PF_TRY  mov eax, [V_GONE]
        mov     ebp, [pf_count]
        mov     eax, ecx
        CHECK_HEX 0x60E60E00, "made not present, before invlpg: still read "
        mov     eax, esi
        sub     eax, edi
        CHECK_DEC 0, "  page faults "
        mov     eax, ebp
        sub     eax, esi
        CHECK_DEC 1, "after invlpg: page faults "
        mov     eax, [pf_cr2]
        CHECK_HEX V_GONE, "  CR2: "
        ret

// ---------------------------------------------------------------- R/W changes (CR0.WP set)
permissions:
        PUTS    "a read-only page made writable, a writable one made read-only (WP):\n"
        mov     eax, V_UPGRADE
        mov     edx, offset frame_upgrade
        mov     ecx, PG_P
        call    map
        mov     edi, [pf_count]
        mov     eax, [V_UPGRADE]                // cached read-only
        or      dword ptr [ebx], PG_RW          // writable, and no invlpg
        mov     dword ptr [V_UPGRADE], 0x0B0B0B0B
        mov     esi, [pf_count]
        mov     eax, esi
        sub     eax, edi
        CHECK_DEC 0, "write after making it writable, no invlpg (the write walks again): page faults "
        mov     eax, [frame_upgrade]
        CHECK_HEX 0x0B0B0B0B, "  the frame holds "

        mov     eax, V_DOWNGRADE
        mov     edx, offset frame_downgrade
        mov     ecx, PG_KERNEL
        call    map
        mov     edi, [pf_count]
        mov     dword ptr [V_DOWNGRADE], 1      // cached writable
        and     dword ptr [ebx], ~PG_RW         // read-only, and no invlpg
        mov     dword ptr [V_DOWNGRADE], 2
        mov     esi, [pf_count]
        invlpg  [V_DOWNGRADE]
        PF_TRY  mov dword ptr [V_DOWNGRADE], 3
        mov     ebp, [pf_count]
        mov     eax, esi
        sub     eax, edi
        CHECK_DEC 0, "write after making it read-only, before invlpg: page faults "
        mov     eax, [frame_downgrade]
        CHECK_HEX 2, "  the stale writable translation stored "
        mov     eax, ebp
        sub     eax, esi
        CHECK_DEC 1, "after invlpg: page faults "
        mov     eax, [pf_error]
        CHECK_HEX 3, "  error code: "
        ret

// ---------------------------------------------------------------- CR3 reload
cr3_reload:
        PUTS    "a CR3 reload flushes the cached translations:\n"
        mov     dword ptr [frame_cr3_old], 0xC3C3000D
        mov     dword ptr [frame_cr3_new], 0xC3C3000E
        mov     eax, V_CR3
        mov     edx, offset frame_cr3_old
        mov     ecx, PG_KERNEL
        call    map
        mov     edx, offset frame_cr3_new
        or      edx, PG_KERNEL
        mov     eax, [V_CR3]
        mov     [ebx], edx
        mov     ecx, [V_CR3]
        mov     eax, cr3
        mov     cr3, eax
        mov     esi, [V_CR3]
        mov     eax, ecx
        CHECK_HEX 0xC3C3000D, "moved, before the reload: the old frame "
        mov     eax, esi
        CHECK_HEX 0xC3C3000E, "after mov cr3, cr3: the new frame "
        ret

// ---------------------------------------------------------------- a code page moved
moved_code:
        PUTS    "a code page moved to another frame:\n"
        mov     esi, offset code_a
        mov     edi, offset frame_code_a
        mov     ecx, offset code_a_end - code_a
        rep     movsb
        mov     esi, offset code_b
        mov     edi, offset frame_code_b
        mov     ecx, offset code_b_end - code_b
        rep     movsb
        mov     eax, V_CODE
        mov     edx, offset frame_code_a
        mov     ecx, PG_KERNEL
        call    map
        mov     edx, offset frame_code_b
        or      edx, PG_KERNEL
        mov     eax, V_CODE
        call    eax                             // runs code A, and caches its translation
        mov     ecx, eax
        mov     [ebx], edx                      // the page now holds code B, no invlpg
        mov     eax, V_CODE
        call    eax
        mov     esi, eax
        invlpg  [V_CODE]
        mov     eax, V_CODE
        call    eax
        mov     edi, eax
        mov     eax, ecx
        CHECK_HEX 0xC0DE000A, "call before the move: "
        mov     eax, esi
        CHECK_HEX 0xC0DE000A, "after the move, before invlpg: still code A "
        mov     eax, edi
        CHECK_HEX 0xC0DE000B, "after invlpg: code B "
        ret

// ---------------------------------------------------------------- a 4 MiB page moved
moved_large_page:
        PUTS    "a 4 MiB page moved, flushed by invlpg of another address in it:\n"
        mov     dword ptr [page_dir + (BIG_VA >> 22) * 4], BIG_PA2 | PG_PS | PG_KERNEL
        invlpg  [BIG_VA]
        mov     dword ptr [BIG_VA + 0x1000], 0xB1600002
        mov     dword ptr [page_dir + (BIG_VA >> 22) * 4], BIG_PA1 | PG_PS | PG_KERNEL
        invlpg  [BIG_VA]
        mov     dword ptr [BIG_VA + 0x1000], 0xB1600001
        mov     dword ptr [page_dir + (BIG_VA >> 22) * 4], BIG_PA2 | PG_PS | PG_KERNEL
        mov     ecx, [BIG_VA + 0x1000]
        invlpg  [BIG_VA + 0x3FF000]
        mov     esi, [BIG_VA + 0x1000]
        mov     eax, ecx
        CHECK_HEX 0xB1600001, "moved, before invlpg: the old 4 MiB frame "
        mov     eax, esi
        CHECK_HEX 0xB1600002, "after invlpg of another address in the page: the new one "
        ret

// ---------------------------------------------------------------- A/D while cached
cached_bits:
        PUTS    "accessed and dirty bits are set on a walk, not on a cached translation:\n"
        mov     eax, V_ACCESSED
        mov     edx, offset frame_accessed
        mov     ecx, PG_KERNEL
        call    map
        mov     eax, [V_ACCESSED]               // walks: A set, the translation cached
        and     dword ptr [ebx], ~PG_AD         // A cleared, no invlpg
        mov     eax, [V_ACCESSED]
        mov     ecx, [ebx]
        invlpg  [V_ACCESSED]
        mov     eax, [V_ACCESSED]
        mov     esi, [ebx]
        mov     eax, ecx
        and     eax, PG_AD
        CHECK_HEX 0, "A cleared under a cached translation, read again: A stays clear "
        mov     eax, esi
        and     eax, PG_AD
        CHECK_HEX PG_A, "after invlpg, read again: A set "

        mov     eax, V_DIRTY
        mov     edx, offset frame_dirty
        mov     ecx, PG_KERNEL
        call    map
        mov     dword ptr [V_DIRTY], 1          // walks: A and D set, cached writable
        and     dword ptr [ebx], ~PG_D          // D cleared, no invlpg
        mov     dword ptr [V_DIRTY], 2
        mov     ecx, [ebx]
        invlpg  [V_DIRTY]
        mov     dword ptr [V_DIRTY], 3
        mov     esi, [ebx]
        mov     eax, ecx
        and     eax, PG_AD
        CHECK_HEX PG_A, "D cleared under a cached writable translation, written again: D stays clear "
        mov     eax, esi
        and     eax, PG_AD
        CHECK_HEX PG_AD, "after invlpg, written again: D set "
        ret

// Code copied into frames (position independent).
// ---------------------------------------------------------------- a global page
// Whether a CR3 load keeps a global entry is the TLB's choice (QEMU drops it), so only the
// flushes the CPU must make are checked: invlpg of the page, and any change of CR4.PGE.
global_page:
        PUTS    "a global page (CR4.PGE, PTE.G):\n"
        mov     eax, cr4
        or      eax, CR4_PGE
        mov     cr4, eax
        mov     dword ptr [frame_global_old], 0x610B0001
        mov     dword ptr [frame_global_new], 0x610B0002
        mov     eax, V_GLOBAL
        mov     edx, offset frame_global_old
        mov     ecx, PG_KERNEL | PG_G
        call    map
        mov     edx, offset frame_global_new
        or      edx, PG_KERNEL | PG_G
        mov     eax, [V_GLOBAL]
        mov     [ebx], edx
        mov     ecx, [V_GLOBAL]
        invlpg  [V_GLOBAL]
        mov     esi, [V_GLOBAL]
        mov     eax, ecx
        CHECK_HEX 0x610B0001, "moved, before invlpg: the old frame "
        mov     eax, esi
        CHECK_HEX 0x610B0002, "after invlpg: the new frame "
        mov     edx, offset frame_global_old    // and back, flushed by clearing CR4.PGE
        or      edx, PG_KERNEL | PG_G
        mov     eax, [V_GLOBAL]
        mov     [ebx], edx
        mov     ecx, [V_GLOBAL]
        mov     eax, cr4
        and     eax, ~CR4_PGE
        mov     cr4, eax
        mov     esi, [V_GLOBAL]
        mov     eax, ecx
        CHECK_HEX 0x610B0002, "moved back, before the CR4 write: the new frame "
        mov     eax, esi
        CHECK_HEX 0x610B0001, "after clearing CR4.PGE: the old frame "
        ret

code_a:
        mov     eax, 0xC0DE000A
        ret
code_a_end:
code_b:
        mov     eax, 0xC0DE000B
        ret
code_b_end:

        .section .rodata
name:   .asciz  "tlb"

        .bss
        .p2align 12
page_dir:       .skip   PAGE_SIZE
pt_low:         .skip   PAGE_SIZE
pt_test:        .skip   PAGE_SIZE
frame_old:      .skip   PAGE_SIZE
frame_new:      .skip   PAGE_SIZE
frame_absent:   .skip   PAGE_SIZE
frame_gone:     .skip   PAGE_SIZE
frame_upgrade:  .skip   PAGE_SIZE
frame_downgrade: .skip  PAGE_SIZE
frame_cr3_old:  .skip   PAGE_SIZE
frame_cr3_new:  .skip   PAGE_SIZE
frame_code_a:   .skip   PAGE_SIZE
frame_code_b:   .skip   PAGE_SIZE
frame_accessed: .skip   PAGE_SIZE
frame_dirty:    .skip   PAGE_SIZE
frame_global_old: .skip PAGE_SIZE
frame_global_new: .skip PAGE_SIZE
