# hello.s: self-contained Intel-syntax guest for the monitor's Keystone path (assembled at 0x100000).
# Keystone rules followed here: '#' comments only (a semicolon separates statements), and addresses
# of labels are taken with lea (Keystone reads "mov esi, label" as an immediate, GNU as as a load).
# Entry is the first instruction.  Own GDT, own stack, polled COM1 output, exit via port 0xF4.

start:
    cli
    cld
    # Keystone encodes "lgdt [m]" with a 0x66 prefix (16-bit form: 24-bit base) and
    # "ljmp 0x08:label" as ptr16:16, so both are spelled out as bytes.
    .byte 0x0f, 0x01, 0x15              # lgdt [gdt_descriptor]   (0f 01 /2, disp32)
    .long gdt_descriptor
    .byte 0xea                          # jmp 0x08:reload_cs      (ea ptr16:32)
    .long reload_cs
    .word 0x08
reload_cs:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov esp, 0x00110000                 # stack: top of the 64 KiB above the image's page

    mov dx, 0x3fb                       # LCR: 8N1, DLAB=0
    mov al, 0x03
    out dx, al

    lea esi, [message]
next_char:
    mov al, byte ptr [esi]
    test al, al
    jz done
    mov bl, al
    mov dx, 0x3fd                       # LSR
wait_thre:
    in al, dx
    test al, 0x20                       # THR empty?
    jz wait_thre
    mov al, bl
    mov dx, 0x3f8                       # THR
    out dx, al
    inc esi
    jmp next_char

done:
    xor eax, eax                        # exit value 0
    mov dx, 0xf4
    out dx, eax
halt:
    cli
    hlt
    jmp halt

    .align 8
gdt:
    .quad 0x0000000000000000            # null
    .quad 0x00CF9A000000FFFF            # 0x08: flat 32-bit code
    .quad 0x00CF92000000FFFF            # 0x10: flat 32-bit data
gdt_descriptor:
    .word 23
    .long gdt

message:
    .asciz "Hello from Keystone-assembled hello.s\n"
