"""Synthetic tracking sequences with ground truth, seeded and deterministic.

A 640×384 scene (masks on the 1/4 grid, 96×160, like the engine's prototype masks) with
tall ellipses (people, COCO class 0) and rounded boxes (cars, class 2) that enter and leave
at the edges, cross each other, stand still (for the flicker metric), and pass behind
pillars or each other (nearer = lower on screen is drawn in front). The camera may pan.

Ground truth per frame is every object with at least ``MIN_VISIBLE`` of its area visible
(box = tight box of its visible mask). An object in the frame but less visible than that
is *hidden*: it has no ground-truth row and no detection, and no hidden spell lasts longer
than ``Scenario.max_occlusion`` (objects that would break that are left out of the scene).
Detections add detector noise on top: misses, false positives (short-lived clutter),
box jitter, masks eroded/dilated with ragged borders and cut to their box (as YOLO-seg
does), and noisy scores that drop with occlusion.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from segengine.tracking.base import Detections

FRAME = (384, 640)  # (height, width), pixels
GRID = (96, 160)  # mask grid, 1/4 of the frame
CELL = FRAME[0] // GRID[0]
PERSON, CAR = 0, 2  # COCO ids, as yolov5s-seg reports them
MIN_VISIBLE = 0.35  # visible share of an object's area to count as present
_XS, _YS = (np.arange(GRID[1]) + 0.5) * CELL, (np.arange(GRID[0]) + 0.5) * CELL  # cell centres, frame pixels


@dataclass(frozen=True)
class Scenario:
    name: str
    fps: float = 30.0
    movers_per_s: float = 0.5  # new moving objects per second (Poisson)
    max_movers: int = 8
    stationary: int = 2
    car_share: float = 0.3
    feet_band: tuple[float, float] = (0.45, 0.95)  # where objects' bottoms lie, share of frame height
    occluders: int = 0  # full-height pillars in front of everything
    pan_amplitude: float = 0.0  # camera pan, pixels (sinusoid)
    pan_period: float = 8.0  # seconds
    miss_rate: float = 0.05
    fp_per_frame: float = 0.1  # new false-positive clutter per frame; each lasts a few frames
    box_jitter: float = 0.02  # σ of each box edge, share of box size
    mask_noise: float = 0.3  # chance of a 1-cell erosion/dilation; also scales ragged borders
    score_sigma: float = 0.05
    timing_jitter: float = 0.0  # frame interval varies by ± this share
    max_occlusion: float = 1.0  # seconds


SCENARIOS: dict[str, Scenario] = {
    "easy": Scenario("easy", movers_per_s=0.3, max_movers=5, miss_rate=0.02, fp_per_frame=0.03,
                     box_jitter=0.01, score_sigma=0.03),
    # One narrow band walked both ways: many same-class crossings, each a short occlusion.
    "crossing": Scenario("crossing", movers_per_s=0.9, max_movers=10, car_share=0.15, feet_band=(0.62, 0.78),
                         miss_rate=0.05, fp_per_frame=0.1, box_jitter=0.03),
    # The target suite: pillars, crossings, heavy detector noise, uneven frame timing.
    "occlusion-heavy": Scenario("occlusion-heavy", movers_per_s=0.8, max_movers=10, stationary=3,
                                feet_band=(0.55, 0.85), occluders=3, miss_rate=0.10, fp_per_frame=0.3,
                                box_jitter=0.04, mask_noise=0.5, score_sigma=0.08, timing_jitter=0.15),
    "pan": Scenario("pan", movers_per_s=0.5, occluders=2, pan_amplitude=200.0, box_jitter=0.03),
}
SUITES: dict[str, list[str]] = {"all": list(SCENARIOS), **{name: [name] for name in SCENARIOS}}


@dataclass(frozen=True)
class _Object:
    id: int
    class_id: int
    w: float
    h: float
    x: float  # world centre at t0, pixels
    y: float
    vx: float  # pixels per second
    vy: float
    t0: float
    t1: float

    def centre(self, t: float) -> tuple[float, float]:
        return self.x + self.vx * (t - self.t0), self.y + self.vy * (t - self.t0)


@dataclass(frozen=True, eq=False)
class GroundTruth:
    ids: np.ndarray  # K int64
    class_ids: np.ndarray  # K int
    boxes: np.ndarray  # K×4 float xyxy, frame pixels
    masks: np.ndarray  # K×96×160 bool, the visible part
    visibility: np.ndarray  # K float, visible share of the whole object


@dataclass(frozen=True, eq=False)
class SyntheticFrame:
    index: int
    t: float  # seconds
    camera_x: float  # pan offset, pixels
    gt: GroundTruth
    hidden_ids: np.ndarray  # in the frame but occluded: no ground truth, no detection
    detections: Detections
    det_source: np.ndarray  # N: ground-truth id behind each detection, -1 for a false positive


@dataclass(frozen=True, eq=False)
class SyntheticSequence:
    scenario: Scenario
    seed: int
    frames: list[SyntheticFrame]
    stationary_ids: frozenset[int]
    left_out: int  # objects dropped because they would stay hidden longer than max_occlusion
    occluders: list[tuple[float, float]] = field(default_factory=list)  # world x ranges

    @property
    def fps(self) -> float:
        return self.scenario.fps


def _shape(obj: _Object, cx: float, cy: float) -> tuple[int, int, np.ndarray]:
    """(row, col, bool window) of the object's whole shape on the grid (may lie off the frame)."""
    a, b = obj.w / 2 / CELL, obj.h / 2 / CELL
    gx, gy = cx / CELL, cy / CELL
    c0, r0 = int(np.floor(gx - a)), int(np.floor(gy - b))
    xs = np.arange(c0, int(np.ceil(gx + a)) + 1) + 0.5
    ys = np.arange(r0, int(np.ceil(gy + b)) + 1) + 0.5
    dx, dy = (xs[None, :] - gx) / a, (ys[:, None] - gy) / b
    power = 2 if obj.class_id == PERSON else 4  # ellipse vs superellipse ("rounded box")
    return r0, c0, np.abs(dx) ** power + np.abs(dy) ** power <= 1.0


def _paint(objects: list[_Object], occluders: list[tuple[float, float]], t: float, cam: float
           ) -> tuple[np.ndarray, dict[int, tuple[float, float]]]:
    """Label map (object index, -1 empty, -2 occluder) and per object (visible share, in-frame share)."""
    label = np.full(GRID, -1, np.int32)
    alive = [k for k, o in enumerate(objects) if o.t0 <= t <= o.t1]
    alive.sort(key=lambda k: objects[k].centre(t)[1] + objects[k].h / 2)  # far (higher up) first
    areas: dict[int, tuple[float, float]] = {}
    for k in alive:
        cx, cy = objects[k].centre(t)
        r0, c0, win = _shape(objects[k], cx - cam, cy)
        rr0, cc0 = max(r0, 0), max(c0, 0)
        rr1, cc1 = min(r0 + win.shape[0], GRID[0]), min(c0 + win.shape[1], GRID[1])
        full = max(int(win.sum()), 1)
        if rr1 <= rr0 or cc1 <= cc0:
            areas[k] = (full, 0.0)
            continue
        part = win[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0]
        label[rr0:rr1, cc0:cc1][part] = k
        areas[k] = (full, float(part.sum()))
    for x0, x1 in occluders:
        c0, c1 = int(round((x0 - cam) / CELL)), int(round((x1 - cam) / CELL))
        label[:, max(c0, 0):max(c1, 0)] = -2
    counts = np.bincount(label[label >= 0].ravel(), minlength=len(objects))
    return label, {k: (counts[k] / full, inside / full) for k, (full, inside) in areas.items()}


def _spawn(sc: Scenario, rng: np.random.Generator, duration: float,
           occluders: list[tuple[float, float]]) -> list[_Object]:
    H, W = FRAME
    objs: list[_Object] = []

    def size(cls: int) -> tuple[float, float]:
        return (rng.uniform(80, 120), rng.uniform(40, 56)) if cls == CAR else (rng.uniform(24, 34), rng.uniform(64, 92))

    def feet() -> float:
        return rng.uniform(*sc.feet_band) * H

    taken = list(occluders)
    for _ in range(sc.stationary):
        cls = CAR if rng.random() < 0.5 else PERSON
        w, h = size(cls)
        for _try in range(50):  # clear of pillars and of each other: the flicker metric wants them in view
            x = rng.uniform(w, W - w)
            if all(x + w / 2 < a or x - w / 2 > b for a, b in taken):
                break
        taken.append((x - w / 2, x + w / 2))
        objs.append(_Object(len(objs) + 1, cls, w, h, x, feet() - h / 2, 0.0, 0.0, 0.0, duration))
    t = float(rng.exponential(1 / sc.movers_per_s))
    while t < duration:
        cls = CAR if rng.random() < sc.car_share else PERSON
        w, h = size(cls)
        speed = rng.uniform(110, 200) if cls == CAR else rng.uniform(70, 130)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        cam = sc.pan_amplitude * np.sin(2 * np.pi * t / sc.pan_period)
        x = cam - w / 2 - 2 if sign > 0 else cam + W + w / 2 + 2  # just outside the view
        span = (W + w + 2 * sc.pan_amplitude + 8) / speed
        vy = rng.normal(0, 6) if cls == PERSON else 0.0
        movers = sum(1 for o in objs if o.vx != 0 and o.t0 <= t <= o.t1)
        if movers < sc.max_movers:
            objs.append(_Object(len(objs) + 1, cls, w, h, x, feet() - h / 2, sign * speed, vy, t, t + span))
        t += float(rng.exponential(1 / sc.movers_per_s))
    return objs


def _times(sc: Scenario, rng: np.random.Generator, frames: int) -> np.ndarray:
    steps = (1 + rng.uniform(-sc.timing_jitter, sc.timing_jitter, frames)) / sc.fps
    steps[0] = 0.0
    return np.cumsum(steps)


def _too_long_hidden(objects: list[_Object], occluders: list[tuple[float, float]], times: np.ndarray,
                     cams: np.ndarray, limit: float, fps: float) -> set[int]:
    """Indices of objects with a hidden spell (in the frame, not visible enough) longer than ``limit``."""
    start: dict[int, float] = {}
    bad: set[int] = set()
    for t, cam in zip(times, cams):
        _, shares = _paint(objects, occluders, t, cam)
        for k, (vis, inside) in shares.items():
            if inside >= MIN_VISIBLE and vis < MIN_VISIBLE:
                start.setdefault(k, t)
                if t - start[k] + 1 / fps > limit:  # a spell of n frames spans n frame intervals
                    bad.add(k)
            else:
                start.pop(k, None)
    return bad


def _noisy_mask(mask: np.ndarray, sc: Scenario, rng: np.random.Generator) -> np.ndarray:
    m = mask.astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    if rng.random() < sc.mask_noise:
        m = cv2.erode(m, kernel) if rng.random() < 0.5 else cv2.dilate(m, kernel)
    border = (cv2.dilate(m, kernel) != cv2.erode(m, kernel))
    flip = border & (rng.random(m.shape) < 0.25 * sc.mask_noise)
    out = (m > 0) ^ flip
    return out if out.any() else mask


def _box_mask(box: np.ndarray) -> np.ndarray:
    """Grid cells whose centres lie in a frame-pixel box (how YOLO-seg crops its masks)."""
    return ((_YS[:, None] >= box[1]) & (_YS[:, None] <= box[3])) & ((_XS[None, :] >= box[0]) & (_XS[None, :] <= box[2]))


def _detect(gt: GroundTruth, clutter: list[list], sc: Scenario, rng: np.random.Generator
            ) -> tuple[Detections, np.ndarray]:
    H, W = FRAME
    boxes, scores, classes, masks, source = [], [], [], [], []
    for k in range(len(gt.ids)):
        if rng.random() < sc.miss_rate:
            continue
        box = gt.boxes[k].copy()
        wh = np.tile(box[2:] - box[:2], 2)
        box = np.clip(box + rng.normal(0, sc.box_jitter, 4) * wh, 0, [W, H, W, H])
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            box = gt.boxes[k].copy()
        boxes.append(box)
        scores.append(np.clip(0.5 + 0.45 * gt.visibility[k] + rng.normal(0, sc.score_sigma), 0.05, 0.99))
        classes.append(gt.class_ids[k])
        masks.append(_noisy_mask(gt.masks[k], sc, rng) & _box_mask(box))
        source.append(gt.ids[k])
    for _ in range(rng.poisson(sc.fp_per_frame)):  # clutter: [box, score, class, frames left]
        w, h = rng.uniform(20, 90), rng.uniform(30, 100)
        x, y = rng.uniform(0, W - w), rng.uniform(H * 0.2, H - h)
        clutter.append([np.array([x, y, x + w, y + h]), rng.uniform(0.3, 0.7), int(rng.choice([PERSON, CAR])),
                        int(rng.geometric(0.35))])
    for c in clutter:  # an ellipse filling its (slightly wandering) box
        box = np.clip(c[0] + rng.normal(0, 2.0, 4), 0, [W, H, W, H])
        half = np.maximum((box[2:] - box[:2]) / 2, 1e-3)
        centre = (box[:2] + box[2:]) / 2
        boxes.append(box)
        scores.append(float(np.clip(c[1] + rng.normal(0, 0.05), 0.05, 0.95)))
        classes.append(c[2])
        masks.append(((_XS[None, :] - centre[0]) / half[0]) ** 2 + ((_YS[:, None] - centre[1]) / half[1]) ** 2 <= 1)
        source.append(-1)
        c[3] -= 1
    clutter[:] = [c for c in clutter if c[3] > 0]
    n = len(boxes)
    dets = Detections(boxes=np.array(boxes, np.float32).reshape(n, 4), scores=np.array(scores, np.float32),
                      class_ids=np.array(classes, np.int64), masks=np.array(masks, bool).reshape(n, *GRID))
    return dets, np.array(source, np.int64)


def _ground_truth(objects: list[_Object], label: np.ndarray, shares: dict[int, tuple[float, float]]
                  ) -> tuple[GroundTruth, np.ndarray]:
    ids, classes, boxes, masks, vis, hidden = [], [], [], [], [], []
    for k, (v, inside) in sorted(shares.items(), key=lambda kv: objects[kv[0]].id):
        if v >= MIN_VISIBLE:
            m = label == k
            rr, cc = np.nonzero(m)
            ids.append(objects[k].id)
            classes.append(objects[k].class_id)
            boxes.append([cc.min() * CELL, rr.min() * CELL, (cc.max() + 1) * CELL, (rr.max() + 1) * CELL])
            masks.append(m)
            vis.append(v)
        elif inside >= MIN_VISIBLE:
            hidden.append(objects[k].id)
    n = len(ids)
    gt = GroundTruth(np.array(ids, np.int64), np.array(classes, np.int64), np.array(boxes, np.float32).reshape(n, 4),
                     np.array(masks, bool).reshape(n, *GRID), np.array(vis, np.float32))
    return gt, np.array(hidden, np.int64)


def generate(scenario: str | Scenario, seed: int = 0, frames: int = 600) -> SyntheticSequence:
    """The sequence for (scenario, seed, frames): identical on every call and every machine."""
    sc = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    scene_seq, noise_seq = np.random.SeedSequence([seed, zlib.crc32(sc.name.encode())]).spawn(2)
    rng, noise = np.random.default_rng(scene_seq), np.random.default_rng(noise_seq)
    times = _times(sc, rng, frames)
    cams = sc.pan_amplitude * np.sin(2 * np.pi * times / sc.pan_period)
    H, W = FRAME
    span = (-sc.pan_amplitude, W + sc.pan_amplitude)
    occluders = []
    for x in np.linspace(*span, sc.occluders + 2)[1:-1] + rng.uniform(-40, 40, sc.occluders):
        w = rng.uniform(36, 56)
        occluders.append((float(x - w / 2), float(x + w / 2)))
    objects = _spawn(sc, rng, float(times[-1]) + 1.0, occluders)
    left_out = 0
    # Removing an object only ever uncovers others, so this ends.
    while bad := _too_long_hidden(objects, occluders, times, cams, sc.max_occlusion, sc.fps):
        objects = [o for k, o in enumerate(objects) if k not in bad]
        left_out += len(bad)
    out, clutter = [], []
    for i, (t, cam) in enumerate(zip(times, cams)):
        label, shares = _paint(objects, occluders, t, cam)
        gt, hidden = _ground_truth(objects, label, shares)
        dets, source = _detect(gt, clutter, sc, noise)
        out.append(SyntheticFrame(i, float(t), float(cam), gt, hidden, dets, source))
    still = frozenset(o.id for o in objects if o.vx == 0 and o.vy == 0)
    return SyntheticSequence(sc, seed, out, still, left_out, occluders)


def with_scenario(name: str, **changes: object) -> Scenario:
    """A preset with some fields changed (e.g. a short, noise-free variant for tests)."""
    return replace(SCENARIOS[name], **changes)  # type: ignore[arg-type]
