"""The batcher: frames from every ready stream, gathered into one backend call per frame size.

A batch holds at most one frame of each stream (as DeepStream's stream muxer does), so a file read
losslessly, whose frames are always ready, can never take a live camera's place. The streams are
visited round-robin from a rotating start, so when there are more streams than batch rows each
gets its turn. A batch goes to the backend when it is full, when every stream that could give a
frame has given one, or once ``timeout`` has passed since its first frame: a slow camera never
holds the others back. The default timeout is half the frame interval of the fastest stream.

Results go back to each stream by batch row, in each stream's frame order; frames the interval
policy skips pass through uninferred in their place. A backend that keeps frames in flight
(OpenVINO's streams) gets the next batch submitted before the last is collected, up to its
``depth``, as the single-stream pipeline does; when no frame is waiting, the oldest is collected
at once, so overlap never adds latency.
"""

from __future__ import annotations

import threading
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


@dataclass(frozen=True)
class End:
    """A stream's end, handed on after its last frame: ``EndOfStream``, or why its source failed."""

    error: BaseException


Entry = Frame | FrameResult | End


@dataclass
class Batch:
    """What one gathering gave, in taking order: skipped frames (results), frames to infer, ends."""

    entries: list[tuple[Stream, Entry]] = field(default_factory=list)

    @property
    def frames(self) -> list[tuple[Stream, Frame]]:
        return [(s, f) for s, f in self.entries if isinstance(f, Frame)]


@dataclass(frozen=True)
class _Call:
    backend: Backend
    part: list[tuple[Stream, Frame]]
    started: float


def default_timeout(streams: Sequence[Stream]) -> float:
    """Half the frame interval of the fastest stream that states its rate, at most 50 ms."""
    rates = [float(s.source.info.fps) for s in streams if s.source.info.fps]
    return min(MAX_TIMEOUT, 0.5 / max(rates)) if rates else DEFAULT_TIMEOUT


class Batcher:
    """Gathers, runs and hands back batches; lives on the pipeline's one inference thread."""

    def __init__(self, streams: Callable[[], Sequence[Stream]], ready: threading.Event, *,
                 timeout: float | None = None) -> None:
        self._streams = streams  # a snapshot of the active streams, taken at every pass
        self._ready = ready  # set by every capture thread when it queues a frame
        self.timeout = timeout
        self._turn = 0
        self.sizes: Counter[int] = Counter()  # frames per backend call → how many calls
        self._flight: deque[_Call] = deque()  # submitted to a pipelined backend, oldest first
        self._queue: deque[tuple[Stream, Entry]] = deque()  # taken, handed back in this order
        self._done: dict[int, FrameResult] = {}  # id(frame) → its result, until handed back

    @property
    def busy(self) -> bool:
        """Calls are in flight."""
        return bool(self._flight)

    def gather(self, max_batch: int, stop: threading.Event, *, wait: bool = True) -> Batch:
        """Up to ``max_batch`` frames, at most one per stream; returns early when stopped (maybe empty),
        and at once with nothing when nothing is ready and not ``wait``."""
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
                skipped, frame, end = stream.take()
                batch.entries.extend((stream, r) for r in skipped)
                if frame is not None:
                    batch.entries.append((stream, frame))
                    given.add(stream.id)
                if end is not None:
                    batch.entries.append((stream, End(end)))
            waiting = [s for s in streams if s.id not in given and s.open_for_frames()]
            if len(given) >= max_batch or (given and not waiting):
                break
            if batch.entries and not given:
                break  # only skipped frames or ends: out at once, they cost nothing
            now = time.monotonic()
            if given:
                if deadline is None:
                    timeout = self.timeout if self.timeout is not None else default_timeout(streams)
                    deadline = now + timeout
                if now >= deadline:
                    break
                self._ready.wait(min(deadline - now, 0.05))
            elif not wait:
                break
            else:
                # Nothing ready. A stream held back by its own full outputs sets no event: look again soon.
                self._ready.wait(0.005 if any(not s.ended for s in streams) else 0.05)
        self._turn += 1
        return batch

    def run(self, batch: Batch, backend_for: Callable[[tuple[int, int], int], Backend],
            staging: Callable[[tuple[int, int], int], np.ndarray]) -> None:
        """Infer the batch's frames (calls of up to the graph's max batch, per frame size) and hand back
        every entry whose turn has come."""
        self._queue.extend(batch.entries)
        groups: dict[tuple[int, int], list[tuple[Stream, Frame]]] = {}
        for stream, frame in batch.frames:
            groups.setdefault(frame.size, []).append((stream, frame))
        for size, group in groups.items():
            limit = backend_for(size, 0).spec.input.max_batch
            for part in (group[i:i + limit] for i in range(0, len(group), limit)):
                backend = backend_for(size, len(part))  # a call of one frame may have a graph of its own
                if isinstance(backend, Pipelined):
                    while sum(call.backend is backend for call in self._flight) >= backend.depth:
                        self._collect_oldest()
                    backend.submit(self._images(part, size, staging))
                    self._flight.append(_Call(backend, part, time.perf_counter()))
                else:
                    started = time.perf_counter()
                    self._decoded(part, backend, backend.infer(self._images(part, size, staging)), started)
        self._hand_back()

    def collect(self) -> None:
        """The oldest call in flight (nothing else is waiting), and what it lets go back."""
        self._collect_oldest()
        self._hand_back()

    def _collect_oldest(self) -> None:
        call = self._flight.popleft()
        self._decoded(call.part, call.backend, call.backend.collect(), call.started)

    def _hand_back(self) -> None:
        """Entries in taking order, up to the first frame still in flight."""
        while self._queue:
            stream, item = self._queue[0]
            if isinstance(item, Frame):
                result = self._done.pop(id(item), None)
                if result is None:
                    return
                stream.deliver(result)
            elif isinstance(item, End):
                stream.end(item.error)
            else:
                stream.deliver(item)
            self._queue.popleft()

    @staticmethod
    def _images(part: list[tuple[Stream, Frame]], size: tuple[int, int],
                staging: Callable[[tuple[int, int], int], np.ndarray]) -> np.ndarray:
        """The part's frames as one batch: the frame itself for one, else rows of the size's staging
        buffer (reused at once: ``infer`` is done with it on return, ``submit`` has copied it)."""
        if len(part) == 1:
            return part[0][1].image[None]
        images = staging(size, len(part))
        for row, (_, frame) in enumerate(part):
            images[row] = frame.image
        return images

    def _decoded(self, part: list[tuple[Stream, Frame]], backend: Backend, outputs: dict[str, np.ndarray],
                 started: float) -> None:
        elapsed = time.perf_counter() - started
        self.sizes[len(part)] += 1
        for row, (stream, frame) in enumerate(part):
            self._done[id(frame)] = FrameResult(frame, decode_layers(outputs, backend.spec, row),
                                                timings={"infer": elapsed})
            assert stream.policy is not None
            stream.policy.observe(elapsed)
