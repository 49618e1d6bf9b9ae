// Page-table helpers and the page-fault handler of the paging samples. The tables are reached
// through the kernel's own mapping of physical memory: linear = physical + paging_phys_to_virt
// (0 for an identity-mapped kernel, 0xC0000000 for the higher-half one).
//
// pf_entry notes every #PF (pf_count, pf_cr2 read first thing, pf_error, pf_eip, and the
// interrupted ECX/EDI for string instructions), then
//   - calls the fixer in pf_fixer once (it is cleared first): the fixer edits the tables and
//     the faulting instruction runs again (demand paging, copy-on-write);
//   - else resumes at [pf_resume] (PF_TRY), or for a fault from ring 3 at the address stored
//     in the user slot pf_user_resume points to;
//   - else prints "UNEXPECTED #PF ..." and ends the sample with its failure value.
#include "check.h"
#include "paging.h"

        .text
// pde_for: EAX = linear address -> EAX = pointer to its page-directory entry (current CR3).
        .globl  pde_for
pde_for:
        push    edx
        mov     edx, cr3
        and     edx, PG_FRAME
        add     edx, [paging_phys_to_virt]
        shr     eax, 22
        lea     eax, [edx + eax * 4]
        pop     edx
        ret

// pte_for: EAX = linear address -> EAX = pointer to the entry that maps it: its page-table
// entry, or its PDE when that maps a 4 MiB page. The PDE must point to a table or a page.
        .globl  pte_for
pte_for:
        push    edx
        push    eax
        call    pde_for
        mov     edx, [eax]
        test    edx, PG_PS
        jnz     1f
        and     edx, PG_FRAME
        add     edx, [paging_phys_to_virt]
        mov     eax, [esp]
        shr     eax, 12
        and     eax, 0x3FF
        lea     eax, [edx + eax * 4]
1:      add     esp, 4
        pop     edx
        ret

// identity_map_low: the page table at EDX maps 0-4 MiB one to one with the flags in ECX, but
// page 0 (left absent: null pointers fault); the page directory at EAX gets it as entry 0,
// with the same flags. Both are given as the kernel addresses them.
        .globl  identity_map_low
identity_map_low:
        pushad
        mov     dword ptr [edx], 0
        mov     edi, 1
        lea     ebx, [ecx + PAGE_SIZE]          // frame 1 | flags
1:      mov     [edx + edi * 4], ebx
        add     ebx, PAGE_SIZE
        inc     edi
        cmp     edi, 1024
        jb      1b
        sub     edx, [paging_phys_to_virt]
        or      edx, ecx
        mov     [eax], edx
        popad
        ret

// paging_enable: EAX = physical address of the page directory: load CR3, set CR0.PG.
        .globl  paging_enable
paging_enable:
        push    eax
        mov     cr3, eax
        mov     eax, cr0
        or      eax, CR0_PG
        mov     cr0, eax
        jmp     1f
1:      pop     eax
        ret

// map_page: EAX = linear address, EDX = physical frame | flags: set its PTE, then invlpg.
        .globl  map_page
map_page:
        push    eax
        call    pte_for
        mov     [eax], edx
        pop     eax
        invlpg  [eax]
        ret

// ---------------------------------------------------------------- the #PF handler
// [esp] error code, EIP, CS, EFLAGS[, ESP, SS from ring 3]; after pushad: +32 error code,
// +36 EIP, +40 CS, +24 ECX, +0 EDI.
        .globl  pf_entry
pf_entry:
        pushad
        mov     eax, cr2
        mov     edx, [esp + 32]
        inc     dword ptr [pf_count]
        mov     [pf_cr2], eax
        mov     [pf_error], edx
        mov     ecx, [esp + 36]
        mov     [pf_eip], ecx
        mov     ecx, [esp + 24]
        mov     [pf_ecx], ecx
        mov     ecx, [esp]
        mov     [pf_edi], ecx
        xor     ecx, ecx
        xchg    ecx, [pf_fixer]                 // a fixer resolves one fault
        test    ecx, ecx
        jz      1f
        call    ecx                             // EAX = CR2, EDX = error code
        jmp     3f                              // the instruction runs again
1:      mov     ecx, [pf_resume]
        test    ecx, ecx
        jnz     2f
        test    byte ptr [esp + 40], 3          // from ring 3: the resume address is in a
        jz      pf_unexpected                   // slot of the user program's own page
        mov     ecx, [pf_user_resume]
        test    ecx, ecx
        jz      pf_unexpected
        mov     ecx, [ecx]
        test    ecx, ecx
        jz      pf_unexpected
2:      mov     [esp + 36], ecx
3:      popad
        add     esp, 4
        iretd

pf_unexpected:
        PUTS    "UNEXPECTED #PF at eip 0x"
        mov     eax, [pf_eip]
        call    print_hex32
        PUTS    " cr2 0x"
        mov     eax, [pf_cr2]
        call    print_hex32
        PUTS    " error 0x"
        mov     eax, [pf_error]
        call    print_hex32
        call    newline
        call    check_fail_now
        call    check_end
        jmp     exit

// ---------------------------------------------------------------- fixers (pf_fixer)
// Called by pf_entry with EAX = CR2, EDX = error code; may change any register.

// fix_map: map the faulting page to pf_fix_frame (a physical frame | flags).
        .globl  fix_map
fix_map:
        and     eax, PG_FRAME
        mov     edx, [pf_fix_frame]
        jmp     map_page

// fix_cow: copy-on-write. The faulting page is mapped read-only onto a shared frame: copy that
// frame into the private frame pf_fix_frame and map the copy in its place, writable, with the
// old entry's other flags (U/S).
        .globl  fix_cow
fix_cow:
        and     eax, PG_FRAME
        mov     ebp, eax                        // the faulting page
        call    pte_for
        mov     ebx, eax                        // its entry
        mov     esi, [ebx]
        and     esi, PG_FRAME
        add     esi, [paging_phys_to_virt]      // the shared frame, where the kernel sees it
        mov     edi, [pf_fix_frame]
        and     edi, PG_FRAME
        add     edi, [paging_phys_to_virt]      // the private copy
        mov     ecx, PAGE_SIZE / 4
        cld
        rep     movsd
        mov     edx, [ebx]
        and     edx, 0xF9F                      // the old flags but A and D
        or      edx, PG_RW
        mov     eax, [pf_fix_frame]
        and     eax, PG_FRAME
        or      edx, eax
        mov     eax, ebp
        jmp     map_page

        .data
        .p2align 2
        .globl  pf_count, pf_cr2, pf_error, pf_eip, pf_ecx, pf_edi
        .globl  pf_fixer, pf_fix_frame, pf_resume, pf_user_resume, paging_phys_to_virt
pf_count:       .long   0
pf_cr2:         .long   0
pf_error:       .long   0
pf_eip:         .long   0
pf_ecx:         .long   0
pf_edi:         .long   0
pf_fixer:       .long   0
pf_fix_frame:   .long   0
pf_resume:      .long   0
pf_user_resume: .long   0
paging_phys_to_virt: .long 0
