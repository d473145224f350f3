"""A throwaway PostgreSQL server for tests, started from the machine's own binaries.

`initdb` and `pg_ctl` are looked up in `FACEENGINE_PG_BIN`, then on PATH, then in the Debian/Ubuntu
layout (`/usr/lib/postgresql/<version>/bin`). PostgreSQL refuses to run as root, so under root the
server runs as the `postgres` (or `nobody`) user, in a private temporary folder on a free port."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def find_bin() -> Path | None:
    """Folder holding initdb and pg_ctl, or None."""
    env = os.environ.get("FACEENGINE_PG_BIN")
    candidates = [env] if env else []
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb") or "").parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    bindir: Path
    root: Path
    port: int
    user: str | None  # OS user the server runs as (None: the current one)
    superuser: str = "fe"

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{db}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> PgServer:
        data = self.root / "data"
        r = self._run("initdb", "-D", str(data), "-U", self.superuser, "--auth=trust", "-E", "UTF8",
                      "--no-instructions")
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()}")
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        r = self._run("pg_ctl", "-D", str(data), "-o", opts, "-l", str(self.root / "log"), "-w", "-t", "60",
                      "start")
        if r.returncode:
            log = (self.root / "log").read_text(errors="replace") if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()} {log[-2000:]}")
        return self

    def checkpoint(self) -> None:
        """Flush everything so far, so a crash after it has only the newest writes to replay (quick
        recovery on a busy machine)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute("CHECKPOINT")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start_again()

    def start_again(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        r = self._run("pg_ctl", "-D", str(self.root / "data"), "-o", opts, "-l", str(self.root / "log"), "-w",
                      "-t", "120", "start", timeout=150)
        if r.returncode:
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()}")

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PgServer:
    """Start a fresh server; raises RuntimeError (with the reason) when it cannot."""
    bindir = find_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found: install postgresql or set "
                           "FACEENGINE_PG_BIN")
    user = None
    root = Path(tempfile.mkdtemp(prefix="fe-pg-"))
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                continue
            user = name
            os.chown(root, pw.pw_uid, pw.pw_gid)
            break
        else:
            raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")
    try:
        return PgServer(bindir, root, _free_port(), user).start()
    except Exception:
        shutil.rmtree(root, ignore_errors=True)
        raise
