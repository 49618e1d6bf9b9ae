// echo: read bytes from COM1 and echo them back uppercased until '\n', then print the byte
// count and exit with 0.
#include "runtime.h"

        .text
        .globl  kmain
kmain:
        push    ebx
        mov     dx, UART_IER                    // polled mode: no UART interrupts
        xor     al, al
        out     dx, al
        mov     dx, UART_FCR                    // FIFOs off (one byte in RBR at a time)
        out     dx, al
        PUTS    "echo: type a line\n"
        xor     ebx, ebx                        // bytes received
1:      call    getc
        inc     ebx
        cmp     al, 0x61                        // 'a'..'z' -> 'A'..'Z'
        jb      2f
        cmp     al, 0x7A
        ja      2f
        sub     al, 0x20
2:      call    putc
        cmp     al, 0x0A                        // '\n' ends the line
        jne     1b
        PUTS    "echo: "
        mov     eax, ebx
        call    print_dec
        PUTS    " bytes\n"
        xor     eax, eax
        pop     ebx
        ret
