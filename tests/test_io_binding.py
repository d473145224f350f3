"""onnxruntime IO binding in the inference runner (`runtime.io_binding`): on the CPU provider the
real detectors and embedders give what plain `session.run` gives, batched and one image a call;
auto is off on the CPU; a binding that cannot be placed falls back with one warning; on CUDA
(skipped without a GPU) the runner binds and its results match the CPU within the batch-check
tolerances."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from engine.config import Config
from engine.errors import ConfigError
from engine.models.factory import build_runner
from engine.models.registry import ModelRegistry
from engine.models.session import OnnxRunner
from engine.vision.align import Aligner
from engine.vision.batchcheck import compare_detections, compare_embeddings
from engine.vision.detectors import FaceDetector, load_detector
from engine.vision.embedder import load_embedder
from engine.vision.image import read_image
from tests.conftest import IMAGES

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
ATOL = 1e-6
"""Same kernels on the same provider: binding changes where tensors live, not what is computed."""
FRAMES = ("multiface.jpg", "obama_and_biden.jpg", "two_people.jpg", "obama-1080p.jpg")


def _cfg(io_binding: str, **runtime: object) -> Config:
    cfg = Config.load(env={})
    cfg.update({"runtime": {"io_binding": io_binding, **runtime}}, source="test")
    return cfg


def _images() -> list[np.ndarray]:
    return [read_image(IMAGES / n) for n in FRAMES]


def _letterboxed(det: FaceDetector, img: np.ndarray, side: int = 640) -> np.ndarray:
    """A real frame as the detector's (1, 3, H, W) network input at a fixed side."""
    buf = np.empty((1, 3, side, side), np.float32)
    det.preprocess(img, (side, side), buf[0])
    return buf


def _assert_same(got: list[np.ndarray], ref: list[np.ndarray]) -> None:
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=0, atol=ATOL)


def test_io_binding_field_validates_and_auto_is_off_on_the_cpu(model_dir: Path) -> None:
    cfg = Config.load(env={})
    assert cfg.runtime.io_binding == "auto"
    with pytest.raises(ConfigError, match=r"runtime\.io_binding = 'yes' is invalid"):
        cfg.update({"runtime": {"io_binding": "yes"}}, source="test")
    with pytest.raises(ConfigError, match=r"FACEENGINE_RUNTIME_IO_BINDING: runtime\.io_binding = 'gpu'"):
        Config.load(env={"FACEENGINE_RUNTIME_IO_BINDING": "gpu"})
    auto = build_runner(model_dir / "mobilefacenet.onnx", cfg.runtime)
    assert auto.provider == "CPUExecutionProvider" and not auto.io_binding and not auto.info().io_binding
    on = build_runner(model_dir / "mobilefacenet.onnx", _cfg("on").runtime)
    assert on.io_binding and on.info().io_binding
    assert "io_binding" in cfg.to_toml()  # documented with the other runtime options


@pytest.mark.parametrize("name", ["yunet", "scrfd_2.5g"])
def test_detector_outputs_with_io_binding_equal_plain_run(model_dir: Path, name: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    reg = ModelRegistry(model_dir)
    off_cfg, on_cfg = _cfg("off"), _cfg("on")
    with caplog.at_level(logging.INFO, logger="engine.models.session"):
        on = load_detector(reg, name, on_cfg.detector, on_cfg.runtime)
    off = load_detector(reg, name, off_cfg.detector, off_cfg.runtime)
    assert on.runner.io_binding and not off.runner.io_binding
    assert on.runner.batched and off.runner.batched
    assert on.runner.batch_check == off.runner.batch_check  # the check ran through the binding: same verdict
    assert any("IO binding on (cpu:0)" in r.getMessage() for r in caplog.records), caplog.text
    frames = _images()
    # raw outputs, batched: four real frames letterboxed to one network input
    batch = np.concatenate([_letterboxed(off, img) for img in frames])
    _assert_same(on.runner.run(batch), off.runner.run(batch))
    # raw outputs, one image a call (a runner that never takes the batch rewrite)
    path = reg.path(name)
    single_on = build_runner(path, on_cfg.runtime, batchable=False, dynamic_hw=True)
    single_off = build_runner(path, off_cfg.runtime, batchable=False, dynamic_hw=True)
    assert not single_on.batched and single_on.io_binding
    _assert_same(single_on.run(batch), single_off.run(batch))
    _assert_same(single_on.run(batch), off.runner.run(batch))  # and what the batched graph gives on the CPU
    # decoded faces, through the detectors' own batching
    for got, ref in zip(on.detect_batch(frames), off.detect_batch(frames), strict=True):
        assert len(ref) > 0 and len(got) == len(ref)
        np.testing.assert_allclose(got.boxes, ref.boxes, rtol=0, atol=1e-4)
        np.testing.assert_allclose(got.scores, ref.scores, rtol=0, atol=ATOL)


def test_graph_preprocess_uint8_frames_through_io_binding(model_dir: Path) -> None:
    """The GPU default pair (graph pre-processing and IO binding, both auto-on there) on the CPU:
    uint8 HWC frames bound as the input give the same faces as plain runs."""
    reg = ModelRegistry(model_dir)
    on_cfg, off_cfg = _cfg("on", graph_preprocess="on"), _cfg("off", graph_preprocess="on")
    on = load_detector(reg, "yunet", on_cfg.detector, on_cfg.runtime)
    off = load_detector(reg, "yunet", off_cfg.detector, off_cfg.runtime)
    assert on.graph_letterbox and on.runner.io_binding and on.runner.batched, on.runner.batch_check
    img = read_image(IMAGES / "two_people.jpg")
    frames = np.stack([img, img[:, ::-1]])
    _assert_same(on.runner.run(frames), off.runner.run(frames))
    got, ref = on.detect(img), off.detect(img)
    assert len(ref) > 0
    np.testing.assert_array_equal(got.boxes, ref.boxes)


@pytest.mark.parametrize("name", ["mobilefacenet", "sface"])
def test_embedder_outputs_with_io_binding_equal_plain_run(model_dir: Path, name: str) -> None:
    reg = ModelRegistry(model_dir)
    off_cfg, on_cfg = _cfg("off"), _cfg("on")
    on = load_embedder(reg, name, on_cfg.embedder, on_cfg.runtime)
    off = load_embedder(reg, name, off_cfg.embedder, off_cfg.runtime)
    assert on.runner.io_binding and on.runner.batched and off.runner.batched
    assert on.runner.batch_check == off.runner.batch_check
    det = load_detector(reg, "yunet", off_cfg.detector, off_cfg.runtime)
    img = read_image(IMAGES / "multiface.jpg")
    crops = Aligner().align_all(img, det.detect(img))
    assert len(crops) == 6
    np.testing.assert_allclose(on.embed(crops), off.embed(crops), rtol=0, atol=ATOL)  # batched
    blob = on._blob(crops)
    single_on = build_runner(reg.path(name), on_cfg.runtime, batchable=False)
    single_off = build_runner(reg.path(name), off_cfg.runtime, batchable=False)
    assert not single_on.batched and single_on.io_binding
    _assert_same(single_on.run(blob), single_off.run(blob))  # one image a call


def test_concurrent_calls_each_get_their_own_binding(model_dir: Path) -> None:
    """Pipeline workers call `run` at once; every call must get its own input's outputs."""
    runner = build_runner(model_dir / "mobilefacenet.onnx", _cfg("on").runtime, batchable=False)
    rng = np.random.default_rng(0)
    inputs = [rng.normal(0, 1, (2, 3, 112, 112)).astype(np.float32) for _ in range(8)]
    expected = [runner.run(x)[0] for x in inputs]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(3):
            got[i] = runner.run(inputs[i])[0]
            np.testing.assert_array_equal(got[i], expected[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(inputs)
    for i, x in enumerate(inputs):
        np.testing.assert_array_equal(got[i], expected[i])
        assert not np.array_equal(got[i], expected[(i + 1) % len(inputs)]), x.shape


def test_binding_that_cannot_be_placed_falls_back_with_one_warning(model_dir: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A CPU-only onnxruntime cannot allocate on 'cuda' (as an old or mismatched build fails): the
    call still returns the right outputs, IO binding switches off, and the warning is logged once.
    An input that is itself wrong still raises."""
    cfg = _cfg("on")
    runner = build_runner(model_dir / "mobilefacenet.onnx", cfg.runtime, batchable=False)
    assert isinstance(runner, OnnxRunner) and runner.io_binding
    plain = build_runner(model_dir / "mobilefacenet.onnx", _cfg("off").runtime, batchable=False)
    x = np.random.default_rng(1).normal(0, 1, (3, 3, 112, 112)).astype(np.float32)
    with pytest.raises(Exception, match=r"(?i)dimension|shape|rank"):
        runner.run(x[:, :, :50])  # the input's fault: raised, binding kept
    assert runner.io_binding
    runner._io_device = ("cuda", 0)  # what a CUDA session asks for, on an onnxruntime without it
    with caplog.at_level(logging.WARNING, logger="engine.models.session"):
        first = runner.run(x)
        second = runner.run(x)
    _assert_same(first, plain.run(x))
    _assert_same(second, plain.run(x))
    assert not runner.io_binding and not runner.info().io_binding
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "IO binding to cuda:0 failed" in warnings[0] and "plain session.run" in warnings[0]


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and an NVIDIA GPU (CUDAExecutionProvider)")
def test_cuda_runner_binds_and_matches_the_cpu(model_dir: Path) -> None:
    reg = ModelRegistry(model_dir)
    gpu, cpu = _cfg("auto", provider="cuda"), _cfg("off", provider="cpu")
    frames = _images()
    for name in ("yunet", "scrfd_2.5g"):
        det = load_detector(reg, name, gpu.detector, gpu.runtime)
        ref = load_detector(reg, name, cpu.detector, cpu.runtime)
        assert det.runner.provider == "CUDAExecutionProvider" and det.runner.io_binding, det.runner.info()
        assert det.runner.info().io_binding and det.runner.batched, det.runner.batch_check
        side = 640
        batch = np.concatenate([_letterboxed(ref, img, side) for img in frames])
        got, want = det.runner.run(batch), ref.runner.run(batch)
        verdict = compare_detections(
            [ref.decode([o[k] for o in want], side, side, -np.inf) for k in range(len(frames))],
            [det.decode([o[k] for o in got], side, side, -np.inf) for k in range(len(frames))])
        assert verdict.accepted, (name, verdict.detail)
        assert det.runner.io_binding  # still bound after real frames (no fallback happened)
    emb = load_embedder(reg, "mobilefacenet", gpu.embedder, gpu.runtime)
    emb_cpu = load_embedder(reg, "mobilefacenet", cpu.embedder, cpu.runtime)
    assert emb.runner.provider == "CUDAExecutionProvider" and emb.runner.io_binding and emb.runner.batched
    det_cpu = load_detector(reg, "yunet", cpu.detector, cpu.runtime)
    img = read_image(IMAGES / "multiface.jpg")
    crops = Aligner().align_all(img, det_cpu.detect(img))
    verdict = compare_embeddings(emb_cpu.embed(crops), emb.embed(crops))
    assert verdict.accepted and emb.runner.io_binding, verdict.detail
