// faults_in_blocks: exceptions raised inside straight-line code with every register live, for
// a translator that must deliver precise state from the middle of a translated block.
//
// Each test sets EAX, ECX, EDX, EBX, EBP, ESI, EDI to known values and the arithmetic flags
// with an arithmetic instruction (then only instructions that leave the flags alone), and
// faults in the middle of a long block: #DE (div by 0, idiv overflow), #GP (bad selector in
// mov ds and in lds), #UD (ud2), #BP (int3), #OF (into), int 0x80; also in the LAST
// instruction of a block (right before a jmp) and in the FIRST one (a jcc target, and the
// fall-through after a jcc not taken), and 5 times in a loop.  The handler (pushad at entry)
// prints the saved EIP relative to the faulting label, the saved GPRs, the CPU frame size
// and the saved EFLAGS masked to CF PF AF ZF SF DF OF, and checks all of it; then it resumes
// after the faulting instruction (one test instead fixes the divisor and retries it).  After
// the block the registers and flags are checked again.  Everything runs twice (the second
// time the blocks are hot).  Exit 0 if all is right, else 0x13.
#include "check.h"

#define FAIL_EXIT       0x13

#define HANDLED_COUNT   6               // vectors with a handler (handled_vectors)
#define BAD_SELECTOR    0x2B            // index 5, beyond crt0's 3-entry GDT: #GP(0x28)

// handler actions
#define ACT_RESUME      0               // continue at the resume label
#define ACT_RETRY       1               // set ECX = 2 and re-execute the faulting instruction
#define ACT_SYSCALL     2               // EAX += 0x100, continue at the resume label
#define ACT_QUIET       0x10            // flag: check vector and EIP only, print nothing

// Initial register values of test n
#define EAX0(n)         (0xA0A0A000 + (n))
#define ECX0(n)         (0xC0C0C000 + (n))
#define EDX0(n)         (0xD0D0D000 + (n))
#define EBX0(n)         (0xB0B0B000 + (n))
#define EBP0(n)         (0xBBBB0000 + (n))
#define ESI0(n)         (0x51515100 + (n))
#define EDI0(n)         (0xD1D1D100 + (n))
#define U32(x)          ((x) & 0xFFFFFFFF)

// ARM vector, fault, resume, at, after, action: what the next exception must look like
// (record `at`), where to resume, and the state expected after the block (record `after`).
// Memory stores only: no register or flag changes.
        .macro ARM vector, fault, resume, at, after, action=ACT_RESUME
        mov     dword ptr [armed_vector], \vector
        mov     dword ptr [armed_fault], offset \fault
        mov     dword ptr [armed_resume], offset \resume
        mov     dword ptr [armed_at], offset \at
        mov     dword ptr [armed_after], offset \after
        mov     dword ptr [armed_action], \action
        mov     dword ptr [armed_count], 0
        mov     [esp_before], esp
        .endm

// SETREGS n: the initial values (mov: flags untouched)
        .macro SETREGS n
        mov     eax, EAX0(\n)
        mov     ecx, ECX0(\n)
        mov     edx, EDX0(\n)
        mov     ebx, EBX0(\n)
        mov     ebp, EBP0(\n)
        mov     esi, ESI0(\n)
        mov     edi, EDI0(\n)
        .endm

// AFTER_CHECK n: compare registers and flags with the armed `after` record; the handler
// must have run n times.
        .macro AFTER_CHECK n=1
        pushfd
        pushad
        push    \n
        call    check_after
        lea     esp, [esp + 4]                  // (no flag change)
        popad
        popfd
        .endm

// AT(eip_offset, err, eax, ecx, edx, ebx, ebp, esi, edi, eflags): the state the handler sees
// AFTER(eax, ecx, edx, ebx, ebp, esi, edi, eflags): the state after the block
// (C macros, not .macro: the values are expressions with spaces)
#define AT(eip, err, a, c, d, b, bp, si, di, fl) \
        .long eip, err, U32(a), U32(c), U32(d), U32(b), U32(bp), U32(si), U32(di), fl
#define AFTER(a, c, d, b, bp, si, di, fl) \
        .long U32(a), U32(c), U32(d), U32(b), U32(bp), U32(si), U32(di), fl
#define AT_EIP          0
#define AT_ERR          4
#define AT_REGS         8               // eax ecx edx ebx ebp esi edi
#define AT_EFLAGS       36
#define AF_REGS         0
#define AF_EFLAGS       28

        .text

// ---------------------------------------------------------------- exception entry
        .macro STUB vector, has_err
stub_\vector:
        .if \has_err == 0
        push    0
        .endif
        push    \vector
        jmp     handler
        .endm
        STUB    0, 0
        STUB    3, 0
        STUB    4, 0
        STUB    6, 0
        STUB    13, 1
        STUB    0x80, 0

// Frame after pushad (EBP = ESP)
#define F_EDI           0
#define F_ESI           4
#define F_EBP           8
#define F_ESP           12
#define F_EBX           16
#define F_EDX           20
#define F_ECX           24
#define F_EAX           28
#define F_VECTOR        32
#define F_ERR           36
#define F_EIP           40
#define F_CS            44
#define F_EFLAGS        48

handler:
        pushad
        mov     ebp, esp
        cld
        inc     dword ptr [armed_count]
        mov     eax, [ebp + F_VECTOR]
        cmp     eax, [armed_vector]
        je      1f
        PUTS    "UNEXPECTED exception, vector 0x"
        call    print_hex8
        PUTS    " at eip 0x"
        mov     eax, [ebp + F_EIP]
        call    print_hex32
        call    newline
        call    check_fail_now
        call    check_end
        jmp     exit
1:      test    dword ptr [armed_action], ACT_QUIET
        jz      h_print
        mov     eax, [ebp + F_EIP]              // quiet: only the EIP is checked
        sub     eax, [armed_fault]
        mov     edi, [armed_at]
        cmp     eax, [edi + AT_EIP]
        je      h_action
        inc     dword ptr [quiet_mismatches]
        jmp     h_action

h_print:
        mov     edi, [armed_at]
        xor     ebx, ebx                        // mismatches
        PUTS    "  "
        mov     eax, [ebp + F_VECTOR]
        mov     esi, offset name_int80
        cmp     eax, 0x80
        je      1f
        mov     esi, [vector_names + eax * 4]
1:      call    puts
        PUTS    " eip=fault+"
        mov     eax, [ebp + F_EIP]
        sub     eax, [armed_fault]
        call    print_dec
        cmp     eax, [edi + AT_EIP]
        setne   al
        movzx   eax, al
        add     ebx, eax
        PUTS    " err=0x"
        mov     eax, [ebp + F_ERR]
        call    print_hex32
        cmp     eax, [edi + AT_ERR]
        setne   al
        movzx   eax, al
        add     ebx, eax
        PUTS    " cs=0x"
        mov     eax, [ebp + F_CS]
        call    print_hex16
        PUTS    " frame="
        mov     eax, [esp_before]               // bytes the CPU pushed: EIP, CS, EFLAGS
        lea     edx, [ebp + F_EIP]
        sub     eax, edx
        call    print_dec
        cmp     eax, 12
        setne   al
        movzx   eax, al
        add     ebx, eax
        PUTS    " eflags&0xcd5=0x"
        mov     eax, [ebp + F_EFLAGS]
        and     eax, EFL_ARITH
        call    print_hex16
        cmp     eax, [edi + AT_EFLAGS]
        setne   al
        movzx   eax, al
        add     ebx, eax
        PUTS    "\n   "
        // the seven registers, in pushad order reversed: eax ecx edx ebx ebp esi edi
        xor     ecx, ecx
2:      mov     esi, [reg_labels + ecx * 4]
        call    puts
        mov     edx, [frame_offsets + ecx * 4]
        mov     eax, [ebp + edx]
        call    print_hex32
        cmp     eax, [edi + AT_REGS + ecx * 4]
        setne   al
        movzx   eax, al
        add     ebx, eax
        inc     ecx
        cmp     ecx, 7
        jb      2b
        test    ebx, ebx
        jnz     3f
        PUTS    " ok\n"
        call    check_pass_now
        jmp     h_action
3:      PUTS    " FAIL\n"
        call    check_fail_now

h_action:
        mov     eax, [armed_action]
        and     eax, ~ACT_QUIET
        cmp     eax, ACT_RETRY
        jne     1f
        mov     dword ptr [ebp + F_ECX], 2      // fix the divisor, run the idiv again
        jmp     9f
1:      cmp     eax, ACT_SYSCALL
        jne     2f
        add     dword ptr [ebp + F_EAX], 0x100
2:      mov     eax, [armed_resume]
        mov     [ebp + F_EIP], eax
9:      popad
        add     esp, 8                          // vector, error code
        iretd

// check_after(n): the pushad + pushfd image above the argument is the state after a block;
// compare it with the armed `after` record, check the handler ran n times, print.
// Stack: ret, n, EDI, ESI, EBP, ESP, EBX, EDX, ECX, EAX, EFLAGS
#define CA_N            4
#define CA_REGS         8
#define CA_EFLAGS       40
check_after:
        push    ebp
        lea     ebp, [esp + 4]                  // EBP -> ret
        push    ebx
        push    edi
        mov     edi, [armed_after]
        xor     ebx, ebx
        PUTS    "   after:"
        xor     ecx, ecx
2:      mov     esi, [reg_labels + ecx * 4]
        call    puts
        mov     edx, [frame_offsets + ecx * 4]
        mov     eax, [ebp + CA_REGS + edx]
        call    print_hex32
        cmp     eax, [edi + AF_REGS + ecx * 4]
        setne   al
        movzx   eax, al
        add     ebx, eax
        inc     ecx
        cmp     ecx, 7
        jb      2b
        PUTS    " eflags&0xcd5=0x"
        mov     eax, [ebp + CA_EFLAGS]
        and     eax, EFL_ARITH
        call    print_hex16
        cmp     eax, [edi + AF_EFLAGS]
        setne   al
        movzx   eax, al
        add     ebx, eax
        PUTS    " exceptions="
        mov     eax, [armed_count]
        call    print_dec
        cmp     eax, [ebp + CA_N]
        setne   al
        movzx   eax, al
        add     ebx, eax
        mov     eax, [quiet_mismatches]
        add     ebx, eax
        test    ebx, ebx
        jnz     3f
        PUTS    " ok\n"
        call    check_pass_now
        jmp     4f
3:      PUTS    " FAIL\n"
        call    check_fail_now
4:      mov     dword ptr [armed_vector], -1
        mov     dword ptr [quiet_mismatches], 0
        pop     edi
        pop     ebx
        pop     ebp
        ret

// ---------------------------------------------------------------- the tests
// run_tests: every test once (called twice by kmain).  Clobbers everything but ESP.
run_tests:
        // ---- 1: #DE (div by zero) in the middle of a block
        PUTS    "test 1: #DE, div ecx (ecx=0) mid-block\n"
        ARM     0, t1_fault, t1_resume, t1_at, t1_after
        SETREGS 1
        mov     ecx, 0
        mov     eax, 0x7FFFFFFF
        add     eax, 1                          // OF SF AF PF
        lea     edx, [ebx + 0x10]
        xchg    esi, edi
        not     ebp
        bswap   ebx
t1_fault:
        div     ecx
t1_resume:
        add     eax, esi
        sub     ebx, edx
        inc     ecx
        jmp     1f
1:      AFTER_CHECK

        // ---- 2: #DE (idiv overflow), the handler fixes the divisor and retries
        PUTS    "test 2: #DE, idiv ecx overflow (-2^31 / -1), handler sets ecx=2 and retries\n"
        ARM     0, t2_fault, t2_resume, t2_at, t2_after, ACT_RETRY
        SETREGS 2
        mov     edx, 0xFFFFFFFF
        mov     eax, 0x80000000
        mov     ecx, -1
        std
        cmp     ebx, ebp
        lea     esi, [esi + edi * 2]
t2_fault:
        idiv    ecx
t2_resume:
        cld
        cmp     eax, ecx
        jmp     1f
1:      AFTER_CHECK

        // ---- 3: #GP (mov ds, bad selector)
        PUTS    "test 3: #GP, mov ds, ax (ax=0x002b, beyond the GDT) mid-block, DF=1\n"
        ARM     13, t3_fault, t3_resume, t3_at, t3_after
        SETREGS 3
        mov     eax, 0xA0A00000 + BAD_SELECTOR
        std
        sub     ecx, edx
        mov     edi, esi
        lea     ebp, [ebp + ecx]
t3_fault:
        mov     ds, ax
t3_resume:
        cld
        add     edi, 0x1000
        neg     ebx
        jmp     1f
1:      AFTER_CHECK

        // ---- 4: #UD (ud2)
        PUTS    "test 4: #UD, ud2 mid-block\n"
        ARM     6, t4_fault, t4_resume, t4_at, t4_after
        SETREGS 4
        rol     edi, 8
        sub     eax, eax                        // ZF PF
        mov     esi, 0xFFFFFFFF
        lea     ecx, [edx + ebx]
        xchg    ebx, ebp
t4_fault:
        ud2
t4_resume:
        sbb     esi, 0                          // CF=0 restored: esi unchanged
        dec     esi
        jmp     1f
1:      AFTER_CHECK

        // ---- 5: #BP (int3, a trap: EIP after it)
        PUTS    "test 5: #BP, int3 mid-block\n"
        ARM     3, t5_fault, t5_resume, t5_at, t5_after
        SETREGS 5
        mov     eax, 0xFFFFFFFF
        add     eax, 1                          // CF ZF AF PF, eax = 0
        mov     edx, ecx
        not     edx
t5_fault:
        int3
t5_resume:
        adc     ebx, 0                          // CF=1 restored: ebx + 1
        setz    al                              // ZF from the adc: 0
        jmp     1f
1:      AFTER_CHECK

        // ---- 6: #OF (into with OF=1, a trap)
        PUTS    "test 6: #OF, into mid-block\n"
        ARM     4, t6_fault, t6_resume, t6_at, t6_after
        SETREGS 6
        mov     ecx, 0x80000000
        sub     ecx, 1                          // OF AF PF, ecx = 0x7fffffff
        mov     esi, ecx
        bswap   esi
t6_fault:
        into
t6_resume:
        seto    al
        setp    ah
        add     edx, ecx
        jmp     1f
1:      AFTER_CHECK

        // ---- 7: int 0x80 mid-block (the handler changes EAX)
        PUTS    "test 7: int 0x80 mid-block, handler adds 0x100 to eax\n"
        ARM     0x80, t7_fault, t7_resume, t7_at, t7_after, ACT_SYSCALL
        SETREGS 7
        std
        cmp     esi, edi
        lea     ebx, [ebx + ebx * 4]
t7_fault:
        int     0x80
t7_resume:
        cld
        add     eax, 1
        jmp     1f
1:      AFTER_CHECK

        // ---- 8: fault in the LAST instruction of a block (resume at the jmp)
        PUTS    "test 8: #DE in the last instruction of a block (before a jmp)\n"
        ARM     0, t8_fault, t8_resume, t8_at, t8_after
        SETREGS 8
        mov     ecx, 0
        mov     eax, 100
        cmp     eax, 101                        // CF SF AF PF
        mov     edx, 0
t8_fault:
        div     ecx
t8_resume:
        jmp     t8_next
        ud2
t8_next:
        add     eax, 5
        AFTER_CHECK

        // ---- 9: fault in the FIRST instruction of a block (a jcc target)
        PUTS    "test 9: #UD in the first instruction of a block (jz target)\n"
        ARM     6, t9_fault, t9_resume, t9_at, t9_after
        SETREGS 9
        mov     ebp, esi
        cmp     ebp, esi                        // ZF PF
        jz      t9_fault
        ud2                                     // not reached
t9_fault:
        ud2
t9_resume:
        lea     eax, [eax + ebx]
        sub     eax, ebx
        jmp     1f
1:      AFTER_CHECK

        // ---- 10: fault in the first instruction after a jcc not taken (fall-through)
        PUTS    "test 10: #DE in the first instruction after a jcc not taken\n"
        ARM     0, t10_fault, t10_resume, t10_at, t10_after
        SETREGS 10
        sub     ecx, ecx                        // ZF PF, ecx = 0
        jnz     t10_never
t10_fault:
        div     ecx
t10_resume:
        xor     ecx, 0x55
        add     ecx, edi
        jmp     1f
t10_never:
        ud2
1:      AFTER_CHECK

        // ---- 11: #GP in lds (bad selector): ESI and DS stay unchanged
        PUTS    "test 11: #GP, lds esi, [far pointer with selector 0x002b] mid-block\n"
        ARM     13, t11_fault, t11_resume, t11_at, t11_after
        SETREGS 11
        add     ebx, ebp                        // CF (and more)
        lea     edx, [edx + 8]
        mov     eax, ds
t11_fault:
        lds     esi, [bad_far_pointer]
t11_resume:
        mov     edx, ds
        adc     edx, 0                          // CF=1 restored
        jmp     1f
1:      AFTER_CHECK

        // ---- 12: 5 faults in a loop (the same block faults every iteration)
        PUTS    "test 12: #DE in a loop body, 5 iterations (handler quiet)\n"
        ARM     0, t12_fault, t12_resume, t12_at, t12_after, ACT_QUIET
        SETREGS 12
        mov     ecx, 5
        xor     ebx, ebx
        xor     esi, esi
t12_loop:
        lea     ebx, [ebx + ecx * 2]
        mov     eax, ecx
        xor     edx, edx
t12_fault:
        div     esi
t12_resume:
        add     edi, eax
        dec     ecx
        jnz     t12_loop
        AFTER_CHECK 5
        ret

// ---------------------------------------------------------------- main
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
        xor     ebx, ebx
1:      mov     eax, [handled_vectors + ebx * 4]
        mov     edx, [handler_stubs + ebx * 4]
        mov     cl, GATE_INTR
        cmp     eax, 0x80
        jne     2f
        mov     cl, GATE_TRAP
2:      call    idt_set_gate
        inc     ebx
        cmp     ebx, HANDLED_COUNT
        jb      1b
        PUTS    "faults_in_blocks: pass 1\n"
        call    run_tests
        PUTS    "faults_in_blocks: pass 2 (blocks already executed once)\n"
        call    run_tests
        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

// ---------------------------------------------------------------- expected states
        .section .rodata
        .p2align 2
// 1: div ecx with ecx=0; add eax,1 on 0x7fffffff -> OF SF AF PF; after: add/sub/inc
t1_at:    AT(0, 0, 0x80000000, 0, EBX0(1) + 0x10, 0x01B0B0B0, ~EBP0(1), EDI0(1), ESI0(1), 0x0894)
t1_after: AFTER(0x80000000 + EDI0(1), 1, EBX0(1) + 0x10, 0x01B0B0B0 - (EBX0(1) + 0x10), ~EBP0(1), EDI0(1), ESI0(1), 0x0001)
// 2: idiv retried with ecx=2: -2^31 / 2 = 0xc0000000 rem 0; flags of cmp ebx, ebp (+DF)
t2_at:    AT(0, 0, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFF, EBX0(2), EBP0(2), ESI0(2) + 2 * EDI0(2), EDI0(2), 0x0485)
t2_after: AFTER(0xC0000000, 2, 0, EBX0(2), EBP0(2), ESI0(2) + 2 * EDI0(2), EDI0(2), 0x0090)
// 3: mov ds, 0x2b -> #GP(0x28); flags of sub ecx, edx (+DF)
t3_at:    AT(0, 0x28, 0xA0A00000 + BAD_SELECTOR, ECX0(3) - EDX0(3), EDX0(3), EBX0(3), EBP0(3) + ECX0(3) - EDX0(3), ESI0(3), ESI0(3), 0x0485)
t3_after: AFTER(0xA0A00000 + BAD_SELECTOR, ECX0(3) - EDX0(3), EDX0(3), -EBX0(3), EBP0(3) + ECX0(3) - EDX0(3), ESI0(3), ESI0(3) + 0x1000, 0x0011)
// 4: ud2; sub eax, eax -> ZF PF
t4_at:    AT(0, 0, 0, EDX0(4) + EBX0(4), EDX0(4), EBP0(4), EBX0(4), 0xFFFFFFFF, 0xD1D104D1, 0x0044)
t4_after: AFTER(0, EDX0(4) + EBX0(4), EDX0(4), EBP0(4), EBX0(4), 0xFFFFFFFE, 0xD1D104D1, 0x0080)
// 5: int3 (trap, eip = fault+1); 0xffffffff + 1 -> CF ZF AF PF
t5_at:    AT(1, 0, 0, ECX0(5), ~ECX0(5), EBX0(5), EBP0(5), ESI0(5), EDI0(5), 0x0055)
t5_after: AFTER(0, ECX0(5), ~ECX0(5), EBX0(5) + 1, EBP0(5), ESI0(5), EDI0(5), 0x0084)
// 6: into (trap, eip = fault+1); 0x80000000 - 1 -> OF AF PF
t6_at:    AT(1, 0, EAX0(6), 0x7FFFFFFF, EDX0(6), EBX0(6), EBP0(6), 0xFFFFFF7F, EDI0(6), 0x0814)
t6_after: AFTER((EAX0(6) & 0xFFFF0000) | 0x0101, 0x7FFFFFFF, EDX0(6) + 0x7FFFFFFF, EBX0(6), EBP0(6), 0xFFFFFF7F, EDI0(6), 0x0015)
// 7: int 0x80 (eip = fault+2), handler adds 0x100 to eax; flags of cmp esi, edi (+DF)
t7_at:    AT(2, 0, EAX0(7), ECX0(7), EDX0(7), 5 * EBX0(7), EBP0(7), ESI0(7), EDI0(7), 0x0405)
t7_after: AFTER(EAX0(7) + 0x101, ECX0(7), EDX0(7), 5 * EBX0(7), EBP0(7), ESI0(7), EDI0(7), 0x0080)
// 8: div ecx=0 right before a jmp; cmp 100, 101 -> CF SF AF PF
t8_at:    AT(0, 0, 100, 0, 0, EBX0(8), EBP0(8), ESI0(8), EDI0(8), 0x0095)
t8_after: AFTER(105, 0, 0, EBX0(8), EBP0(8), ESI0(8), EDI0(8), 0x0004)
// 9: ud2 as a jz target; cmp ebp, esi (equal) -> ZF PF
t9_at:    AT(0, 0, EAX0(9), ECX0(9), EDX0(9), EBX0(9), ESI0(9), ESI0(9), EDI0(9), 0x0044)
t9_after: AFTER(EAX0(9), ECX0(9), EDX0(9), EBX0(9), ESI0(9), ESI0(9), EDI0(9), 0x0895)
// 10: div ecx=0 after jnz not taken; sub ecx, ecx -> ZF PF
t10_at:    AT(0, 0, EAX0(10), 0, EDX0(10), EBX0(10), EBP0(10), ESI0(10), EDI0(10), 0x0044)
t10_after: AFTER(EAX0(10), 0x55 + EDI0(10), EDX0(10), EBX0(10), EBP0(10), ESI0(10), EDI0(10), 0x0084)
// 11: lds with selector 0x2b -> #GP(0x28), esi untouched; flags of add ebx, ebp
t11_at:    AT(0, 0x28, 0x10, ECX0(11), EDX0(11) + 8, EBX0(11) + EBP0(11), EBP0(11), ESI0(11), EDI0(11), 0x0811)
t11_after: AFTER(0x10, ECX0(11), 0x11, EBX0(11) + EBP0(11), EBP0(11), ESI0(11), EDI0(11), 0x0004)
// 12: 5 x (div esi=0); ebx = 2 * (5+4+3+2+1), edi += 5+4+3+2+1 (eax = ecx each time)
t12_at:    AT(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
t12_after: AFTER(1, 0, 0, 30, EBP0(12), 0, EDI0(12) + 15, 0x0044)

        .p2align 2
bad_far_pointer:
        .long   0x12345678
        .word   BAD_SELECTOR

handled_vectors:
        .long   0, 3, 4, 6, 13, 0x80
handler_stubs:
        .long   stub_0, stub_3, stub_4, stub_6, stub_13, stub_0x80
vector_names:
        .long   n_de, 0, 0, n_bp, n_of, 0, n_ud, 0, 0, 0, 0, 0, 0, n_gp
reg_labels:
        .long   r_eax, r_ecx, r_edx, r_ebx, r_ebp, r_esi, r_edi
frame_offsets:                                  // pushad image offsets, same order
        .long   F_EAX, F_ECX, F_EDX, F_EBX, F_EBP, F_ESI, F_EDI
n_de:   .asciz  "#DE"
n_bp:   .asciz  "#BP"
n_of:   .asciz  "#OF"
n_ud:   .asciz  "#UD"
n_gp:   .asciz  "#GP"
name_int80:
        .asciz  "int 0x80"
r_eax:  .asciz  " eax="
r_ecx:  .asciz  " ecx="
r_edx:  .asciz  " edx="
r_ebx:  .asciz  " ebx="
r_ebp:  .asciz  " ebp="
r_esi:  .asciz  " esi="
r_edi:  .asciz  " edi="
sample_name:
        .asciz  "faults_in_blocks"

        .data
        .p2align 2
armed_vector:   .long -1
armed_fault:    .long 0
armed_resume:   .long 0
armed_at:       .long 0
armed_after:    .long 0
armed_action:   .long 0
armed_count:    .long 0
esp_before:     .long 0
quiet_mismatches: .long 0
