"""Sightings end to end over gRPC with real models and real media: a person nobody enrolled walks
through a real clip; a different photo of them finds their track; a stranger finds nothing."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator

import cv2
import grpc
import numpy as np
import pytest

from engine.cli.main import main as cli
from engine.client import Client, encode_jpeg
from engine.config import Config
from engine.service.auth import create_token
from engine.service.proto import pb, spb
from engine.service.server import FaceEngineServer
from tests.conftest import IMAGES, VIDEOS

CLIP = VIDEOS / "stage_360p.mp4"
STREAMED = range(0, 176, 2)  # every other frame before the held-out part (178-219 show the performer)
QUERY_FRAME = 200
FPS = 29.97


def sightings_cfg(cfg: Config) -> Config:
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    cfg.auth.enabled = False  # roles are tested with tokens below
    cfg.sightings.enabled = True
    cfg.pipeline.queue_size = 256  # every frame of the clip is processed (no drop-oldest)
    return cfg


def _clip(t0: float) -> Iterator[pb.Frame]:
    cap = cv2.VideoCapture(str(CLIP))
    try:
        for i in range(max(STREAMED) + 1):
            ok, frame = cap.read()
            assert ok
            if i in STREAMED:
                yield pb.Frame(camera_id="stage-1", sequence=i, capture_time=t0 + i / FPS, encoded=encode_jpeg(frame))
    finally:
        cap.release()


def _query_photo(analyzer) -> bytes:  # noqa: ANN001
    """The performer's face from a frame that was never streamed, cut with a margin (a different photo)."""
    cap = cv2.VideoCapture(str(CLIP))
    cap.set(cv2.CAP_PROP_POS_FRAMES, QUERY_FRAME)
    ok, frame = cap.read()
    cap.release()
    assert ok
    dets = analyzer.detector.detect(frame)
    x1, y1, x2, y2 = dets.boxes[int(dets.sizes.argmax())][:4]
    w, h = x2 - x1, y2 - y1
    return encode_jpeg(frame[max(0, int(y1 - h)): int(y2 + h), max(0, int(x1 - w)): int(x2 + w)])


@pytest.fixture(scope="module")
def streamed(model_dir, analyzer, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    """The clip streamed once into a fresh store (nobody enrolled); the server is then restarted, so
    the sightings are searched from the store's copy (index rebuilt at start)."""
    cfg = Config.load(env={})
    cfg.models.dir = str(model_dir)
    cfg.store.path = str(tmp_path_factory.mktemp("sightings") / "engine.db")
    sightings_cfg(cfg)
    t0 = time.time() - 600
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        with Client(srv.address) as c:
            c.ensure_push_camera("stage-1")
            results = list(c.stream(_clip(t0)))
        assert len(results) == len(STREAMED) and not any(r.HasField("error") for r in results)
        assert not any(f.HasField("match") for r in results for f in r.faces)  # nobody is enrolled
    finally:
        srv.stop(grace=5)  # ends the open tracks: their sightings are written before the store closes
    return cfg, t0


@pytest.fixture()
def server(streamed, analyzer) -> Iterator[FaceEngineServer]:  # noqa: ANN001
    cfg, _ = streamed
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    yield srv
    srv.stop(grace=1)


def test_a_different_photo_finds_the_unenrolled_persons_track_and_a_stranger_finds_nothing(
        streamed, server: FaceEngineServer, analyzer) -> None:  # noqa: ANN001
    cfg, t0 = streamed
    assert server.sightings is not None and len(server.sightings.index) >= 2  # several tracks were kept
    with Client(server.address) as c:
        found = c.sightings.SearchSightings(spb.SearchSightingsRequest(
            image=pb.Image(encoded=_query_photo(analyzer)), since=t0 - 1, include_thumbnails=True))
        assert found.hits, "the performer's track was not found"
        best = found.hits[0]
        s = best.sighting
        assert s.camera_id == "stage-1" and best.score >= found.threshold > 0
        assert t0 <= s.first_seen <= s.last_seen <= t0 + max(STREAMED) / FPS + 1e-3
        assert s.last_seen - s.first_seen > 1.0  # a track, not one frame
        assert s.thumbnail[:2] == b"\xff\xd8" and s.watchlist == "" and s.person_id == ""
        assert [h.sighting.first_seen for h in found.timeline] == sorted(h.sighting.first_seen for h in found.hits)
        # the best hit is the performer's: the same face the query's frame shows, by the embedder's own measure
        top = server.store.get_sightings([s.sighting_id])[0]
        assert float(top.embedding @ analyzer.largest_face(cv2.imread(str(IMAGES / "obama.jpg")))[1]) < best.score

        stranger = c.sightings.SearchSightings(spb.SearchSightingsRequest(
            image=pb.Image(encoded=(IMAGES / "obama.jpg").read_bytes()), since=t0 - 1))
        assert list(stranger.hits) == [] and stranger.threshold == found.threshold

        # the time range and the cameras narrow the search
        assert not c.sightings.SearchSightings(spb.SearchSightingsRequest(
            image=pb.Image(encoded=_query_photo(analyzer)), until=t0)).hits
        assert not c.sightings.SearchSightings(spb.SearchSightingsRequest(
            image=pb.Image(encoded=_query_photo(analyzer)), camera_ids=["other"])).hits
        # an embedding query gives the same best hit
        by_emb = c.sightings.SearchSightings(spb.SearchSightingsRequest(
            embedding=spb.EmbeddingQuery(values=top.embedding.tolist()), top_k=1))
        assert by_emb.hits[0].sighting.sighting_id == s.sighting_id and by_emb.hits[0].score > 0.99
        with pytest.raises(grpc.RpcError) as err:
            c.sightings.SearchSightings(spb.SearchSightingsRequest(embedding=spb.EmbeddingQuery(values=[1.0, 2.0])))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "128" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            c.sightings.SearchSightings(spb.SearchSightingsRequest())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_sightings_are_off_by_default(cfg: Config, analyzer) -> None:  # noqa: ANN001
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    cfg.auth.enabled = False
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        assert srv.sightings is None and srv.engine.recorder.observer is None
        with Client(srv.address) as c, pytest.raises(grpc.RpcError) as err:
            c.sightings.SearchSightings(spb.SearchSightingsRequest(embedding=spb.EmbeddingQuery(
                values=np.ones(128).tolist())))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "sightings.enabled" in err.value.details()
    finally:
        srv.stop(grace=1)


def test_cli_search_prints_the_timeline_as_json(streamed, server: FaceEngineServer, analyzer, tmp_path,  # noqa: ANN001
                                                capsys: pytest.CaptureFixture[str]) -> None:
    photo = tmp_path / "query.jpg"
    photo.write_bytes(_query_photo(analyzer))
    assert cli(["sightings", "search", str(photo), "--since", "24h", "--json", "--server", server.address,
                "--thumbnails", str(tmp_path / "thumbs")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and all(r["camera_id"] == "stage-1" for r in rows)
    assert [r["first_seen"] for r in rows] == sorted(r["first_seen"] for r in rows)  # a timeline, oldest first
    assert all(open(r["thumbnail"], "rb").read(2) == b"\xff\xd8" for r in rows)
    assert cli(["sightings", "search", str(IMAGES / "obama.jpg"), "--since", "24h", "--server",
                server.address]) == 0
    assert "not seen" in capsys.readouterr().out
    assert cli(["sightings", "search", str(photo), "--since", "1m", "--server", server.address]) == 0
    assert "not seen" in capsys.readouterr().out  # the clip was streamed ten minutes ago


def test_operators_search_admins_erase_and_every_search_is_audited_by_hash(
        streamed, analyzer, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    cfg, t0 = streamed
    cfg = cfg.model_copy(deep=True)
    cfg.auth.enabled = True
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        tok = {r: create_token(srv.store, f"{r}-s", r)[0] for r in ("operator", "admin")}
        tok["gateway"] = create_token(srv.store, "gateway-s", "gateway", cameras=("stage-1",))[0]
        photo = pb.Image(encoded=_query_photo(analyzer))
        with Client(srv.address, tok["operator"]) as op:
            assert op.sightings.SearchSightings(spb.SearchSightingsRequest(image=photo, since=t0 - 1),
                                                metadata=op.metadata).hits
            for call, req in ((op.sightings.EraseSightings, spb.EraseSightingsRequest(all=True)),
                              (op.sightings.EnrollCluster, spb.EnrollClusterRequest(sighting_ids=[1]))):
                with pytest.raises(grpc.RpcError) as err:
                    call(req, metadata=op.metadata)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with Client(srv.address, tok["gateway"]) as gw, pytest.raises(grpc.RpcError) as err:
            gw.sightings.SearchSightings(spb.SearchSightingsRequest(image=photo), metadata=gw.metadata)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # an erasure of a camera that saw nothing, as an admin would type it
        assert cli(["sightings", "erase", "--camera", "elsewhere", "--json", "--token", tok["admin"],
                    "--server", srv.address]) == 0
        assert json.loads(capsys.readouterr().out) == {"erased": 0}
        rows = srv.store.query_audit(action="SearchSightings")
        assert all(r["actor"] == "anonymous" for r in rows if r["role"] == "auth-off")  # earlier tests' searches
        ok = [r for r in rows if r["result"] == "OK" and r["role"] != "auth-off"]
        assert len(ok) == 1 and ok[0]["actor"] == "operator-s"
        assert f"query_sha256={hashlib.sha256(photo.SerializeToString()).hexdigest()}" in ok[0]["target"]
        assert "hits=" in ok[0]["detail"] and len(ok[0]["target"]) < 300  # the hash, never the photo
        erased = srv.store.query_audit(action="EraseSightings")
        assert [r["result"] for r in erased][-1] == "OK" and "camera=elsewhere" in erased[-1]["target"]
    finally:
        srv.stop(grace=1)
