"""IA-32 architectural constants, the one place they are defined: EFLAGS, CR0 and CR4 bits,
exception vectors, the page size and page-table-entry bits, gate and system-descriptor types, MSR
numbers (numbers only; the rules over them live in vmm/x86.py, which re-exports every name here).
It sits in translator/ because the translator may import nothing of vmm and needs some of them
too, while vmm may import the translator (docs/architecture.md: imports run vmm -> translator)."""

# EFLAGS bits (Intel SDM vol. 1, 3.4.3)
CF, PF, AF, ZF, SF, TF, IF, DF, OF = (1 << 0), (1 << 2), (1 << 4), (1 << 6), (1 << 7), (1 << 8), (1 << 9), (1 << 10), (1 << 11)
IOPL_MASK = 3 << 12
NT, RF, VM, AC, VIF, VIP, ID = (1 << 14), (1 << 16), (1 << 17), (1 << 18), (1 << 19), (1 << 20), (1 << 21)
EFLAGS_FIXED = 1 << 1   # bit 1 always reads as one

# CR0 bits (SDM vol. 3, 2.5)
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5
CR0_WP, CR0_PG = 1 << 16, 1 << 31
CR0_MSW = CR0_PE | CR0_MP | CR0_EM | CR0_TS    # the bits lmsw loads (the low word's first four)
# CR4 bits
CR4_DE = 1 << 3        # debug extensions: DR4/DR5 are #UD instead of DR6/DR7's aliases
CR4_TSD = 1 << 2       # rdtsc and rdtscp fault (#GP(0)) outside ring 0
CR4_PSE = 1 << 4       # 4 MiB pages in 32-bit paging
CR4_PAE = 1 << 5
CR4_PGE = 1 << 7       # global pages
CR4_PCE = 1 << 8       # rdpmc allowed outside ring 0
CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 9, 1 << 10

# Debug registers (SDM vol. 3, 17.2): the bits of DR6 and DR7 that always read as one, DR6's
# single-step status, DR7's local enables L0-L3
DR6_FIXED, DR7_FIXED, DR6_BS = 0xFFFF0FF0, 0x400, 1 << 14
DR7_LOCAL_ENABLES = 0x55

# Exception vectors (SDM vol. 3, table 6-1). Where a mnemonic is also a flag name (#DF/DF,
# #OF/OF, #PF/PF, #AC/AC) the vector takes a _VEC suffix.
DE, DB, NMI, BP, OF_VEC, BR, UD, NM, DF_VEC, TS, NP, SS, GP, PF_VEC, MF, AC_VEC, MC, XM = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19)

# Paging (SDM vol. 3, 4.3 and 4.5): 4 KiB pages; page-directory and page-table entry bits, the
# same in 32-bit, PAE and IA-32e entries (PS: a large page in a directory entry).
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PTE_P, PTE_RW, PTE_US, PTE_A, PTE_D, PTE_PS = 0x001, 0x002, 0x004, 0x020, 0x040, 0x080
PTE_G = 0x100          # global: a CR3 load leaves its TLB entry (while CR4.PGE is set)
PTE_NX = 1 << 63       # execute-disable (PAE and IA-32e entries only)

# Gate and system-segment descriptor types (SDM vol. 3, 3.5 and 6.11)
TSS_AVAILABLE_16, LDT_TYPE, TSS_BUSY_16 = 0x1, 0x2, 0x3
TSS_AVAILABLE_32, TSS_BUSY_32 = 0x9, 0xB
GATE_TASK = 0x5
GATE_INTERRUPT_16, GATE_TRAP_16 = 0x6, 0x7
GATE_INTERRUPT_32, GATE_TRAP_32 = 0xE, 0xF
GATE_CALL_16, GATE_CALL_32 = 0x4, 0xC

# Model-specific registers
MSR_TSC_AUX = 0xC0000103   # what rdtscp returns in ECX
MSR_APIC_BASE = 0x1B       # IA32_APIC_BASE: the local APIC's base, BSP bit (8), global enable (11)
MSR_EFER = 0xC0000080
MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE = 0xC0000100, 0xC0000101, 0xC0000102
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
