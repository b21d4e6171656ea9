"""Which frames go through the networks: every one (the default), every Nth, or as many as a live feed allows.

On the frames between, the pipeline skips the backend entirely and the layer stages carry the
last inferred layers forward (tracks moved by their predicted motion; see ``LayerStages.carry``).
This is DeepStream's ``interval`` and DL Streamer's ``inference-interval``.

``--interval auto`` on a live source adapts N so that inference keeps up with the feed: one
inference may take at most N frame intervals (with headroom). On a file it means 1: a file
never drops frames (the reader waits for the engine), so there is nothing to keep up with,
and every frame inferred is what a user asking for the best answer for each frame expects.

A policy lives on the inference thread only: ``due`` for each frame in order, ``observe``
after each inference. Nothing here reads a clock, so tests drive it with given numbers.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

from segengine.errors import ConfigError

AUTO_RANGE = (1, 8)  # the bounds ``auto`` adapts N within


class IntervalPolicy(Protocol):
    @property
    def n(self) -> int:
        """The current interval: one frame in ``n`` goes through the networks."""
        ...

    def due(self, pts: float, force: bool = False) -> bool:
        """Whether the next frame (its time ``pts``, seconds) is inferred; counts it. ``force``:
        infer it whatever the count (e.g. the frame size changed), and count from it."""
        ...

    def observe(self, infer_seconds: float) -> None:
        """How long the backend took for the last inferred frame."""
        ...


class _Counter:
    """Frames 0, n, 2n, ... are due, counted from the last inferred one (so a change of ``n``
    or a forced frame takes effect from there)."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._left = 0  # frames until the next inferred one; 0: the very first frame is due

    @property
    def n(self) -> int:
        return self._n

    def due(self, pts: float, force: bool = False) -> bool:
        self._left -= 1
        if force or self._left < 0:
            self._left = self._n - 1
            return True
        return False


class FixedInterval(_Counter):
    """Every ``n``th frame, always."""

    def observe(self, infer_seconds: float) -> None:
        pass


class AdaptiveInterval(_Counter):
    """N within ``[low, high]`` so that one inference fits in N frame intervals.

    ``load`` = inference time / frame interval (both smoothed) is how many frames one inference
    takes. N goes up to ``ceil(load · up)`` once that has exceeded N for ``patience`` inferences
    in a row, and down by one once even N − 1 would leave the wider margin ``down`` for as long:
    the gap between the two margins is the hysteresis that keeps N from flapping on noise.

    The frame interval is the source's nominal one when it has a rate, else a low quantile of
    the recent gaps between timestamps: a live source that drops frames (because we are slow)
    shows longer gaps, which must not make us believe the feed is slower than it is.
    """

    def __init__(self, frame_interval: float | None = None, *, low: int = AUTO_RANGE[0], high: int = AUTO_RANGE[1],
                 up: float = 1.15, down: float = 1.6, patience: int = 3, smoothing: float = 0.3) -> None:
        if not 1 <= low <= high:
            raise ConfigError(f"AdaptiveInterval: expected 1 <= low <= high, got {low}..{high}")
        super().__init__(low)
        self.low, self.high, self.up, self.down, self.patience = low, high, up, down, patience
        self._alpha = smoothing
        self._nominal = frame_interval if frame_interval and frame_interval > 0 else None
        self._gaps: deque[float] = deque(maxlen=32)
        self._last_pts: float | None = None
        self._infer: float | None = None  # smoothed seconds per inference
        self._over = self._under = 0  # inferences in a row that asked for a larger / smaller N

    @property
    def frame_interval(self) -> float | None:
        if self._nominal is not None:
            return self._nominal
        if not self._gaps:
            return None
        gaps = sorted(self._gaps)
        return gaps[len(gaps) // 10]

    def due(self, pts: float, force: bool = False) -> bool:
        if self._last_pts is not None and pts > self._last_pts:
            self._gaps.append(pts - self._last_pts)
        self._last_pts = pts
        return super().due(pts, force)

    def observe(self, infer_seconds: float) -> None:
        a = self._alpha
        self._infer = infer_seconds if self._infer is None else a * infer_seconds + (1 - a) * self._infer
        gap = self.frame_interval
        if gap is None:
            return
        load = self._infer / gap
        wanted = min(self.high, max(self.low, math.ceil(load * self.up)))
        self._over = self._over + 1 if wanted > self._n else 0
        self._under = self._under + 1 if self._n > self.low and load * self.down <= self._n - 1 else 0
        if self._over >= self.patience:
            self._n, self._over = wanted, 0
        elif self._under >= self.patience:
            self._n, self._under = self._n - 1, 0


Interval = int | str  # a whole number >= 1, or "auto"


def check_interval(value: object) -> Interval:
    """``value`` as given to ``--interval`` / ``Pipeline(interval=...)``, checked: an int >= 1 or "auto"."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        value = int(text) if text.isdigit() else text
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--interval {value!r}: expected a whole number of frames >= 1 (1 = every frame, "
                          f"3 = the networks run on every third frame) or 'auto'")
    return value


def make_policy(interval: Interval, *, live: bool, frame_interval: float | None = None) -> IntervalPolicy:
    """The policy for a checked ``interval``: ``auto`` adapts on a live source and is 1 on a file."""
    if interval == "auto":
        return AdaptiveInterval(frame_interval) if live else FixedInterval(1)
    assert isinstance(interval, int)
    return FixedInterval(interval)
