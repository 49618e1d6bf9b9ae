// uart: exercise every 16550 register of COM1 (divisor latch, IER, IIR, FCR, LCR, MCR, LSR,
// MSR, scratch, loopback) and print every value read; exit with 3.
//
// While the registers are being poked nothing is printed (printing writes THR, which changes
// IIR/LSR state): each value read is recorded with a label and the whole list is printed at
// the end, after the UART is put back into a plain state.  Tests that would depend on
// host/virtual time (the FIFO receive timeout interrupt) are avoided on purpose: IER.RDI is
// only enabled with the FIFOs off.
#include "runtime.h"

// WR reg, value:  out to a UART register
        .macro WR reg, value
        mov     dx, \reg
        mov     al, \value
        out     dx, al
        .endm

// RD reg, "label": in from a UART register and record (label, value)
        .macro RD reg, label:vararg
        .pushsection .rodata
.Lrd_label\@:
        .asciz  \label
        .popsection
        mov     dx, \reg
        in      al, dx
        mov     ecx, offset .Lrd_label\@
        call    record
        .endm

        .text

// record: append (label ECX, value AL) to the results table.
record:
        push    edi
        mov     edi, [nresults]
        mov     [result_label + edi * 4], ecx
        mov     [result_value + edi], al
        inc     dword ptr [nresults]
        pop     edi
        ret

        .globl  kmain
kmain:
        push    ebx
        push    esi
        push    edi
        PUTS    "uart: register test (values are recorded first, printed below)\n"

        // ---- line control, divisor latch
        WR      UART_IER, 0x00                  // no interrupt sources
        WR      UART_FCR, 0x00                  // FIFOs off
        WR      UART_LCR, 0x83                  // DLAB=1, 8N1
        RD      UART_LCR, "LCR with DLAB set (wrote 0x83)"
        WR      UART_DLL, 0x34
        WR      UART_DLM, 0x12
        RD      UART_DLL, "DLL (wrote 0x34)"
        RD      UART_DLM, "DLM (wrote 0x12)"
        WR      UART_DLL, 0x01                  // 115200 baud
        WR      UART_DLM, 0x00
        RD      UART_DLL, "DLL (wrote 0x01)"
        RD      UART_DLM, "DLM (wrote 0x00)"
        WR      UART_LCR, 0x1B                  // DLAB=0, 8 bits, even parity, 1 stop
        RD      UART_LCR, "LCR (wrote 0x1b)"
        WR      UART_LCR, 0x03                  // DLAB=0, 8N1
        RD      UART_LCR, "LCR (wrote 0x03)"

        // ---- interrupt enable / identification
        RD      UART_LSR, "LSR idle"
        RD      UART_IIR, "IIR with IER=0"
        WR      UART_IER, 0x0F
        RD      UART_IER, "IER (wrote 0x0f)"
        WR      UART_IER, 0xFF
        RD      UART_IER, "IER (wrote 0xff, upper bits read as 0)"
        WR      UART_IER, 0x00
        RD      UART_IER, "IER (wrote 0x00)"
        RD      UART_IIR, "IIR with IER=0 again"
        WR      UART_IER, 0x02                  // THR-empty interrupt on: THRE is set -> pending
        RD      UART_IIR, "IIR after IER=0x02 (THRE interrupt pending)"
        RD      UART_IIR, "IIR read again (reading IIR cleared THRE pending)"
        WR      UART_IER, 0x00

        // ---- modem control
        WR      UART_MCR, 0x0B                  // DTR | RTS | OUT2
        RD      UART_MCR, "MCR (wrote 0x0b)"
        RD      UART_MSR, "MSR normal mode"
        WR      UART_MCR, 0xE3                  // upper bits are not stored
        RD      UART_MCR, "MCR (wrote 0xe3, upper bits read as 0)"

        // ---- scratch register
        WR      UART_SCR, 0x5A
        RD      UART_SCR, "SCR (wrote 0x5a)"
        WR      UART_SCR, 0xA5
        RD      UART_SCR, "SCR (wrote 0xa5)"

        // ---- loopback (MCR bit 4): transmitted bytes come back through RBR
        WR      UART_MCR, 0x10                  // loop, all modem outputs off
        RD      UART_MCR, "MCR loopback (wrote 0x10)"
        RD      UART_MSR, "MSR loopback, outputs off"
        WR      UART_MCR, 0x1F                  // loop + DTR + RTS + OUT1 + OUT2
        RD      UART_MSR, "MSR loopback, MCR=0x1f"
        WR      UART_MCR, 0x15                  // loop + DTR + OUT1
        RD      UART_MSR, "MSR loopback, MCR=0x15"
        WR      UART_MCR, 0x1A                  // loop + RTS + OUT2
        RD      UART_MSR, "MSR loopback, MCR=0x1a"
        RD      UART_LSR, "LSR loopback before sending"
        WR      UART_THR, 0x41                  // 'A'
        RD      UART_LSR, "LSR after sending 0x41 (data ready)"
        RD      UART_RBR, "RBR loopback byte"
        RD      UART_LSR, "LSR after reading RBR"

        // receive-data interrupt (FIFOs off)
        WR      UART_IER, 0x01
        RD      UART_IIR, "IIR with IER=0x01, nothing received"
        WR      UART_THR, 0x42                  // 'B'
        RD      UART_IIR, "IIR after loopback 0x42 (data available)"
        RD      UART_RBR, "RBR loopback byte"
        RD      UART_IIR, "IIR after reading RBR"

        // overrun: two bytes without reading the first
        WR      UART_IER, 0x04                  // receiver line status interrupt
        WR      UART_THR, 0x43                  // 'C'
        WR      UART_THR, 0x44                  // 'D' overwrites 'C' -> overrun
        RD      UART_IIR, "IIR after overrun (line status)"
        RD      UART_LSR, "LSR after overrun"
        RD      UART_LSR, "LSR read again (overrun cleared)"
        RD      UART_IIR, "IIR after reading LSR"
        RD      UART_RBR, "RBR after overrun (last byte wins)"
        WR      UART_IER, 0x00

        // THRE interrupt after a transmission
        WR      UART_IER, 0x02
        RD      UART_IIR, "IIR after IER=0x02"
        RD      UART_IIR, "IIR read again"
        WR      UART_THR, 0x45                  // 'E' (looped back)
        RD      UART_IIR, "IIR after sending 0x45 (THRE pending again)"
        RD      UART_RBR, "RBR loopback byte"
        WR      UART_IER, 0x00

        // ---- FIFOs
        WR      UART_FCR, 0x07                  // enable + clear both FIFOs, trigger 1 byte
        RD      UART_IIR, "IIR with FIFOs enabled (high bits)"
        RD      UART_LSR, "LSR with FIFOs enabled"
        WR      UART_THR, 0x61                  // 'a' 'b' 'c' through the FIFO loop
        WR      UART_THR, 0x62
        WR      UART_THR, 0x63
        RD      UART_LSR, "LSR after 3 bytes into the FIFO"
        RD      UART_RBR, "RBR fifo byte 1"
        RD      UART_RBR, "RBR fifo byte 2"
        RD      UART_LSR, "LSR with 1 byte left"
        RD      UART_RBR, "RBR fifo byte 3"
        RD      UART_LSR, "LSR with the FIFO empty"
        WR      UART_FCR, 0x00                  // FIFOs off again
        RD      UART_IIR, "IIR with FIFOs disabled"

        // ---- back to normal mode
        WR      UART_MCR, 0x0B
        RD      UART_MSR, "MSR normal mode again"
        RD      UART_LSR, "LSR final"
        RD      UART_IIR, "IIR final"

        // ---- print the results
        xor     ebx, ebx
1:      cmp     ebx, [nresults]
        jae     2f
        mov     esi, [result_label + ebx * 4]
        call    puts
        PUTS    ": 0x"
        mov     al, [result_value + ebx]
        call    print_hex8
        call    newline
        inc     ebx
        jmp     1b
2:
        PUTS    "uart: "
        mov     eax, [nresults]
        call    print_dec
        PUTS    " reads, exiting with 3\n"
        mov     eax, 3
        pop     edi
        pop     esi
        pop     ebx
        ret

        .data
        .p2align 2
nresults:       .long 0

        .bss
        .p2align 2
result_label:   .skip 4 * 128
result_value:   .skip 128
