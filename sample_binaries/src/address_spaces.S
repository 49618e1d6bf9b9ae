// address_spaces: two address spaces that share the kernel's mappings and switch by CR3 loads.
// Each holds a ring-3 process at the same linear address, 0x40000000, with code of its own
// (the frames differ, the linear addresses do not); both map one frame read-only at
// 0x40002000 and the first write to it from ring 3 is a copy-on-write fault the kernel's
// handler resolves with a private copy. The processes run A, B, A, B: each must run its own
// code and see its own data. Then, from ring 3 in A, the accesses user/supervisor protection
// refuses (the #PF error code and CR2 of each: a supervisor page, a read-only page, pages not
// present, a supervisor or read-only directory entry over a user one, the kernel's own code,
// a jump into a supervisor page), the accessed/dirty bits ring 3 left, and a kernel write to a
// user read-only page with CR0.WP. Exit 0 if all is right, else 0x1A.
#include "check.h"
#include "user.h"
#include "paging.h"

#define FAIL_EXIT       0x1A
#define KSTACK_SIZE     4096

#define USER_PDE        0x100                   // 0x40000000: each space's own table
#define USER_CODE_VA    0x40000000
#define USER_DATA_VA    0x40001000
#define USER_SHARED_VA  0x40002000              // copy-on-write
#define USER_STACK_VA   0x40003000
#define SUPERVISOR_VA   0x40004000              // in A: a supervisor page
#define USER_RO_VA      0x40005000              // in A: a user read-only page
#define ABSENT_VA       0x40006000              // not present
#define PDE_SUPER_VA    0x40400000              // in A: supervisor PDE over a user PTE
#define PDE_RO_VA       0x40800000              // in A: read-only PDE over a writable PTE

// The user data page: the probe resume slot (pf_user_resume), then what the process notes.
#define D_RESUME        0x00
#define D_WHO           0x04
#define D_SEED          0x08
#define D_RESULT        0x0C
#define D_SHARED_BEFORE 0x10
#define D_SHARED_AFTER  0x14
#define D_RUNS          0x18
#define D_READ_RO       0x1C
#define D_READ_PDE_RO   0x20

#define LOG_SLOTS       16

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
        mov     eax, offset kstack + KSTACK_SIZE
        call    user_mode_init
        mov     eax, PF_VECTOR
        mov     edx, offset user_pf_entry
        mov     cl, GATE_INTR
        call    idt_set_gate
        mov     dword ptr [pf_user_resume], USER_DATA_VA + D_RESUME

        call    build_spaces
        mov     eax, offset pd_a
        call    paging_enable
        mov     eax, cr0
        or      eax, CR0_WP
        mov     cr0, eax

        call    switch_spaces
        call    run_processes
        call    protection
        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

// #PF: a fault from ring 3 is logged (CR2, error code, EIP), then handled as any other.
user_pf_entry:
        test    byte ptr [esp + 8], 3           // [esp] error code, EIP, CS
        jz      pf_entry
        push    eax
        push    ecx
        mov     ecx, [log_count]
        cmp     ecx, LOG_SLOTS
        jae     1f
        mov     eax, cr2
        mov     [log_cr2 + ecx * 4], eax
        mov     eax, [esp + 8]
        mov     [log_error + ecx * 4], eax
        mov     eax, [esp + 12]
        mov     [log_eip + ecx * 4], eax
        inc     dword ptr [log_count]
1:      pop     ecx
        pop     eax
        jmp     pf_entry

// run_user: EAX = where to enter ring 3 in the current address space; returns after the
// process's int USER_RETURN_VECTOR (user_call).
run_user:
        push    eax
        push    ecx
        push    edx
        mov     edx, USER_STACK_VA + PAGE_SIZE
        mov     ecx, 0x002                      // interrupts stay off
        call    user_call
        pop     edx
        pop     ecx
        pop     eax
        ret

// ---------------------------------------------------------------- the two address spaces
build_spaces:
        mov     eax, offset pd_a                // the kernel: one table, in both directories
        mov     edx, offset pt_kernel
        mov     ecx, PG_KERNEL
        call    identity_map_low
        mov     eax, [pd_a]
        mov     [pd_b], eax
        mov     eax, offset pt_user_a
        or      eax, PG_USER
        mov     [pd_a + USER_PDE * 4], eax
        mov     eax, offset pt_user_b
        or      eax, PG_USER
        mov     [pd_b + USER_PDE * 4], eax

        mov     ebx, offset pt_user_a
        mov     esi, offset space_a_pages
        call    fill_table
        mov     ebx, offset pt_user_b
        mov     esi, offset space_b_pages
        call    fill_table
        mov     eax, offset pt_super            // supervisor PDE, user PTE
        or      eax, PG_KERNEL
        mov     [pd_a + (PDE_SUPER_VA >> 22) * 4], eax
        mov     eax, offset frame_m
        or      eax, PG_USER
        mov     [pt_super], eax
        mov     eax, offset pt_ro               // read-only user PDE, writable PTE
        or      eax, PG_USER_RO
        mov     [pd_a + (PDE_RO_VA >> 22) * 4], eax
        mov     eax, offset frame_r
        or      eax, PG_USER
        mov     [pt_ro], eax

        mov     esi, offset user_a
        mov     edi, offset code_a
        mov     ecx, offset user_a_end - user_a
        rep     movsb
        mov     esi, offset user_b
        mov     edi, offset code_b
        mov     ecx, offset user_b_end - user_b
        rep     movsb
        mov     dword ptr [shared_frame], 0x5AAED000
        mov     dword ptr [shared_frame + 8], 0x5AAED008
        mov     dword ptr [data_a + D_SEED], 0x1000
        mov     dword ptr [data_b + D_SEED], 0x2000
        mov     dword ptr [frame_user_ro], 0xF00D
        mov     dword ptr [frame_kernel_only], 0x5EC12E7
        mov     dword ptr [frame_m + 0x10], 0x3333
        mov     dword ptr [frame_r], 0xBEAD
        ret

// fill_table: the page table at EBX gets the (frame, flags) pairs at ESI, from entry 0,
// until a pair with frame 0.
fill_table:
1:      mov     eax, [esi]
        test    eax, eax
        jz      2f
        or      eax, [esi + 4]
        mov     [ebx], eax
        add     esi, 8
        add     ebx, 4
        jmp     1b
2:      ret

// ---------------------------------------------------------------- CR3 loads from ring 0
switch_spaces:
        PUTS    "two address spaces, one kernel, switched by CR3 loads:\n"
        mov     eax, offset pd_b
        mov     cr3, eax
        mov     eax, cr3
        mov     ebx, offset pd_b
        CHECK_HEX ebx, "CR3 after loading B's directory: "
        mov     eax, [USER_DATA_VA + D_SEED]
        CHECK_HEX 0x2000, "0x40001000 in B: B's data page, seed "
        PF_TRY  mov eax, [PDE_SUPER_VA + 0x10]
        mov     eax, [pf_cr2]
        CHECK_HEX 0x40400010, "a page only A maps, read in B: #PF, CR2 "
        mov     eax, [pf_error]
        CHECK_HEX 0, "  error code: "
        mov     eax, offset pd_a
        mov     cr3, eax
        mov     eax, [USER_DATA_VA + D_SEED]
        CHECK_HEX 0x1000, "back in A: A's data page, seed "
        mov     eax, [PDE_SUPER_VA + 0x10]
        CHECK_HEX 0x3333, "the page only A maps, read by the kernel in A: "
        ret

// ---------------------------------------------------------------- the processes
run_processes:
        PUTS    "ring-3 processes at 0x40000000, one in each space, run A, B, A, B:\n"
        mov     eax, offset pd_a
        mov     cr3, eax
        mov     eax, offset frame_cow_a
        or      eax, PG_USER
        mov     [pf_fix_frame], eax
        mov     dword ptr [pf_fixer], offset fix_cow
        mov     eax, USER_CODE_VA
        call    run_user
        mov     eax, offset pd_b
        mov     cr3, eax
        mov     eax, offset frame_cow_b
        or      eax, PG_USER
        mov     [pf_fix_frame], eax
        mov     dword ptr [pf_fixer], offset fix_cow
        mov     eax, USER_CODE_VA
        call    run_user

        mov     eax, [data_a + D_WHO]
        CHECK_HEX 0xAAAA0001, "A ran A's code: "
        mov     eax, [data_a + D_RESULT]
        CHECK_HEX 0x1100, "  A's seed + 0x100: "
        mov     eax, [data_a + D_SHARED_BEFORE]
        CHECK_HEX 0x5AAED008, "  the shared frame, read: "
        mov     eax, [data_a + D_SHARED_AFTER]
        CHECK_HEX 0xAAAA0008, "  written (copy-on-write), read back: "
        mov     eax, [data_b + D_WHO]
        CHECK_HEX 0xBBBB0001, "B ran B's code: "
        mov     eax, [data_b + D_RESULT]
        CHECK_HEX 0x2200, "  B's seed + 0x200: "
        mov     eax, [data_b + D_SHARED_BEFORE]
        CHECK_HEX 0x5AAED008, "  the shared frame, read: the original, not A's write "
        mov     eax, [data_b + D_SHARED_AFTER]
        CHECK_HEX 0xBBBB0008, "  written (copy-on-write), read back: "
        mov     eax, [shared_frame + 8]
        CHECK_HEX 0x5AAED008, "the shared frame itself is unchanged: "
        mov     eax, [log_count]
        CHECK_DEC 2, "page faults from ring 3: "
        mov     eax, [log_error]
        CHECK_HEX 7, "  A's: error code (user write, protection) "
        mov     eax, [log_cr2]
        CHECK_HEX 0x40002008, "  CR2 "
        mov     eax, [log_eip]
        mov     ebx, offset cow_store_a - user_a + USER_CODE_VA
        CHECK_HEX ebx, "  saved EIP: the store "
        mov     eax, [log_error + 4]
        CHECK_HEX 7, "  B's: error code "
        mov     eax, [log_cr2 + 4]
        CHECK_HEX 0x40002008, "  CR2 "
        mov     eax, [pt_user_a + 2 * 4]
        mov     ebx, offset frame_cow_a
        or      ebx, 0x067
        CHECK_HEX ebx, "A's entry for 0x40002000: its copy, user RW, accessed and dirty "
        mov     eax, [pt_user_b + 2 * 4]
        mov     ebx, offset frame_cow_b
        or      ebx, 0x067
        CHECK_HEX ebx, "B's entry: its own copy "

        mov     dword ptr [data_a + D_SEED], 0x1200
        mov     dword ptr [data_b + D_SEED], 0x2400
        mov     eax, offset pd_a
        mov     cr3, eax
        mov     eax, USER_CODE_VA
        call    run_user
        mov     eax, offset pd_b
        mov     cr3, eax
        mov     eax, USER_CODE_VA
        call    run_user
        mov     eax, [data_a + D_RUNS]
        CHECK_DEC 2, "A again: runs "
        mov     eax, [data_a + D_WHO]
        CHECK_HEX 0xAAAA0001, "  A's code, not B's: "
        mov     eax, [data_a + D_RESULT]
        CHECK_HEX 0x1300, "  seed + 0x100: "
        mov     eax, [data_a + D_SHARED_BEFORE]
        CHECK_HEX 0xAAAA0008, "  its copy at 0x40002000: "
        mov     eax, [data_b + D_RUNS]
        CHECK_DEC 2, "B again: runs "
        mov     eax, [data_b + D_WHO]
        CHECK_HEX 0xBBBB0001, "  B's code: "
        mov     eax, [data_b + D_RESULT]
        CHECK_HEX 0x2600, "  seed + 0x200: "
        mov     eax, [data_b + D_SHARED_BEFORE]
        CHECK_HEX 0xBBBB0008, "  its copy: "
        mov     eax, [log_count]
        CHECK_DEC 2, "no new page faults: "
        ret

// ---------------------------------------------------------------- user/supervisor protection
protection:
        PUTS    "ring 3 in A, what user/supervisor protection refuses:\n"
        mov     eax, offset pd_a
        mov     cr3, eax
        mov     dword ptr [log_count], 0
        mov     eax, offset user_a_probes - user_a + USER_CODE_VA
        call    run_user
        mov     eax, [log_count]
        CHECK_DEC 9, "page faults taken: "
        xor     ebx, ebx
1:      imul    edi, ebx, 12                    // expected_log: CR2, error code, label
        PUTS    "  "
        mov     esi, [expected_log + edi + 8]
        call    puts
        call    newline
        mov     eax, [log_cr2 + ebx * 4]
        mov     ecx, [expected_log + edi]
        CHECK_HEX ecx, "  CR2: "
        mov     eax, [log_error + ebx * 4]
        mov     ecx, [expected_log + edi + 4]
        CHECK_HEX ecx, "  error code: "
        inc     ebx
        cmp     ebx, 9
        jb      1b
        mov     eax, [log_eip + 8 * 4]
        CHECK_HEX SUPERVISOR_VA, "the jump's fault: saved EIP at its target "
        mov     eax, [data_a + D_READ_RO]
        CHECK_HEX 0xF00D, "read of the user read-only page: "
        mov     eax, [data_a + D_READ_PDE_RO]
        CHECK_HEX 0xBEAD, "read under the read-only directory entry: "
        mov     eax, [frame_user_ro]
        CHECK_HEX 0xF00D, "the refused writes changed nothing: "
        mov     eax, [frame_kernel_only]
        CHECK_HEX 0x5EC12E7, "  "
        mov     eax, [frame_r]
        CHECK_HEX 0xBEAD, "  "
        mov     eax, [pt_user_a + 1 * 4]
        and     eax, PG_AD
        CHECK_HEX PG_AD, "A's data page: accessed and dirty "
        mov     eax, [pt_user_a + 0 * 4]
        and     eax, PG_AD
        CHECK_HEX PG_A, "A's code page: accessed "
        mov     eax, [pt_user_a + 5 * 4]
        and     eax, PG_AD
        CHECK_HEX PG_A, "the user read-only page, read and refused a write: accessed "
        mov     eax, [pt_user_a + 4 * 4]
        and     eax, PG_AD
        CHECK_HEX 0, "the supervisor page, every access refused: neither "

        PUTS    "the kernel and a user read-only page:\n"
        PF_TRY  mov dword ptr [USER_RO_VA], 0x1111
        mov     eax, [pf_error]
        CHECK_HEX 3, "write with CR0.WP: error code "
        mov     eax, cr0
        and     eax, ~CR0_WP
        mov     cr0, eax
        mov     dword ptr [USER_RO_VA], 0x2222
        mov     eax, [frame_user_ro]
        CHECK_HEX 0x2222, "without WP the write goes through: "
        ret

// ---------------------------------------------------------------- ring-3 programs
// Copied into each process's code frame and run at USER_CODE_VA: position independent but for
// the linear addresses of the process's own pages. UPROBE insn: note where to resume in the
// data page's resume slot (the kernel's #PF handler reads it there), run insn.
        .macro  UPROBE base, insn:vararg
        mov     dword ptr [USER_DATA_VA + D_RESUME], offset .Lu\@ - \base + USER_CODE_VA
        \insn
.Lu\@:
        mov     dword ptr [USER_DATA_VA + D_RESUME], 0
        .endm

        .macro  USER_MAIN who, add, mark, store_label
        mov     dword ptr [USER_DATA_VA + D_WHO], \who
        inc     dword ptr [USER_DATA_VA + D_RUNS]
        mov     eax, [USER_DATA_VA + D_SEED]
        add     eax, \add
        mov     [USER_DATA_VA + D_RESULT], eax
        mov     eax, [USER_SHARED_VA + 8]
        mov     [USER_DATA_VA + D_SHARED_BEFORE], eax
\store_label:
        mov     dword ptr [USER_SHARED_VA + 8], \mark
        mov     eax, [USER_SHARED_VA + 8]
        mov     [USER_DATA_VA + D_SHARED_AFTER], eax
        int     USER_RETURN_VECTOR
        .endm

user_a:
        USER_MAIN 0xAAAA0001, 0x100, 0xAAAA0008, cow_store_a
user_a_probes:
        UPROBE  user_a, mov eax, [SUPERVISOR_VA]
        UPROBE  user_a, mov dword ptr [SUPERVISOR_VA], 1
        mov     eax, [USER_RO_VA]
        mov     [USER_DATA_VA + D_READ_RO], eax
        UPROBE  user_a, mov dword ptr [USER_RO_VA], 2
        UPROBE  user_a, mov eax, [ABSENT_VA]
        UPROBE  user_a, mov dword ptr [ABSENT_VA], 3
        UPROBE  user_a, mov eax, [PDE_SUPER_VA]
        mov     eax, [PDE_RO_VA]
        mov     [USER_DATA_VA + D_READ_PDE_RO], eax
        UPROBE  user_a, mov dword ptr [PDE_RO_VA], 4
        UPROBE  user_a, mov eax, [0x00100000]
        mov     eax, SUPERVISOR_VA
        UPROBE  user_a, jmp eax
        int     USER_RETURN_VECTOR
user_a_end:
user_b:
        USER_MAIN 0xBBBB0001, 0x200, 0xBBBB0008, cow_store_b
user_b_end:

        .section .rodata
name:   .asciz  "address_spaces"
        .p2align 2
// (frame, flags) of each space's first pages, from 0x40000000 on
space_a_pages:
        .long   code_a, PG_USER_RO
        .long   data_a, PG_USER
        .long   shared_frame, PG_USER_RO
        .long   stack_a, PG_USER
        .long   frame_kernel_only, PG_KERNEL
        .long   frame_user_ro, PG_USER_RO
        .long   0, 0
space_b_pages:
        .long   code_b, PG_USER_RO
        .long   data_b, PG_USER
        .long   shared_frame, PG_USER_RO
        .long   stack_b, PG_USER
        .long   0, 0
// what each ring-3 probe's fault must show: CR2, the error code, and what the probe did
expected_log:
        .long   SUPERVISOR_VA, 5, 1f
        .long   SUPERVISOR_VA, 7, 2f
        .long   USER_RO_VA, 7, 3f
        .long   ABSENT_VA, 4, 4f
        .long   ABSENT_VA, 6, 5f
        .long   PDE_SUPER_VA, 5, 6f
        .long   PDE_RO_VA, 7, 7f
        .long   0x00100000, 5, 8f
        .long   SUPERVISOR_VA, 5, 9f
1:      .asciz  "read of a supervisor page:"
2:      .asciz  "write to a supervisor page:"
3:      .asciz  "write to a user read-only page:"
4:      .asciz  "read of a page not present:"
5:      .asciz  "write to a page not present:"
6:      .asciz  "read under a supervisor directory entry:"
7:      .asciz  "write under a read-only directory entry:"
8:      .asciz  "read of the kernel's code at 0x00100000:"
9:      .asciz  "jump into a supervisor page:"

        .data
        .p2align 2
log_count:      .long   0
log_cr2:        .fill   LOG_SLOTS, 4, 0
log_error:      .fill   LOG_SLOTS, 4, 0
log_eip:        .fill   LOG_SLOTS, 4, 0

        .bss
        .p2align 12
pd_a:           .skip   PAGE_SIZE
pd_b:           .skip   PAGE_SIZE
pt_kernel:      .skip   PAGE_SIZE
pt_user_a:      .skip   PAGE_SIZE
pt_user_b:      .skip   PAGE_SIZE
pt_super:       .skip   PAGE_SIZE
pt_ro:          .skip   PAGE_SIZE
code_a:         .skip   PAGE_SIZE
data_a:         .skip   PAGE_SIZE
stack_a:        .skip   PAGE_SIZE
code_b:         .skip   PAGE_SIZE
data_b:         .skip   PAGE_SIZE
stack_b:        .skip   PAGE_SIZE
shared_frame:   .skip   PAGE_SIZE
frame_cow_a:    .skip   PAGE_SIZE
frame_cow_b:    .skip   PAGE_SIZE
frame_kernel_only: .skip PAGE_SIZE
frame_user_ro:  .skip   PAGE_SIZE
frame_m:        .skip   PAGE_SIZE
frame_r:        .skip   PAGE_SIZE
kstack:         .skip   KSTACK_SIZE
