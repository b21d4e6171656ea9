"""Lane lines as smooth polylines in frame pixels, fitted from a binary lane map.

The map (class 1 = lane line) is read at model resolution, where it is small: each
horizontal run of lane pixels becomes one point (its centre) on its line; each connected
blob is split into straight-ish lines by a deterministic RANSAC (two lines that touch near
the horizon form one blob); pieces that continue each other (the dashes of one dashed line)
are merged; each line is fitted as x = poly(y) and sampled over its extent.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from segengine.geometry import Placement
from segengine.graph.readout import frame_region

# RANSAC hypotheses: a point from the lower part of a blob paired with one from the upper
# part, at fixed quantiles, so the same map always gives the same lanes.
_LOW_Q = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
_HIGH_Q = np.array([0.6, 0.7, 0.8, 0.9, 1.0])


@dataclass
class _Piece:
    """Points (run centres, model pixels) of one line and its fit x = poly(y)."""

    ys: np.ndarray
    xs: np.ndarray
    coef: np.ndarray

    def residual(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Distance across the line (not along x), so shallow lines are not penalised."""
        # Horner by hand: np.polyval/np.polyder cost more than the arithmetic on these few points.
        x, slope = np.zeros_like(ys, dtype=np.float64), np.zeros_like(ys, dtype=np.float64)
        for c in self.coef:
            slope = slope * ys + x
            x = x * ys + c
        return np.abs(xs - x) / np.sqrt(1.0 + slope * slope)


Polylines = tuple[np.ndarray, ...]  # each K×2 float32 (x, y) in frame pixels, top to bottom


def fit_lanes(classes: np.ndarray, placement: Placement, *, min_pixels: int = 30, min_span: float = 0.04,
              max_lanes: int = 8, step: float = 4.0) -> Polylines:
    """Lane polylines (frame pixels, top to bottom, sorted left to right at their lowest point).

    ``min_pixels``: blobs smaller than this (in map pixels) are noise. ``min_span``: a line
    must cover at least this fraction of the map's height (stop lines and specks do not).
    ``step``: spacing of the polyline's vertices, in map rows.
    """
    binary = classes == 1
    h = binary.shape[0]
    rows, cols = frame_region(placement, binary.shape)
    binary = np.ascontiguousarray(binary[rows, cols])
    tol = max(1.5, 0.008 * h)  # how far a run centre may sit from its line, in map pixels
    pieces = []
    for ys, xs in _blobs(binary, min_pixels):
        pieces.extend(_split(ys, xs, tol, min_points=max(4, int(min_span * h / 2))))
    lines = _merge(pieces, tol)
    polylines = []
    for line in lines:
        span = line.ys.max() - line.ys.min()
        if span < min_span * h:
            continue
        coef = _robust_fit(line.ys, line.xs, _degree(line.ys, tol), 2 * tol)
        ys = np.linspace(line.ys.min(), line.ys.max(), max(2, int(np.ceil(span / step)) + 1))
        xs, ys = _inside(np.polyval(coef, ys), ys, binary.shape[1] - 1)
        if len(xs) < 2:
            continue
        polylines.append(_to_frame(xs + cols.start, ys + rows.start, placement, classes.shape))
    polylines.sort(key=lambda p: p[-1, 0])
    if len(polylines) > max_lanes:  # keep the longest, still left to right
        longest = sorted(range(len(polylines)), key=lambda i: -np.ptp(polylines[i][:, 1]))[:max_lanes]
        polylines = [polylines[i] for i in sorted(longest)]
    return tuple(polylines)


def _inside(xs: np.ndarray, ys: np.ndarray, right: float) -> tuple[np.ndarray, np.ndarray]:
    """The longest stretch with 0 <= x <= right, ended exactly on the border where it leaves
    (clipping x instead would bend a shallow line along the frame's edge)."""
    inside = (xs >= 0) & (xs <= right)
    if inside.all() or not inside.any():
        return xs[inside], ys[inside]
    edges = np.flatnonzero(np.diff(np.r_[0, inside.view(np.int8), 0]))
    k = int(np.argmax(edges[1::2] - edges[0::2]))
    a, b = int(edges[2 * k]), int(edges[2 * k + 1])  # inside[a:b] is that stretch

    def crossing(out: int, into: int) -> tuple[float, float]:
        border = 0.0 if xs[out] < 0 else right
        return border, ys[into] + (border - xs[into]) / (xs[out] - xs[into]) * (ys[out] - ys[into])

    points = ([crossing(a - 1, a)] if a > 0 else []) + list(zip(xs[a:b], ys[a:b]))
    points += [crossing(b, b - 1)] if b < len(xs) else []
    out = np.array(points)
    return out[:, 0], out[:, 1]


def _to_frame(xs: np.ndarray, ys: np.ndarray, placement: Placement, shape: tuple[int, int]) -> np.ndarray:
    """Map pixel centres → network input → frame pixel centres: frame = (input - offset) / scale."""
    (ih, iw) = placement.input_size
    kx, ky = placement.scale_xy
    fx = ((xs + 0.5) * (iw / shape[1]) - placement.left) / kx - 0.5
    fy = ((ys + 0.5) * (ih / shape[0]) - placement.top) / ky - 0.5
    fh, fw = placement.frame_size
    return np.stack([np.clip(fx, 0, fw - 1), np.clip(fy, 0, fh - 1)], axis=1).astype(np.float32)


def _blobs(binary: np.ndarray, min_pixels: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per connected blob of at least ``min_pixels``: the (row, x centre) of each of its runs."""
    filled = np.flatnonzero(binary.any(axis=1))
    if len(filled) == 0:
        return []
    top = filled[0]
    binary = binary[top:filled[-1] + 1]  # lanes fill a band below the horizon: label only that
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.view(np.uint8), connectivity=8)
    edges = np.diff(np.pad(binary, ((0, 0), (1, 1))).view(np.int8), axis=1)
    flips = np.flatnonzero(edges)  # row-major, so each run's start is followed by its stop
    r, start = np.divmod(flips[0::2], edges.shape[1])
    stop = flips[1::2] % edges.shape[1]
    label = labels[r, start]
    keep = stats[label, cv2.CC_STAT_AREA] >= min_pixels
    r, label, centre = r[keep] + top, label[keep], (start[keep] + stop[keep] - 1) * 0.5
    order = np.argsort(label, kind="stable")
    r, label, centre = r[order], label[order], centre[order]
    bounds = np.flatnonzero(np.diff(label)) + 1
    return [(ys.astype(np.float64), xs) for ys, xs in zip(np.split(r, bounds), np.split(centre, bounds))]


def _split(ys: np.ndarray, xs: np.ndarray, tol: float, min_points: int, most: int = 3) -> list[_Piece]:
    """Sequential RANSAC: the best-supported line, then the next one among what is left."""
    pieces = []
    while len(ys) >= min_points and len(pieces) < most:
        inliers = _ransac_line(ys, xs, tol)
        if inliers.sum() < min_points:
            break
        coef = _robust_fit(ys[inliers], xs[inliers], _degree(ys[inliers], tol), tol)
        piece = _Piece(ys[inliers], xs[inliers], coef)
        near = piece.residual(ys, xs) <= 2 * tol  # a curved line's ends rejoin it after the fit
        if near.sum() < min_points:  # a wild refit (few rows, curved fit) keeps the RANSAC inliers
            near = inliers
        pieces.append(_Piece(ys[near], xs[near], coef))
        ys, xs = ys[~near], xs[~near]
    return pieces


def _ransac_line(ys: np.ndarray, xs: np.ndarray, tol: float) -> np.ndarray:
    order = np.argsort(ys, kind="stable")
    n = len(ys) - 1
    lo, hi = order[np.round(_LOW_Q * n).astype(int)], order[np.round(_HIGH_Q * n).astype(int)]
    i, j = np.repeat(lo, len(hi)), np.tile(hi, len(lo))
    dy = ys[j] - ys[i]
    ok = dy >= 1  # both ends in one row say nothing about x = f(y)
    if not ok.any():
        return np.zeros(len(ys), bool)
    i, j, dy = i[ok], j[ok], dy[ok]
    a = (xs[j] - xs[i]) / dy
    b = xs[i] - a * ys[i]
    dist = np.abs(xs[None] - (a[:, None] * ys[None] + b[:, None])) / np.sqrt(1 + a * a)[:, None]
    support = dist <= tol
    return support[np.argmax(support.sum(axis=1))]


def _degree(ys: np.ndarray, tol: float) -> int:
    """A bend is only measurable over many rows (here 15 tolerances, ~40 rows at 360p);
    over fewer, a quadratic would fit the noise."""
    return 2 if np.ptp(ys) > 15 * tol and len(ys) > 20 else 1


def _robust_fit(ys: np.ndarray, xs: np.ndarray, deg: int, tol: float) -> np.ndarray:
    """Least squares, then again without the points that sit far from the first fit."""
    deg = min(deg, _rows(ys) - 1)
    if deg < 1:
        return np.array([0.0, float(np.mean(xs))])
    coef = _polyfit(ys, xs, deg)
    keep = _Piece(ys, xs, coef).residual(ys, xs) <= tol
    if _rows(ys[keep]) > deg:
        coef = _polyfit(ys[keep], xs[keep], deg)
    return coef


def _polyfit(ys: np.ndarray, xs: np.ndarray, deg: int) -> np.ndarray:
    """``np.polyfit`` without its per-call checks and scaling, which cost more than the fit of these
    few hundred points (degree <= 2 over map rows < 1000 is well conditioned in float64)."""
    return np.linalg.lstsq(np.vander(ys, deg + 1), xs, rcond=None)[0]


def _median(values: np.ndarray) -> float:
    """``np.median`` of a short, non-empty array, at a fraction of its overhead."""
    n = len(values)
    part = np.partition(values, (n - 1) // 2 if n % 2 else [n // 2 - 1, n // 2])
    return float(part[n // 2]) if n % 2 else float(0.5 * (part[n // 2 - 1] + part[n // 2]))


def _rows(ys: np.ndarray) -> int:
    """How many distinct rows (ys are whole rows): a fit of degree d needs d + 1."""
    return int(np.count_nonzero(np.bincount(ys.astype(np.intp)))) if len(ys) else 0


def _merge(pieces: list[_Piece], tol: float) -> list[_Piece]:
    """Join pieces that continue one another (the dashes of one line), biggest first, and
    again over the joined lines until nothing joins (two halves of a line may grow apart)."""
    while True:
        lines: list[_Piece] = []
        for piece in sorted(pieces, key=lambda p: -len(p.ys)):
            for k, line in enumerate(lines):
                joined = _joined(line, piece, tol)
                if joined is not None:
                    lines[k] = joined
                    break
            else:
                lines.append(piece)
        if len(lines) == len(pieces):
            return lines
        pieces = lines


def _joined(line: _Piece, piece: _Piece, tol: float) -> _Piece | None:
    """One curve through both, if both sit on it; a short dash's own slope is too noisy to
    extrapolate, so the test is on the joint fit rather than on one piece's prolongation."""
    gap = max(0.0, max(line.ys.min(), piece.ys.min()) - min(line.ys.max(), piece.ys.max()))
    if _median(line.residual(piece.ys, piece.xs)) > 6 * tol + 0.15 * gap:
        return None  # not even roughly in line: most pairs end here, cheaply
    small, big = (line.ys, piece.ys) if len(line.ys) < len(piece.ys) else (piece.ys, line.ys)
    if np.isin(small, big).mean() > 0.3:
        return None  # rows shared by both: two marks side by side, not one line
    ys, xs = np.concatenate([line.ys, piece.ys]), np.concatenate([line.xs, piece.xs])
    joint = _Piece(ys, xs, _robust_fit(ys, xs, _degree(ys, tol), 2 * tol))
    res = joint.residual(ys, xs)
    n = len(line.ys)
    if max(_median(res[:n]), _median(res[n:])) > 1.5 * tol or np.percentile(res, 90) > 3 * tol:
        return None
    return joint


@dataclass
class _Track:
    coef: np.ndarray  # x = poly(y), frame pixels
    top: float
    bottom: float
    points: int
    misses: int = 0

    def polyline(self) -> np.ndarray:
        ys = np.linspace(self.top, self.bottom, self.points)
        return np.stack([np.polyval(self.coef, ys), ys], axis=1).astype(np.float32)


class LaneSmoother:
    """Exponential smoothing of each lane over time, matched by position, to stop jitter.

    Stateful: one per stream. A lane missing for up to ``patience`` frames is still shown.
    ``max_shift``: how far (mean |dx| over the shared rows, as a fraction of the lane's
    height) a lane may move between frames and still be the same lane.
    """

    def __init__(self, alpha: float = 0.35, max_shift: float = 0.12, patience: int = 2) -> None:
        self.alpha, self.max_shift, self.patience = alpha, max_shift, patience
        self._tracks: list[_Track] = []

    def reset(self) -> None:
        self._tracks = []

    def update(self, polylines: Polylines) -> Polylines:
        fresh = [_Track(np.polyfit(p[:, 1], p[:, 0], min(2, len(p) - 1)), float(p[0, 1]), float(p[-1, 1]), len(p))
                 for p in polylines if len(p) >= 2 and p[-1, 1] > p[0, 1]]
        pairs = sorted((self._cost(old, new), i, j) for i, old in enumerate(self._tracks)
                       for j, new in enumerate(fresh))
        used_old: set[int] = set()
        used_new: set[int] = set()
        for cost, i, j in pairs:
            if cost > self.max_shift or i in used_old or j in used_new:
                continue
            used_old.add(i)
            used_new.add(j)
            old, new, a = self._tracks[i], fresh[j], self.alpha
            # Blending coefficients blends the curves at every row (x is linear in them).
            coef = a * _pad(new.coef) + (1 - a) * _pad(old.coef)
            fresh[j] = _Track(coef, a * new.top + (1 - a) * old.top, a * new.bottom + (1 - a) * old.bottom,
                              new.points)
        kept = [t for i, t in enumerate(self._tracks) if i not in used_old and t.misses < self.patience]
        for t in kept:
            t.misses += 1
        self._tracks = fresh + kept
        return tuple(sorted((t.polyline() for t in self._tracks), key=lambda p: float(p[-1, 0])))

    @staticmethod
    def _cost(old: _Track, new: _Track) -> float:
        lo, hi = max(old.top, new.top), min(old.bottom, new.bottom)
        if hi - lo < 0.3 * min(old.bottom - old.top, new.bottom - new.top):
            return float("inf")
        ys = np.linspace(lo, hi, 8)
        shift = np.abs(np.polyval(old.coef, ys) - np.polyval(new.coef, ys)).mean()
        return float(shift / max(old.bottom - old.top, new.bottom - new.top))


def _pad(coef: np.ndarray) -> np.ndarray:
    return np.pad(coef, (3 - len(coef), 0))
