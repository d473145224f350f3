"""Recognizer alone, with the real models on real video frames: it finds and tracks faces, embeds
only best shots, matches an enrolled person and not the others, keeps cameras apart in one batch.
No threads, queues or store of the pipeline are involved (the gallery is the only state it reads)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.config import Config
from engine.gallery.gallery import Gallery
from engine.store.sqlite import SQLiteStore
from engine.video.quality import face_quality
from engine.video.recognizer import Frame, FrameRecognition, Recognizer, RecognizerSettings
from engine.vision.analyzer import FaceAnalyzer
from engine.vision.detections import box_iou
from engine.vision.image import read_image
from tests.conftest import IMAGES, VIDEOS
from tests.shared_data import first_frames

FPS = 25.0
N_FRAMES = 40


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """The first N_FRAMES frames of the 1080p multi-face clip (~7 faces each)."""
    return first_frames(VIDEOS / "multiface_1080p.mp4", N_FRAMES)


@pytest.fixture()
def gallery(tmp_path: Path, analyzer: FaceAnalyzer) -> Iterator[Gallery]:
    store = SQLiteStore(str(tmp_path / "gallery.db"))
    g = Gallery(store, analyzer.dim, analyzer.model_name)
    g.ensure_watchlist("wl")
    yield g
    store.close()


def _recognizer(cfg: Config, analyzer: FaceAnalyzer, gallery: Gallery) -> Recognizer:
    return Recognizer(analyzer, gallery, RecognizerSettings.from_config(cfg))


def _run(rec: Recognizer, cam: str, frames: list[np.ndarray]) -> list[FrameRecognition]:
    return [rec.process(Frame(cam, i, 1.0 + i / FPS, f)) for i, f in enumerate(frames)]


def _enroll_clearest(analyzer: FaceAnalyzer, gallery: Gallery, cfg: Config, frame: np.ndarray,
                     person: str) -> np.ndarray:
    """Enrol the clearest face of `frame` from a crop around it (as an operator would); returns its box."""
    dets = analyzer.detect_batch([frame])[0]
    q = face_quality(frame, dets, float(cfg.pipeline.min_face_size))
    k = int(np.argmax(q * (dets.sizes >= cfg.pipeline.min_face_size)))
    x1, y1, x2, y2 = dets.boxes[k]
    mw, mh = 0.25 * (x2 - x1), 0.25 * (y2 - y1)
    crop = frame[int(max(0, y1 - mh)):int(y2 + mh), int(max(0, x1 - mw)):int(x2 + mw)]
    crop = cv2.resize(crop, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)  # room for the detector
    _, emb = analyzer.largest_face(crop, "enrol crop")
    gallery.enroll("wl", person, emb[None], display_name=person)
    return dets.boxes[k]


def test_finds_and_tracks_faces(cfg: Config, analyzer: FaceAnalyzer, gallery: Gallery,
                                frames: list[np.ndarray]) -> None:
    rec = _recognizer(cfg, analyzer, gallery)
    outs = _run(rec, "c1", frames[:20])
    assert all(len(o.detections) >= 5 for o in outs)  # ~7 faces a frame
    for o in outs:
        n = len(o.detections)
        assert o.track_ids.shape == o.quality.shape == o.embedded.shape == (n,)
        assert ((o.quality >= 0) & (o.quality <= 1)).all()
        assert (o.track_ids >= 1).sum() >= n - 1  # high-score faces all get a track
    pairs = same = 0
    for prev, cur in zip(outs, outs[1:], strict=False):
        iou = box_iou(prev.detections.boxes, cur.detections.boxes)
        for i in range(len(prev.detections)):
            j = int(np.argmax(iou[i]))
            if iou[i, j] >= 0.6:  # the same face one frame later keeps its track id
                pairs += 1
                same += prev.track_ids[i] == cur.track_ids[j] >= 1
    assert pairs >= 19 * 5 and same == pairs
    live = rec.live_tracks("c1")  # tracks with best-shot state: seen with a face past the gate
    assert live and set(live) <= {int(t) for o in outs for t in o.track_ids}


def test_embeds_best_shots_only(cfg: Config, analyzer: FaceAnalyzer, gallery: Gallery,
                                frames: list[np.ndarray]) -> None:
    rec = _recognizer(cfg, analyzer, gallery)
    outs = _run(rec, "c1", frames)
    gated = embedded = 0
    per_track: dict[int, int] = {}
    for o in outs:
        passes = rec.gate.passes(o.detections, o.quality)
        assert not (o.embedded & ~passes).any()  # only faces past the quality gate are embedded
        gated += int(passes.sum())
        embedded += int(o.embedded.sum())
        assert o.embeddings.shape == (int(o.embedded.sum()), analyzer.dim)
        if len(o.embeddings):
            assert np.allclose(np.linalg.norm(o.embeddings, axis=1), 1.0, atol=1e-3)
        for k in np.flatnonzero(o.embedded):
            per_track[int(o.track_ids[k])] = per_track.get(int(o.track_ids[k]), 0) + 1
    assert gated >= 60 and 0 < embedded <= gated // 4  # a few shots per track, not every face
    assert min(per_track) >= 1  # every embedded face belongs to a track
    # first shot, interval refreshes and a few clearly better shots
    assert max(per_track.values()) <= 1 + N_FRAMES / FPS / cfg.pipeline.reembed_interval_s + 4
    tid = max(per_track, key=lambda t: per_track[t])
    state = rec.track("c1", tid)
    assert state is not None and state.n_embeddings == per_track[tid] and state.embedding is not None
    # without tracking every gated face is embedded (the control: tracking is what saves the work)
    untracked = Recognizer(analyzer, gallery, dataclasses.replace(RecognizerSettings.from_config(cfg), tracking=False))
    plain = _run(untracked, "c1", frames[:10])
    assert all((o.embedded == untracked.gate.passes(o.detections, o.quality)).all() for o in plain)
    assert sum(int(o.embedded.sum()) for o in plain) >= 10 > sum(int(o.embedded.sum()) for o in outs[:10])


def test_matches_enrolled_person_and_not_the_others(cfg: Config, analyzer: FaceAnalyzer, gallery: Gallery,
                                                    frames: list[np.ndarray]) -> None:
    box = _enroll_clearest(analyzer, gallery, cfg, frames[0], "alice")
    _, obama = analyzer.single_face(read_image(IMAGES / "obama.jpg"))  # someone not in the clip
    gallery.enroll("wl", "obama", obama[None], display_name="obama")
    rec = _recognizer(cfg, analyzer, gallery)
    outs = _run(rec, "c1", frames[:20])
    matches = [(o, m) for o in outs for m in o.matches]
    assert matches, "the enrolled person was never matched"
    assert {m.hit.person_id for _, m in matches} == {"alice"}  # the unknown faces match nobody
    assert all(m.hit.score >= rec.settings.match_threshold for _, m in matches)
    first = outs[0]
    k = int(np.argmax(box_iou(box[None], first.detections.boxes)[0]))
    alice_track = int(first.track_ids[k])
    assert {m.track_id for _, m in matches} == {alice_track}  # only the enrolled face's track
    for o, m in matches:
        assert o.embedded[m.face] and np.array_equal(m.box, o.detections.boxes[m.face])
        assert o.match_of(m.face) is m
    # after the person is removed, the same frames give no decision
    gallery.remove_person("wl", "alice")
    again = _run(_recognizer(cfg, analyzer, gallery), "c1", frames[:20])
    assert not any(o.matches for o in again)


def test_batch_across_cameras_equals_separate_runs(cfg: Config, analyzer: FaceAnalyzer, gallery: Gallery,
                                                   frames: list[np.ndarray]) -> None:
    """Two cameras in one batch: each keeps its own tracks, as if run alone."""
    small = [cv2.resize(f, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA) for f in frames[:10]]
    alone_a = _run(_recognizer(cfg, analyzer, gallery), "a", frames[:10])
    alone_b = _run(_recognizer(cfg, analyzer, gallery), "b", small)
    rec = _recognizer(cfg, analyzer, gallery)
    both: list[FrameRecognition] = []
    for i in range(10):
        t = 1.0 + i / FPS
        both += rec.process_batch([Frame("a", i, t, frames[i]), Frame("b", i, t, small[i])])
    for got, want in zip(both, [x for pair in zip(alone_a, alone_b, strict=True) for x in pair], strict=True):
        assert got.camera_id == want.camera_id
        assert got.track_ids.tolist() == want.track_ids.tolist()
        assert np.allclose(got.detections.boxes, want.detections.boxes, atol=1.0)
        assert got.embedded.tolist() == want.embedded.tolist()


def test_reduced_frame_reports_original_coordinates(cfg: Config, analyzer: FaceAnalyzer, gallery: Gallery,
                                                    frames: list[np.ndarray]) -> None:
    """A frame decoded at half size for detection: boxes come back in full-frame pixels."""
    full = frames[0]
    half = cv2.resize(full, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    rec = _recognizer(cfg, analyzer, gallery)
    out = rec.process(Frame("c1", 0, 1.0, half, scale=2.0, loader=lambda: full))
    ref = analyzer.detect_batch([full])[0]
    assert len(out.detections) >= 5
    # exactly the half frame's detections, mapped to full-frame pixels
    own = analyzer.detect_batch([half])[0]
    assert len(own) == len(out.detections)
    assert (box_iou(out.detections.boxes, own.boxes * 2.0).max(axis=1) > 0.99).all()
    # and the same faces as a full-resolution pass; scale-aware detection runs the full frame at 1280 wide
    # and the half frame at 960, so boxes of the smallest faces differ a little more than at one network size
    iou = box_iou(out.detections.boxes, ref.boxes)
    assert (iou.max(axis=1) > 0.6).all()
