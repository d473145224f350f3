"""onnxruntime session factory: providers, threads, and the batch-dimension rewrite.

The shipped graphs fix the batch size at 1 (input dims and Reshape constants). `make_batchable`
rewrites them to a symbolic batch at load time; `Session` then checks that a batch of two gives
the same outputs as two single calls, and falls back to looping if it does not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from engine.config import RuntimeConfig
from engine.errors import ModelError

log = logging.getLogger(__name__)

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_OPT = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def auto_intra_op_threads() -> int:
    """Intra-op threads for `intra_op_threads = 0`: half the cores (at least one).

    The video pipeline runs two inference workers by default, each calling the sessions; with
    onnxruntime's own default (a spinning thread per core per call) the workers' threads fight
    for the cores, and on a shared 2-core machine a 2-thread session measured 1.5-3x slower per
    call than a 1-thread one (benchmarks/README.md)."""
    return max(1, (os.cpu_count() or 1) // 2)


def resolve_providers(name: str) -> list[str]:
    """Providers to request for a config name, limited to those this onnxruntime build has."""
    available = ort.get_available_providers()
    if name == "auto":
        wanted = [p for p in _PROVIDERS["tensorrt"] if p in available]
        return wanted or ["CPUExecutionProvider"]
    if name not in _PROVIDERS:
        raise ModelError(f"unknown provider {name!r}; use cpu, cuda, tensorrt or auto")
    wanted = _PROVIDERS[name]
    if wanted[0] not in available:
        raise ModelError(
            f"provider {name} asked for but this onnxruntime has only {available}; "
            "install onnxruntime-gpu (pip install 'faceengine[gpu]') or use provider=cpu"
        )
    return wanted


def make_batchable(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite a batch-1 graph so its batch dimension is symbolic.

    - graph inputs/outputs: dim 0 -> 'N';
    - Reshape with a constant shape starting with 1 -> 0 (copy the batch dim);
    - Reshape(-1, k) fed by a Transpose that moved the batch axis (SCRFD heads): the Transpose
      keeps batch first and the Reshape becomes (0, -1, k), i.e. one row block per image.
    """
    graph = model.graph
    consts: dict[str, onnx.TensorProto] = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    producer = {out: node for node in graph.node for out in node.output}
    for t in list(graph.input) + list(graph.output):
        dims = t.type.tensor_type.shape.dim
        if len(dims) > 0:
            dims[0].Clear()
            dims[0].dim_param = "N"
    original = {name: numpy_helper.to_array(t).copy() for name, t in consts.items()}
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] not in consts:
            continue
        shape = original[node.input[1]].copy()  # constants can be shared by several Reshapes
        if shape.ndim != 1 or shape.size == 0:
            continue
        if shape[0] == 1:
            shape[0] = 0
        elif shape[0] == -1:
            src = producer.get(node.input[0])
            if src is None or src.op_type != "Transpose":
                continue
            perm_attr = next(a for a in src.attribute if a.name == "perm")
            perm = list(perm_attr.ints)
            if perm[0] != 0:
                perm_attr.ints[:] = [0] + [p for p in perm if p != 0]
            shape = np.concatenate([[0], shape]).astype(shape.dtype)
        else:
            continue
        consts[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    for out in graph.output:  # shapes changed rank for some heads; let onnxruntime infer them
        out.type.tensor_type.ClearField("shape")
    return model


class Session:
    """A thread-safe onnxruntime session that accepts any batch size."""

    def __init__(self, path: Path, runtime: RuntimeConfig, batchable: bool = True,
                 sample_shape: tuple[int, ...] | None = None, dynamic_hw: bool = False) -> None:
        self.path = path
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = runtime.intra_op_threads or auto_intra_op_threads()
        opts.inter_op_num_threads = runtime.inter_op_threads
        opts.graph_optimization_level = _OPT.get(runtime.graph_optimization, _OPT["all"])
        opts.log_severity_level = 3
        providers = resolve_providers(runtime.provider)
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and friends for corrupt files
            raise ModelError(f"cannot parse ONNX model {path}: {exc}") from exc
        self.input_name = model.graph.input[0].name
        if dynamic_hw:  # fully convolutional detectors run at any size that is a multiple of 32
            dims = model.graph.input[0].type.tensor_type.shape.dim
            for i, label in ((2, "H"), (3, "W")):
                if len(dims) == 4 and dims[i].HasField("dim_value"):
                    dims[i].Clear()
                    dims[i].dim_param = label
        self.batched = False
        raw = model.SerializeToString()
        fixed_batch = _input_batch_dim(model) == 1
        self._single = self._make(raw, opts, providers)
        self._batch = self._single
        if batchable and fixed_batch:
            try:
                cand = self._make(make_batchable(model).SerializeToString(), opts, providers)
                if sample_shape is None or self._equivalent(cand, sample_shape):
                    self._batch = cand
                    self.batched = True
                else:
                    log.warning("%s: batched rewrite changed outputs; running one image a call", path.name)
            except Exception as exc:  # rewrite is an optimisation: never fail the load for it
                log.warning("%s: batch rewrite failed (%s); running one image a call", path.name, exc)
        elif not fixed_batch:
            self.batched = True
        self.providers = self._batch.get_providers()
        log.info("loaded %s on %s (batched=%s)", path.name, self.providers[0], self.batched)

    @staticmethod
    def _make(raw: bytes, opts: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(raw, opts, providers=providers)
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load the model: {exc}") from exc

    def _equivalent(self, cand: ort.InferenceSession, sample_shape: tuple[int, ...]) -> bool:
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (2, *sample_shape)).astype(np.float32)
        batched = cand.run(None, {self.input_name: x})
        singles = [self._single.run(None, {self.input_name: x[i : i + 1]}) for i in range(2)]
        for j, out in enumerate(batched):
            ref = np.stack([s[j].reshape(-1) for s in singles])
            if out.size != ref.size or not np.allclose(out.reshape(2, -1), ref, atol=1e-4, rtol=1e-3):
                return False
        return True

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run on (B, ...) input; every output has the batch as its first axis."""
        if self.batched:
            return list(self._batch.run(None, {self.input_name: batch}))
        per = [self._single.run(None, {self.input_name: batch[i : i + 1]}) for i in range(batch.shape[0])]
        return [np.stack([_drop_batch(p[j]) for p in per]) for j in range(len(per[0]))] if per else []


def _drop_batch(out: np.ndarray) -> np.ndarray:
    """A batch-1 output without its batch axis (heads that never had one are returned as is)."""
    return out[0] if out.ndim >= 2 and out.shape[0] == 1 else out


def _input_batch_dim(model: onnx.ModelProto) -> int:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0
