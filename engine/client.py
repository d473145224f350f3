"""A small Python client for the faceengine gRPC API (used by the CLI, tests and benchmarks)."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np

from engine.service.proto import pb, rpc, srpc


def channel_target(address: str) -> tuple[str, list[tuple[str, object]]]:
    """The gRPC target and options for one front end, or for several ('IP:PORT,IP:PORT'): calls are then
    spread round-robin and a front end that goes away is skipped (a new stream goes to one that is up).
    Several front ends by host name: give one DNS name that resolves to all of them."""
    parts = [a.strip() for a in address.split(",") if a.strip()]
    if len(parts) <= 1:
        return address, []
    v6 = [p.startswith("[") for p in parts]
    if any(v6) and not all(v6):
        raise ValueError(f"front-end list {address!r} mixes IPv4 and IPv6 addresses")
    for p in parts:
        host = p.rsplit(":", 1)[0].strip("[]")
        if not host.replace(".", "").replace(":", "").isalnum() or not any(ch.isdigit() for ch in host):
            raise ValueError(f"front-end list {address!r}: {p!r} is not IP:PORT (for host names use one DNS name "
                             "that resolves to every front end)")
    scheme = "ipv6" if all(v6) else "ipv4"
    return f"{scheme}:{','.join(parts)}", [("grpc.lb_policy_name", "round_robin")]


class Client:
    def __init__(self, address: str, token: str | None = None, ca_cert: str | None = None,
                 client_cert: str | None = None, client_key: str | None = None,
                 max_message_bytes: int = 64 * 1024 * 1024) -> None:
        address, lb = channel_target(address)
        opts = [("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes), *lb]
        if ca_cert:
            creds = grpc.ssl_channel_credentials(
                Path(ca_cert).read_bytes(),
                Path(client_key).read_bytes() if client_key else None,
                Path(client_cert).read_bytes() if client_cert else None)
            self.channel = grpc.secure_channel(address, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(address, options=opts)
        token = token if token is not None else os.environ.get("FACEENGINE_TOKEN", "")
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.ingest = rpc.IngestStub(self.channel)
        self.cameras = rpc.CamerasStub(self.channel)
        self.watchlists = rpc.WatchlistsStub(self.channel)
        self.matches = rpc.MatchesStub(self.channel)
        self.admin = rpc.AdminStub(self.channel)
        self.sightings = srpc.SightingsStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # convenience wrappers ----------------------------------------------------------------------
    def ensure_push_camera(self, camera_id: str) -> None:
        """Register a push camera if missing. A gateway token may register the cameras its scope
        names; for any other camera it gets PERMISSION_DENIED, whose message says what an admin must
        run (raised: streaming into a camera it may not feed would fail anyway)."""
        try:
            self.cameras.AddCamera(pb.AddCameraRequest(camera_id=camera_id, uri="push"), metadata=self.metadata)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

    def ensure_watchlist(self, name: str) -> None:
        try:
            self.watchlists.CreateWatchlist(pb.CreateWatchlistRequest(name=name), metadata=self.metadata)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

    def enroll(self, watchlist: str, person_id: str, images: list[bytes], name: str = "",
               metadata: dict[str, str] | None = None, replace: bool = False, strict: bool = False,
               add_to_existing: bool = False) -> pb.Person:
        """Enrol from photos; the reply's `notes` say when the dominant one of several faces was taken
        (comparable faces are refused, naming their boxes; strict=True refuses any second face)."""
        return self.watchlists.EnrollPerson(pb.EnrollPersonRequest(
            watchlist=watchlist, person_id=person_id, display_name=name, metadata=metadata or {},
            images=[pb.Image(encoded=b) for b in images], replace=replace, strict=strict,
            add_to_existing=add_to_existing), metadata=self.metadata)

    def stream(self, frames: Iterator[pb.Frame]) -> Iterator[pb.FrameResult]:
        return self.ingest.StreamFrames(frames, metadata=self.metadata)


def video_frames(source: str, camera_id: str, realtime: bool = True, loop: bool = False, max_frames: int = 0,
                 jpeg_quality: int = 85, stop: threading.Event | None = None) -> Iterator[pb.Frame]:
    """Read a video file, RTSP URL or webcam index and yield JPEG-encoded Frames.

    The source is opened here, before the first frame is asked for, so a missing file or a source OpenCV
    cannot open raises OSError to the caller instead of failing later inside a gRPC request thread."""
    if not source.isdigit() and "://" not in source and not Path(source).is_file():
        raise OSError(f"{source}: no such file")
    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        cap.release()
        raise OSError(f"cannot open video source {source}")
    return _read_frames(cap, camera_id, realtime, loop, max_frames, jpeg_quality, stop)


def _read_frames(cap: cv2.VideoCapture, camera_id: str, realtime: bool, loop: bool, max_frames: int,
                 jpeg_quality: int, stop: threading.Event | None) -> Iterator[pb.Frame]:
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    seq, t0, last = 0, time.monotonic(), None
    try:
        while not (stop and stop.is_set()):
            ok, frame = cap.read()
            if not ok:
                if loop and seq:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, frame = cap.read()
                    if not ok and last is not None:  # a still image cannot rewind: send it again
                        ok, frame = True, last
                if not ok:
                    break
            last = frame
            seq += 1
            if realtime:
                ahead = seq / fps - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            yield pb.Frame(camera_id=camera_id, sequence=seq, capture_time=time.time(), encoded=buf.tobytes())
            if max_frames and seq >= max_frames:
                break
    finally:
        cap.release()


class FrameFeeder:
    """An iterator of frames fed from another thread (for tests and interactive gateways)."""

    def __init__(self) -> None:
        self._q: queue.Queue[pb.Frame | None] = queue.Queue()

    def put(self, frame: pb.Frame) -> None:
        self._q.put(frame)

    def close(self) -> None:
        self._q.put(None)

    def __iter__(self) -> Iterator[pb.Frame]:
        while True:
            f = self._q.get()
            if f is None:
                return
            yield f


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
