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

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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
    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run on a (B, ...) input; every output has the batch as its first axis."""

    def verify_batching(self, check: BatchCheck) -> BatchVerdict:
        """Judge a pending batched graph with `check` and keep only the graph that is used.
        Runners without a pending candidate (natively batched, remote) accept as they are."""
        return BatchVerdict(self.batched, "no batch rewrite pending")

    @property
    def batch_check(self) -> str:
        """The last batch verdict, in words."""
        return "not checked"

    @property
    def io_binding(self) -> bool:
        """True when `run` binds its input on the provider's device (one upload a batch)."""
        return False

    def info(self) -> RunnerInfo:
        return RunnerInfo(self.model, self.provider, self.batched, self.batch_check, self.io_binding)
