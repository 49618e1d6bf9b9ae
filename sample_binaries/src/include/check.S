// Self-checking helpers: labelled value checks that print "ok"/"FAIL", a failure count and
// the exit value it implies; a shared IDT whose every exception vector panics (prints the
// vector and where it happened, then exits with the sample's failure value) until the sample
// installs its own handlers with idt_set_gate.  Linked only into the samples that use it.
#include "check.h"

        .text

// check_begin: ESI = sample name (printed by check_end), EAX = exit value on failure.
        .globl  check_begin
check_begin:
        mov     [check_name], esi
        mov     [check_fail_value], eax
        mov     dword ptr [check_count], 0
        mov     dword ptr [check_failures], 0
        ret

// check_hex: "  <ESI>0x<EAX>" + " ok" if EAX == EDX, else " FAIL (want 0x<EDX>)".
        .globl  check_hex
check_hex:
        push    eax
        PUTS    "  "
        call    puts
        PUTS    "0x"
        call    print_hex32
        cmp     eax, edx
        je      check_pass
        PUTS    " FAIL (want 0x"
        mov     eax, edx
        call    print_hex32
        jmp     check_fail

// check_dec: "  <ESI><EAX>" + " ok" if EAX == EDX, else " FAIL (want <EDX>)".
        .globl  check_dec
check_dec:
        push    eax
        PUTS    "  "
        call    puts
        call    print_dec
        cmp     eax, edx
        je      check_pass
        PUTS    " FAIL (want "
        mov     eax, edx
        call    print_dec
        jmp     check_fail

// check_true: "  <ESI> ok" if EAX != 0, else "  <ESI> FAIL".
        .globl  check_true
check_true:
        push    eax
        PUTS    "  "
        call    puts
        test    eax, eax
        jnz     check_pass
        PUTS    " FAIL"
        inc     dword ptr [check_count]
        inc     dword ptr [check_failures]
        call    newline
        pop     eax
        ret

// Common tails of the check_* functions (the caller's EAX is on the stack).
check_pass:
        inc     dword ptr [check_count]
        PUTS    " ok\n"
        pop     eax
        ret
check_fail:
        PUTS    ")\n"
        inc     dword ptr [check_count]
        inc     dword ptr [check_failures]
        pop     eax
        ret

// check_fail_now: count one failure without printing (for checks that print their own line).
        .globl  check_fail_now
check_fail_now:
        inc     dword ptr [check_count]
        inc     dword ptr [check_failures]
        ret

// check_pass_now: count one passed check without printing.
        .globl  check_pass_now
check_pass_now:
        inc     dword ptr [check_count]
        ret

// check_end: print "<name>: N checks, all ok" or "<name>: N checks, M FAILED" and return
// in EAX the exit value: 0, or the failure value given to check_begin.
        .globl  check_end
check_end:
        push    esi
        mov     esi, [check_name]
        call    puts
        PUTS    ": "
        mov     eax, [check_count]
        call    print_dec
        PUTS    " checks, "
        mov     eax, [check_failures]
        test    eax, eax
        jnz     1f
        PUTS    "all ok\n"
        xor     eax, eax
        pop     esi
        ret
1:      call    print_dec
        PUTS    " FAILED\n"
        mov     eax, [check_fail_value]
        pop     esi
        ret

// ---------------------------------------------------------------- IDT

// idt_set_gate: IDT[EAX] = gate to handler EDX with type/attribute CL, selector KERNEL_CS.
        .globl  idt_set_gate
idt_set_gate:
        push    edi
        push    edx
        lea     edi, [idt + eax * 8]
        mov     word ptr [edi], dx              // offset 15..0
        mov     word ptr [edi + 2], KERNEL_CS
        mov     byte ptr [edi + 4], 0
        mov     byte ptr [edi + 5], cl
        shr     edx, 16
        mov     word ptr [edi + 6], dx          // offset 31..16
        pop     edx
        pop     edi
        ret

// idt_install_panic: vectors 0..31 -> panic stubs (interrupt gates), lidt.  The other
// vectors stay not present until a sample sets them.
        .globl  idt_install_panic
idt_install_panic:
        push    eax
        push    ecx
        push    edx
        xor     eax, eax
1:      mov     edx, [panic_stubs + eax * 4]
        mov     cl, GATE_INTR
        call    idt_set_gate
        inc     eax
        cmp     eax, 32
        jb      1b
        lidt    [idt_descriptor]
        pop     edx
        pop     ecx
        pop     eax
        ret

        .macro PANIC_STUB vector, has_err
panic_\vector:
        .if \has_err == 0
        push    0                               // dummy error code
        .endif
        push    \vector
        jmp     panic_common
        .endm

        .irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,29,31
        PANIC_STUB \v, 0
        .endr
        .irp v, 8,10,11,12,13,14,17,21,30
        PANIC_STUB \v, 1
        .endr

// Stack: vector, error code, EIP, CS, EFLAGS.
panic_common:
        cld
        PUTS    "UNEXPECTED exception, vector 0x"
        mov     eax, [esp]
        call    print_hex8
        PUTS    " err=0x"
        mov     eax, [esp + 4]
        call    print_hex32
        PUTS    " at eip 0x"
        mov     eax, [esp + 8]
        call    print_hex32
        call    newline
        call    check_fail_now
        call    check_end
        jmp     exit

// ---------------------------------------------------------------- data
        .section .rodata
        .p2align 2
panic_stubs:
        .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .long   panic_\v
        .endr
default_name:
        .asciz  "sample"

        .data
        .p2align 2
check_name:       .long default_name
check_fail_value: .long 0xFF
        .globl  check_count, check_failures
check_count:      .long 0
check_failures:   .long 0
        .p2align 1
        .globl  idt_descriptor
idt_descriptor:
        .word   256 * 8 - 1
        .long   idt

        .bss
        .p2align 3
        .globl  idt
idt:
        .skip   256 * 8
