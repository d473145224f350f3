"""Face embedders (MobileFaceNet, SFace, ArcFace w600k/glint) on onnxruntime: aligned crops -> unit vectors."""

from __future__ import annotations

import numpy as np

from engine.config import EmbedderConfig, RuntimeConfig
from engine.models.registry import ModelRegistry, ModelSpec
from engine.models.session import Session


class FaceEmbedder:
    """Embeds aligned 112x112 BGR crops in batches; outputs are L2-normalised float32 (N, dim)."""

    def __init__(self, spec: ModelSpec, session: Session, cfg: EmbedderConfig) -> None:
        self.spec = spec
        self.name = spec.name
        self.session = session
        self.cfg = cfg
        probe = session.run(np.zeros((1, 3, 112, 112), np.float32))[0]
        self.dim = int(probe.reshape(1, -1).shape[1])
        if spec.dim and spec.dim != self.dim:
            raise ValueError(f"{spec.name}: manifest says dim {spec.dim}, model outputs {self.dim}")

    def _blob(self, crops: np.ndarray) -> np.ndarray:
        x = crops[..., ::-1] if self.spec.color == "RGB" else crops
        x = x.astype(np.float32)
        if self.spec.mean or self.spec.std != 1.0:
            x = (x - self.spec.mean) / self.spec.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(N, 112, 112, 3) uint8 BGR aligned crops -> (N, dim) unit vectors."""
        if crops.ndim != 4 or crops.shape[1:] != (112, 112, 3):
            raise ValueError(f"crops must be (N, 112, 112, 3), got {crops.shape}")
        n = crops.shape[0]
        out = np.empty((n, self.dim), np.float32)
        bs = max(1, self.cfg.batch_size)
        for start in range(0, n, bs):
            chunk = crops[start : start + bs]
            feats = self.session.run(self._blob(chunk))[0].reshape(len(chunk), -1)
            if self.cfg.flip_augment:
                feats = feats + self.session.run(self._blob(chunk[:, :, ::-1]))[0].reshape(len(chunk), -1)
            out[start : start + len(chunk)] = feats
        return l2_normalize(out)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def load_embedder(registry: ModelRegistry, name: str, cfg: EmbedderConfig, runtime: RuntimeConfig) -> FaceEmbedder:
    spec = registry.spec(name)
    if spec.task != "embedder":
        raise ValueError(f"model {name} is not an embedder (task={spec.task})")
    session = Session(registry.path(name), runtime, sample_shape=(3, 112, 112))
    return FaceEmbedder(spec, session, cfg)
