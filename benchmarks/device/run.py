#!/usr/bin/env python3
"""Device side of the kit (run by run.sh on the GPU machine, from the repository root): take in the carried
part, then run every benchmark step whose inputs have all arrived and that has not run yet.

The same command serves every call; only `carry` changes (.device/p1, then p2, ...). Each call:

1. stash: verify (sha256) and unpack the items of the carried part(s) into the stash, OUTSIDE the repository
   (default /tmp/faceengine-device/stash: the tool may lay the repository out in another folder each call,
   /tmp stays while the machine is warm): the onnxruntime-gpu tar, the Python packages (site.tar.xz), Ray
   (ray.tar.xz), models and media (as a FACEENGINE_SHARED folder), the generated gRPC code;
2. environment: PYTHONPATH = repo, stash/site, stash/ray, stash/ort; LD_LIBRARY_PATH = the CUDA 13
   libraries of the image's PyTorch (../shared/gpu/README.md); FACEENGINE_SHARED, FACEENGINE_MODEL_DIR;
   a check that onnxruntime runs a session on CUDA (else the GPU steps are skipped, saying why);
3. device time: a ledger in the stash charges the machine's start (DEVICE_START_S, 90) once, then every
   call's wall time and DEVICE_CALL_OVERHEAD_S (10, the transfers); a call may spend what is left of
   DEVICE_TOTAL_S (480: 8 minutes in all), at most DEVICE_BUDGET_S (560) on its steps;
4. steps, in order (DEFAULT_STEPS unless DEVICE_STEPS names others), each with its own timeout and skipped
   when the time left cannot hold its estimate: models-cuda, cluster, e2e-cuda (1, then 4, then 16 cameras
   for DEVICE_E2E_S = 20 s each, then gRPC at 16; each point's JSON written, and copied to $OUT, at once),
   models-cuda-sface; opt-in: models-cpu, pipeline-cuda, soak-gpu, models-cuda-graphs and e2e-cuda-graphs
   (CUDA graphs per bucket, to set against models-cuda-sface and e2e-cuda's 16-camera point). A step's
   output is printed line by line as it runs (and kept in results/<step>.log); GPU steps write
   onnxruntime's per-node profile of each session (results/profile-<step>/, first DEVICE_PROFILE_RUNS
   calls) and its top operators are printed;
5. results: $OUT/results.tar.gz (every JSON, plot, profile and log so far, rewritten after each step) and
   $OUT/run.log. A step that ran (or failed) is not run again in a later call (DEVICE_RETRY=1 to retry).

Environment: OUT (results folder; the device tool sets it), DEVICE_DIR (.device), DEVICE_STASH
(/tmp/faceengine-device/stash), DEVICE_TOTAL_S (480), DEVICE_START_S (90), DEVICE_BUDGET_S (560),
DEVICE_SOAK_S (300), DEVICE_E2E_S (20), DEVICE_STEPS (comma list: only these), DEVICE_QUICK=1 (tiny sizes;
without CUDA the GPU steps run on the CPU provider, to prove the plumbing end to end), DEVICE_RETRY=1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from engine.models.registry import sha256_file  # noqa: E402  (standard library only: fine before the stash is unpacked)

KIT = Path(os.environ.get("DEVICE_DIR") or ROOT / ".device")
STASH = Path(os.environ.get("DEVICE_STASH") or "/tmp/faceengine-device/stash")
"""Outside the repository: the tool may lay the working tree out in a new folder each call (the first H200
run lost a stash kept inside it); /tmp lasts as long as the warm machine."""
OUT = Path(os.environ.get("OUT") or ROOT / "device-out")
RESULTS = STASH / "results"
QUICK = os.environ.get("DEVICE_QUICK") == "1"
BUDGET_S = float(os.environ.get("DEVICE_BUDGET_S", "560"))
TOTAL_S = float(os.environ.get("DEVICE_TOTAL_S", "480"))
"""Device time for the whole kit, every call together: 8 minutes."""
START_S = float(os.environ.get("DEVICE_START_S", "90"))
"""A fresh machine's start, charged once (when the stash is new)."""
CALL_OVERHEAD_S = float(os.environ.get("DEVICE_CALL_OVERHEAD_S", "10"))
"""Per call, outside run.py: the carry's and $OUT's transfers."""
E2E_S = float(os.environ.get("DEVICE_E2E_S", "20"))
PROFILE_RUNS = os.environ.get("DEVICE_PROFILE_RUNS", "50")
DEFAULT_STEPS = ("models-cuda", "cluster", "e2e-cuda", "models-cuda-sface")
"""What runs unless DEVICE_STEPS says otherwise: together they fit the 8 minutes (README.md)."""
SOAK_S = float(os.environ.get("DEVICE_SOAK_S", "300"))
SOAK_SETUP_S = 75.0
"""Soak time outside the soak itself: enrolment, server start, 20 s calibration, shutdown."""
RETRY = os.environ.get("DEVICE_RETRY") == "1"
ONLY = {s for s in os.environ.get("DEVICE_STEPS", "").split(",") if s}
PY = sys.executable
T0 = time.monotonic()
CORE = ("site", "proto", "model-yunet", "model-mobilefacenet", "testdata")


def elapsed() -> float:
    return time.monotonic() - T0


def log(msg: str, stamp: bool = True) -> None:
    line = f"[{time.strftime('%H:%M:%S', time.gmtime())} +{elapsed():5.0f}s] {msg}" if stamp else msg
    print(line, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "run.log").open("a") as fh:
        fh.write(line + "\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "run.log").open("a") as fh:
        fh.write(line + "\n")


# ---- device-time ledger ------------------------------------------------------------------------------
def read_ledger() -> dict:
    """{"start_s": charged once, "calls": [{"at", "wall_s"}]} from the stash (a new stash: a new machine)."""
    f = STASH / "ledger.json"
    if f.is_file():
        return json.loads(f.read_text())
    return {"start_s": START_S, "total_s": TOTAL_S, "calls": []}


def spent(led: dict) -> float:
    """Device seconds used so far: the start, every call's wall time and transfers."""
    return float(led["start_s"]) + sum(float(c["wall_s"]) + CALL_OVERHEAD_S for c in led["calls"])


def record_call(led: dict) -> None:
    """Write this call's wall time so far into the ledger (after each step: a killed call still counts)."""
    STASH.mkdir(parents=True, exist_ok=True)
    if not led["calls"] or led["calls"][-1].get("pid") != os.getpid():
        led["calls"].append({"at": time.strftime("%H:%M:%S", time.gmtime()), "pid": os.getpid(), "wall_s": 0.0})
    led["calls"][-1]["wall_s"] = round(elapsed(), 1)
    tmp = STASH / "ledger.json.partial"
    tmp.write_text(json.dumps(led, indent=1))
    tmp.replace(STASH / "ledger.json")


# ---- 1. stash ---------------------------------------------------------------------------------------
def manifest() -> dict | None:
    """The kit's manifest: from the stash, or from any carried part (newer commit wins)."""
    found = [json.loads(p.read_text()) for p in sorted(KIT.glob("p[0-9]*/MANIFEST.json"))]
    stashed = STASH / "MANIFEST.json"
    if found:
        m = found[0]
        if stashed.is_file() and json.loads(stashed.read_text()).get("commit") != m.get("commit"):
            log(f"the carried part is from kit commit {m.get('commit')}, the stash from another: starting afresh")
            shutil.rmtree(STASH, ignore_errors=True)
        STASH.mkdir(parents=True, exist_ok=True)
        stashed.write_text(json.dumps(m))
        return m
    return json.loads(stashed.read_text()) if stashed.is_file() else None


def have(item: str) -> bool:
    return (STASH / "have" / item).is_file()


def unpack(item: str, src: Path) -> None:
    """Put one verified item where the steps read it."""
    if item in ("ort", "site", "ray", "decode"):
        dest = STASH / item
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        subprocess.run(["tar", "-xJf", str(src), "-C", str(dest)], check=True)
    elif item.startswith("model-"):
        dest = STASH / "shared" / "models"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / src.name)
    elif item == "testdata":
        dest = STASH / "shared" / "testdata"
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(src) as tar:
            tar.extractall(dest, filter="data")
    elif item == "proto":
        with tarfile.open(src) as tar:
            tar.extractall(STASH, filter="data")
    else:
        raise ValueError(f"unknown item {item}")


def stash(m: dict) -> list[int]:
    """Take in every carried item not stashed yet; return the parts still missing."""
    for item, info in m["items"].items():
        if have(item):
            continue
        src = KIT / f"p{info['part']}" / info["file"]
        if not src.is_file():
            continue
        t = time.monotonic()
        digest = sha256_file(src)
        if digest != info["sha256"]:
            log(f"ERROR {item}: {src} has sha256 {digest[:12]}..., the manifest says {info['sha256'][:12]}...; "
                "not used (re-run prepare.sh and carry the part again)")
            continue
        unpack(item, src)
        (STASH / "have").mkdir(parents=True, exist_ok=True)
        (STASH / "have" / item).write_text(digest)
        log(f"stashed {item} ({info['bytes'] / 2**20:.1f} MiB from p{info['part']}) in {time.monotonic() - t:.1f} s")
    return sorted({info["part"] for item, info in m["items"].items() if not have(item)})


# ---- 2. environment ---------------------------------------------------------------------------------
def cuda_lib_dirs() -> list[str]:
    """Folders of the CUDA 13 runtime libraries that the image's PyTorch wheels bring (nvidia/*/lib), and
    the carried nvJPEG's."""
    dirs: set[str] = set()
    for sp in [*site.getsitepackages(), str(STASH / "decode")]:
        nv = Path(sp) / "nvidia"
        if nv.is_dir():
            dirs |= {str(p.parent) for p in nv.rglob("lib*.so*")}
    return sorted(dirs)


def environment(m: dict, with_ort: bool) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), str(STASH / "site"), str(STASH / "ray"), str(STASH / "decode")]
    paths += [str(STASH / "ort")] if with_ort else []
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH", "")] if p])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(cuda_lib_dirs() + [p for p in [os.environ.get("LD_LIBRARY_PATH", "")]
                                                                 if p])
    env["FACEENGINE_SHARED"] = str(STASH / "shared")
    env["FACEENGINE_MODEL_DIR"] = str(STASH / "models")
    env["FACEENGINE_GIT_COMMIT"] = str(m.get("commit", "unknown"))
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


ORT_CHECK = """
import sys, onnxruntime as o
print("onnxruntime", o.__version__, o.__file__, o.get_available_providers())
if len(sys.argv) > 1:
    s = o.InferenceSession(sys.argv[1], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    print("session providers", s.get_providers())
    sys.exit(0 if s.get_providers()[0] == "CUDAExecutionProvider" else 3)
"""


def check_ort(m: dict) -> tuple[dict[str, str], bool, str]:
    """(environment, CUDA usable, why not). Falls back to the image's onnxruntime when the kit's does not
    import here (another Python, a dry run)."""
    yunet = STASH / "shared" / "models" / m["items"]["model-yunet"]["file"] if have("model-yunet") else None
    gpu = shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0
    for with_ort in ((True, False) if have("ort") else (False,)):
        env = environment(m, with_ort)
        args = [PY, "-c", ORT_CHECK] + ([str(yunet)] if gpu and yunet else [])
        r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        out = (r.stdout + r.stderr).strip()
        if r.returncode in (0, 3) and "onnxruntime" in r.stdout:
            log(("kit onnxruntime-gpu: " if with_ort else "image onnxruntime: ") + " | ".join(
                ln for ln in r.stdout.splitlines() if ln))
            if not gpu:
                return env, False, "no GPU (nvidia-smi -L fails or is missing)"
            if yunet is None:
                return env, False, "YuNet not stashed yet"
            if r.returncode == 3:
                return env, False, f"a session asked for CUDA runs on the CPU: {out[-600:]}"
            return env, True, ""
        log(f"{'kit onnxruntime-gpu' if with_ort else 'image onnxruntime'} does not work here: {out[-800:]}")
    return environment(m, False), False, "no working onnxruntime"


# ---- 3. steps ---------------------------------------------------------------------------------------
@dataclass
class Step:
    """One benchmark run: its inputs, whether it needs CUDA, its expected and longest wall time."""

    name: str
    needs: tuple[str, ...]
    gpu: bool
    est_s: float
    timeout_s: float
    argv: Callable[[str], list[str]]  # provider -> command
    env: dict[str, str] = field(default_factory=dict)


def _bench(*args: str) -> list[str]:
    return [PY, "-m", "engine", "bench", *args]


def tag(base: str, provider: str) -> str:
    """Result name of a GPU step: models-cuda, or models-cpu-dryrun when a dry run used the CPU."""
    return f"{RESULTS}/{base}-{provider}" + ("" if provider == "cuda" else "-dryrun")


def steps() -> list[Step]:
    r = str(RESULTS)
    q = QUICK
    lfw = ["--lfw-distractors", "10"] if q else []
    return [
        Step("models-cuda", ("ort", *CORE), True, 25 if q else 45, 150,
             lambda p: _bench("models", "--provider", p, "--embedders", "mobilefacenet", "--json",
                              "--out", tag("models", p)) + (["--quick"] if q else ["--seconds", "1.5"])),
        Step("models-cpu", CORE, False, 25 if q else 40, 120,
             lambda p: _bench("models", "--provider", "cpu", "--embedders", "mobilefacenet", "--json",
                              "--out", f"{r}/models-cpu") + (["--quick"] if q else ["--seconds", "0.5"])),
        # steady state: the workers start once for every point, 3 s warm-up then 10 s measured a point (about
        # 100 s in all); a worker runs one frame call at a time (cluster.worker_threads), so 14 workers' model
        # threads (14 x 1) stay within the 16 cores
        Step("cluster", ("ray", *CORE), False, 40 if q else 110, 240,
             lambda p: _bench("cluster", "--rounds", "1", "--json", "--out", f"{r}/cluster-16core.json",
                              *(["--workers", "1,2", "--cameras", "2", "--max-frames", "8", "--warmup", "1",
                                 "--seconds", "3"] if q else
                                ["--workers", "1,2,4,8,14", "--cameras", "28", "--max-frames", "32", "--warmup", "3",
                                 "--seconds", "10"])),
             {"FACEENGINE_MODELS_EMBEDDER": "mobilefacenet", "FACEENGINE_RUNTIME_PROVIDER": "cpu"}),
        Step("pipeline-cuda", ("ort", "model-sface", "decode", *CORE), True, 60 if q else 150, 240 if q else 300,
             lambda p: _bench("--provider", p, "--no-baselines", "--no-peer", "--rounds", "1", "--json",
                              "--out", tag("pipeline", p),
                              *(["--cameras", "2", "--max-frames", "8", "--no-load-latency", *lfw] if q else
                                ["--cameras", "16"]))),
        Step("e2e-cuda", ("ort", "model-sface", *CORE), True, 40 if q else 3 * E2E_S + 75,
             150 if q else 3 * E2E_S + 150,
             lambda p: [PY, str(ROOT / "benchmarks" / "device" / "e2e.py"), "--provider", p, "--out",
                        tag("e2e", p), "--copy-to", str(OUT / "points"), "--grpc",
                        *(["--cameras", "1,2", "--seconds", f"{min(E2E_S, 3):g}", "--max-frames", "6", *lfw,
                           "--video", str(STASH / "shared" / "testdata" / "videos" / "stage_360p.mp4")] if q
                          else ["--cameras", "1,4,16", "--seconds", f"{E2E_S:g}"])]),
        Step("soak-gpu", ("ort", "model-sface", "decode", *CORE), True, 0, 0, lambda p: []),  # sized at run time
        Step("models-cuda-sface", ("ort", "model-sface", *CORE), True, 20 if q else 40, 120,
             lambda p: _bench("models", "--provider", p, "--embedders", "sface", "--batches", "32", "--json",
                              "--out", tag("models-sface", p)) + (["--quick"] if q else ["--seconds", "1"])),
        # on request: the same with CUDA graphs per bucket, to set against models-cuda-sface and e2e-cuda
        Step("models-cuda-graphs", ("ort", "model-sface", *CORE), True, 20 if q else 40, 120,
             lambda p: _bench("models", "--provider", p, "--embedders", "sface", "--batches", "32", "--json",
                              "--out", tag("models-graphs", p)) + (["--quick"] if q else ["--seconds", "1"]),
             {"FACEENGINE_RUNTIME_CUDA_GRAPHS": "true", "FACEENGINE_RUNTIME_SHAPE_BUCKETS": "on"}),
        Step("e2e-cuda-graphs", ("ort", "model-sface", *CORE), True, 40 if q else E2E_S + 60, 150,
             lambda p: [PY, str(ROOT / "benchmarks" / "device" / "e2e.py"), "--provider", p, "--out",
                        tag("e2e-graphs", p), "--copy-to", str(OUT / "points"),
                        *(["--cameras", "2", "--seconds", f"{min(E2E_S, 3):g}", "--max-frames", "6", *lfw,
                           "--video", str(STASH / "shared" / "testdata" / "videos" / "stage_360p.mp4")] if q
                          else ["--cameras", "16", "--seconds", f"{E2E_S:g}"])],
             {"FACEENGINE_RUNTIME_CUDA_GRAPHS": "true", "FACEENGINE_RUNTIME_SHAPE_BUCKETS": "on"}),
    ]


def soak_argv(provider: str, seconds: float) -> list[str]:
    q = QUICK
    return [PY, str(ROOT / "benchmarks" / "bench_memory.py"), "--provider", provider, "--seconds", f"{seconds:.0f}",
            "--warmup", "3" if q else "60", "--interval", "1" if q else "5", "--cameras", "1" if q else "8",
            "--load", "0.5", "--out", tag("memory", provider)] + (["--lfw-distractors", "10"] if q else [])


NOISE = ("No registered plugin EP device found",)
"""onnxruntime warnings printed for every session: kept in the step's log, not echoed."""


def run_step(name: str, argv: list[str], env: dict[str, str], timeout_s: float) -> int:
    """Run one step in its own process group; every line it prints is echoed at once (prefixed with the
    step) and kept in results/<name>.log, so a call cut short still shows the figures so far. At
    `timeout_s` the group gets SIGINT, then SIGKILL 10 s later; rc 124."""
    logf = RESULTS / f"{name}.log"
    log(f"step {name}: {' '.join(argv[1:])} (timeout {timeout_s:.0f} s)")
    t = time.monotonic()
    timed_out = threading.Event()

    def kill(proc: subprocess.Popen) -> None:
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    with logf.open("w") as fh:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", bufsize=1, start_new_session=True)
        timer = threading.Timer(timeout_s, kill, args=(proc,))
        timer.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            fh.flush()
            if not any(n in line for n in NOISE):
                log(f"  {name}| {line.rstrip()[:400]}", stamp=False)
        rc = proc.wait()
        timer.cancel()
    if timed_out.is_set():
        rc = 124
    log(f"step {name}: rc {rc} in {time.monotonic() - t:.0f} s" + ("  (TIMED OUT)" if rc == 124 else ""))
    return rc


def profile_env(name: str) -> dict[str, str]:
    """A GPU step's sessions write onnxruntime's per-node profile (first DEVICE_PROFILE_RUNS calls each)."""
    return {"FACEENGINE_RUNTIME_PROFILE_DIR": str(RESULTS / f"profile-{name}"),
            "FACEENGINE_RUNTIME_PROFILE_RUNS": PROFILE_RUNS}


def print_profiles(name: str) -> None:
    """The top operators of each session profile a step wrote (engine.models.profile summaries)."""
    for f in sorted((RESULTS / f"profile-{name}").glob("*.top.json")):
        try:
            top = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            log(f"profile {f.name}: unreadable ({exc})")
            continue
        ops = ", ".join(f"{o['op']} {o['ms']:.1f} ms ({o['share']:.0%}, {'/'.join(o['providers'])})"
                        for o in top.get("top", [])[:6])
        log(f"profile {name} {f.name.rsplit('_', 3)[0]}: {top.get('runs')} calls, mean "
            f"{top.get('model_run_ms_mean')} ms; top operators: {ops}")


def pack_results() -> None:
    """$OUT/results.tar.gz: everything under results/ so far (written aside, then renamed)."""
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "results.tar.gz.partial"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(RESULTS, arcname="results")
        if (STASH / "ledger.json").is_file():
            tar.add(STASH / "ledger.json", arcname="results/ledger.json")
    tmp.replace(OUT / "results.tar.gz")


def gpu_snapshot(label: str) -> None:
    if shutil.which("nvidia-smi") is None:
        log(f"{label}: no nvidia-smi")
        return
    r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.used,memory.total,utilization.gpu,"
                        "clocks.sm,clocks.max.sm", "--format=csv"], capture_output=True, text=True)
    log(f"{label}: {' | '.join((r.stdout + r.stderr).strip().splitlines())}")


def main() -> int:
    log(f"device run: repo {ROOT}, kit {KIT}, stash {STASH}, results {OUT}; budget {BUDGET_S:.0f} s"
        + (", QUICK" if QUICK else ""))
    m = manifest()
    if m is None:
        log("no kit here: carry .device/p1 (made by benchmarks/device/prepare.sh)")
        return 2
    missing = stash(m)
    led = read_ledger()
    record_call(led)
    log(f"device time: {spent(led):.0f} s of {TOTAL_S:.0f} s spent (machine start {led['start_s']:.0f} s charged once, "
        f"{len(led['calls'])} calls incl. this one, {CALL_OVERHEAD_S:.0f} s transfers each); this call may use "
        f"{min(BUDGET_S, TOTAL_S - spent(led)):.0f} s more")
    if not (ROOT / "engine" / "_proto" / "faceengine").is_dir() and (STASH / "_proto").is_dir():
        shutil.copytree(STASH / "_proto", ROOT / "engine" / "_proto")
    RESULTS.mkdir(parents=True, exist_ok=True)
    gpu_snapshot("GPU before")
    if missing:
        log(f"parts not stashed yet: {', '.join(f'p{k}' for k in missing)} of {m['parts']}; steps that need "
            "them wait for the call that carries them")
    if not have("site"):
        log("NEXT: call again at once (within the warm window) with carry .device/p" + str(missing[0]))
        pack_results()
        return 0
    env, cuda, why = check_ort(m)
    if have("decode"):
        probe = "import nvidia.nvimgcodec as n; print('nvImageCodec', n.__version__, n.__file__)"
        r = subprocess.run([PY, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
        got = r.stdout.strip() if r.returncode == 0 else f"nvImageCodec does not import: {r.stderr.strip()[-400:]}"
        log(f"JPEG decoder: {got} (decode.jpeg = auto uses it with a CUDA device, else the CPU)")
    gpu_provider = "cuda" if cuda else ("cpu" if QUICK else None)
    if not cuda:
        log(f"CUDA: not usable ({why}); GPU steps " + ("run on the CPU provider (DEVICE_QUICK dry run)" if QUICK
                                                       else "are skipped"))
    done_dir = STASH / "done"
    done_dir.mkdir(parents=True, exist_ok=True)
    pending = 0
    chosen = ONLY or set(DEFAULT_STEPS)
    for st in steps():
        if st.name not in chosen:
            continue
        marker = done_dir / st.name
        if marker.is_file() and not (RETRY and marker.read_text().strip() != "0"):
            continue
        lacking = [i for i in st.needs if not have(i)]
        if lacking:
            pending += 1
            parts = sorted({m["items"][i]["part"] for i in lacking})
            log(f"step {st.name}: waits for {', '.join(lacking)} (in {', '.join(f'p{k}' for k in parts)})")
            continue
        if st.gpu and gpu_provider is None:
            log(f"step {st.name}: skipped, CUDA not usable ({why})")
            marker.write_text("skipped: no CUDA\n")
            continue
        provider = gpu_provider if st.gpu else "cpu"
        record_call(led)
        left = min(BUDGET_S - elapsed(), TOTAL_S - spent(led))
        if st.name == "soak-gpu":
            seconds = min(SOAK_S if not QUICK else 15.0, left - SOAK_SETUP_S)
            if seconds < (10 if QUICK else 120):
                pending += 1
                log(f"step soak-gpu: skipped for now, {left:.0f} s left (needs {SOAK_SETUP_S + 120:.0f}+)")
                continue
            if seconds < SOAK_S and not QUICK:
                log(f"step soak-gpu: shortened to {seconds:.0f} s (wanted {SOAK_S:.0f}) by the call's budget")
            rc = run_step(st.name, soak_argv(provider, seconds), env, seconds + SOAK_SETUP_S + 60)
        else:
            if left < st.est_s:
                pending += 1
                log(f"step {st.name}: skipped for now, {left:.0f} s left, expected {st.est_s:.0f} s")
                continue
            rc = run_step(st.name, st.argv(provider), {**env, **st.env, **(profile_env(st.name) if st.gpu else {})},
                          min(st.timeout_s, max(30.0, left)))
        if st.gpu:
            print_profiles(st.name)
        marker.write_text(f"{rc}\n")
        record_call(led)
        pack_results()
    gpu_snapshot("GPU after")
    left = [s.name for s in steps() if not (done_dir / s.name).is_file() and s.name in chosen]
    log(f"steps done: {sorted(p.name + '=' + p.read_text().strip() for p in done_dir.iterdir())}; not yet: {left}")
    record_call(led)
    log(f"device time: {spent(led):.0f} s of {TOTAL_S:.0f} s spent after this call (ledger {STASH / 'ledger.json'})")
    if missing:
        log(f"NEXT: call again at once with carry .device/p{missing[0]}")
    pack_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
