// higher_half: a kernel linked at 0xC0100000 and loaded at 1 MiB, as most kernels are. _start
// (linked and run at 1 MiB) maps the first 4 MiB of physical memory twice, at 0 and at
// 0xC0000000, turns paging on and jumps up; the kernel then drops the low mapping and runs
// on its own GDT, IDT and stack, all at high linear addresses. Checked: where it runs, CR0/CR3,
// the Multiboot information read through the high mapping, faults on the dropped low mapping
// and above the mapped 4 MiB, int3 delivered to a handler at a high address, and a page
// mapped at 0xD0000000 (written there and read through the kernel's mapping of its frame),
// then one more mapped by the #PF handler on demand. Exit 0 if all is right, else 0x1B.
#include "check.h"
#include "paging.h"

#define FAIL_EXIT       0x1B
#define KERNEL_BASE     0xC0000000
#define HEAP_VA         0xD0000000              // PDE 0x340: pt_heap
#define BP_VECTOR       3
#define MEM_UPPER       8                       // offset in the Multiboot information

// ---------------------------------------------------------------- at 1 MiB, paging off
        .section .boot.text, "ax"
        .globl  _start
_start:
        cli
        cld
        mov     esi, eax                        // the Multiboot registers
        mov     edi, ebx
        mov     edx, offset boot_pt - KERNEL_BASE
        xor     ecx, ecx
1:      mov     eax, ecx                        // physical 0-4 MiB, 4 KiB pages
        shl     eax, 12
        or      eax, PG_KERNEL
        mov     [edx + ecx * 4], eax
        inc     ecx
        cmp     ecx, 1024
        jb      1b
        mov     eax, edx
        or      eax, PG_KERNEL
        mov     [boot_pd - KERNEL_BASE], eax    // at 0, for the jump up
        mov     [boot_pd - KERNEL_BASE + (KERNEL_BASE >> 22) * 4], eax  // and at 0xC0000000
        mov     eax, offset boot_pd - KERNEL_BASE
        mov     cr3, eax
        mov     eax, cr0
        or      eax, CR0_PG | CR0_WP
        mov     cr0, eax
        mov     eax, offset high_start
        jmp     eax

// ---------------------------------------------------------------- at 0xC0100000 and up
        .text
high_start:
        lgdt    [gdt_descriptor]
        ljmp    KERNEL_CS, offset reload_cs
reload_cs:
        mov     ax, KERNEL_DS
        mov     ds, ax
        mov     es, ax
        mov     fs, ax
        mov     gs, ax
        mov     ss, ax
        mov     esp, offset stack_top
        mov     [boot_eax], esi
        mov     [boot_ebx], edi
        mov     dword ptr [paging_phys_to_virt], KERNEL_BASE
        mov     dword ptr [boot_pd], 0          // the low mapping is not needed any more
        mov     eax, cr3
        mov     cr3, eax
        mov     dx, UART_LCR
        mov     al, 0x03
        out     dx, al
        call    kmain
        jmp     exit

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

        PUTS    "a kernel linked at 0xC0100000, loaded at 1 MiB:\n"
        call    1f
1:      pop     eax
        mov     ebx, offset 1b
        CHECK_HEX ebx, "EIP: "
        cmp     esp, KERNEL_BASE
        setae   al
        movzx   eax, al
        CHECK_TRUE "ESP in the high half"
        mov     eax, cr0
        CHECK_HEX 0x80010011, "CR0: "
        mov     eax, cr3
        mov     ebx, offset boot_pd - KERNEL_BASE
        CHECK_HEX ebx, "CR3 (physical): "
        sgdt    [scratch]
        mov     eax, [scratch + 2]
        mov     ebx, offset gdt
        CHECK_HEX ebx, "GDT base (linear, high): "
        sidt    [scratch]
        mov     eax, [scratch + 2]
        mov     ebx, offset idt
        CHECK_HEX ebx, "IDT base (linear, high): "
        mov     eax, [boot_eax]
        CHECK_HEX 0x2BADB002, "Multiboot magic: "
        mov     eax, [boot_ebx]
        CHECK_HEX 0x9500, "Multiboot information at physical "
        mov     ebx, [boot_ebx]
        mov     eax, [ebx + KERNEL_BASE + MEM_UPPER]
        CHECK_DEC 31616, "  mem_upper, read at 0xC0009508: "

        PUTS    "faults and exceptions in the high half:\n"
        PF_TRY  mov eax, [0x00100000]
        mov     eax, [pf_cr2]
        CHECK_HEX 0x00100000, "the low mapping is gone: read of 0x00100000 faults, CR2 "
        mov     eax, [pf_error]
        CHECK_HEX 0, "  error code: "
        PF_TRY  mov eax, [KERNEL_BASE + 0x400000]
        mov     eax, [pf_cr2]
        CHECK_HEX 0xC0400000, "read past the mapped 4 MiB: CR2 "
        int3
after_int3:
        mov     eax, [bp_eip]
        mov     ebx, offset after_int3
        CHECK_HEX ebx, "int3: handler at a high address, saved EIP "

        PUTS    "pages mapped at 0xD0000000:\n"
        mov     eax, offset pt_heap - KERNEL_BASE
        or      eax, PG_KERNEL
        mov     [boot_pd + (HEAP_VA >> 22) * 4], eax
        mov     eax, HEAP_VA
        mov     edx, offset frame_heap0 - KERNEL_BASE
        or      edx, PG_KERNEL
        call    map_page
        mov     dword ptr [HEAP_VA + 0x10], 0x4EA94EA9
        mov     eax, [frame_heap0 + 0x10]
        CHECK_HEX 0x4EA94EA9, "written at 0xD0000010, read through the kernel's mapping of its frame: "
        mov     eax, offset frame_heap1 - KERNEL_BASE
        or      eax, PG_KERNEL
        mov     [pf_fix_frame], eax
        mov     dword ptr [pf_fixer], offset fix_map
        mov     dword ptr [HEAP_VA + 0x1020], 0x4EA9D00D
        mov     eax, [pf_cr2]
        CHECK_HEX 0xD0001020, "a write to 0xD0001020 faults, CR2 "
        mov     eax, [pf_error]
        CHECK_HEX PF_ERR_W, "  error code: "
        mov     eax, [frame_heap1 + 0x20]
        CHECK_HEX 0x4EA9D00D, "  the handler mapped a frame, the write went there: "
        PTE_BITS 0xFFFFFFFF, HEAP_VA + 0x1000
        mov     ebx, offset frame_heap1 - KERNEL_BASE
        or      ebx, 0x063
        CHECK_HEX ebx, "  its entry: "
        mov     eax, [pf_count]
        CHECK_DEC 3, "page faults: "
        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

bp_entry:
        push    eax
        mov     eax, [esp + 4]
        mov     [bp_eip], eax
        pop     eax
        iretd

        .section .rodata
name:   .asciz  "higher_half"

        .data
        .p2align 3
gdt:    .quad   0x0000000000000000
        .quad   0x00CF9A000000FFFF              // 0x08: code, flat, DPL 0
        .quad   0x00CF92000000FFFF              // 0x10: data, flat, DPL 0
gdt_end:
        .p2align 1
gdt_descriptor:
        .word   gdt_end - gdt - 1
        .long   gdt
        .p2align 2
boot_eax:       .long   0
boot_ebx:       .long   0
bp_eip:         .long   0
scratch:        .long   0, 0

        .bss
        .p2align 12
boot_pd:        .skip   PAGE_SIZE
boot_pt:        .skip   PAGE_SIZE
pt_heap:        .skip   PAGE_SIZE
frame_heap0:    .skip   PAGE_SIZE
frame_heap1:    .skip   PAGE_SIZE
        .p2align 4
stack:          .skip   16384
stack_top:
