"""The Unicorn wrapper: the pinned version, and the hidden-state offsets it relies on."""

from vmm.engine import PINNED_UNICORN_VERSION, PROT_READ, Engine, StopCause, unicorn_version
from vmm.boot import enter_protected_mode
from vmm.memory import PhysicalMemory
from vmm.loaders.assembly import assemble

CODE = 0x100000


def machine(source: str):
    engine = Engine()
    memory = PhysicalMemory(engine, 4)
    memory.write(CODE, assemble(source, CODE))
    enter_protected_mode(engine, memory, CODE, 0, 0)
    return engine, memory


def test_loaded_unicorn_is_the_pinned_release():
    # 2.1.1's own __version__ string says 2.1.0; the distribution metadata is authoritative.
    assert unicorn_version() == PINNED_UNICORN_VERSION == "2.1.1"


def test_error_code_and_software_flag_come_from_the_context_blob():
    engine, memory = machine("mov ax, 0x33\nmov ds, ax\nint 0x0d\nhlt")
    seen = []

    def on_interrupt(vector):
        seen.append((vector, engine.reg("eip") - CODE, *engine.last_exception_info()))
        engine.reset_exception_state()
        if len(seen) == 1:
            engine.set_reg("eip", engine.reg("eip") + 3)     # skip the faulting mov ds, ax (66 8e d8)

    engine.on_interrupt(on_interrupt)
    assert engine.run(CODE, memory.until_address) is StopCause.RETURNED
    assert engine.reg("eip") == CODE + 10        # past the final hlt
    # #GP(0x30) from loading selector 0x33 beyond the GDT, at the instruction; then int 0x0d, after it
    assert seen == [(13, 4, 0x30, False), (13, 9, 0, True)]


def test_reset_exception_state_prevents_spurious_double_faults():
    # Without the reset, Unicorn reports the second #GP as #DF and stops at the third.
    engine, memory = machine("mov ax, 0x33\nmov ds, ax\nmov ds, ax\nmov ds, ax\nmov eax, 7\nhlt")
    vectors = []

    def on_interrupt(vector):
        vectors.append(vector)
        engine.reset_exception_state()
        engine.set_reg("eip", engine.reg("eip") + 3)

    engine.on_interrupt(on_interrupt)
    engine.run(CODE, memory.until_address)
    assert vectors == [13, 13, 13] and engine.reg("eax") == 7


def test_undefined_opcodes_arrive_once_as_ud():
    engine, memory = machine("ud2\n.byte 0x0f, 0xff\nmov eax, 7\nhlt")
    seen = []

    def on_interrupt(vector):
        seen.append((vector, engine.reg("eip") - CODE))
        engine.reset_exception_state()
        engine.set_reg("eip", engine.reg("eip") + 2)

    engine.on_interrupt(on_interrupt)
    engine.run(CODE, memory.until_address)
    assert seen == [(6, 0), (6, 2)] and engine.reg("eax") == 7


def test_hook_exceptions_surface_from_run():
    engine, memory = machine("mov dx, 0x80\nin al, dx\nhlt")

    def broken(port, size):
        raise ValueError("device bug")

    engine.on_port_io(broken, lambda *a: None)
    try:
        engine.run(CODE, memory.until_address)
    except ValueError as error:
        assert str(error) == "device bug"
    else:
        raise AssertionError("the hook's exception was lost")


def test_access_outside_ram_is_a_memory_fault_with_its_address():
    engine, memory = machine("mov eax, dword ptr [0x40000000]\nhlt")
    assert engine.run(CODE, memory.until_address) is StopCause.MEMORY_FAULT
    assert engine.memory_fault.kind == "read" and engine.memory_fault.address == 0x40000000


def test_memory_can_be_mapped_after_segment_loads_from_the_read_only_boot_gdt():
    # Regression: the boot GDT once had clear accessed bits in a read-only area; the refused
    # accessed-bit write inside reg_write(CS) left Unicorn unable to map or unmap memory.
    engine, memory = machine("mov dword ptr [0xff003000], 7\nhlt")      # CS, DS... already loaded
    memory.map_monitor_area(0x3000, 0x1000, PROT_READ)
    assert engine.run(CODE, memory.until_address) is StopCause.MEMORY_FAULT
    fault = engine.memory_fault
    assert (fault.kind, fault.reason, fault.address) == ("write", "protected", 0xFF003000)


def test_stop_from_an_io_hook_lands_at_the_next_memory_access_with_a_stale_eip():
    # Pinned engine behaviour that direct mode corrects (DirectMode._resume_point): a stop asked
    # for inside an OUT hook is honoured at the next instruction of the same engine block that
    # touches memory; that instruction does not run and EIP is left at the block's start.
    engine, memory = machine("mov eax, 1\nout 0x80, al\nmov eax, 2\npush eax\nmov eax, 3\nhlt")
    engine.on_port_io(lambda port, size: 0, lambda port, size, value: engine.stop())
    esp = engine.reg("esp")
    engine.run(CODE, memory.until_address)
    assert engine.reg("eip") == CODE and engine.reg("eax") == 2 and engine.reg("esp") == esp


def test_set_privilege_moves_the_cpu_between_rings():
    # Unicorn refuses segment writes that change the CPL; set_privilege patches the CPL in the
    # context first (the hflags offset is checked here against the CPL that ring-3 code sees).
    from vmm.x86 import encode_segment
    engine, memory = machine("mov eax, cs\nmov ebx, ss\nhlt")
    gdt = bytes(8) + encode_segment(0, 0xFFFFF, 0x9B) + encode_segment(0, 0xFFFFF, 0x93) \
        + encode_segment(0, 0xFFFFF, 0xFB) + encode_segment(0, 0xFFFFF, 0xF3)
    memory.write(0x1000, gdt)
    engine.set_table_register("gdtr", 0x1000, len(gdt) - 1)
    engine.set_privilege(3, 0x23, 0x1B)
    assert engine.privilege() == 3
    vectors = []
    engine.on_interrupt(lambda vector: (vectors.append(vector), engine.stop()))
    engine.run(CODE, memory.until_address)
    assert vectors == [13]                            # hlt at CPL 3
    assert (engine.reg("eax"), engine.reg("ebx"), engine.privilege()) == (0x1B, 0x23, 3)
    engine.set_privilege(0, 0x10, 0x08)
    assert (engine.reg("cs"), engine.reg("ss"), engine.privilege()) == (0x08, 0x10, 0)


def test_segment_bases_come_from_the_hidden_part_of_the_segment_registers():
    # The offset of QEMU's segment caches in the context blob, checked against loaded descriptors
    # that the table no longer holds (the CPU keeps using what it loaded).
    from vmm.x86 import encode_segment
    engine, memory = machine("mov ax, 0x10\nmov ds, ax\nmov ax, 0x18\nmov fs, ax\nhlt")
    gdt = bytes(8) + encode_segment(0, 0xFFFFF, 0x9B) + encode_segment(0x12345000, 0xFF, 0x93) \
        + encode_segment(0x00ABC000, 0xFF, 0x93)
    memory.write(0x1000, gdt)
    engine.set_table_register("gdtr", 0x1000, len(gdt) - 1)
    engine.run(CODE, memory.until_address)
    memory.write(0x1000, bytes(len(gdt)))
    assert (engine.segment_base("ds"), engine.segment_base("fs"), engine.segment_base("cs")) == (0x12345000, 0x00ABC000, 0)


def test_segment_present_reads_the_flags_of_the_hidden_part():
    # Engine.segment_present reads the flags at offset 20 of a segment cache: a null selector
    # loads flags 0 (as the engine's own task switch loads new selectors first), a descriptor
    # its access rights, P included.
    from vmm.x86 import encode_segment
    engine, memory = machine("mov ax, 0x10\nmov ds, ax\nxor ax, ax\nmov es, ax\nhlt")
    gdt = bytes(8) + encode_segment(0, 0xFFFFF, 0x9B) + encode_segment(0x12345000, 0xFF, 0x93)
    memory.write(0x1000, gdt)
    engine.set_table_register("gdtr", 0x1000, len(gdt) - 1)
    engine.run(CODE, memory.until_address)
    assert [engine.segment_present(name) for name in ("cs", "ds", "es")] == [True, True, False]


def test_the_engine_counts_the_instructions_a_counted_run_started():
    # Engine.instructions_started reads Unicorn's emu_counter at a pinned uc_struct offset:
    # a run given N instructions started N + 1 (the one it stopped in front of); a stop asked
    # for in an I/O hook lands in front of the next instruction (counted, not run); hlt counts.
    engine, memory = machine("inc eax\ninc eax\nout 0x80, al\ninc eax\ninc eax\nhlt\ninc eax\nhlt")
    engine.run(CODE, memory.until_address, count=2)
    assert engine.instructions_started() == 3 and engine.reg("eax") == 2
    engine.on_port_io(lambda port, size: 0, lambda port, size, value: engine.stop())
    engine.run(engine.reg("eip"), memory.until_address, count=100)
    assert engine.instructions_started() == 2 and engine.reg("eax") == 2      # out, then stopped
    engine.run(engine.reg("eip"), memory.until_address, count=100)
    assert engine.instructions_started() == 3 and engine.reg("eax") == 4      # inc, inc, hlt


CALL_LOOP = """
    mov esp, 0x8000
    mov ecx, 400000
top:
    add eax, 1
    call f
    add esi, eax
    dec ecx
    jnz top
    hlt
f:
    add edx, 3
    jmp g
g:
    add edi, 1
    ret
"""


def test_a_count_cut_from_another_thread_ends_the_run_where_it_resumes_exactly():
    # Engine.cut_count writes uc_struct.emu_count (pinned offset: the count a run was given).
    # Host input ends direct mode's runs this way from the console's reader thread: each cut
    # run stops in front of an instruction, EIP at it, and resuming there runs nothing twice
    # (every block of the loop is entered by a chained jump, and re-running the call would
    # push twice: stop() from another thread does that now and then, see Engine facts). The
    # instructions the runs started, less the one each cut run stopped in front of, are
    # exactly what the guest executed.
    import ctypes
    import random
    import threading
    import time
    from vmm.engine import _UC_EMU_COUNT
    engine, memory = machine(CALL_LOOP)
    engine.run(CODE, memory.until_address, count=12345)
    assert ctypes.c_uint64.from_address(engine._uc._uch.value + _UC_EMU_COUNT).value == 12345
    engine, memory = machine(CALL_LOOP)
    done = threading.Event()

    def cutter():
        while not done.is_set():
            time.sleep(random.uniform(0.0002, 0.002))
            engine.cut_count()

    thread = threading.Thread(target=cutter, daemon=True)
    thread.start()
    eip, runs, executed = CODE, 0, 0
    try:
        while True:
            engine.run(eip, memory.until_address, count=10 ** 15)
            runs += 1
            eip = engine.reg("eip")
            if engine.halted():
                executed += engine.instructions_started()
                break
            executed += engine.instructions_started() - 1
    finally:
        done.set()
        thread.join()
    total, rounds = 0, 400000
    for _ in range(rounds):
        total = (total + _ + 1) & 0xFFFFFFFF
    assert (engine.reg("eax"), engine.reg("edx"), engine.reg("edi"), engine.reg("esi"), engine.reg("esp")) == \
        (rounds, 3 * rounds, rounds, total, 0x8000)
    assert executed == 2 + 9 * rounds + 1 and runs > 5


def test_a_code_hook_ends_a_counted_run_after_its_instruction_through_the_count():
    # Engine.end_count_after, as direct mode's interrupt-window watch uses it at sti (1: the
    # instruction behind it too) and popf/iret (0): Unicorn's count hook runs before any other
    # code hook, so the hooked instruction is counted already; the run stops in front of the
    # next instruction but `n`, with EIP at it, even across the chained jump into `top`.
    for after, stopped_at, eax in ((0, TOP, 1), (1, TOP + 3, 2)):
        engine, memory = machine(LOOP)
        engine.on_port_io(lambda port, size: 0, lambda port, size, value: None)
        engine.on_code(CODE + 16, lambda address, after=after, engine=engine: engine.end_count_after(after, may_lengthen=True))
        engine.run(CODE, memory.until_address, count=10 ** 6)      # mov, add, jmp, add, out, dec, jnz
        assert (engine.reg("eip"), engine.reg("eax"), engine.instructions_started()) == \
            (stopped_at, eax, 8 + after)


def test_the_engine_tells_a_stop_in_the_shadow_of_sti_or_mov_ss():
    # Engine.interrupt_shadow reads QEMU's HF_INHIBIT_IRQ_MASK (bit 3 of hflags in the context
    # blob): set between sti or mov ss and the next instruction, clear elsewhere. Direct mode
    # runs that next instruction before the window when a run ends there.
    for source, shadowed in (("sti\nnop\nnop\nhlt", 1), ("mov ax, ss\nmov ss, ax\nnop\nnop\nhlt", 2)):
        seen = []
        for count in range(1, 4):
            engine, memory = machine(source)
            engine.run(CODE, memory.until_address, count=count)
            seen.append(engine.interrupt_shadow())
        assert seen == [count == shadowed for count in range(1, 4)]


def test_halted_tells_hlt_from_a_count_that_ran_out_after_a_byte_f4():
    # Engine.halted reads CPUState.halted through uc_struct's cpu pointer (pinned offsets). A
    # count that runs out after `jne` (75 F4) leaves EIP past an F4 byte just as hlt does: xv6's
    # spin loop in acquire was taken for hlt by that byte and halted the guest mid-instruction.
    engine, memory = machine("mov ecx, 2\nagain:\nnop\nnop\nnop\nnop\nnop\nnop\nnop\nnop\nnop\n"
                             "dec ecx\njnz again\ninc eax\nhlt\ninc eax")
    engine.run(CODE, memory.until_address, count=23)        # mov, 2 x (9 nops, dec, jnz): past jnz
    assert engine.read(engine.reg("eip") - 1, 1) == b"\xf4" and not engine.halted()
    engine.run(engine.reg("eip"), memory.until_address)      # inc eax, hlt
    assert engine.halted() and engine.reg("eax") == 1
    engine.run(engine.reg("eip"), memory.until_address, count=1)
    assert not engine.halted() and engine.reg("eax") == 2     # the next run clears it


def test_the_cpu_tlb_sits_before_env_at_the_pinned_offsets():
    # Engine.keep_code_coherent's gate reads the CPU's software TLB (QEMU's CPUTLB in the
    # X86CPU's CPUNegativeOffsetState, just before env). Re-derived here: env is where the
    # context blob's copy of it (distinctive registers first) is found in the CPU structure;
    # the store to 0x200000 evicts the code page 0x100000 (same slot of 256) into the victim table.
    import ctypes
    import struct
    from vmm.engine import (_CPU_TLB, _CTX_ENV, _DESC_IOTLB, _DESC_VTABLE, _ENTRY_ADDEND, _ENTRY_CODE,
                            _ENTRY_PADDR, _ENTRY_WRITE, _TLB_DESC, _TLB_DESC_SIZE, _TLB_FAST, _TLB_NOTDIRTY, _UC_CPU,
                            _ram_addr_from_host)
    engine, memory = machine("mov eax, 0x11223344\nmov ecx, 0x55667788\nmov edx, 0x99aabbcc\n"
                             "mov ebx, 0xddeeff01\nmov dword ptr [0x200010], eax\nhlt")
    engine.run(CODE, memory.until_address)
    cpu = ctypes.c_uint64.from_address(engine._uc._uch.value + _UC_CPU).value
    env = bytes(engine.save_state())[_CTX_ENV:_CTX_ENV + 64]
    found = ctypes.string_at(cpu, 64 * 1024).find(env)
    assert found == _CPU_TLB + 2192 == 35408      # sizeof(CPUNegativeOffsetState) == 2192

    def entries(table, count):
        data = ctypes.string_at(table, 64 * count)
        return [struct.unpack_from("<4QQ", data, 64 * i) for i in range(count)]

    tlb = cpu + _CPU_TLB
    mode = 2          # MMU_KNOSMAP_IDX: ring 0 without SMAP
    mask, table = struct.unpack("<QQ", ctypes.string_at(tlb + _TLB_FAST + 16 * mode, 16))
    assert mask == 255 << 6                        # 256 entries of 64 bytes
    read, write, code, paddr, addend = entries(table, 256)[0]
    # The data page: written once, so dirty (no TLB_NOTDIRTY); paddr and addend lead to its bytes.
    assert (read, write, paddr) == (0x200000, 0x200000, 0x200000) and code == 0x200000
    assert ctypes.string_at(0x200010 + addend, 4) == (0x11223344).to_bytes(4, "little")
    # Its CPUIOTLBEntry (16 bytes, same index): addr is the page's RAM offset minus the page.
    iotlb = ctypes.c_uint64.from_address(tlb + _TLB_DESC + mode * _TLB_DESC_SIZE + _DESC_IOTLB).value
    ram = ctypes.c_uint64.from_address(iotlb).value + 0x200000
    assert ram == _ram_addr_from_host(engine._uc._uch, 0x200000 + addend)
    victims = entries(tlb + _TLB_DESC + mode * _TLB_DESC_SIZE + _DESC_VTABLE, 8)
    code_page = [entry for entry in victims if entry[2] == CODE]
    assert len(code_page) == 1
    read, write, code, paddr, addend = code_page[0]
    assert write == CODE | _TLB_NOTDIRTY == 0x100400 and paddr == CODE       # never written: slow stores
    assert ctypes.string_at(CODE + addend, 5) == memory.read(CODE, 5)
    assert (_ENTRY_WRITE, _ENTRY_CODE, _ENTRY_PADDR, _ENTRY_ADDEND) == (8, 16, 24, 32)


ALIAS_STORES = """
    xor eax, eax
    mov ecx, 3
    lea edx, [opcodes]
again:
    lea edi, [site + 0x800000]
    mov bl, byte ptr [edx]
    mov byte ptr [edi], bl
site:
    nop
    inc edx
    dec ecx
    jnz again
    hlt
opcodes:
    .byte 0x40, 0x90, 0x40
"""


def test_a_store_through_an_alias_reaches_the_block_translated_from_its_frame():
    # Linear 8-12 MiB maps 0-4 MiB again; each round stores inc eax, nop, inc eax into the next
    # instruction through that alias. QEMU counts 2 (tests/test_isolation.py's smc_race guests,
    # recorded under QEMU, run this loop). Unicorn 2.1.1 alone counts 3: after the first store
    # the alias's TLB entry stays on the fast store path through the next translation, and the
    # nop round runs the stale inc. keep_code_coherent marks it as QEMU would.
    import struct
    for coherent, expected in ((False, 3), (True, 2)):
        engine, memory = machine(ALIAS_STORES)
        memory.write(0x1000, struct.pack("<III", 0x87, 0, 0x87))      # 4 MiB pages: 0 and 8 MiB -> 0
        if coherent:
            engine.keep_code_coherent()
        engine.set_reg("cr4", 0x10)                                   # PSE
        engine.set_reg("cr3", 0x1000)
        engine.set_reg("cr0", engine.reg("cr0") | 0x80000000)
        assert engine.run(CODE, memory.until_address) is StopCause.RETURNED
        assert engine.halted() and engine.reg("eax") == expected, coherent


# The smc_data pattern on the bare engine: fn is translated, a store into the running block's
# page (not into code) makes Unicorn 2.1.1 clean the page's TLB entry, and the patch of fn's
# immediate then takes the fast path: the old fn runs (0x44444444). QEMU and Unicorn 2.1.4 run
# the patched one (0x11111111; tests/test_fuzz.py's arbiter program, recorded under QEMU).
RUNNING_PAGE_STORE = """
    mov esp, 0x90000
    call fn
    mov dword ptr [data], 1
    mov dword ptr [fn + 1], 0x11111111
    call fn
    hlt
data:
    .long 0
fn:
    mov eax, 0x44444444
    ret
"""


def test_raw_unicorn_2_1_1_runs_the_old_code_after_a_store_into_its_page():
    # The engine fact on the bare library (no Engine, no monitor): the minimal reproducer.
    # Unicorn 2.1.4 prints 0x11111111 here (measured with its wheel), as QEMU does.
    from unicorn import Uc
    from unicorn import unicorn_const as uc_const
    from unicorn import x86_const
    uc = Uc(uc_const.UC_ARCH_X86, uc_const.UC_MODE_32)
    uc.mem_map(0, 0x100000)                        # code at 4 KiB, stack below 576 KiB
    uc.mem_write(0x1000, assemble(RUNNING_PAGE_STORE, 0x1000))
    uc.emu_start(0x1000, 0xF000)
    assert uc.reg_read(x86_const.UC_X86_REG_EAX) == 0x44444444


def test_a_patch_after_a_store_into_the_running_page_reaches_the_translated_code():
    # Coherent first: the gate, process-wide once installed, leaves an engine that did not ask
    # for it (bt's) as Unicorn made it.
    for coherent, expected in ((True, 0x11111111), (False, 0x44444444)):
        engine, memory = machine(RUNNING_PAGE_STORE)
        if coherent:
            engine.keep_code_coherent()
        assert engine.run(CODE, memory.until_address) is StopCause.RETURNED
        assert engine.halted() and engine.reg("eax") == expected, coherent


def test_the_gate_follows_the_pages_that_hold_translations():
    # The engine's bytemap of code pages (by RAM offset) gains a page with its first translation
    # (tlb_protect_code), loses it with its last (tlb_unprotect_code, here from invalidate_code)
    # and forgets everything at a flush; a store into the code's page leaves its entry on the
    # slow path (Unicorn 2.1.1 alone cleans it), one into a page without code cleans it.
    import ctypes
    import struct
    from vmm.engine import _CPU_TLB, _TLB_FAST, _TLB_NOTDIRTY, _UC_CPU, _code_write_gate, _ram_addr_from_host
    engine, memory = machine("mov dword ptr [data], 1\nmov dword ptr [0x201000], 2\nhlt\ndata:\n.long 0")
    engine.keep_code_coherent()
    handle = engine._uc._uch.value
    gate = _code_write_gate()
    assert engine.run(CODE, memory.until_address) is StopCause.RETURNED
    pages = gate.code_pages(handle)
    assert len(pages) == 1
    cpu = ctypes.c_uint64.from_address(handle + _UC_CPU).value

    def write_entry(page):
        mask, table = struct.unpack("<QQ", ctypes.string_at(cpu + _CPU_TLB + _TLB_FAST + 16 * 2, 16))
        return struct.unpack_from("<QQQQQ", ctypes.string_at(table + ((page >> 6) & mask), 40))
    _read, write, _code, _paddr, addend = write_entry(CODE)
    assert pages[0] == _ram_addr_from_host(engine._uc._uch, CODE + addend)
    assert write_entry(0x201000)[1] == 0x201000                 # a data page: dirty after its first store
    assert write == CODE | _TLB_NOTDIRTY                        # the code's page stays on the slow path
    engine.invalidate_code(CODE, CODE + 0x1000)
    assert gate.code_pages(handle) == []
    assert engine.run(CODE, memory.until_address) is StopCause.RETURNED
    assert len(gate.code_pages(handle)) == 1
    engine.flush_translations()
    assert gate.code_pages(handle) == []


def test_segment_limits_are_not_checked():
    # Why the monitor cannot use VMware's segment truncation (docs/isolation.md): a load through
    # a data segment with a 4 KiB limit, far past the limit, succeeds on the engine.
    from vmm.x86 import encode_segment
    engine = Engine()
    memory = engine.map_memory(0, 0x100000)
    gdt = bytes(8) + encode_segment(0, 0xFFFFF, 0x9B, 0xC) + encode_segment(0, 0xFFFFF, 0x93, 0xC) \
        + encode_segment(0, 0x00FFF, 0x93, 0x4)
    memory[0x1000:0x1000 + len(gdt)] = gdt
    memory[0x5000:0x5004] = (0x12345678).to_bytes(4, "little")
    engine.set_table_register("gdtr", 0x1000, len(gdt) - 1)
    engine.set_reg("cr0", 0x11)
    engine.set_reg("cs", 0x08)
    engine.set_reg("ss", 0x10)
    engine.set_reg("ds", 0x18)                       # limit 0xFFF
    code = bytes.fromhex("a100500000") + b"\xF4"    # mov eax, [0x5000]; hlt
    memory[0x2000:0x2000 + len(code)] = code
    faults = []
    engine.on_interrupt(faults.append)
    engine.run(0x2000, 0x2100)
    assert not faults and engine.reg("eax") == 0x12345678


LOOP = """
    mov ecx, 5
top:
    add eax, 1
    jmp middle
middle:
    add ebx, 1
    out 0x80, al
    dec ecx
    jnz top
    hlt
"""


TOP, MIDDLE, HLT = CODE + 5, CODE + 10, CODE + 18    # LOOP's labels and final hlt


def test_the_translation_hook_fires_per_translated_block_from_the_first_and_never_per_run():
    # Engine.on_translation (UC_HOOK_EDGE_GENERATED): once per block translated, the engine's
    # very first block included (the zeroed stand-in at uc_struct.last_tb); the loop's five
    # rounds translate each block once.
    engine, memory = machine(LOOP)
    translated, runs = [], []
    engine.on_port_io(lambda port, size: 0, lambda port, size, value: runs.append(engine.reg("ebx")))
    engine.on_translation(lambda address, size: translated.append(address))
    assert engine.last_block() == 0            # the stand-in reads as a block at 0
    engine.run(CODE, memory.until_address)
    assert runs == [1, 2, 3, 4, 5]
    assert sorted(translated) == [CODE, TOP, MIDDLE, HLT]
    # The offset of last_tb, pinned: it points at the block that last returned to Unicorn's
    # loop, the one before the final hlt's (a hlt leaves by an exception).
    assert engine.last_block() == MIDDLE


def test_a_stop_in_the_translation_hook_ends_the_run_in_front_of_the_block():
    # What rerun_block relies on: none of the block runs, EIP is its start, and a counted
    # run's emu_counter counts none of it; the next run translates it again.
    engine, memory = machine(LOOP)
    translated = []

    def on_translation(address, size):
        translated.append(address)
        if address == MIDDLE and translated.count(address) == 1:
            engine.invalidate_code(address, address + size)
            engine.stop()

    engine.on_translation(on_translation)
    engine.on_port_io(lambda port, size: 0, lambda port, size, value: None)
    engine.run(CODE, memory.until_address, count=100)
    assert engine.reg("eip") == MIDDLE and engine.reg("eax") == 1 and engine.reg("ebx") == 0
    assert engine.instructions_started() == 3           # mov ecx, add eax, jmp
    engine.run(engine.reg("eip"), memory.until_address, count=100)     # (no count: 1 s to flush)
    assert engine.reg("ebx") == 5 and translated.count(MIDDLE) == 2


def test_a_block_hook_at_one_start_sees_only_the_blocks_that_start_there():
    engine, memory = machine(LOOP)
    seen = []
    engine.on_block_at(MIDDLE, lambda address, size: seen.append((address, engine.reg("ebx"))))
    engine.run(CODE, memory.until_address)
    assert seen == [(MIDDLE, rounds) for rounds in range(5)]


def test_with_a_code_hook_anywhere_a_stop_at_a_chained_block_leaves_eip_stale():
    # Pinned engine behaviour (why the trap hole watch uses block hooks, not code hooks): the
    # 4th OUT asks for a stop; nothing touches memory after it, so the stop lands at the start
    # of the next block, `top`, entered by a chained jnz. Without code hooks EIP is `top`; with
    # one anywhere (here on code never run) Unicorn skips its fix-up and EIP stays `middle`.
    results = []
    for code_hook in (False, True):
        engine, memory = machine(LOOP)
        outs = []

        def on_out(port, size, value, engine=engine, outs=outs):
            outs.append(value)
            if len(outs) == 4:
                engine.stop()

        engine.on_port_io(lambda port, size: 0, on_out)
        if code_hook:
            engine.on_code(CODE + 0x1000, lambda address: None)
        engine.run(CODE, memory.until_address)
        results.append((engine.reg("eip"), engine.reg("ebx")))
    assert results == [(TOP, 4), (MIDDLE, 4)]


def test_a_32_bit_engine_reads_descriptors_through_a_gdt_based_above_4_gib():
    # trap with nested paging keeps its ring views of the GDT and LDT at MONITOR_LINEAR, where no
    # 32-bit guest address reaches (docs/isolation.md). Unicorn's API writes 32 bits of a 32-bit
    # engine's GDTR and LDTR bases; Engine.set_table_register puts the rest into the CPU state
    # (the context blob's copy shows where), and the CPU's descriptor loads add base and
    # selector in 64 bits: the virtual TLB is asked for the page above 4 GiB, never for 0x410000.
    import struct
    from vmm.engine import _CTX_TABLE_BASES, PROT_EXEC, PROT_WRITE
    from vmm.boot import BOOT_GDT
    high, views = 0x7F0000410000, 0xFF410000
    engine, memory = machine("mov ax, 0x10\nmov ds, ax\nhlt")
    engine.map_memory(views, 0x1000, PROT_READ)[:len(BOOT_GDT)] = BOOT_GDT
    engine.set_table_register("gdtr", high, len(BOOT_GDT) - 1)
    engine.set_table_register("ldtr", high + 0x800, 0x17, 0x0c)
    assert engine.table_register("gdtr") == (high, len(BOOT_GDT) - 1)
    assert engine.table_register("ldtr")[0] == high + 0x800
    blob = bytes(engine.save_state())
    assert struct.unpack_from("<Q", blob, _CTX_TABLE_BASES["gdtr"])[0] == high
    assert struct.unpack_from("<Q", blob, _CTX_TABLE_BASES["ldtr"])[0] == high + 0x800
    fills = []

    def fill(linear, access):
        fills.append((linear, access))
        if linear == high & ~0xFFF:
            return views, PROT_READ
        return (linear, PROT_READ | PROT_WRITE | PROT_EXEC) if linear < 0x400000 else None

    engine.use_virtual_tlb(fill)
    assert engine.run(CODE, memory.until_address, count=2) is StopCause.RETURNED
    assert engine.reg("ds") == 0x10 and fills == [(CODE, "fetch"), (high & ~0xFFF, "read")]


def test_a_count_cut_short_in_an_mmio_access_ends_the_run_after_that_instruction():
    # Engine.end_count_after writes Unicorn's emu_count (pinned next to emu_counter): from inside an
    # MMIO write the counted run stops in front of the next instruction, the store done once; a
    # plain stop() there abandons the instruction instead, and the next run stores again (why the
    # APIC never stops the engine from its registers). The MMIO read's value reaches EAX.
    source = ("mov ebx, 0\nmov dword ptr [0xfee000b0], 0x55\ninc ebx\ninc ebx\n"
              "mov eax, dword ptr [0xfee00020]\ninc ebx\nhlt")
    for cut in (True, False):
        engine, memory = machine(source)
        writes = []

        def write(offset, size, value, cut=cut):
            writes.append(value)
            if cut:
                engine.end_count_after(0)
            elif len(writes) == 1:
                engine.stop()

        def read(offset, size):
            engine.end_count_after(0)
            return 0x1234
        engine.map_mmio(0xFEE00000, 0x1000, read, write)
        engine.run(CODE, memory.until_address, count=100)
        if cut:
            assert writes == [0x55] and engine.reg("ebx") == 0
            assert engine.instructions_started() == 3          # mov, the store, stopped at inc
            engine.run(engine.reg("eip"), memory.until_address, count=100)
            assert engine.reg("eax") == 0x1234 and engine.reg("ebx") == 2
            engine.run(engine.reg("eip"), memory.until_address, count=100)
            assert engine.reg("ebx") == 3 and engine.halted() and writes == [0x55]
        else:
            assert writes == [0x55] and engine.reg("eip") == CODE + 5    # at the store, again
            engine.run(engine.reg("eip"), memory.until_address, count=100)
            assert writes == [0x55, 0x55]


def _many_blocks(count: int) -> str:
    """`count` blocks in a row (inc eax, then a jump to the next: each one engine block), then hlt."""
    return "".join(f"b{n}:\n    inc eax\n    jmp b{n + 1}\n" for n in range(count)) + f"b{count}:\n    hlt\n"


def test_the_engine_reports_how_full_its_code_buffer_is():
    # The pinned offsets into Unicorn's TCG context (vmm/engine.py, _UC_TCG_CTX): the buffer's
    # size for code is the configured one less the prologue; nothing generated before a run,
    # each new block adds code, a second run of the same blocks adds none, a flush empties it.
    engine, memory = machine(_many_blocks(200))
    used, size = engine.code_buffer_fill()
    assert engine.code_buffer_bytes - 4096 < size <= engine.code_buffer_bytes and used == 0
    engine.run(CODE, memory.until_address)
    assert engine.reg("eax") == 200 and engine.halted()
    after_one, _size = engine.code_buffer_fill()
    assert 200 * 32 < after_one < 200 * 2048           # tens to hundreds of bytes a block
    engine.run(CODE, memory.until_address)
    assert engine.code_buffer_fill()[0] == after_one
    engine.flush_translations()
    assert engine.code_buffer_fill()[0] == 0


def test_the_code_buffer_is_flushed_between_runs_once_half_of_it_holds_code(monkeypatch):
    # Engine.flush_before_full: with a 1 MiB buffer, a run of blocks whose code fills more than
    # half of it is followed by a flush as the next run starts; a run that fills less is not.
    monkeypatch.setenv("VMM_CODE_BUFFER_MIB", "1")
    engine, memory = machine(_many_blocks(1600))        # about 380 bytes of code each
    engine.run(CODE, memory.until_address)
    used, size = engine.code_buffer_fill()
    assert engine.buffer_flushes == 0 and used >= size // 2 and engine.flush_due()
    engine.run(CODE, memory.until_address)
    assert engine.buffer_flushes == 1 and engine.halted() and engine.reg("eax") == 3200


def test_the_fill_estimate_stands_in_where_the_engine_cannot_say(monkeypatch):
    # Where the TCG context's fields do not check out, each invalidation counts
    # CODE_PER_INVALIDATION: half the buffer's worth of them makes a flush due.
    from vmm.engine import CODE_PER_INVALIDATION
    monkeypatch.setenv("VMM_CODE_BUFFER_MIB", "1")
    monkeypatch.setattr("vmm.engine._TCG_CODE_GEN_BUFFER", 8)     # not the fields: refused
    engine, memory = machine("nop\nhlt")
    assert engine.code_buffer_fill() is None
    limit = engine.code_buffer_bytes // 2 // CODE_PER_INVALIDATION
    for _ in range(limit - 1):
        engine.invalidate_code(CODE, CODE + 1)
    engine.run(CODE, memory.until_address)
    assert engine.buffer_flushes == 0
    engine.invalidate_code(CODE, CODE + 1)
    engine.run(CODE, memory.until_address)
    assert engine.buffer_flushes == 1 and engine.halted()


def test_a_bad_code_buffer_size_is_a_one_line_configuration_error(monkeypatch):
    import pytest
    from vmm.errors import ConfigError
    for setting in ("abc", "0", "4096"):
        monkeypatch.setenv("VMM_CODE_BUFFER_MIB", setting)
        with pytest.raises(ConfigError, match="VMM_CODE_BUFFER_MIB"):
            Engine()


def test_writing_cr2_leaves_cr3_alone():
    # Unicorn 2.1.1's reg_write of CR2 loads CR3 with the value too (pinned below on the raw
    # engine); the monitor's set_reg("cr2") puts CR3 back, wherever it is called from.
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn import x86_const as x86
    raw = Uc(UC_ARCH_X86, UC_MODE_32)
    raw.reg_write(x86.UC_X86_REG_CR3, 0x1000)
    raw.reg_write(x86.UC_X86_REG_CR2, 0x5000)
    assert raw.reg_read(x86.UC_X86_REG_CR3) == 0x5000          # the defect
    engine = Engine()
    engine.set_reg("cr3", 0x1000)
    engine.set_reg("cr2", 0x5000)
    assert (engine.reg("cr2"), engine.reg("cr3")) == (0x5000, 0x1000)


def test_a_collected_engine_stops_gating_at_once_and_leaves_the_gate_table_at_the_next_register():
    # The garbage collector finalizes engines at any allocation, also while register() looks
    # through the gate's engines: a finalizer that deleted its entry there raised "dictionary
    # changed size during iteration" (test_exit_cost then test_shadow_paging, in one process).
    import gc
    import struct
    from vmm import engine as engine_module
    gate = engine_module._code_write_gate()
    engine = Engine()
    engine.keep_code_coherent()
    uc = engine._uc._uch.value
    slot = gate._engines[uc][0]
    del engine
    gc.collect()
    assert uc in gate._engines                      # no finalizer touches the dict
    assert struct.unpack_from("<4Q", gate._table, slot * engine_module._GATE_SLOT_SIZE) == (0, 0, 0, 0)
    other = Engine()
    other.keep_code_coherent()
    assert gate._engines.get(uc, (None,))[0] != slot or uc == other._uc._uch.value
    assert not gate._released


def test_the_code_write_gate_reads_its_numbers_as_decimal_whatever_keystone_left_in_memory():
    # The gate's stubs came from a bare Keystone instance, which now and then reads bare numbers
    # as hex (Keystone never initialises its radix: vmm/loaders/assembly.py): "add r10, 32" became
    # 0x32, "shr rax, 12" 0x12, and the monitor segfaulted at a guest's first store into a page
    # of translated code (4 tests of a full suite, now and then, under trap and vt). Assembled
    # again after a hex radix was left in Keystone's memory, the gate is the same code, stepping
    # through its table 32 bytes at a time.
    import ctypes

    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    from keystone import KS_ARCH_X86, KS_MODE_32, KS_OPT_SYNTAX_INTEL, Ks
    from vmm import engine as module
    gate = module._code_write_gate()                  # the process's one gate
    functions = {name: ctypes.cast(getattr(module._library, name), ctypes.c_void_p).value for name in module._GATED}
    live = bytes(gate._code[:len(gate._assemble(functions))])
    for _ in range(10):
        leave_hex = Ks(KS_ARCH_X86, KS_MODE_32)
        leave_hex.syntax = KS_OPT_SYNTAX_INTEL        # ks_option: its radix becomes 16
        del leave_hex
        assert gate._assemble(functions) == live
    steps = [i.op_str for i in Cs(CS_ARCH_X86, CS_MODE_64).disasm(live, 0) if i.mnemonic == "add" and "r10" in i.op_str]
    assert steps and set(steps) == {f"r10, {module._GATE_SLOT_SIZE:#x}"}, steps
