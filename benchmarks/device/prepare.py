#!/usr/bin/env python3
"""Build the device kit: everything the GPU machine lacks, packed into parts that each fit one `run` call.

Run here, online, from any folder (`bash benchmarks/device/prepare.sh`); see README.md beside this file
for why and for the calls to make. Writes (git-ignored) `<repo>/.device/`:

  p1/ p2/ ... pN/   the parts, each under the call limit together with the working tree; every part
                    holds MANIFEST.json (all items, which part holds each, hashes, the commit)
  cache/            downloads and built archives, reused by the next run

Items: the onnxruntime-gpu tar from ../shared/gpu (56 MB), the engine's missing Python packages installed
for CPython 3.12 / manylinux x86_64 into one tree and xz-compressed (`site.tar.xz`), Ray and its missing
dependencies likewise, less its Java jars and dashboard web build (`ray.tar.xz`), the three models, the
test media the benchmarks read, and the generated gRPC code. "core" items are packed first (the steps of
the second call need only them); the SFace model, needed only by the end-to-end steps, goes last.

Options come from the environment: DEVICE_PY (3.12), DEVICE_DIR (<repo>/.device), FACEENGINE_SHARED
(<repo>/../shared), DEVICE_LIMIT_MB (64, the call's limit in MiB), DEVICE_LFW (200 distractor identities),
DEVICE_XZ (xz level, 6), DEVICE_OFFLINE=1 (a rehearsal kit, no network: see OFFLINE).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from engine.models.registry import sha256_file  # noqa: E402  (standard library only: fine before the stash is unpacked)

PY = os.environ.get("DEVICE_PY", "3.12")
KIT = Path(os.environ.get("DEVICE_DIR", ROOT / ".device"))
SHARED = Path(os.environ.get("FACEENGINE_SHARED") or ROOT.parent / "shared")
LIMIT = int(float(os.environ.get("DEVICE_LIMIT_MB", "64")) * 2**20)
MARGIN = 2**20  # the tree grows between prepare and the call (results, notes): keep a MiB spare
LFW_IDENTITIES = int(os.environ.get("DEVICE_LFW", "200"))
XZ_LEVEL = os.environ.get("DEVICE_XZ", "6")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_5_x86_64", "manylinux1_x86_64")

SITE_PACKAGES = ("faiss-cpu", "lap", "grpcio", "grpcio-health-checking", "grpcio-reflection", "protobuf", "pydantic",
                 "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions", "prometheus-client")
"""What `engine` imports for `faceengine bench`, `bench models`, `bench cluster` and `serve` that the device
image lacks or has at another version (the generated gRPC code needs grpcio/protobuf at least as new as
the ones it was generated with). Its image has numpy, opencv, onnx, pillow, matplotlib, pyyaml, msgpack,
click, filelock, requests, attrs and aiohttp (KINDS.md). Not needed: psycopg (PostgreSQL store only),
starlette/uvicorn (console only), grpcio-tools (the generated code travels)."""
RAY_PACKAGES = ("ray", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py")
RAY_DROP = ("ray/jars", "ray/dashboard/client/build")
"""Left out of Ray: the Java worker's jars (34 MB) and the dashboard's web build (the dashboard is off)."""
DECODE_PACKAGES = ("nvidia-nvimgcodec-cu13", "nvidia-nvjpeg>=13,<14")
"""nvJPEG for gateway JPEG (decode.jpeg = auto picks it when it imports and a CUDA device is there): the
CUDA 13 builds, as the image's PyTorch is CUDA 13. Not PyNvVideoCodec: the benchmarks feed no pull camera."""
DECODE_DROP = ("nvidia/nvimgcodec/extensions/libopencv_ext.so*", "nvidia/nvimgcodec/extensions/libnvjpeg2k_ext.so*",
               "nvidia/nvimgcodec/extensions/libnvtiff_ext.so*", "nvidia/nvimgcodec/tools",
               "nvidia/nvimgcodec/include")
"""Left out of nvImageCodec: its OpenCV extension (11 MB; the engine falls back to its own OpenCV), the
JPEG 2000 and TIFF extensions (their libraries are not carried; loaded, they only print errors), tools and
headers; and the extension modules of other Python versions (below)."""
NVIDIA_INIT = "__path__ = __import__('pkgutil').extend_path(__path__, __name__)  # merge with the image's nvidia/\n"

MODELS = {"yunet": "face_detection_yunet_2023mar.onnx", "mobilefacenet": "mobilefacenet.onnx",
          "sface": "face_recognition_sface_2021dec.onnx"}
OFFLINE = os.environ.get("DEVICE_OFFLINE") == "1"
"""A rehearsal kit built here without the network (dryrun.sh, tests/test_device_kit.py): the onnxruntime-gpu,
site, Ray and nvImageCodec items are empty archives (the rehearsing Python has its own packages); models,
media and the generated code are the real ones, in the real calls' layout (OFFLINE_LAYOUT)."""
OFFLINE_LAYOUT = [["ort", "model-yunet", "model-mobilefacenet", "proto"], ["site", "ray", "testdata"],
                  ["model-sface", "decode"]]
LATE = {"model-sface", "decode"}
"""Items packed after the others: only the end-to-end steps (default embedder SFace, gateway JPEG) need them."""


def log(msg: str) -> None:
    print(f"prepare: {msg}", flush=True)


def installed_version(dist: str) -> str | None:
    """The version this checkout's environment runs (so the device gets what the tests ran with)."""
    venv = ROOT / ".venv" / "bin" / "python"
    exe = str(venv) if venv.is_file() else sys.executable
    out = subprocess.run([exe, "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None if out.returncode == 0 else None


def pins(names: tuple[str, ...]) -> list[str]:
    out = []
    for n in names:
        v = installed_version(n)
        out.append(f"{n}=={v}" if v else n)
    return out


def cross_install(reqs: list[str], target: Path) -> None:
    """pip install for CPython PY on manylinux x86_64 into `target` (no deps resolved: each is named)."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--only-binary=:all:",
           "--python-version", PY, "--implementation", "cp", "--target", str(target)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + reqs, check=True)


def xz_tree(src: Path, dest: Path, drop: tuple[str, ...] = ()) -> None:
    """tar.xz of the contents of `src` (paths relative to it), leaving out `drop` and __pycache__."""
    for pattern in drop:
        for d in list(src.glob(pattern)):
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
            else:
                d.unlink()
    impl = src / "nvidia" / "nvimgcodec"
    if impl.is_dir():  # one Python's extension module, and an `nvidia` package that merges with the image's
        tag = f"cpython-{PY.replace('.', '')}-"
        for so in impl.glob("nvimgcodec_impl.cpython-*"):
            if tag not in so.name:
                so.unlink()
        (src / "nvidia" / "__init__.py").write_text(NVIDIA_INIT)
    for cache in list(src.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
    tmp = dest.with_suffix(".partial")
    with open(tmp, "wb") as fh:
        tar = subprocess.Popen(["tar", "-C", str(src), "-cf", "-", "."], stdout=subprocess.PIPE)
        subprocess.run(["xz", "-T0", f"-{XZ_LEVEL}", "-c"], stdin=tar.stdout, stdout=fh, check=True)
        if tar.wait() != 0:
            raise RuntimeError(f"tar of {src} failed")
    tmp.replace(dest)


def built(name: str, reqs: list[str], drop: tuple[str, ...] = ()) -> Path:
    """cache/<name>-py<PY>-<hash of reqs>.tar.xz, built once."""
    key = hashlib.sha256(("\n".join(reqs) + "|" + "|".join(drop)).encode()).hexdigest()[:10]
    dest = KIT / "cache" / f"{name}-py{PY}-{key}.tar.xz"
    if dest.is_file():
        log(f"{name}: cached {dest.name}")
        return dest
    log(f"{name}: installing {' '.join(reqs)} for CPython {PY} and compressing (a minute or two)")
    with tempfile.TemporaryDirectory(prefix="fe-device-") as tmp:
        cross_install(reqs, Path(tmp) / "t")
        xz_tree(Path(tmp) / "t", dest, drop)
    return dest


def lfw_subset() -> list[str]:
    """The LFW files benchmarks/common.lfw_faces(N, per_identity=1) reads: the first N identities of the
    sorted landmark lines, one image each (the distractors the benchmarks enrol)."""
    lines = sorted((SHARED / "testdata" / "lfw-dev" / "landmarks_5pt.txt").read_text().splitlines())
    seen: set[str] = set()
    out: list[str] = []
    for line in lines:
        parts = line.split()
        if len(parts) != 11 or parts[0].split("/")[0] in seen:
            continue
        seen.add(parts[0].split("/")[0])
        out.append(f"lfw-dev/images/{parts[0]}")
        if len(out) >= LFW_IDENTITIES:
            break
    return out


def testdata_tar(dest: Path) -> None:
    """The media the benchmarks read: the 1080p clip (the 360p one for quick rehearsals), the photos
    (distractors) and the LFW subset."""
    td = SHARED / "testdata"
    files = ["videos/multiface_1080p.mp4", "videos/stage_360p.mp4", "lfw-dev/landmarks_5pt.txt"]
    files += [f"images/{p.name}" for p in sorted((td / "images").glob("*.jpg"))] + lfw_subset()
    with tarfile.open(dest, "w") as tar:
        for f in files:
            tar.add(td / f, arcname=f)


def proto_tar(dest: Path) -> None:
    """The generated gRPC code (git-ignored, made by `pip install -e .`): the device has no grpcio-tools."""
    src = ROOT / "engine" / "_proto"
    if not (src / "faceengine" / "v1" / "faceengine_pb2_grpc.py").is_file():
        subprocess.run([sys.executable, "-c", "from engine.protogen import generate; generate()"], cwd=ROOT, check=True)
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src, arcname="_proto", filter=lambda ti: None if "__pycache__" in ti.name else ti)


def tree_bytes() -> int:
    """What travels besides the parts: tracked files and untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    total = 0
    for name in out.split(b"\0"):
        p = ROOT / os.fsdecode(name)
        if name and p.is_file():
            total += p.stat().st_size
    return total


def commit() -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return rev.strip() + ("+dirty" if dirty else "")


def pack(items: dict[str, Path], budget: int) -> list[list[str]]:
    """First fit, largest first: the core items, then the late ones (into any part with room)."""
    parts: list[list[str]] = []
    room: list[int] = []
    for group in ([n for n in items if n not in LATE], [n for n in items if n in LATE]):
        for name in sorted(group, key=lambda n: -items[n].stat().st_size):
            size = items[name].stat().st_size
            if size > budget:
                raise SystemExit(f"prepare: {name} ({size / 2**20:.1f} MiB) alone exceeds a part's "
                                 f"{budget / 2**20:.1f} MiB")
            for k in range(len(parts)):
                if room[k] >= size:
                    parts[k].append(name)
                    room[k] -= size
                    break
            else:
                parts.append([name])
                room.append(budget - size)
    return parts


def part_name(item: str, src: Path) -> str:
    """The file name an item has in its part: models keep theirs (the registry knows them by it)."""
    if item.startswith("model-"):
        return src.name
    return {"ort": "ort.tar.xz", "site": "site.tar.xz", "ray": "ray.tar.xz", "decode": "decode.tar.xz",
            "testdata": "testdata.tar",
            "proto": "proto.tar.gz"}[item]


def main() -> int:
    if not SHARED.is_dir():
        raise SystemExit(f"prepare: shared folder {SHARED} not found (set FACEENGINE_SHARED)")
    (KIT / "cache").mkdir(parents=True, exist_ok=True)
    items: dict[str, Path] = {}
    if OFFLINE:
        for name in ("ort", "site", "ray", "decode"):
            items[name] = KIT / "cache" / f"{name}-offline.tar.xz"
            with tempfile.TemporaryDirectory(prefix="fe-device-") as tmp:
                xz_tree(Path(tmp), items[name])
    else:
        ort = sorted((SHARED / "gpu").glob("onnxruntime-gpu-*.tar.xz"))
        if not ort:
            raise SystemExit(f"prepare: no onnxruntime-gpu tar in {SHARED / 'gpu'}")
        items["ort"] = ort[-1]
        items["site"] = built("site", pins(SITE_PACKAGES))
        items["ray"] = built("ray", pins(RAY_PACKAGES), RAY_DROP)
        items["decode"] = built("decode", list(DECODE_PACKAGES), DECODE_DROP)
    for key, fname in MODELS.items():
        items[f"model-{key}"] = SHARED / "models" / fname
    td = KIT / "cache" / f"testdata-lfw{LFW_IDENTITIES}.tar"
    testdata_tar(td)
    items["testdata"] = td
    pt = KIT / "cache" / "proto.tar.gz"
    proto_tar(pt)
    items["proto"] = pt
    tree = tree_bytes()
    budget = LIMIT - tree - MARGIN - 64 * 1024  # the manifest travels in every part
    parts = OFFLINE_LAYOUT if OFFLINE else pack(items, budget)
    for old in KIT.glob("p[0-9]*"):
        shutil.rmtree(old)
    manifest = {"commit": commit(), "python": PY, "parts": len(parts), "offline": OFFLINE,
                "items": {n: {"part": k + 1, "file": part_name(n, items[n]), "source": items[n].name,
                              "bytes": items[n].stat().st_size, "sha256": sha256_file(items[n])}
                          for k, part in enumerate(parts) for n in part}}
    for k, part in enumerate(parts):
        d = KIT / f"p{k + 1}"
        d.mkdir()
        for n in part:
            dest = d / manifest["items"][n]["file"]
            try:
                os.link(items[n], dest)  # same file system: no copy of 56 MB
            except OSError:
                shutil.copyfile(items[n], dest)
        (d / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"working tree {tree / 2**20:.2f} MiB; part budget {budget / 2**20:.1f} MiB (call limit {LIMIT / 2**20:.0f})")
    for k, part in enumerate(parts):
        size = sum(items[n].stat().st_size for n in part)
        log(f"p{k + 1}: {size / 2**20:5.1f} MiB  " + ", ".join(f"{n} {items[n].stat().st_size / 2**20:.1f}"
                                                              for n in part))
    log(f"done: {len(parts)} parts in {KIT}; calls: carry .device/p1, then p2, ... (README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
