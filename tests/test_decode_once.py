"""The translator decodes each instruction of a block once, also when the block must be retranslated
shorter (its code does not fit a slot) or turns out to need the self-check (vmm/modes/bt/mode.py,
translation_for; translator/decoder.py, decode_block's `again`): the retries decoded and
classified every such block twice, a third of the decoding of the Linux boot."""

from __future__ import annotations

import translator.decoder as decoder_module
from tests.guests import LOAD, run_source
from tests.test_self_checking import COUNTER_GUEST
from translator.decoder import BlockEnd
from translator.emitter import ExitKind
from vmm.exits import StopReason
from vmm.monitor_layout import ARENA_SLOT_SIZE

# 30 stack pushes from memory: each is a sequence of host instructions, the block's code far
# longer than a slot, so it is cut to 15 instructions, then to 7 (and the rest is a block of its own).
LONG_BLOCK = "\n".join(["    push dword ptr [0x9000]"] * 30) + """
    mov eax, 0
    out 0xf4, eax
    cli
    hlt
"""


def classified_while(monkeypatch, action):
    """The addresses of the instructions classify() saw while `action` ran."""
    seen = []
    classify = decoder_module.classify
    monkeypatch.setattr(decoder_module, "classify", lambda insn: seen.append(insn.address) or classify(insn))
    return action(), seen


def test_a_block_too_long_for_its_slot_is_decoded_once(tmp_path, monkeypatch):
    result, _output, vm = run_source(tmp_path, LONG_BLOCK, mode="bt")
    assert result.reason is StopReason.DEBUG_EXIT
    mode = vm.mode
    (guest, translation, _ranges), seen = classified_while(monkeypatch, lambda: mode.translation_for(mode._key(LOAD)))
    assert guest.end is BlockEnd.LIMIT and len(guest.instructions) < 30 and len(translation.code) <= ARENA_SLOT_SIZE
    assert seen and len(seen) == len(set(seen))


def test_a_block_found_to_need_its_self_check_is_decoded_once(tmp_path, monkeypatch):
    result, _output, vm = run_source(tmp_path, COUNTER_GUEST, mode="bt")
    assert result.reason is StopReason.DEBUG_EXIT
    mode = vm.mode
    assert mode.cache.self_checking
    (guest, translation, _ranges), seen = classified_while(monkeypatch, lambda: mode.translation_for(mode._key(LOAD)))
    assert any(site.kind is ExitKind.STALE for site in translation.exits)     # it checks itself
    assert seen and len(seen) == len(set(seen))
