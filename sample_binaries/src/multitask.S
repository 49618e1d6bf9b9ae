// multitask: a tiny preemptive kernel. Two user processes run in ring 3 on their own stacks,
// the 1 kHz timer switches between them, and they ask the kernel for service through int 0x80
// (write, exit, getpid) on a DPL-3 gate, arriving on their own ring-0 stacks from the TSS.
//
// The processes take turns printing: each waits (spinning, never yielding) until a shared
// `turn` variable names it, so every line after the first needs a timer switch, and the output
// is the same however fast the machine runs. A process exits still holding the turn and the
// kernel's exit passes it on, so a timer tick between the last line and the exit cannot let
// the other process print first (QEMU's wall-clock timer found that window). Between lines each process computes a checksum
// long enough to be preempted in the middle, and compares it with the kernel's result.
// Exit 0 if all is right, else 0x15.
#include "check.h"
#include "user.h"

#define FAIL_EXIT       0x15
#define PIC1_CMD        0x20
#define PIT_DIVISOR     1193                    // 1193182 Hz / 1000
#define EOI             0x20
#define TIMER_VECTOR    0x20
#define SYSCALL_VECTOR  0x80
#define SYS_WRITE       1
#define SYS_EXIT        2
#define SYS_GETPID      3
#define LINES           5
#define WORK_ROUNDS     20000
#define KSTACK_SIZE     4096
#define USTACK_SIZE     4096

        .text
        .globl  kmain
kmain:
        push    ebx
        push    esi
        push    edi
        push    ebp
        mov     esi, offset name
        mov     eax, FAIL_EXIT
        call    check_begin
        call    idt_install_panic
        mov     eax, offset kstacks + KSTACK_SIZE
        call    user_mode_init
        mov     eax, TIMER_VECTOR
        mov     edx, offset timer_entry
        mov     cl, GATE_INTR
        call    idt_set_gate
        mov     eax, SYSCALL_VECTOR
        mov     edx, offset syscall_entry
        mov     cl, GATE_INTR_USER
        call    idt_set_gate

        call    work                            // the checksum the processes must reproduce
        mov     [expected_work], eax

        mov     al, 0xFE                        // IRQ0 only
        call    pic_remap
        mov     ax, PIT_DIVISOR                 // 1 kHz
        call    pit_periodic

        xor     eax, eax
        call    process_create
        mov     eax, 1
        call    process_create
        mov     [kernel_esp], esp               // all_done comes back to this stack
        mov     dword ptr [current], 0
        jmp     resume_current

// process_create: EAX = slot. Its ring-0 stack starts as if a timer interrupt had stopped
// it in ring 3 at user_main: an interrupt frame, then what timer_entry saves.
process_create:
        mov     edx, eax
        shl     edx, 12                         // KSTACK_SIZE
        lea     edx, [kstacks + edx + KSTACK_SIZE]
        mov     [process_kstack_top + eax * 4], edx
        mov     ecx, eax
        shl     ecx, 12                         // USTACK_SIZE
        lea     ecx, [ustacks + ecx + USTACK_SIZE]
        push    edi
        lea     edi, [edx - 60]                 // the pushad image (and DS, ES): all zero
1:      mov     dword ptr [edi], 0
        add     edi, 4
        cmp     edi, edx
        jb      1b
        pop     edi
        mov     dword ptr [edx - 4], USER_DS    // SS
        mov     [edx - 8], ecx                  // ESP
        mov     dword ptr [edx - 12], 0x202     // EFLAGS: IF
        mov     dword ptr [edx - 16], USER_CS   // CS
        mov     dword ptr [edx - 20], offset user_main
        mov     dword ptr [edx - 56], USER_DS   // DS
        mov     dword ptr [edx - 60], USER_DS   // ES
        sub     edx, 60
        mov     [process_esp + eax * 4], edx
        mov     dword ptr [process_alive + eax * 4], 1
        ret

// Run the current process: its saved ring-0 stack, TSS.ESP0 for its next entry, then back
// to ring 3 through the frame on that stack.
resume_current:
        mov     eax, [current]
        mov     esp, [process_esp + eax * 4]
        mov     edx, [process_kstack_top + eax * 4]
        mov     [tss + TSS_ESP0], edx
        pop     es
        pop     ds
        popad
        iretd

timer_entry:
        pushad
        push    ds
        push    es
        mov     ax, KERNEL_DS
        mov     ds, ax
        mov     es, ax
        mov     al, EOI
        out     PIC1_CMD, al
        mov     eax, [current]
        mov     [process_esp + eax * 4], esp
        xor     eax, 1                          // the other process, if it still runs
        cmp     dword ptr [process_alive + eax * 4], 1
        jne     resume_current
        inc     dword ptr [switches]
        mov     [current], eax
        jmp     resume_current

// int 0x80: EAX = call number; write(EBX = buffer, ECX = length), exit(EBX = status),
// getpid() -> EAX. The saved EAX in the frame is the return value.
#define FRAME_EAX       36
syscall_entry:
        pushad
        push    ds
        push    es
        mov     ax, KERNEL_DS
        mov     ds, ax
        mov     es, ax
        mov     eax, [esp + FRAME_EAX]
        cmp     eax, SYS_WRITE
        je      sys_write
        cmp     eax, SYS_GETPID
        je      sys_getpid
        cmp     eax, SYS_EXIT
        je      sys_exit
        mov     dword ptr [esp + FRAME_EAX], -1
        jmp     syscall_return
sys_write:
        mov     esi, ebx
1:      jecxz   2f
        mov     al, [esi]
        call    putc
        inc     esi
        dec     ecx
        jmp     1b
2:      mov     eax, [esp + FRAME_EAX - 4]      // the length asked for (saved ECX)
        mov     [esp + FRAME_EAX], eax
        jmp     syscall_return
sys_getpid:
        mov     eax, [current]
        inc     eax
        mov     [esp + FRAME_EAX], eax
syscall_return:
        pop     es
        pop     ds
        popad
        iretd
sys_exit:
        mov     eax, [current]
        mov     dword ptr [process_alive + eax * 4], 0
        mov     [process_status + eax * 4], ebx
        PUTS    "kernel: process "
        inc     eax
        call    print_dec
        PUTS    " exited with status "
        mov     eax, ebx
        call    print_dec
        call    newline
        mov     eax, [current]
        xor     eax, 1
        lea     edx, [eax + 1]                  // the turn passes to the other process (its pid)
        mov     [turn], edx
        cmp     dword ptr [process_alive + eax * 4], 1
        jne     all_done
        mov     [current], eax
        jmp     resume_current

all_done:
        mov     esp, [kernel_esp]
        mov     eax, [process_status]
        CHECK_DEC 11, "status of process 1: "
        mov     eax, [process_status + 4]
        CHECK_DEC 12, "status of process 2: "
        mov     eax, [switches]
        cmp     eax, 2 * LINES - 2              // every turn but the last (after an exit)
        setae   al
        movzx   eax, al
        CHECK_TRUE "the timer switched processes at least 8 times"
        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

// work: a checksum over WORK_ROUNDS rounds in every general register. Returns it in EAX.
        .globl  work
work:
        push    ebx
        push    ecx
        push    edx
        push    esi
        push    edi
        xor     eax, eax
        mov     ebx, 7
        mov     ecx, WORK_ROUNDS
        mov     edi, 0x9E3779B9
1:      mov     edx, ecx
        imul    edx, ecx
        add     eax, edx
        xor     eax, ebx
        rol     ebx, 3
        lea     esi, [eax + ecx]
        add     ebx, esi
        add     edi, eax
        dec     ecx
        jnz     1b
        xor     eax, edi
        pop     edi
        pop     esi
        pop     edx
        pop     ecx
        pop     ebx
        ret

// ---------------------------------------------------------------- ring 3
// Both processes run this code; getpid tells them apart.
user_main:
        mov     eax, SYS_GETPID
        int     SYSCALL_VECTOR
        mov     ebp, eax                        // pid: 1 or 2
        xor     edi, edi                        // line number
1:      call    work
        mov     esi, offset msg_work_ok
        cmp     eax, [expected_work]
        je      2f
        mov     esi, offset msg_work_bad
2:      cmp     [turn], ebp                     // wait for our turn: only the timer ends this
        jne     2b
        push    esi
        mov     esi, offset msg_process
        call    user_print
        mov     eax, ebp
        call    user_print_digit
        mov     esi, offset msg_line
        call    user_print
        mov     eax, edi
        call    user_print_digit
        pop     esi
        call    user_print
        inc     edi
        cmp     edi, LINES
        jae     3f
        mov     eax, ebp                        // hand the turn to the other process
        xor     eax, 3
        mov     [turn], eax
        jmp     1b
3:      mov     eax, SYS_EXIT                   // exit still holding the turn: exit passes it on
        lea     ebx, [ebp + 10]
        int     SYSCALL_VECTOR
        ud2                                     // exit does not return

// user_print: write the NUL-terminated string at ESI.
user_print:
        push    eax
        push    ebx
        push    ecx
        mov     ebx, esi
        xor     ecx, ecx
1:      cmp     byte ptr [esi + ecx], 0
        je      2f
        inc     ecx
        jmp     1b
2:      mov     eax, SYS_WRITE
        int     SYSCALL_VECTOR
        pop     ecx
        pop     ebx
        pop     eax
        ret

// user_print_digit: write the decimal digit in EAX (from a buffer on the user stack).
user_print_digit:
        push    ebx
        push    ecx
        add     al, '0'
        push    eax
        mov     ebx, esp
        mov     ecx, 1
        mov     eax, SYS_WRITE
        int     SYSCALL_VECTOR
        pop     eax
        pop     ecx
        pop     ebx
        ret

        .section .rodata
name:           .asciz  "multitask"
msg_process:    .asciz  "process "
msg_line:       .asciz  ", line "
msg_work_ok:    .asciz  ": checksum ok\n"
msg_work_bad:   .asciz  ": checksum WRONG\n"

        .data
        .p2align 2
turn:           .long   1
current:        .long   0
switches:       .long   0
expected_work:  .long   0
kernel_esp:     .long   0
process_esp:    .long   0, 0
process_kstack_top: .long 0, 0
process_alive:  .long   0, 0
process_status: .long   0, 0

        .bss
        .p2align 12
kstacks:        .skip   2 * KSTACK_SIZE
ustacks:        .skip   2 * USTACK_SIZE
