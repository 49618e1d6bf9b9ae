// Probing instructions for the self-checking samples (see probe.S). Include after check.h.
// PROBE slot, instruction: run it and note in faults[slot] the exception it takes, as
// (vector << 16) | error code, or NO_FAULT; VALUE slot: note EAX in values[slot]. The kernel
// then checks them with FAULT / READ (CHECK_HEX on the noted value). Exceptions reach
// probe_fault_common through PROBE_HANDLER stubs, which resume after the probed instruction.
#ifndef SAMPLE_PROBE_H
#define SAMPLE_PROBE_H

#define NO_FAULT            0xFFFFFFFF
#define PROBE_SLOTS         64

#ifdef __ASSEMBLER__
        .macro  PROBE slot, insn:vararg
        mov     dword ptr [probe_result], NO_FAULT
        mov     dword ptr [probe_resume], offset .Lresume\@
        \insn
.Lresume\@:
        push    eax
        mov     eax, [probe_result]
        mov     [faults + 4 * \slot], eax
        pop     eax
        .endm

        .macro  VALUE slot
        mov     [values + 4 * \slot], eax
        .endm

        .macro  FAULT slot, expected, text:vararg
        mov     eax, [faults + 4 * \slot]
        CHECK_HEX \expected, \text
        .endm

        .macro  READ slot, expected, text:vararg
        mov     eax, [values + 4 * \slot]
        CHECK_HEX \expected, \text
        .endm

// PROBE_HANDLER name, vector, has_error_code: an IDT entry point for `vector`.
        .macro  PROBE_HANDLER name, vector, has_error_code
\name:
        .if \has_error_code == 0
        push    0
        .endif
        push    \vector
        jmp     probe_fault_common
        .endm
#endif
#endif
