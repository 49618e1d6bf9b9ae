"""The guest's debug registers and hardware breakpoints, in every mode, as qemu-system-i386 (QEMU
7.2, the reference) gives them: the debug registers live in the monitor (vmm/debug_registers.py),
instruction breakpoints hit in front of their instruction (#DB, a fault) unless EFLAGS.RF, data
breakpoints after the access (a trap), DR6 as QEMU's check_hw_breakpoints leaves it.

Each guest prints, from its #DB handler, "D" and DR6, the saved EIP and the saved EFLAGS; the
expected consoles were recorded under QEMU 7.2 (`test_expectations_are_qemus` runs QEMU again
when it is installed). Under direct and vt, a guest's enabled code breakpoint used to reach
Unicorn 2.1.1's own hardware breakpoints, and the monitor died with SIGSEGV when it hit
(kvm-unit-tests' emulator.flat, test_mov_pop_ss_code_db): every run is in a process of its own,
so that a crash fails the test instead of ending the test run.

Also here: mov drN at CPL 3 (#GP) and breakpoints hit in ring 3 (probe guests), the hlt in front
of an instruction the untranslated modes stop in front of (it waited for nothing), and vt's
dr_access exits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.guests import PUTC, flat_gdt, idt_setup
from tests.probe import brief, parse, probe_source, qemu_available, run_under_qemu
from tests.samples import REPO_ROOT
from tests.test_task_switch import PRINT_HEX, SETUP, TASK_X, _idt

GP, DB = 13, 1
MODES = [("bt", None), ("direct", None), ("trap", None), ("vt", None)]
PAGING_MODES = [("bt", "shadow"), ("bt", "nested"), ("direct", None), ("trap", "shadow"), ("trap", "nested"),
                ("vt", "shadow"), ("vt", "nested")]
RING3_MODES = [("bt", None), ("direct", None), ("vt", "nested"), ("vt", "shadow")]   # (test_exact.py: not trap)
needs_qemu = pytest.mark.skipif(not qemu_available(), reason="qemu-system-i386 is not installed")

# The handler's switches, in the word at 0x7f04: bit 0 sets RF in the saved EFLAGS (resume over
# an instruction breakpoint), bit 1 clears DR7, bit 2 clears TF in the saved EFLAGS. It counts
# the #DBs at 0x7f00 and clears DR7 at the fifth, whatever the switches say.
HANDLER = """
db:
    push eax
    mov al, 0x44
    call putc
    mov eax, dr6
    call hex32
    mov eax, dword ptr [esp + 4]
    call hex32
    mov eax, dword ptr [esp + 12]
    call hex32
    mov al, 10
    call putc
    mov eax, 0xffff0ff0
    mov dr6, eax
    inc dword ptr [0x7f00]
    test dword ptr [0x7f04], 1
    jz keep_rf
    or dword ptr [esp + 12], 0x10000
keep_rf:
    test dword ptr [0x7f04], 2
    jz keep_dr7
    mov eax, 0x400
    mov dr7, eax
keep_dr7:
    test dword ptr [0x7f04], 4
    jz keep_tf
    and dword ptr [esp + 12], 0xfffffeff
keep_tf:
    cmp dword ptr [0x7f00], 5
    jb db_done
    mov eax, 0x400
    mov dr7, eax
db_done:
    pop eax
    iretd
ud:
    mov al, 0x55
    call putc
    add dword ptr [esp], 3
    iretd
hex32:
    push ecx
    push eax
    mov ecx, 8
hex_next:
    rol eax, 4
    push eax
    and al, 0xf
    add al, 0x30
    cmp al, 0x39
    jbe hex_digit
    add al, 0x27
hex_digit:
    call putc
    pop eax
    dec ecx
    jnz hex_next
    mov al, 0x20
    call putc
    pop eax
    pop ecx
    ret
""" + PUTC


def guest(body: str, setup: str = "") -> str:
    """A ring-0 guest: the #DB (and #UD) handler installed, `setup`, then `body`, then "." and
    isa-debug-exit 0."""
    return ("    mov esp, 0x7000\n    mov dword ptr [0x7f00], 0\n    mov dword ptr [0x7f04], 0\n"
            + idt_setup({1: "db", 6: "ud"}) + setup + body
            + "    mov al, 0x2e\n    call putc\n    mov al, 10\n    call putc\n"
              "    mov eax, 0\n    out 0xf4, eax\n    cli\n    hlt\n" + HANDLER)


# Paging on, linear 0x800000-0x800fff mapped to physical 0x200000 (and the first 4 MiB one to
# one), on a GDT of the guest's own.
PAGING = flat_gdt(0x6000) + """
    mov edi, 0x81000
    mov eax, 3
map_next:
    mov dword ptr [edi], eax
    add eax, 0x1000
    add edi, 4
    cmp edi, 0x82000
    jne map_next
    mov dword ptr [0x82000], 0x200003
    mov dword ptr [0x80000], 0x81003
    mov dword ptr [0x80008], 0x82003
    mov eax, 0x80000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
"""

CASES = {
    # The reproducer: a code breakpoint on the instruction after mov ss (and after pop ss): QEMU
    # takes the #DB there. bt printed "N" (no breakpoints at all); direct and vt crashed.
    "after mov ss and pop ss": (guest("""
    mov dword ptr [0x7f04], 1
    lea eax, [after_mov]
    mov dr0, eax
    mov eax, 0x402
    mov dr7, eax
    mov ax, ss
    mov ss, ax
after_mov:
    nop
    push ss
    lea eax, [after_pop]
    mov dr0, eax
    pop ss
after_pop:
    nop
    mov al, 0x4e
    call putc
"""), b'Dffff0ff1 001000ab 00000002 \nDffff0ff1 001000b9 00000002 \nN.\n'),
    # A hit in a loop: the handler sets RF, so the instruction then runs; the next round hits
    # again (RF lasts one instruction). QEMU does not set RF in the saved EFLAGS itself.
    "RF resumes over the breakpoint": (guest("""
    mov dword ptr [0x7f04], 1
    lea eax, [target]
    call hex32
    mov dr0, eax
    mov eax, 0x402
    mov dr7, eax
    mov ecx, 2
again:
target:
    nop
    dec ecx
    jnz again
    mov eax, dword ptr [0x7f00]
    call hex32
"""), b'001000af Dffff0ff1 001000af 00000046 \nDffff0ff1 001000af 00000002 \n00000002 .\n'),
    # Without RF the instruction hits again at once (until the handler's fifth #DB clears DR7).
    "no RF, the breakpoint hits again": (guest("""
    lea eax, [target]
    call hex32
    mov dr0, eax
    mov eax, 0x402
    mov dr7, eax
target:
    nop
    mov eax, dword ptr [0x7f00]
    call hex32
"""), (
    b'001000a0 Dffff0ff1 001000a0 00000047 \n'
    b'Dffff0ff1 001000a0 00000047 \n'
    b'Dffff0ff1 001000a0 00000047 \n'
    b'Dffff0ff1 001000a0 00000047 \n'
    b'Dffff0ff1 001000a0 00000047 \n'
    b'00000005 .\n'
)),
    # DR0 and DR1 at the same instruction, only DR1 enabled: one #DB, DR6 names both (QEMU sets
    # B0-B3 for every instruction breakpoint there, enabled or not); DR2's, disabled, never hits.
    "a disabled breakpoint does not hit": (guest("""
    mov dword ptr [0x7f04], 3
    lea eax, [target]
    call hex32
    mov dr0, eax
    mov dr1, eax
    lea eax, [disabled]
    mov dr2, eax
    mov eax, 0x408
    mov dr7, eax
    nop
target:
    nop
disabled:
    nop
    mov eax, dword ptr [0x7f00]
    call hex32
"""), b'001000b7 Dffff0ff3 001000b7 00000047 \n00000001 .\n'),
    # DR2 watches 4 bytes at 0x7e00 for writes, then for reads and writes: each #DB comes after
    # the access (EIP at the next instruction), B2 set; a load, and a store next to the range,
    # do not hit; a store that reaches into it (a word at 0x7dff) does.
    "data breakpoints": (guest("""
    lea eax, [after_store]
    call hex32
    mov eax, 0x7e00
    mov dr2, eax
    mov eax, 0x0D000420
    mov dr7, eax
    mov eax, dword ptr [0x7e00]
    mov dword ptr [0x7e00], eax
after_store:
    mov byte ptr [0x7e03], al
    mov byte ptr [0x7e04], al
    mov word ptr [0x7dff], ax
    mov eax, 0x0F000420
    mov dr7, eax
    mov eax, dword ptr [0x7dfc]
    mov eax, dword ptr [0x7e00]
    push dword ptr [0x7e00]
    pop eax
    mov eax, dword ptr [0x7f00]
    call hex32
"""), (
    b'001000af Dffff0ff4 001000af 00000046 \n'
    b'Dffff0ff4 001000b4 00000046 \n'
    b'Dffff0ff4 001000bf 00000046 \n'
    b'Dffff0ff4 001000d1 00000046 \n'
    b'Dffff0ff4 001000d7 00000046 \n'
    b'00000005 .\n'
)),
    # A hit on the third round of a loop, by a store whose block ran twice before (under bt the
    # one-instruction blocks were chained after their first run, and the #DB came late).
    "a data breakpoint in a loop": (guest("""
    mov eax, 0x7e00
    mov dr2, eax
    mov eax, 0x0D000420
    mov dr7, eax
    mov esi, 0x7e08
    mov ecx, 3
again:
    mov dword ptr [esi], ecx
    sub esi, 4
    dec ecx
    jnz again
    mov eax, dword ptr [0x7f00]
    call hex32
"""), b'Dffff0ff4 001000a6 00000002 \n00000001 .\n'),
    # The guest's TF: DR6.BS after the step (the handler clears TF).
    "single step sets BS": (guest("""
    mov dword ptr [0x7f04], 4
    pushfd
    or dword ptr [esp], 0x100
    popfd
    nop
    nop
    mov eax, dword ptr [0x7f00]
    call hex32
"""), b'Dffff4ff0 0010009e 00000102 \n00000001 .\n'),
    # DR7.GD is kept and read back, and raises nothing (QEMU does not model general detect).
    "general detect is not modelled": (guest("""
    mov eax, 0x2400
    mov dr7, eax
    mov eax, dr6
    mov al, 0x67
    call putc
    mov eax, dr7
    call hex32
    mov eax, 0x400
    mov dr7, eax
    mov eax, dr7
    call hex32
"""), b'g00002400 00000400 .\n'),
    # DR4 reads DR6 until CR4.DE makes DR4 and DR5 #UD.
    "DR4 and DR5 under CR4.DE": (guest("""
    mov eax, dr4
    call hex32
    mov eax, 8
    mov cr4, eax
    mov eax, dr4
    mov eax, dr5
    mov dr4, eax
    mov eax, dr0
    call hex32
"""), b'ffff0ff0 UUU00000000 .\n'),
    # Paging on: DR0 at an instruction, DR3 watching linear 0x800010 (physical 0x200010) for
    # writes. The handler sets RF each time: the #DB after the next instruction saves it clear.
    "breakpoints at linear addresses": (guest("""
    mov dword ptr [0x7f04], 1
    lea eax, [target]
    mov dr0, eax
    mov eax, 0x800010
    mov dr3, eax
    mov eax, 0xD0000482
    mov dr7, eax
target:
    mov dword ptr [0x800014], eax
    mov dword ptr [0x800010], eax
    mov dword ptr [0x80000c], eax
    mov byte ptr [0x800013], al
    nop
    mov eax, dword ptr [0x7f00]
    call hex32
""", setup=PAGING), (
    b'Dffff0ff1 0010013d 00000086 \n'
    b'Dffff0ff8 00100147 00000086 \n'
    b'Dffff0ff8 00100151 00000086 \n'
    b'00000003 .\n'
)),
    # A store through another linear address of the watched frame: no hit on QEMU, whose
    # watchpoints are linear; here the memory hooks see physical addresses (not modelled).
    "a store through another mapping of the frame": (guest("""
    mov eax, 0x800010
    mov dr3, eax
    mov eax, 0xD0000480
    mov dr7, eax
    mov dword ptr [0x200010], eax
    nop
    mov eax, dword ptr [0x7f00]
    call hex32
""", setup=PAGING), b'00000000 .\n'),
}
PAGED = ("breakpoints at linear addresses", "a store through another mapping of the frame")
RUNS = [(name, mode, paging) for name in CASES for mode, paging in (PAGING_MODES if name in PAGED else MODES)]
NOT_MODELLED = {"a store through another mapping of the frame":
                "data breakpoints watch the frame their linear range maps to (Unicorn's memory hooks see "
                "physical addresses): a store through another mapping of it hits too"}

# Runs a guest in a process of its own and prints its console as JSON (a crash of the engine
# must fail one test, not end the test run).
_CHILD = """
import json, pathlib, sys
from tests.guests import run_source
result, output, _vm = run_source(pathlib.Path(sys.argv[1]), sys.stdin.read(), **json.loads(sys.argv[2]))
print(json.dumps([output.decode("latin-1"), result.reason.value, result.message]))
"""


def _run_apart(tmp_path, source: str, **config) -> bytes:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), json.dumps({"timeout": 60, **config})],
                          input=source, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, f"the monitor died: status {proc.returncode}\n{proc.stderr[-2000:]}"
    output, reason, message = json.loads(proc.stdout)
    assert reason == "debug_exit", message
    return output.encode("latin-1")


def _params():
    """Every run; those of a case NOT_MODELLED must differ from QEMU (strict: one that starts to
    agree fails until it is taken off the list)."""
    params = []
    for name, mode, paging in RUNS:
        marks = [pytest.mark.xfail(strict=True, reason=NOT_MODELLED[name])] if name in NOT_MODELLED else []
        params.append(pytest.param(name, mode, paging, id=f"{name}-{mode}-{paging or 'default'}", marks=marks))
    return params


@pytest.mark.parametrize("name, mode, paging", _params())
def test_debug_registers_as_on_qemu(tmp_path, name, mode, paging):
    source, expected = CASES[name]
    config = {"mode": mode, **({"paging": paging} if paging else {})}
    assert _run_apart(tmp_path, source, **config) == expected


@needs_qemu
@pytest.mark.parametrize("name", list(CASES))
def test_expectations_are_qemus(name):
    from tools.fuzzlib.qemu import boot_under_qemu
    source, expected = CASES[name]
    assert boot_under_qemu(source, timeout=60).stdout == expected


# -- ring 3: mov drN faults, breakpoints hit there as in ring 0 ------------------------------------
# Probe guests (tests/probe.py): the log of (vector, error code, index of the instruction the saved
# EIP names), recorded under QEMU 7.2. A #DB is resumed at its saved EIP, so the instruction
# breakpoint on probe_2 (a fault, no RF) hits until the log is full (24 entries).
RING3_SETUP = """
mov eax, 0x7e00
mov dr1, eax
mov eax, probe_2
mov dr0, eax
mov eax, 0x00D0040A
mov dr7, eax
"""
PROBES = {
    "mov drN at CPL 3": (dict(ring3=True, body=["mov eax, dr0", "mov dr7, eax", "mov eax, dr6", "mov dr4, eax"]),
                         [(GP, 0, 0), (GP, 0, 1), (GP, 0, 2), (GP, 0, 3)]),
    "breakpoints in ring 3": (dict(ring3=True, setup=RING3_SETUP, body=[
        "mov dword ptr [0x7e00], eax", "mov eax, dword ptr [0x7dfc]", "nop"]), [(DB, 0, 1)] + [(DB, 0, 2)] * 23),
}


@pytest.mark.parametrize("name", list(PROBES))
@pytest.mark.parametrize("mode, paging", RING3_MODES)
def test_ring_3_as_on_qemu(tmp_path, name, mode, paging):
    options, expected = PROBES[name]
    output = _run_apart(tmp_path, probe_source(**options), mode=mode, **({"paging": paging} if paging else {}))
    assert brief(parse(output)) == expected


@needs_qemu
@pytest.mark.parametrize("name", list(PROBES))
def test_ring_3_expectations_are_qemus(name):
    options, expected = PROBES[name]
    assert brief(run_under_qemu(probe_source(**options))) == expected


# -- a hlt right in front of an instruction the engine stops in front of ---------------------------
# Under direct and vt, rdmsr, wrmsr and mov drN are engine exits (vmm/msr_cpuid.py), and a stop at
# an exit looks like a stop after hlt (the engine's halted flag, EIP past the hlt). Once the block
# after a hlt had its exit, the hlt ran natively and was taken for the exit: the guest went on
# without waiting for an interrupt ("S"). QEMU waits for the PIT's tick each round ("W").
HLT_IN_FRONT = """
    mov esp, 0x7000
    mov dword ptr [0x7f10], 0
""" + idt_setup({8: "tick", 6: "ud"}) + """
    mov al, 0x34
    out 0x43, al
    mov al, 0x9c
    out 0x40, al
    mov al, 0x2e
    out 0x40, al
    xor ebx, ebx
    mov ecx, 0x1b
    sti
    jmp after
again:
    mov esi, dword ptr [0x7f10]
    hlt
after:
    {instruction}
    inc ebx
    cmp ebx, 1
    je again
    mov al, 0x57
    cmp dword ptr [0x7f10], esi
    jne waited
    mov al, 0x53
waited:
    call putc
    cmp ebx, 3
    jb again
    mov al, 10
    call putc
    mov eax, 0
    out 0xf4, eax
    cli
    hlt
tick:
    inc dword ptr [0x7f10]
    push eax
    mov al, 0x20
    out 0x20, al
    pop eax
    iretd
ud:
    iretd
""" + PUTC


@pytest.mark.parametrize("instruction", ["rdmsr", "mov eax, dr7"])
@pytest.mark.parametrize("mode, paging", MODES)
def test_hlt_in_front_of_an_intercepted_instruction_waits(tmp_path, instruction, mode, paging):
    source = HLT_IN_FRONT.replace("{instruction}", instruction)
    assert _run_apart(tmp_path, source, mode=mode) == b"WW\n"


@needs_qemu
@pytest.mark.parametrize("instruction", ["rdmsr", "mov eax, dr7"])
def test_hlt_in_front_expectation_is_qemus(instruction):
    from tools.fuzzlib.qemu import boot_under_qemu
    assert boot_under_qemu(HLT_IN_FRONT.replace("{instruction}", instruction), timeout=60).stdout == b"WW\n"


def test_vt_takes_a_dr_access_exit_per_mov_drn_at_ring_0(tmp_path):
    # the reproducer moves to DR0, DR7, DR0, and its handler reads and writes DR6 at each of the
    # two #DBs: 7 exits with dr_access on (VT-x's MOV-DR exiting), none without it
    source, expected = CASES["after mov ss and pop ss"]
    image, report = tmp_path / "guest.s", tmp_path / "report.json"
    image.write_text(source)
    counts = []
    for controls in ("default", "+dr_access"):
        proc = subprocess.run([sys.executable, "-m", "vmm", "run", str(image), "--mode", "vt", "--vt-exits", controls,
                               "--report", str(report)], capture_output=True, cwd=REPO_ROOT, timeout=120)
        assert proc.returncode == 0 and proc.stdout == expected, proc.stderr.decode()[-2000:]
        counts.append(json.loads(report.read_text())["counters"]["vt_exits"]["dr_access"])
    assert counts == [0, 7]


# -- a task switch ends DR7's local breakpoints -------------------------------------------------------
# (QEMU's switch_tss_ra clears L0-L3, not G0-G3.) Task X, reached through a task gate in the IDT,
# which the monitor performs in every mode, prints DR7 and returns (iret, NT); the main task prints
# it too.
TASK_SWITCH = ("start:\n" + SETUP + _idt({0x40: (0x00200000, 0x00008500)})
               + TASK_X.replace("mov eax, task_x", "mov eax, task_dr7") + """
    mov eax, 0x4ff
    mov dr7, eax
    int 0x40
    mov eax, dr7
    call print_hex
    call newline
    mov eax, 0
    out 0xf4, eax
    cli
    hlt
task_dr7:
    mov eax, dr7
    call print_hex
    iretd
""" + PRINT_HEX)


@pytest.mark.parametrize("mode, paging", MODES)
def test_a_task_switch_clears_the_local_enables_as_on_qemu(tmp_path, mode, paging):
    assert _run_apart(tmp_path, TASK_SWITCH, mode=mode) == b"000004aa 000004aa \n"


@needs_qemu
def test_task_switch_expectation_is_qemus():
    from tools.fuzzlib.qemu import boot_under_qemu
    assert boot_under_qemu(TASK_SWITCH, timeout=60).stdout == b"000004aa 000004aa \n"


@pytest.mark.parametrize("mode, paging", PAGING_MODES)
def test_a_data_breakpoint_on_code_the_guest_patches(tmp_path, mode, paging):
    # A store that hits a data breakpoint and writes into the engine block running it: Unicorn
    # abandons that block and runs the store again, which the run's count, cut for the #DB,
    # stopped each time: the store never completed, and under direct, trap and vt the endless
    # new engine blocks ended in a segfault of the monitor. Under bt the checks of a
    # self-checking page would read the breakpoint. Output: QEMU's (tests/test_self_checking.py).
    from tests.test_self_checking import BREAKPOINT_EXPECTED, patching_guest
    config = {"mode": mode, **({"paging": paging} if paging else {})}
    assert _run_apart(tmp_path, patching_guest(False, data_breakpoint=True), **config) == BREAKPOINT_EXPECTED
