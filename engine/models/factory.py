"""The one place that turns a model file and the runtime config into an inference runner."""

from __future__ import annotations

from pathlib import Path

from engine.config import RuntimeConfig
from engine.models.runner import InferenceRunner
from engine.models.session import GraphTransform, OnnxRunner


def build_runner(path: Path, runtime: RuntimeConfig, *, batchable: bool = True, dynamic_hw: bool = False,
                 transform: GraphTransform | None = None) -> InferenceRunner:
    """A runner for `path` on the configured provider, device, threads and graph optimisation.

    batchable: also prepare the batch rewrite of a batch-1 graph; the caller settles it with
    `runner.verify_batching(check)` (one session is kept either way).
    dynamic_hw: free the input height and width (fully convolutional detectors).
    transform: a graph rewrite applied before loading (detector pre-processing nodes).
    Every backend (onnxruntime CPU/CUDA/TensorRT, with IO binding per `runtime.io_binding`; a remote
    server later) is chosen here, so detectors and embedders never build sessions themselves."""
    return OnnxRunner(path, runtime, batchable=batchable, dynamic_hw=dynamic_hw, transform=transform)
