"""The accuracy guard: which networks keep their accuracy in reduced precision, as measured.

``auto`` runs a graph in bf16 only when every network in it is listed here: each lost at most
0.5 IoU points against fp32 on the shared CamVid frames (``segengine eval --backend openvino
--precision bf16``; 2-core AMD EPYC with AVX-512 BF16, OpenVINO 2026.4.1). A network not listed
(espnetv2-cityscapes: Building -1.5, Sky -1.6 points; any model of the user's, unmeasured) runs
fp32 unless bf16 is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable

# model → the largest IoU loss measured in bf16 against fp32, in points, per CamVid class scored.
BF16_VERIFIED: dict[str, float] = {
    "twinlitenet": 0.01,  # Road 0.7157 → 0.7156
    "yolov5s-seg": 0.17,  # Car 0.9130 → 0.9125, Pedestrian 0.6901 → 0.6884
}
MAX_LOSS_POINTS = 0.5


def bf16_keeps_accuracy(models: Iterable[str]) -> bool:
    models = tuple(models)
    return bool(models) and all(BF16_VERIFIED.get(m, float("inf")) <= MAX_LOSS_POINTS for m in models)
