"""Which face of an enrolment photo to enrol: one pure rule that the gRPC service, the console (through
its preview and EnrollPerson) and the CLI all apply, so a photo enrols the same person everywhere.

A photo often shows more than its subject: a bystander, or a face cut off at the edge that is larger in
pixels than the subject's. The face enrolled is the one that dominates by size and position: its
prominence (shorter box side, weighted by closeness to the image centre, halved when the box touches the
image border) must be at least `DOMINANCE` times every other face's. When two faces are comparable the
photo is refused, naming their boxes, rather than enrolling a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import MultipleFacesError, NoFaceError

DOMINANCE = 1.5
"""The chosen face's prominence must be at least this many times every other face's."""
EDGE_FACTOR = 0.5
"""Weight of a face whose box touches the image border (likely cut off: part of it is missing)."""
EDGE_MARGIN = 0.01
"""A box within this fraction of the image side (at least 2 px) of the border touches it."""


@dataclass(frozen=True)
class FaceChoice:
    """The face to enrol: its index among the detections and a note for the caller ('' when it was
    the only face)."""

    index: int
    note: str


def fmt_box(box: np.ndarray) -> str:
    """[x1,y1,x2,y2] in whole pixels, as messages name boxes."""
    return "[" + ",".join(str(int(round(float(v)))) for v in box[:4]) + "]"


def prominence(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N,) how much each box (N, >=4: x1, y1, x2, y2 in pixels) dominates a width x height photo: the
    shorter box side x (0.25 + 0.75 x centrality) x (EDGE_FACTOR if it touches the border), centrality
    being 1 at the image centre and 0 at a corner."""
    b = np.asarray(boxes, np.float64).reshape(len(boxes), -1)[:, :4]
    size = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]).clip(min=0)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    half_diag = max(np.hypot(width, height) / 2, 1e-6)
    centrality = 1.0 - np.clip(np.hypot(cx - width / 2, cy - height / 2) / half_diag, 0.0, 1.0)
    mx, my = max(2.0, EDGE_MARGIN * width), max(2.0, EDGE_MARGIN * height)
    edge = (b[:, 0] <= mx) | (b[:, 1] <= my) | (b[:, 2] >= width - mx) | (b[:, 3] >= height - my)
    return size * (0.25 + 0.75 * centrality) * np.where(edge, EDGE_FACTOR, 1.0)


def choose_enrolment_face(boxes: np.ndarray, width: int, height: int, what: str = "image",
                          min_face_size: int | None = None) -> FaceChoice:
    """The face to enrol from a photo's detections (boxes in pixels of a width x height image).

    No face: NoFaceError. One face: it. Several: the dominant one (see the module docstring) with a
    note naming it; none dominant: MultipleFacesError naming the comparable boxes (INVALID_ARGUMENT)."""
    n = len(boxes)
    if n == 0:
        need = f" of at least {min_face_size} px" if min_face_size else ""
        raise NoFaceError(f"{what}: no face found (need one clear, frontal face{need})")
    if n == 1:
        return FaceChoice(0, "")
    score = prominence(boxes, width, height)
    order = np.argsort(-score, kind="stable")
    best, runner_up = int(order[0]), int(order[1])
    if score[best] < DOMINANCE * score[runner_up]:
        rivals = [int(i) for i in order if score[i] * DOMINANCE > score[best]]
        named = ", ".join(fmt_box(boxes[i]) for i in rivals)
        raise MultipleFacesError(
            f"{what}: {n} faces found and none dominates: boxes {named} are of comparable size and position; "
            "crop the image to the person to enrol")
    size = int(min(boxes[best][2] - boxes[best][0], boxes[best][3] - boxes[best][1]))
    return FaceChoice(best, f"{what}: {n} faces found; enrolled the dominant face, box {fmt_box(boxes[best])} "
                            f"({size} px; by size and position)")
