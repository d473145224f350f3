"""Gallery: persistence across restarts, real removal of vectors, paging, multi-process sync."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import NotFoundError
from engine.gallery.gallery import Gallery
from engine.store import open_store
from engine.store.base import Person
from engine.store.sqlite import SQLiteStore
from engine.vision.image import read_image
from tests.conftest import IMAGES


@pytest.fixture(scope="module")
def faces(analyzer) -> dict[str, np.ndarray]:  # noqa: ANN001
    return {n: analyzer.single_face(read_image(IMAGES / f"{n}.jpg"))[1] for n in ("obama", "obama2", "biden")}


def _gallery(path: Path, dim: int = 128) -> Gallery:
    return Gallery(SQLiteStore(path), dim, "mobilefacenet")


def test_gallery_survives_restart(tmp_path: Path, faces: dict[str, np.ndarray]) -> None:
    g = _gallery(tmp_path / "g.db")
    g.create_watchlist("vip", "test")
    g.enroll("vip", "obama", faces["obama"][None], "Barack Obama", {"note": "44"})
    g.enroll("vip", "biden", faces["biden"][None], "Joe Biden")
    g.store.close()
    g2 = _gallery(tmp_path / "g.db")
    assert len(g2) == 2
    hit = g2.search(faces["obama2"], top_k=1, threshold=0.4)[0]
    assert hit and hit[0].person_id == "obama" and hit[0].display_name == "Barack Obama"
    assert g2.get_person("vip", "obama").metadata == {"note": "44"}


def test_remove_person_removes_vectors(tmp_path: Path, faces: dict[str, np.ndarray]) -> None:
    g = _gallery(tmp_path / "g.db")
    g.create_watchlist("vip")
    g.enroll("vip", "obama", np.stack([faces["obama"], faces["obama2"]]))
    g.enroll("vip", "biden", faces["biden"][None])
    obama_ids = set(g.store.template_ids("vip", "obama"))
    assert len(obama_ids) == 2 and obama_ids <= g.vector_ids()
    assert g.remove_person("vip", "obama") == 2
    assert not (obama_ids & g.vector_ids())
    assert len(g) == 1
    for hits in g.search(np.stack([faces["obama"], faces["obama2"]]), top_k=5, threshold=-1.0):
        assert all(h.person_id != "obama" for h in hits)
    with pytest.raises(NotFoundError):
        g.get_person("vip", "obama")
    g.store.close()
    g2 = _gallery(tmp_path / "g.db")  # and after a restart too
    assert len(g2) == 1 and g2.store.template_ids("vip", "obama") == []


def test_replace_templates_and_watchlist_filter(tmp_path: Path, faces: dict[str, np.ndarray]) -> None:
    g = _gallery(tmp_path / "g.db")
    g.create_watchlist("a")
    g.create_watchlist("b")
    g.enroll("a", "p", faces["obama"][None])
    g.enroll("a", "p", faces["obama2"][None])
    assert g.get_person("a", "p").template_count == 2
    g.enroll("a", "p", faces["biden"][None], replace=True)
    assert g.get_person("a", "p").template_count == 1 and len(g) == 1
    g.enroll("b", "q", faces["obama"][None])
    assert g.search(faces["obama"], watchlists=["a"], threshold=0.5)[0] == []
    assert g.search(faces["obama"], watchlists=["b"], threshold=0.5)[0][0].person_id == "q"
    assert g.delete_watchlist("b") == 1 and len(g) == 1
    with pytest.raises(NotFoundError):
        g.enroll("nope", "x", faces["obama"][None])


def test_paging(tmp_path: Path) -> None:
    g = _gallery(tmp_path / "g.db", dim=4)
    g.create_watchlist("w")
    rng = np.random.default_rng(1)
    for i in range(25):
        g.enroll("w", f"p{i:02d}", rng.normal(size=(1, 4)).astype(np.float32))
    seen, token = [], ""
    while True:
        page, token = g.list_persons("w", page_size=10, page_token=token)
        seen += [p.person_id for p in page]
        if not token:
            break
    assert seen == [f"p{i:02d}" for i in range(25)]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "g.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")


def test_two_workers_share_one_store(store_url: str, faces: dict[str, np.ndarray]) -> None:
    """Replicas follow each other's changes through the store's change log (deltas, no rebuild)."""
    a = Gallery(open_store(store_url), 128, "mobilefacenet")
    b = Gallery(open_store(store_url), 128, "mobilefacenet")
    try:
        a.create_watchlist("w")
        a.enroll("w", "obama", faces["obama"][None], "Obama")
        a.enroll("w", "biden", faces["biden"][None])
        b.sync(force=True)
        assert b.search(faces["obama2"], threshold=0.4)[0][0].person_id == "obama"
        a.enroll("w", "obama", faces["obama2"][None], "Barack Obama", replace=True)  # new vector, new name
        b.sync(force=True)
        assert b.vector_ids() == a.vector_ids()
        assert b.search(faces["obama"], threshold=0.4)[0][0].display_name == "Barack Obama"
        a.remove_person("w", "obama")
        b.sync(force=True)
        assert [m.person_id for m in b.search(faces["obama2"], threshold=-1)[0]] == ["biden"]
        a.delete_watchlist("w")
        b.sync(force=True)
        assert len(b) == 0 and b.vector_ids() == set()
        assert (b.rebuilds, b.deltas) == (1, 4)  # built once at start, then four deltas
        a.store.repair()  # nothing to repair: no version change, no rebuild
        a.create_watchlist("w2")
        a.enroll("w2", "x", faces["biden"][None])
        b.store.upsert_person(Person("w2", "y"), faces["obama"][None], "mobilefacenet")  # b's store, not b
        assert b.store.gallery_changes_since(0, "mobilefacenet") is not None  # the log reaches back to 0
        b.sync(force=True)
        assert {m.person_id for m in b.search(faces["obama"], threshold=-1)[0]} == {"x", "y"}
        assert b.rebuilds == 1
    finally:
        a.store.close()  # type: ignore[attr-defined]
        b.store.close()  # type: ignore[attr-defined]
