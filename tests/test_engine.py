"""The Unicorn wrapper: the pinned version, and the hidden-state offsets it relies on."""

from vmm.engine import PINNED_UNICORN_VERSION, PROT_ALL, PROT_EXEC, PROT_READ, Engine, StopCause, unicorn_version
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


def test_protect_changes_permissions_of_single_pages_after_segment_loads():
    # Regression: the boot GDT once had clear accessed bits in a read-only area; the refused
    # accessed-bit write inside reg_write(CS) left Unicorn unable to map or unmap memory.
    engine, memory = machine("mov dword ptr [0x201000], 7\nmov eax, dword ptr [0x201000]\nhlt")
    engine.protect(0x201000, 0x1000, PROT_READ | PROT_EXEC)
    assert engine.run(CODE, memory.until_address) is StopCause.MEMORY_FAULT
    assert (engine.memory_fault.kind, engine.memory_fault.reason) == ("write", "protected")
    assert engine.reg("eip") == CODE                     # at the store, nothing written
    engine.protect(0x201000, 0x1000, PROT_ALL)
    assert engine.run(CODE, memory.until_address) is StopCause.RETURNED
    assert engine.reg("eax") == 7 and memory.read(0x201000, 4) == b"\x07\0\0\0"
