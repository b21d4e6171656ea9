"""Which layers an INT8 build may quantise: the networks', not the pre- and post-processing.

TensorRT's implicit INT8 quantises any layer it has a calibrated range for and an INT8 kernel
that is faster, elementwise ones included. In our graphs that would put box coordinates
(0..640 in 8 bits: 2.5 px steps), the NMS's IoU matrix and the resize's arithmetic on an 8-bit
grid. The export names every node ``<model>/<pre|net|post>/...`` (``segengine.graph.naming``),
and the ONNX parser names each layer after its node, so the layers outside the networks are
told apart by name and asked to compute in FP32 (a preference: TensorRT warns, not fails, where
it cannot). Layers of integer or boolean results are left alone: no precision applies to them.
This module takes ``tensorrt`` as an argument so the CPU tests can hand it a stand-in.
"""

from __future__ import annotations

from typing import Any

OUTSIDE_NETWORKS = ("/pre/", "/post/", "graph/post/")


def outside_networks(name: str) -> bool:
    """True for a layer named after a pre- or post-processing node (``yolov5s-seg/post/node_mul``,
    or ``[ONNX Layer: twinlitenet/pre/node_cast]`` as TensorRT 10 writes a layer's metadata)."""
    return any(part in name for part in OUTSIDE_NETWORKS)


def keep_outside_networks_fp32(network: Any, trt: Any) -> int:
    """Ask FP32 of every float layer outside the networks; returns how many were asked."""
    floats = (trt.float32, trt.float16)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not (outside_networks(layer.name) or outside_networks(str(getattr(layer, "metadata", "")))):
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outputs or any(t.dtype not in floats for t in outputs):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned
