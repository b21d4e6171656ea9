"""``segengine build --backend openvino --int8 --calib SOURCE``: an INT8 OpenVINO model, cached for ``run`` to find.

fp32 and bf16 need no build (OpenVINO compiles the ONNX graph at start and caches that itself);
INT8 does: NNCF quantises the graph's networks once, calibrated on real frames from the user's
own source, and the model is stored in the INT8 cache keyed by the graph and the calibration.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import TextIO

from segengine.backends.int8_cache import Int8Cache, Int8Key
from segengine.backends.openvino import int8_folder
from segengine.build import BuildRequest, check_target, graph_for, is_onnx_file
from segengine.download import sha256_of
from segengine.errors import BackendError, ConfigError
from segengine.graph.spec import GraphSpec
from segengine.models import zoo


def check_openvino_request(request: BuildRequest) -> None:
    if request.precision != "int8":
        raise ConfigError("--backend openvino builds INT8 models only (add --int8 --calib VIDEO): fp32 and bf16 "
                          "need no build, OpenVINO compiles the graph when `segengine run` starts")
    if request.max_batch != 1:
        raise ConfigError("--max-batch is a TensorRT shape profile; the OpenVINO INT8 model runs the graph's own batch")


def build_openvino_int8(request: BuildRequest, dirs: zoo.WeightDirs, *, recipe: str | None = None,
                        out: TextIO | None = None) -> Path:
    """Check, export the graph, quantise it on ``request.calib`` (or reuse the cached model); its .xml path."""
    from segengine.backends.calibration import calibration_identity, read_frames
    from segengine.backends.openvino_int8 import DEFAULT_RECIPE, RECIPES, import_nncf, quantize

    out = out if out is not None else sys.stderr
    check_openvino_request(request)
    request.check()
    check_target(request.target)
    nncf = import_nncf()  # before the export: a missing nncf is said at once
    if importlib.util.find_spec("openvino") is None:
        raise BackendError("OpenVINO is not installed: pip install -e '.[int8]'")
    chosen = RECIPES[recipe or DEFAULT_RECIPE]
    print(f"segengine: graph for {request.target}…", file=out, flush=True)
    graph = graph_for(request, dirs)
    spec = GraphSpec.read_file(graph)
    label = Path(request.target).stem if is_onnx_file(request.target) else \
        f"{request.target}-{spec.frame_size[1]}x{spec.frame_size[0]}"
    key = Int8Key(sha256_of(graph), calibration_identity(str(request.calib), request.calib_frames, 1),
                  chosen.identity, label)
    cache = Int8Cache(int8_folder(dirs))
    found = cache.lookup(key)
    if found is not None and not request.force:
        print(f"segengine: cached INT8 model {found.xml} is up to date", file=out)
        return found.xml
    frames = list(read_frames(str(request.calib), spec.frame_size, request.calib_frames))
    if not frames:
        raise ConfigError(f"calibration source {request.calib} gave no frames: give a video, folder or stream "
                          "with frames in it")
    print(f"segengine: quantising {label} to INT8 on {len(frames)} frames of {request.calib} "
          f"(NNCF {nncf.__version__}; under a minute on 2 cores)…", file=out, flush=True)
    model = quantize(graph, spec, frames, recipe=chosen)
    versions = {"openvino_version": importlib.metadata.version("openvino"), "nncf_version": nncf.__version__}
    return cache.store(key, model, versions)
