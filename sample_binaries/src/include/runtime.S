// Tiny polled-UART runtime: putc/puts/print_hex*/print_dec/getc/exit.  All functions
// preserve every register except where a return value is documented.
#include "runtime.h"

        .text

// putc: write AL to COM1 once the transmitter holding register is empty.
        .globl  putc
putc:
        push    edx
        push    eax
        mov     dx, UART_LSR
1:      in      al, dx
        test    al, LSR_THRE
        jz      1b
        pop     eax
        mov     dx, UART_THR
        out     dx, al
        pop     edx
        ret

// getc: wait for a received byte (LSR bit 0) and return it in AL (rest of EAX zero).
        .globl  getc
getc:
        push    edx
        mov     dx, UART_LSR
1:      in      al, dx
        test    al, LSR_DR
        jz      1b
        mov     dx, UART_RBR
        in      al, dx
        movzx   eax, al
        pop     edx
        ret

// puts: write the NUL-terminated string at ESI.
        .globl  puts
puts:
        push    esi
        push    eax
1:      mov     al, [esi]
        test    al, al
        jz      2f
        call    putc
        inc     esi
        jmp     1b
2:      pop     eax
        pop     esi
        ret

// newline: write "\n".
        .globl  newline
newline:
        push    eax
        mov     al, 0x0A                        // '\n'
        call    putc
        pop     eax
        ret

// space: write " ".
        .globl  space
space:
        push    eax
        mov     al, 0x20                        // ' '
        call    putc
        pop     eax
        ret

// print_hex_digits: write the ECX low-order hex digits of EAX (most significant first).
print_hex_digits:
        push    eax
        push    ecx
        push    edx
        mov     edx, eax
        // rotate so that the first digit to print sits in the top nibble
        neg     ecx
        add     ecx, 8                          // ecx = 8 - ndigits
        shl     ecx, 2
        shl     edx, cl                         // (cl < 32 always: ndigits >= 1)
        mov     ecx, [esp + 4]                  // saved ECX = ndigits
1:      rol     edx, 4
        mov     al, dl
        and     al, 0x0F
        add     al, 0x30                        // '0'
        cmp     al, 0x39                        // '9'
        jbe     2f
        add     al, 0x61 - 0x30 - 10            // 'a' - '0' - 10
2:      call    putc
        dec     ecx
        jnz     1b
        pop     edx
        pop     ecx
        pop     eax
        ret

// print_hex32 / print_hex16 / print_hex8: EAX / AX / AL as 8 / 4 / 2 lowercase hex digits.
        .globl  print_hex32, print_hex16, print_hex8
print_hex32:
        push    ecx
        mov     ecx, 8
        call    print_hex_digits
        pop     ecx
        ret
print_hex16:
        push    ecx
        mov     ecx, 4
        call    print_hex_digits
        pop     ecx
        ret
print_hex8:
        push    ecx
        mov     ecx, 2
        call    print_hex_digits
        pop     ecx
        ret

// print_hex64: EDX:EAX as 16 hex digits.
        .globl  print_hex64
print_hex64:
        push    eax
        mov     eax, edx
        call    print_hex32
        pop     eax
        call    print_hex32
        ret

// print_0x32: "0x" followed by print_hex32.
        .globl  print_0x32
print_0x32:
        PUTS    "0x"
        jmp     print_hex32

// print_dec: EAX as an unsigned decimal number.
        .globl  print_dec
print_dec:
        push    eax
        push    ecx
        push    edx
        push    ebx
        mov     ebx, 10
        xor     ecx, ecx                        // digit count
1:      xor     edx, edx
        div     ebx                             // eax = eax / 10, edx = remainder
        push    edx
        inc     ecx
        test    eax, eax
        jnz     1b
2:      pop     eax
        add     al, 0x30                        // '0'
        call    putc
        dec     ecx
        jnz     2b
        pop     ebx
        pop     edx
        pop     ecx
        pop     eax
        ret

// exit: write EAX to the isa-debug-exit port, then stop for good if still running.
        .globl  exit
exit:
        mov     dx, DEBUG_EXIT_PORT
        out     dx, eax
1:      cli
        hlt
        jmp     1b
