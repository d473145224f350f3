"""Client commands take their connection options anywhere among their positionals: parsed by the real
`faceengine` parser, and one `cameras add` / `remove` run in process against a real server."""

from __future__ import annotations

import argparse

import pytest

from engine.cli.main import build_parser, main
from engine.config import Config
from engine.service.server import FaceEngineServer
from tests.test_service import make_cfg

SERVER = "10.0.0.7:6000"
# each client subcommand with its positionals, and what they parse to
POSITIONALS: list[tuple[list[str], list[str], dict[str, object]]] = [
    (["cameras"], ["add", "door-1", "rtsp://cam/1"], {"action": "add", "camera": "door-1", "uri": "rtsp://cam/1"}),
    (["cameras"], ["add", "door-1"], {"action": "add", "camera": "door-1", "uri": "push"}),
    (["cameras"], ["remove", "door-1"], {"action": "remove", "camera": "door-1"}),
    (["cameras"], ["list"], {"action": "list", "camera": None}),
    (["watchlists"], ["create", "vip"], {"action": "create", "name": "vip"}),
    (["watchlists"], ["persons", "vip"], {"action": "persons", "name": "vip"}),
    (["verify"], ["a.jpg", "b.jpg"], {"image_a": "a.jpg", "image_b": "b.jpg"}),
    (["search"], ["a.jpg"], {"image": "a.jpg"}),
    (["enroll", "--watchlist", "vip", "--person", "p1"], ["a.jpg", "b.jpg"], {"images": ["a.jpg", "b.jpg"]}),
    (["stream", "--camera", "door-1"], ["clip.mp4"], {"source": "clip.mp4"}),
    (["matches"], [], {"camera": ""}),
]


def _placements(positionals: list[str]) -> list[list[str]]:
    """`--server X` before, after and (where there are several positionals) between them."""
    opt = ["--server", SERVER, "--json"]
    out = [opt + positionals, positionals + opt]
    out += [positionals[:i] + opt + positionals[i:] for i in range(1, len(positionals))]
    return out


@pytest.mark.parametrize(("command", "positionals", "expected"), POSITIONALS,
                         ids=[" ".join(c + p) for c, p, _ in POSITIONALS])
def test_server_option_anywhere_among_positionals(command: list[str], positionals: list[str],
                                                 expected: dict[str, object]) -> None:
    parser = build_parser()
    for argv in _placements(positionals):
        args = parser.parse_args([*command, *argv])
        assert args.server == SERVER and args.json is True, argv
        assert {k: getattr(args, k) for k in expected} == expected, argv


def test_usage_errors_still_name_the_problem(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for argv, message in ((["cameras", "add", "--server", SERVER, "a", "b", "c"], "unrecognized arguments: c"),
                          (["cameras", "--server", SERVER, "start"], "invalid choice: 'start'"),
                          (["verify", "a.jpg", "--server", SERVER], "the following arguments are required: image_b"),
                          (["cameras", "add", "door", "--server"], "--server: expected one argument")):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err, argv
    # nested subcommands are still parsed (their own options after the action)
    args = parser.parse_args(["token", "revoke", "old", "--db", "x.db"])
    assert isinstance(args, argparse.Namespace) and (args.name, args.db) == ("old", "x.db")


def test_cameras_add_and_remove_with_server_between_positionals(cfg: Config, analyzer) -> None:  # noqa: ANN001
    srv = FaceEngineServer(make_cfg(cfg), analyzer=analyzer).start()
    try:
        assert main(["cameras", "add", "--server", srv.address, "door-1", "push"]) == 0
        assert srv.engine.camera("door-1").kind == "push"
        assert main(["cameras", "remove", "door-1", "--server", srv.address]) == 0
        assert not srv.engine.has_camera("door-1")
    finally:
        srv.stop(grace=1)


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`faceengine --version` prints the version pyproject.toml declares and exits 0."""
    import tomllib

    from tests.shared_data import ROOT

    want = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"faceengine {want}"


def test_client_server_default_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """FACEENGINE_SERVER sets the clients' default address; --server still wins."""
    monkeypatch.setenv("FACEENGINE_SERVER", SERVER)
    assert build_parser().parse_args(["cameras", "list"]).server == SERVER
    assert build_parser().parse_args(["cameras", "list", "--server", "h:1"]).server == "h:1"
    monkeypatch.delenv("FACEENGINE_SERVER")
    assert build_parser().parse_args(["cameras", "list"]).server == "127.0.0.1:50051"
