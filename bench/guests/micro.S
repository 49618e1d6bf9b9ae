// micro: the guests of bench/bench_micro.py, one per build. Each repeats ONE operation
// ITERATIONS times in a loop whose other instructions are what the baseline build runs alone:
//
//   loop guests   -DOP_<name>: the operation in front of the loop's filler (-DOP_NONE: the
//                 baseline); with -DRING3 the loop runs in ring 3 (TSS, user segments, iretd)
//   spin guests   -DSPIN_TIMER: IRQ0 every PIT_DIVISOR ticks (PIC at 0x20, PIT mode 2), spin
//                 with IF=1 until ITERATIONS interrupts were handled; -DSPIN_NONE: the same
//                 spin loop, time in use but IRQ0 masked, for ITERATIONS rounds
//
// ESI ends holding the spin rounds (spin guests); the guest exits with 0 through isa-debug-exit.
// Anything unexpected lands in check.S's panic handlers (a non-zero exit).
#include "check.h"
#include "user.h"

#define PIC1_CMD        0x20
#define EOI             0x20
#define TIMER_VECTOR    0x20
#define SYSCALL_VECTOR  0x80
#define FINISH_VECTOR   0x81                    // ring 3 ends the run through this gate
#define IN_PORT         0x80                    // unassigned on the PC (POST codes)
// The spin loops' variables, on a page of their own: no code beside them (a store there would be
// self-modifying code under bt), and a page number apart from the monitor's hot pages modulo
// 256 (the engine's TLB is direct mapped: 0x102000 would evict bt's scratch page 0xFF002000).
#define TICKS           0x130000
#define SPIN_ROUNDS     0x130004
#ifndef PIT_DIVISOR
#define PIT_DIVISOR     20
#endif

// The operation under test: one instance per loop round.
        .macro OPERATION
#if defined(OP_SYSCALL)
        int     SYSCALL_VECTOR
#elif defined(OP_IN)
        in      al, dx
#elif defined(OP_CLI_STI)
        cli
        sti
#elif defined(OP_PUSHF_POPF)
        pushfd
        popfd
#elif defined(OP_CALL_RET)
        call    empty_function
#elif defined(OP_DIVIDE)
        div     ecx                             // ECX = 0: #DE, the handler skips the div
#elif !defined(OP_NONE) && !defined(SPIN_TIMER) && !defined(SPIN_NONE)
#error "no guest selected: -DOP_<name> or -DSPIN_<name>"
#endif
        .endm

        .text
        .globl  kmain
kmain:
        call    idt_install_panic
        xor     eax, eax                        // #DE (vector 0)
        mov     edx, offset divide_error
        mov     cl, GATE_INTR
        call    idt_set_gate
#if defined(SPIN_TIMER) || defined(SPIN_NONE)
        jmp     spin
#elif defined(RING3)
        mov     eax, offset kstack_top
        call    user_mode_init
        mov     eax, SYSCALL_VECTOR
        mov     edx, offset syscall_entry
        mov     cl, GATE_INTR_USER
        call    idt_set_gate
        mov     eax, FINISH_VECTOR
        mov     edx, offset finish
        mov     cl, GATE_INTR_USER
        call    idt_set_gate
        mov     eax, offset op_loop
        mov     edx, offset ustack_top
        mov     ecx, 0x202                      // EFLAGS: IF (nothing fires: time not in use)
        jmp     enter_user
#else
        jmp     op_loop
#endif

// ---------------------------------------------------------------- loop guests
        .p2align 4
op_loop:
        xor     eax, eax
        xor     ebx, ebx
        xor     ecx, ecx                        // the divisor of OP_DIVIDE
        mov     edx, IN_PORT
        xor     esi, esi
        mov     edi, ITERATIONS
        .p2align 4
1:      OPERATION
        add     ebx, edi                        // the baseline: 4 instructions a round
        xor     esi, ebx
        dec     edi
        jnz     1b
#if defined(RING3)
        int     FINISH_VECTOR
#endif
        jmp     finish

        .p2align 4
empty_function:
        ret

// int 0x80 from ring 3: nothing to do.
        .p2align 4
syscall_entry:
        iretd

// #DE: return past the 2-byte `div ecx`.
        .p2align 4
divide_error:
        add     dword ptr [esp], 2
        iretd

// ---------------------------------------------------------------- spin guests
spin:
        mov     dword ptr [TICKS], 0
        mov     dword ptr [SPIN_ROUNDS], ITERATIONS
#if defined(SPIN_TIMER)
        mov     eax, TIMER_VECTOR
        mov     edx, offset timer_entry
        mov     cl, GATE_INTR
        call    idt_set_gate
        mov     al, 0xFE                        // IRQ0 only
        call    pic_remap
        mov     ax, PIT_DIVISOR
        call    pit_periodic
        sti                                     // idle until the first tick (it counts): from
        hlt                                     // there on every mode runs the new period (a
                                                // run already going on need not see the OUTs)
#else
        mov     al, 0xFF                        // all masked: time is in use, nothing fires
        call    pic_remap
#endif
        xor     esi, esi
        sti
        .p2align 4
1:      inc     esi                             // 3 instructions a round
#if defined(SPIN_TIMER)
        cmp     dword ptr [TICKS], ITERATIONS
#else
        cmp     esi, dword ptr [SPIN_ROUNDS]
#endif
        jb      1b
        cli
        jmp     finish

        .p2align 4
timer_entry:
        push    eax
        mov     al, EOI
        out     PIC1_CMD, al
        inc     dword ptr [TICKS]
        pop     eax
        iretd

// ---------------------------------------------------------------- the end (ring 0)
finish:
        xor     eax, eax
        mov     dx, DEBUG_EXIT_PORT
        out     dx, eax
        cli
        hlt

        .bss
        .p2align 12
kstack:         .skip   4096
kstack_top:
ustack:         .skip   4096
ustack_top:
