"""Watchlists and enrolment as one service: what gRPC's EnrollPerson / RemovePerson / CreateWatchlist and
the offline `faceengine enroll-local` both call, so both accept and refuse the same inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from engine.config import Config
from engine.errors import InvalidArgumentError
from engine.gallery.gallery import Gallery
from engine.service import validate
from engine.store.base import GalleryStore, Person, Watchlist
from engine.vision.analyzer import FaceAnalyzer

ImageSource = tuple[str, Callable[[], np.ndarray]]
"""(what the image is called in messages, how to decode it): decoded only after the cheap checks pass."""


def face_crop_jpeg(image: np.ndarray, b: np.ndarray, margin: float = 0.3, side: int = 160) -> bytes:
    """The face box with a margin, at most `side` px tall, as JPEG: the person photo kept for operators."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in b[:4])
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    crop = image[max(0, int(y1 - my)) : min(h, int(y2 + my)), max(0, int(x1 - mx)) : min(w, int(x2 + mx))]
    if crop.size == 0:
        return b""
    if crop.shape[0] > side:
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * side / crop.shape[0])), side),
                          interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return buf.tobytes() if ok else b""


@dataclass
class Enrolment:
    """What an enrolment did: the person as stored, notes on the images, how many images were used."""

    person: Person
    notes: list[str] = field(default_factory=list)
    images: int = 0


class WatchlistService:
    """Enrolment and watchlist use cases over the gallery and its store."""

    def __init__(self, cfg: Config, analyzer: FaceAnalyzer, gallery: Gallery, store: GalleryStore) -> None:
        self.cfg = cfg
        self.analyzer = analyzer
        self.gallery = gallery
        self.store = store

    def create_watchlist(self, name: str, description: str = "") -> Watchlist:
        validate.watchlist(name, description, self.cfg.limits)
        return self.gallery.create_watchlist(name, description)

    def enroll(self, watchlist: str, person_id: str, images: Sequence[ImageSource], display_name: str = "",
               metadata: Mapping[str, str] | None = None, *, strict: bool = False, replace: bool = False,
               on_note: Callable[[str], None] | None = None) -> Enrolment:
        """Enrol a person from one or more images: counts, ids, names and metadata checked and the watchlist
        looked up before any model runs; each image must show one dominant face (`strict`: exactly one).
        The first image's face is kept as the person's photo when the person is new or replaced. `on_note`
        hears each image's note as it is made (the CLI prints them even when a later image is refused)."""
        lim = self.cfg.limits
        metadata = dict(metadata or {})
        if not images:
            raise InvalidArgumentError("enrolment needs at least one image")
        if len(images) > lim.max_images_per_enrollment:
            raise InvalidArgumentError(f"{len(images)} images: at most {lim.max_images_per_enrollment} per enrolment "
                                       "(limits.max_images_per_enrollment)")
        validate.person(person_id, display_name, metadata, lim)
        self.store.get_watchlist(watchlist)  # NOT_FOUND before any model work
        embs, notes, photo = [], [], b""
        for i, (what, decode) in enumerate(images):
            image = decode()
            det, emb, note = self.analyzer.enrol_face(image, what, strict)
            embs.append(emb)
            if note:
                notes.append(note)
                if on_note is not None:
                    on_note(note)
            if i == 0:
                photo = face_crop_jpeg(image, det.boxes[0])
        person = self.gallery.enroll(watchlist, person_id, np.stack(embs), display_name or person_id, metadata,
                                     replace=replace)
        if photo and (replace or person.template_count == len(embs)):  # new or replaced: newest photo
            self.store.set_person_photo(watchlist, person_id, photo)
        return Enrolment(person, notes, len(embs))


__all__ = ["Enrolment", "ImageSource", "WatchlistService", "face_crop_jpeg"]
