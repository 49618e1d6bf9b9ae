"""The run loop end to end: how runs end, limits, unassigned ports, monitor isolation, the report."""

import struct

from tests.guests import EXIT, EXIT0, PUTS, idt_setup, pic_pair, qemu_recorded, run_source
from vmm.exits import ExitReason, StopReason


def test_debug_exit_value_becomes_the_exit_status(tmp_path, mode):
    result, _out, vm = run_source(tmp_path, "mov eax, 0x1234\n" + EXIT, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT
    assert (result.guest_value, result.exit_status) == (0x1234, 0x34)
    assert result.registers["eax"] == 0x1234
    assert vm.bus.counters()["isa-debug-exit"] == {"reads": 0, "writes": 1}


def test_console_output_is_byte_exact(tmp_path, mode):
    source = "mov esp, 0x90000\nmov esi, text\ncall puts\nmov eax, 0\n" + EXIT + PUTS + 'text:\n.byte 0x61, 0x0d, 0x0a, 0x62, 0x01, 0xff, 0\n'
    result, out, _vm = run_source(tmp_path, source, mode=mode)
    assert out == b"a\r\nb\x01\xff"


def test_hlt_with_interrupts_off_ends_the_run_as_halted(tmp_path, mode):
    result, _out, vm = run_source(tmp_path, "mov eax, 5\nhlt\n", mode=mode)
    assert result.reason is StopReason.HALTED and result.exit_status == 0
    assert result.registers["eax"] == 5
    # direct: the engine returns after hlt; bt: hlt is a callout to the monitor
    assert vm.exits[ExitReason.HLT if mode == "direct" else ExitReason.CALLOUT] == 1


def test_instruction_limit_stops_a_runaway_guest(tmp_path, mode):
    result, _out, _vm = run_source(tmp_path, "spin:\n    inc eax\n    jmp spin\n", max_instructions=100_000, mode=mode)
    assert result.reason is StopReason.INSTRUCTION_LIMIT and result.exit_status == 124
    assert result.registers["eax"] >= 40_000          # it really ran, about half the budget


def test_instruction_limit_is_not_mistaken_for_a_halt(tmp_path, mode):
    result, _out, _vm = run_source(tmp_path, "mov eax, 1\nhlt\n", max_instructions=1_000, mode=mode)
    assert result.reason is StopReason.HALTED


def test_time_limit_stops_a_runaway_guest(tmp_path, mode):
    result, _out, vm = run_source(tmp_path, "spin:\n    jmp spin\n", timeout=0.3, mode=mode)
    assert result.reason is StopReason.TIME_LIMIT and result.exit_status == 125
    assert 0.25 < vm.wall_time < 5


def test_unassigned_ports_read_all_ones_and_ignore_writes(tmp_path, mode):
    source = """
    mov dx, 0x80
    in al, dx
    mov byte ptr [0x7000], al
    in ax, dx
    mov word ptr [0x7002], ax
    in eax, dx
    mov dword ptr [0x7004], eax
    out dx, eax
    mov edi, 0x7010
    mov ecx, 3
    cld
    rep insd
    mov esi, 0x7010
    mov ecx, 3
    rep outsb
    mov eax, 0
""" + EXIT
    result, _out, vm = run_source(tmp_path, source, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT
    assert vm.memory.read(0x7000, 8) == b"\xff\x00\xff\xff\xff\xff\xff\xff"
    assert vm.memory.read(0x7010, 12) == b"\xff" * 12                # rep insd: three all-ones dwords
    assert vm.bus.counters()["unassigned"] == {"reads": 6, "writes": 4}


def test_guest_cannot_write_monitor_memory(tmp_path, mode):
    # The boot GDT's page is unassigned memory to the guest's stores (QEMU's boot GDT is in its
    # option ROM, and 0xFF000008 is unassigned there): the store vanishes, the table is intact.
    result, _out, vm = run_source(tmp_path, "mov dword ptr [0xff000008], 0\nmov eax, 0\n" + EXIT, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT and result.exit_status == 0, result.message
    assert vm.memory.mmio.counters()["unassigned"]["writes"] == 1
    assert bytes(vm.memory.monitor_view(8, 8)) != bytes(8)          # the boot GDT is intact


def test_access_beyond_ram_reads_zero_or_stops_on_request(tmp_path, mode):
    source = "mov eax, 5\nmov eax, dword ptr [0x3000000]\n" + EXIT
    result, _out, _vm = run_source(tmp_path, source, mem_mib=32, mode=mode)
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0)     # QEMU reads 0 there
    result, _out, _vm = run_source(tmp_path, source, mem_mib=32, mode=mode, unassigned="stop")
    assert result.reason is StopReason.MEMORY_FAULT and result.exit_status == 121
    assert "read of no memory at physical 0x3000000" in result.message


def test_entry_state_follows_multiboot(tmp_path, mode):
    source = """
    mov dword ptr [0x7000], eax
    mov dword ptr [0x7004], ebx
    mov esp, 0x90000
    pushfd
    pop dword ptr [0x7008]
    xor eax, eax
    mov ax, cs
    mov dword ptr [0x700c], eax
    mov ax, ss
    mov dword ptr [0x7010], eax
    mov eax, cr0
    mov dword ptr [0x7014], eax
    mov eax, 0
""" + EXIT
    _result, _out, vm = run_source(tmp_path, source, mode=mode)
    eax, ebx, eflags, cs, ss, cr0 = struct.unpack("<6I", vm.memory.read(0x7000, 24))
    assert (eax, ebx) == (0x2BADB002, 0x9500)
    assert eflags & 0x200 == 0 and (cs, ss) == (0x08, 0x10)
    assert cr0 & 0x80000001 == 0x1                    # protected mode, paging off


def test_a_run_collects_its_long_lived_heap_rarely_and_gives_the_thresholds_back(tmp_path):
    # vmm/vm.py, RUN_COLLECTOR_THRESHOLDS: Python's full collections walked the whole monitor
    # heap (11.6 s of a Linux boot under bt); the run sets its own thresholds and restores the
    # caller's, whatever they were.
    import gc
    from vmm.builder import MachineConfig, build_machine
    from vmm.console import BufferConsole
    from vmm.vm import RUN_COLLECTOR_THRESHOLDS
    image = tmp_path / "guest.s"
    image.write_text("    mov eax, 3\n" + EXIT)
    vm, _image = build_machine(MachineConfig(image=str(image), mode="bt"), BufferConsole())
    during = []
    execute = vm.mode.execute
    vm.mode.execute = lambda: (during.append(gc.get_threshold()), execute())[1]
    before = gc.get_threshold()
    gc.set_threshold(123, 4, 5)
    try:
        result = vm.run()
        after = gc.get_threshold()
    finally:
        gc.set_threshold(*before)
    assert result.reason is StopReason.DEBUG_EXIT and result.guest_value == 3
    assert during and set(during) == {RUN_COLLECTOR_THRESHOLDS} and after == (123, 4, 5)


# The guest's first write to a timer chip brings time into use inside a run without a count:
# direct and vt end that run from the I/O hook, and the engine stops at the block's next memory
# access with EIP at the block's start, which the hook had seen later (lidt wrote EIP back).
# The run began again there and the OUT to COM1 between ran twice ("AA"; QEMU prints "A").
FIRST_CHIP_WRITE = "    mov esp, 0x90000\n" + idt_setup({0x24: "com1"}) + pic_pair(0xef, 0xff) + """
    mov dx, 0x3f8
    mov al, 0x41
    out dx, al
    mov dword ptr [0x5000], 1
""" + EXIT0 + "com1:\n    iretd\n"

test_io_after_the_first_chip_write_runs_once, test_io_after_the_first_chip_write_runs_once_under_qemu = \
    qemu_recorded(FIRST_CHIP_WRITE, b"A")
