"""The fake inference runner: built by the one factory from `runtime.runner = "fake"`, it reads no model file,
its canned heads decode (through the real YuNet and SCRFD decoders) to the faces it promises, its embeddings
are one unit vector, it spends the configured cost, and the whole local pipeline records events on it."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.config import Config
from engine.gallery.gallery import Gallery
from engine.models.factory import build_runner
from engine.models.fake import FakeRunner, canned_faces
from engine.models.registry import ModelRegistry
from engine.store.base import EventQuery
from engine.store.sqlite import SQLiteStore
from engine.video.pipeline import Engine, FrameJob, FrameOutcome
from engine.vision.analyzer import FaceAnalyzer
from tests.shared_data import IMAGES


def _fake_cfg(tmp_path: Path, detector: str = "yunet", **runtime: object) -> Config:
    cfg = Config.load(env={})
    cfg.models.dir = str(tmp_path / "no-models-here")  # the fake runner must not need model files
    cfg.models.detector = detector
    cfg.store.path = str(tmp_path / "engine.db")
    cfg.update({"runtime": {"runner": "fake", **runtime}}, source="test")
    return cfg


@pytest.mark.parametrize("detector", ["yunet", "scrfd_2.5g"])
@pytest.mark.parametrize("faces", [1, 3])
def test_canned_faces_decode_through_the_real_detector(tmp_path: Path, detector: str, faces: int) -> None:
    cfg = _fake_cfg(tmp_path, detector, fake_faces=faces)
    cfg.detector.min_face_size = 0
    analyzer = FaceAnalyzer.from_config(cfg)
    assert analyzer.provider == "fake"
    assert analyzer.models["detector"].provider == "fake"
    image = cv2.imread(str(IMAGES / "obama.jpg"))
    dets = analyzer.detector.detect(image)
    # the network input is the letterboxed frame: map the promised boxes back to image pixels
    side = analyzer.detector.target_size(image.shape[1], image.shape[0])
    scale = min(side[0] / image.shape[1], side[1] / image.shape[0])
    want = sorted((box / scale).tolist() for box, _ in canned_faces(side[0], side[1], faces))
    got = sorted(dets.boxes.tolist())
    assert len(got) == faces
    np.testing.assert_allclose(got, want, atol=0.5)
    assert np.all(dets.scores > 0.9)
    # landmarks lie inside their boxes, the image-left eye first (the ArcFace template order)
    for box, lm in zip(dets.boxes, dets.landmarks, strict=True):
        assert np.all(lm[:, 0] > box[0]) and np.all(lm[:, 0] < box[2])
        assert lm[0, 0] < lm[1, 0]


def test_embeddings_are_one_unit_vector_and_no_faces_is_an_option(tmp_path: Path) -> None:
    analyzer = FaceAnalyzer.from_config(_fake_cfg(tmp_path, fake_faces=0))
    crops = np.random.default_rng(0).integers(0, 255, (5, 112, 112, 3), dtype=np.uint8)
    emb = analyzer.embed(crops)
    assert emb.shape == (5, analyzer.dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(emb, np.broadcast_to(emb[0], emb.shape))
    assert len(analyzer.detector.detect(np.zeros((240, 320, 3), np.uint8))) == 0


def test_cost_is_spent_per_image(tmp_path: Path) -> None:
    cfg = _fake_cfg(tmp_path, fake_cost_ms=25.0)
    spec = ModelRegistry.from_config(cfg.models).spec("mobilefacenet")
    runner = build_runner(Path("unused.onnx"), cfg.runtime, spec=spec)
    assert isinstance(runner, FakeRunner)
    t0 = time.perf_counter()
    runner.run(np.zeros((4, 3, 112, 112), np.float32))
    assert time.perf_counter() - t0 >= 0.1  # 4 images x 25 ms
    assert (runner.calls, runner.images) == (1, 4)


def test_fake_runner_needs_the_spec_and_a_known_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="manifest entry"):
        build_runner(Path("x.onnx"), _fake_cfg(tmp_path).runtime)
    with pytest.raises(ValueError, match="layout"):
        FakeRunner("x.onnx", "resnet")  # type: ignore[arg-type]


def test_pipeline_records_an_event_on_the_fake_runner(tmp_path: Path) -> None:
    """Everything around the models runs for real: tracking, quality gate, FAISS match, event store."""
    cfg = _fake_cfg(tmp_path)
    analyzer = FaceAnalyzer.from_config(cfg)
    store = SQLiteStore(cfg.store.path)
    gallery = Gallery(store, analyzer.dim, analyzer.model_name, cfg.gallery.index)
    gallery.ensure_watchlist("wl")
    image = cv2.imread(str(IMAGES / "obama.jpg"))
    _, emb = analyzer.largest_face(image, "enrol")
    gallery.enroll("wl", "anyone", emb[None], display_name="Anyone")
    eng = Engine(cfg, analyzer, gallery, store)
    try:
        cam = eng.add_camera("c1")
        outs: list[FrameOutcome] = []
        for i in range(6):
            outs += eng.process([(cam, FrameJob("c1", i, 1.0 + i / 25, image, None))])
        matched = [f.match for o in outs for f in o.faces if f.match is not None]
        assert matched and matched[0].person_id == "anyone"
        events, _ = store.query_events(EventQuery(watchlist="wl"))
        assert len(events) == 1 and events[0].person_id == "anyone"
    finally:
        eng.stop(drain_s=0)
        store.close()
