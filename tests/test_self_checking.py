"""Code pages the guest writes often (cache/tcache.py, SELF_CHECK_AFTER): after that many stores
fault on a write-protected page of code, the page is left writable and its blocks compare their
guest bytes at every entry instead, and end after each store (translator/emitter.py,
_emit_self_check). Guests that mix code and data, and guests that patch code on such a page in
every way the CPU sees (the next instruction of the same block, an earlier one, a function
copied over, an opcode), against what qemu-system-i386 7.2 printed for them."""

from __future__ import annotations

import pytest

from cache.tcache import SELF_CHECK_AFTER
from tests.guests import EXIT0, HEX, identity_paging, idt_setup, needs_qemu, run_qemu_source, run_source
from vmm.exits import StopReason

BT = [("bt", "shadow"), ("bt", "nested")]

# A loop that keeps a counter and a sum right after its own code (the example: 200,000
# stores into the page of the running block). The guest's value: (counter ^ sum) & 0xff.
COUNTER_GUEST = """
    mov ecx, 200000
loop_top:
    inc dword ptr [counter]
    add dword ptr [sum], ecx
    dec ecx
    jnz loop_top
    mov eax, dword ptr [counter]
    xor eax, dword ptr [sum]
    and eax, 0xff
    mov dx, 0xf4
    out dx, eax
    cli
    hlt
counter:
    .long 0
sum:
    .long 0
"""


@pytest.mark.parametrize("mode, paging", BT)
def test_data_on_a_code_page_costs_a_few_faults_not_one_per_store(tmp_path, mode, paging):
    result, _output, vm = run_source(tmp_path, COUNTER_GUEST, mode=mode, paging=paging)
    # counter 200000 (0x30d40), sum 200000 * 200001 / 2 mod 2**32 = 0xa819f9a0
    assert result.reason is StopReason.DEBUG_EXIT and result.guest_value == 0x40 ^ 0xA0
    counters = vm.mode.counters()
    assert counters["cache_exits"]["smc_store"] == SELF_CHECK_AFTER
    assert counters["translation_cache"]["self_checking_pages"] == 1
    assert counters["translation_cache"]["blocks_translated"] < 20


def patching_guest(paging: bool, data_breakpoint: bool = False) -> str:
    """Warm-up stores make the page self-checking, then code on it is patched five ways; each
    result is printed, then the warm-up counter (and, with a data breakpoint on the patched
    byte of (a), the #DBs it took: one per store into it, never one for the checks' reads of
    it)."""
    breakpoint_setup = breakpoint_report = handler = disarm = ""
    if data_breakpoint:
        breakpoint_setup = idt_setup({1: "db"}) + """
    mov dword ptr [0x7f00], 0
    mov eax, patch_a + 1
    mov dr0, eax
    mov eax, 0x00030001                 /* L0, read/write, 1 byte */
    mov dr7, eax
"""
        # (QEMU 7.2 also reports stores elsewhere on the page while the breakpoint is armed, after
        # a store has hit it: it is disarmed once (a) is done.)
        disarm = "    xor eax, eax\n    mov dr7, eax\n"
        breakpoint_report = "    call space\n    mov eax, dword ptr [0x7f00]\n    call hex32\n"
        handler = """
db:
    inc dword ptr [0x7f00]
    push eax
    mov eax, 0xffff0ff0
    mov dr6, eax
    pop eax
    iretd
"""
    return "    mov esp, 0x7000\n" + (identity_paging() if paging else "") + """
    mov ecx, 20
warm:
    inc dword ptr [counter]
    dec ecx
    jnz warm
""" + breakpoint_setup + """
    /* (a) a store into the next instruction of the same block: its new immediate runs */
    xor esi, esi
    mov ecx, 10
next_insn:
    mov eax, ecx
    mov byte ptr [patch_a + 1], al
patch_a:
    mov bl, 0
    movzx ebx, bl
    add esi, ebx
    dec ecx
    jnz next_insn
    mov eax, esi
    call hex32
    call space
""" + disarm + """
    /* (b) an instruction earlier in the loop, patched after it ran: seen the next time round */
    xor esi, esi
    mov ecx, 10
earlier:
patch_b:
    mov edx, 0
    add esi, edx
    mov dword ptr [patch_b + 1], ecx
    dec ecx
    jnz earlier
    mov eax, esi
    call hex32
    call space
    /* (c) rep movsb copies new code over a function the loop calls (chained to) */
    xor esi, esi
    mov ebp, 4
calls:
    call fn
    add esi, eax
    push esi
    mov esi, fn_new
    mov edi, fn
    mov ecx, 6
    rep movsb
    pop esi
    mov dword ptr [fn_new + 1], ebp
    dec ebp
    jnz calls
    mov eax, esi
    call hex32
    call space
    /* (d) a store that rewrites an opcode: inc becomes dec */
    mov ecx, 6
    xor eax, eax
opcode:
    inc eax
    mov byte ptr [opcode], 0x48
    dec ecx
    jnz opcode
    call hex32
    call space
    /* (e) a loop that stores into itself through a register: no entry past its check */
    mov edi, patch_e + 1
    mov ecx, 5
    xor esi, esi
loop_e:
patch_e:
    mov edx, 1
    add esi, edx
    mov dword ptr [edi], ecx
    dec ecx
    jnz loop_e
    mov eax, esi
    call hex32
    call space
    mov eax, dword ptr [counter]
    call hex32
""" + breakpoint_report + "    call nl\n" + EXIT0 + """
fn:
    mov eax, 0x100
    ret
fn_new:
    mov eax, 0x200
    ret
counter:
    .long 0
""" + handler + HEX


# qemu-system-i386 7.2, paging off and on alike: (a) 10+9+...+1 = 0x37, (b) 10+9+...+2 = 0x36,
# (c) 0x100 + 0x200 + 4 + 3 = 0x307, (d) 1 - 5 = -4, (e) 1 + 5 + 4 + 3 + 2 = 0xf, the counter
# 20 (0x14); with the data breakpoint, 10 #DBs, one per store into patch_a.
PATCHING_EXPECTED = b"00000037 00000036 00000307 fffffffc 0000000f 00000014\n"
BREAKPOINT_EXPECTED = b"00000037 00000036 00000307 fffffffc 0000000f 00000014 0000000a\n"


@pytest.mark.parametrize("paging", [False, True], ids=["paging_off", "paging_on"])
@pytest.mark.parametrize("mode, scheme", BT)
def test_code_patched_on_a_self_checking_page_runs_as_on_qemu(tmp_path, mode, scheme, paging):
    result, output, vm = run_source(tmp_path, patching_guest(paging), mode=mode, paging=scheme)
    assert result.reason is StopReason.DEBUG_EXIT, result.message
    assert output == PATCHING_EXPECTED
    counters = vm.mode.counters()
    assert counters["translation_cache"]["self_checking_pages"] == 1
    assert counters["cache_exits"]["smc_store"] == SELF_CHECK_AFTER      # the warm-up's first stores only
    assert counters["cache_exits"]["stale code"] >= 10                     # the patches were seen by the checks


@pytest.mark.parametrize("mode, scheme", BT)
def test_an_armed_data_breakpoint_turns_self_checking_off(tmp_path, mode, scheme):
    # The checks read guest code as the guest reads memory: with a data breakpoint on the
    # patched instruction they would hit it. The page is write-protected again instead.
    result, output, vm = run_source(tmp_path, patching_guest(False, data_breakpoint=True), mode=mode, paging=scheme)
    assert result.reason is StopReason.DEBUG_EXIT, result.message
    assert output == BREAKPOINT_EXPECTED
    # (disarmed after (a), the page became self-checking again)
    assert vm.mode.counters()["translation_cache"]["self_checking_pages"] == 2


@needs_qemu
@pytest.mark.parametrize("paging", [False, True], ids=["paging_off", "paging_on"])
def test_patching_guest_under_qemu(tmp_path, paging):
    assert run_qemu_source(tmp_path, patching_guest(paging)).stdout == PATCHING_EXPECTED


@needs_qemu
def test_breakpoint_guest_under_qemu(tmp_path):
    assert run_qemu_source(tmp_path, patching_guest(False, data_breakpoint=True)).stdout == BREAKPOINT_EXPECTED


@pytest.mark.parametrize("source, enters_past_check", [
    ("inc dword ptr [0x200000]\n    dec ecx\n    jnz top", True),      # stores outside itself
    ("inc eax\n    call top", False),                                 # its call pushes: anywhere
    ("mov byte ptr [top + 1], al\n    jmp top", False),              # stores into itself
])
def test_a_block_loops_to_itself_past_its_check_only_if_it_cannot_store_into_itself(source, enters_past_check):
    # A chained jump from a self-checking block to itself enters past the check (the loop of
    # the counter guest runs at direct's speed): only when nothing it stores can be its code.
    from translator.decoder import Decoder
    from translator.emitter import Emitter
    from translator.layout import MonitorAddresses
    from vmm.loaders.assembly import assemble
    code = assemble("top:\n    " + source + "\n", 0x100000, "block")
    decoder = Decoder(lambda address, size: code[address - 0x100000:address - 0x100000 + size])
    block = decoder.decode_block(0x100000, end_after_store=True)
    translation = Emitter(MonitorAddresses(0, 0x1000, 0x2000)).translate(block, self_check=True)
    assert (translation.checked > 0) is enters_past_check
