// The PC's interrupt chips for the samples that take timer interrupts: pic_remap puts the
// i8259 pair at vectors 0x20-0x2F (cascade on IRQ2, 8086 mode) and unmasks only the IRQs given;
// pit_periodic starts i8254 channel 0 in mode 2 (rate generator) with the given divisor.
#include "runtime.h"

#define PIC1_CMD        0x20
#define PIC1_DATA       0x21
#define PIC2_CMD        0xA0
#define PIC2_DATA       0xA1
#define PIT_CH0         0x40
#define PIT_CONTROL     0x43

        .text
// pic_remap: AL = the master's mask (IRQ0-7) after the remap; the slave's IRQs stay masked.
        .globl  pic_remap
pic_remap:
        push    eax
        mov     al, 0x11                        // ICW1: edge, cascade, ICW4 follows
        out     PIC1_CMD, al
        out     PIC2_CMD, al
        mov     al, 0x20                        // ICW2: vector bases
        out     PIC1_DATA, al
        mov     al, 0x28
        out     PIC2_DATA, al
        mov     al, 0x04                        // ICW3: slave on IRQ2
        out     PIC1_DATA, al
        mov     al, 0x02
        out     PIC2_DATA, al
        mov     al, 0x01                        // ICW4: 8086 mode
        out     PIC1_DATA, al
        out     PIC2_DATA, al
        mov     al, 0xFF
        out     PIC2_DATA, al
        pop     eax
        out     PIC1_DATA, al
        ret

// pit_periodic: AX = channel 0's divisor (1193182 Hz / divisor interrupts a second).
        .globl  pit_periodic
pit_periodic:
        push    eax
        mov     al, 0x34                        // channel 0, lo/hi byte, mode 2, binary
        out     PIT_CONTROL, al
        pop     eax
        out     PIT_CH0, al
        mov     al, ah
        out     PIT_CH0, al
        ret
