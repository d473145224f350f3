"""Checks on stored data that SQLite's own integrity_check cannot see: a template blob whose bytes
were damaged still passes it, but turns into a vector that matches nobody (or everybody)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NORM_TOLERANCE = 0.05  # templates are L2-normalised embeddings: |norm - 1| beyond this is damage


def template_problem(blob: bytes | None, dim: int) -> str:
    """Why a stored template blob is unusable, or '' when it is a finite unit vector of `dim` floats."""
    if blob is None or dim <= 0 or len(blob) != 4 * dim:
        return f"size {0 if blob is None else len(blob)} bytes, expected {4 * max(dim, 0)} ({dim} float32)"
    vec = np.frombuffer(blob, np.float32)
    if not np.isfinite(vec).all():
        return "values not finite (NaN or infinity)"
    norm = float(np.linalg.norm(vec))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        return f"norm {norm:.3f}, expected 1 (an L2-normalised embedding)"
    return ""


def templates_from_rows(rows: list[tuple[Any, ...]]) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]:
    """(id, embedding bytes, dim, watchlist, person, name) rows -> ids, (N, D) vectors, labels; a damaged
    template is logged (named) and skipped, never indexed as a zero/NaN vector."""
    good = []
    for r in rows:  # a damaged template is named and skipped, never indexed as a zero/NaN vector
        problem = template_problem(r[1], r[2])
        if problem:
            log.warning("template %d of %s/%s skipped: %s; re-enrol this person (`faceengine store check` "
                        "lists every damaged template)", r[0], r[3], r[4], problem)
        else:
            good.append(r)
    if not good:
        return np.zeros((0,), np.int64), np.zeros((0, 0), np.float32), []
    ids = np.array([r[0] for r in good], np.int64)
    vecs = np.stack([np.frombuffer(bytes(r[1]), np.float32, count=r[2]) for r in good])
    return ids, vecs, [(r[3], r[4], r[5]) for r in good]
