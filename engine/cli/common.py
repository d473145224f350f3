"""Shared CLI plumbing: config loading with flag overrides, logging, JSON output."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from engine.config import Config


class IntermixedParser(argparse.ArgumentParser):
    """A (sub)command parser that takes options anywhere among its positionals.

    Plain argparse parses `cameras add --server X cam uri` as action=add with both optional positionals
    empty (they match zero strings before the option) and then refuses `cam uri`; intermixed parsing
    reads the options first, then the positionals. Parsers it cannot handle (nested subcommands,
    REMAINDER) are parsed the ordinary way."""

    _intermixing = False

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing or not self._can_intermix():
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls back into parse_known_args
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

    def _can_intermix(self) -> bool:
        positionals = self._get_positional_actions()
        if any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in positionals):
            return False
        return not any(a in positionals for g in self._mutually_exclusive_groups for a in g._group_actions)


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
