// tasks: hardware task switches, as QEMU performs them. A jmp to a TSS and back (the state saved
// in the old TSS, the new one loaded with its LDT, busy bits moved, CR0.TS set (#NM for the FPU),
// CR3 not loaded with paging off, the TSS's T bit ignored as QEMU ignores it); a call through a
// task gate and an iret back (the back link, NT, busy bits kept for the nested task) and the
// transfers the busy bits refuse; the faults of a switch (#NP, #TS and #GP with the selector, iret
// with NT to a TSS that is not busy, #TS for a bad data segment of the new TSS, taken in the new
// task with the saved EIP of the jmp, as QEMU restores it, or through an IDT task gate with the
// new task's EIP); an exception with an error code through a task gate (pushed on the new task's
// stack) and a #DF through a task gate (a #GP whose gate is not present); a ring-3 task called
// from ring 0 that faults into a ring-0 task and returns by iret; then with paging on, a task with
// an address space of its own (CR3 from its TSS) and a fault through a task gate from it. (16-bit
// TSSs: tasks16.S.) Exit 0 if all is right, else 0x20.
#include "check.h"
#include "user.h"
#include "probe.h"
#include "paging.h"
#include "tasks.h"

#define FAIL_EXIT       0x20
#define STACK_SIZE      1024

// Selectors of this sample's descriptors (the GDT's free slots, 0x30-0xA8)
#define SEL_TSS_B       0x30                    // jmp target (with an LDT)
#define SEL_TSS_C       0x38                    // called through SEL_GATE_C
#define SEL_GATE_C      0x40                    // task gate -> SEL_TSS_C
#define SEL_TSS_GP      0x48                    // #GP handler task (IDT task gate)
#define SEL_TSS_DF      0x50                    // #DF handler task (IDT task gate)
#define SEL_TSS_USER    0x58                    // a ring-3 task
#define SEL_TSS_BAD     0x68                    // its DS is beyond the GDT limit
#define SEL_LDT         0x70                    // task B's LDT
#define SEL_TSS_P       0x78                    // the task with its own address space
#define SEL_TSS_ABSENT  0x80                    // TSS, not present
#define SEL_TSS_SHORT   0x88                    // TSS with a limit below 103
#define SEL_GATE_ABSENT 0x90                    // task gate, not present
#define SEL_GATE_DATA   0x98                    // task gate whose selector is a data segment
#define SEL_LDT_FLAT    0x04                    // LDT entry 0: flat data
#define SEL_LDT_BASED   0x0C                    // LDT entry 1: data based at LDT_DATA_BASE
#define SEL_BEYOND_GDT  0xB0
#define INT_BAD_TASK    0x41                    // an IDT task gate to SEL_TSS_BAD

#define LDT_DATA_BASE   0x3000
#define OTHER_VA        0x40000000              // mapped differently in the two address spaces

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
        mov     eax, offset kstack + STACK_SIZE
        call    user_mode_init                  // the kernel runs in the task of TSS_SEL
        mov     ebx, offset probe_gates
1:      mov     eax, [ebx]
        mov     edx, [ebx + 4]
        mov     cl, GATE_INTR
        call    idt_set_gate
        add     ebx, 8
        cmp     ebx, offset probe_gates_end
        jb      1b
        call    build_descriptors
        lgdt    [user_gdt_descriptor]
        mov     dword ptr [LDT_DATA_BASE + 8], 0x1D7D1D7D

        call    jmp_to_a_tss
        call    call_through_a_task_gate
        call    faults_of_a_switch
        call    error_code_through_a_task_gate
        call    double_fault_task
        call    ring3_task
        call    paging_tasks
        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

// ---------------------------------------------------------------- jmp to a TSS and back
jmp_to_a_tss:
        PUTS    "jmp to a TSS\n"
        mov     edi, offset tss_b
        mov     eax, offset task_b
        mov     edx, offset stack_b + STACK_SIZE
        mov     ecx, 0x8C7                      // CF PF ZF SF OF
        call    tss_init
        mov     dword ptr [edi + T_EAX], 0xB0B00001
        mov     dword ptr [edi + T_LINK], 0x1234        // a jmp leaves the back link alone
        mov     dword ptr [edi + T_LDT], SEL_LDT
        mov     dword ptr [edi + T_FS], SEL_LDT_BASED
        mov     dword ptr [edi + T_CR3], 0x00ABC000     // not loaded: paging is off
        or      dword ptr [edi + T_TRAP], 1             // T: QEMU raises no #DB for it
        push    ebx
        mov     eax, 0x1111AAAA
        mov     ebx, 0x2222BBBB
        SET_FLAGS 0x83                          // CF SF
jmp_b:  ljmp    SEL_TSS_B, 0
after_jmp_b:
        mov     [main_eax], eax
        pushfd
        pop     eax
        mov     [main_eflags], eax
        mov     eax, ebx
        pop     ebx
        CHECK_HEX 0x2222BBBB, "back in the first task: EBX "
        mov     eax, [main_eax]
        CHECK_HEX 0x1111AAAA, "EAX "
        mov     eax, [main_eflags]
        CHECK_HEX 0x83, "EFLAGS "
        call    busy_bits
        CHECK_HEX 0x8B89, "busy bits of the kernel's TSS and B's "
        mov     eax, [tss_b + T_EIP]
        cmp     eax, offset after_b_jmp
        sete    al
        movzx   eax, al
        CHECK_TRUE "B's TSS holds the EIP after its jmp"
        mov     eax, [tss_b + T_FS]
        CHECK_HEX 0x0C, "B's TSS holds its FS "
        mov     eax, [tss_b + T_LINK]
        CHECK_HEX 0x1234, "B's back link untouched "
        call    cr0_ts
        CHECK_HEX 8, "CR0.TS after the switch back "
        ret

// Task B: entered by a jmp from the kernel's task, goes back by a jmp.
task_b:
        mov     [task_esp], esp
        mov     [task_eax], eax
        pushfd
        pop     eax
        mov     [task_eflags], eax
        mov     eax, [task_eax]
        CHECK_HEX 0xB0B00001, "B: EAX from its TSS "
        mov     eax, [task_eflags]
        CHECK_HEX 0x8C7, "B: EFLAGS from its TSS "
        mov     eax, [task_esp]
        mov     ecx, offset stack_b + STACK_SIZE
        sub     eax, ecx
        CHECK_HEX 0, "B: ESP from its TSS, less the top of its stack "
        mov     eax, fs:[8]
        CHECK_HEX 0x1D7D1D7D, "B: FS from its LDT reads "
        mov     eax, [tss + T_EIP]
        cmp     eax, offset after_jmp_b
        sete    al
        movzx   eax, al
        CHECK_TRUE "B: the kernel's TSS holds the EIP after the jmp"
        mov     eax, [tss + T_EAX]
        CHECK_HEX 0x1111AAAA, "B: the kernel's TSS holds EAX "
        mov     eax, [tss + T_EBX]
        CHECK_HEX 0x2222BBBB, "B: ... and EBX "
        mov     eax, [tss + T_EFLAGS]
        CHECK_HEX 0x83, "B: ... and EFLAGS "
        mov     eax, [tss + T_CS]
        CHECK_HEX 0x08, "B: ... and CS "
        call    busy_bits
        CHECK_HEX 0x898B, "B: busy bits of the kernel's TSS and B's "
        call    cr0_ts
        CHECK_HEX 8, "B: CR0.TS "
        PROBE   10, fld1                        // CR0.TS: the FPU is the previous task's
        FAULT   10, 0x00070000, "B: an FPU instruction: "
        mov     eax, cr3
        CHECK_HEX 0, "B: CR3 (paging off: not loaded) "
        clts
        SET_FLAGS 0x2
        ljmp    TSS_SEL, 0
after_b_jmp:
        PUTS    "B resumed: UNEXPECTED\n"
        call    check_fail_now
        ljmp    TSS_SEL, 0

// ---------------------------------------------------------------- call through a task gate, iret
call_through_a_task_gate:
        PUTS    "call through a task gate, iret back\n"
        mov     edi, offset tss_c
        mov     eax, offset task_c
        mov     edx, offset stack_c + STACK_SIZE
        mov     ecx, 0x2
        call    tss_init
        SET_FLAGS 0x2
call_c: lcall   SEL_GATE_C, 0
after_call_c:
        pushfd
        pop     eax
        and     eax, EFL_NT
        CHECK_HEX 0, "back in the caller: NT "
        call    busy_bits_c
        CHECK_HEX 0x8B89, "busy bits of the kernel's TSS and C's "
        mov     eax, [tss_c + T_EIP]
        cmp     eax, offset after_c_iret
        sete    al
        movzx   eax, al
        CHECK_TRUE "C's TSS holds the EIP after its iret"
        mov     eax, [tss_c + T_EFLAGS]
        CHECK_HEX 0x2, "C's TSS holds EFLAGS without NT "
        call    cr0_ts
        CHECK_HEX 8, "CR0.TS "
        clts
        ret

// Task C: called through a task gate; tries the transfers the busy bits forbid, returns by iret.
task_c:
        pushfd
        pop     eax
        CHECK_HEX 0x4002, "C: EFLAGS (NT set by the call) "
        mov     eax, [tss_c + T_LINK]
        CHECK_HEX TSS_SEL, "C: back link "
        call    busy_bits_c
        CHECK_HEX 0x8B8B, "C: busy bits of the kernel's TSS and C's "
        mov     eax, [tss + T_EIP]
        cmp     eax, offset after_call_c
        sete    al
        movzx   eax, al
        CHECK_TRUE "C: the caller's TSS holds the EIP after the call"
        PROBE   0, ljmp TSS_SEL, 0              // the caller's TSS is busy
        PROBE   1, lcall SEL_GATE_C, 0          // so is this one
        PROBE   2, lcall SEL_TSS_C, 0
        FAULT   0, 0x000D0028, "C: jmp to the busy caller: "
        FAULT   1, 0x000D0038, "C: call through the gate to itself: "
        FAULT   2, 0x000D0038, "C: call to its own busy TSS: "
        clts
        SET_FLAGS 0x4002
        iretd
after_c_iret:
        PUTS    "C resumed: UNEXPECTED\n"
        call    check_fail_now
        iretd

// ---------------------------------------------------------------- faults of a switch
faults_of_a_switch:
        PUTS    "faults of a task switch\n"
        PROBE   4, ljmp SEL_TSS_ABSENT, 0
        PROBE   5, ljmp SEL_TSS_SHORT, 0
        PROBE   6, ljmp SEL_GATE_ABSENT, 0
        PROBE   7, ljmp SEL_GATE_DATA, 0
        PROBE   8, lcall TSS_SEL, 0             // the running task's own TSS is busy
        mov     dword ptr [tss + T_LINK], SEL_TSS_B     // B's TSS is available
        pushfd
        or      dword ptr [esp], EFL_NT
        popfd
        push    0x2
        push    KERNEL_CS
        push    offset iret_went_through
        PROBE   9, iretd
        add     esp, 12
        pushfd
        and     dword ptr [esp], ~EFL_NT
        popfd
        FAULT   4, 0x000B0080, "jmp to a TSS not present: "
        FAULT   5, 0x000A0088, "jmp to a TSS shorter than 104 bytes: "
        FAULT   6, 0x000B0090, "jmp through a task gate not present: "
        FAULT   7, 0x000D0010, "jmp through a task gate to a data segment: "
        FAULT   8, 0x000D0028, "call to the running task's TSS: "
        FAULT   9, 0x000A0030, "iret with NT to a TSS not busy: "

        // A bad data segment in the new TSS: the switch is done when the new task's segments
        // load, so the #TS (with the selector) is taken in the new task, on its stack.
        mov     edi, offset tss_bad
        mov     eax, offset bad_task_never
        mov     edx, offset stack_bad + STACK_SIZE
        mov     ecx, 0x2
        call    tss_init
        mov     dword ptr [edi + T_DS], SEL_BEYOND_GDT
        mov     eax, 10
        mov     edx, offset bad_ts_entry
        mov     cl, GATE_INTR
        call    idt_set_gate
        SET_FLAGS 0x2
bad_jmp:
        ljmp    SEL_TSS_BAD, 0
        mov     eax, 10
        mov     edx, offset ts_entry
        mov     cl, GATE_INTR
        call    idt_set_gate
        mov     eax, [bad_error]
        CHECK_HEX SEL_BEYOND_GDT, "a bad DS in the new TSS: #TS "
        mov     eax, [bad_eip]
        cmp     eax, offset bad_jmp
        sete    al
        movzx   eax, al
        CHECK_TRUE "saved EIP is the jmp's (QEMU restores it)"
        mov     eax, [bad_cs]
        CHECK_HEX KERNEL_CS, "saved CS "
        mov     eax, [bad_esp]
        mov     ecx, offset stack_bad + STACK_SIZE
        sub     eax, ecx
        CHECK_HEX 0xFFFFFFF0, "frame on the new task's stack, at its top "
        mov     eax, [bad_busy]
        CHECK_HEX 0x898B, "busy bits of the kernel's TSS and the new one "
        mov     eax, [bad_es]
        CHECK_HEX KERNEL_DS, "ES loaded before the bad DS "

        // The same TSS through a task gate in the IDT (int INT_BAD_TASK): the #TS is the new
        // task's again, with its EIP this time (QEMU restores no instruction's for an interrupt),
        // NT set; the handler's iret with NT returns to the kernel's task after the int.
        mov     edi, offset tss_bad
        mov     eax, offset bad_task_never
        mov     edx, offset stack_bad + STACK_SIZE
        mov     ecx, 0x2
        call    tss_init
        mov     dword ptr [edi + T_DS], SEL_BEYOND_GDT
        mov     eax, INT_BAD_TASK
        mov     edx, SEL_TSS_BAD
        call    idt_task_gate
        mov     eax, 10
        mov     edx, offset bad_gate_ts_entry
        mov     cl, GATE_INTR
        call    idt_set_gate
        SET_FLAGS 0x2
        int     INT_BAD_TASK
        mov     eax, 10
        mov     edx, offset ts_entry
        mov     cl, GATE_INTR
        call    idt_set_gate
        mov     eax, [bad_error]
        CHECK_HEX SEL_BEYOND_GDT, "through the IDT: #TS "
        mov     eax, [bad_eip]
        cmp     eax, offset bad_task_never
        sete    al
        movzx   eax, al
        CHECK_TRUE "saved EIP is the new task's"
        mov     eax, [bad_eflags]
        and     eax, EFL_NT
        CHECK_HEX EFL_NT, "saved NT "
        mov     eax, [bad_busy]
        CHECK_HEX 0x8B8B, "busy bits of the kernel's TSS and the new one "
        mov     eax, [tss_bad + T_LINK]
        CHECK_HEX TSS_SEL, "the new one's back link "
        call    busy_bits_bad
        CHECK_HEX 0x8B89, "back: busy bits "
        clts
        ret

// The #TS handler while the bad TSS is tried: runs in the new task; notes the frame and goes
// back to the kernel's task by a jmp.
bad_ts_entry:
        mov     [bad_esp], esp
        mov     eax, [esp]
        mov     [bad_error], eax
        mov     eax, [esp + 4]
        mov     [bad_eip], eax
        mov     eax, [esp + 8]
        mov     [bad_cs], eax
        xor     eax, eax
        mov     ax, es
        mov     [bad_es], eax
        mov     al, [user_gdt + TSS_SEL + 5]
        mov     ah, [user_gdt + SEL_TSS_BAD + 5]
        xchg    al, ah
        mov     [bad_busy], eax
        SET_FLAGS 0x2
        ljmp    TSS_SEL, 0

// The #TS handler while the bad TSS is reached through the IDT: notes the frame and returns to
// the kernel's task by iret (NT).
bad_gate_ts_entry:
        mov     eax, [esp]
        mov     [bad_error], eax
        mov     eax, [esp + 4]
        mov     [bad_eip], eax
        mov     eax, [esp + 12]
        mov     [bad_eflags], eax
        call    busy_bits_bad
        mov     [bad_busy], eax
        SET_FLAGS 0x4002
        iretd

bad_task_never:
iret_went_through:
        PUTS    "UNEXPECTED: a refused switch ran\n"
        call    check_fail_now
        call    check_end
        jmp     exit

// ---------------------------------------------------------------- an error code through a task gate
error_code_through_a_task_gate:
        PUTS    "#GP through a task gate\n"
        call    gp_task_install
        mov     ax, TSS_SEL
gp_insn:
        mov     ds, ax                          // #GP(TSS_SEL): the handler task skips it
        mov     eax, [gp_count]
        CHECK_DEC 1, "handler task runs: "
        mov     eax, [gp_error]
        CHECK_HEX TSS_SEL, "error code on the handler task's stack: "
        mov     eax, [gp_esp]
        mov     ecx, offset stack_gp + STACK_SIZE
        sub     eax, ecx
        CHECK_HEX 0, "handler's ESP after popping it, less the top of its stack "
        mov     eax, [gp_link]
        CHECK_HEX TSS_SEL, "back link "
        mov     eax, [gp_eflags]
        and     eax, EFL_NT
        CHECK_HEX EFL_NT, "handler's NT "
        mov     eax, [gp_saved_eip]
        cmp     eax, offset gp_insn
        sete    al
        movzx   eax, al
        CHECK_TRUE "the faulting task's TSS holds the faulting EIP"
        mov     al, [user_gdt + SEL_TSS_GP + 5]
        movzx   eax, al
        CHECK_HEX ACCESS_TSS32, "handler's TSS available again "
        xor     eax, eax
        mov     ax, ds
        CHECK_HEX KERNEL_DS, "DS unchanged "
        clts
        ret

gp_task_install:
        mov     edi, offset tss_gp
        mov     eax, offset gp_task
        mov     edx, offset stack_gp + STACK_SIZE
        mov     ecx, 0x2
        call    tss_init
        mov     eax, 13
        mov     edx, SEL_TSS_GP
        jmp     idt_task_gate

// The #GP handler task: pops the error code, notes what it sees, skips the 2-byte faulting
// instruction of the task it interrupted and returns to it.
gp_task:
        pop     eax
        mov     [gp_error], eax
        mov     [gp_esp], esp
        inc     dword ptr [gp_count]
        pushfd
        pop     eax
        mov     [gp_eflags], eax
        mov     eax, cr3
        mov     [gp_cr3], eax
        mov     eax, [gp_read_ptr]
        mov     eax, [eax]
        mov     [gp_other_va], eax
        mov     eax, [tss_gp + T_LINK]
        mov     [gp_link], eax
        call    tss_base_of
        mov     ecx, [eax + T_EIP]
        mov     [gp_saved_eip], ecx
        mov     ecx, [eax + T_CS]
        mov     [gp_saved_cs], ecx
        add     dword ptr [eax + T_EIP], 2
        SET_FLAGS 0x4002
        iretd
        jmp     gp_task

// ---------------------------------------------------------------- #DF through a task gate
double_fault_task:
        PUTS    "#DF through a task gate\n"
        mov     edi, offset tss_df
        mov     eax, offset df_task
        mov     edx, offset stack_df + STACK_SIZE
        mov     ecx, 0x2
        call    tss_init
        mov     eax, 8
        mov     edx, SEL_TSS_DF
        call    idt_task_gate
        and     byte ptr [idt + 13 * 8 + 5], 0x7F       // #GP's gate not present: #NP -> #DF
        mov     ax, TSS_SEL
df_insn:
        mov     ds, ax
        or      byte ptr [idt + 13 * 8 + 5], 0x80
        mov     eax, [df_count]
        CHECK_DEC 1, "double-fault task runs: "
        mov     eax, [df_error]
        CHECK_HEX 0, "error code "
        mov     eax, [df_link]
        CHECK_HEX TSS_SEL, "back link "
        mov     eax, [df_saved_eip]
        cmp     eax, offset df_insn
        sete    al
        movzx   eax, al
        CHECK_TRUE "the faulting task's TSS holds the faulting EIP"
        mov     eax, [gp_count]
        CHECK_DEC 1, "the #GP task did not run: "
        clts
        ret

df_task:
        pop     eax
        mov     [df_error], eax
        inc     dword ptr [df_count]
        mov     eax, [tss_df + T_LINK]
        mov     [df_link], eax
        call    tss_base_of
        mov     ecx, [eax + T_EIP]
        mov     [df_saved_eip], ecx
        add     dword ptr [eax + T_EIP], 2
        SET_FLAGS 0x4002
        iretd
        jmp     df_task

// ---------------------------------------------------------------- a ring-3 task
ring3_task:
        PUTS    "a ring-3 task\n"
        mov     edi, offset tss_user
        mov     eax, offset user_task
        mov     edx, offset stack_user + STACK_SIZE
        mov     ecx, 0x2
        call    tss_init
        mov     dword ptr [edi + T_CS], USER_CS
        mov     dword ptr [edi + T_SS], USER_DS
        mov     dword ptr [edi + T_DS], USER_DS
        mov     dword ptr [edi + T_ES], USER_DS
        mov     dword ptr [edi + T_FS], 0
        mov     dword ptr [edi + T_GS], 0
        mov     dword ptr [edi + T_ESP0], offset stack_user0 + STACK_SIZE
        mov     dword ptr [edi + T_SS0], KERNEL_DS
        SET_FLAGS 0x2
        lcall   SEL_TSS_USER, 0
        mov     eax, [user_log]
        CHECK_HEX 1, "ring 3 ran: "
        mov     eax, [user_log + 4]
        CHECK_HEX 2, "and went on after its fault: "
        mov     eax, [user_log + 8]
        CHECK_HEX 0x4002, "its EFLAGS (NT) "
        mov     eax, [gp_count]
        CHECK_DEC 2, "its #GP went to the handler task: "
        mov     eax, [gp_error]
        CHECK_HEX TSS_SEL, "error code "
        mov     eax, [gp_link]
        CHECK_HEX SEL_TSS_USER, "back link "
        mov     eax, [gp_saved_cs]
        CHECK_HEX USER_CS, "the ring-3 task's saved CS "
        mov     eax, [gp_saved_eip]
        cmp     eax, offset user_gp_insn
        sete    al
        movzx   eax, al
        CHECK_TRUE "its saved EIP is the faulting one"
        mov     al, [user_gdt + SEL_TSS_USER + 5]
        movzx   eax, al
        CHECK_HEX ACCESS_TSS32, "its TSS available again "
        clts
        ret

user_task:                                      // ring 3, DS = USER_DS
        mov     dword ptr [user_log], 1
        mov     ax, TSS_SEL
user_gp_insn:
        mov     ds, ax
        mov     dword ptr [user_log + 4], 2
        pushfd
        pop     eax
        mov     [user_log + 8], eax
        SET_FLAGS 0x4002
        iretd
        jmp     user_task

// ---------------------------------------------------------------- with paging
paging_tasks:
        PUTS    "with paging: a task with its own address space\n"
        mov     eax, offset pd_kernel
        mov     edx, offset pt_low
        mov     ecx, PG_KERNEL
        call    identity_map_low
        mov     eax, offset pd_other
        mov     edx, offset pt_low
        call    identity_map_low
        mov     eax, offset pt_kernel_40
        or      eax, PG_KERNEL
        mov     [pd_kernel + (OTHER_VA >> 22) * 4], eax
        mov     eax, offset pt_other_40
        or      eax, PG_KERNEL
        mov     [pd_other + (OTHER_VA >> 22) * 4], eax
        mov     eax, offset frame_kernel
        or      eax, PG_KERNEL
        mov     [pt_kernel_40], eax
        mov     eax, offset frame_other
        or      eax, PG_KERNEL
        mov     [pt_other_40], eax
        mov     dword ptr [frame_kernel], 0xAAAA0001
        mov     dword ptr [frame_other], 0xBBBB0002
        mov     dword ptr [gp_read_ptr], OTHER_VA
        mov     eax, offset pd_kernel
        mov     [tss + T_CR3], eax              // the kernel's own task comes back to its CR3
        mov     [tss_gp + T_CR3], eax
        mov     edi, offset tss_p
        mov     eax, offset task_p
        mov     edx, offset stack_p + STACK_SIZE
        mov     ecx, 0x2
        call    tss_init
        mov     eax, offset pd_other
        mov     [edi + T_CR3], eax
        mov     eax, offset pd_kernel
        call    paging_enable
        SET_FLAGS 0x2
        lcall   SEL_TSS_P, 0
        mov     eax, cr3
        mov     ecx, offset pd_kernel
        CHECK_HEX ecx, "back: CR3 from the kernel's TSS "
        mov     eax, [OTHER_VA]
        CHECK_HEX 0xAAAA0001, "back: the kernel's page "
        mov     eax, [gp_count]
        CHECK_DEC 3, "the other task's #GP went to the handler task: "
        mov     eax, [gp_cr3]
        mov     ecx, offset pd_kernel
        CHECK_HEX ecx, "which ran on its own CR3 "
        mov     eax, [gp_other_va]
        CHECK_HEX 0xAAAA0001, "and saw the kernel's page "
        mov     eax, [gp_link]
        CHECK_HEX SEL_TSS_P, "back link "
        mov     eax, cr0
        and     eax, CR0_PG | CR0_TS
        CHECK_HEX 0x80000008, "CR0: PG, TS "
        clts
        ret

task_p:
        mov     eax, cr3
        mov     ecx, offset pd_other
        CHECK_HEX ecx, "P: CR3 from its TSS "
        mov     eax, [OTHER_VA]
        CHECK_HEX 0xBBBB0002, "P: its own page "
        mov     ax, TSS_SEL
        mov     ds, ax                          // #GP through the task gate, skipped
        mov     eax, cr3
        mov     ecx, offset pd_other
        CHECK_HEX ecx, "P: CR3 again after the #GP task "
        mov     eax, [OTHER_VA]
        CHECK_HEX 0xBBBB0002, "P: its own page again "
        SET_FLAGS 0x4002
        iretd
        jmp     task_p

// ---------------------------------------------------------------- helpers
// tss_init: a 32-bit TSS at EDI for ring-0 code at EAX with stack EDX and EFLAGS ECX; flat
// kernel segments, no LDT, CR3 0, the I/O map base past the limit.
tss_init:
        push    eax
        push    ecx
        xor     ecx, ecx
1:      mov     dword ptr [edi + ecx], 0
        add     ecx, 4
        cmp     ecx, TSS32_SIZE
        jb      1b
        pop     ecx
        pop     eax
        mov     [edi + T_EIP], eax
        mov     [edi + T_ESP], edx
        mov     [edi + T_EFLAGS], ecx
        mov     dword ptr [edi + T_CS], KERNEL_CS
        mov     dword ptr [edi + T_SS], KERNEL_DS
        mov     dword ptr [edi + T_DS], KERNEL_DS
        mov     dword ptr [edi + T_ES], KERNEL_DS
        mov     dword ptr [edi + T_FS], KERNEL_DS
        mov     dword ptr [edi + T_GS], KERNEL_DS
        mov     dword ptr [edi + T_TRAP], TSS32_SIZE << 16
        ret

// set_descriptor: GDT[EAX] = segment at base EDX, byte limit ECX (< 1 MiB), access byte BL.
set_descriptor:
        push    edi
        push    edx
        push    ecx
        lea     edi, [user_gdt + eax]
        mov     [edi], cx
        mov     [edi + 2], dx
        shr     edx, 16
        mov     [edi + 4], dl
        mov     [edi + 5], bl
        shr     ecx, 16
        and     cl, 0x0F
        mov     [edi + 6], cl
        mov     [edi + 7], dh
        pop     ecx
        pop     edx
        pop     edi
        ret

// set_task_gate: GDT[EAX] = task gate to the TSS selector DX, access byte BL.
set_task_gate:
        push    edi
        lea     edi, [user_gdt + eax]
        mov     word ptr [edi], 0
        mov     [edi + 2], dx
        mov     byte ptr [edi + 4], 0
        mov     [edi + 5], bl
        mov     word ptr [edi + 6], 0
        pop     edi
        ret

// idt_task_gate: IDT[EAX] = task gate to the TSS selector DX.
idt_task_gate:
        push    edi
        lea     edi, [idt + eax * 8]
        mov     word ptr [edi], 0
        mov     [edi + 2], dx
        mov     byte ptr [edi + 4], 0
        mov     byte ptr [edi + 5], ACCESS_TASK_GATE
        mov     word ptr [edi + 6], 0
        pop     edi
        ret

// tss_base_of: EAX = a TSS selector -> EAX = the base its GDT descriptor gives.
tss_base_of:
        push    edx
        push    ecx
        and     eax, 0xFFF8
        lea     edx, [user_gdt + eax]
        movzx   eax, byte ptr [edx + 7]
        shl     eax, 24
        movzx   ecx, byte ptr [edx + 4]
        shl     ecx, 16
        or      eax, ecx
        movzx   ecx, word ptr [edx + 2]
        or      eax, ecx
        pop     ecx
        pop     edx
        ret

// busy_bits: EAX = (access byte of the kernel's TSS << 8) | access byte of B's.
busy_bits:
        movzx   eax, byte ptr [user_gdt + TSS_SEL + 5]
        shl     eax, 8
        mov     al, [user_gdt + SEL_TSS_B + 5]
        ret

busy_bits_bad:
        movzx   eax, byte ptr [user_gdt + TSS_SEL + 5]
        shl     eax, 8
        mov     al, [user_gdt + SEL_TSS_BAD + 5]
        ret

busy_bits_c:
        movzx   eax, byte ptr [user_gdt + TSS_SEL + 5]
        shl     eax, 8
        mov     al, [user_gdt + SEL_TSS_C + 5]
        ret

// cr0_ts: EAX = CR0.TS.
cr0_ts:
        mov     eax, cr0
        and     eax, CR0_TS
        ret

build_descriptors:
        mov     eax, SEL_TSS_B
        mov     edx, offset tss_b
        mov     ecx, TSS32_SIZE - 1
        mov     bl, ACCESS_TSS32
        call    set_descriptor
        mov     eax, SEL_TSS_C
        mov     edx, offset tss_c
        call    set_descriptor
        mov     eax, SEL_TSS_GP
        mov     edx, offset tss_gp
        call    set_descriptor
        mov     eax, SEL_TSS_DF
        mov     edx, offset tss_df
        call    set_descriptor
        mov     eax, SEL_TSS_USER
        mov     edx, offset tss_user
        call    set_descriptor
        mov     eax, SEL_TSS_BAD
        mov     edx, offset tss_bad
        call    set_descriptor
        mov     eax, SEL_TSS_P
        mov     edx, offset tss_p
        call    set_descriptor
        mov     eax, SEL_TSS_ABSENT
        mov     edx, offset tss_bad
        mov     bl, ACCESS_TSS32 & 0x7F
        call    set_descriptor
        mov     eax, SEL_TSS_SHORT
        mov     ecx, 0x50
        mov     bl, ACCESS_TSS32
        call    set_descriptor
        mov     eax, SEL_LDT
        mov     edx, offset ldt
        mov     ecx, 15
        mov     bl, ACCESS_LDT
        call    set_descriptor
        mov     eax, SEL_GATE_C
        mov     edx, SEL_TSS_C
        mov     bl, ACCESS_TASK_GATE
        call    set_task_gate
        mov     eax, SEL_GATE_ABSENT
        mov     bl, ACCESS_TASK_GATE & 0x7F
        call    set_task_gate
        mov     eax, SEL_GATE_DATA
        mov     edx, KERNEL_DS
        mov     bl, ACCESS_TASK_GATE
        call    set_task_gate
        ret

        PROBE_HANDLER nm_entry, 7, 0
        PROBE_HANDLER ts_entry, 10, 1
        PROBE_HANDLER np_entry, 11, 1
        PROBE_HANDLER gp_entry, 13, 1

        .section .rodata
name:   .asciz  "tasks"
        .p2align 2
probe_gates:
        .long   7, nm_entry
        .long   10, ts_entry
        .long   11, np_entry
        .long   13, gp_entry
probe_gates_end:

        .data
        .p2align 3
ldt:    .quad   0x00CF92000000FFFF              // 0x04 flat data
        .quad   0x00CF92003000FFFF              // 0x0C data based at LDT_DATA_BASE
        .p2align 2
main_eax:       .long   0
main_eflags:    .long   0
task_esp:       .long   0
task_eax:       .long   0
task_eflags:    .long   0
bad_error:      .long   0
bad_eip:        .long   0
bad_cs:         .long   0
bad_esp:        .long   0
bad_busy:       .long   0
bad_es:         .long   0
bad_eflags:     .long   0
gp_count:       .long   0
gp_error:       .long   0
gp_esp:         .long   0
gp_eflags:      .long   0
gp_link:        .long   0
gp_saved_eip:   .long   0
gp_saved_cs:    .long   0
gp_cr3:         .long   0
gp_other_va:    .long   0
df_count:       .long   0
df_error:       .long   0
df_link:        .long   0
df_saved_eip:   .long   0
user_log:       .long   0, 0, 0
gp_read_ptr:    .long   gp_other_va             // the #GP task notes what it reads here

        .bss
        .p2align 12
pd_kernel:      .skip   4096
pd_other:       .skip   4096
pt_low:         .skip   4096
pt_kernel_40:   .skip   4096
pt_other_40:    .skip   4096
frame_kernel:   .skip   4096
frame_other:    .skip   4096
kstack:         .skip   STACK_SIZE
stack_b:        .skip   STACK_SIZE
stack_c:        .skip   STACK_SIZE
stack_gp:       .skip   STACK_SIZE
stack_df:       .skip   STACK_SIZE
stack_user:     .skip   STACK_SIZE
stack_user0:    .skip   STACK_SIZE
stack_bad:      .skip   STACK_SIZE
stack_p:        .skip   STACK_SIZE
        .p2align 3
tss_b:          .skip   TSS32_SIZE
tss_c:          .skip   TSS32_SIZE
tss_gp:         .skip   TSS32_SIZE
tss_df:         .skip   TSS32_SIZE
tss_user:       .skip   TSS32_SIZE
tss_bad:        .skip   TSS32_SIZE
tss_p:          .skip   TSS32_SIZE
