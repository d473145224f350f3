"""The Prometheus endpoint scraped over HTTP while real frames flow, and batched detection
(`pipeline.batch_size > 1`) end to end over gRPC, with real models and real media."""

from __future__ import annotations

import threading
import time
import urllib.error

import cv2
import grpc
import numpy as np
import pytest

from engine.client import Client, encode_jpeg
from engine.config import Config
from engine.service.auth import create_token
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from engine.vision.detections import box_iou
from engine.vision.image import decode_image
from tests.procs import free_port, metric, scrape, wait_for
from tests.shared_data import IMAGES, VIDEOS, first_frames
from tests.test_service import _frames, _scene, make_cfg


def _total(samples: dict, name: str) -> float:
    """Sum of a sample over all its label values."""
    return sum(v for (n, _), v in samples.items() if n == name)


def test_metrics_endpoint_counts_frames_faces_matches_and_errors(cfg: Config, analyzer) -> None:  # noqa: ANN001
    cfg = make_cfg(cfg)
    # every frame detected whole, so each stage counts each frame (the gated path: tests/test_gating.py)
    cfg.pipeline.motion_gating = False
    cfg.pipeline.detect_interval = cfg.pipeline.max_detect_interval = 1
    port = free_port()
    cfg.server.metrics_port = port
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        before = scrape(port)
        assert metric(before, "faceengine_frames_in_total", camera="m-cam") == 0
        assert _total(before, "faceengine_faces_total") == 0
        with Client(srv.address) as c:
            c.ensure_watchlist("vip")
            c.enroll("vip", "obama", [(IMAGES / "obama.jpg").read_bytes()], "Barack Obama")
            c.ensure_push_camera("m-cam")
            results = list(c.stream(_frames("m-cam", 6, _scene(), gap=0.03)))
            junk = list(c.stream(iter([pb.Frame(camera_id="m-cam", sequence=7, encoded=b"\xff\xd8 not a jpeg")])))
        assert [r.HasField("error") for r in results] == [False] * 6 and junk[0].error.code_name == "INVALID_ARGUMENT"
        faces = sum(len(r.faces) for r in results)
        assert faces == 18  # three people in each frame

        def settled() -> bool:
            return metric(scrape(port), "faceengine_frames_processed_total", camera="m-cam") == 6

        assert wait_for(settled, 10)
        after = scrape(port)
        assert metric(after, "faceengine_frames_in_total", camera="m-cam") == 6
        assert metric(after, "faceengine_frames_dropped_total", camera="m-cam") == 0
        assert _total(after, "faceengine_faces_total") == faces
        assert _total(after, "faceengine_embeddings_total") >= 1  # best shots only, at least one a track
        assert metric(after, "faceengine_matches_total", kind="new") == 1  # one event for the one match
        assert _total(after, "faceengine_frame_errors_total") == 1  # the junk frame
        assert metric(after, "faceengine_frame_latency_seconds_count") == 6
        assert metric(after, "faceengine_stage_seconds_count", stage="detect") >= 6
        # the stages `faceengine bench` reports: decode (gRPC JPEG), the detect split, track, record
        for stage in ("decode", "preprocess", "detect_model", "detect_post", "track", "align", "record"):
            assert metric(after, "faceengine_stage_seconds_count", stage=stage) >= 6, stage
        assert metric(after, "faceengine_stage_seconds_sum", stage="detect_model") > 0
        assert metric(after, "faceengine_batch_frames_count") == metric(after, "faceengine_batch_frames_sum") == 6
        assert metric(after, "faceengine_active_streams") == 0  # both streams closed
    finally:
        srv.stop(grace=1)
    # stopping the server frees the endpoint, so a new server in this process can serve on the same port
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        assert metric(scrape(port), "faceengine_frames_in_total", camera="m-cam") == 0  # a fresh registry
    finally:
        srv.stop(grace=1)


def test_rpcs_ending_in_error_are_counted_by_method_and_code(cfg: Config, analyzer) -> None:  # noqa: ANN001
    """faceengine_rpc_errors counts every RPC that ends with an error status, whoever refused it: a servicer
    (unary and streaming replies) or the auth interceptor before any servicer ran. OK calls and per-frame
    errors inside a healthy ingest stream are not RPC errors."""
    cfg = make_cfg(cfg)
    cfg.auth.enabled = True
    port = free_port()
    cfg.server.metrics_port = port
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        token, _ = create_token(srv.store, "admin-1", "admin")
        cams, subscribe = "faceengine.v1.Cameras/GetCamera", "faceengine.v1.Matches/SubscribeMatches"
        listing, ingest = "faceengine.v1.Cameras/ListCameras", "faceengine.v1.Ingest/StreamFrames"
        assert metric(scrape(port), "faceengine_rpc_errors_total", method=cams, code="NOT_FOUND") == 0
        with Client(srv.address, token=token) as c:
            for _ in range(2):
                with pytest.raises(grpc.RpcError) as err:
                    c.cameras.GetCamera(pb.CameraRequest(camera_id="nope"), metadata=c.metadata)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as err:
                list(c.matches.SubscribeMatches(pb.MatchFilter(camera_ids=["nope"]), metadata=c.metadata))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            c.cameras.ListCameras(pb.ListCamerasRequest(), metadata=c.metadata)
            c.ensure_push_camera("e-cam")
            junk = list(c.stream(iter([pb.Frame(camera_id="e-cam", sequence=1, encoded=b"not a jpeg")])))
            assert junk[0].error.code_name == "INVALID_ARGUMENT"  # answered in the stream, the call ends OK
        with Client(srv.address) as anonymous, pytest.raises(grpc.RpcError) as err:
            anonymous.cameras.ListCameras(pb.ListCamerasRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        samples = scrape(port)
        assert metric(samples, "faceengine_rpc_errors_total", method=cams, code="NOT_FOUND") == 2
        assert metric(samples, "faceengine_rpc_errors_total", method=subscribe, code="NOT_FOUND") == 1
        assert metric(samples, "faceengine_rpc_errors_total", method=listing, code="UNAUTHENTICATED") == 1
        errors = {labels: v for (name, labels), v in samples.items() if name == "faceengine_rpc_errors_total"}
        assert sum(errors.values()) == 4, errors  # nothing else: not the OK calls, not the ingest stream
        assert not any(dict(labels)["method"] == ingest for labels in errors)
    finally:
        srv.stop(grace=1)


N_FRAMES = 10
CAMERAS = ("b-1", "b-2", "b-3")


@pytest.fixture(scope="module")
def clip_jpegs() -> list[bytes]:
    """The first frames of the multi-face clip (~7 faces each) at 960x540, JPEG: below the half-size decode
    threshold, so the server detects on exactly the image the reference below decodes."""
    return [encode_jpeg(cv2.resize(frame, (960, 540), interpolation=cv2.INTER_AREA))
            for frame in first_frames(VIDEOS / "multiface_1080p.mp4", N_FRAMES)]


def test_batched_detection_across_cameras_end_to_end(cfg: Config, analyzer, clip_jpegs: list[bytes]) -> None:  # noqa: ANN001
    """With batch_size=4, frames of three cameras streaming at once are detected in shared batches; every
    frame still gets exactly the faces a single-image detection finds, and each camera keeps its own tracks."""
    cfg = make_cfg(cfg)
    port = free_port()
    cfg.server.metrics_port = port
    cfg.pipeline.batch_size = 4
    cfg.pipeline.batch_wait_ms = 100.0
    # cross-camera batches of whole-frame detections (the gated path: tests/test_gating.py)
    cfg.pipeline.motion_gating = False
    cfg.pipeline.detect_interval = cfg.pipeline.max_detect_interval = 1
    cfg.pipeline.queue_size = 2 * N_FRAMES  # the test sends as fast as it can: nothing may be dropped
    reference = [analyzer.detector.detect(decode_image(j)) for j in clip_jpegs]
    assert all(len(r) >= 5 for r in reference)
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    results: dict[str, list[pb.FrameResult]] = {}
    errors: list[BaseException] = []
    try:
        with Client(srv.address) as c:
            for cam in CAMERAS:
                c.ensure_push_camera(cam)
            go = threading.Barrier(len(CAMERAS))

            def send(cam: str) -> None:
                try:
                    go.wait(10)
                    t0 = time.time()
                    frames = (pb.Frame(camera_id=cam, sequence=i + 1, capture_time=t0 + i / 25, encoded=j)
                              for i, j in enumerate(clip_jpegs))
                    results[cam] = list(c.stream(frames))
                except BaseException as exc:  # noqa: BLE001 - reported to the test thread
                    errors.append(exc)

            threads = [threading.Thread(target=send, args=(cam,), daemon=True) for cam in CAMERAS]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        assert not errors and sorted(results) == sorted(CAMERAS), errors
        samples = scrape(port)
    finally:
        srv.stop(grace=1)
    assert all(not r.HasField("error") for res in results.values() for r in res), results

    batches = metric(samples, "faceengine_batch_frames_count")
    batched_frames = metric(samples, "faceengine_batch_frames_sum")
    assert batched_frames == len(CAMERAS) * N_FRAMES
    # frames really were detected together (observed: 30 frames in 8-9 batches; batch_size=1 gives 30 in 30)
    assert batched_frames / batches > 2.5, (batched_frames, batches)
    assert metric(samples, "faceengine_batch_frames_bucket", le="1.0") < batches  # some batches of 2 or more

    for cam in CAMERAS:
        res = results[cam]
        assert [r.sequence for r in sorted(res, key=lambda r: r.sequence)] == list(range(1, N_FRAMES + 1))
        for r in res:
            assert not r.HasField("error"), r.error
            ref = reference[r.sequence - 1]
            boxes = np.array([[f.box.x1, f.box.y1, f.box.x2, f.box.y2] for f in r.faces], np.float32)
            assert len(boxes) == len(ref), (cam, r.sequence)
            assert box_iou(boxes, ref.boxes).max(axis=1).min() > 0.9, (cam, r.sequence)

    def tracks(cam: str) -> list[list[int]]:
        return [sorted(f.track_id for f in r.faces) for r in sorted(results[cam], key=lambda r: r.sequence)]

    # the same frames on three cameras give three identical, independent track histories
    first = tracks(CAMERAS[0])
    assert all(tracks(cam) == first for cam in CAMERAS[1:])
    assert all(tid >= 1 for frame in first for tid in frame)
    assert len({tid for frame in first for tid in frame}) <= max(len(r) for r in reference) + 2  # stable ids
