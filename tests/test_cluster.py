"""Cluster mode on a real local Ray: cameras served by worker actors, a worker killed mid-stream, two nodes.

Real models and real photos; Ray runs on loopback only."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator

import cv2
import grpc
import pytest

from engine.client import Client, encode_jpeg
from engine.config import Config
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from tests.conftest import IMAGES

# Ray on Linux advertises the machine's network address; tests keep every Ray socket on loopback
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="cluster mode needs Ray: pip install -e '.[cluster]'")


def _scene() -> bytes:
    img = cv2.imread(str(IMAGES / "obama_and_biden.jpg"))
    return encode_jpeg(cv2.resize(img, (1280, 914)))


def _cluster_cfg(cfg: Config, workers: int = 2) -> Config:
    cfg.server.host = "127.0.0.1"
    cfg.server.port = 0
    cfg.server.metrics_port = 0
    cfg.server.event_relay_s = 0.2
    cfg.auth.enabled = False
    cfg.cluster.address = "local"
    cfg.cluster.workers = workers
    cfg.cluster.cpus_per_worker = 1
    cfg.pipeline.workers = 1
    cfg.runtime.intra_op_threads = 1
    return cfg


def _fake_runner(cfg: Config) -> Config:
    """For tests of placement and routing, not recognition: the fake runner's canned faces (any enrolled face
    matches them) spare every worker the real models; whole frames are detected (the canned faces would turn
    up in every motion region)."""
    cfg.runtime.runner = "fake"
    cfg.pipeline.motion_gating = False
    return cfg


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    from engine.cluster.runtime import connect

    connect("local", num_cpus=4)
    yield
    ray.shutdown()


def _stream(c: Client, camera: str, jpg: bytes, n: int, gap: float = 0.05,
            on_result=None) -> list[pb.FrameResult]:  # noqa: ANN001
    def frames() -> Iterator[pb.Frame]:
        for i in range(1, n + 1):
            yield pb.Frame(camera_id=camera, sequence=i, capture_time=time.time(), encoded=jpg)
            time.sleep(gap)

    out = []
    for r in c.ingest.StreamFrames(frames()):
        out.append(r)
        if on_result is not None:
            on_result(r)
    return out


def _wait_workers_see_gallery(srv: FaceEngineServer, templates: int) -> None:
    """Block until every worker's gallery replica holds the enrolment (their tracks embed once early on)."""
    deadline = time.time() + 30
    while time.time() < deadline:
        if all(w.get("gallery_templates") == templates for w in srv.engine.worker_info()):
            return
        time.sleep(0.2)
    raise AssertionError(f"workers never saw {templates} templates: {srv.engine.worker_info()}")


def _matched(results: list[pb.FrameResult], person: str) -> list[pb.FrameResult]:
    return [r for r in results if any(f.match.person_id == person for f in r.faces)]


def test_cluster_serves_cameras_from_workers(cfg: Config, local_ray: None) -> None:
    srv = FaceEngineServer(_cluster_cfg(cfg)).start()
    try:
        c = Client(srv.address)
        c.ensure_watchlist("vip")
        c.enroll("vip", "obama", [(IMAGES / "obama.jpg").read_bytes()], "Barack Obama")
        for cam in ("gate-1", "gate-2"):
            c.ensure_push_camera(cam)
        _wait_workers_see_gallery(srv, 1)
        events: list[pb.MatchEvent] = []
        subscribed = threading.Event()

        def follow() -> None:
            stream = c.matches.SubscribeMatches(pb.MatchFilter())
            subscribed.set()
            try:
                for e in stream:
                    events.append(e)
            except grpc.RpcError:
                pass

        threading.Thread(target=follow, daemon=True).start()
        assert subscribed.wait(5)
        time.sleep(0.3)
        jpg = _scene()
        results: dict[str, list[pb.FrameResult]] = {}
        threads = [threading.Thread(target=lambda cam=cam: results.__setitem__(cam, _stream(c, cam, jpg, 20, 0.1)))
                   for cam in ("gate-1", "gate-2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        drop = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        for cam in ("gate-1", "gate-2"):
            rs = results[cam]
            assert len(rs) == 20
            assert all(r.error.code == drop for r in rs if r.HasField("error")), [r.error for r in rs]
            ok = [r for r in rs if not r.HasField("error")]
            assert len(ok) >= 10 and all(len(r.faces) >= 2 for r in ok)  # Obama and Biden found in every frame
            assert _matched(rs, "obama"), f"{cam}: obama never matched"
            assert not any(f.match.person_id and f.match.person_id != "obama" for r in rs for f in r.faces)
        info = srv.engine.worker_info()
        served = {cam for w in info for cam in w["cameras"]}
        assert served == {"gate-1", "gate-2"}
        assert len({w["pid"] for w in info}) == 2 and all(len(w["cameras"]) == 1 for w in info)
        # each worker decodes its frames with the decoders [decode] picks (auto: cpu without a GPU)
        assert all(w["decoders"]["jpeg"] in ("cpu", "nvjpeg") and w["decoders"]["video"] for w in info), info
        deadline = time.time() + 5
        while time.time() < deadline and {e.camera_id for e in events} != {"gate-1", "gate-2"}:
            time.sleep(0.1)
        assert {e.camera_id for e in events} == {"gate-1", "gate-2"}
        stored = c.matches.QueryMatches(pb.QueryMatchesRequest(person_id="obama")).events
        assert {e.camera_id for e in stored} == {"gate-1", "gate-2"}
    finally:
        srv.stop(grace=1)


class _CountingHandle:
    """A worker actor handle that counts which actor methods the front end calls (and forwards them)."""

    def __init__(self, handle: object) -> None:
        self.handle = handle
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> object:
        self.calls[name] += 1
        return getattr(self.handle, name)


def test_frames_for_a_pull_camera_are_refused_without_a_worker_call(cfg: Config, local_ray: None) -> None:
    """The ingest check answers from the front end's own camera table: a frame sent to a pull camera is
    refused without asking its worker; GetCamera still reads the worker's live counters."""
    srv = FaceEngineServer(_fake_runner(_cluster_cfg(cfg, workers=1))).start()
    try:
        c = Client(srv.address)
        c.cameras.AddCamera(pb.AddCameraRequest(camera_id="rtsp-cam", uri="rtsp://127.0.0.1:9/none",
                                                options={"backoff_s": "0.5", "timeout_s": "2"}))
        worker = srv.engine._workers[0]
        real = worker.handle
        spy = worker.handle = _CountingHandle(real)
        jpg = _scene()
        frames = [pb.Frame(camera_id="rtsp-cam", sequence=i, capture_time=time.time(), encoded=jpg)
                  for i in range(1, 6)]
        results = list(c.stream(iter(frames)))
        assert [r.error.code_name for r in results] == ["INVALID_ARGUMENT"] * 5
        assert all("is a pull camera" in r.error.message for r in results)
        assert spy.calls["camera_status"] == 0, spy.calls
        cam = c.cameras.GetCamera(pb.CameraRequest(camera_id="rtsp-cam"))
        assert cam.kind == "pull" and spy.calls["camera_status"] == 1, spy.calls
        c.cameras.AddCamera(pb.AddCameraRequest(camera_id="rtsp-cam-2", uri="rtsp://127.0.0.1:9/other",
                                                options={"backoff_s": "0.5", "timeout_s": "2"}))
        listed = {x.camera_id: x for x in c.cameras.ListCameras(pb.ListCamerasRequest()).cameras}
        assert set(listed) == {"rtsp-cam", "rtsp-cam-2"}
        assert spy.calls["camera_status"] == 3, spy.calls  # ListCameras: one status call per pull camera
        worker.handle = real  # stop() kills the actor by its real handle
    finally:
        srv.stop(grace=1)


def test_worker_killed_mid_stream_cameras_move_and_no_event_is_lost(cfg: Config, local_ray: None) -> None:
    srv = FaceEngineServer(_cluster_cfg(cfg)).start()
    try:
        c = Client(srv.address)
        c.ensure_watchlist("vip")
        c.enroll("vip", "obama", [(IMAGES / "obama.jpg").read_bytes()], "Barack Obama")
        c.ensure_push_camera("door")
        _wait_workers_see_gallery(srv, 1)
        eng = srv.engine
        victim = eng.camera("door").worker
        killed = threading.Event()
        before_kill: list[str] = []

        def on_result(r: pb.FrameResult) -> None:
            ids = [f.match.event_id for f in r.faces if f.match.event_id]
            if r.sequence >= 10 and ids and not killed.is_set():  # a match acknowledged, then the kill
                before_kill.extend(ids)
                ray.kill(eng.workers()[victim], no_restart=False)
                killed.set()

        rs = _stream(c, "door", _scene(), 80, gap=0.1, on_result=on_result)
        assert killed.is_set() and before_kill
        unavailable, drop = grpc.StatusCode.UNAVAILABLE.value[0], grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        codes = [r.error.code for r in rs if r.HasField("error")]
        assert set(codes) <= {unavailable, drop}, codes  # frames in flight: UNAVAILABLE; overload: dropped
        # after the failure the camera is served by the other worker: the last frames are processed and match
        tail = rs[-20:]
        assert not [r.sequence for r in tail if r.error.code == unavailable]
        assert len([r for r in tail if not r.HasField("error")]) >= 5
        assert _matched(tail, "obama")
        assert eng.camera("door").worker != victim and eng.camera("door").moves == 1
        # every event a result acknowledged is in the store, before the kill and after it
        acked = {f.match.event_id for r in rs for f in r.faces if f.match.event_id}
        stored = {e.event_id for e in c.matches.QueryMatches(pb.QueryMatchesRequest(camera_id="door")).events}
        assert set(before_kill) <= stored and acked <= stored
        assert len(acked - set(before_kill)) >= 1  # a new track (new event) after the move
        # Ray restarts the killed actor: it comes back and serves again
        deadline = time.time() + 60
        while time.time() < deadline and eng.live_workers() < len(eng.workers()):
            time.sleep(0.5)
        assert eng.live_workers() == len(eng.workers())
    finally:
        srv.stop(grace=1)


def test_two_node_cluster_serves_cameras_on_both_nodes(cfg: Config) -> None:
    from ray.cluster_utils import Cluster

    from engine.cluster.frontend import ClusterEngine
    from engine.cluster.worker import WireFrame
    from engine.gallery.gallery import Gallery
    from engine.store.sqlite import SQLiteStore
    from engine.vision.analyzer import FaceAnalyzer

    if ray.is_initialized():
        ray.shutdown()
    cfg = _fake_runner(_cluster_cfg(cfg))
    analyzer = FaceAnalyzer.from_config(cfg)
    store = SQLiteStore(cfg.store.path)
    gallery = Gallery(store, analyzer.dim, analyzer.model_name)
    gallery.ensure_watchlist("vip")
    face = analyzer.largest_face(cv2.imread(str(IMAGES / "obama.jpg")))[1]
    gallery.enroll("vip", "obama", face[None], "Barack Obama")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        eng = ClusterEngine(cfg)
        for cam in ("n-1", "n-2"):
            eng.add_camera(cam)
        eng.start()
        info = eng.worker_info()
        assert len({w["node_id"] for w in info}) == 2  # one worker per node (each node has one CPU)
        jpg = _scene()
        got: dict[str, list] = {"n-1": [], "n-2": []}
        done = threading.Semaphore(0)
        for i in range(1, 7):
            for cam in got:
                eng.submit_wire(WireFrame(cam, i, time.time() + i * 0.04, encoded=jpg),
                                lambda o, cam=cam: (got[cam].append(o), done.release()))
        for _ in range(12):
            assert done.acquire(timeout=120)
        for cam, outs in got.items():
            assert all(o.error is None for o in outs), [str(o.error) for o in outs]
            assert any(f.match is not None and f.match.person_id == "obama" for o in outs for f in o.faces), cam
        assert {cam for w in eng.worker_info() for cam in w["cameras"]} == {"n-1", "n-2"}
        eng.stop(drain_s=1)
    finally:
        ray.shutdown()
        cluster.shutdown()
        store.close()


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1", "no-port-here"])
def test_unreachable_or_malformed_ray_address_fails_fast_naming_it(cfg: Config, analyzer, address: str) -> None:  # noqa: ANN001
    from engine.errors import ConfigError

    if ray.is_initialized():
        ray.shutdown()
    cfg = _cluster_cfg(cfg)
    cfg.cluster.address = address
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=address.split("://")[-1]):
        FaceEngineServer(cfg, analyzer=analyzer)
    assert time.monotonic() - t0 < 10
