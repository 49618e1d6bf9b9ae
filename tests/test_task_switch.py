"""Hardware task switches (vmm/task_switch.py) in every mode and paging scheme.

The sample guests tasks.elf and tasks16.elf carry most of it; their expected output is QEMU's
(tests/test_samples.py, test_trap.py and test_vt.py run them in each mode's default scheme,
tests/test_qemu_reference.py re-checks the recording). Here: the schemes the modes do not use by
default, which switches the monitor performs where, and guests run under QEMU and the monitor
side by side for what the samples leave out (faults late in a switch, a fault while delivering
#DF through a task gate), plus what is not modelled (a virtual-8086 task)."""

import json

import pytest

from tests.cli import run_vmm, sample_arguments
from tools.fuzzlib import qemu as qemu_reference
from tests.guests import EXIT, run_source
from tests.samples import MANIFEST, REPO_ROOT
from vmm.exits import StopReason

TASK_SAMPLES = [entry for entry in MANIFEST if entry["name"] in ("tasks", "tasks16")]
# The switches tasks.elf makes (tasks16: a call and an iret): far jmp 4 (B, back, the bad TSS,
# back from it), far call 3 (C through its gate, the ring-3 task, P), iret 8 (C, the handler tasks
# and the ring-3 task back, the IDT #TS handler back), through the IDT 5 (3 #GP, #DF, int 0x41).
TASKS_SWITCHES = {"call": 3, "gate": 5, "iret": 8, "jmp": 4}
TASKS16_SWITCHES = {"call": 1, "gate": 1, "iret": 2}
MONITOR_SCHEMES = [("bt", "shadow"), ("bt", "nested"), ("trap", "shadow"), ("trap", "nested"), ("vt", "shadow")]

needs_qemu = pytest.mark.skipif(not qemu_reference.available(), reason="qemu-system-i386 is not installed")


def _run_sample(entry, tmp_path, *options):
    report = tmp_path / "report.json"
    proc = run_vmm(*sample_arguments(entry), *options, "--report", report)
    return proc, json.loads(report.read_text())["counters"]


@pytest.mark.parametrize("mode, paging", MONITOR_SCHEMES, ids=[f"{m}-{p}" for m, p in MONITOR_SCHEMES])
@pytest.mark.parametrize("entry", TASK_SAMPLES, ids=[e["name"] for e in TASK_SAMPLES])
def test_the_monitor_performs_every_task_switch_as_qemu_does(entry, mode, paging, tmp_path):
    # bt and trap emulate far jmp/call and iret; vt with shadow paging takes them as VM exits
    # (the new CR3 must go through the shadow); all of them take task gates in the IDT.
    proc, counters = _run_sample(entry, tmp_path, "--mode", mode, "--paging", paging)
    assert proc.stdout == (REPO_ROOT / entry["expected"]).read_bytes(), proc.stderr.decode()
    assert proc.returncode == 0 and proc.stderr == b""
    switches = TASKS_SWITCHES if entry["name"] == "tasks" else TASKS16_SWITCHES
    assert counters["task_switches"] == switches
    if mode == "vt":           # VT-x exits on every task switch
        assert counters["vt_exits"]["task_switch"] == sum(switches.values())


@pytest.mark.parametrize("mode", ["direct", "vt"])
def test_where_the_engine_switches_tasks_itself_only_task_gates_in_the_idt_reach_the_monitor(mode, tmp_path):
    # direct and vt with nested paging run far jmp/call and iret natively: Unicorn's own
    # switch_tss (QEMU's), which is right for 32-bit TSSs (tasks16 shows where it is not).
    entry = next(e for e in TASK_SAMPLES if e["name"] == "tasks")
    proc, counters = _run_sample(entry, tmp_path, "--mode", mode)
    assert proc.stdout == (REPO_ROOT / entry["expected"]).read_bytes(), proc.stderr.decode()
    assert counters["task_switches"] == {"gate": 5}
    if mode == "vt":
        assert counters["vt_exits"]["task_switch"] == 5


# -- guests run under QEMU and the monitor ----------------------------------------------------------
# A GDT at 0x20000: flat code 0x08 and data 0x10, the main task's TSS 0x18 (at 0x21000), task X's
# 0x20 (at 0x22000), writable data not present 0x28, a code segment 0x30 (named as an LDT), code
# with a 4 KiB limit 0x38. Handlers for #TS, #NP and #GP note vector, error code and saved EIP at
# 0x30000 and go back to the main task by a far jmp.
SETUP = """
    mov dword ptr [0x20008], 0x0000ffff
    mov dword ptr [0x2000c], 0x00cf9a00
    mov dword ptr [0x20010], 0x0000ffff
    mov dword ptr [0x20014], 0x00cf9200
    mov dword ptr [0x20018], 0x10000067
    mov dword ptr [0x2001c], 0x00008902
    mov dword ptr [0x20020], 0x20000067
    mov dword ptr [0x20024], 0x00008902
    mov dword ptr [0x20028], 0x0000ffff
    mov dword ptr [0x2002c], 0x00cf1200
    mov dword ptr [0x20030], 0x0000ffff
    mov dword ptr [0x20034], 0x00cf9a00
    mov dword ptr [0x20038], 0x00000fff
    mov dword ptr [0x2003c], 0x00409a00
    mov word ptr [0x20100], 0x3f
    mov dword ptr [0x20102], 0x20000
    lgdt [0x20100]
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x90000
    mov ax, 0x18
    ltr ax
    mov dx, 0x3fb
    mov al, 3
    out dx, al
"""


def _idt(entries: dict) -> str:
    """IDT at 0x8000 (256 entries): vector -> (handler label, access byte) or a raw (low, high)."""
    lines = ["    mov word ptr [0x7ff0], 0x7ff", "    mov dword ptr [0x7ff2], 0x8000", "    lidt [0x7ff0]"]
    for vector, (low, high) in entries.items():
        entry = 0x8000 + vector * 8
        if isinstance(low, str):
            lines += [f"    mov eax, {low}", f"    mov word ptr [{entry:#x}], ax",
                      f"    mov word ptr [{entry + 2:#x}], 0x08", f"    mov byte ptr [{entry + 4:#x}], 0",
                      f"    mov byte ptr [{entry + 5:#x}], {high:#x}", "    shr eax, 16",
                      f"    mov word ptr [{entry + 6:#x}], ax"]
        else:
            lines += [f"    mov dword ptr [{entry:#x}], {low:#x}", f"    mov dword ptr [{entry + 4:#x}], {high:#x}"]
    return "\n".join(lines) + "\n"


# print_hex: EAX in 8 hex digits, then a space; newline
PRINT_HEX = """
print_hex:
    push ecx
    push edx
    push eax
    mov ecx, 8
print_hex_digit:
    rol eax, 4
    push eax
    and eax, 0xf
    cmp eax, 10
    jb print_hex_decimal
    add eax, 0x27
print_hex_decimal:
    add eax, 0x30
    mov dx, 0x3f8
    out dx, al
    pop eax
    dec ecx
    jnz print_hex_digit
    mov al, 0x20
    out dx, al
    pop eax
    pop edx
    pop ecx
    ret
newline:
    push eax
    push edx
    mov al, 0x0a
    mov dx, 0x3f8
    out dx, al
    pop edx
    pop eax
    ret
"""

# Task X for a case: EIP task_x, ESP 0x9000 (below 64 KiB: where QEMU pushes the fault's frame
# when SS is not loaded yet, as a 16-bit stack, is then the same place), flat segments, EFLAGS 2.
TASK_X = """
    mov edi, 0x22000
    mov ecx, 26
    xor eax, eax
    rep stosd
    mov eax, task_x
    mov dword ptr [0x22020], eax
    mov dword ptr [0x22024], 2
    mov dword ptr [0x22038], 0x9000
    mov dword ptr [0x22048], 0x10
    mov dword ptr [0x2204c], 0x08
    mov dword ptr [0x22050], 0x10
    mov dword ptr [0x22054], 0x10
    mov dword ptr [0x22058], 0x10
    mov dword ptr [0x2205c], 0x10
"""
CASE_END = """
    push 2
    popfd
    .byte 0xea, 0, 0, 0, 0, 0x20, 0
    mov eax, dword ptr [0x30000]
    call print_hex
    mov eax, dword ptr [0x30004]
    call print_hex
    mov eax, dword ptr [0x30008]
    call print_hex
    call newline
"""
HANDLERS = """
task_x:
    mov eax, 0x99
    mov dword ptr [0x30000], eax
    .byte 0xea, 0, 0, 0, 0, 0x18, 0
on_ts:
    mov dword ptr [0x30000], 10
    jmp noted
on_np:
    mov dword ptr [0x30000], 11
    jmp noted
on_gp:
    mov dword ptr [0x30000], 13
noted:
    pop eax
    mov dword ptr [0x30004], eax
    pop eax
    mov dword ptr [0x30008], eax
    push 2
    popfd
    .byte 0xea, 0, 0, 0, 0, 0x18, 0
"""
LATE_FAULTS = ("start:\n" + SETUP + _idt({10: ("on_ts", 0x8E), 11: ("on_np", 0x8E), 13: ("on_gp", 0x8E)})
               + TASK_X + "    mov dword ptr [0x22060], 0x30\n" + CASE_END         # LDT: not an LDT
               + TASK_X + "    mov dword ptr [0x22054], 0x28\n" + CASE_END         # DS not present
               + TASK_X + "    mov dword ptr [0x2204c], 0x38\n" + CASE_END         # EIP past CS's limit
               + TASK_X + "    mov dword ptr [0x22050], 0x28\n" + CASE_END         # SS not present
               + TASK_X + "    mov dword ptr [0x2204c], 0x10\n" + CASE_END         # CS a data segment
               + "    mov eax, 0\n" + EXIT + HANDLERS + PRINT_HEX)


@pytest.fixture(scope="module")
def late_faults_under_qemu():
    if not qemu_reference.available():
        pytest.skip("qemu-system-i386 is not installed")
    proc = qemu_reference.boot_under_qemu(LATE_FAULTS)
    assert proc.returncode == 1, proc.stderr.decode()        # (0 << 1) | 1: the guest finished
    return proc.stdout


@pytest.mark.parametrize("mode", ["direct", "bt", "trap", "vt"])
def test_faults_after_the_commit_point_are_the_new_tasks_as_on_qemu(mode, tmp_path, late_faults_under_qemu):
    # Each case jmps to task X with one thing wrong in its TSS, found once the switch is done:
    # an LDT selector naming a code segment (#TS), DS or SS not present (#NP), EIP past the new
    # CS's limit (#GP(0)), CS a data segment (#TS). The handler runs in task X; QEMU saves the
    # jmp's own EIP in the frame (it restores the instruction's state), and so does the monitor.
    result, output, _vm = run_source(tmp_path, LATE_FAULTS, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT, result.message
    assert output == late_faults_under_qemu
    lines = [line.split() for line in output.decode().splitlines()]
    assert [(vector, error) for vector, error, _eip in lines] == [
        ("0000000a", "00000030"), ("0000000b", "00000028"), ("0000000d", "00000000"),
        ("0000000b", "00000028"), ("0000000a", "00000010")]


DOUBLE_FAULT_TO_A_BAD_TASK = ("start:\n" + SETUP
                              + _idt({8: (0x00200000, 0x00008500), 11: ("on_np", 0x0E)}) + """
    mov dword ptr [0x20024], 0x00000902
    mov al, 0x21
    mov dx, 0x3f8
    out dx, al
    mov ax, 0x28
    mov ds, ax
    mov eax, 0
""" + EXIT + HANDLERS + PRINT_HEX)


@needs_qemu
@pytest.mark.parametrize("mode", ["direct", "bt", "trap", "vt"])
def test_a_fault_switching_to_the_double_fault_task_shuts_down_as_on_qemu(mode, tmp_path):
    # mov ds with a segment not present: #NP, whose gate is not present: #NP again, so #DF; its
    # task gate names a TSS not present: #NP while delivering #DF, a triple fault. QEMU shuts
    # down (-no-reboot: exit status 0) after the "!" the guest printed.
    qemu = qemu_reference.boot_under_qemu(DOUBLE_FAULT_TO_A_BAD_TASK)
    assert (qemu.returncode, qemu.stdout) == (0, b"!")
    result, output, _vm = run_source(tmp_path, DOUBLE_FAULT_TO_A_BAD_TASK, mode=mode)
    assert output == b"!"
    assert result.reason is StopReason.TRIPLE_FAULT
    assert result.message.startswith("triple fault: #NP while delivering #DF (#NP at eip ")


VM86_TASK = ("start:\n" + SETUP + _idt({0x41: (0x00200000, 0x00008500)}) + TASK_X + """
    mov dword ptr [0x22024], 0x20002
    int 0x41
    mov eax, 0
""" + EXIT + HANDLERS + PRINT_HEX)


@pytest.mark.parametrize("mode", ["direct", "bt", "trap", "vt"])
def test_a_switch_into_virtual_8086_mode_stops_as_unsupported(mode, tmp_path):
    # Not modelled (the monitor runs no virtual-8086 code): a clean stop before anything changed.
    result, _output, vm = run_source(tmp_path, VM86_TASK, mode=mode)
    assert result.reason is StopReason.UNSUPPORTED
    assert result.message == "a task switch into virtual-8086 mode: not modelled"
    assert result.exit_status == 122
    assert vm.memory.read(0x2001d, 1) == b"\x8b"          # the main task's TSS still busy


def test_a_switch_into_virtual_8086_mode_is_one_line_on_the_command_line(tmp_path):
    image = tmp_path / "vm86.s"
    image.write_text(VM86_TASK)
    proc = run_vmm("run", image, "--mode", "bt")
    assert proc.returncode == 122
    assert proc.stderr == b"vmm: a task switch into virtual-8086 mode: not modelled\n"


FPU_AFTER_TS = ("start:\n    mov esp, 0x90000\n" + _idt({7: ("on_nm", 0x8E)}) + """
    mov dword ptr [0x30000], 0
    mov eax, cr0
    or eax, 8
    mov cr0, eax
    fld1
    fld1
    mov eax, dword ptr [0x30000]
""" + EXIT + """
on_nm:
    inc dword ptr [0x30000]
    clts
    iretd
""")


@needs_qemu
@pytest.mark.parametrize("mode", ["direct", "bt", "trap", "vt"])
def test_cr0_ts_makes_the_next_fpu_instruction_fault_as_on_qemu(mode, tmp_path):
    # What CR0.TS is for (a task switch sets it: lazy FPU switching). Regression: under bt and
    # trap the guest's CR0 was only virtual, and fld1 ran without #NM.
    qemu = qemu_reference.boot_under_qemu(FPU_AFTER_TS)
    assert qemu.returncode == (1 << 1) | 1                # one #NM, then clts: the second runs
    result, _output, _vm = run_source(tmp_path, FPU_AFTER_TS, mode=mode)
    assert result.guest_value == 1
