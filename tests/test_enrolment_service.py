"""Must-show: the offline CLI enrolment and gRPC EnrollPerson go through one `WatchlistService` and refuse
the same bad inputs with the same message (before, the CLI skipped validation, created the watchlist and
stored no photo). Real models, real photos; the CLI runs in-process with the session's analyzer."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from engine.cli.main import main as cli_main
from engine.client import Client
from engine.config import Config
from engine.service.server import FaceEngineServer
from engine.store import open_store
from tests.shared_data import IMAGES

OBAMA = IMAGES / "obama.jpg"

BAD = [  # (what, CLI arguments, gRPC enroll keyword arguments)
    ("control character in the id", ["--watchlist", "vip", "--person", "bad\nid", str(OBAMA)],
     {"watchlist": "vip", "person_id": "bad\nid", "images": [OBAMA]}),
    ("too many images", ["--watchlist", "vip", "--person", "p", str(OBAMA), str(OBAMA), str(OBAMA)],
     {"watchlist": "vip", "person_id": "p", "images": [OBAMA, OBAMA, OBAMA]}),
    ("watchlist missing", ["--watchlist", "nope", "--person", "p", str(OBAMA)],
     {"watchlist": "nope", "person_id": "p", "images": [OBAMA]}),
    ("metadata key too long", ["--watchlist", "vip", "--person", "p", "--meta", "k" * 65 + "=v", str(OBAMA)],
     {"watchlist": "vip", "person_id": "p", "images": [OBAMA], "metadata": {"k" * 65: "v"}}),
    ("display name too long", ["--watchlist", "vip", "--person", "p", "--name", "n" * 257, str(OBAMA)],
     {"watchlist": "vip", "person_id": "p", "images": [OBAMA], "name": "n" * 257}),
]


@pytest.fixture()
def setup(cfg: Config, analyzer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201
    cfg.server.host, cfg.server.port, cfg.auth.enabled = "127.0.0.1", 0, False
    cfg.limits.max_images_per_enrollment = 2
    monkeypatch.setenv("FACEENGINE_LIMITS_MAX_IMAGES_PER_ENROLLMENT", "2")
    monkeypatch.setattr("engine.vision.analyzer.FaceAnalyzer.from_config", lambda *a, **k: analyzer)
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    cli_db = str(tmp_path / "cli.db")
    cli_args = ["enroll-local", "--model-dir", cfg.models.dir, "--db", cli_db]
    try:
        client = Client(srv.address)
        client.ensure_watchlist("vip")
        assert cli_main([*cli_args, "--watchlist", "vip", "--create", "--person", "seed", str(OBAMA)]) == 0
        yield client, cli_args, cli_db
    finally:
        srv.stop(grace=1)


def _grpc_error(client: Client, images: list[Path], **kw: object) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as err:
        client.enroll(images=[p.read_bytes() for p in images], **kw)  # type: ignore[arg-type]
    return err.value.code().name, err.value.details()


def test_cli_and_grpc_refuse_the_same_bad_inputs(setup, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    client, cli_args, _ = setup
    codes = {"INVALID_ARGUMENT": "invalid argument", "NOT_FOUND": "not found"}
    for what, args, kw in BAD:
        code, message = _grpc_error(client, **kw)  # type: ignore[arg-type]
        assert code in codes, (what, code, message)
        capsys.readouterr()
        assert cli_main([*cli_args, *args]) == 1, what
        err = capsys.readouterr().err
        assert message in err, (what, message, err)


def test_cli_enrolment_keeps_the_photo_and_needs_create_for_a_new_watchlist(setup, capsys) -> None:  # noqa: ANN001
    _, cli_args, cli_db = setup
    store = open_store(cli_db)
    try:
        assert store.get_person_photo("vip", "seed")[:2] == b"\xff\xd8"  # the face crop, like EnrollPerson
    finally:
        store.close()
    assert cli_main([*cli_args, "--watchlist", "other", "--person", "p", str(OBAMA)]) == 1
    assert "add --create to create it" in capsys.readouterr().err
