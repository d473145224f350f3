"""`VideoEngine`: what the service asks of an engine, whoever runs the models.

Two engines implement it: the local `Engine` (engine/video/pipeline.py: this process decodes and
runs the models) and the cluster front end `ClusterEngine` (engine/cluster/frontend.py: Ray worker
processes decode and run them). The service, the console and the CLI hold a `VideoEngine` and never
ask which one it is; only `engine.runtime.build_engine` chooses.

Frame path: the gRPC ingest servicer hands each gateway frame over undecoded (`submit_encoded`, the
JPEG bytes as received) or as pixels (`submit`, raw frames and pull cameras); each engine decides
where to decode. Results come back through the frame's `reply`; matches reach live subscribers on
the engine's `bus`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError
from engine.store.base import MatchEvent
from engine.video.cameras import CameraRegistry, CameraStatus
from engine.video.events import EventBus, MatchFilterSpec, Subscription
from engine.video.scheduler import FrameJob, FrameOutcome

if TYPE_CHECKING:
    from engine.video.recorder import TrackObserver

Reply = Callable[[FrameOutcome], None]


@dataclass(frozen=True)
class EncodedFrame:
    """A gateway frame as it arrived: compressed bytes (JPEG), not yet decoded."""

    camera_id: str
    seq: int
    capture_time: float
    data: bytes


class VideoEngine(ABC):
    """Cameras in, frame results and match events out. Camera queries are shared here (one
    `CameraRegistry`); everything that depends on where frames run is abstract."""

    bus: EventBus
    registry: CameraRegistry[Any]

    # ---- cameras ---------------------------------------------------------------------------------
    @abstractmethod
    def add_camera(self, camera_id: str, uri: str = "push", options: dict[str, str] | None = None,
                   error: str = "") -> CameraStatus:
        """Register (and, when running, start) a camera. `error`: register it in state ERROR with that
        reason, never started (a saved camera the config now refuses). InvalidArgumentError /
        AlreadyExistsError."""

    @abstractmethod
    def remove_camera(self, camera_id: str) -> CameraStatus:
        """Stop and unregister a camera: waiting frames are answered NOT_FOUND. NotFoundError."""

    def refresh(self, cams: Sequence[CameraStatus]) -> None:  # noqa: B027 - optional hook
        """Bring the cameras' counters up to date (a no-op where they are kept live in this process)."""

    def camera(self, camera_id: str, live: bool = True) -> CameraStatus:
        """The camera, or NotFoundError with the fix. `live=False` skips `refresh` (the ingest path:
        kind and URI are all it needs; the cluster front end would otherwise ask a worker)."""
        cam: CameraStatus = self.registry.get(camera_id)
        if live:
            self.refresh([cam])
            self.registry.check_health()
        return cam

    def cameras(self, live: bool = True) -> list[CameraStatus]:
        """Every camera in registration order (refreshed unless live=False)."""
        cams = self.registry.all()
        if live:
            self.refresh(cams)
            self.registry.check_health()
        return cams

    def find_camera(self, camera_id: str) -> CameraStatus | None:
        """The camera (last known counters), or None if this engine does not run it."""
        return self.registry.find(camera_id)

    def has_camera(self, camera_id: str) -> bool:
        return camera_id in self.registry

    def camera_ids(self) -> list[str]:
        return self.registry.ids()

    # ---- frames ----------------------------------------------------------------------------------
    @abstractmethod
    def submit(self, job: FrameJob) -> None:
        """Queue a decoded frame; a full camera queue drops its oldest frame (answered RESOURCE_EXHAUSTED)."""

    @abstractmethod
    def submit_encoded(self, frame: EncodedFrame, reply: Reply | None) -> None:
        """Queue an undecoded frame; the engine decodes it where it runs it. A frame that cannot be
        decoded is answered through `reply` with InvalidImageError, or raises it here."""

    @abstractmethod
    def pending(self) -> int:
        """Frames queued or being processed."""

    # ---- events ----------------------------------------------------------------------------------
    def subscribe(self, flt: MatchFilterSpec) -> Subscription:
        """A live subscription to this engine's matches (end it with `unsubscribe`)."""
        return self.bus.subscribe(flt)

    def unsubscribe(self, sub: Subscription) -> None:
        self.bus.unsubscribe(sub)

    @abstractmethod
    def relay(self, events: list[MatchEvent]) -> int:
        """Publish to local subscribers events other processes wrote to the shared store (each once)."""

    def observe_tracks(self, observer: TrackObserver) -> None:
        """Hand every track's best shots to `observer` (sightings). Engines that cannot: ConfigError."""
        raise ConfigError("sightings.enabled needs the one-process engine for now (cluster.address is set); "
                          "turn one of them off")

    @abstractmethod
    def forget_person(self, watchlist: str, person_id: str) -> None:
        """Drop live caches of an erased person, wherever the engine holds them."""

    # ---- lifecycle -------------------------------------------------------------------------------
    @abstractmethod
    def start(self) -> None:
        """Start processing (and reading pull cameras)."""

    @abstractmethod
    def stop(self, drain_s: float = 5.0) -> None:
        """Process what is queued (up to drain_s), stop, close the bus."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the start-up log: where frames are decoded and run."""


__all__ = ["EncodedFrame", "Reply", "VideoEngine"]
