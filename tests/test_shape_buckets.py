"""Fixed shapes for the GPU path, checked on the CPU: with `runtime.shape_buckets` on a 3-camera bench of a
clip whose faces vary frame to frame reports, per session, no more distinct shapes than buckets; padding a
batch to its bucket gives the same detections and embeddings as the unpadded call (real models, real
frames); warm-up runs each bucket once at load and logs its time; the fp16 conversion is kept for SFace and
MobileFaceNet on real crops (cosine >= 0.999) where onnxruntime runs fp16 on the CPU; the CUDA provider
options (HEURISTIC algorithm search, CUDA graphs) and the profile summary. CUDA-only checks skip with a reason."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from engine.config import Config
from engine.errors import ConfigError
from engine.models.registry import ModelRegistry
from engine.models.session import cuda_options
from engine.vision.analyzer import FaceAnalyzer
from engine.vision.batchcheck import FP16_MIN_COSINE, compare_detections, compare_embeddings
from engine.vision.detections import box_iou
from engine.vision.detectors import load_detector
from engine.vision.embedder import load_embedder
from engine.vision.image import read_image
from tests.procs import cli, cli_env
from tests.shared_data import IMAGES, VIDEOS

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
FRAMES = ("multiface.jpg", "obama_and_biden.jpg", "two_people.jpg", "obama-1080p.jpg", "obama.jpg")


def _cfg(model_dir: Path, **runtime: object) -> Config:
    cfg = Config.load(env={})
    cfg.update({"models": {"dir": str(model_dir)}, "runtime": runtime}, source="test")
    return cfg


def test_bench_three_cameras_reports_shapes_within_buckets(model_dir: Path, tmp_path: Path) -> None:
    env = {**cli_env(model_dir), "FACEENGINE_RUNTIME_SHAPE_BUCKETS": "on"}
    prefix = tmp_path / "bench"
    out = cli("bench", "--video", str(VIDEOS / "stage_360p.mp4"), "--cameras", "3", "--rounds", "1",
              "--max-frames", "6", "--no-grpc", "--no-baselines", "--lfw-distractors", "0", "--json",
              "--out", str(prefix), env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    saved = json.loads(prefix.with_suffix(".json").read_text())
    for role in ("detector", "embedder"):
        st = line["sessions"][role]
        assert st["bucketing"] is True and st["buckets"] is not None
        assert 1 <= st["distinct_shapes"] <= st["buckets"], st
        full = saved["sessions"][role]
        assert all(s[0] in full["bucket_sizes"] for s in full["shapes"]), full  # every batch ran at a bucket
    # the faces varied: the embedder ran batches of more than one bucket (1..N faces a call)
    assert len({s[0] for s in saved["sessions"]["embedder"]["shapes"]}) >= 2, saved["sessions"]["embedder"]


@pytest.mark.parametrize("graph", ["off", "on"])
def test_padding_gives_the_same_detections(model_dir: Path, graph: str) -> None:
    reg = ModelRegistry(model_dir)
    plain_cfg = _cfg(model_dir, graph_preprocess=graph, shape_buckets="off")
    padded_cfg = _cfg(model_dir, graph_preprocess=graph, shape_buckets="on", bucket_sizes=[1, 4, 8])
    plain = load_detector(reg, "yunet", plain_cfg.detector, plain_cfg.runtime)
    padded = load_detector(reg, "yunet", padded_cfg.detector, padded_cfg.runtime)
    frame = read_image(IMAGES / "multiface.jpg")
    frames = [frame, frame[:, ::-1].copy(), frame[::-1].copy()]  # 3 frames of one size: padded to 4
    ref, got = plain.detect_batch(frames), padded.detect_batch(frames)
    assert padded.runner.session_stats()["shapes"][0][0] == 4
    assert sum(len(d) for d in ref) >= 6
    for r, g in zip(ref, got, strict=True):
        assert len(r) == len(g)
        np.testing.assert_allclose(g.boxes, r.boxes, atol=1e-3)
        np.testing.assert_allclose(g.scores, r.scores, atol=1e-5)
        np.testing.assert_allclose(g.landmarks, r.landmarks, atol=1e-3)


def test_padding_gives_the_same_embeddings(model_dir: Path, analyzer: FaceAnalyzer) -> None:
    reg = ModelRegistry(model_dir)
    padded_cfg = _cfg(model_dir, shape_buckets="on", bucket_sizes=[1, 2, 8])
    an = analyzer  # the default config: no padding on the CPU
    assert an.embedder.runner.buckets == () and an.embedder.name == "sface"
    padded = load_embedder(reg, "sface", padded_cfg.embedder, padded_cfg.runtime)
    crops = np.concatenate([an.aligner.align_all(img, an.detector.detect(img))
                            for img in (read_image(IMAGES / n) for n in FRAMES)])
    n = len(crops)
    assert n >= 5 and padded.runner.padded(n) != n
    ref, got = an.embedder.embed(crops), padded.embed(crops)
    assert compare_embeddings(ref, got, min_cosine=0.99999).accepted
    assert n % 8 and {s[0] for s in padded.runner.session_stats()["shapes"]} <= {1, 2, 8}  # 8-face chunks, padded


def test_warm_up_runs_every_bucket_once_and_logs_its_time(model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(model_dir, shape_buckets="on", warmup="on", bucket_sizes=[1, 2, 4], warmup_frame_sizes=["640x360"])
    cfg.update({"embedder": {"batch_size": 2}}, source="test")
    reg = ModelRegistry(model_dir)
    with caplog.at_level(logging.INFO, logger="engine.models.runner"):
        det = load_detector(reg, "yunet", cfg.detector, cfg.runtime)
        emb = load_embedder(reg, "mobilefacenet", cfg.embedder, cfg.runtime)
    lines = [r.getMessage() for r in caplog.records if "warm-up" in r.getMessage()]
    assert sum("640x360 frames, batch" in ln for ln in lines) == 3 and sum("crops, batch" in ln for ln in lines) == 2
    st = det.runner.session_stats()
    assert st["distinct_shapes"] == 3 == st["buckets"] and st["warmup_s"] > 0
    before = det.runner.session_stats()["distinct_shapes"]
    det.detect_batch([np.zeros((360, 640, 3), np.uint8)] * 3)  # steady state meets no new shape
    assert det.runner.session_stats()["distinct_shapes"] == before
    assert emb.runner.session_stats()["distinct_shapes"] == 2  # buckets above embedder.batch_size never occur
    # auto: no warm-up on the CPU provider
    auto = _cfg(model_dir, shape_buckets="on")
    assert load_embedder(reg, "mobilefacenet", auto.embedder, auto.runtime).runner.session_stats()["warmup_s"] is None


@pytest.mark.parametrize("name", ["sface", "mobilefacenet"])
def test_fp16_embeddings_match_fp32_on_real_crops(model_dir: Path, analyzer: FaceAnalyzer, name: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    reg = ModelRegistry(model_dir)
    crops = np.concatenate([analyzer.aligner.align_all(img, analyzer.detector.detect(img))
                            for img in (read_image(IMAGES / n) for n in FRAMES)])
    fp32_cfg, fp16_cfg = _cfg(model_dir, fp16="off"), _cfg(model_dir, fp16="on")
    fp32 = (analyzer.embedder if analyzer.embedder.name == name  # the default config: fp16 off on the CPU
            else load_embedder(reg, name, fp32_cfg.embedder, fp32_cfg.runtime))
    with caplog.at_level(logging.INFO, logger="engine.models.session"):
        fp16 = load_embedder(reg, name, fp16_cfg.embedder, fp16_cfg.runtime)
    verdict = fp16.runner.session_stats()["fp16"]
    if "fp16 graph failed" in verdict:
        pytest.skip(f"onnxruntime {ort.__version__} cannot run the fp16 {name} graph on the CPU: {verdict}")
    assert verdict.startswith("kept: ") and any("fp16 graph kept" in r.getMessage() for r in caplog.records), verdict
    assert fp32.runner.session_stats()["fp16"] == "off"
    res = compare_embeddings(fp32.embed(crops), fp16.embed(crops), min_cosine=FP16_MIN_COSINE)
    assert res.accepted, res.detail
    assert len(crops) >= 5


def test_fp16_detector_passes_the_batch_check_on_real_frames(model_dir: Path) -> None:
    reg = ModelRegistry(model_dir)
    cfg32, cfg16 = _cfg(model_dir, fp16="off"), _cfg(model_dir, fp16="on")
    d32 = load_detector(reg, "yunet", cfg32.detector, cfg32.runtime)
    d16 = load_detector(reg, "yunet", cfg16.detector, cfg16.runtime)
    verdict = d16.runner.session_stats()["fp16"]
    if "fp16 graph failed" in verdict:
        pytest.skip(f"onnxruntime {ort.__version__} cannot run the fp16 YuNet graph on the CPU: {verdict}")
    assert verdict.startswith("kept: "), verdict
    side = 640
    buf = np.empty((2, 3, side, side), np.float32)
    for k, name in enumerate(("multiface.jpg", "obama_and_biden.jpg")):
        d32.preprocess(read_image(IMAGES / name), (side, side), buf[k])
    ref, got = d32.runner.run(buf), d16.runner.run(buf)
    dec = [(d32.decode([o[k] for o in ref], side, side, -np.inf), d16.decode([o[k] for o in got], side, side, -np.inf))
           for k in range(2)]
    res = compare_detections([r for r, _ in dec], [c for _, c in dec])
    assert res.accepted, res.detail


def test_fp16_refused_when_its_check_fails(model_dir: Path) -> None:
    """A check that refuses keeps the fp32 session (verdict says so); auto is off on the CPU."""
    from engine.models.factory import build_runner
    from engine.models.runner import BatchVerdict

    cfg = _cfg(model_dir, fp16="on")
    runner = build_runner(ModelRegistry(model_dir).path("mobilefacenet"), cfg.runtime)
    x = np.random.default_rng(0).random((2, 3, 112, 112), dtype=np.float32)
    before = runner.run(x)[0]
    assert not runner.try_fp16(lambda run16, run32: BatchVerdict(False, "refused for the test")).accepted
    assert runner.session_stats()["fp16"].startswith("refused, fp32 kept")
    np.testing.assert_array_equal(runner.run(x)[0], before)
    assert _cfg(model_dir).runtime.fp16 == "auto" and "off" in build_runner(
        ModelRegistry(model_dir).path("mobilefacenet"), _cfg(model_dir).runtime).session_stats()["fp16"]


def test_cuda_options_and_config_validation() -> None:
    cfg = Config.load(env={})
    assert cuda_options(cfg.runtime) == {"cudnn_conv_algo_search": "HEURISTIC"}
    cfg.update({"runtime": {"cudnn_conv_algo_search": "EXHAUSTIVE", "cuda_graphs": True, "shape_buckets": "on"}})
    assert cuda_options(cfg.runtime) == {"cudnn_conv_algo_search": "EXHAUSTIVE", "enable_cuda_graph": "1"}
    cfg.update({"runtime": {"shape_buckets": "off"}})  # graphs need fixed shapes
    assert "enable_cuda_graph" not in cuda_options(cfg.runtime)
    for field, bad in (("bucket_sizes", "4,2"), ("bucket_sizes", "0,1"), ("warmup_frame_sizes", "1080p")):
        with pytest.raises(ConfigError, match=f"runtime.{field}"):
            Config.load(env={f"FACEENGINE_RUNTIME_{field.upper()}": bad})


def test_profile_written_after_its_runs_with_top_operators(model_dir: Path, tmp_path: Path) -> None:
    from engine.models.factory import build_runner

    cfg = _cfg(model_dir, profile_dir=str(tmp_path / "prof"), profile_runs=3)
    runner = build_runner(ModelRegistry(model_dir).path("mobilefacenet"), cfg.runtime)
    for _ in range(3):
        runner.run(np.zeros((2, 3, 112, 112), np.float32))
    tops = list((tmp_path / "prof").glob("*.top.json"))
    assert len(tops) == 1
    top = json.loads(tops[0].read_text())
    assert top["runs"] >= 3 and top["top"][0]["op"] == "Conv" and 0 < top["top"][0]["share"] <= 1


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and an NVIDIA GPU (CUDAExecutionProvider)")
def test_cuda_buckets_warm_and_match_the_cpu(model_dir: Path) -> None:
    reg = ModelRegistry(model_dir)
    gpu = _cfg(model_dir, provider="cuda", warmup_frame_sizes=["1280x720"], fp16="off")
    cpu = _cfg(model_dir)
    g = load_embedder(reg, "sface", gpu.embedder, gpu.runtime)
    c = load_embedder(reg, "sface", cpu.embedder, cpu.runtime)
    st = g.runner.session_stats()
    assert st["bucketing"] and st["warmup_s"] is not None and st["distinct_shapes"] == len(st["bucket_sizes"])
    crops = np.random.default_rng(0).integers(0, 255, (5, 112, 112, 3), dtype=np.uint8)
    assert compare_embeddings(c.embed(crops), g.embed(crops), min_cosine=0.9999).accepted
    assert g.runner.session_stats()["distinct_shapes"] == st["distinct_shapes"]


def test_metrics_publish_each_sessions_shapes(analyzer: FaceAnalyzer) -> None:
    from engine.metrics import EngineMetrics

    m = EngineMetrics()
    m.watch_sessions(analyzer.session_stats)
    analyzer.analyze(read_image(IMAGES / "two_people.jpg"))
    for role, st in analyzer.session_stats().items():
        got = m.registry.get_sample_value("faceengine_session_distinct_shapes", {"role": role, "model": st["model"]})
        assert got == st["distinct_shapes"] >= 1
        assert m.registry.get_sample_value("faceengine_session_buckets", {"role": role, "model": st["model"]}) == 0


def test_graph_slots_preallocate_per_bucket_and_match_plain_calls(model_dir: Path) -> None:
    """The CUDA-graph path's plumbing, run on the CPU (where onnxruntime captures nothing): one slot per
    bucket shape with its device buffers bound once, the slot's own check passes, and every call through
    a slot gives the plain call's outputs."""
    reg = ModelRegistry(model_dir)
    cfg, base = _cfg(model_dir, shape_buckets="on", bucket_sizes=[1, 2, 4], io_binding="on"), _cfg(model_dir)
    plain = load_embedder(reg, "mobilefacenet", base.embedder, base.runtime).runner
    runner = load_embedder(reg, "mobilefacenet", cfg.embedder, cfg.runtime).runner
    assert runner.batched and runner.session_stats()["cuda_graphs"] == 0  # off unless CUDA with cuda_graphs
    runner._graphs = True  # type: ignore[attr-defined]  # what runtime.cuda_graphs turns on for a CUDA session
    rng = np.random.default_rng(0)
    for n in (3, 1, 4, 3, 2):
        x = rng.random((n, 3, 112, 112), dtype=np.float32)
        np.testing.assert_allclose(runner.run(x)[0], plain.run(x)[0], atol=1e-5)
    st = runner.session_stats()
    assert st["cuda_graphs"] == 3 == st["distinct_shapes"]  # buckets 4, 1, 2: one slot each, reused



def test_fp16_with_graph_preprocessing_keeps_the_letterbox_in_fp32(model_dir: Path) -> None:
    """The GPU default (uint8 frames letterboxed by graph nodes): only the detector itself is converted, the
    pre-processing nodes (which compute sizes) stay float32; the check passes and real frames give the
    same faces as the fp32 graph."""
    reg = ModelRegistry(model_dir)
    c32, c16 = _cfg(model_dir, graph_preprocess="on"), _cfg(model_dir, graph_preprocess="on", fp16="on")
    d32 = load_detector(reg, "yunet", c32.detector, c32.runtime)
    d16 = load_detector(reg, "yunet", c16.detector, c16.runtime)
    assert d16.runner.session_stats()["fp16"].startswith("kept: "), d16.runner.session_stats()["fp16"]
    for name in ("multiface.jpg", "obama_and_biden.jpg"):
        img = read_image(IMAGES / name)
        a, b = d32.detect(img), d16.detect(img)
        assert len(a) == len(b) >= 2
        assert float(box_iou(a.boxes, b.boxes).max(axis=1).min()) > 0.95  # every face found again (any order)


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and an NVIDIA GPU (CUDAExecutionProvider)")
def test_cuda_graphs_capture_per_bucket_and_match_the_cpu(model_dir: Path) -> None:
    reg = ModelRegistry(model_dir)
    gpu = _cfg(model_dir, provider="cuda", cuda_graphs=True, fp16="off", bucket_sizes=[1, 2, 4, 8])
    cpu = _cfg(model_dir)
    g = load_embedder(reg, "sface", gpu.embedder, gpu.runtime)
    c = load_embedder(reg, "sface", cpu.embedder, cpu.runtime)
    crops = np.random.default_rng(1).integers(0, 255, (7, 112, 112, 3), dtype=np.uint8)
    for n in (7, 3, 7):
        assert compare_embeddings(c.embed(crops[:n]), g.embed(crops[:n]), min_cosine=0.9999).accepted
    assert g.runner.session_stats()["cuda_graphs"] >= 1  # captured and checked (else a warning turned them off)


def test_every_runner_reports_the_same_session_fields(model_dir: Path) -> None:
    """Bench JSON and metrics read the same keys whatever the backend (onnxruntime or the fake runner)."""
    from engine.models.factory import build_runner, fake_runner

    onnx_stats = build_runner(ModelRegistry(model_dir).path("mobilefacenet"), _cfg(model_dir).runtime).session_stats()
    fake = fake_runner(ModelRegistry(model_dir).spec("mobilefacenet"), _cfg(model_dir).runtime).session_stats()
    assert set(fake) == set(onnx_stats)


def test_a_model_refused_with_cuda_graphs_loads_without_them(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """onnxruntime refuses CUDA graphs for a model with nodes outside the CUDA provider (shape arithmetic of
    the letterbox nodes, say): the runner loads it without them, warns once, and runs it as usual."""
    from engine.models import session as sess

    real = ort.InferenceSession

    def refusing(raw: bytes, opts: ort.SessionOptions, providers: list) -> ort.InferenceSession:  # noqa: ANN001
        if any(o.get("enable_cuda_graph") == "1" for _, o in providers):
            raise RuntimeError("This session cannot use the CUDA Graph feature as requested by the user as all "
                               "compute graph nodes have not been partitioned to the CUDA EP.")
        return real(raw, opts, providers=providers)

    monkeypatch.setattr(sess, "provider_options", lambda rt: [("CPUExecutionProvider", {"enable_cuda_graph": "1"})])
    monkeypatch.setattr(sess.ort, "InferenceSession", lambda raw, opts, providers: refusing(raw, opts, providers))
    cfg = _cfg(model_dir, shape_buckets="on")
    reg = ModelRegistry(model_dir)
    with caplog.at_level(logging.WARNING, logger="engine.models.session"):
        emb = load_embedder(reg, "mobilefacenet", cfg.embedder, cfg.runtime)
    assert sum("refused CUDA graphs" in r.getMessage() for r in caplog.records) == 1  # later sessions: no retry
    assert emb.runner.batched and emb.runner.session_stats()["cuda_graphs"] == 0
    assert emb.embed(np.zeros((3, 112, 112, 3), np.uint8)).shape == (3, emb.dim)
