"""YOLOv5-seg (ultralytics/yolov5 v7.0), our own torch definition, built from the checkpoint's
architecture dict so that every size (n/s/m/l/x) loads.

The layer layout follows upstream's ``parse_model`` (``models/yolo.py``) and the blocks of
``models/common.py``; module names match upstream's so the checkpoint's state dict loads
strictly (``model.0.conv.weight``, ``model.24.m.0.weight``, ``model.24.proto.cv1.conv.weight``).
Eval-mode output equals upstream's inference output:

* ``output0`` N×A×(5+nc+nm): per anchor cx, cy, w, h in input pixels, objectness and class
  scores (sigmoid), then the raw mask coefficients;
* ``output1`` N×nm×H/4×W/4: mask prototypes.

Weights come from :func:`models.safe_pickle.read_yolo_checkpoint`; none of yolov5's code runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segengine.errors import ConfigError, ModelError
from segengine.models.card import ModelCard, Preprocess
from segengine.models.checkpoint import load_into
from segengine.models.safe_pickle import read_yolo_checkpoint

COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

CARD = ModelCard(
    name="yolov5s-seg",
    task="instance",
    summary="YOLOv5s-seg v7.0 (COCO, 80 classes): anchor-based detection with 32 mask prototypes; "
    "7.6 M params.",
    classes=COCO_NAMES,
    input_size=(640, 640),
    preprocess=Preprocess(resize="letterbox", pad_value=114),
    raw_outputs=("output0", "output1"),
    filename="yolov5s-seg.pt",
    url="https://github.com/ultralytics/yolov5/releases/download/v7.0/yolov5s-seg.pt",
    sha256="78558867515e9d9654c52ed87c40c22d90a983bea63450c611cbd8c2b13e3aa2",
    size_bytes=15593297,
    licence="GPL-3.0 (weights)",
    upstream="https://github.com/ultralytics/yolov5",
    accuracy=(
        "masks merged per class vs CamVid on the 12 camvid12 frames: Car 0.913, Pedestrian 0.690 IoU "
        "(upstream: 0.865, 0.656 on the full 233-frame test split)"
    ),
)

BN_EPS, BN_MOMENTUM = 1e-3, 0.03  # upstream's initialize_weights() sets these on every BatchNorm2d


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= ``x``."""
    return int(math.ceil(x / divisor) * divisor)


def _activation(spec: Any) -> type[nn.Module] | nn.Module:
    """The yaml's optional ``activation`` (e.g. ``nn.LeakyReLU(0.1)``), parsed, never evaluated."""
    if spec is None:
        return nn.SiLU()
    m = re.fullmatch(r"\s*(?:nn\.)?(SiLU|ReLU|ReLU6|Hardswish|LeakyReLU|Mish)\(\s*([0-9.eE+-]*)\s*\)\s*", str(spec))
    if not m:
        raise ValueError(f"unsupported activation {spec!r}")
    cls = getattr(nn, m.group(1))
    return cls(float(m.group(2))) if m.group(2) else cls()


class Conv(nn.Module):
    """Conv2d (no bias, 'same' padding) -> BatchNorm2d -> activation."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 d: int = 1, act: Any = True, *, default_act: nn.Module | None = None) -> None:
        super().__init__()
        pad = (d * (k - 1) + 1) // 2 if p is None else p
        self.conv = nn.Conv2d(c1, c2, k, s, pad, dilation=d, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        if act is True:
            self.act = default_act if default_act is not None else nn.SiLU()
        else:
            self.act = act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5, **kw: Any) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1, **kw)
        self.cv2 = Conv(hidden, c2, 3, 1, g=g, **kw)
        self.add = bool(shortcut) and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convolutions."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 **kw: Any) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1, **kw)
        self.cv2 = Conv(c1, hidden, 1, 1, **kw)
        self.cv3 = Conv(2 * hidden, c2, 1, **kw)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, g, e=1.0, **kw) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained max-pools, concatenated."""

    def __init__(self, c1: int, c2: int, k: int = 5, **kw: Any) -> None:
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1, **kw)
        self.cv2 = Conv(hidden * 4, c2, 1, 1, **kw)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    def __init__(self, dimension: int = 1) -> None:
        super().__init__()
        self.d = dimension

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.d)


class Proto(nn.Module):
    """Mask prototypes from the stride-8 features, upsampled once (stride 4)."""

    def __init__(self, c1: int, c_: int = 256, c2: int = 32, **kw: Any) -> None:
        super().__init__()
        self.cv1 = Conv(c1, c_, 3, **kw)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.cv2 = Conv(c_, c_, 3, **kw)
        self.cv3 = Conv(c_, c2, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(self.cv2(self.upsample(self.cv1(x))))


class Segment(nn.Module):
    """Detection head (1×1 conv per level, decoded boxes) plus mask prototypes."""

    def __init__(self, nc: int, anchors: Sequence[Sequence[float]], nm: int, npr: int, ch: Sequence[int],
                 strides: Sequence[float], **kw: Any) -> None:
        super().__init__()
        self.nc, self.nm, self.nl = nc, nm, len(anchors)
        self.na = len(anchors[0]) // 2
        self.no = 5 + nc + nm
        self.strides = tuple(float(s) for s in strides)
        grid_anchors = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        grid_anchors /= torch.tensor(self.strides).view(-1, 1, 1)  # upstream stores them in stride units
        self.register_buffer("anchors", grid_anchors)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.proto = Proto(ch[0], npr, nm, **kw)

    def decode(self, i: int, p: torch.Tensor) -> torch.Tensor:
        bs, _, ny, nx = p.shape
        p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)  # bs, na, ny, nx, no
        stride = self.strides[i]
        ys = torch.arange(ny, dtype=p.dtype, device=p.device)
        xs = torch.arange(nx, dtype=p.dtype, device=p.device)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((gx, gy), -1).view(1, 1, ny, nx, 2) - 0.5
        anchor_wh = (self.anchors[i] * stride).view(1, self.na, 1, 1, 2)
        xy = (p[..., 0:2].sigmoid() * 2 + grid) * stride
        wh = (p[..., 2:4].sigmoid() * 2) ** 2 * anchor_wh
        scores = p[..., 4 : 5 + self.nc].sigmoid()
        coeffs = p[..., 5 + self.nc :]
        return torch.cat((xy, wh, scores, coeffs), -1).reshape(bs, self.na * ny * nx, self.no)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        protos = self.proto(feats[0])
        preds = torch.cat([self.decode(i, self.m[i](f)) for i, f in enumerate(feats)], 1)
        return preds, protos


def _parse_args(args: Sequence[Any], nc: int, anchors: Any) -> list[Any]:
    names = {"nc": nc, "anchors": anchors, "None": None, "True": True, "False": False}
    return [names.get(a, a) if isinstance(a, str) else a for a in args]


class YoloV5Seg(nn.Module):
    """YOLOv5-seg built from upstream's model dict (``nc``, multiples, ``anchors``, ``backbone``, ``head``)."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        try:
            self._build(cfg)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ModelError(
                f"cannot build YOLOv5-seg from its architecture dict: {type(exc).__name__}: {exc}"
            ) from exc
        self.names: list[str] = [str(i) for i in range(self.nc)]

    def _build(self, cfg: Mapping[str, Any]) -> None:
        nc, gd, gw = int(cfg["nc"]), float(cfg["depth_multiple"]), float(cfg["width_multiple"])
        anchors, ch_mul = cfg["anchors"], int(cfg.get("channel_multiple") or 8)
        kw = {"default_act": _activation(cfg.get("activation"))}
        na = len(anchors[0]) // 2 if isinstance(anchors, list) else int(anchors)
        ch, down = [int(cfg.get("ch", 3))], [1.0]  # channels and downsampling of each layer's output
        layers: list[nn.Module] = []
        self.froms: list[int | list[int]] = []
        for i, (f, n, kind, args) in enumerate(list(cfg["backbone"]) + list(cfg["head"])):
            args = _parse_args(args, nc, anchors)
            n = max(round(n * gd), 1) if n > 1 else n
            first = f if isinstance(f, int) else f[0]
            c_in, s_in = ch[first], down[first]
            if kind in ("Conv", "C3", "SPPF", "Bottleneck"):
                c2 = args[0]
                if c2 != na * (nc + 5):
                    c2 = make_divisible(c2 * gw, ch_mul)
                rest = list(args[1:])
                step = int(rest[1]) if kind == "Conv" and len(rest) > 1 else 1  # a Conv's stride
                if kind == "C3":
                    module: nn.Module = C3(c_in, c2, n, *rest, **kw)
                    s_out = s_in
                else:  # n > 1 repeats the block, as upstream's nn.Sequential does
                    cls = {"Conv": Conv, "SPPF": SPPF, "Bottleneck": Bottleneck}[kind]
                    blocks = [cls(c_in if j == 0 else c2, c2, *rest, **kw) for j in range(n)]
                    module = nn.Sequential(*blocks) if n > 1 else blocks[0]
                    s_out = s_in * step**n
            elif kind == "nn.Upsample":
                size, scale, mode = (list(args) + [None, None, "nearest"])[:3]
                if size is not None or not scale:
                    raise ValueError("only nn.Upsample with a scale factor is supported")
                module, c2, s_out = nn.Upsample(scale_factor=scale, mode=mode), c_in, s_in / scale
            elif kind == "Concat":
                module, c2, s_out = Concat(*args), sum(ch[x] for x in f), s_in
            elif kind == "Segment":
                seg_nc, seg_anchors, nm, npr = args[:4]
                if isinstance(seg_anchors, int):
                    seg_anchors = [list(range(seg_anchors * 2))] * len(f)
                module = Segment(seg_nc, seg_anchors, nm, make_divisible(npr * gw, ch_mul),
                                 [ch[x] for x in f], [down[x] for x in f], **kw)
                c2, s_out = 0, s_in
            else:
                raise ValueError(f"layer {i}: module {kind!r} is not supported")
            layers.append(module)
            self.froms.append(f)
            if i == 0:
                ch, down = [], []
            ch.append(c2)
            down.append(s_out)
        if not isinstance(layers[-1], Segment):
            raise ValueError("the last layer is not a Segment head")
        self.model = nn.Sequential(*layers)
        self.nc = nc
        self.save = sorted({x % i for i, f in enumerate(self.froms) for x in ([f] if isinstance(f, int) else f)
                            if x != -1})
        self.stride = layers[-1].strides

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        step = int(max(self.stride))
        if x.dim() != 4 or x.shape[-2] % step or x.shape[-1] % step:
            raise ConfigError(f"YOLOv5-seg needs an N x 3 x H x W input with H and W multiples of {step} "
                              f"(letterbox to e.g. 384 x 640), got {tuple(x.shape)}")
        saved: dict[int, torch.Tensor] = {}
        for i, (layer, f) in enumerate(zip(self.model, self.froms)):
            if f != -1:
                x = saved[f % i] if isinstance(f, int) else [x if j == -1 else saved[j % i] for j in f]
            x = layer(x)
            if i in self.save:
                saved[i] = x
        return x


def load_network(path: Path) -> YoloV5Seg:
    """Our YOLOv5-seg with the weights of a yolov5 ``*-seg.pt`` checkpoint; eval mode, float32."""
    path = Path(path)
    ckpt = read_yolo_checkpoint(path)
    try:
        net = YoloV5Seg(ckpt.yaml)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    load_into(net, ckpt.state_dict, path, what="YOLOv5-seg weights")
    if ckpt.stride and tuple(ckpt.stride) != tuple(net.stride):
        raise ModelError(f"{path}: the checkpoint's strides {ckpt.stride} differ from the architecture's {net.stride}.")
    net.names = list(ckpt.names)
    return net.float().eval()
