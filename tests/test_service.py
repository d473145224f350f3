"""gRPC service end to end over loopback, with real models and real photos."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.client import Client, FrameFeeder, encode_jpeg
from engine.config import Config
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from engine.store.base import MatchEvent
from tests.conftest import IMAGES, VIDEOS
from tests.procs import wait_for


def make_cfg(cfg: Config) -> Config:
    cfg.server.host = "127.0.0.1"
    cfg.server.port = 0
    cfg.server.metrics_port = 0
    cfg.auth.enabled = False  # these tests cover the API; roles are tested in test_security
    return cfg


@pytest.fixture()
def server(cfg: Config, analyzer):  # noqa: ANN001, ANN201
    srv = FaceEngineServer(make_cfg(cfg), analyzer=analyzer).start()
    yield srv
    srv.stop(grace=1)


def _scene() -> bytes:
    """A frame where Obama appears beside Biden and a third person (a real photo, 1280 px wide)."""
    img = cv2.imread(str(IMAGES / "obama_and_biden.jpg"))
    return encode_jpeg(cv2.resize(img, (1280, 914)))


def _frames(camera: str, n: int, jpg: bytes, start: int = 1, gap: float = 0.0):  # noqa: ANN202
    for i in range(start, start + n):
        yield pb.Frame(camera_id=camera, sequence=i, capture_time=time.time(), encoded=jpg)
        if gap:
            time.sleep(gap)


def _health(addr: str) -> int:
    with grpc.insecure_channel(addr) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_enroll_stream_subscribe_and_query_after_restart(cfg: Config, analyzer) -> None:  # noqa: ANN001
    cfg = make_cfg(cfg)
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        c = Client(srv.address)
        c.ensure_watchlist("vip")
        person = c.enroll("vip", "obama", [(IMAGES / "obama.jpg").read_bytes()], "Barack Obama", {"unit": "test"})
        assert person.template_count == 1
        c.ensure_push_camera("gate-1")
        stream = c.matches.SubscribeMatches(pb.MatchFilter(camera_ids=["gate-1"]))
        events, ended, t = _follow(stream, lambda e: not e.update)  # cancel at the first new match
        assert _wait(lambda: len(srv.engine.bus) > 0, 10)  # the server has registered the subscription
        results = list(c.stream(_frames("gate-1", 8, _scene(), gap=0.04)))
        t.join(timeout=15)
        assert not t.is_alive() and ended == [grpc.StatusCode.CANCELLED], ended  # ended by our cancel only
        assert len(results) == 8 and all(not r.HasField("error") for r in results)
        assert all(len(r.faces) == 3 for r in results)
        matched = {f.match.person_id for r in results for f in r.faces if f.HasField("match")}
        assert matched == {"obama"}
        track_ids = {f.track_id for f in results[-1].faces}
        assert all(tid >= 0 for tid in track_ids) and track_ids == {f.track_id for f in results[1].faces}
        assert events and events[0].person_id == "obama" and events[0].display_name == "Barack Obama"
        assert events[0].thumbnail[:2] == b"\xff\xd8" and events[0].score > srv.settings.match_threshold
        first_id = events[0].event_id
        c.close()
    finally:
        srv.stop(grace=2)
    srv2 = FaceEngineServer(cfg, analyzer=analyzer).start()  # same SQLite file
    try:
        with Client(srv2.address) as c2:
            got = c2.matches.QueryMatches(pb.QueryMatchesRequest(person_id="obama", include_thumbnails=True))
            assert [e.event_id for e in got.events] == [first_id]  # one event per track and person
            assert got.events[0].thumbnail[:2] == b"\xff\xd8"
            assert c2.matches.QueryMatches(pb.QueryMatchesRequest(camera_id="gate-1", since=time.time() + 60)).events \
                == []
            cams = c2.cameras.ListCameras(pb.ListCamerasRequest()).cameras
            assert [x.camera_id for x in cams] == ["gate-1"]  # registered cameras survive restarts
    finally:
        srv2.stop(grace=1)


def test_bad_frames_get_precise_codes_while_a_healthy_stream_runs(server: FaceEngineServer) -> None:
    c = Client(server.address)
    c.ensure_push_camera("good")
    c.ensure_push_camera("bad")
    jpg = _scene()
    healthy: list[pb.FrameResult] = []
    feeder = FrameFeeder()
    t = threading.Thread(target=lambda: healthy.extend(c.stream(iter(feeder))), daemon=True)
    t.start()
    feeder.put(pb.Frame(camera_id="good", sequence=1, encoded=jpg))

    corrupt = bytearray((IMAGES / "obama.jpg").read_bytes())
    corrupt[200:4000] = b"\x00" * 3800
    bad = [
        pb.Frame(camera_id="bad", sequence=1, encoded=b"\xff\xd8\xff\xe0 not a jpeg"),
        pb.Frame(camera_id="bad", sequence=2, raw=pb.RawImage(width=64, height=64, format="BGR8", data=b"\0" * 100)),
        pb.Frame(camera_id="bad", sequence=3, raw=pb.RawImage(width=0, height=0, format="BGR8", data=b"")),
        pb.Frame(camera_id="nope", sequence=4, encoded=jpg),
        pb.Frame(camera_id="bad", sequence=5, encoded=bytes(corrupt[: len(corrupt) // 50])),
        pb.Frame(camera_id="bad", sequence=6, raw=pb.RawImage(width=9000, height=10, format="GRAY8",
                                                              data=b"\0" * 90000)),
        pb.Frame(camera_id="bad", sequence=7, encoded=jpg),  # still works after the bad ones
    ]
    res = {r.sequence: r for r in c.stream(iter(bad))}
    codes = {s: (r.error.code_name if r.HasField("error") else "OK") for s, r in res.items()}
    assert codes == {1: "INVALID_ARGUMENT", 2: "INVALID_ARGUMENT", 3: "INVALID_ARGUMENT", 4: "NOT_FOUND",
                     5: "INVALID_ARGUMENT", 6: "INVALID_ARGUMENT", 7: "OK"}
    assert "needs 12288 bytes, got 100" in res[2].error.message
    assert "0x0" in res[3].error.message
    assert len(res[7].faces) == 3
    # an oversized message ends only its own call, with RESOURCE_EXHAUSTED
    huge = pb.Frame(camera_id="bad", sequence=8, encoded=b"\xff" * (server.cfg.limits.max_message_bytes + 1024))
    with pytest.raises(grpc.RpcError) as err:
        list(c.stream(iter([huge])))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    feeder.put(pb.Frame(camera_id="good", sequence=2, encoded=jpg))
    feeder.close()
    t.join(timeout=30)
    assert [r.sequence for r in healthy] == [1, 2] and all(not r.HasField("error") for r in healthy)
    assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING


def test_watchlist_errors_map_to_codes(server: FaceEngineServer) -> None:
    c = Client(server.address)
    c.ensure_watchlist("w")

    def code(fn, *a) -> grpc.StatusCode:  # noqa: ANN001
        with pytest.raises(grpc.RpcError) as err:
            fn(*a)
        return err.value.code(), err.value.details()

    blank = encode_jpeg(np.full((300, 300, 3), 127, np.uint8))
    assert code(c.enroll, "w", "x", [blank])[0] == grpc.StatusCode.INVALID_ARGUMENT
    status, details = code(c.enroll, "w", "x", [(IMAGES / "multiface.jpg").read_bytes()], "", None, False, True)
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "6 faces found" in details  # strict mode refuses
    status, details = code(c.enroll, "w", "x", [(IMAGES / "obama.jpg").read_bytes(), b"junk"])
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "image 2 of 2" in details
    assert code(c.enroll, "missing", "x", [(IMAGES / "obama.jpg").read_bytes()])[0] == grpc.StatusCode.NOT_FOUND
    assert code(c.watchlists.GetPerson, pb.PersonRequest(watchlist="w", person_id="x"))[0] == \
        grpc.StatusCode.NOT_FOUND
    assert code(c.watchlists.CreateWatchlist, pb.CreateWatchlistRequest(name="w"))[0] == \
        grpc.StatusCode.ALREADY_EXISTS
    assert code(c.cameras.RemoveCamera, pb.CameraRequest(camera_id="x"))[0] == grpc.StatusCode.NOT_FOUND
    # failed enrolments left nothing behind
    assert c.watchlists.ListPersons(pb.ListPersonsRequest(watchlist="w")).persons == []
    # by default a group photo with no dominant face is refused too, naming the comparable faces' boxes
    status, details = code(c.enroll, "w", "group", [(IMAGES / "multiface.jpg").read_bytes()])
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "6 faces found and none dominates: boxes [" in details
    assert c.watchlists.ListPersons(pb.ListPersonsRequest(watchlist="w")).persons == []


def test_search_verify_and_person_lifecycle(server: FaceEngineServer) -> None:
    c = Client(server.address)
    c.ensure_watchlist("vip")
    c.enroll("vip", "obama", [(IMAGES / "obama.jpg").read_bytes()], "Barack Obama")
    c.enroll("vip", "biden", [(IMAGES / "biden.jpg").read_bytes()], "Joe Biden")
    r = c.matches.SearchByImage(pb.SearchRequest(image=pb.Image(encoded=(IMAGES / "obama2.jpg").read_bytes()),
                                                 top_k=2))
    assert r.hits[0].person_id == "obama" and r.hits[0].is_match
    assert len(r.hits) == 2 and not r.hits[1].is_match
    v = c.matches.Verify(pb.VerifyRequest(image_a=pb.Image(encoded=(IMAGES / "obama.jpg").read_bytes()),
                                          image_b=pb.Image(encoded=(IMAGES / "obama2.jpg").read_bytes())))
    assert v.same_person and v.score > v.threshold
    v = c.matches.Verify(pb.VerifyRequest(image_a=pb.Image(encoded=(IMAGES / "obama.jpg").read_bytes()),
                                          image_b=pb.Image(encoded=(IMAGES / "biden.jpg").read_bytes())))
    assert not v.same_person
    removed = c.watchlists.RemovePerson(pb.PersonRequest(watchlist="vip", person_id="obama"))
    assert removed.templates_removed == 1
    r = c.matches.SearchByImage(pb.SearchRequest(image=pb.Image(encoded=(IMAGES / "obama2.jpg").read_bytes()),
                                                 top_k=5))
    assert all(h.person_id != "obama" for h in r.hits)
    persons = c.watchlists.ListPersons(pb.ListPersonsRequest(watchlist="vip")).persons
    assert [p.person_id for p in persons] == ["biden"]


def _follow(stream: grpc.Call, stop_at: Callable[[pb.MatchEvent], bool]) -> tuple[
        list[pb.MatchEvent], list[grpc.StatusCode | BaseException], threading.Thread]:
    """Read a SubscribeMatches stream in a thread until `stop_at(event)` says to cancel it.

    Returns (events, how the stream ended, thread): the status code it ended with (CANCELLED after our own
    cancel; OK if the server closed it) or the exception raised. Callers assert on these in the test thread,
    where a failure fails the test (an assert inside a thread would only print a warning)."""
    events: list[pb.MatchEvent] = []
    ended: list[grpc.StatusCode | BaseException] = []

    def run() -> None:
        try:
            for e in stream:
                events.append(e)
                if stop_at(e):
                    stream.cancel()
            ended.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            ended.append(exc.code())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            ended.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return events, ended, t


_wait = wait_for  # poll until true, 20 s by default


def test_pull_camera_reports_deleted_and_truncated_files(server: FaceEngineServer, tmp_path: Path) -> None:
    c = Client(server.address)
    server.cfg.cameras.file_roots = [str(tmp_path)]  # file cameras only from configured folders
    video = tmp_path / "cam.mp4"
    shutil.copy(VIDEOS / "stage_360p.mp4", video)
    opts = {"realtime": "true", "loop": "true", "backoff_s": "0.5"}  # the floor (sources.MIN_BACKOFF_S)
    c.cameras.AddCamera(pb.AddCameraRequest(camera_id="file-cam", uri=str(video), options=opts))

    def cam() -> pb.Camera:  # what an operator sees in ListCameras
        return next(x for x in c.cameras.ListCameras(pb.ListCamerasRequest()).cameras if x.camera_id == "file-cam")

    assert _wait(lambda: cam().frames_processed >= 5), cam()
    video.unlink()  # deleted mid-stream: the open file plays out, then reopening fails
    assert _wait(lambda: "no such file" in cam().last_error and cam().reconnects >= 2, 40), cam()
    assert cam().state == "retrying"
    # the file comes back truncated: the error says so and the camera keeps retrying
    data = (VIDEOS / "stage_360p.mp4").read_bytes()
    video.write_bytes(data[: len(data) // 3])
    before = cam().reconnects
    assert _wait(lambda: cam().reconnects > before + 1 and "no such file" not in cam().last_error, 40), cam()
    assert cam().last_error
    assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING
    c.cameras.RemoveCamera(pb.CameraRequest(camera_id="file-cam"))
    assert c.cameras.ListCameras(pb.ListCamerasRequest()).cameras == []


def test_overload_drops_are_counted_and_reported(cfg: Config, analyzer) -> None:  # noqa: ANN001
    cfg = make_cfg(cfg)
    cfg.pipeline.queue_size = 2
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        c = Client(srv.address)
        c.ensure_push_camera("busy")
        results = list(c.stream(_frames("busy", 40, _scene())))  # as fast as possible
        assert len(results) == 40  # every frame is answered: processed or dropped
        dropped = [r for r in results if r.HasField("error")]
        assert dropped and all(r.error.code_name == "RESOURCE_EXHAUSTED" for r in dropped)
        assert max(r.drops.frames_dropped for r in results) == len(dropped)  # reported in-band
        status = c.cameras.GetCamera(pb.CameraRequest(camera_id="busy"))
        assert status.frames_dropped == len(dropped) and status.frames_in == 40
        assert status.frames_processed + status.frames_dropped == 40
    finally:
        srv.stop(grace=1)


def test_large_jpeg_frames_decoded_reduced_report_original_coordinates(server: FaceEngineServer, analyzer) -> None:  # noqa: ANN001
    """1080p JPEG frames are detected on a half-size DCT decode; boxes still come back in original pixels
    and best shots are embedded from the full-resolution frame."""
    from engine.vision.detections import box_iou
    from engine.vision.image import decode_for_detection, decode_image

    cap = cv2.VideoCapture(str(VIDEOS / "multiface_1080p.mp4"))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape[:2] == (1080, 1920)
    jpg = encode_jpeg(frame)
    small, scale, loader = decode_for_detection(jpg, 2 * server.cfg.detector.input_size)
    assert small.shape[:2] == (540, 960) and scale == 2.0 and loader is not None
    assert np.array_equal(loader(), decode_image(jpg))
    reference = analyzer.detector.detect(decode_image(jpg))
    c = Client(server.address)
    c.ensure_push_camera("hd")
    res = list(c.stream(_frames("hd", 3, jpg)))
    assert all(not r.HasField("error") for r in res)
    boxes = np.array([[f.box.x1, f.box.y1, f.box.x2, f.box.y2] for f in res[-1].faces], np.float32)
    assert len(boxes) == len(reference)
    assert box_iou(boxes, reference.boxes).max(axis=1).min() > 0.8


def test_unreachable_rtsp_camera_reports_and_retries(server: FaceEngineServer) -> None:
    c = Client(server.address)
    c.cameras.AddCamera(pb.AddCameraRequest(camera_id="rtsp-cam", uri="rtsp://127.0.0.1:9/none",
                                            options={"backoff_s": "0.5", "timeout_s": "2"}))

    def cam() -> pb.Camera:
        return next(x for x in c.cameras.ListCameras(pb.ListCamerasRequest()).cameras if x.camera_id == "rtsp-cam")

    assert _wait(lambda: cam().reconnects >= 2 and "cannot open" in cam().last_error, 30), cam()
    assert cam().state in ("retrying", "connecting") and cam().kind == "pull"
    assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_engine_processes_share_gallery_and_live_matches(cfg: Config, analyzer, backend: str,  # noqa: ANN001
                                                             request: pytest.FixtureRequest) -> None:
    """Scale-out: two servers on one store. A person enrolled through A is matched by B, and A's live
    subscribers receive B's match (relayed from the shared event store). On PostgreSQL both arrive by
    LISTEN/NOTIFY: B's gallery has the person within 1 s and the relay's poll is switched off."""
    cfg = make_cfg(cfg)
    if backend == "postgresql":
        cfg.store.url = request.getfixturevalue("pg_url")
        cfg.server.event_relay_s = 600.0  # polling would be far too late: only the notification can relay
    a = FaceEngineServer(cfg, analyzer=analyzer).start()
    b = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        ca, cb = Client(a.address), Client(b.address)
        ca.ensure_watchlist("vip")
        ca.enroll("vip", "obama", [(IMAGES / "obama.jpg").read_bytes()], "Barack Obama")
        cb.ensure_push_camera("b-cam")
        got, ended, t = _follow(ca.matches.SubscribeMatches(pb.MatchFilter(camera_ids=["b-cam"])), lambda e: True)
        assert _wait(lambda: len(a.engine.bus) > 0, 10)  # A has registered the subscription
        if backend == "postgresql":
            assert _wait(lambda: len(b.gallery) == 1, 1.0)  # pushed to B, not polled
        else:  # B's gallery picks up A's enrolment at its next version check (at most every second)
            photo = pb.SearchRequest(image=pb.Image(encoded=(IMAGES / "obama2.jpg").read_bytes()), top_k=1)
            assert _wait(lambda: [h.person_id for h in cb.matches.SearchByImage(photo).hits] == ["obama"], 10)
        results = list(cb.stream(_frames("b-cam", 4, _scene(), gap=0.05)))
        assert {f.match.person_id for r in results for f in r.faces if f.HasField("match")} == {"obama"}
        t.join(timeout=10)
        assert not t.is_alive() and ended == [grpc.StatusCode.CANCELLED], ended
        assert got and got[0].person_id == "obama" and got[0].camera_id == "b-cam"
    finally:
        b.stop(grace=1)
        a.stop(grace=1)


def test_health_follows_a_postgres_restart(cfg: Config, analyzer, pg_server, pg_url: str) -> None:  # noqa: ANN001
    """PostgreSQL restarted: health turns NOT_SERVING while it is down, SERVING once the engine has
    reconnected, and calls work again."""
    cfg = make_cfg(cfg)
    cfg.store.url = pg_url
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        assert _health(srv.address) == health_pb2.HealthCheckResponse.SERVING
        pg_server.checkpoint()  # quick crash recovery on a busy machine
        pg_server.stop("immediate")
        try:
            assert _wait(lambda: _health(srv.address) == health_pb2.HealthCheckResponse.NOT_SERVING, 10)
        finally:
            pg_server.start_again()
        assert _wait(lambda: _health(srv.address) == health_pb2.HealthCheckResponse.SERVING, 60)
        Client(srv.address).ensure_watchlist("after-restart")
        assert [w.name for w in srv.store.list_watchlists()] == ["after-restart"]
    finally:
        srv.stop(grace=1)


def test_a_subscriber_learns_when_its_subscription_is_in_place(server: FaceEngineServer) -> None:
    """SubscribeMatches sends its initial metadata once the subscription is on the bus (not with the first event),
    so a client that waits for it misses no event published afterwards: the console says "live" on it."""
    with Client(server.address) as c:
        call = c.matches.SubscribeMatches(pb.MatchFilter(), timeout=30)
        try:
            with ThreadPoolExecutor(1) as pool:
                pool.submit(call.initial_metadata).result(timeout=10)  # no event has been published yet
            ev = MatchEvent(uuid.uuid4().hex, "cam-x", time.time(), "vip", "p1", "P One", 0.9, (1.0, 2.0, 30.0, 40.0))
            server.engine.bus.publish(ev, False)
            assert next(call).event_id == ev.event_id
        finally:
            call.cancel()
