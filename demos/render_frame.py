"""Render one frame of a video exactly as `segengine run` draws it (tracked ids, smoothed lanes, HUD).

    python demos/render_frame.py VIDEO INDEX OUT.jpg [--preset road] [--quality 90]

Runs the public Pipeline API over the video up to frame INDEX and saves that frame's overlay.
Weights come from SEGENGINE_MODEL_DIR / the user cache, as for the CLI.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from segengine.layers import ClassMap, Instances, LaneLines
from segengine.models.zoo import WeightDirs
from segengine.pipeline import Pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("index", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", default="road")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    args = parser.parse_args()

    last = None
    with Pipeline(args.video, preset=args.preset, max_frames=args.index + 1, dirs=WeightDirs.from_env()) as pipeline:
        for result in pipeline:
            last = result
    if last is None or last.frame.index != args.index or last.rendered is None:
        raise SystemExit(f"{args.video}: has no frame {args.index}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), last.rendered[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, args.quality]):
        raise SystemExit(f"{args.out}: could not write the image (is the extension .jpg or .png?)")
    layers = "; ".join(_describe(name, layer) for name, layer in last.layers.items())
    print(f"{args.out}: frame {args.index}; {layers}")


def _describe(name: str, layer: object) -> str:
    """One layer in a few words: what a glance at the picture should confirm."""
    if isinstance(layer, Instances):
        return f"{name}: {len(layer)} instances"
    if isinstance(layer, LaneLines):
        return f"{name}: " + ("lane map (not fitted)" if layer.polylines is None else f"{len(layer.polylines)} lanes")
    if isinstance(layer, ClassMap):
        present = np.unique(layer.classes)
        return f"{name}: {', '.join(layer.class_names[i] for i in present if i < len(layer.class_names))}"
    return f"{name}: {type(layer).__name__}"


if __name__ == "__main__":
    main()
