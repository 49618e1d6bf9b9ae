// ticks: the PC's timer path end to end. Remap the i8259 pair to vectors 0x20-0x2F, program the
// i8254 for 100 Hz (mode 2), count ten timer interrupts with `sti; hlt`, and check what the
// chips show on the way: the in-service bit inside the handler, a request held in IRR while
// IRQ0 is masked and taken as soon as it is unmasked, the latched count, the TSC moving.
// Nothing printed depends on how fast the machine runs. Exit 0 if all is right, else 0x14.
#include "check.h"

#define FAIL_EXIT       0x14
#define PIC1_CMD        0x20
#define PIC1_DATA       0x21
#define PIC2_CMD        0xA0
#define PIC2_DATA       0xA1
#define PIT_CH0         0x40
#define PIT_CONTROL     0x43
#define PIT_DIVISOR     11932                   // 1193182 Hz / 100
#define OCW3_READ_IRR   0x0A
#define OCW3_READ_ISR   0x0B
#define EOI             0x20
#define TIMER_VECTOR    0x20

        .text
        .globl  kmain
kmain:
        push    esi
        mov     esi, offset name
        mov     eax, FAIL_EXIT
        call    check_begin
        call    idt_install_panic
        mov     eax, TIMER_VECTOR
        mov     edx, offset timer_handler
        mov     cl, GATE_INTR
        call    idt_set_gate

        // ICW1-4 for both chips: edge triggered, cascade, vectors 0x20 / 0x28, 8086 mode
        mov     al, 0x11
        out     PIC1_CMD, al
        out     PIC2_CMD, al
        mov     al, 0x20
        out     PIC1_DATA, al
        mov     al, 0x28
        out     PIC2_DATA, al
        mov     al, 0x04
        out     PIC1_DATA, al
        mov     al, 0x02
        out     PIC2_DATA, al
        mov     al, 0x01
        out     PIC1_DATA, al
        out     PIC2_DATA, al
        mov     al, 0xFF                        // everything masked while the PIT is set up
        out     PIC1_DATA, al
        out     PIC2_DATA, al
        in      al, PIC1_DATA
        movzx   eax, al
        CHECK_HEX 0xFF, "master IMR after init: "

        mov     al, 0x34                        // channel 0, lo/hi byte, mode 2, binary
        out     PIT_CONTROL, al
        mov     al, PIT_DIVISOR & 0xFF
        out     PIT_CH0, al
        mov     al, PIT_DIVISOR >> 8
        out     PIT_CH0, al
        mov     al, 0xE2                        // read-back: status of channel 0
        out     PIT_CONTROL, al
        in      al, PIT_CH0
        movzx   eax, al
        and     eax, 0x3F                       // mode, access, BCD (not OUT / null count)
        CHECK_HEX 0x34, "PIT channel 0 status: "
        mov     al, 0x00                        // latch channel 0's count
        out     PIT_CONTROL, al
        in      al, PIT_CH0
        mov     ah, al
        in      al, PIT_CH0
        xchg    al, ah
        movzx   eax, ax
        cmp     eax, PIT_DIVISOR
        setbe   al
        movzx   eax, al
        CHECK_TRUE "latched count within the divisor"

        // ten ticks, idling in hlt between them
        rdtsc
        mov     [tsc_start], eax
        mov     [tsc_start + 4], edx
        mov     al, 0xFE                        // unmask IRQ0 only
        out     PIC1_DATA, al
1:      sti
        hlt
        cli
        cmp     dword ptr [ticks], 10
        jb      1b
        mov     eax, [ticks]
        CHECK_DEC 10, "timer interrupts counted: "
        mov     eax, [isr_seen]
        CHECK_HEX 0x01, "ISR inside the handler: "
        rdtsc
        sub     eax, [tsc_start]
        sbb     edx, [tsc_start + 4]
        or      eax, edx
        CHECK_TRUE "TSC advanced across the ticks"

        // a masked request waits in IRR, then arrives as soon as IRQ0 is unmasked
        mov     al, 0xFF
        out     PIC1_DATA, al
        mov     al, OCW3_READ_IRR
        out     PIC1_CMD, al
        sti
2:      in      al, PIC1_CMD                    // IRR, until the PIT raises IRQ0 again
        test    al, 1
        jz      2b
        mov     eax, [ticks]
        CHECK_DEC 10, "no interrupt while masked: "
        mov     al, 0xFE
        out     PIC1_DATA, al                   // unmask: taken at the next instruction
        jmp     3f                              // boundary (QEMU's TCG takes it at the end of
3:      mov     eax, [ticks]                    // its block, the CPU right after the out)
        cli
        CHECK_DEC 11, "taken at the unmask: "

        call    check_end
        pop     esi
        ret

timer_handler:
        push    eax
        mov     al, OCW3_READ_ISR
        out     PIC1_CMD, al
        in      al, PIC1_CMD
        movzx   eax, al
        mov     [isr_seen], eax
        mov     al, OCW3_READ_IRR               // leave IRR selected for the polling loop
        out     PIC1_CMD, al
        mov     al, EOI
        out     PIC1_CMD, al
        inc     dword ptr [ticks]
        pop     eax
        iretd

        .data
name:   .asciz  "ticks"
        .align  4
ticks:  .long   0
isr_seen: .long 0
tsc_start: .long 0, 0
