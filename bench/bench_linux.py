"""Debian's Linux kernel booted to the end of its /init under the monitor against QEMU, and where
the monitor's time goes: issue 15's target is bt within 3x QEMU's wall time.

    python bench/bench_linux.py [--modes bt,direct,vt] [--no-qemu] [--markdown]

Builds tests/linux.py's busybox initramfs in a temporary directory and boots
../shared/guests/linux/vmlinuz with it (256 MiB, console=ttyS0) once under qemu-system-i386 as
its README does and once under `vmm run --mode M --report` for each mode, all in this
invocation. Each run must print the init script's lines as QEMU printed them and power off; a
run that does not is reported and left out of the ratios. Prints:

  per run     wall seconds, CPU seconds (the child's user + system) and wall / QEMU's wall;
  per mode    from its report: the run loop's exits by reason with the seconds their handlers
              took (exit_seconds), the translation cache's exits by kind (bt), the callouts by
              procedure, translation seconds, blocks translated, evictions and the engine's
              code-buffer flushes: the next bottleneck, visible.

--markdown prints the same as Markdown tables, headed with the date and the command, to be pasted
whole into the README. Figures move with the machine (2 shared cores): compare the ratios of one
run, never runs of different days.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import linux                                    # noqa: E402  (initramfs, commands, init lines)

TIMEOUT = 1800


def _run(command: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """(the finished process, wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = linux.run(command, TIMEOUT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, wall, cpu


def _top(counts: dict, limit: int = 8) -> list[tuple[str, float]]:
    return sorted(((name, value) for name, value in counts.items() if value), key=lambda item: -item[1])[:limit]


def _breakdown(report: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """Sections of (label, value) rows from one report: where the monitor's time went."""
    counters = report["counters"]
    seconds = report.get("exit_seconds", {})
    exits = [(reason, f"{count:,} exits, {seconds.get(reason, 0):.2f} s in their handlers")
             for reason, count in _top(counters["exits"], 12)]
    sections = [("run-loop exits by reason", exits)]
    if "cache_exits" in counters:
        sections.append(("translation-cache exits by kind",
                         [(kind, f"{count:,}") for kind, count in _top(counters["cache_exits"], 12)]))
    if counters.get("callouts"):
        sections.append(("callouts by procedure", [(name, f"{count:,}") for name, count in _top(counters["callouts"])]))
    cache = counters.get("translation_cache")
    if cache:
        sections.append(("translation", [
            ("seconds translating", f"{cache.get('translation_seconds', 0):.1f}"),
            ("blocks translated", f"{cache.get('blocks_translated', 0):,}"),
            ("evictions", f"{cache.get('evictions', 0):,}"),
            ("engine code-buffer flushes", f"{cache.get('engine_code_buffer_flushes', 0):,}")]))
    return sections


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="bt", help="comma-separated modes to boot under (default: bt)")
    parser.add_argument("--no-qemu", action="store_true", help="skip QEMU (no ratios)")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables for the README")
    args = parser.parse_args(argv)
    if not linux.KERNEL.exists():
        print(f"bench: {linux.KERNEL} is missing (see ../shared/guests/linux/README.md)", file=sys.stderr)
        return 2
    use_qemu = not args.no_qemu and shutil.which(linux.QEMU) is not None
    modes = [mode for mode in args.modes.split(",") if mode]

    with tempfile.TemporaryDirectory() as scratch:
        initrd = Path(scratch) / "initrd.gz"
        linux.write_initramfs(initrd)
        runs, reports, expected = [], {}, None
        if use_qemu:
            proc, wall, cpu = _run(linux.qemu_command(initrd))
            expected = linux.init_output(proc.stdout)
            ok = proc.returncode == 0 and bool(expected)
            runs.append(("qemu", wall, cpu, ok, "" if ok else f"status {proc.returncode}, no init output"))
        for mode in modes:
            report_path = Path(scratch) / f"{mode}.json"
            proc, wall, cpu = _run(linux.vmm_command(initrd, "--mode", mode, "--report", str(report_path)))
            lines = linux.init_output(proc.stdout)
            report = json.loads(report_path.read_text()) if report_path.exists() else None
            reason = report["exit"]["reason"] if report else f"no report (status {proc.returncode})"
            ok = reason == "powered_off" and bool(lines) and (expected is None or lines == expected)
            why = "" if ok else (f"ended {reason}" if reason != "powered_off" else "init output differs from QEMU's")
            runs.append((mode, wall, cpu, ok, why))
            if report is not None:
                reports[mode] = report

    qemu_wall = next((wall for name, wall, _cpu, ok, _why in runs if name == "qemu" and ok), None)
    command = "python bench/bench_linux.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.markdown:
        print(f"Linux boot to the end of /init, {datetime.date.today().isoformat()}, "
              f"`{command.strip()}` ({os.cpu_count()} cores):\n")
        print("| run | wall s | CPU s | wall / QEMU's |\n|---|---|---|---|")
    else:
        print(f"{'run':8} {'wall s':>8} {'CPU s':>8} {'x QEMU':>8}")
    for name, wall, cpu, ok, why in runs:
        ratio = f"{wall / qemu_wall:.1f}" if qemu_wall and ok and name != "qemu" else "-"
        note = "" if ok else f"  ({why})"
        if args.markdown:
            print(f"| {name}{note} | {wall:.1f} | {cpu:.1f} | {ratio} |")
        else:
            print(f"{name:8} {wall:8.1f} {cpu:8.1f} {ratio:>8}{note}")
    for mode, report in reports.items():
        for title, rows in _breakdown(report):
            if args.markdown:
                print(f"\n{mode}: {title}\n\n| | |\n|---|---|")
                for label, value in rows:
                    print(f"| {label} | {value} |")
            else:
                print(f"\n{mode}: {title}")
                for label, value in rows:
                    print(f"  {label:32} {value}")
    return 0 if all(ok for *_rest, ok, _why in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
