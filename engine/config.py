"""One nested, typed, validated configuration. Every field has a default, a range or set of
choices and a one-line description, so `faceengine config show` documents itself, the server runs
with no config file, and a bad value is refused at load time naming the field, the value and where
it came from (pydantic v2 models; `extra="forbid"` catches misspelt names).

Values come from (lowest to highest): defaults, a TOML file, `FACEENGINE_<SECTION>_<FIELD>`
environment variables, then explicit command-line flags. Assignments (`cfg.server.port = 0`)
are validated too.

Overlapping-looking settings are different things:
- `detector.min_face_size` drops detections (every call: stills, enrolment, video);
  `pipeline.min_face_size` keeps small video faces tracked but never matched.
- `detector.max_faces` caps one detector call's output (highest scores kept);
  `limits.max_faces_per_frame` is the hostile-input cap on the faces of one video frame that are
  tracked and embedded.
- `embedder.batch_size` is faces per embedder call; `pipeline.batch_size` is frames per detector
  call across cameras.
"""

from __future__ import annotations

import os
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.errors import ConfigError


def _f(default: Any, doc: str, **constraints: Any) -> Any:
    """A validated field: default, one-line description, and pydantic constraints (ge=, le=, ...)."""
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda: type(default)(default), description=doc, **constraints)
    return Field(default, description=doc, **constraints)


def default_data_dir() -> str:
    return os.environ.get("FACEENGINE_HOME", str(Path.home() / ".local" / "share" / "faceengine"))


def default_model_dir() -> str:
    return os.environ.get("FACEENGINE_MODEL_DIR", str(Path(default_data_dir()) / "models"))


AUTO = "auto"
Auto = Literal["auto"]
"""A setting left to the engine: resolved once at start-up into `engine.settings.Settings` (the
config itself keeps "auto"), e.g. from the provider or the loaded model's calibration."""


def _old_auto(value: Any, is_sentinel: typing.Callable[[float], bool]) -> Any:
    """Config files from before "auto" spelled it 0 or -1: read those as "auto"."""
    if isinstance(value, bool):
        return value
    try:
        number = float(value) if isinstance(value, (int, float, str)) else None
    except ValueError:
        return value
    return AUTO if number is not None and is_sentinel(number) else value


class Section(BaseModel):
    """A config section: unknown names refused, every assignment validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)



class ModelsConfig(Section):
    dir: str = Field(default_factory=default_model_dir, min_length=1,
                     description="Folder holding verified ONNX weights (env FACEENGINE_MODEL_DIR).")
    mirror: str = _f("", "Local mirror folder to copy missing models from (air-gapped sites); empty = none.")
    detector: str = _f("yunet", "Detector manifest name: yunet, scrfd_500m, scrfd_2.5g, det_10g.", min_length=1)
    embedder: str = _f("sface", "Embedder manifest name: sface (default, accurate: Apache-2.0), mobilefacenet "
                       "(the fast profile: ~8x cheaper a face, misses blurred and small faces), w600k_mbf, w600k_r50.",
                       min_length=1)
    verify_hash: bool = _f(True, "Check each model's SHA-256 against the manifest before loading.")
    allow_unverified_local: bool = _f(
        False, "Accept manifest.local.json entries without a sha256 or that redefine a shipped model (unsafe).")


class RuntimeConfig(Section):
    provider: Literal["cpu", "cuda", "tensorrt", "auto"] = _f(
        "cpu", "Execution provider: cpu, cuda, tensorrt, or auto (CUDA when this onnxruntime has it, else cpu).")
    device_id: int = _f(0, "GPU index for cuda/tensorrt on multi-GPU machines.", ge=0, le=63)
    intra_op_threads: int = _f(0, "onnxruntime intra-op threads per session (0 = half the cores, at least 1).",
                               ge=0, le=256)
    inter_op_threads: int = _f(1, "onnxruntime inter-op threads per session.", ge=1, le=256)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = _f(
        "all", "onnxruntime graph optimisation level: disable, basic, extended, all.")
    graph_preprocess: Literal["auto", "on", "off"] = _f(
        "auto", "Detector letterbox/colour/normalisation as ONNX nodes run by the provider (uint8 frames in): "
        "auto = on for GPU providers, off on the CPU (where OpenCV is faster).")
    io_binding: Literal["auto", "on", "off"] = _f(
        "auto", "onnxruntime IO binding: a batch is uploaded to the device once and outputs are copied straight "
        "into CPU buffers, without onnxruntime's per-call staging; auto = on for CUDA/TensorRT sessions, off on "
        "the CPU (where it saves nothing).")
    runner: Literal["onnx", "fake"] = _f(
        "onnx", "Inference backend: onnx (onnxruntime on the provider above) or fake (canned detections and "
        "embeddings after fake_cost_ms an image, no model files read: orchestration tests and benchmarks only; "
        "it recognises nobody).")
    fake_cost_ms: float = _f(0.0, "runner = fake: milliseconds slept per image of a model call (GIL released, no "
                                  "CPU used), standing in for a model's cost.", ge=0.0, le=10_000.0)
    fake_faces: int = _f(1, "runner = fake: faces the fake detector reports in every frame (0 = none).",
                         ge=0, le=16)
    shape_buckets: Literal["auto", "on", "off"] = _f(
        "auto", "Pad every detector and embedder batch up to the next of bucket_sizes, so each session runs a "
        "few fixed shapes: auto = on for GPU providers (a new input shape costs the CUDA provider tens to "
        "hundreds of ms of algorithm search and allocation), off on the CPU (measured: padding costs more there "
        "than new shapes do; benchmarks/results/buckets-cpu.json).")
    bucket_sizes: list[int] = _f(
        [1, 2, 4, 8, 16, 32], "Batch buckets (frames for the detector, faces for the embedder), ascending; larger "
        "batches run in chunks of the largest.", min_length=1, max_length=16)
    warmup: Literal["auto", "on", "off"] = _f(
        "auto", "Run every bucket once at load (each logged with its time), so steady state never meets a new "
        "shape: auto = on for GPU providers when shape_buckets is on.")
    warmup_frame_sizes: list[str] = _f(
        ["1920x1080"], "Frame sizes (WIDTHxHEIGHT, one per stream class) the detector's buckets are warmed at.",
        max_length=8)
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = _f(
        "HEURISTIC", "CUDA provider convolution algorithm search: HEURISTIC (cuDNN's pick, no timing runs: "
        "inference default), EXHAUSTIVE (times every algorithm per new shape: fastest kernels, slow first "
        "calls), DEFAULT.")
    cuda_graphs: bool = _f(
        False, "CUDA provider: capture one CUDA graph per batch bucket with preallocated device buffers and "
        "replay it (needs shape_buckets; a model that cannot be captured runs without, with a warning).")
    fp16: Literal["auto", "on", "off"] = _f(
        "auto", "Convert models to float16 at load, kept only when the embeddings match fp32 (cosine >= 0.999) "
        "and the detections pass the batch check (verdict logged): auto = on for GPU providers.")
    profile_dir: str = _f(
        "", "Write onnxruntime's per-node profile of each session here (after profile_runs calls) with a "
        "top-operators summary; empty = off.")
    profile_runs: int = _f(200, "Session calls profiled before the profile is written.", ge=1, le=100_000)
    tensorrt_fp16: bool = _f(False, "TensorRT: build fp16 engines (faster; embeddings move slightly vs fp32).")
    tensorrt_cache_dir: str = Field(
        default_factory=lambda: str(Path(default_data_dir()) / "tensorrt"),
        description="TensorRT: folder caching built engines (a first build takes minutes); empty = no cache.")


    @field_validator("bucket_sizes")
    @classmethod
    def _ascending_buckets(cls, v: list[int]) -> list[int]:
        if any(b < 1 or b > 4096 for b in v) or any(a >= b for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("bucket sizes must be strictly ascending whole numbers from 1 to 4096, e.g. 1,2,4,8")
        return v

    @field_validator("warmup_frame_sizes")
    @classmethod
    def _frame_sizes(cls, v: list[str]) -> list[str]:
        for s in v:
            w, _, h = s.lower().partition("x")
            if not (w.isdigit() and h.isdigit() and 16 <= int(w) <= 8192 and 16 <= int(h) <= 8192):
                raise ValueError(f"frame size {s!r} is not WIDTHxHEIGHT (16..8192 each), e.g. 1920x1080")
        return [s.lower() for s in v]

class DecodeConfig(Section):
    jpeg: Literal["auto", "cpu", "nvjpeg"] = _f(
        "auto", "Decoder of gateway JPEG frames: cpu (OpenCV, half-size DCT decode of large frames), nvjpeg "
        "(nvImageCodec on runtime.device_id; extra gpu-decode), or auto (nvjpeg when nvImageCodec imports and a "
        "CUDA device is present, else cpu). A frame nvJPEG refuses is decoded on the CPU.")
    video: Literal["auto", "cpu", "nvdec"] = _f(
        "auto", "Decoder of pull cameras: cpu (OpenCV/FFmpeg), nvdec (PyNvVideoCodec on runtime.device_id for "
        "files and network streams; extra gpu-decode; its demuxer has no read timeout), or auto (nvdec for video "
        "files when PyNvVideoCodec imports and a CUDA device is present; network streams and everything else on "
        "cpu). A stream NVDEC cannot open or breaks on is read on the CPU.")


class DetectorConfig(Section):
    input_size: int = _f(640, "Network input side in pixels; frames are letterboxed to it (aspect kept).",
                         ge=64, le=4096)
    score_threshold: Auto | typing.Annotated[float, Field(gt=0.0, le=1.0)] = _f(
        "auto", "Minimum detector confidence for a face; auto = the model's own (manifest score_threshold: YuNet "
        "0.6, SCRFD 0.5, as their authors ship them).")
    nms_threshold: float = _f(0.4, "IoU above which overlapping boxes are suppressed.", gt=0.0, le=1.0)
    min_face_size: int = _f(20, "Every detector call drops faces whose shorter box side is below this many pixels "
                            "(stills, enrolment and video; see pipeline.min_face_size for matching).", ge=0, le=10000)
    max_faces: int = _f(200, "One detector call keeps at most this many faces (highest scores first).",
                        ge=1, le=10000)
    auto_scale: bool = _f(
        True, "Frames larger than input_size get the network side at which faces of min_face_size are found "
        "(up to full resolution, at most max_input_side); false = always input_size (faster, misses small faces). "
        "CPU letterbox only: with runtime.graph_preprocess the graph letterboxes to input_size.")
    max_input_side: int = _f(
        1280, "Largest network side auto_scale may choose: 1280 detects 720p at full resolution and 1080p at 2/3 "
        "(faces from ~30 px); 1920 finds 20 px faces in 1080p at ~2x the detector cost.", ge=64, le=8192)

    @field_validator("score_threshold", mode="before")
    @classmethod
    def _score_auto(cls, v: Any) -> Any:
        return _old_auto(v, lambda x: x == 0)


class EmbedderConfig(Section):
    flip_augment: bool = _f(False, "Add the embedding of the mirrored crop (more accurate, twice the cost).")
    batch_size: int = _f(32, "Most faces embedded in one embedder call (not pipeline.batch_size, which is frames).",
                         ge=1, le=4096)


class GalleryConfig(Section):
    index: str = _f("Flat", "FAISS index: Flat (exact), IVF or IVF<nlist> for large galleries.", min_length=1)
    match_threshold: Auto | typing.Annotated[float, Field(ge=-1.0, le=1.0)] = _f(
        "auto", "Cosine similarity at or above which a face matches; auto = derived from match_fpir and "
        "watchlist_size for the embedder (the effective value is shown below and in the start-up log).")
    match_fpir: float = _f(
        1e-3, "Share of strangers (people not enrolled) an operator accepts to raise a false alert (FPIR).",
        gt=0.0, lt=1.0)
    watchlist_size: int = _f(
        1000, "Enrolled people the derived threshold is sized for (more people = more chances of a false alert).",
        ge=1, le=100_000_000)
    top_k: int = _f(5, "Candidates returned by a gallery search.", ge=1, le=1000)

    @field_validator("match_threshold", mode="before")
    @classmethod
    def _threshold_auto(cls, v: Any) -> Any:
        return _old_auto(v, lambda x: x == 0)


class StoreConfig(Section):
    path: str = Field(default_factory=lambda: str(Path(default_data_dir()) / "faceengine.db"), min_length=1,
                      description="SQLite database file for watchlists, events and audit (used when url is empty).")
    url: str = Field(default="", description="Store URL: postgresql://USER:PASS@HOST:PORT/DB (shared by several "
                     "engines) or sqlite:///FILE; empty = the SQLite file at path.")
    pg_wait_s: float = _f(
        3.0, "PostgreSQL: how long a call waits for a database connection before it fails UNAVAILABLE (an "
        "outage is reported at once instead of blocking every call).", gt=0.0, le=600.0)
    pg_reconnect_s: float = _f(
        5.0, "PostgreSQL: a failing reconnection is retried with backoff for at most this long, then started "
        "afresh by the next call or health probe, so the engine is back within seconds of the database.",
        gt=0.0, le=3600.0)

    def target(self) -> str:
        """What `engine.store.open_store` opens: the URL if set, else the SQLite file."""
        return self.url or self.path


class LimitsConfig(Section):
    max_message_bytes: int = _f(16 * 1024 * 1024, "Largest gRPC message accepted, in bytes.", ge=1024, le=2**31 - 1)
    max_metadata_bytes: int = _f(
        8192, "Largest call metadata (headers) accepted, in bytes; a larger call is refused RESOURCE_EXHAUSTED, "
        "audited and counted as a failed authentication. gRPC itself drops calls over 4x this before they "
        "reach the engine.", ge=1024, le=1_048_576)
    max_image_side: int = _f(8192, "Largest accepted image width or height in pixels.", ge=16, le=65535)
    max_image_pixels: int = _f(
        16_777_216, "Largest accepted pixel count (width x height), read from the header before decoding; "
        "decoding peaks at 6-8 bytes a pixel (16.8 Mpx: about 135 MB per image).", ge=256, le=2**31 - 1)
    max_faces_per_frame: int = _f(200, "Hostile-input cap: faces of one video frame beyond this count are not "
                                  "tracked or embedded (detector.max_faces caps every detector call).", ge=1, le=10000)
    max_images_per_enrollment: int = _f(20, "Most images one EnrollPerson call may carry.", ge=1, le=1000)
    capture_time_past_s: float = _f(
        86400.0, "Gateway capture_time older than this many seconds (server clock) is out of window.",
        gt=0.0, le=10 * 365 * 86400.0)
    capture_time_future_s: float = _f(
        300.0, "Gateway capture_time more than this many seconds ahead of the server is out of window.",
        ge=0.0, le=365 * 86400.0)
    capture_time_policy: Literal["refuse", "clamp"] = _f(
        "refuse", "Out-of-window capture_time: refuse (frame answered INVALID_ARGUMENT) or clamp (server time used).")
    max_id_chars: int = _f(128, "Longest person id, watchlist name or camera id, in characters.", ge=1, le=65536)
    max_name_chars: int = _f(256, "Longest person display name, in characters.", ge=1, le=65536)
    max_text_chars: int = _f(1024, "Longest free text (watchlist description), in characters.", ge=1, le=1_048_576)
    max_metadata_keys: int = _f(32, "Most metadata entries on one person.", ge=0, le=65536)
    max_metadata_key_chars: int = _f(64, "Longest metadata key, in characters.", ge=1, le=65536)
    max_metadata_value_chars: int = _f(1024, "Longest metadata value, in characters.", ge=1, le=1_048_576)
    max_uri_chars: int = _f(2048, "Longest camera URI, in characters.", ge=8, le=65536)


class CamerasConfig(Section):
    allowed_schemes: list[str] = _f(
        ["rtsp", "rtsps", "http", "https"],
        "URI schemes a pull camera may use (the server connects to any host they name); others are refused.")
    file_roots: list[str] = _f(
        [], "Folders whose video files may be pull cameras (absolute paths; symlinks resolved); empty = no files.")
    offline_after_s: float = _f(
        5.0, "Seconds without a frame after which a running push camera is reported 'offline' (its gateway went "
        "away; faceengine_camera_up = 0); its next frame makes it 'running' again.", gt=0, le=86400)


class PipelineConfig(Section):
    queue_size: int = _f(8, "Frames buffered per camera; when full the oldest is dropped (newest wins).",
                         ge=1, le=10000)
    batch_size: Auto | typing.Annotated[int, Field(ge=1, le=1024)] = _f(
        "auto", "Most frames detected in one batched call across cameras; auto = from the provider "
        "(CPU 1, GPU 16). Not embedder.batch_size, which is faces.")
    batch_wait_ms: Auto | typing.Annotated[float, Field(ge=0.0, le=1000.0)] = _f(
        "auto", "Longest wait to fill a detection batch, in milliseconds; auto = from the provider (CPU 0, GPU 5).")
    workers: int = _f(2, "Inference worker threads sharing the model sessions (two keep two cores busy).",
                      ge=1, le=256)
    tracking: bool = _f(True, "Track faces across frames and recognise each track from its best shots. Off: every "
                        "frame is detected whole and matched on its own (motion_gating and detect_interval need tracks "
                        "to carry faces between detections, so they do not apply).")
    track_max_age_s: float = _f(1.0, "A track ends when its face is unseen for this many seconds.", gt=0.0, le=3600.0)
    min_face_size: int = _f(
        28, "Video faces whose shorter box side is below this (pixels) are tracked but never matched (faces of "
        "~32 px are boxed at 29-38 px; boxed at 28-32 px they were still recognised 88 % of the time on eval "
        "watchlist; detector.min_face_size drops them from detection altogether).", ge=0, le=10000)
    min_quality: Auto | typing.Annotated[float, Field(ge=0.0, le=1.0)] = _f(
        "auto", "Faces below this quality score (0..1) are never matched; 0 = no quality gate; auto = the "
        "embedder's calibrated gate from the model manifest (SFace 0.25, MobileFaceNet 0.30: each keeps ~90 % "
        "of correctly recognised faces, see engine/video/quality.py).")
    reembed_margin: float = _f(0.1, "Re-embed a track only when quality improves by this much...", ge=0.0, le=1.0)
    reembed_interval_s: float = _f(2.0, "...or when this many seconds passed since its last embedding.",
                                   ge=0.0, le=3600.0)
    fast_decode: bool = _f(True, "Decode large JPEG frames at half size for detection, full size for best shots.")
    thumbnail_size: int = _f(112, "Side of the JPEG face thumbnail stored with match events.", ge=16, le=1024)
    thumbnail_margin: float = _f(0.2, "Context kept around the face box in thumbnails, as a fraction of its size.",
                                 ge=0.0, le=2.0)
    thumbnail_jpeg_quality: int = _f(85, "JPEG quality (1-100) of event thumbnails.", ge=1, le=100)
    track_start_score: float = _f(
        0.6, "Detector score a face needs to start or first-stage-continue a track (the detector threshold if higher).",
        ge=0.0, le=1.0)
    identity_switch_similarity: float = _f(
        0.2, "A track's new embedding below this cosine similarity to its pooled one means the tracker swapped "
        "faces: the track's best shots start afresh.", ge=-1.0, le=1.0)
    motion_gating: bool = _f(
        True, "Video frames are detected only in regions where motion was found (plus live tracks' boxes), cut "
        "from the full-resolution frame; an empty scene costs almost nothing. Stills are always detected whole.")
    detect_interval: int = _f(
        3, "Detect every k-th frame of a camera; between detections the tracker carries the boxes (constant "
        "velocity). 1 = every frame; 3 at 25 fps detects 8 times a second (the 1080p bench: 2 saved 1.5x, 3 2x, "
        "the same people found).", ge=1, le=100)
    max_detect_interval: int = _f(
        8, "Under overload (half a camera's queue waiting) the detection interval doubles, up to this, "
        "before frames are dropped, and steps back down once the queue stays empty.", ge=1, le=100)
    full_frame_interval_s: float = _f(
        2.0, "With motion_gating, a full-frame detection pass this often per camera (seconds of frame time) finds "
        "people standing still; 0 = only a camera's first frame.", ge=0.0, le=3600.0)
    motion_width: int = _f(320, "Width in pixels of the grey copy the motion mask is computed on.", ge=32, le=4096)
    motion_threshold: float = _f(
        20.0, "Grey levels (0-255) a pixel must differ from the running background to count as motion.",
        gt=0.0, le=255.0)
    max_region_share: float = _f(
        0.5, "When the motion regions cover more than this share of the frame, the whole frame is detected.",
        gt=0.0, le=1.0)
    region_scale: float = _f(
        0.0, "Network pixels per frame pixel for motion regions; 0 = per camera: the scale the whole frame is "
        "detected at (detector.max_input_side: 2/3 for 1080p), lowered down to 0.25 where every face the camera "
        "sees is large; 1 = native resolution (faces from ~20 px, more detector work).", ge=0.0, le=2.0)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_auto(cls, v: Any) -> Any:
        return _old_auto(v, lambda x: x == 0)

    @field_validator("batch_wait_ms", "min_quality", mode="before")
    @classmethod
    def _negative_auto(cls, v: Any) -> Any:
        return _old_auto(v, lambda x: -1 <= x < 0)  # the old range started at -1


class ServerConfig(Section):
    host: str = _f("0.0.0.0", "Address the gRPC server binds to.", min_length=1)
    port: int = _f(50051, "gRPC port (0 = any free port).", ge=0, le=65535)
    metrics_port: int = _f(9108, "Prometheus metrics HTTP port (0 = off).", ge=0, le=65535)
    max_workers: int = _f(64, "gRPC server thread pool size (each open stream holds one thread).", ge=2, le=4096)
    max_streams: int = _f(
        48, "Most concurrent ingest streams (all streams stay reserved_workers below max_workers); beyond: "
        "RESOURCE_EXHAUSTED.", ge=1, le=4096)
    shutdown_grace_s: float = _f(5.0, "Seconds given to in-flight calls on shutdown.", ge=0.0, le=3600.0)
    event_relay_s: float = _f(1.0, "Poll the store this often for events other processes wrote (0 = off; "
                              "PostgreSQL also pushes them at once with LISTEN/NOTIFY).",
                              ge=0.0, le=3600.0)
    reserved_workers: int = _f(
        8, "Threads never given to long-lived streams (ingest + subscriptions): kept for health and unary calls.",
        ge=1, le=4096)
    max_subscriptions: int = _f(32, "Most concurrent SubscribeMatches streams in all; beyond: RESOURCE_EXHAUSTED.",
                                ge=1, le=4096)
    max_subscriptions_per_token: int = _f(
        8, "Most concurrent SubscribeMatches streams per API token; beyond: RESOURCE_EXHAUSTED.", ge=1, le=4096)
    health_probe_s: float = _f(1.0, "While store writes fail (disk full), probe the store this often; health follows.",
                               gt=0.0, le=3600.0)


class AuthConfig(Section):
    enabled: bool = _f(True, "Require an API token (authorization: Bearer ...); off only on a loopback host.")
    max_failures: int = _f(
        100, "Failed authentications from one peer address within failure_window_s before it is throttled.",
        ge=1, le=1_000_000)
    failure_window_s: float = _f(
        60.0, "Window for max_failures; a throttled peer gets RESOURCE_EXHAUSTED until it ends.", gt=0.0, le=86400.0)
    recheck_s: float = _f(
        2.0, "Open streams re-check their token this often; a revoked token ends them (UNAUTHENTICATED).",
        gt=0.0, le=3600.0)
    trusted_proxies: list[str] = _f(
        ["127.0.0.1", "::1"], "Peers (the console, a gRPC proxy) whose x-forwarded-for metadata names the real "
        "client: their callers' failed authentications are throttled per client, not against the proxy's address.")


class TLSConfig(Section):
    cert_file: str = _f("", "Server certificate chain (PEM); with key_file turns TLS on. Empty = plaintext.")
    key_file: str = _f("", "Server private key (PEM).")
    client_ca_file: str = _f("", "CA bundle (PEM) for client certificates; set = mutual TLS (certs required).")


class RetentionConfig(Section):
    events_days: float = _f(30.0, "Match events (and thumbnails) older than this many days are purged; 0 = keep.",
                            ge=0.0, le=36500.0)
    interval_s: float = _f(3600.0, "Seconds between background purges in the server (0 = no background purge).",
                           ge=0.0, le=31_536_000.0)
    erase_person_events: bool = _f(True, "RemovePerson also erases that person's past match events and thumbnails.")
    sightings_days: float = _f(7.0, "Sightings (every track's best shot, when sightings.enabled) older than this many "
                               "days are erased from the store and the sightings index; 0 = keep.", ge=0.0, le=36500.0)


class SightingsConfig(Section):
    enabled: bool = _f(False, "Keep every track's best shot (embedding, thumbnail, camera, times), matched or not, for "
                              "search by photo and recurring unknowns. Off by default: storing every face seen is a "
                              "policy decision (see docs/sightings.md).")
    partition_hours: float = _f(1.0, "Hours of sightings per search-index partition (retention drops whole "
                                     "partitions; a search reads only the partitions of its time range).",
                                gt=0.0, le=24.0 * 31)
    ivfpq_min: int = _f(20_000, "A partition with at least this many sightings is rebuilt as IVF-PQ (compressed, "
                                 "approximate; results re-scored exactly from the store); below it, exact search.",
                        ge=1000, le=1_000_000_000)
    pq_m: int = _f(16, "IVF-PQ sub-quantizers (bytes per vector); must divide the embedding size.", ge=1, le=256)
    nprobe: int = _f(64, "IVF lists searched per query in IVF-PQ partitions (recall against speed).", ge=1, le=65536)
    search_fpir: float = _f(1e-3, "Share of searches for a person never seen that may still return a sighting (the "
                                  "watchlists' FPIR calibration, applied to search_size sightings).", gt=0.0, lt=1.0)
    search_size: int = _f(1000, "Sightings the derived search threshold is sized for (more = a higher threshold).",
                          ge=1, le=1_000_000_000)
    match_threshold: float = _f(0.0, "Cosine score at or above which a sighting is returned; 0 = derived from "
                                     "search_fpir and search_size for the embedder.", ge=0.0, le=1.0)
    queue_size: int = _f(10_000, "Finished tracks waiting to be written; beyond it the oldest is dropped (counted).",
                         ge=1, le=10_000_000)
    max_track_s: float = _f(600.0, "A track seen longer than this is written as a sighting and starts a new one.",
                            gt=0.0, le=86400.0)


class ClusterConfig(Section):
    address: str = _f("", "Ray cluster to run camera workers on: '' = off (one process), 'local' = start a private "
                          "single-node Ray, 'auto' = join the Ray cluster on this machine, 'HOST:PORT' or "
                          "'ray://HOST:PORT' = a remote cluster.")
    workers: int = _f(2, "Camera worker actors (each a process with its own models and its cameras' tracking state).",
                      ge=1, le=1024)
    cpus_per_worker: float = _f(1.0, "Ray num_cpus reserved per worker actor (its onnxruntime threads follow it).",
                                ge=0.0, le=1024.0)
    gpus_per_worker: float = _f(0.0, "Ray num_gpus reserved per worker actor (e.g. 0.25 = four workers share a GPU).",
                                ge=0.0, le=64.0)
    frames_per_call: int = _f(8, "Most frames of one camera sent to a worker in one call (compressed as received).",
                              ge=1, le=1024)
    calls_per_worker: int = _f(2, "Calls in flight per worker, each for a different camera (keeps workers busy).",
                               ge=1, le=1024)
    worker_threads: int = _f(
        1, "Frame calls a worker processes at once; the other calls in flight (calls_per_worker) wait in Ray with "
        "their frames already sent, so a worker never idles between calls and its model threads stay within its "
        "CPUs. Raise it for GPU workers, whose calls wait on the device.", ge=1, le=64)
    call_timeout_s: float = _f(30.0, "A worker call that takes longer fails its frames with UNAVAILABLE.",
                               gt=0.0, le=3600.0)
    connect_timeout_s: float = _f(5.0, "Seconds to reach a remote Ray address before failing with a clear error.",
                                  gt=0.0, le=3600.0)


class ConsoleConfig(Section):
    host: str = _f("127.0.0.1", "Interface the operator console (`faceengine console`) listens on.")
    port: int = _f(8080, "HTTP(S) port of the console; HTTPS when tls.cert_file and tls.key_file are set.",
                   ge=1, le=65535)
    server: str = _f("127.0.0.1:50051", "gRPC address of the engine (or a cluster's front end) the console calls.")
    ca_cert: str = _f("", "CA certificate (PEM) to verify a TLS gRPC server; empty = plaintext gRPC.")
    client_cert: str = _f("", "Client certificate (PEM) for a mutual-TLS gRPC server.")
    client_key: str = _f("", "Client private key (PEM) for a mutual-TLS gRPC server.")
    secret_file: str = _f("", "File holding the session encryption key (Fernet); empty = a new key per start "
                              "(everyone signs in again). Share it between console replicas.")
    session_hours: float = _f(12.0, "A console sign-in expires after this many hours.", gt=0.0, le=24.0 * 365)
    max_cards: int = _f(50, "Live alert cards kept on the page; older cards drop off.", ge=1, le=10_000)
    trusted_proxies: list[str] = _f(
        [], "Reverse proxies (addresses) whose X-Forwarded-For names the browser; empty = none: sign-ins are paced "
        "by the TCP peer and the header is ignored (a forged one cannot dodge the pacing).")
    allow_open_engine: bool = _f(
        False, "Allow sign-ins when the engine runs without auth (--dev) although the console listens beyond "
        "loopback over plain HTTP (anyone reaching it would be admin).")


class Config(BaseModel):
    """The whole configuration; `Config.load` reads file and environment, `update` applies overrides."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    models: ModelsConfig = Field(default_factory=ModelsConfig, description="Model files.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="onnxruntime.")
    decode: DecodeConfig = Field(default_factory=DecodeConfig, description="Frame decoding (CPU or NVIDIA).")
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="Face detection.")
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig, description="Face embedding.")
    gallery: GalleryConfig = Field(default_factory=GalleryConfig, description="Watchlist search.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Persistence.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Hostile-input limits.")
    cameras: CamerasConfig = Field(default_factory=CamerasConfig, description="What pull cameras may reach.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Video pipeline.")
    server: ServerConfig = Field(default_factory=ServerConfig, description="gRPC server.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API tokens and roles.")
    tls: TLSConfig = Field(default_factory=TLSConfig, description="TLS and mutual TLS.")
    retention: RetentionConfig = Field(default_factory=RetentionConfig, description="Data retention, erasure.")
    sightings: SightingsConfig = Field(default_factory=SightingsConfig,
                                       description="Every face seen, searchable by photo (off by default).")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Cluster mode (Ray workers).")
    console: ConsoleConfig = Field(default_factory=ConsoleConfig, description="Operator web console.")

    @model_validator(mode="after")
    def _cross_field(self) -> Config:
        """Rules between fields (checked on load and on every `update`, with all values in place)."""
        t = self.tls
        if bool(t.cert_file) != bool(t.key_file):
            raise ValueError("TLS needs both tls.cert_file and tls.key_file (or neither, for plaintext)")
        if t.client_ca_file and not t.cert_file:
            raise ValueError("tls.client_ca_file needs tls.cert_file and tls.key_file (mutual TLS is over TLS)")
        if self.server.reserved_workers >= self.server.max_workers:
            raise ValueError(f"server.reserved_workers ({self.server.reserved_workers}) must be below "
                             f"server.max_workers ({self.server.max_workers}): streams need threads too")
        return self

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: typing.Mapping[str, str] | None = None) -> Config:
        """Defaults, then the TOML file (if given), then FACEENGINE_<SECTION>_<FIELD> variables."""
        cfg = cls()
        if path:
            try:
                with open(path, "rb") as fh:
                    data = tomllib.load(fh)
            except FileNotFoundError as exc:
                raise ConfigError(f"config file {path} not found") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
            cfg.update(data, source=f"config file {path}")
        env = os.environ if env is None else env
        for sec_name, section in cfg._sections():
            for name in type(section).model_fields:
                key = f"FACEENGINE_{sec_name}_{name}".upper()
                if key in env:
                    cfg.update({sec_name: {name: env[key]}}, source=f"environment variable {key}")
        return cfg

    def _sections(self) -> list[tuple[str, Section]]:
        return [(name, getattr(self, name)) for name in type(self).model_fields]

    def update(self, data: dict[str, Any], source: str = "override") -> None:
        """Apply a nested dict of overrides, validating each value; a bad one raises ConfigError
        naming the source, the field and the value (and nothing of that call is half-applied)."""
        staged: list[tuple[Section, str, Any]] = []
        for sec_name, values in data.items():
            if sec_name not in type(self).model_fields:
                raise ConfigError(f"{source}: unknown config section [{sec_name}]; known: "
                                  f"{', '.join(type(self).model_fields)}")
            section = getattr(self, sec_name)
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: [{sec_name}] must be a table, got {values!r}")
            fields = type(section).model_fields
            for key, raw in values.items():
                if key not in fields:
                    raise ConfigError(f"{source}: unknown field {sec_name}.{key}; [{sec_name}] has "
                                      f"{', '.join(fields)}")
                value = raw
                if typing.get_origin(fields[key].annotation) is list and isinstance(raw, str):
                    value = [s.strip() for s in raw.split(",") if s.strip()]
                try:
                    checked = type(section).__pydantic_validator__.validate_assignment(
                        section.model_copy(), key, value)
                except ValidationError as exc:
                    raise ConfigError(f"{source}: {sec_name}.{key} = {raw!r} is invalid: "
                                      f"{_reason(exc)}") from exc
                staged.append((section, key, getattr(checked, key)))
        if staged:  # the rules between fields, on the whole configuration as it would become
            merged = self.model_dump()
            for section, key, value in staged:
                name = next(n for n, sec in self._sections() if sec is section)
                merged[name][key] = value
            try:
                type(self).model_validate(merged)
            except ValidationError as exc:
                raise ConfigError(f"{source}: {_reason(exc)}") from exc
        for section, key, value in staged:
            setattr(section, key, value)

    def overrides(self) -> dict[str, dict[str, Any]]:
        """The values set on this config (file, environment, flags, assignments), not the defaults: what a
        cluster worker is started with, so that what is left to auto or to a default is chosen on the
        worker's own machine (a GPU worker behind a CPU front end gets its GPU batching)."""
        out: dict[str, dict[str, Any]] = {}
        for sec_name, section in self._sections():
            values = section.model_dump(include=set(section.model_fields_set))
            if values:
                out[sec_name] = values
        return out

    def with_overrides(self, data: dict[str, Any], source: str = "override") -> Config:
        """A validated copy with `data` applied (this config is left as it is)."""
        copy = self.model_copy(deep=True)
        copy.update(data, source=source)
        return copy

    def describe(self) -> list[tuple[str, Any, str]]:
        """(dotted name, value, description) for every field."""
        rows = []
        for sec_name, section in self._sections():
            for name, info in type(section).model_fields.items():
                doc = info.description or ""
                rows.append((f"{sec_name}.{name}", getattr(section, name), doc))
        return rows

    def to_toml(self, show_secrets: bool = False) -> str:
        """The configuration as a commented TOML document (auto fields written as "auto", so the file
        stays portable between CPU and GPU hosts). The store URL's password is masked unless `show_secrets`."""
        from engine.store import redact

        out: list[str] = []
        for sec_name, section in self._sections():
            out.append(f"[{sec_name}]  # {type(self).model_fields[sec_name].description or ''}")
            for name, info in type(section).model_fields.items():
                value = getattr(section, name)
                out.append(f"# {info.description or ''}")
                dotted = f"{sec_name}.{name}"
                if dotted == "store.url" and not show_secrets and redact(value) != value:
                    out.append(f"{name} = {_toml_value(redact(value))}  # password masked")
                else:
                    out.append(f"{name} = {_toml_value(value)}")
            out.append("")
        return "\n".join(out)


def _reason(exc: ValidationError) -> str:
    """pydantic's messages without the field prefix (the caller names the field)."""
    return "; ".join(str(e["msg"]) for e in exc.errors())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
