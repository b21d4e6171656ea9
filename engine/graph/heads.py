"""A head = one network with its in-graph pre- and post-processing, taking the frame as uint8."""

from __future__ import annotations

import torch

from segengine.geometry import Placement
from segengine.graph.instances import InstanceDecode, Layout
from segengine.graph.preprocess import FramePreprocess
from segengine.graph.spec import OutputSpec
from segengine.models.card import Preprocess


def class_map(logits: torch.Tensor) -> torch.Tensor:
    """N×C×h×w scores → uint8 N×h×w argmax. Two classes: one comparison, the same answer (ties
    go to class 0, as argmax's first maximum); OpenVINO runs ArgMax as a TopK that costs more
    than the comparison by an order of magnitude, with layout reorders around it."""
    if logits.shape[1] == 2:
        return (logits[:, 1] > logits[:, 0]).to(torch.uint8)
    return logits.argmax(dim=1).to(torch.uint8)


class Head(torch.nn.Module):
    """Base: ``outputs`` names the tensors ``forward`` returns, ``specs`` the layers they make."""

    outputs: tuple[str, ...] = ()
    name: str  # the model it runs (a zoo name), set by each head

    def specs(self) -> tuple[OutputSpec, ...]:
        raise NotImplementedError


class SemanticHead(Head):
    """A network whose single output is N×C×h×w class logits → one uint8 class map."""

    def __init__(self, name: str, net: torch.nn.Module, placement: Placement, recipe: Preprocess,
                 classes: tuple[str, ...], output: str = "semantic") -> None:
        super().__init__()
        self.name, self.classes, self.placement = name, classes, placement
        self.pre = FramePreprocess(placement, recipe)
        self.net = net
        self.outputs = (output,)

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.net(self.pre(frame))[0]
        return (class_map(logits),)

    def specs(self) -> tuple[OutputSpec, ...]:
        return (OutputSpec(self.outputs[0], "semantic", self.name, self.outputs, self.placement, self.classes),)


class LaneHead(Head):
    """TwinLiteNet-style network with two binary heads → drivable-area and lane-line maps."""

    outputs = ("drivable", "lanes")

    def __init__(self, name: str, net: torch.nn.Module, placement: Placement, recipe: Preprocess) -> None:
        super().__init__()
        self.name, self.placement = name, placement
        self.pre = FramePreprocess(placement, recipe)
        self.net = net

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, ...]:
        da, ll = self.net(self.pre(frame))
        return class_map(da), class_map(ll)

    def specs(self) -> tuple[OutputSpec, ...]:
        return (OutputSpec("drivable", "binary_map", self.name, ("drivable",), self.placement,
                           ("background", "drivable")),
                OutputSpec("lanes", "lane_lines", self.name, ("lanes",), self.placement, ("background", "lane")))


class InstanceHead(Head):
    """A YOLO-seg network → boxes (frame px), scores, class ids and prototype-resolution masks."""

    outputs = ("boxes", "scores", "classes", "masks")

    def __init__(self, name: str, net: torch.nn.Module, placement: Placement, recipe: Preprocess,
                 classes: tuple[str, ...], *, layout: Layout = "v5", top_k: int = 100,
                 conf_threshold: float = 0.25, iou_threshold: float = 0.45) -> None:
        super().__init__()
        self.name, self.classes, self.placement = name, classes, placement
        self.pre = FramePreprocess(placement, recipe)
        self.net = net
        self.decode = InstanceDecode(placement, len(classes), layout=layout, top_k=top_k,
                                     conf_threshold=conf_threshold, iou_threshold=iou_threshold)

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pred, protos = self.net(self.pre(frame))[:2]
        return self.decode(pred, protos)

    def specs(self) -> tuple[OutputSpec, ...]:
        d = self.decode
        return (OutputSpec("instances", "instances", self.name, self.outputs, self.placement, self.classes,
                           {"top_k": d.top_k, "conf_threshold": d.conf, "iou_threshold": d.iou}),)
