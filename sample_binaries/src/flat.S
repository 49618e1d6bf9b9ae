// flat: built as a flat binary (objcopy -O binary) to be loaded at 0x100000 and entered at
// its first byte (_start); prints one line and exits with 0.
#include "runtime.h"

        .text
        .globl  kmain
kmain:
        PUTS    "Hello from a flat binary loaded at 0x00100000\n"
        xor     eax, eax
        ret
