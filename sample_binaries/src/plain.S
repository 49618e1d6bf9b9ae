// plain: linked without a Multiboot header (a plain ELF32 executable for the monitor's ELF
// loader); prints one line and exits with 0, without looking at EBX.
#include "runtime.h"

        .text
        .globl  kmain
kmain:
        PUTS    "Hello from a plain ELF32 guest (no Multiboot header)\n"
        xor     eax, eax
        ret
