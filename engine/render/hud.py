"""A small heads-up display in the top-left corner: fps, latency, frame index (marked when the networks
skipped it, ``--interval N``), instance count."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_KEY = (170, 178, 190)  # muted, so the values stand out
_VALUE = (255, 255, 255)


def hud_lines(fps: float | None, latency_ms: float | None, index: int | None, instances: int | None = None,
              extra: Mapping[str, str] | None = None, *, carried: bool = False) -> list[tuple[str, str]]:
    """(key, value) rows; unknown values are left out rather than shown as zero."""
    rows: list[tuple[str, str]] = []
    if fps is not None:
        rows.append(("fps", f"{fps:.1f}"))
    if latency_ms is not None:
        rows.append(("latency", f"{latency_ms:.0f} ms"))
    if index is not None:
        rows.append(("frame", f"{index} carried" if carried else str(index)))
    if instances is not None:
        rows.append(("objects", str(instances)))
    rows.extend((str(k), str(v)) for k, v in (extra or {}).items())
    return rows


def draw_hud(image: np.ndarray, fps: float | None, latency_ms: float | None, index: int | None,
             extra: Mapping[str, str] | None = None, *, instances: int | None = None,
             opacity: float = 0.6, carried: bool = False) -> np.ndarray:
    """Draw the HUD onto ``image`` (H×W×3 uint8, changed in place) and return it."""
    rows = hud_lines(fps, latency_ms, index, instances, extra, carried=carried)
    if not rows:
        return image
    h, w = image.shape[:2]
    scale = float(np.clip(min(h, w) / 900, 0.38, 1.2))
    thick = 1 if scale < 0.8 else 2
    (_, th), base = cv2.getTextSize("Ag", _FONT, scale, thick)
    line = th + base + max(3, round(6 * scale))
    pad = max(5, round(10 * scale))
    key_w = max(cv2.getTextSize(k, _FONT, scale, thick)[0][0] for k, _ in rows)
    val_w = max(cv2.getTextSize(v, _FONT, scale, thick)[0][0] for _, v in rows)
    gap = round(12 * scale) + 4
    x0 = y0 = pad
    x1 = min(w, x0 + 2 * pad + key_w + gap + val_w)
    y1 = min(h, y0 + 2 * pad + line * len(rows) - (line - th - base))
    if x1 <= x0 or y1 <= y0:
        return image
    # Darken only the panel: a small region, so blending it costs nothing.
    panel = image[y0:y1, x0:x1]
    cv2.convertScaleAbs(panel, dst=panel, alpha=1.0 - opacity)
    y = y0 + pad + th
    for key, value in rows:
        cv2.putText(image, key, (x0 + pad, y), _FONT, scale, _KEY, thick, cv2.LINE_AA)
        cv2.putText(image, value, (x0 + pad + key_w + gap, y), _FONT, scale, _VALUE, thick, cv2.LINE_AA)
        y += line
    return image


class Hud:
    """The HUD as a drawer: fps and latency from ``result.timings`` (``"fps"``, ``"latency"`` in
    seconds, each shown only when present), the frame index and the instance count."""

    def __init__(self, opacity: float = 0.6) -> None:
        from segengine.render.draw import check_opacity

        check_opacity("Hud.opacity", opacity)
        self.opacity = opacity

    def draw(self, canvas: np.ndarray, result: Any) -> None:
        fps, latency = result.timings.get("fps"), result.timings.get("latency")
        instances = result.instances
        draw_hud(canvas, fps, None if latency is None else latency * 1000.0, result.frame.index,
                 instances=None if instances is None else len(instances), opacity=self.opacity,
                 carried=not result.inferred)
