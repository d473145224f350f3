"""`gallery.index = "IVF"` chosen in a TOML config file reaches the server's gallery: with enough templates
the search goes through a trained IVF index, real faces are still found with exact scores, and removal
is real. The 10,000 distractor templates are synthetic (random unit vectors, labelled so); the person
searched for and every query are real photos embedded by the real model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.client import Client
from engine.config import Config
from engine.gallery.gallery import Gallery
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from engine.store.sqlite import SQLiteStore
from engine.vision.image import read_image
from tests.shared_data import IMAGES
from tests.test_service import _frames, _scene

DISTRACTORS = 10_000  # the size at which VectorIndex stops searching exactly and trains its IVF index


def test_ivf_index_selected_in_config_file(tmp_path: Path, model_dir: Path, analyzer) -> None:  # noqa: ANN001
    db = tmp_path / "engine.db"
    conf = tmp_path / "engine.toml"
    conf.write_text(f'[gallery]\nindex = "IVF"\n\n[store]\npath = {json.dumps(str(db))}\n\n'
                    f'[models]\ndir = {json.dumps(str(model_dir))}\n\n'
                    '[server]\nhost = "127.0.0.1"\nport = 0\nmetrics_port = 0\n\n[auth]\nenabled = false\n')
    cfg = Config.load(conf, env={})
    assert cfg.gallery.index == "IVF"

    rng = np.random.default_rng(7)
    synthetic = rng.standard_normal((DISTRACTORS, analyzer.dim)).astype(np.float32)
    synthetic /= np.linalg.norm(synthetic, axis=1, keepdims=True)
    store = SQLiteStore(str(db))
    seed = Gallery(store, analyzer.dim, analyzer.model_name, "Flat")
    seed.ensure_watchlist("synthetic-crowd")
    for i in range(0, DISTRACTORS, 500):
        seed.enroll("synthetic-crowd", f"synthetic-{i // 500}", synthetic[i: i + 500])
    store.close()

    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        index = srv.gallery.index
        assert index.approximate and index.nlist is not None and index.nlist >= 8, (index.spec, index.nlist)
        with Client(srv.address) as c:
            c.ensure_watchlist("vip")
            c.enroll("vip", "obama", [(IMAGES / "obama.jpg").read_bytes()], "Barack Obama")
            assert srv.gallery.index.approximate  # still IVF after the enrolment
            query = pb.SearchRequest(image=pb.Image(encoded=(IMAGES / "obama2.jpg").read_bytes()), top_k=3)
            hits = c.matches.SearchByImage(query).hits
            assert hits[0].person_id == "obama" and hits[0].is_match
            assert all(not h.is_match for h in hits[1:])  # random distractors stay far below the threshold
            # IVF candidates are re-ranked exactly: the score is the true cosine of the two embeddings
            _, a = analyzer.single_face(read_image(IMAGES / "obama.jpg"), what="obama.jpg")
            _, b = analyzer.single_face(read_image(IMAGES / "obama2.jpg"), what="obama2.jpg")
            assert hits[0].score == pytest.approx(float(a @ b), abs=1e-4)
            # the video path finds him through the same index
            c.ensure_push_camera("ivf-cam")
            results = list(c.stream(_frames("ivf-cam", 4, _scene(), gap=0.03)))
            assert {f.match.person_id for r in results for f in r.faces if f.HasField("match")} == {"obama"}
            # removal is real in the IVF index too
            c.watchlists.RemovePerson(pb.PersonRequest(watchlist="vip", person_id="obama"))
            assert all(h.person_id != "obama" for h in c.matches.SearchByImage(query).hits)
            assert len(srv.gallery) == DISTRACTORS
    finally:
        srv.stop(grace=1)
