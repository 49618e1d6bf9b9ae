// ring3: what every sensitive instruction does in ring 3, as the bare machine shows it. The
// kernel enters ring 3 twice through iret: first with IOPL 0, then with IOPL 3. Each probe in
// ring 3 notes the exception it takes (vector and error code; the handlers resume after it) or
// the value it reads; the kernel then checks them all. Shown: privileged instructions fault
// (#GP), I/O obeys IOPL and the TSS bitmap, popf silently keeps IF and IOPL, selectors read
// RPL 3, sgdt/sidt/str/smsw show the kernel's own values, gate DPL is checked by int n,
// exceptions arrive on the TSS's ring-0 stack with SS:ESP saved, and iret nulled FS/GS.
// Exit 0 if all is right, else 0x16.
#include "check.h"
#include "user.h"
#include "probe.h"

#define FAIL_EXIT       0x16
#define KERNEL_VECTOR   0x81                    // a DPL-0 gate ring 3 may not use
#define GP_0            0x000D0000              // (vector << 16) | error code
#define KSTACK_SIZE     4096

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
        mov     eax, offset kstack + KSTACK_SIZE
        call    user_mode_init
        mov     ebx, offset gates
1:      mov     eax, [ebx]                      // (vector, handler, type) triples
        mov     edx, [ebx + 4]
        mov     ecx, [ebx + 8]
        call    idt_set_gate
        add     ebx, 12
        cmp     ebx, offset gates_end
        jb      1b
        mov     al, 0xFF                        // no interrupts from the PIC in this sample
        out     0x21, al
        out     0xA1, al

        mov     ax, KERNEL_DS                   // FS and GS ring 3 may not use: iret nulls them
        mov     fs, ax
        mov     gs, ax
        mov     eax, offset phase1
        mov     edx, offset ustack + 4096
        mov     ecx, 0x202                      // IF, IOPL 0
        call    user_call
        call    check_phase1
        mov     eax, offset phase2
        mov     edx, offset ustack + 4096
        mov     ecx, 0x202 | EFL_IOPL3
        call    user_call
        call    check_phase2
        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

// int 0x81's gate: DPL 0, so ring 3 takes #GP before it (never entered)
kernel_only_entry:
        ud2

        PROBE_HANDLER de_entry, 0, 0
        PROBE_HANDLER bp_entry, 3, 0
        PROBE_HANDLER ud_entry, 6, 0
        PROBE_HANDLER gp_entry, 13, 1

// ---------------------------------------------------------------- ring 3
phase1:
        mov     [user_esp], esp
        PROBE   0, cli
        PROBE   1, sti
        PROBE   2, hlt
        mov     dx, UART_LSR
        PROBE   3, in al, dx
        PROBE   4, out IO_PERMITTED_PORT, al
        mov     dx, IO_PERMITTED_PORT
        PROBE   5, out dx, ax                   // ports 0x80 and 0x81: 0x81 is closed
        PROBE   6, out 0x21, al
        PROBE   7, mov eax, cr0
        PROBE   8, mov cr3, eax
        PROBE   9, lgdt [scratch]
        PROBE   10, lidt [scratch]
        mov     ax, TSS_SEL
        PROBE   11, ltr ax
        xor     eax, eax
        PROBE   12, lldt ax
        PROBE   13, invlpg [scratch]
        PROBE   14, wbinvd
        mov     ecx, 0x10
        PROBE   15, rdmsr
        PROBE   16, mov dr7, eax
        PROBE   17, clts
        PROBE   18, lmsw ax
        PROBE   19, int KERNEL_VECTOR
        mov     ax, KERNEL_DS
        PROBE   20, mov ds, ax
        PROBE   21, mov ss, ax
        mov     ax, 0x33                        // beyond the GDT's limit
        PROBE   22, mov es, ax
        PROBE   23, ud2
        PROBE   24, int3
        xor     ecx, ecx
        PROBE   25, div ecx
        PROBE   26, rdtsc
        xor     eax, eax
        PROBE   27, cpuid
        PROBE   28, rdpmc

        xor     eax, eax
        mov     ax, cs
        VALUE   0
        push    cs
        pop     eax
        and     eax, 0xFFFF
        VALUE   1
        mov     ax, ss
        VALUE   2
        mov     ax, ds
        VALUE   3
        mov     ax, fs
        VALUE   4
        mov     ax, gs
        VALUE   5
        pushfd
        pop     eax
        and     eax, 0x3200                     // IOPL and IF
        VALUE   6
        pushfd                                  // popf clearing IF: silently kept
        pop     eax
        and     eax, ~0x200
        push    eax
        popfd
        pushfd
        pop     eax
        and     eax, 0x3200
        VALUE   7
        pushfd                                  // popf raising IOPL to 3: silently kept
        pop     eax
        or      eax, EFL_IOPL3
        push    eax
        popfd
        pushfd
        pop     eax
        and     eax, 0x3200
        VALUE   8
        sgdt    [scratch]
        mov     eax, [scratch + 2]
        VALUE   9
        movzx   eax, word ptr [scratch]
        VALUE   10
        sidt    [scratch]
        mov     eax, [scratch + 2]
        VALUE   11
        movzx   eax, word ptr [scratch]
        VALUE   12
        xor     eax, eax
        str     ax
        VALUE   13
        mov     eax, 0x1234
        sldt    ax
        VALUE   14
        xor     eax, eax
        smsw    ax
        VALUE   15
        mov     ax, KERNEL_DS
        verr    ax
        setz    al
        movzx   eax, al
        VALUE   16
        mov     ax, USER_DS
        verw    ax
        setz    al
        movzx   eax, al
        VALUE   17
        mov     ax, USER_CS
        verw    ax
        setz    al
        movzx   eax, al
        VALUE   18
        mov     ecx, KERNEL_CS
        xor     eax, eax
        lar     eax, ecx
        setz    al
        movzx   eax, al
        VALUE   19
        mov     ecx, USER_CS
        lar     eax, ecx
        VALUE   20
        mov     ecx, USER_DS
        lsl     eax, ecx
        VALUE   21
        mov     ecx, TSS_SEL
        lar     eax, ecx
        setz    al
        movzx   eax, al
        VALUE   22
        int     USER_RETURN_VECTOR

phase2:                                         // IOPL 3: cli/sti and every port allowed
        PROBE   29, cli
        pushfd
        pop     eax
        and     eax, 0x3200
        VALUE   23
        PROBE   30, sti
        mov     dx, UART_LSR
        PROBE   31, in al, dx
        pushfd                                  // popf may clear IF at IOPL 3
        pop     eax
        and     eax, ~0x200
        push    eax
        popfd
        pushfd
        pop     eax
        and     eax, 0x3200
        VALUE   24
        sti
        int     USER_RETURN_VECTOR

// ---------------------------------------------------------------- the kernel's checks
check_phase1:
        PUTS    "ring 3, IOPL 0:\n"
        FAULT   0, GP_0, "cli: "
        FAULT   1, GP_0, "sti: "
        FAULT   2, GP_0, "hlt: "
        FAULT   3, GP_0, "in from a port the bitmap closes: "
        FAULT   4, NO_FAULT, "out to the port the bitmap opens: "
        FAULT   5, GP_0, "16-bit out across a closed port: "
        FAULT   6, GP_0, "out to the PIC: "
        FAULT   7, GP_0, "mov eax, cr0: "
        FAULT   8, GP_0, "mov cr3, eax: "
        FAULT   9, GP_0, "lgdt: "
        FAULT   10, GP_0, "lidt: "
        FAULT   11, GP_0, "ltr: "
        FAULT   12, GP_0, "lldt: "
        FAULT   13, GP_0, "invlpg: "
        FAULT   14, GP_0, "wbinvd: "
        FAULT   15, GP_0, "rdmsr: "
        FAULT   16, GP_0, "mov dr7, eax: "
        FAULT   17, GP_0, "clts: "
        FAULT   18, GP_0, "lmsw: "
        FAULT   19, 0x000D040A, "int 0x81 through a DPL-0 gate: "
        FAULT   20, 0x000D0010, "mov ds, kernel data: "
        FAULT   21, 0x000D0010, "mov ss, kernel data: "
        FAULT   22, 0x000D0030, "mov es, selector past the GDT: "
        FAULT   23, 0x00060000, "ud2: "
        FAULT   24, 0x00030000, "int3 through a DPL-3 gate: "
        FAULT   25, 0x00000000, "divide by zero: "
        FAULT   26, NO_FAULT, "rdtsc: "
        FAULT   27, NO_FAULT, "cpuid: "
        FAULT   28, GP_0, "rdpmc: "
        READ    0, USER_CS, "mov ax, cs: "
        READ    1, USER_CS, "push cs: "
        READ    2, USER_DS, "mov ax, ss: "
        READ    3, USER_DS, "mov ax, ds: "
        READ    4, 0, "fs after iret to ring 3: "
        READ    5, 0, "gs after iret to ring 3: "
        READ    6, 0x200, "pushf (IOPL, IF): "
        READ    7, 0x200, "popf clearing IF: "
        READ    8, 0x200, "popf setting IOPL 3: "
        mov     ebx, offset user_gdt
        READ    9, ebx, "sgdt base: "
        READ    10, GDT_LIMIT, "sgdt limit: "
        mov     ebx, offset idt
        READ    11, ebx, "sidt base: "
        READ    12, 0x7FF, "sidt limit: "
        READ    13, TSS_SEL, "str: "
        READ    14, 0, "sldt: "
        READ    15, 0x11, "smsw: "
        READ    16, 0, "verr kernel data: "
        READ    17, 1, "verw user data: "
        READ    18, 0, "verw user code: "
        READ    19, 0, "lar kernel code: "
        READ    20, 0x00C0FA00, "lar user code: "
        READ    21, 0xFFFFFFFF, "lsl user data: "
        READ    22, 0, "lar TSS: "
        mov     eax, [first_fault_frame + 4]
        CHECK_HEX USER_CS, "first fault's frame: CS "
        mov     eax, [first_fault_frame + 16]
        CHECK_HEX USER_DS, "first fault's frame: SS "
        mov     eax, [first_fault_frame + 12]
        mov     ebx, [user_esp]
        CHECK_HEX ebx, "first fault's frame: ESP "
        mov     eax, [first_fault_frame + 20]
        mov     ebx, offset kstack + KSTACK_SIZE - 24
        CHECK_HEX ebx, "first fault's frame on the TSS stack at "
        ret

check_phase2:
        PUTS    "ring 3, IOPL 3:\n"
        FAULT   29, NO_FAULT, "cli: "
        READ    23, 0x3000, "IF after cli: "
        FAULT   30, NO_FAULT, "sti: "
        FAULT   31, NO_FAULT, "in from a port the bitmap closes: "
        READ    24, 0x3000, "popf clearing IF: "
        ret

        .section .rodata
name:   .asciz  "ring3"
        .p2align 2
gates:  .long   KERNEL_VECTOR, kernel_only_entry, GATE_INTR
        .long   0, de_entry, GATE_INTR
        .long   3, bp_entry, GATE_INTR_USER
        .long   6, ud_entry, GATE_INTR
        .long   13, gp_entry, GATE_INTR
gates_end:

        .data
        .p2align 2
user_esp:       .long   0
scratch:        .long   0, 0

        .bss
        .p2align 12
kstack:         .skip   KSTACK_SIZE
ustack:         .skip   4096
