// hello: the smallest sample - print a greeting line and exit with 0.
#include "runtime.h"

        .text
        .globl  kmain
kmain:
        PUTS    "Hello from the guest kernel!\n"
        xor     eax, eax                        // exit value 0
        ret
