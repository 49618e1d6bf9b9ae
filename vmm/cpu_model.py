"""The CPU the guest is told it runs on: CPUID as qemu-system-i386 7.2 answers it under TCG for its
default model, qemu32, in every execution mode."""

from __future__ import annotations

# Why qemu32 and not the engine's own model: the engine that runs guest code is Unicorn 2.1.1's
# qemu64 (an AMD family-6 CPU with long mode; bt needs long mode for its translated code), and a
# guest that asked it would be told another CPU than QEMU tells it, and another under bt (which
# asked a scratch engine) than where cpuid runs natively. A guest takes its paths by vendor and
# features (kvm-unit-tests' pmu takes the AMD one; Linux picks its errata, its cache and TLB
# setup), so its runs here would not be QEMU's. Every feature qemu32 advertises is one the
# engine implements (qemu64 is a superset); the monitor models what the platform adds (the local
# APIC's bit, through InterruptPlatform.cpuid).
#
# Recorded from qemu-system-i386 7.2 -accel tcg (default -cpu qemu32): (leaf, subleaf) -> eax, ebx,
# ecx, edx. tests/test_cpu_model.py runs the same probe under QEMU and each mode.
MAX_BASIC = 0x00000004
MAX_HYPERVISOR = 0x40000001
MAX_EXTENDED = 0x80000004
VENDOR = (0x756E6547, 0x6C65746E, 0x49656E69)           # "Genu" "ntel" "ineI": ebx, ecx, edx

# Leaf 1: family 6, model 6, stepping 3; CLFLUSH line 8 x 8 bytes, initial APIC ID 0 (bits 31-24);
# ECX: SSE3 and the hypervisor bit; EDX: fpu de pse tsc msr pae mce cx8 apic sep pge cmov pat mmx
# fxsr sse sse2.
SIGNATURE = 0x00000663
LEAF1_EBX = 0x00000800
LEAF1_ECX = 0x80000001
LEAF1_EDX = 0x0781ABFD

_LEAVES: dict[tuple[int, int], tuple[int, int, int, int]] = {
    (0x00000000, 0): (MAX_BASIC, VENDOR[0], VENDOR[1], VENDOR[2]),
    (0x00000001, 0): (SIGNATURE, LEAF1_EBX, LEAF1_ECX, LEAF1_EDX),
    (0x00000002, 0): (0x00000001, 0x00000000, 0x0000004D, 0x002C307D),      # cache and TLB descriptors
    (0x00000003, 0): (0, 0, 0, 0),
    # Deterministic cache parameters, one subleaf per cache: L1d, L1i, L2, L3, then none.
    (0x00000004, 0): (0x00000121, 0x01C0003F, 0x0000003F, 0x00000001),
    (0x00000004, 1): (0x00000122, 0x01C0003F, 0x0000003F, 0x00000001),
    (0x00000004, 2): (0x00000143, 0x03C0003F, 0x00000FFF, 0x00000001),
    (0x00000004, 3): (0x00000163, 0x03C0003F, 0x00003FFF, 0x00000006),
    # QEMU's TCG hypervisor leaves: "TCGTCGTCGTCG" (the paravirtual interface will put its own here).
    (0x40000000, 0): (MAX_HYPERVISOR, 0x54474354, 0x43544743, 0x47435447),
    (0x40000001, 0): (0, 0, 0, 0),
    (0x80000000, 0): (MAX_EXTENDED, VENDOR[0], VENDOR[1], VENDOR[2]),
    (0x80000001, 0): (SIGNATURE, 0, 0, 0),
    # "QEMU Virtual CPU version 2.5+"
    (0x80000002, 0): (0x554D4551, 0x72695620, 0x6C617574, 0x55504320),
    (0x80000003, 0): (0x72657620, 0x6E6F6973, 0x352E3220, 0x0000002B),
    (0x80000004, 0): (0, 0, 0, 0),
}
_SUBLEAF_LEAVES = {0x00000004}      # the leaves whose answer depends on ECX


def _limit(leaf: int) -> int:
    if leaf >= 0xC0000000:
        return 0                     # no Centaur range (QEMU's xlevel2 is 0 for qemu32)
    if leaf >= 0x80000000:
        return MAX_EXTENDED
    if leaf >= 0x40000000:
        return MAX_HYPERVISOR
    return MAX_BASIC


def cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """(eax, ebx, ecx, edx) of cpuid with EAX = leaf, ECX = subleaf. A leaf past its range's
    maximum answers as the highest basic leaf (with the same subleaf), as Intel's SDM says and
    QEMU does; a subleaf past the last is all zeros."""
    leaf &= 0xFFFFFFFF
    if leaf > _limit(leaf):
        leaf = MAX_BASIC
    if leaf not in _SUBLEAF_LEAVES:
        subleaf = 0
    return _LEAVES.get((leaf, subleaf & 0xFFFFFFFF), (0, 0, 0, 0))
