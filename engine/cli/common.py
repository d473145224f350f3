"""Shared CLI plumbing: config loading with flag overrides, logging, JSON output."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from engine.config import Config


def add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--config", help="TOML config file (defaults are embedded; see `faceengine config show`)")
    g.add_argument("--model-dir", help="model folder (env FACEENGINE_MODEL_DIR)")
    g.add_argument("--mirror", help="local model mirror to copy missing models from")
    g.add_argument("--detector", help="detector model name (yunet, scrfd_500m, scrfd_2.5g, ...)")
    g.add_argument("--embedder", help="embedder model name (mobilefacenet, sface, w600k_r50, ...)")
    g.add_argument("--provider", help="onnxruntime provider: cpu, cuda, tensorrt, auto")
    g.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    g.add_argument("--db", help="store: a SQLite file, sqlite:///FILE or postgresql://... (sets store.url)")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")


def load_config(args: argparse.Namespace) -> Config:
    cfg = Config.load(getattr(args, "config", None))
    for attr, sec, key in (("model_dir", "models", "dir"), ("mirror", "models", "mirror"),
                           ("detector", "models", "detector"), ("embedder", "models", "embedder"),
                           ("provider", "runtime", "provider"), ("threads", "runtime", "intra_op_threads"),
                           ("db", "store", "url")):
        val = getattr(args, attr, None)
        if val is not None:
            cfg.update({sec: {key: val}}, source=flag_source(attr))
    return cfg


def flag_source(attr: str) -> str:
    """How a config error names a command-line flag (argparse dest -> --flag-name)."""
    return f"command-line flag --{attr.replace('_', '-')}"


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def jprint(obj: Any) -> None:
    print(json.dumps(obj, separators=(",", ":"), default=_default), flush=True)


def _default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)
