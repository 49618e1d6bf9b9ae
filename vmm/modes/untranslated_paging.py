"""Guest paging for the modes that run guest code untranslated on the engine (trap, and vt with
shadow paging): the engine walks monitor-built shadow tables (vmm/shadow_paging.py) or fills its
virtual TLB by the nested walk (vmm/nested_paging.py), and the guest's control registers are
virtual, written by emulation only.

A page fault reaches the interrupt hook: a hidden one fills the shadow and the instruction runs
again; a store the shadow keeps read-only (into a guest page table) runs with the page lent
writable and the real TF set, so that the single-step trap right after it takes the
permission back; a true fault is the guest's #PF, with CR2 in the virtual CPU. Under trap the
shadows also hold the monitor's descriptor-table pages, supervisor-only: a guest access its own
tables allow there runs the same way with the guest's translation lent (or is emulated), and
while the guest's paging is off the engine pages on flat tables that keep the monitor's areas
from the kernel at CPL 3. Under nested paging a refused access ends the engine's run instead
(the engine reports only its page: the exact address comes from the instruction,
vmm/fault_address.py).
"""

from __future__ import annotations

from vmm.exits import ExitReason, VmExit
from vmm.memory import CR4_PSE, PageFault, UnbackedAccess
from vmm.monitor_paging import MonitorPageTables
from vmm.nested_paging import NestedPaging
from vmm.shadow_paging import MonitorPageAccess, ShadowPaging
from vmm.x86 import CR0_PG, CR0_WP, DB, FPU_CONTROLS, PF_VEC, TF, flushes_tlb, fpu_controls


class UntranslatedPaging:
    """Mixed into a DirectMode subclass whose `cpu` keeps `control` (virtual CR0/2/3/4) and calls
    control_register_written, ring_changed and invalidate_page."""

    pager = None
    flat_tables = False          # trap: the engine pages on MonitorPageTables.build_flat while the guest does not

    def attach_paging(self, vm, scheme: str, ring_compression: bool, monitor_pages=()) -> None:
        """monitor_pages: linear addresses of monitor pages the engine reads through every shadow
        (trap's descriptor tables; vt's guest needs nothing of the monitor's there)."""
        self._stepping_loan = False        # the real TF is set to end a lent write (not the guest's)
        self._guest_tf = False
        if scheme == "nested":
            control = self.cpu.control
            self.pager = NestedPaging(vm.engine, vm.memory, lambda: (control[0], control[3], control[4]),
                                      lambda: self.cpu.cpl)
        elif not monitor_pages:
            self.monitor_tables = MonitorPageTables.build(vm.memory)
            self.pager = ShadowPaging.build(vm.memory, self.monitor_tables, self._flush_tlb,
                                            ring_compression=ring_compression)
            vm.memory.write_observers.append(self.pager.memory_written)
        else:
            # trap: the engine pages even while the guest does not (MonitorPageTables.build_flat),
            # so that the monitor's areas are supervisor-only to the kernel at CPL 3
            self.pager = ShadowPaging.build(vm.memory, None, self._flush_tlb,
                                            ring_compression=ring_compression, monitor_pages=monitor_pages)
            vm.memory.write_observers.append(self.pager.memory_written)
            self.monitor_tables = MonitorPageTables.build_flat(vm.memory)
            self.flat_tables = True
            self._page_flat()

    # -- the guest's paging registers (their writes are emulated) ------------------------------
    def control_register_written(self, number: int, old: int) -> None:
        """The guest wrote CR0, CR3 or CR4: the virtual value is in place."""
        control, engine = self.cpu.control, self.engine
        new = control[number]
        if number in FPU_CONTROLS:     # the guest's x87/SSE controls act on the engine's
            engine.set_reg(f"cr{number}", fpu_controls(number, engine.reg(f"cr{number}"), new))
        if number == 0 and (old ^ new) & CR0_PG and not new & CR0_PG:
            self.pager.reset()
            if self.flat_tables:
                self._page_flat()
            elif not self.pager.virtual_tlb:
                engine.set_reg("cr0", engine.reg("cr0") & ~CR0_PG)
        elif control[0] & CR0_PG and flushes_tlb(number, old, new):
            directory = self.pager.load(control[0], control[3], control[4], user=self.cpu.cpl == 3)
            if directory is not None:        # shadow paging: the engine walks the shadow
                engine.set_reg("cr3", directory)
                engine.set_reg("cr0", engine.reg("cr0") | CR0_PG | CR0_WP)

    def _page_flat(self) -> None:
        """The engine on the flat tables (the guest's paging is off)."""
        engine = self.engine
        engine.set_reg("cr4", engine.reg("cr4") | CR4_PSE)
        engine.set_reg("cr3", self.monitor_tables.directory_address)
        engine.set_reg("cr0", engine.reg("cr0") | CR0_PG)

    def ring_changed(self) -> None:
        if self.cpu.control[0] & CR0_PG or self.pager.virtual_tlb:
            directory = self.pager.select_ring(self.cpu.cpl == 3)
            if directory is not None:
                self.engine.set_reg("cr3", directory)

    def invalidate_page(self, linear: int) -> None:
        if self.cpu.control[0] & CR0_PG:
            self.pager.invalidate_page(linear)

    def _flush_tlb(self) -> None:
        self.engine.flush_tlb()

    def _fetch(self, linear: int, size: int) -> bytes:
        """Guest code at a linear address, for a decoder (b"" where none can be fetched)."""
        try:
            return self._guest_code(linear, size)
        except UnbackedAccess:
            return b""

    # -- faults ----------------------------------------------------------------------------------
    def paging_interrupt(self, vm, vector: int) -> bool:
        """The interrupt hook's share: True when the exception was the monitor's own (a hidden
        page fault, the single step that ends a loan) or became the guest's #PF here."""
        if self.pager is None:
            return False
        engine = self.engine
        if vector == PF_VEC and not self.pager.virtual_tlb and not engine.last_exception_info()[1]:
            if self.cpu.control[0] & CR0_PG:
                self._page_fault(vm)
                return True
            if self.flat_tables:
                self._monitor_area_fault(vm)
                return True
        if self._stepping_loan:
            guest_step = self._guest_tf
            self._end_loan()
            if vector == DB and not guest_step:      # the single step that ends a loan
                engine.reset_exception_state()
                return True
        return False

    def _page_fault(self, vm) -> None:
        engine = self.engine
        error_code, _software = engine.last_exception_info()
        linear = engine.reg("cr2")
        write, user = bool(error_code & 2), self.cpu.cpl == 3
        try:
            frame = self.pager.fill(linear, write, user)
        except PageFault as fault:
            self._end_loan()
            engine.reset_exception_state()
            if not self._fetch_ahead(engine.reg("eip"), fault.linear):
                vm.dispatch(self._guest_page_fault(fault, engine.reg("eip")))
            return
        except UnbackedAccess as error:
            self._end_loan()
            engine.reset_exception_state()
            self._pending_exit = VmExit(ExitReason.MEMORY_FAULT, eip=engine.reg("eip"),
                                        detail=f"{'write' if write else 'read'} of no memory at {linear:#x} "
                                               f"(physical {error.address:#x})")
            engine.stop()
            return
        except MonitorPageAccess as access:
            # The guest's own page at a linear address of one of the monitor's: the instruction
            # runs with the guest's translation lent (or is emulated, serve_monitor_page).
            engine.reset_exception_state()
            if not self.serve_monitor_page(vm, access):
                self.pager.lend_monitor_page(access)
                self._single_step()
            return
        engine.reset_exception_state()
        if frame is not None:           # a store into a guest page table
            self.pager.counters["tracing_faults"] += 1
            eip = engine.reg("eip")
            length = self.pager.store_plainly(self._fetch(eip, 16), engine.reg, linear, frame)
            if length is not None:      # a plain mov, carried out: the guest goes on after it
                engine.set_reg("eip", eip + length)
                return
            self.pager.lend_store(linear)       # anything else: one instruction, lent
            self._single_step()

    def _single_step(self) -> None:
        """The real TF for one instruction: its #DB ends what was lent for it."""
        if not self._stepping_loan:
            self._stepping_loan = True
            eflags = self.engine.reg("eflags")
            self._guest_tf = bool(eflags & TF)
            self.engine.set_reg("eflags", eflags | TF)

    def serve_monitor_page(self, vm, access) -> bool:
        """A mode may carry out an access at a monitor page's linear address itself (True)
        rather than have it run lent."""
        return False

    def _monitor_area_fault(self, vm) -> None:
        """The guest's paging is off and it reached a monitor area the flat tables keep from it:
        to the guest that is physical memory it does not have, as where no area is mapped."""
        engine = self.engine
        error_code, _software = engine.last_exception_info()
        linear, eip = engine.reg("cr2"), engine.reg("eip")
        engine.reset_exception_state()
        if self._fetch_ahead(eip, linear):
            return
        self._pending_exit = VmExit(ExitReason.MEMORY_FAULT, eip=eip,
                                    detail=f"{'write' if error_code & 2 else 'read'} of no memory at {linear:#x}")
        engine.stop()

    def _guest_page_fault(self, fault: PageFault, eip: int) -> VmExit:
        self.pager.counters["true_faults"] += 1
        self.cpu.control[2] = fault.linear
        return VmExit(ExitReason.EXCEPTION, eip=eip, vector=PF_VEC, error_code=fault.error_code)

    def _tlb_refused(self, vm) -> VmExit:
        """Nested paging refused an access (EIP at the instruction): the guest's #PF, or memory
        it does not have."""
        page, access, _present = self.pager.refusal
        eip, write = self.engine.reg("eip"), access == "write"
        if access == "fetch":
            linear = max(page, eip)
        else:
            linear = self.pager.refused_address(self._fetch(eip, 16), eip, self.engine.reg, self.engine.segment_base)
        if not self.pager.monitor_page(linear):
            try:
                if access == "fetch":
                    self.pager.translate(linear, self.cpu.cpl == 3)     # code from RAM only
                if self.pager.fill(linear, write, self.cpu.cpl == 3) is None:
                    return VmExit(ExitReason.EVENT, eip=eip)        # allowed by now: run it again
            except PageFault as fault:
                if access == "fetch" and self._fetch_ahead(eip, fault.linear):
                    return VmExit(ExitReason.EVENT, eip=eip)        # run again up to the page
                return self._guest_page_fault(fault, eip)
            except UnbackedAccess:
                pass                # code fetched from outside RAM
        return VmExit(ExitReason.MEMORY_FAULT, eip=eip,
                      detail=f"{access} of {'the monitor' if self.pager.monitor_page(linear) else 'no memory'} at {linear:#x}")

    def _end_loan(self) -> None:
        """The lent store ran (or faulted): protect the page table again, give TF back."""
        if self._stepping_loan:
            self._stepping_loan = False
            if not self._guest_tf:
                self.engine.set_reg("eflags", self.engine.reg("eflags") & ~TF)
        if self.pager.lending:
            self.pager.end_loans()

    def paging_counters(self) -> dict:
        """The monitor's paging work, whenever it does any (trap; vt with shadow paging): vt's
        nested paging is the engine's own MMU and counts nothing."""
        if self.pager is None:
            return {}
        return {"shadow_paging": self.pager.counters_report()}
