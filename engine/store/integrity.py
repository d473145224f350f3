"""Checks on stored data that SQLite's own integrity_check cannot see: a template blob whose bytes
were damaged still passes it, but turns into a vector that matches nobody (or everybody)."""

from __future__ import annotations

import numpy as np

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
