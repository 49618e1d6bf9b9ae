// memmap: print the Multiboot information the loader handed over (EAX, EBX, flags, memory,
// memory map, boot device, command line, loader name, modules) and exit with 0.
#include "runtime.h"

// Multiboot info structure offsets
#define MBI_FLAGS        0
#define MBI_MEM_LOWER    4
#define MBI_MEM_UPPER    8
#define MBI_BOOT_DEVICE  12
#define MBI_CMDLINE      16
#define MBI_MODS_COUNT   20
#define MBI_MODS_ADDR    24
#define MBI_MMAP_LENGTH  44
#define MBI_MMAP_ADDR    48
#define MBI_LOADER_NAME  64

        .text

// print_field: "<ESI label><EAX as 0x%08x>\n"
print_field:
        call    puts
        call    print_0x32
        call    newline
        ret

// print_cstr: print the NUL-terminated string at EAX between double quotes.
print_cstr:
        PUTS    "\""
        push    esi
        mov     esi, eax
        call    puts
        pop     esi
        PUTS    "\"\n"
        ret

        .globl  kmain
kmain:
        push    ebx
        push    esi
        push    edi
        push    ebp
        mov     eax, [esp + 20]                 // boot EAX
        mov     ebx, [esp + 24]                 // boot EBX = struct multiboot_info *

        PUTS    "memmap: multiboot info dump\n"
        PUTS    "eax="
        call    print_0x32
        cmp     eax, MB_BOOT_MAGIC
        jne     1f
        PUTS    " (multiboot magic ok)\n"
        jmp     2f
1:      PUTS    " (NOT the multiboot magic)\n"
        mov     eax, 1
        jmp     .Ldone
2:
        PUTS    "mbi="
        mov     eax, ebx
        call    print_0x32
        call    newline

        mov     ebp, [ebx + MBI_FLAGS]
        mov     eax, ebp
        mov     esi, offset s_flags
        call    print_field

        // bit 0: mem_lower / mem_upper (KiB)
        test    ebp, 1 << 0
        jz      1f
        PUTS    "mem_lower="
        mov     eax, [ebx + MBI_MEM_LOWER]
        call    print_dec
        PUTS    " KiB\nmem_upper="
        mov     eax, [ebx + MBI_MEM_UPPER]
        call    print_dec
        PUTS    " KiB\n"
1:
        // bit 1: boot_device
        test    ebp, 1 << 1
        jz      1f
        mov     eax, [ebx + MBI_BOOT_DEVICE]
        mov     esi, offset s_bootdev
        call    print_field
1:
        // bit 2: command line
        test    ebp, 1 << 2
        jz      1f
        mov     eax, [ebx + MBI_CMDLINE]
        mov     esi, offset s_cmdline
        call    puts
        call    print_0x32
        call    space
        call    print_cstr
1:
        // bit 9: boot loader name
        test    ebp, 1 << 9
        jz      1f
        mov     eax, [ebx + MBI_LOADER_NAME]
        mov     esi, offset s_loader
        call    puts
        call    print_0x32
        call    space
        call    print_cstr
1:
        // bit 6: memory map
        test    ebp, 1 << 6
        jz      .Lno_mmap
        PUTS    "mmap_addr="
        mov     eax, [ebx + MBI_MMAP_ADDR]
        call    print_0x32
        PUTS    " mmap_length="
        mov     eax, [ebx + MBI_MMAP_LENGTH]
        call    print_dec
        call    newline
        mov     esi, [ebx + MBI_MMAP_ADDR]      // esi = current entry (points at its size field)
        mov     edi, esi
        add     edi, [ebx + MBI_MMAP_LENGTH]    // edi = end of the map
.Lmmap_loop:
        cmp     esi, edi
        jae     .Lno_mmap
        PUTS    "  mmap size="
        mov     eax, [esi]
        call    print_dec
        PUTS    " base=0x"
        mov     eax, [esi + 4]
        mov     edx, [esi + 8]
        call    print_hex64
        PUTS    " length=0x"
        mov     eax, [esi + 12]
        mov     edx, [esi + 16]
        call    print_hex64
        PUTS    " type="
        mov     eax, [esi + 20]
        call    print_dec
        call    newline
        mov     eax, [esi]
        lea     esi, [esi + eax + 4]            // next entry: size does not count itself
        jmp     .Lmmap_loop
.Lno_mmap:

        // bit 3: modules
        test    ebp, 1 << 3
        jz      .Lno_mods
        PUTS    "mods_count="
        mov     eax, [ebx + MBI_MODS_COUNT]
        call    print_dec
        PUTS    " mods_addr="
        mov     eax, [ebx + MBI_MODS_ADDR]
        call    print_0x32
        call    newline
        mov     esi, [ebx + MBI_MODS_ADDR]
        xor     edi, edi                        // module index
.Lmod_loop:
        cmp     edi, [ebx + MBI_MODS_COUNT]
        jae     .Lno_mods
        PUTS    "  module "
        mov     eax, edi
        call    print_dec
        PUTS    ": start="
        mov     eax, [esi]
        call    print_0x32
        PUTS    " end="
        mov     eax, [esi + 4]
        call    print_0x32
        PUTS    " size="
        mov     eax, [esi + 4]
        sub     eax, [esi]
        call    print_dec
        call    newline
        PUTS    "    cmdline="
        mov     eax, [esi + 8]
        call    print_0x32
        call    space
        call    print_cstr
        PUTS    "    first bytes hex="
        mov     ecx, [esi]                      // ecx = module start
        mov     ebp, [esi + 4]
        sub     ebp, ecx                        // ebp = min(size, 16) bytes to show
        cmp     ebp, 16
        jbe     1f
        mov     ebp, 16
1:      xor     edx, edx
        jmp     2f
1:      mov     al, [ecx + edx]
        call    print_hex8
        inc     edx
2:      cmp     edx, ebp
        jb      1b
        PUTS    " text=\""
        xor     edx, edx
        jmp     4f
1:      mov     al, [ecx + edx]
        cmp     al, 0x20                        // printable ASCII as is, the rest as '.'
        jb      2f
        cmp     al, 0x7E
        jbe     3f
2:      mov     al, 0x2E                        // '.'
3:      call    putc
        inc     edx
4:      cmp     edx, ebp
        jb      1b
        mov     ebp, [ebx + MBI_FLAGS]          // restore ebp = flags
        PUTS    "\"\n"
        add     esi, 16                         // sizeof(struct multiboot_module)
        inc     edi
        jmp     .Lmod_loop
.Lno_mods:
        PUTS    "memmap: done\n"
        xor     eax, eax
.Ldone:
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

        .section .rodata
s_flags:        .asciz  "flags="
s_bootdev:      .asciz  "boot_device="
s_cmdline:      .asciz  "cmdline="
s_loader:       .asciz  "boot_loader_name="
