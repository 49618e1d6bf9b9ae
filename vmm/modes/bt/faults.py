"""Faults inside translated code under binary translation: hidden, true and tracing page faults of
the shadow, self-modifying code (stores into pages that hold translations), fetch faults, nested
paging's refusals and faults in the monitor's own region, each mapped back to the guest instruction
that did not complete."""

from __future__ import annotations

from typing import Callable, Optional

from vmm.exits import ExitReason, VmExit
from vmm.guest_paging import GuestPF, Hidden, MonitorPage, NoMemory, Traced
from vmm.memory import PageFault
from vmm.monitor_layout import MONITOR_LINEAR, VCPU_PRIVILEGED_OFFSET, VCPU_PRIVILEGED_SIZE
from vmm.errors import MonitorBug
from vmm.modes.bt.stops import CacheExit, CacheExitKind, Exit, Outcome, Resume, RunOneShot
from vmm.x86 import GP, PAGE_SIZE, PF_VEC


class CacheFaults:
    """Handles the page faults and fetch faults of translated code. Given the cache, the guest-
    paging service (vmm/guest_paging.py: it classifies each fault, this acts on the verdict with
    one-shots), guest memory, the engine and the virtual CPU, plus what it cannot own: `locate(host)` (the
    guest EIP and registers to restore at a host address), `restore(registers)`, the budget,
    `protect_page(page, protect)`, `block_for(eip)` (the translation to resume at after a remap)
    and `count(kind)` (the cache-exit counters)."""

    def __init__(self, cache, paging, memory, engine, cpu, budget,
                 locate: Callable[[int], tuple[Optional[int], tuple]], restore: Callable[[tuple], None],
                 protect_page: Callable[[int, bool], None], block_for: Callable[[int], object],
                 count: Callable[[str], None]) -> None:
        self.cache = cache
        self.paging = paging
        self.memory = memory
        self.engine = engine
        self.cpu = cpu
        self.budget = budget
        self.locate = locate
        self.restore = restore
        self.protect_page = protect_page
        self.block_for = block_for
        self.count = count
        self.reprotect: set[int] = set()     # code pages left writable for an SMC one-shot

    def after_run(self) -> None:
        """After each engine run: code pages opened for a one-shot store are protected again,
        and pages the shadow lent writable go back."""
        if self.reprotect:
            for page in self.reprotect:
                if self.cache.write_protected(page):
                    self.protect_page(page, True)
            self.reprotect = set()
        self.paging.end_loans()

    def guest_page_fault(self, fault: PageFault) -> VmExit:
        """A true fault: the guest's own tables refuse the access; it gets #PF with its CR2."""
        self.count("true_page_fault")
        return self.paging.guest_page_fault(fault, self.cpu.eip)

    def refused_access(self) -> CacheExit:
        """Nested paging refused an access of the translated instruction at the engine's EIP:
        the stop a page fault there would have made, with the exact address."""
        _page, access, present = self.paging.refusal
        host_eip, write = self.engine.reg64("rip"), access == "write"
        address = self.paging.refused_address(self._host_code(host_eip), host_eip, self._host_register,
                                             self._host_segment_base)
        user = 4 if self.cpu.cpl == 3 else 0
        return CacheExit(CacheExitKind.PAGE_FAULT, host_eip, vector=PF_VEC,
                         error_code=(2 if write else 0) | user | (1 if present else 0), address=address)

    def _host_code(self, host_eip: int) -> bytes:
        """Translated code at a host address (for decoding the instruction that faulted there)."""
        return self.cache.arena.read(host_eip, 16)

    def _host_register(self, name: str) -> int:
        """A register as a translated instruction's operand names it (r8..r15 by their low half)."""
        return self.engine.reg(name + "d" if name[0] == "r" and name[1:].isdigit() else name)

    def _host_segment_base(self, segment: str) -> int:
        """In 64-bit mode only FS and GS have bases."""
        return self.engine.segment_base(segment) if segment in ("fs", "gs") else 0

    def fetch_fault(self, stop: CacheExit, guest_eip: int) -> Outcome:
        """Translated code reached an instruction whose bytes could not be fetched when it was
        translated. Fetch them again now: the guest's #PF if they still cannot be (CR2 at the
        first byte that cannot), else the mapping changed since: translate anew."""
        linear = (self.cpu.code_base + guest_eip) & 0xFFFFFFFF
        try:
            physical = self.paging.code_address(linear)
            next_page = (linear | (PAGE_SIZE - 1)) + 1
            if next_page - linear < 15:
                self.paging.code_address(next_page & 0xFFFFFFFF)
        except PageFault as fault:
            return Exit(self.guest_page_fault(fault))
        if not self.memory.ram.contains(physical, 1):
            return Exit(VmExit(ExitReason.MEMORY_FAULT, eip=guest_eip,
                               detail=f"fetch of no memory at {linear:#x}"))
        if stop.block is not None:
            self.cache.remove(stop.block, "remap")
        return Resume(self.block_for(guest_eip).host)

    def page_fault(self, stop: CacheExit) -> Outcome:
        """A page fault from the engine's tables.

        With the guest's paging on, most are hidden faults of the shadow (vmm/shadow_paging.py):
        the entry is filled and the faulting host instruction runs again; the guest's own tables
        may refuse the access (a true fault: the guest's #PF). A store into a write-protected
        page of guest RAM that holds translations is self-modifying code (or data beside code):
        invalidate what the store may overlap, then run that one guest instruction alone with
        the page writable and protect the page again when it exits; a store into a guest page
        table goes the same way and the shadow then looks at what it changed. Anything else
        touched memory the guest does not have, and ends the run."""
        address, write = stop.address, bool(stop.error_code & 2)
        if address >= MONITOR_LINEAR:
            return self._monitor_page_fault(stop)
        address &= 0xFFFFFFFF                # 4-8 GiB: the wrap of an FS/GS base plus offset
        if self.paging.on or self.paging.virtual_tlb:
            verdict = self.paging.fault(address, write, bool(stop.error_code & 4),
                                        lambda: self._host_code(stop.host_eip), self._host_register)
            if isinstance(verdict, Hidden):
                self.count("hidden_page_fault")
                return Resume(stop.host_eip)
            if isinstance(verdict, Traced):
                # a plain mov into a page table, carried out: translated code goes on after it
                # without leaving its block
                self.count("tracing_fault")
                return Resume(stop.host_eip + verdict.length)
            guest_eip = self.to_guest_instruction(stop)
            if isinstance(verdict, GuestPF):
                return Exit(self.guest_page_fault(verdict.fault))
            if isinstance(verdict, NoMemory):
                self.count("memory_fault")
                return Exit(VmExit(ExitReason.MEMORY_FAULT, eip=guest_eip,
                                   detail=f"{'write' if write else 'read'} of no memory at {address:#x} "
                                          f"(physical {verdict.physical:#x})"))
            if isinstance(verdict, MonitorPage):
                # bt's shadows keep no monitor page in the guest's 4 GiB (the monitor is above it)
                raise MonitorBug(f"a monitor page at guest linear {address:#x} under binary translation")
            return self._write_watched(address, verdict.frame, guest_eip)   # Lend
        guest_eip = self.to_guest_instruction(stop)
        page = address // PAGE_SIZE
        if not (write and stop.error_code & 1 and self.memory.ram.contains(address, 1)
                and self.cache.page_has_code(page)):
            self.count("memory_fault")
            access = "write" if write else "read"
            what = "protected memory" if stop.error_code & 1 else "no memory"
            return Exit(VmExit(ExitReason.MEMORY_FAULT, eip=guest_eip,
                               detail=f"{access} of {what} at {address:#x}"))
        self.count("smc_store")
        # The store's size is not reported; no single store spans more than 16 bytes of a page.
        self.cache.invalidate_range(address, min(16, PAGE_SIZE - address % PAGE_SIZE), "smc")
        self.cache.code_page_written(page)
        for affected in {page, (address + 15) // PAGE_SIZE}:
            if self.cache.page_has_code(affected):
                self.protect_page(affected, False)
                self.reprotect.add(affected)
        return RunOneShot(guest_eip)

    def _monitor_page_fault(self, stop: CacheExit) -> Outcome:
        """A fault in the monitor's own region, which only translated code reaches: `mov r, crN`
        at guest ring 3 reading the supervisor-only page is the guest's #GP(0); anything else is
        the monitor's own mistake."""
        guest_eip = self.to_guest_instruction(stop)
        privileged = MONITOR_LINEAR + VCPU_PRIVILEGED_OFFSET
        if stop.error_code & 4 and privileged <= stop.address < privileged + VCPU_PRIVILEGED_SIZE:
            return Exit(VmExit(ExitReason.EXCEPTION, eip=guest_eip, vector=GP, error_code=0))
        raise MonitorBug(f"translated code at {stop.host_eip:#x} faulted on monitor address {stop.address:#x}")

    def to_guest_instruction(self, stop: CacheExit) -> int:
        """Map a fault inside translated code back to the guest instruction it belongs to (which
        did not complete)."""
        guest_eip, restore = self.locate(stop.host_eip)
        if guest_eip is None:
            raise MonitorBug(f"exception {stop.vector} outside translated code at {stop.host_eip:#x}")
        self.budget.uncharge_rest_of_block(stop.host_eip, guest_eip)
        self.restore(restore)
        self.cpu.eip = guest_eip
        return guest_eip

    def _write_watched(self, address: int, frame: int, guest_eip: int) -> Outcome:
        """A guest store the guest's tables allow into a frame the shadow keeps read-only: the
        guest instruction runs alone with its page(s) lent writable (translated code on the frame
        is invalidated first; a page-table frame is compared after)."""
        offset = address % PAGE_SIZE
        if self.cache.page_has_code(frame):
            self.count("smc_store")
            self.cache.invalidate_range(frame * PAGE_SIZE + offset, min(16, PAGE_SIZE - offset), "smc")
            self.cache.code_page_written(frame)
        elif self.paging.page_table(frame):
            self.count("tracing_fault")     # (the service counted it for the report's paging)
        else:
            self.count("write_lent")
        if offset > PAGE_SIZE - 16:
            following = self.paging.frame_of((address + 15) & 0xFFFFFFFF)
            if following is not None and self.cache.page_has_code(following):
                self.cache.invalidate_range(following * PAGE_SIZE, 16, "smc")
        self.paging.lend(address)
        return RunOneShot(guest_eip)
