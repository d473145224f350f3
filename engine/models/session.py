"""onnxruntime runner: providers, threads, and the batch-dimension rewrite.

The shipped graphs fix the batch size at 1 (input dims, Reshape constants, intermediate shape
annotations). `make_batchable` rewrites them to a symbolic batch at load time; `OnnxRunner` keeps
the rewritten graph only if the model's own check (decoded faces for detectors, cosine for
embedders) finds it equivalent to single calls on this provider, and then holds that one session.
With `runtime.io_binding` on (auto: on CUDA/TensorRT) every call, batched, single or checked, goes
through onnxruntime IO binding: the input uploaded to the device once, outputs copied into CPU buffers.
"""

from __future__ import annotations

import atexit
import copy
import ctypes
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from engine.config import RuntimeConfig
from engine.errors import ConfigError, ModelError
from engine.models.profile import summarise_profile
from engine.models.runner import BatchCheck, BatchVerdict, InferenceRunner
from engine.settings import gpu_provider

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
        if p == CUDA:
            opts.update(cuda_options(runtime))
        if p == TRT:
            opts["trt_fp16_enable"] = "1" if runtime.tensorrt_fp16 else "0"
            if runtime.tensorrt_cache_dir:
                Path(runtime.tensorrt_cache_dir).mkdir(parents=True, exist_ok=True)
                opts["trt_engine_cache_enable"] = "1"
                opts["trt_engine_cache_path"] = runtime.tensorrt_cache_dir
        out.append((p, opts))
    return out


def cuda_options(runtime: RuntimeConfig) -> dict[str, str]:
    """CUDA provider options for inference: cuDNN's heuristic algorithm pick (no timing runs per new shape;
    `runtime.cudnn_conv_algo_search`) and, with `runtime.cuda_graphs` and shape buckets on, CUDA graph
    capture (one graph per bucket, replayed through preallocated device buffers)."""
    opts: dict[str, str] = {"cudnn_conv_algo_search": runtime.cudnn_conv_algo_search}
    if runtime.cuda_graphs and buckets_on(runtime):
        opts["enable_cuda_graph"] = "1"
    return opts


def _on(value: str, runtime: RuntimeConfig) -> bool:
    """An auto/on/off setting resolved: auto = on for GPU providers."""
    return value == "on" or (value == "auto" and gpu_provider(runtime.provider))


def buckets_on(runtime: RuntimeConfig) -> bool:
    """Whether batches are padded to `runtime.bucket_sizes` (auto: GPU providers)."""
    return _on(runtime.shape_buckets, runtime)


def warmup_on(runtime: RuntimeConfig) -> bool:
    """Whether every bucket runs once at load (auto: GPU providers with buckets on)."""
    return buckets_on(runtime) and _on(runtime.warmup, runtime)


def fp16_on(runtime: RuntimeConfig) -> bool:
    """Whether models are converted to float16 at load and checked against fp32 (auto: GPU providers)."""
    return _on(runtime.fp16, runtime)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with float32 weights and activations in float16; inputs and outputs keep their types
    (onnxruntime's own converter, which leaves ops without fp16 kernels in fp32 behind Casts)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(copy.deepcopy(model), keep_io_types=True, disable_shape_infer=True)


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
    never holds two copies of its weights (on a GPU: twice the memory). With shape buckets on
    (`runtime.shape_buckets`) `run` pads every batch to the next bucket and slices the outputs back,
    so the session sees a few fixed shapes; `session_stats` counts the distinct shapes it ran.
    With `runtime.fp16` on, `try_fp16` swaps in a float16 copy of the kept graph if its check passes."""

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
        self._profile_left: int | None = None
        self._profile_dir = runtime.profile_dir
        if runtime.profile_dir:
            Path(runtime.profile_dir).mkdir(parents=True, exist_ok=True)
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(runtime.profile_dir) / path.stem)
            self._profile_left = runtime.profile_runs
            atexit.register(self._profile_finish)  # fewer calls than profile_runs: written at exit
        providers = provider_options(runtime)
        self._opts, self._providers = opts, providers
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
        want_fp16 = fp16_on(runtime)
        self._transform = shape
        self._raw: bytes | None = model.SerializeToString() if want_fp16 else None
        """The graph behind `_session` before `transform` (pre-processing nodes stay float32: they compute
        sizes), kept only until the fp16 conversion is settled."""
        self._session = self._make(shape(model).SerializeToString(), opts, self._providers)
        self._cand_raw: bytes | None = None
        self._input_name = self._session.get_inputs()[0].name
        self._input_shape = tuple(self._session.get_inputs()[0].shape)
        self._output_names = [o.name for o in self._session.get_outputs()]  # the rewrite keeps the names
        on_gpu = self.provider in (CUDA, TRT)
        self._io = runtime.io_binding == "on" or (runtime.io_binding == "auto" and on_gpu)
        self._io_device = ("cuda", runtime.device_id) if on_gpu else ("cpu", 0)
        self._candidate: ort.InferenceSession | None = None
        self._batched = not fixed_batch
        self._verdict = "graph takes any batch" if self._batched else "batch rewrite off"
        self._buckets: tuple[int, ...] = tuple(runtime.bucket_sizes) if buckets_on(runtime) else ()
        self._shapes: set[tuple[int, ...]] = set()
        self._calls = 0
        self._warmup_s: float | None = None
        self._fp16 = "pending check" if want_fp16 else "off"
        graphs_asked = any(o.get("enable_cuda_graph") == "1" for _, o in self._providers)
        self._graphs = graphs_asked and on_gpu and self._io
        """CUDA graphs (runtime.cuda_graphs): one captured graph per bucket shape, replayed through its slot."""
        self._no_graph: ort.RunOptions | None = None
        if graphs_asked:
            self._no_graph = ort.RunOptions()  # every call outside a slot runs plainly, never captured
            self._no_graph.add_run_config_entry("gpu_graph_id", "-1")
        self._slots: dict[tuple[tuple[int, ...], str], _GraphSlot] = {}
        self._slot_lock = threading.Lock()
        if batchable and fixed_batch:
            try:
                batched = make_batchable(model)
                self._cand_raw = batched.SerializeToString() if want_fp16 else None
                self._candidate = self._make(shape(batched).SerializeToString(), opts, self._providers)
                self._verdict = "batch rewrite pending check"
            except Exception as exc:  # rewrite is an optimisation: never fail the load for it
                self._verdict = f"batch rewrite failed ({exc})"
                log.warning("%s: batch rewrite failed (%s); running one image a call", self.model, exc)

    def _make(self, raw: bytes, opts: ort.SessionOptions,
              providers: list[tuple[str, dict[str, str]]]) -> ort.InferenceSession:
        """A session; one that onnxruntime refuses with CUDA graphs (a model with nodes outside the CUDA
        provider) is loaded without them, with one warning, and so is every later session of this runner."""
        try:
            return ort.InferenceSession(raw, opts, providers=providers)
        except Exception as exc:
            if any(o.get("enable_cuda_graph") == "1" for _, o in providers):
                plain = [(p, {k: v for k, v in o.items() if k != "enable_cuda_graph"}) for p, o in providers]
                log.warning("%s: onnxruntime refused CUDA graphs (%s); loading without them", self.model,
                            (str(exc).splitlines() or [type(exc).__name__])[0][:300])
                self._providers = plain
                return self._make(raw, opts, plain)
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

    @property
    def buckets(self) -> tuple[int, ...]:
        """Batch sizes `run` pads to: the configured buckets, (1,) for a graph run one image a call, () off."""
        if not self._buckets:
            return ()
        return self._buckets if self._batched else (1,)

    @property
    def fp16(self) -> str:
        return self._fp16

    def padded(self, n: int) -> int:
        """Rows to allocate for a batch of n so `run` pads without a copy: n's bucket (a multiple of the
        largest bucket beyond it); n itself when not padding."""
        if not self._buckets or not self._batched:
            return n
        top = self._buckets[-1]
        if n > top:
            return -(-n // top) * top
        return next(b for b in self._buckets if b >= n)

    def _io_words(self) -> str:
        return f"IO binding on ({self._io_device[0]}:{self._io_device[1]})" if self._io else "IO binding off"

    def _use(self, session: ort.InferenceSession) -> None:
        """Make `session` the one that runs; its shape count and CUDA graph slots start afresh."""
        self._session = session
        self._shapes = set()
        self._slots = {}

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
            self._use(cand)
            self._batched = True
            self._raw = self._cand_raw
        self._cand_raw = None
        self._verdict = verdict.detail
        level = logging.INFO if verdict.accepted else logging.WARNING
        log.log(level, "%s on %s: batched graph %s (%s), %s", self.model, self.provider,
                "accepted" if verdict.accepted else "refused, one image a call", verdict.detail, self._io_words())
        return verdict

    def try_fp16(self, check: BatchCheck) -> BatchVerdict:
        """Convert the kept graph to float16 and keep it only if `check(run fp16, run fp32)` accepts
        (detectors: decoded faces as in the batch check; embedders: cosine >= 0.999); the verdict is
        logged like the batch check's. Off (runtime.fp16) or already settled: nothing happens."""
        raw, self._raw = self._raw, None
        if raw is None:
            return BatchVerdict(False, self._fp16)
        fp32 = self._session
        try:
            graph = self._transform(to_fp16(onnx.load_from_string(raw)))  # the model in fp16, pre-processing in fp32
            fp16 = self._make(graph.SerializeToString(), self._opts, self._providers)
            if self._batched:
                verdict = check(lambda x: self._call(fp16, x), lambda x: self._call(fp32, x))
            else:
                verdict = check(lambda x: self._run_single(x, fp16), lambda x: self._run_single(x, fp32))
        except Exception as exc:  # fp16 is an optimisation: never fail the load for it
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            verdict = BatchVerdict(False, f"fp16 graph failed ({reason})")
        if verdict.accepted:
            self._use(fp16)
        self._fp16 = ("kept: " if verdict.accepted else "refused, fp32 kept: ") + verdict.detail
        level = logging.INFO if verdict.accepted else logging.WARNING
        log.log(level, "%s on %s: fp16 graph %s", self.model, self.provider, self._fp16)
        return verdict

    def _call(self, session: ort.InferenceSession, x: np.ndarray) -> list[np.ndarray]:
        """One session call, through IO binding when it is on.

        Should binding fail where a plain `session.run` of the same input succeeds (an onnxruntime
        that cannot place tensors on the device), IO binding is switched off for good with one
        warning and the call's result comes from `session.run`: a frame never fails for it. When
        the plain run fails too, the input is at fault and that error is raised as without binding."""
        if not self._io:
            return list(session.run(None, {self._input_name: x}, self._no_graph))
        try:
            return self._bound(session, x)
        except Exception as exc:  # IO binding is an optimisation: fall back, never fail the frame for it
            out = list(session.run(None, {self._input_name: x}, self._no_graph))
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
        session.run_with_iobinding(binding, self._no_graph)
        return list(binding.copy_outputs_to_cpu())

    def _drop_io_binding(self, exc: Exception) -> None:
        with self._io_lock:  # several workers may fail at once: switch off and warn once
            if not self._io:
                return
            self._io = False
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        log.warning("%s on %s: IO binding to %s:%d failed (%s); running with plain session.run", self.model,
                    self.provider, self._io_device[0], self._io_device[1], reason)

    def _run_single(self, batch: np.ndarray, session: ort.InferenceSession | None = None) -> list[np.ndarray]:
        sess = session or self._session
        per = [self._call(sess, batch[i : i + 1]) for i in range(batch.shape[0])]
        return [np.stack([_drop_batch(p[j]) for p in per]) for j in range(len(per[0]))] if per else []

    def _counted(self, x: np.ndarray, single: bool = False) -> list[np.ndarray]:
        """A call of the kept session, its input shape counted (set.add is atomic under the GIL)."""
        self._shapes.add((1, *x.shape[1:]) if single else tuple(x.shape))
        if single:
            out = self._run_single(x)
        elif self._graphs and self._buckets:
            out = self._graph_call(x)
        else:
            out = self._call(self._session, x)
        self._calls += 1
        if self._profile_left is not None:
            self._profile_tick()
        return out

    def run(self, batch: np.ndarray, valid: int | None = None) -> list[np.ndarray]:
        """Run on (B, ...) input; every output has the batch as its first axis.

        valid: only the first `valid` rows are real (the caller allocated `padded(valid)` rows so the
        bucket needs no copy); outputs have `valid` rows. With buckets on, a batch is padded to its
        bucket (zero rows, or the caller's spare rows) and batches beyond the largest run in chunks."""
        n = batch.shape[0] if valid is None else valid
        if not self._batched:
            return self._counted(batch[:n], single=True)
        if not self._buckets:
            return self._counted(batch if n == batch.shape[0] else batch[:n])
        top = self._buckets[-1]
        if n > top:
            parts = [self.run(batch[i : i + top], min(top, n - i)) for i in range(0, n, top)]
            return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
        rows = self.padded(n)
        x = batch
        if batch.shape[0] != rows:
            x = np.zeros((rows, *batch.shape[1:]), batch.dtype)
            x[:n] = batch[:n]
        outs = self._counted(x)
        return outs if n == rows else [o[:n] for o in outs]

    def _graph_call(self, x: np.ndarray) -> list[np.ndarray]:
        """One call through the CUDA graph of x's shape: the input copied into the slot's preallocated device
        buffer, the captured graph replayed, the outputs copied back. A slot that cannot be made or run
        switches CUDA graphs off for good (one warning) and the call runs plainly."""
        key = (tuple(x.shape), str(x.dtype))
        try:
            slot = self._slots.get(key)
            if slot is None:
                with self._slot_lock:
                    slot = self._slots.get(key) or self._new_slot(x)
                    self._slots[key] = slot
                return slot.last  # the slot's own check ran x through the graph
            with slot.lock:
                slot.input.update_inplace(np.ascontiguousarray(x))
                self._session.run_with_iobinding(slot.binding, slot.options)
                return [np.array(o.numpy()) for o in slot.outputs]  # a copy: the next replay rewrites them
        except Exception as exc:  # graphs are an optimisation: never fail a frame for them
            self._graphs = False
            log.warning("%s on %s: CUDA graph for input %s failed (%s); running without CUDA graphs", self.model,
                        self.provider, key[0], (str(exc).splitlines() or [type(exc).__name__])[0][:300])
            return self._call(self._session, x)

    def _new_slot(self, x: np.ndarray) -> _GraphSlot:
        """Preallocate the device input and outputs for x's shape, capture its graph (onnxruntime captures
        after a few plain runs of a graph id) and check it: replaying x gives the plain run's outputs, and
        another input gives other outputs (the graph reads the buffer it was given)."""
        device, device_id = self._io_device
        gid = len(self._slots) + 1
        options = ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(gid))
        plain = self._call(self._session, x)
        value = ort.OrtValue.ortvalue_from_numpy(np.array(x), device, device_id)  # own memory, never the caller's
        outputs = [ort.OrtValue.ortvalue_from_shape_and_type(list(o.shape), o.dtype, device, device_id) for o in plain]
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(self._input_name, value)
        for name, out in zip(self._output_names, outputs, strict=True):
            binding.bind_ortvalue_output(name, out)
        for _ in range(3):  # plain runs of this graph id, then the capture, then a replay
            self._session.run_with_iobinding(binding, options)
        got = [np.array(o.numpy()) for o in outputs]
        worst = max(float(np.abs(g - p).max()) for g, p in zip(got, plain, strict=True) if g.size)
        if worst > 1e-3:
            raise ModelError(f"replayed graph differs from the plain run by {worst:.2e}")
        value.update_inplace(np.ascontiguousarray(x[::-1] if len(x) > 1 else 255 - x if x.dtype == np.uint8
                                                  else -x))
        self._session.run_with_iobinding(binding, options)
        if all(np.array_equal(o.numpy(), g) for o, g in zip(outputs, got, strict=True)):
            raise ModelError("replayed graph ignores its input buffer")
        value.update_inplace(np.ascontiguousarray(x))
        self._session.run_with_iobinding(binding, options)
        log.info("%s on %s: CUDA graph %d captured for input %s (replay within %.1e of the plain run)", self.model,
                 self.provider, gid, tuple(x.shape), worst)
        return _GraphSlot(value, outputs, binding, options, threading.Lock(), got)

    def session_stats(self) -> dict[str, Any]:
        """What this session ran: distinct input shapes against the buckets allowed for the input sizes
        seen (`buckets` x sizes), the warm-up time, the fp16 verdict, calls; for metrics and bench JSON."""
        shapes = sorted(self._shapes)
        sizes = {s[1:] for s in shapes}
        allowed = self.buckets
        return {"model": self.model, "provider": self.provider, "batched": self._batched,
                "bucketing": bool(allowed), "bucket_sizes": list(allowed), "input_sizes": len(sizes),
                "buckets": len(allowed) * max(1, len(sizes)) if allowed else None,
                "distinct_shapes": len(shapes), "shapes": [list(s) for s in shapes[:64]],
                "warmup_s": None if self._warmup_s is None else round(self._warmup_s, 4), "fp16": self._fp16,
                "io_binding": self._io, "cuda_graphs": len(self._slots) if self._graphs else 0,
                "calls": self._calls}

    def note_warmup(self, seconds: float) -> None:
        self._warmup_s = (self._warmup_s or 0.0) + seconds

    def _profile_tick(self) -> None:
        """Count a profiled call; after `runtime.profile_runs` end onnxruntime's profile (it writes the
        trace) and write its top-operators summary beside it, so a profile exists while the process runs."""
        with self._io_lock:
            if self._profile_left is None:
                return
            self._profile_left -= 1
            if self._profile_left > 0:
                return
        self._profile_finish()

    def _profile_finish(self) -> None:
        """End the kept session's profile now (at most once) and summarise it."""
        with self._io_lock:
            if self._profile_left is None:
                return
            self._profile_left = None
        try:
            trace = self._session.end_profiling()
            summary = summarise_profile(trace)
            Path(trace).with_suffix(".top.json").write_text(json.dumps(summary, indent=1))
            log.info("%s on %s: profile of %d calls in %s; top operators %s", self.model, self.provider,
                     summary["runs"], trace, ", ".join(f"{o['op']} {o['share']:.0%}" for o in summary["top"][:5]))
        except Exception as exc:  # a profile is a diagnostic: never fail a frame for it
            log.warning("%s: writing the onnxruntime profile to %s failed: %s", self.model, self._profile_dir, exc)


@dataclass
class _GraphSlot:
    """One bucket shape's CUDA graph: its preallocated device input and outputs, bound once."""

    input: ort.OrtValue
    outputs: list[ort.OrtValue]
    binding: ort.IOBinding
    options: ort.RunOptions
    lock: threading.Lock
    last: list[np.ndarray]


def _drop_batch(out: np.ndarray) -> np.ndarray:
    """A batch-1 output without its batch axis (heads that never had one are returned as is)."""
    return out[0] if out.ndim >= 2 and out.shape[0] == 1 else out


def _input_batch_dim(model: onnx.ModelProto) -> int:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0
