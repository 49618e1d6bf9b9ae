// smc: self-modifying and runtime-generated code, for a translator that must notice writes to
// code it has translated.  (a) patch an instruction ahead in the block being executed (with
// and without a jump to it), (b) patch blocks that already ran (immediates, a jmp target, a
// jcc condition, a call target, a ret turned into a nop), (c) copy a function to another page
// (also straddling a page boundary), call it, patch the copy, call again, (d) generate code
// into a buffer, (e) loops that rewrite their own instructions.  Every result is printed and
// checked; exit 0 if all are right, else 0x11.
//
// The code that gets patched lives in section .smc ("awx", placed in the text by link.ld).  The image is linked with a writable
// text segment (SAMPLE_WRITABLE_TEXT, see build_samples.py and link.ld); with paging off the
// CPU does not care, but the ELF program header says what the sample does.
#include "check.h"

#define FAIL_EXIT       0x11

#define OP_MOV_EAX_IMM  0xB8
#define OP_RET          0xC3
#define OP_NOP          0x90
#define OP_INC_EAX      0x40
#define OP_JZ8          0x74
#define OP_JNZ8         0x75
#define OP_ADD_RM_R     0x01                    // add r/m32, r32
#define OP_SUB_RM_R     0x29
#define OP_XOR_RM_R     0x31

// ---------------------------------------------------------------- code that gets patched
        .section .smc, "awx"

// (a1) store into the imm32 of the mov ahead, then jump to it: smc_a1(EAX) -> EAX.
smc_a1:
        mov     [a1_insn + 1], eax
        jmp     a1_insn                         // eb 00: the x86 guarantee point
a1_insn:
        mov     eax, 0
        ret

// (a2) the same without a jump: the patched mov is in the block that does the store.
smc_a2:
        mov     [a2_insn + 1], eax
        mov     edx, eax
        not     edx
a2_insn:
        mov     eax, 0
        ret

// (a3) patch the opcode byte ahead: AL = 01 (add) / 29 (sub) / 31 (xor); 100 op 30 -> EAX.
smc_a3:
        mov     [a3_insn], al
        mov     eax, 100
        mov     edx, 30
a3_insn:
        add     eax, edx                        // 01 d0
        ret

// (b) blocks that are executed, patched, executed again.
b_imm:
        mov     eax, 0x1111
        ret

b_jmp:
        mov     eax, 1
b_jmp_insn:
        .byte   0xE9                            // jmp rel32 b_t1 (patched to b_t2)
        .long   b_t1 - . - 4
b_t1:   add     eax, 10
        ret
b_t2:   add     eax, 20
        ret

b_jcc:  // ECX in: jz taken -> 3, not taken -> 2
        test    ecx, ecx
b_jcc_insn:
        jz      1f                              // 74 xx (patched to 75 xx: jnz)
        mov     eax, 2
        ret
1:      mov     eax, 3
        ret

b_call:
b_call_insn:
        call    b_callee1                       // e8 rel32 (patched to b_callee2)
        add     eax, 1
        ret
b_callee1:
        mov     eax, 1000
        ret
b_callee2:
        mov     eax, 2000
        ret

b_fall:
        mov     eax, 5
b_fall_ret:
        ret                                     // c3 (patched to 90: falls into the add)
        add     eax, 100
        ret

// (e1) a loop whose mov imm32 holds the counter: each iteration rewrites the instruction the
// next iteration executes.  Returns EAX = final counter, EBX = sum of the counters.
smc_e1:
        mov     dword ptr [e1_insn + 1], 0
        xor     ebx, ebx
        mov     ecx, 10
e1_loop:
e1_insn:
        mov     eax, 0x7FFFFFFF                 // imm32 = counter (reset to 0 above)
        inc     eax
        mov     [e1_insn + 1], eax
        add     ebx, eax
        dec     ecx
        jnz     e1_loop
        ret

// (e2) each iteration patches the add ahead of it in the same block with the loop counter.
// Returns EBX = sum of ECX over the iterations (10 + 9 + ... + 1).
smc_e2:
        xor     ebx, ebx
        mov     ecx, 10
e2_loop:
        mov     [e2_insn + 2], ecx
e2_insn:
        add     ebx, 0x12345678                 // 81 c3 imm32
        dec     ecx
        jnz     e2_loop
        ret

// (e3) a loop that rewrites its own backward branch: jnz e3_loop becomes two nops when the
// counter reaches 3: the store is ahead in the same block, so that very iteration already
// falls through the nops and the loop ends with ECX = 3.  Returns ECX.
smc_e3:
        mov     byte ptr [e3_branch], OP_JNZ8   // restore the branch (patched by the last run)
        mov     byte ptr [e3_branch + 1], e3_loop - (e3_branch + 2)
        mov     ecx, 10
e3_loop:
        dec     ecx
        cmp     ecx, 3
        jne     1f
        mov     word ptr [e3_branch], 0x9090    // nop; nop
1:      test    ecx, ecx
e3_branch:
        jnz     e3_loop                         // 75 xx
        ret

// Templates copied elsewhere (position independent).
tmpl1_start:
        mov     eax, 0x1000                     // b8 imm32
        add     eax, ecx
        ret
tmpl1_end:
tmpl2_start:
        lea     eax, [ecx + ecx * 2]
        add     eax, 1
        ret
tmpl2_end:

#define TMPL1_SIZE      (tmpl1_end - tmpl1_start)
#define TMPL2_SIZE      (tmpl2_end - tmpl2_start)

// ---------------------------------------------------------------- tests
        .text

// copy_bytes: copy ECX bytes from ESI to EDI (rep movsb), registers preserved.
copy_bytes:
        push    ecx
        push    esi
        push    edi
        rep movsb
        pop     edi
        pop     esi
        pop     ecx
        ret

        .globl  kmain
kmain:
        push    ebx
        push    esi
        push    edi
        push    ebp
        mov     esi, offset sample_name
        mov     eax, FAIL_EXIT
        call    check_begin
        call    idt_install_panic
        PUTS    "smc: self-modifying code tests\n"

        // ---- (a) patch ahead in the block being executed
        PUTS    "(a) patch ahead in the current block:\n"
        mov     eax, 0x11111111
        call    smc_a1
        CHECK_HEX 0x11111111, "a1 store + jmp, 1st: "
        mov     eax, 0x22222222
        call    smc_a1
        CHECK_HEX 0x22222222, "a1 store + jmp, 2nd: "
        mov     eax, 0x33333333
        call    smc_a1
        CHECK_HEX 0x33333333, "a1 store + jmp, 3rd: "
        mov     eax, 0x44444444
        call    smc_a2
        CHECK_HEX 0x44444444, "a2 store, no jmp, 1st: "
        mov     eax, 0x55555555
        call    smc_a2
        CHECK_HEX 0x55555555, "a2 store, no jmp, 2nd: "
        mov     eax, 0x66666666
        call    smc_a2
        CHECK_HEX 0x66666666, "a2 store, no jmp, 3rd: "
        mov     eax, OP_SUB_RM_R
        call    smc_a3
        CHECK_DEC 70, "a3 opcode -> sub: 100 - 30 = "
        mov     eax, OP_XOR_RM_R
        call    smc_a3
        CHECK_DEC 122, "a3 opcode -> xor: 100 ^ 30 = "
        mov     eax, OP_ADD_RM_R
        call    smc_a3
        CHECK_DEC 130, "a3 opcode -> add: 100 + 30 = "

        // ---- (b) patch blocks that already ran
        PUTS    "(b) patch a block that already ran:\n"
        call    b_imm
        CHECK_HEX 0x1111, "mov imm, before: "
        mov     dword ptr [b_imm + 1], 0x2222
        call    b_imm
        CHECK_HEX 0x2222, "mov imm, after patch: "

        call    b_jmp
        CHECK_DEC 11, "jmp rel32 to t1 (+10): "
        mov     dword ptr [b_jmp_insn + 1], b_t2 - (b_jmp_insn + 5)
        call    b_jmp
        CHECK_DEC 21, "jmp rel32 patched to t2 (+20): "
        mov     dword ptr [b_jmp_insn + 1], b_t1 - (b_jmp_insn + 5)
        call    b_jmp
        CHECK_DEC 11, "jmp rel32 patched back to t1: "

        xor     ecx, ecx
        call    b_jcc
        CHECK_DEC 3, "jz with ZF=1 (taken -> 3): "
        mov     byte ptr [b_jcc_insn], OP_JNZ8
        xor     ecx, ecx
        call    b_jcc
        CHECK_DEC 2, "jz patched to jnz, ZF=1 (not taken -> 2): "
        mov     ecx, 1
        call    b_jcc
        CHECK_DEC 3, "jnz with ZF=0 (taken -> 3): "
        mov     byte ptr [b_jcc_insn], OP_JZ8

        call    b_call
        CHECK_DEC 1001, "call rel32 to callee1 (1000 + 1): "
        mov     dword ptr [b_call_insn + 1], b_callee2 - (b_call_insn + 5)
        call    b_call
        CHECK_DEC 2001, "call rel32 patched to callee2 (2000 + 1): "

        call    b_fall
        CHECK_DEC 5, "ret in place: "
        mov     byte ptr [b_fall_ret], OP_NOP
        call    b_fall
        CHECK_DEC 105, "ret patched to nop (falls into add 100): "
        mov     byte ptr [b_fall_ret], OP_RET
        call    b_fall
        CHECK_DEC 5, "ret restored: "

        // ---- (c) copy a function to another page, call, patch the copy, call
        PUTS    "(c) copied code on another page:\n"
        mov     esi, offset tmpl1_start
        mov     edi, offset code_pages + 0x100
        mov     ecx, TMPL1_SIZE
        call    copy_bytes
        mov     ecx, 5
        mov     edx, offset code_pages + 0x100
        call    edx
        CHECK_HEX 0x1005, "copy of tmpl1 (0x1000 + 5): "
        mov     dword ptr [code_pages + 0x101], 0x2000
        mov     ecx, 6
        call    edx
        CHECK_HEX 0x2006, "copy patched (0x2000 + 6): "
        call    tmpl1_start                     // the original is untouched
        CHECK_HEX 0x1006, "original tmpl1 (0x1000 + 6): "
        // a second copy of the same bytes elsewhere on the page
        mov     edi, offset code_pages + 0x800
        mov     ecx, TMPL1_SIZE
        call    copy_bytes
        mov     ecx, 7
        mov     ebx, offset code_pages + 0x800
        call    ebx
        CHECK_HEX 0x1007, "second copy (0x1000 + 7): "
        call    edx
        CHECK_HEX 0x2007, "first copy again (0x2000 + 7): "
        // another function copied over the first copy
        mov     esi, offset tmpl2_start
        mov     edi, offset code_pages + 0x100
        mov     ecx, TMPL2_SIZE
        call    copy_bytes
        mov     ecx, 8
        call    edx
        CHECK_DEC 25, "tmpl2 copied over it (3*8 + 1): "
        // a copy straddling a page boundary: the mov's imm32 starts 2 bytes before the next
        // page, the rest of the function is on that page
        mov     esi, offset tmpl1_start
        mov     edi, offset code_pages + 0x1000 - 3
        mov     ecx, TMPL1_SIZE
        call    copy_bytes
        mov     ecx, 9
        mov     ebx, edi
        call    ebx
        CHECK_HEX 0x1009, "copy across a page boundary (0x1000 + 9): "
        mov     byte ptr [code_pages + 0x1000], 0x30     // imm32 byte 2 (second page only)
        call    ebx
        CHECK_HEX 0x301009, "byte on the second page patched (0x301000 + 9): "
        mov     byte ptr [code_pages + 0x1000 - 1], 0x50 // imm32 byte 1 (first page)
        call    ebx
        CHECK_HEX 0x305009, "byte on the first page patched (0x305000 + 9): "

        // ---- (d) code generated at run time
        PUTS    "(d) generated code:\n"
        mov     ebx, 0x01234567
        xor     esi, esi                        // 5 rounds
1:      mov     edi, offset gen_buffer
        mov     al, OP_MOV_EAX_IMM              // mov eax, imm32 ; ret  (stosb/stosd)
        stosb
        mov     eax, ebx
        stosd
        mov     al, OP_RET
        stosb
        xor     eax, eax
        mov     edx, offset gen_buffer
        call    edx
        cmp     eax, ebx
        jne     2f
        add     ebx, 0x11111111
        inc     esi
        cmp     esi, 5
        jb      1b
2:      mov     eax, esi
        CHECK_DEC 5, "mov eax, imm32; ret generated 5 times, right results: "
        mov     eax, ebx
        sub     eax, 0x11111111
        CHECK_HEX 0x456789ab, "last generated immediate returned: "
        // n x `inc eax` + ret at the same address, n = 1..20 and then 20..1
        xor     ebx, ebx                        // sum of the results
        mov     ecx, 1
1:      call    gen_incs
        add     ebx, eax
        inc     ecx
        cmp     ecx, 20
        jbe     1b
        mov     eax, ebx
        CHECK_DEC 210, "n x inc eax; ret, n = 1..20 (growing), sum = "
        xor     ebx, ebx
        mov     ecx, 20
1:      call    gen_incs
        add     ebx, eax
        loop    1b
        mov     eax, ebx
        CHECK_DEC 210, "n x inc eax; ret, n = 20..1 (shrinking), sum = "

        // ---- (e) loops that rewrite themselves
        PUTS    "(e) self-rewriting loops:\n"
        call    smc_e1
        CHECK_DEC 10, "counter kept in a mov imm32, after 10 iterations: "
        mov     eax, ebx
        CHECK_DEC 55, "sum of the counters: "
        call    smc_e1
        mov     eax, ebx
        CHECK_DEC 55, "second run, sum of the counters: "
        call    smc_e2
        mov     eax, ebx
        CHECK_DEC 55, "add imm32 patched ahead each iteration, sum: "
        call    smc_e3
        mov     eax, ecx
        CHECK_DEC 3, "jnz turned into nops at ecx=3, ecx at exit: "
        call    smc_e3
        mov     eax, ecx
        CHECK_DEC 3, "second run (branch restored first): "

        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

// gen_incs: write ECX x `inc eax` + `ret` at gen_buffer, call it with EAX = 0 -> EAX = ECX.
gen_incs:
        push    ecx
        push    edi
        mov     edi, offset gen_buffer
        mov     al, OP_INC_EAX
        rep stosb
        mov     byte ptr [edi], OP_RET
        xor     eax, eax
        call    gen_buffer_ptr_call
        pop     edi
        pop     ecx
        ret
gen_buffer_ptr_call:
        jmp     dword ptr [gen_buffer_ptr]

// ---------------------------------------------------------------- data
        .section .rodata
sample_name:
        .asciz  "smc"
        .p2align 2
gen_buffer_ptr:
        .long   gen_buffer

        .bss
        .p2align 12
code_pages:                                     // two pages for copied code
        .skip   8192
gen_buffer:
        .skip   64
