"""The inference seam: what detectors and embedders need from a model backend.

A runner runs one model on a batch and says which provider it really uses. The onnxruntime
implementation lives in `engine.models.session`; `engine.models.factory.build_runner` is the one
place that picks and builds a runner from the config (the shape of Frigate's `detection_runners`).
A TensorRT engine or a remote batched server plugs in here.

>>> v = BatchVerdict(True, "min cosine 1.000000")
>>> v.accepted
True
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RunFn = Callable[[np.ndarray], list[np.ndarray]]
"""Runs a (B, ...) input; every output has the batch as its first axis."""


@dataclass(frozen=True)
class BatchVerdict:
    """Whether a batched graph may replace single-image calls, with the measured difference."""

    accepted: bool
    detail: str


BatchCheck = Callable[[RunFn, RunFn], BatchVerdict]
"""(run the batched candidate, run one image a call) -> verdict. Detectors compare decoded faces,
embedders cosine similarity: what matters downstream, not raw output bits (which differ on GPU)."""


@dataclass(frozen=True)
class RunnerInfo:
    """What a loaded model runs on, for logs, health and `faceengine` output."""

    model: str
    provider: str
    batched: bool
    batch_check: str
    io_binding: bool = False
    """True when inputs are bound on the provider's device and outputs copied into CPU buffers
    (onnxruntime IO binding); False for plain `session.run`."""


class InferenceRunner(ABC):
    """Runs one model on batches. Thread-safe: several pipeline workers call `run` at once."""

    model: str
    """Model file name (for logs)."""

    @property
    @abstractmethod
    def provider(self) -> str:
        """The execution provider that actually runs the model (e.g. CPUExecutionProvider)."""

    @property
    @abstractmethod
    def batched(self) -> bool:
        """True when one call runs a whole batch; False when `run` loops over single images."""

    @property
    @abstractmethod
    def input_name(self) -> str: ...

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int | str | None, ...]:
        """Input dims; symbolic dims (batch, dynamic H/W) are names or None."""

    @abstractmethod
    def run(self, batch: np.ndarray, valid: int | None = None) -> list[np.ndarray]:
        """Run on a (B, ...) input; every output has the batch as its first axis. valid: only the first
        `valid` rows are real (spare rows pad the batch to a bucket); outputs then have `valid` rows."""

    def verify_batching(self, check: BatchCheck) -> BatchVerdict:
        """Judge a pending batched graph with `check` and keep only the graph that is used.
        Runners without a pending candidate (natively batched, remote) accept as they are."""
        return BatchVerdict(self.batched, "no batch rewrite pending")

    def try_fp16(self, check: BatchCheck) -> BatchVerdict:
        """Swap in a float16 graph if `check(run fp16, run fp32)` accepts it; runners that cannot convert
        keep what they run."""
        return BatchVerdict(False, "fp16 conversion not offered by this runner")

    @property
    def batch_check(self) -> str:
        """The last batch verdict, in words."""
        return "not checked"

    @property
    def io_binding(self) -> bool:
        """True when `run` binds its input on the provider's device (one upload a batch)."""
        return False

    @property
    def buckets(self) -> tuple[int, ...]:
        """Batch sizes `run` pads every batch to (fixed shapes on GPU providers); () when it does not pad."""
        return ()

    def padded(self, n: int) -> int:
        """Rows a caller should allocate for a batch of n so `run(batch, valid=n)` pads without a copy."""
        return n

    def session_stats(self) -> dict[str, Any]:
        """Distinct input shapes run against the buckets allowed, warm-up time, fp16 verdict (metrics, bench)."""
        return {"model": self.model, "provider": self.provider, "batched": self.batched, "bucketing": False,
                "bucket_sizes": [], "input_sizes": None, "buckets": None, "distinct_shapes": None, "shapes": [],
                "warmup_s": None, "fp16": "off", "io_binding": self.io_binding, "cuda_graphs": 0, "calls": None}

    def note_warmup(self, seconds: float) -> None:
        """Record time spent warming the buckets at load (runners that keep no statistics ignore it)."""
        return None

    def warm_up(self, call: Callable[[int], object], what: str, upto: int | None = None) -> float:
        """Run `call(rows)` once per bucket (up to `upto` rows: larger ones never occur) through the caller's
        own path, so the shapes are exactly the steady state's; each logged with its time; returns seconds."""
        total = 0.0
        for rows in [b for b in self.buckets or (1,) if upto is None or b <= self.padded(upto)]:
            t = time.perf_counter()
            call(rows)
            dt = time.perf_counter() - t
            total += dt
            log.info("%s on %s: warm-up %s, batch %d: %.3f s", self.model, self.provider, what, rows, dt)
        self.note_warmup(total)
        return total

    def info(self) -> RunnerInfo:
        return RunnerInfo(self.model, self.provider, self.batched, self.batch_check, self.io_binding)
