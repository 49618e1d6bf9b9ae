// micro: the guests of bench/bench_micro.py, one per build. Each repeats ONE operation
// ITERATIONS times in a loop whose other instructions are what the baseline build runs alone:
//
//   loop guests   -DOP_<name>: the operation in front of the loop's filler (-DOP_NONE: the
//                 baseline); with -DRING3 the loop runs in ring 3 (TSS, user segments, iretd)
//   spin guests   -DSPIN_TIMER: IRQ0 every PIT_DIVISOR ticks (PIC at 0x20, PIT mode 2), spin
//                 with IF=1 until ITERATIONS interrupts were handled; -DSPIN_NONE: the same
//                 spin loop, time in use but IRQ0 masked, for ITERATIONS rounds
//   paging guests -DOP_PGFAULT, -DOP_PGMAPPED, -DOP_PTEMOD, -DOP_CR3, or -DOP_NONE -DPAGING (their
//                 baseline): the loop guests' loop with paging on (see "paging" below) and one
//                 more filler instruction, `xor eax, ebp`, that alternates EAX between the two
//                 values the operation uses (5 instructions a round)
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

// ---------------------------------------------------------------- paging
// The paging guests turn paging on before the loop, with two page directories that share the
// kernel's mappings: PD_A (the one in use) and PD_B both map 0-4 MiB one to one through PT_LOW
// (supervisor, read/write; page 0 absent); PD_A also maps the test region at TEST_VA through
// PT_TEST. Before the loop LIVE_VA (through PT_TEST) is read once, so PT_TEST is a table the
// CPU has walked (a shadow-paging monitor has it shadowed and traces it). The structures sit at
// fixed pages, as the spin variables do: no code beside them, and page numbers 0x140-0x144
// (TLB sets 0x40-0x44; the test pages' linear page numbers end in 0x50-0x52) apart from the
// code, the stacks and the monitor's hot pages.
//   OP_PGFAULT   `mov ecx, [FAULT_VA]` on a page not present: #PF, whose handler (pf_fix) reads
//                CR2, checks it, writes the PTE present and returns; the load runs again and
//                hits; then the loop unmaps the page again: `mov [FAULT_PTE], 0` + `invlpg`
//   OP_PGMAPPED  its baseline, the same minus the fault: the load hits a present page, the PTE
//                write stores the present entry again, `invlpg` (8 instructions a round)
//   OP_PTEMOD    `mov [PTEMOD_PTE], eax`: one PTE write, alternately present and not present,
//                for PTEMOD_VA (in PT_TEST, never touched: no invlpg, no TLB entry can be stale)
//   OP_CR3       `mov cr3, eax`, EAX alternately PD_B and PD_A: every round switches
#if defined(OP_PGFAULT) || defined(OP_PGMAPPED) || defined(OP_PTEMOD) || defined(OP_CR3)
#define PAGING
#endif
#define PG_P            0x001
#define PG_RW           0x002
#define PG_KERNEL       0x003                   // P RW, supervisor
#define CR0_PG          0x80000000
#define PAGE_SIZE       4096
#define PF_VECTOR       14
#define PF_FAIL_EXIT    0x0E                    // a #PF the handler did not expect
#define PD_A            0x140000
#define PD_B            0x141000
#define PT_LOW          0x142000
#define PT_TEST         0x143000
#define TEST_FRAME      0x144000                // the frame the test pages map
#define TEST_VA         0x40000000              // PDE 0x100: PT_TEST
#define FAULT_VA        (TEST_VA + 0x50000)
#define PTEMOD_VA       (TEST_VA + 0x51000)
#define LIVE_VA         (TEST_VA + 0x52000)
#define PTE_OF(va)      (PT_TEST + (((va) >> 12) & 0x3FF) * 4)
#define FAULT_PTE       PTE_OF(FAULT_VA)
#define PTEMOD_PTE      PTE_OF(PTEMOD_VA)
// EAX before the first round and what `xor eax, ebp` flips every round
#if defined(OP_CR3)
#define TOGGLE_FIRST    PD_B
#define TOGGLE_XOR      (PD_A ^ PD_B)
#elif defined(OP_PTEMOD)
#define TOGGLE_FIRST    (TEST_FRAME | PG_KERNEL)
#define TOGGLE_XOR      PG_P
#else
#define TOGGLE_FIRST    0
#define TOGGLE_XOR      0
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
#elif defined(OP_PGFAULT)
        mov     ecx, [FAULT_VA]                 // not present: #PF, pf_fix maps it, runs again
        mov     dword ptr [FAULT_PTE], 0        // unmap
        invlpg  [FAULT_VA]
#elif defined(OP_PGMAPPED)
        mov     ecx, [FAULT_VA]                 // present
        mov     dword ptr [FAULT_PTE], TEST_FRAME | PG_KERNEL   // the same entry again
        invlpg  [FAULT_VA]
#elif defined(OP_PTEMOD)
        mov     [PTEMOD_PTE], eax               // present, not present, present, ...
#elif defined(OP_CR3)
        mov     cr3, eax                        // PD_B, PD_A, PD_B, ...
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
#elif defined(PAGING)
        call    paging_on
        jmp     op_loop
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
#if defined(PAGING)
        mov     eax, TOGGLE_FIRST
        mov     ebp, TOGGLE_XOR
#endif
        .p2align 4
1:      OPERATION
#if defined(PAGING)
        xor     eax, ebp                        // the paging baseline: 5 instructions a round
#endif
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

// ---------------------------------------------------------------- paging guests
#if defined(PAGING)
// paging_on: the tables above, the #PF gate, CR3 = PD_A, CR0.PG; then LIVE_VA read once.
paging_on:
        mov     eax, PF_VECTOR
        mov     edx, offset pf_fix
        mov     cl, GATE_INTR
        call    idt_set_gate
        cld
        mov     edi, PD_A                       // PD_A, PD_B, PT_LOW, PT_TEST: all empty
        xor     eax, eax
        mov     ecx, 4 * PAGE_SIZE / 4
        rep     stosd
        mov     edi, PT_LOW + 4                 // pages 1-1023 one to one
        mov     eax, PAGE_SIZE | PG_KERNEL
        mov     ecx, 1023
1:      stosd
        add     eax, PAGE_SIZE
        loop    1b
        mov     dword ptr [PD_A], PT_LOW | PG_KERNEL
        mov     dword ptr [PD_B], PT_LOW | PG_KERNEL
        mov     dword ptr [PD_A + (TEST_VA >> 22) * 4], PT_TEST | PG_KERNEL
        mov     dword ptr [PTE_OF(LIVE_VA)], TEST_FRAME | PG_KERNEL
#if defined(OP_PGMAPPED)
        mov     dword ptr [FAULT_PTE], TEST_FRAME | PG_KERNEL
#endif
        mov     eax, PD_A
        mov     cr3, eax
        mov     eax, cr0
        or      eax, CR0_PG
        mov     cr0, eax
        jmp     2f
2:      mov     eax, [LIVE_VA]
        ret

// #PF: map FAULT_VA (the only page expected to fault), return to the load.
        .p2align 4
pf_fix:
        push    eax
        mov     eax, cr2
        cmp     eax, FAULT_VA
        jne     pf_unexpected
        mov     dword ptr [FAULT_PTE], TEST_FRAME | PG_KERNEL
        pop     eax
        add     esp, 4                          // the error code
        iretd

pf_unexpected:
        mov     eax, PF_FAIL_EXIT
        mov     dx, DEBUG_EXIT_PORT
        out     dx, eax
        cli
        hlt
#endif

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
