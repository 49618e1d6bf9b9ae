// sensitive: the sensitive-but-unprivileged and the privileged instructions a ring-0 kernel
// uses, each executed at ring 0 with its result checked and printed: pushf/popf, cli/sti,
// sgdt/sidt/sldt/str/smsw, lgdt/lidt/lldt/ltr, mov to/from CR0/CR2/CR3/CR4 and DR0-DR7,
// clts/lmsw, segment register reads and loads (mov, pop, lds/les/lfs/lgs/lss, through the
// LDT), far jmp/call/retf to a second code segment, iret to a hand-built frame, int 0x80,
// lar/lsl/verr/verw/arpl, cpuid, rdtsc, rdmsr/wrmsr, invlpg, wbinvd, in/out/ins/outs to the
// UART scratch register, and the #GP/#NP of some invalid segment loads.  Exit 0 if every
// check passes, else 0x12.
//
// Nothing implementation specific is compared: cpuid and rdtsc values are never printed,
// only LAR's architectural bits are checked (the accessed bit is printed but not checked).
// The boot state (CR0, IDTR, DR6/DR7, ...) is printed as found, checked only where the
// Multiboot specification or the SDM's reset values pin it down.
#include "check.h"

#define FAIL_EXIT       0x12

// Our GDT (selectors)
#define SEL_CODE        0x08            // flat 32-bit code, DPL0 (as crt0's)
#define SEL_DATA        0x10            // flat 32-bit data, DPL0 (as crt0's)
#define SEL_CODE2       0x18            // a second flat code segment
#define SEL_RODATA      0x20            // read-only data, base 0, byte-granular limit 0xFFFF
#define SEL_XCODE       0x28            // execute-only code, flat
#define SEL_LDT         0x30            // LDT descriptor (built at run time)
#define SEL_TSS         0x38            // 32-bit TSS descriptor (built at run time)
#define SEL_DATA3       0x43            // flat data, DPL3 (index 8, RPL3)
#define SEL_DATA3_RPL0  0x40
#define SEL_DATA_RPL3   0x13            // SEL_DATA with RPL 3
#define SEL_CODE_RPL3   0x0B            // SEL_CODE with RPL 3
#define SEL_GATE        0x48            // an interrupt gate in the GDT: invalid for lar/lsl
#define SEL_NPDATA      0x50            // data segment, not present
#define GDT_ENTRIES     11
#define SEL_BEYOND      0x58            // first selector past the GDT limit
// Our LDT
#define SEL_LDT_FLAT    0x04            // LDT[0]: flat data
#define SEL_LDT_PROBE   0x0C            // LDT[1]: data, base = ldt_probe, limit 0xFF

// sel_tests rows (see SELTEST)
#define ST_SEL          0
#define ST_LAR_ZF       2
#define ST_LSL_ZF       3
#define ST_VERR         4
#define ST_VERW         5
#define ST_LAR          8
#define ST_LSL          12
#define SEL_TEST_SIZE   16
#define LAR_CHECK_MASK  0x00F0FE00      // architectural LAR bits, minus the accessed bit

#define MSR_SYSENTER_CS  0x174
#define MSR_SYSENTER_ESP 0x175
#define MSR_SYSENTER_EIP 0x176

#define CR0_PE          0x00000001
#define CR0_MP          0x00000002
#define CR0_EM          0x00000004
#define CR0_TS          0x00000008
#define CR0_ET          0x00000010
#define CR0_NE          0x00000020
#define CR0_WP          0x00010000
#define CR0_AM          0x00040000
#define CR0_PG          0x80000000
#define CR4_DE          0x00000008
#define CR4_PSE         0x00000010
#define CR4_PGE         0x00000080

#define EFL_IOPL3       0x00003000
#define EFL_NT          0x00004000
#define EFL_AC          0x00040000
#define EFL_ID          0x00200000

#define PIC1_DATA       0x21
#define PIC2_DATA       0xA1

// EXPECT vector, fault, resume: the next exception must be `vector`, raised at `fault`;
// the handler resumes at `resume`.
        .macro EXPECT vector, fault, resume
        mov     dword ptr [exp_vector], \vector
        mov     dword ptr [exp_fault], offset \fault
        mov     dword ptr [exp_resume], offset \resume
        mov     dword ptr [exp_taken], 0
        .endm

// FAULT_REPORT vector, error, "text": after `EXPECT vector, 8f, 9f` / `8: insn` / `9:`,
// check that insn raised `vector` with error code `error` at label 8 and print the line.
        .macro FAULT_REPORT vector, error, text:vararg
        .pushsection .rodata
.Lft_str\@:
        .asciz  \text
        .popsection
        push    esi
        mov     esi, offset .Lft_str\@
        push    \error
        push    \vector
        call    expect_report
        pop     esi
        .endm

// BIT mask: EAX = 1 if any of the bits in mask is set in EAX, else 0
        .macro BIT mask
        and     eax, \mask
        setnz   al
        movzx   eax, al
        .endm

        .text

// ---------------------------------------------------------------- helpers

// set_desc: descriptor at EDI = base EAX, limit EDX (20 bits), access CL, flags nibble CH
// (as it appears in byte 6: 0xC0 = 4 KiB granular 32-bit, 0x40 = byte granular 32-bit).
set_desc:
        push    eax
        push    edx
        mov     word ptr [edi], dx              // limit 15..0
        mov     word ptr [edi + 2], ax          // base 15..0
        shr     eax, 16
        mov     byte ptr [edi + 4], al          // base 23..16
        mov     byte ptr [edi + 7], ah          // base 31..24
        mov     byte ptr [edi + 5], cl          // access
        shr     edx, 16
        and     dl, 0x0F
        or      dl, ch
        mov     byte ptr [edi + 6], dl          // flags + limit 19..16
        pop     edx
        pop     eax
        ret

// print_sel: "0x<AX as 4 digits>"
print_sel:
        PUTS    "0x"
        jmp     print_hex16

// zf_of_edx: EAX = ZF (0/1) of the EFLAGS image in EDX
zf_of_edx:
        mov     eax, edx
        and     eax, EFL_ZF
        setnz   al
        movzx   eax, al
        ret

// expect_report(vector, error) with ESI = text: check the exception EXPECT armed happened.
// Prints "  <text>: vector 0x0d err=0x0040 eip=fault+0" + ok/FAIL.
expect_report:
        push    eax
        PUTS    "  "
        call    puts
        cmp     dword ptr [exp_taken], 0
        jne     1f
        PUTS    ": no exception FAIL\n"
        call    check_fail_now
        jmp     9f
1:      PUTS    ": vector 0x"
        mov     eax, [exp_got_vector]
        call    print_hex8
        PUTS    " err=0x"
        mov     eax, [exp_err]
        call    print_hex32
        PUTS    " eip=fault+"
        mov     eax, [exp_eip]
        sub     eax, [exp_fault]
        call    print_dec
        mov     eax, [exp_got_vector]
        cmp     eax, [esp + 8]
        jne     2f
        mov     eax, [exp_err]
        cmp     eax, [esp + 12]
        jne     2f
        mov     eax, [exp_eip]
        cmp     eax, [exp_fault]
        jne     2f
        PUTS    " ok\n"
        call    check_pass_now
        jmp     9f
2:      PUTS    " FAIL\n"
        call    check_fail_now
9:      mov     dword ptr [exp_vector], -1
        pop     eax
        ret     8

// ---------------------------------------------------------------- exception handlers
// #TS/#NP/#SS/#GP: an exception armed with EXPECT (anything else panics).
        .macro EXP_STUB vector
exp_stub_\vector:
        push    \vector
        jmp     exp_common
        .endm
        EXP_STUB 10
        EXP_STUB 11
        EXP_STUB 12
        EXP_STUB 13

// Stack: vector, error code, EIP, CS, EFLAGS
exp_common:
        push    eax
        mov     eax, [esp + 4]
        cmp     eax, [exp_vector]
        jne     exp_unexpected
        mov     [exp_got_vector], eax
        mov     eax, [esp + 8]
        mov     [exp_err], eax
        mov     eax, [esp + 12]
        mov     [exp_eip], eax
        mov     dword ptr [exp_taken], 1
        mov     eax, [exp_resume]
        mov     [esp + 12], eax
        pop     eax
        add     esp, 8
        iretd
exp_unexpected:
        cld
        PUTS    "UNEXPECTED exception, vector 0x"
        call    print_hex8
        PUTS    " err=0x"
        mov     eax, [esp + 8]
        call    print_hex32
        PUTS    " at eip 0x"
        mov     eax, [esp + 12]
        call    print_hex32
        call    newline
        call    check_fail_now
        call    check_end
        jmp     exit

// int 0x80 (trap gate): EAX = EAX * 2 + 1; records the CS and EFLAGS of the frame.
int80_handler:
        lea     eax, [eax * 2 + 1]
        push    eax
        mov     eax, [esp + 8]                  // CS
        mov     [int80_cs], eax
        mov     eax, [esp + 12]                 // EFLAGS
        mov     [int80_eflags], eax
        mov     eax, cs
        mov     [int80_handler_cs], eax
        pop     eax
        iretd

// ---------------------------------------------------------------- far targets
// far_func: called with a far call; EAX = the CS it runs with, EDX = the CS pushed by the
// far call (low 16 bits of the stack slot).
far_func:
        mov     eax, cs
        movzx   edx, word ptr [esp + 4]
        retf

// far_sum: far call with 2 stack arguments, callee pops them: EAX = arg1 - arg2.
far_sum:
        mov     eax, [esp + 8]
        sub     eax, [esp + 12]
        retf    8

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
        PUTS    "sensitive: ring-0 instructions\n"

        // ---- boot state (before this sample changes anything)
        PUTS    "state at entry:\n"
        mov     eax, cr0
        mov     [cr0_entry], eax
        PUTS    "  cr0=0x"
        call    print_hex32
        mov     eax, cr2
        PUTS    " cr2=0x"
        call    print_hex32
        mov     eax, cr3
        PUTS    " cr3=0x"
        call    print_hex32
        mov     eax, cr4
        PUTS    " cr4=0x"
        call    print_hex32
        call    newline
        mov     eax, [cr0_entry]
        and     eax, CR0_PE | CR0_PG
        CHECK_HEX CR0_PE, "cr0 & (PE|PG) = "
        sidt    [sdt_buf]
        PUTS    "  sidt at entry: limit=0x"
        movzx   eax, word ptr [sdt_buf]
        call    print_hex16
        PUTS    " base=0x"
        mov     eax, [sdt_buf + 2]
        call    print_hex32
        call    newline
        sgdt    [sdt_buf]
        movzx   eax, word ptr [sdt_buf]
        CHECK_HEX 23, "sgdt at entry (crt0's GDT): limit = "
        mov     eax, [sdt_buf + 2]
        sub     eax, offset gdt
        CHECK_HEX 0, "sgdt at entry: base - gdt = "
        mov     eax, 0xFFFFFFFF
        sldt    eax
        CHECK_HEX 0, "sldt at entry (eax was 0xffffffff) = "
        mov     eax, 0xFFFFFFFF
        str     eax
        CHECK_HEX 0, "str at entry (eax was 0xffffffff) = "
        mov     eax, dr6
        PUTS    "  dr6=0x"
        call    print_hex32
        mov     eax, dr7
        PUTS    " dr7=0x"
        call    print_hex32
        call    newline
        pushfd
        pop     eax
        and     eax, EFL_IF | EFL_DF | EFL_TF | EFL_NT | EFL_IOPL3
        CHECK_HEX 0, "eflags & (IF|DF|TF|NT|IOPL) after crt0's cli/cld = "

        // ---- descriptor tables: our GDT (with LDT and TSS descriptors), IDT
        PUTS    "descriptor tables:\n"
        mov     edi, offset gdt2 + SEL_LDT
        mov     eax, offset ldt
        mov     edx, ldt_end - ldt - 1
        mov     cl, 0x82                        // present, DPL0, LDT
        mov     ch, 0x00
        call    set_desc
        mov     edi, offset gdt2 + SEL_TSS
        mov     eax, offset tss
        mov     edx, 0x67
        mov     cl, 0x89                        // present, DPL0, available 32-bit TSS
        mov     ch, 0x00
        call    set_desc
        mov     edi, offset ldt + (SEL_LDT_PROBE & ~7)
        mov     eax, offset ldt_probe
        mov     edx, 0xFF
        mov     cl, 0x92                        // present, DPL0, data read/write
        mov     ch, 0x40                        // 32-bit, byte granular
        call    set_desc
        // a 32-bit interrupt gate (to int80_handler) stored in the GDT
        mov     eax, offset int80_handler
        mov     word ptr [gdt2 + SEL_GATE], ax
        mov     word ptr [gdt2 + SEL_GATE + 2], SEL_CODE
        mov     word ptr [gdt2 + SEL_GATE + 4], 0x8E00
        shr     eax, 16
        mov     word ptr [gdt2 + SEL_GATE + 6], ax

        lgdt    [gdt2_descriptor]
        jmp     SEL_CODE:1f                     // reload CS from the new table
1:      mov     ax, SEL_DATA
        mov     ds, ax
        mov     es, ax
        mov     fs, ax
        mov     gs, ax
        mov     ss, ax
        sgdt    [sdt_buf]
        movzx   eax, word ptr [sdt_buf]
        CHECK_HEX (GDT_ENTRIES*8-1), "lgdt + sgdt: limit = "
        mov     eax, [sdt_buf + 2]
        sub     eax, offset gdt2
        CHECK_HEX 0, "lgdt + sgdt: base - gdt2 = "

        call    idt_install_panic
        mov     eax, 10
1:      mov     edx, [exp_stubs + eax * 4 - 40]
        mov     cl, GATE_INTR
        call    idt_set_gate
        inc     eax
        cmp     eax, 13
        jbe     1b
        mov     eax, 0x80
        mov     edx, offset int80_handler
        mov     cl, GATE_TRAP
        call    idt_set_gate
        sidt    [sdt_buf]
        movzx   eax, word ptr [sdt_buf]
        CHECK_HEX 0x7FF, "lidt + sidt: limit = "
        mov     eax, [sdt_buf + 2]
        sub     eax, offset idt
        CHECK_HEX 0, "lidt + sidt: base - idt = "

        mov     ax, SEL_LDT
        lldt    ax
        mov     eax, 0xFFFFFFFF
        sldt    eax
        CHECK_HEX SEL_LDT, "lldt 0x30 + sldt eax = "
        mov     word ptr [sdt_buf], 0xFFFF
        sldt    word ptr [sdt_buf]
        movzx   eax, word ptr [sdt_buf]
        CHECK_HEX SEL_LDT, "sldt m16 = "
        mov     ax, SEL_TSS
        ltr     ax
        mov     eax, 0xFFFFFFFF
        str     eax
        CHECK_HEX SEL_TSS, "ltr 0x38 + str eax = "
        movzx   eax, byte ptr [gdt2 + SEL_TSS + 5]
        CHECK_HEX 0x8B, "TSS descriptor access byte after ltr (busy) = "
        xor     eax, eax
        lldt    ax
        sldt    eax
        CHECK_HEX 0, "lldt 0 (null LDT) + sldt = "
        mov     ax, SEL_LDT
        lldt    ax

        // ---- control registers
        PUTS    "control registers:\n"
        mov     eax, 0xFFFFFFFF
        smsw    eax
        and     eax, 0xFFFF
        mov     edx, [cr0_entry]
        and     edx, 0xFFFF
        CHECK_HEX edx, "smsw eax (low 16 bits) = cr0 low 16 bits: "
        mov     eax, 0xDEAD0000
        smsw    ax
        mov     edx, [cr0_entry]
        and     edx, 0xFFFF
        or      edx, 0xDEAD0000
        CHECK_HEX edx, "smsw ax (eax was 0xdead0000) = "
        mov     dword ptr [sdt_buf], 0xFFFFFFFF
        smsw    word ptr [sdt_buf]
        mov     eax, [sdt_buf]
        mov     edx, [cr0_entry]
        or      edx, 0xFFFF0000
        CHECK_HEX edx, "smsw m16 (dword was 0xffffffff) = "

        mov     ebx, [cr0_entry]
        mov     eax, ebx
        or      eax, CR0_MP | CR0_TS | CR0_NE | CR0_WP | CR0_AM
        mov     cr0, eax
        mov     eax, cr0
        mov     edx, ebx
        or      edx, CR0_MP | CR0_TS | CR0_NE | CR0_WP | CR0_AM
        CHECK_HEX edx, "cr0 |= MP|TS|NE|WP|AM, read back: "
        clts
        mov     eax, cr0
        and     eax, CR0_TS
        CHECK_HEX 0, "clts: cr0 & TS = "
        mov     eax, cr0
        and     eax, ~CR0_ET
        mov     cr0, eax
        mov     eax, cr0
        and     eax, CR0_ET
        CHECK_HEX CR0_ET, "cr0 written with ET=0, ET reads back (hardwired 1): "
        mov     ax, CR0_MP | CR0_EM | CR0_TS    // PE=0 in the operand: lmsw cannot clear PE
        lmsw    ax
        mov     eax, cr0
        and     eax, 0xF
        CHECK_HEX 0xF, "lmsw 0x000e: cr0 & 0xf = "
        mov     ax, CR0_PE
        lmsw    ax
        mov     eax, cr0
        and     eax, 0xF
        CHECK_HEX 0x1, "lmsw 0x0001: cr0 & 0xf = "
        mov     cr0, ebx
        mov     eax, cr0
        CHECK_HEX ebx, "cr0 restored: "

        mov     eax, 0x00123018                 // page directory 0x123000, PWT|PCD
        mov     cr3, eax
        mov     eax, cr3
        CHECK_HEX 0x00123018, "cr3 = 0x00123018, read back: "
        xor     eax, eax
        mov     cr3, eax
        mov     ebx, cr4
        mov     eax, ebx
        or      eax, CR4_DE | CR4_PSE | CR4_PGE
        mov     cr4, eax
        mov     eax, cr4
        mov     edx, ebx
        or      edx, CR4_DE | CR4_PSE | CR4_PGE
        CHECK_HEX edx, "cr4 |= DE|PSE|PGE, read back: "
        mov     cr4, ebx
        mov     eax, cr4
        CHECK_HEX ebx, "cr4 restored: "
        mov     eax, 0x00ABC000
        mov     cr2, eax
        mov     eax, cr2
        CHECK_HEX 0x00ABC000, "cr2 = 0x00abc000, read back: "
        xor     eax, eax
        mov     cr2, eax

        // ---- debug registers (addresses only: DR7 is never armed)
        mov     eax, 0x00100000
        mov     dr0, eax
        mov     eax, 0x00200004
        mov     dr1, eax
        mov     eax, 0x00300008
        mov     dr2, eax
        mov     eax, 0x0040000C
        mov     dr3, eax
        mov     eax, dr0
        CHECK_HEX 0x00100000, "dr0 read back: "
        mov     eax, dr1
        CHECK_HEX 0x00200004, "dr1 read back: "
        mov     eax, dr2
        CHECK_HEX 0x00300008, "dr2 read back: "
        mov     eax, dr3
        CHECK_HEX 0x0040000C, "dr3 read back: "

        // ---- EFLAGS: pushf/popf, cli/sti
        PUTS    "eflags:\n"
        mov     al, 0xFF                        // mask every PIC input first: IF=1 below
        out     PIC1_DATA, al                   // must not let the BIOS's timer in
        out     PIC2_DATA, al
        sti
        nop
        pushfd
        cli
        pop     eax
        BIT     EFL_IF
        CHECK_DEC 1, "sti: IF = "
        pushfd
        pop     eax
        BIT     EFL_IF
        CHECK_DEC 0, "cli: IF = "
        push    0x00000202
        popfd
        pushfd
        pop     ebx
        cli
        mov     eax, ebx
        BIT     EFL_IF
        CHECK_DEC 1, "popf with IF=1: IF = "
        push    EFL_IOPL3 | 2
        popfd
        pushfd
        pop     eax
        push    2
        popfd
        and     eax, EFL_IOPL3
        CHECK_HEX EFL_IOPL3, "popf IOPL=3, pushf: eflags & IOPL = "
        pushfd
        pop     eax
        and     eax, EFL_IOPL3
        CHECK_HEX 0, "popf IOPL=0 again: eflags & IOPL = "
        std
        pushfd
        cld
        pop     eax
        BIT     EFL_DF
        CHECK_DEC 1, "std: DF = "
        pushfd
        pop     eax
        BIT     EFL_DF
        CHECK_DEC 0, "cld: DF = "
        push    EFL_AC | 2
        popfd
        pushfd
        pop     eax
        push    2
        popfd
        BIT     EFL_AC
        CHECK_DEC 1, "popf AC=1: AC = "
        push    EFL_ID | 2
        popfd
        pushfd
        pop     eax
        push    2
        popfd
        BIT     EFL_ID
        CHECK_DEC 1, "popf ID=1: ID = "
        pushfd
        pop     eax
        BIT     EFL_ID
        CHECK_DEC 0, "popf ID=0: ID = "
        push    EFL_NT | 2
        popfd
        pushfd
        pop     eax
        push    2                               // NT must be clear before any iret
        popfd
        BIT     EFL_NT
        CHECK_DEC 1, "popf NT=1: NT = "
        // everything at once (minus TF and NT): only the writable bits stick, bit 1 reads 1
        push    0xFFFFBEFD
        popfd
        pushfd
        pop     eax
        push    2
        popfd
        CHECK_HEX 0x00243ED7, "popf 0xffffbefd, pushf (VM/RF/VIF/VIP/reserved stay 0) = "
        push    0
        popfd
        pushfd
        pop     eax
        CHECK_HEX 0x00000002, "popf 0, pushf (bit 1 always 1) = "

        // ---- segment registers: reading
        PUTS    "segment registers:\n"
        mov     eax, 0xFFFFFFFF
        mov     eax, cs
        CHECK_HEX SEL_CODE, "mov eax, cs (eax was 0xffffffff) = "
        mov     eax, 0xDEAD0000
        mov     ax, ds
        CHECK_HEX (0xDEAD0000|SEL_DATA), "mov ax, ds (eax was 0xdead0000) = "
        mov     eax, ss
        CHECK_HEX SEL_DATA, "mov eax, ss = "
        mov     dword ptr [sdt_buf], 0xFFFFFFFF
        mov     word ptr [sdt_buf], es
        mov     eax, [sdt_buf]
        CHECK_HEX (0xFFFF0000|SEL_DATA), "mov m16, es (dword was 0xffffffff) = "
        mov     ebx, esp
        push    0xFFFFFFFF
        pop     eax
        push    cs
        movzx   eax, word ptr [esp]
        mov     ecx, esp
        pop     edx
        CHECK_HEX SEL_CODE, "push cs: low 16 bits of the slot = "
        mov     eax, ebx
        sub     eax, ecx
        CHECK_DEC 4, "push cs: bytes pushed = "

        // ---- segment registers: loading
        mov     ax, SEL_DATA3
        mov     fs, ax
        mov     eax, fs
        CHECK_HEX SEL_DATA3, "mov fs, 0x43 (DPL3 data): fs = "
        mov     eax, fs:[ldt_probe]
        CHECK_HEX 0x11223344, "read through fs: "
        xor     eax, eax
        mov     gs, ax
        mov     eax, gs
        CHECK_HEX 0, "mov gs, 0 (null): gs = "
        mov     ax, SEL_RODATA
        mov     es, ax
        mov     eax, es:[0x100]                 // an offset within the 64 KiB limit
        mov     eax, es
        CHECK_HEX SEL_RODATA, "mov es, 0x20 (read-only, 64 KiB): es = "
        mov     ax, SEL_LDT_PROBE
        mov     es, ax
        mov     eax, es:[4]
        CHECK_HEX 0x55667788, "mov es, 0x0c (LDT[1], base ldt_probe): es:[4] = "
        mov     ax, SEL_LDT_FLAT
        mov     es, ax
        mov     eax, es:[ldt_probe]
        CHECK_HEX 0x11223344, "mov es, 0x04 (LDT[0], flat): es:[ldt_probe] = "
        push    SEL_DATA3
        pop     gs
        mov     eax, gs
        CHECK_HEX SEL_DATA3, "push 0x43; pop gs: gs = "
        push    SEL_DATA
        pop     es
        mov     eax, es
        CHECK_HEX SEL_DATA, "push 0x10; pop es: es = "
        mov     ebx, esp
        push    SEL_DATA
        pop     ss
        mov     eax, ebx
        sub     eax, esp
        CHECK_DEC 0, "push 0x10; pop ss: esp change = "
        push    SEL_DATA
        pop     ds
        mov     eax, ds
        CHECK_HEX SEL_DATA, "push 0x10; pop ds: ds = "
        push    fs
        pop     eax
        and     eax, 0xFFFF
        CHECK_HEX SEL_DATA3, "push fs; pop eax: ax = "

        les     edi, [fp_ldt_probe]
        mov     eax, es
        CHECK_HEX SEL_LDT_PROBE, "les edi, [far ptr]: es = "
        mov     eax, es:[edi]
        CHECK_HEX 0x55667788, "les: es:[edi] = "
        lfs     esi, [fp_data3]
        mov     eax, fs
        CHECK_HEX SEL_DATA3, "lfs esi, [far ptr]: fs = "
        mov     eax, fs:[esi]
        CHECK_HEX 0x11223344, "lfs: fs:[esi] = "
        lgs     ecx, [fp_data]
        mov     eax, gs
        CHECK_HEX SEL_DATA, "lgs ecx, [far ptr]: gs = "
        mov     eax, ecx
        sub     eax, offset ldt_probe
        CHECK_HEX 0, "lgs: ecx - ldt_probe = "
        lds     edx, [fp_data]
        mov     eax, [edx]
        CHECK_HEX 0x11223344, "lds edx, [far ptr]: [edx] = "
        mov     [saved_stack], esp
        mov     word ptr [saved_stack + 4], ss
        lss     esp, [fp_alt_stack]
        push    0x12345678
        mov     eax, offset alt_stack_top
        sub     eax, esp
        pop     ecx
        lss     esp, [saved_stack]
        CHECK_DEC 4, "lss esp, [far ptr] (alternate stack), push: bytes used = "
        mov     eax, esp
        sub     eax, [saved_stack]
        CHECK_DEC 0, "lss back: esp - saved esp = "
        mov     ax, SEL_DATA
        mov     es, ax
        mov     fs, ax
        mov     gs, ax

        // ---- invalid segment loads
        mov     ax, SEL_DATA3
        EXPECT  13, 8f, 9f
8:      mov     ss, ax
9:      FAULT_REPORT 13, SEL_DATA3_RPL0, "mov ss 0x43 (RPL/DPL 3 at CPL 0)"
        mov     ax, SEL_XCODE
        EXPECT  13, 8f, 9f
8:      mov     ds, ax
9:      FAULT_REPORT 13, SEL_XCODE, "mov ds 0x28 (execute-only code)"
        mov     ax, SEL_NPDATA
        EXPECT  11, 8f, 9f
8:      mov     es, ax
9:      FAULT_REPORT 11, SEL_NPDATA, "mov es 0x50 (not present)"
        mov     ax, SEL_BEYOND
        EXPECT  13, 8f, 9f
8:      mov     fs, ax
9:      FAULT_REPORT 13, SEL_BEYOND, "mov fs 0x58 (beyond the GDT limit)"
        xor     eax, eax
        EXPECT  13, 8f, 9f
8:      mov     ss, ax
9:      FAULT_REPORT 13, 0, "mov ss 0 (null)"
        mov     ax, SEL_DATA
        EXPECT  13, 8f, 9f
8:      lldt    ax
9:      FAULT_REPORT 13, SEL_DATA, "lldt 0x10 (not an LDT)"
        mov     ax, SEL_TSS
        EXPECT  13, 8f, 9f
8:      ltr     ax
9:      FAULT_REPORT 13, SEL_TSS, "ltr 0x38 (TSS already busy)"
        EXPECT  13, 8f, 9f
8:      jmp     SEL_DATA:0
9:      FAULT_REPORT 13, SEL_DATA, "far jmp to 0x10 (data)"
        mov     eax, ds
        CHECK_HEX SEL_DATA, "ds after the faults = "
        mov     eax, ss
        CHECK_HEX SEL_DATA, "ss after the faults = "

        // ---- far transfers
        PUTS    "far transfers:\n"
        jmp     SEL_CODE2:fj_1
fj_1:   mov     eax, cs
        CHECK_HEX SEL_CODE2, "jmp 0x18:label: cs = "
        jmp     SEL_CODE:fj_2
fj_2:   mov     eax, cs
        CHECK_HEX SEL_CODE, "jmp 0x08:label: cs = "
        mov     ebx, esp
        call    SEL_CODE2:far_func
        CHECK_HEX SEL_CODE2, "call 0x18:far_func: cs inside = "
        mov     eax, edx
        CHECK_HEX SEL_CODE, "  pushed return cs = "
        mov     eax, cs
        CHECK_HEX SEL_CODE, "  cs after retf = "
        mov     eax, ebx
        sub     eax, esp
        CHECK_DEC 0, "  esp change = "
        push    3
        push    10
        call    fword ptr [fp_far_sum]
        CHECK_DEC 7, "call [far ptr] to 0x18:far_sum(10, 3), retf 8: "
        mov     eax, ebx
        sub     eax, esp
        CHECK_DEC 0, "  esp change = "
        jmp     fword ptr [fp_fj_3]
fj_3:   mov     eax, cs
        CHECK_HEX SEL_CODE2, "jmp [far ptr]: cs = "
        call    SEL_CODE2:far_func             // from CS 0x18 to CS 0x18
        mov     eax, edx
        CHECK_HEX SEL_CODE2, "far call from 0x18: pushed cs = "
        push    SEL_CODE                        // retf as a jump back to 0x08
        push    offset fj_4
        retf
fj_4:   mov     eax, cs
        CHECK_HEX SEL_CODE, "push 0x08; push label; retf: cs = "

        // ---- iret
        PUTS    "iret:\n"
        pushfd
        pop     eax
        or      eax, EFL_CF | EFL_OF | EFL_IOPL3
        push    eax                             // EFLAGS
        push    SEL_CODE2                       // CS
        push    offset iret_1                   // EIP
        iretd
        mov     eax, 0xBAD
iret_1: pushfd
        pop     ebx
        mov     eax, cs
        CHECK_HEX SEL_CODE2, "iret to 0x18:label: cs = "
        mov     eax, ebx
        and     eax, EFL_CF | EFL_OF | EFL_IOPL3
        CHECK_HEX (EFL_CF|EFL_OF|EFL_IOPL3), "  eflags & (CF|OF|IOPL) = "
        push    2                               // EFLAGS: everything clear
        push    SEL_CODE
        push    offset iret_2
        iretd
iret_2: pushfd
        pop     ebx
        mov     eax, cs
        CHECK_HEX SEL_CODE, "iret back to 0x08:label: cs = "
        mov     eax, ebx
        CHECK_HEX 2, "  eflags = "

        // ---- int 0x80 through an IDT gate
        PUTS    "int 0x80:\n"
        mov     eax, 20
        int     0x80
        CHECK_DEC 41, "int 0x80 with eax=20 (handler: 2*eax+1): "
        mov     eax, [int80_cs]
        CHECK_HEX SEL_CODE, "  frame cs = "
        jmp     SEL_CODE2:1f                    // the same from the second code segment
1:      stc
        mov     eax, 7
        int     0x80
        mov     ebx, eax
        jmp     SEL_CODE:1f
1:      mov     eax, ebx
        CHECK_DEC 15, "int 0x80 from cs 0x18 with eax=7: "
        mov     eax, [int80_cs]
        CHECK_HEX SEL_CODE2, "  frame cs = "
        mov     eax, [int80_handler_cs]
        CHECK_HEX SEL_CODE, "  handler cs (from the gate) = "
        mov     eax, [int80_eflags]
        and     eax, EFL_CF
        CHECK_HEX EFL_CF, "  frame eflags & CF (stc before int) = "

        // ---- lar / lsl / verr / verw on a table of selectors
        PUTS    "lar/lsl/verr/verw (zf and value; lar's accessed bit not checked):\n"
        mov     esi, offset sel_tests
1:      movzx   ebx, word ptr [esi]
        cmp     ebx, 0xFFFF
        je      9f
        call    test_selector
        add     esi, SEL_TEST_SIZE
        jmp     1b
9:
        mov     ax, SEL_DATA
        mov     bx, SEL_DATA3
        arpl    ax, bx
        pushfd
        pop     edx
        movzx   eax, ax
        CHECK_HEX SEL_DATA_RPL3, "arpl 0x10, 0x43: "
        call    zf_of_edx
        CHECK_DEC 1, "  zf = "
        mov     ax, SEL_DATA3
        mov     bx, SEL_DATA
        arpl    ax, bx
        pushfd
        pop     edx
        movzx   eax, ax
        CHECK_HEX SEL_DATA3, "arpl 0x43, 0x10: "
        call    zf_of_edx
        CHECK_DEC 0, "  zf = "

        // ---- cpuid, rdtsc, msr, cache/TLB
        PUTS    "cpuid/rdtsc/msr/invlpg/wbinvd:\n"
        xor     eax, eax
        cpuid
        mov     eax, 1
        CHECK_TRUE "cpuid leaf 0 returned"
        rdtsc
        mov     esi, eax
        mov     edi, edx
        mov     ecx, 1000
1:      loop    1b
        rdtsc
        sub     eax, esi
        sbb     edx, edi                        // EDX:EAX = second - first (> 0)
        or      eax, edx
        setnz   al
        test    edx, edx
        setns   dl
        and     al, dl
        movzx   eax, al
        CHECK_TRUE "rdtsc increased between two reads"
        mov     ecx, MSR_SYSENTER_CS
        mov     eax, 0x00000008
        xor     edx, edx
        wrmsr
        mov     eax, 0xFFFFFFFF
        mov     edx, eax
        rdmsr
        CHECK_HEX 0x00000008, "wrmsr/rdmsr IA32_SYSENTER_CS: eax = "
        mov     eax, edx
        CHECK_HEX 0, "  edx = "
        mov     ecx, MSR_SYSENTER_ESP
        mov     eax, 0x0009FFF0
        xor     edx, edx
        wrmsr
        mov     ecx, MSR_SYSENTER_EIP
        mov     eax, offset int80_handler
        wrmsr
        mov     ecx, MSR_SYSENTER_ESP
        rdmsr
        CHECK_HEX 0x0009FFF0, "wrmsr/rdmsr IA32_SYSENTER_ESP: eax = "
        mov     ecx, MSR_SYSENTER_EIP
        rdmsr
        sub     eax, offset int80_handler
        CHECK_HEX 0, "wrmsr/rdmsr IA32_SYSENTER_EIP: eax - int80_handler = "
        invlpg  [ldt_probe]
        invlpg  [0x00400000]
        wbinvd
        mov     eax, 1
        CHECK_TRUE "invlpg and wbinvd did not fault"

        // ---- port I/O to the UART scratch register
        PUTS    "port I/O (UART scratch register 0x3ff):\n"
        mov     dx, UART_SCR
        mov     al, 0xA5
        out     dx, al
        xor     eax, eax
        in      al, dx
        CHECK_HEX 0xA5, "out 0xa5, in: "
        mov     esi, offset outs_bytes
        mov     ecx, 4
        rep outsb
        mov     eax, esi
        sub     eax, offset outs_bytes
        CHECK_DEC 4, "rep outsb 'WXYZ': esi advanced by "
        mov     eax, ecx
        CHECK_DEC 0, "  ecx after = "
        xor     eax, eax
        in      al, dx
        CHECK_HEX 0x5A, "  in (the last byte, 'Z'): "
        mov     edi, offset ins_buffer
        mov     ecx, 3
        mov     al, 0x21                        // '!'
        out     dx, al
        rep insb
        mov     eax, [ins_buffer]
        CHECK_HEX 0x00212121, "out '!', rep insb x3: buffer dword = "
        mov     eax, edi
        sub     eax, offset ins_buffer
        CHECK_DEC 3, "  edi advanced by "
        mov     esi, offset outs_bytes + 1
        outsb                                   // 'X', no rep
        mov     edi, offset ins_buffer
        insb
        movzx   eax, byte ptr [ins_buffer]
        CHECK_HEX 0x58, "outsb 'X' + insb: "
        std                                     // backwards
        mov     esi, offset outs_bytes + 3
        mov     ecx, 2
        rep outsb                               // 'Z' then 'Y'
        cld
        in      al, dx
        movzx   eax, al
        CHECK_HEX 0x59, "std; rep outsb x2 from 'Z' backwards, in: "
        xor     eax, eax
        out     dx, al

        call    check_end
        pop     ebp
        pop     edi
        pop     esi
        pop     ebx
        ret

// test_selector: ESI = a sel_tests row.  Prints
// "  sel 0x0008: lar zf=1 0x00c09b00  lsl zf=1 0xffffffff  verr=1 verw=0" + ok/FAIL.
test_selector:
        push    ebx
        push    ebp
        xor     ebp, ebp                        // mismatches
        PUTS    "  sel "
        mov     eax, ebx
        call    print_sel
        // lar
        mov     eax, 0xEEEEEEEE                 // left alone when ZF=0
        lar     eax, bx
        pushfd
        pop     edx
        mov     ecx, eax
        PUTS    ": lar zf="
        call    zf_of_edx
        call    print_dec
        cmp     al, [esi + ST_LAR_ZF]
        setne   al
        movzx   eax, al
        add     ebp, eax
        PUTS    " 0x"
        mov     eax, ecx
        call    print_hex32
        cmp     byte ptr [esi + ST_LAR_ZF], 0
        jne     1f
        cmp     ecx, 0xEEEEEEEE                 // ZF=0: unchanged
        setne   al
        movzx   eax, al
        add     ebp, eax
        jmp     2f
1:      and     ecx, LAR_CHECK_MASK
        cmp     ecx, [esi + ST_LAR]
        setne   al
        movzx   eax, al
        add     ebp, eax
2:      // lsl
        mov     eax, 0xEEEEEEEE
        lsl     eax, bx
        pushfd
        pop     edx
        mov     ecx, eax
        PUTS    "  lsl zf="
        call    zf_of_edx
        call    print_dec
        cmp     al, [esi + ST_LSL_ZF]
        setne   al
        movzx   eax, al
        add     ebp, eax
        PUTS    " 0x"
        mov     eax, ecx
        call    print_hex32
        cmp     byte ptr [esi + ST_LSL_ZF], 0
        mov     eax, 0xEEEEEEEE
        je      1f
        mov     eax, [esi + ST_LSL]
1:      cmp     ecx, eax
        setne   al
        movzx   eax, al
        add     ebp, eax
        // verr / verw
        verr    bx
        pushfd
        pop     edx
        PUTS    "  verr="
        call    zf_of_edx
        call    print_dec
        cmp     al, [esi + ST_VERR]
        setne   al
        movzx   eax, al
        add     ebp, eax
        verw    bx
        pushfd
        pop     edx
        PUTS    " verw="
        call    zf_of_edx
        call    print_dec
        cmp     al, [esi + ST_VERW]
        setne   al
        movzx   eax, al
        add     ebp, eax
        test    ebp, ebp
        jnz     1f
        PUTS    " ok\n"
        call    check_pass_now
        jmp     2f
1:      PUTS    " FAIL\n"
        call    check_fail_now
2:      pop     ebp
        pop     ebx
        ret

// ---------------------------------------------------------------- data
        .section .rodata
sample_name:
        .asciz  "sensitive"
        .p2align 2
exp_stubs:
        .long   exp_stub_10, exp_stub_11, exp_stub_12, exp_stub_13
outs_bytes:
        .ascii  "WXYZ"

// SELTEST sel, lar_zf, lar (architectural bits, A masked), lsl_zf, lsl, verr, verw
        .macro SELTEST sel, lar_zf, lar, lsl_zf, lsl, verr, verw
        .word   \sel
        .byte   \lar_zf, \lsl_zf, \verr, \verw
        .word   0
        .long   \lar, \lsl
        .endm
        .p2align 2
sel_tests:
        SELTEST SEL_CODE,      1, 0x00C09A00, 1, 0xFFFFFFFF, 1, 0
        SELTEST SEL_DATA,      1, 0x00C09200, 1, 0xFFFFFFFF, 1, 1
        SELTEST SEL_CODE2,     1, 0x00C09A00, 1, 0xFFFFFFFF, 1, 0
        SELTEST SEL_RODATA,    1, 0x00409000, 1, 0x0000FFFF, 1, 0
        SELTEST SEL_XCODE,     1, 0x00C09800, 1, 0xFFFFFFFF, 0, 0
        SELTEST SEL_LDT,       1, 0x00008200, 1, 0x0000000F, 0, 0
        SELTEST SEL_TSS,       1, 0x00008A00, 1, 0x00000067, 0, 0
        SELTEST SEL_DATA3,     1, 0x00C0F200, 1, 0xFFFFFFFF, 1, 1
        SELTEST SEL_GATE,      0, 0,          0, 0,          0, 0
        SELTEST SEL_NPDATA,    1, 0x00C01200, 1, 0xFFFFFFFF, 1, 1
        SELTEST SEL_DATA_RPL3, 0, 0,          0, 0,          0, 0
        SELTEST SEL_CODE_RPL3, 0, 0,          0, 0,          0, 0
        SELTEST SEL_LDT_FLAT,  1, 0x00C09200, 1, 0xFFFFFFFF, 1, 1
        SELTEST SEL_LDT_PROBE, 1, 0x00409200, 1, 0x000000FF, 1, 1
        SELTEST 0,             0, 0,          0, 0,          0, 0
        SELTEST SEL_BEYOND,    0, 0,          0, 0,          0, 0
        .word   0xFFFF

        .data
        .p2align 3
gdt2:
        .quad   0x0000000000000000              // 0x00 null
        .quad   0x00CF9A000000FFFF              // 0x08 code, flat, DPL0
        .quad   0x00CF92000000FFFF              // 0x10 data, flat, DPL0
        .quad   0x00CF9A000000FFFF              // 0x18 second code segment, flat, DPL0
        .quad   0x004090000000FFFF              // 0x20 data read-only, base 0, limit 0xFFFF bytes
        .quad   0x00CF98000000FFFF              // 0x28 code execute-only, flat
        .quad   0                               // 0x30 LDT (set_desc)
        .quad   0                               // 0x38 TSS (set_desc)
        .quad   0x00CFF2000000FFFF              // 0x40 data, flat, DPL3
        .quad   0                               // 0x48 interrupt gate (filled in)
        .quad   0x00CF12000000FFFF              // 0x50 data, flat, NOT present
gdt2_end:
        .p2align 1
gdt2_descriptor:
        .word   gdt2_end - gdt2 - 1
        .long   gdt2

        .p2align 3
ldt:
        .quad   0x00CF92000000FFFF              // LDT[0] (0x04): data, flat
        .quad   0                               // LDT[1] (0x0c): data at ldt_probe (set_desc)
ldt_end:

        .p2align 2
ldt_probe:
        .long   0x11223344, 0x55667788
// far pointers: offset32, selector16
fp_ldt_probe:   .long 4
                .word SEL_LDT_PROBE
fp_data3:       .long ldt_probe
                .word SEL_DATA3
fp_data:        .long ldt_probe
                .word SEL_DATA
fp_alt_stack:   .long alt_stack_top
                .word SEL_DATA
fp_far_sum:     .long far_sum
                .word SEL_CODE2
fp_fj_3:        .long fj_3
                .word SEL_CODE2
        .p2align 2
saved_stack:    .long 0
                .word 0
        .p2align 2
cr0_entry:      .long 0
sdt_buf:        .long 0, 0
exp_vector:     .long -1
exp_fault:      .long 0
exp_resume:     .long 0
exp_taken:      .long 0
exp_got_vector: .long 0
exp_err:        .long 0
exp_eip:        .long 0
int80_cs:       .long 0
int80_eflags:   .long 0
int80_handler_cs: .long 0
ins_buffer:     .long 0

        .bss
        .p2align 4
tss:
        .skip   104
        .p2align 4
alt_stack:
        .skip   256
alt_stack_top:
