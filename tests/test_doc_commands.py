"""Every command in README.md and docs/*.md runs here, or is marked as needing what CI lacks.

The convention (docs/README.md, "Commands in these docs"): commands sit in fenced `sh` blocks and are run
in order, page by page, as a reader would paste them, in an empty folder with `../shared` beside it; an HTML
comment right above a fence marks a block as `background` (a server: started, waited for, stopped at the end
of the page), `needs: gpu|network` (not run; it must pass `bash -n` and its `faceengine` commands must parse)
or `covered-by: tests/...::test_name` (run by that test, which must exist). `faceengine ...` in inline code is
parsed with the real command-line parser. Real models and real media; no output is faked.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.procs import free_port
from tests.shared_data import MIRROR, ROOT, TESTDATA

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"sh", "bash", "shell", "console", "zsh"}
NOT_COMMANDS = {"text", "toml", "json", "python", "proto", "ini", "yaml", "diff", "csv", "sql"}
NEEDS = {"gpu", "network"}
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*(background|needs:|covered-by:)\s*(.*?)\s*-->\s*$")
PORT = re.compile(r"\b(5005\d|9108|80[89]\d)\b")
BLOCK_TIMEOUT_S = 120.0  # a loaded machine; a quiet one runs every page in about 45 s of CPU


@dataclass
class Block:
    """One fenced block of a page: where it is, its tag, its marker and its text."""

    page: Path
    line: int
    lang: str
    marker: str = ""
    arg: str = ""
    text: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, with the marker comment on the line just above each."""
    lines = page.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        b = Block(page, i + 1, m.group(1).lower())
        mk = MARKER.match(lines[i - 1]) if i else None
        if mk:
            b.marker, b.arg = mk.group(1).rstrip(":"), mk.group(2)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        b.text = "\n".join(lines[i + 1 : j])
        out.append(b)
        i = j + 1
    return out


def inline_commands(page: Path) -> list[str]:
    """`faceengine ...` in inline code outside fenced blocks."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return [" ".join(m.split()) for m in re.findall(r"`(faceengine [^`]+)`", text)]


def commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script (heredoc bodies, comments and `$(...)` left out), as argv."""
    lines, out, heredoc = script.splitlines(), [], None
    body: list[str] = []
    for ln in lines:
        if heredoc:
            if ln.strip() == heredoc:
                heredoc = None
            continue
        m = re.search(r"<<-?\s*'?\"?(\w+)", ln)
        if m:
            heredoc = m.group(1)
        body.append(ln)
    text = re.sub(r"\\\n", " ", "\n".join(body))
    text = re.sub(r"\$\([^()]*\)", "X", text)
    for ln in text.splitlines():
        lex = shlex.shlex(ln, posix=True, punctuation_chars=True)
        lex.commenters = "#"
        lex.whitespace_split = True
        argv: list[str] = []
        for tok in lex:
            if tok and set(tok) <= set("|&;<>()"):
                if argv:
                    out.append(argv)
                argv = []
                if tok in (">", ">>", "<", "<<", "<<-", "<<<", "2>", ">|"):
                    argv = ["__redirect__"]  # the next word is a file, not a command
                continue
            if argv == ["__redirect__"]:
                argv = []
                continue
            if "=" in tok and not argv and re.match(r"^[A-Za-z_]\w*=", tok):
                continue  # VAR=value before a command
            argv.append(tok)
        if argv and argv != ["__redirect__"]:
            out.append(argv)
    return out


class _ParseError(Exception):
    pass


def parse_faceengine(argv: list[str], allow_missing: bool = False) -> str:
    """'' if the real CLI parser accepts `argv` (faceengine's arguments), else argparse's complaint."""
    from engine.cli.main import build_parser

    def error(self: argparse.ArgumentParser, message: str) -> None:
        raise _ParseError(message)

    orig = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        build_parser().parse_args(argv)
    except _ParseError as exc:
        msg = str(exc)
        if allow_missing and msg.startswith("the following arguments are required"):
            return ""
        return msg
    except SystemExit:  # --help, --version
        return ""
    finally:
        argparse.ArgumentParser.error = orig  # type: ignore[method-assign]
    return ""


def _steps(script: str) -> list[str]:
    """A script's commands joined by && or on their own lines, comments dropped, whitespace normalised."""
    out = []
    for ln in script.splitlines():
        ln = ln.split("  #")[0].strip()
        if ln and not ln.startswith("#"):
            out += [" ".join(part.split()) for part in ln.split("&&") if part.strip()]
    return out


def _is_faceengine(argv: list[str]) -> bool:
    return bool(argv) and Path(argv[0]).name == "faceengine"


# --- static checks: every page, every block -------------------------------------------------------------------

ALL_BLOCKS = [b for p in PAGES for b in blocks(p)]


def test_pages_exist_and_readme_is_short() -> None:
    assert (ROOT / "README.md").stat().st_size <= 12_000, "README.md must stay <= 12,000 bytes: move text to docs/"
    assert len(PAGES) > 3 and any(b.lang in SHELL for b in ALL_BLOCKS)


@pytest.mark.parametrize("page", [*PAGES, ROOT / "CHANGELOG.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_internal_issue_numbers(page: Path) -> None:
    """User docs speak of features, not of the tracker: no "issue 12", no "Must-show 5"."""
    found = re.findall(r"\b(?:issues? ?#?\d+|must[- ]show \d+)", page.read_text(), re.I)
    assert not found, f"{page.relative_to(ROOT)}: {found}"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.where)
def test_every_block_is_tagged_and_marked_correctly(block: Block) -> None:
    assert block.lang, f"{block.where}: tag the fence (sh for commands; text, toml, json, python otherwise)"
    assert block.lang in SHELL | NOT_COMMANDS, f"{block.where}: unknown fence tag {block.lang!r}"
    if block.lang not in SHELL:
        assert not block.marker, f"{block.where}: a marker only applies to an sh block"
        assert not re.search(r"^\s*(\$ )?faceengine ", block.text, re.M), (
            f"{block.where}: a faceengine command in a {block.lang} block: put it in an sh block")
        return
    assert not re.search(r"^\s*\$ ", block.text, re.M), f"{block.where}: no `$ ` prompts in sh blocks"
    if block.marker == "needs":
        kinds = set(block.arg.split())
        assert kinds and kinds <= NEEDS, f"{block.where}: needs: takes {sorted(NEEDS)}, not {block.arg!r}"
    syntax = subprocess.run(["bash", "-n"], input=block.text, text=True, capture_output=True)
    assert syntax.returncode == 0, f"{block.where}: bash -n: {syntax.stderr}"
    for argv in commands(block.text):
        if _is_faceengine(argv):
            err = parse_faceengine(argv[1:])
            assert not err, f"{block.where}: `{shlex.join(argv)}`: {err}"
    if block.marker == "covered-by":
        assert block.arg, f"{block.where}: covered-by names no test"
        for target in block.arg.split():
            if target == ".ci/run":
                ci = _steps((ROOT / ".ci" / "run").read_text())
                want = _steps(block.text)
                it = iter(ci)  # every step of the block, in the block's order, among .ci/run's steps
                missing = [w for w in want if not any(w == c for c in it)]
                assert want and not missing, f"{block.where}: .ci/run does not run {missing} (in this order)"
                continue
            path, _, name = target.partition("::")
            file = ROOT / path
            assert file.is_file() and name, f"{block.where}: covered-by {target}: no such test file"
            tree = ast.parse(file.read_text())
            names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            assert name in names, f"{block.where}: covered-by {target}: no such test"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_inline_faceengine_commands_parse(page: Path) -> None:
    bad = [f"`{c}`: {err}" for c in inline_commands(page)
           if (err := parse_faceengine(shlex.split(c)[1:], allow_missing=True))]
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)


def test_the_checks_can_fail() -> None:
    """A stale flag, an unknown subcommand, a synopsis and a missing test are each caught."""
    assert parse_faceengine(["serve", "--no-such-flag"])
    assert parse_faceengine(["no-such-command"])
    assert parse_faceengine(["cameras", "list|add"], allow_missing=True)
    assert not parse_faceengine(["token", "revoke"], allow_missing=True)
    assert parse_faceengine(["token", "revoke"])
    assert commands("a --x 1 && faceengine b > f.txt | head -1\nFOO=1 faceengine c <<'E'\nnot a command\nE\n") == [
        ["a", "--x", "1"], ["faceengine", "b"], ["head", "-1"], ["faceengine", "c"]]
    bad = Block(ROOT / "README.md", 1, "sh", "covered-by", "tests/test_doc_commands.py::test_nothing_by_this_name",
                "faceengine --version")
    with pytest.raises(AssertionError, match="no such test"):
        test_every_block_is_tagged_and_marked_correctly(bad)
    bad = Block(ROOT / "README.md", 1, "sh", "covered-by", ".ci/run", ".venv/bin/python -m pytest -q -x")
    with pytest.raises(AssertionError, match="does not run"):
        test_every_block_is_tagged_and_marked_correctly(bad)


# --- running the pages ----------------------------------------------------------------------------------------


@dataclass
class Site:
    """The folder a page's commands run in, their environment, and the servers they started."""

    cwd: Path
    env: dict[str, str]
    state: Path
    ports: dict[str, str] = field(default_factory=dict)
    procs: list[tuple[subprocess.Popen, Path]] = field(default_factory=list)

    def substitute(self, text: str) -> str:
        """Documented ports -> free ports, the same number to the same port within a page."""
        def sub(m: re.Match[str]) -> str:
            return self.ports.setdefault(m.group(1), str(free_port()))

        return PORT.sub(sub, text)


def _wrapper(path: Path, line: str) -> None:
    path.write_text(f"#!/bin/sh\n{line}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@contextmanager
def site(tmp: Path) -> Iterator[Site]:
    """An empty folder with ../shared beside it, .venv/bin/{python,faceengine} and `faceengine` on PATH
    running this checkout, an empty data folder, the default models present; servers stopped at the end."""
    cwd = tmp / "site"
    (cwd / ".venv" / "bin").mkdir(parents=True)
    (tmp / "shared").mkdir()
    (tmp / "shared" / "testdata").symlink_to(TESTDATA)
    (tmp / "shared" / "models").symlink_to(MIRROR)
    models = tmp / "models"
    models.mkdir()
    for f in MIRROR.iterdir():
        if f.suffix == ".onnx":
            (models / f.name).symlink_to(f)
    venv = cwd / ".venv" / "bin"
    _wrapper(venv / "python", f'exec "{sys.executable}" "$@"')
    _wrapper(venv / "faceengine", f'exec "{sys.executable}" -m engine "$@"')
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEENGINE_")}
    env.update({"PATH": f"{venv}:{env.get('PATH', '/usr/bin:/bin')}", "PYTHONPATH": str(ROOT),
                "HOME": str(tmp / "home"), "FACEENGINE_HOME": str(tmp / "data"),
                "FACEENGINE_MODEL_DIR": str(models), "FACEENGINE_SERVER_PORT": port,
                "FACEENGINE_SERVER": f"127.0.0.1:{port}", "FACEENGINE_CONSOLE_SERVER": f"127.0.0.1:{port}",
                "FACEENGINE_CONSOLE_PORT": str(free_port())})
    state = tmp / "state.env"
    state.write_text("")
    # the documented defaults map to the ports the defaults are set to, so `serve --port 50051` and a client
    # without --server meet, as they do on a real site
    s = Site(cwd, env, state, ports={"50051": port, "8080": env["FACEENGINE_CONSOLE_PORT"]})
    try:
        yield s
    finally:
        for proc, _log in reversed(s.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _log in s.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_background(s: Site, b: Block) -> None:
    """Start each line of a background block and wait until a port it serves on answers."""
    for ln in b.text.splitlines():
        if not ln.strip() or ln.lstrip().startswith("#"):
            continue
        ln = s.substitute(ln)
        argv = commands(ln)[0]
        sub = argv[1] if _is_faceengine(argv) and len(argv) > 1 else ""
        m = re.search(r"--port[ =](\d+)", ln)
        port = int(m.group(1)) if m else int(s.env["FACEENGINE_CONSOLE_PORT" if sub == "console"
                                                 else "FACEENGINE_SERVER_PORT"])
        env = {**s.env, "FACEENGINE_SERVER_METRICS_PORT": str(free_port())}
        log = s.cwd.parent / f"bg-{len(s.procs)}.log"
        with log.open("w") as fh:
            proc = subprocess.Popen(["bash", "-c", f"set -a; source {s.state}; set +a; exec {ln}"], cwd=s.cwd,
                                    env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        s.procs.append((proc, log))
        deadline = time.monotonic() + BLOCK_TIMEOUT_S
        while not _port_open(port):
            assert proc.poll() is None, f"{b.where}: `{ln}` exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{b.where}: `{ln}` not listening on {port}:\n{log.read_text()}"
            time.sleep(0.1)


def run_block(s: Site, b: Block) -> None:
    script = (f"set -euo pipefail\nset -a; source {s.state}; set +a\n{s.substitute(b.text)}\n"
              f"export -p > {s.state}.new\n")
    try:
        out = subprocess.run(["bash", "-c", script], cwd=s.cwd, env=s.env, capture_output=True, text=True,
                             timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{b.where}: took over {BLOCK_TIMEOUT_S:.0f} s; use smaller inputs") from exc
    assert out.returncode == 0, (f"{b.where}: exit {out.returncode}\n--- block\n{b.text}\n--- stdout\n"
                                 f"{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}")
    # keep only the variables the block exported, not bash's own
    keep = [ln for ln in Path(f"{s.state}.new").read_text().splitlines()
            if not re.match(r"declare -x (OLDPWD|PWD|SHLVL|_)(=|$)", ln)]
    s.state.write_text("\n".join(keep) + "\n")


RUNNABLE = [p for p in PAGES if any(b.lang in SHELL and b.marker in ("", "background") for b in blocks(p))]


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_commands_run(page: Path, tmp_path: Path) -> None:
    """The page's sh blocks, in order, as written (ports aside), against the servers its background blocks
    start: each exits 0."""
    with site(tmp_path) as s:
        for b in blocks(page):
            if b.lang not in SHELL or b.marker in ("needs", "covered-by"):
                continue
            if b.marker == "background":
                start_background(s, b)
            else:
                run_block(s, b)
        for proc, log in s.procs:  # the servers lived through the page
            assert proc.poll() is None, f"{page.name}: a background process exited:\n{log.read_text()[-3000:]}"
