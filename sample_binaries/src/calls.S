// calls: control transfer stress for a block translator - recursion and call/ret, ret imm16,
// calls and jumps through registers and memory, a jump-table state machine, loop/loope/
// loopne/jecxz/jcxz (also with the 0x67 prefix), returns to modified return addresses,
// tail calls, call/pop to read EIP, and hot loops (5 million iterations).  Every result is
// printed and checked against the value it must have; exit 0 if all are right, else 0x10.
#include "check.h"

#define FAIL_EXIT       0x10

        .text

// ---------------------------------------------------------------- recursion

// fib(ECX) -> EAX, naive double recursion (cdecl-ish: ECX in, EAX out, others preserved).
fib:
        cmp     ecx, 2
        jae     1f
        mov     eax, ecx
        ret
1:      push    ebx
        push    ecx
        dec     ecx
        call    fib
        mov     ebx, eax
        dec     ecx
        call    fib
        add     eax, ebx
        pop     ecx
        pop     ebx
        ret

// fact(n) -> EAX, argument on the stack, EBP frame, recursive.
fact:
        push    ebp
        mov     ebp, esp
        mov     eax, [ebp + 8]
        cmp     eax, 1
        jbe     1f
        dec     eax
        push    eax
        call    fact
        add     esp, 4
        imul    eax, [ebp + 8]
        pop     ebp
        ret
1:      mov     eax, 1
        pop     ebp
        ret

// deep(ECX) -> EAX: h(0) = 0x12345678, h(n) = rol(h(n-1), 5) ^ (n * 0x9E3779B9).
// 12 bytes of stack per level; the deepest level records its ESP in deep_min_esp.
deep:
        push    ebp
        mov     ebp, esp
        push    ecx
        test    ecx, ecx
        jnz     1f
        mov     [deep_min_esp], esp
        mov     eax, 0x12345678
        jmp     2f
1:      dec     ecx
        call    deep
        mov     ecx, [ebp - 4]
        rol     eax, 5
        imul    edx, ecx, 0x9E3779B9
        xor     eax, edx
2:      pop     ecx
        pop     ebp
        ret

// ---------------------------------------------------------------- small callees

// stdcall sum3(a, b, c) = a + 2b + 3c; the callee pops its 12 bytes of arguments.
sum3_stdcall:
        mov     eax, [esp + 4]
        mov     edx, [esp + 8]
        lea     eax, [eax + edx * 2]
        mov     edx, [esp + 12]
        lea     edx, [edx + edx * 2]
        add     eax, edx
        ret     12

// ret 0 (c2 00 00): a ret with an immediate that pops nothing extra.
ret_zero:
        mov     eax, 0x600D
        ret     0

// Four functions of EAX, called through tables and registers.
f_add7:
        add     eax, 7
        ret
f_times3:
        lea     eax, [eax + eax * 2]
        ret
f_square:
        imul    eax, eax
        ret
f_not:
        not     eax
        ret

// print_inline: print the NUL-terminated string that follows the call, return after it.
print_inline:
        pop     esi                             // return address = the string
        call    puts
1:      lodsb
        test    al, al
        jnz     1b
        push    esi                             // continue after the NUL
        ret

// skip2: return two bytes past the return address (skips a 2-byte instruction).
skip2:
        add     dword ptr [esp], 2
        ret

// ret_select: return to (return address + 5 * ECX): the caller follows the call with a
// row of 5-byte jmp rel32 instructions.
ret_select:
        pop     eax
        lea     eax, [eax + ecx * 4]
        add     eax, ecx
        push    eax
        ret

// is_even / is_odd (ECX) -> EAX, mutual recursion as tail calls (jmp): no stack growth.
// The base case records its ESP in tail_esp.
is_even:
        test    ecx, ecx
        jnz     1f
        mov     [tail_esp], esp
        mov     eax, 1
        ret
1:      dec     ecx
        jmp     is_odd
is_odd:
        test    ecx, ecx
        jnz     1f
        mov     [tail_esp], esp
        xor     eax, eax
        ret
1:      dec     ecx
        mov     edx, offset is_even
        jmp     edx                             // the same tail call, through a register

// tail_add100(EAX) -> f_add7 applied after adding 93, as a tail call through memory.
tail_add100:
        add     eax, 93
        jmp     dword ptr [fptr_add7]

// ---------------------------------------------------------------- state machine
// A tiny lexer driven by `jmp [sm_actions + 4 * (state * 5 + class)]`.
// Classes: 0 end, 1 letter/_, 2 digit, 3 space, 4 other.  States: 0 between tokens,
// 1 in identifier, 2 in number.  Each action appends a letter to sm_trace:
// I/i identifier start/continue, N/n number start/continue, _ space, O operator,
// X letter glued to a number (bad token), E end.

// classify AL -> ECX
classify:
        xor     ecx, ecx
        test    al, al
        jz      9f
        mov     ecx, 2
        cmp     al, 0x30                        // '0'
        jb      1f
        cmp     al, 0x39                        // '9'
        jbe     9f
1:      mov     ecx, 1
        cmp     al, 0x5F                        // '_'
        je      9f
        mov     ah, al
        or      ah, 0x20                        // lower case
        cmp     ah, 0x61                        // 'a'
        jb      2f
        cmp     ah, 0x7A                        // 'z'
        jbe     9f
2:      mov     ecx, 3
        cmp     al, 0x20                        // ' '
        je      9f
        mov     ecx, 4
9:      ret

// run_lexer: ESI = input string.  Results in sm_counts (idents, numbers, ops, bad) and
// sm_trace (NUL-terminated).
run_lexer:
        push    edi
        mov     edi, offset sm_trace
        mov     dword ptr [sm_state], 0
sm_next:
        lodsb
        call    classify
        mov     eax, [sm_state]
        lea     eax, [eax + eax * 4]
        add     eax, ecx
        jmp     dword ptr [sm_actions + eax * 4]

act_ident_start:
        inc     dword ptr [sm_counts + 0]
        mov     dword ptr [sm_state], 1
        mov     al, 0x49                        // 'I'
        jmp     sm_emit
act_ident_cont:
        mov     al, 0x69                        // 'i'
        jmp     sm_emit
act_num_start:
        inc     dword ptr [sm_counts + 4]
        mov     dword ptr [sm_state], 2
        mov     al, 0x4E                        // 'N'
        jmp     sm_emit
act_num_cont:
        mov     al, 0x6E                        // 'n'
        jmp     sm_emit
act_bad:
        inc     dword ptr [sm_counts + 12]
        mov     dword ptr [sm_state], 1         // the rest is read as an identifier
        mov     al, 0x58                        // 'X'
        jmp     sm_emit
act_space:
        mov     dword ptr [sm_state], 0
        mov     al, 0x5F                        // '_'
        jmp     sm_emit
act_op:
        inc     dword ptr [sm_counts + 8]
        mov     dword ptr [sm_state], 0
        mov     al, 0x4F                        // 'O'
sm_emit:
        stosb
        jmp     sm_next
act_end:
        mov     al, 0x45                        // 'E'
        stosb
        mov     byte ptr [edi], 0
        pop     edi
        ret

// ---------------------------------------------------------------- tests
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
        PUTS    "calls: control transfer tests\n"

        // ---- recursion
        PUTS    "recursion:\n"
        mov     ecx, 10
        call    fib
        CHECK_DEC 55, "fib(10) = "
        mov     ecx, 20
        call    fib
        CHECK_DEC 6765, "fib(20) = "
        mov     ecx, 25
        call    fib
        CHECK_DEC 75025, "fib(25) = "
        push    10
        call    fact
        add     esp, 4
        CHECK_DEC 3628800, "fact(10) = "
        push    12
        call    fact
        add     esp, 4
        CHECK_DEC 479001600, "fact(12) = "

        // deep recursion on a private stack
        mov     [saved_esp], esp
        mov     esp, offset deep_stack_top
        mov     ecx, 1000
        call    deep
        mov     ebx, offset deep_stack_top
        sub     ebx, [deep_min_esp]             // bytes of stack at the deepest level
        mov     ecx, esp
        mov     esp, [saved_esp]
        CHECK_HEX 0x698aa80a, "deep(1000) checksum = "
        mov     eax, ebx
        CHECK_DEC 12012, "deep(1000) stack bytes at the deepest level = "
        mov     eax, offset deep_stack_top
        sub     eax, ecx
        CHECK_DEC 0, "deep(1000) stack bytes left after return = "

        // ---- ret imm16
        PUTS    "ret imm16:\n"
        mov     ebx, esp
        push    3
        push    2
        push    1
        call    sum3_stdcall
        CHECK_DEC 14, "stdcall sum3(1, 2, 3) = "
        mov     eax, ebx
        sub     eax, esp
        CHECK_DEC 0, "ESP change across push x3 + call + ret 12 = "
        mov     ebx, esp
        call    ret_zero
        CHECK_HEX 0x600D, "ret 0 returned "
        mov     eax, ebx
        sub     eax, esp
        CHECK_DEC 0, "ESP change across call + ret 0 = "

        // ---- indirect calls
        PUTS    "indirect calls:\n"
        mov     eax, 5
        mov     edx, offset f_square
        call    edx
        CHECK_DEC 25, "call edx (square 5) = "
        mov     eax, offset f_times3
        mov     ecx, eax
        mov     eax, 11
        call    ecx
        CHECK_DEC 33, "call ecx (times3 11) = "
        mov     eax, 100
        call    dword ptr [fptr_add7]
        CHECK_DEC 107, "call [fptr] (add7 100) = "
        // call [table + 4*ecx] for ecx = 0..3, each result feeds the next call
        mov     eax, 2
        xor     ecx, ecx
1:      call    dword ptr [ftable + ecx * 4]
        inc     ecx
        cmp     ecx, 4
        jb      1b
        CHECK_HEX 0xfffffd26, "call [ftable + 4*ecx], ecx = 0..3, on 2: not(sq(3*(2+7))) = "
        mov     ebx, offset ftable
        mov     eax, 4
        mov     ecx, 2
        call    dword ptr [ebx + ecx * 4]
        CHECK_DEC 16, "call [ebx + 4*ecx] (square 4) = "
        mov     eax, 1
        call    tail_add100
        CHECK_DEC 101, "tail call through jmp [mem] (1 + 93 + 7) = "

        // ---- indirect jumps
        PUTS    "indirect jumps:\n"
        xor     ebx, ebx
        mov     eax, offset ij_1
        jmp     eax
        mov     ebx, 0xBAD                      // skipped
ij_1:   add     ebx, 1
        jmp     dword ptr [jptr_2]
        mov     ebx, 0xBAD
ij_2:   add     ebx, 10
        push    offset ij_3                     // push + ret as a jump
        ret
        mov     ebx, 0xBAD
ij_3:   add     ebx, 100
        mov     eax, ebx
        CHECK_DEC 111, "jmp eax, jmp [mem], push+ret: "

        // ---- jump-table state machine
        PUTS    "jump-table state machine:\n"
        mov     esi, offset lexer_input
        call    run_lexer
        PUTS    "  trace: "
        mov     esi, offset sm_trace
        call    puts
        call    newline
        mov     esi, offset sm_trace
        mov     edi, offset lexer_expected_trace
1:      mov     al, [esi]
        cmp     al, [edi]
        jne     2f
        inc     esi
        inc     edi
        test    al, al
        jnz     1b
2:      sete    al
        movzx   eax, al
        CHECK_TRUE "trace matches"
        mov     eax, [sm_counts + 0]
        CHECK_DEC 3, "identifiers = "
        mov     eax, [sm_counts + 4]
        CHECK_DEC 3, "numbers = "
        mov     eax, [sm_counts + 8]
        CHECK_DEC 7, "operators = "
        mov     eax, [sm_counts + 12]
        CHECK_DEC 1, "bad tokens = "

        // ---- loop / loope / loopne / jecxz / jcxz
        PUTS    "loop instructions:\n"
        mov     ecx, 1000
        xor     eax, eax
1:      add     eax, ecx
        loop    1b
        CHECK_DEC 500500, "loop: sum 1..1000 = "
        mov     eax, ecx
        CHECK_DEC 0, "loop: ecx after = "

        mov     ecx, 1
        xor     eax, eax
1:      inc     eax
        loop    1b
        CHECK_DEC 1, "loop with ecx=1: iterations = "

        // loope: skip leading zero bytes of zeros_then (7 zeros, then 5)
        mov     esi, offset zeros_then
        mov     ecx, 16
        dec     esi
1:      inc     esi
        cmp     byte ptr [esi], 0
        loope   1b
        mov     eax, esi
        sub     eax, offset zeros_then
        CHECK_DEC 7, "loope: first non-zero byte at index "
        mov     eax, ecx
        CHECK_DEC 8, "loope: ecx left = "
        // loope running out: all 4 bytes are zero
        mov     esi, offset zeros_then
        mov     ecx, 4
        dec     esi
1:      inc     esi
        cmp     byte ptr [esi], 0
        loope   1b
        setz    al
        movzx   eax, al
        CHECK_DEC 1, "loope exhausted (4 zeros): ZF = "

        // loopne: search for 0x42 in search_bytes
        mov     esi, offset search_bytes
        mov     ecx, 16
        dec     esi
1:      inc     esi
        cmp     byte ptr [esi], 0x42
        loopne  1b
        mov     eax, esi
        sub     eax, offset search_bytes
        CHECK_DEC 5, "loopne: 0x42 found at index "
        mov     eax, ecx
        CHECK_DEC 10, "loopne: ecx left = "
        // loopne running out: 0x99 is not in the first 8 bytes
        mov     esi, offset search_bytes
        mov     ecx, 8
        dec     esi
1:      inc     esi
        cmp     byte ptr [esi], 0x99
        loopne  1b
        setnz   al
        movzx   eax, al
        CHECK_DEC 1, "loopne exhausted (no 0x99 in 8 bytes): ZF clear = "

        // addr16 loop (67 e2): counts with CX only, the upper half of ECX stays
        mov     ecx, 0x00050003
        xor     eax, eax
1:      inc     eax
        addr16 loop 1b
        CHECK_DEC 3, "addr16 loop with ecx=0x00050003: iterations = "
        mov     eax, ecx
        CHECK_HEX 0x00050000, "addr16 loop: ecx after = "

        // jecxz taken / not taken
        xor     ecx, ecx
        mov     eax, 1
        jecxz   1f
        xor     eax, eax
1:      CHECK_DEC 1, "jecxz with ecx=0 taken = "
        mov     ecx, 1
        mov     eax, 1
        jecxz   1f
        xor     eax, eax
1:      CHECK_DEC 0, "jecxz with ecx=1 taken = "
        // jcxz (67 e3) looks at CX only: ecx=0x00010000 -> taken, jecxz not
        mov     ecx, 0x00010000
        mov     eax, 1
        jcxz    1f
        xor     eax, eax
1:      CHECK_DEC 1, "jcxz with ecx=0x00010000 taken = "
        mov     eax, 1
        jecxz   1f
        xor     eax, eax
1:      CHECK_DEC 0, "jecxz with ecx=0x00010000 taken = "
        mov     ecx, 0x00000001
        mov     eax, 1
        jcxz    1f
        xor     eax, eax
1:      CHECK_DEC 0, "jcxz with ecx=0x00000001 taken = "

        // ---- modified return addresses
        PUTS    "modified return addresses:\n"
        call    print_inline
        .asciz  "  (this line is inline data after a call)\n"
        mov     eax, 1
        call    skip2
        jmp     1f                              // 2 bytes (eb xx): skipped by skip2
        jmp     2f
1:      xor     eax, eax                        // reached only if the jmp was executed
2:      CHECK_DEC 1, "skip2 skipped the 2-byte jmp = "
        xor     ebx, ebx
        mov     ecx, 0
1:      push    ecx
        call    ret_select
        .byte   0xE9
        .long   rs_0 - . - 4
        .byte   0xE9
        .long   rs_1 - . - 4
        .byte   0xE9
        .long   rs_2 - . - 4
rs_0:   add     ebx, 1
        jmp     rs_done
rs_1:   add     ebx, 20
        jmp     rs_done
rs_2:   add     ebx, 300
rs_done:
        pop     ecx
        inc     ecx
        cmp     ecx, 3
        jb      1b
        mov     eax, ebx
        CHECK_DEC 321, "ret_select to return address + 5*n, n = 0..2: "

        // ---- tail calls
        PUTS    "tail calls:\n"
        mov     ebx, esp
        mov     ecx, 1000
        call    is_even
        CHECK_DEC 1, "is_even(1000) = "
        mov     eax, ebx
        sub     eax, [tail_esp]
        CHECK_DEC 4, "stack used at the end of 1000 tail calls = "
        mov     ecx, 1001
        call    is_even
        CHECK_DEC 0, "is_even(1001) = "
        mov     ecx, 77
        call    is_odd
        CHECK_DEC 1, "is_odd(77) = "

        // ---- reading EIP
        PUTS    "reading EIP:\n"
        call    1f
1:      pop     eax
        sub     eax, offset 1b
        CHECK_DEC 0, "call next; pop eax: eax - label = "
        call    1f
1:      pop     ebx
        mov     eax, [ebx + (pic_data - 1b)]
        CHECK_HEX 0xC0DEF00D, "PIC load through call/pop base = "
        mov     ebx, esp
        call    1f
1:      mov     eax, ebx
        sub     eax, esp
        add     esp, 4
        CHECK_DEC 4, "call next: bytes pushed = "

        // ---- hot loops
        PUTS    "hot loops:\n"
        mov     ecx, 5000000
        mov     eax, 1
        xor     edx, edx
1:      imul    eax, eax, 1103515245
        add     eax, 12345
        mov     ebx, eax
        shr     ebx, 16
        add     edx, ebx
        rol     edx, 1
        dec     ecx
        jnz     1b
        mov     eax, edx
        CHECK_HEX 0x02d8ad70, "5000000 LCG steps, checksum = "
        // 200000 iterations of an indirect call through the table (ecx & 3)
        xor     ebx, ebx
        xor     ecx, ecx
1:      mov     eax, ecx
        mov     edx, ecx
        and     edx, 3
        call    dword ptr [ftable + edx * 4]
        add     ebx, eax
        inc     ecx
        cmp     ecx, 200000
        jb      1b
        mov     eax, ebx
        CHECK_HEX 0xebea7c40, "200000 indirect calls, sum = "
        // 100000 calls of a 4-deep call chain
        xor     ebx, ebx
        mov     ecx, 100000
1:      call    chain1
        loop    1b
        mov     eax, ebx
        CHECK_DEC 800000, "100000 calls of a 4-deep chain (+8 each) = "

        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

chain1: inc     ebx
        call    chain2
        inc     ebx
        ret
chain2: inc     ebx
        call    chain3
        inc     ebx
        ret
chain3: inc     ebx
        call    chain4
        inc     ebx
        ret
chain4: add     ebx, 2
        ret

// Data in the code section, read position-independently (call/pop base + offset).
        .p2align 2
pic_data:
        .long   0xC0DEF00D

// ---------------------------------------------------------------- data
        .section .rodata
sample_name:
        .asciz  "calls"
        .p2align 2
ftable:
        .long   f_add7, f_times3, f_square, f_not
fptr_add7:
        .long   f_add7
jptr_2:
        .long   ij_2
sm_actions:
        //      end      letter           digit          space      other
        .long   act_end, act_ident_start, act_num_start, act_space, act_op     // between tokens
        .long   act_end, act_ident_cont,  act_ident_cont, act_space, act_op    // identifier
        .long   act_end, act_bad,         act_num_cont,  act_space, act_op     // number
lexer_input:
        .asciz  "x1 = 42+foo*(7-y_2); 9z"
lexer_expected_trace:
        .asciz  "Ii_O_NnOIiiOONOIiiOO_NXE"
zeros_then:
        .byte   0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0
search_bytes:
        .byte   1, 2, 3, 4, 5, 0x42, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16

        .data
        .p2align 2
saved_esp:      .long 0
deep_min_esp:   .long 0
tail_esp:       .long 0
sm_state:       .long 0
sm_counts:      .long 0, 0, 0, 0

        .bss
sm_trace:
        .skip   64
        .p2align 4
deep_stack:
        .skip   32768
deep_stack_top:
