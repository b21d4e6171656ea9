"""The TensorRT engine cache: keys that change with every part, and a sidecar checked before loading."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from segengine.backends.engine_cache import EngineCache, EngineKey, check_engine
from segengine.errors import BackendError

PROFILE = (("frame", (1, 720, 1280, 3), (1, 720, 1280, 3), (1, 720, 1280, 3)),)
KEY = EngineKey("ab" * 32, "10.3.0", "Orin (nvgpu)", "8.7", "fp16", PROFILE, label="road-1280x720")
PLAN = b"serialized engine bytes" * 100


@pytest.mark.parametrize(("field", "value"), [
    ("model_sha256", "cd" * 32), ("tensorrt_version", "10.7.0"), ("gpu_name", "NVIDIA GeForce RTX 4090"),
    ("compute_capability", "8.9"), ("precision", "int8"), ("calibration", "0123456789abcdef"),
    ("profile", (("frame", (1, 720, 1280, 3), (4, 720, 1280, 3), (4, 720, 1280, 3)),)),
])
def test_every_part_of_the_key_changes_the_file(field: str, value: object) -> None:
    other = replace(KEY, **{field: value})
    assert other.digest() != KEY.digest() and other.stem != KEY.stem


def test_the_label_only_names_the_file() -> None:
    renamed = replace(KEY, label="something/else")
    assert renamed.digest() == KEY.digest() and renamed.stem.startswith("something_else-fp16-")


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(BackendError, match="unknown precision 'fp8'"):
        replace(KEY, precision="fp8")


def test_store_then_lookup_hits(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    assert cache.lookup(KEY).status == "missing"
    path = cache.store(KEY, PLAN)
    found = cache.lookup(KEY)
    assert found.usable and found.engine == path and path.read_bytes() == PLAN
    record = json.loads(found.sidecar.read_text())
    assert record["tensorrt_version"] == "10.3.0" and record["gpu_name"] == "Orin (nvgpu)"
    assert record["profile"] == [["frame", [1, 720, 1280, 3], [1, 720, 1280, 3], [1, 720, 1280, 3]]]


def test_an_engine_from_another_gpu_and_tensorrt_is_a_mismatch_with_reasons(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    engine = cache.store(KEY, PLAN)
    here = replace(KEY, gpu_name="NVIDIA GeForce RTX 4090", compute_capability="8.9", tensorrt_version="10.7.0")
    found = check_engine(engine, engine.with_suffix(".json"), here)  # e.g. a cache folder copied between machines
    assert found.status == "mismatch" and not found.usable
    text = found.explain()
    assert "built for GPU Orin (nvgpu), this run needs NVIDIA GeForce RTX 4090" in text
    assert "built for TensorRT version 10.3.0, this run needs 10.7.0" in text
    assert "compute capability 8.7" in text


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda engine, sidecar: engine.write_bytes(PLAN[:100]), "truncated or replaced"),
    (lambda engine, sidecar: engine.write_bytes(PLAN[::-1]), "sha256 differs"),
    (lambda engine, sidecar: sidecar.unlink(), "sidecar"),
    (lambda engine, sidecar: sidecar.write_text("{not json"), "unreadable"),
    (lambda engine, sidecar: sidecar.write_text("[1, 2]"), "unreadable"),
])
def test_a_damaged_engine_is_reported_not_loaded(tmp_path: Path, damage, reason: str) -> None:
    cache = EngineCache(tmp_path)
    engine = cache.store(KEY, PLAN)
    damage(engine, engine.with_suffix(".json"))
    found = cache.lookup(KEY)
    assert found.status == "corrupt" and reason in found.explain()


def test_an_older_sidecar_format_is_a_mismatch(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    engine = cache.store(KEY, PLAN)
    sidecar = engine.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**record, "format": 0}))
    assert cache.lookup(KEY).status == "mismatch" and "sidecar format 0" in cache.lookup(KEY).explain()


def test_run_finds_the_best_engine_for_this_machine_and_says_why_others_do_not_fit(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.store(KEY, PLAN)
    cache.store(replace(KEY, precision="int8", calibration="feedc0ffee"), PLAN + b"8")
    cache.store(replace(KEY, precision="fp32"), PLAN + b"32")
    cache.store(replace(KEY, tensorrt_version="8.6.2", precision="fp32"), PLAN)  # from before an upgrade
    cache.store(replace(KEY, model_sha256="ef" * 32), PLAN)  # another model: not mentioned
    broken = cache.store(replace(KEY, gpu_name="Orin (nvgpu)", precision="fp32", calibration="x"), PLAN)
    broken.write_bytes(b"")
    found, stale = cache.candidates(KEY.model_sha256, "10.3.0", "Orin (nvgpu)", "8.7")
    assert [key.precision for _, key in found] == ["int8", "fp16", "fp32"]
    assert found[0][1].calibration == "feedc0ffee" and found[0][0].read_bytes() == PLAN + b"8"
    fp32 = [reason for reason in stale if "fp32" in reason]
    assert len(stale) == 2 and any("TensorRT version 8.6.2, this run needs 10.3.0" in r for r in stale)
    assert any("truncated" in r for r in fp32) and not any("ef" * 8 in r for r in stale)


def test_a_profile_without_batch_one_is_not_used_for_run(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.store(replace(KEY, profile=(("frame", (4, 8, 8, 3), (8, 8, 8, 3), (8, 8, 8, 3)),)), PLAN)
    found, stale = cache.candidates(KEY.model_sha256, "10.3.0", "Orin (nvgpu)", "8.7")
    assert not found and "batch profile does not span 1..1" in stale[0]


def test_an_engine_whose_profile_stops_short_of_the_batch_is_not_used(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.store(replace(KEY, profile=(("frame", (1, 8, 8, 3), (2, 8, 8, 3), (2, 8, 8, 3)),)), PLAN)
    assert cache.candidates(KEY.model_sha256, "10.3.0", "Orin (nvgpu)", "8.7", batch=2)[0]
    found, stale = cache.candidates(KEY.model_sha256, "10.3.0", "Orin (nvgpu)", "8.7", batch=4)
    assert not found and "batch profile does not span 1..4" in stale[0]


def test_timing_cache_and_calibration_table_paths_follow_their_inputs(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    assert cache.timing_cache("10.3.0", "Orin", "8.7") == cache.timing_cache("10.3.0", "Orin", "8.7")
    assert cache.timing_cache("10.3.0", "Orin", "8.7") != cache.timing_cache("10.4.0", "Orin", "8.7")
    assert cache.calibration_table("a", "video.mp4|64") != cache.calibration_table("a", "video.mp4|128")
