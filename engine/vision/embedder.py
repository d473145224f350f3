"""Face embedders (MobileFaceNet, SFace, ArcFace w600k/glint) on onnxruntime: aligned crops -> unit vectors."""

from __future__ import annotations

import numpy as np

from engine.config import EmbedderConfig, RuntimeConfig
from engine.models.factory import load_runner
from engine.models.registry import ModelRegistry, ModelSpec
from engine.models.runner import BatchVerdict, InferenceRunner, RunFn
from engine.models.session import warmup_on
from engine.vision.batchcheck import FP16_MIN_COSINE, compare_embeddings, sample_images


class FaceEmbedder:
    """Embeds aligned 112x112 BGR crops in batches; outputs are L2-normalised float32 (N, dim).

    The model runs in an injected `InferenceRunner` (built by `engine.models.factory`)."""

    def __init__(self, spec: ModelSpec, runner: InferenceRunner, cfg: EmbedderConfig) -> None:
        self.spec = spec
        self.name = spec.name
        self.runner = runner
        self.cfg = cfg
        probe = runner.run(np.zeros((1, 3, 112, 112), np.float32))[0]
        self.dim = int(probe.reshape(1, -1).shape[1])
        if spec.dim and spec.dim != self.dim:
            raise ValueError(f"{spec.name}: manifest says dim {spec.dim}, model outputs {self.dim}")

    def _blob(self, crops: np.ndarray) -> np.ndarray:
        x = crops[..., ::-1] if self.spec.color == "RGB" else crops
        x = x.astype(np.float32)
        if self.spec.mean or self.spec.std != 1.0:
            x = (x - self.spec.mean) / self.spec.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def batch_check(self, run_batched: RunFn, run_single: RunFn) -> BatchVerdict:
        """Embed four sample crops through the batched graph and through single calls; every
        pair must agree to cosine >= MIN_COSINE (`compare_embeddings`)."""
        blob = self._blob(sample_images(4, 112, 112, seed=1))
        return compare_embeddings(run_single(blob)[0], run_batched(blob)[0])

    def fp16_check(self, run_fp16: RunFn, run_fp32: RunFn) -> BatchVerdict:
        """Embed four sample crops with the float16 graph and the float32 one; every pair must agree to
        cosine >= FP16_MIN_COSINE."""
        blob = self._blob(sample_images(4, 112, 112, seed=2))
        return compare_embeddings(run_fp32(blob)[0], run_fp16(blob)[0], min_cosine=FP16_MIN_COSINE)

    def warm_up(self) -> float:
        """Embed black crops at every bucket up to `embedder.batch_size` (each logged with its time)."""
        return self.runner.warm_up(lambda rows: self.embed(np.zeros((rows, 112, 112, 3), np.uint8)), "crops",
                                   upto=max(1, self.cfg.batch_size))

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(N, 112, 112, 3) uint8 BGR aligned crops -> (N, dim) unit vectors."""
        if crops.ndim != 4 or crops.shape[1:] != (112, 112, 3):
            raise ValueError(f"crops must be (N, 112, 112, 3), got {crops.shape}")
        n = crops.shape[0]
        out = np.empty((n, self.dim), np.float32)
        bs = max(1, self.cfg.batch_size)
        for start in range(0, n, bs):
            chunk = crops[start : start + bs]
            feats = self.runner.run(self._blob(chunk))[0].reshape(len(chunk), -1)
            if self.cfg.flip_augment:
                feats = feats + self.runner.run(self._blob(chunk[:, :, ::-1]))[0].reshape(len(chunk), -1)
            out[start : start + len(chunk)] = feats
        return l2_normalize(out)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def load_embedder(registry: ModelRegistry, name: str, cfg: EmbedderConfig, runtime: RuntimeConfig) -> FaceEmbedder:
    spec = registry.spec(name)
    if spec.task != "embedder":
        raise ValueError(f"model {name} is not an embedder (task={spec.task})")
    runner = load_runner(registry, name, runtime)
    emb = FaceEmbedder(spec, runner, cfg)
    runner.verify_batching(emb.batch_check)
    runner.try_fp16(emb.fp16_check)  # kept only at cosine >= 0.999 against fp32 (off: no-op)
    if warmup_on(runtime):
        emb.warm_up()
    return emb
