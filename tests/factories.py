"""Shared builders for the tests: frames, instances, layers, results, graph specs, and a fake backend
that serves the pipeline without weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from segengine.backends.base import BackendInfo, BackendOptions
from segengine.backends.probe import GpuEnvironment
from segengine.geometry import Placement, letterbox, stretch
from segengine.graph.spec import GraphSpec, InputSpec, OutputSpec
from segengine.layers import BinaryMap, Instances
from segengine.types import Frame, FrameResult

COCO_FEW = ("person", "bicycle", "car")


def frame(h: int = 180, w: int = 320, index: int = 0, pts: float | None = None, value: int = 90,
          stream: str = "0") -> Frame:
    return Frame(np.full((h, w, 3), value, np.uint8), index, index / 25 if pts is None else pts, stream)


def box_instances(boxes: Sequence[Sequence[float]], *, frame_size: tuple[int, int] = (180, 320),
                  class_ids: Sequence[int] | None = None, scores: Sequence[float] | None = None,
                  class_names: tuple[str, ...] = COCO_FEW, grid: tuple[int, int] = (48, 80),
                  track_ids: Sequence[int] | None = None) -> Instances:
    """Instances whose masks fill their boxes, on a prototype grid over a stretched input."""
    placement = stretch(frame_size, (grid[0] * 4, grid[1] * 4))
    boxes_a = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes_a)
    masks = np.zeros((n, *grid), np.uint8)
    sy, sx = grid[0] / frame_size[0], grid[1] / frame_size[1]
    for k, (x0, y0, x1, y1) in enumerate(boxes_a):
        masks[k, int(y0 * sy):int(np.ceil(y1 * sy)), int(x0 * sx):int(np.ceil(x1 * sx))] = 255
    return Instances(boxes_a, np.asarray(scores if scores is not None else [0.9] * n, np.float32),
                     np.asarray(class_ids if class_ids is not None else [2] * n, np.int32), masks, placement,
                     class_names, None if track_ids is None else np.asarray(track_ids, np.int64))


def class_map(kind: type = BinaryMap, *, frame_size: tuple[int, int] = (180, 320), grid: tuple[int, int] = (90, 160),
              classes: tuple[str, ...] = ("background", "drivable"),
              fill: dict[int, tuple[slice, slice]] | None = None):
    """A map layer of ``kind`` at ``grid`` resolution; ``fill`` sets class id → (rows, cols) regions."""
    ids = np.zeros(grid, np.uint8)
    for class_id, region in (fill or {1: (slice(grid[0] // 2, None), slice(None))}).items():
        ids[region] = class_id
    return kind(ids, stretch(frame_size, grid), classes)


def result(layers: dict | None = None, *, image: Frame | None = None, **timings: float) -> FrameResult:
    return FrameResult(image or frame(), layers or {}, timings=timings)


def road_spec(frame_size: tuple[int, int] = (180, 320), *, max_batch: int = 1, top_k: int = 8) -> GraphSpec:
    """The road preset's spec shape (drivable, lanes, instances) for a small frame."""
    maps = stretch(frame_size, (96, 160))
    boxes = letterbox(frame_size, long_side=160)
    return GraphSpec("fake-road", InputSpec(frame_size, max_batch=max_batch), (
        OutputSpec("drivable", "binary_map", "fake-lanes", ("drivable",), maps, ("background", "drivable")),
        OutputSpec("lanes", "lane_lines", "fake-lanes", ("lanes",), maps, ("background", "lane")),
        OutputSpec("instances", "instances", "fake-yolo", ("boxes", "scores", "classes", "masks"), boxes, COCO_FEW,
                   {"top_k": top_k}),
    ))


class FakeBackend(BackendInfo):
    """Runs no network: the drivable area is the frame's lower half, lanes two columns of the map, and
    one "car" instance boxes the frame's bright pixels (> 200), so a moving object moves its box.
    Counts its calls."""

    name: ClassVar[str] = "fake"
    graph_format: ClassVar[str] = "onnx"

    def __init__(self, graph: object = None, spec: GraphSpec | None = None,
                 options: BackendOptions | None = None) -> None:
        self.spec = spec or road_spec()
        self.calls = 0
        self.closed = False

    @classmethod
    def speed(cls, env: GpuEnvironment, models: tuple[str, ...] = ()) -> int:
        return -1

    @classmethod
    def where(cls, env: GpuEnvironment) -> str:
        return "nowhere (a test's fake)"

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        assert not self.closed, "inference on a closed backend"
        self.calls += 1
        batch = batch[None] if batch.ndim == 3 else batch
        out = {}
        for spec in self.spec.outputs:
            ih, iw = spec.placement.input_size
            if spec.kind in ("binary_map", "lane_lines"):
                ids = np.zeros((len(batch), ih, iw), np.uint8)
                if spec.kind == "binary_map":
                    ids[:, ih // 2:] = 1
                else:
                    ids[:, ih // 2:, [iw // 3, 2 * iw // 3]] = 1
                out[spec.tensors[0]] = ids
            else:
                out.update(self._instances(batch, spec))
        return out

    def _instances(self, batch: np.ndarray, spec: OutputSpec) -> dict[str, np.ndarray]:
        k = int(spec.extras.get("top_k", 8))
        p: Placement = spec.placement
        grid = (p.input_size[0] // 4, p.input_size[1] // 4)
        boxes = np.zeros((len(batch), k, 4), np.float32)
        scores = np.zeros((len(batch), k), np.float32)
        classes = np.zeros((len(batch), k), np.int64)
        masks = np.zeros((len(batch), k, *grid), np.uint8)
        for row, image in enumerate(batch):
            ys, xs = np.nonzero(image.max(axis=2) > 200)
            if len(xs):
                box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
                boxes[row, 0], scores[row, 0], classes[row, 0] = box, 0.9, 2
                sx, sy = p.resized[1] / p.frame_size[1] / 4, p.resized[0] / p.frame_size[0] / 4
                masks[row, 0, int(p.top / 4 + box[1] * sy):int(p.top / 4 + box[3] * sy) + 1,
                      int(p.left / 4 + box[0] * sx):int(p.left / 4 + box[2] * sx) + 1] = 255
        return dict(zip(spec.tensors, (boxes, scores, classes, masks)))

    def close(self) -> None:
        self.closed = True


__all__ = ["COCO_FEW", "FakeBackend", "box_instances", "class_map", "frame", "onnx_backend", "result", "road_spec"]


def onnx_backend(path):
    """ONNX Runtime on an exported graph file, with the spec the file carries."""
    from segengine.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, GraphSpec.read_file(path))
