"""Real-video check: our tracker and ByteTrack on the engine's own detections of a real video.

    python benchmarks/tracking/real_video.py [VIDEO] [--max-frames 795] [--out out/tracking_vtest]

VIDEO defaults to OpenCV's vtest.avi (768×576, 10 fps, 795 frames of pedestrians), which
``apt-get install opencv-doc`` puts at /usr/share/doc/opencv-doc/examples/data/vtest.avi.
The engine's pipeline runs yolov5s-seg (weights from SEGENGINE_MODEL_DIR, else ../shared/models)
with ``MaskTracker``. The detections are captured at the tracker's input (the pipeline's
results hold only the tracked rows), and ByteTrack runs on exactly those, frame by frame.
There is no ground truth, so this reports what can be seen without one: distinct person
ids and how long tracks live (fragmented identities show up as many short tracks), plus two
rendered MP4s (ours, ByteTrack) and side-by-side PNGs (ours left, ByteTrack right) to look at.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from benchmarks.tracking.baselines import ByteTrackStep  # noqa: E402
from segengine.layers import Instances  # noqa: E402
from segengine.render.compose import LayerRenderer  # noqa: E402
from segengine.tracking.base import Detections  # noqa: E402
from segengine.tracking.mask_tracker import MaskTracker  # noqa: E402
from segengine.types import FrameResult, SourceInfo  # noqa: E402

DEFAULT_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
PERSON = 0  # COCO


class Recorder:
    """The pipeline's tracker: feeds each frame's detections to ours and to ByteTrack, keeps both."""

    def __init__(self, fps: float) -> None:
        self.ours, self.byte = MaskTracker(), ByteTrackStep(fps)
        self.frames: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"ours": [], "bytetrack": []}  # (ids, classes)
        self.detections = 0
        self.last_byte: Instances | None = None
        self.kept: list[Instances] = []  # every frame's detections, when asked to save them
        self.times: list[float] = []
        self.keep = False
        self.mask_agreement: list[float] = []

    def reset(self) -> None:
        self.ours.reset()

    def update(self, instances: Instances, t: float) -> Instances:
        self.detections += len(instances)
        if self.keep:
            self.kept.append(instances)
            self.times.append(t)
        boxes_only = Detections(instances.boxes, instances.scores, instances.class_ids, None)
        bt = self.byte.step(boxes_only, t)
        self.last_byte = instances.select(bt.detection).with_tracks(bt.track_ids)
        self.frames["bytetrack"].append((bt.track_ids, instances.class_ids[bt.detection]))
        out = self.ours.update(instances, t)
        self.frames["ours"].append((out.track_ids, out.class_ids))
        self._agreement(instances, out)
        return out

    def _agreement(self, raw: Instances, out: Instances) -> None:
        """IoU of each reported (smoothed) person mask with the detector's own mask for that row.
        ``update`` returns a selection of the input rows, so a row is found by its (copied) box."""
        for box, mask, cls in zip(out.boxes, out.masks, out.class_ids):
            rows = np.flatnonzero((raw.boxes == box).all(1))
            if cls == PERSON and len(rows):
                a, b = mask >= 128, raw.masks[rows[0]] >= 128
                self.mask_agreement.append(float((a & b).sum() / max((a | b).sum(), 1)))


class ByteTrackSink:
    """Renders ByteTrack's ids on each frame into a second MP4; saves side-by-side PNGs of chosen frames."""

    def __init__(self, path: Path, info: SourceInfo, recorder: Recorder, png_dir: Path,
                 png_frames: set[int]) -> None:
        from segengine.sinks.video import VideoSink

        self.video, self.recorder, self.renderer = VideoSink(path, info), recorder, LayerRenderer()
        self.png_dir, self.png_frames = png_dir, png_frames

    def write(self, result: FrameResult) -> None:
        # ByteTrack's rows in place of ours, in the layer the pipeline tracked (the first instances one).
        name = next(n for n, layer in result.layers.items() if isinstance(layer, Instances))
        assert self.recorder.last_byte is not None, "the tracker runs before the sinks"
        mine = replace(result.with_layer(name, self.recorder.last_byte), timings={}, rendered=None)
        mine = replace(mine, rendered=self.renderer.render(mine))
        self.video.write(mine)
        if result.frame.index in self.png_frames and result.rendered is not None:
            both = np.hstack([_caption(result.rendered, f"ours  frame {result.frame.index}"),
                              _caption(mine.rendered, "ByteTrack")])
            path = self.png_dir / f"frame_{result.frame.index:04d}.png"
            cv2.imwrite(str(path), cv2.cvtColor(both, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self.video.close()


def _caption(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    cv2.putText(out, text, (8, out.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 0), 2)
    return out


def summary(frames: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Person tracks (an id's majority class is person): count and length in frames."""
    lengths: Counter[int] = Counter()
    classes: dict[int, Counter[int]] = defaultdict(Counter)
    for ids, cls in frames:
        for i, c in zip(ids.tolist(), cls.tolist()):
            lengths[i] += 1
            classes[i][c] += 1
    person = [lengths[i] for i in lengths if classes[i].most_common(1)[0][0] == PERSON]
    per_frame = [int(sum(1 for c in cls.tolist() if c == PERSON)) for _, cls in frames]
    if not person:
        return {"ids": 0}
    return {"ids": len(person), "min": min(person), "median": float(np.median(person)), "max": max(person),
            "short": sum(n < 10 for n in person), "per_frame": float(np.mean(per_frame))}


def save_detections(path: Path, recorder: Recorder) -> None:
    """The detections both trackers saw, to re-run trackers on them without the detector (np.load)."""
    inst = recorder.kept
    np.savez_compressed(path, t=np.array(recorder.times), counts=np.array([len(i) for i in inst]),
                        boxes=np.concatenate([i.boxes for i in inst]), scores=np.concatenate([i.scores for i in inst]),
                        class_ids=np.concatenate([i.class_ids for i in inst]),
                        masks=np.concatenate([i.masks for i in inst]),
                        placement=json.dumps(inst[0].placement.to_dict()) if inst else "{}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path, nargs="?", default=DEFAULT_VIDEO)
    parser.add_argument("--max-frames", type=int, default=795, help="CPU: about 0.2 s a frame at 768x576")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "tracking_vtest")
    parser.add_argument("--png-frames", default="", help="comma-separated frame indices (default: every 50th)")
    parser.add_argument("--save-detections", type=Path, help="write the detections to this .npz (for offline re-runs)")
    parser.add_argument("--model-dir", type=Path,
                        help="model mirror (default: SEGENGINE_MODEL_DIR, else ../shared/models)")
    args = parser.parse_args(argv)
    if not args.video.is_file():
        print(f"{args.video}: no such video. vtest.avi comes with OpenCV's samples: `sudo apt-get install "
              f"opencv-doc` (Debian/Ubuntu) puts it at {DEFAULT_VIDEO}, or download "
              "https://github.com/opencv/opencv/raw/4.x/samples/data/vtest.avi and pass its path.", file=sys.stderr)
        return 2
    mirror = args.model_dir or os.environ.get("SEGENGINE_MODEL_DIR") or REPO.parent / "shared" / "models"

    from segengine.capture.factory import open_source
    from segengine.models.zoo import WeightDirs
    from segengine.pipeline import Pipeline
    from segengine.sinks.video import VideoSink

    source = open_source(str(args.video))
    source.open()
    info = source.info
    fps = float(info.fps) if info.fps else 10.0
    args.out.mkdir(parents=True, exist_ok=True)
    png_frames = ({int(f) for f in args.png_frames.split(",") if f} if args.png_frames
                  else set(range(0, args.max_frames, 50)))
    recorder = Recorder(fps)
    recorder.keep = args.save_detections is not None
    sinks = [VideoSink(args.out / "ours.mp4", info),
             ByteTrackSink(args.out / "bytetrack.mp4", info, recorder, args.out, png_frames)]
    pipeline = Pipeline(source, preset="yolov5s-seg", tracker=recorder, sinks=sinks, max_frames=args.max_frames,
                        dirs=WeightDirs.from_env(mirror))
    print(f"ours = MaskTracker({recorder.ours.config})", file=sys.stderr)
    print(f"{info.name}: {info.size[1]}x{info.size[0]} at {fps:g} fps, up to {args.max_frames} frames; "
          f"backend {pipeline.choice.name}", file=sys.stderr)
    stats = pipeline.run()
    print(stats.table(), file=sys.stderr)
    if args.save_detections is not None:
        save_detections(args.save_detections, recorder)
    frames = len(recorder.frames["ours"])
    print(f"\n{frames} frames, {recorder.detections} detections (all classes), the same for both trackers")
    print(f"{'tracker':<10} {'person ids':>10} {'per frame':>10} {'min len':>8} {'median':>7} {'max len':>8} "
          f"{'<10 frames':>11}")
    for name, rows in recorder.frames.items():
        s = summary(rows)
        if s["ids"] == 0:
            print(f"{name:<10} {0:>10}")
            continue
        print(f"{name:<10} {s['ids']:>10} {s['per_frame']:>10.1f} {s['min']:>8} {s['median']:>7.0f} {s['max']:>8} "
              f"{s['short']:>11}")
    agree = np.array(recorder.mask_agreement)
    if len(agree):
        print(f"ours: reported (smoothed) person masks vs the detector's: mean IoU {agree.mean():.3f}, "
              f"{(agree < 0.7).mean():.0%} below 0.7")
    print(f"\nvideos: {args.out / 'ours.mp4'}, {args.out / 'bytetrack.mp4'}; side-by-side PNGs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
