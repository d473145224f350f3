"""Client commands against a running server: stream, enroll, matches, search, verify, cameras, demo."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import threading
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from engine.cli.common import jprint

DEFAULT_SERVER = "127.0.0.1:50051"


def _client_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--server", default=os.environ.get("FACEENGINE_SERVER") or DEFAULT_SERVER,
                   help=f"server address, several comma-separated (env FACEENGINE_SERVER, default {DEFAULT_SERVER})")
    g.add_argument("--token", help="API token (env FACEENGINE_TOKEN)")
    g.add_argument("--ca-cert", help="CA certificate (PEM) to verify a TLS server")
    g.add_argument("--client-cert", help="client certificate (PEM) for mutual TLS")
    g.add_argument("--client-key", help="client private key (PEM) for mutual TLS")
    g.add_argument("--json", action="store_true", help="one JSON object a line")
    g.add_argument("-v", "--verbose", action="count", default=0)


def register(sub: Any, lazy: Callable[[str, str], Callable[[argparse.Namespace], int]]) -> None:
    m = "engine.cli.client_cmds"
    s = sub.add_parser("stream", help="act as a camera gateway: push a video file, RTSP stream or webcam")
    _client_args(s)
    s.add_argument("--camera", required=True, help="camera id (registered as a push camera if missing)")
    s.add_argument("--fast", action="store_true", help="send as fast as possible instead of at the source rate")
    s.add_argument("--loop", action="store_true", help="loop a file source")
    s.add_argument("--max-frames", type=int, default=0, help="stop after N frames")
    s.add_argument("--faces", action="store_true", help="print every frame's faces, not only matches")
    s.add_argument("source", help="video file, rtsp:// URL, webcam index (0), or a still image (with --loop: resent)")
    s.set_defaults(func=lazy(m, "cmd_stream"))

    e = sub.add_parser("enroll", help="enrol a person on the server from one or more photos")
    _client_args(e)
    e.add_argument("--watchlist", required=True)
    e.add_argument("--person", required=True, help="person id")
    e.add_argument("--name", default="", help="display name")
    e.add_argument("--meta", action="append", help="metadata key=value (repeatable)")
    e.add_argument("--replace", action="store_true", help="replace existing templates")
    e.add_argument("--add-to-existing", action="store_true",
                   help="under an existing person id: add a photo that does not look like them (below the match "
                   "threshold) and rename them to --name (refused without it)")
    e.add_argument("--create", action="store_true", help="create the watchlist if missing")
    e.add_argument("--strict", action="store_true", help="refuse photos with several faces (default: the dominant one)")
    e.add_argument("images", nargs="+")
    e.set_defaults(func=lazy(m, "cmd_enroll"))

    q = sub.add_parser("matches", help="query match history, or --follow live matches")
    _client_args(q)
    q.add_argument("--follow", action="store_true", help="stream live matches until interrupted")
    q.add_argument("--camera", default="")
    q.add_argument("--watchlist", default="")
    q.add_argument("--person", default="")
    q.add_argument("--since", default="", help="ISO time, Unix seconds, or relative like 10m / 2h / 1d")
    q.add_argument("--min-score", type=float, default=0.0)
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--thumbnails", metavar="DIR", help="save event thumbnails as JPEG files here")
    q.set_defaults(func=lazy(m, "cmd_matches"))

    r = sub.add_parser("search", help="search the watchlists with a photo")
    _client_args(r)
    r.add_argument("--top-k", type=int, default=5)
    r.add_argument("--watchlist", action="append", default=[])
    r.add_argument("image")
    r.set_defaults(func=lazy(m, "cmd_search"))

    v = sub.add_parser("verify", help="are two photos the same person?")
    _client_args(v)
    v.add_argument("image_a")
    v.add_argument("image_b")
    v.set_defaults(func=lazy(m, "cmd_verify"))

    c = sub.add_parser("cameras", help="list, add or remove cameras on the server")
    _client_args(c)
    c.add_argument("action", choices=["list", "add", "remove"])
    c.add_argument("camera", nargs="?", help="camera id (add/remove)")
    c.add_argument("uri", nargs="?", default="push", help="rtsp://..., file path, or push")
    c.add_argument("--option", action="append", default=[], help="key=value (fps, loop, realtime)")
    c.set_defaults(func=lazy(m, "cmd_cameras"))

    w = sub.add_parser("watchlists", help="list, create or delete watchlists")
    _client_args(w)
    w.add_argument("action", choices=["list", "create", "delete", "persons"])
    w.add_argument("name", nargs="?")
    w.set_defaults(func=lazy(m, "cmd_watchlists"))


def _grpc_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @wraps(fn)
    def run(args: argparse.Namespace) -> int:
        import grpc

        from engine.cli.common import setup_logging

        setup_logging(getattr(args, "verbose", 0))
        try:
            return fn(args)
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            print(f"faceengine: error: {code}: {exc.details()}", file=sys.stderr)
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                print(f"  is the server running at {args.server}? start it with `faceengine serve`", file=sys.stderr)
            return 1
        except BrokenPipeError:
            raise  # the reader went away (`| head`): main() ends quietly
        except OSError as exc:
            print(f"faceengine: error: {exc}", file=sys.stderr)
            return 1

    return run


def _client(args: argparse.Namespace):  # noqa: ANN202
    from engine.client import Client

    return Client(args.server, args.token, args.ca_cert, args.client_cert, args.client_key)


def _read(path: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise OSError(f"{path}: no such file")
    return p.read_bytes()


def parse_since(s: str) -> float:
    if not s:
        return 0.0
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if s[-1] in units and s[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(s[:-1]) * units[s[-1]]
    try:
        return float(s)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError as exc:
        raise OSError(f"--since {s!r}: use ISO time, Unix seconds or 10m/2h/1d") from exc
    return (t if t.tzinfo else t.astimezone()).timestamp()


def _fmt_time(t: float) -> str:
    return dt.datetime.fromtimestamp(t).isoformat(timespec="seconds")


def _event_json(e: Any) -> dict[str, Any]:
    return {"event_id": e.event_id, "camera_id": e.camera_id, "time": e.timestamp, "watchlist": e.watchlist,
            "person_id": e.person_id, "name": e.display_name, "score": round(e.score, 4),
            "box": [round(v, 1) for v in (e.box.x1, e.box.y1, e.box.x2, e.box.y2)], "track_id": e.track_id,
            "update": e.update, "thumbnail_bytes": len(e.thumbnail)}


def _print_event(e: Any, as_json: bool) -> None:
    if as_json:
        jprint(_event_json(e))
    else:
        tag = " (updated)" if e.update else ""
        print(f"{_fmt_time(e.timestamp)} camera={e.camera_id} {e.display_name} [{e.watchlist}/{e.person_id}] "
              f"score={e.score:.3f} track={e.track_id}{tag}", flush=True)


class _StoppableFrames:
    """The frames iterator gRPC's sending thread pulls from; `stop()` makes it end and waits until that
    thread has left the video reader (OpenCV/FFmpeg code running in a daemon thread while the
    interpreter exits aborts the process: 'FATAL: exception not rethrown', exit -6)."""

    def __init__(self, frames: Any) -> None:
        self._frames = frames
        self._stopped = threading.Event()
        self._idle = threading.Event()
        self._idle.set()

    def __iter__(self) -> _StoppableFrames:
        return self

    def __next__(self) -> Any:
        if self._stopped.is_set():
            raise StopIteration
        self._idle.clear()
        try:
            return next(self._frames)
        finally:
            self._idle.set()

    def stop(self, wait_s: float = 10.0) -> None:
        self._stopped.set()
        self._idle.wait(wait_s)


_CAMERA_GONE = ("NOT_FOUND", "PERMISSION_DENIED")  # frame errors about the camera, not the frame


@_grpc_errors
def cmd_stream(args: argparse.Namespace) -> int:
    from engine.client import video_frames

    # the source first: a missing file is one line of error, and no camera is registered for it
    frames = video_frames(args.source, args.camera, realtime=not args.fast, loop=args.loop,
                          max_frames=args.max_frames)
    with _client(args) as c:
        c.ensure_push_camera(args.camera)
        sent = processed = dropped = faces = errors = 0
        seen_events: set[str] = set()
        t0 = time.monotonic()
        last = None
        pump = _StoppableFrames(frames)
        call = c.stream(pump)
        try:
            for res in call:
                sent = max(sent, res.sequence)
                last = res
                if res.HasField("error"):
                    if res.error.code_name == "RESOURCE_EXHAUSTED":
                        dropped += 1
                    elif res.error.code_name in _CAMERA_GONE:  # every later frame would fail the same way: stop
                        call.cancel()
                        print(f"faceengine: error: frame {res.sequence}: {res.error.code_name}: {res.error.message}; "
                              f"stopped (an admin can register it: faceengine cameras add {args.camera} push)",
                              file=sys.stderr)
                        return 1
                    else:
                        errors += 1
                        print(f"frame {res.sequence}: {res.error.code_name}: {res.error.message}", file=sys.stderr)
                    continue
                processed += 1
                faces += len(res.faces)
                for f in res.faces:
                    if f.HasField("match") and f.match.event_id not in seen_events:
                        seen_events.add(f.match.event_id)
                        m = f.match
                        if args.json:
                            jprint({"frame": res.sequence, "camera_id": res.camera_id, "event_id": m.event_id,
                                    "person_id": m.person_id, "name": m.display_name, "watchlist": m.watchlist,
                                    "score": round(m.score, 4), "track_id": f.track_id})
                        else:
                            print(f"frame {res.sequence}: MATCH {m.display_name} [{m.watchlist}/{m.person_id}] "
                                  f"score={m.score:.3f} track={f.track_id}", flush=True)
                if args.faces and not args.json:
                    print(f"frame {res.sequence}: {len(res.faces)} faces, latency {res.latency_ms:.0f} ms")
        finally:  # never leave gRPC's sending thread inside the video reader when the process exits
            pump.stop()
        dt_s = time.monotonic() - t0
        summary = {"camera_id": args.camera, "frames_sent": sent, "frames_processed": processed,
                   "frames_dropped": dropped, "frame_errors": errors, "faces": faces, "matches": len(seen_events),
                   "seconds": round(dt_s, 2), "fps": round(processed / dt_s, 2) if dt_s else 0.0,
                   "server_dropped_total": last.drops.frames_dropped if last else 0}
        if args.json:
            jprint({"summary": summary})
        else:
            print(f"sent {sent} frames, processed {processed}, dropped {dropped}, errors {errors}, faces {faces}, "
                  f"matches {len(seen_events)} in {dt_s:.1f}s", file=sys.stderr)
    return 0


@_grpc_errors
def cmd_enroll(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.create:
            c.ensure_watchlist(args.watchlist)
        meta = dict(kv.split("=", 1) for kv in args.meta or [] if "=" in kv)
        p = c.enroll(args.watchlist, args.person, [_read(i) for i in args.images], args.name, meta, args.replace,
                     args.strict, args.add_to_existing)
        for note in p.notes:
            print(f"note: {note}", file=sys.stderr)
        if args.json:
            jprint({"watchlist": p.watchlist, "person_id": p.person_id, "name": p.display_name,
                    "templates": p.template_count, "notes": list(p.notes)})
        else:
            print(f"enrolled {p.display_name} [{p.watchlist}/{p.person_id}]: {p.template_count} template(s)")
    return 0


@_grpc_errors
def cmd_matches(args: argparse.Namespace) -> int:
    from engine.service.proto import pb

    with _client(args) as c:
        if args.follow:
            flt = pb.MatchFilter(camera_ids=[args.camera] if args.camera else [],
                                 watchlists=[args.watchlist] if args.watchlist else [], min_score=args.min_score)
            try:
                for e in c.matches.SubscribeMatches(flt, metadata=c.metadata):
                    if args.person and e.person_id != args.person:
                        continue
                    _save_thumb(args, e)
                    _print_event(e, args.json)
            except KeyboardInterrupt:
                pass
            return 0
        token, shown = "", 0
        while shown < args.limit:
            resp = c.matches.QueryMatches(pb.QueryMatchesRequest(
                camera_id=args.camera, watchlist=args.watchlist, person_id=args.person,
                since=parse_since(args.since), min_score=args.min_score, page_size=min(100, args.limit - shown),
                page_token=token, include_thumbnails=bool(args.thumbnails)), metadata=c.metadata)
            for e in resp.events:
                _save_thumb(args, e)
                _print_event(e, args.json)
            shown += len(resp.events)
            token = resp.next_page_token
            if not token:
                break
    return 0


def _save_thumb(args: argparse.Namespace, e: Any) -> None:
    if args.thumbnails and e.thumbnail:
        d = Path(args.thumbnails)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{e.event_id}.jpg").write_bytes(e.thumbnail)


@_grpc_errors
def cmd_search(args: argparse.Namespace) -> int:
    from engine.service.proto import pb

    with _client(args) as c:
        r = c.matches.SearchByImage(pb.SearchRequest(image=pb.Image(encoded=_read(args.image)), top_k=args.top_k,
                                                     watchlists=args.watchlist), metadata=c.metadata)
        for h in r.hits:
            if args.json:
                jprint({"watchlist": h.watchlist, "person_id": h.person_id, "name": h.display_name,
                        "score": round(h.score, 4), "match": h.is_match})
            else:
                print(f"{h.score:.3f} {'MATCH' if h.is_match else '     '} {h.display_name} "
                      f"[{h.watchlist}/{h.person_id}]")
        if not r.hits and not args.json:
            print("no candidates")
    return 0


@_grpc_errors
def cmd_verify(args: argparse.Namespace) -> int:
    from engine.service.proto import pb

    with _client(args) as c:
        r = c.matches.Verify(pb.VerifyRequest(image_a=pb.Image(encoded=_read(args.image_a)),
                                              image_b=pb.Image(encoded=_read(args.image_b))), metadata=c.metadata)
        if args.json:
            jprint({"score": round(r.score, 4), "same_person": r.same_person, "threshold": r.threshold})
        else:
            print(f"score={r.score:.3f} threshold={r.threshold:.3f} -> {'SAME' if r.same_person else 'DIFFERENT'}")
    return 0


@_grpc_errors
def cmd_cameras(args: argparse.Namespace) -> int:
    from engine.service.proto import pb

    with _client(args) as c:
        if args.action in ("add", "remove") and not args.camera:
            raise OSError(f"cameras {args.action}: name the camera, e.g. faceengine cameras {args.action} door-1")
        if args.action == "add":
            opts = dict(o.split("=", 1) for o in args.option if "=" in o)
            cam = c.cameras.AddCamera(pb.AddCameraRequest(camera_id=args.camera, uri=args.uri, options=opts),
                                      metadata=c.metadata)
            if args.json:
                jprint({"added": cam.camera_id, "uri": cam.uri, "kind": cam.kind, "state": cam.state})
            else:
                what = cam.kind if cam.uri == cam.kind else f"{cam.kind} {cam.uri}"  # the URI shown is redacted
                print(f"added camera {cam.camera_id} ({what}, {cam.state})")
        elif args.action == "remove":
            c.cameras.RemoveCamera(pb.CameraRequest(camera_id=args.camera), metadata=c.metadata)
            if args.json:
                jprint({"removed": args.camera})
            else:
                print(f"removed camera {args.camera}")
        else:
            for cam in c.cameras.ListCameras(pb.ListCamerasRequest(), metadata=c.metadata).cameras:
                if args.json:
                    jprint({"camera_id": cam.camera_id, "uri": cam.uri, "kind": cam.kind, "state": cam.state,
                            "fps_in": round(cam.fps_in, 2), "fps_processed": round(cam.fps_processed, 2),
                            "frames_in": cam.frames_in, "frames_processed": cam.frames_processed,
                            "frames_dropped": cam.frames_dropped, "last_error": cam.last_error,
                            "reconnects": cam.reconnects})
                else:
                    print(f"{cam.camera_id:<16}{cam.kind:<6}{cam.state:<11}in={cam.fps_in:5.1f}fps "
                          f"out={cam.fps_processed:5.1f}fps dropped={cam.frames_dropped} "
                          f"reconnects={cam.reconnects} {cam.uri} {cam.last_error}")
    return 0


@_grpc_errors
def cmd_watchlists(args: argparse.Namespace) -> int:
    from engine.service.proto import pb

    with _client(args) as c:
        if args.action == "create":
            c.watchlists.CreateWatchlist(pb.CreateWatchlistRequest(name=args.name), metadata=c.metadata)
        elif args.action == "delete":
            c.watchlists.DeleteWatchlist(pb.WatchlistRequest(name=args.name), metadata=c.metadata)
        elif args.action == "persons":
            token = ""
            while True:
                r = c.watchlists.ListPersons(pb.ListPersonsRequest(watchlist=args.name, page_token=token),
                                             metadata=c.metadata)
                for p in r.persons:
                    print(f"{p.person_id}\t{p.display_name}\t{p.template_count} templates")
                token = r.next_page_token
                if not token:
                    break
        else:
            for w in c.watchlists.ListWatchlists(pb.Empty(), metadata=c.metadata).watchlists:
                print(f"{w.name}\t{w.person_count} persons\t{w.description}")
    return 0
