"""Instances: boxes, scores, classes and masks at model resolution (the prototype grid) with their track ids.

Masks stay on the prototype grid with the ``Placement`` that maps them to the frame (a full-frame
boolean mask at 1080p costs ~2 MB); frame-resolution masks are made around each box, once, on demand.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar

import cv2
import numpy as np

from segengine.checks import check
from segengine.geometry import Placement
from segengine.graph.readout import box_masks, masks_to_frame
from segengine.graph.spec import OutputSpec
from segengine.layers.base import LayerStage
from segengine.render.draw import FONT, brackets, check_opacity, tint_matrix
from segengine.render.palette import GROUP_COLOURS, group_of, instance_colour, text_colour
from segengine.rle import encode_windows


@dataclass(frozen=True, eq=False)
class Instances:
    boxes: np.ndarray  # N×4 float32, xyxy in frame pixels
    scores: np.ndarray  # N float32
    class_ids: np.ndarray  # N int32
    masks: np.ndarray  # N×h×w uint8 probabilities ×255 on the prototype grid
    placement: Placement  # maps the mask grid to the frame
    class_names: tuple[str, ...]
    track_ids: np.ndarray = field(default=None)  # type: ignore[assignment]  # N int64, -1 = untracked

    kind: ClassVar[str] = "instances"
    z: ClassVar[int] = 40

    def __post_init__(self) -> None:
        n = len(self.boxes)
        check(self.boxes.shape == (n, 4), "Instances.boxes", "N×4", self.boxes.shape)
        check(self.scores.shape == (n,), "Instances.scores", f"({n},)", self.scores.shape)
        check(self.class_ids.shape == (n,), "Instances.class_ids", f"({n},)", self.class_ids.shape)
        check(self.masks.ndim == 3 and len(self.masks) == n and self.masks.dtype == np.uint8,
              "Instances.masks", f"{n}×h×w uint8", f"{self.masks.shape} {self.masks.dtype}")
        if self.track_ids is None:
            object.__setattr__(self, "track_ids", np.full(n, -1, np.int64))
        check(self.track_ids.shape == (n,), "Instances.track_ids", f"({n},)", self.track_ids.shape)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def names(self) -> list[str]:
        return [self.class_names[i] for i in self.class_ids]

    def with_tracks(self, track_ids: np.ndarray) -> Instances:
        return replace(self, track_ids=np.asarray(track_ids, np.int64))

    def select(self, keep: np.ndarray) -> Instances:
        return replace(self, boxes=self.boxes[keep], scores=self.scores[keep], class_ids=self.class_ids[keep],
                       masks=self.masks[keep], track_ids=self.track_ids[keep])

    @cached_property
    def box_masks(self) -> list[tuple[int, int, np.ndarray]]:
        """Per instance ``(x0, y0, bool h×w)``: its mask at frame resolution around its box (made once)."""
        return box_masks(self.masks, self.boxes, self.placement)

    def frame_masks(self) -> np.ndarray:
        """bool N×H×W at frame resolution (2 MB per mask at 1080p: prefer ``box_masks``)."""
        out = np.zeros((len(self), *self.placement.frame_size), bool)
        for k, (x0, y0, m) in enumerate(self.box_masks):
            out[k, y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m
        return out

    # -- the layer interface -------------------------------------------------------------------

    @classmethod
    def decode(cls, outputs: Mapping[str, np.ndarray], spec: OutputSpec, row: int) -> Instances:
        """From the graph's padded top-K tensors (boxes, scores, classes, masks): the rows with a score."""
        boxes, scores, classes, masks = (outputs[name][row] for name in spec.tensors)
        valid = scores > 0
        return cls(boxes=boxes[valid].astype(np.float32), scores=scores[valid].astype(np.float32),
                   class_ids=classes[valid].astype(np.int32), masks=masks[valid], placement=spec.placement,
                   class_names=spec.classes)

    @classmethod
    def drawer(cls) -> InstanceDrawer:
        return InstanceDrawer()

    @classmethod
    def stage(cls) -> LayerStage:
        from segengine.tracking.mask_tracker import MaskTracker

        return MaskTracker()

    def to_json(self, *, masks: bool = True) -> dict[str, Any]:
        """``{"kind": "instances", "items": [{track_id, class, class_id, score, box, mask}]}``; masks as
        COCO RLE at frame resolution (null with ``masks=False``), boxes in frame pixels."""
        rles = (encode_windows(self.box_masks, self.placement.frame_size) if masks
                else [None] * len(self.track_ids))
        names = self.names
        return {"kind": self.kind,
                "items": [{"track_id": int(t) if t >= 0 else None, "class": names[i],
                           "class_id": int(self.class_ids[i]), "score": round(float(self.scores[i]), 4),
                           "box": [round(float(v), 2) for v in self.boxes[i]], "mask": rles[i]}
                          for i, t in enumerate(self.track_ids)]}

    def class_masks(self, names: Collection[str]) -> dict[str, np.ndarray]:
        """Every instance of a class merged into one mask (upstream's full-frame path, for scoring)."""
        full = masks_to_frame(self.masks, self.placement)
        wanted = {n: self.class_names.index(n) for n in names if n in self.class_names}
        empty = np.zeros(self.placement.frame_size, bool)
        return {n: full[self.class_ids == wanted[n]].any(axis=0) if n in wanted and len(full) else empty
                for n in names}


@dataclass(frozen=True)
class InstanceDrawer:
    """Masks tinted in their track's colour with a contour, labels that avoid each other, and corner
    brackets around hazards (people, riders, obstacles); far objects first, near ones on top."""

    masks: bool = True
    boxes: bool = False  # hazards are always bracketed
    labels: bool = True
    scores: bool = True
    alpha: float = 0.45

    def __post_init__(self) -> None:
        check_opacity("InstanceDrawer.alpha", self.alpha)

    def draw(self, canvas: np.ndarray, result: Any) -> None:
        for layer in result.all(Instances):
            if len(layer):
                self._draw(canvas, result.frame.image, layer)

    def _draw(self, out: np.ndarray, frame: np.ndarray, inst: Instances) -> None:
        h, w = out.shape[:2]
        boxes = np.round(inst.boxes).astype(int).clip(0, [w, h, w, h])
        names = inst.names
        order = np.argsort(boxes[:, 3], kind="stable")  # far (higher in the frame) first, near ones on top
        thin = max(1, round(min(h, w) / 500))
        windows = inst.box_masks if self.masks else []
        for i in order:
            x0, y0, x1, y1 = boxes[i]
            if x1 <= x0 or y1 <= y0:
                continue
            colour = instance_colour(int(inst.track_ids[i]), names[i])
            if self.masks:
                mx, my, window = windows[i]
                mask = window.view(np.uint8)
                region = (slice(my, my + mask.shape[0]), slice(mx, mx + mask.shape[1]))
                # Tinted from the frame's own pixels: an object hides the road tint and lane
                # lines behind it, and a nearer object the farther one.
                tinted = cv2.transform(frame[region], tint_matrix(colour, self.alpha))
                cv2.copyTo(tinted, mask, out[region])
                contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(mx, my))
                cv2.drawContours(out, contours, -1, colour, thin, cv2.LINE_AA)
            if self.boxes:
                cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, thin, cv2.LINE_AA)
            group = group_of(names[i])
            if group.hazard:
                brackets(out, (x0, y0, x1, y1), GROUP_COLOURS[group], thin + 2)
        if self.labels:
            taken: list[tuple[int, int, int, int]] = []
            for i in order[::-1]:  # near objects keep their place; far ones make way
                self._label(out, inst, names[i], i, boxes[i], taken)

    def _label(self, out: np.ndarray, inst: Instances, name: str, i: int, box: np.ndarray,
               taken: list[tuple[int, int, int, int]]) -> None:
        track = int(inst.track_ids[i])
        group = group_of(name)
        colour = GROUP_COLOURS[group] if group.hazard else instance_colour(track, name)
        text = name if track < 0 else f"{name} {track}"
        if self.scores:
            text += f" {inst.scores[i]:.2f}"
        if group.hazard:
            text = "! " + text
        h, w = out.shape[:2]
        scale = float(np.clip(min(h, w) / 1100, 0.36, 1.0))
        thick = 1 if scale < 0.7 else 2
        (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
        pad = max(2, round(3 * scale))
        bw, bh = tw + 2 * pad, th + base + pad
        x = int(np.clip(box[0], 0, max(0, w - bw)))
        y = int(box[1]) - bh if box[1] - bh >= 0 else int(box[1])  # above the box, or inside when no room
        for _ in range(4):  # step up past labels already drawn, a few times at most
            rect = (x, y, x + bw, y + bh)
            hit = next((t for t in taken if rect[0] < t[2] and t[0] < rect[2] and rect[1] < t[3] and t[1] < rect[3]),
                       None)
            if hit is None or hit[1] - bh < 0:
                break
            y = hit[1] - bh
        taken.append((x, y, x + bw, y + bh))
        cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), colour, cv2.FILLED)
        cv2.putText(out, text, (x + pad, y + th + pad // 2 + 1), FONT, scale, text_colour(colour), thick,
                    cv2.LINE_AA)
