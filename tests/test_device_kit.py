"""The device kit's packing (benchmarks/device/prepare.py): parts stay under the call limit, and the LFW
files it carries are exactly the ones the benchmarks read for their distractors. The whole kit is rehearsed
by benchmarks/device/dryrun.sh; its offline form (this checkout's Python, the end-to-end step only) runs here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.shared_data import SHARED

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def prepare(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("FACEENGINE_SHARED", str(SHARED))
    return _load(ROOT / "benchmarks" / "device" / "prepare.py", "device_prepare")


def test_lfw_subset_is_what_the_benchmarks_enrol(prepare: ModuleType) -> None:
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    import common

    want = [str(Path(p).relative_to(SHARED / "testdata")) for _, p, _ in common.lfw_faces(200, per_identity=1)]
    assert prepare.lfw_subset() == want and len(want) == 200


def test_parts_fit_the_budget_and_late_items_come_last(prepare: ModuleType, tmp_path: Path) -> None:
    sizes = {"ort": 56, "ray": 29, "site": 18, "testdata": 8, "model-mobilefacenet": 4, "model-yunet": 1,
             "model-sface": 37}
    items = {}
    for name, mb in sizes.items():
        f = tmp_path / name
        with f.open("wb") as fh:
            fh.truncate(mb * 2**20)
        items[name] = f
    budget = 61 * 2**20
    parts = prepare.pack(items, budget)
    assert sorted(n for p in parts for n in p) == sorted(sizes)  # each item once
    assert all(sum(sizes[n] for n in p) * 2**20 <= budget for p in parts)
    assert parts[-1] == ["model-sface"] and len(parts) == 3  # the end-to-end model travels in the last call
    with pytest.raises(SystemExit, match="alone exceeds"):
        prepare.pack({"ort": items["ort"]}, 50 * 2**20)


def test_dryrun_rehearses_the_calls_within_the_device_budget(tmp_path: Path) -> None:
    """benchmarks/device/dryrun.sh on an offline kit (this checkout's Python, no downloads): three calls, each
    in a new copy of the tree with one part carried; the stash outside the copies carries the parts from call
    to call; the end-to-end step (here 1 then 2 cameras, 1 s each, on the CPU provider) prints its figures
    and writes each point's JSON into the call's $OUT at once, with the per-node profile of each session; the
    ledger's simulated device time stays within the 8 minutes (dryrun.sh exits 1 otherwise)."""
    env = {**os.environ, "FACEENGINE_SHARED": str(SHARED), "DEVICE_OFFLINE": "1", "DEVICE_DIR": str(tmp_path / "kit"),
           "DEVICE_LFW": "10"}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device" / "prepare.py")], env=env, check=True,
                   capture_output=True, timeout=120)
    work = tmp_path / "dry"
    env = {**os.environ, "KIT": str(tmp_path / "kit"), "PYTHON": sys.executable, "DRYRUN_DIR": str(work),
           "DEVICE_STEPS": "e2e-cuda", "DEVICE_E2E_S": "1"}
    env.pop("FACEENGINE_SHARED", None)
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "device" / "dryrun.sh")], env=env, capture_output=True,
                         text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    log = out.stdout
    simulated = int(log.split("simulated device time ")[1].split()[0])
    assert 90 < simulated <= 480, log[-2000:]
    assert "stashed model-sface" in log and "NEXT: call again at once" in log
    assert "e2e-cuda|   1 cameras:" in log and "e2e-cuda|   gRPC 2 cameras:" in log  # figures while it ran
    points = sorted(p.name for p in (work / "out-p3" / "points").glob("*.json"))
    assert points == ["e2e-cpu-dryrun-1cam.json", "e2e-cpu-dryrun-2cam.json", "e2e-cpu-dryrun-grpc2cam.json"]
    one = json.loads((work / "out-p3" / "points" / points[0]).read_text())
    assert one["frames"] > 0 and one["fps"] > 0 and one["sessions"]["embedder"]["distinct_shapes"] >= 1
    assert "profile e2e-cuda face_detection_yunet_2023mar" in log and "top operators: Conv" in log
    with tarfile.open(work / "out-p3" / "results.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith(".top.json") and "profile-e2e-cuda" in n for n in names) and "results/ledger.json" in names
    assert not list(work.glob("repo-*"))  # no call's tree is left: the stash alone carried the parts


def test_a_step_prints_as_it_goes_and_is_cut_at_its_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run.py's run_step: each line a step prints reaches the call's output and $OUT/run.log at once; at its
    timeout the step's process group is stopped (rc 124) and what it printed and wrote stays. The ledger
    charges the machine start once, then each call's wall time and transfers."""
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.setenv("DEVICE_STASH", str(tmp_path / "stash"))
    run = _load(ROOT / "benchmarks" / "device" / "run.py", "device_run")
    point = tmp_path / "point.json"
    script = (f"import time, pathlib\nprint('figure 1: 12.5 fps', flush=True)\n"
              f"pathlib.Path({str(point)!r}).write_text('{{}}')\ntime.sleep(60)\nprint('never')")
    rc = run.run_step("slow", [sys.executable, "-c", script], dict(os.environ), timeout_s=3)
    assert rc == 124 and point.is_file()
    log = (tmp_path / "out" / "run.log").read_text()
    assert "slow| figure 1: 12.5 fps" in log and "TIMED OUT" in log and "slow| never" not in log
    assert "figure 1" in (tmp_path / "stash" / "results" / "slow.log").read_text()
    led = run.read_ledger()
    run.record_call(led)
    assert run.spent(led) == pytest.approx(run.START_S + led["calls"][0]["wall_s"] + run.CALL_OVERHEAD_S)
    assert json.loads((tmp_path / "stash" / "ledger.json").read_text())["calls"][0]["pid"] == os.getpid()
