// segments: protected-mode segmentation as guests use it. Segment register loads and their
// faults (#GP, #NP, #SS with the selector as error code), data segments with a base from the
// GDT and from an LDT, far jmp/call/ret to another code segment, a call gate used with jmp at
// the same ring, and from ring 3 a call gate into ring 0 that copies two stack parameters to
// the TSS's ring-0 stack and returns with retf 8, plus the checks that refuse the others.
// Each probe notes the exception it takes ((vector << 16) | error code, or NO_FAULT); the
// fault handlers resume after it. Exit 0 if all is right, else 0x17.
#include "check.h"
#include "user.h"
#include "probe.h"

#define FAIL_EXIT       0x17
#define KSTACK_SIZE     4096

// Selectors of the descriptors this sample puts in the GDT's free slots
#define SEL_CODE_ALIAS  0x30                    // flat code, DPL 0 (a second kernel CS)
#define SEL_ABSENT_DATA 0x38                    // writable data, not present
#define SEL_EXEC_ONLY   0x40                    // execute-only code
#define SEL_READ_ONLY   0x48                    // read-only data
#define SEL_BASED_DATA  0x50                    // data, base BASED_DATA_BASE
#define SEL_USER_DATA   0x58                    // another DPL-3 data segment
#define SEL_GATE_USER   0x60                    // call gate DPL 3 -> ring 0, 2 parameters
#define SEL_GATE_KERNEL 0x68                    // call gate DPL 0 -> ring 0
#define SEL_GATE_ABSENT 0x70                    // call gate DPL 3, not present
#define SEL_GATE_SAME   0x78                    // call gate DPL 0 -> SEL_CODE_ALIAS
#define SEL_ABSENT_CODE 0x80                    // code, not present
#define SEL_LDT         0x88                    // the LDT
#define SEL_LDT_DATA    0x04                    // LDT entry 0: flat data, DPL 0
#define SEL_LDT_BASED   0x0C                    // LDT entry 1: data, base LDT_DATA_BASE
#define BASED_DATA_BASE 0x2000
#define LDT_DATA_BASE   0x3000

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
1:      mov     eax, [ebx]
        mov     edx, [ebx + 4]
        mov     ecx, [ebx + 8]
        call    idt_set_gate
        add     ebx, 12
        cmp     ebx, offset gates_end
        jb      1b
        call    build_descriptors
        lgdt    [user_gdt_descriptor]
        mov     dword ptr [BASED_DATA_BASE + 4], 0x5E6E5E6E     // what the based segments read
        mov     dword ptr [LDT_DATA_BASE + 8], 0x1D7D1D7D

        // ---- ring 0: segment loads
        mov     ax, 0
        PROBE   0, mov ss, ax
        mov     ax, SEL_ABSENT_DATA
        PROBE   1, mov ds, ax
        mov     ax, SEL_EXEC_ONLY
        PROBE   2, mov ds, ax
        mov     ax, SEL_CODE_ALIAS
        PROBE   3, mov ds, ax                   // readable code: allowed
        mov     ax, KERNEL_DS
        mov     ds, ax
        mov     ax, SEL_READ_ONLY
        PROBE   4, mov ss, ax
        mov     ax, SEL_USER_DATA
        PROBE   5, mov ss, ax
        mov     ax, TSS_SEL
        PROBE   6, mov ds, ax
        mov     ax, GDT_LIMIT + 1
        PROBE   7, mov ds, ax
        mov     ax, SEL_ABSENT_DATA
        PROBE   8, mov ss, ax
        mov     ax, SEL_USER_DATA
        PROBE   9, mov es, ax                   // DPL 3 data at CPL 0: allowed
        mov     ax, KERNEL_DS
        mov     es, ax
        mov     ax, SEL_BASED_DATA
        mov     es, ax
        mov     eax, es:[4]
        VALUE   0
        mov     ax, KERNEL_DS
        mov     es, ax
        mov     ax, SEL_LDT
        lldt    ax
        mov     ax, SEL_LDT_BASED
        mov     fs, ax
        mov     eax, fs:[8]
        VALUE   1
        mov     ax, SEL_LDT_DATA
        PROBE   10, mov gs, ax
        xor     eax, eax
        sldt    ax
        VALUE   2
        mov     ax, TSS_SEL                     // the TSS is busy since user_mode_init
        PROBE   11, ltr ax

        // ---- ring 0: far transfers
        PROBE   12, ljmp SEL_ABSENT_CODE, 0
        PROBE   13, ljmp KERNEL_DS, 0
        PROBE   14, lcall SEL_CODE_ALIAS, offset far_procedure
        VALUE   3                               // the CS far_procedure saw
        PROBE   15, ljmp SEL_GATE_SAME, 0       // the gate's own offset counts, not this one
        VALUE   4
        mov     ecx, SEL_GATE_USER
        xor     eax, eax
        lar     eax, ecx
        setz    al
        movzx   eax, al
        VALUE   5

        // ---- ring 3
        mov     eax, offset user_probes
        mov     edx, offset ustack + 4096
        mov     ecx, 0x202
        call    user_call
        call    check_all
        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

// far_procedure: called far through SEL_CODE_ALIAS; returns the CS it runs with.
far_procedure:
        xor     eax, eax
        mov     ax, cs
        retf

// same_ring_gate_target: reached by ljmp through SEL_GATE_SAME; goes back to the kernel CS.
same_ring_gate_target:
        xor     eax, eax
        mov     ax, cs
        ljmp    KERNEL_CS, offset after_same_ring_gate
after_same_ring_gate:
        jmp     [probe_resume]

// ring0_service: reached from ring 3 through SEL_GATE_USER with two parameters. Notes what it
// sees on its stack: [esp] EIP, CS, parameter 1 (pushed last), parameter 0, ESP, SS.
ring0_service:
        xor     eax, eax
        mov     ax, cs
        mov     [gate_cs], eax
        mov     ax, ss
        mov     [gate_ss], eax
        mov     eax, [esp + 4]
        mov     [gate_caller_cs], eax
        mov     eax, [esp + 8]
        mov     [gate_parameter_1], eax
        mov     eax, [esp + 12]
        mov     [gate_parameter_0], eax
        mov     eax, [esp + 20]
        mov     [gate_caller_ss], eax
        lea     eax, [esp + 24]
        mov     [gate_stack_end], eax
        mov     eax, 0x600D
        retf    8

// build_descriptors: fill the GDT's free slots and the LDT.
build_descriptors:
        mov     edi, offset gdt_free_slots
        mov     esi, offset plain_descriptors
        mov     ecx, 6 * 2                      // 0x30 .. 0x58: six plain descriptors
        rep movsd
        mov     eax, offset ring0_service       // 0x60: call gate, DPL 3, two parameters
        mov     ecx, KERNEL_CS
        mov     dl, 0xEC
        mov     dh, 2
        call    make_gate
        mov     eax, offset ring0_service       // 0x68: call gate, DPL 0
        mov     dl, 0x8C
        mov     dh, 0
        call    make_gate
        mov     eax, offset ring0_service       // 0x70: call gate, DPL 3, not present
        mov     dl, 0x6C
        call    make_gate
        mov     eax, offset same_ring_gate_target   // 0x78: call gate DPL 0 -> the alias
        mov     ecx, SEL_CODE_ALIAS
        mov     dl, 0x8C
        call    make_gate
        mov     dword ptr [edi], 0x0000FFFF     // 0x80: code, not present
        mov     dword ptr [edi + 4], 0x00CF1A00
        add     edi, 8
        mov     eax, offset ldt                 // 0x88: LDT, 16 bytes
        mov     word ptr [edi], 15
        mov     [edi + 2], ax
        shr     eax, 16
        mov     [edi + 4], al
        mov     byte ptr [edi + 5], 0x82
        mov     byte ptr [edi + 6], 0
        mov     [edi + 7], ah
        ret

// make_gate: call gate at [EDI] to ECX:EAX, access byte DL, parameter count DH; EDI += 8.
make_gate:
        mov     [edi], ax
        mov     [edi + 2], cx
        mov     [edi + 4], dh
        mov     [edi + 5], dl
        shr     eax, 16
        mov     [edi + 6], ax
        add     edi, 8
        ret

        PROBE_HANDLER ts_entry, 10, 1
        PROBE_HANDLER np_entry, 11, 1
        PROBE_HANDLER ss_entry, 12, 1
        PROBE_HANDLER gp_entry, 13, 1

// ---------------------------------------------------------------- ring 3
user_probes:
        mov     ebx, esp
        push    0x00C0FFEE                      // parameter 0
        push    0x0000BEEF                      // parameter 1
        PROBE   16, lcall SEL_GATE_USER | 3, 0
        VALUE   6                               // what ring0_service returned
        mov     eax, esp
        sub     eax, ebx
        VALUE   7                               // retf 8 dropped both parameters: 0
        mov     [user_esp], ebx
        PROBE   17, lcall SEL_GATE_KERNEL | 3, 0
        PROBE   18, lcall SEL_GATE_ABSENT | 3, 0
        PROBE   19, lcall KERNEL_CS, offset far_procedure
        PROBE   20, ljmp SEL_GATE_USER | 3, 0   // jmp cannot go to an inner ring
        push    KERNEL_CS
        push    offset user_probes
        PROBE   21, retf                        // nor can ret
        add     esp, 8
        int     USER_RETURN_VECTOR

// ---------------------------------------------------------------- the checks
check_all:
        FAULT   0, 0x000D0000, "mov ss, null: "
        FAULT   1, 0x000B0038, "mov ds, not present: "
        FAULT   2, 0x000D0040, "mov ds, execute-only code: "
        FAULT   3, NO_FAULT, "mov ds, readable code: "
        FAULT   4, 0x000D0048, "mov ss, read-only data: "
        FAULT   5, 0x000D0058, "mov ss, DPL-3 data at CPL 0: "
        FAULT   6, 0x000D0028, "mov ds, the TSS: "
        FAULT   7, 0x000D00B0, "mov ds, past the GDT limit: "
        FAULT   8, 0x000C0038, "mov ss, not present: "
        FAULT   9, NO_FAULT, "mov es, DPL-3 data at CPL 0: "
        READ    0, 0x5E6E5E6E, "es:[4] through a GDT segment based at 0x2000: "
        READ    1, 0x1D7D1D7D, "fs:[8] through an LDT segment based at 0x3000: "
        FAULT   10, NO_FAULT, "mov gs, LDT data: "
        READ    2, SEL_LDT, "sldt: "
        FAULT   11, 0x000D0028, "ltr of the busy TSS: "
        FAULT   12, 0x000B0080, "ljmp to a code segment not present: "
        FAULT   13, 0x000D0010, "ljmp to a data segment: "
        FAULT   14, NO_FAULT, "lcall to another code segment: "
        READ    3, SEL_CODE_ALIAS, "CS inside the far procedure: "
        FAULT   15, NO_FAULT, "ljmp through a call gate at the same ring: "
        READ    4, SEL_CODE_ALIAS, "CS at the gate's target: "
        READ    5, 1, "lar of a call gate: "
        FAULT   16, NO_FAULT, "ring 3: lcall through the DPL-3 gate: "
        READ    6, 0x600D, "ring 3: the ring-0 service returned "
        READ    7, 0, "ring 3: ESP moved by the call and retf 8: "
        mov     eax, [gate_cs]
        CHECK_HEX KERNEL_CS, "ring 0 service: CS "
        mov     eax, [gate_ss]
        CHECK_HEX KERNEL_DS, "ring 0 service: SS (from the TSS) "
        mov     eax, [gate_caller_cs]
        CHECK_HEX USER_CS, "ring 0 service: caller's CS "
        mov     eax, [gate_caller_ss]
        CHECK_HEX USER_DS, "ring 0 service: caller's SS "
        mov     eax, [gate_parameter_0]
        CHECK_HEX 0x00C0FFEE, "ring 0 service: parameter 0 "
        mov     eax, [gate_parameter_1]
        CHECK_HEX 0x0000BEEF, "ring 0 service: parameter 1 "
        mov     eax, [gate_stack_end]
        mov     ebx, offset kstack + KSTACK_SIZE
        CHECK_HEX ebx, "ring 0 service: frame ends at the TSS stack top "
        FAULT   17, 0x000D0068, "ring 3: lcall through a DPL-0 gate: "
        FAULT   18, 0x000B0070, "ring 3: lcall through a gate not present: "
        FAULT   19, 0x000D0008, "ring 3: lcall to ring-0 code: "
        FAULT   20, 0x000D0008, "ring 3: ljmp through the gate to ring 0: "
        FAULT   21, 0x000D0008, "ring 3: retf to ring 0: "
        ret

        .section .rodata
name:   .asciz  "segments"
        .p2align 2
gates:  .long   10, ts_entry, GATE_INTR
        .long   11, np_entry, GATE_INTR
        .long   12, ss_entry, GATE_INTR
        .long   13, gp_entry, GATE_INTR
gates_end:
        .p2align 3
plain_descriptors:
        .quad   0x00CF9A000000FFFF              // 0x30 code alias
        .quad   0x00CF12000000FFFF              // 0x38 data, not present
        .quad   0x00CF98000000FFFF              // 0x40 execute-only code
        .quad   0x00CF90000000FFFF              // 0x48 read-only data
        .quad   0x00CF92002000FFFF              // 0x50 data based at 0x2000
        .quad   0x00CFF2000000FFFF              // 0x58 DPL-3 data

        .data
        .p2align 3
ldt:    .quad   0x00CF92000000FFFF              // 0x04 flat data
        .quad   0x00CF92003000FFFF              // 0x0C data based at 0x3000
        .p2align 2
user_esp:       .long   0
gate_cs:        .long   0
gate_ss:        .long   0
gate_caller_cs: .long   0
gate_caller_ss: .long   0
gate_parameter_0: .long 0
gate_parameter_1: .long 0
gate_stack_end: .long   0

        .bss
        .p2align 12
kstack:         .skip   KSTACK_SIZE
ustack:         .skip   4096
