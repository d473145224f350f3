"""GPU utilisation and memory sampled in the background while a benchmark runs.

`GpuMonitor` polls the first GPU (or `device`) every `interval_s` through NVML (`pynvml`, from the
nvidia-ml-py package) when it is importable and initialises, else through `nvidia-smi --query-gpu=...`
as a subprocess. With neither (no GPU, no driver) it records nothing and every figure it reports is
None, so result files and tables say "no GPU" instead of inventing a zero.

    mon = GpuMonitor().start()
    t0 = mon.now()
    ...                                    # the timed work
    window = mon.summary(t0, mon.now())    # mean/max utilisation and memory over that window
    mon.stop()

One sample is (seconds since start, utilisation %, memory used MB, memory of process `pid` MB or None).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

QUERY = ("nvidia-smi", "--query-gpu=utilization.gpu,memory.used,memory.total,name", "--format=csv,noheader,nounits")
"""The nvidia-smi query used when NVML is not importable (one line per GPU)."""


@dataclass(frozen=True)
class GpuSample:
    """One reading: `t` seconds after the monitor started; memory in MB (MiB as nvidia-smi reports)."""

    t: float
    util_pct: float
    mem_used_mb: float
    proc_mem_mb: float | None = None


def parse_smi_line(line: str) -> tuple[float, float, float, str] | None:
    """(utilisation %, memory used MB, memory total MB, name) of one `QUERY` output line, or None
    when the line is not a reading (an error text, '[N/A]' fields)."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) < 4:
        return None
    try:
        return float(parts[0]), float(parts[1]), float(parts[2]), ",".join(parts[3:]).strip()
    except ValueError:
        return None


class _Nvml:
    """NVML through pynvml: utilisation, memory, and one process's memory."""

    def __init__(self, device: int) -> None:
        import pynvml  # type: ignore[import-not-found,import-untyped]

        pynvml.nvmlInit()
        self.nv = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(device)
        name = pynvml.nvmlDeviceGetName(self.handle)
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self.total_mb = pynvml.nvmlDeviceGetMemoryInfo(self.handle).total / 2**20

    def read(self, pid: int | None) -> tuple[float, float, float | None]:
        util = float(self.nv.nvmlDeviceGetUtilizationRates(self.handle).gpu)
        used = self.nv.nvmlDeviceGetMemoryInfo(self.handle).used / 2**20
        proc: float | None = None
        if pid is not None:
            try:
                for p in self.nv.nvmlDeviceGetComputeRunningProcesses(self.handle):
                    if p.pid == pid and p.usedGpuMemory is not None:
                        proc = p.usedGpuMemory / 2**20
            except self.nv.NVMLError:
                proc = None
        return util, used, proc

    def close(self) -> None:
        try:
            self.nv.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down a library that may already be gone
            pass


class _Smi:
    """nvidia-smi, one subprocess a reading (simple and robust; ~20 ms a call)."""

    def __init__(self, exe: str, device: int) -> None:
        self.exe = exe
        self.device = device
        first = self._query()
        if first is None:
            raise RuntimeError("nvidia-smi gave no reading")
        self.name, self.total_mb = first[3], first[2]

    def _query(self) -> tuple[float, float, float, str] | None:
        try:
            out = subprocess.run([self.exe, *QUERY[1:], f"--id={self.device}"], capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode != 0:
            return None
        for line in out.stdout.splitlines():
            got = parse_smi_line(line)
            if got is not None:
                return got
        return None

    def read(self, pid: int | None) -> tuple[float, float, float | None]:
        got = self._query()
        if got is None:
            raise RuntimeError("nvidia-smi stopped answering")
        proc: float | None = None
        if pid is not None:
            try:
                out = subprocess.run([self.exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits",
                                      f"--id={self.device}"], capture_output=True, text=True, timeout=10)
                for line in out.stdout.splitlines():
                    parts = [p.strip() for p in line.split(",")]
                    if len(parts) == 2 and parts[0] == str(pid):
                        proc = float(parts[1])
            except (OSError, subprocess.SubprocessError, ValueError):
                proc = None
        return got[0], got[1], proc

    def close(self) -> None:
        pass


class GpuMonitor:
    """Background sampler of one GPU's utilisation and memory; inert (all None) without a GPU.

    pid: also read that process's GPU memory (NVML / nvidia-smi compute apps), e.g. a server under soak."""

    def __init__(self, interval_s: float = 0.5, device: int = 0, pid: int | None = None,
                 backend: str = "auto") -> None:
        self.interval_s = interval_s
        self.pid = pid
        self.samples: list[GpuSample] = []
        self.name: str | None = None
        self.total_mb: float | None = None
        self.backend = "none"
        self.why_none = ""
        self._src: _Nvml | _Smi | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        if backend in ("auto", "nvml"):
            try:
                self._src, self.backend = _Nvml(device), "nvml"
            except Exception as exc:  # noqa: BLE001 - no pynvml, no driver, no GPU: try the next way
                self.why_none = f"NVML unavailable ({type(exc).__name__}: {exc})"
        if self._src is None and backend in ("auto", "smi"):
            exe = shutil.which("nvidia-smi")
            if exe is None:
                self.why_none = (self.why_none + "; " if self.why_none else "") + "no nvidia-smi on PATH"
            else:
                try:
                    self._src, self.backend = _Smi(exe, device), "nvidia-smi"
                except Exception as exc:  # noqa: BLE001
                    self.why_none = (self.why_none + "; " if self.why_none else "") + f"nvidia-smi failed ({exc})"
        if self._src is not None:
            self.name, self.total_mb = self._src.name, self._src.total_mb
            self.why_none = ""

    @property
    def available(self) -> bool:
        """True when a GPU answers (NVML or nvidia-smi)."""
        return self._src is not None

    def now(self) -> float:
        """Seconds since the monitor was made (the time base of `samples` and `summary`)."""
        return time.monotonic() - self._t0

    def start(self) -> GpuMonitor:
        if self._src is not None and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="gpu-monitor", daemon=True)
            self._thread.start()
        return self

    def sample(self) -> GpuSample | None:
        """Take one reading now (also what the background thread does every interval)."""
        if self._src is None:
            return None
        try:
            util, used, proc = self._src.read(self.pid)
        except Exception:  # noqa: BLE001 - a reading that fails is skipped, not fatal to the benchmark
            return None
        s = GpuSample(round(self.now(), 3), util, round(used, 1), None if proc is None else round(proc, 1))
        with self._lock:
            self.samples.append(s)
        return s

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._src is not None:
            self._src.close()

    def __enter__(self) -> GpuMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def window(self, t0: float | None = None, t1: float | None = None) -> list[GpuSample]:
        with self._lock:
            return [s for s in self.samples if (t0 is None or s.t >= t0) and (t1 is None or s.t <= t1)]

    def summary(self, t0: float | None = None, t1: float | None = None) -> dict[str, Any]:
        """Utilisation and memory over [t0, t1] (seconds of `now()`; default the whole run).

        Every figure is None without a GPU or without a sample in the window ("gpu" says which)."""
        ws = self.window(t0, t1)
        util = [s.util_pct for s in ws]
        mem = [s.mem_used_mb for s in ws]
        proc = [s.proc_mem_mb for s in ws if s.proc_mem_mb is not None]
        return {"gpu": self.name if self.available else None, "backend": self.backend,
                "why_none": self.why_none or None, "samples": len(ws),
                "util_mean_pct": round(sum(util) / len(util), 1) if util else None,
                "util_max_pct": max(util) if util else None,
                "mem_used_mean_mb": round(sum(mem) / len(mem), 1) if mem else None,
                "mem_used_max_mb": max(mem) if mem else None,
                "mem_total_mb": self.total_mb,
                "proc_mem_max_mb": max(proc) if proc else None}


def describe(summary: dict[str, Any] | None) -> str:
    """One table cell for a `summary`: 'util 63 % (max 98), memory 2,345 MB' or 'no GPU'."""
    if not summary or summary.get("gpu") is None:
        return "no GPU"
    if summary.get("util_mean_pct") is None:
        return f"{summary['gpu']}: no sample in this window"
    return (f"util {summary['util_mean_pct']:.0f} % (max {summary['util_max_pct']:.0f}), memory "
            f"{summary['mem_used_max_mb']:,.0f} MB")


__all__ = ["QUERY", "GpuMonitor", "GpuSample", "describe", "parse_smi_line"]
