"""Masks back to frame pixels: the fast per-box path equals the full-frame reference path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segengine.geometry import letterbox
from segengine.graph.instances import InstanceDecode
from segengine.graph.readout import box_masks, masks_to_frame


@pytest.mark.parametrize("frame_size", [(540, 960), (720, 1280), (361, 479), (1080, 607)])
def test_box_masks_equal_full_frame_masks(frame_size: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(frame_size))
    place = letterbox(frame_size)
    ih, iw = place.input_size
    n = 400
    xy = rng.uniform([0, place.top], [iw, place.top + place.resized[0]], (n, 2))
    pred = np.concatenate([xy, rng.uniform(10, 200, (n, 2)), np.ones((n, 1)), rng.uniform(0, 1, (n, 2)),
                           rng.normal(0, 1, (n, 32))], 1).astype(np.float32)[None]
    protos = torch.from_numpy(rng.normal(0, 1, (1, 32, ih // 4, iw // 4)).astype(np.float32))
    boxes, scores, _, masks = InstanceDecode(place, 2)(torch.from_numpy(pred), protos)
    valid = (scores[0] > 0).numpy()
    boxes, masks = boxes[0].numpy()[valid], masks[0].numpy()[valid]
    assert len(masks) > 10
    full = masks_to_frame(masks, place)
    assert full.any()
    for k, (x0, y0, m) in enumerate(box_masks(masks, boxes, place)):
        pasted = np.zeros(frame_size, bool)
        pasted[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m
        np.testing.assert_array_equal(pasted, full[k])
