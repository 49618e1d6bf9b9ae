"""Seeded generator of random but valid, always-terminating 32-bit guest programs.

A program is Intel-syntax Keystone assembly (no ';' anywhere: Keystone reads it as a statement
separator; '#' starts a comment) made of Items, each a self-contained unit of one or more lines:

    prologue   cli, ESP, a xorshift fill of the data and stack areas, optionally a guest GDT
               (lgdt, far jump, segment reloads, ltr) and an IDT with recording handlers, random
               GPRs, random arithmetic flags + DF (push imm / popfd)
    body       `length` random items: ALU, memory, stack, string, forward branches, calls,
               indirect branches, sensitive instructions, self-modifying code, bounded loops and,
               when the IDT is installed, deliberate exceptions
    epilogue   every GPR, EFLAGS, segment selector, GDTR/IDTR/TR/LDTR and CR0-CR4 stored to the
               result area, then the state restored and EAX written to port 0xF4
    tail       local functions, exception handlers and the function table (never fallen into)

Invariants that keep every program valid and terminating:
  * one base register (EBX or EBP) always points at DATA_PTR and is never written; ESP is only
    changed by stack items (bounded drift inside a 32 KiB stack area);
  * every memory operand stays in the data area (or near the top of the stack at top level);
  * branches only go forward to labels between items, except the backward branch that closes a
    bounded loop (a counter no loop body touches); LOOP/JECXZ/JCXZ (rel8 only, which Keystone
    silently mis-encodes when out of range) always go to an adjacent trampoline;
  * POPFD never sets TF, IF or NT; STI only opens a block that closes with CLI; DIV/IDIV have a
    non-zero divisor and a quotient that fits, except in deliberate #DE items that resume at a
    label stored in RESUME before the faulting instruction;
  * CPUID, RDTSC and anything else whose value may legitimately differ are never generated.

The shrinker (compare.shrink) removes Items; Program.without() keeps the rest intact.
Options(dump=True) makes the epilogue also print its state on COM1 and avoids what differs
between this platform and QEMU by design, so that qemu.py can check the direct mode itself.

Options(ring3=True) (off by default: with both options off no random number is drawn for them,
and every seed gives the program it always gave) runs the body in ring 3:
  * the prologue always installs the guest GDT (plus RING3_GDT's user code 0x73, DPL-3 call gate
    0x7B, DPL-3 byte-granular / expand-down / not-present data 0x83 / 0x8B / 0x93; user data is
    the existing 0x1B) and the IDT, loads TR with a TSS whose SS0:ESP0 is the ring-0 stack area
    (R0_STACK_BASE, 4 KiB, no other use) and whose I/O bitmap opens a random subset of IO_GROUPS,
    loads DS/ES with 0x1B and FS/GS with random selectors (a DPL-0 one is nulled by the iret),
    then enters ring 3 with iretd at IOPL 0, IF set at random;
  * the body uses only what is valid in ring 3: far transfers through 0x73/0x70 or conforming
    0x58/0x5B, the call gate (a ring-0 function that may load FS/GS and returns with retf n),
    DPL-3 selectors, POPFD with IF (and IOPL) bits that ring 3 cannot change, and the sensitive
    but unprivileged instructions (pushf/popf, sgdt/sidt/sldt/str/smsw, mov from segment
    registers, lar/lsl/verr/verw, arpl, stores to the GDT); IN/OUT/INS/OUTS items set RESUME
    first (the bitmap may refuse IN/OUT; INS/OUTS go only to ports it opens); privileged instructions, closed ports and far transfers
    to ring 0 are deliberate-exception items (#GP, or #UD for syscall) that resume at RESUME;
    int3/into/int 0x40 meet gates of DPL 0 or 3 at random;
  * nothing reads or writes memory below ESP: the MOV SS shadow item uses [esp] and ENTER has a
    frame of at least 4 bytes (an interrupt of the same ring would overwrite it);
  * exceptions arrive on the ring-0 stack; the handlers also log the interrupted ESP (the log
    entry's last word);
  * the epilogue stores what ring 3 can read, then `int 0x41` (EXIT_VECTOR, DPL-3 interrupt gate
    whose handler is the next instruction) enters ring 0, which stores CR0-CR4, ZEROES THE
    RING-0 STACK AREA (interrupt frames there depend on where interrupts landed) and ends as
    usual with IF clear. The whole RAM stays compared: nothing is excluded.
Options(timer=True) implies ring3 with IF set: the prologue remaps the PIC pair to 0x20/0x28,
unmasks IRQ0 alone and starts PIT channel 0 in mode 2 with a divisor of 2-16 (IRQ0 every
168-1344 instructions of the virtual clock). A body runs only a few hundred instructions, so it
runs 10-30 times over (PASSES, each pass from STACK_TOP). IRQ0's handler sends EOI and irets,
restoring everything it touches and recording nothing, so nothing compared depends on where an
interrupt lands (bt takes it at a block boundary, direct at an exact instruction count): its
frames land on the ring-0 stack, also below the ESP of the call-gate function and of trap-gate
handlers, which run in ring 0 with IF set and never look below ESP.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Optional

from translator.x86arch import AF, CF, DF, IF, NT, OF, PF, SF, TF, ZF

# -- guest memory layout --------------------------------------------------------------------------
CODE_BASE = 0x100000
CODE_SIZE = 0x10000
DATA_BASE = 0x200000             # random bytes, the target of every generated memory access
DATA_SIZE = 0x10000
DATA_PTR = DATA_BASE + 0x8000    # what the base register holds
STACK_BASE = 0x210000            # stack area, also random-filled (pops may read above the start)
STACK_SIZE = 0x8000
STACK_TOP = 0x216000
SYS_BASE = 0x2F0000              # result area, loop counters, exception log, GDT, LDT, TSS, IDT
SYS_SIZE = 0x1000
RESULT = SYS_BASE                # 0x80 bytes, see RESULT_FIELDS
SCRATCH = SYS_BASE + 0x80        # 16 loop counters
PASSES = SYS_BASE + 0xE0         # timer programs: passes of the body still to run
RESUME = SYS_BASE + 0xF0         # where the fault handlers resume
EXC_COUNT = SYS_BASE + 0xF8
EXC_LOG = SYS_BASE + 0x100       # 16 entries of 32 bytes
EXC_ENTRY = 32
IDT_PTR = SYS_BASE + 0x3E0
GDT_PTR = SYS_BASE + 0x3F0
GDT = SYS_BASE + 0x400
LDT = SYS_BASE + 0x600
TSS = SYS_BASE + 0x700
IDT = SYS_BASE + 0x800           # 0x41 gates (0x42 in ring-3 programs)
R0_STACK_BASE = 0x220000         # ring-3 programs: the ring-0 stack (TSS SS0:ESP0), zeroed at the end
R0_STACK_SIZE = 0x1000
R0_STACK_TOP = R0_STACK_BASE + R0_STACK_SIZE
PAGE_DIRECTORY = 0x300000        # Options.paging: the page directory and the one table (0-4 MiB)
PAGE_TABLE = 0x301000
PAGE_FLAGS = 0x7                 # present, writable, user

EPILOGUE_MAGIC = 0x600DF00D

RESULT_FIELDS = {   # offset in the result area -> (name, size)
    0x00: ("eax", 4), 0x04: ("ecx", 4), 0x08: ("edx", 4), 0x0C: ("ebx", 4),
    0x10: ("esp", 4), 0x14: ("ebp", 4), 0x18: ("esi", 4), 0x1C: ("edi", 4),
    0x20: ("eflags", 4), 0x24: ("cs", 2), 0x26: ("ss", 2), 0x28: ("ds", 2), 0x2A: ("es", 2),
    0x2C: ("fs", 2), 0x2E: ("gs", 2), 0x30: ("gdtr", 6), 0x38: ("idtr", 6), 0x40: ("tr", 2),
    0x42: ("ldtr", 2), 0x44: ("cr0", 4), 0x48: ("cr2", 4), 0x4C: ("cr3", 4), 0x50: ("cr4", 4),
    0x54: ("msw", 2), 0x7C: ("epilogue marker", 4),
}

# -- EFLAGS ---------------------------------------------------------------------------------------
ARITH_FLAGS = CF | PF | AF | ZF | SF | OF
POPFD_FORBIDDEN = TF | IF | NT   # never popped: single-stepping, interrupts on, task return

# -- registers ------------------------------------------------------------------------------------
R32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
REG_NUM = {name: number for number, name in enumerate(R32)}
R16 = {r: r[1:] for r in R32}
R8 = {"eax": ("al", "ah"), "ecx": ("cl", "ch"), "edx": ("dl", "dh"), "ebx": ("bl", "bh")}
PTR = {1: "byte", 2: "word", 4: "dword", 8: "qword"}
CONDITIONS = ("o", "no", "b", "c", "nae", "nb", "nc", "ae", "z", "e", "nz", "ne", "be", "na", "a",
              "nbe", "s", "ns", "p", "pe", "np", "po", "l", "nge", "ge", "nl", "le", "ng", "g", "nle")
ALU_OPS = ("add", "or", "adc", "sbb", "and", "sub", "xor", "cmp")
LOCKABLE = {"add", "or", "adc", "sbb", "and", "sub", "xor", "inc", "dec", "neg", "not", "xchg",
            "cmpxchg", "xadd", "bts", "btr", "btc", "cmpxchg8b"}
SHIFTS = ("rol", "ror", "rcl", "rcr", "shl", "sal", "shr", "sar")
MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}
# ALU item kinds after which some flags are architecturally undefined
UNDEFINED_FLAGS = {"shift", "shiftd", "mul", "imul", "div", "bittest", "bitscan", "bcd"}

# Segment pushes and pops encoded by hand: Keystone gives `push ds`/`pop es` a 0x66 prefix.
PUSH_SEG = {"es": ".byte 0x06", "cs": ".byte 0x0e", "ss": ".byte 0x16", "ds": ".byte 0x1e",
            "fs": ".byte 0x0f, 0xa0", "gs": ".byte 0x0f, 0xa8"}
POP_SEG = {"es": ".byte 0x07", "ss": ".byte 0x17", "ds": ".byte 0x1f",
           "fs": ".byte 0x0f, 0xa1", "gs": ".byte 0x0f, 0xa9"}


def _descriptor(base: int, limit: int, access: int, flags: int) -> bytes:
    return struct.pack("<HHBBBB", limit & 0xFFFF, base & 0xFFFF, (base >> 16) & 0xFF, access,
                       ((limit >> 16) & 0xF) | (flags << 4), (base >> 24) & 0xFF)


def _gate(offset: int, selector: int, access: int) -> bytes:
    return struct.pack("<HHBBH", offset & 0xFFFF, selector, 0, access, offset >> 16)


# The guest GDT of programs that install one (selector -> descriptor).
GUEST_GDT = {
    0x00: bytes(8),
    0x08: _descriptor(0, 0xFFFFF, 0x9A, 0xC),          # flat 32-bit code
    0x10: _descriptor(0, 0xFFFFF, 0x92, 0xC),          # flat 32-bit data
    0x18: _descriptor(0, 0xFFFFF, 0xF2, 0xC),          # flat data, DPL 3
    0x20: _descriptor(0, 0xFFFF, 0x9A, 0x0),           # 16-bit code
    0x28: _descriptor(0, 0xFFFFF, 0x12, 0xC),          # data, not present
    0x30: _descriptor(DATA_BASE, 0xFFFF, 0x92, 0x4),   # byte-granular data at the data area
    0x38: _descriptor(0, 0xFFF, 0x96, 0xC),            # expand-down data (valid above 0xFFFFFF)
    0x40: _descriptor(LDT, 0xF, 0x82, 0x0),            # LDT
    0x48: _descriptor(TSS, 0x67, 0x89, 0x0),           # available 32-bit TSS
    0x50: _gate(0x1234, 0x08, 0x8C),                   # call gate
    0x58: _descriptor(0, 0xFFFFF, 0x9E, 0xC),          # conforming readable code
    0x60: _descriptor(0, 0xFFFFF, 0x98, 0xC),          # execute-only code
    0x68: _descriptor(0, 0xFFFFF, 0xF0, 0xC),          # read-only data, DPL 3
}
GUEST_GDT_LIMIT = 0x6F
GUEST_LDT = {0x00: bytes(8), 0x08: _descriptor(0, 0xFFFFF, 0x92, 0xC)}   # selector 0x0C / 0x0F
BOOT_SELECTORS = (0x00, 0x03, 0x08, 0x0B, 0x10, 0x13, 0x18, 0x1B, 0x20, 0x23, 0x28, 0x04, 0xFFF8)
GUEST_SELECTORS = (0x00, 0x08, 0x0B, 0x10, 0x13, 0x18, 0x1B, 0x20, 0x28, 0x30, 0x33, 0x38, 0x40,
                   0x48, 0x4B, 0x50, 0x58, 0x5B, 0x60, 0x68, 0x6B, 0x70, 0x04, 0x0C, 0x0F, 0xFFF8)

# Ring-3 programs (Options(ring3=True)): GUEST_GDT plus user code, a DPL-3 call gate and DPL-3
# variants of the byte-granular, expand-down and not-present data descriptors; the TSS descriptor
# grows to cover an I/O bitmap for ports 0-0x3FF. User data is the existing 0x18 (DPL 3).
USER_CS, USER_DS, CALL_GATE = 0x73, 0x1B, 0x7B
TSS_IO_BITMAP = 0x68             # offset of the I/O bitmap in the TSS (0x80 bytes, then 0xFF)
RING3_TSS_LIMIT = TSS_IO_BITMAP + 0x80      # the terminating 0xFF byte is inside the limit
RING3_GDT = dict(GUEST_GDT)
RING3_GDT.update({
    0x48: _descriptor(TSS, RING3_TSS_LIMIT, 0x89, 0x0),   # available 32-bit TSS with I/O bitmap
    0x70: _descriptor(0, 0xFFFFF, 0xFA, 0xC),            # flat 32-bit code, DPL 3 (USER_CS)
    0x78: bytes(8),                                      # call gate, DPL 3: written by the prologue
    0x80: _descriptor(DATA_BASE, 0xFFFF, 0xF2, 0x4),     # byte-granular data at the data area, DPL 3
    0x88: _descriptor(0, 0xFFF, 0xF6, 0xC),              # expand-down data, DPL 3
    0x90: _descriptor(0, 0xFFFFF, 0x72, 0xC),            # data, DPL 3, not present
})
RING3_GDT_LIMIT = 0x97
RING3_SELECTORS = GUEST_SELECTORS + (0x73, 0x78, 0x7B, 0x83, 0x8B, 0x90, 0x93, 0x98, 0x9B)
# ports a ring-3 program's I/O bitmap may open (each group at random); every other port below
# 0x400 stays closed (the PICs, the PIT, isa-debug-exit at 0xF4), and ports above are past it
IO_GROUPS = ((0x80,), (0x61,), (0x2F8,), tuple(range(0x3F8, 0x400)))
STRING_IO_BYTES = {"b": 1, "w": 2, "d": 4}     # ins/outs suffix -> ports each element touches
EXIT_VECTOR = 0x41               # int gate, DPL 3: the ring-3 epilogue returns to ring 0 through it
TIMER_VECTOR = 0x20              # IRQ0 after the PIC remap (0x27: the master's spurious IRQ7)
RING3_IDT_LIMIT = EXIT_VECTOR * 8 + 7
PIT_TICK_INSTRUCTIONS = 84       # guest instructions per PIT input tick on the virtual clock

# Exception vectors with handlers: vector -> (has error code, is a fault that resumes at RESUME)
HANDLED_VECTORS = {0: (False, True), 3: (False, False), 4: (False, False), 5: (False, True),
                   6: (False, True), 11: (True, True), 13: (True, True), 0x40: (False, False)}
IDT_LIMIT = 0x40 * 8 + 7


# -- programs -------------------------------------------------------------------------------------
@dataclass
class Item:
    """A self-contained run of lines: labels that other items target sit between items, so
    removing a whole item never leaves a branch into its middle."""
    kind: str
    lines: list
    removable: bool = True


@dataclass
class Program:
    seed: int
    length: int
    items: list
    info: dict = field(default_factory=dict)

    def source(self) -> str:
        header = [f"# fuzz program: seed {self.seed}, {self.length} body items"]
        header += [f"# {key}: {value}" for key, value in sorted(self.info.items())]
        lines = header + [line for item in self.items for line in item.lines]
        return "\n".join(lines) + "\n"

    def removable(self) -> list:
        return [index for index, item in enumerate(self.items) if item.removable]

    def without(self, indices) -> "Program":
        drop = set(indices)
        items = [item for index, item in enumerate(self.items) if index not in drop]
        return Program(self.seed, self.length, items, dict(self.info))

    def kinds(self) -> list:
        return [item.kind for item in self.items]


@dataclass
class Options:
    """What the generator may use. None: chosen at random per program."""
    exceptions: Optional[bool] = None     # IDT with handlers + deliberate faults and traps
    guest_gdt: Optional[bool] = None      # lgdt of GUEST_GDT, far jump, lldt/ltr
    weights: Optional[dict] = None        # class name -> weight (see DEFAULT_WEIGHTS)
    dump: bool = False                    # the epilogue also prints its state on COM1 (qemu.py)
    ring3: bool = False                   # the body runs in ring 3 (implies exceptions, guest_gdt)
    timer: bool = False                   # PIT IRQ0 at random points of the body (implies ring3)
    paging: bool = False                  # the program runs with paging on: 0-4 MiB identity-mapped
                                          # by 4 KiB pages (PAGE_DIRECTORY), user and writable


DEFAULT_WEIGHTS = {
    "alu": 30, "memory": 10, "stack": 8, "string": 5, "branch": 8, "call": 6, "indirect": 4,
    "sensitive": 12, "smc": 5, "loop": 3, "exception": 5,
}


@dataclass
class _Function:
    name: str
    far: bool
    nargs: int
    callee_pops: bool
    patch_end: Optional[str] = None


def generate(seed: int, length: int = 40, options: Optional[Options] = None) -> Program:
    """The program for `seed` (deterministic: the same arguments give the same source)."""
    return _Builder(seed, length, options or Options()).build()


def program_seed(seed: int, index: int) -> int:
    """Seed of the index-th program of a fuzzing run started with `seed`."""
    return (seed * 1_000_003 + index) & 0xFFFFFFFFFFFF


class _Builder:
    def __init__(self, seed: int, length: int, options: Options) -> None:
        self.seed = seed
        self.length = length
        r = self.r = random.Random(seed)
        self.base = r.choice(("ebx", "ebp"))
        self.exceptions = r.random() < 0.6 if options.exceptions is None else options.exceptions
        self.guest_gdt = r.random() < 0.5 if options.guest_gdt is None else options.guest_gdt
        # ring 3 needs the guest GDT (user segments, TSS) and the IDT (the way back to ring 0);
        # no random number is drawn for either option when both are off (old seeds unchanged)
        self.timer = options.timer
        self.ring3 = options.ring3 or options.timer
        if self.ring3:
            self.exceptions = self.guest_gdt = True
        if options.paging:    # the boot GDT is in the monitor's region, which these tables do not map
            self.guest_gdt = True
        self.gate_params = 0           # dwords the DPL-3 call gate copies (ring 3)
        self.divisor = None            # PIT channel 0 divisor (timer)
        self.passes = 1                # times the body runs (timer)
        self.weights = dict(DEFAULT_WEIGHTS)
        self.weights.update(options.weights or {})
        self.dump = options.dump
        self.paging = options.paging
        # QEMU splits a wide access to the UART into byte accesses (and asserts when one runs
        # past 0x3FF); the monitor does not: against QEMU only byte accesses are generated
        self.uart_widths = ("al",) if self.dump else ("al", "al", "ax", "eax")
        self.uart_suffixes = "b" if self.dump else "bwd"
        if not self.exceptions:
            self.weights["exception"] = 0
        self.reserved: set = set()
        self.top_level = False
        self.next_label = 0
        self.next_counter = 0
        self.pending: list = []        # [label, items still to pass] of forward branch targets
        self.functions: list = []

    # -- names, values, operands -------------------------------------------------------------
    def label(self, stem: str = "l") -> str:
        # lower case with an underscore: Keystone takes names like FP1, R8 or ST0 for registers
        self.next_label += 1
        return f"{stem}_{self.next_label}"

    def counter(self) -> int:
        self.next_counter += 1
        return SCRATCH + 4 * (self.next_counter % 16)

    def writable(self, r32: str) -> bool:
        return r32 not in ("esp", self.base) and r32 not in self.reserved

    def can_write(self, *regs: str) -> bool:
        return all(self.writable(r) for r in regs)

    def w32(self, exclude=()) -> Optional[str]:
        pool = [r for r in R32 if self.writable(r) and r not in exclude]
        return self.r.choice(pool) if pool else None

    def reg(self, size: int, writable: bool = True, exclude=()) -> Optional[str]:
        r = self.r
        if size == 1:
            pool = [x for x in R8 if (self.writable(x) or not writable) and x not in exclude]
            return r.choice(R8[r.choice(pool)]) if pool else None
        pool = [x for x in R32 if (self.writable(x) or not writable) and x not in exclude]
        if not pool:
            return None
        x = r.choice(pool)
        return x if size == 4 else R16[x]

    def imm(self, size: int) -> int:
        r = self.r
        if r.random() < 0.3:
            value = r.choice((0, 1, 2, 3, 7, 8, 15, 16, 31, 32, 33, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF,
                              0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE))
        else:
            value = r.getrandbits(8 * size)
        return value & MASK[size]

    def imm32_wide(self) -> int:
        """An immediate Keystone must encode as imm32 (so a patch at [label-4] hits it)."""
        return self.r.getrandbits(32) | 0x01000000

    def disp(self, span: int = 0x7000) -> int:
        r = self.r
        if r.random() < 0.15:       # straddle a page boundary
            return r.randint(-(span // 0x1000) + 1, span // 0x1000 - 1) * 0x1000 - r.randint(1, 7)
        return r.randint(-span, span - 8)

    def mem(self, size: int, write: bool = False, avoid=()) -> tuple:
        """(setup lines, operand) for a data-area (or top-of-stack) operand of `size` bytes.
        An index register is never one of `avoid` (registers the item writes before the access)."""
        r, base = self.r, self.base
        pre: list = []
        kinds = ["base_disp"] * 6 + ["base", "abs", "abs", "index", "index", "index_abs"]
        if self.top_level:
            kinds.append("stack")
        kind = r.choice(kinds)
        index = self.w32(exclude=avoid) if kind.startswith("index") else None
        if kind.startswith("index") and index is None:
            kind = "base_disp"
        if kind == "base_disp":
            address = f"[{base}{self.disp():+#x}]"
        elif kind == "base":
            address = f"[{base}]"
        elif kind == "abs":
            address = f"[{DATA_PTR + self.disp():#x}]"
        elif kind == "stack":
            address = f"[esp+{r.randrange(0, 0x40):#x}]"
        else:
            # a random byte as the index: a small value, and no flags changed on the way
            pre.append(f"movzx {index}, byte ptr [{base}{self.disp():+#x}]")
            scale = r.choice((1, 2, 4, 8))
            d = r.randint(-0x6000, 0x6000)
            if kind == "index":
                address = f"[{base}+{index}*{scale}{d:+#x}]"
            else:
                address = f"[{index}*{scale}+{DATA_PTR + d:#x}]"
        segment = ""
        if r.random() < 0.08:
            segment = r.choice(("es:", "ss:", "ds:") if write else ("es:", "ss:", "ds:", "cs:"))
        return pre, f"{PTR[size]} ptr {segment}{address}"

    def rm(self, size: int, writable: bool, mem_probability: float = 0.35) -> tuple:
        """(setup, operand, is_memory): a register or a memory operand."""
        if self.r.random() >= mem_probability:
            name = self.reg(size, writable)
            if name is not None:
                return [], name, False
        pre, operand = self.mem(size, write=writable)
        return pre, operand, True

    def maybe_lock(self, op: str, is_memory: bool) -> str:
        return "lock " if is_memory and op in LOCKABLE and self.r.random() < 0.15 else ""

    # -- item classes: each returns lines, or None when this instance is impossible -----------
    def alu(self) -> Optional[list]:
        r = self.r
        kind = r.choices(
            ("binop", "unary", "shift", "shiftd", "mul", "imul", "div", "bswap", "xchg", "cmpxchg",
             "xadd", "bittest", "bitscan", "setcc", "cmov", "lea", "extend", "convert", "flagop",
             "bcd", "xlat", "movimm", "nop"),
            (30, 6, 10, 3, 4, 4, 5, 2, 3, 3, 2, 5, 2, 4, 4, 4, 4, 2, 3, 2, 1, 3, 1))[0]
        lines = getattr(self, f"_alu_{kind}")()
        if lines is not None and kind in UNDEFINED_FLAGS:
            # These leave some flags undefined (SDM); the engine computes them lazily, so their
            # values depend on where its own blocks end, which translation changes. Define
            # every flag again (cmp esp, esp changes nothing else) before anything can see them.
            lines = lines + ["cmp esp, esp"]
        return lines

    def _alu_binop(self):
        r = self.r
        op = r.choice(ALU_OPS + ("test", "mov", "mov"))
        size = r.choice((1, 2, 4, 4, 4))
        writes = op not in ("cmp", "test")
        form = r.choice(("rr", "ri", "rm", "mr", "mi"))
        if op == "test" and form == "rm":
            form = "mr"
        if form in ("rr", "ri", "rm"):
            dst = self.reg(size, writes)
            if dst is None:
                return None
            if form == "rr":
                return [f"{op} {dst}, {self.reg(size, False)}"]
            if form == "ri":
                return [f"{op} {dst}, {self.imm(size):#x}"]
            pre, m = self.mem(size)
            return pre + [f"{op} {dst}, {m}"]
        pre, m = self.mem(size, write=writes)
        lock = self.maybe_lock(op, True)
        if form == "mr":
            return pre + [f"{lock}{op} {m}, {self.reg(size, False)}"]
        return pre + [f"{lock}{op} {m}, {self.imm(size):#x}"]

    def _alu_unary(self):
        op = self.r.choice(("inc", "dec", "neg", "not"))
        pre, operand, is_mem = self.rm(self.r.choice((1, 2, 4, 4)), True)
        return pre + [f"{self.maybe_lock(op, is_mem)}{op} {operand}"]

    def _alu_shift(self):
        r = self.r
        op = r.choice(SHIFTS)
        pre, operand, _ = self.rm(r.choice((1, 2, 4, 4)), True)
        count = r.choice(("1", "cl", "cl", str(r.randint(0, 33)), str(r.randint(0, 255))))
        return pre + [f"{op} {operand}, {count}"]

    def _alu_shiftd(self):
        r = self.r
        size = r.choice((2, 4))
        pre, operand, _ = self.rm(size, True)
        count = r.choice(("cl", str(r.randint(0, 33))))
        return pre + [f"{r.choice(('shld', 'shrd'))} {operand}, {self.reg(size, False)}, {count}"]

    def _alu_mul(self):
        if not self.can_write("eax", "edx"):
            return None
        pre, operand, _ = self.rm(self.r.choice((1, 2, 4, 4)), False)
        return pre + [f"{self.r.choice(('mul', 'imul'))} {operand}"]

    def _alu_imul(self):
        r = self.r
        size = r.choice((2, 4))
        dst = self.reg(size, True)
        if dst is None:
            return None
        pre, operand, _ = self.rm(size, False)
        if r.random() < 0.5:
            return pre + [f"imul {dst}, {operand}"]
        bound = 1 << (8 * size - 1)
        value = r.choice((r.randint(-128, 127), r.randint(-bound, bound - 1)))
        return pre + [f"imul {dst}, {operand}, {value}"]

    def _alu_div(self):
        """DIV/IDIV that cannot fault: divisor forced non-zero (and not -1 for IDIV), high half
        of the dividend below the divisor (DIV) or the sign extension of the low half (IDIV)."""
        r = self.r
        if not self.can_write("eax", "edx"):
            return None
        size = r.choice((1, 2, 4, 4))
        if r.random() < 0.3:
            pre, divisor = self.mem(size, write=True, avoid=("eax", "edx"))
        else:
            divisor = self.reg(size, True, exclude=("eax", "edx") if size > 1 else ("eax",))
            pre = []
            if divisor is None:
                return None
        if r.random() < 0.5:
            high = {1: "ah", 2: "dx", 4: "edx"}[size]
            lines = [f"or {divisor}, 1"]
            if r.random() < 0.25:
                lines.append(f"xor {high}, {high}" if size > 1 else "mov ah, 0")
            else:
                lines += [f"mov {high}, {divisor}", f"shr {high}, {r.randint(1, 8 * size - 1)}"]
            return pre + lines + [f"div {divisor}"]
        not_minus_one = {1: "0xfd", 2: "0xfffd", 4: "0xfffffffd"}[size]
        extend = {1: "cbw", 2: "cwd", 4: "cdq"}[size]
        return pre + [f"or {divisor}, 1", f"and {divisor}, {not_minus_one}", extend, f"idiv {divisor}"]

    def _alu_bswap(self):
        target = self.w32()
        return [f"bswap {target}"] if target else None

    def _alu_xchg(self):
        r = self.r
        size = r.choice((1, 2, 4, 4))
        a = self.reg(size, True)
        if a is None:
            return None
        if r.random() < 0.5:
            return [f"xchg {a}, {self.reg(size, True)}"]
        pre, m = self.mem(size, write=True)
        return pre + [f"xchg {m}, {a}"]

    def _alu_cmpxchg(self):
        r = self.r
        if not self.can_write("eax"):
            return None
        if r.random() < 0.2 and not self.dump:     # QEMU 7.2 computes CMPXCHG8B's flags wrongly
            if not self.can_write("edx"):
                return None
            pre, m = self.mem(8, write=True)
            return pre + [f"{self.maybe_lock('cmpxchg8b', True)}cmpxchg8b {m}"]
        size = r.choice((1, 2, 4, 4))
        pre, operand, is_mem = self.rm(size, True)
        return pre + [f"{self.maybe_lock('cmpxchg', is_mem)}cmpxchg {operand}, {self.reg(size, False)}"]

    def _alu_xadd(self):
        size = self.r.choice((1, 2, 4, 4))
        src = self.reg(size, True)
        if src is None:
            return None
        pre, operand, is_mem = self.rm(size, True)
        return pre + [f"{self.maybe_lock('xadd', is_mem)}xadd {operand}, {src}"]

    def _alu_bittest(self):
        r = self.r
        op = r.choice(("bt", "bts", "btr", "btc"))
        size = r.choice((2, 4))
        form = r.choice(("ri", "rr", "mi", "mr"))
        if form in ("ri", "rr"):
            dst = self.reg(size, op != "bt")
            if dst is None:
                return None
            src = str(r.randint(0, 40)) if form == "ri" else self.reg(size, False)
            return [f"{op} {dst}, {src}"]
        offset = self.reg(size, True)
        if offset is None:
            return None
        pre, m = self.mem(size, write=op != "bt", avoid=(self.reg32_of(offset),))
        lock = self.maybe_lock(op, True)
        if form == "mi":
            return pre + [f"{lock}{op} {m}, {r.randint(0, 40)}"]
        # a register bit offset addresses up to +-2^31 bits: bound it to +-32 Ki bits first
        return pre + [f"movsx {self.reg32_of(offset)}, word ptr [{self.base}{self.disp(0x5000):+#x}]",
                      f"{lock}{op} {m}, {offset}"]

    @staticmethod
    def reg32_of(name: str) -> str:
        if name in R32:
            return name
        return "e" + name if len(name) == 2 and name[1] in "xip" else name

    def _alu_bitscan(self):
        size = self.r.choice((2, 4))
        dst = self.reg(size, True)
        if dst is None:
            return None
        pre, src, _ = self.rm(size, False)
        return pre + [f"{self.r.choice(('bsf', 'bsr'))} {dst}, {src}"]

    def _alu_setcc(self):
        pre, operand, _ = self.rm(1, True)
        return pre + [f"set{self.r.choice(CONDITIONS)} {operand}"]

    def _alu_cmov(self):
        size = self.r.choice((2, 4, 4))
        dst = self.reg(size, True)
        if dst is None:
            return None
        pre, src, _ = self.rm(size, False)
        return pre + [f"cmov{self.r.choice(CONDITIONS)} {dst}, {src}"]

    def _alu_lea(self):
        r = self.r
        dst = self.reg(r.choice((2, 4, 4, 4)), True)
        if dst is None:
            return None
        parts = []
        if r.random() < 0.8:
            parts.append(r.choice(R32))
        if r.random() < 0.6:
            parts.append(f"{r.choice([x for x in R32 if x != 'esp'])}*{r.choice((1, 2, 4, 8))}")
        d = r.choice((r.randint(-128, 127), r.getrandbits(32) - (1 << 31)))
        if not parts or r.random() < 0.7:
            parts.append(f"{d:#x}" if d >= 0 else f"-{-d:#x}")
        address = "+".join(parts).replace("+-", "-")
        return [f"lea {dst}, [{address}]"]

    def _alu_extend(self):
        r = self.r
        op = r.choice(("movzx", "movsx"))
        dst_size = r.choice((2, 4, 4))
        src_size = 1 if dst_size == 2 else r.choice((1, 2))
        dst = self.reg(dst_size, True)
        if dst is None:
            return None
        pre, src, _ = self.rm(src_size, False, 0.4)
        return pre + [f"{op} {dst}, {src}"]

    def _alu_convert(self):
        op = self.r.choice(("cbw", "cwde", "cwd", "cdq"))
        needs = ("eax",) if op in ("cbw", "cwde") else ("edx",)
        return [op] if self.can_write(*needs) else None

    def _alu_flagop(self):
        op = self.r.choice(("clc", "stc", "cmc", "cld", "std", "sahf", "lahf"))
        if op == "lahf" and not self.can_write("eax"):
            return None
        return [op]

    def _alu_bcd(self):
        if not self.can_write("eax"):
            return None
        r = self.r
        op = r.choice(("daa", "das", "aaa", "aas", "aam", "aad"))
        if op == "aam":
            return [f"aam {r.randint(1, 255)}"]
        if op == "aad":
            return [f"aad {r.randint(0, 255)}"]
        return [op]

    def _alu_xlat(self):
        if self.base != "ebx" or not self.can_write("eax"):
            return None
        return ["xlatb"]

    def _alu_movimm(self):
        size = self.r.choice((1, 2, 4, 4))
        dst = self.reg(size, True)
        return [f"mov {dst}, {self.imm(size):#x}"] if dst else None

    def _alu_nop(self):
        return [self.r.choice(("nop", "nop dword ptr [eax+eax]", ".byte 0x66, 0x90", "lea esi, [esi]"
                               if self.writable("esi") else "nop", "xchg eax, eax"))]

    def memory(self) -> Optional[list]:
        r = self.r
        size = r.choice((1, 2, 4, 4, 4))
        kind = r.choice(("load", "store", "store_imm", "copy", "extend", "rmw"))
        if kind == "load":
            dst = self.reg(size, True)
            pre, m = self.mem(size)
            return pre + [f"mov {dst}, {m}"] if dst else None
        if kind == "store":
            pre, m = self.mem(size, write=True)
            return pre + [f"mov {m}, {self.reg(size, False)}"]
        if kind == "store_imm":
            pre, m = self.mem(size, write=True)
            return pre + [f"mov {m}, {self.imm(size):#x}"]
        if kind == "copy":
            tmp = self.reg(size, True)
            if tmp is None:
                return None
            pre1, src = self.mem(size)
            pre2, dst = self.mem(size, write=True)
            return pre1 + [f"mov {tmp}, {src}"] + pre2 + [f"mov {dst}, {tmp}"]
        if kind == "extend":
            return self._alu_extend()
        op = r.choice(ALU_OPS + ("inc", "dec", "neg", "not"))
        pre, m = self.mem(size, write=True)
        lock = self.maybe_lock(op, True)
        if op in ("inc", "dec", "neg", "not"):
            return pre + [f"{lock}{op} {m}"]
        source = self.reg(size, False) if r.random() < 0.5 else f"{self.imm(size):#x}"
        return pre + [f"{lock}{op} {m}, {source}"]

    def simple(self) -> list:
        """An item safe anywhere: loop and function bodies, sti and pushad blocks. No stack
        operations, no branches, no ESP-relative memory, no write to a reserved register."""
        saved, self.top_level = self.top_level, False
        try:
            while True:
                lines = self.alu() if self.r.random() < 0.75 else self.memory()
                if lines:
                    return lines
        finally:
            self.top_level = saved

    def popfd_masked(self) -> list:
        r = self.r
        # in ring 3 at IOPL 0 POPFD silently keeps IF (and IOPL): IF may be in the value
        allowed = 0xFFFFFFFF & ~(POPFD_FORBIDDEN & ~IF if self.ring3 else POPFD_FORBIDDEN)
        kind = r.choice(("imm", "xor", "reg"))
        if kind == "imm":
            return [f"push {(r.getrandbits(32) & allowed) | 2:#x}", "popfd"]
        if kind == "xor":
            return ["pushfd", f"xor dword ptr [esp], {r.getrandbits(32) & allowed:#x}", "popfd"]
        return [f"push {r.choice(R32)}", f"and dword ptr [esp], {allowed:#x}", "popfd"]

    def stack(self) -> Optional[list]:
        r = self.r
        kind = r.choice(("push", "push", "pop", "pop", "pushfd", "popfd", "pushad", "segment",
                         "adjust", "pushesp", "enter"))
        if kind == "push":
            form = r.choice(("reg", "imm", "mem", "reg16", "mem16"))
            if form == "reg":
                return [f"push {r.choice(R32)}"]
            if form == "imm":
                return [f"push {r.choice((r.randint(-128, 127), self.imm(4))):#x}".replace("0x-", "-0x")]
            if form == "reg16":
                return [f"push {R16[r.choice(R32)]}"]
            pre, m = self.mem(4 if form == "mem" else 2)
            return pre + [f"push {m}"]
        if kind == "pop":
            form = r.choice(("reg", "reg", "mem", "reg16"))
            if form == "mem":
                pre, m = self.mem(4, write=True)
                if "esp" in m:
                    return None     # pop [esp+x] uses ESP after the pop: legal but keep it simple
                return pre + [f"pop {m}"]
            dst = self.reg(2 if form == "reg16" else 4, True)
            return [f"pop {dst}"] if dst else None
        if kind == "pushfd":
            dst = self.w32()
            return ["pushfd", f"pop {dst}"] if dst and r.random() < 0.7 else ["pushfd"]
        if kind == "popfd":
            return self.popfd_masked()
        if kind == "pushad":
            lines = ["pushad"]
            for _ in range(r.randint(0, 2)):
                lines += self.simple()
            slots = {"eax": 28, "ecx": 24, "edx": 20, "ebx": 16, "ebp": 8, "esi": 4, "edi": 0}
            for _ in range(r.randint(0, 2)):
                name = r.choice([x for x in slots if x != self.base])
                lines.append(f"mov dword ptr [esp+{slots[name]}], {self.imm(4):#x}")
            return lines + ["popad"]
        if kind == "segment":
            pairs = [("ds", "es"), ("es", "ds"), ("ss", "ds"), ("ds", "fs"), ("cs", "gs"),
                     ("fs", "gs"), ("gs", "fs"), ("ss", "ss"), ("es", "es")]
            source, target = r.choice(pairs)
            if r.random() < 0.3 and source in ("ds", "es", "ss") and target in ("ds", "es", "ss"):
                return [f"push {source}", f"pop {target}"]     # Keystone: both 16-bit (0x66)
            return [PUSH_SEG[source], POP_SEG[target]]
        if kind == "adjust":
            amount = 4 * r.randint(1, 4)
            return [r.choice((f"sub esp, {amount}", f"add esp, {amount}", f"lea esp, [esp-{amount}]",
                              f"lea esp, [esp+{amount}]"))]
        if kind == "pushesp":
            dst = self.w32()
            return ["push esp", f"pop {dst}"] if dst else None
        if self.base != "ebx" or "ebp" in self.reserved:       # enter/leave: EBP is the frame
            return None
        self.reserved.add("ebp")
        try:
            # ring 3: a frame of at least 4 bytes, so that [ebp-4] is never below ESP
            lines = [f"enter {4 * r.randint(1 if self.ring3 else 0, 8)}, {r.randint(0, 1)}"]
            for _ in range(r.randint(0, 2)):
                lines += self.simple()
            lines.append(f"mov dword ptr [ebp-4], {self.reg(4, False)}")
            return lines + ["leave"]
        finally:
            self.reserved.discard("ebp")

    def string(self) -> Optional[list]:
        r = self.r
        if not self.can_write("esi", "edi", "eax"):
            return None
        op = r.choice(("movs", "stos", "lods", "cmps", "scas"))
        size = r.choice((1, 2, 4))
        suffix = "bwd"[(1, 2, 4).index(size)]
        rep = ""
        if self.can_write("ecx") and r.random() < 0.7:
            rep = r.choice(("rep ",) if op in ("movs", "stos", "lods") else ("repe ", "repne "))
        lines = []
        if r.random() < 0.6:
            lines.append(r.choice(("cld", "std")))
        lines += [f"lea esi, [{self.base}{r.randint(-0x6000, 0x6000):+#x}]",
                  f"lea edi, [{self.base}{r.randint(-0x6000, 0x6000):+#x}]"]
        if rep:
            lines.append(f"mov ecx, {r.randint(0, 24)}")
        if op == "movs" and size == 4:
            mnemonic = "movsd dword ptr es:[edi], dword ptr [esi]"     # bare movsd: Keystone rejects it
        elif op == "cmps" and size == 4:
            mnemonic = "cmpsd dword ptr [esi], dword ptr es:[edi]"
        else:
            mnemonic = op + suffix
        return lines + [rep + mnemonic]

    def branch(self) -> Optional[list]:
        r = self.r
        target = self.forward_label()
        kind = r.choice(("jcc", "jcc", "jcc", "jmp", "loop", "jecxz"))
        if kind == "jcc":
            return [f"j{r.choice(CONDITIONS)} {target}"]
        if kind == "jmp":
            return [f"jmp {target}"]
        if kind == "loop":
            if not self.can_write("ecx"):
                return None
            op = r.choice(("loop", "loope", "loopne"))
        else:
            op = r.choice(("jecxz", "jecxz", "jcxz"))
        # rel8 only: go through an adjacent trampoline so the real target may be far away
        trampoline, over = self.label(), self.label()
        return [f"{op} {trampoline}", f"jmp {over}", f"{trampoline}:", f"jmp {target}", f"{over}:"]

    def forward_label(self) -> str:
        name = self.label()
        self.pending.append([name, self.r.randint(0, 4)])
        return name

    def call(self) -> Optional[list]:
        r = self.r
        near0 = [f for f in self.functions if not f.far and f.nargs == 0]
        kinds = ["direct", "direct", "args", "reg", "table", "memslot", "geteip",
                 "geteip_data", "far", "far_emulated", "retf", "iretd", "farjmp"]
        if self.ring3:
            kinds += ["gate"]
        kind = r.choice(kinds)
        if kind == "direct":
            return [f"call {r.choice(near0).name}"]
        if kind == "args":
            function = r.choice([f for f in self.functions if not f.far])
            lines = [f"push {r.choice(R32)}" for _ in range(function.nargs)]
            lines.append(f"call {function.name}")
            if function.nargs and not function.callee_pops:
                lines.append(f"lea esp, [esp+{4 * function.nargs}]")
            return lines
        if kind == "reg":
            target = self.w32()
            return [f"mov {target}, {r.choice(near0).name}", f"call {target}"] if target else None
        if kind == "table":
            index = self.w32()
            if index is None:
                return None
            pre, m = self.mem(1)
            return pre + [f"movzx {index}, {m}", f"and {index}, 3", f"call dword ptr [ftab+{index}*4]"]
        if kind == "memslot":
            slot = f"dword ptr [{self.base}{self.disp():+#x}]"
            return [f"mov {slot}, {r.choice(near0).name}", f"call {slot}"]
        if kind in ("geteip", "geteip_data"):
            target, after = self.w32(), self.label()
            if target is None:
                return None
            junk = [".byte 0x0f, 0x0b, 0xcc, 0xf4"] if kind == "geteip_data" else []
            return [f"call {after}"] + junk + [f"{after}:", f"pop {target}"]
        fars = [f for f in self.functions if f.far]
        if kind == "far":
            function = r.choice(fars)
            lines = [f"push {r.choice(R32)}" for _ in range(function.nargs)]
            lines += [".byte 0x9a", f".long {function.name}", f".short {self.far_selector():#04x}"]   # call sel:function
            if function.nargs and not function.callee_pops:
                lines.append(f"lea esp, [esp+{4 * function.nargs}]")
            return lines
        if kind == "far_emulated":
            function = r.choice([f for f in fars if f.nargs == 0] or [None])
            return [PUSH_SEG["cs"], f"call {function.name}"] if function else None
        if kind == "gate":
            return self.gate_call()
        target, scratch = self.label(), self.w32()
        if kind == "farjmp":
            return [".byte 0xea", f".long {target}", f".short {self.far_selector():#04x}", f"{target}:"]   # jmp sel:target
        if scratch is None:
            return None
        if kind == "retf":
            return [PUSH_SEG["cs"], f"mov {scratch}, {target}", f"push {scratch}", "retf", f"{target}:"]
        return ["pushfd", PUSH_SEG["cs"], f"mov {scratch}, {target}", f"push {scratch}", "iretd",
                f"{target}:"]

    def far_selector(self) -> int:
        """The selector of a far call or jump to code of the current privilege: 0x08 in ring 0;
        in ring 3 the user code segment (RPL 3 or 0: CS gets RPL 3) or the conforming DPL-0
        code segment 0x58 (CPL stays 3, CS gets RPL 3)."""
        if not self.ring3:
            return 0x08
        return self.r.choice((USER_CS, USER_CS, USER_CS & ~3, 0x58, 0x5B))

    def gate_call(self) -> list:
        """Ring 3 to ring 0 and back through the DPL-3 call gate (arguments copied to the ring-0
        stack, retf n releases them on both stacks). The gate ignores the offset."""
        r = self.r
        lines = [f"push {r.choice(R32)}" for _ in range(self.gate_params)]
        return lines + [".byte 0x9a", f".long {r.getrandbits(32):#x}", f".short {r.choice((CALL_GATE, CALL_GATE & ~3)):#x}"]

    def indirect(self) -> Optional[list]:
        r = self.r
        kind = r.choice(("reg", "mem", "pushret", "switch", "switch"))
        if kind == "switch":
            return self.switch()
        target = self.forward_label()
        if kind == "mem":
            slot = f"dword ptr [{self.base}{self.disp():+#x}]"
            return [f"mov {slot}, {target}", f"jmp {slot}"]
        scratch = self.w32()
        if scratch is None:
            return None
        if kind == "reg":
            return [f"mov {scratch}, {target}", f"jmp {scratch}"]
        return [f"mov {scratch}, {target}", f"push {scratch}", "ret"]

    def switch(self) -> Optional[list]:
        """A jump table in the code stream indexed by a data-dependent value."""
        r = self.r
        index = self.w32()
        if index is None:
            return None
        stem = self.label("sw")
        cases = r.randint(2, 4)
        size = 4 if cases > 2 else 2
        pre, m = self.mem(1)
        lines = pre + [f"movzx {index}, {m}", f"and {index}, {size - 1}",
                       f"jmp dword ptr [{stem}_t+{index}*4]",
                       f"{stem}_t:", ".long " + ", ".join(f"{stem}_{i % cases}" for i in range(size))]
        for case in range(cases):
            lines.append(f"{stem}_{case}:")
            lines += self.simple()
            if case != cases - 1:
                lines.append(f"jmp {stem}_e")
        return lines + [f"{stem}_e:"]

    def selector(self) -> int:
        choices = RING3_SELECTORS if self.ring3 else GUEST_SELECTORS if self.guest_gdt else BOOT_SELECTORS
        if self.dump:
            # with no LDT loaded QEMU's LDTR keeps its reset limit (0xFFFF): an LDT selector then
            # reads a "descriptor" from the real-mode IVT; the monitor's LDTR limit is 0
            choices = [selector for selector in choices if not selector & 4]
            if not self.guest_gdt and not self.ring3:
                # the monitor's boot GDT is read-only to the engine, so its 16-bit entries carry
                # the accessed bit QEMU's copy lacks (vmm/boot.py): lar would show the difference
                choices = [selector for selector in choices if selector & ~3 not in (0x18, 0x20)]
        return self.r.choice(choices)

    def sensitive(self) -> Optional[list]:
        r = self.r
        if self.ring3:
            # sensitive but unprivileged at CPL 3 (the privileged ones are exception items);
            # I/O may or may not be allowed by the TSS bitmap: such items resume like faults
            kinds = ["pushfd", "popfd", "sgdt", "smsw", "readseg", "writeseg", "lar", "verify",
                     "sldt", "io", "io", "string_io", "arpl", "gdt_write", "expand_down"]
        else:
            kinds = ["pushfd", "popfd", "cli", "sti", "sgdt", "smsw", "readseg", "writeseg", "lar",
                     "verify", "sldt", "readcr", "writecr", "cr0", "io", "io", "string_io", "arpl",
                     "invlpg", "reload_tables"]
            if self.guest_gdt:
                kinds += ["lldt", "gdt_write", "expand_down"]
        kind = r.choice(kinds)
        if self.ring3 and kind in ("io", "string_io"):
            lines = self.sensitive_kind(kind)
            if lines is None:
                return None
            resume = self.label("resume")
            return [f"mov dword ptr [{RESUME:#x}], {resume}"] + lines + [f"{resume}:"]
        return self.sensitive_kind(kind)

    def sensitive_kind(self, kind: str) -> Optional[list]:
        r = self.r
        base = self.base
        if kind == "pushfd":
            dst = self.w32()
            return ["pushfd", f"pop {dst}"] if dst else None
        if kind == "popfd":
            return self.popfd_masked()
        if kind == "cli":
            return ["cli"]
        if kind == "sti":
            lines = ["sti"]
            for _ in range(r.randint(0, 3)):
                dst = self.w32()
                lines += ["pushfd", f"pop {dst}"] if dst and r.random() < 0.3 else self.simple()
            return lines + ["cli"]
        if kind == "sgdt":
            op = r.choice(("sgdt", "sidt"))
            if self.dump and not (self.guest_gdt if op == "sgdt" else self.exceptions):
                return None     # the firmware's tables: at different addresses under QEMU
            d = self.disp()
            if r.random() < 0.5:
                return [f"{op} [{base}{d:+#x}]"]           # Keystone adds 0x66: 16-bit operand size
            modrm = 0x80 | (0 if op == "sgdt" else 8) | REG_NUM[base]      # [base+disp32]
            return [f".byte 0x0f, 0x01, {modrm:#x}", f".long {d & 0xFFFFFFFF:#x}"]
        if kind == "smsw":
            if r.random() < 0.3:
                pre, m = self.mem(2, write=True)
                return pre + [f"smsw {m}"]
            dst = self.reg(2 if self.dump else r.choice((2, 4)), True)   # r32: high half undefined
            return [f"smsw {dst}"] if dst else None
        if kind == "readseg":
            segment = r.choice(("cs", "ds", "es", "fs", "gs", "ss"))
            if r.random() < 0.3:
                pre, m = self.mem(2, write=True)
                return pre + [f"mov {m}, {segment}"]
            dst = self.reg(r.choice((2, 4)), True)
            return [f"mov {dst}, {segment}"] if dst else None
        if kind == "writeseg":
            scratch = self.reg(2, True)
            if scratch is None:
                return None
            flat = (0x10, 0x18) if self.guest_gdt else (0x10,)
            segment = r.choice(("ds", "es", "fs", "gs", "ss"))
            if self.ring3:
                # DPL-3 data (RPL 3 or 0), DPL-3 readable code, conforming code (no privilege
                # check), null; DS/ES stay writable and flat, SS needs RPL 3
                value = {"ss": USER_DS, "ds": r.choice((USER_DS, 0x18)), "es": r.choice((USER_DS, 0x18))}.get(
                    segment) or r.choice((USER_DS, 0x18, 0, 3, 0x6B, 0x68, USER_CS, 0x58, 0x5B, 0x83, 0x8B))
            elif segment == "ss":
                value = 0x10
            elif segment in ("ds", "es"):
                value = r.choice(flat)
            else:
                value = r.choice(flat + ((0, 3, 0x30, 0x38, 0x1B, 0x6B) if self.guest_gdt else (0, 3, 0x20, 0x18)))
            lines = [f"mov {scratch}, {value:#x}", f"mov {segment}, {scratch}"]
            if segment == "ss":
                # the MOV SS shadow; ring 3 programs never touch memory below ESP
                lines.append(self.r.choice(("nop", "inc dword ptr [esp]" if self.ring3 else "inc dword ptr [esp-4]")))
            return lines
        if kind == "lar":
            op = r.choice(("lar", "lsl"))
            size = r.choice((2, 4))
            dst = self.reg(size, True)
            source = self.reg(size, True, exclude=(self.reg32_of(dst),) if dst else ())
            if dst is None or source is None:
                return None
            lines = [f"mov {self.reg32_of(source)}, {self.selector() | (r.getrandbits(16) << 16):#x}"]
            if r.random() < 0.3:
                slot = f"[{base}{self.disp():+#x}]"
                lines.append(f"mov word ptr {slot}, {R16[self.reg32_of(source)]}")
                operand = f"word ptr {slot}" if size == 2 else (f"dword ptr {slot}" if op == "lsl" else None)
                if operand is None:
                    operand = source
            else:
                operand = source
            return lines + [f"{op} {dst}, {operand}"]
        if kind == "verify":
            source = self.reg(2, True)
            if source is None:
                return None
            op = r.choice(("verr", "verw"))
            lines = [f"mov {source}, {self.selector():#x}"]
            if r.random() < 0.3:
                slot = f"word ptr [{base}{self.disp():+#x}]"
                return lines + [f"mov {slot}, {source}", f"{op} {slot}"]
            return lines + [f"{op} {source}"]
        if kind == "sldt":
            op = r.choice(("sldt", "str"))
            if r.random() < 0.3:
                pre, m = self.mem(2, write=True)
                return pre + [f"{op} {m}"]
            dst = self.reg(r.choice((2, 4)), True)
            return [f"{op} {dst}"] if dst else None
        if kind == "readcr":
            dst = self.w32()
            return [f"mov {dst}, cr{r.choice((0, 2, 3, 4))}"] if dst else None
        if kind == "writecr":
            source = r.choice(R32)
            number = r.choice((2, 2, 3))
            if number == 3 and self.paging:      # CR3 reloads its own directory: a TLB flush
                scratch = self.w32()
                return [f"mov {scratch}, {PAGE_DIRECTORY:#x}", f"mov cr3, {scratch}"] if scratch else None
            return [f"mov cr{number}, {source}"]
        if kind == "cr0":
            scratch = self.w32()
            if scratch is None:
                return None
            choice = r.choice(("toggle", "clts", "lmsw"))
            if choice == "clts":
                return ["clts"]
            if choice == "lmsw":
                small = self.reg(2, True)
                return [f"mov {small}, {(r.getrandbits(16) & ~0x4) | 1:#x}", f"lmsw {small}"]
            bit = r.choice((0x2, 0x8, 0x20, 0x10000, 0x40000))
            return [f"mov {scratch}, cr0", f"xor {scratch}, {bit:#x}", f"mov cr0, {scratch}"]
        if kind == "io":
            if not self.can_write("eax", "edx"):
                return None
            choice = r.choice(("putc", "scratch", "lsr", "rbr", "unassigned", "post"))
            if choice == "putc":
                return ["mov dx, 0x3f8", f"mov al, {r.randint(0x20, 0x7E):#x}", "out dx, al"]
            if choice == "scratch":
                width = r.choice(self.uart_widths)
                return ["mov dx, 0x3ff", f"mov eax, {self.imm(4):#x}", f"out dx, {width}", f"in {width}, dx"]
            if choice == "lsr":
                return ["mov dx, 0x3fd", "in al, dx"]
            if choice == "rbr":
                return ["mov dx, 0x3f8", f"in {r.choice(self.uart_widths)}, dx"]
            if choice == "unassigned":
                ports = (0x2F8, 0x500) if self.dump else (0x80, 0x61, 0x2F8, 0x500)   # QEMU has 0x61, 0x80
                return [f"mov dx, {r.choice(ports):#x}", f"in {r.choice(('al', 'ax', 'eax'))}, dx"]
            return [f"out 0x80, {r.choice(('al', 'ax', 'eax'))}"]
        if kind == "string_io":
            if not self.can_write("esi", "edi", "ecx", "edx", "eax"):
                return None
            lines = [r.choice(("cld", "std")) if r.random() < 0.5 else "cld"]
            out = r.random() < 0.5
            in_ports = (0x3FD, 0x3F8) if self.dump else (0x3FD, 0x3F8, 0x80)
            choice = None
            if self.ring3:
                # only accesses the bitmap opens, every port of the width: a refused string
                # access is where the reference is wrong (the engine's INS stores before its I/O
                # hook can refuse; a rep with ECX = 0 reaches no hook), checked against QEMU by
                # the string_io sample instead
                pairs = [(port, suffix) for port in ((0x3F8,) if out else in_ports) for suffix in self.uart_suffixes
                         if all(p in self.open_ports for p in range(port, port + STRING_IO_BYTES[suffix]))]
                if not pairs:
                    return None
                choice = r.choice(pairs)
            if out:
                lines += ["mov dx, 0x3f8", f"lea esi, [{base}{r.randint(-0x6000, 0x6000):+#x}]",
                          f"mov ecx, {r.randint(0, 8)}", f"rep outs{choice[1] if choice else r.choice(self.uart_suffixes)}"]
            else:
                lines += [f"mov dx, {choice[0] if choice else r.choice(in_ports):#x}",
                          f"lea edi, [{base}{r.randint(-0x6000, 0x6000):+#x}]",
                          f"mov ecx, {r.randint(0, 8)}", f"rep ins{choice[1] if choice else r.choice(self.uart_suffixes)}"]
            return lines
        if kind == "arpl":
            pre, operand, _ = self.rm(2, True)
            return pre + [f"arpl {operand}, {self.reg(2, False)}"]
        if kind == "invlpg":
            pre, m = self.mem(1)
            return pre + [f"invlpg {m}"]
        if kind == "reload_tables":
            lines = []
            if self.guest_gdt:
                lines += [".byte 0x0f, 0x01, 0x15", f".long {GDT_PTR:#x}"]     # lgdt [GDT_PTR]
            if self.exceptions:
                lines += [".byte 0x0f, 0x01, 0x1d", f".long {IDT_PTR:#x}"]     # lidt [IDT_PTR]
            return lines or None
        if kind == "lldt":
            scratch = self.reg(2, True)
            return [f"mov {scratch}, {r.choice((0x40, 0x40, 0)):#x}", f"lldt {scratch}"] if scratch else None
        if kind == "gdt_write":
            # change the limit of descriptor 0x30 (byte-granular, >= 0x1000; its DPL-3 twin 0x80
            # in ring 3) and look at it
            dst, source = self.reg(4, True), self.reg(4, True)
            if dst is None or source is None or dst == source:
                return None
            slot = 0x80 if self.ring3 else 0x30
            return [f"mov word ptr [{GDT + slot:#x}], {r.randint(0x1000, 0xFFFF):#x}",
                    f"mov {source}, {slot | (3 if self.ring3 else 0):#x}", f"lsl {dst}, {source}"]
        # expand-down segment 0x38: offsets above its limit (0xFFF) are valid
        scratch, dst = self.reg(2, True), self.reg(4, True)
        if scratch is None or dst is None or self.reg32_of(scratch) == dst:
            return None
        segment = r.choice(("fs", "gs"))
        return [f"mov {scratch}, {0x8B if self.ring3 else 0x38:#x}", f"mov {segment}, {scratch}",
                f"mov {dst}, dword ptr {segment}:[{DATA_PTR + self.disp():#x}]"]

    def smc(self) -> Optional[list]:
        r = self.r
        kind = r.choice(("forward", "forward", "loop", "loop", "function", "opcode", "jcc_flip",
                         "string", "codedata"))
        target = self.w32()
        if target is None:
            return None
        op = r.choice(("mov", "add", "sub", "xor", "or", "and"))
        site, end = self.label("patch"), self.label("patch")
        patched = [f"{site}:", f"{op} {target}, {self.imm32_wide():#x}", f"{end}:"]

        def new_value() -> str:
            if r.random() < 0.3:
                return r.choice(R32)
            return f"{r.getrandbits(32):#x}"

        if kind == "forward":
            if r.random() < 0.25:
                lines = [f"mov byte ptr [{end}-{r.randint(1, 4)}], {r.getrandbits(8):#x}"]
            else:
                lines = [f"mov dword ptr [{end}-4], {new_value()}"]
            for _ in range(r.randint(0, 2)):
                lines += self.simple()
            # Always a jump between the store and the patched instruction: the rule x86 promises
            # (and the monitor implements either way). Without it, direct execution on Unicorn
            # 2.1.1 can run the stale bytes after an earlier store into the same code page.
            lines.append(f"jmp {site}")
            return lines + patched
        if kind == "loop":
            counter = self.counter()
            lines = [f"mov dword ptr [{counter:#x}], {r.randint(2, 4)}", *patched]
            for _ in range(r.randint(0, 2)):
                lines += self.simple()
            loop = self.label()
            return lines[:1] + [f"{loop}:"] + lines[1:] + [
                f"mov dword ptr [{end}-4], {new_value()}", f"dec dword ptr [{counter:#x}]", f"jnz {loop}"]
        if kind == "function":
            candidates = [f for f in self.functions if f.patch_end and not f.far and f.nargs == 0]
            if not candidates:
                return None
            function = r.choice(candidates)
            lines = [f"call {function.name}"] if r.random() < 0.5 else []
            return lines + [f"mov dword ptr [{function.patch_end}-4], {new_value()}", f"call {function.name}"]
        if kind == "opcode":
            if not self.can_write("eax", "edx"):
                return None
            number = REG_NUM[target]
            choices = [0x40 + number, 0x48 + number, 0x90, 0xF5, 0xF8, 0xF9, 0xFC, 0xFD, 0x9E, 0x9F,
                       0x98, 0x99, 0x90 + number]
            original, new = r.sample(choices, 2)
            lines = [f"mov byte ptr [{site}], {new:#x}", f"jmp {site}"]     # see "forward"
            return lines + [f"{site}:", f".byte {original:#x}"]
        if kind == "jcc_flip":
            other = self.w32()
            lines = [f"mov byte ptr [{site}], {0x70 + r.randrange(16):#x}", f"jmp {site}"]   # see "forward"
            # jcc +2 over `inc target; dec other` (one byte each), encoded by hand
            return lines + [f"{site}:", f".byte {0x70 + r.randrange(16):#x}, 0x02",
                            f".byte {0x40 + REG_NUM[target]:#x}", f".byte {0x48 + REG_NUM[other]:#x}"]
        if kind == "string":
            if not self.can_write("esi", "edi", "ecx", "eax") or target in ("esi", "edi", "ecx"):
                return None
            lines = ["cld", f"lea esi, [{self.base}{self.disp():+#x}]", f"mov edi, {end}-4"]
            lines += r.choice((["mov ecx, 4", "rep movsb"], ["movsd dword ptr es:[edi], dword ptr [esi]"],
                               [f"mov eax, {r.getrandbits(32):#x}", "stosd"]))
            lines.append(f"jmp {site}")                                               # see "forward"
            return lines + patched
        data, over = self.label("data"), self.label()
        other = self.w32()
        return [f"jmp {over}", f"{data}:", f".long {r.getrandbits(32):#x}", f"{over}:",
                f"mov dword ptr [{data}], {target}", f"add {other}, dword ptr [{data}]"]

    def loop(self) -> Optional[list]:
        r = self.r
        kind = r.choice(("memory", "loop", "dec"))
        top = self.label()
        count = r.randint(1, 5)
        if kind == "memory":
            counter = self.counter()
            body = [line for _ in range(r.randint(1, 3)) for line in self.simple()]
            return [f"mov dword ptr [{counter:#x}], {count}", f"{top}:", *body,
                    f"dec dword ptr [{counter:#x}]", f"jnz {top}"]
        register = "ecx" if kind == "loop" else self.w32()
        if register is None or not self.writable(register):
            return None
        self.reserved.add(register)
        try:
            body = [line for _ in range(r.randint(1, 3)) for line in self.simple()]
        finally:
            self.reserved.discard(register)
        if kind == "dec":
            return [f"mov {register}, {count}", f"{top}:", *body, f"dec {register}", f"jnz {top}"]
        back, out = self.label(), self.label()
        op = r.choice(("loop", "loop", "loope", "loopne"))
        return [f"mov ecx, {count}", f"{top}:", *body, f"{op} {back}", f"jmp {out}", f"{back}:",
                f"jmp {top}", f"{out}:"]

    def exception(self) -> Optional[list]:
        """A deliberate fault (the handler resumes at the label stored in RESUME) or trap."""
        r = self.r
        resume = self.label("resume")
        lines = [f"mov dword ptr [{RESUME:#x}], {resume}"]
        kinds = ["div0", "div0", "overflow", "aam0", "ud2", "badsel", "ss_null", "cs_write",
                 "farjmp_bad", "int3", "int", "into", "bound"]
        if self.guest_gdt:
            kinds += ["not_present", "limit"]
        if self.ring3:
            kinds += ["privileged"] * 4 + ["io_closed", "far_down"]
        kind = r.choice(kinds)
        if kind == "div0":
            if not self.can_write("eax", "edx"):
                return None
            size = r.choice((1, 2, 4))
            op = r.choice(("div", "idiv"))
            if r.random() < 0.4:
                pre, m = self.mem(size, write=True)
                lines += pre + [f"mov {m}, 0", f"{op} {m}"]
            else:
                divisor = self.reg(size, True, exclude=("eax", "edx"))
                if divisor is None:
                    return None
                lines += [f"mov {divisor}, 0", f"{op} {divisor}"]
        elif kind == "overflow":
            if not self.can_write("eax", "edx"):
                return None
            divisor = self.reg(4, True, exclude=("eax", "edx"))
            if divisor is None:
                return None
            if r.random() < 0.5:
                lines += ["mov eax, 0x80000000", "cdq", f"mov {divisor}, 0xffffffff", f"idiv {divisor}"]
            else:
                high = r.randint(1, 0xFFFFFFFF)
                lines += [f"mov edx, {high:#x}", f"mov {divisor}, {r.randint(1, high):#x}", f"div {divisor}"]
        elif kind == "aam0":
            lines.append(".byte 0xd4, 0x00")
        elif kind == "ud2":
            lines.append("ud2")
        elif kind in ("badsel", "not_present", "ss_null"):
            scratch = self.reg(2, True)
            if scratch is None:
                return None
            if kind == "ss_null":
                lines += [f"mov {scratch}, {r.choice((0, 3, 0x08)):#x}", f"mov ss, {scratch}"]
            elif kind == "not_present":
                # ring 3: 0x28 (DPL 0) fails the privilege check first: #GP, not #NP
                value = r.choice((0x28, 0x90, 0x93)) if self.ring3 else 0x28
                lines += [f"mov {scratch}, {value:#x}", f"mov {r.choice(('ds', 'es', 'fs', 'gs'))}, {scratch}"]
            else:
                # ring 3 adds DPL-0 data (RPL 3 or 0), the call gate and a TSS: #GP
                value = r.choice((0x1008, 0x2003, 0xFFF8, 0x7F0) + ((0x10, 0x13, 0x30, 0x7B, 0x48) if self.ring3 else ()))
                lines += [f"mov {scratch}, {value:#x}", f"mov {r.choice(('ds', 'es', 'fs', 'gs'))}, {scratch}"]
        elif kind == "cs_write":
            lines.append(f"mov dword ptr cs:[{self.base}{self.disp():+#x}], {r.choice(R32)}")
        elif kind == "farjmp_bad":
            lines += [".byte 0xea", f".long {resume}", f".short {r.choice((0x10, 0x00, 0x1008)):#x}"]
        elif kind == "int3":
            lines.append(r.choice(("int3", "int 3")))
        elif kind == "int":
            lines.append("int 0x40")
        elif kind == "into":
            if r.random() < 0.5:
                lines += ["mov al, 0x7f" if self.can_write("eax") else "nop",
                          "add al, 1" if self.can_write("eax") else "nop"]
            lines.append("into")
        elif kind == "bound":
            index = self.reg(4, True)
            if index is None:
                return None
            slot = self.disp()
            low = r.randint(-100, 100)
            lines += [f"mov dword ptr [{self.base}{slot:+#x}], {low & 0xFFFFFFFF:#x}",
                      f"mov dword ptr [{self.base}{slot + 4:+#x}], {(low + r.randint(0, 50)) & 0xFFFFFFFF:#x}",
                      f"movsx {index}, byte ptr [{self.base}{self.disp():+#x}]",
                      f"bound {index}, qword ptr [{self.base}{slot:+#x}]"]
        elif kind == "privileged":
            lines += self.privileged()
        elif kind == "far_down":
            # a far transfer from ring 3 to DPL-0 code (or a DPL-0 call gate, a data segment):
            # #GP(selector) before anything changes; what a refused retf/iretd leaves on the
            # stack is released after the resume label
            selector = r.choice((0x08, 0x0B, 0x10, 0x50, 0x53, 0x63))
            how = r.choice(("call", "jmp", "retf", "iretd"))
            if how in ("call", "jmp"):
                return lines + [f".byte {0x9a if how == 'call' else 0xea:#x}", f".long {resume}",
                                f".short {selector:#x}", f"{resume}:"]
            if selector in (0x50, 0x53):
                selector = 0x08
            pushed = 8 if how == "retf" else 12
            lines += (["pushfd"] if how == "iretd" else []) + [f"push {selector:#x}", ".byte 0x68", f".long {resume}", how]
            return lines + [f"{resume}:", f"lea esp, [esp+{pushed}]"]
        elif kind == "io_closed":
            # a port the ring-3 I/O bitmap never opens (the PICs, the PIT, isa-debug-exit), a
            # word or dword at 0x3FF (its last bits reach the bitmap's closing 0xFF byte) or a
            # port past the bitmap: #GP(0), nothing reaches the device
            port = r.choice((0x20, 0x21, 0x40, 0x43, 0xA1, 0xF4, 0x3FF, 0x500, 0xFFFF))
            width = r.choice(("ax", "eax") if port == 0x3FF else ("al", "ax", "eax"))
            write = r.random() < 0.5
            if port < 0x100 and r.random() < 0.5:
                lines.append(f"out {port:#x}, {width}" if write else f"in {width}, {port:#x}")
            else:
                if not self.can_write("edx"):
                    return None
                lines += [f"mov dx, {port:#x}", f"out dx, {width}" if write else f"in {width}, dx"]
        else:   # limit: offset past the 64 KiB byte-granular segment 0x30 (DPL-3 0x80 in ring 3)
            scratch, dst = self.reg(2, True), self.reg(4, True)
            if scratch is None or dst is None or self.reg32_of(scratch) == dst:
                return None
            segment = r.choice(("fs", "gs", "es"))
            lines += [f"mov {scratch}, {0x83 if self.ring3 else 0x30:#x}", f"mov {segment}, {scratch}",
                      f"mov {dst}, dword ptr {segment}:[{r.randint(0x10000, 0x17FF0):#x}]"]
            return lines + [f"{resume}:", f"mov {scratch}, {USER_DS if self.ring3 else 0x10:#x}",
                            f"mov {segment}, {scratch}"]
        return lines + [f"{resume}:"]

    def privileged(self) -> list:
        """An instruction that faults at CPL 3 (IOPL 0): #GP(0), or #UD for syscall."""
        r = self.r
        kind = r.choice(("cli", "sti", "hlt", "readcr", "writecr", "clts", "lmsw", "invlpg", "lgdt",
                         "lidt", "lldt", "ltr", "cache", "msr", "rdpmc", "sysenter"))
        if kind in ("cli", "sti", "hlt", "clts"):
            return [kind]
        if kind == "readcr":
            return [f"mov {self.w32() or 'eax'}, cr{r.choice((0, 2, 3, 4))}"]
        if kind == "writecr":
            return [f"mov cr{r.choice((0, 2, 3, 4))}, {r.choice(R32)}"]
        if kind in ("lmsw", "lldt", "ltr"):
            return [f"{kind} {R16[r.choice(R32)]}"]
        if kind == "invlpg":
            pre, m = self.mem(1)
            return pre + [f"invlpg {m}"]
        if kind == "lgdt":
            return [".byte 0x0f, 0x01, 0x15", f".long {GDT_PTR:#x}"]
        if kind == "lidt":
            return [".byte 0x0f, 0x01, 0x1d", f".long {IDT_PTR:#x}"]
        encodings = {"cache": ("0x09", "0x08"),          # wbinvd, invd
                     "msr": ("0x32", "0x30"),            # rdmsr, wrmsr
                     "rdpmc": ("0x33",),
                     "sysenter": ("0x34", "0x35", "0x05")}  # sysenter, sysexit: #GP(0), syscall: #UD
        return [f".byte 0x0f, {r.choice(encodings[kind])}"]

    # -- program structure ------------------------------------------------------------------
    def prologue(self) -> list:
        r = self.r
        items = [Item("start", ["cli", f"mov esp, {STACK_TOP:#x}"], removable=False)]
        if self.paging:
            fill = self.label("page_table")
            items.append(Item("paging", [
                "cld", f"mov edi, {PAGE_TABLE:#x}", f"mov eax, {PAGE_FLAGS:#x}", "mov ecx, 1024", f"{fill}:",
                "stosd", "add eax, 0x1000", "dec ecx", f"jnz {fill}",
                f"mov dword ptr [{PAGE_DIRECTORY:#x}], {PAGE_TABLE | PAGE_FLAGS:#x}",
                f"mov eax, {PAGE_DIRECTORY:#x}", "mov cr3, eax",
                "mov eax, cr0", "or eax, 0x80000000", "mov cr0, eax"], removable=False))
        seed = r.getrandbits(32) | 1
        loop = self.label("fill")
        items.append(Item("fill", [
            "cld", f"mov edi, {DATA_BASE:#x}", f"mov ecx, {(DATA_SIZE + STACK_SIZE) // 8:#x}",
            f"mov eax, {seed:#x}", f"{loop}:",
            *[line for _ in range(2) for line in (
                "mov edx, eax", "shl edx, 13", "xor eax, edx", "mov edx, eax", "shr edx, 17",
                "xor eax, edx", "mov edx, eax", "shl edx, 5", "xor eax, edx", "stosd")],
            "dec ecx", f"jnz {loop}"], removable=not self.dump))
        if self.guest_gdt:
            lines = []
            for table, entries in ((GDT, RING3_GDT if self.ring3 else GUEST_GDT), (LDT, GUEST_LDT)):
                for selector, descriptor in entries.items():
                    low, high = struct.unpack("<II", descriptor)
                    lines += [f"mov dword ptr [{table + selector:#x}], {low:#x}",
                              f"mov dword ptr [{table + selector + 4:#x}], {high:#x}"]
            reload = self.label("reload")
            if self.ring3:
                lines += self.ring3_tables()
            lines += [f"mov word ptr [{GDT_PTR:#x}], {RING3_GDT_LIMIT if self.ring3 else GUEST_GDT_LIMIT:#x}",
                      f"mov dword ptr [{GDT_PTR + 2:#x}], {GDT:#x}",
                      ".byte 0x0f, 0x01, 0x15", f".long {GDT_PTR:#x}",          # lgdt [GDT_PTR]
                      ".byte 0xea", f".long {reload}", ".short 0x08", f"{reload}:",  # jmp 0x08:reload
                      "mov ax, 0x10", "mov ds, ax", "mov es, ax", "mov ss, ax", "mov fs, ax", "mov gs, ax"]
            if self.ring3:
                # ring 3's data segments; a DPL-0 one in FS/GS is nulled by the iret to ring 3
                lines += [f"mov ax, {USER_DS:#x}", "mov ds, ax", "mov es, ax"]
                for segment in ("fs", "gs"):
                    lines += [f"mov ax, {r.choice((USER_DS, 0x10, 0x6B, 0)):#x}", f"mov {segment}, ax"]
            if r.random() < 0.5 or self.ring3:
                lines += ["mov ax, 0x48", "ltr ax"]
            if r.random() < 0.5:
                lines += ["mov ax, 0x40", "lldt ax"]
            items.append(Item("gdt", lines, removable=not self.ring3))
        if self.exceptions:
            lines = []
            gates = []
            for vector, (_, fault) in HANDLED_VECTORS.items():
                trap = not fault and r.random() < 0.5 or fault and r.random() < 0.2
                # ring 3: int3, into and int 0x40 may find a DPL-0 gate (#GP instead)
                user = self.ring3 and not fault and r.random() < 0.5
                gates.append((vector, f"handler_{vector}", (0x8F00 if trap else 0x8E00) | (0x6000 if user else 0)))
            if self.ring3:
                gates.append((EXIT_VECTOR, "epilogue_ring0", 0xEE00))
            if self.timer:
                gates += [(TIMER_VECTOR, "irq0", 0x8E00), (TIMER_VECTOR + 7, "irq_spurious", 0x8E00)]
            for vector, handler, access in gates:
                entry = IDT + 8 * vector
                lines += [f"mov eax, {handler}", f"mov word ptr [{entry:#x}], ax",
                          f"mov word ptr [{entry + 2:#x}], 0x08",
                          f"mov word ptr [{entry + 4:#x}], {access:#x}",
                          "shr eax, 16", f"mov word ptr [{entry + 6:#x}], ax"]
            limit = RING3_IDT_LIMIT if self.ring3 else IDT_LIMIT
            lines += [f"mov word ptr [{IDT_PTR:#x}], {limit:#x}", f"mov dword ptr [{IDT_PTR + 2:#x}], {IDT:#x}",
                      ".byte 0x0f, 0x01, 0x1d", f".long {IDT_PTR:#x}"]                # lidt [IDT_PTR]
            items.append(Item("idt", lines, removable=not self.ring3))
        if self.timer:
            items.append(Item("timer", self.timer_setup()))
        values = []
        for name in R32:
            if name in ("esp", self.base):
                continue
            value = self.imm(4) if r.random() < 0.3 else r.getrandbits(32)
            values.append(f"mov {name}, {value:#x}")
        items.append(Item("registers", values, removable=not self.dump))   # QEMU starts differently
        items.append(Item("base", [f"mov {self.base}, {DATA_PTR:#x}"], removable=False))
        flags = (r.getrandbits(32) & (ARITH_FLAGS | DF)) | 2
        items.append(Item("flags", [f"push {flags:#x}", "popfd"], removable=not self.dump))
        if self.ring3:
            # iretd to ring 3 at IOPL 0 on the stack area's top, the arithmetic flags and DF
            # kept; IF set when the timer is on (else at random: ring 3 cannot change it)
            entry = self.label("ring3")
            lines = [f"push {USER_DS:#x}", f"push {STACK_TOP:#x}", "pushfd"]
            if self.timer or r.random() < 0.5:
                lines.append(f"or dword ptr [esp], {IF:#x}")
            lines += [f"push {USER_CS:#x}", ".byte 0x68", f".long {entry}", "iretd", f"{entry}:"]   # push imm32
            items.append(Item("ring3", lines, removable=False))
        return items

    def ring3_tables(self) -> list:
        """GDT and TSS extras of a ring-3 program (the GDT's static part is RING3_GDT): the call
        gate, SS0:ESP0 and the I/O bitmap (0x80 bytes for ports 0-0x3FF, then 0xFF)."""
        r = self.r
        self.gate_params = r.choice((0, 0, 1, 2, 3))
        gate = GDT + (CALL_GATE & ~7)
        lines = ["mov eax, gate_fn", f"mov word ptr [{gate:#x}], ax", f"mov word ptr [{gate + 2:#x}], 0x08",
                 f"mov word ptr [{gate + 4:#x}], {0xEC00 | self.gate_params:#x}", "shr eax, 16",
                 f"mov word ptr [{gate + 6:#x}], ax",
                 f"mov dword ptr [{TSS + 4:#x}], {R0_STACK_TOP:#x}", f"mov dword ptr [{TSS + 8:#x}], 0x10",
                 f"mov word ptr [{TSS + 0x66:#x}], {TSS_IO_BITMAP:#x}"]
        bitmap = bytearray(b"\xff" * 0x84)
        self.open_ports = []
        for group in IO_GROUPS:
            if r.random() < 0.6:
                self.open_ports += group
                for port in group:
                    bitmap[port >> 3] &= ~(1 << (port & 7))
        for offset in range(0, len(bitmap), 4):
            value = struct.unpack_from("<I", bitmap, offset)[0]
            lines.append(f"mov dword ptr [{TSS + TSS_IO_BITMAP + offset:#x}], {value:#x}")
        return lines

    def timer_setup(self) -> list:
        """PIC pair remapped to 0x20/0x28 with IRQ0 alone unmasked, PIT channel 0 in mode 2 with
        a small divisor: IRQ0 every divisor * 84 guest instructions of the virtual clock."""
        self.divisor = self.r.randint(2, 16)
        lines = []
        for port, value in ((0x20, 0x11), (0xA0, 0x11), (0x21, TIMER_VECTOR), (0xA1, TIMER_VECTOR + 8),
                            (0x21, 0x04), (0xA1, 0x02), (0x21, 0x01), (0xA1, 0x01), (0x21, 0xFE), (0xA1, 0xFF),
                            (0x43, 0x34), (0x40, self.divisor & 0xFF), (0x40, self.divisor >> 8)):
            lines += [f"mov al, {value:#x}", f"out {port:#x}, al"]
        return lines

    def timer_handlers(self) -> Item:
        """IRQ0: EOI and nothing else (every register it uses restored, no record of where it
        landed); the master's spurious IRQ7 just returns."""
        return Item("irq", ["irq0:", "push eax", "mov al, 0x20", "out 0x20, al", "pop eax", "iretd",
                            "irq_spurious:", "iretd"], removable=False)

    def gate_function(self) -> Item:
        """The ring-0 target of the DPL-3 call gate: arrives on the ring-0 stack (return CS:EIP,
        the copied parameters, the caller's ESP and SS), may read a parameter, may load FS or
        GS with a DPL-0 segment (the return to ring 3 nulls it) and returns with retf n."""
        r = self.r
        lines = ["gate_fn:"]
        for _ in range(r.randint(0, 3)):
            lines += self.simple()
        if self.gate_params and r.random() < 0.8:
            dst = self.w32()
            if dst:
                lines.append(f"mov {dst}, dword ptr [esp+{8 + 4 * r.randrange(self.gate_params)}]")
        if r.random() < 0.4:
            segment = r.choice(("fs", "gs"))
            lines += [f"push {r.choice((0x10, 0x30, USER_DS, 0x83)):#x}", POP_SEG[segment]]
        pops = 4 * self.gate_params
        return Item("gate function", lines + [f"retf {pops}" if pops else "retf"], removable=False)

    def epilogue(self) -> Item:
        lines = [f"mov dword ptr [{RESULT + 4 * i:#x}], {name}" for i, name in enumerate(R32)]
        lines += ["pushfd", "pop eax", f"mov dword ptr [{RESULT + 0x20:#x}], eax"]
        for offset, segment in zip(range(0x24, 0x30, 2), ("cs", "ss", "ds", "es", "fs", "gs")):
            lines.append(f"mov word ptr [{RESULT + offset:#x}], {segment}")
        lines += [".byte 0x0f, 0x01, 0x05", f".long {RESULT + 0x30:#x}",           # sgdt (32-bit)
                  ".byte 0x0f, 0x01, 0x0d", f".long {RESULT + 0x38:#x}",           # sidt (32-bit)
                  f"str word ptr [{RESULT + 0x40:#x}]", f"sldt word ptr [{RESULT + 0x42:#x}]"]
        if self.ring3:
            # what ring 3 may not read is stored in ring 0, entered through the DPL-3 gate whose
            # handler is the next instruction (interrupt gate: IF clear from here on)
            lines += [f"smsw word ptr [{RESULT + 0x54:#x}]", f"int {EXIT_VECTOR:#x}", "epilogue_ring0:"]
        for offset, number in zip(range(0x44, 0x54, 4), (0, 2, 3, 4)):
            lines += [f"mov eax, cr{number}", f"mov dword ptr [{RESULT + offset:#x}], eax"]
        if not self.ring3:
            lines.append(f"smsw word ptr [{RESULT + 0x54:#x}]")
        lines.append(f"mov dword ptr [{RESULT + 0x7C:#x}], {EPILOGUE_MAGIC:#x}")
        if self.ring3:
            # the ring-0 stack holds interrupt frames whose contents depend on where the timer
            # (or anything else) interrupted ring 3: zeroed, the epilogue goes on at its top
            lines += ["cld", f"mov edi, {R0_STACK_BASE:#x}", f"mov ecx, {R0_STACK_SIZE // 4:#x}", "xor eax, eax",
                      "rep stosd", f"mov esp, {R0_STACK_TOP:#x}"]
        if self.dump:
            lines += self.dump_lines()
        lines.append(f"push dword ptr [{RESULT + 0x20:#x}]")
        if self.ring3:
            lines.append(f"and dword ptr [esp], {0xFFFFFFFF & ~IF:#x}")     # no interrupt before the exit
        lines += [
                  "popfd",
                  f"mov eax, dword ptr [{RESULT:#x}]", f"mov edx, dword ptr [{RESULT + 8:#x}]",
                  "mov dx, 0xf4", "out dx, eax", "cli", "hlt"]
        return Item("epilogue", ["epilogue:"] + lines, removable=False)

    DUMP_AREAS = ((DATA_BASE, DATA_SIZE), (STACK_BASE, STACK_SIZE), (SYS_BASE + 0x80, SYS_SIZE - 0x80))

    def dump_lines(self) -> list:
        """Print, as hex words on COM1: the result area (line R), the exception count and log
        (line E) and checksums of the data, stack and system areas and of the code (line C)."""
        lines = ["cld"]
        for tag, start, words in (("R", RESULT, 0x20), ("E", EXC_COUNT, 1 + 0x200 // 4)):
            loop = self.label("dump")
            if tag == "E":
                lines.append(f"mov dword ptr [{EXC_COUNT + 4:#x}], 0")
            lines += [f"mov al, {ord(tag):#x}", "call dump_char", f"mov esi, {start:#x}",
                      f"mov ecx, {words if tag == 'R' else 2 + 0x200 // 4}", f"{loop}:", "lodsd",
                      "call dump_word", "dec ecx", f"jnz {loop}", "mov al, 0x0a", "call dump_char"]
        lines += ["mov al, 0x43", "call dump_char"]
        pieces = [(start, 0x1000) for area, size in self.DUMP_AREAS[:2] for start in range(area, area + size, 0x1000)]
        for start, size in pieces + [self.DUMP_AREAS[2], (CODE_BASE, None)]:
            loop = self.label("dump")
            count = [f"mov ecx, {size // 4:#x}"] if size else [
                "mov ecx, program_end", f"sub ecx, {CODE_BASE:#x}", "shr ecx, 2"]
            lines += [f"mov esi, {start:#x}", *count, "xor edx, edx", f"{loop}:", "lodsd",
                      "rol edx, 7", "add edx, eax", "dec ecx", f"jnz {loop}", "mov eax, edx", "call dump_word"]
        return lines + ["mov al, 0x0a", "call dump_char"]

    @staticmethod
    def dump_routines() -> Item:
        return Item("dump", [
            "dump_word:", "push ecx", "push eax", "mov ecx, 8",
            "dump_digit:", "rol dword ptr [esp], 4", "mov eax, dword ptr [esp]", "and al, 0x0f",
            "add al, 0x30", "cmp al, 0x3a", "jb dump_decimal", "add al, 0x27", "dump_decimal:",
            "call dump_char", "dec ecx", "jnz dump_digit", "mov al, 0x20", "call dump_char",
            "pop eax", "pop ecx", "ret",
            "dump_char:", "push edx", "mov dx, 0x3f8", "out dx, al", "pop edx", "ret"], removable=False)

    def handler(self, vector: int) -> Item:
        error_code, fault = HANDLED_VECTORS[vector]
        e = 4 if error_code else 0
        log = EXC_LOG
        lines = [f"handler_{vector}:", "push eax", "push ecx", f"mov ecx, dword ptr [{EXC_COUNT:#x}]",
                 "and ecx, 15", "shl ecx, 5", f"mov dword ptr [{log:#x}+ecx], {vector:#x}"]
        if error_code:
            lines += ["mov eax, dword ptr [esp+8]", f"mov dword ptr [{log + 4:#x}+ecx], eax"]
        for index, slot in enumerate((8, 12, 16)):       # frame EIP, CS, EFLAGS
            lines += [f"mov eax, dword ptr [esp+{8 + e + 4 * index}]", f"mov dword ptr [{log + slot:#x}+ecx], eax"]
        if self.ring3:      # every logged exception comes from ring 3: its ESP follows EFLAGS
            lines += [f"mov eax, dword ptr [esp+{8 + e + 12}]", f"mov dword ptr [{log + 28:#x}+ecx], eax"]
        lines += ["pushfd", "pop eax", f"mov dword ptr [{log + 20:#x}+ecx], eax",
                  f"mov dword ptr [{log + 24:#x}+ecx], esp", f"inc dword ptr [{EXC_COUNT:#x}]"]
        if fault:
            lines += [f"mov eax, dword ptr [{RESUME:#x}]", f"mov dword ptr [esp+{8 + e}], eax"]
        lines += ["pop ecx", "pop eax"]
        if error_code:
            lines.append("add esp, 4")
        return Item("handler", lines + ["iretd"])     # removable once the IDT setup is gone

    def plan_functions(self) -> None:
        r = self.r
        count = r.randint(2, 5)
        for number in range(count):
            far = number >= 1 and r.random() < 0.3
            nargs = 0 if number == 0 else r.choice((0, 0, 1, 2, 3))
            patch = self.label("fpatch") if r.random() < 0.5 else None
            self.functions.append(_Function(f"fn_{number}", far, nargs, r.random() < 0.6, patch))
        if not any(f.far for f in self.functions):
            self.functions.append(_Function(f"fn_{count}", True, 0, True, None))

    def function_items(self) -> list:
        r = self.r
        items = []
        for number, function in enumerate(self.functions):
            lines = [f"{function.name}:"]
            for _ in range(r.randint(0, 3)):
                lines += self.simple()
            if function.nargs and r.random() < 0.8:
                dst = self.w32()
                if dst:
                    first = 8 if function.far else 4
                    lines.append(f"mov {dst}, dword ptr [esp+{first + 4 * r.randrange(function.nargs)}]")
            if function.patch_end:
                target = self.w32()
                lines += [f"{r.choice(('mov', 'add', 'xor', 'sub'))} {target}, {self.imm32_wide():#x}",
                          f"{function.patch_end}:"]
            later = [f for f in self.functions[number + 1:] if not f.far and f.nargs == 0]
            if later and r.random() < 0.3:
                lines.append(f"call {r.choice(later).name}")
            for _ in range(r.randint(0, 2)):
                lines += self.simple()
            pops = 4 * function.nargs if function.callee_pops else 0
            ret = "retf" if function.far else "ret"
            lines.append(f"{ret} {pops}" if pops or r.random() < 0.2 else ret)
            items.append(Item("function", lines))      # removable once nothing calls it
        table = [f for f in self.functions if not f.far and f.nargs == 0]
        items.append(Item("table", ["ftab:", ".long " + ", ".join(table[i % len(table)].name for i in range(4))]))
        return items

    def body_item(self) -> Item:
        classes = [name for name, weight in self.weights.items() if weight > 0]
        weights = [self.weights[name] for name in classes]
        self.top_level = True
        while True:
            kind = self.r.choices(classes, weights)[0]
            lines = getattr(self, kind)()
            if lines:
                self.top_level = False
                return Item(kind, lines)

    def build(self) -> Program:
        self.plan_functions()
        items = self.prologue()
        if self.timer:
            # a body runs a few hundred instructions: it runs several times over, from the same
            # ESP, so that IRQ0 lands at many points of it
            self.passes = self.r.randint(10, 30)
            items.append(Item("passes", [f"mov dword ptr [{PASSES:#x}], {self.passes}", "pass_top:",
                                         f"mov esp, {STACK_TOP:#x}"], removable=False))
        for _ in range(self.length):
            items.append(self.body_item())
            for target in self.pending:
                target[1] -= 1
            items += [Item("label", [f"{name}:"]) for name, left in self.pending if left < 0]
            self.pending = [target for target in self.pending if target[1] >= 0]
        items += [Item("label", [f"{name}:"]) for name, _ in self.pending]
        self.pending = []
        if self.timer:
            items.append(Item("passes", [f"dec dword ptr [{PASSES:#x}]", "jnz pass_top"], removable=False))
        items.append(self.epilogue())
        items += self.function_items()
        if self.exceptions:
            items += [self.handler(vector) for vector in HANDLED_VECTORS]
        if self.ring3:
            items.append(self.gate_function())
        if self.timer:
            items.append(self.timer_handlers())
        if self.dump:
            items += [self.dump_routines(), Item("end", [".align 4", "program_end:"], removable=False)]
        info = {"base": self.base, "exceptions": self.exceptions, "guest_gdt": self.guest_gdt}
        if self.dump:
            info["dump"] = True
        if self.ring3:
            info["ring3"] = f"call gate with {self.gate_params} parameter(s), I/O bitmap opens " + (
                ", ".join(f"{port:#x}" for port in self.open_ports if not 0x3F9 <= port <= 0x3FF) or "nothing")
        if self.timer:
            info["timer"] = (f"PIT divisor {self.divisor} (IRQ0 every {self.divisor * PIT_TICK_INSTRUCTIONS} "
                             f"instructions), body run {self.passes} times")
        return Program(self.seed, self.length, items, info)

