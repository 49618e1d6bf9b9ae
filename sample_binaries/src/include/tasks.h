// Hardware task switches for the samples that use them (tasks.S, tasks16.S). Include after check.h.
#ifndef SAMPLE_TASKS_H
#define SAMPLE_TASKS_H

#define ACCESS_TSS32    0x89                    // present, DPL 0, available 32-bit TSS
#define ACCESS_TSS16    0x81                    // present, DPL 0, available 16-bit TSS
#define ACCESS_LDT      0x82
#define ACCESS_TASK_GATE 0x85
#define BUSY_TSS32      0x8B
#define BUSY_TSS16      0x83

// 32-bit TSS fields
#define T_LINK          0x00
#define T_ESP0          0x04
#define T_SS0           0x08
#define T_CR3           0x1C
#define T_EIP           0x20
#define T_EFLAGS        0x24
#define T_EAX           0x28
#define T_EBX           0x34
#define T_ESP           0x38
#define T_ES            0x48
#define T_CS            0x4C
#define T_SS            0x50
#define T_DS            0x54
#define T_FS            0x58
#define T_GS            0x5C
#define T_LDT           0x60
#define T_TRAP          0x64                    // bit 0: T; I/O map base in the upper half
#define TSS32_SIZE      0x68
// 16-bit TSS fields
#define T16_IP          0x0E
#define T16_FLAGS       0x10
#define T16_AX          0x12
#define T16_SP          0x1A
#define T16_ES          0x22
#define T16_CS          0x24
#define T16_SS          0x26
#define T16_DS          0x28
#define TSS16_SIZE      0x2C

#define EFL_NT          0x4000

#define CR0_TS          0x8

#ifdef __ASSEMBLER__
// SET_FLAGS value: EFLAGS = value (popfd), right before every instruction that switches tasks.
// QEMU 7.2 evaluates the arithmetic flags lazily and brings them up to date neither before a
// far jmp or call to a task nor after it: the EFLAGS saved in the old TSS, and the new task's
// arithmetic flags, can come from an older instruction (`stc; ljmp` saves CF = 0). popfd ends
// QEMU's translation block with the flags held exactly, so every switch here sees true flags.
        .macro  SET_FLAGS value
        push    \value
        popfd
        .endm
#endif
#endif
