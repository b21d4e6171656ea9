"""Progress of a TensorRT build, shown while it runs (builds take minutes; silence looks like a hang).

TensorRT 10 reports phases and steps through ``IProgressMonitor``; the thin adapter in
``tensorrt.py`` forwards them here. Independently, a heartbeat line says the build is alive
every ``heartbeat`` seconds, because single tactic timings can take a long time between steps
(and older TensorRT has no monitor at all). ``cancel()`` (Ctrl-C) makes the next step answer
"stop", which TensorRT honours by abandoning the build; nothing interrupts a step itself.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class BuildProgress:
    def __init__(self, stream: TextIO | None = None, *, heartbeat: float = 15.0, label: str = "building") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.heartbeat = heartbeat
        self.label = label
        self._phases: dict[str, tuple[str | None, int, int]] = {}  # name → (parent, steps, done)
        self._order: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._cancelled = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = time.monotonic()

    # -- what TensorRT calls (through the adapter) -----------------------------------------------

    def phase_start(self, name: str, parent: str | None, steps: int) -> None:
        with self._lock:
            self._phases[name] = (parent, max(int(steps), 0), 0)
            self._order.append(name)
            if parent is None:
                self._say(f"{name} ({steps} steps)" if steps > 1 else name)

    def step_complete(self, name: str, step: int) -> bool:
        """Record a finished step; False asks TensorRT to cancel the build."""
        with self._lock:
            if name in self._phases:
                parent, steps, _ = self._phases[name]
                self._phases[name] = (parent, steps, int(step) + 1)
        return not self._cancelled.is_set()

    def phase_finish(self, name: str) -> None:
        with self._lock:
            self._phases.pop(name, None)
            if name in self._order:
                self._order.remove(name)

    # -- ours ----------------------------------------------------------------------------------

    def cancel(self) -> None:
        self._cancelled.set()

    @contextmanager
    def cancel_on_sigint(self) -> Iterator[None]:
        """While building, Ctrl-C asks TensorRT to stop: ``step_complete`` answers False at its next step
        (TensorRT's documented way to cancel). No Ctrl-C raises here: the handler runs inside TensorRT's
        callbacks, where pybind swallows a KeyboardInterrupt, so it could never stop the build at once;
        a second Ctrl-C says so and how to end the process instead."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, frame: object) -> None:
            if self.cancelled:
                self._say("still waiting for TensorRT to finish its current step (it cannot be interrupted "
                          "inside one); to end the process at once press Ctrl-\\ (SIGQUIT): the engine "
                          "cache is written only when a build finishes")
                return
            self.cancel()
            self._say("cancelling the build at TensorRT's next step")

        previous = signal.signal(signal.SIGINT, handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def where(self) -> str:
        """The innermost running phase with its step count, e.g. 'Tactic timing 12/40'."""
        with self._lock:
            if not self._order:
                return "preparing"
            name = self._order[-1]
            _, steps, done = self._phases[name]
            chain = [name]
            parent = self._phases[name][0]
            while parent is not None and parent in self._phases:
                chain.insert(0, parent)
                parent = self._phases[parent][0]
            return " › ".join(chain) + (f" {done}/{steps}" if steps > 1 else "")

    def beat(self) -> str:
        line = f"still {self.label}: {_clock(time.monotonic() - self.started)} elapsed, {self.where()}"
        self._say(line)
        return line

    def __enter__(self) -> BuildProgress:
        self.started = time.monotonic()
        if self.heartbeat > 0:
            self._thread = threading.Thread(target=self._beat_loop, name="segengine-build-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def done(self) -> str:
        line = f"{self.label} finished in {_clock(time.monotonic() - self.started)}"
        self._say(line)
        return line

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat):
            self.beat()

    def _say(self, text: str) -> None:
        print(f"segengine: {text}", file=self.stream, flush=True)
