// Multiboot v1 header (ELF kernel: no a.out kludge, so the loader uses the ELF program headers).
#include "runtime.h"

        .section .multiboot, "a"
        .p2align 2
        .globl  multiboot_header
multiboot_header:
        .long   MB_HEADER_MAGIC
        .long   MB_HEADER_FLAGS
        .long   -(MB_HEADER_MAGIC + MB_HEADER_FLAGS)     // checksum: the three words sum to 0
