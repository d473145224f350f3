"""Video pipeline behaviour on real frames and real models: track ids, one event per (track, person),
score-rise-only updates, drops under overload, and tiny faces never matching. No timing asserts
(speed targets live in benchmarks/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.config import Config
from engine.gallery.gallery import Gallery
from engine.store.base import EventQuery
from engine.store.sqlite import SQLiteStore
from engine.video.events import MatchFilterSpec
from engine.video.pipeline import Engine, FrameJob, FrameOutcome, is_drop
from engine.video.quality import face_quality
from engine.vision.analyzer import FaceAnalyzer
from engine.vision.detections import box_iou
from tests.conftest import VIDEOS
from tests.shared_data import first_frames

VIDEO = VIDEOS / "multiface_1080p.mp4"
FPS = 25.0
N_FRAMES = 40


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """The first N_FRAMES frames of the 1080p multi-face clip (~7 faces each)."""
    return first_frames(VIDEO, N_FRAMES)


@pytest.fixture()
def engine(cfg: Config, analyzer: FaceAnalyzer) -> Iterator[Engine]:
    store = SQLiteStore(cfg.store.path)
    gallery = Gallery(store, analyzer.dim, analyzer.model_name, cfg.gallery.index)
    gallery.ensure_watchlist("wl")
    eng = Engine(cfg, analyzer, gallery, store)
    yield eng
    eng.stop(drain_s=0)
    store.close()


def _job(cam: str, seq: int, image: np.ndarray, outs: list[FrameOutcome] | None = None) -> FrameJob:
    return FrameJob(cam, seq, 1.0 + seq / FPS, image, outs.append if outs is not None else None)


def _run(eng: Engine, cam: str, frames: list[np.ndarray]) -> list[FrameOutcome]:
    """Process frames one at a time through Engine.process (the workers' code path), in order."""
    state = eng.camera(cam)
    outs: list[FrameOutcome] = []
    for i, frame in enumerate(frames):
        outs += eng.process([(state, _job(cam, i, frame))])
    return outs


def _enroll_face_crop(eng: Engine, analyzer: FaceAnalyzer, frame: np.ndarray, person: str) -> np.ndarray:
    """Enrol the clearest face of `frame` from a crop around it (the way an operator would); its box."""
    dets = analyzer.detector.detect(frame)
    q = face_quality(frame, dets, float(eng.cfg.pipeline.min_face_size))
    k = int(np.argmax(q * (dets.sizes >= eng.cfg.pipeline.min_face_size)))
    x1, y1, x2, y2 = dets.boxes[k]
    mw, mh = 0.25 * (x2 - x1), 0.25 * (y2 - y1)
    crop = frame[int(max(0, y1 - mh)):int(y2 + mh), int(max(0, x1 - mw)):int(x2 + mw)]
    crop = cv2.resize(crop, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)  # room for the detector
    _, emb = analyzer.largest_face(crop, "enrol crop")
    eng.gallery.enroll("wl", person, emb[None], display_name=person)
    return dets.boxes[k]


def test_track_ids_stable_across_consecutive_frames(engine: Engine, frames: list[np.ndarray]) -> None:
    engine.add_camera("c1")
    outs = _run(engine, "c1", frames[:20])
    pairs = same = 0
    for prev, cur in zip(outs, outs[1:], strict=False):
        if not prev.faces or not cur.faces:
            continue
        a = np.stack([f.box for f in prev.faces])
        b = np.stack([f.box for f in cur.faces])
        iou = box_iou(a, b)
        for i in range(len(a)):
            j = int(np.argmax(iou[i]))
            if iou[i, j] >= 0.6:  # the same face one frame later
                pairs += 1
                same += prev.faces[i].track_id == cur.faces[j].track_id >= 1
    assert pairs >= 19 * 5  # ~7 faces a frame
    assert same == pairs


def test_one_event_per_track_and_person_and_updates_only_rise(engine: Engine, analyzer: FaceAnalyzer,
                                                              frames: list[np.ndarray]) -> None:
    _enroll_face_crop(engine, analyzer, frames[0], "alice")
    sub = engine.bus.subscribe(MatchFilterSpec())
    published: list[tuple[str, float, bool]] = []  # snapshot at publish time: events are updated in place
    publish = engine.bus.publish
    engine.bus.publish = lambda ev, update: (published.append((ev.event_id, ev.score, update)),  # type: ignore[method-assign]
                                             publish(ev, update))[1]
    engine.add_camera("c1")
    outs = _run(engine, "c1", frames)
    events, _ = engine.store.query_events(EventQuery(camera_id="c1", page_size=1000))
    assert events, "the enrolled person was never matched"
    assert {e.person_id for e in events} == {"alice"}
    keys = [(e.camera_id, e.track_id, e.watchlist, e.person_id) for e in events]
    assert len(keys) == len(set(keys))
    assert all(e.track_id >= 1 for e in events)
    # frames report the event of their track, and only those event ids exist
    matched = {f.match.event_id for o in outs for f in o.faces if f.match is not None}
    assert matched == {e.event_id for e in events}
    # bus: one "new" per event, then updates only with a higher score
    by_event: dict[str, list[tuple[float, bool]]] = {}
    for eid, score, update in published:
        by_event.setdefault(eid, []).append((score, update))
    assert set(by_event) == {e.event_id for e in events}
    for seq in by_event.values():
        assert seq[0][1] is False and all(u for _, u in seq[1:])
        scores = [s for s, _ in seq]
        assert all(b > a for a, b in zip(scores, scores[1:], strict=False))
    assert sub.queue.qsize() == len(published)
    # the store holds each event's best score
    best = {eid: max(s for s, _ in seq) for eid, seq in by_event.items()}
    assert all(abs(e.score - best[e.event_id]) < 1e-5 for e in events)


def test_drops_counted_and_answered_under_overload(cfg: Config, analyzer: FaceAnalyzer,
                                                    frames: list[np.ndarray], tmp_path: Path) -> None:
    cfg.pipeline.queue_size = 2
    store = SQLiteStore(cfg.store.path)
    eng = Engine(cfg, analyzer, Gallery(store, analyzer.dim, analyzer.model_name), store)
    cam = eng.add_camera("c1")
    outs: list[FrameOutcome] = []
    submitted = 12
    for i in range(submitted):  # workers not started: everything beyond the queue must drop
        eng.submit(_job("c1", i, frames[i], outs))
    queued = len(cam.queue)
    assert queued == 2
    assert cam.frames_dropped == submitted - cam.frames_processed - queued == 10
    dropped = [o for o in outs if o.error is not None]
    assert [o.seq for o in dropped] == list(range(10))  # oldest first: newest wins
    assert all(is_drop(o.error) and o.error.grpc_code == "RESOURCE_EXHAUSTED" for o in dropped)
    eng.start()
    eng.stop(drain_s=30)
    assert cam.frames_processed == 2 and not cam.queue
    assert cam.frames_dropped == submitted - cam.frames_processed
    assert sorted(o.seq for o in outs if o.error is None) == [10, 11]
    assert eng.metrics.registry.get_sample_value("faceengine_frames_dropped_total", {"camera": "c1"}) == 10
    store.close()


def test_drops_counted_while_workers_run(cfg: Config, analyzer: FaceAnalyzer, frames: list[np.ndarray]) -> None:
    """A gateway faster than the engine: frames submitted back to back with the workers running."""
    cfg.pipeline.queue_size = 2
    store = SQLiteStore(cfg.store.path)
    eng = Engine(cfg, analyzer, Gallery(store, analyzer.dim, analyzer.model_name), store)
    cam = eng.add_camera("c1")
    outs: list[FrameOutcome] = []
    eng.start()
    for i, frame in enumerate(frames):
        eng.submit(_job("c1", i, frame, outs))
    eng.stop(drain_s=60)
    assert cam.frames_dropped > 0
    assert cam.frames_dropped == len(frames) - cam.frames_processed - len(cam.queue)
    assert len(outs) == len(frames)  # every frame answered: a result or RESOURCE_EXHAUSTED
    assert sum(is_drop(o.error) for o in outs) == cam.frames_dropped
    store.close()


def test_tiny_faces_never_match(engine: Engine, analyzer: FaceAnalyzer, frames: list[np.ndarray]) -> None:
    box = _enroll_face_crop(engine, analyzer, frames[0], "bob")
    scale = 0.25  # faces of ~8-25 px: detected at most, below pipeline.min_face_size (28)
    small = [cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for f in frames[:20]]
    engine.add_camera("tiny")
    outs = _run(engine, "tiny", small)
    faces = [f for o in outs for f in o.faces]
    assert len(faces) >= 10  # the detector still finds them (and the tracker tracks them)...
    assert all(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) < engine.cfg.pipeline.min_face_size for f in faces)
    assert not any(f.match is not None for f in faces)  # ...but they are never matched
    events, _ = engine.store.query_events(EventQuery(camera_id="tiny"))
    assert events == []
    # control: the same person at full size is matched (so the gate, not the gallery, stopped it)
    engine.add_camera("full")
    outs = _run(engine, "full", frames[:10])
    hits = [f for o in outs for f in o.faces if f.match is not None and f.match.person_id == "bob"]
    assert hits and box_iou(np.stack([h.box for h in hits[:1]]), box[None])[0, 0] > 0.3


def test_workers_track_in_capture_order(cfg: Config, analyzer: FaceAnalyzer, frames: list[np.ndarray]) -> None:
    """Two workers detect consecutive frames of one camera at once; tracking still runs in capture
    order, so results match a plain sequential run and arrive in sequence order."""
    cfg.pipeline.workers = 2
    cfg.pipeline.queue_size = 64
    store = SQLiteStore(cfg.store.path)
    gallery = Gallery(store, analyzer.dim, analyzer.model_name)
    seq_eng = Engine(cfg, analyzer, gallery, store)
    seq_eng.add_camera("c1")
    expected = _run(seq_eng, "c1", frames[:24])
    eng = Engine(cfg, analyzer, gallery, store)
    eng.add_camera("c1")
    outs: list[FrameOutcome] = []
    for i, frame in enumerate(frames[:24]):
        eng.submit(_job("c1", i, frame, outs))
    eng.start()
    eng.stop(drain_s=60)
    assert [o.seq for o in outs] == list(range(24))
    assert all(o.error is None for o in outs)
    for got, want in zip(outs, expected, strict=True):
        assert [f.track_id for f in got.faces] == [f.track_id for f in want.faces]
    assert eng.metrics.registry.get_sample_value("faceengine_frames_processed_total", {"camera": "c1"}) == 24
    store.close()


def test_removed_person_raises_no_more_events(engine: Engine, analyzer: FaceAnalyzer,
                                              frames: list[np.ndarray]) -> None:
    """Erasure while the person's track is live: the cached event is dropped and no new one is written."""
    engine.add_camera("cam")
    _enroll_face_crop(engine, analyzer, frames[0], "p1")
    first = _run(engine, "cam", frames[:15])
    assert any(f.match is not None and f.match.person_id == "p1" for o in first for f in o.faces)
    engine.gallery.remove_person("wl", "p1")
    engine.store.erase_person_events("wl", "p1")
    engine.forget_person("wl", "p1")
    state = engine.camera("cam")
    later = [engine.process([(state, _job("cam", 15 + i, f))])[0] for i, f in enumerate(frames[15:30])]
    assert all(f.match is None or f.match.person_id != "p1" for o in later for f in o.faces)
    events, _ = engine.store.query_events(EventQuery(person_id="p1"))
    assert events == []
