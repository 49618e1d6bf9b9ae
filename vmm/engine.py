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

# The engine's code buffer, and how much of it the monitor counts for each invalidation before it
# flushes the buffer itself (Engine.flush_before_full): 4 times what xv6's boot was measured to
# need, 8 KiB. 64 MiB, not Unicorn's 1 GiB: a flush of a well-used 1 GiB buffer took 2.2 s of
# system time, of 256 MiB 45 ms, of 64 MiB 1 ms (a guest looping on cpuid under bt, which
# patches bt's native stub each time, flushes 31 times a second); xv6's boot and forktest
# under bt took the same time with 32 MiB to 1 GiB.
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
# vtable[8] at 48), CPUTLBDescFast f[3] at 2128 (uintptr mask, CPUTLBEntry *table); i386 has
# NB_MMU_MODES 3. A CPUTLBEntry is 64 bytes: addr_read, addr_write, addr_code, paddr (Unicorn's
# own: the guest-physical page), addend (host address minus the virtual page). All pinned by
# tests/test_engine.py, which finds env by the context blob's copy of it.
_CPU_ENV = 35408
_CPU_TLB = _CPU_ENV - 2192
_TLB_DESC, _TLB_DESC_SIZE, _DESC_VTABLE = 32, 696, 48
_TLB_FAST = 2128
_MMU_MODES, _VICTIM_ENTRIES, _TLB_ENTRY_SIZE = 3, 8, 64
_ENTRY_WRITE, _ENTRY_CODE, _ENTRY_PADDR, _ENTRY_ADDEND = 8, 16, 24, 32
# Low bits of addr_write (qemu/include/exec/cpu-all.h, TARGET_PAGE_BITS_MIN 12).
_TLB_INVALID, _TLB_NOTDIRTY, _TLB_MMIO, _TLB_DISCARD_WRITE = 0x800, 0x400, 0x200, 0x40
_TLB_NOT_FAST_RAM = _TLB_INVALID | _TLB_NOTDIRTY | _TLB_MMIO | _TLB_DISCARD_WRITE
_CTX_ERROR_CODE = _CTX_ENV + 5352        # int error_code of the last exception
_CTX_EXCEPTION_IS_INT = _CTX_ENV + 5356  # int exception_is_int: 1 for int n / int3 / into
_CTX_OLD_EXCEPTION = _CTX_ENV + 5464     # int old_exception: never cleared by Unicorn (see reset)

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

    def invalidate_code(self, begin: int, end: int) -> None:
        """Drop what the engine itself translated from [begin, end): needed after the monitor
        changes code behind its back (mem_write and host-buffer stores do not invalidate).
        Unicorn 2.1.1 walks the guest's page tables for `begin`; where they do not map it, the
        walk takes a page fault inside the call: CR2 overwritten and the exception-in-flight
        marker left set (the guest's next #PF would arrive as #DF). Both are put back (and CR3
        after CR2: Unicorn 2.1.1's reg_write of CR2 loads CR3 with the value too)."""
        self._invalidations += 1
        cr2, cr3 = self._uc.reg_read(x86.UC_X86_REG_CR2), self._uc.reg_read(x86.UC_X86_REG_CR3)
        self._uc.ctl_remove_cache(begin, end)
        if self._uc.reg_read(x86.UC_X86_REG_CR2) != cr2:
            self._uc.reg_write(x86.UC_X86_REG_CR2, cr2)
            self._uc.reg_write(x86.UC_X86_REG_CR3, cr3)
            self.reset_exception_state()

    def flush_before_full(self) -> None:
        """Between runs: drop every translation once the code the monitor's invalidations may
        have made the engine generate again could fill half its code buffer. Unicorn 2.1.1
        flushes a full buffer itself, from inside a run, and under binary translation that run
        then goes wrong: xv6's usertests read a kernel stack back as zeros after 7 minutes (with
        a 2 MiB buffer, its boot faults, or the engine crashes). QEMU never frees a translation
        alone, so the buffer fills at the rate code is patched; each invalidation is counted at
        CODE_PER_INVALIDATION (xv6's boot measured under 8 KiB)."""
        if self._invalidations * CODE_PER_INVALIDATION >= self.code_buffer_bytes // 2:
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
        self._register_buffer.value = value & 0xFFFFFFFF
        status = _uc_reg_write(self._handle, REGISTERS[name], self._register_pointer)
        if status:
            raise UcError(status)

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
        """The address of QEMU's CPUX86State (the CPU state the context blob copies)."""
        return ctypes.c_uint64.from_address(self._uc._uch.value + _UC_CPU).value + _CPU_ENV

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
    def last_exception_info(self) -> tuple[int, bool]:
        """(error_code, raised_by_int_instruction) of the exception now being hooked."""
        blob = bytes(self._uc.context_save())
        error_code, is_int = struct.unpack_from("<ii", blob, _CTX_ERROR_CODE)
        return error_code & 0xFFFFFFFF, bool(is_int)

    def reset_exception_state(self) -> None:
        """Forget the exception just handled. Unicorn never clears old_exception itself, so without
        this the next fault is reported as a double fault (#DF) and the third ends emulation."""
        context = self._uc.context_save()
        (old,) = struct.unpack_from("<i", bytes(context), _CTX_OLD_EXCEPTION)
        if old != -1:
            ctypes.memmove(context.context.value + _CTX_OLD_EXCEPTION,
                           struct.pack("<i", -1), 4)
            self._uc.context_restore(context)

    def set_exits(self, addresses) -> None:
        """Addresses where the engine stops before running the instruction there, as after hlt
        (its translator ends a block in front of one). Translations made meanwhile keep the
        stop: invalidate_code them when an exit goes."""
        self._uc.ctl_set_exits(list(addresses))

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
        context = self._uc.context_save()
        (hflags,) = struct.unpack_from("<I", bytes(context), _CTX_HFLAGS)
        if hflags & 3 != cpl:
            ctypes.memmove(context.context.value + _CTX_HFLAGS, struct.pack("<I", (hflags & ~3) | cpl), 4)
            self._uc.context_restore(context)
        self._uc.reg_write(x86.UC_X86_REG_SS, ss)
        self._uc.reg_write(x86.UC_X86_REG_CS, cs)

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
        (base,) = struct.unpack_from("<Q", bytes(self._uc.context_save()), at)
        return base & 0xFFFFFFFF

    def segment_present(self, name: str) -> bool:
        """Whether the hidden part of a segment register holds a present descriptor: QEMU's own
        task switch loads the new selectors with empty hidden parts first (flags 0), and they
        stay so when it faults before loading them."""
        at = _CTX_SEGMENTS + _SEGMENT_INDEX[name] * _SEGMENT_CACHE_SIZE + 20
        (flags,) = struct.unpack_from("<I", bytes(self._uc.context_save()), at)
        return bool(flags & (1 << 15))

    def interrupt_shadow(self) -> bool:
        """Whether the engine stopped between sti, mov ss or pop ss and the instruction they
        shield from interrupts: QEMU's HF_INHIBIT_IRQ_MASK in hflags, set by the one and cleared
        after the other (tests/test_engine.py)."""
        (hflags,) = struct.unpack_from("<I", bytes(self._uc.context_save()), _CTX_HFLAGS)
        return bool(hflags & _HF_INHIBIT_IRQ)

    def privilege(self) -> int:
        """The CPU's current privilege level, as the engine keeps it."""
        (hflags,) = struct.unpack_from("<I", bytes(self._uc.context_save()), _CTX_HFLAGS)
        return hflags & 3

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
        self._uc.hook_add(uc_const.UC_HOOK_INTR, self._guarded(lambda _uc, intno, _data: handler(intno)))

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

    def keep_alias_stores_coherent(self) -> None:
        """Make guest stores through any linear alias of a frame see the code the engine
        translated from it, as QEMU does (Engine facts in docs/architecture.md).

        Unicorn 2.1.1 runs guest stores into RAM on its fast path once a TLB entry is marked
        dirty; a store through an entry still marked TLB_NOTDIRTY takes the slow path, which
        invalidates translations on that page and marks the entry dirty. When it translates a
        block, Unicorn marks TLB_NOTDIRTY again only on the entries whose VIRTUAL page is the
        block's (tlb_reset_dirty_by_vaddr), where QEMU marks every entry that maps the same host
        page (tlb_protect_code -> tlb_reset_dirty). So a store through a second mapping of the
        frame, made dirty before the translation, stays fast and the block runs stale. After
        each translation this marks those entries as QEMU would, and touches nothing else: each
        entry keeps its translation, so a PTE change stays unseen until invlpg as on QEMU.

        Costs a few microseconds per translated block (never per executed one)."""
        cpu = ctypes.c_uint64.from_address(self._uc._uch.value + _UC_CPU).value
        self._tlb = cpu + _CPU_TLB
        self._victim_tables = [(self._tlb + _TLB_DESC + mode * _TLB_DESC_SIZE + _DESC_VTABLE, _VICTIM_ENTRIES)
                               for mode in range(_MMU_MODES)]

        hook = self._guarded(lambda _uc, block, _previous, _data:
                             self.mark_code_page_aliases(block.contents.pc, block.contents.size))
        self._add_raw_hook(uc_const.UC_HOOK_EDGE_GENERATED, _EDGE_CALLBACK(hook))
        self._see_every_translation()

    def mark_code_page_aliases(self, address: int, size: int) -> int:
        """Mark TLB_NOTDIRTY on every dirty, writable TLB entry that maps the host page(s) of the
        code at [address, address + size) (what QEMU's tlb_reset_dirty does for a new block);
        returns how many it marked. The host page is the one the code TLB entry of each page
        names. Entries are matched by Unicorn's paddr field first (a byte search, C speed), then
        checked by host address: the engine maps each host page at one physical address (RAM
        frames are distinct), so the same host page is the same physical page."""
        fast = struct.unpack("<6Q", ctypes.string_at(self._tlb + _TLB_FAST, 16 * _MMU_MODES))
        tables = [(fast[2 * mode + 1], (fast[2 * mode] >> 6) + 1) for mode in range(_MMU_MODES)]
        tables += self._victim_tables
        contents = [(table, ctypes.string_at(table, entries * _TLB_ENTRY_SIZE)) for table, entries in tables]
        first, last = address & ~0xFFF, (address + size - 1) & ~0xFFF
        code_pages: dict[int, int] = {}          # paddr -> host page of the code
        for page in (first,) if first == last else (first, last):
            for mode in range(_MMU_MODES):       # the fast slot of each mode, then the victims
                mask, table = fast[2 * mode], fast[2 * mode + 1]
                slot = ((page >> 12) << 6) & mask
                code, paddr, addend = struct.unpack("<3Q", ctypes.string_at(table + slot + _ENTRY_CODE, 24))
                if code & ~0xFFF == page:
                    code_pages[paddr] = (page + addend) & 0xFFFFFFFFFFFFFFFF
            for table, data in contents[_MMU_MODES:]:
                for at in range(0, len(data), _TLB_ENTRY_SIZE):
                    code, paddr, addend = struct.unpack_from("<3Q", data, at + _ENTRY_CODE)
                    if code & ~0xFFF == page:
                        code_pages[paddr] = (page + addend) & 0xFFFFFFFFFFFFFFFF
        marked = 0
        for paddr, host in code_pages.items():
            pattern = struct.pack("<Q", paddr)
            for table, data in contents:
                at = data.find(pattern)
                while at >= 0:
                    if at % _TLB_ENTRY_SIZE == _ENTRY_PADDR:
                        entry = at - _ENTRY_PADDR
                        write, addend = struct.unpack_from("<Q16xQ", data, entry + _ENTRY_WRITE)
                        if not write & _TLB_NOT_FAST_RAM and ((write & ~0xFFF) + addend) & 0xFFFFFFFFFFFFFFFF == host:
                            ctypes.c_uint64.from_address(table + entry + _ENTRY_WRITE).value = write | _TLB_NOTDIRTY
                            marked += 1
                    at = data.find(pattern, at + 1)
        return marked

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
        try:
            self._uc.emu_start(begin, until, count=count)
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
    exactly the engine's own 32-bit results (flags included) this way; and cpuid's answers, for
    the untranslated modes' cpuid hook (vmm/msr_cpuid.py)."""

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

    def cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        """(eax, ebx, ecx, edx) of cpuid here: the untranslated modes' engine's CPU model."""
        if self._uc is None or self._vector is not None:
            self._uc = self._fresh()
        self._uc.mem_write(self._CODE, b"\x0f\xa2\xf4")
        self._uc.reg_write(x86.UC_X86_REG_EAX, leaf)
        self._uc.reg_write(x86.UC_X86_REG_ECX, subleaf)
        self._uc.emu_start(self._CODE, self._CODE + 3, count=1)
        return tuple(self._uc.reg_read(register) for register in
                     (x86.UC_X86_REG_EAX, x86.UC_X86_REG_EBX, x86.UC_X86_REG_ECX, x86.UC_X86_REG_EDX))

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
