"""Host input wakes the running guest: input for an armed device ends the engine run soon, from the
thread that received it, so that the run loop polls the device and raises its interrupt."""

from __future__ import annotations

import threading
from typing import Callable


class InputWake:
    """Typed input is noticed by the console's reader thread; a guest spinning inside the engine
    would not look at it before its next exit. So the reader thread calls `arrived()` (when an
    input source is armed: vmm/interrupts.py), which notes it (`pending`) and asks the mode to
    end its engine run soon (`end_run`, ExecutionMode.end_run_soon: a point where the run
    resumes exactly, every instruction that ran retired), turned by the mode into an ordinary
    EVENT exit. The run loop `take()`s the note after every exit, before its interrupt window,
    which polls the input sources: input that arrives after that sets it again.

    A request made while no engine run is going on is lost (the next run starts afresh), so
    `arrived()` repeats it every few milliseconds until the run loop has taken the note, as the
    watchdog repeats its stop (vmm/vm.py, Limits); the modes also look at `pending` before each
    run. The lock keeps a request from landing on a run that starts after the note was taken."""

    RETRY_INTERVAL = 0.005

    def __init__(self, end_run: Callable[[], None]) -> None:
        self._end_run = end_run
        self._lock = threading.Lock()
        self._pending = False
        self._closed = threading.Event()

    @property
    def pending(self) -> bool:
        """Input arrived for an armed device since the run loop last looked."""
        return self._pending

    def arrived(self) -> None:
        """From any thread: input arrived for an armed device. Returns once the run loop has
        taken the note (or the run is over)."""
        with self._lock:
            if self._closed.is_set():
                return
            self._pending = True
        while not self._closed.is_set():
            with self._lock:
                if not self._pending:
                    return
                self._end_run()
            self._closed.wait(self.RETRY_INTERVAL)

    def take(self) -> bool:
        """The run loop is about to poll the input sources: whether input had arrived."""
        with self._lock:
            pending, self._pending = self._pending, False
        return pending

    def close(self) -> None:
        """The run is over: nothing more is asked of the mode."""
        self._closed.set()
