"""Model registry (mirror fetch, hash checks) and bad input handling: clear errors, never a crash."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.config import Config
from engine.errors import (
    ConfigError,
    InvalidImageError,
    ModelHashMismatchError,
    ModelNotFoundError,
)
from engine.models.registry import ModelRegistry
from engine.vision.image import decode_image, raw_to_bgr, read_image
from tests.conftest import IMAGES, MIRROR, ROOT


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def test_fetch_from_mirror_verifies_and_lists(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "m")
    paths = reg.fetch(["yunet", "mobilefacenet"], mirror=MIRROR)
    assert [p.name for p in paths] == ["face_detection_yunet_2023mar.onnx", "mobilefacenet.onnx"]
    assert reg.status("yunet") == "ok" and reg.status("sface") == "missing"
    out = run_cli("models", "list", "--model-dir", str(tmp_path / "m"))
    assert out.returncode == 0
    assert "yunet" in out.stdout and "missing" in out.stdout


def test_wrong_hash_model_refuses_to_load(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    data = bytearray((MIRROR / "mobilefacenet.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "mobilefacenet.onnx").write_bytes(bytes(data))
    reg = ModelRegistry(d)
    with pytest.raises(ModelHashMismatchError, match="mobilefacenet.onnx.*expected"):
        reg.path("mobilefacenet")
    assert reg.status("mobilefacenet") == "bad-hash"
    shutil.copy(MIRROR / "face_detection_yunet_2023mar.onnx", d)
    out = run_cli("identify", str(IMAGES / "obama.jpg"), "--model-dir", str(d), "--db", str(tmp_path / "x.db"),
                  "--embedder", "mobilefacenet")  # the corrupted file (the default embedder is SFace)
    assert out.returncode == 1
    assert "sha256" in out.stderr and "Traceback" not in out.stderr


def test_mirror_with_corrupt_file_is_not_installed(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "face_detection_yunet_2023mar.onnx").write_bytes(b"not a model")
    reg = ModelRegistry(tmp_path / "m")
    with pytest.raises(ModelHashMismatchError):
        reg.fetch(["yunet"], mirror=mirror)
    assert not (tmp_path / "m" / "face_detection_yunet_2023mar.onnx").exists()


def test_missing_model_names_file_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"mobilefacenet\.onnx.*faceengine models fetch"):
        ModelRegistry(tmp_path).path("mobilefacenet")
    with pytest.raises(ModelNotFoundError, match="no download URL"):
        ModelRegistry(tmp_path).fetch(["mobilefacenet"])
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        ModelRegistry(tmp_path).spec("nope")


def test_bad_images_give_clear_errors(tmp_path: Path) -> None:
    good = (IMAGES / "obama.jpg").read_bytes()
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image(b"")
    with pytest.raises(InvalidImageError, match="could not be decoded"):
        decode_image(b"\xff\xd8\xff\xe0garbage" * 10)
    with pytest.raises(InvalidImageError, match="could not be decoded"):
        decode_image(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
    (tmp_path / "trunc.jpg").write_bytes(good[: len(good) // 3])
    with pytest.raises(InvalidImageError, match="trunc"):
        read_image(tmp_path / "trunc.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InvalidImageError, match="empty"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(InvalidImageError, match="no such file"):
        read_image(tmp_path / "missing.jpg")
    # 0x0 raw frame and mismatched raw sizes
    with pytest.raises(InvalidImageError, match="0x0"):
        raw_to_bgr(b"", 0, 0, "BGR8")
    with pytest.raises(InvalidImageError, match="needs 30000 bytes, got 29999"):
        raw_to_bgr(b"\0" * 29999, 100, 100, "BGR8")
    # a PNG header claiming a huge image is refused before decoding
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with pytest.raises(InvalidImageError, match="exceeds the limit"):
        decode_image(png)


def test_zero_sized_array_rejected(analyzer) -> None:  # noqa: ANN001
    with pytest.raises(InvalidImageError, match="no pixels"):
        analyzer.analyze(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(InvalidImageError):
        analyzer.analyze(np.zeros((10, 10, 3), np.float32))


def test_cli_bad_inputs_exit_cleanly(tmp_path: Path, model_dir: Path) -> None:
    good = (IMAGES / "obama.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(good[:5000])
    (tmp_path / "empty.png").write_bytes(b"")
    for bad in ("trunc.jpg", "empty.png", "missing.jpg"):
        out = run_cli("identify", str(tmp_path / bad), "--model-dir", str(model_dir), "--db", str(tmp_path / "g.db"))
        assert out.returncode == 1, out.stderr
        assert out.stderr.startswith("faceengine: error:") and "Traceback" not in out.stderr


def test_config_env_file_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[detector]\nscore_threshold = 0.7\n[server]\nport = 6000\n")
    c = Config.load(f, env={"FACEENGINE_SERVER_PORT": "7000"})
    assert c.detector.score_threshold == 0.7 and c.server.port == 7000
    f.write_text("[detector]\nscore_threshold = 'high'\n")
    with pytest.raises(ConfigError, match="detector.score_threshold"):
        Config.load(f, env={})
    f.write_text("[nosuch]\nx = 1\n")
    with pytest.raises(ConfigError, match="unknown config section"):
        Config.load(f, env={})
    assert all(doc for _, _, doc in Config().describe())


def test_identify_cli_json_and_video_progress(tmp_path: Path, model_dir: Path) -> None:
    import json

    db = str(tmp_path / "g.db")
    out = run_cli("enroll-local", "--model-dir", str(model_dir), "--db", db, "--watchlist", "vip", "--create",
                  "--person", "obama", "--name", "Barack Obama", str(IMAGES / "obama.jpg"))
    assert out.returncode == 0, out.stderr
    out = run_cli("identify", str(IMAGES / "obama_and_biden.jpg"), "--json", "--model-dir", str(model_dir), "--db", db)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    names = [f["match"]["person_id"] for f in res["faces"] if f["match"]]
    assert names == ["obama"] and len(res["faces"]) == 3
    # a group photo: strict mode refuses it with the face count; so does the default, no face dominating
    out = run_cli("enroll-local", "--model-dir", str(model_dir), "--db", db, "--watchlist", "vip", "--person", "x",
                  "--strict",
                  str(IMAGES / "multiface.jpg"))
    assert out.returncode == 1 and "6 faces found" in out.stderr
    out = run_cli("enroll-local", "--model-dir", str(model_dir), "--db", db, "--watchlist", "vip", "--person", "x",
                  "--json",
                  str(IMAGES / "multiface.jpg"))
    assert out.returncode == 1 and "6 faces found and none dominates: boxes [" in out.stderr


def test_site_model_from_local_manifest(tmp_path: Path) -> None:
    """A model the manifest does not know (here: a renamed ArcFace-style 112x112 graph with other
    normalisation) is accepted once described, with its hash, in the model dir's manifest.local.json."""
    import json

    from engine.config import EmbedderConfig, RuntimeConfig
    from engine.models.registry import sha256_file
    from engine.vision.embedder import load_embedder

    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(MIRROR / "mobilefacenet.onnx", d / "site_arcface.onnx")
    entry = {"file": "site_arcface.onnx", "task": "embedder", "family": "arcface",
             "sha256": sha256_file(d / "site_arcface.onnx"), "input_size": [112, 112], "color": "RGB",
             "mean": 127.5, "std": 127.5, "dim": 128}
    (d / "manifest.local.json").write_text(json.dumps({"models": {"site_arcface": entry}}))
    reg = ModelRegistry(d)
    emb = load_embedder(reg, "site_arcface", EmbedderConfig(), RuntimeConfig())
    crops = np.random.default_rng(0).integers(0, 255, (3, 112, 112, 3), dtype=np.uint8)
    out = emb.embed(crops)
    assert out.shape == (3, 128) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    entry["sha256"] = "0" * 64
    (d / "manifest.local.json").write_text(json.dumps({"models": {"site_arcface": entry}}))
    with pytest.raises(ModelHashMismatchError):
        ModelRegistry(d).path("site_arcface")
