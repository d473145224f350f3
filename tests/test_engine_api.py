"""The engine interface and the camera registry both engines share: the service holds a `VideoEngine`
and never asks which one it is; camera checks, queues, counters and state live in one place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.cluster.frontend import ClusterCamera, ClusterEngine
from engine.config import Config
from engine.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from engine.video.cameras import CameraPhase, CameraRegistry, CameraStatus
from engine.video.engine_api import VideoEngine
from engine.video.pipeline import Engine

ENGINE_DIR = Path(__file__).resolve().parents[1] / "engine"


def test_both_engines_implement_the_interface() -> None:
    assert issubclass(Engine, VideoEngine) and issubclass(ClusterEngine, VideoEngine)
    assert not Engine.__abstractmethods__ and not ClusterEngine.__abstractmethods__


def test_no_test_of_the_engine_kind_outside_the_factory() -> None:
    """Only engine/runtime.py (the factory) may know which engine it built."""
    kind_test = re.compile(r"remote_decode|isinstance\([^)]*,\s*\(?\s*(Cluster)?Engine\b|submit_wire")
    offenders = [str(p.relative_to(ENGINE_DIR)) for p in ENGINE_DIR.rglob("*.py")
                 if p.name != "runtime.py" and "cluster" not in p.parts and kind_test.search(p.read_text())]
    assert offenders == []


def test_registry_checks_ids_and_duplicates() -> None:
    reg: CameraRegistry[CameraStatus] = CameraRegistry(CameraStatus)
    with pytest.raises(InvalidArgumentError, match="1-128"):
        reg.add("")
    with pytest.raises(InvalidArgumentError, match="1-128"):
        reg.add("x" * 129)
    cam = reg.add("a")
    with pytest.raises(AlreadyExistsError, match="remove it first"):
        reg.add("a")
    with pytest.raises(NotFoundError, match="AddCamera"):
        reg.get("b")
    assert reg.get("a") is cam and cam.kind == "push" and cam.state is CameraPhase.IDLE
    assert reg.add("p", "rtsp://h/x").state is CameraPhase.CONNECTING and reg.ids() == ["a", "p"] and len(reg) == 2


def test_registry_queue_drops_oldest_and_counts() -> None:
    reg: CameraRegistry[CameraStatus] = CameraRegistry(CameraStatus)
    cam = reg.add("a")
    assert [reg.enqueue(cam, i, queue_size=2) for i in range(4)] == [None, None, 0, 1]
    assert list(cam.queue) == [2, 3] and (cam.frames_in, cam.frames_dropped) == (4, 2) and reg.queued() == 2
    removed, pending = reg.remove("a")
    assert removed is cam and pending == [2, 3] and cam.state is CameraPhase.STOPPED and "a" not in reg


def test_state_has_one_writer_and_stopped_is_final() -> None:
    cam = CameraStatus("a", "push", "push", {})
    with pytest.raises(AttributeError):
        cam.state = CameraPhase.RUNNING  # type: ignore[misc]
    cam.set_state(CameraPhase.RETRYING, "stream broke")
    assert (cam.state, cam.last_error) == ("retrying", "stream broke")
    cam.set_state(CameraPhase.STOPPED)
    cam.set_state(CameraPhase.RUNNING)  # a reader finishing late does not revive a removed camera
    assert cam.state is CameraPhase.STOPPED


def test_cluster_camera_live_reads_ask_the_worker_only_when_live(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = ClusterEngine(Config())
    eng.add_camera("gw")
    cam = eng.add_camera("pull", "rtsp://cam.example/live")
    asked: list[list[str]] = []
    monkeypatch.setattr(eng, "_refresh_pulls", lambda cams: asked.append([c.camera_id for c in cams]))
    eng.camera("pull", live=False)
    eng.cameras(live=False)
    assert asked == []
    assert eng.camera("pull") is cam and eng.camera("gw", live=True).kind == "push"
    eng.cameras()
    assert asked == [["pull"], [], ["pull"]]


def test_a_refused_saved_camera_is_listed_in_error() -> None:
    eng = ClusterEngine(Config())
    cam = eng.add_camera("bad", "rtsp://cam.example/live", error="option 'fps' is invalid")
    assert isinstance(cam, ClusterCamera) and cam.state is CameraPhase.ERROR and "fps" in cam.last_error
    assert [c.camera_id for c in eng.cameras(live=False)] == ["bad"]
