"""Drawing primitives the layers' drawers share: tints, masks at frame size, warning brackets.

Everything works only where there is something to draw: tints go through ``cv2.transform``
on the bounding region of their mask, so the cost follows what is on screen.
"""

from __future__ import annotations

import cv2
import numpy as np

from segengine.errors import ConfigError
from segengine.geometry import Placement
from segengine.graph.readout import frame_region
from segengine.render.palette import Colour

FONT = cv2.FONT_HERSHEY_SIMPLEX
SHIFT = 4  # sub-pixel bits for cv2 drawing: smooth lines from float vertices


def check_opacity(owner: str, alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"{owner}: expected an opacity in 0..1, got {alpha}")


def tint_matrix(colour: Colour, alpha: float) -> np.ndarray:
    """3×4 affine colour map: pixel → (1 - alpha)·pixel + alpha·colour, for ``cv2.transform``."""
    return np.hstack([np.eye(3) * (1.0 - alpha), alpha * np.asarray(colour, np.float64)[:, None]])


def tint_where(out: np.ndarray, mask: np.ndarray, colour: Colour, alpha: float) -> None:
    """Tint ``out`` where the 0/1 uint8 frame-size ``mask`` is set, working inside its bounding box."""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return
    roi, m = out[y:y + h, x:x + w], mask[y:y + h, x:x + w]
    cv2.copyTo(cv2.transform(roi, tint_matrix(colour, alpha)), m, roi)


def smooth_class_mask(classes: np.ndarray, placement: Placement, class_id: int = 1) -> np.ndarray:
    """One class of a model-resolution map → 0/1 uint8 at frame size, resampled linearly and
    thresholded so its edge follows the shape instead of the model grid's stair steps."""
    crop = classes[frame_region(placement, classes.shape)]
    binary = ((crop == class_id) * np.uint8(255)).astype(np.uint8)
    frame = cv2.resize(binary, (placement.frame_size[1], placement.frame_size[0]), interpolation=cv2.INTER_LINEAR)
    return (frame >= 128).view(np.uint8)


def brackets(out: np.ndarray, box: tuple[int, int, int, int], colour: Colour, thick: int) -> None:
    """Corner brackets: the warning frame around people and obstacles, lighter than a full box."""
    x0, y0, x1, y1 = box
    x1, y1 = x1 - 1, y1 - 1
    arm = max(4, round(0.25 * min(x1 - x0, y1 - y0)))
    for cx, cy, dx, dy in ((x0, y0, 1, 1), (x1, y0, -1, 1), (x0, y1, 1, -1), (x1, y1, -1, -1)):
        cv2.polylines(out, [np.array([[cx + dx * arm, cy], [cx, cy], [cx, cy + dy * arm]], np.int32)], False,
                      colour, thick, cv2.LINE_AA)
