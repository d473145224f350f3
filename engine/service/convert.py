"""Conversions between engine records and protobuf messages, and gRPC status mapping."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import grpc
import numpy as np

from engine.config import LimitsConfig
from engine.errors import FaceEngineError, InvalidImageError
from engine.service.proto import pb
from engine.store.base import MatchEvent, Person, Watchlist
from engine.vision.image import decode_image, raw_to_bgr

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def status_code(exc: FaceEngineError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL)


def error_msg(exc: FaceEngineError) -> pb.Error:
    code = status_code(exc)
    return pb.Error(code=code.value[0], code_name=code.name, message=str(exc))


def unary(fn: F) -> F:
    """Map engine errors to precise gRPC statuses; anything unexpected becomes INTERNAL (logged)."""

    @wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except FaceEngineError as exc:
            context.abort(status_code(exc), str(exc))
        except Exception as exc:
            if context.code() not in (None, grpc.StatusCode.OK):  # already aborted inside fn
                raise
            log.exception("%s failed", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {fn.__name__}: {type(exc).__name__}")

    return wrapper  # type: ignore[return-value]


def image_from_proto(img: pb.Image, limits: LimitsConfig, what: str = "image") -> np.ndarray:
    kind = img.WhichOneof("data")
    try:
        if kind == "encoded":
            return decode_image(img.encoded, limits.max_image_side, limits.max_image_pixels)
        if kind == "raw":
            r = img.raw
            return raw_to_bgr(r.data, r.width, r.height, r.format, limits.max_image_side, limits.max_image_pixels)
    except InvalidImageError as exc:
        raise InvalidImageError(f"{what}: {exc}") from None
    raise InvalidImageError(f"{what}: no image data (set encoded or raw)")


def box(b: Any) -> pb.Box:
    return pb.Box(x1=float(b[0]), y1=float(b[1]), x2=float(b[2]), y2=float(b[3]))


def watchlist_msg(w: Watchlist) -> pb.Watchlist:
    return pb.Watchlist(name=w.name, description=w.description, person_count=w.person_count, created=w.created)


def person_msg(p: Person) -> pb.Person:
    return pb.Person(watchlist=p.watchlist, person_id=p.person_id, display_name=p.display_name,
                     metadata=p.metadata, template_count=p.template_count, created=p.created, updated=p.updated)


def event_msg(e: MatchEvent, update: bool = False, thumbnails: bool = True) -> pb.MatchEvent:
    return pb.MatchEvent(event_id=e.event_id, camera_id=e.camera_id, timestamp=e.timestamp, watchlist=e.watchlist,
                         person_id=e.person_id, display_name=e.display_name, score=e.score, box=box(e.box),
                         thumbnail=e.thumbnail if thumbnails else b"", track_id=e.track_id,
                         frame_sequence=e.frame_seq, update=update, ack_action=e.ack_action, ack_note=e.ack_note,
                         ack_by=e.ack_by, ack_time=e.ack_time)
