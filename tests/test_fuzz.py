"""Differential fuzzing: fixed-seed runs of bt against direct (ring 0 as always; ring 3 with and
without timer interrupts), and self-tests of the fuzzer (generator, comparator, shrinker) that
need only the direct mode.

Cost (measured): every run builds a fresh machine; one program of 40 items takes about 40 ms
under direct and 70 ms under bt on this machine (a ring-3 program about 60 / 80 ms, a timer
program, whose body runs 10-30 times, about 60 / 120 ms): the ring-0 bt run of 80 programs takes
about 9 s, the ring-3/timer run of 40 about 6 s, the whole file about 23 s on 2 cores.
Long runs: see tools/fuzz.py; direct itself against QEMU: tools/fuzzlib/qemu.py.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import time
from pathlib import Path

import pytest

from tools.fuzzlib.compare import Outcome, compare_program, diff_outcomes, run_source, shrink
from tools.fuzzlib.generator import (DATA_PTR, DEFAULT_WEIGHTS, EXC_COUNT, EXC_LOG, R0_STACK_BASE, R0_STACK_SIZE,
                                     RESULT, STACK_TOP, TIMER_VECTOR, USER_CS, Options, generate, program_seed)
from vmm.modes import available_modes

CI_SEED = 20240601
CI_COUNT = 80
CI_LENGTH = 40
REFERENCE = "direct"
# ring 3 and timer interrupts: program i of the run has Options(ring3=True), timer for odd i
USER_SEED = 20240602
USER_COUNT = 40
# SHA-256 of the sources of the first CI programs: the default options must keep generating
# exactly these (a change to the generator that alters them changes what CI has always tested)
CI_SOURCES_DIGEST = "1557a5fb4ea3b5601aeb563b3fcee63d54239e47dbd93bde7561346823666a2f"

ROOT = Path(__file__).resolve().parent.parent


def test_tools_import_nothing_of_tests():
    """The fuzz library lives in tools/fuzzlib/ (packaged with tools*): tools/fuzz.py and the tests
    import it, not the other way round (design review P5)."""
    for path in (ROOT / "tools").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            assert not any(module == "tests" or module.startswith("tests.") for module in modules), path


try:
    MODES, MODES_ERROR = available_modes(), None
except Exception as error:      # a mode module that fails to import: the bt test reports it
    MODES, MODES_ERROR = {}, error


def _unfinished(index: int, comparison) -> str:
    """Why the reference did not reach the epilogue: the seed, each mode's stop reason and EIP
    (the report) and the reference's registers. Such a run is a failure, never retried: once the
    cause was Keystone reading the source's numbers as hex (vmm/loaders/assembly.py)."""
    reference = comparison.outcomes[0]
    registers = " ".join(f"{name}={value:#x}" for name, value in reference.registers.items())
    return (f"program {index}: the reference mode did not finish it\n{comparison.report()}\n"
            f"{reference.mode} state: {registers or '(none)'}")


def _programs(seed: int, count: int, length: int = CI_LENGTH):
    return [generate(program_seed(seed, index), length) for index in range(count)]


def _user_options(index: int) -> Options:
    return Options(ring3=True, timer=bool(index % 2))


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
        assert comparison.valid, _unfinished(index, comparison)
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


@pytest.mark.skipif("bt" not in MODES, reason="binary translation mode 'bt' is not available")
def test_bt_matches_direct_on_random_ring3_programs_with_timer_interrupts():
    """Bodies in ring 3 (even programs), ring 3 with PIT interrupts at random points (odd ones)."""
    failures = []
    for index in range(USER_COUNT):
        options = _user_options(index)
        comparison = compare_program(generate(program_seed(USER_SEED, index), CI_LENGTH, options), (REFERENCE, "bt"))
        assert comparison.valid, _unfinished(index, comparison)
        if not comparison.ok:
            failures.append((index, options, comparison.report()))
    if failures:
        shown = "\n\n".join(f"program {index} (reproduce and minimize: python tools/fuzz.py --seed {USER_SEED} "
                            f"--index {index} --length {CI_LENGTH} {'--timer' if options.timer else '--ring3'} "
                            f"--keep-dir fuzz-failures):\n{report}" for index, options, report in failures[:3])
        pytest.fail(f"{len(failures)} of {USER_COUNT} ring-3 programs diverge between direct and bt\n\n{shown}")


PAGING_SEED, PAGING_COUNT = 5, 24


@pytest.mark.skipif("bt" not in MODES, reason="binary translation mode 'bt' is not available")
@pytest.mark.parametrize("other", ["bt", "bt+nested"])
def test_bt_matches_direct_on_random_programs_with_paging_on(other):
    """The programs run with paging on (4 KiB pages, identity): bt's shadow tables (or nested
    paging's TLB fills) against the engine's own walk of the guest's tables, accessed and dirty
    bits in the page tables included (they are in the RAM compared). Ring 3 and the timer for
    every third and every other program."""
    failures = []
    for index in range(PAGING_COUNT):
        options = Options(paging=True, ring3=index % 3 == 0, timer=index % 6 == 3)
        comparison = compare_program(generate(program_seed(PAGING_SEED, index), CI_LENGTH, options), (REFERENCE, other))
        assert comparison.valid, _unfinished(index, comparison)
        if not comparison.ok:
            failures.append((index, comparison.report()))
    assert not failures, "\n\n".join(f"program {index}:\n{report}" for index, report in failures[:3])


def _leave_a_hex_radix_behind() -> None:
    """Free a Keystone instance whose radix ks_option set to 16: the next instance's radix, never
    initialised by Keystone, is then usually that memory (what other allocations in a long
    process left there by chance once in 5-13 full-suite runs)."""
    from keystone import KS_ARCH_X86, KS_MODE_32, KS_OPT_SYNTAX_INTEL, Ks
    assembler = Ks(KS_ARCH_X86, KS_MODE_32)
    assembler.syntax = KS_OPT_SYNTAX_INTEL
    del assembler


@pytest.mark.skipif("bt" not in MODES, reason="binary translation mode 'bt' is not available")
def test_programs_reach_their_epilogue_whatever_keystone_left_in_memory():
    """The flaky early stop: ring-3 program 2 stopped before its epilogue under direct and bt
    alike (a read of no memory at 0x99e40000) when Keystone read its numbers as hex. Without
    the fix every program here stops early."""
    for index in range(4):
        program = generate(program_seed(USER_SEED, index), CI_LENGTH, _user_options(index))
        _leave_a_hex_radix_behind()
        comparison = compare_program(program, (REFERENCE, "bt"))
        assert comparison.valid, _unfinished(index, comparison)
        assert comparison.ok, comparison.report()


# -- the generator ------------------------------------------------------------------------------
def test_generator_is_deterministic_for_a_seed():
    assert generate(1234, 50).source() == generate(1234, 50).source()
    assert generate(1234, 50).source() != generate(1235, 50).source()
    assert program_seed(7, 3) == program_seed(7, 3) != program_seed(7, 4)


def test_generated_source_has_no_statement_separator():
    for program in _programs(5, 20):
        assert ";" not in program.source()       # Keystone would split the line there
    for index in range(10):
        assert ";" not in generate(program_seed(5, index), 40, _user_options(index)).source()


def test_default_options_generate_the_programs_they_always_did():
    """ring3 and timer are off by default and draw no random number then: the CI programs are
    the same as before the options existed."""
    digest = hashlib.sha256()
    for program in _programs(CI_SEED, 10):
        digest.update(program.source().encode())
    assert digest.hexdigest() == CI_SOURCES_DIGEST, "the default options now generate different programs"
    program = generate(program_seed(CI_SEED, 0), CI_LENGTH, Options(ring3=False, timer=False))
    assert program.source() == generate(program_seed(CI_SEED, 0), CI_LENGTH).source()


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


def test_ring3_programs_run_to_their_epilogue_under_direct():
    """The body runs in ring 3 (user CS in the result), exceptions arrive from it (the log holds
    its ESP), the ring-0 stack is zeroed at the end, and timer programs take IRQ0 many times."""
    from tests.guests import run_image
    from tools.fuzzlib.compare import _image_path, MAX_INSTRUCTIONS
    handled = interrupted = 0
    for index in range(8):
        program = generate(program_seed(USER_SEED + 1, index), CI_LENGTH, _user_options(index))
        path = _image_path(None)
        path.write_text(program.source())
        result, _console, vm = run_image(str(path), mode=REFERENCE, max_instructions=MAX_INSTRUCTIONS)
        assert result.reason.value == "debug_exit", (program.seed, result.message)
        memory = vm.memory
        assert int.from_bytes(memory.read(RESULT + 0x7C, 4), "little") == 0x600DF00D, program.seed
        assert int.from_bytes(memory.read(RESULT + 0x24, 2), "little") == USER_CS
        # zeroed, but for the EFLAGS image the epilogue pushes for its final popfd
        assert memory.read(R0_STACK_BASE, R0_STACK_SIZE - 4) == bytes(R0_STACK_SIZE - 4)
        count = int.from_bytes(memory.read(EXC_COUNT, 4), "little")
        handled += count
        for entry in range(min(count, 16)):     # the interrupted ESP: inside the stack area
            esp = int.from_bytes(memory.read(EXC_LOG + 32 * entry + 28, 4), "little")
            assert STACK_TOP - 0x4000 < esp <= STACK_TOP + 0x1000, (program.seed, entry, hex(esp))
        if index % 2:
            assert vm.external_interrupts[TIMER_VECTOR] > 0, (program.seed, program.info["timer"])
            interrupted += 1
    assert handled > 0 and interrupted == 4


@pytest.mark.parametrize("kind", sorted(DEFAULT_WEIGHTS))
def test_each_instruction_class_alone_runs_to_the_epilogue_in_ring3(kind):
    weights = {name: (1 if name == kind else 0) for name in DEFAULT_WEIGHTS}
    program = generate(program_seed(98, 0), 30, Options(weights=weights, timer=True))
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


# The smc_data pattern (a store into the running block's page, then a patch of a function on
# it): Unicorn 2.1.1 alone ran the old function untranslated (0x44444444); QEMU runs the patched
# one, and so do direct and bt since Engine.keep_code_coherent (tests/test_smc_untranslated.py).
SMC_PROGRAM = """
    mov esp, 0x90000
    call fn
    jmp over
inline_data:
    .long 0
over:
    mov dword ptr [inline_data], 1
    mov dword ptr [patch-4], 0x11111111
    call fn
    mov dword ptr [0x207000], eax
    mov dx, 0xf4
    out dx, eax
    cli
    hlt
fn:
    mov eax, 0x44444444
patch:
    ret
"""

# A divergence that remains on purpose: trap's ring compression shows the kernel its CS with
# RPL 3 (a virtualization hole, docs/classification.md), direct and QEMU show RPL 0.
HOLE_PROGRAM = """
    mov esp, 0x90000
    mov eax, cs
    mov dword ptr [0x207000], eax
    mov dx, 0xf4
    out dx, eax
    cli
    hlt
"""


@pytest.mark.skipif("bt" not in MODES, reason="binary translation mode 'bt' is not available")
def test_direct_and_bt_agree_on_the_smc_data_pattern():
    direct, bt = run_source(SMC_PROGRAM, "direct"), run_source(SMC_PROGRAM, "bt")
    assert (direct.guest_value, bt.guest_value) == (0x11111111, 0x11111111)


def test_qemu_arbitrates_a_divergence_where_a_mode_is_wrong():
    from tools.fuzzlib.arbiter import arbitrate
    from tools.fuzzlib.qemu import available
    if not available():
        pytest.skip("qemu-system-i386 is not installed")
    trap, direct = run_source(HOLE_PROGRAM, "trap"), run_source(HOLE_PROGRAM, "direct")
    assert (trap.guest_value & 3, direct.guest_value & 3) == (3, 0)
    verdict = arbitrate(HOLE_PROGRAM, ("trap", "direct"))
    assert verdict.startswith("QEMU sides with direct ("), verdict
