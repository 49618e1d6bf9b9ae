"""xv6 at its serial console under each mode and QEMU: how fast typed input is served, in one run.

    python bench/bench_console.py [--modes bt,direct,trap,vt,qemu] [--timeout 120]
                                  [--lines "echo hi;forktest;ls;wc README"]

Two measurements of an unmodified xv6 (../shared/guests/xv6/kernelmemfs, run as tests/xv6.py
runs it: console on stdin/stdout), each in its own process:
  boot   time to the first `$ ` prompt with a line typed before the guest starts, so that host
         input is available from the first instruction on (a monitor that polls for input while
         it waits pays for it during the whole boot)
  lines  each line typed at the prompt, from the moment it is written to the next prompt
         (tests/xv6.py's session: its echo, then its output)
Printed: seconds per item and per configuration, and each one's ratio to QEMU's. An item that
did not finish within --timeout is shown as `>T`, T the seconds it had run. Nothing is asserted (tests/test_console_input.py
asserts a bound).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.xv6 import PROMPT, Console, qemu_command, vmm_command, xv6_missing   # noqa: E402

IMAGE = "kernelmemfs"
MODES = ["bt", "direct", "trap", "vt"]


def command(config: str) -> list[str]:
    return qemu_command(IMAGE) if config == "qemu" else vmm_command(IMAGE, "--mode", config)


def boot_with_input(config: str, timeout: float) -> float:
    """Seconds to the first prompt with a line typed from the start (TimedOut past the timeout)."""
    started = time.monotonic()
    console = Console(command(config), timeout)
    try:
        console.type("echo early")
        console.expect(PROMPT, 0)
        return time.monotonic() - started
    except (TimeoutError, EOFError):
        return TimedOut(time.monotonic() - started)
    finally:
        console.close()


NOT_REACHED = "-"      # a line after one that did not finish


class TimedOut(float):
    """Seconds an item ran before the process's timeout ended it: a lower bound."""


def lines_at_prompt(config: str, lines: list[str], timeout: float) -> list:
    """Seconds from typing each line to the next prompt (TimedOut past the timeout; NOT_REACHED
    for the lines after it)."""
    console = Console(command(config), timeout)
    times: list = [NOT_REACHED] * len(lines)
    index, started = -1, time.monotonic()
    try:
        at = console.expect(PROMPT, 0)
        for index, line in enumerate(lines):
            started = time.monotonic()
            console.type(line)
            echoed = console.expect(line.encode() + b"\n", at)
            at = console.expect(PROMPT, echoed)
            times[index] = time.monotonic() - started
    except (TimeoutError, EOFError):
        if index >= 0:
            times[index] = TimedOut(time.monotonic() - started)
    finally:
        console.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES + ["qemu"]))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per process")
    parser.add_argument("--lines", default="echo hi;forktest;ls;wc README")
    args = parser.parse_args()
    if (missing := xv6_missing()) is not None:
        raise SystemExit(f"bench: {missing}")
    configs = args.modes.split(",")
    lines = args.lines.split(";")
    items = ["boot+input"] + lines
    results: dict[str, list] = {}
    for config in configs:
        results[config] = [boot_with_input(config, args.timeout)] + lines_at_prompt(config, lines, args.timeout)
        print(f"{config}: " + ", ".join(f"{item} {_seconds(value)}"
                                        for item, value in zip(items, results[config])), flush=True)
    width = max(len(item) for item in items) + 2
    print()
    print("seconds".ljust(width) + "".join(config.rjust(10) for config in configs))
    for index, item in enumerate(items):
        print(item.ljust(width) + "".join(_seconds(results[config][index]).rjust(10)
                                          for config in configs))
    if "qemu" in results:
        print()
        print("ratio to qemu".ljust(width) + "".join(config.rjust(10) for config in configs if config != "qemu"))
        for index, item in enumerate(items):
            reference = results["qemu"][index]
            cells = []
            for config in configs:
                if config == "qemu":
                    continue
                value = results[config][index]
                if value is NOT_REACHED or reference is NOT_REACHED or isinstance(reference, TimedOut):
                    cells.append("-")
                elif isinstance(value, TimedOut):
                    cells.append(f">{value / reference:.0f}" if reference else "-")
                else:
                    cells.append(f"{value / reference:.1f}" if reference else "-")
            print(item.ljust(width) + "".join(cell.rjust(10) for cell in cells))


def _seconds(value) -> str:
    if value is NOT_REACHED:
        return value
    return f">{value:.1f}" if isinstance(value, TimedOut) else f"{value:.2f}"


if __name__ == "__main__":
    main()
