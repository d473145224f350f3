"""gRPC servicers: thin adapters from protobuf to the engine, gallery and stores."""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from engine.app.watchlists import face_crop_jpeg
from engine.config import LimitsConfig, ServerConfig
from engine.errors import (
    FaceEngineError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from engine.service import validate
from engine.service.auth import ANONYMOUS, add_audit_detail, call_revoked, current
from engine.service.convert import (
    box,
    error_msg,
    event_msg,
    image_from_proto,
    person_msg,
    unary,
    watchlist_msg,
)
from engine.service.proto import pb, rpc
from engine.store.base import EventQuery
from engine.video.engine_api import EncodedFrame
from engine.video.events import MatchFilterSpec
from engine.video.pipeline import DROP_POLICY, FrameJob, FrameOutcome, is_drop
from engine.video.sources import OPTIONS as SOURCE_OPTIONS
from engine.video.sources import redact_uri

if TYPE_CHECKING:
    from engine.service.server import FaceEngineServer

log = logging.getLogger(__name__)
_END = object()


class StreamSlots:
    """Long-lived streams (ingest and subscriptions) each hold a server thread for their whole life:
    together they never take more than max_workers - reserved_workers threads, so health checks and
    unary calls always find one free. A refusal is RESOURCE_EXHAUSTED naming the setting."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.limit = max(1, cfg.max_workers - cfg.reserved_workers)
        self.ingest = 0
        self.subs: dict[str, int] = {}
        self._lock = threading.Lock()

    def _total(self) -> int:
        return self.ingest + sum(self.subs.values())

    def _full(self) -> str:
        return (f"all {self.limit} stream slots are in use ({self.ingest} ingest streams, "
                f"{sum(self.subs.values())} subscriptions; server.max_workers - server.reserved_workers); "
                "retry later")

    def take_ingest(self) -> str:
        """'' when an ingest stream may start (and is counted), else why not."""
        with self._lock:
            if self.ingest >= self.cfg.max_streams:
                return f"too many ingest streams ({self.ingest}); retry later or raise server.max_streams"
            if self._total() >= self.limit:
                return self._full()
            self.ingest += 1
            return ""

    def take_subscription(self, who: str) -> str:
        with self._lock:
            mine, n = self.subs.get(who, 0), sum(self.subs.values())
            if mine >= self.cfg.max_subscriptions_per_token:
                return (f"token {who!r} already has {mine} live subscriptions (server.max_subscriptions_per_token "
                        f"= {self.cfg.max_subscriptions_per_token}); close one or retry later")
            if n >= self.cfg.max_subscriptions:
                return f"{n} live subscriptions in all (server.max_subscriptions = {self.cfg.max_subscriptions}); " \
                       "retry later"
            if self._total() >= self.limit:
                return self._full()
            self.subs[who] = mine + 1
            return ""

    def give_ingest(self) -> None:
        with self._lock:
            self.ingest -= 1

    def give_subscription(self, who: str) -> None:
        with self._lock:
            self.subs[who] -= 1
            if not self.subs[who]:
                del self.subs[who]


def capture_time(value: float, now: float, lim: LimitsConfig, sequence: int) -> float:
    """The time to use for a gateway frame: its capture_time when inside the configured window
    around the server clock, else refused (INVALID_ARGUMENT) or the server time (policy clamp).
    0 means unset (server time); NaN and infinity are always refused."""
    if value == 0:
        return now
    if not math.isfinite(value):
        raise InvalidArgumentError(f"frame {sequence}: capture_time {value} is not a finite number of Unix seconds "
                                   "(limits.capture_time_* settings)")
    if now - lim.capture_time_past_s <= value <= now + lim.capture_time_future_s:
        return value
    if lim.capture_time_policy == "clamp":
        return now
    off = value - now
    raise InvalidArgumentError(
        f"frame {sequence}: capture_time {value:.3f} is {abs(off):.0f} s {'ahead of' if off > 0 else 'behind'} "
        f"the server clock; accepted: {lim.capture_time_past_s:g} s behind to {lim.capture_time_future_s:g} s "
        "ahead (limits.capture_time_past_s / limits.capture_time_future_s; fix the gateway clock, send 0 for "
        "server time, or set limits.capture_time_policy = \"clamp\")")


class IngestServicer(rpc.IngestServicer):
    def __init__(self, srv: FaceEngineServer) -> None:
        self.srv = srv

    def StreamFrames(self, request_iterator: Iterator[pb.Frame], context: grpc.ServicerContext):  # noqa: N802
        srv = self.srv
        refused = srv.slots.take_ingest()
        if refused:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        srv.metrics.active_streams.inc()
        info = current()
        principal = info.principal if info is not None else ANONYMOUS
        identities = principal.sees_identities()
        out: queue.Queue[object] = queue.Queue(maxsize=512)
        state = {"submitted": 0, "answered": 0, "lost": 0}
        denied: list[PermissionDeniedError] = []
        counts = threading.Lock()

        def put(msg: object) -> None:
            while True:
                try:
                    out.put_nowait(msg)
                    return
                except queue.Full:  # the client is not reading its results: drop the oldest
                    try:
                        out.get_nowait()
                        with counts:
                            state["lost"] += 1
                    except queue.Empty:
                        pass

        def reply(o: FrameOutcome) -> None:
            put(self._result(o, identities))
            with counts:
                state["answered"] += 1

        def reader() -> None:
            try:
                for frame in request_iterator:
                    if not context.is_active():
                        break
                    try:
                        principal.check_camera(frame.camera_id)
                    except PermissionDeniedError as exc:  # a camera outside the token's scope ends the stream
                        denied.append(exc)
                        break
                    self._accept(frame, reply)
                    with counts:
                        state["submitted"] += 1
            except Exception as exc:  # client cancelled or transport error: end quietly
                log.debug("ingest reader ended: %s", exc)
            finally:
                put(_END)

        t = threading.Thread(target=reader, name="ingest-reader", daemon=True)
        t.start()
        try:
            reader_done = False
            while context.is_active() and not call_revoked():
                try:
                    msg = out.get(timeout=0.5)
                except queue.Empty:
                    msg = None
                if msg is _END:
                    reader_done = True
                    if denied:
                        if info is not None:
                            srv.auth.audit_denial(info, str(denied[0]))
                        context.abort(grpc.StatusCode.PERMISSION_DENIED, str(denied[0]))
                elif msg is not None:
                    yield msg
                if reader_done and out.empty():
                    with counts:
                        finished = state["answered"] >= state["submitted"]
                    if finished or not srv.running:
                        break
        finally:
            if state["lost"]:
                log.warning("ingest stream: %d results dropped because the client did not read them", state["lost"])
            srv.slots.give_ingest()
            srv.metrics.active_streams.dec()

    def _accept(self, frame: pb.Frame, reply) -> None:  # noqa: ANN001
        """Decode and queue one frame; a bad frame is answered at once with its error."""
        srv = self.srv
        now = time.time()
        try:
            if not frame.camera_id:
                raise InvalidArgumentError("frame has no camera_id")
            cam = srv.engine.camera(frame.camera_id, live=False)  # no worker call per frame in cluster mode
            if cam.kind != "push":
                raise InvalidArgumentError(f"camera {frame.camera_id!r} is a pull camera ({redact_uri(cam.uri)}); "
                                           "register a push camera for gateway frames")
            t0 = time.perf_counter()
            kind = frame.WhichOneof("image")
            ts = capture_time(frame.capture_time, now, srv.cfg.limits, frame.sequence)
            if kind == "encoded":  # decoded where the engine runs it (here, or by a cluster worker)
                srv.engine.submit_encoded(EncodedFrame(frame.camera_id, frame.sequence, ts, frame.encoded), reply)
                return
            img = pb.Image()
            if kind == "raw":
                img.raw.CopyFrom(frame.raw)
            image = image_from_proto(img, srv.cfg.limits, what=f"frame {frame.sequence}")
            srv.metrics.stage_seconds.labels("decode").observe(time.perf_counter() - t0)
            srv.engine.submit(FrameJob(frame.camera_id, frame.sequence, ts, image, reply))
        except FaceEngineError as exc:
            srv.metrics.frame_errors.labels(type(exc).__name__).inc()
            reply(FrameOutcome(frame.camera_id, frame.sequence, error=exc))

    def _result(self, o: FrameOutcome, identities: bool = True) -> pb.FrameResult:
        """The frame's result; without `identities` (a gateway whose scope does not allow them) the
        faces carry no match: no person, name, score or event."""
        res = pb.FrameResult(camera_id=o.camera_id, sequence=o.seq, latency_ms=o.latency_ms)
        if o.error is not None:
            res.error.CopyFrom(error_msg(o.error))
            if is_drop(o.error):
                res.dropped_sequences.append(o.seq)
        for f in o.faces:
            face = res.faces.add(box=box(f.box), score=f.score, track_id=f.track_id, quality=f.quality)
            for x, y in f.landmarks:
                face.landmarks.add(x=float(x), y=float(y))
            if f.match is not None and identities:
                m = f.match
                face.match.CopyFrom(pb.Match(watchlist=m.watchlist, person_id=m.person_id,
                                             display_name=m.display_name, score=m.score, event_id=m.event_id))
        cam = self.srv.engine.find_camera(o.camera_id)
        if cam is not None:
            res.drops.CopyFrom(pb.DropStats(frames_received=cam.frames_in, frames_processed=cam.frames_processed,
                                            frames_dropped=cam.frames_dropped, policy=DROP_POLICY))
        return res


class CamerasServicer(rpc.CamerasServicer):
    def __init__(self, srv: FaceEngineServer) -> None:
        self.srv = srv

    @unary
    def AddCamera(self, request: pb.AddCameraRequest, context: grpc.ServicerContext) -> pb.Camera:  # noqa: N802
        info = current()
        if info is not None and info.principal.role == "gateway":  # its own push cameras only
            validate.camera(request.camera_id, request.uri, dict(request.options), self.srv.cfg)
            info.principal.check_camera(request.camera_id, "register")
            if request.uri != "push":
                raise PermissionDeniedError(f"a gateway token registers push cameras only (uri 'push', no options); "
                                            f"an admin adds {request.uri!r} cameras or options")
        cam = self.srv.cameras.add(request.camera_id, request.uri, dict(request.options))
        return camera_msg(cam)

    @unary
    def RemoveCamera(self, request: pb.CameraRequest, context: grpc.ServicerContext) -> pb.Empty:  # noqa: N802
        self.srv.cameras.remove(request.camera_id)
        return pb.Empty()

    @unary
    def GetCamera(self, request: pb.CameraRequest, context: grpc.ServicerContext) -> pb.Camera:  # noqa: N802
        return camera_msg(self.srv.cameras.get(request.camera_id))

    @unary
    def ListCameras(self, request: pb.ListCamerasRequest, context: grpc.ServicerContext):  # noqa: N802
        return pb.ListCamerasResponse(cameras=[camera_msg(c) for c in self.srv.cameras.list()])


def camera_msg(c) -> pb.Camera:  # noqa: ANN001
    """A camera's status as clients see it: credentials in its URI masked, only known options."""
    options = {k: v for k, v in c.options.items() if k in SOURCE_OPTIONS}
    return pb.Camera(camera_id=c.camera_id, uri=redact_uri(c.uri), kind=c.kind, state=c.state, fps_in=c.fps_in.rate(),
                     fps_processed=c.fps_out.rate(), frames_in=c.frames_in, frames_processed=c.frames_processed,
                     frames_dropped=c.frames_dropped, last_error=c.last_error, reconnects=c.reconnects,
                     last_frame_time=c.last_frame_time, options=options)


class WatchlistsServicer(rpc.WatchlistsServicer):
    def __init__(self, srv: FaceEngineServer) -> None:
        self.srv = srv

    @unary
    def CreateWatchlist(self, request, context):  # noqa: ANN001, ANN201, N802
        return watchlist_msg(self.srv.watchlists.create_watchlist(request.name, request.description))

    @unary
    def ListWatchlists(self, request, context):  # noqa: ANN001, ANN201, N802
        return pb.ListWatchlistsResponse(watchlists=[watchlist_msg(w) for w in self.srv.gallery.list_watchlists()])

    @unary
    def DeleteWatchlist(self, request, context):  # noqa: ANN001, ANN201, N802
        self.srv.gallery.delete_watchlist(request.name)
        return pb.Empty()

    @unary
    def EnrollPerson(self, request: pb.EnrollPersonRequest, context):  # noqa: ANN001, ANN201, N802
        srv, n = self.srv, len(request.images)
        images = [(f"image {i + 1} of {n}", lambda img=img, what=f"image {i + 1} of {n}":
                   image_from_proto(img, srv.cfg.limits, what)) for i, img in enumerate(request.images)]
        done = srv.watchlists.enroll(request.watchlist, request.person_id, images, request.display_name,
                                     dict(request.metadata), strict=request.strict, replace=request.replace,
                                     add_to_existing=request.add_to_existing)
        add_audit_detail(f"images={done.images} replace={str(request.replace).lower()}"
                         + (" add_to_existing=true" if request.add_to_existing else ""))
        msg = person_msg(done.person)
        msg.notes.extend(done.notes)
        return msg

    @unary
    def GetPersonPhoto(self, request: pb.PersonRequest, context):  # noqa: ANN001, ANN201, N802
        return pb.PersonPhoto(jpeg=self.srv.store.get_person_photo(request.watchlist, request.person_id))

    @unary
    def DetectFaces(self, request: pb.DetectFacesRequest, context):  # noqa: ANN001, ANN201, N802
        """Enrolment preview: the same detection and checks EnrollPerson applies, without storing."""
        srv = self.srv
        image = image_from_proto(request.image, srv.cfg.limits)
        dets, chosen, problem = srv.analyzer.enrolment_preview(image)  # the choice EnrollPerson makes
        out = pb.DetectFacesResponse(problem=problem)
        for b, sc in zip(dets.boxes, dets.scores, strict=True):
            out.faces.add(box=box(b), score=float(sc), track_id=-1)
        if chosen is not None:
            out.crop = face_crop_jpeg(image, dets.boxes[chosen])
        add_audit_detail(f"faces={len(dets)}")
        return out

    @unary
    def RemovePerson(self, request, context):  # noqa: ANN001, ANN201, N802
        srv = self.srv
        erase = srv.cfg.retention.erase_person_events
        try:
            n = srv.gallery.remove_person(request.watchlist, request.person_id)  # templates, person, vectors
        except NotFoundError:
            if erase:  # a retry after a crash between the two steps still erases the events
                srv.store.erase_person_events(request.watchlist, request.person_id)
            if srv.sightings is not None:
                srv.sightings.erase_person(request.watchlist, request.person_id)
            raise
        srv.engine.forget_person(request.watchlist, request.person_id)
        erased = srv.store.erase_person_events(request.watchlist, request.person_id) if erase else 0
        seen = srv.sightings.erase_person(request.watchlist, request.person_id) if srv.sightings is not None else 0
        add_audit_detail(f"templates={n} events_erased={erased}" + (f" sightings_erased={seen}" if seen else ""))
        return pb.RemovePersonResponse(templates_removed=n)

    @unary
    def GetPerson(self, request, context):  # noqa: ANN001, ANN201, N802
        return person_msg(self.srv.gallery.get_person(request.watchlist, request.person_id))

    @unary
    def ListPersons(self, request, context):  # noqa: ANN001, ANN201, N802
        rows, token = self.srv.gallery.list_persons(request.watchlist, request.page_size, request.page_token)
        return pb.ListPersonsResponse(persons=[person_msg(p) for p in rows], next_page_token=token)


class MatchesServicer(rpc.MatchesServicer):
    def __init__(self, srv: FaceEngineServer) -> None:
        self.srv = srv

    def SubscribeMatches(self, request: pb.MatchFilter, context: grpc.ServicerContext):  # noqa: N802
        srv = self.srv
        known = set(srv.engine.camera_ids()) | {c for c, _, _ in srv.store.list_camera_defs()}  # any process's cameras
        for cid in request.camera_ids:
            if cid not in known:
                context.abort(grpc.StatusCode.NOT_FOUND, f"camera {cid!r} not found")
        info = current()
        who = info.principal.name if info is not None else "anonymous"
        refused = srv.slots.take_subscription(who)
        if refused:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        flt = MatchFilterSpec(frozenset(request.camera_ids), frozenset(request.watchlists), request.min_score)
        try:
            sub = srv.engine.subscribe(flt)
        except BaseException:
            srv.slots.give_subscription(who)
            raise
        srv.metrics.subscribers.inc()
        try:
            # initial metadata now, not with the first event: a client that awaits it knows every event
            # published from here on reaches it (the console says "live" only then)
            context.send_initial_metadata(())
            while context.is_active() and srv.running and not call_revoked():
                try:
                    item = sub.queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                if item is None:
                    break
                ev, update = item
                yield event_msg(ev, update)
        finally:
            srv.engine.unsubscribe(sub)
            srv.slots.give_subscription(who)
            srv.metrics.subscribers.dec()

    @unary
    def QueryMatches(self, request: pb.QueryMatchesRequest, context):  # noqa: ANN001, ANN201, N802
        if request.until and request.since and request.until < request.since:
            raise InvalidArgumentError("until is before since")
        events, token = self.srv.store.query_events(EventQuery(
            request.camera_id, request.watchlist, request.person_id, request.since, request.until,
            request.min_score, request.page_size or 100, request.page_token))
        return pb.QueryMatchesResponse(events=[event_msg(e, thumbnails=request.include_thumbnails) for e in events],
                                       next_page_token=token)

    @unary
    def SearchByImage(self, request: pb.SearchRequest, context):  # noqa: ANN001, ANN201, N802
        srv = self.srv
        if request.top_k > 100:
            raise InvalidArgumentError("top_k must be at most 100")
        for w in request.watchlists:
            srv.store.get_watchlist(w)
        det, emb = srv.analyzer.largest_face(image_from_proto(request.image, srv.cfg.limits))
        thr = srv.settings.match_threshold
        hits = srv.gallery.search(emb, request.top_k or srv.cfg.gallery.top_k,
                                  request.min_score if request.min_score else -1.0, list(request.watchlists))[0]
        return pb.SearchResponse(face=box(det.boxes[0]), threshold=thr, hits=[
            pb.SearchHit(watchlist=h.watchlist, person_id=h.person_id, display_name=h.display_name, score=h.score,
                         is_match=h.score >= thr) for h in hits])

    @unary
    def AcknowledgeMatch(self, request: pb.AcknowledgeRequest, context):  # noqa: ANN001, ANN201, N802
        info = current()
        actor = info.principal.name if info is not None else "anonymous"
        ev = self.srv.store.acknowledge_event(request.event_id, request.action, request.note, actor)
        add_audit_detail(f"action={request.action} note_chars={len(request.note)}")
        return event_msg(ev, thumbnails=False)

    @unary
    def Verify(self, request: pb.VerifyRequest, context):  # noqa: ANN001, ANN201, N802
        srv = self.srv
        da, ea = srv.analyzer.largest_face(image_from_proto(request.image_a, srv.cfg.limits, "image_a"), "image_a")
        db, eb = srv.analyzer.largest_face(image_from_proto(request.image_b, srv.cfg.limits, "image_b"), "image_b")
        score = float(ea @ eb)
        thr = srv.settings.match_threshold
        return pb.VerifyResponse(score=score, same_person=score >= thr, threshold=thr, face_a=box(da.boxes[0]),
                                 face_b=box(db.boxes[0]))


__all__ = ["CamerasServicer", "IngestServicer", "MatchesServicer", "NotFoundError", "ResourceExhaustedError",
           "WatchlistsServicer"]
