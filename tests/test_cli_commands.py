"""The console commands not covered elsewhere, run as subprocesses the way users run them: `verify` and
`watchlists` against a real `faceengine serve` process, `config show`, `models fetch`, `demo`, and a tiny
`bench` run. Real models and real media throughout."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import ServeProcess, cli, cli_env, serve
from tests.shared_data import IMAGES, MIRROR, TESTDATA, VIDEOS


@pytest.fixture(scope="module")
def env(model_dir: Path) -> dict[str, str]:
    return cli_env(model_dir)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[ServeProcess]:
    d = tmp_path_factory.mktemp("cli-server")
    with serve(d, env, d / "srv.db") as srv:
        yield srv


def test_verify_command(server: ServeProcess, env: dict[str, str]) -> None:
    out = cli("verify", "--server", server.address, "--json", str(IMAGES / "obama.jpg"), str(IMAGES / "obama2.jpg"),
              env=env)
    assert out.returncode == 0, out.stderr
    same = json.loads(out.stdout)
    assert same["same_person"] is True and same["score"] > same["threshold"]
    out = cli("verify", "--server", server.address, str(IMAGES / "obama.jpg"), str(IMAGES / "biden.jpg"), env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("-> DIFFERENT"), out.stdout
    score = float(out.stdout.split("score=")[1].split()[0])
    assert score < same["threshold"]
    # a photo without a face: the server's reason, no traceback
    out = cli("verify", "--server", server.address, str(IMAGES / "obama.jpg"), str(VIDEOS / "LICENSE_CC-BY-4.0.txt"),
              env=env)
    assert out.returncode == 1 and "INVALID_ARGUMENT" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_watchlists_command(server: ServeProcess, env: dict[str, str]) -> None:
    def wl(*args: str) -> str:
        out = cli("watchlists", *args, "--server", server.address, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    wl("create", "patrol")
    assert "patrol\t0 persons\t" in wl("list")
    out = cli("enroll", "--server", server.address, "--watchlist", "patrol", "--person", "biden", "--name",
              "Joe Biden", str(IMAGES / "biden.jpg"), env=env)
    assert out.returncode == 0, out.stderr
    assert "patrol\t1 persons" in wl("list")
    assert wl("persons", "patrol").splitlines() == ["biden\tJoe Biden\t1 templates"]
    wl("delete", "patrol")
    assert "patrol" not in wl("list")
    out = cli("watchlists", "delete", "patrol", "--server", server.address, env=env)
    assert out.returncode == 1 and "NOT_FOUND" in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = cli("watchlists", "create", "patrol2", "--server", "127.0.0.1:9", env=env)  # nothing listens there
    assert out.returncode == 1 and "UNAVAILABLE" in out.stderr and "faceengine serve" in out.stderr, out.stderr


def test_config_show_reflects_file_env_and_flags(tmp_path: Path, env: dict[str, str]) -> None:
    conf = tmp_path / "engine.toml"
    conf.write_text('[pipeline]\nbatch_size = 4\n\n[gallery]\nmatch_threshold = 0.5\n')
    out = cli("config", "show", "--config", str(conf), "--model-dir", str(tmp_path / "m"),
              env={**env, "FACEENGINE_GALLERY_INDEX": "IVF"})
    assert out.returncode == 0, out.stderr
    data = tomllib.loads(out.stdout)  # the output is valid TOML that could be saved as a config file
    assert data["pipeline"]["batch_size"] == 4  # from the file
    assert data["gallery"]["match_threshold"] == 0.5
    assert data["gallery"]["index"] == "IVF"  # from the environment
    assert data["models"]["dir"] == str(tmp_path / "m")  # from the flag
    assert data["auth"]["enabled"] is False  # FACEENGINE_AUTH_ENABLED=false in the test environment
    assert data["server"]["port"] == 50051 and data["retention"]["events_days"] == 30.0  # embedded defaults
    # every setting comes with a one-line description just above it
    lines = out.stdout.splitlines()
    fields = [i for i, ln in enumerate(lines) if ln and not ln.startswith(("#", "["))]
    assert len(fields) >= 40
    assert all(lines[i - 1].startswith("# ") and len(lines[i - 1]) > 6 for i in fields)
    # a misspelt setting is refused with its name, not ignored
    conf.write_text('[gallery]\nindx = "IVF"\n')
    out = cli("config", "show", "--config", str(conf), env=env)
    assert out.returncode == 1 and "indx" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_models_fetch_command(tmp_path: Path, env: dict[str, str]) -> None:
    d = tmp_path / "models"
    out = cli("models", "fetch", "yunet", "mobilefacenet", "--mirror", str(MIRROR), "--model-dir", str(d), env=env)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in d.iterdir()) == ["face_detection_yunet_2023mar.onnx", "mobilefacenet.onnx"]
    out = cli("models", "list", "--json", "--model-dir", str(d), env=env)
    status = {row["name"]: row["status"] for row in map(json.loads, out.stdout.splitlines())}
    assert status["yunet"] == status["mobilefacenet"] == "ok" and status["sface"] == "missing"
    out = cli("models", "fetch", "yunet", "--mirror", str(MIRROR), "--model-dir", str(d), env=env)
    assert out.returncode == 0 and "already present and verified" in out.stderr, out.stderr
    # without names: everything the mirror holds
    out = cli("models", "fetch", "--mirror", str(MIRROR), "--model-dir", str(d), env=env)
    assert out.returncode == 0, out.stderr
    assert {p.name for p in MIRROR.glob("*.onnx")} <= {p.name for p in d.iterdir()}
    # a mirror whose file does not match the manifest's SHA-256: refused, nothing installed
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    data = bytearray((MIRROR / "scrfd_500m.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "scrfd_500m.onnx").write_bytes(bytes(data))
    d2 = tmp_path / "models2"
    out = cli("models", "fetch", "scrfd_500m", "--mirror", str(bad), "--model-dir", str(d2), env=env)
    assert out.returncode == 1 and "sha256" in out.stderr.lower() and "Traceback" not in out.stderr, out.stderr
    assert not (d2 / "scrfd_500m.onnx").exists()
    out = cli("models", "fetch", "no_such_model", "--mirror", str(MIRROR), "--model-dir", str(d2), env=env)
    assert out.returncode == 1 and "no_such_model" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_demo_command(tmp_path: Path, env: dict[str, str]) -> None:
    """The README's first command: models fetched from the mirror into an empty folder, a server, enrolment
    from a video frame, the video streamed over gRPC, live matches and stored history printed."""
    media = tmp_path / "media"  # only what the demo reads
    (media / "videos").mkdir(parents=True)
    (media / "images").mkdir()
    shutil.copy(VIDEOS / "stage_360p.mp4", media / "videos")
    shutil.copy(IMAGES / "obama.jpg", media / "images")
    models = tmp_path / "models"
    out = cli("demo", "--mirror", str(MIRROR), "--media", str(media), "--model-dir", str(models), env=env,
              timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo ok" in out.stderr
    # the default models: YuNet and SFace
    assert (models / "face_detection_yunet_2023mar.onnx").is_file()
    assert (models / "face_recognition_sface_2021dec.onnx").is_file()
    lines = out.stdout.splitlines()
    assert any("live: NEW MATCH" in ln and "Person seen in frame 100" in ln for ln in lines), out.stdout
    history = next(ln for ln in lines if "history:" in ln)
    n = int(history.split("history:")[1].split()[0])
    stored = [ln for ln in lines if ln.startswith("  ") and "camera=demo-cam" in ln]
    assert n == len(stored) >= 1 and any("[demo/person-1]" in ln for ln in stored), out.stdout
    # the demo's media default is the shared testdata folder; a wrong folder says what to pass
    out = cli("demo", "--mirror", str(MIRROR), "--media", str(tmp_path / "nowhere"), "--model-dir", str(models),
              env=env)
    assert out.returncode == 1 and "--media" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert TESTDATA.is_dir()


def test_bench_command_tiny_run(tmp_path: Path, env: dict[str, str]) -> None:
    prefix = tmp_path / "bench" / "pipeline"
    out = cli("bench", "--video", str(VIDEOS / "stage_360p.mp4"), "--cameras", "1", "--rounds", "1",
              "--max-frames", "20", "--no-grpc", "--no-baselines", "--json", "--out", str(prefix), env=env,
              timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["cameras"] == 1 and summary["fps_by_mode"]["engine1"] > 0
    # per-stage worker time a frame, the detector call split into its parts, and the GPU (none in CI)
    st = summary["stages_ms_per_frame"]
    assert st["preprocess"] > 0 and st["detect_model"] > 0 and st["track"] > 0 and st["embed"] > 0
    assert st["decode"] == 0  # pre-decoded frames: nothing decoded in this pass
    assert isinstance(summary["gpu"], str)
    saved = json.loads(prefix.with_suffix(".json").read_text())
    assert saved  # the raw results behind the printed figures are written next to the plot
    assert set(saved["modes"]["engine1"]["stages_ms_per_frame"]) >= {"decode", "preprocess", "record", "total"}
    assert "gpu" in saved and "gpu" in saved["modes"]["engine1"]
    assert prefix.with_suffix(".png").is_file()


def test_long_commands_show_one_progress_style_only_on_a_terminal_or_when_asked(env: dict[str, str]) -> None:
    """`identify` on a video: no progress in a pipe or a log (stderr not a terminal) unless --progress asks;
    then one bar with the count, the rate and the time left; the results on stdout are the same."""
    video = str(VIDEOS / "stage_360p.mp4")
    quiet = cli("identify", video, "--every", "50", "--json", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "frame" not in quiet.stderr and "\r" not in quiet.stderr, quiet.stderr
    shown = cli("identify", video, "--every", "50", "--json", "--progress", env=env)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"stage_360p\.mp4: +100%\|.*\| 275/275 \[\d\d:\d\d<00:00, +[\d.]+frame/s\]", shown.stderr), (
        shown.stderr)
    assert shown.stdout == quiet.stdout and shown.stdout.count('"frame"') >= 3
    from argparse import Namespace

    from engine.cli.progress import progress_shown

    assert not progress_shown(Namespace(progress=True, quiet=True))  # --quiet wins


def test_enroll_command_refuses_another_face_and_duplicates_under_a_taken_id(server: ServeProcess,
                                                                            env: dict[str, str]) -> None:
    """The CLI gets the engine's rule: another person's photo under an id is refused with the way out,
    `--add-to-existing` adds it on purpose, and the same photo twice is a duplicate, not a second template."""
    def enroll(*args: str):  # noqa: ANN202
        return cli("enroll", "--server", server.address, "--watchlist", "cli-taken", "--create", "--person",
                   "obama", *args, env=env)

    assert enroll("--name", "Barack Obama", str(IMAGES / "obama.jpg")).returncode == 0
    out = enroll(str(IMAGES / "biden.jpg"))
    assert out.returncode == 1 and "FAILED_PRECONDITION" in out.stderr and "--add-to-existing" in out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    out = enroll(str(IMAGES / "obama.jpg"))
    assert out.returncode == 1 and "ALREADY_EXISTS" in out.stderr, out.stderr
    assert enroll("--add-to-existing", str(IMAGES / "biden.jpg")).returncode == 0
    out = cli("watchlists", "persons", "cli-taken", "--server", server.address, env=env)
    assert out.stdout.splitlines() == ["obama\tBarack Obama\t2 templates"], out.stdout
