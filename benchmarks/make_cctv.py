#!/usr/bin/env python
"""Static-camera (CCTV-like) test clips, generated from real media: seeded, reproducible, never committed.

Each clip is a fixed 1080p@25 camera on a real background photo (WIDER FACE validation images under
../shared/testdata, their own faces painted out so that only the generated people are there). People are LFW
dev identities (real face photos): each walks a straight path across the scene at a face size drawn from
24-96 px, with a body below the head so the motion looks like a walker; some stop and stand still for a few
seconds mid-way; each clip has empty stretches with nobody in view. Ground truth per person: the LFW identity,
whether it is enrolled (enrolled people have another photo of theirs enrolled: never the one that walks),
and per frame the face box.

The identities are "held out": none is among the LFW identities `common.enroll_distractors` enrols as
distractors (the first ones in sorted order), and strangers (people walking but not enrolled) are in every
clip, so false alerts show.

Usage:
  python benchmarks/make_cctv.py --out bench-results/cctv [--clips 3] [--seconds 20] [--seed 20]
Writes <out>/cctv-<k>.mp4 (mp4v) and <out>/cctv-<k>.json (ground truth); `load_clip` reads them back.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LFW, SHARED  # noqa: E402

WIDER = SHARED / "testdata" / "widerface-val-10"
BACKGROUNDS = ("57_Angler_peoplefishing_57_53", "59_peopledrivingcar_peopledrivingcar_59_856",
               "49_Greeting_peoplegreeting_49_56", "0_Parade_marchingband_1_311")
"""WIDER FACE images used as scenes (few, small faces to paint out; outdoor or street-like)."""
SIZE = (1920, 1080)
FPS = 25.0
FACE_PX = (24, 96)
DISTRACTOR_SKIP = 400
"""LFW identities (sorted) left to the benchmarks' distractors (they enrol the first 200 or fewer)."""


@dataclass
class Walker:
    """One person's appearance: identity, photo, face size, path, optional stop."""

    pid: str
    name: str
    photo: str
    enrol_photo: str
    enrolled: bool
    face_px: float
    start: float
    duration: float
    p0: tuple[float, float]
    p1: tuple[float, float]
    stop_at: float = -1.0  # share of the path where the person stands still (-1: never)
    stop_s: float = 0.0
    colour: tuple[int, int, int] = (80, 80, 80)

    def position(self, t: float) -> tuple[float, float] | None:
        """Face centre at clip time t (None when out of view)."""
        walk = self.duration - self.stop_s
        u = t - self.start
        if u < 0 or u > self.duration:
            return None
        if self.stop_at >= 0:
            t_stop = self.stop_at * walk
            if u < t_stop:
                s = u / walk
            elif u < t_stop + self.stop_s:
                s = self.stop_at
            else:
                s = (u - self.stop_s) / walk
        else:
            s = u / walk
        return (self.p0[0] + (self.p1[0] - self.p0[0]) * s, self.p0[1] + (self.p1[1] - self.p0[1]) * s)


def lfw_identities() -> dict[str, list[tuple[str, np.ndarray]]]:
    """LFW dev identity -> [(image path, 5 landmarks)], sorted, from landmarks_5pt.txt."""
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for line in sorted((LFW / "landmarks_5pt.txt").read_text().splitlines()):
        parts = line.split()
        if len(parts) == 11:
            out.setdefault(parts[0].split("/")[0], []).append(
                (str(LFW / "images" / parts[0]), np.array(parts[1:], np.float32).reshape(5, 2)))
    return out


def background(name: str) -> np.ndarray:
    """A WIDER FACE image with its labelled faces painted out, cropped to 16:9 and scaled to 1080p."""
    img = cv2.imread(str(WIDER / "images" / f"{name}.jpg"))
    if img is None:
        raise FileNotFoundError(f"{WIDER / 'images' / name}.jpg not found (../shared/testdata/widerface-val-10)")
    mask = np.zeros(img.shape[:2], np.uint8)
    lines = (WIDER / "labelv2_val.txt").read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("#") and name in ln)
    for ln in lines[i + 1:]:
        if ln.startswith("#"):
            break
        v = [float(x) for x in ln.split()[:4]]
        pad = 0.3 * max(v[2] - v[0], v[3] - v[1]) + 2
        cv2.rectangle(mask, (int(v[0] - pad), int(v[1] - pad)), (int(v[2] + pad), int(v[3] + pad)), 255, -1)
    img = cv2.inpaint(img, mask, 7, cv2.INPAINT_TELEA)
    h, w = img.shape[:2]
    th = int(w * 9 / 16)
    if th <= h:
        y = (h - th) // 2
        img = img[y:y + th]
    else:
        tw = int(h * 16 / 9)
        x = (w - tw) // 2
        img = img[:, x:x + tw]
    return cv2.resize(img, SIZE, interpolation=cv2.INTER_CUBIC)


def head_sprite(photo: str, landmarks: np.ndarray, face_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The LFW photo scaled so its face is about `face_px` wide, with an elliptic alpha around the head.

    Returns (sprite BGR, alpha float32 0..1, face box relative to the sprite's face centre)."""
    img = cv2.imread(photo)
    eye_d = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    face_w = 2.2 * eye_d  # a detector's box is about 2.2 inter-ocular distances wide
    s = face_px / face_w
    cx, cy = float(landmarks[:, 0].mean()), float(landmarks[:, 1].mean())
    half = 1.0 * face_w  # head and some hair / neck
    x0, y0 = int(max(0, cx - half)), int(max(0, cy - 1.25 * half))
    x1, y1 = int(min(img.shape[1], cx + half)), int(min(img.shape[0], cy + 1.1 * half))
    crop = img[y0:y1, x0:x1]
    out = cv2.resize(crop, (max(4, round(crop.shape[1] * s)), max(4, round(crop.shape[0] * s))),
                     interpolation=cv2.INTER_AREA)
    h, w = out.shape[:2]
    alpha = np.zeros((h, w), np.float32)
    ccx, ccy = (cx - x0) * s, (cy - y0) * s
    cv2.ellipse(alpha, (round(ccx), round(ccy - 0.1 * face_px)), (round(0.62 * face_px), round(0.85 * face_px)),
                0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(1.0, face_px / 20))
    box = np.float32([-face_px / 2, -0.55 * face_px, face_px / 2, 0.65 * face_px])  # about the landmarks' centre
    return out, alpha, np.concatenate([[ccx, ccy], box])


class Noise:
    """Sensor noise (Gaussian, sigma 2 grey levels) cheaply: a few precomputed fields, one drawn per frame at a
    random offset, added and subtracted with saturation (no two frames of a clip are equal)."""

    def __init__(self, rng: np.random.Generator, fields: int = 4, sigma: float = 2.0) -> None:
        self.rng = rng
        h, w = SIZE[1] + 16, SIZE[0] + 16
        n = [rng.normal(0, sigma, (h, w, 3)) for _ in range(fields)]
        self.pos = [np.clip(x, 0, 255).astype(np.uint8) for x in n]
        self.neg = [np.clip(-x, 0, 255).astype(np.uint8) for x in n]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        k = int(self.rng.integers(len(self.pos)))
        dx, dy = (int(v) for v in self.rng.integers(0, 16, 2))
        sl = (slice(dy, dy + SIZE[1]), slice(dx, dx + SIZE[0]))
        return cv2.subtract(cv2.add(frame, self.pos[k][sl]), self.neg[k][sl])


def render(bg: np.ndarray, walkers: list[Walker], sprites: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
           t: float, noise: Noise) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One frame at time t and its ground truth (pid, face box)."""
    frame = bg.copy()
    truth: list[dict[str, Any]] = []
    for w in sorted(walkers, key=lambda w: w.face_px):  # larger (nearer) people drawn last
        pos = w.position(t)
        if pos is None:
            continue
        spr, alpha, meta = sprites[w.pid]
        fx, fy = pos
        sway = 0.04 * w.face_px * np.sin(2 * np.pi * 1.8 * t + len(w.name))  # the head bobs as one walks
        fy += sway
        f = w.face_px
        body = (int(fx - 1.1 * f), int(fy + 0.75 * f), int(fx + 1.1 * f), int(fy + 4.8 * f))
        cv2.rectangle(frame, body[:2], body[2:], w.colour, -1)
        legs = int(0.4 * f * np.sin(2 * np.pi * 1.8 * t)) if w.position(t + 0.04) != pos else 0
        cv2.rectangle(frame, (int(fx - 0.8 * f) + legs, body[3]), (int(fx - 0.1 * f) + legs, int(fy + 7.5 * f)),
                      (40, 40, 60), -1)
        cv2.rectangle(frame, (int(fx + 0.1 * f) - legs, body[3]), (int(fx + 0.8 * f) - legs, int(fy + 7.5 * f)),
                      (40, 40, 60), -1)
        h, wd = spr.shape[:2]
        x0, y0 = round(fx - meta[0]), round(fy - meta[1])
        xa, ya, xb, yb = max(0, x0), max(0, y0), min(SIZE[0], x0 + wd), min(SIZE[1], y0 + h)
        if xa >= xb or ya >= yb:
            continue
        a = alpha[ya - y0:yb - y0, xa - x0:xb - x0, None]
        roi = frame[ya:yb, xa:xb].astype(np.float32)
        frame[ya:yb, xa:xb] = (a * spr[ya - y0:yb - y0, xa - x0:xb - x0] + (1 - a) * roi).astype(np.uint8)
        box = [fx + meta[2], fy + meta[3], fx + meta[4], fy + meta[5]]
        if box[0] >= 0 and box[1] >= 0 and box[2] <= SIZE[0] and box[3] <= SIZE[1]:
            truth.append({"pid": w.pid, "box": [round(v, 1) for v in box]})
    return noise(frame), truth


def plan_clip(k: int, seconds: float, rng: np.random.Generator,
              pool: list[tuple[str, list[tuple[str, np.ndarray]]]]) -> list[Walker]:
    """People of clip k: about one enrolled walker every 4 s and a stranger every 8 s, with empty stretches
    (nobody in view for the first 1.5 s and around the middle) and one enrolled person standing still."""
    walkers: list[Walker] = []
    t = 1.5
    n = 0
    while t < seconds - 3.0:
        if abs(t - seconds / 2) < 1.5:  # an empty stretch mid-clip
            t += 3.0
            continue
        name, photos = pool.pop(0)
        enrolled = n % 3 != 2  # two in three are on the watchlist, the others are strangers
        face = float(rng.uniform(*FACE_PX))
        duration = float(rng.uniform(4.0, 7.0))
        stop = n % 4 == 1
        y = float(rng.uniform(0.25, 0.55) * SIZE[1])
        left = rng.random() < 0.5
        x0, x1 = (-0.5 * face, SIZE[0] + 0.5 * face) if left else (SIZE[0] + 0.5 * face, -0.5 * face)
        span = float(rng.uniform(0.45, 0.8)) * SIZE[0]  # walk part of the width
        mid = float(rng.uniform(0.3, 0.7)) * SIZE[0]
        x0, x1 = (mid - span / 2, mid + span / 2) if left else (mid + span / 2, mid - span / 2)
        walkers.append(Walker(
            pid=f"cctv{k}-p{n}", name=name, photo=photos[1][0], enrol_photo=photos[0][0], enrolled=enrolled,
            face_px=face, start=t, duration=duration + (3.0 if stop else 0.0), p0=(x0, y),
            p1=(x1, y + float(rng.uniform(-0.05, 0.05)) * SIZE[1]), stop_at=0.5 if stop else -1.0,
            stop_s=3.0 if stop else 0.0, colour=tuple(int(c) for c in rng.integers(30, 200, 3))))  # type: ignore[arg-type]
        n += 1
        t += float(rng.uniform(2.5, 4.5))
    return walkers


def make(out: Path, clips: int = 3, seconds: float = 20.0, seed: int = 20) -> list[Path]:
    """Write the clips and their ground truth; returns the ground-truth files. Same seed, same clips."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = lfw_identities()
    names = sorted(ids)[DISTRACTOR_SKIP:]
    pool = [(n, ids[n]) for n in names if len(ids[n]) >= 2]
    order = rng.permutation(len(pool))
    pool = [pool[i] for i in order]
    files = []
    noise = Noise(rng)
    for k in range(clips):
        walkers = plan_clip(k, seconds, rng, pool)
        lms = {p: lm for n in {w.name for w in walkers} for p, lm in ids[n]}
        sprites = {w.pid: head_sprite(w.photo, lms[w.photo], w.face_px) for w in walkers}
        bg = background(BACKGROUNDS[k % len(BACKGROUNDS)])
        path = out / f"cctv-{k}.mp4"
        vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
        frames_truth = []
        for j in range(int(seconds * FPS)):
            frame, truth = render(bg, walkers, sprites, j / FPS, noise)
            vw.write(frame)
            frames_truth.append(truth)
        vw.release()
        gt = {"clip": path.name, "fps": FPS, "size": list(SIZE), "seed": seed, "seconds": seconds,
              "background": BACKGROUNDS[k % len(BACKGROUNDS)],
              "persons": {w.pid: {"lfw": w.name, "photo": Path(w.photo).name, "enrol_photo": Path(w.enrol_photo).name,
                                  "enrolled": w.enrolled, "face_px": round(w.face_px, 1),
                                  "in_view_s": [round(w.start, 2), round(w.start + w.duration, 2)],
                                  "stands_still_s": w.stop_s}
                          for w in walkers},
              "frames": frames_truth}
        gp = out / f"cctv-{k}.json"
        gp.write_text(json.dumps(gt))
        files.append(gp)
    return files


def load_clip(gt_file: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Ground truth and decoded frames of one generated clip."""
    gt = json.loads(Path(gt_file).read_text())
    cap = cv2.VideoCapture(str(Path(gt_file).with_name(gt["clip"])))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return gt, frames


def enrol_photo_path(gt: dict[str, Any], pid: str) -> Path:
    """The photo of a clip person that is enrolled (another photo of theirs than the one that walks)."""
    p = gt["persons"][pid]
    return LFW / "images" / p["lfw"] / p["enrol_photo"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench-results/cctv", help="output folder (default bench-results/cctv)")
    ap.add_argument("--clips", type=int, default=3, help="clips (default 3)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds a clip (default 20)")
    ap.add_argument("--seed", type=int, default=20, help="random seed (default 20)")
    a = ap.parse_args(argv)
    for f in make(Path(a.out), a.clips, a.seconds, a.seed):
        gt = json.loads(f.read_text())
        print(f"{f.with_suffix('.mp4')}: {len(gt['frames'])} frames, {len(gt['persons'])} people "
              f"({sum(p['enrolled'] for p in gt['persons'].values())} enrolled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
