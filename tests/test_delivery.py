"""Exceptions and int n delivered through the guest's own IDT, driven by real guest code."""

import struct

import pytest

from tests.guests import EXIT, idt_setup, run_source
from vmm.exits import StopReason
from vmm.x86 import IF

FRAME = 0x7000     # handlers store what they saw here: dwords 0.. as listed per test


def frame(vm, count):
    return struct.unpack(f"<{count}I", vm.memory.read(FRAME, 4 * count))


def guest(vectors, body, handlers, trap_vectors=(), limit=None):
    return ("start:\n    mov esp, 0x90000\n" + idt_setup(vectors, trap_vectors=trap_vectors, limit=limit)
            + body + "\n    mov eax, 0\n" + EXIT + handlers)


# handler that records saved EIP, CS, EFLAGS and its own EFLAGS, then returns past a 2-byte insn
RECORD = """
{name}:
    mov eax, dword ptr [esp]
    mov dword ptr [0x7000], eax
    mov eax, dword ptr [esp + 4]
    mov dword ptr [0x7004], eax
    mov eax, dword ptr [esp + 8]
    mov dword ptr [0x7008], eax
    pushfd
    pop eax
    mov dword ptr [0x700c], eax
    add dword ptr [esp], {skip}
    iretd
"""

# handler for vectors with an error code: records error code, saved EIP, CS, then skips
RECORD_ERROR = """
{name}:
    mov eax, dword ptr [esp]
    mov dword ptr [0x7000], eax
    mov eax, dword ptr [esp + 4]
    mov dword ptr [0x7004], eax
    mov eax, dword ptr [esp + 8]
    mov dword ptr [0x7008], eax
    add esp, 4
    add dword ptr [esp], {skip}
    iretd
"""


@pytest.mark.parametrize("trap_gate", [False, True])
def test_int_n_saves_the_next_eip_and_interrupt_gates_clear_if(tmp_path, mode, trap_gate):
    source = guest({0x80: "on_int"}, """
    sti
    int 0x80
after:
    pushfd
    pop eax
    mov dword ptr [0x7010], eax
    mov dword ptr [0x7014], after
""", RECORD.format(name="on_int", skip=0), trap_vectors=(0x80,) if trap_gate else ())
    result, _out, vm = run_source(tmp_path, source, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT
    saved_eip, saved_cs, saved_flags, handler_flags, flags_after, after = frame(vm, 6)
    assert saved_eip == after and saved_cs == 0x08
    assert saved_flags & IF and flags_after & IF           # iretd restored IF
    assert bool(handler_flags & IF) is trap_gate             # only interrupt gates clear IF
    assert vm.delivery.delivered == {0x80: 1}


def test_divide_error_is_a_fault_at_the_instruction(tmp_path, mode):
    source = guest({0: "on_de"}, """
    xor ecx, ecx
faulting:
    div ecx
    mov dword ptr [0x7014], faulting
""", RECORD.format(name="on_de", skip=2))
    result, _out, vm = run_source(tmp_path, source, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT
    saved_eip, *_rest, faulting = frame(vm, 6)
    assert saved_eip == faulting


def test_general_protection_pushes_the_selector_error_code(tmp_path, mode):
    source = guest({13: "on_gp"}, """
    mov ax, 0x33
faulting:
    mov ds, ax
    mov dword ptr [0x7014], faulting
""", RECORD_ERROR.format(name="on_gp", skip=3))
    result, _out, vm = run_source(tmp_path, source, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT
    error_code, saved_eip, saved_cs, *_rest, faulting = frame(vm, 6)
    assert (error_code, saved_eip, saved_cs) == (0x30, faulting, 0x08)


@pytest.mark.parametrize("instruction, length", [("ud2", 2), (".byte 0x0f, 0xff", 2)])
def test_undefined_opcodes_raise_ud_at_the_instruction(tmp_path, mode, instruction, length):
    source = guest({6: "on_ud"}, f"""
faulting:
    {instruction}
    mov dword ptr [0x7014], faulting
""", RECORD.format(name="on_ud", skip=length))
    result, _out, vm = run_source(tmp_path, source, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT
    assert frame(vm, 6)[0] == frame(vm, 6)[5]
    assert vm.delivery.delivered == {6: 1}


def test_int3_is_a_trap_after_the_instruction(tmp_path, mode):
    source = guest({3: "on_bp"}, """
    int3
after:
    mov dword ptr [0x7014], after
""", RECORD.format(name="on_bp", skip=0))
    result, _out, vm = run_source(tmp_path, source, mode=mode)
    assert frame(vm, 6)[0] == frame(vm, 6)[5]


def test_int_n_beyond_the_idt_limit_is_gp_at_the_int_instruction(tmp_path, mode):
    source = guest({13: "on_gp"}, """
faulting:
    int 0x40
    mov dword ptr [0x7014], faulting
""", RECORD_ERROR.format(name="on_gp", skip=2))
    result, _out, vm = run_source(tmp_path, source, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT
    error_code, saved_eip, *_rest, faulting = frame(vm, 6)
    assert error_code == 0x40 * 8 + 2 and saved_eip == faulting   # IDT bit set, EXT clear


def test_contributory_fault_during_delivery_becomes_a_double_fault(tmp_path, mode):
    # Gate 0 (#DE) is not present: delivering #DE raises #NP, contributory twice -> #DF.
    source = guest({8: "on_df", 13: "on_df"}, """
    mov byte ptr [0x8005], 0x0e
    xor ecx, ecx
faulting:
    div ecx
""", """
on_df:
    mov eax, dword ptr [esp]
    mov dword ptr [0x7000], eax
    mov eax, dword ptr [esp + 4]
    mov dword ptr [0x7004], eax
    mov eax, 0x42
""" + EXIT)
    result, _out, vm = run_source(tmp_path, source, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT and result.guest_value == 0x42
    assert vm.delivery.delivered == {8: 1}
    assert frame(vm, 1) == (0,)                              # #DF pushes error code 0


def test_undeliverable_exception_is_a_triple_fault(tmp_path, mode):
    source = "start:\n    mov esp, 0x90000\n" + idt_setup({6: "start"}, limit=0) + "    ud2\n"
    result, _out, _vm = run_source(tmp_path, source, mode=mode)
    assert result.reason is StopReason.TRIPLE_FAULT
    assert result.exit_status == 120
    assert "triple fault" in result.message


def test_repeated_contributory_faults_are_not_double_faults(tmp_path, mode):
    # Regression: the engine's hidden "exception in flight" state must be cleared after each
    # delivery, or the second #GP arrives as #DF.
    source = guest({8: "on_df", 13: "on_gp"}, """
    mov bx, 0x33
    mov ds, bx
    mov ds, bx
    mov ds, bx
""", RECORD_ERROR.format(name="on_gp", skip=3) + "on_df:\n    mov eax, 0x0d\n" + EXIT)
    result, _out, vm = run_source(tmp_path, source, mode=mode)
    assert result.guest_value == 0 and vm.delivery.delivered == {13: 3}


def test_popf_and_iret_keep_every_writable_flag(tmp_path, mode):
    # Regression: the #DF vector constant once shadowed the DF flag, so emulated popf lost DF.
    source = "mov esp, 0x90000\npush 0x00247ed7\npopfd\npushfd\npop eax\npush 2\npopfd\n" + EXIT
    result, _out, _vm = run_source(tmp_path, source, mode=mode)
    assert result.guest_value == 0x00247ED7


def test_far_call_whose_offset_contains_0x66_is_32_bit(tmp_path, mode):
    # Regression: the operand-size check once looked for a 0x66 byte anywhere in the first four
    # bytes of the instruction, so `lcall 8:0x106600` pushed 16-bit words.
    source = """
    mov esp, 0x90000
    mov byte ptr [0x106600], 0xcb
    .byte 0x9a
    .long 0x106600
    .short 0x08
    mov eax, esp
""" + EXIT
    result, _out, _vm = run_source(tmp_path, source, mode=mode)
    assert result.guest_value == 0x90000


@pytest.mark.parametrize("opcode", ["0x0f, 0x04", "0x0f, 0x0a", "0x0f, 0xa6"])
def test_bytes_that_do_not_decode_raise_ud_at_their_address(tmp_path, mode, opcode):
    source = guest({6: "on_ud"}, f"""
    nop
faulting:
    .byte {opcode}
    mov dword ptr [0x7014], faulting
""", RECORD.format(name="on_ud", skip=2))
    result, _out, vm = run_source(tmp_path, source, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT
    assert frame(vm, 6)[0] == frame(vm, 6)[5]
    assert vm.delivery.delivered == {6: 1}


def test_syscall_and_sysenter_fault_as_on_qemu(tmp_path, mode):
    # Regression (found by the fuzzer): Unicorn runs both as no-ops unless hooked. Without the
    # MSRs that enable them QEMU raises #UD for syscall and #GP(0) for sysenter, at the instruction.
    from tests.guests import EXIT, idt_setup, run_source
    source = ("    mov esp, 0x90000\n    mov dword ptr [0x7000], 0\n" + idt_setup({6: "ud", 13: "gp"}) + """
    syscall
    sysenter
    mov eax, dword ptr [0x7000]
""" + EXIT + """
ud:
    add dword ptr [0x7000], 0x10
    add dword ptr [esp], 2
    iretd
gp:
    add dword ptr [0x7000], 0x100
    add dword ptr [esp + 4], 2
    add esp, 4
    iretd
""")
    result, _out, _vm = run_source(tmp_path, source, mode=mode)
    assert result.guest_value == 0x110
