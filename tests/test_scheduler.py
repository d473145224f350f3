"""Scheduler alone: bounded queues with drop-oldest, counts, capture-order tickets with several
workers, batches across cameras, removal and failure handling.

The recognizer and recorder here are stubs that find no faces: these tests make claims about
scheduling only (detection and recognition are tested with real models in test_recognizer.py and
test_pipeline.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from engine.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from engine.store.base import MatchEvent
from engine.video.recognizer import Frame, FrameRecognition
from engine.video.scheduler import FrameJob, FrameOutcome, Scheduler, SchedulerSettings, is_drop
from engine.vision.detections import Detections

IMAGE = np.zeros((8, 8, 3), np.uint8)


class StubRecognizer:
    """Finds no faces; records the batches it detects and the order it recognises frames in."""

    def __init__(self, detect_delay: dict[int, float] | None = None, fail_seq: int = -1) -> None:
        self.detect_delay = detect_delay or {}
        self.fail_seq = fail_seq
        self.batches: list[list[tuple[str, int]]] = []
        self.recognized: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def detect(self, frames: Sequence[Frame]) -> list[Detections]:
        with self.lock:
            self.batches.append([(f.camera_id, f.seq) for f in frames])
        time.sleep(max((self.detect_delay.get(f.seq, 0.0) for f in frames), default=0.0))
        if any(f.seq == self.fail_seq for f in frames):
            raise RuntimeError("stub failure")
        return [Detections.empty() for _ in frames]

    def recognize(self, frames: Sequence[Frame], detections: Sequence[Detections]) -> list[FrameRecognition]:
        with self.lock:
            self.recognized += [(f.camera_id, f.seq) for f in frames]
        return [FrameRecognition(f.camera_id, f.seq, f.capture_time, d, np.zeros(0, np.int64),
                                 np.zeros(0, np.float32), np.zeros(0, bool), np.zeros((0, 4), np.float32))
                for f, d in zip(frames, detections, strict=True)]


class StubRecorder:
    def record(self, frame: Frame, rec: FrameRecognition) -> list[MatchEvent | None]:
        return [None] * len(rec.detections)


def _scheduler(recognizer: StubRecognizer | None = None, **settings: float) -> tuple[Scheduler, StubRecognizer]:
    rec = recognizer or StubRecognizer()
    return Scheduler(SchedulerSettings(**settings), rec, StubRecorder()), rec  # type: ignore[arg-type]


def _job(cam: str, seq: int, outs: list[FrameOutcome]) -> FrameJob:
    return FrameJob(cam, seq, 1.0 + seq / 25, IMAGE, outs.append)


def test_full_queue_drops_oldest_and_counts() -> None:
    sched, rec = _scheduler(queue_size=3, workers=1)
    cam = sched.add_camera("c1")
    outs: list[FrameOutcome] = []
    for i in range(10):  # workers not started: everything beyond the queue drops
        sched.submit(_job("c1", i, outs))
    assert [j.seq for j in cam.queue] == [7, 8, 9]  # newest win
    assert (cam.frames_in, cam.frames_dropped, sched.pending()) == (10, 7, 3)
    assert [o.seq for o in outs] == list(range(7)) and all(is_drop(o.error) for o in outs)
    assert all(o.error is not None and o.error.grpc_code == "RESOURCE_EXHAUSTED" for o in outs)
    assert sched.metrics.registry.get_sample_value("faceengine_frames_dropped_total", {"camera": "c1"}) == 7
    sched.start()
    sched.stop(drain_s=10)
    assert [o.seq for o in outs if o.error is None] == [7, 8, 9]
    assert cam.frames_processed == 3 and rec.recognized == [("c1", 7), ("c1", 8), ("c1", 9)]


def test_two_workers_recognise_a_camera_in_capture_order() -> None:
    """Even frames detect slowly, so the second worker finishes detection first; the ticket makes
    it wait: recognition and replies stay in capture order per camera."""
    n = 16
    sched, rec = _scheduler(StubRecognizer({i: 0.03 for i in range(0, n, 2)}), queue_size=64, workers=2)
    outs: dict[str, list[FrameOutcome]] = {"a": []}
    for c in outs:
        sched.add_camera(c)
    for i in range(n):
        for c in outs:
            sched.submit(_job(c, i, outs[c]))
    sched.start()
    sched.stop(drain_s=30)
    for c in outs:
        assert [o.seq for o in outs[c]] == list(range(n))
        assert [s for cc, s in rec.recognized if cc == c] == list(range(n))
    detect_order = [s for b in rec.batches for _, s in b]
    assert sorted(detect_order) == list(range(n))  # every frame detected once, two at a time


def test_frames_arriving_while_a_batch_fills_stay_in_capture_order() -> None:
    """A worker waits up to batch_wait_ms to fill its batch; frames arriving meanwhile must not be split
    between its open batch and another worker's (found with 3 gRPC cameras under load: frames 1, 4, 6, 7
    in the first batch and 2, 3, 5 in the second, so frame 4 was tracked before frame 2)."""
    n = 24
    sched, rec = _scheduler(queue_size=64, batch_size=4, batch_wait_ms=60.0, workers=2)
    outs: list[FrameOutcome] = []
    sched.add_camera("cam")
    sched.start()
    for i in range(n):
        sched.submit(_job("cam", i, outs))
        time.sleep(0.01)  # frames trickle in while batches are being filled
    sched.stop(drain_s=30)
    assert [s for _, s in rec.recognized] == list(range(n))
    assert [o.seq for o in outs] == list(range(n))
    for b in rec.batches:  # each batch is a run of consecutive frames
        seqs = [s for _, s in b]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), rec.batches


def test_batches_take_frames_across_cameras_round_robin() -> None:
    sched, rec = _scheduler(queue_size=8, batch_size=4, workers=1)
    outs: list[FrameOutcome] = []
    for c in ("c0", "c1", "c2", "c3"):
        sched.add_camera(c)
    for i in range(2):
        for c in ("c0", "c1", "c2", "c3"):
            sched.submit(_job(c, i, outs))
    sched.start()
    sched.stop(drain_s=10)
    assert len(outs) == 8 and all(o.error is None for o in outs)
    assert rec.batches[0] == [("c0", 0), ("c1", 0), ("c2", 0), ("c3", 0)]  # one frame of each camera
    assert sorted(rec.batches[1]) == [("c0", 1), ("c1", 1), ("c2", 1), ("c3", 1)]


def test_one_camera_fills_a_batch_in_order() -> None:
    sched, rec = _scheduler(queue_size=8, batch_size=4, workers=1)
    outs: list[FrameOutcome] = []
    sched.add_camera("solo")
    for i in range(8):
        sched.submit(_job("solo", i, outs))
    sched.start()
    sched.stop(drain_s=10)
    assert rec.batches == [[("solo", i) for i in range(4)], [("solo", i) for i in range(4, 8)]]
    assert [o.seq for o in outs] == list(range(8))


def test_removed_camera_answers_waiting_frames_not_found() -> None:
    sched, _ = _scheduler(queue_size=8)
    outs: list[FrameOutcome] = []
    sched.add_camera("gone")
    for i in range(3):
        sched.submit(_job("gone", i, outs))
    cam = sched.remove_camera("gone")
    assert cam.state == "stopped" and sched.find("gone") is None and sched.pending() == 0
    assert [(o.seq, type(o.error)) for o in outs] == [(i, NotFoundError) for i in range(3)]
    with pytest.raises(NotFoundError):
        sched.submit(_job("gone", 3, outs))
    with pytest.raises(NotFoundError):
        sched.remove_camera("gone")


def test_camera_registry_checks_ids_and_kinds() -> None:
    sched, _ = _scheduler()
    assert sched.add_camera("door").kind == "push"
    assert sched.add_camera("rtsp", "rtsp://example/stream").kind == "pull"
    with pytest.raises(AlreadyExistsError):
        sched.add_camera("door")
    for bad in ("", "x" * 129):
        with pytest.raises(InvalidArgumentError):
            sched.add_camera(bad)
    assert [c.camera_id for c in sched.cameras()] == ["door", "rtsp"]


def test_failed_batch_is_answered_and_the_worker_goes_on() -> None:
    sched, rec = _scheduler(StubRecognizer(fail_seq=1), queue_size=8, workers=1)
    outs: list[FrameOutcome] = []
    sched.add_camera("c1")
    for i in range(4):
        sched.submit(_job("c1", i, outs))
    sched.start()
    sched.stop(drain_s=10)
    assert [o.seq for o in outs] == [0, 1, 2, 3]
    assert outs[1].error is not None and "stub failure" in str(outs[1].error)
    assert all(o.error is None for o in outs if o.seq != 1)
    assert [s for _, s in rec.recognized] == [0, 2, 3]
