"""One nested, typed configuration. Every field has a default and a one-line description,
so `faceengine config show` documents itself and the server runs with no config file.

Values come from (lowest to highest): defaults, a TOML file, `FACEENGINE_<SECTION>_<FIELD>`
environment variables, then explicit command-line flags.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError


def _f(default: Any, doc: str, **kw: Any) -> Any:
    """A dataclass field with a one-line description kept in its metadata."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc}, **kw)
    return field(default=default, metadata={"doc": doc}, **kw)


def default_data_dir() -> str:
    return os.environ.get("FACEENGINE_HOME", str(Path.home() / ".local" / "share" / "faceengine"))


def default_model_dir() -> str:
    return os.environ.get("FACEENGINE_MODEL_DIR", str(Path(default_data_dir()) / "models"))


@dataclass
class ModelsConfig:
    dir: str = field(
        default_factory=default_model_dir,
        metadata={"doc": "Folder holding verified ONNX weights (env FACEENGINE_MODEL_DIR)."},
    )
    mirror: str = _f("", "Local mirror folder to copy missing models from (air-gapped sites); empty = none.")
    detector: str = _f("yunet", "Detector manifest name: yunet, scrfd_500m, scrfd_2.5g, det_10g.")
    embedder: str = _f("mobilefacenet", "Embedder manifest name: mobilefacenet, sface, w600k_mbf, w600k_r50...")
    verify_hash: bool = _f(True, "Check each model's SHA-256 against the manifest before loading.")
    allow_unverified_local: bool = _f(
        False, "Accept manifest.local.json entries without a sha256 or that redefine a shipped model (unsafe).")


@dataclass
class RuntimeConfig:
    provider: str = _f("cpu", "Execution provider: cpu, cuda, tensorrt, or auto (best available).")
    intra_op_threads: int = _f(0, "onnxruntime intra-op threads per session (0 = half the cores, at least 1).")
    inter_op_threads: int = _f(1, "onnxruntime inter-op threads per session.")
    graph_optimization: str = _f("all", "onnxruntime graph optimisation level: disable, basic, extended, all.")


@dataclass
class DetectorConfig:
    input_size: int = _f(640, "Network input side in pixels; frames are letterboxed to it (aspect kept).")
    score_threshold: float = _f(
        0.0, "Minimum detector confidence for a face; 0 = the model's own (manifest score_threshold: YuNet 0.6, "
        "SCRFD 0.5, as their authors ship them)."
    )
    nms_threshold: float = _f(0.4, "IoU above which overlapping boxes are suppressed.")
    min_face_size: int = _f(20, "Faces whose shorter box side is below this many pixels are dropped.")
    max_faces: int = _f(200, "At most this many faces are kept per image (highest scores first).")
    auto_scale: bool = _f(
        True, "Frames larger than input_size get the network side at which faces of min_face_size are found "
        "(up to full resolution, at most max_input_side); false = always input_size (faster, misses small faces)."
    )
    max_input_side: int = _f(
        1280, "Largest network side auto_scale may choose: 1280 detects 720p at full resolution and 1080p at 2/3 "
        "(faces from ~30 px); 1920 finds 20 px faces in 1080p at ~2x the detector cost."
    )


@dataclass
class EmbedderConfig:
    flip_augment: bool = _f(False, "Add the embedding of the mirrored crop (more accurate, twice the cost).")
    batch_size: int = _f(32, "Largest number of faces embedded in one onnxruntime call.")


@dataclass
class GalleryConfig:
    index: str = _f("Flat", "FAISS index: Flat (exact), IVF or IVF<nlist> for large galleries.")
    match_threshold: float = _f(
        0.0, "Cosine similarity at or above which a face matches; 0 = derived from match_fpir and watchlist_size "
        "for the embedder (the effective value is shown below and in the start-up log)."
    )
    match_fpir: float = _f(
        1e-3, "Share of strangers (people not enrolled) an operator accepts to raise a false alert (FPIR)."
    )
    watchlist_size: int = _f(
        1000, "Enrolled people the derived threshold is sized for (more people = more chances of a false alert)."
    )
    top_k: int = _f(5, "Candidates returned by a gallery search.")


@dataclass
class StoreConfig:
    path: str = field(
        default_factory=lambda: str(Path(default_data_dir()) / "faceengine.db"),
        metadata={"doc": "SQLite database file for watchlists, events and audit."},
    )


@dataclass
class LimitsConfig:
    max_message_bytes: int = _f(16 * 1024 * 1024, "Largest gRPC message accepted, in bytes.")
    max_image_side: int = _f(8192, "Largest accepted image width or height in pixels.")
    max_image_pixels: int = _f(
        16_777_216, "Largest accepted pixel count (width x height), read from the header before decoding; "
        "decoding peaks at 6-8 bytes a pixel (16.8 Mpx: about 135 MB per image).")
    max_faces_per_frame: int = _f(200, "Faces beyond this count in one frame are ignored.")
    max_images_per_enrollment: int = _f(20, "Most images one EnrollPerson call may carry.")
    capture_time_past_s: float = _f(
        86400.0, "Gateway capture_time older than this many seconds (server clock) is out of window.")
    capture_time_future_s: float = _f(
        300.0, "Gateway capture_time more than this many seconds ahead of the server is out of window.")
    capture_time_policy: str = _f(
        "refuse", "Out-of-window capture_time: refuse (frame answered INVALID_ARGUMENT) or clamp (server time used).")
    max_id_chars: int = _f(128, "Longest person id, watchlist name or camera id, in characters.")
    max_name_chars: int = _f(256, "Longest person display name, in characters.")
    max_text_chars: int = _f(1024, "Longest free text (watchlist description), in characters.")
    max_metadata_keys: int = _f(32, "Most metadata entries on one person.")
    max_metadata_key_chars: int = _f(64, "Longest metadata key, in characters.")
    max_metadata_value_chars: int = _f(1024, "Longest metadata value, in characters.")
    max_uri_chars: int = _f(2048, "Longest camera URI, in characters.")


@dataclass
class CamerasConfig:
    allowed_schemes: list[str] = _f(
        ["rtsp", "rtsps", "http", "https"],
        "URI schemes a pull camera may use (the server connects to any host they name); others are refused.")
    file_roots: list[str] = _f(
        [], "Folders whose video files may be pull cameras (absolute paths; symlinks resolved); empty = no files.")


@dataclass
class PipelineConfig:
    queue_size: int = _f(8, "Frames buffered per camera; when full the oldest is dropped (newest wins).")
    batch_size: int = _f(1, "Most frames detected in one batched call across cameras (CPU: 1; GPU: 8-16).")
    batch_wait_ms: float = _f(0.0, "Longest wait to fill a detection batch, in milliseconds (GPU: ~5).")
    workers: int = _f(2, "Inference worker threads sharing the model sessions (two keep two cores busy).")
    tracking: bool = _f(True, "Track faces across frames and recognise each track from its best shots.")
    track_max_age_s: float = _f(1.0, "A track ends when its face is unseen for this many seconds.")
    min_face_size: int = _f(
        28, "Faces whose shorter box side is below this (pixels) are tracked but never matched (faces of ~32 px "
        "are boxed at 29-38 px; boxed at 28-32 px they were still recognised 88 % of the time on eval watchlist)."
    )
    min_quality: float = _f(
        0.30, "Faces below this quality score (0..1) are never matched (calibrated: see engine/video/quality.py)."
    )
    reembed_margin: float = _f(0.1, "Re-embed a track only when quality improves by this much...")
    reembed_interval_s: float = _f(2.0, "...or when this many seconds passed since its last embedding.")
    fast_decode: bool = _f(True, "Decode large JPEG frames at half size for detection, full size for best shots.")
    thumbnail_size: int = _f(112, "Side of the JPEG face thumbnail stored with match events.")
    thumbnail_margin: float = _f(0.2, "Context kept around the face box in thumbnails, as a fraction of its size.")
    thumbnail_jpeg_quality: int = _f(85, "JPEG quality (1-100) of event thumbnails.")
    track_start_score: float = _f(
        0.6, "Detector score a face needs to start or first-stage-continue a track (the detector threshold if higher)."
    )
    identity_switch_similarity: float = _f(
        0.2, "A track's new embedding below this cosine similarity to its pooled one means the tracker swapped "
        "faces: the track's best shots start afresh."
    )


@dataclass
class ServerConfig:
    host: str = _f("0.0.0.0", "Address the gRPC server binds to.")
    port: int = _f(50051, "gRPC port.")
    metrics_port: int = _f(9108, "Prometheus metrics HTTP port (0 = off).")
    max_workers: int = _f(64, "gRPC server thread pool size (each open stream holds one thread).")
    max_streams: int = _f(
        48, "Most concurrent ingest streams (all streams stay reserved_workers below max_workers); beyond: "
        "RESOURCE_EXHAUSTED.")
    shutdown_grace_s: float = _f(5.0, "Seconds given to in-flight calls on shutdown.")
    event_relay_s: float = _f(1.0, "Poll the store this often for events other processes wrote (0 = off).")
    reserved_workers: int = _f(
        8, "Threads never given to long-lived streams (ingest + subscriptions): kept for health and unary calls.")
    max_subscriptions: int = _f(32, "Most concurrent SubscribeMatches streams in all; beyond: RESOURCE_EXHAUSTED.")
    max_subscriptions_per_token: int = _f(
        8, "Most concurrent SubscribeMatches streams per API token; beyond: RESOURCE_EXHAUSTED.")
    health_probe_s: float = _f(1.0, "While store writes fail (disk full), probe the store this often; health follows.")


@dataclass
class AuthConfig:
    enabled: bool = _f(True, "Require an API token (authorization: Bearer ...); off only on a loopback host.")
    max_failures: int = _f(
        100, "Failed authentications from one peer address within failure_window_s before it is throttled.")
    failure_window_s: float = _f(
        60.0, "Window for max_failures; a throttled peer gets RESOURCE_EXHAUSTED until it ends.")
    recheck_s: float = _f(
        2.0, "Open streams re-check their token this often; a revoked token ends them (UNAUTHENTICATED).")


@dataclass
class TLSConfig:
    cert_file: str = _f("", "Server certificate chain (PEM); with key_file turns TLS on. Empty = plaintext.")
    key_file: str = _f("", "Server private key (PEM).")
    client_ca_file: str = _f("", "CA bundle (PEM) for client certificates; set = mutual TLS (certs required).")


@dataclass
class RetentionConfig:
    events_days: float = _f(30.0, "Match events (and thumbnails) older than this many days are purged; 0 = keep.")
    interval_s: float = _f(3600.0, "Seconds between background purges in the server (0 = no background purge).")
    erase_person_events: bool = _f(True, "RemovePerson also erases that person's past match events and thumbnails.")


@dataclass
class ClusterConfig:
    address: str = _f("", "Ray cluster to run camera workers on: '' = off (one process), 'local' = start a private "
                          "single-node Ray, 'auto' = join the Ray cluster on this machine, 'HOST:PORT' or "
                          "'ray://HOST:PORT' = a remote cluster.")
    workers: int = _f(2, "Camera worker actors (each a process with its own models and its cameras' tracking state).")
    cpus_per_worker: float = _f(1.0, "Ray num_cpus reserved per worker actor (its onnxruntime threads follow it).")
    gpus_per_worker: float = _f(0.0, "Ray num_gpus reserved per worker actor (e.g. 0.25 = four workers share a GPU).")
    frames_per_call: int = _f(8, "Most frames of one camera sent to a worker in one call (compressed as received).")
    calls_per_worker: int = _f(2, "Calls in flight per worker, each for a different camera (keeps workers busy).")
    call_timeout_s: float = _f(30.0, "A worker call that takes longer fails its frames with UNAVAILABLE.")
    connect_timeout_s: float = _f(5.0, "Seconds to reach a remote Ray address before failing with a clear error.")


@dataclass
class Config:
    models: ModelsConfig = field(default_factory=ModelsConfig, metadata={"doc": "Model files."})
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig, metadata={"doc": "onnxruntime."})
    detector: DetectorConfig = field(default_factory=DetectorConfig, metadata={"doc": "Face detection."})
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig, metadata={"doc": "Face embedding."})
    gallery: GalleryConfig = field(default_factory=GalleryConfig, metadata={"doc": "Watchlist search."})
    store: StoreConfig = field(default_factory=StoreConfig, metadata={"doc": "Persistence."})
    limits: LimitsConfig = field(default_factory=LimitsConfig, metadata={"doc": "Hostile-input limits."})
    cameras: CamerasConfig = field(default_factory=CamerasConfig, metadata={"doc": "What pull cameras may reach."})
    pipeline: PipelineConfig = field(default_factory=PipelineConfig, metadata={"doc": "Video pipeline."})
    server: ServerConfig = field(default_factory=ServerConfig, metadata={"doc": "gRPC server."})
    auth: AuthConfig = field(default_factory=AuthConfig, metadata={"doc": "API tokens and roles."})
    tls: TLSConfig = field(default_factory=TLSConfig, metadata={"doc": "TLS and mutual TLS."})
    retention: RetentionConfig = field(default_factory=RetentionConfig, metadata={"doc": "Data retention, erasure."})
    cluster: ClusterConfig = field(default_factory=ClusterConfig, metadata={"doc": "Cluster mode (Ray workers)."})

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Config:
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
            cfg.update(data, source=str(path))
        env = os.environ if env is None else env
        for sec in dataclasses.fields(cfg):
            section = getattr(cfg, sec.name)
            for fld in dataclasses.fields(section):
                key = f"FACEENGINE_{sec.name}_{fld.name}".upper()
                if key in env:
                    cfg.update({sec.name: {fld.name: env[key]}}, source=key)
        return cfg

    def update(self, data: dict[str, Any], source: str = "override") -> None:
        """Apply a nested dict of overrides, coercing and checking each value's type."""
        for sec_name, values in data.items():
            if not hasattr(self, sec_name) or sec_name.startswith("_"):
                raise ConfigError(f"{source}: unknown config section [{sec_name}]")
            section = getattr(self, sec_name)
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: [{sec_name}] must be a table")
            hints = typing.get_type_hints(type(section))
            names = {f.name for f in dataclasses.fields(section)}
            for key, raw in values.items():
                if key not in names:
                    raise ConfigError(f"{source}: unknown field {sec_name}.{key}")
                setattr(section, key, _coerce(raw, hints[key], f"{source}: {sec_name}.{key}"))

    def describe(self) -> list[tuple[str, Any, str]]:
        """(dotted name, value, description) for every field."""
        rows = []
        for sec in dataclasses.fields(self):
            section = getattr(self, sec.name)
            for fld in dataclasses.fields(section):
                rows.append((f"{sec.name}.{fld.name}", getattr(section, fld.name), fld.metadata.get("doc", "")))
        return rows

    def to_toml(self) -> str:
        """The configuration as a commented TOML document."""
        out: list[str] = []
        for sec in dataclasses.fields(self):
            out.append(f"[{sec.name}]  # {sec.metadata.get('doc', '')}")
            section = getattr(self, sec.name)
            for fld in dataclasses.fields(section):
                out.append(f"# {fld.metadata.get('doc', '')}")
                out.append(f"{fld.name} = {_toml_value(getattr(section, fld.name))}")
            out.append("")
        return "\n".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _coerce(raw: Any, hint: Any, where: str) -> Any:
    try:
        if hint is bool:
            if isinstance(raw, str):
                if raw.lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(raw)
            return bool(raw)
        if hint is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return str(raw)
        if typing.get_origin(hint) is list:
            if isinstance(raw, str):
                return [s.strip() for s in raw.split(",") if s.strip()]
            return list(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot use {raw!r} as {getattr(hint, '__name__', hint)}") from exc
    return raw
