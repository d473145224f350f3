"""gRPC `Sightings` service: search by photo or embedding across cameras and time, erasure,
recurring unknowns and their enrolment. A thin adapter over `engine.sightings.service.Sightings`
(FAILED_PRECONDITION when the server runs without sightings.enabled)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import FeatureDisabledError, InvalidArgumentError
from engine.service import validate
from engine.service.auth import add_audit_detail
from engine.service.convert import box, image_from_proto, person_msg, unary
from engine.service.proto import spb, srpc
from engine.sightings.service import MAX_TOP_K, Sightings
from engine.store.base import Sighting

if TYPE_CHECKING:
    from engine.service.server import FaceEngineServer

DEFAULT_TOP_K = 20
MAX_TEMPLATES = 20


def sighting_msg(s: Sighting, thumbnails: bool) -> spb.Sighting:
    return spb.Sighting(sighting_id=s.id, camera_id=s.camera_id, first_seen=s.first_seen, last_seen=s.last_seen,
                        track_id=s.track_id, box=box(np.asarray(s.box, np.float32)), quality=s.quality,
                        thumbnail=s.thumbnail if thumbnails else b"", watchlist=s.watchlist, person_id=s.person_id)



def _first_seen(hit: Any) -> float:  # noqa: ANN401 - a generated protobuf message
    return float(hit.sighting.first_seen)

class SightingsServicer(srpc.SightingsServicer):
    def __init__(self, srv: FaceEngineServer) -> None:
        self.srv = srv

    def _on(self) -> Sightings:
        if self.srv.sightings is None:
            raise FeatureDisabledError("sightings are off on this server: an admin enables them with "
                                       "sightings.enabled = true (a policy decision: every face seen is kept; "
                                       "see docs/sightings.md)")
        return self.srv.sightings

    @unary
    def SearchSightings(self, request: spb.SearchSightingsRequest, context):  # noqa: ANN001, ANN201, N802
        sightings = self._on()
        srv = self.srv
        if request.top_k > MAX_TOP_K:
            raise InvalidArgumentError(f"top_k must be at most {MAX_TOP_K}")
        kind = request.WhichOneof("query")
        face = None
        if kind == "image":
            det, query = srv.analyzer.largest_face(image_from_proto(request.image, srv.cfg.limits))
            face = box(det.boxes[0])
        elif kind == "embedding":
            query = np.asarray(request.embedding.values, np.float32)
            if query.shape != (srv.analyzer.dim,) or not np.all(np.isfinite(query)):
                raise InvalidArgumentError(f"embedding must be {srv.analyzer.dim} finite numbers "
                                           f"(the {srv.analyzer.model_name} embedder's size), got {query.size}")
            norm = float(np.linalg.norm(query))
            if norm == 0:
                raise InvalidArgumentError("embedding must not be all zeros")
            query = query / norm
        else:
            raise InvalidArgumentError("set image (a photo) or embedding to search sightings")
        thr = float(request.min_score) or sightings.threshold
        hits = sightings.search(query, request.since, request.until, tuple(request.camera_ids),
                                request.top_k or DEFAULT_TOP_K, thr, thumbnails=request.include_thumbnails)
        add_audit_detail(f"hits={len(hits)}")
        out = [spb.SightingHit(sighting=sighting_msg(h.sighting, request.include_thumbnails), score=h.score)
               for h in hits]
        resp = spb.SearchSightingsResponse(hits=out, threshold=thr,
                                           timeline=sorted(out, key=_first_seen))
        if face is not None:
            resp.face.CopyFrom(face)
        return resp

    @unary
    def EraseSightings(self, request: spb.EraseSightingsRequest, context):  # noqa: ANN001, ANN201, N802
        sightings = self._on()
        if not (request.since or request.until or request.camera_ids or request.all):
            raise InvalidArgumentError("give a time range or cameras to erase, or all = true to erase every sighting")
        n = sightings.erase(request.since, request.until, tuple(request.camera_ids))
        add_audit_detail(f"erased={n}")
        return spb.EraseSightingsResponse(erased=n)

    @unary
    def ListUnknownClusters(self, request: spb.ListClustersRequest, context):  # noqa: ANN001, ANN201, N802
        sightings = self._on()
        clusters = sightings.unknown_clusters(request.since, request.until, max(2, request.min_sightings or 2))
        out = spb.ListClustersResponse(threshold=sightings.threshold)
        for c in clusters[: request.max_clusters or 50]:
            out.clusters.append(spb.UnknownCluster(
                cluster_id=c.cluster_id, sightings=len(c.members), camera_ids=c.cameras, first_seen=c.first_seen,
                last_seen=c.last_seen, sighting_ids=[s.id for s in c.members]))
            if request.include_thumbnails:
                best = sightings.store.get_sightings([s.id for s in c.members[:3]])
                out.clusters[-1].thumbnails.extend(s.thumbnail for s in best if s.thumbnail)
        return out

    @unary
    def EnrollCluster(self, request: spb.EnrollClusterRequest, context):  # noqa: ANN001, ANN201, N802
        """Name a recurring unknown: enrol its best-quality members' embeddings as a person's
        templates (the best thumbnail becomes the person's photo) and mark its sightings as them."""
        sightings = self._on()
        srv = self.srv
        if not request.sighting_ids:
            raise InvalidArgumentError("sighting_ids is empty: pass a cluster's members from ListUnknownClusters")
        if request.max_templates > MAX_TEMPLATES:
            raise InvalidArgumentError(f"max_templates must be at most {MAX_TEMPLATES}")
        validate.person(request.person_id, request.display_name, {}, srv.cfg.limits)
        srv.store.get_watchlist(request.watchlist)
        rows = [s for s in sightings.store.get_sightings(list(request.sighting_ids)) if s.model == sightings.model]
        if not rows:
            raise InvalidArgumentError("none of these sightings exists any more (erased or past retention)")
        rows.sort(key=lambda s: -s.quality)
        best = rows[: request.max_templates or 5]
        person = srv.gallery.enroll(request.watchlist, request.person_id, np.stack([s.embedding for s in best]),
                                    request.display_name or request.person_id)
        if best[0].thumbnail:
            srv.store.set_person_photo(request.watchlist, request.person_id, best[0].thumbnail)
        named = sightings.name([s.id for s in rows], request.watchlist, request.person_id)
        add_audit_detail(f"sightings={named} templates={len(best)}")
        return spb.EnrollClusterResponse(person=person_msg(person), sightings_named=named)


__all__ = ["SightingsServicer", "sighting_msg"]
