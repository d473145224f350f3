"""The one place that finds the shared models and media the tests run on.

They live outside the repository (weights and media are never committed): in `../shared` beside the
repository root, or in the folder named by the environment variable FACEENGINE_SHARED. Nothing here
touches the files at import time, so a missing folder is reported by `missing_shared_data()` (called once
by conftest at session start) with the paths that are missing and how to fix it, never as an import error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ENV_VAR = "FACEENGINE_SHARED"
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get(ENV_VAR) or ROOT.parent / "shared").absolute()
MIRROR = SHARED / "models"
TESTDATA = SHARED / "testdata"
IMAGES = TESTDATA / "images"
VIDEOS = TESTDATA / "videos"
LFW = TESTDATA / "lfw-dev"

REQUIRED: dict[Path, str] = {
    MIRROR / "face_detection_yunet_2023mar.onnx": "YuNet detector (model mirror)",
    MIRROR / "mobilefacenet.onnx": "MobileFaceNet embedder (model mirror)",
    MIRROR / "face_recognition_sface_2021dec.onnx": "SFace embedder, the default (model mirror)",
    MIRROR / "scrfd_2.5g.onnx": "SCRFD-2.5G detector (model mirror)",
    IMAGES / "obama.jpg": "test photos",
    IMAGES / "obama_and_biden.jpg": "test photos",
    VIDEOS / "stage_360p.mp4": "test videos",
    VIDEOS / "multiface_1080p.mp4": "test videos",
    LFW / "pairs.txt": "LFW evaluation folds",
}
"""Files every test run needs, with what they are (the folders they sit in hold the rest)."""


def missing_shared_data() -> str | None:
    """None when the shared data is there; otherwise a message naming what is missing and the fix."""
    missing = [f"  {path}  ({what})" for path, what in REQUIRED.items() if not path.is_file()]
    if not missing:
        return None
    source = f"${ENV_VAR}" if os.environ.get(ENV_VAR) else f"../shared beside the repository root ({ROOT})"
    return ("shared test data not found; missing:\n" + "\n".join(missing) + "\n"
            f"The tests read real models and media from {source}.\n"
            f"Fix: put the project's shared folder (models/, testdata/) at {ROOT.parent / 'shared'}, "
            f"or set {ENV_VAR}=/path/to/shared.")


def read_frames(reader: Any, limit: int = 1_000_000) -> list:
    """Frames from anything with `read() -> (ok, frame)` and `release()` (cv2.VideoCapture, the engine's video
    readers) until it ends or `limit` frames; releases it."""
    out: list = []
    try:
        while len(out) < limit:
            ok, frame = reader.read()
            if not ok:
                break
            out.append(frame)
    finally:
        reader.release()
    return out


def first_frames(video: Path, n: int) -> list:
    """The first `n` decoded frames (BGR) of a test video; fails when the clip has fewer."""
    import cv2

    out = read_frames(cv2.VideoCapture(str(video)), n)
    assert len(out) == n, f"{video} has only {len(out)} frames, {n} needed"
    return out


UPDATE_DOCS_ENV = "FACEENGINE_UPDATE_SCREENSHOTS"
DOCS = ROOT / "docs"


def doc_image(name: str, tmp_path: Path) -> Path:
    """Where a test saves a picture the docs show: under `tmp_path` by default, so test runs leave the work tree
    clean; `docs/NAME` only when FACEENGINE_UPDATE_SCREENSHOTS=1 asks to refresh the committed picture."""
    if os.environ.get(UPDATE_DOCS_ENV, "").strip() in ("1", "true", "yes"):
        return DOCS / name
    return tmp_path / name
