"""Frame decoding behind one seam: gateway JPEG frames (CPU or nvJPEG) and pull cameras (CPU or NVDEC).

The engine builds a `Decoders` once from `[decode]` (`build_decoders`) and hands it to the ingest servicer,
the pull sources and the cluster workers. Every decoder returns host BGR uint8 numpy frames, so nothing after
decoding changes. The NVIDIA decoders are optional (pip extra `gpu-decode`): asked for where their library or a
CUDA device is missing, the CPU decoder is used, with one warning saying what to install. A frame nvJPEG refuses
is decoded on the CPU, and a stream NVDEC cannot open or breaks on is read on the CPU: no frame is lost to the
choice of decoder.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from engine.config import Config, DecodeConfig
from engine.vision import image as cpu_image
from engine.vision.image import check_dims, check_image
from engine.vision.scale import reduced_decode_min_side

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'faceengine[gpu-decode]'"
NVJPEG_PACKAGE = ("nvidia.nvimgcodec", "nvidia-nvimgcodec-cu12 (or -cu13)")
NVDEC_PACKAGE = ("PyNvVideoCodec", "PyNvVideoCodec")
FALLBACK_LOG_EVERY_S = 60.0  # a GPU decoder that keeps refusing frames is logged at most this often
Loader = Callable[[], np.ndarray]


# ---- interfaces --------------------------------------------------------------------------------
class JpegDecoder(Protocol):
    """Encoded gateway frames to BGR uint8 arrays, with the hostile-input limits of `engine.vision.image`:
    empty, corrupt, unsupported or oversized data raises InvalidImageError naming the reason."""

    name: str

    def decode(self, data: bytes, max_side: int = 8192, max_pixels: int = 16_777_216) -> np.ndarray: ...

    def decode_for_detection(self, data: bytes, min_long_side: int, max_side: int = 8192,
                             max_pixels: int = 16_777_216, factor: int = 2) -> tuple[np.ndarray, float, Loader | None]:
        """(image, scale to original pixels, full-resolution loader or None): see `decode_for_detection`."""
        ...


class VideoReader(Protocol):
    """One opened stream: `read` gives (ok, BGR frame) like cv2.VideoCapture.read; `fps` and `frame_count`
    are 0 when the stream does not say."""

    fps: float
    frame_count: int

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


class VideoOpener(Protocol):
    """Opens pull-camera streams; None when `target` is not a readable video stream."""

    name: str

    def open(self, target: str, *, network: bool, timeout_s: float, shown: str) -> VideoReader | None: ...


# ---- CPU -----------------------------------------------------------------------------------------
def decode_pipeline_frame(jpeg: JpegDecoder, data: bytes, cfg: Config,
                          ) -> tuple[np.ndarray, float, Callable[[], np.ndarray] | None]:
    """A gateway's encoded frame as the video pipeline takes it: (image, scale, full-resolution loader).

    With `pipeline.fast_decode`, large JPEGs are half-decoded above the detector's floor
    (`reduced_decode_min_side`), else decoded in full. The one place the server, cluster workers and
    benchmarks decode gateway frames, so they cannot drift apart (a copy with its own floor once did).
    With `pipeline.motion_gating` too, JPEGs of at least 4 x `motion_width` are decoded at a quarter (the motion
    mask's input); the recognizer decodes the full frame only when it detects in it (regions, full-frame pass) or
    embeds a face, so a frame between detections or of an empty scene costs a quarter decode."""
    lim = cfg.limits
    p = cfg.pipeline
    if p.fast_decode and p.motion_gating:
        return jpeg.decode_for_detection(data, 4 * p.motion_width, lim.max_image_side, lim.max_image_pixels, 4)
    if cfg.pipeline.fast_decode:
        return jpeg.decode_for_detection(data, reduced_decode_min_side(cfg.detector), lim.max_image_side,
                                         lim.max_image_pixels)
    return jpeg.decode(data, lim.max_image_side, lim.max_image_pixels), 1.0, None


class CpuJpegDecoder:
    """OpenCV, as the engine always decoded: half-size DCT decode of large JPEGs for detection."""

    name = "cpu"

    def decode(self, data: bytes, max_side: int = 8192, max_pixels: int = 16_777_216) -> np.ndarray:
        return cpu_image.decode_image(data, max_side, max_pixels)

    def decode_for_detection(self, data: bytes, min_long_side: int, max_side: int = 8192,
                             max_pixels: int = 16_777_216, factor: int = 2) -> tuple[np.ndarray, float, Loader | None]:
        return cpu_image.decode_for_detection(data, min_long_side, max_side, max_pixels, factor)


class CpuVideoReader:
    """cv2.VideoCapture (FFmpeg) behind the VideoReader interface."""

    def __init__(self, cap: cv2.VideoCapture) -> None:
        self.cap = cap
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

    def read(self) -> tuple[bool, np.ndarray | None]:
        return self.cap.read()

    def release(self) -> None:
        self.cap.release()

    def seek(self, frame_index: int) -> None:
        """Continue at frame `frame_index` (files; FFmpeg seeks to a key frame and decodes forward)."""
        self.cap.set(cv2.CAP_PROP_POS_FRAMES, frame_index)


class CpuVideo:
    """Pull cameras through OpenCV's FFmpeg backend, with bounded open/read waits on network streams."""

    name = "cpu"

    def open(self, target: str, *, network: bool, timeout_s: float, shown: str) -> CpuVideoReader | None:
        if network:  # an unreachable or stalled camera must not hang its reader thread
            ms = int(timeout_s * 1000)
            cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                            cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:  # FFmpeg only: no image-sequence patterns or other backends' syntax
            cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            return None
        return CpuVideoReader(cap)


# ---- NVIDIA: nvJPEG --------------------------------------------------------------------------------
class _RateLimitedLog:
    """Counts GPU decode failures; logs the first and then at most once every FALLBACK_LOG_EVERY_S."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0
        self._at = -math.inf
        self._lock = threading.Lock()

    def __call__(self, detail: str) -> None:
        with self._lock:
            self.count += 1
            now = time.monotonic()
            if now - self._at < FALLBACK_LOG_EVERY_S:
                return
            self._at = now
            count = self.count
        log.warning("%s: %s; decoded on the CPU instead (%d so far)", self.what, detail[:300], count)


class NvJpegDecoder:
    """JPEG frames decoded by `gpu_decode` (nvImageCodec, see `nvimgcodec_decode`), other formats and frames
    the GPU refuses by the CPU decoder. The limits are checked from the header first, as on the CPU.

    Detection gets the full-resolution frame (scale 1, no loader): nvJPEG decodes it for less than the CPU's
    half-size decode costs, and best shots then need no second decode."""

    name = "nvjpeg"

    def __init__(self, gpu_decode: Callable[[bytes], np.ndarray]) -> None:
        self._gpu = gpu_decode
        self._failed = _RateLimitedLog("nvJPEG could not decode a frame")

    @property
    def fallbacks(self) -> int:
        """Frames the GPU refused and the CPU decoded."""
        return self._failed.count

    def decode(self, data: bytes, max_side: int = 8192, max_pixels: int = 16_777_216) -> np.ndarray:
        if not data:
            return cpu_image.decode_image(data, max_side, max_pixels)  # the CPU's error for empty data
        fmt, width, height = check_image(data, max_side, max_pixels)
        if fmt != "JPEG":
            return cpu_image.decode_image(data, max_side, max_pixels)
        try:
            img = self._gpu(data)
            if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
                    and img.shape[0] > 0 and img.shape[1] > 0):
                raise ValueError(f"gave {getattr(img, 'shape', type(img).__name__)} "
                                 f"{getattr(img, 'dtype', '')}, not an HxWx3 uint8 image")
        except Exception as exc:  # noqa: BLE001 - any GPU refusal: the CPU decodes it or gives the reason
            self._failed(f"{type(exc).__name__}: {exc}")
            return cpu_image.decode_image(data, max_side, max_pixels)
        check_dims(img.shape[1], img.shape[0], max_side, max_pixels)
        return img

    def decode_for_detection(self, data: bytes, min_long_side: int, max_side: int = 8192,
                             max_pixels: int = 16_777_216, factor: int = 2) -> tuple[np.ndarray, float, Loader | None]:
        return self.decode(data, max_side, max_pixels), 1.0, None


def nvimgcodec_decode(device_id: int) -> Callable[[bytes], np.ndarray]:
    """bytes -> host BGR uint8 through nvImageCodec on GPU backends only (a CPU codec inside the library
    would hide a GPU refusal; ours is the fallback). One Decoder per thread: gRPC threads decode at once.

    API as documented for nvidia-nvimgcodec 0.5+ (docs.nvidia.com/cuda/nvimagecodec/py_api.html):
    `Decoder(device_id=, backends=[Backend(BackendKind.*)])`, `Decoder.decode(bytes, params=DecodeParams(
    color_spec=ColorSpec.RGB, allow_any_depth=False, apply_exif_orientation=True))` returning an Image on the
    device (None when it cannot decode), `Image.cpu()` a host Image exporting __array_interface__ (HWC RGB)."""
    nvimgcodec = importlib.import_module("nvidia.nvimgcodec")
    kinds = [getattr(nvimgcodec.BackendKind, k) for k in ("HW_GPU_ONLY", "GPU_ONLY", "HYBRID_CPU_GPU")
             if hasattr(nvimgcodec.BackendKind, k)]  # the hardware JPEG engine (A100/H100) first, then CUDA
    params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.RGB, allow_any_depth=False,
                                     apply_exif_orientation=True)
    local = threading.local()

    def decode(data: bytes) -> np.ndarray:
        dec = getattr(local, "decoder", None)
        if dec is None:
            dec = local.decoder = nvimgcodec.Decoder(device_id=device_id,
                                                     backends=[nvimgcodec.Backend(k) for k in kinds])
        img = dec.decode(data, params=params)
        if img is None:
            raise ValueError("nvImageCodec returned no image")
        return cv2.cvtColor(np.asarray(img.cpu()), cv2.COLOR_RGB2BGR)

    decode(_TINY_JPEG)  # fail here, at start, when the library loads but cannot run
    return decode


# ---- NVIDIA: NVDEC ----------------------------------------------------------------------------------
class FallbackVideoReader:
    """An NVDEC reader that hands over to the CPU when decoding breaks mid-stream: a file goes on at the next
    frame (`seekable`), a live stream from where it is now. Frames are never dropped for the switch."""

    def __init__(self, gpu: VideoReader, open_cpu: Callable[[], VideoReader | None], seekable: bool,
                 on_fallback: Callable[[str], None]) -> None:
        self._reader = gpu
        self._open_cpu = open_cpu
        self._seekable = seekable
        self._on_fallback = on_fallback
        self.on_gpu = True
        self.frames = 0
        self.fps = gpu.fps
        self.frame_count = gpu.frame_count

    def read(self) -> tuple[bool, np.ndarray | None]:
        try:
            ok, frame = self._reader.read()
        except Exception as exc:
            if not self.on_gpu:
                raise
            self._switch(f"{type(exc).__name__}: {exc}")
            ok, frame = self._reader.read()
        if ok:
            self.frames += 1
        return ok, frame

    def _switch(self, detail: str) -> None:
        self.on_gpu = False
        try:
            self._reader.release()
        except Exception:  # noqa: BLE001 - a broken GPU reader may fail to close too; the CPU takes over
            log.debug("NVDEC reader did not release cleanly", exc_info=True)
        cpu = self._open_cpu()
        if cpu is None:
            raise OSError(f"NVDEC failed ({detail}) and the CPU decoder cannot open the stream")
        if self._seekable and self.frames:
            seek = getattr(cpu, "seek", None)
            if seek is not None:
                seek(self.frames)
        self._on_fallback(f"NVDEC failed after {self.frames} frames ({detail})")
        self._reader = cpu

    def release(self) -> None:
        self._reader.release()


class NvdecVideo:
    """Pull cameras decoded by `open_gpu` (PyNvVideoCodec, see `PyNvReader`); a stream NVDEC cannot open
    (a codec it lacks, MJPEG over HTTP...) or breaks on is read by the CPU opener instead.

    `network` False keeps network streams on the CPU reader, whose open/read timeouts notice a stalled
    camera: the FFmpeg demuxer inside PyNvVideoCodec takes no timeout, and NVIDIA's maintainers note their
    built-in demuxer "works fine with local files but often struggles to cope with RTSP" (NVIDIA/
    VideoProcessingFramework issue 316). `decode.video = auto` runs files on NVDEC only; `nvdec` both."""

    def __init__(self, open_gpu: Callable[[str], VideoReader], cpu: VideoOpener | None = None,
                 network: bool = True) -> None:
        self._open_gpu = open_gpu
        self._cpu = cpu or CpuVideo()
        self._network = network
        self._failed = _RateLimitedLog("NVDEC")
        self.name = "nvdec" if network else "nvdec (files; network streams on cpu)"

    @property
    def fallbacks(self) -> int:
        """Streams (opens or mid-stream breaks) handed to the CPU."""
        return self._failed.count

    def open(self, target: str, *, network: bool, timeout_s: float, shown: str) -> VideoReader | None:
        def cpu() -> VideoReader | None:
            return self._cpu.open(target, network=network, timeout_s=timeout_s, shown=shown)

        if network and not self._network:
            return cpu()
        try:
            gpu = self._open_gpu(target)
        except Exception as exc:  # noqa: BLE001 - NVDEC cannot read this stream: the CPU may
            self._failed(f"cannot open {shown} ({type(exc).__name__}: {str(exc).replace(target, shown)})")
            return cpu()
        if not network and not gpu.frame_count:  # a file: its container says how many frames to expect
            gpu.frame_count = container_frame_count(target)
        return FallbackVideoReader(gpu, cpu, not network,
                                   lambda detail: self._failed(f"{shown}: {detail.replace(target, shown)}"))


def container_frame_count(path: str) -> int:
    """Frames a video file's container declares (0 when it does not say): read by OpenCV from the header,
    no frame decoded, so a pull source on NVDEC can tell a truncated file from its end like the CPU reader."""
    cap = cv2.VideoCapture(path)
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
    finally:
        cap.release()


class PyNvReader:
    """One stream through PyNvVideoCodec: FFmpeg demuxer, NVDEC decoder, RGB frames copied to host, BGR out.

    API as documented for PyNvVideoCodec 2.x (docs.nvidia.com/video-technologies/pynvvideocodec,
    "Video Demuxing" / "Video Decoding"): `CreateDemuxer(filename=)`, `.GetNvCodecId()`, `.FrameRate()`,
    iterating packets; `CreateDecoder(gpuid=, codec=, cudacontext=0, cudastream=0, usedevicememory=False,
    outputColorType=OutputColorType.RGB)`, `.Decode(packet)` giving host frames that export DLPack. The
    demuxer takes no open/read timeout (see NvdecVideo)."""

    def __init__(self, target: str, device_id: int) -> None:
        nvc = importlib.import_module("PyNvVideoCodec")
        self._demuxer = nvc.CreateDemuxer(filename=target)
        self._decoder = nvc.CreateDecoder(gpuid=device_id, codec=self._demuxer.GetNvCodecId(), cudacontext=0,
                                          cudastream=0, usedevicememory=False,
                                          outputColorType=nvc.OutputColorType.RGB)
        self.fps = float(self._demuxer.FrameRate() or 0.0)
        self.frame_count = 0  # the demuxer does not say; NvdecVideo.open reads a file's from its container
        self._packets = iter(self._demuxer)
        self._ready: deque[np.ndarray] = deque()

    def read(self) -> tuple[bool, np.ndarray | None]:
        while not self._ready:
            packet = next(self._packets, None)
            if packet is None:
                return False, None
            for frame in self._decoder.Decode(packet):
                self._ready.append(cv2.cvtColor(np.from_dlpack(frame), cv2.COLOR_RGB2BGR))
        return True, self._ready.popleft()

    def release(self) -> None:
        self._ready.clear()
        self._decoder = self._demuxer = None


# ---- choosing -----------------------------------------------------------------------------------
def cuda_device_count() -> int:
    """CUDA devices the driver reports; 0 without an NVIDIA driver (libcuda through ctypes, no toolkit)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    return 0


def nvidia_unavailable(module: str, package: str, device_id: int,
                       devices: Callable[[], int] = cuda_device_count) -> str | None:
    """Why the NVIDIA decoder in `module` cannot run here (library missing, no CUDA device), or None."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a wheel whose CUDA libraries fail to load
        return f"{package} is not installed or does not load ({type(exc).__name__}: {str(exc)[:120]}); " \
               f"install it with {INSTALL_HINT}"
    count = devices()
    if count <= device_id:
        return f"{package} is installed but no CUDA device {device_id} is present ({count} found)"
    return None


@dataclass(frozen=True)
class Decoders:
    """The decoders the engine was built with (one set per process, handed to whoever decodes)."""

    jpeg: JpegDecoder
    video: VideoOpener

    def describe(self) -> str:
        return f"jpeg={self.jpeg.name}, video={self.video.name}"

    def info(self) -> dict[str, Any]:
        return {"jpeg": self.jpeg.name, "video": self.video.name,
                "jpeg_fallbacks": getattr(self.jpeg, "fallbacks", 0),
                "video_fallbacks": getattr(self.video, "fallbacks", 0)}


def cpu_decoders() -> Decoders:
    return Decoders(CpuJpegDecoder(), CpuVideo())


def build_decoders(cfg: DecodeConfig, device_id: int = 0,
                   devices: Callable[[], int] = cuda_device_count) -> Decoders:
    """The decoders `[decode]` asks for. auto: NVIDIA when its library imports and CUDA device `device_id`
    is present, else CPU (logged at info). An explicit nvjpeg/nvdec that cannot run here: CPU, with one
    warning naming the package and how to install it."""
    jpeg: JpegDecoder = CpuJpegDecoder()
    video: VideoOpener = CpuVideo()
    if cfg.jpeg != "cpu":
        why = nvidia_unavailable(NVJPEG_PACKAGE[0], NVJPEG_PACKAGE[1], device_id, devices)
        if why is None:
            try:
                jpeg = NvJpegDecoder(nvimgcodec_decode(device_id))
            except Exception as exc:  # noqa: BLE001 - loads but cannot run (driver, CUDA version)
                why = f"nvImageCodec failed to start ({type(exc).__name__}: {str(exc)[:200]})"
        if why is not None:
            (log.warning if cfg.jpeg == "nvjpeg" else log.info)(
                "decode.jpeg = %s: using the CPU decoder: %s", cfg.jpeg, why)
    if cfg.video != "cpu":
        why = nvidia_unavailable(NVDEC_PACKAGE[0], NVDEC_PACKAGE[1], device_id, devices)
        if why is None:
            video = NvdecVideo(lambda target: PyNvReader(target, device_id), network=cfg.video == "nvdec")
        else:
            (log.warning if cfg.video == "nvdec" else log.info)(
                "decode.video = %s: using the CPU decoder: %s", cfg.video, why)
    decoders = Decoders(jpeg, video)
    log.info("frame decoding: %s", decoders.describe())
    return decoders


# an 8x8 grey baseline JPEG: the start-up check that the GPU decoder runs (encoded once here by OpenCV)
_TINY_JPEG = bytes(cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))[1])
