// exceptions: install an IDT and take (and resume after) #DE, #DB, #BP, #OF, #BR, #UD, #NP,
// #GP and int 0x80, printing what each handler sees; exit with 0x2A.
//
// Each test arms the handler with the vector it expects, the address of the instruction
// that should raise it ("fault") and where to resume.  The handler prints the saved EIP as
// "fault+N" so the output is position independent and shows fault (N=0: EIP points at the
// faulting instruction) versus trap (N=length: EIP points after it) semantics.
//
// Right before each tested instruction EFLAGS is set to TEST_EFLAGS with popfd (IF stays 0
// all along: the PIC/PIT are never programmed, so interrupts are never enabled).  The
// handler prints the EFLAGS image saved on the stack and the EFLAGS it runs with (pushfd
// as the very first instruction of the stub), which shows the gate clearing TF.
#include "runtime.h"

#define TEST_EFLAGS     0x00000893      // OF | SF | AF | CF | reserved bit 1
#define EFLAGS_TF       0x00000100

#define GATE_INTR       0x8E            // present, DPL0, 32-bit interrupt gate (clears IF)
#define GATE_TRAP       0x8F            // present, DPL0, 32-bit trap gate (leaves IF alone)
#define GATE_INTR_NP    0x0E            // NOT present, otherwise an interrupt gate

#define BAD_SELECTOR    0x2B            // index 5 (> GDT limit 23), RPL 3 -> #GP(0x28)
#define NP_VECTOR       0x81            // its gate is not present -> #NP(0x81*8 + 2)

// ARM vector, fault, resume: tell the handler what must happen next.
        .macro ARM vector, fault, resume
        mov     dword ptr [expected_vector], \vector
        mov     dword ptr [fault_addr], offset \fault
        mov     dword ptr [resume_addr], offset \resume
        mov     dword ptr [taken], 0
        .endm

// SETFLAGS value: load EFLAGS (last instruction before the tested one).
        .macro SETFLAGS value=TEST_EFLAGS
        push    \value
        popfd
        .endm

// CHECK: complain (and fail) if the armed exception did not happen.
        .macro CHECK
        call    check_taken
        .endm

        .text

// ---------------------------------------------------------------- exception entry stubs
// Stack on entry to isr_common (low to high): vector, handler EFLAGS, error code (real or
// a pushed 0), EIP, CS, EFLAGS.  The pushfd comes before anything that changes flags.
        .macro STUB vector, has_err
isr_\vector:
        .if \has_err
        pushfd
        .else
        push    0                               // dummy error code (push leaves flags alone)
        pushfd
        .endif
        push    \vector
        jmp     isr_common
        .endm

        .irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,29,31
        STUB    \v, 0
        .endr
        .irp v, 8,10,11,12,13,14,17,21,30
        STUB    \v, 1
        .endr
        STUB    0x80, 0

// Frame offsets after pushad in isr_common (EBP = ESP).
#define F_EAX      28
#define F_VECTOR   32
#define F_HFLAGS   36
#define F_ERR      40
#define F_EIP      44
#define F_CS       48
#define F_EFLAGS   52

isr_common:
        pushad
        mov     ebp, esp
        inc     dword ptr [exc_count]
        mov     ebx, [ebp + F_VECTOR]

        PUTS    "  -> vector=0x"
        mov     eax, ebx
        call    print_hex8
        call    space
        mov     esi, offset name_int            // "int" for vectors >= 32
        cmp     ebx, 32
        jae     1f
        mov     esi, [exc_names + ebx * 4]
1:      call    puts

        // Error code only for vectors that push one.
        cmp     ebx, 32
        jae     1f
        cmp     byte ptr [has_error_code + ebx], 0
        je      1f
        PUTS    " err=0x"
        mov     eax, [ebp + F_ERR]
        call    print_hex32
1:
        PUTS    " eip=fault+"
        mov     eax, [ebp + F_EIP]
        sub     eax, [fault_addr]
        call    print_dec
        PUTS    " cs=0x"
        mov     eax, [ebp + F_CS]
        call    print_hex16
        PUTS    " eflags=0x"
        mov     eax, [ebp + F_EFLAGS]
        call    print_hex32
        PUTS    " handler_eflags=0x"
        mov     eax, [ebp + F_HFLAGS]
        call    print_hex32
        PUTS    " gate="
        mov     al, [idt + ebx * 8 + 5]         // type/attribute byte of the gate we came through
        and     al, 0x0F
        cmp     al, 0x0F
        jne     1f
        PUTS    "trap\n"
        jmp     2f
1:      PUTS    "intr\n"
2:
        cmp     ebx, [expected_vector]
        je      1f
        PUTS    "UNEXPECTED exception, giving up\n"
        mov     eax, 0xEE
        jmp     exit
1:
        cmp     ebx, 0x80
        jne     1f
        // "system call": the argument comes in EAX, the result goes back in EAX.
        PUTS    "     int 0x80 handler: got eax=0x"
        mov     eax, [ebp + F_EAX]
        call    print_hex32
        lea     eax, [eax * 2 + 1]
        mov     [ebp + F_EAX], eax
        PUTS    ", returning eax=0x"
        call    print_hex32
        call    newline
1:
        cmp     ebx, 1
        jne     1f
        and     dword ptr [ebp + F_EFLAGS], ~EFLAGS_TF     // stop single-stepping
1:
        mov     dword ptr [taken], 1
        mov     eax, [resume_addr]              // skip the faulting instruction
        mov     [ebp + F_EIP], eax
        popad
        add     esp, 12                         // vector, handler EFLAGS, error code
        iretd

// check_taken: after a test, make sure the handler ran.
check_taken:
        cmp     dword ptr [taken], 0
        jne     1f
        PUTS    "  NO exception was raised!\n"
        mov     eax, 0xEF
        jmp     exit
1:      mov     dword ptr [expected_vector], -1
        ret

// set_gate: IDT[EAX] = gate to handler EDX with type/attribute CL, selector KERNEL_CS.
set_gate:
        push    edi
        lea     edi, [idt + eax * 8]
        mov     word ptr [edi], dx              // offset 15..0
        mov     word ptr [edi + 2], KERNEL_CS
        mov     byte ptr [edi + 4], 0
        mov     byte ptr [edi + 5], cl
        shr     edx, 16
        mov     word ptr [edi + 6], dx          // offset 31..16
        pop     edi
        ret

// ---------------------------------------------------------------- tests
        .globl  kmain
kmain:
        push    ebx
        push    esi
        push    edi
        push    ebp
        PUTS    "exceptions: installing IDT\n"

        // Vectors 0..31: interrupt gates, except #BP and #OF which use trap gates.
        xor     eax, eax
1:      mov     edx, [isr_table + eax * 4]
        mov     cl, GATE_INTR
        cmp     eax, 3
        je      2f
        cmp     eax, 4
        jne     3f
2:      mov     cl, GATE_TRAP
3:      call    set_gate
        inc     eax
        cmp     eax, 32
        jb      1b
        mov     eax, 0x80                       // int 0x80: trap gate
        mov     edx, offset isr_0x80
        mov     cl, GATE_TRAP
        call    set_gate
        mov     eax, NP_VECTOR                  // a gate that is not present
        mov     edx, offset isr_0x80
        mov     cl, GATE_INTR_NP
        call    set_gate
        lidt    [idt_descriptor]

        PUTS    "test 1: #DE, div ecx with ecx=0\n"
        ARM     0, t1_fault, t1_resume
        mov     eax, 1234
        xor     edx, edx
        xor     ecx, ecx
        SETFLAGS
t1_fault:
        div     ecx                             // 2 bytes: f7 f1
t1_resume:
        CHECK

        PUTS    "test 2: #DE, div cl with quotient overflow (ax=0x1000, cl=1)\n"
        ARM     0, t2_fault, t2_resume
        mov     eax, 0x1000
        mov     ecx, 1
        SETFLAGS
t2_fault:
        div     cl                              // 2 bytes: f6 f1
t2_resume:
        CHECK

        PUTS    "test 3: #DB, single step over one nop (popfd sets TF)\n"
        ARM     1, t3_fault, t3_resume
        SETFLAGS TEST_EFLAGS | EFLAGS_TF
t3_fault:
        nop                                     // the trap comes after this instruction
t3_resume:
        CHECK

        PUTS    "test 4: #BP, int3 (1 byte, trap gate)\n"
        ARM     3, t4_fault, t4_resume
        SETFLAGS
t4_fault:
        int3                                    // cc
t4_resume:
        CHECK

        PUTS    "test 5: #BP, int 3 (2 bytes, trap gate)\n"
        ARM     3, t5_fault, t5_resume
        SETFLAGS
t5_fault:
        .byte   0xCD, 0x03                      // int 3, long form
t5_resume:
        CHECK

        PUTS    "test 6: #OF, into with OF=1 (trap gate)\n"
        ARM     4, t6_fault, t6_resume
        SETFLAGS
t6_fault:
        into                                    // ce
t6_resume:
        CHECK

        PUTS    "test 7: bound eax=5 within [0,10]: no exception\n"
        mov     dword ptr [expected_vector], -1
        mov     eax, 5
        SETFLAGS
        bound   eax, qword ptr [bounds]
        PUTS    "  (none, as expected)\n"

        PUTS    "test 8: #BR, bound eax=50 outside [0,10]\n"
        ARM     5, t8_fault, t8_resume
        mov     eax, 50
        SETFLAGS
t8_fault:
        bound   eax, qword ptr [bounds]         // 62 05 <addr32>
t8_resume:
        CHECK

        PUTS    "test 9: #UD, ud2\n"
        ARM     6, t9_fault, t9_resume
        SETFLAGS
t9_fault:
        ud2                                     // 0f 0b
t9_resume:
        CHECK

        PUTS    "test 10: #UD, undefined opcode 0f ff\n"
        ARM     6, t10_fault, t10_resume
        SETFLAGS
t10_fault:
        .byte   0x0F, 0xFF
t10_resume:
        CHECK

        PUTS    "test 11: #NP, int 0x81 through a not-present gate\n"
        ARM     11, t11_fault, t11_resume
        SETFLAGS
t11_fault:
        int     NP_VECTOR                       // cd 81
t11_resume:
        CHECK

        PUTS    "test 12: #GP, mov ds with selector 0x002b beyond the GDT limit\n"
        ARM     13, t12_fault, t12_resume
        mov     eax, BAD_SELECTOR
        SETFLAGS
t12_fault:
        mov     ds, ax                          // 8e d8
t12_resume:
        CHECK
        PUTS    "  ds after the #GP=0x"
        mov     eax, ds
        call    print_hex16
        call    newline

        PUTS    "test 13: int 0x80 with eax=0x00001234 (trap gate)\n"
        ARM     0x80, t13_fault, t13_resume
        mov     eax, 0x1234
        SETFLAGS
t13_fault:
        int     0x80                            // cd 80
t13_resume:
        mov     ebx, eax
        CHECK
        PUTS    "  back from int 0x80, eax=0x"
        mov     eax, ebx
        call    print_hex32
        call    newline

        PUTS    "exceptions: "
        mov     eax, [exc_count]
        call    print_dec
        PUTS    " exceptions handled, exiting with 0x2a\n"
        mov     eax, 0x2A
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

// ---------------------------------------------------------------- data
        .section .rodata
        .p2align 2
isr_table:
        .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .long   isr_\v
        .endr
// vectors that push an error code
has_error_code:
        .byte   0,0,0,0,0,0,0,0, 1,0,1,1,1,1,1,0, 0,1,0,0,0,1,0,0, 0,0,0,0,0,0,1,0
        .p2align 2
exc_names:
        .irp n, de,db,nmi,bp,of,br,ud,nm,df,cso,ts,np,ss,gp,pf,res,mf,ac,mc,xm,ve,cp,res,res,res,res,res,res,res,res,sx,res
        .long   name_\n
        .endr
name_de:  .asciz "#DE"
name_db:  .asciz "#DB"
name_nmi: .asciz "NMI"
name_bp:  .asciz "#BP"
name_of:  .asciz "#OF"
name_br:  .asciz "#BR"
name_ud:  .asciz "#UD"
name_nm:  .asciz "#NM"
name_df:  .asciz "#DF"
name_cso: .asciz "CSO"
name_ts:  .asciz "#TS"
name_np:  .asciz "#NP"
name_ss:  .asciz "#SS"
name_gp:  .asciz "#GP"
name_pf:  .asciz "#PF"
name_res: .asciz "reserved"
name_mf:  .asciz "#MF"
name_ac:  .asciz "#AC"
name_mc:  .asciz "#MC"
name_xm:  .asciz "#XM"
name_ve:  .asciz "#VE"
name_cp:  .asciz "#CP"
name_sx:  .asciz "#SX"
name_int: .asciz "(software interrupt)"

        .p2align 2
bounds:
        .long   0, 10                           // bound: lower, upper (inclusive)

        .data
        .p2align 1
idt_descriptor:
        .word   256 * 8 - 1
        .long   idt
        .p2align 2
expected_vector: .long -1
fault_addr:      .long 0
resume_addr:     .long 0
taken:           .long 0
exc_count:       .long 0

        .bss
        .p2align 3
idt:
        .skip   256 * 8
