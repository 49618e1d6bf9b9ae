// Self-checking helpers for the samples that verify their own results (see check.S).
// Include after runtime.h.
#ifndef SAMPLE_CHECK_H
#define SAMPLE_CHECK_H

#include "runtime.h"

// IDT gate types (present, DPL0)
#define GATE_INTR           0x8E        // 32-bit interrupt gate (clears IF)
#define GATE_TRAP           0x8F        // 32-bit trap gate (leaves IF alone)

// Arithmetic flags plus DF (the EFLAGS bits a sample compares): CF PF AF ZF SF DF OF
#define EFL_CF              0x0001
#define EFL_PF              0x0004
#define EFL_AF              0x0010
#define EFL_ZF              0x0040
#define EFL_SF              0x0080
#define EFL_TF              0x0100
#define EFL_IF              0x0200
#define EFL_DF              0x0400
#define EFL_OF              0x0800
#define EFL_ARITH           0x0CD5

#ifdef __ASSEMBLER__

// CHECK_HEX expected, "text": print "  text0x<EAX>" then " ok" if EAX == expected, else
// " FAIL (want 0x<expected>)" and count a failure.  `expected` is an immediate or a register
// other than EDX/ESI (a single token: no `offset sym`).  Preserves every register and EFLAGS
// is not preserved.
        .macro CHECK_HEX expected, text:vararg
        .pushsection .rodata
.Lchk_str\@:
        .asciz \text
        .popsection
        push    edx
        push    esi
        mov     edx, \expected
        mov     esi, offset .Lchk_str\@
        call    check_hex
        pop     esi
        pop     edx
        .endm

// CHECK_DEC expected, "text": the same with unsigned decimal numbers.
        .macro CHECK_DEC expected, text:vararg
        .pushsection .rodata
.Lchk_str\@:
        .asciz \text
        .popsection
        push    edx
        push    esi
        mov     edx, \expected
        mov     esi, offset .Lchk_str\@
        call    check_dec
        pop     esi
        pop     edx
        .endm

// CHECK_TRUE "text": print "  text ok" if EAX != 0, else "  text FAIL" (and count it).
        .macro CHECK_TRUE text:vararg
        .pushsection .rodata
.Lchk_str\@:
        .asciz \text
        .popsection
        push    esi
        mov     esi, offset .Lchk_str\@
        call    check_true
        pop     esi
        .endm

#endif
#endif
