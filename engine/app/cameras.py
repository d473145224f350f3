"""Cameras as one service: validate, register with the engine, save, and load the saved ones at start-up.
gRPC's AddCamera / RemoveCamera / GetCamera / ListCameras call it."""

from __future__ import annotations

import logging

from engine.config import Config
from engine.errors import InvalidArgumentError
from engine.service import validate
from engine.store.base import CameraStore
from engine.video.cameras import CameraStatus
from engine.video.engine_api import VideoEngine

log = logging.getLogger(__name__)


class CameraService:
    """Camera use cases over the engine (which runs them) and the camera store (which keeps them)."""

    def __init__(self, cfg: Config, engine: VideoEngine, store: CameraStore) -> None:
        self.cfg = cfg
        self.engine = engine
        self.store = store

    def add(self, camera_id: str, uri: str, options: dict[str, str], persist: bool = True) -> CameraStatus:
        """Validate (URI policy, options, limits), register, save (persist) and start a camera.

        A new camera that fails validation raises InvalidArgumentError and nothing is saved; a saved
        one (persist=False, at start-up) is listed in state 'error' with the reason, never started."""
        try:
            validate.camera(camera_id, uri, options, self.cfg)
        except InvalidArgumentError as exc:
            if persist:
                raise
            log.error("camera %s not started: %s", camera_id, exc)
            return self.engine.add_camera(camera_id, uri, options,
                                          error=f"{exc}; fix the camera (remove and add it again) or the config")
        cam = self.engine.add_camera(camera_id, uri, options)
        if persist:
            self.store.save_camera(camera_id, cam.uri, cam.options)
        return cam

    def remove(self, camera_id: str) -> None:
        """Stop and forget a camera (NotFoundError when this engine does not run it)."""
        self.engine.remove_camera(camera_id)
        self.store.delete_camera(camera_id)

    def load_saved(self) -> None:
        """Register the saved cameras (cameras survive restarts); one bad row never stops the others."""
        for cid, uri, opts in self.store.list_camera_defs():
            if not self.engine.has_camera(cid):
                try:
                    self.add(cid, uri, opts, persist=False)
                except Exception as exc:  # noqa: BLE001 - one bad saved camera never stops the server
                    log.error("saved camera %r not loaded: %s", cid[:128], exc)

    def get(self, camera_id: str) -> CameraStatus:
        return self.engine.camera(camera_id)

    def list(self) -> list[CameraStatus]:
        return self.engine.cameras()


__all__ = ["CameraService"]
