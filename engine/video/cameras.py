"""The camera registry both engines share: identity checks, the bounded per-camera queue with
drop-oldest, the counters operators see and the camera's state.

The local `Engine` (its `Scheduler`) and the cluster front end (`ClusterEngine`) each keep their
cameras in one `CameraRegistry`; only what they queue differs (decoded `FrameJob`s locally, the
gateway's compressed frames in the front end). A camera's state is a `CameraPhase`, written only
through `CameraStatus.set_state`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from engine.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError

DEFAULT_OFFLINE_AFTER_S = 5.0
"""Seconds without a frame after which a running push camera is reported offline (config: cameras.offline_after_s)."""
RATE_WINDOW_S = 5.0
"""Window of the cameras' fps figures: long enough to be steady at a few fps, short enough to follow changes."""
MAX_CAMERA_ID_CHARS = 128
PUSH_URIS = ("", "push", "push://")


class CameraPhase(StrEnum):
    """What a camera is doing, as ListCameras reports it."""

    IDLE = "idle"  # a push camera waiting for its first frame
    CONNECTING = "connecting"  # a pull camera opening its stream
    RUNNING = "running"  # frames are being processed
    OFFLINE = "offline"  # a push camera whose frames stopped coming (its gateway went away)
    RETRYING = "retrying"  # a pull camera's stream failed; reopened with backoff
    ENDED = "ended"  # a non-looping file camera reached its end
    STOPPED = "stopped"  # removed or shut down
    ERROR = "error"  # a saved camera the current config refuses: listed, never started


class RateMeter:
    """Events per second over a sliding window (camera status); `value`, when set, is a figure
    reported from elsewhere (a cluster worker running the camera) and wins over the local count."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window = window_s
        self.times: deque[float] = deque()
        self.value: float | None = None

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.times.append(now)
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()

    def rate(self) -> float:
        if self.value is not None:
            return self.value
        now = time.monotonic()
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()
        if len(self.times) < 2:
            return 0.0
        return len(self.times) / self.window


@dataclass
class CameraStatus:
    """A registered camera: identity, counters, state and its queue of waiting frames."""

    camera_id: str
    uri: str
    kind: str  # push | pull
    options: dict[str, str]
    frames_in: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    last_error: str = ""
    reconnects: int = 0
    last_frame_time: float = 0.0
    last_arrival: float = 0.0  # time.monotonic() of the last frame received (0: none yet)
    busy: bool = False  # a worker holds frames of this camera
    fps_in: RateMeter = field(default_factory=RateMeter)
    fps_out: RateMeter = field(default_factory=RateMeter)
    queue: deque[Any] = field(default_factory=deque)
    phase: CameraPhase = CameraPhase.IDLE

    @property
    def state(self) -> CameraPhase:
        """The camera's state (read-only: `set_state` is its one writer)."""
        return self.phase

    def set_state(self, phase: CameraPhase | str, error: str | None = None) -> None:
        """Move the camera to `phase`; `error` (when given) replaces the last error ('' clears it).
        A stopped camera stays stopped: a reader thread finishing late cannot revive it."""
        if self.phase is CameraPhase.STOPPED and phase != CameraPhase.STOPPED:
            return
        self.phase = CameraPhase(phase)
        if error is not None:
            self.last_error = error


C = TypeVar("C", bound=CameraStatus)


def camera_kind(uri: str) -> str:
    """push (gateway frames) or pull (the engine reads the URI)."""
    return "push" if uri in PUSH_URIS else "pull"


class CameraRegistry(Generic[C]):
    """Cameras by id in registration order, their bounded queues and counters, under one condition
    variable (`cv`) that the engine's dispatching threads also wait on."""

    def __init__(self, make: Callable[[str, str, str, dict[str, str]], C],
                 offline_after_s: float = DEFAULT_OFFLINE_AFTER_S) -> None:
        self.make = make
        self.offline_after_s = offline_after_s  # a running push camera without frames this long is OFFLINE
        self.cv = threading.Condition()
        self.by_id: dict[str, C] = {}
        self.order: deque[str] = deque()  # round-robin order of the dispatchers

    def add(self, camera_id: str, uri: str = "push", options: dict[str, str] | None = None,
            error: str = "") -> C:
        """Register a camera. `error` registers it in state ERROR with that reason (a saved camera
        the config now refuses): listed, never started. InvalidArgumentError / AlreadyExistsError."""
        if not camera_id or len(camera_id) > MAX_CAMERA_ID_CHARS:
            raise InvalidArgumentError(f"camera id must be 1-{MAX_CAMERA_ID_CHARS} characters")
        kind = camera_kind(uri)
        cam = self.make(camera_id, uri or "push", kind, dict(options or {}))
        if error:
            cam.set_state(CameraPhase.ERROR, error)
        else:
            cam.set_state(CameraPhase.IDLE if kind == "push" else CameraPhase.CONNECTING)
        with self.cv:
            if camera_id in self.by_id:
                raise AlreadyExistsError(f"camera {camera_id!r} already exists; remove it first")
            self.by_id[camera_id] = cam
            self.order.append(camera_id)
        return cam

    def remove(self, camera_id: str) -> tuple[C, list[Any]]:
        """Unregister a camera: (the camera, now STOPPED; the frames that were waiting in its queue)."""
        with self.cv:
            cam = self.by_id.pop(camera_id, None)
            if cam is None:
                raise NotFoundError(f"camera {camera_id!r} not found")
            self.order.remove(camera_id)
            pending = list(cam.queue)
            cam.queue.clear()
            self.cv.notify_all()
        cam.set_state(CameraPhase.STOPPED)
        return cam, pending

    def find(self, camera_id: str) -> C | None:
        """The camera, or None if it is not registered."""
        return self.by_id.get(camera_id)

    def get(self, camera_id: str) -> C:
        """The camera, or NotFoundError saying how to register it."""
        cam = self.by_id.get(camera_id)
        if cam is None:
            raise NotFoundError(f"camera {camera_id!r} not found; register it with AddCamera "
                                "(uri 'push' for a gateway camera)")
        return cam

    def all(self) -> list[C]:
        """The cameras in registration order."""
        with self.cv:
            return [self.by_id[c] for c in self.order]

    def ids(self) -> list[str]:
        with self.cv:
            return list(self.order)

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, camera_id: object) -> bool:
        return camera_id in self.by_id

    def enqueue(self, cam: C, item: Any, queue_size: int) -> Any | None:
        """Queue `item` for `cam`, counting it; when the queue is full its oldest item is dropped
        (newest wins), counted and returned for the caller to answer."""
        dropped = None
        with self.cv:
            cam.frames_in += 1
            cam.fps_in.tick()
            cam.last_arrival = time.monotonic()
            if cam.state is CameraPhase.OFFLINE:  # its gateway is back
                cam.set_state(CameraPhase.RUNNING, "")
            if len(cam.queue) >= max(1, queue_size):
                dropped = cam.queue.popleft()
                cam.frames_dropped += 1
            cam.queue.append(item)
            self.cv.notify_all()
        return dropped

    def check_health(self, now: float | None = None) -> None:
        """Mark running push cameras that received no frame for `offline_after_s` OFFLINE (read paths call
        this: ListCameras, GetCamera, a metrics scrape); the next frame makes them RUNNING again."""
        now = time.monotonic() if now is None else now
        with self.cv:
            cams = list(self.by_id.values())
        for cam in cams:
            age = now - cam.last_arrival
            if cam.kind == "push" and cam.state is CameraPhase.RUNNING and cam.last_arrival and \
                    age > self.offline_after_s:
                cam.set_state(CameraPhase.OFFLINE, f"no frames for {age:.0f} s (more than "
                              f"{self.offline_after_s:g} s): is its gateway or stream client running?")

    def health(self) -> list[tuple[str, bool, float | None]]:
        """(camera id, up, seconds since its last frame or None) per camera, after `check_health`:
        up = RUNNING (frames are coming)."""
        self.check_health()
        now = time.monotonic()
        return [(c.camera_id, c.state is CameraPhase.RUNNING, now - c.last_arrival if c.last_arrival else None)
                for c in self.all()]

    def queued(self) -> int:
        """Frames waiting in every camera's queue."""
        with self.cv:
            return sum(len(c.queue) for c in self.by_id.values())


__all__ = ["CameraPhase", "CameraRegistry", "CameraStatus", "RateMeter", "camera_kind"]
