"""`faceengine` command line: thin wrappers over the engine's public functions.

Exit codes: 0 ok, 1 engine error (message on stderr, no traceback), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from engine import __version__
from engine.cli import local
from engine.cli.common import IntermixedParser, add_config_args, setup_logging
from engine.cli.progress import add_progress_args
from engine.errors import FaceEngineError


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), func)(args))

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="faceengine", description="Face-recognition video analytics engine.")
    p.add_argument("--version", action="version", version=f"faceengine {__version__}")
    # every (sub)command takes its options before, between or after its positionals
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=IntermixedParser)

    m = sub.add_parser("models", help="list and fetch model files")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    ml = msub.add_parser("list", help="known models and whether each is present and verified")
    add_config_args(ml)
    ml.add_argument("--json", action="store_true", help="one JSON object a line")
    ml.set_defaults(func=local.cmd_models_list)
    mf = msub.add_parser("fetch", help="copy models from a mirror folder or download them; verify SHA-256")
    add_config_args(mf)
    mf.add_argument("names", nargs="*", help="model names (default: all in the mirror, or the configured pair)")
    mf.add_argument("--force", action="store_true", help="re-fetch even if present and valid")
    mf.set_defaults(func=local.cmd_models_fetch)

    c = sub.add_parser("config", help="show the effective configuration")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    cs = csub.add_parser("show", help="print the configuration as commented TOML")
    add_config_args(cs)
    cs.set_defaults(func=local.cmd_config_show)

    e = sub.add_parser("enroll-local", help="enrol a person into the local gallery (no server)")
    add_config_args(e)
    e.add_argument("--watchlist", default="default", help="watchlist (must exist unless --create)")
    e.add_argument("--create", action="store_true", help="create the watchlist if it does not exist")
    e.add_argument("--person", required=True, help="person id")
    e.add_argument("--name", help="display name")
    e.add_argument("--meta", action="append", help="metadata key=value (repeatable)")
    e.add_argument("--replace", action="store_true", help="replace the person's existing templates")
    e.add_argument("--add-to-existing", action="store_true",
                   help="under an existing person id: add a photo that does not look like them (below the match "
                   "threshold) and rename them to --name (refused without it)")
    e.add_argument("--strict", action="store_true", help="refuse images with several faces (default: the dominant one)")
    e.add_argument("--json", action="store_true")
    e.add_argument("images", nargs="+", help="one or more images; of several faces the dominant one is enrolled")
    e.set_defaults(func=local.cmd_enroll_local)

    i = sub.add_parser("identify", help="detect and identify faces in an image or video (no server)")
    add_config_args(i)
    i.add_argument("input", help="image or video file")
    i.add_argument("--gallery", help="gallery store file or URL (default: store.url, else store.path)")
    i.add_argument("--json", action="store_true", help="one JSON object a line (a line per frame with faces)")
    i.add_argument("--every", type=int, default=1, help="process every Nth video frame")
    add_progress_args(i)
    i.set_defaults(func=local.cmd_identify)

    ev = sub.add_parser("eval", help="accuracy evaluations")
    evsub = ev.add_subparsers(dest="eval_command", required=True, metavar="BENCHMARK")
    lfw = evsub.add_parser("lfw", help="LFW View-2 verification (N-fold accuracy, TAR@FAR=1e-3)")
    add_config_args(lfw)
    lfw.add_argument("--data", required=True, help="folder with pairs.txt, images/, optional landmarks_5pt.txt")
    lfw.add_argument("--mode", choices=["e2e", "landmarks"], default="e2e",
                     help="e2e: detect+align (default); landmarks: use the given 5-point landmarks")
    lfw.add_argument("--flip", action="store_true", help="add mirrored-crop embeddings")
    lfw.add_argument("--det-size", type=int, default=320, help="detector input side for 250x250 images")
    lfw.add_argument("--det-threshold", type=float, default=0.5, help="detector score threshold")
    lfw.add_argument("--json", action="store_true", help="also print a JSON summary line")
    add_progress_args(lfw)
    lfw.set_defaults(func=local.cmd_eval_lfw)
    wl = evsub.add_parser("watchlist", help="open-set 1:N watchlist search on CCTV-like frames (FNIR at FPIR)")
    add_config_args(wl)
    wl.add_argument("--data", required=True, help="folder of person/image.jpg (or with images/ and landmarks_5pt.txt)")
    wl.add_argument("--conditions", default="all",
                    help="comma list of: original, 48px, 32px, 24px, 48px_blur1.5, 48px_jpeg20, 48px_dark_noisy")
    wl.add_argument("--max-probes", type=int, default=0, help="at most this many mated and non-mated probes each")
    wl.add_argument("--max-gallery", type=int, default=0, help="at most this many enrolled people (0 = half)")
    wl.add_argument("--per-frame", type=int, default=6, choices=[1, 2, 4, 6], help="probes pasted into one frame")
    wl.add_argument("--seed", type=int, default=0, help="seed of the split and the rendering")
    wl.add_argument("--table", action="store_true", help="also print a markdown table")
    add_progress_args(wl)
    wl.set_defaults(func=local.cmd_eval_watchlist)

    _add_optional(sub)
    return p


def _add_optional(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Server, client and benchmark commands live in their own modules."""
    for module in ("engine.cli.server_cmds", "engine.cli.client_cmds", "engine.cli.bench_cmds",
                   "engine.cli.security_cmds", "engine.cli.demo_cmds", "engine.cli.store_cmds",
                   "engine.cli.console_cmds", "engine.cli.sightings_cmds"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ImportError as exc:  # pragma: no cover - only while a module is being written
            if exc.name != module:
                raise
            continue
        mod.register(sub, _lazy)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0))
    try:
        return int(args.func(args) or 0)
    except FaceEngineError as exc:
        print(f"faceengine: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("faceengine: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader closed the pipe (`| head -1`): stop quietly, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 0


if __name__ == "__main__":
    sys.exit(main())
