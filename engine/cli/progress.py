"""One progress style for the long commands (identify on a video, eval lfw, eval watchlist).

A tqdm bar on stderr with the count, the rate and the time left. It is shown when stderr is a terminal,
or when `--progress` asks for it (a log file, CI); `--quiet` turns it off. Results go to stdout either way,
so a pipe or a redirect gets the results without progress noise."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm


def add_progress_args(p: argparse.ArgumentParser) -> None:
    """`--progress` and `--quiet`, the same on every long command."""
    p.add_argument("--progress", action="store_true",
                   help="show progress on stderr even when it is not a terminal")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def progress_shown(args: argparse.Namespace) -> bool:
    """Whether a long command shows its progress: asked for, or stderr is a terminal, and not --quiet."""
    if getattr(args, "quiet", False):
        return False
    return bool(getattr(args, "progress", False)) or sys.stderr.isatty()


def progress_bar(args: argparse.Namespace, total: int | None, desc: str, unit: str) -> Any:
    """A bar in the one style; disabled (every call a no-op) when progress is not shown."""
    return tqdm(total=total or None, desc=desc, unit=unit, file=sys.stderr, disable=not progress_shown(args),
                dynamic_ncols=True, mininterval=0.5, smoothing=0.1)


def note(bar: Any, msg: str) -> None:
    """A line above the bar (a stage's result), shown only where the bar is."""
    if not bar.disable:
        bar.write(msg, file=sys.stderr)
