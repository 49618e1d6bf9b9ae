// Ring-3 support: a GDT with kernel segments at the selectors crt0.S uses (0x08, 0x10), user
// segments (0x1B, 0x23), a 32-bit TSS (0x28) whose I/O bitmap covers ports 0-0xFF and opens
// only IO_PERMITTED_PORT, and free slots 0x30-0xA8 (not present) a sample may fill;
// user_mode_init loads the GDT and the task register. enter_user irets into ring 3; user_call
// runs ring-3 code like a function call that returns when the code raises USER_RETURN_VECTOR.
#include "check.h"
#include "user.h"

#define BITMAP_BYTES        32                  // ports 0x00-0xFF; ports above are past the limit
#define TSS_SIZE            (0x68 + BITMAP_BYTES)

        .text
// user_mode_init: EAX = ring-0 stack top for interrupts from ring 3 (TSS.ESP0).
        .globl  user_mode_init
user_mode_init:
        push    eax
        push    edx
        mov     [tss + TSS_ESP0], eax
        mov     dword ptr [tss + TSS_SS0], KERNEL_DS
        mov     word ptr [tss + 0x66], 0x68     // I/O map base: right after the 104-byte TSS
        mov     eax, offset tss
        mov     word ptr [user_gdt + TSS_SEL + 2], ax
        shr     eax, 16
        mov     byte ptr [user_gdt + TSS_SEL + 4], al
        mov     byte ptr [user_gdt + TSS_SEL + 7], ah
        mov     edx, offset tss + 0x68          // bitmap: every port closed but one
1:      mov     byte ptr [edx], 0xFF
        inc     edx
        cmp     edx, offset tss + TSS_SIZE
        jb      1b
        and     byte ptr [tss + 0x68 + IO_PERMITTED_PORT / 8], ~(1 << (IO_PERMITTED_PORT % 8))
        lgdt    [user_gdt_descriptor]
        mov     ax, TSS_SEL
        ltr     ax
        pop     edx
        pop     eax
        ret

// enter_user: EAX = entry point, EDX = user stack, ECX = EFLAGS. DS and ES get the user data
// segment; FS and GS are left as they are (iret nulls them if ring 3 may not use them).
        .globl  enter_user
enter_user:
        push    eax
        mov     ax, USER_DS
        mov     ds, ax
        mov     es, ax
        pop     eax
        push    USER_DS
        push    edx
        push    ecx
        push    USER_CS
        push    eax
        iretd

// user_call: run ring-3 code at EAX (EDX = its stack, ECX = its EFLAGS) until it raises
// int USER_RETURN_VECTOR (a DPL-3 gate installed here), then return in ring 0 with EBX, ESI,
// EDI, EBP and ESP as they were and DS/ES back to the kernel's.
        .globl  user_call
user_call:
        push    ebx
        push    esi
        push    edi
        push    ebp
        push    eax
        push    ecx
        push    edx
        mov     eax, USER_RETURN_VECTOR
        mov     edx, offset user_return_entry
        mov     cl, GATE_INTR_USER
        call    idt_set_gate
        pop     edx
        pop     ecx
        pop     eax
        mov     [user_call_esp], esp
        jmp     enter_user

user_return_entry:                              // on the TSS stack: the frame is dropped
        mov     ax, KERNEL_DS
        mov     ds, ax
        mov     es, ax
        mov     esp, [user_call_esp]
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

        .data
        .p2align 2
user_call_esp:  .long   0
        .p2align 3
        .globl  user_gdt, user_gdt_descriptor
user_gdt:
        .quad   0x0000000000000000              // 0x00: null
        .quad   0x00CF9A000000FFFF              // 0x08: kernel code, flat, DPL 0
        .quad   0x00CF92000000FFFF              // 0x10: kernel data, flat, DPL 0
        .quad   0x00CFFA000000FFFF              // 0x18: user code, flat, DPL 3
        .quad   0x00CFF2000000FFFF              // 0x20: user data, flat, DPL 3
        .word   TSS_SIZE - 1, 0                 // 0x28: 32-bit TSS, available (base filled in)
        .byte   0, 0x89, 0, 0
        .globl  gdt_free_slots
gdt_free_slots:
        .fill   GDT_FREE_SLOTS, 8, 0            // 0x30 ... 0xA8
user_gdt_end:
        .p2align 1
user_gdt_descriptor:
        .word   user_gdt_end - user_gdt - 1
        .long   user_gdt

        .bss
        .p2align 4
        .globl  tss
tss:
        .skip   TSS_SIZE
