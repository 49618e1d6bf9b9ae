"""Port B (0x61, vmm/devices/pcspk.py) as QEMU's PC speaker models it, and the timing Linux does
through it: PIT channel 2 counting down in mode 0 while the guest polls its OUT on bit 5.

Found on Debian's kernel under the monitor: port 0x61 was unassigned (it read 0xFF: OUT already
high), so its ACPI PM-timer rate check measured nothing ("PM-Timer running at invalid rate: 0%
of normal") and dropped the PM timer; and a PIT read inside a run saw the count as it was when
the run began, so such a poll waited for channel 0's next edge (55 ms) whatever the count."""

from __future__ import annotations

from tests.guests import EXIT0, HEX, qemu_recorded

# Linux's verify_pmtmr_rate (drivers/clocksource/acpi_pm.c): gate high, speaker off; channel 2
# in mode 0 with 11932 ticks (10 ms: the guest's own latch, Linux uses 55 ms); count up until OUT
# rises; the PM timer's delta must be within 5% of 10 ms (35,795 ticks at 3.579545 MHz), which
# the guest checks itself (QEMU's own figure moves with the host's speed: 35,800-35,900 seen).
# It prints: port B's gate and data bits as written, with the OUT bit low (0x03); which bit the
# next read toggles (the refresh bit, 0x10); the verdict on the PM timer (1: within 5%); and
# whether the loop ran more than once (1).
PM_RATE_CHECK = """
    mov esp, 0x90000
    in al, 0x61
    and al, 0xfd
    or al, 0x03
    out 0x61, al
    mov al, 0xb0
    out 0x43, al
    mov al, 0x9c
    out 0x42, al
    mov al, 0x2e
    out 0x42, al
    in al, 0x61
    mov bl, al
    in al, 0x61
    mov bh, al
    mov al, 0x01
    out 0x61, al
    mov dx, 0x608
    in eax, dx
    mov edi, eax
    xor ecx, ecx
count:
    inc ecx
    in al, 0x61
    test al, 0x20
    jz count
    mov dx, 0x608
    in eax, dx
    sub eax, edi
    and eax, 0xffffff
    mov esi, eax
    mov al, bl
    and al, 0xef
    call hex8
    call space
    mov al, bl
    xor al, bh
    call hex8
    call space
    xor eax, eax
    cmp esi, 34005
    jb verdict
    cmp esi, 37585
    ja verdict
    inc eax
verdict:
    call hex8
    call space
    xor eax, eax
    cmp ecx, 1
    jbe loops
    inc eax
loops:
    call hex8
    call nl
""" + EXIT0 + HEX
PM_RATE_CHECK_EXPECTED = b"03 10 01 01\n"       # recorded from qemu-system-i386 (7.2)

test_channel_2_times_the_pm_timer, test_channel_2_times_the_pm_timer_under_qemu = \
    qemu_recorded(PM_RATE_CHECK, PM_RATE_CHECK_EXPECTED)
