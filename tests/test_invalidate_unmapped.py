"""Engine.invalidate_code of a linear address the guest's page tables do not map. Unicorn 2.1.1
walks the tables for it and takes a page fault inside the call: CR2 overwritten, and its
"exception in flight" marker left set, so the guest's next #PF arrived as #DF and the one after
that ended the run without a word (found when Debian's kernel under direct, with engine exits at
its decompressor's rdtsc, looped forever on a store that should have faulted: the exit's
invalidation came with paging on and the decompressor unmapped)."""

from tests.guests import EXIT, flat_gdt, idt_setup, identity_paging
from vmm.builder import MachineConfig, build_machine
from vmm.console import BufferConsole

UNMAPPED = 0x80000000


class Invalidator:
    """Port 0x510: a write makes the monitor drop its translations of an unmapped address."""
    name = "invalidator"

    def __init__(self, engine) -> None:
        self.engine = engine

    def io_read(self, _offset: int, _size: int) -> int:
        return 0xFF

    def io_write(self, _offset: int, _size: int, _value: int) -> None:
        self.engine.invalidate_code(UNMAPPED - 1, UNMAPPED + 1)


# Paging on (the first 4 MiB only), CR2 set by a first #PF, the monitor's invalidation (port
# 0x510), then CR2 read back and a second #PF: the guest exits with CR2 << 8 | the vector taken.
GUEST = ("    mov esp, 0x90000\n" + flat_gdt(0x7000) + idt_setup({8: "double", 14: "page_fault"})
         + identity_paging() + """
    mov dword ptr [0x6000], 0
    mov eax, dword ptr [0x400000]
    mov dx, 0x510
    out dx, al
    mov ebx, cr2
    mov eax, dword ptr [0x500000]
    mov eax, ebx
    shl eax, 8
    or eax, dword ptr [0x6000]
""" + EXIT + """
page_fault:
    mov dword ptr [0x6000], 14
    add esp, 4
    add dword ptr [esp], 5
    iretd
double:
    mov dword ptr [0x6000], 8
    mov eax, 0x88
""" + EXIT)


def run(tmp_path, mode):
    source = tmp_path / "guest.s"
    source.write_text(GUEST)
    vm, _image = build_machine(MachineConfig(image=str(source), mode=mode), BufferConsole(b""))
    vm.bus.register(0x510, 1, Invalidator(vm.engine))
    return vm.run()


def test_cr2_and_the_next_fault_survive_an_unmapped_invalidation(tmp_path):
    result = run(tmp_path, "direct")
    # CR2 still the first fault's 0x400000, the second fault a #PF (14), as without the call.
    assert result.guest_value == ((0x400000 << 8) | 14) & 0xFFFFFFFF
