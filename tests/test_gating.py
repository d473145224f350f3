"""Motion-gated region detection and the detection interval, on real frames with the real models: the motion
mask sees a moving face and not a still, noisy scene; a face cut by a region's edge is found whole; boxes are
carried between detections on a real clip; the periodic full-frame pass finds a person standing still; the
interval rises under backlog and falls back."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from engine.config import Config
from engine.video.motion import MotionDetector, align_region, plan_regions
from engine.video.recognizer import Carried, Frame, Recognizer, RecognizerSettings
from engine.vision.analyzer import FaceAnalyzer
from engine.vision.detections import box_iou
from engine.vision.image import read_image
from tests.conftest import IMAGES, VIDEOS
from tests.shared_data import first_frames

FPS = 25.0


class NoGallery:
    """An empty watchlist: these tests look at detection and tracking, not matching."""

    def search(self, embeddings: np.ndarray, top_k: int = 5, threshold: float = -1.0) -> list[list]:
        return [[] for _ in embeddings]

    def has_template(self, template_id: int) -> bool:
        return False


def settings(**kw: object) -> RecognizerSettings:
    base = RecognizerSettings.from_config(Config.load(env={}))
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def noisy(image: np.ndarray, rng: np.random.Generator, sigma: float = 3.0) -> np.ndarray:
    """`image` with sensor-like Gaussian noise (a still camera never gives two identical frames)."""
    return np.clip(image.astype(np.int16) + rng.normal(0, sigma, image.shape).astype(np.int16), 0, 255).astype(
        np.uint8)


@pytest.fixture(scope="module")
def face_photo() -> np.ndarray:
    return read_image(IMAGES / "obama-1080p.jpg")


def test_motion_mask_still_scene_and_moving_face(face_photo: np.ndarray) -> None:
    """A still real scene with noise gives no motion; a real face crop moving over it is boxed where it is."""
    rng = np.random.default_rng(0)
    scene = first_frames(VIDEOS / "stage_360p.mp4", 1)[0]
    scene = cv2.resize(scene, (1280, 720))
    md = MotionDetector()
    assert len(md.update(noisy(scene, rng))) == 0  # the first frame only starts the background
    for _ in range(10):
        assert len(md.update(noisy(scene, rng))) == 0, "noise of a still scene counted as motion"
    face = cv2.resize(face_photo[150:750, 700:1250], (110, 120))
    for step in range(6):
        x, y = 100 + 40 * step, 300
        frame = scene.copy()
        frame[y:y + 120, x:x + 110] = face
        boxes = md.update(noisy(frame, rng))
        truth = np.float32([[x, y, x + 110, y + 120]])
        assert len(boxes) >= 1
        assert box_iou(truth, boxes).max() > 0.3, f"step {step}: motion boxes {boxes} miss the face at {truth}"
        assert (boxes[:, 0] < x + 110).all() and (boxes[:, 2] > x - 60).all(), "motion boxed far from the face"


def test_plan_regions_aligned_and_padded() -> None:
    """Regions hold the padded motion and track boxes, lie inside the frame, and sit on the grid of 64 network
    pixels at the detection scale (start on a grid line, span whole cells: few shapes, and the pixels the
    full-frame pass sees), cut only at the frame's right and bottom edges."""
    motion = np.float32([[100, 100, 160, 300], [1500, 800, 1540, 900]])
    tracks = np.float32([[1000, 200, 1040, 240]])
    regions = plan_regions(motion, tracks, 1920, 1080, 0.5)
    assert len(regions) == 3
    for r in regions:
        assert 0 <= r[0] < r[2] <= 1920 and 0 <= r[1] < r[3] <= 1080
        assert r[0] % 128 == 0 and r[1] % 128 == 0
        assert ((r[2] - r[0]) * 0.5) % 64 == 0 and ((r[3] - r[1]) * 0.5) % 64 == 0
    for b in np.concatenate([motion, tracks]):
        assert any(r[0] <= b[0] and r[1] <= b[1] and r[2] >= b[2] and r[3] >= b[3] for r in regions)
    assert align_region(np.float32([1900, 1070, 1920, 1080]), 1920, 1080, 1.0) == (1856, 1024, 1920, 1080)
    assert align_region(np.float32([100, 100, 110, 110]), 1920, 1080, 2 / 3) == (96, 96, 192, 192)


def test_face_cut_by_region_edge_found_whole(analyzer: FaceAnalyzer, face_photo: np.ndarray) -> None:
    """A region whose edge runs through a face (regions meet there) still yields the whole face, as the full-frame
    detector boxes it: the cut face is re-detected in a region centred on it."""
    full = analyzer.detect_batch([face_photo])[0]
    assert len(full) == 1
    b = full.boxes[0]
    mid = int((b[0] + b[2]) / 2)
    h, w = face_photo.shape[:2]
    x1 = max(0, mid - 576)
    region = (x1, 0, mid, h)  # right edge through the middle of the face
    rec = Recognizer(analyzer, NoGallery(), settings(motion_gating=True))
    got = rec.detect_regions([Frame("c", 0, 0.0, face_photo)], [(1.0, [region])])[0]
    assert len(got) == 1, f"{len(got)} faces for one"
    assert box_iou(got.boxes, full.boxes)[0, 0] > 0.8, f"cut face {got.boxes[0]} vs whole {b}"


def test_interval_carries_boxes_between_detections(analyzer: FaceAnalyzer) -> None:
    """With a detection every 3rd frame of a real clip, frames between carry the tracks' boxes: each carried
    box lies on a face the detector finds in that very frame, under the track id of the detected frames (the
    clip's first 20 frames: one shot, before its first cut)."""
    frames = first_frames(VIDEOS / "stage_360p.mp4", 20)
    rec = Recognizer(analyzer, NoGallery(), settings(motion_gating=False, detect_interval=3))
    truth = analyzer.detect_batch(frames)
    carried = hits = 0
    last_ids: set[int] = set()
    for j, f in enumerate(frames):
        frame = Frame("c", j, j / FPS, f)
        raw = rec.detect([frame])
        out = rec.recognize([frame], raw)[0]
        if j % 3 == 0:
            assert not isinstance(raw[0], Carried)
            last_ids = {int(t) for t in out.track_ids if t >= 0}
            continue
        assert isinstance(raw[0], Carried), f"frame {j} was detected with interval 3"
        assert not out.embedded.any(), "a carried (not detected) face was embedded"
        assert {int(t) for t in out.track_ids} <= last_ids
        for box in out.detections.boxes:
            carried += 1
            hits += int(len(truth[j]) > 0 and box_iou(box[None], truth[j].boxes).max() >= 0.5)
    assert carried >= 20, f"only {carried} boxes carried"
    assert hits >= 0.9 * carried, f"{hits} of {carried} carried boxes on a detected face"


def test_full_frame_pass_finds_person_standing_still(analyzer: FaceAnalyzer, face_photo: np.ndarray) -> None:
    """Nothing moves and no track is live: region detection finds nothing until the periodic full-frame pass,
    which finds the person standing still; without the pass they are never found again."""
    rng = np.random.default_rng(1)
    still = [noisy(face_photo, rng) for _ in range(4)]

    def run(full_every_s: float) -> list[int]:
        rec = Recognizer(analyzer, NoGallery(), settings(motion_gating=True, detect_interval=1,
                                                         full_frame_interval_s=full_every_s))
        counts = []
        for j in range(40):
            out = rec.process(Frame("c", j, j / FPS, still[j % 4]))
            counts.append(len(out.detections))
            if j == 0:
                assert rec.end_tracks("c"), "the first frame (a full pass) found the person"
        return counts

    counts = run(1.0)
    assert counts[0] == 1
    assert counts[1:25] == [0] * 24, "found without motion, track or full pass"
    assert counts[25] == 1, "the full-frame pass at 1 s did not find the person standing still"
    assert all(c == 1 for c in counts[26:]), "the found person was not kept (track boxes are regions)"
    assert run(0.0)[1:] == [0] * 39


def test_interval_rises_under_backlog_and_falls_back(analyzer: FaceAnalyzer) -> None:
    """Frames taken with half the queue behind them raise the camera's detection interval at once (up to
    the cap) so it catches up instead of dropping frames; a queue that stays empty brings it back, step by step,
    to the configured interval."""
    from engine.video.recognizer import CALM_FRAMES

    frame = first_frames(VIDEOS / "stage_360p.mp4", 1)[0]
    rec = Recognizer(analyzer, NoGallery(), settings(detect_interval=2, max_detect_interval=5, queue_size=8))
    rec.detect([Frame("c", 0, 0.0, frame)])
    rec.detect([Frame("c", 1, 1 / FPS, frame, backlog=3)])
    assert rec.detect_interval("c") == (2, 2), "three waiting in a queue of 8 is no overload"
    rec.detect([Frame("c", 2, 2 / FPS, frame, backlog=4)])
    assert rec.detect_interval("c") == (4, 4), "a half-full queue doubles the interval"
    modes = []
    for j in range(3, 15):
        f = Frame("c", j, j / FPS, frame, backlog=6)
        modes.append(isinstance(rec.detect([f])[0], Carried))
    assert rec.detect_interval("c") == (5, 5)
    assert sum(modes[4:]) >= 6, "at interval 5 most frames are carried"
    for j in range(15, 15 + CALM_FRAMES):
        rec.detect([Frame("c", j, j / FPS, frame, backlog=0)])
    assert rec.detect_interval("c") == (4, 5), "one step down after a calm stretch, not at once"
    for j in range(15 + CALM_FRAMES, 15 + 4 * CALM_FRAMES):
        rec.detect([Frame("c", j, j / FPS, frame, backlog=0)])
    assert rec.detect_interval("c") == (2, 5)


def test_quarter_decode_detects_at_full_resolution(analyzer: FaceAnalyzer, face_photo: np.ndarray) -> None:
    """With gating a large gateway JPEG is decoded at a quarter for the motion mask; the full-frame pass and the
    quality gate still work on the full-resolution frame: the same face box and quality as a full decode."""
    from engine.video.decode import CpuJpegDecoder, decode_pipeline_frame
    from engine.video.quality import face_quality

    data = cv2.imencode(".jpg", face_photo, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    cfg = Config.load(env={})
    image, scale, loader = decode_pipeline_frame(CpuJpegDecoder(), data, cfg)
    assert scale == 4.0 and loader is not None and image.shape[1] * 4 == face_photo.shape[1]
    full = loader()
    ref = analyzer.detect_batch([full])[0]
    rec = Recognizer(analyzer, NoGallery(), settings(motion_gating=True))
    out = rec.process(Frame("c", 0, 0.0, image, scale=scale, loader=loader))
    assert len(out.detections) == len(ref) == 1
    assert box_iou(out.detections.boxes, ref.boxes)[0, 0] > 0.95
    q = face_quality(full, ref, float(rec.settings.min_face_size))
    assert abs(float(out.quality[0]) - float(q[0])) < 0.02, (out.quality, q)
