"""The decode seam (engine.video.decode): CPU decoders equal to the engine's own functions, the choice of
decoder from `[decode]`, the fallback to the CPU when the NVIDIA libraries are missing or refuse a frame,
and the wiring into the server. The NVIDIA paths themselves run only where their libraries and a GPU are."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.client import Client, encode_jpeg
from engine.config import Config, DecodeConfig
from engine.errors import ConfigError, InvalidImageError
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from engine.video import decode
from engine.video.decode import (
    INSTALL_HINT,
    CpuJpegDecoder,
    CpuVideo,
    Decoders,
    NvdecVideo,
    NvJpegDecoder,
    build_decoders,
    container_frame_count,
    nvidia_unavailable,
)
from engine.vision.image import decode_for_detection, decode_image
from tests.procs import wait_for
from tests.shared_data import IMAGES, VIDEOS, first_frames, read_frames
from tests.test_service import make_cfg

BIG = IMAGES / "obama-1080p.jpg"  # decoded at half size for detection on the CPU
SMALL = IMAGES / "obama.jpg"
MIN_SIDE = 1280  # twice the default detector input side
NVJPEG_MISSING = nvidia_unavailable(*decode.NVJPEG_PACKAGE, 0)
NVDEC_MISSING = nvidia_unavailable(*decode.NVDEC_PACKAGE, 0)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _read_all(opener: object, video: Path, limit: int = 10_000) -> list[np.ndarray]:
    reader = opener.open(str(video), network=False, timeout_s=5.0, shown=str(video))  # type: ignore[attr-defined]
    assert reader is not None
    return read_frames(reader, limit)


class FakeGpu:
    """Stands in for the nvImageCodec call (a library, not a model): decodes with OpenCV, or raises."""

    def __init__(self, fail: Callable[[int], bool] = lambda i: False, result: object = None) -> None:
        self.calls = 0
        self.fail = fail
        self.result = result

    def __call__(self, data: bytes) -> np.ndarray:
        self.calls += 1
        if self.fail(self.calls):
            raise RuntimeError("nvjpegDecode: NVJPEG_STATUS_JPEG_NOT_SUPPORTED (fake)")
        if self.result is not None:
            return self.result  # type: ignore[return-value]
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


# ---- CPU decoders ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [BIG, SMALL], ids=["1080p", "small"])
def test_cpu_jpeg_decoder_gives_the_same_bytes_as_the_engine_functions(path: Path) -> None:
    data = path.read_bytes()
    dec = CpuJpegDecoder()
    assert np.array_equal(dec.decode(data), decode_image(data))
    image, scale, loader = dec.decode_for_detection(data, MIN_SIDE)
    ref_image, ref_scale, ref_loader = decode_for_detection(data, MIN_SIDE)
    assert np.array_equal(image, ref_image) and scale == ref_scale
    assert (loader is None) == (ref_loader is None)
    if path is BIG:
        assert scale == 2.0 and loader is not None  # the half-size DCT decode is kept
        assert np.array_equal(loader(), decode_image(data))


def test_cpu_video_opener_gives_the_frames_opencv_reads() -> None:
    video = VIDEOS / "stage_360p.mp4"
    frames = _read_all(CpuVideo(), video, 30)
    reference = first_frames(video, 30)
    assert len(frames) == 30 and all(np.array_equal(a, b) for a, b in zip(frames, reference, strict=True))
    reader = CpuVideo().open(str(video), network=False, timeout_s=5.0, shown="x")
    assert reader is not None and reader.fps > 0 and reader.frame_count > 30
    reader.release()
    assert CpuVideo().open(str(IMAGES / "missing.mp4"), network=False, timeout_s=1.0, shown="x") is None


@pytest.mark.parametrize("dec", [CpuJpegDecoder(), NvJpegDecoder(FakeGpu())], ids=["cpu", "nvjpeg"])
def test_empty_corrupt_and_oversized_data_raise_invalid_image_through_the_seam(dec: object) -> None:
    data = BIG.read_bytes()
    with pytest.raises(InvalidImageError, match="empty"):
        dec.decode(b"")  # type: ignore[attr-defined]
    with pytest.raises(InvalidImageError, match="empty"):
        dec.decode_for_detection(b"", MIN_SIDE)  # type: ignore[attr-defined]
    with pytest.raises(InvalidImageError, match="unsupported format"):
        dec.decode(b"not an image at all")  # type: ignore[attr-defined]
    with pytest.raises(InvalidImageError, match="exceeds the limit of 1000 px"):
        dec.decode_for_detection(data, MIN_SIDE, max_side=1000)  # type: ignore[attr-defined]
    truncated = data[: len(data) // 3]  # the header passes; the GPU stand-in gives nothing, the CPU refuses
    with pytest.raises(InvalidImageError, match="corrupt or unsupported"):
        dec.decode_for_detection(truncated, MIN_SIDE)  # type: ignore[attr-defined]


# ---- choosing from [decode] ------------------------------------------------------------------------
def test_decode_config_defaults_to_auto_and_refuses_unknown_decoders() -> None:
    cfg = Config()
    assert (cfg.decode.jpeg, cfg.decode.video) == ("auto", "auto")
    cfg.update({"decode": {"jpeg": "cpu", "video": "nvdec"}})
    assert (cfg.decode.jpeg, cfg.decode.video) == ("cpu", "nvdec")
    with pytest.raises(ConfigError, match="decode.jpeg = 'vaapi' is invalid"):
        cfg.update({"decode": {"jpeg": "vaapi"}})


def test_auto_picks_the_cpu_without_a_cuda_device_and_says_so_quietly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine.video.decode")
    decoders = build_decoders(DecodeConfig(), devices=lambda: 0)
    assert isinstance(decoders.jpeg, CpuJpegDecoder) and isinstance(decoders.video, CpuVideo)
    assert decoders.describe() == "jpeg=cpu, video=cpu"
    assert _warnings(caplog) == []  # auto falling back is no fault
    assert any("frame decoding: jpeg=cpu, video=cpu" in r.getMessage() for r in caplog.records)
    if NVJPEG_MISSING and NVDEC_MISSING:  # this machine as it is (CI: no GPU, no gpu-decode extra)
        assert build_decoders(DecodeConfig()).describe() == "jpeg=cpu, video=cpu"


@pytest.mark.skipif(NVJPEG_MISSING is None, reason="nvImageCodec and a GPU are present: nothing falls back")
def test_nvjpeg_asked_for_without_the_library_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine.video.decode")
    decoders = build_decoders(DecodeConfig(jpeg="nvjpeg", video="cpu"))
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "nvidia-nvimgcodec-cu12" in warnings[0] and INSTALL_HINT in warnings[0] and "decode.jpeg" in warnings[0]
    assert decoders.jpeg.name == "cpu"
    data = BIG.read_bytes()
    image, scale, _ = decoders.jpeg.decode_for_detection(data, MIN_SIDE)
    ref, ref_scale, _ = decode_for_detection(data, MIN_SIDE)
    assert np.array_equal(image, ref) and scale == ref_scale


@pytest.mark.skipif(NVDEC_MISSING is None, reason="PyNvVideoCodec and a GPU are present: nothing falls back")
def test_nvdec_asked_for_without_the_library_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine.video.decode")
    decoders = build_decoders(DecodeConfig(jpeg="cpu", video="nvdec"))
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "PyNvVideoCodec" in warnings[0] and INSTALL_HINT in warnings[0] and "decode.video" in warnings[0]
    assert decoders.video.name == "cpu"
    video = VIDEOS / "stage_360p.mp4"
    frames = _read_all(decoders.video, video, 10)
    assert all(np.array_equal(a, b) for a, b in zip(frames, first_frames(video, 10), strict=True))


def test_an_installed_library_without_a_cuda_device_is_reported_as_such() -> None:
    why = nvidia_unavailable("json", "a-package", 0, devices=lambda: 0)  # a module that imports everywhere
    assert why is not None and "no CUDA device 0" in why
    assert nvidia_unavailable("json", "a-package", 1, devices=lambda: 2) is None
    assert "not installed" in (nvidia_unavailable("no_such_module_here", "a-package", 0) or "")


# ---- per-frame and per-stream fallback --------------------------------------------------------------
def test_a_frame_nvjpeg_refuses_is_decoded_on_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    gpu = FakeGpu(fail=lambda i: i % 2 == 0)  # every second frame refused
    dec = NvJpegDecoder(gpu)
    data = BIG.read_bytes()
    full = decode_image(data)
    with caplog.at_level(logging.WARNING, logger="engine.video.decode"):
        outs = [dec.decode_for_detection(data, MIN_SIDE) for _ in range(4)]
    assert gpu.calls == 4 and dec.fallbacks == 2
    for image, scale, loader in outs:  # full resolution either way; nothing lost
        assert np.array_equal(image, full) and scale == 1.0 and loader is None
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "NVJPEG_STATUS_JPEG_NOT_SUPPORTED" in warnings[0]  # rate-limited


def test_a_wrong_shaped_gpu_result_is_not_trusted() -> None:
    dec = NvJpegDecoder(FakeGpu(result=np.zeros((4, 4), np.float32)))
    data = SMALL.read_bytes()
    assert np.array_equal(dec.decode(data), decode_image(data)) and dec.fallbacks == 1


def test_limits_are_checked_before_the_gpu_decodes_and_other_formats_stay_on_the_cpu() -> None:
    gpu = FakeGpu()
    dec = NvJpegDecoder(gpu)
    with pytest.raises(InvalidImageError, match="more than the limit"):
        dec.decode(BIG.read_bytes(), max_pixels=1000)
    png = bytes(cv2.imencode(".png", decode_image(SMALL.read_bytes()))[1])
    assert np.array_equal(dec.decode(png), decode_image(png))
    assert gpu.calls == 0


class FakeNvdecReader:
    """Stands in for a PyNvVideoCodec stream: OpenCV's frames, then a decoder error after `fail_after`."""

    def __init__(self, video: str, fail_after: int) -> None:
        self.cap = cv2.VideoCapture(video)
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS))
        self.frame_count = 0
        self.left = fail_after

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.left == 0:
            raise RuntimeError("CUDA_ERROR_LAUNCH_FAILED (fake)")
        self.left -= 1
        return self.cap.read()

    def release(self) -> None:
        self.cap.release()


def test_a_stream_nvdec_breaks_on_goes_on_on_the_cpu_without_losing_a_frame(
        caplog: pytest.LogCaptureFixture) -> None:
    video = VIDEOS / "stage_360p.mp4"
    opener = NvdecVideo(lambda target: FakeNvdecReader(target, fail_after=7))
    with caplog.at_level(logging.WARNING, logger="engine.video.decode"):
        frames = _read_all(opener, video, 20)
    reference = first_frames(video, 20)
    assert len(frames) == 20 and all(np.array_equal(a, b) for a, b in zip(frames, reference, strict=True))
    assert opener.fallbacks == 1
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "after 7 frames" in warnings[0] and "CUDA_ERROR_LAUNCH_FAILED" in warnings[0]


def test_a_stream_nvdec_cannot_open_is_read_on_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    def refuse(target: str) -> FakeNvdecReader:
        raise RuntimeError(f"{target}: codec MJPEG not supported by NVDEC (fake)")

    video = VIDEOS / "stage_360p.mp4"
    opener = NvdecVideo(refuse)
    with caplog.at_level(logging.WARNING, logger="engine.video.decode"):
        reader = opener.open(str(video), network=True, timeout_s=5.0, shown="rtsp://***@cam/live")
    assert reader is not None and opener.fallbacks == 1
    ok, frame = reader.read()
    reader.release()
    assert ok and np.array_equal(frame, first_frames(video, 1)[0])
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "rtsp://***@cam/live" in warnings[0] and str(video) not in warnings[0]


# ---- wiring into the server -------------------------------------------------------------------------
def test_server_decodes_gateway_frames_and_pull_cameras_through_the_injected_decoders(
        cfg: Config, analyzer, tmp_path: Path) -> None:  # noqa: ANN001
    """Gateway JPEG frames go through the injected JPEG decoder (a GPU stand-in refusing every frame: the CPU
    decodes them, detections as the CPU path gives) and a pull camera through the injected video opener."""
    frame = first_frames(VIDEOS / "multiface_1080p.mp4", 1)[0]
    jpg = encode_jpeg(frame)
    reference = analyzer.detector.detect(decode_image(jpg))
    gpu = FakeGpu(fail=lambda i: True)
    opened: list[str] = []

    def open_gpu(target: str) -> FakeNvdecReader:
        opened.append(target)
        return FakeNvdecReader(target, fail_after=3)

    decoders = Decoders(NvJpegDecoder(gpu), NvdecVideo(open_gpu))
    srv = FaceEngineServer(make_cfg(cfg), analyzer=analyzer, decoders=decoders).start()
    try:
        assert srv.engine.decoders is decoders
        c = Client(srv.address)
        c.ensure_push_camera("gw")
        res = list(c.stream(pb.Frame(camera_id="gw", sequence=i, capture_time=time.time(), encoded=jpg)
                            for i in range(1, 3)))
        assert all(not r.HasField("error") for r in res) and gpu.calls == 2 and decoders.jpeg.fallbacks == 2
        assert len(res[-1].faces) == len(reference) > 0
        srv.cfg.cameras.file_roots = [str(tmp_path)]
        video = tmp_path / "cam.mp4"
        shutil.copy(VIDEOS / "stage_360p.mp4", video)
        c.cameras.AddCamera(pb.AddCameraRequest(camera_id="pull", uri=str(video), options={"loop": "false"}))

        def cam() -> pb.Camera:
            return next(x for x in c.cameras.ListCameras(pb.ListCamerasRequest()).cameras if x.camera_id == "pull")

        assert wait_for(lambda: cam().frames_processed >= 10, 60), cam()
        assert opened == [str(video.resolve())] and decoders.video.fallbacks == 1
        sample = srv.metrics.registry.get_sample_value
        assert sample("faceengine_decoder", {"input": "jpeg", "decoder": "nvjpeg"}) == 1.0
        assert sample("faceengine_decoder", {"input": "video", "decoder": "nvdec"}) == 1.0
        assert sample("faceengine_decode_fallbacks", {"input": "jpeg"}) == 2.0
        assert sample("faceengine_decode_fallbacks", {"input": "video"}) == 1.0
    finally:
        srv.stop(grace=1)


# ---- the real NVIDIA decoders (GPU machines with the gpu-decode extra) --------------------------------
@pytest.mark.skipif(NVJPEG_MISSING is not None, reason=f"nvJPEG not usable here: {NVJPEG_MISSING}")
def test_nvjpeg_decodes_like_the_cpu() -> None:
    gpu = decode.nvimgcodec_decode(0)
    for path in (BIG, SMALL):
        data = path.read_bytes()
        img, ref = gpu(data), decode_image(data)
        assert img.shape == ref.shape and img.dtype == np.uint8
        diff = float(np.abs(img.astype(np.int16) - ref.astype(np.int16)).mean())
        assert diff < 2.0, f"{path.name}: mean abs diff {diff:.3f} to OpenCV (IDCTs differ slightly, not this much)"
    assert build_decoders(DecodeConfig(jpeg="nvjpeg", video="cpu")).jpeg.name == "nvjpeg"


@pytest.mark.skipif(NVDEC_MISSING is not None, reason=f"NVDEC not usable here: {NVDEC_MISSING}")
def test_nvdec_reads_a_file_like_the_cpu() -> None:
    video = VIDEOS / "stage_360p.mp4"
    frames = read_frames(decode.PyNvReader(str(video), 0), 10)
    assert len(frames) == 10
    for a, b in zip(frames, first_frames(video, 10), strict=True):
        assert a.shape == b.shape and a.dtype == np.uint8
        assert float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) < 3.0  # colour conversion differs


def test_nvdec_for_files_only_keeps_network_streams_on_the_cpu_reader(caplog: pytest.LogCaptureFixture) -> None:
    """decode.video = auto: files on NVDEC, network streams on the CPU reader (it has read timeouts)."""
    opened: list[str] = []

    def open_gpu(target: str) -> FakeNvdecReader:
        opened.append(target)
        return FakeNvdecReader(target, fail_after=100)

    video = str(VIDEOS / "stage_360p.mp4")
    files_only = NvdecVideo(open_gpu, network=False)
    with caplog.at_level(logging.WARNING, logger="engine.video.decode"):
        reader = files_only.open(video, network=True, timeout_s=5.0, shown="rtsp://cam/live")
    assert reader is not None and opened == [] and _warnings(caplog) == []
    reader.release()
    reader = files_only.open(video, network=False, timeout_s=5.0, shown=video)
    assert reader is not None and opened == [video]
    reader.release()
    assert NvdecVideo(open_gpu).name == "nvdec" and files_only.name.startswith("nvdec (files")


def test_nvdec_file_streams_carry_the_containers_frame_count() -> None:
    """PyNvVideoCodec's demuxer gives no frame count; the pull source compares frames read with it to tell a
    truncated file from its end, so NVDEC file streams take it from the container like the CPU reader."""
    video = VIDEOS / "stage_360p.mp4"
    cpu = CpuVideo().open(str(video), network=False, timeout_s=5, shown="cam")
    assert cpu is not None and cpu.frame_count > 0
    reader = NvdecVideo(lambda target: FakeNvdecReader(target, fail_after=-1)).open(
        str(video), network=False, timeout_s=5, shown="cam")
    assert reader is not None and reader.frame_count == cpu.frame_count
    reader.release()
    cpu.release()
    assert container_frame_count(str(VIDEOS / "no-such-clip.mp4")) == 0
