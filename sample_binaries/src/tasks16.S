// tasks16: a task switch to and from a 16-bit (286) TSS, as QEMU 7.2 performs it. The kernel's
// 32-bit task calls the task of a 16-bit TSS, whose code runs flat at 0x7000 (below 64 KiB: a
// 16-bit TSS holds IP, not EIP): it starts with the low halves of the general registers from its
// TSS and the upper halves kept from the caller, FS and GS null, the caller in its back link and
// NT set, and it returns by iret, which saves its state in the 16-bit fields. Then a #GP through
// an IDT task gate to a 16-bit TSS: its error code is pushed as 16 bits. Exit 0 if all is right,
// else 0x21.
#include "check.h"
#include "user.h"
#include "tasks.h"

#define FAIL_EXIT       0x21
#define SEL_TSS_16      0x30                    // the GDT's first free slot
#define STUB16          0x7000                  // the task's code, copied below 64 KiB
#define STUB16_DATA     0x7100                  // what it notes
#define STUB16_STACK    0x7F00                  // its SP
#define CALLER_STACK    0x7E00                  // the caller's stack meanwhile (upper half 0)
#define SEL_TSS_GP16    0x38                    // a 16-bit TSS for #GP, through an IDT task gate
#define STUB_GP16       0x7200
#define STUB_GP16_DATA  0x7300
#define STUB_GP16_STACK 0x7F80                  // (0x7F7E after the error code)

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
        mov     eax, offset kstack + 4096
        call    user_mode_init                  // the kernel runs in the task of TSS_SEL
        mov     eax, offset tss16               // GDT[SEL_TSS_16]: the 16-bit TSS, available
        mov     word ptr [user_gdt + SEL_TSS_16], TSS16_SIZE - 1
        mov     [user_gdt + SEL_TSS_16 + 2], ax
        shr     eax, 16
        mov     [user_gdt + SEL_TSS_16 + 4], al
        mov     byte ptr [user_gdt + SEL_TSS_16 + 5], ACCESS_TSS16
        mov     byte ptr [user_gdt + SEL_TSS_16 + 6], 0
        mov     [user_gdt + SEL_TSS_16 + 7], ah
        mov     eax, offset tss16_gp            // GDT[SEL_TSS_GP16]: the other one
        mov     word ptr [user_gdt + SEL_TSS_GP16], TSS16_SIZE - 1
        mov     [user_gdt + SEL_TSS_GP16 + 2], ax
        shr     eax, 16
        mov     [user_gdt + SEL_TSS_GP16 + 4], al
        mov     byte ptr [user_gdt + SEL_TSS_GP16 + 5], ACCESS_TSS16
        mov     byte ptr [user_gdt + SEL_TSS_GP16 + 6], 0
        mov     [user_gdt + SEL_TSS_GP16 + 7], ah
        lgdt    [user_gdt_descriptor]
        call    call_and_iret
        call    error_code_to_a_16_bit_task
        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

call_and_iret:
        PUTS    "call to a 16-bit TSS, iret back\n"
        mov     esi, offset stub16
        mov     edi, STUB16
1:      mov     al, [esi]
        mov     [edi], al
        inc     esi
        inc     edi
        cmp     esi, offset stub16_end
        jb      1b
        mov     edi, offset tss16
        mov     word ptr [edi + T16_IP], STUB16
        mov     word ptr [edi + T16_FLAGS], 0x2
        mov     word ptr [edi + T16_AX], 0x1616
        mov     word ptr [edi + T16_SP], STUB16_STACK
        mov     word ptr [edi + T16_ES], KERNEL_DS
        mov     word ptr [edi + T16_CS], KERNEL_CS
        mov     word ptr [edi + T16_SS], KERNEL_DS
        mov     word ptr [edi + T16_DS], KERNEL_DS
        mov     [saved_esp], esp                // a stack below 64 KiB while the 16-bit task
        mov     esp, CALLER_STACK               // runs: it keeps the upper half of ESP
        mov     ecx, esp
        and     ecx, 0xFFFF0000
        or      ecx, STUB16_STACK
        mov     [expected_esp16], ecx
        mov     eax, 0xCAFE0000
        SET_FLAGS 0x2
        lcall   SEL_TSS_16, 0
        mov     esp, [saved_esp]
        mov     eax, [STUB16_DATA]
        CHECK_HEX 0xCAFE1616, "EAX: upper half kept, AX from the TSS "
        mov     eax, [STUB16_DATA + 4]
        mov     ecx, [expected_esp16]
        sub     eax, ecx
        CHECK_HEX 0, "ESP the same way, less what was expected "
        mov     eax, [STUB16_DATA + 8]
        CHECK_HEX 0, "FS null "
        mov     eax, [STUB16_DATA + 12]
        CHECK_HEX 0x4002, "EFLAGS "
        movzx   eax, word ptr [tss16 + T16_IP]
        CHECK_HEX STUB16+stub16_end-stub16, "its TSS holds the IP after its iret: "
        movzx   eax, word ptr [tss16 + T16_FLAGS]
        CHECK_HEX 0x2, "and FLAGS without NT: "
        movzx   eax, word ptr [tss16 + T16_AX]
        CHECK_HEX 0x4002, "and AX: "
        movzx   eax, word ptr [tss16 + T_LINK]
        CHECK_HEX TSS_SEL, "back link "
        mov     al, [user_gdt + SEL_TSS_16 + 5]
        movzx   eax, al
        CHECK_HEX ACCESS_TSS16, "its TSS available again "
        mov     eax, cr0
        and     eax, CR0_TS
        CHECK_HEX CR0_TS, "CR0.TS "
        clts
        ret

error_code_to_a_16_bit_task:
        PUTS    "#GP through a task gate to a 16-bit TSS\n"
        mov     esi, offset stub_gp16
        mov     edi, STUB_GP16
1:      mov     al, [esi]
        mov     [edi], al
        inc     esi
        inc     edi
        cmp     esi, offset stub_gp16_end
        jb      1b
        mov     edi, offset tss16_gp
        mov     word ptr [edi + T16_IP], STUB_GP16
        mov     word ptr [edi + T16_FLAGS], 0x2
        mov     word ptr [edi + T16_SP], STUB_GP16_STACK
        mov     word ptr [edi + T16_ES], KERNEL_DS
        mov     word ptr [edi + T16_CS], KERNEL_CS
        mov     word ptr [edi + T16_SS], KERNEL_DS
        mov     word ptr [edi + T16_DS], KERNEL_DS
        mov     edi, offset idt + 13 * 8        // IDT[13]: task gate to it
        mov     word ptr [edi], 0
        mov     word ptr [edi + 2], SEL_TSS_GP16
        mov     byte ptr [edi + 4], 0
        mov     byte ptr [edi + 5], ACCESS_TASK_GATE
        mov     word ptr [edi + 6], 0
        mov     [saved_esp], esp
        mov     esp, CALLER_STACK
        mov     ax, TSS_SEL
gp16_insn:
        mov     ds, ax                          // #GP(TSS_SEL): the 16-bit task skips it
        mov     esp, [saved_esp]
        mov     eax, [STUB_GP16_DATA]
        CHECK_HEX TSS_SEL, "error code "
        mov     eax, [STUB_GP16_DATA + 4]
        CHECK_HEX 0x7F7E, "its ESP after the 16-bit push: "
        mov     eax, [STUB_GP16_DATA + 8]
        cmp     eax, offset gp16_insn
        sete    al
        movzx   eax, al
        CHECK_TRUE "the faulting task's TSS held the faulting EIP"
        movzx   eax, word ptr [tss16_gp + T_LINK]
        CHECK_HEX TSS_SEL, "back link "
        clts
        ret

stub16:                                         // copied to STUB16: absolute addresses only
        mov     [STUB16_DATA], eax
        mov     [STUB16_DATA + 4], esp
        mov     eax, fs
        mov     [STUB16_DATA + 8], eax
        pushfd
        pop     eax
        mov     [STUB16_DATA + 12], eax
        SET_FLAGS 0x4002
        iretd
stub16_end:

stub_gp16:                                      // copied to STUB_GP16: absolute addresses only
        movzx   eax, word ptr [esp]
        mov     [STUB_GP16_DATA], eax
        mov     [STUB_GP16_DATA + 4], esp
        mov     eax, [tss + T_EIP]
        mov     [STUB_GP16_DATA + 8], eax
        add     dword ptr [tss + T_EIP], 2      // skip the faulting mov
        add     esp, 2                          // drop the error code
        SET_FLAGS 0x4002
        iretd
stub_gp16_end:


        .section .rodata
name:   .asciz  "tasks16"

        .data
        .p2align 2
expected_esp16: .long   0
saved_esp:      .long   0

        .bss
        .p2align 4
kstack:         .skip   4096
tss16:          .skip   TSS16_SIZE
tss16_gp:       .skip   TSS16_SIZE
