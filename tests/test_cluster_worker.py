"""A cluster worker without Ray, on the fake runner: a call's frames are processed in order in the calling
thread, a bad frame fails alone, the counters benchmarks read add up, and worker model threads are sized to
the worker's CPUs rather than to half the machine."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from engine.client import encode_jpeg
from engine.cluster.worker import CameraWorker, WireFrame, worker_config
from engine.config import Config
from engine.errors import InvalidImageError
from tests.shared_data import IMAGES


def _cfg(tmp_path: Path) -> Config:
    cfg = Config.load(env={})
    # the fake detector reports its canned faces in whatever region it is given: detect whole frames
    cfg.update({"runtime": {"runner": "fake"}, "store": {"path": str(tmp_path / "w.db")},
                "pipeline": {"motion_gating": False}}, source="test")
    return cfg


def test_worker_processes_a_calls_frames_in_order_and_fails_a_bad_one_alone(tmp_path: Path) -> None:
    w = CameraWorker(worker_config(_cfg(tmp_path)), "w0")
    try:
        jpg = encode_jpeg(cv2.resize(cv2.imread(str(IMAGES / "obama.jpg")), (320, 240)))
        frames = [WireFrame("cam", i, 1.0 + i / 25, encoded=jpg) for i in range(5)]
        frames[2] = WireFrame("cam", 2, 1.0 + 2 / 25, encoded=b"not a jpeg")
        outs = w.process(frames)
        assert [o.seq for o in outs] == [0, 1, 2, 3, 4]
        assert isinstance(outs[2].error, InvalidImageError)
        good = [o for k, o in enumerate(outs) if k != 2]
        assert all(o.error is None and len(o.faces) == 1 for o in good)
        assert len({o.faces[0].track_id for o in good}) == 1  # one face, one track across the call
        st = w.stats()
        assert (st["calls"], st["frames"]) == (1, 5)
        assert 0 < st["busy_s"] <= st["call_s"] + 1e-9
        assert w.engine.camera("cam").frames_processed == 4
    finally:
        w.shutdown()


@pytest.mark.parametrize(("intra", "cpus", "want"), [(0, 1.0, 1), (0, 4.0, 4), (0, 0.5, 1), (3, 1.0, 3)])
def test_worker_model_threads_follow_the_workers_cpus(tmp_path: Path, intra: int, cpus: float, want: int) -> None:
    cfg = _cfg(tmp_path)
    cfg.runtime.intra_op_threads = intra
    cfg.cluster.cpus_per_worker = cpus
    assert worker_config(cfg)["runtime"]["intra_op_threads"] == want


@pytest.mark.parametrize(("workers", "calls", "threads", "intra", "want"),
                         [(14, 1, 1, 0, 14), (14, 2, 1, 0, 14), (14, 2, 2, 0, 28), (8, 4, 2, 2, 32), (8, 1, 4, 1, 8)])
def test_thread_budget_counts_workers_frame_threads_and_intra_op_threads(
        tmp_path: Path, workers: int, calls: int, threads: int, intra: int, want: int) -> None:
    """Calls in flight beyond cluster.worker_threads wait in Ray: they add no model threads."""
    from engine.cluster.frontend import model_threads

    cfg = _cfg(tmp_path)
    cfg.cluster.calls_per_worker = calls
    cfg.cluster.worker_threads = threads
    cfg.runtime.intra_op_threads = intra
    assert model_threads(cfg, workers)[0] == want
