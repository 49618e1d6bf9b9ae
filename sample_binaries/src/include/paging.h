// Paging for the samples that turn it on (see pagetables.S). Include after check.h.
// Values that CHECK_HEX compares are written without spaces: a macro argument is one token.
#ifndef SAMPLE_PAGING_H
#define SAMPLE_PAGING_H

// Page-directory and page-table entry bits (32-bit paging, no PAE)
#define PG_P                0x001       // present
#define PG_RW               0x002       // writable
#define PG_US               0x004       // user
#define PG_A                0x020       // accessed: set by the CPU
#define PG_D                0x040       // dirty: set by the CPU on a write (PTE, 4 MiB PDE)
#define PG_AD               0x060
#define PG_PS               0x080       // a PDE mapping a 4 MiB page (with CR4.PSE)
#define PG_G                0x100       // global: kept across CR3 loads (with CR4.PGE)
#define PG_FRAME            0xFFFFF000
#define PG_KERNEL           0x003       // P RW, supervisor
#define PG_USER             0x007       // P RW US
#define PG_USER_RO          0x005       // P US

#define CR0_WP              0x00010000
#define CR0_PG              0x80000000
#define CR4_PSE             0x00000010
#define CR4_PGE             0x00000080

#define PAGE_SIZE           4096
#define PF_VECTOR           14

// #PF error code: P (a protection fault, not a missing page), W/R, U/S
#define PF_ERR_P            1
#define PF_ERR_W            2
#define PF_ERR_U            4

#ifdef __ASSEMBLER__
// PF_TRY insn: run one instruction; if it takes a #PF that no fixer resolves, the handler
// resumes after it (the fault is noted in pf_count, pf_cr2, pf_error, pf_eip as for any #PF).
        .macro  PF_TRY insn:vararg
        mov     dword ptr [pf_resume], offset .Lpf_after\@
        \insn
.Lpf_after\@:
        mov     dword ptr [pf_resume], 0
        .endm

// PTE_BITS mask, linear: EAX = the entry mapping `linear` (PTE, or the PDE of a 4 MiB page)
// in the current address space, and-ed with `mask`.
        .macro  PTE_BITS mask, linear:vararg
        mov     eax, \linear
        call    pte_for
        mov     eax, [eax]
        and     eax, \mask
        .endm

// PDE_BITS mask, linear: the same for the page-directory entry.
        .macro  PDE_BITS mask, linear:vararg
        mov     eax, \linear
        call    pde_for
        mov     eax, [eax]
        and     eax, \mask
        .endm
#endif
#endif
