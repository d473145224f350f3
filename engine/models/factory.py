"""The one place that turns a model and the runtime config into an inference runner."""

from __future__ import annotations

from pathlib import Path

from engine.config import RuntimeConfig
from engine.models.fake import FakeRunner, Layout
from engine.models.registry import ModelRegistry, ModelSpec
from engine.models.runner import InferenceRunner
from engine.models.session import GraphTransform, OnnxRunner


def build_runner(path: Path, runtime: RuntimeConfig, *, batchable: bool = True, dynamic_hw: bool = False,
                 transform: GraphTransform | None = None, spec: ModelSpec | None = None) -> InferenceRunner:
    """A runner for `path` on the configured backend, provider, device, threads and graph optimisation.

    batchable: also prepare the batch rewrite of a batch-1 graph; the caller settles it with
    `runner.verify_batching(check)` (one session is kept either way).
    dynamic_hw: free the input height and width (fully convolutional detectors).
    transform: a graph rewrite applied before loading (detector pre-processing nodes).
    spec: the model's manifest entry; the fake runner (`runtime.runner = "fake"`) needs it for the
    output layout (detector family, embedding size) and reads no file.
    Every backend (onnxruntime CPU/CUDA/TensorRT, with IO binding per `runtime.io_binding`; the fake
    runner; a remote server later) is chosen here, so detectors and embedders never build sessions themselves."""
    if runtime.runner == "fake":
        if spec is None:
            raise ValueError("the fake runner needs the model's manifest entry (spec=) for its output layout")
        return fake_runner(spec, runtime)
    return OnnxRunner(path, runtime, batchable=batchable, dynamic_hw=dynamic_hw, transform=transform)


def fake_runner(spec: ModelSpec, runtime: RuntimeConfig) -> FakeRunner:
    """The fake runner in `spec`'s layout: a detector family's heads or an embedder's vectors."""
    layout: Layout
    if spec.task == "embedder":
        layout = "embedding"
    elif spec.task == "detector" and spec.family in ("yunet", "scrfd"):
        layout = spec.family  # type: ignore[assignment]
    else:
        raise ValueError(f"the fake runner has no layout for model {spec.name} (task={spec.task}, "
                         f"family={spec.family})")
    return FakeRunner(spec.file, layout, dim=spec.dim or 128, faces=runtime.fake_faces,
                      cost_ms=runtime.fake_cost_ms)


def load_runner(registry: ModelRegistry, name: str, runtime: RuntimeConfig, *, batchable: bool = True,
                dynamic_hw: bool = False, transform: GraphTransform | None = None) -> InferenceRunner:
    """The runner for a manifest name: its verified file on onnxruntime, or the fake runner (no file)."""
    spec = registry.spec(name)
    if runtime.runner == "fake":
        return fake_runner(spec, runtime)
    return build_runner(registry.path(name), runtime, batchable=batchable, dynamic_hw=dynamic_hw,
                        transform=transform, spec=spec)
