"""The overlay: semantic tint, drivable area, lane lines, instance masks with labels, a HUD.

Everything is drawn into one copy of the frame, and only where there is something to draw:
tints go through ``cv2.transform`` on the bounding region of their mask, instance masks are
resampled from the prototype grid straight into their own box, so the cost follows what is
on screen rather than the frame size times the number of instances.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from segengine.errors import ConfigError
from segengine.graph.readout import frame_region
from segengine.render.base import Renderer
from segengine.render.hud import draw_hud
from segengine.render.palette import GROUP_COLOURS, Colour, group_of, instance_colour, semantic_lut, text_colour
from segengine.types import FrameResult, Instances, Lanes, SemanticMap

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SHIFT = 4  # sub-pixel bits for cv2 drawing: smooth lines from float vertices


@dataclass(frozen=True)
class OverlayRenderer(Renderer):
    """Draws a ``FrameResult`` over a copy of its frame (RGB uint8 in, RGB uint8 out).

    The HUD reads ``result.timings``: ``"fps"`` (frames per second, measured by the
    pipeline) and ``"latency"`` (seconds from capture), each shown only when present.
    Without fitted ``lanes`` the raw lane map is tinted instead, so nothing is hidden.
    """

    show_masks: bool = True
    show_boxes: bool = False  # hazards (people, riders, obstacles) are always boxed
    show_labels: bool = True
    show_scores: bool = True
    show_semantic: bool = True
    show_drivable: bool = True
    show_lanes: bool = True
    show_hud: bool = True
    alpha: float = 0.45  # instance mask tint
    drivable_alpha: float = 0.2
    semantic_alpha: float = 0.35
    drivable_colour: Colour = (40, 220, 60)
    lane_colour: Colour = (255, 236, 64)

    def __post_init__(self) -> None:
        for name in ("alpha", "drivable_alpha", "semantic_alpha"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"OverlayRenderer.{name}: expected an opacity in 0..1, got {value}")

    def render(self, result: FrameResult) -> np.ndarray:
        out = result.frame.image.copy()
        if self.show_semantic and result.semantic is not None:
            self._semantic(out, result.semantic)
        if self.show_drivable and result.drivable is not None:
            _tint_map(out, result.drivable, self.drivable_colour, self.drivable_alpha)
        if self.show_lanes:
            if result.lanes is not None:
                self._lanes(out, result.lanes)
            elif result.lane_mask is not None:
                _tint_map(out, result.lane_mask, self.lane_colour, 0.7)
        if result.instances is not None and len(result.instances):
            self._instances(out, result.frame.image, result.instances)
        if self.show_hud:
            fps, latency = result.timings.get("fps"), result.timings.get("latency")
            draw_hud(out, fps, None if latency is None else latency * 1000.0, result.frame.index,
                     instances=None if result.instances is None else len(result.instances))
        return out

    def _semantic(self, out: np.ndarray, semantic: SemanticMap) -> None:
        lut = semantic_lut(semantic.class_names)
        classes = semantic.to_frame()
        colours = cv2.LUT(cv2.merge([classes, classes, classes]), lut.reshape(256, 1, 3))
        tinted = cv2.addWeighted(out, 1.0 - self.semantic_alpha, colours, self.semantic_alpha, 0.0)
        cv2.copyTo(tinted, cv2.LUT(classes, (lut.any(axis=1) * 255).astype(np.uint8)), out)

    def _lanes(self, out: np.ndarray, lanes: Lanes) -> None:
        if not lanes.polylines:
            return
        thick = max(2, round(min(out.shape[:2]) / 200))
        pts = [np.round(p * (1 << _SHIFT)).astype(np.int32) for p in lanes.polylines if len(p) >= 2]
        # A dark casing under the bright line keeps it visible on pale concrete and on asphalt.
        cv2.polylines(out, pts, False, (20, 20, 20), thick + 2, cv2.LINE_AA, _SHIFT)
        cv2.polylines(out, pts, False, self.lane_colour, thick, cv2.LINE_AA, _SHIFT)

    def _instances(self, out: np.ndarray, frame: np.ndarray, inst: Instances) -> None:
        h, w = out.shape[:2]
        boxes = np.round(inst.boxes).astype(int).clip(0, [w, h, w, h])
        names = inst.names
        order = np.argsort(boxes[:, 3], kind="stable")  # far (higher in the frame) first, near ones on top
        thin = max(1, round(min(h, w) / 500))
        windows = inst.box_masks if self.show_masks else []
        for i in order:
            x0, y0, x1, y1 = boxes[i]
            if x1 <= x0 or y1 <= y0:
                continue
            colour = instance_colour(int(inst.track_ids[i]), names[i])
            if self.show_masks:
                mx, my, window = windows[i]
                mask = window.view(np.uint8)
                region = (slice(my, my + mask.shape[0]), slice(mx, mx + mask.shape[1]))
                # Tinted from the frame's own pixels: an object hides the road tint and lane
                # lines behind it, and a nearer object the farther one.
                tinted = cv2.transform(frame[region], _tint_matrix(colour, self.alpha))
                cv2.copyTo(tinted, mask, out[region])
                contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(mx, my))
                cv2.drawContours(out, contours, -1, colour, thin, cv2.LINE_AA)
            if self.show_boxes:
                cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, thin, cv2.LINE_AA)
            group = group_of(names[i])
            if group.hazard:
                _brackets(out, (x0, y0, x1, y1), GROUP_COLOURS[group], thin + 2)
        if self.show_labels:
            taken: list[tuple[int, int, int, int]] = []
            for i in order[::-1]:  # near objects keep their place; far ones make way
                self._label(out, inst, names[i], i, boxes[i], taken)

    def _label(self, out: np.ndarray, inst: Instances, name: str, i: int, box: np.ndarray,
               taken: list[tuple[int, int, int, int]]) -> None:
        track = int(inst.track_ids[i])
        group = group_of(name)
        colour = GROUP_COLOURS[group] if group.hazard else instance_colour(track, name)
        text = name if track < 0 else f"{name} {track}"
        if self.show_scores:
            text += f" {inst.scores[i]:.2f}"
        if group.hazard:
            text = "! " + text
        h, w = out.shape[:2]
        scale = float(np.clip(min(h, w) / 1100, 0.36, 1.0))
        thick = 1 if scale < 0.7 else 2
        (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
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
        cv2.putText(out, text, (x + pad, y + th + pad // 2 + 1), _FONT, scale, text_colour(colour), thick,
                    cv2.LINE_AA)


def _tint_matrix(colour: Colour, alpha: float) -> np.ndarray:
    """3×4 affine colour map: pixel → (1 - alpha)·pixel + alpha·colour, for ``cv2.transform``."""
    return np.hstack([np.eye(3) * (1.0 - alpha), alpha * np.asarray(colour, np.float64)[:, None]])


def _tint_map(out: np.ndarray, smap: SemanticMap, colour: Colour, alpha: float) -> None:
    """Tint the frame where ``smap`` is class 1, working only inside the mask's bounding box."""
    mask = _frame_mask(smap)
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return
    roi, m = out[y:y + h, x:x + w], mask[y:y + h, x:x + w]
    cv2.copyTo(cv2.transform(roi, _tint_matrix(colour, alpha)), m, roi)


def _frame_mask(smap: SemanticMap) -> np.ndarray:
    """Class 1 of a model-resolution map → 0/1 uint8 at frame size, resampled linearly and
    thresholded so its edge follows the shape instead of the model grid's stair steps."""
    p = smap.placement
    crop = smap.classes[frame_region(p, smap.classes.shape)]
    binary = ((crop == 1) * np.uint8(255)).astype(np.uint8)
    frame = cv2.resize(binary, (p.frame_size[1], p.frame_size[0]), interpolation=cv2.INTER_LINEAR)
    return (frame >= 128).view(np.uint8)


def _brackets(out: np.ndarray, box: tuple[int, int, int, int], colour: Colour, thick: int) -> None:
    """Corner brackets: the warning frame around people and obstacles, lighter than a full box."""
    x0, y0, x1, y1 = box
    x1, y1 = x1 - 1, y1 - 1
    arm = max(4, round(0.25 * min(x1 - x0, y1 - y0)))
    for cx, cy, dx, dy in ((x0, y0, 1, 1), (x1, y0, -1, 1), (x0, y1, 1, -1), (x1, y1, -1, -1)):
        cv2.polylines(out, [np.array([[cx + dx * arm, cy], [cx, cy], [cx, cy + dy * arm]], np.int32)], False,
                      colour, thick, cv2.LINE_AA)
