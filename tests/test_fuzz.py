"""Differential fuzzing: a fixed-seed run of bt against direct, and self-tests of the fuzzer
(generator, comparator, shrinker) that need only the direct mode.

Cost (measured): every run builds a fresh machine; one program of 40 items takes about 15 ms
under direct (30 ms at 60 items), most of it allocating and scanning the 32 MiB of guest RAM, so
a direct/direct pair is about 30 ms and a direct/bt pair about 55 ms with the bt of this
writing: the bt run of 80 programs takes about 5 s, the whole file under 10 s on 2 cores.
Long runs: see tools/fuzz.py; direct itself against QEMU: tests/fuzz/qemu.py.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from tests.fuzz.compare import Outcome, compare_program, diff_outcomes, run_source, shrink
from tests.fuzz.generator import (DATA_PTR, DEFAULT_WEIGHTS, EXC_COUNT, RESULT, Options, generate,
                                  program_seed)
from vmm.modes import available_modes

CI_SEED = 20240601
CI_COUNT = 80
CI_LENGTH = 40
REFERENCE = "direct"

try:
    MODES, MODES_ERROR = available_modes(), None
except Exception as error:      # a mode module that fails to import: the bt test reports it
    MODES, MODES_ERROR = {}, error


def _programs(seed: int, count: int, length: int = CI_LENGTH):
    return [generate(program_seed(seed, index), length) for index in range(count)]


# -- bt against direct --------------------------------------------------------------------------
@pytest.mark.skipif("bt" not in MODES and MODES_ERROR is None,
                    reason="binary translation mode 'bt' is not available yet "
                           "(vmm.modes.available_modes() has no 'bt')")
def test_bt_matches_direct_on_random_programs():
    if MODES_ERROR is not None:
        raise MODES_ERROR
    failures = []
    for index in range(CI_COUNT):
        comparison = compare_program(generate(program_seed(CI_SEED, index), CI_LENGTH), (REFERENCE, "bt"))
        assert comparison.valid, f"program {index}: the reference mode did not finish it\n{comparison.report()}"
        if not comparison.ok:
            failures.append((index, comparison.report()))
    if failures:
        shown = "\n\n".join(f"program {index} (reproduce and minimize: python tools/fuzz.py --seed {CI_SEED} "
                            f"--index {index} --length {CI_LENGTH} --keep-dir fuzz-failures):\n{report}"
                            for index, report in failures[:3])
        pytest.fail(f"{len(failures)} of {CI_COUNT} programs diverge between direct and bt\n\n{shown}")


@pytest.mark.skipif("bt" not in MODES, reason="binary translation mode 'bt' is not available")
def test_bt_with_a_three_block_cache_matches_direct():
    """Constant eviction: every block is unlinked and its slot reused over and over."""
    for index in range(20):
        comparison = compare_program(generate(program_seed(CI_SEED + 1, index), CI_LENGTH), (REFERENCE, "bt"),
                                     tcache_blocks=3)
        assert comparison.ok, f"program {index}:\n{comparison.report()}"


# -- the generator ------------------------------------------------------------------------------
def test_generator_is_deterministic_for_a_seed():
    assert generate(1234, 50).source() == generate(1234, 50).source()
    assert generate(1234, 50).source() != generate(1235, 50).source()
    assert program_seed(7, 3) == program_seed(7, 3) != program_seed(7, 4)


def test_generated_source_has_no_statement_separator():
    for program in _programs(5, 20):
        assert ";" not in program.source()       # Keystone would split the line there


def test_generated_programs_run_to_their_epilogue_under_direct():
    kinds = set()
    handled = 0
    for program in _programs(CI_SEED + 1, 24):
        outcome = run_source(program.source(), REFERENCE)
        assert outcome.error is None, outcome.message
        assert outcome.reason == "debug_exit", (program.seed, outcome.message)
        assert outcome.reached_epilogue, program.seed
        assert outcome.guest_value == int.from_bytes(outcome.read(RESULT, 4), "little")
        kinds.update(program.kinds())
        handled += int.from_bytes(outcome.read(EXC_COUNT, 4), "little")
    assert set(DEFAULT_WEIGHTS) <= kinds, f"classes never generated: {set(DEFAULT_WEIGHTS) - kinds}"
    assert handled > 0, "no deliberate exception reached a handler"


@pytest.mark.parametrize("kind", sorted(DEFAULT_WEIGHTS))
def test_each_instruction_class_alone_runs_to_the_epilogue(kind):
    weights = {name: (1 if name == kind else 0) for name in DEFAULT_WEIGHTS}
    for index, (exceptions, guest_gdt) in enumerate(((True, False), (True, True), (kind == "exception", True))):
        program = generate(program_seed(99, index), 30, Options(exceptions, guest_gdt, weights))
        assert set(program.kinds()) & set(DEFAULT_WEIGHTS) <= {kind}
        outcome = run_source(program.source(), REFERENCE)
        assert outcome.reached_epilogue, (kind, program.seed, outcome.reason, outcome.message)


# -- the comparator -----------------------------------------------------------------------------
def test_direct_against_direct_finds_no_difference():
    for program in _programs(CI_SEED + 2, 8):
        comparison = compare_program(program, (REFERENCE, REFERENCE))
        assert comparison.valid
        assert comparison.ok, comparison.report()


def test_comparator_reports_the_results_of_two_different_programs():
    first, second = _programs(CI_SEED + 3, 2)
    a = run_source(first.source(), REFERENCE)
    b = run_source(second.source(), REFERENCE)
    differences = diff_outcomes(a, b)
    assert differences
    assert any(line.startswith("memory:") for line in differences)
    assert any(line.startswith("register ") for line in differences)


def test_comparator_reports_every_kind_of_difference():
    program = generate(program_seed(CI_SEED + 4, 0), 20)
    a = run_source(program.source(), REFERENCE)
    b = run_source(program.source(), REFERENCE)
    assert diff_outcomes(a, b) == []

    def differs(**changes) -> list:
        return diff_outcomes(a, dataclasses.replace(b, **changes))

    assert differs(reason="triple_fault")[0].startswith("stop reason:")
    assert differs(guest_value=(b.guest_value or 0) ^ 1)[0].startswith("guest value:")
    assert differs(console=b.console + b"x")[0].startswith("console output differs")
    assert differs(error="RuntimeError: boom")[0].startswith("monitor error:")
    for name in ("eax", "edi", "eip", "cs", "cr0"):
        assert differs(registers={**b.registers, name: b.registers[name] ^ 0x10})[0].startswith(f"register {name}:")
    flags = differs(registers={**b.registers, "eflags": b.registers["eflags"] ^ 0x200})
    assert flags[0].startswith("register eflags:") and "IF" in flags[0]

    b.memory.write(DATA_PTR + 0x123, bytes([b.read(DATA_PTR + 0x123, 1)[0] ^ 0xFF]))
    b.memory.write(RESULT + 0x20, bytes([b.read(RESULT + 0x20, 1)[0] ^ 1]))
    b.refresh_digests()
    memory = diff_outcomes(a, b)
    assert memory[0] == "memory: 2 byte(s) differ in 2 range(s)"
    assert "(data+0x8123)" in memory[1]
    assert "(result.eflags)" in memory[2]


# -- the shrinker -------------------------------------------------------------------------------
def test_shrinker_reduces_a_planted_divergence_to_its_cause():
    """A fake mode that differs from direct only when the program contains `bswap`."""
    def runner(source: str, mode: str, **options) -> Outcome:
        outcome = run_source(source, REFERENCE, **options)
        if mode == "planted" and "bswap" in source:
            outcome = dataclasses.replace(outcome, mode=mode, registers={**outcome.registers, "eax": 0xBAD})
        return dataclasses.replace(outcome, mode=mode)

    program = next(p for p in (generate(program_seed(7, i), 30) for i in range(200)) if "bswap" in p.source()
                   and p.source().count("bswap") == 1)
    comparison = compare_program(program, (REFERENCE, "planted"), runner=runner)
    assert not comparison.ok and comparison.valid

    started = time.monotonic()
    small = shrink(program, (REFERENCE, "planted"), runner=runner, max_seconds=25)
    assert time.monotonic() - started < 30
    assert "bswap" in small.source()
    assert len(small.removable()) < len(program.removable()) // 3
    assert not compare_program(small, (REFERENCE, "planted"), runner=runner).ok
    assert compare_program(small, (REFERENCE, REFERENCE)).valid


def test_shrinker_returns_a_program_that_does_not_diverge_unchanged():
    program = generate(program_seed(8, 0), 10)
    assert shrink(program, (REFERENCE, REFERENCE), max_seconds=10) is program
