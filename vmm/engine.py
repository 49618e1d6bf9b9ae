"""The host CPU: the one module that talks to Unicorn (memory map, registers, hooks, run control)."""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Optional

from unicorn import Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib
from unicorn import unicorn_const as uc_const
from unicorn import x86_const as x86

from translator.x86arch import EFER_LME, EFER_NXE, MSR_EFER
from vmm.errors import ConfigError

PINNED_UNICORN_VERSION = "2.1.1"

# The engine's code buffer: 64 MiB, not Unicorn's 1 GiB: a flush of a well-used 1 GiB buffer took
# 2.2 s of system time, of 256 MiB 45 ms, of 64 MiB 1 ms; xv6's boot and forktest under bt took
# the same time with 32 MiB to 1 GiB. Engine.flush_before_full flushes it once half of it holds
# code, which it reads from the engine itself (_UC_TCG_CTX below). Where that cannot be read (the
# offsets do not check out: another build of Unicorn), it counts CODE_PER_INVALIDATION for each
# invalidation instead: far more than the 0.8 KiB a Linux boot under bt measured (316 MiB of
# code for 417,000 invalidations), so that estimate flushed that boot 400 times where the
# measured fill flushes it 28-30 times (107 s of CPU against 135, on a loaded machine).
CODE_BUFFER_MIB = 64
CODE_PER_INVALIDATION = 32 * 1024


def _code_buffer_mib() -> int:
    setting = os.environ.get("VMM_CODE_BUFFER_MIB", str(CODE_BUFFER_MIB))
    if not setting.isdigit() or not 1 <= int(setting) <= 2048:
        raise ConfigError(f"VMM_CODE_BUFFER_MIB={setting}: the engine's code buffer takes 1 to 2048 MiB")
    return int(setting)


def _ctl_write(control: int, arguments: int) -> int:
    """uc_ctl's request word for writing `control` with that many arguments (UC_CTL_WRITE)."""
    return control | (arguments << 26) | (uc_const.UC_CTL_IO_WRITE << 30)


_REMOVE_CACHE = ctypes.c_int(_ctl_write(uc_const.UC_CTL_TB_REMOVE_CACHE, 2))


# Our own function pointers into the library (not the binding's, whose prototypes stay its own).
_library = ctypes.CDLL(uclib._name)
_uc_reg_read = _library.uc_reg_read
_uc_reg_read.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
_uc_reg_read.restype = ctypes.c_int
_uc_reg_write = _library.uc_reg_write
_uc_reg_write.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
_uc_reg_write.restype = ctypes.c_int
# QEMU's own functions in the library (C symbols of the x86 target): the RAM offset of a host
# address and the invalidation of translated code by RAM offset (Engine.invalidate_host_code).
_ram_addr_from_host = _library.qemu_ram_addr_from_host_x86_64
_ram_addr_from_host.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
_ram_addr_from_host.restype = ctypes.c_uint64
_tb_invalidate_phys_range = _library.tb_invalidate_phys_range_x86_64
_tb_invalidate_phys_range.argtypes = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64)
_tb_invalidate_phys_range.restype = None
_RAM_ADDR_INVALID = (1 << 64) - 1

# Offsets inside the blob returned by context_save() for the pinned Unicorn build. The blob is a
# header followed by a verbatim copy of QEMU's CPUX86State; the API exposes none of these fields.
# tests/test_engine.py re-derives each one from a real fault, so a different build fails loudly.
_CTX_ENV = 20
_CTX_HFLAGS = _CTX_ENV + 176             # uint32 hflags: bits 0-1 are the CPL (QEMU's HF_CPL_MASK)
_HF_INHIBIT_IRQ = 1 << 3                 # hflags: in the shadow of sti/mov ss (QEMU's HF_INHIBIT_IRQ_MASK)
# SegmentCache segs[6] (ES CS SS DS FS GS): uint32 selector, uint64 base, uint32 limit, flags
_CTX_SEGMENTS = _CTX_ENV + 184
_SEGMENT_CACHE_SIZE = 24
# After them, SegmentCache ldt, tr, gdt, idt: the base of the LDT's and the GDT's (uint64, at +8).
_CTX_TABLE_BASES = {"ldtr": _CTX_SEGMENTS + 6 * _SEGMENT_CACHE_SIZE + 8,
                    "gdtr": _CTX_SEGMENTS + 8 * _SEGMENT_CACHE_SIZE + 8}
_SEGMENT_INDEX = {"es": 0, "cs": 1, "ss": 2, "ds": 3, "fs": 4, "gs": 5}
# Offset of uint64 emu_counter in Unicorn's uc_struct (instructions started by a counted run),
# and of uint64 emu_count right after it (the count the run was given, which Unicorn's count
# hook compares emu_counter with before each instruction).
_UC_EMU_COUNTER = 1344
_UC_EMU_COUNT = 1352
# Offset of `TCGContext *tcg_ctx` in uc_struct, and of five fields in a row in that TCGContext:
# code_gen_buffer (where generated code starts, after the prologue), initial_buffer,
# initial_buffer_size (the whole buffer), code_gen_buffer_size (its part for code) and
# code_gen_ptr (where the next translation goes; a flush puts it back at code_gen_buffer).
# Engine.code_buffer_fill checks them against the size the engine set before it trusts them
# (pinned by tests/test_engine.py).
_UC_TCG_CTX = 744
_TCG_CODE_GEN_BUFFER = 160
# Offset of `struct TranslationBlock *last_tb` in uc_struct: the last block that returned to
# Unicorn's loop, NULL until one has. Its translation hook fires only once it is set (pinned
# by tests/test_engine.py, which finds it by the block it points to).
_UC_LAST_TB = 14824
# `CPUState *cpu` in uc_struct, and `uint32_t halted` in that CPUState: set by hlt, left set when
# the run returns, cleared when the next one starts (tests/test_engine.py finds both by a hlt).
_UC_CPU = 416
_CPU_HALTED = 33176
# The CPU's software TLB (QEMU's CPUTLB in X86CPU's CPUNegativeOffsetState, just before `env`):
# env sits at 35408 in the X86CPU that uc_struct's cpu points at, neg.tlb 2192 bytes before it.
# CPUTLB = CPUTLBCommon c (32 bytes), CPUTLBDesc d[3] (696 bytes each: the victim table
# vtable[8] at 48, viotlb[8] after it, the CPUIOTLBEntry *iotlb at 688, one 16-byte entry per
# fast entry whose addr is the RAM offset of the page minus the virtual page), CPUTLBDescFast
# f[3] at 2128 (uintptr mask, CPUTLBEntry *table); i386 has NB_MMU_MODES 3. A CPUTLBEntry is
# 64 bytes: addr_read, addr_write, addr_code, paddr (Unicorn's own: the guest-physical page),
# addend (host address minus the virtual page). All pinned by tests/test_engine.py, which finds
# env by the context blob's copy of it.
_CPU_ENV = 35408
_CPU_TLB = _CPU_ENV - 2192
_TLB_DESC, _TLB_DESC_SIZE, _DESC_VTABLE, _DESC_IOTLB = 32, 696, 48, 688
_TLB_FAST = 2128
_MMU_MODES, _TLB_ENTRY_SIZE = 3, 64
_ENTRY_WRITE, _ENTRY_CODE, _ENTRY_PADDR, _ENTRY_ADDEND = 8, 16, 24, 32
_TLB_NOTDIRTY = 0x400        # a low bit of addr_write (qemu/include/exec/cpu-all.h): slow stores
_CTX_ERROR_CODE = _CTX_ENV + 5352        # int error_code of the last exception
_CTX_EXCEPTION_IS_INT = _CTX_ENV + 5356  # int exception_is_int: 1 for int n / int3 / into
_CTX_OLD_EXCEPTION = _CTX_ENV + 5464     # int old_exception: never cleared by Unicorn (see reset)
# QEMU's SVM state, which Unicorn keeps but never enters: hflags' HF_GUEST_MASK says the CPU runs
# an SVM guest, and uint64 `intercept` (after tsc_offset, which helper_rdtsc adds) holds one bit
# per intercepted instruction from SVM_EXIT_INTR (0x60) on. Read off helper_rdtsc and
# cpu_svm_check_intercept_param in the pinned library; tests/test_rdtsc.py pins them by a guest.
_HF_GUEST = 1 << 21
_CTX_INTERCEPT = _CTX_ENV + 0x1570
_SVM_EXIT_INTR, _SVM_EXIT_RDTSC = 0x60, 0x6E
# The vector an intercepted rdtsc (or rdtscp, whose helper calls rdtsc's) arrives with at the
# interrupt hook: QEMU's cpu_vmexit raises EXCP_VMEXIT (0x100) + the exit code, EIP at the
# instruction, and (Unicorn never calling do_vmexit) nothing else of the CPU changes.
RDTSC_EXIT_VECTOR = 0x100 + _SVM_EXIT_RDTSC
# target_ulong cr[5] in CPUX86State: CR2 at +0x1B8 (helper_rdtsc tests cr[4] at +0x1C8).
_CTX_CR2 = _CTX_ENV + 0x1B8
_PF = 14

PROT_NONE = uc_const.UC_PROT_NONE
PROT_READ = uc_const.UC_PROT_READ
PROT_WRITE = uc_const.UC_PROT_WRITE
PROT_EXEC = uc_const.UC_PROT_EXEC
PROT_ALL = uc_const.UC_PROT_ALL

REGISTERS = {
    "eax": x86.UC_X86_REG_EAX, "ecx": x86.UC_X86_REG_ECX, "edx": x86.UC_X86_REG_EDX,
    "ebx": x86.UC_X86_REG_EBX, "esp": x86.UC_X86_REG_ESP, "ebp": x86.UC_X86_REG_EBP,
    "esi": x86.UC_X86_REG_ESI, "edi": x86.UC_X86_REG_EDI, "eip": x86.UC_X86_REG_EIP,
    "eflags": x86.UC_X86_REG_EFLAGS,
    "cs": x86.UC_X86_REG_CS, "ss": x86.UC_X86_REG_SS, "ds": x86.UC_X86_REG_DS,
    "es": x86.UC_X86_REG_ES, "fs": x86.UC_X86_REG_FS, "gs": x86.UC_X86_REG_GS,
    "cr0": x86.UC_X86_REG_CR0, "cr2": x86.UC_X86_REG_CR2, "cr3": x86.UC_X86_REG_CR3,
    "cr4": x86.UC_X86_REG_CR4,
}
# Descriptor-table registers are (selector, base, limit, flags) tuples in Unicorn.
_TABLE_REGISTERS = {
    "gdtr": x86.UC_X86_REG_GDTR, "idtr": x86.UC_X86_REG_IDTR,
    "ldtr": x86.UC_X86_REG_LDTR, "tr": x86.UC_X86_REG_TR,
}
# Under binary translation the engine runs translated code in long mode (docs/isolation.md): its
# instruction pointer and the monitor's own registers r8-r15 are 64 bits wide.
LONG_MODE_REGISTERS = {"rip": x86.UC_X86_REG_RIP, "rsp": x86.UC_X86_REG_RSP, "cr2": x86.UC_X86_REG_CR2,
                       **{f"r{n}": getattr(x86, f"UC_X86_REG_R{n}") for n in range(8, 16)}}
REGISTERS.update({f"r{n}d": getattr(x86, f"UC_X86_REG_R{n}D") for n in range(8, 16)})
# What set_reg writes straight through: all but CR2, whose write Unicorn 2.1.1 gets wrong (_set_cr2).
_DIRECT_WRITES = {name: number for name, number in REGISTERS.items() if name != "cr2"}
GENERAL_REGISTERS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags")
SEGMENT_REGISTERS = ("cs", "ss", "ds", "es", "fs", "gs")


class StopCause(Enum):
    """Why Engine.run returned, as far as the engine itself can tell."""
    RETURNED = "returned"          # hlt, stop() (from a hook or another thread), or the count ran out
    MEMORY_FAULT = "memory_fault"  # access to unmapped or protected host memory
    TLB_REFUSED = "tlb_refused"    # virtual-TLB mode: the fill hook refused an access (EIP at it)


@dataclass
class MemoryFault:
    kind: str      # "read", "write" or "fetch"
    reason: str    # "unmapped" or "protected"
    address: Optional[int] = None
    size: int = 0

    @property
    def message(self) -> str:
        where = f" at {self.address:#x}" if self.address is not None else ""
        what = "no memory" if self.reason == "unmapped" else "protected memory"
        return f"{self.kind} of {what}{where}" + (f" ({self.size} bytes)" if self.size else "")


# Unicorn's virtual-TLB fill hook, which the 2.1.1 Python binding does not wrap:
# bool cb(uc_engine *, uint64_t vaddr, uc_mem_type, uc_tlb_entry *result, void *user_data)
class _TlbEntry(ctypes.Structure):
    _fields_ = [("paddr", ctypes.c_uint64), ("perms", ctypes.c_int)]


# uint64_t read(uc_engine *, uint64_t offset, unsigned size, void *user_data) and the write's
# void write(uc_engine *, uint64_t offset, unsigned size, uint64_t value, void *user_data)
_MMIO_READ = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint, ctypes.c_void_p)
_MMIO_WRITE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint, ctypes.c_uint64, ctypes.c_void_p)
_TLB_FILL_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                                      ctypes.POINTER(_TlbEntry), ctypes.c_void_p)
# Unicorn's translation hook, raw: void cb(uc_engine *, uc_tb *block, uc_tb *previous, void *user_data)
class _UcTb(ctypes.Structure):
    _fields_ = [("pc", ctypes.c_uint64), ("icount", ctypes.c_uint16), ("size", ctypes.c_uint16)]


# void cb(uc_engine *, uint32_t intno, void *user_data)
_INTR_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
_EDGE_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(_UcTb), ctypes.POINTER(_UcTb),
                                  ctypes.c_void_p)
TLB_ACCESS = {uc_const.UC_MEM_READ: "read", uc_const.UC_MEM_WRITE: "write", uc_const.UC_MEM_FETCH: "fetch"}

_MEMORY_ERRORS = {
    uc_const.UC_ERR_READ_UNMAPPED: ("read", "unmapped"),
    uc_const.UC_ERR_WRITE_UNMAPPED: ("write", "unmapped"),
    uc_const.UC_ERR_FETCH_UNMAPPED: ("fetch", "unmapped"),
    uc_const.UC_ERR_READ_PROT: ("read", "protected"),
    uc_const.UC_ERR_WRITE_PROT: ("write", "protected"),
    uc_const.UC_ERR_FETCH_PROT: ("fetch", "protected"),
}


# -- Unicorn 2.1.1's lost protection of pages holding translated code (Engine.keep_code_coherent) --
# The library calls these three through its PLT, so its GOT slots can be pointed elsewhere:
# notdirty_write ends in tlb_set_dirty(cpu, vaddr) (clean the page's entries: stores go fast),
# tb_page_add calls tlb_protect_code(uc, ram_addr) when a page gets its first translation, and
# tb_invalidate_phys_page_range__locked tlb_unprotect_code(uc, ram_addr) when it loses its last.
_GATED = ("tlb_set_dirty_x86_64", "tlb_protect_code_x86_64", "tlb_unprotect_code_x86_64")
_R_X86_64_JUMP_SLOT, _SHT_RELA, _SHF_INFO_LINK = 7, 4, 0x40
_GATE_SLOTS, _GATE_SLOT_SIZE = 64, 32        # per engine: cpu, uc, code-page bytemap, its pages
_map_ram_ptr = _library.qemu_map_ram_ptr_x86_64
_map_ram_ptr.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64)
_map_ram_ptr.restype = ctypes.c_uint64
_tlb_reset_dirty = _library.tlb_reset_dirty_x86_64
_tlb_reset_dirty.argtypes = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64)
_tlb_reset_dirty.restype = None
_RAM_PAGE_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64)


def _jump_slots(path: str, names) -> dict[str, tuple[int, int]]:
    """{symbol: (its GOT slot, its value)} from the JUMP_SLOT relocations of an ELF64 library,
    both relative to its load address: which slot each PLT call of the library goes through."""
    found: dict[str, tuple[int, int]] = {}
    with open(path, "rb") as library:
        header = library.read(64)
        if header[:5] != b"\x7fELF\x02":
            raise RuntimeError(f"{path}: not an ELF64 library")
        section_table, = struct.unpack_from("<Q", header, 0x28)
        entry_size, count = struct.unpack_from("<HH", header, 0x3A)
        library.seek(section_table)
        table = library.read(entry_size * count)
        sections = [struct.unpack_from("<IIQQQQIIQQ", table, index * entry_size) for index in range(count)]

        def contents(section):
            library.seek(section[4])
            return library.read(section[5])
        for section in sections:
            if section[1] != _SHT_RELA or not section[2] & _SHF_INFO_LINK:     # .rela.plt only
                continue
            relocations = contents(section)
            symbols = sections[section[6]]
            strings = contents(sections[symbols[6]])
            symbol_table = contents(symbols)
            for slot, info, _addend in struct.iter_unpack("<QQq", relocations):
                if info & 0xFFFFFFFF != _R_X86_64_JUMP_SLOT:
                    continue
                name_at, = struct.unpack_from("<I", symbol_table, (info >> 32) * 24)
                name = strings[name_at:strings.index(b"\0", name_at)].decode()
                if name in names:
                    found[name] = (slot, struct.unpack_from("<Q", symbol_table, (info >> 32) * 24 + 8)[0])
    return found


class _CodeWriteGate:
    """QEMU's rule for stores into translated code, put back into Unicorn 2.1.1 (one per process:
    the library's GOT is the process's). tlb_set_dirty's slot points at a native gate (a few
    instructions assembled here) that, for a registered CPU whose store hit a page holding
    translations, returns leaving the page's entries TLB_NOTDIRTY, and otherwise goes on to
    the library's function; tlb_protect_code's and tlb_unprotect_code's slots at gates that
    call back into Python for a registered engine only. The pages holding translations are a
    bytemap per engine, indexed by RAM offset (uc's ram_addr >> 12): the gate finds a page's
    from the TLB's CPUIOTLBEntry, as notdirty_write does."""

    def __init__(self) -> None:
        names = set(_GATED)
        slots = _jump_slots(uclib._name, names)
        if set(slots) != names:
            raise RuntimeError(f"{uclib._name}: no PLT slot for {sorted(names - set(slots))}")
        functions = {name: ctypes.cast(getattr(_library, name), ctypes.c_void_p).value for name in _GATED}
        base = functions[_GATED[0]] - slots[_GATED[0]][1]
        self._got = {name: base + slots[name][0] for name in _GATED}
        self._original = {name: _RAM_PAGE_HOOK(functions[name]) for name in _GATED}
        self._table = mmap.mmap(-1, _GATE_SLOTS * _GATE_SLOT_SIZE)
        self._table_address = ctypes.addressof(ctypes.c_char.from_buffer(self._table))
        self._engines: dict[int, tuple] = {}      # uc handle -> (slot, cpu, engine weakref, bytemap)
        # Engines the garbage collector finalized: their table slot is cleared at once, their
        # entry dropped at the next register (a finalizer runs whenever the collector does, also
        # while register iterates over _engines: deleting there raised "dictionary changed size")
        self._released: list[tuple[int, int]] = []
        self._callbacks = (_RAM_PAGE_HOOK(self._protect), _RAM_PAGE_HOOK(self._unprotect))
        code = self._assemble(functions)
        self._code = mmap.mmap(-1, len(code), prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self._code.write(code)
        code_address = ctypes.addressof(ctypes.c_char.from_buffer(self._code))
        for name, offset in zip(_GATED, self._offsets):
            ctypes.c_uint64.from_address(self._got[name]).value = code_address + offset

    def _assemble(self, functions: dict[str, int]) -> bytes:
        from vmm.loaders.assembly import new_assembler      # radix-checked: its numbers are decimal
        table, slots, size = self._table_address, _GATE_SLOTS, _GATE_SLOT_SIZE
        find = (f"mov r10, {table:#x}\n mov ecx, {slots}\n"
                "find: cmp qword ptr [r10 + {key}], rdi\n je found\n"
                f"add r10, {size}\n dec ecx\n jne find\n")
        # tlb_set_dirty(cpu, vaddr): keep the entries when the page the store hit holds code.
        # For each MMU mode: the fast entry of vaddr, if it is the one tlb_set_dirty would clean
        # (addr_write == page | TLB_NOTDIRTY), gives the page's RAM offset through its iotlb.
        modes = "".join(
            f"mov rax, rsi\n shr rax, 6\n and rax, qword ptr [rdi + {_CPU_TLB + _TLB_FAST + 16 * mode}]\n"
            f"mov rcx, qword ptr [rdi + {_CPU_TLB + _TLB_FAST + 16 * mode + 8}]\n"
            f"cmp qword ptr [rcx + rax + {_ENTRY_WRITE}], rdx\n jne mode{mode}\n"
            f"shr rax, 2\n add rax, qword ptr [rdi + {_CPU_TLB + _TLB_DESC + mode * _TLB_DESC_SIZE + _DESC_IOTLB}]\n"
            "mov rax, qword ptr [rax]\n add rax, r8\n shr rax, 12\n cmp rax, r9\n jae mode{mode}\n"
            f"cmp byte ptr [r11 + rax], 0\n jne keep\n mode{mode}:\n".replace("{mode}", str(mode))
            for mode in range(_MMU_MODES))
        set_dirty = (find.format(key=0) + f"original: mov rax, {functions[_GATED[0]]:#x}\n jmp rax\n"
                     "found: mov r11, qword ptr [r10 + 16]\n mov r9, qword ptr [r10 + 24]\n"
                     f"mov r8, rsi\n and r8, -4096\n lea rdx, [r8 + {_TLB_NOTDIRTY}]\n"
                     + modes + "jmp original\n keep: ret\n")
        protect_hook, unprotect_hook = (ctypes.cast(callback, ctypes.c_void_p).value for callback in self._callbacks)
        protect = (find.format(key=8) + f"mov rax, {functions[_GATED[1]]:#x}\n jmp rax\n"
                   f"found: mov rax, {protect_hook:#x}\n jmp rax\n")
        # tlb_unprotect_code(uc, ram_addr): Python only when the engine counts the page as code.
        unprotect = (find.format(key=8) + f"original: mov rax, {functions[_GATED[2]]:#x}\n jmp rax\n"
                     "found: mov rax, rsi\n shr rax, 12\n cmp rax, qword ptr [r10 + 24]\n jae original\n"
                     "mov r11, qword ptr [r10 + 16]\n cmp byte ptr [r11 + rax], 0\n je original\n"
                     f"mov rax, {unprotect_hook:#x}\n jmp rax\n")
        assembler = new_assembler(64)
        code, self._offsets = b"", []
        for source in (set_dirty, protect, unprotect):
            self._offsets.append(len(code))
            encoding, _count = assembler.asm(source, 0)     # position independent: absolute jumps
            code += bytes(encoding) + b"\xcc" * (-len(encoding) % 16)
        return code

    def register(self, uc: int, cpu: int, engine: "Engine") -> None:
        """Gate the stores of the engine whose uc_struct and CPUState are at these addresses."""
        import gc
        import weakref
        for _attempt in range(2):
            self._drop_released()
            used = {slot for slot, *_rest in self._engines.values()}
            free = [slot for slot in range(_GATE_SLOTS) if slot not in used]
            if free:
                break
            gc.collect()                   # engines no longer referenced release their slots
        else:
            raise RuntimeError(f"more than {_GATE_SLOTS} engines keep their code coherent at once")
        if uc in self._engines:
            self.release(uc, self._engines[uc][0])
        slot = free[0]
        self._engines[uc] = (slot, cpu, weakref.ref(engine), None)
        self._set_bytemap(uc, 1024)
        weakref.finalize(engine, self._finalized, uc, slot)

    def _finalized(self, uc: int, slot: int) -> None:
        """(The garbage collector, at any allocation.) The engine is gone: its slot stops gating
        at once; its entry goes at the next register."""
        struct.pack_into("<4Q", self._table, slot * _GATE_SLOT_SIZE, 0, 0, 0, 0)
        self._released.append((uc, slot))

    def _drop_released(self) -> None:
        while self._released:
            self.release(*self._released.pop())

    def release(self, uc: int, slot: int) -> None:
        """The engine is gone: its slot no longer gates anything (then its bytemap may go)."""
        struct.pack_into("<4Q", self._table, slot * _GATE_SLOT_SIZE, 0, 0, 0, 0)
        if self._engines.get(uc, (None,))[0] == slot:
            del self._engines[uc]

    def _set_bytemap(self, uc: int, pages: int) -> None:
        """Give the engine a bytemap of `pages` pages, keeping what the old one held."""
        slot, cpu, engine, old = self._engines[uc]
        bytemap = (ctypes.c_ubyte * pages)()
        if old is not None:
            ctypes.memmove(bytemap, old, len(old))
        self._engines[uc] = (slot, cpu, engine, bytemap)
        struct.pack_into("<4Q", self._table, slot * _GATE_SLOT_SIZE, cpu, uc, ctypes.addressof(bytemap), pages)

    def forget_code(self, uc: int) -> None:
        """Every translation of the engine is gone (a flush, which tells no page)."""
        entry = self._engines.get(uc)
        if entry is not None:
            ctypes.memset(entry[3], 0, len(entry[3]))

    def code_pages(self, uc: int) -> list[int]:
        """RAM offsets of the pages the engine holds translations of (for tests)."""
        bytemap = self._engines[uc][3]
        return [page << 12 for page in range(len(bytemap)) if bytemap[page]]

    def _protect(self, uc: int, ram_address: int) -> None:
        """A page gets its first translation: from now on stores into it take the slow path,
        through every mapping of its frame (QEMU's tlb_protect_code -> tlb_reset_dirty, on the
        host page)."""
        try:
            _slot, cpu, _engine, bytemap = self._engines[uc]
            page = ram_address >> 12
            if page >= len(bytemap):
                self._set_bytemap(uc, max(2 * len(bytemap), page + 1))
                bytemap = self._engines[uc][3]
            bytemap[page] = 1
            _tlb_reset_dirty(cpu, _map_ram_ptr(uc, None, page << 12), 4096)
        except BaseException as error:        # never unwound through the library: run() raises it
            owner = self._engines.get(uc, (None, None, lambda: None))[2]()
            if owner is not None and owner._hook_error is None:
                owner._hook_error = error
                owner.stop()
        self._original[_GATED[1]](uc, ram_address)

    def _unprotect(self, uc: int, ram_address: int) -> None:
        """The page's last translation is gone: stores into it may go fast again."""
        entry = self._engines.get(uc)
        if entry is not None:
            entry[3][ram_address >> 12] = 0
        self._original[_GATED[2]](uc, ram_address)


_GATE: Optional[_CodeWriteGate] = None


def _code_write_gate() -> _CodeWriteGate:
    global _GATE
    if _GATE is None:
        _GATE = _CodeWriteGate()
    return _GATE


def unicorn_version() -> str:
    """The installed Unicorn release (2.1.1's module __version__ wrongly reads 2.1.0)."""
    from importlib.metadata import version
    return version("unicorn")


class Engine:
    """One virtual CPU plus its physical address space, backed by one Unicorn instance.

    Hooks are installed once, each forwarding to a single Python callable supplied by the monitor;
    an exception raised inside a callable stops the engine and is re-raised from run().
    """

    def __init__(self, long_mode: bool = False) -> None:
        """long_mode: an engine that can run 64-bit code (binary translation's); it starts in
        32-bit protected mode like the other, and enter_long_mode() switches it."""
        self.long_mode = long_mode
        self._uc = Uc(uc_const.UC_ARCH_X86, uc_const.UC_MODE_64 if long_mode else uc_const.UC_MODE_32)
        self._handle = self._uc._uch
        # The engine's code buffer, sized before anything is translated (VMM_CODE_BUFFER_MIB: a
        # small one for the test that fills it quickly), and what the monitor has invalidated
        # since it last flushed it (flush_before_full).
        self.code_buffer_bytes = _code_buffer_mib() << 20
        status = _library.uc_ctl(self._handle, ctypes.c_int(_ctl_write(uc_const.UC_CTL_TCG_BUFFER_SIZE, 1)),
                                 ctypes.c_uint32(self.code_buffer_bytes))
        if status != uc_const.UC_ERR_OK:
            raise UcError(status)
        self._invalidations = 0
        self.buffer_flushes = 0
        self._code_fields = None            # code_buffer_fill: the TCG context's fields, once checked
        self._rdtsc_intercepted = False     # intercept_rdtsc
        self._exits: frozenset = frozenset()    # set_exits
        self._run_cr2 = 0                   # CR2 as the guest last left it in this run (run)
        self._register_buffer = ctypes.c_uint64()
        self._register_pointer = ctypes.byref(self._register_buffer)
        self._buffers: list = []          # host buffers behind mem_map_ptr regions (kept alive)
        self._buffer_addresses: dict[int, int] = {}
        self._hook_error: Optional[BaseException] = None
        self._raw_callbacks: list = []      # ctypes callbacks handed to the library (_add_raw_hook)
        self.memory_fault: Optional[MemoryFault] = None
        self._fault_address: Optional[tuple[int, int]] = None
        self._uc.hook_add(uc_const.UC_HOOK_MEM_INVALID, self._record_bad_access)
        # Undecodable bytes: accepting them here makes Unicorn raise #UD (vector 6) through the
        # interrupt hook like any other exception; refusing would abort emulation instead.
        self._uc.hook_add(uc_const.UC_HOOK_INSN_INVALID, lambda _uc, _data: True)
        # With exits enabled, emu_start's `until` is not looked up as code: otherwise, while the
        # guest's own paging is on and does not map it, every run starts with a page walk that
        # fails quietly, overwrites CR2 and leaves a pending #PF (the guest's next fault becomes
        # a double fault). The exit list stays empty: runs end by hlt or stop().
        self._uc.ctl_exits_enabled(True)
        self._tlb_refused = False
        self._mmio_callbacks: list = []
        self._env_address: Optional[int] = None

    def _record_bad_access(self, _uc, _access, address, size, _value, _data) -> bool:
        self._fault_address = (address, size)
        return False          # let the access fail; run() reports it as a MemoryFault

    # -- memory ---------------------------------------------------------------------------------
    def map_memory(self, base: int, size: int, perms: int = PROT_ALL) -> memoryview:
        """Map `size` bytes at physical `base` over a host buffer and return a view of that buffer,
        so the monitor reads and writes guest memory without a call into the engine."""
        view = self.host_buffer(size)
        self.map_buffer(base, view, 0, size, perms)
        return view

    def host_buffer(self, size: int) -> memoryview:
        """A zeroed host buffer, parts of which can later be mapped with map_buffer. Anonymous
        memory: the host zeroes each page on its first touch, so a large guest RAM costs
        nothing until the guest uses it (a ctypes array was memset whole: 27 ms per 32 MiB)."""
        buffer = mmap.mmap(-1, size)
        anchor = ctypes.c_ubyte.from_buffer(buffer)        # pins the mapping, gives its address
        self._buffers.append((buffer, anchor))
        view = memoryview(buffer)
        self._buffer_addresses[id(view.obj)] = ctypes.addressof(anchor)
        return view

    def map_buffer(self, base: int, view: memoryview, offset: int, size: int, perms: int) -> None:
        """Map `size` bytes of a buffer from host_buffer (starting at `offset`) at physical `base`."""
        host = self._buffer_addresses[id(view.obj)] + offset
        self._uc.mem_map_ptr(base, size, perms, host)

    def map_host(self, base: int, size: int, perms: int, host_address: int, owner: object) -> None:
        """Map `size` bytes of host memory at `host_address` (page aligned, owned by `owner`, which
        the engine keeps alive from now on) at physical `base`: RAM frames from a frame pool."""
        if not any(kept is owner for kept in self._buffers):
            self._buffers.append(owner)
        self._uc.mem_map_ptr(base, size, perms, host_address)

    def map_mmio(self, base: int, size: int, read: Callable[[int, int], int],
                 write: Callable[[int, int, int], None]) -> None:
        """Map `size` bytes at physical `base` as memory-mapped I/O: every engine access there
        calls read(offset, size) -> value or write(offset, size, value) (offset from `base`),
        while ordinary RAM accesses elsewhere call nothing. An access that runs from RAM into the
        region is split by the engine (the RAM part stored, the rest given to write). An
        exception raised by a callback stops the engine and is re-raised from run(). Guest code
        cannot be fetched from the region (the run stops as a MemoryFault "fetch")."""
        # Our own C callbacks, not the binding's mmio_map (two Python frames less per access:
        # about a third of an unassigned access's cost).
        def on_read(_handle, offset, width, _data):
            if self._hook_error is not None:
                return 0
            try:
                return read(offset, width)
            except BaseException as error:   # surfaced from run(), never lost inside Unicorn
                self._hook_error = error
                self._uc.emu_stop()
                return 0

        def on_write(_handle, offset, width, value, _data):
            if self._hook_error is not None:
                return
            try:
                write(offset, width, value)
            except BaseException as error:
                self._hook_error = error
                self._uc.emu_stop()
        callbacks = (_MMIO_READ(on_read), _MMIO_WRITE(on_write))
        self._mmio_callbacks.append(callbacks)               # alive as long as the engine
        status = uclib.uc_mmio_map(self._handle, base, size, callbacks[0], None, callbacks[1], None)
        if status != uc_const.UC_ERR_OK:
            raise UcError(status)

    def unmap(self, base: int, size: int) -> None:
        """Remove the mapping(s) covering exactly [base, base + size) from the physical space."""
        self._uc.mem_unmap(base, size)

    def use_virtual_tlb(self, fill: Callable[[int, str], Optional[tuple[int, int]]]) -> None:
        """Nested paging: from now on the engine ignores CR0.PG and its own page walk, and asks
        fill(linear page address, "read"/"write"/"fetch") -> (physical address, PROT_* bits), or
        None to refuse the access (run() then returns TLB_REFUSED with EIP at the instruction).
        The engine's TLB keeps what fill gave until flush_tlb() or the guest's own flush."""
        def hook(_uc, vaddr, access, entry, _data):
            if self._hook_error is not None:
                return False
            try:
                result = fill(vaddr, TLB_ACCESS.get(access, "read"))
            except BaseException as error:     # surfaced from run(), never lost inside Unicorn
                self._hook_error = error
                return False
            if result is None:
                self._tlb_refused = True
                return False
            entry.contents.paddr, entry.contents.perms = result
            return True
        self._uc.ctl_tlb_mode(uc_const.UC_TLB_VIRTUAL)
        self._add_raw_hook(uc_const.UC_HOOK_TLB_FILL, _TLB_FILL_CALLBACK(hook))

    def _add_raw_hook(self, kind: int, callback) -> None:
        """Register a ctypes callback with the library itself (for the hook kinds whose
        arguments the binding does not pass through as they are); kept alive with the engine."""
        self._raw_callbacks.append(callback)
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(self._uc._uch, ctypes.byref(handle), kind,
                                   ctypes.cast(callback, ctypes.c_void_p), None, 1, 0)
        if status != uc_const.UC_ERR_OK:
            raise UcError(status)

    def _control(self, control: int) -> None:
        """uc_ctl of a control that takes no argument, which the binding's ctl() refuses to encode."""
        uclib.uc_ctl(self._uc._uch, (uc_const.UC_CTL_IO_WRITE << 30) | control)

    def flush_tlb(self) -> None:
        """Drop every translation in the engine's TLB."""
        self._control(uc_const.UC_CTL_TLB_FLUSH)

    def flush_translations(self) -> None:
        """Drop everything the engine translated (21 us, plus translating the working set
        again): after adding a hook that must see code translated earlier, when the code's
        addresses are linear ones the guest's paging may map anywhere."""
        self._control(uc_const.UC_CTL_TB_FLUSH)
        if _GATE is not None:          # a flush tells tlb_unprotect_code of no page
            _GATE.forget_code(self._uc._uch.value)

    def invalidate_code(self, begin: int, end: int) -> None:
        """Drop what the engine itself translated from [begin, end): needed after the monitor
        changes code behind its back (mem_write and host-buffer stores do not invalidate).
        Unicorn 2.1.1 walks the guest's page tables for `begin`; where they do not map it, the
        walk takes a page fault inside the call: CR2 overwritten and the exception-in-flight
        marker left set (the guest's next #PF would arrive as #DF). Both are put back (CR2 through
        _set_cr2, which keeps CR3)."""
        self._invalidations += 1
        cr2 = self._cr2()
        # (the library's uc_ctl, not the binding's ctl_remove_cache: 2 us against 11, and the
        # cache patches a chain slot, each an invalidation, about a million times in a Linux boot)
        status = _library.uc_ctl(self._handle, _REMOVE_CACHE, ctypes.c_uint64(begin), ctypes.c_uint64(end))
        if status != uc_const.UC_ERR_OK:
            raise UcError(status)
        if self._cr2() != cr2:
            self._set_cr2(cr2)
            self.reset_exception_state()

    def _cr2(self) -> int:
        buffer = self._register_buffer
        status = _uc_reg_read(self._handle, x86.UC_X86_REG_CR2, self._register_pointer)
        if status:
            raise UcError(status)
        return buffer.value

    def code_buffer_fill(self) -> Optional[tuple[int, int]]:
        """(bytes of code the engine generated since its buffer was last flushed, the bytes the
        buffer has for code), read from its TCG context; None where the pinned offsets do not
        hold: the fields must describe the buffer of the size this engine set."""
        fields = self._code_fields
        if fields is None:
            tcg = ctypes.c_uint64.from_address(self._handle.value + _UC_TCG_CTX).value
            if not tcg:
                return None                   # (the engine has not set its TCG up yet: asked again later)
            fields = (ctypes.c_uint64 * 5).from_address(tcg + _TCG_CODE_GEN_BUFFER)
            start, initial, initial_size, size, pointer = fields
            if not (initial_size == self.code_buffer_bytes and size <= initial_size
                    and initial <= start <= pointer <= initial + initial_size):
                fields = False
            self._code_fields = fields
        if fields is False:
            return None
        return fields[4] - fields[0], fields[3]

    def flush_due(self) -> bool:
        """Whether the next run must begin with flush_before_full's flush (a hook that would go
        on running guest code ends the run instead): half the buffer holds code."""
        fill = self.code_buffer_fill()
        if fill is not None:
            used, size = fill
            return used >= size // 2
        return self._invalidations * CODE_PER_INVALIDATION >= self.code_buffer_bytes // 2

    def flush_before_full(self) -> None:
        """Between runs: drop every translation once half the engine's code buffer holds code.
        Unicorn 2.1.1 flushes a full buffer itself, from inside a run, and under binary
        translation that run then goes wrong: xv6's usertests read a kernel stack back as zeros
        after 7 minutes (with a 2 MiB buffer, its boot faults, or the engine crashes). QEMU never
        frees a translation alone, so the buffer fills with new code and with the code every
        invalidation (bt patches its cache) makes the engine generate again."""
        if self.flush_due():
            self._invalidations = 0
            self.buffer_flushes += 1
            self.flush_translations()

    def invalidate_host_code(self, host_address: int, size: int) -> None:
        """Drop what the engine translated from the bytes of a map_host mapping at
        [host_address, host_address + size), whatever linear addresses the guest's paging gives
        them (QEMU's tb_invalidate_phys_range on the RAM block's offsets, as QEMU's own DMA
        does): after a store the engine did not see (a device's DMA, a monitor write).
        invalidate_code cannot: it takes linear addresses through the current page tables. Safe
        inside a hook, also for the block running (it runs to its end, then is translated
        again); about 1 us on a page without code. The range must lie in one mapping."""
        start = _ram_addr_from_host(self._uc._uch, host_address)
        if start != _RAM_ADDR_INVALID:
            _tb_invalidate_phys_range(self._uc._uch, start, start + size)

    def read(self, address: int, size: int) -> bytes:
        return bytes(self._uc.mem_read(address, size))

    def write(self, address: int, data: bytes) -> None:
        self._uc.mem_write(address, bytes(data))

    # -- registers ------------------------------------------------------------------------------
    # The monitor reads and writes registers on every exit (delivery alone takes dozens): through
    # the C API with one preallocated buffer that costs 0.4 us a call, the binding's 1.6.
    def reg(self, name: str) -> int:
        buffer = self._register_buffer
        buffer.value = 0                  # segment selectors fill two bytes of it
        status = _uc_reg_read(self._handle, REGISTERS[name], self._register_pointer)
        if status:
            raise UcError(status)
        return buffer.value & 0xFFFFFFFF

    def set_reg(self, name: str, value: int) -> None:
        number = _DIRECT_WRITES.get(name)
        if number is None:
            if name != "cr2":
                raise KeyError(name)
            self._set_cr2(value)
            return
        self._register_buffer.value = value & 0xFFFFFFFF
        status = _uc_reg_write(self._handle, number, self._register_pointer)
        if status:
            raise UcError(status)

    def _set_cr2(self, value: int) -> None:
        """Unicorn 2.1.1's register write of CR2 shares CR3's case (cpu_x86_update_cr3): it loads
        CR3 with the value too. CR3 is put back (the engine's TLB is flushed either way)."""
        cr3 = self._uc.reg_read(x86.UC_X86_REG_CR3)
        self._uc.reg_write(x86.UC_X86_REG_CR2, value & 0xFFFFFFFF)
        if self._uc.reg_read(x86.UC_X86_REG_CR3) != cr3:
            self._uc.reg_write(x86.UC_X86_REG_CR3, cr3)

    def reg64(self, name: str) -> int:
        """A long-mode register whole (rip, rsp, r8-r15)."""
        buffer = self._register_buffer
        status = _uc_reg_read(self._handle, LONG_MODE_REGISTERS[name], self._register_pointer)
        if status:
            raise UcError(status)
        return buffer.value

    def set_reg64(self, name: str, value: int) -> None:
        self._register_buffer.value = value
        status = _uc_reg_write(self._handle, LONG_MODE_REGISTERS[name], self._register_pointer)
        if status:
            raise UcError(status)

    def enter_long_mode(self, cr3: int) -> None:
        """Paging on in IA-32e format with CR3 = `cr3` (a PML4), NX usable and write protection
        for supervisor code too (CR0.WP: translated code runs at CPL 1, and read-only pages must
        stop its stores): the CPU is in long mode (compatibility mode until a 64-bit code
        segment is loaded, see set_privilege)."""
        self._uc.reg_write(x86.UC_X86_REG_CR4, self._uc.reg_read(x86.UC_X86_REG_CR4) | 0x20)      # PAE
        self._uc.msr_write(MSR_EFER, self._uc.msr_read(MSR_EFER) | EFER_LME | EFER_NXE)
        self._uc.reg_write(x86.UC_X86_REG_CR3, cr3)
        self._uc.reg_write(x86.UC_X86_REG_CR0, self._uc.reg_read(x86.UC_X86_REG_CR0) | 0x80010001)

    def table_register(self, name: str) -> tuple[int, int]:
        """(base, limit) of gdtr/idtr, or (selector, base) semantics for ldtr/tr via selector()."""
        _sel, base, limit, _flags = self._uc.reg_read(_TABLE_REGISTERS[name])
        if name in _CTX_TABLE_BASES and not self.long_mode:      # (the API reads 32 bits of it)
            base = ctypes.c_uint64.from_address(self._env() + _CTX_TABLE_BASES[name] - _CTX_ENV).value
        return base, limit

    def table_selector(self, name: str) -> int:
        return self._uc.reg_read(_TABLE_REGISTERS[name])[0]

    def set_table_register(self, name: str, base: int, limit: int, selector: int = 0, flags: int = 0) -> None:
        """flags: the cached access rights of ldtr/tr (QEMU keeps the descriptor's high dword;
        its own task switches read the TSS type there). The GDT's and LDT's base may lie above
        4 GiB in a 32-bit engine too (trap with nested paging keeps its descriptor tables there,
        where no 32-bit guest address reaches: docs/isolation.md): the CPU adds base and
        selector in 64 bits for its descriptor loads, but Unicorn's API writes 32 bits of it, so
        the rest goes straight into the CPU state (offsets pinned by tests/test_engine.py)."""
        if self.long_mode or not base >> 32:
            self._uc.reg_write(_TABLE_REGISTERS[name], (selector, base, limit, flags))
            return
        if name not in _CTX_TABLE_BASES:
            raise ValueError(f"{name} base {base:#x}: only the GDT and LDT may lie above 4 GiB")
        self._uc.reg_write(_TABLE_REGISTERS[name], (selector, base & 0xFFFFFFFF, limit, flags))
        ctypes.c_uint64.from_address(self._env() + _CTX_TABLE_BASES[name] - _CTX_ENV).value = base

    def _env(self) -> int:
        """The address of QEMU's CPUX86State (the CPU state the context blob copies); the CPU is
        made at the engine's first use and stays."""
        if self._env_address is None:
            cpu = ctypes.c_uint64.from_address(self._uc._uch.value + _UC_CPU).value
            if not cpu:
                self._uc.reg_read(x86.UC_X86_REG_EAX)          # (makes it)
                cpu = ctypes.c_uint64.from_address(self._uc._uch.value + _UC_CPU).value
            self._env_address = cpu + _CPU_ENV
        return self._env_address

    def read_msr(self, number: int) -> int:
        """ValueError for an MSR the engine does not implement."""
        try:
            return self._uc.msr_read(number)
        except UcError:
            raise ValueError(f"MSR {number:#x}") from None

    def write_msr(self, number: int, value: int) -> None:
        try:
            self._uc.msr_write(number, value)
        except UcError:
            raise ValueError(f"MSR {number:#x}") from None

    # -- hidden CPU state (exception bookkeeping not exposed by the API) ------------------------
    # The fields below are read and written in the live CPU state, at the offsets of the context
    # blob (a verbatim copy of it): a context_save is a 5.6 KB copy and an object, 3.5 us, where
    # one field costs 0.2 us, and several come on every exit.
    def _state(self, offset: int, kind=ctypes.c_int32):
        """The field at `offset` of the context blob, in the live CPU state."""
        return kind.from_address(self._env() + offset - _CTX_ENV)

    def last_exception_info(self) -> tuple[int, bool]:
        """(error_code, raised_by_int_instruction) of the exception now being hooked."""
        return self._state(_CTX_ERROR_CODE).value & 0xFFFFFFFF, bool(self._state(_CTX_EXCEPTION_IS_INT).value)

    def reset_exception_state(self) -> None:
        """Forget the exception just handled. Unicorn never clears old_exception itself, so without
        this the next fault is reported as a double fault (#DF) and the third ends emulation."""
        old = self._state(_CTX_OLD_EXCEPTION)
        if old.value != -1:
            old.value = -1

    def _undo_exit_walk(self) -> None:
        """At the end of every run Unicorn looks up the code in front of each exit (to drop its
        translation) through the guest's page tables: where they no longer map it (an exit in
        code the guest since unmapped, as Linux's freed __init text), the walk takes a page
        fault inside the library: CR2 becomes that address and old_exception 14, so the guest's
        next page fault arrives as a double fault (Linux's first one in user space: "double
        fault" in strncpy_from_user, under direct and vt). Both are put back: CR2 as the guest
        left it (at the run's start, or after the last exception hook of the run)."""
        old = self._state(_CTX_OLD_EXCEPTION)
        if old.value != _PF:
            return
        cr2 = self._state(_CTX_CR2, ctypes.c_uint64)
        if (cr2.value + 1) & 0xFFFFFFFF in self._exits:
            cr2.value = self._run_cr2
            old.value = -1

    def intercept_rdtsc(self) -> None:
        """Make every rdtsc and rdtscp the guest runs natively an exception at the interrupt hook,
        vector RDTSC_EXIT_VECTOR, EIP at the instruction (not run): the hook answers it and moves
        EIP past it, and the run goes on. Unicorn has no hook for rdtsc and reads the host's TSC;
        this is QEMU's own SVM intercept (the CPU marked as an SVM guest intercepting rdtsc and
        nothing else), checked by helper_rdtsc at run time, after CR4.TSD's #GP. Unlike an engine
        exit per rdtsc, which ends the run, and after which Unicorn drops the translations around
        every exit (retranslated by the next run: the code buffer fills and Unicorn's own flush
        inside a run crashed it), this costs one exception and no translation. The other checks
        an SVM guest makes (every bit of `intercept` but rdtsc's clear) pass."""
        self._rdtsc_intercepted = True
        hflags = self._state(_CTX_HFLAGS, ctypes.c_uint32)
        hflags.value |= _HF_GUEST
        intercept = self._state(_CTX_INTERCEPT, ctypes.c_uint64)
        intercept.value |= 1 << (_SVM_EXIT_RDTSC - _SVM_EXIT_INTR)

    def forget_software_interrupt(self) -> None:
        """Clear exception_is_int once an int n / int3 / into was hooked: Unicorn sets EIP to the
        next instruction's before the hook of every exception while it is set, and only a raised
        exception sets it again; an intercepted rdtsc raises none, and would find EIP moved."""
        is_int = self._state(_CTX_EXCEPTION_IS_INT)
        if is_int.value:
            is_int.value = 0

    def set_exits(self, addresses) -> None:
        """Addresses where the engine stops before running the instruction there, as after hlt
        (its translator ends a block in front of one). Translations made meanwhile keep the
        stop: invalidate_code them when an exit goes."""
        self._exits = frozenset(addresses)
        self._uc.ctl_set_exits(list(self._exits))

    def save_state(self):
        """The whole CPU state (general, segment, control, FPU/SSE registers and hidden parts),
        for restore_state: not memory, the TLB or translations."""
        return self._uc.context_save()

    def restore_state(self, state) -> None:
        self._uc.context_restore(state)

    def set_privilege(self, cpl: int, ss: int, cs: int) -> None:
        """Move the CPU to privilege level `cpl` with the stack and code segments `ss` and `cs`
        (descriptors of DPL `cpl` in the engine's tables). Unicorn refuses segment writes that
        change the CPL, so the CPL bits of QEMU's hflags are set in the context first; the
        segment writes then pass the CPU's checks and reload the hidden parts."""
        hflags = self._state(_CTX_HFLAGS, ctypes.c_uint32)
        if hflags.value & 3 != cpl:
            hflags.value = (hflags.value & ~3) | cpl
        self.set_reg("ss", ss)
        self.set_reg("cs", cs)

    def instructions_started(self) -> int:
        """In a run with a count: the instructions the engine started, the one it stopped in
        front of included (a stop from a hook, or the count running out) and hlt included. Read
        from Unicorn's own counter (uc_struct.emu_counter, offset pinned by tests/test_engine.py)."""
        return ctypes.c_uint64.from_address(self._uc._uch.value + _UC_EMU_COUNTER).value

    def cut_count(self) -> None:
        """End a counted run in front of its next instruction, from any thread: the count the
        run was given becomes 0, so Unicorn's count hook stops the run before the next
        instruction, with EIP at it and that instruction counted in instructions_started (as a
        count that runs out). Unlike stop(), which from another thread lands at the start of an
        engine block with EIP left where it was last written (Unicorn skips its PC fix-up when a
        stop was requested): resuming from there runs instructions again (Engine facts). No
        effect on a run without a count; lost if no run is going on (emu_start sets the count)."""
        ctypes.c_uint64.from_address(self._uc._uch.value + _UC_EMU_COUNT).value = 0

    def end_count_after(self, more: int, *, may_lengthen: bool = False) -> None:
        """Inside a counted run (from a code hook or an MMIO callback): the run ends after the
        current instruction and `more` more (0: in front of the next one), as if the count ran
        out there, so that it stops where it resumes exactly. Unlike stop(), which in a code hook
        stops in front of the hooked instruction, and inside a memory access abandons the
        instruction (the next run performs the access again). Never past the count the run was
        given unless `may_lengthen` (by `more` at most: the shadow of an sti that ends it). No
        effect on a run without a count (uc_struct.emu_count pinned by tests/test_engine.py)."""
        started = ctypes.c_uint64.from_address(self._uc._uch.value + _UC_EMU_COUNTER).value
        count = ctypes.c_uint64.from_address(self._uc._uch.value + _UC_EMU_COUNT)
        count.value = started + more if may_lengthen else min(count.value, started + more)

    def segment_base(self, name: str) -> int:
        """The base in the hidden part of a segment register (what the CPU uses, whatever the
        descriptor table says now)."""
        at = _CTX_SEGMENTS + _SEGMENT_INDEX[name] * _SEGMENT_CACHE_SIZE + 8
        return self._state(at, ctypes.c_uint64).value & 0xFFFFFFFF

    def segment_present(self, name: str) -> bool:
        """Whether the hidden part of a segment register holds a present descriptor: QEMU's own
        task switch loads the new selectors with empty hidden parts first (flags 0), and they
        stay so when it faults before loading them."""
        at = _CTX_SEGMENTS + _SEGMENT_INDEX[name] * _SEGMENT_CACHE_SIZE + 20
        return bool(self._state(at, ctypes.c_uint32).value & (1 << 15))

    def interrupt_shadow(self) -> bool:
        """Whether the engine stopped between sti, mov ss or pop ss and the instruction they
        shield from interrupts: QEMU's HF_INHIBIT_IRQ_MASK in hflags, set by the one and cleared
        after the other (tests/test_engine.py)."""
        return bool(self._state(_CTX_HFLAGS, ctypes.c_uint32).value & _HF_INHIBIT_IRQ)

    def privilege(self) -> int:
        """The CPU's current privilege level, as the engine keeps it."""
        return self._state(_CTX_HFLAGS, ctypes.c_uint32).value & 3

    # -- hooks ----------------------------------------------------------------------------------
    def _guarded(self, callback: Callable, default=None) -> Callable:
        def hook(*args):
            if self._hook_error is not None:
                return default
            try:
                return callback(*args)
            except BaseException as error:   # surfaced from run(), never lost inside Unicorn
                self._hook_error = error
                self._uc.emu_stop()
                return default
        return hook

    def on_interrupt(self, handler: Callable[[int], None]) -> None:
        """handler(vector): an exception or `int n` raised by the guest (EIP as the CPU left it)."""
        # A raw callback (the binding's adds two Python frames and a decorator to each call:
        # a third of a cache exit's hook time).
        def hook(_handle, intno, _data):
            if self._hook_error is not None:
                return
            try:
                handler(intno)
                if self._rdtsc_intercepted:
                    self.forget_software_interrupt()
                if self._exits:                     # (a #PF sets CR2, and so may the monitor)
                    self._run_cr2 = self._state(_CTX_CR2, ctypes.c_uint64).value
            except BaseException as error:   # surfaced from run(), never lost inside Unicorn
                self._hook_error = error
                self._uc.emu_stop()
        self._add_raw_hook(uc_const.UC_HOOK_INTR, _INTR_CALLBACK(hook))

    def on_code(self, address: int, handler: Callable[[int], None], end: Optional[int] = None):
        """handler(address) before the instruction at `address` (or at every address up to `end`)
        executes; returns a handle for remove_hook. Code the engine translated earlier does not
        see a new hook: invalidate it. While any code hook exists, a stop that lands at the start
        of a block the engine entered by a chained jump leaves EIP where it was last written, not
        at that block (Unicorn then skips its own fix-up): on_block_at does not."""
        return self._uc.hook_add(uc_const.UC_HOOK_CODE, self._guarded(lambda _uc, at, _size, _data: handler(at)),
                                 None, address, address if end is None else end)

    def on_memory_access(self, begin: int, end: int, handler: Callable[[int, int, bool], None],
                         reads: bool = True):
        """handler(address, size, write) for each data access by guest code that STARTS in
        [begin, end] (an access that starts below and reaches in is missed: widen `begin`),
        writes only unless `reads`. The addresses are linear while the engine's MMU is off and
        PHYSICAL once it pages (measured on 2.1.1). Inside the hook EIP is the accessing
        instruction and the access is not done yet. Returns a handle for remove_hook. Only code
        the engine translates after the hook was added calls it, and while one exists every
        load and store of such code takes the slow path (about 40 times the cost, measured):
        drop the translations when the first comes and when the last goes."""
        def hook(_uc, access, address, size, _value, _data):
            handler(address, size, access == uc_const.UC_MEM_WRITE)
        kinds = uc_const.UC_HOOK_MEM_WRITE | (uc_const.UC_HOOK_MEM_READ if reads else 0)
        return self._uc.hook_add(kinds, self._guarded(hook), None, begin, end)

    def remove_hook(self, handle) -> None:
        self._uc.hook_del(handle)

    def on_block(self, handler: Callable[[int, int], None]) -> None:
        """handler(address, size) before every engine block (costly: for tracing only)."""
        self._uc.hook_add(uc_const.UC_HOOK_BLOCK, self._guarded(lambda _uc, address, size, _data: handler(address, size)))

    def on_block_at(self, address: int, handler: Callable[[int, int], None]):
        """handler(address, size) before every run of an engine block that starts at `address`
        (a block hook bounded to that start: blocks elsewhere cost nothing, and unlike a code
        hook it leaves how the engine keeps EIP alone). Returns a handle for remove_hook. Code
        the engine translated earlier does not see a new hook: invalidate it."""
        return self._uc.hook_add(uc_const.UC_HOOK_BLOCK,
                                 self._guarded(lambda _uc, at, size, _data: handler(at, size)), None, address, address)

    def on_translation(self, handler: Callable[[int, int], None]) -> None:
        """handler(address, size) each time the engine translates a block, before the block runs
        (Unicorn's UC_HOOK_EDGE_GENERATED, which fires where a lookup misses and the block is
        translated, never per execution). Hooks added in the handler miss the block just
        translated: invalidate it and stop(), which ends the run in front of it, none of it run,
        with EIP at its start (and counted in no instruction count).

        Unicorn calls the hook only once some block has returned to its loop (uc_struct.last_tb
        set, for the hook's `previous` argument): before that, every block is translated
        unseen, and under trap all of a kernel's first blocks may end in a trap. So an engine
        that has not run yet gets a zeroed stand-in there, and the hook sees every block."""
        self._uc.hook_add(uc_const.UC_HOOK_EDGE_GENERATED,
                          self._guarded(lambda _uc, block, _previous, _data: handler(block.pc, block.size)))
        self._see_every_translation()

    def _see_every_translation(self) -> None:
        """Unicorn calls translation hooks only once uc_struct.last_tb is set (for the hook's
        `previous` argument): give an engine that has not run yet a zeroed stand-in there."""
        last_tb = ctypes.c_uint64.from_address(self._uc._uch.value + _UC_LAST_TB)
        if not last_tb.value:
            self._no_block_yet = ctypes.create_string_buffer(512)    # read as a TranslationBlock
            last_tb.value = ctypes.addressof(self._no_block_yet)

    def keep_code_coherent(self) -> None:
        """Make every guest store into code the engine translated invalidate that code, as QEMU
        does, for an engine that runs guest code untranslated (direct, trap, vt).

        Unicorn 2.1.1 loses QEMU's protection of pages holding translated code: it stubs out
        the dirty-memory bitmap (cpu_physical_memory_is_clean always answers "clean",
        tlb_protect_code and tlb_unprotect_code do nothing), so notdirty_write cleans a TLB
        entry on the first store into its page, code or not, and later stores into the page's
        code take the fast path and leave the stale translation running; only a translation on
        the same virtual page (tlb_reset_dirty_by_vaddr) arms the entry again. So a store into
        the page of the running block (data kept beside code, realmode.flat's copy loop) and
        then a patch of code translated earlier on that page runs the old code; so does a store
        through another linear mapping of the frame. 2.1.4 (PR #2031) never cleans an entry
        that maps code, at ten times the cost of every store. _CodeWriteGate restores QEMU's
        rule instead: an entry of a page that holds translations stays TLB_NOTDIRTY until the
        page holds none (each store there takes QEMU's slow path, which invalidates what it
        overwrites), and the page's first translation marks every entry mapping its frame, as
        QEMU's tlb_protect_code does.

        Costs (measured, docs/architecture.md's Engine facts): none for a store on the fast
        path; a store into a page holding translated code takes the engine's slow path (about
        230 ns, QEMU's own path there); the first store into a page after a TLB fill passes
        the native gate (about 20 ns); each page's first translation, and the loss of a page's
        last one, a Python call (about 2 us per page). Nothing per translated block."""
        cpu = ctypes.c_uint64.from_address(self._uc._uch.value + _UC_CPU).value
        _code_write_gate().register(self._uc._uch.value, cpu, self)

    def last_block(self) -> int:
        """The address (pc) of the last engine block that returned to Unicorn's loop, -1 if none
        has: read where on_translation finds it (tests pin the offset with it)."""
        pointer = ctypes.c_uint64.from_address(self._uc._uch.value + _UC_LAST_TB).value
        return ctypes.c_uint64.from_address(pointer).value if pointer else -1

    def on_port_io(self, port_in: Callable[[int, int], int],
                   port_out: Callable[[int, int, int], None]) -> None:
        """port_in(port, size) -> value and port_out(port, size, value), sizes in bytes.
        Unicorn calls these for every in/out, including each element of rep ins/outs."""
        self._uc.hook_add(uc_const.UC_HOOK_INSN,
                          self._guarded(lambda _uc, port, size, _data: port_in(port, size), default=0),
                          None, 1, 0, x86.UC_X86_INS_IN)
        self._uc.hook_add(uc_const.UC_HOOK_INSN,
                          self._guarded(lambda _uc, port, size, value, _data: port_out(port, size, value)),
                          None, 1, 0, x86.UC_X86_INS_OUT)

    def on_fast_system_call(self, handler: Callable[[str], None]) -> None:
        """handler("syscall" or "sysenter") in place of the instruction, EIP at it (Unicorn runs
        them as no-ops without a hook; it moves EIP past them after the hook)."""
        for instruction, name in ((x86.UC_X86_INS_SYSCALL, "syscall"), (x86.UC_X86_INS_SYSENTER, "sysenter")):
            self._uc.hook_add(uc_const.UC_HOOK_INSN, self._guarded(lambda _uc, _data, name=name: handler(name)),
                              None, 1, 0, instruction)

    def on_cpuid(self, handler: Callable[[], bool]) -> None:
        """handler() before every cpuid; True means it emulated the instruction (skip it)."""
        self._uc.hook_add(uc_const.UC_HOOK_INSN, self._guarded(lambda _uc, _data: int(bool(handler())), default=0),
                          None, 1, 0, x86.UC_X86_INS_CPUID)

    # -- run control ----------------------------------------------------------------------------
    def run(self, begin: int, until: int, count: int = 0) -> StopCause:
        """Execute from `begin` until hlt, stop() or `count` instructions."""
        self.flush_before_full()
        self.memory_fault = None
        self._fault_address = None
        self._tlb_refused = False
        if self._exits:
            self._run_cr2 = self._state(_CTX_CR2, ctypes.c_uint64).value
        try:
            self._uc.emu_start(begin, until, count=count)
            if self._exits:
                self._undo_exit_walk()
        except UcError as error:
            if self._tlb_refused and self._hook_error is None and error.errno == uc_const.UC_ERR_EXCEPTION:
                self.reset_exception_state()
                return StopCause.TLB_REFUSED
            if self._hook_error is None:
                if error.errno in _MEMORY_ERRORS:
                    kind, reason = _MEMORY_ERRORS[error.errno]
                    address, size = self._fault_address or (None, 0)
                    self.memory_fault = MemoryFault(kind, reason, address, size)
                    return StopCause.MEMORY_FAULT
                raise
        if self._hook_error is not None:
            error, self._hook_error = self._hook_error, None
            raise error
        return StopCause.RETURNED

    def stop(self) -> None:
        self._uc.emu_stop()

    def halted(self) -> bool:
        """Whether the last run ended by executing hlt (EIP is then past it). Telling hlt from
        EIP alone is wrong: a run that stops after an instruction ending in byte F4 (`jne $-10`
        is 75 F4) looks the same."""
        cpu = ctypes.c_uint64.from_address(self._uc._uch.value + _UC_CPU).value
        return ctypes.c_uint32.from_address(cpu + _CPU_HALTED).value != 0


class ScratchCpu:
    """A second, tiny 32-bit engine that runs one register-only instruction for the monitor:
    the BCD adjustments and salc, which the binary translator's 64-bit host code lacks, get
    exactly the engine's own 32-bit results (flags included) this way."""

    _CODE = 0x1000

    def __init__(self) -> None:
        self._uc: Optional[Uc] = None
        self._vector: Optional[int] = None

    def _fresh(self) -> Uc:
        """A new engine: after an exception (aam 0) Unicorn keeps it as in flight, and the next
        one would arrive as #DF (the old_exception pitfall)."""
        uc = Uc(uc_const.UC_ARCH_X86, uc_const.UC_MODE_32)
        uc.mem_map(0, 0x2000)

        def on_interrupt(uc, vector, _data):
            self._vector = vector
            uc.emu_stop()
        uc.hook_add(uc_const.UC_HOOK_INTR, on_interrupt)
        return uc

    def run(self, code: bytes, eax: int, eflags: int) -> tuple[int, int, Optional[int]]:
        """(eax, eflags, exception vector or None) after `code` ran from eax and eflags."""
        if self._uc is None or self._vector is not None:
            self._uc = self._fresh()
        self._uc.mem_write(self._CODE, code + b"\xF4")
        self._uc.reg_write(x86.UC_X86_REG_EAX, eax)
        self._uc.reg_write(x86.UC_X86_REG_EFLAGS, eflags)
        self._vector = None
        self._uc.emu_start(self._CODE, self._CODE + len(code) + 1, count=1)
        return (self._uc.reg_read(x86.UC_X86_REG_EAX), self._uc.reg_read(x86.UC_X86_REG_EFLAGS), self._vector)
