// The fault side of probe.h: note the exception a probe took and resume after it. The frame of
// the first fault is kept (first_fault_frame: EIP, CS, EFLAGS, ESP, SS, and where the frame
// was) for the samples that check how the CPU delivered it.
#include "check.h"
#include "probe.h"

        .text
// [esp] vector, error code, EIP, CS, EFLAGS[, ESP, SS when it came from an outer ring]
        .globl  probe_fault_common
probe_fault_common:
        push    eax
        mov     eax, [esp + 4]
        shl     eax, 16
        mov     ax, [esp + 8]
        mov     [probe_result], eax
        cmp     dword ptr [first_fault_frame + 20], 0
        jne     2f
        push    ecx
        xor     ecx, ecx
1:      mov     eax, [esp + 16 + 4 * ecx]       // EIP, CS, EFLAGS, ESP, SS
        mov     [first_fault_frame + 4 * ecx], eax
        inc     ecx
        cmp     ecx, 5
        jb      1b
        lea     eax, [esp + 12]                 // the error code's slot: the frame's lowest
        mov     [first_fault_frame + 20], eax
        pop     ecx
2:      mov     eax, [probe_resume]
        mov     [esp + 12], eax
        pop     eax
        add     esp, 8
        iretd

        .data
        .p2align 2
        .globl  probe_result, probe_resume, faults, values, first_fault_frame
probe_result:       .long   0
probe_resume:       .long   0
first_fault_frame:  .fill   6, 4, 0
faults:             .fill   PROBE_SLOTS, 4, 0
values:             .fill   PROBE_SLOTS, 4, 0
