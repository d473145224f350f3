"""EventRecorder alone: one event per (track, person), updates only on a higher score, persistence
through the event store, JPEG thumbnails, publishing and relay, erased persons never written.

No models: decisions are built from real gallery hits of synthetic unit vectors, thumbnails are cut
from a real video frame."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.gallery.gallery import Gallery, Match
from engine.store.base import EventQuery, MatchEvent
from engine.store.sqlite import SQLiteStore
from engine.video.events import EventBus, MatchFilterSpec
from engine.video.recognizer import Frame, FrameRecognition, MatchDecision
from engine.video.recorder import EventRecorder, RecorderSettings
from engine.vision.detections import Detections
from tests.conftest import VIDEOS

DIM = 16
BOX = np.array([800.0, 300.0, 900.0, 420.0], np.float32)
_rng = np.random.default_rng(0)
VECS = {p: v / np.linalg.norm(v) for p, v in (("alice", _rng.normal(size=DIM)), ("bob", _rng.normal(size=DIM)))}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    cap = cv2.VideoCapture(str(VIDEOS / "multiface_1080p.mp4"))
    ok, frame = cap.read()
    cap.release()
    assert ok
    return frame


@pytest.fixture()
def parts(tmp_path: Path) -> Iterator[tuple[SQLiteStore, Gallery, EventBus, EventRecorder]]:
    store = SQLiteStore(str(tmp_path / "events.db"))
    gallery = Gallery(store, DIM, "synthetic")
    gallery.ensure_watchlist("wl")
    for person, vec in VECS.items():
        gallery.enroll("wl", person, vec[None].astype(np.float32), display_name=person.title())
    bus = EventBus()
    rec = EventRecorder(store, bus, RecorderSettings(thumbnail_size=64), still_enrolled=gallery.has_template)
    yield store, gallery, bus, rec
    store.close()


def _hit(gallery: Gallery, person: str, score: float) -> Match:
    """A real gallery hit for `person` (its template id), with the score the test wants."""
    h = gallery.search(VECS[person][None].astype(np.float32), top_k=1)[0][0]
    assert h.person_id == person
    return Match(h.watchlist, h.person_id, h.display_name, score, h.template_id)


def _frame(image: np.ndarray, seq: int, track_id: int, decisions: list[tuple[Match, int]] | None = None,
           ended: list[int] | None = None) -> tuple[Frame, FrameRecognition]:
    """A one-face frame whose face is on `track_id`, with the given (hit, face) decisions."""
    dets = Detections(BOX[None].copy(), np.zeros((1, 5, 2), np.float32), np.array([0.9], np.float32))
    matches = [MatchDecision(face, track_id, BOX, np.zeros(DIM, np.float32), hit) for hit, face in decisions or []]
    rec = FrameRecognition("cam", seq, 1.0 + seq / 25, dets, np.array([track_id], np.int64),
                           np.array([0.8], np.float32), np.zeros(1, bool), np.zeros((0, DIM), np.float32),
                           matches, ended or [])
    return Frame("cam", seq, 1.0 + seq / 25, image), rec


def _events(store: SQLiteStore) -> list[MatchEvent]:
    return store.query_events(EventQuery(page_size=100))[0]


def _drain(sub: queue.Queue) -> list[tuple[str, float, bool]]:  # type: ignore[type-arg]
    out = []
    while not sub.empty():
        ev, update = sub.get_nowait()
        out.append((ev.event_id, ev.score, update))
    return out


def test_one_event_per_track_and_person_updated_only_on_higher_score(parts, image: np.ndarray) -> None:  # noqa: ANN001
    store, gallery, bus, rec = parts
    sub = bus.subscribe(MatchFilterSpec())
    published: list[tuple[str, float, bool]] = []
    ids = []
    for seq, score in enumerate([0.50, 0.45, 0.50 + 1e-5, 0.62, 0.55]):
        frame, r = _frame(image, seq, 7, [(_hit(gallery, "alice", score), 0)])
        ev = rec.record(frame, r)[0]
        assert ev is not None
        ids.append(ev.event_id)
        published += _drain(sub.queue)
    assert len(set(ids)) == 1  # one event for (track 7, alice)
    events = _events(store)
    assert len(events) == 1 and events[0].score == pytest.approx(0.62) and events[0].frame_seq == 3
    # new, then one update for the only real rise (0.45, +1e-5 and 0.55 are not)
    assert [(s, u) for _, s, u in published] == [(pytest.approx(0.50), False), (pytest.approx(0.62), True)]
    # another person on the same track, and the same person on another track: events of their own
    frame, r = _frame(image, 5, 7, [(_hit(gallery, "bob", 0.48), 0)])
    bob = rec.record(frame, r)[0]
    frame, r = _frame(image, 6, 8, [(_hit(gallery, "alice", 0.47), 0)])
    other_track = rec.record(frame, r)[0]
    assert bob is not None and other_track is not None
    assert len({ids[0], bob.event_id, other_track.event_id}) == 3
    assert {(e.track_id, e.person_id) for e in _events(store)} == {(7, "alice"), (7, "bob"), (8, "alice")}
    # a frame without a decision still reports its track's best event
    frame, r = _frame(image, 7, 7)
    assert rec.record(frame, r)[0].event_id == ids[0]  # type: ignore[union-attr]


def test_untracked_faces_raise_an_event_per_match(parts, image: np.ndarray) -> None:  # noqa: ANN001
    store, gallery, _, rec = parts
    for seq in range(3):
        frame, r = _frame(image, seq, -1, [(_hit(gallery, "alice", 0.5), 0)])
        rec.record(frame, r)
    assert len(_events(store)) == 3


def test_events_persist_with_jpeg_thumbnails(parts, image: np.ndarray) -> None:  # noqa: ANN001
    store, gallery, _, rec = parts
    frame, r = _frame(image, 0, 3, [(_hit(gallery, "alice", 0.5), 0)])
    ev = rec.record(frame, r)[0]
    assert ev is not None
    stored = store.get_event(ev.event_id)
    assert (stored.camera_id, stored.person_id, stored.display_name, stored.track_id) == ("cam", "alice", "Alice", 3)
    assert stored.box == pytest.approx(tuple(BOX.tolist()))
    assert stored.thumbnail[:2] == b"\xff\xd8"
    thumb = cv2.imdecode(np.frombuffer(stored.thumbnail, np.uint8), cv2.IMREAD_COLOR)
    assert thumb is not None and max(thumb.shape[:2]) == 64  # box + 20 % margin, shrunk to thumbnail_size
    h, w = thumb.shape[:2]
    assert w / h == pytest.approx(140 / 168, abs=0.05)  # the margin's aspect: (100 + 2*20) x (120 + 2*24)
    # an update replaces the thumbnail too; an empty box gives none
    frame, r = _frame(image, 1, 3, [(_hit(gallery, "alice", 0.7), 0)])
    rec.record(frame, r)
    assert store.get_event(ev.event_id).score == pytest.approx(0.7)
    assert rec.thumbnail(image, np.array([5000, 5000, 5100, 5100], np.float32)) == b""


def test_erased_person_events_are_not_written(parts, image: np.ndarray) -> None:  # noqa: ANN001
    store, gallery, _, rec = parts
    frame, r = _frame(image, 0, 4, [(_hit(gallery, "alice", 0.5), 0)])
    stale = r.matches[0]
    assert rec.record(frame, r)[0] is not None
    gallery.remove_person("wl", "alice")
    store.erase_person_events("wl", "alice")
    rec.forget_person("wl", "alice")
    assert rec.events_of("cam") == []
    # a decision made before the erasure (a batch in flight) and a higher score: nothing is written
    frame, r = _frame(image, 1, 4, [(Match(stale.hit.watchlist, "alice", "Alice", 0.9, stale.hit.template_id), 0)])
    assert rec.record(frame, r) == [None]
    assert _events(store) == []


def test_ended_tracks_start_new_events_and_purged_events_are_recorded_afresh(parts, image: np.ndarray) -> None:  # noqa: ANN001
    store, gallery, _, rec = parts
    frame, r = _frame(image, 0, 5, [(_hit(gallery, "bob", 0.5), 0)])
    first = rec.record(frame, r)[0]
    frame, r = _frame(image, 1, 9, ended=[5])  # track 5 ended with this frame
    rec.record(frame, r)
    assert rec.track_event("cam", 5) is None
    store.purge_events(time.time() + 60)  # retention removed everything
    frame, r = _frame(image, 2, 9, [(_hit(gallery, "bob", 0.5), 0)])
    second = rec.record(frame, r)[0]
    frame, r = _frame(image, 3, 9, [(_hit(gallery, "bob", 0.6), 0)])
    store.purge_events(time.time() + 60)
    third = rec.record(frame, r)[0]  # the update finds no row: recorded as a new event
    assert first is not None and second is not None and third is not None
    assert len({first.event_id, second.event_id, third.event_id}) == 3
    assert [e.event_id for e in _events(store)] == [third.event_id]


def test_relay_publishes_only_other_processes_events(parts, image: np.ndarray) -> None:  # noqa: ANN001
    store, gallery, bus, rec = parts
    frame, r = _frame(image, 0, 1, [(_hit(gallery, "alice", 0.5), 0)])
    mine = rec.record(frame, r)[0]
    assert mine is not None
    theirs = MatchEvent("x" * 32, "cam-b", 1.0, "wl", "bob", "Bob", 0.6, (0.0, 0.0, 1.0, 1.0))
    store.add_event(theirs)
    sub = bus.subscribe(MatchFilterSpec())
    assert rec.relay(store.event_changes_since(0)[0]) == 1
    assert [(e.event_id, u) for e, u in [sub.queue.get_nowait()]] == [(theirs.event_id, False)]
    assert sub.queue.empty()
