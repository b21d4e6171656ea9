"""A constant-velocity Kalman filter over boxes, for all tracks at once, in continuous time.

State per track: (cx, cy, w, h) and their velocities per **second**. The time step comes
from the frames' timestamps, so a variable frame rate or a run of dropped frames is just a
longer ``dt``: the prediction moves further and its uncertainty grows with ``dt``.

The motion model treats the four box coordinates as independent, each a position with a
velocity, and both the process and measurement noise are diagonal across coordinates.
Under that model the 8×8 covariance is block-diagonal with one 2×2 block per coordinate,
so this filter keeps just those blocks (pp, pv, vv per coordinate) next to the mean, one
row of 20 numbers per track: a prediction is one matrix product for all tracks and a
correction a few element-wise operations with no matrix inverse. The result is exactly
the full filter's, at a fraction of its cost for the one-to-ten tracks of a typical frame,
where numpy's per-call overhead is most of the time.

Noise is ByteTrack's, made continuous: at 30 fps one ``predict(1/30)`` adds the same
variance as ByteTrack's per-frame step (position σ = size/20, velocity σ = size/160, where
size is the box's mean side). Velocity is a random walk integrated exactly over ``dt``,
so a long gap widens the position uncertainty as dt³, as it should.
"""

from __future__ import annotations

import numpy as np

_FPS_REF = 30.0  # the frame rate ByteTrack's per-frame constants were tuned at
_MIN_SIDE = 1e-3  # box sides never shrink below this (a degenerate box still has a noise scale)


class BoxKalman:
    """Box states of N tracks (rows), added, predicted, updated and dropped together.

    One N×20 array holds each track's mean (cx, cy, w, h), velocity, and the three entries
    pp, pv, vv of each coordinate's covariance block: a track is one row, so adding,
    dropping and correcting tracks is one array operation each.
    """

    def __init__(self, *, std_measure: float = 1 / 20, std_position: float = 1 / 20,
                 std_velocity: float = 1 / 160, std_velocity_init: float = 2.0) -> None:
        self.r = std_measure ** 2  # measurement variance per size² (the box's jitter)
        self.q_pos = _FPS_REF * std_position ** 2  # position random walk, size² per second
        self.q_vel = _FPS_REF * std_velocity ** 2  # velocity random walk, size² / s³
        self.v0 = std_velocity_init ** 2  # a new track's velocity variance, (sizes per second)²
        self.x = np.zeros((0, 20))
        self._dt, self._transition, self._noise = 0.0, np.eye(20), np.zeros((1, 20))

    def __len__(self) -> int:
        return len(self.x)

    @property
    def mean(self) -> np.ndarray:
        """N×4 (cx, cy, w, h)."""
        return self.x[:, 0:4]

    @property
    def velocity(self) -> np.ndarray:
        """N×4, per second."""
        return self.x[:, 4:8]

    @property
    def variance(self) -> np.ndarray:
        """N×4 variance of (cx, cy, w, h)."""
        return self.x[:, 8:12]

    def add(self, boxes: np.ndarray) -> None:
        """Append one track per xyxy box, at rest, with the velocity unknown."""
        rows = np.zeros((len(boxes), 20))
        rows[:, 0:4] = xyxy_to_cxcywh(boxes)
        np.maximum(rows[:, 2:4], _MIN_SIDE, out=rows[:, 2:4])
        s2 = _size2(rows)
        rows[:, 8:12] = 4 * self.r * s2
        rows[:, 16:20] = self.v0 * s2
        self.x = np.concatenate([self.x, rows])

    def keep(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` (a boolean mask or indices), in that order."""
        self.x = self.x[rows]

    def predict(self, dt: float) -> None:
        """Advance every track by ``dt`` seconds; ``dt <= 0`` (a repeated timestamp) changes nothing."""
        if dt <= 0 or not len(self.x):
            return
        if abs(dt - self._dt) > 1e-9:  # frame steps repeat (up to float noise): reuse the map
            self._dt, self._transition, self._noise = dt, *self._step(dt)
        x = self.x @ self._transition
        x += _size2(self.x) @ self._noise
        np.maximum(x[:, 2:4], _MIN_SIDE, out=x[:, 2:4])  # a shrinking box stops at a point
        self.x = x

    def _step(self, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """The prediction as one linear map of a row plus noise per size²: (20×20, 1×20).

        Per coordinate, F = [[1, dt], [0, 1]]: mean += dt·velocity, and P ← F P Fᵀ + Q, i.e.
        pp += 2dt·pv + dt²·vv, pv += dt·vv, plus Q from the two random walks integrated over dt.
        """
        blocks = np.eye(5)  # acts on the row's blocks (mean, velocity, pp, pv, vv), 4 values each
        blocks[1, 0] = dt
        blocks[3, 2], blocks[4, 2], blocks[4, 3] = 2 * dt, dt * dt, dt
        noise = np.zeros((5, 1))
        noise[2:, 0] = (self.q_pos * dt + self.q_vel * dt ** 3 / 3, self.q_vel * dt * dt / 2, self.q_vel * dt)
        return np.kron(blocks, np.eye(4)), np.broadcast_to(noise, (5, 4)).reshape(1, 20)

    def update(self, rows: np.ndarray, boxes: np.ndarray) -> None:
        """Correct tracks ``rows`` (indices) with their measured xyxy ``boxes``."""
        if not len(rows):
            return
        x = self.x[rows]
        pp, pv = x[:, 8:12], x[:, 12:16]
        s = pp + _size2(x) * self.r
        kp, kv = pp / s, pv / s  # the gains for position and velocity
        y = xyxy_to_cxcywh(boxes)
        y -= x[:, 0:4]
        x[:, 0:4] += kp * y
        x[:, 4:8] += kv * y
        x[:, 16:20] -= kv * pv  # vv − kv·pv
        keep = 1 - kp
        pp *= keep  # pp·(1 − kp)
        pv *= keep  # pv·(1 − kp)
        self.x[rows] = x

    def hold_size(self, rows: np.ndarray) -> None:
        """Stop ``rows`` growing or shrinking (ByteTrack does so for lost tracks: their size
        change was often the occlusion's, not the object's); they still move."""
        self.x[rows, 6:8] = 0.0

    def boxes(self) -> np.ndarray:
        """Predicted xyxy boxes, N×4."""
        return self.x[:, 0:4] @ _TO_XYXY


_TO_CXCYWH = np.array([[0.5, 0, -1, 0], [0, 0.5, 0, -1], [0.5, 0, 1, 0], [0, 0.5, 0, 1]])
_TO_XYXY = np.linalg.inv(_TO_CXCYWH)
_SIZE = np.array([[0], [0], [0.5], [0.5]] + [[0]] * 16)  # a row's mean side, (w + h) / 2


def _size2(x: np.ndarray) -> np.ndarray:
    """Squared noise scale per row (N×1): the mean box side (sides are kept positive)."""
    s = x @ _SIZE
    s *= s
    return s


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    return np.asarray(boxes, np.float64).reshape(-1, 4) @ _TO_CXCYWH


def cxcywh_to_xyxy(state: np.ndarray) -> np.ndarray:
    return np.asarray(state, np.float64).reshape(-1, 4) @ _TO_XYXY
