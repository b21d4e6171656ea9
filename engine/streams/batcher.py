"""The batcher: frames from every ready stream, gathered into one backend call per frame size.

A batch holds at most one frame of each stream (as DeepStream's stream muxer does), so a file read
losslessly, whose frames are always ready, can never take a live camera's place. The streams are
visited round-robin from a rotating start, so when there are more streams than batch rows each
gets its turn. A batch goes to the backend when it is full, when every stream that could give a
frame has given one, or once ``timeout`` has passed since its first frame: a slow camera never
holds the others back. The default timeout is half the frame interval of the fastest stream.

Results go back to each stream by batch row, in each stream's frame order; frames the interval
policy skips pass through uninferred in their place.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from segengine.backends.base import Backend, Pipelined
from segengine.layers import decode_layers
from segengine.streams.stream import Stream
from segengine.types import Frame, FrameResult

DEFAULT_TIMEOUT = 0.02  # seconds, when no stream knows its frame rate
MAX_TIMEOUT = 0.05


@dataclass
class Batch:
    """What one gathering gave: in taking order, skipped frames (results) and frames to infer."""

    entries: list[tuple[Stream, Frame | FrameResult]] = field(default_factory=list)

    @property
    def frames(self) -> list[tuple[Stream, Frame]]:
        return [(s, f) for s, f in self.entries if isinstance(f, Frame)]


def default_timeout(streams: Sequence[Stream]) -> float:
    """Half the frame interval of the fastest stream that states its rate, at most 50 ms."""
    rates = [float(s.source.info.fps) for s in streams if s.source.info.fps]
    return min(MAX_TIMEOUT, 0.5 / max(rates)) if rates else DEFAULT_TIMEOUT


class Batcher:
    """Gathers and runs batches; lives on the pipeline's one inference thread."""

    def __init__(self, streams: Callable[[], Sequence[Stream]], ready, *, timeout: float | None = None) -> None:
        self._streams = streams  # a snapshot of the active streams, taken at every pass
        self._ready = ready  # set by every capture thread when it queues a frame
        self.timeout = timeout
        self._turn = 0
        self.sizes: Counter[int] = Counter()  # batch size → how many batches ran at it

    def gather(self, max_batch: int, stop) -> Batch:
        """Up to ``max_batch`` frames, at most one per stream; returns early when stopped (maybe empty)."""
        batch = Batch()
        given: set[str] = set()
        deadline: float | None = None
        while not stop.is_set():
            self._ready.clear()  # before looking: a frame queued after the look sets it again
            streams = list(self._streams())
            if streams:
                start = self._turn % len(streams)
                streams = streams[start:] + streams[:start]
            for stream in streams:
                if len(given) >= max_batch:
                    break
                if stream.id in given or not stream.open_for_frames():
                    continue
                skipped, frame = stream.take()
                batch.entries.extend((stream, r) for r in skipped)
                if frame is not None:
                    batch.entries.append((stream, frame))
                    given.add(stream.id)
            waiting = [s for s in streams if s.id not in given and s.open_for_frames()]
            if len(given) >= max_batch or (given and not waiting):
                break
            if batch.entries and not given:
                break  # only skipped frames: out at once, they cost nothing
            now = time.monotonic()
            if given:
                if deadline is None:
                    timeout = self.timeout if self.timeout is not None else default_timeout(streams)
                    deadline = now + timeout
                if now >= deadline:
                    break
                self._ready.wait(min(deadline - now, 0.05))
            else:
                # Nothing ready. A stream held back by its own full outputs sets no event: look again soon.
                self._ready.wait(0.005 if any(not s.ended for s in streams) else 0.05)
        self._turn += 1
        return batch

    def run(self, batch: Batch, backend_for: Callable[[tuple[int, int]], Backend],
            staging: Callable[[tuple[int, int], int], np.ndarray]) -> None:
        """Infer the batch's frames (calls of up to the graph's max batch, per frame size) and hand every
        entry to its stream. A backend that keeps frames in flight (OpenVINO's streams) gets up to its
        ``depth`` calls submitted before the oldest is collected, so they compute at once."""
        results: dict[int, FrameResult] = {}
        groups: dict[tuple[int, int], list[tuple[Stream, Frame]]] = {}
        for stream, frame in batch.frames:
            groups.setdefault(frame.size, []).append((stream, frame))
        for size, group in groups.items():
            backend = backend_for(size)
            limit = backend.spec.input.max_batch
            calls = [group[i:i + limit] for i in range(0, len(group), limit)]
            if isinstance(backend, Pipelined) and len(calls) > 1:
                in_flight: deque[tuple[list[tuple[Stream, Frame]], float]] = deque()
                for part in calls:
                    backend.submit(self._images(part, size, staging, copy=True))
                    in_flight.append((part, time.perf_counter()))
                    if len(in_flight) >= backend.depth:
                        part, t0 = in_flight.popleft()
                        self._decoded(part, backend, backend.collect(), t0, results)
                while in_flight:
                    part, t0 = in_flight.popleft()
                    self._decoded(part, backend, backend.collect(), t0, results)
                continue
            for part in calls:
                t0 = time.perf_counter()
                self._decoded(part, backend, backend.infer(self._images(part, size, staging)), t0, results)
        for stream, item in batch.entries:
            stream.deliver(results[id(item)] if isinstance(item, Frame) else item)

    @staticmethod
    def _images(part: list[tuple[Stream, Frame]], size: tuple[int, int],
                staging: Callable[[tuple[int, int], int], np.ndarray], copy: bool = False) -> np.ndarray:
        if len(part) == 1:
            return part[0][1].image[None]
        if copy:  # calls in flight at once cannot share one staging buffer
            return np.stack([frame.image for _, frame in part])
        images = staging(size, len(part))
        for row, (_, frame) in enumerate(part):
            images[row] = frame.image
        return images

    def _decoded(self, part: list[tuple[Stream, Frame]], backend: Backend, outputs: dict[str, np.ndarray],
                 started: float, results: dict[int, FrameResult]) -> None:
        elapsed = time.perf_counter() - started
        self.sizes[len(part)] += 1
        for row, (stream, frame) in enumerate(part):
            results[id(frame)] = FrameResult(frame, decode_layers(outputs, backend.spec, row),
                                             timings={"infer": elapsed})
            assert stream.policy is not None
            stream.policy.observe(elapsed)
