"""`faceengine demo`: the main job on embedded defaults, end to end, on the shipped test media.

Fetches models from a local mirror, starts the gRPC server on loopback (SQLite store, no config
file), enrols a person from one frame of a real video, streams the video as a camera gateway,
and prints the live match events and the stored history.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.cli.common import add_config_args, load_config


def register(sub: Any, lazy: Callable[[str, str], Callable[[argparse.Namespace], int]]) -> None:
    d = sub.add_parser("demo", help="fetch models, start the server, enrol from a video frame, stream it, show matches")
    add_config_args(d)
    d.add_argument("--media", default=str(Path.cwd().parent / "shared" / "testdata"),
                   help="test media folder (default ../shared/testdata)")
    d.add_argument("--video", default="videos/stage_360p.mp4", help="video under --media to stream")
    d.add_argument("--enroll-frame", type=int, default=100, help="frame whose largest face is enrolled")
    d.add_argument("--keep", action="store_true", help="keep serving after the demo (Ctrl-C to stop)")
    d.set_defaults(func=lazy("engine.cli.demo_cmds", "cmd_demo"))


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    import cv2

    from engine.client import Client, encode_jpeg, video_frames
    from engine.errors import FaceEngineError
    from engine.models.registry import ModelRegistry
    from engine.service.proto import pb
    from engine.service.server import FaceEngineServer

    cfg = load_config(args)
    if args.db is None:
        cfg.store.path = str(Path(tempfile.mkdtemp(prefix="faceengine-demo-")) / "demo.db")
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    cfg.auth.enabled = False  # loopback-only development mode
    mirror = args.mirror or cfg.models.mirror or str(Path.cwd().parent / "shared" / "models")
    reg = ModelRegistry(cfg.models.dir, None, cfg.models.verify_hash,
                        allow_unverified_local=cfg.models.allow_unverified_local)
    missing = [n for n in (cfg.models.detector, cfg.models.embedder) if reg.status(n) != "ok"]
    if missing:
        say(f"fetching {', '.join(missing)} from {mirror} into {cfg.models.dir}")
        reg.fetch(missing, mirror=mirror if Path(mirror).is_dir() else None, progress=say)
    video = Path(args.media) / args.video
    if not video.is_file():
        raise FaceEngineError(f"{video} not found: pass --media DIR (the shared testdata folder)")

    srv = FaceEngineServer(cfg).start()
    say(f"server on {srv.address} (store {cfg.store.path}, detector {cfg.models.detector}, "
        f"embedder {cfg.models.embedder}, provider {srv.analyzer.provider})")
    try:
        with Client(srv.address) as c:
            cap = cv2.VideoCapture(str(video))
            cap.set(cv2.CAP_PROP_POS_FRAMES, args.enroll_frame)
            ok, frame = cap.read()
            cap.release()
            if not ok:
                raise FaceEngineError(f"cannot read frame {args.enroll_frame} of {video}")
            dets = srv.analyzer.detect_batch([frame])[0]
            if not len(dets):
                raise FaceEngineError(f"no face in frame {args.enroll_frame}; pick another with --enroll-frame")
            x1, y1, x2, y2 = dets.boxes[int(dets.sizes.argmax())]
            w, h = x2 - x1, y2 - y1
            crop = frame[max(0, int(y1 - h)) : int(y2 + h), max(0, int(x1 - w)) : int(x2 + w)]
            c.ensure_watchlist("demo")
            p = c.enroll("demo", "person-1", [encode_jpeg(crop)], f"Person seen in frame {args.enroll_frame}")
            say(f"enrolled {p.display_name} [demo/{p.person_id}] from a face cut out of frame {args.enroll_frame}")
            photo = Path(args.media) / "images" / "obama.jpg"
            if photo.is_file():  # he sits in the audience near the end of stage_360p.mp4
                p = c.enroll("demo", "obama", [photo.read_bytes()], "Barack Obama")
                say(f"enrolled {p.display_name} [demo/{p.person_id}] from {photo.name}")
            c.ensure_push_camera("demo-cam")
            live: list[Any] = []

            def follow() -> None:
                try:
                    for e in c.matches.SubscribeMatches(pb.MatchFilter()):
                        live.append(e)
                        tag = "score rose" if e.update else "NEW MATCH"
                        say(f"live: {tag}: {e.display_name} on {e.camera_id} score={e.score:.3f} "
                            f"track={e.track_id} frame={e.frame_sequence} thumbnail={len(e.thumbnail)} B")
                except Exception:  # noqa: BLE001 - the stream ends when the server stops
                    pass

            threading.Thread(target=follow, daemon=True).start()
            time.sleep(0.3)
            say(f"streaming {video.name} as camera demo-cam over gRPC at its frame rate ...")
            t0 = time.monotonic()
            n = faces = 0
            for res in c.stream(video_frames(str(video), "demo-cam", realtime=True)):
                n += 1
                faces += len(res.faces)
            dt = time.monotonic() - t0
            say(f"{n} frames, {faces} faces in {dt:.1f}s ({n / dt:.1f} fps)")
            time.sleep(0.5)
            hist = c.matches.QueryMatches(pb.QueryMatchesRequest(camera_id="demo-cam"))
            say(f"history: {len(hist.events)} match event(s) stored")
            for e in hist.events:
                print(f"  {time.strftime('%H:%M:%S', time.localtime(e.timestamp))} {e.display_name} "
                      f"[{e.watchlist}/{e.person_id}] camera={e.camera_id} score={e.score:.3f} track={e.track_id}")
            if not hist.events:
                say("no match: the enrolled person was not recognised")
                return 1
        if args.keep:
            say("serving; Ctrl-C to stop")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    finally:
        srv.stop()
    print("demo ok", file=sys.stderr)
    return 0
