"""Recurring unknowns on a generated multi-visit clip set: real faces (LFW photos of people seen on
several days) walk across two cameras as short clips; each visit is one track and one sighting.
Clustering groups each returning person's visits (purity >= 0.95, at most 2 clusters a person),
one-time visitors stay out, and enrolling a cluster makes the person recognised at the next visit."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.cli.main import main as cli
from engine.client import Client, encode_jpeg
from engine.config import Config
from engine.service.proto import pb, spb
from engine.service.server import FaceEngineServer
from tests.shared_data import LFW

RETURNING = 5  # people who come back
VISITS = 4  # visits each (a different photo each time)
ONE_TIME = 5  # people seen once
FRAMES = 3  # frames a visit (the face drifts across the frame)
GAP_S = 3.0  # between visits: longer than a track's max age, so every visit is its own track


def _people() -> tuple[list[list[Path]], list[Path]]:
    """Returning people's photos (VISITS + 1 each: the last is kept for after enrolment) and one-time faces."""
    dirs = sorted(p for p in (LFW / "images").iterdir() if p.is_dir())
    returning = [sorted(d.iterdir())[: VISITS + 1] for d in dirs if len(list(d.iterdir())) >= 8][:RETURNING]
    once = [next(d.iterdir()) for d in dirs if len(list(d.iterdir())) == 1][:ONE_TIME]
    return returning, once


def _visit(photo: Path, camera: str, t: float, seq: int) -> Iterator[pb.Frame]:
    """A short clip: the photo (a face of about 90 px) drifting across a 640x360 frame."""
    face = cv2.resize(cv2.imread(str(photo)), (200, 200))
    for k in range(FRAMES):
        canvas = np.full((360, 640, 3), 96, np.uint8)
        x = 120 + 12 * k
        canvas[80:280, x:x + 200] = face
        yield pb.Frame(camera_id=camera, sequence=seq + k, capture_time=t + 0.1 * k, encoded=encode_jpeg(canvas))


def test_returning_unknowns_cluster_by_person_and_a_named_cluster_is_recognised(
        cfg: Config, analyzer, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    cfg.auth.enabled = False
    cfg.sightings.enabled = True
    cfg.pipeline.queue_size = 256
    returning, once = _people()
    assert len(returning) == RETURNING and len(once) == ONE_TIME
    visits = [(f"p{i}", photos[v]) for v in range(VISITS) for i, photos in enumerate(returning)]
    visits += [(f"once{j}", photo) for j, photo in enumerate(once)]
    order = np.random.default_rng(7).permutation(len(visits))  # visits interleaved over time
    t0 = time.time() - 600
    labels: list[tuple[float, str, str]] = []  # (start, camera, person)
    frames: list[pb.Frame] = []
    for n, vi in enumerate(order):
        who, photo = visits[vi]
        cam, t = ("door", "hall")[n % 2], t0 + n * GAP_S
        labels.append((t, cam, who))
        frames.extend(_visit(photo, cam, t, n * FRAMES))
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        with Client(srv.address) as c:
            for cam in ("door", "hall"):
                c.ensure_push_camera(cam)
            results = list(c.stream(iter(frames)))
            assert len(results) == len(frames) and not any(r.HasField("error") for r in results)
            for cam in ("door", "hall"):  # the last visits' tracks end
                c.cameras.RemoveCamera(pb.CameraRequest(camera_id=cam))
            assert srv.sightings is not None and srv.sightings.recorder.flush()
            seen = srv.store.scan_sightings(analyzer.model_name)
            assert len(seen) >= 0.9 * len(visits)  # (almost) every visit left one sighting

            def person_of(sighting_id: int) -> str:
                s = next(x for x in seen if x.id == sighting_id)
                return next(who for t, cam, who in labels if cam == s.camera_id and t <= s.first_seen < t + GAP_S)

            found = c.sightings.ListUnknownClusters(spb.ListClustersRequest(since=t0 - 1, include_thumbnails=True))
            clusters = [[person_of(i) for i in k.sighting_ids] for k in found.clusters]
            assert clusters, "no recurring unknown found"
            majority = [Counter(members).most_common(1)[0] for members in clusters]
            purity = sum(n for _, n in majority) / sum(len(m) for m in clusters)
            per_person = Counter(who for who, _ in majority)
            assert purity >= 0.95, (purity, clusters)
            assert {f"p{i}" for i in range(RETURNING)} <= set(per_person), per_person  # every returning person
            assert max(per_person.values()) <= 2, per_person
            assert not any(who.startswith("once") for who in per_person)  # one visit is not a recurrence
            biggest = found.clusters[0]
            assert biggest.sightings >= VISITS - 1 and len(biggest.camera_ids) >= 1
            assert biggest.thumbnails and biggest.thumbnails[0][:2] == b"\xff\xd8"
            assert biggest.first_seen < biggest.last_seen

            # the CLI lists the same clusters, and names the biggest: enrolled from its best members
            assert cli(["sightings", "clusters", "--since", "1h", "--json", "--server", srv.address]) == 0
            listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            assert [k["cluster_id"] for k in listed] == [k.cluster_id for k in found.clusters]
            who = majority[0][0]
            c.ensure_watchlist("regulars")
            assert cli(["sightings", "enroll", "--since", "1h", "--watchlist", "regulars", "--person", "regular-1",
                        "--name", "Regular visitor", "--templates", "3", biggest.cluster_id, "--json",
                        "--server", srv.address]) == 0
            enrolled = json.loads(capsys.readouterr().out)
            assert enrolled["templates"] == min(3, biggest.sightings)
            assert enrolled["sightings_named"] == biggest.sightings
            assert c.watchlists.GetPersonPhoto(pb.PersonRequest(watchlist="regulars", person_id="regular-1")).jpeg
            again = c.sightings.ListUnknownClusters(spb.ListClustersRequest(since=t0 - 1))
            assert biggest.cluster_id not in {k.cluster_id for k in again.clusters}  # no longer unknown
            # the next visit (a photo never streamed) is recognised as the named person
            c.ensure_push_camera("door")
            nxt = list(c.stream(_visit(returning[int(who[1:])][VISITS], "door", t0 + len(order) * GAP_S + 10, 10_000)))
            names = {f.match.person_id for r in nxt for f in r.faces if f.HasField("match")}
            assert names == {"regular-1"}, names
    finally:
        srv.stop(grace=1)
