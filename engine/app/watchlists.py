"""Watchlists and enrolment as one service: what gRPC's EnrollPerson / RemovePerson / CreateWatchlist and
the offline `faceengine enroll-local` both call, so both accept and refuse the same inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from engine.config import Config
from engine.errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from engine.gallery.calibration import effective_threshold
from engine.gallery.gallery import Gallery
from engine.service import validate
from engine.store.base import GalleryStore, Person, Watchlist
from engine.vision.analyzer import FaceAnalyzer

DUPLICATE_SIMILARITY = 0.95
"""Cosine similarity at or above which a new photo counts as one already enrolled (the same photo, or a
re-encoded or resized copy of it): refused rather than stored as a second, identical template."""

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
               add_to_existing: bool = False, on_note: Callable[[str], None] | None = None) -> Enrolment:
        """Enrol a person from one or more images: counts, ids, names and metadata checked and the watchlist
        looked up before any model runs; each image must show one dominant face (`strict`: exactly one).
        The first image's face is kept as the person's photo when the person is new or replaced. `on_note`
        hears each image's note as it is made (the CLI prints them even when a later image is refused).
        Under an existing person id (unless `replace`): a photo that does not look like that person (below the
        match threshold) is refused unless `add_to_existing`, a photo already enrolled (near-identical
        embedding) is refused as a duplicate, and a different display name is refused unless `add_to_existing`
        (then it renames); see `_check_existing`."""
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
        existing = None if replace else self._existing(watchlist, person_id)
        if existing is not None:
            display_name = self._check_existing(existing, [what for what, _ in images], np.stack(embs),
                                                display_name, add_to_existing)
        else:
            self._check_duplicates(person_id, [what for what, _ in images], np.stack(embs),
                                   np.empty((0, len(embs[0])), np.float32))
        person = self.gallery.enroll(watchlist, person_id, np.stack(embs), display_name or person_id, metadata,
                                     replace=replace)
        if photo and (replace or person.template_count == len(embs)):  # new or replaced: newest photo
            self.store.set_person_photo(watchlist, person_id, photo)
        return Enrolment(person, notes, len(embs))

    def _existing(self, watchlist: str, person_id: str) -> Person | None:
        try:
            return self.gallery.get_person(watchlist, person_id)
        except NotFoundError:
            return None

    def _check_existing(self, person: Person, names: list[str], embs: np.ndarray, display_name: str,
                        add_to_existing: bool) -> str:
        """The one rule for adding photos to an enrolled person (gRPC, CLI and console alike); returns the
        display name to store (the existing one unless the caller renames explicitly)."""
        who = f"person {person.person_id!r} ({person.display_name}) in watchlist {person.watchlist!r}"
        how = ("choose another person id for a different person, or add it anyway with add_to_existing "
               "(CLI --add-to-existing, console 'Add to the existing person')")
        known = self.gallery.person_vectors(person.watchlist, person.person_id)
        self._check_duplicates(person.person_id, names, embs, known)
        if len(known) and not add_to_existing:
            threshold = effective_threshold(self.cfg, self.analyzer.embedder.spec)[0]
            best = (embs @ known.T).max(axis=1)
            for what, score in zip(names, best.tolist(), strict=True):
                if score < threshold:
                    raise FailedPreconditionError(
                        f"{what} does not look like {who}: similarity {score:.2f} to their photos is below the "
                        f"match threshold {threshold:.2f}; {how}")
        if display_name and display_name != person.display_name and not add_to_existing:
            raise FailedPreconditionError(f"{who} is already enrolled under another name; {how} (that also renames "
                                          f"them to {display_name!r})")
        return display_name if add_to_existing and display_name else person.display_name

    @staticmethod
    def _check_duplicates(person_id: str, names: list[str], embs: np.ndarray, known: np.ndarray) -> None:
        """Refuse a photo already enrolled for the person, or given twice in this request."""
        seen = known
        for what, e in zip(names, embs, strict=True):
            if len(seen) and float((seen @ e).max()) >= DUPLICATE_SIMILARITY:
                raise AlreadyExistsError(f"{what} is already enrolled for person {person_id!r} (the same photo or "
                                         f"a copy of it: similarity {float((seen @ e).max()):.2f}); nothing was "
                                         "added. Enrol a different photo of them, or replace their photos "
                                         "with replace")
            seen = np.vstack([seen, e[None, :]])


__all__ = ["Enrolment", "ImageSource", "WatchlistService", "face_crop_jpeg"]
