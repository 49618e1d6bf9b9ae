#!/usr/bin/env python3
"""Differential fuzzer: random guest programs run under two execution modes, every difference
in the final state reported (see tools/fuzzlib/generator.py and tools/fuzzlib/compare.py).

    python tools/fuzz.py --seed S --count N --length L --modes direct bt [--keep-dir DIR]

Program i of a run is generate(program_seed(S, i), L): a run is reproducible from its seed,
and `--index I` re-runs program I alone (`--print` shows its source). Each diverging program is
shrunk to a minimal reproducer (items removed while the reference mode still reaches the
epilogue and the modes still differ) and, with --keep-dir, written there as
seed<S>-<I>.s (the reproducer, its diff in '#' comments; run it with `vmm run FILE`),
seed<S>-<I>-original.s and seed<S>-<I>.txt (both diffs). A progress line is printed every 100
programs and a summary line `N passed, M failed` at the end; the exit status is 1 when any
program diverged (or the reference mode did not run one to its end: a generator bug), 2 when a
mode is unknown.

Long run (2000 programs of 60 items on both cores; about 2-4 minutes with bt, most of it
shrinking if anything diverges):

    python tools/fuzz.py --seed 20240601 --count 2000 --length 60 --jobs 2 --modes direct bt --keep-dir fuzz-failures

Self-check of the fuzzer without bt (must report 0 failed):

    python tools/fuzz.py --seed 1 --count 200 --modes direct direct

--ring3 runs each body in ring 3 (user segments, TSS ring-0 stack, I/O bitmap, privileged
instructions as deliberate #GP), --timer adds PIT interrupts at random points of it (implies
--ring3); both change every program, so a run is reproduced with the same flags:

    python tools/fuzz.py --seed 4242 --count 600 --length 60 --jobs 2 --modes direct bt --ring3 --timer

--paging runs every program with paging on (0-4 MiB identity-mapped by 4 KiB pages): shadow
or nested paging against the engine's own walk, accessed and dirty bits compared with the RAM.

--qemu asks QEMU which side is right for each diverging program (tools/fuzzlib/arbiter.py: the
differing bytes hashed into the exit status); programs where it sides with the second mode are
the reference's defects (direct on Unicorn had some: the smc_data sample, fixed since) and are reported as
such, not counted as failures. `--modes bt+nested` picks a paging scheme.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.fuzzlib.arbiter import arbitrate                             # noqa: E402
from tools.fuzzlib.compare import compare_program, shrink                # noqa: E402
from tools.fuzzlib.generator import Options, generate, program_seed     # noqa: E402
from vmm.builder import MachineConfig                                    # noqa: E402
from vmm.errors import VmmError                                         # noqa: E402
from vmm.modes import available_modes                                   # noqa: E402


def _comment(text: str) -> str:
    """A '#' comment line; ';' would end the comment for Keystone and start a statement."""
    return "# " + text.replace(";", ",")


def options(ring3: bool = False, timer: bool = False, paging: bool = False) -> Options:
    return Options(ring3=ring3, timer=timer, paging=paging)


def flags(ring3: bool = False, timer: bool = False, paging: bool = False) -> str:
    """The command-line flags that select these generator options."""
    return "".join(flag for flag, on in ((" --ring3", ring3 and not timer), (" --timer", timer),
                                         (" --paging", paging)) if on)


def check(seed: int, index: int, length: int, modes: tuple, shrink_seconds: float,
          ring3: bool = False, timer: bool = False, qemu: bool = False, paging: bool = False) -> dict:
    """Run program `index` of the run `seed`; on divergence also shrink it."""
    program = generate(program_seed(seed, index), length, options(ring3, timer, paging))
    started = time.perf_counter()
    comparison = compare_program(program, modes)
    result = {"index": index, "ok": comparison.ok, "valid": comparison.valid,
              "seconds": time.perf_counter() - started}
    if comparison.ok and comparison.valid:
        return result
    result["report"] = comparison.report()
    result["source"] = program.source()
    if not comparison.valid:
        reference = comparison.outcomes[0]
        result["report"] = (f"{modes[0]} did not run the program to its epilogue "
                            f"({reference.reason}: {reference.message or reference.error})\n" + result["report"])
        return result
    if shrink_seconds > 0:
        small = shrink(program, modes, max_seconds=shrink_seconds)
        result["small_source"] = small.source()
        result["small_report"] = compare_program(small, modes).report()
        result["small_items"] = len(small.removable())
    if qemu:
        verdict = arbitrate(result.get("small_source", result["source"]), modes)
        if verdict is not None:
            result["verdict"] = verdict
            result["reference_wrong"] = verdict.startswith(f"QEMU sides with {modes[1]} ")   # never with modes[0]
            result["report"] += f"\n{verdict}"
            if "small_report" in result:
                result["small_report"] += f"\n{verdict}"
    return result


def _check_job(job) -> dict:
    return check(*job)


def keep(directory: Path, seed: int, result: dict, modes, length: int = 40, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"seed{seed}-{result['index']}"
    reproduce = (f"python tools/fuzz.py --seed {seed} --index {result['index']} --length {length} "
                 f"--modes {' '.join(modes)}{extra}")
    (directory / f"{stem}-original.s").write_text(
        "\n".join([_comment(f"reproduce: {reproduce}")] + [_comment(line) for line in result["report"].splitlines()])
        + "\n" + result["source"])
    report = result["report"]
    if "small_source" in result:
        (directory / f"{stem}.s").write_text(
            "\n".join([_comment(f"minimized from {stem}-original.s ({reproduce})")]
                      + [_comment(line) for line in result["small_report"].splitlines()])
            + "\n" + result["small_source"])
        report = f"minimized ({result['small_items']} removable items left):\n{result['small_report']}\n\n" \
                 f"original:\n{report}"
    (directory / f"{stem}.txt").write_text(report + "\n")
    return directory / f"{stem}.s"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1, help="seed of the run (default 1)")
    parser.add_argument("--count", type=int, default=100, help="programs to run (default 100)")
    parser.add_argument("--length", type=int, default=40, help="body items per program (default 40)")
    parser.add_argument("--modes", nargs=2, default=["direct", "bt"], metavar=("REFERENCE", "OTHER"),
                        help="the two execution modes to compare (default: direct bt); MODE+SCHEME picks "
                             "a paging scheme, e.g. bt+nested")
    parser.add_argument("--keep-dir", type=Path, help="write each failing program (minimized and original) here")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--index", type=int, help="run only program INDEX of the run")
    parser.add_argument("--first", type=int, default=0, help="index of the first program (default 0)")
    parser.add_argument("--print", action="store_true", help="with --index: print the program's source")
    parser.add_argument("--shrink-seconds", type=float, default=120.0,
                        help="time limit for minimizing each failing program, 0 to skip (default 120)")
    parser.add_argument("--max-failures", type=int, default=0, help="stop after this many failures (0: never)")
    parser.add_argument("--ring3", action="store_true",
                        help="run each program's body in ring 3 (changes every program of the run)")
    parser.add_argument("--qemu", action="store_true",
                        help="ask QEMU which mode is right for each diverging program (a hash of the differing "
                             "state in its exit status); those where it sides with the second mode are counted "
                             "as the reference's defects, not failures")
    parser.add_argument("--paging", action="store_true",
                        help="run each program with paging on (its first 4 MiB identity-mapped by 4 KiB pages)")
    parser.add_argument("--timer", action="store_true",
                        help="PIT interrupts at random points of the body (implies --ring3)")
    args = parser.parse_args(argv)
    modes = tuple(args.modes)
    extra = flags(args.ring3, args.timer, args.paging)

    if args.index is not None:
        indices = [args.index]
        if args.print:
            print(generate(program_seed(args.seed, args.index), args.length,
                           options(args.ring3, args.timer, args.paging)).source(), end="")
            return 0
    else:
        indices = list(range(args.first, args.first + args.count))
    unknown = [mode for mode in modes if mode.partition("+")[0] not in available_modes()]
    if unknown:
        print(f"fuzz: unknown mode {unknown[0]!r} (available: {', '.join(sorted(available_modes()))})",
              file=sys.stderr)
        return 2
    for mode in modes:
        engine_mode, _, paging = mode.partition("+")
        try:
            MachineConfig(image="-", mode=engine_mode, paging=paging or None).validate()
        except VmmError as error:
            print(f"fuzz: {mode}: {error}", file=sys.stderr)
            return 2

    jobs = [(args.seed, index, args.length, modes, args.shrink_seconds, args.ring3, args.timer, args.qemu,
             args.paging)
            for index in indices]
    started = time.perf_counter()
    passed = failed = reference_wrong = 0
    if args.jobs > 1:
        pool = ProcessPoolExecutor(max_workers=args.jobs)
        results = pool.map(_check_job, jobs, chunksize=1)
    else:
        pool = None
        results = map(_check_job, jobs)
    try:
        for done, result in enumerate(results, 1):
            if result["ok"] and result["valid"]:
                passed += 1
            else:
                if result.get("reference_wrong"):
                    reference_wrong += 1
                else:
                    failed += 1
                kind = "DIVERGES" if result["valid"] else "INVALID"
                if result.get("reference_wrong"):
                    kind += f" (the reference, {modes[0]}, is wrong: QEMU sides with {modes[1]})"
                print(f"fuzz: program {result['index']} (seed {args.seed}{extra}) {kind}", flush=True)
                shown = result.get("small_report", result["report"]).splitlines()
                print("\n".join("    " + line for line in shown[:30]), flush=True)
                if args.keep_dir:
                    path = keep(args.keep_dir, args.seed, result, modes, args.length, extra)
                    print(f"    kept in {path if path.exists() else path.with_suffix('.txt')}", flush=True)
            if done % 100 == 0:
                print(f"fuzz: {done}/{len(jobs)} programs, {failed} failed, "
                      f"{time.perf_counter() - started:.1f} s", flush=True)
            if args.max_failures and failed >= args.max_failures:
                print(f"fuzz: stopping after {failed} failures", flush=True)
                break
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    print(f"fuzz: {' vs '.join(modes)}, seed {args.seed}, length {args.length}{extra.replace(' --', ', --')}, "
          f"{time.perf_counter() - started:.1f} s")
    wrong = f", {reference_wrong} where QEMU found {modes[0]} wrong" if args.qemu else ""
    print(f"{passed} passed, {failed} failed{wrong}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
