"""The CPU the guest is told it runs on (vmm/cpu_model.py): CPUID as qemu-system-i386 7.2 answers
it for its default model (qemu32), in every mode, though the engine itself is another CPU. A
probe guest prints each leaf; its expected output is what QEMU printed for it (QEMU_PLATFORM of
tests/guests.py), and the needs_qemu test runs QEMU again."""

from __future__ import annotations

from tests.guests import EXIT0, HEX, qemu_recorded
from vmm import cpu_model

# (leaf, subleaf): the basic leaves, leaf 4's caches and the subleaf after the last, the
# hypervisor and extended ranges, and leaves past each range's end (answered as the highest basic
# leaf with the subleaf given); leaf 1 ignores ECX.
QUERIES = ([(leaf, 0) for leaf in range(0, 6)] + [(4, subleaf) for subleaf in range(1, 5)]
           + [(0x40000000, 0), (0x40000001, 0), (0x40000002, 0)]
           + [(leaf, 0) for leaf in range(0x80000000, 0x80000009)]
           + [(0xC0000000, 0), (0x8FFFFFFF, 2), (0x7FFFFFFF, 3), (1, 7)])

CPUID_PROBE = "    mov esp, 0x7000\n" + "".join(
    f"    mov eax, {leaf:#x}\n    mov ecx, {subleaf}\n    call leaf\n" for leaf, subleaf in QUERIES) + EXIT0 + """
leaf:
    cpuid
    push edx
    push ecx
    push ebx
    call hex32
    call space
    pop eax
    call hex32
    call space
    pop eax
    call hex32
    call space
    pop eax
    call hex32
    jmp nl
""" + HEX

# qemu-system-i386 7.2 -accel tcg: GenuineIntel, family 6 model 6 stepping 3, max leaves 4 and
# 0x80000004, TCG's hypervisor signature, "QEMU Virtual CPU version 2.5+".
CPUID_EXPECTED = (
    b"00000004 756e6547 6c65746e 49656e69\n"
    b"00000663 00000800 80000001 0781abfd\n"
    b"00000001 00000000 0000004d 002c307d\n"
    b"00000000 00000000 00000000 00000000\n"
    b"00000121 01c0003f 0000003f 00000001\n"
    b"00000121 01c0003f 0000003f 00000001\n"
    b"00000122 01c0003f 0000003f 00000001\n"
    b"00000143 03c0003f 00000fff 00000001\n"
    b"00000163 03c0003f 00003fff 00000006\n"
    b"00000000 00000000 00000000 00000000\n"
    b"40000001 54474354 43544743 47435447\n"
    b"00000000 00000000 00000000 00000000\n"
    b"00000121 01c0003f 0000003f 00000001\n"
    b"80000004 756e6547 6c65746e 49656e69\n"
    b"00000663 00000000 00000000 00000000\n"
    b"554d4551 72695620 6c617574 55504320\n"
    b"72657620 6e6f6973 352e3220 0000002b\n"
    b"00000000 00000000 00000000 00000000\n"
    b"00000121 01c0003f 0000003f 00000001\n"
    b"00000121 01c0003f 0000003f 00000001\n"
    b"00000121 01c0003f 0000003f 00000001\n"
    b"00000121 01c0003f 0000003f 00000001\n"
    b"00000121 01c0003f 0000003f 00000001\n"
    b"00000143 03c0003f 00000fff 00000001\n"
    b"00000163 03c0003f 00003fff 00000006\n"
    b"00000663 00000800 80000001 0781abfd\n"
)

test_cpuid_is_qemus_in_every_mode, test_cpuid_probe_under_qemu = qemu_recorded(CPUID_PROBE, CPUID_EXPECTED)


def test_the_model_table_agrees_with_the_recording():
    lines = CPUID_EXPECTED.decode().splitlines()
    for (leaf, subleaf), line in zip(QUERIES, lines, strict=True):
        assert " ".join(f"{value:08x}" for value in cpu_model.cpuid(leaf, subleaf)) == line, hex(leaf)


def test_every_advertised_feature_is_one_the_engine_has():
    # The engine (Unicorn's qemu64) must implement what the guest is told: leaf 1's EDX and ECX
    # bits are a subset of the engine's own (but the hypervisor bit, which no CPU sets).
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn import x86_const as x86
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x2000)
    uc.mem_write(0x1000, b"\x0f\xa2")                 # cpuid
    uc.reg_write(x86.UC_X86_REG_EAX, 1)
    uc.emu_start(0x1000, 0x1002)
    engine_ecx, engine_edx = uc.reg_read(x86.UC_X86_REG_ECX), uc.reg_read(x86.UC_X86_REG_EDX)
    _eax, _ebx, ecx, edx = cpu_model.cpuid(1, 0)
    assert edx & ~engine_edx == 0
    assert (ecx & ~(1 << 31)) & ~engine_ecx == 0
