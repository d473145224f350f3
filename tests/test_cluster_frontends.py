"""Several cluster front ends over one PostgreSQL: a camera served through one front end has its events
delivered to live subscribers of every front end (the store's LISTEN/NOTIFY change feed relays them).

The fake inference runner (canned faces, one embedding) drives the workers: what is tested is the cluster's
orchestration and the shared store, not recognition, so no real model runs and the test stays fast."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import pytest

from engine.client import Client, encode_jpeg
from engine.config import Config
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from tests.shared_data import IMAGES

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="cluster mode needs Ray: pip install -e '.[cluster]'")


def _frontend_cfg(tmp_path: Path, pg_url: str, name: str) -> Config:
    cfg = Config.load(env={})
    cfg.update({"runtime": {"runner": "fake"}, "pipeline": {"motion_gating": False},
                "store": {"url": pg_url, "path": str(tmp_path / f"{name}.db")},
                "server": {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "event_relay_s": 0.2},
                "auth": {"enabled": False},
                "cluster": {"address": "local", "workers": 1, "cpus_per_worker": 0.5}},
               source=f"test front end {name}")
    return cfg


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    from engine.cluster.runtime import connect

    connect("local", num_cpus=2)
    yield
    ray.shutdown()


class _Follower:
    """A live SubscribeMatches stream on one front end, collecting events in a thread."""

    def __init__(self, client: Client) -> None:
        self.events: list[pb.MatchEvent] = []
        self.stream = client.matches.SubscribeMatches(pb.MatchFilter(camera_ids=["door"]))
        self.stream.initial_metadata()  # sent once the subscription is on the front end's bus
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for e in self.stream:
                self.events.append(e)
        except grpc.RpcError:
            pass


def test_two_front_ends_on_one_postgresql_deliver_a_cameras_events_to_subscribers_of_both(
        tmp_path: Path, pg_url: str, local_ray: None) -> None:
    a = FaceEngineServer(_frontend_cfg(tmp_path, pg_url, "a")).start()
    b = FaceEngineServer(_frontend_cfg(tmp_path, pg_url, "b")).start()
    try:
        ca, cb = Client(a.address), Client(b.address)
        ca.ensure_watchlist("vip")
        ca.enroll("vip", "someone", [(IMAGES / "obama.jpg").read_bytes()], "Someone")  # the fake embeds any face
        ca.ensure_push_camera("door")  # a gateway's camera, served through front end A and its worker
        followers = {"a": _Follower(ca), "b": _Follower(cb)}
        jpg = encode_jpeg(cv2.resize(cv2.imread(str(IMAGES / "obama.jpg")), (320, 240)))

        def frames() -> Iterator[pb.Frame]:
            for i in range(1, 16):
                yield pb.Frame(camera_id="door", sequence=i, capture_time=time.time(), encoded=jpg)
                time.sleep(0.05)

        results = list(ca.stream(frames()))
        matched = {f.match.event_id for r in results for f in r.faces if f.match.event_id}
        assert len(matched) == 1, [r.error for r in results]  # one track, one person: one event
        deadline = time.time() + 15
        while time.time() < deadline and not all(f.events for f in followers.values()):
            time.sleep(0.1)
        for name, f in followers.items():
            got = {(e.event_id, e.person_id, e.camera_id) for e in f.events}
            assert got == {(next(iter(matched)), "someone", "door")}, f"subscriber of front end {name}: {got}"
        # B never ran the camera: the event reached its subscriber through the shared store alone
        assert not b.engine.has_camera("door")
        # and both answer history from the one PostgreSQL
        for c in (ca, cb):
            stored = c.matches.QueryMatches(pb.QueryMatchesRequest(camera_id="door")).events
            assert {e.event_id for e in stored} == matched
    finally:
        a.stop(grace=1)
        b.stop(grace=1)
