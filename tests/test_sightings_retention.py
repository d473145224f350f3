"""Sightings retention and erasure: expired sightings leave the store and every index partition;
a range or camera erasure and a person's erasure remove theirs from both, and nothing else."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.client import Client, encode_jpeg
from engine.config import Config, RetentionConfig
from engine.retention import RetentionWorker
from engine.service.proto import pb, spb
from engine.service.server import FaceEngineServer
from engine.sightings.service import Sightings
from engine.store import open_store
from engine.store.base import Sighting, Store
from tests.conftest import IMAGES

DAY = 86400.0
DIM = 128


def _unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _sightings(store: Store, cfg: Config) -> Sightings:
    return Sightings(cfg, store, DIM, "m", lambda image, box: b"")


def _fill(s: Sightings, now: float, days: int = 10, per_day: int = 6) -> list[Sighting]:
    """`per_day` sightings a day over `days` days before `now`, on two cameras, through the writer."""
    vecs = _unit(days * per_day, 1)
    times = [now - 60.0 - (i // per_day) * DAY - (i % per_day) * 600.0 for i in range(days * per_day)]
    rows = [Sighting("door" if i % 2 else "hall", t, t + 5, vecs[i], "m", 0.8, i, thumbnail=b"\xff\xd8face")
            for i, t in enumerate(times)]
    s.recorder.submit(rows)  # the queue the recorder's tracks end in
    assert s.recorder.flush()
    return rows


def _index_ids(s: Sightings) -> set[int]:
    return {int(i) for i in s.index.ids()}


def _store_ids(store: Store) -> set[int]:
    return {x.id for x in store.scan_sightings("m", limit=100_000)}


@pytest.fixture()
def store(tmp_path: Path):  # noqa: ANN201
    s = open_store(str(tmp_path / "s.db"))
    yield s
    s.close()


def test_retention_erases_expired_sightings_from_store_and_every_partition(store: Store, tmp_path: Path) -> None:
    cfg = Config.load(env={})
    cfg.retention.sightings_days = 3.0
    cfg.retention.events_days = 0.0
    now = time.time()
    s = _sightings(store, cfg)
    rows = _fill(s, now)
    assert len(s.index) == len(rows) == store.count_sightings()
    assert len(s.index.partitions()) >= 10  # one partition an hour, by first_seen
    worker = RetentionWorker(store, cfg.retention, s.purge_expired)
    worker.run_once()
    cutoff = now - 3 * DAY
    kept = {r.id for r in rows if r.first_seen >= cutoff}
    assert 0 < len(kept) < len(rows) and worker.sightings_purged == len(rows) - len(kept)
    assert _store_ids(store) == kept == _index_ids(s)
    assert all(end > cutoff for _, end, _, _ in s.index.partitions())  # older partitions dropped whole
    old = next(r for r in rows if r.first_seen < cutoff)
    assert all(h.sighting.id != old.id for h in s.search(old.embedding, top_k=50, threshold=-1.0))
    # a restart rebuilds the index from the store: still nothing expired
    s2 = _sightings(store, cfg)
    assert s2.load() == len(kept) and _index_ids(s2) == kept


def test_erasing_a_range_or_cameras_leaves_the_rest(store: Store) -> None:
    cfg = Config.load(env={})
    cfg.retention.sightings_days = 0.0  # keep everything
    now = time.time()
    s = _sightings(store, cfg)
    rows = _fill(s, now, days=4)
    assert s.purge_expired() == 0 and len(s.index) == len(rows)
    lo, hi = now - 2.5 * DAY, now - 0.5 * DAY
    gone = {r.id for r in rows if lo <= r.first_seen < hi and r.camera_id == "door"}
    assert s.erase(lo, hi, ("door",)) == len(gone) > 0
    assert _store_ids(store) == _index_ids(s) == {r.id for r in rows} - gone
    assert s.erase(cameras=("hall",)) > 0
    assert _store_ids(store) == _index_ids(s) == {r.id for r in rows if r.camera_id == "door"} - gone


def test_removing_a_person_erases_their_sightings_over_grpc(cfg: Config, analyzer) -> None:  # noqa: ANN001
    """Obama is enrolled; a scene with him, Biden and a third person is streamed: his sighting is
    matched, the strangers' are not. RemovePerson erases his from store and index; theirs stay."""
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    cfg.auth.enabled = False
    cfg.sightings.enabled = True
    cfg.pipeline.queue_size = 64
    scene = encode_jpeg(cv2.resize(cv2.imread(str(IMAGES / "obama_and_biden.jpg")), (1280, 914)))
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        with Client(srv.address) as c:
            c.ensure_watchlist("vip")
            c.enroll("vip", "obama", [(IMAGES / "obama.jpg").read_bytes()], "Barack Obama")
            c.ensure_push_camera("gate-1")
            t0 = time.time()
            frames = [pb.Frame(camera_id="gate-1", sequence=i, capture_time=t0 + i * 0.1, encoded=scene)
                      for i in range(1, 7)]
            assert all(len(r.faces) == 3 for r in c.stream(iter(frames)))
            c.cameras.RemoveCamera(pb.CameraRequest(camera_id="gate-1"))  # its tracks end: sightings written
            assert srv.sightings is not None and srv.sightings.recorder.flush()
            seen = srv.store.scan_sightings(analyzer.model_name)
            # Obama's track and the strangers' tracks whose faces passed the quality gate (Biden's at least)
            assert len(seen) >= 2 and sorted(x.person_id for x in seen)[-2:] == ["", "obama"]
            obama = next(x for x in seen if x.person_id == "obama")
            query = pb.Image(encoded=(IMAGES / "obama2.jpg").read_bytes())
            hits = c.sightings.SearchSightings(spb.SearchSightingsRequest(image=query)).hits
            assert [h.sighting.sighting_id for h in hits] == [obama.id]
            assert hits[0].sighting.person_id == "obama"
            c.watchlists.RemovePerson(pb.PersonRequest(watchlist="vip", person_id="obama"))
            left = srv.store.scan_sightings(analyzer.model_name)
            assert len(left) == len(seen) - 1 and all(x.person_id == "" for x in left)
            assert _index_ids(srv.sightings) == {x.id for x in left}
            assert not c.sightings.SearchSightings(spb.SearchSightingsRequest(image=query)).hits
            detail = srv.store.query_audit(action="RemovePerson")[-1]["detail"]
            assert "sightings_erased=1" in detail
    finally:
        srv.stop(grace=1)


def test_retention_config_documents_sightings() -> None:
    assert "sightings" in (RetentionConfig.model_fields["sightings_days"].description or "")
