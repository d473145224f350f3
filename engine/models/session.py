"""onnxruntime runner: providers, threads, and the batch-dimension rewrite.

The shipped graphs fix the batch size at 1 (input dims, Reshape constants, intermediate shape
annotations). `make_batchable` rewrites them to a symbolic batch at load time; `OnnxRunner` keeps
the rewritten graph only if the model's own check (decoded faces for detectors, cosine for
embedders) finds it equivalent to single calls on this provider, and then holds that one session.
With `runtime.io_binding` on (auto: on CUDA/TensorRT) every call, batched, single or checked, goes
through onnxruntime IO binding: the input uploaded to the device once, outputs copied into CPU buffers.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from engine.config import RuntimeConfig
from engine.errors import ConfigError, ModelError
from engine.models.runner import BatchCheck, BatchVerdict, InferenceRunner

log = logging.getLogger(__name__)

GraphTransform = Callable[[onnx.ModelProto], onnx.ModelProto]
"""A graph rewrite applied to a model (and its batched variant) before loading, e.g. pre-processing nodes."""

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
_PROVIDERS = {"cpu": [CPU], "cuda": [CUDA, CPU], "tensorrt": [TRT, CUDA, CPU]}
_OPT = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_TRT_LIBS = ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so", "nvinfer_10.dll", "nvinfer.dll")


def auto_intra_op_threads() -> int:
    """Intra-op threads for `intra_op_threads = 0`: half the cores (at least one).

    The video pipeline runs two inference workers by default, each calling the sessions; with
    onnxruntime's own default (a spinning thread per core per call) the workers' threads fight
    for the cores, and on a shared 2-core machine a 2-thread session measured 1.5-3x slower per
    call than a 1-thread one (benchmarks/README.md)."""
    return max(1, (os.cpu_count() or 1) // 2)


def tensorrt_libraries_present() -> bool:
    """True when the TensorRT runtime library can be loaded (onnxruntime-gpu lists the TensorRT
    provider even where TensorRT itself is not installed, then fails at session creation)."""
    for name in _TRT_LIBS:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def resolve_providers(name: str) -> list[str]:
    """Providers to request for a config name, limited to those this onnxruntime build has.

    `auto` picks CUDA when this onnxruntime has it (TensorRT only when asked for by name: it needs
    its own libraries and minutes of engine building), else the CPU."""
    available = ort.get_available_providers()
    if name == "auto":
        return list(_PROVIDERS["cuda"]) if CUDA in available else [CPU]
    if name not in _PROVIDERS:
        raise ModelError(f"unknown provider {name!r}; use cpu, cuda, tensorrt or auto")
    wanted = _PROVIDERS[name]
    if wanted[0] not in available:
        raise ModelError(
            f"provider {name} asked for but this onnxruntime has only {available}; "
            "install onnxruntime-gpu (pip install 'faceengine[gpu]') or use provider=cpu"
        )
    if wanted[0] == TRT and not tensorrt_libraries_present():
        raise ConfigError(
            "runtime.provider = tensorrt, but the TensorRT libraries (libnvinfer) cannot be loaded; "
            "install TensorRT (pip install tensorrt) so its libraries are on the loader path, "
            "or use runtime.provider = cuda"
        )
    return list(wanted)


def provider_options(runtime: RuntimeConfig) -> list[tuple[str, dict[str, str]]]:
    """(provider, options) pairs for onnxruntime: device id for CUDA/TensorRT, TensorRT engine cache and fp16."""
    out: list[tuple[str, dict[str, str]]] = []
    for p in resolve_providers(runtime.provider):
        opts: dict[str, str] = {}
        if p in (CUDA, TRT):
            opts["device_id"] = str(runtime.device_id)
        if p == TRT:
            opts["trt_fp16_enable"] = "1" if runtime.tensorrt_fp16 else "0"
            if runtime.tensorrt_cache_dir:
                Path(runtime.tensorrt_cache_dir).mkdir(parents=True, exist_ok=True)
                opts["trt_engine_cache_enable"] = "1"
                opts["trt_engine_cache_path"] = runtime.tensorrt_cache_dir
        out.append((p, opts))
    return out


def make_batchable(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite a batch-1 graph so its batch dimension is symbolic.

    - real graph inputs (not initializers listed as inputs, as older exporters write them) and
      outputs: dim 0 -> 'N';
    - intermediate shape annotations (value_info) are dropped: they name batch 1, and onnxruntime
      plans buffer reuse from them (SFace failed with "Shape mismatch attempting to re-use buffer");
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
    weights = {i.name for i in graph.initializer}
    for t in [i for i in graph.input if i.name not in weights] + list(graph.output):
        dims = t.type.tensor_type.shape.dim
        if len(dims) > 0:
            dims[0].Clear()
            dims[0].dim_param = "N"
    del graph.value_info[:]
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


class OnnxRunner(InferenceRunner):
    """An onnxruntime runner that accepts any batch size, holding ONE session once settled.

    For a batch-1 graph it builds the rewritten batched session next to the original;
    `verify_batching` judges the pair and keeps only the one that will be used, so a loaded model
    never holds two copies of its weights (on a GPU: twice the memory)."""

    def __init__(self, path: Path, runtime: RuntimeConfig, batchable: bool = True, dynamic_hw: bool = False,
                 transform: GraphTransform | None = None) -> None:
        self.path = path
        self.model = path.name
        self._io_lock = threading.Lock()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = runtime.intra_op_threads or auto_intra_op_threads()
        opts.inter_op_num_threads = runtime.inter_op_threads
        opts.graph_optimization_level = _OPT[runtime.graph_optimization]
        opts.log_severity_level = 3
        providers = provider_options(runtime)
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and friends for corrupt files
            raise ModelError(f"cannot parse ONNX model {path}: {exc}") from exc
        self._input_name = model.graph.input[0].name
        if dynamic_hw:  # fully convolutional detectors run at any size that is a multiple of 32
            dims = model.graph.input[0].type.tensor_type.shape.dim
            for i, label in ((2, "H"), (3, "W")):
                if len(dims) == 4 and dims[i].HasField("dim_value"):
                    dims[i].Clear()
                    dims[i].dim_param = label
        fixed_batch = _input_batch_dim(model) == 1
        shape = transform or (lambda m: m)
        self._session = self._make(shape(model).SerializeToString(), opts, providers)
        self._input_name = self._session.get_inputs()[0].name
        self._input_shape = tuple(self._session.get_inputs()[0].shape)
        self._output_names = [o.name for o in self._session.get_outputs()]  # the rewrite keeps the names
        on_gpu = self.provider in (CUDA, TRT)
        self._io = runtime.io_binding == "on" or (runtime.io_binding == "auto" and on_gpu)
        self._io_device = ("cuda", runtime.device_id) if on_gpu else ("cpu", 0)
        self._candidate: ort.InferenceSession | None = None
        self._batched = not fixed_batch
        self._verdict = "graph takes any batch" if self._batched else "batch rewrite off"
        if batchable and fixed_batch:
            try:
                self._candidate = self._make(shape(make_batchable(model)).SerializeToString(), opts, providers)
                self._verdict = "batch rewrite pending check"
            except Exception as exc:  # rewrite is an optimisation: never fail the load for it
                self._verdict = f"batch rewrite failed ({exc})"
                log.warning("%s: batch rewrite failed (%s); running one image a call", self.model, exc)

    @staticmethod
    def _make(raw: bytes, opts: ort.SessionOptions,
              providers: list[tuple[str, dict[str, str]]]) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(raw, opts, providers=providers)
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load the model: {exc}") from exc

    @property
    def provider(self) -> str:
        return str(self._session.get_providers()[0])

    @property
    def providers(self) -> list[str]:
        """Every provider of the session, in priority order (the first one runs what it can)."""
        return list(self._session.get_providers())

    @property
    def batched(self) -> bool:
        return self._batched

    @property
    def input_name(self) -> str:
        return self._input_name

    @property
    def input_shape(self) -> tuple[int | str | None, ...]:
        return self._input_shape

    @property
    def batch_check(self) -> str:
        return self._verdict

    @property
    def io_binding(self) -> bool:
        return self._io

    def _io_words(self) -> str:
        return f"IO binding on ({self._io_device[0]}:{self._io_device[1]})" if self._io else "IO binding off"

    def verify_batching(self, check: BatchCheck) -> BatchVerdict:
        """Keep the batched graph if `check` accepts it against single calls, else drop it.
        Both sides run through `_call`, i.e. with IO binding when it is on: the check judges what runs."""
        cand = self._candidate
        if cand is None:
            log.info("%s on %s: %s, %s", self.model, self.provider, self._verdict, self._io_words())
            return BatchVerdict(self._batched, self._verdict)
        try:
            verdict = check(lambda x: self._call(cand, x), self._run_single)
        except Exception as exc:  # a candidate that cannot run a batch is simply not used
            verdict = BatchVerdict(False, f"batch check failed ({exc})")
        self._candidate = None
        if verdict.accepted:
            self._session, self._batched = cand, True
        self._verdict = verdict.detail
        level = logging.INFO if verdict.accepted else logging.WARNING
        log.log(level, "%s on %s: batched graph %s (%s), %s", self.model, self.provider,
                "accepted" if verdict.accepted else "refused, one image a call", verdict.detail, self._io_words())
        return verdict

    def _call(self, session: ort.InferenceSession, x: np.ndarray) -> list[np.ndarray]:
        """One session call, through IO binding when it is on.

        Should binding fail where a plain `session.run` of the same input succeeds (an onnxruntime
        that cannot place tensors on the device), IO binding is switched off for good with one
        warning and the call's result comes from `session.run`: a frame never fails for it. When
        the plain run fails too, the input is at fault and that error is raised as without binding."""
        if not self._io:
            return list(session.run(None, {self._input_name: x}))
        try:
            return self._bound(session, x)
        except Exception as exc:  # IO binding is an optimisation: fall back, never fail the frame for it
            out = list(session.run(None, {self._input_name: x}))
            self._drop_io_binding(exc)
            return out

    def _bound(self, session: ort.InferenceSession, x: np.ndarray) -> list[np.ndarray]:
        """Run with a fresh IOBinding (one per call, so concurrent workers never share one): the
        input placed on the device in one copy (on the CPU the OrtValue wraps the array, no copy),
        outputs bound to the CPU because decoding and alignment run there."""
        device, device_id = self._io_device
        binding = session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x), device, device_id)
        binding.bind_ortvalue_input(self._input_name, value)
        for name in self._output_names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def _drop_io_binding(self, exc: Exception) -> None:
        with self._io_lock:  # several workers may fail at once: switch off and warn once
            if not self._io:
                return
            self._io = False
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        log.warning("%s on %s: IO binding to %s:%d failed (%s); running with plain session.run", self.model,
                    self.provider, self._io_device[0], self._io_device[1], reason)

    def _run_single(self, batch: np.ndarray) -> list[np.ndarray]:
        per = [self._call(self._session, batch[i : i + 1]) for i in range(batch.shape[0])]
        return [np.stack([_drop_batch(p[j]) for p in per]) for j in range(len(per[0]))] if per else []

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run on (B, ...) input; every output has the batch as its first axis."""
        if self._batched:
            return self._call(self._session, batch)
        return self._run_single(batch)


def _drop_batch(out: np.ndarray) -> np.ndarray:
    """A batch-1 output without its batch axis (heads that never had one are returned as is)."""
    return out[0] if out.ndim >= 2 and out.shape[0] == 1 else out


def _input_batch_dim(model: onnx.ModelProto) -> int:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0
