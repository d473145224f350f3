"""`faceengine bench models` on the CPU with the real models and the real 1080p clip, the detector's
pre-process / model / post-process split it reports, and the GPU sampler's behaviour without a GPU."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.benchmods import bench_module
from tests.procs import cli, cli_env
from tests.shared_data import VIDEOS

_module = bench_module


def test_bench_models_quick_on_cpu(model_dir: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "models"
    out = cli("bench", "models", "--quick", "--provider", "cpu", "--video", str(VIDEOS / "multiface_1080p.mp4"),
              "--json", "--out", str(prefix), env=cli_env(model_dir), timeout=300)
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["detector"]["provider"] == "CPUExecutionProvider" and line["detector"]["frames_per_s"]["4"] > 0
    assert line["embedders"]["mobilefacenet"]["faces_per_s"]["16"] > 0 and isinstance(line["gpu"], str)
    s = json.loads(prefix.with_suffix(".json").read_text())
    assert prefix.with_suffix(".png").is_file()
    m = s["meta"]
    assert m["size"] == [1920, 1080] and m["batches"] == [1, 4] and m["face_batches"] == [1, 16]
    for key in ("cpu", "cores", "gpu", "versions", "git_commit", "loadavg_at_start", "loadavg_at_end"):
        assert key in m["machine"], key
    d = s["detector"]
    assert d["model"] == "yunet" and d["provider"] == "CPUExecutionProvider" and d["graph_preprocess"] is False
    assert [p["batch"] for p in d["points"]] == [1, 4]
    for p in d["points"]:
        assert p["frames_per_s"] > 0 and p["calls"] >= 3
        assert p["preprocess_ms_per_frame"] > 0 and p["model_ms_per_frame"] > 0 and p["postprocess_ms_per_frame"] > 0
        # the split adds up to about the whole call (the rest is input checks and bookkeeping)
        parts = p["preprocess_ms_per_frame"] + p["model_ms_per_frame"] + p["postprocess_ms_per_frame"]
        assert 0.5 * p["ms_per_frame"] < parts <= 1.05 * p["ms_per_frame"], p
        assert p["faces_per_frame"] >= 3  # real frames with several people: the detector really ran
    e = s["embedders"]["mobilefacenet"]
    assert e["provider"] == "CPUExecutionProvider" and e["dim"] == 128 and e["distinct_crops"] >= 5
    assert [p["batch"] for p in e["points"]] == [1, 16]
    assert all(p["faces_per_s"] > 0 and p["model_ms_per_face"] > 0 and p["blob_ms_per_face"] > 0
               for p in e["points"])
    det_t, emb_t = s["targets"]
    assert det_t["value"] is None and "batch 32" in det_t["verdict"]  # --quick does not run batch 32
    assert emb_t["value"] == max(p["faces_per_s"] for p in e["points"]) and emb_t["verdict"].startswith("n/a on CPU")
    if s["gpu"]["gpu"] is None:
        assert all(v is None for k, v in s["gpu"].items() if k.endswith(("_pct", "_mb")))


def test_bench_models_refuses_bad_batches(model_dir: Path, tmp_path: Path) -> None:
    out = cli("bench", "models", "--quick", "--provider", "cpu", "--batches", "0,4", "--out", str(tmp_path / "m"),
              env=cli_env(model_dir))
    assert out.returncode != 0 and "batches must be positive" in out.stderr and "Traceback" not in out.stderr


def test_target_verdicts_on_unrounded_values() -> None:
    bm = _module("bench_models")
    cuda = "CUDAExecutionProvider"
    assert bm.verdict(1999.99, 2000.0, cuda) == "MISSED"
    assert bm.verdict(2000.0, 2000.0, cuda) == "MET"
    assert bm.verdict(float("nan"), 2000.0, cuda) == "MISSED"
    assert bm.verdict(5000.0, 2000.0, "CPUExecutionProvider").startswith("n/a")


def test_detector_reports_its_split(analyzer) -> None:  # noqa: ANN001
    import cv2

    cap = cv2.VideoCapture(str(VIDEOS / "multiface_1080p.mp4"))
    frames = [cap.read()[1] for _ in range(2)]
    cap.release()
    dets = analyzer.detect_batch(frames)
    t = analyzer.last_detect_timing()
    assert t is not None and t.frames == 2 and len(dets) == 2
    assert t.preprocess > 0 and t.model > 0 and t.postprocess > 0


# ---- the GPU sampler --------------------------------------------------------------------------------
@pytest.fixture()
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError


def test_gpu_monitor_without_a_gpu(no_nvml: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gm = _module("gpu_monitor")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    mon = gm.GpuMonitor(interval_s=0.01).start()
    assert not mon.available and mon.sample() is None
    mon.stop()
    s = mon.summary()
    assert s["gpu"] is None and s["samples"] == 0 and "nvidia-smi" in s["why_none"]
    assert all(s[k] is None for k in ("util_mean_pct", "util_max_pct", "mem_used_mean_mb", "mem_used_max_mb",
                                      "mem_total_mb", "proc_mem_max_mb"))
    assert gm.describe(s) == "no GPU" and gm.describe(None) == "no GPU"


def test_gpu_monitor_reads_nvidia_smi(no_nvml: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The nvidia-smi path parses the query's CSV (a stand-in script prints what the driver's tool prints)."""
    gm = _module("gpu_monitor")
    exe = tmp_path / "nvidia-smi"
    exe.write_text("#!/bin/sh\ncase \"$*\" in *compute-apps*) echo \"4242, 900\";;\n"
                   "*) echo \"37, 1234, 81559, NVIDIA H100 80GB HBM3\";; esac\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    mon = gm.GpuMonitor(interval_s=0.01, pid=4242)
    assert mon.available and mon.backend == "nvidia-smi" and mon.name == "NVIDIA H100 80GB HBM3"
    s1 = mon.sample()
    assert s1 is not None and (s1.util_pct, s1.mem_used_mb, s1.proc_mem_mb) == (37.0, 1234.0, 900.0)
    s = mon.summary()
    assert s["util_mean_pct"] == 37.0 and s["mem_used_max_mb"] == 1234.0 and s["mem_total_mb"] == 81559.0
    assert s["proc_mem_max_mb"] == 900.0 and gm.describe(s).startswith("util 37 %")
    assert mon.summary(s1.t + 1, None)["util_mean_pct"] is None  # a window with no sample says so
    assert gm.parse_smi_line("[N/A], [N/A], 81559, NVIDIA H100") is None
    assert gm.parse_smi_line("NVIDIA-SMI has failed") is None


def test_soak_fits_gpu_memory_like_rss() -> None:
    """bench_memory's GPU fit: a flat series passes, a leak of 3 MB a minute grows; the server's own
    memory is fitted when the driver reports it, else the device's; no GPU says so."""
    mem = _module("bench_memory")
    flat = [(float(t), 5000.0 + (t % 2), 1200.0) for t in range(0, 300, 5)]
    s = mem.gpu_summary(flat, 60, "NVIDIA H100")
    assert s["verdict"] == "PASS" and s["source"] == "server process" and abs(s["slope_mb_per_min"]) < 0.1
    leak = [(float(t), 5000.0 + 3.0 * t / 60, None) for t in range(0, 300, 5)]
    s = mem.gpu_summary(leak, 60, "NVIDIA H100")
    assert s["verdict"] == "GROWING" and s["source"].startswith("device") and abs(s["slope_mb_per_min"] - 3) < 1e-6
    none = mem.gpu_summary([], 60, None, "no nvidia-smi on PATH")
    assert none["verdict"] == "no GPU" and none["slope_mb_per_min"] is None and none["why_none"]
