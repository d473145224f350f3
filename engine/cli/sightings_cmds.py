"""`faceengine sightings ...`: search every face the cameras saw by photo, list recurring unknowns,
enrol one, erase a range (against a running server with sightings.enabled)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.cli.client_cmds import _client, _client_args, _fmt_time, _grpc_errors, _read, parse_since
from engine.cli.common import jprint


def register(sub: Any, lazy: Callable[[str, str], Callable[[argparse.Namespace], int]]) -> None:
    m = "engine.cli.sightings_cmds"
    s = sub.add_parser("sightings", help="search every face the cameras saw by photo; recurring unknowns")
    ssub = s.add_subparsers(dest="sightings_command", required=True, metavar="ACTION")

    def _range(p: argparse.ArgumentParser, since: str = "") -> None:
        p.add_argument("--since", default=since, help="ISO time, Unix seconds, or relative like 30m / 24h / 7d")
        p.add_argument("--until", default="", help="end of the range (same forms); default now")
        p.add_argument("--camera", action="append", default=[], help="only this camera (repeatable)")

    q = ssub.add_parser("search", help="where and when was this person seen? (a timeline, oldest first)")
    _client_args(q)
    _range(q, "24h")
    q.add_argument("--top-k", type=int, default=20)
    q.add_argument("--min-score", type=float, default=0.0, help="0 = the server's calibrated threshold")
    q.add_argument("--thumbnails", metavar="DIR", help="save each hit's thumbnail as a JPEG file here")
    q.add_argument("photo")
    q.set_defaults(func=lazy(m, "cmd_search"))

    c = ssub.add_parser("clusters", help="recurring unknowns: unmatched sightings grouped by person")
    _client_args(c)
    _range(c, "7d")
    c.add_argument("--min-sightings", type=int, default=2)
    c.add_argument("--max", type=int, default=50, help="most clusters listed")
    c.set_defaults(func=lazy(m, "cmd_clusters"))

    e = ssub.add_parser("enroll", help="name a recurring unknown: enrol a cluster into a watchlist (admin)")
    _client_args(e)
    _range(e, "7d")
    e.add_argument("--watchlist", required=True)
    e.add_argument("--person", required=True, help="person id")
    e.add_argument("--name", default="", help="display name")
    e.add_argument("--templates", type=int, default=5, help="best members enrolled as templates")
    e.add_argument("cluster", help="cluster id from `faceengine sightings clusters` (same --since)")
    e.set_defaults(func=lazy(m, "cmd_enroll"))

    x = ssub.add_parser("erase", help="erase the sightings of a time range and/or cameras (admin)")
    _client_args(x)
    _range(x)
    x.add_argument("--all", action="store_true", help="erase every sighting (no range given)")
    x.set_defaults(func=lazy(m, "cmd_erase"))


def _hit_json(h: Any, thumb: str = "") -> dict[str, Any]:
    s = h.sighting
    out = {"sighting_id": s.sighting_id, "camera_id": s.camera_id, "first_seen": s.first_seen,
           "last_seen": s.last_seen, "score": round(h.score, 4), "track_id": s.track_id,
           "box": [round(v, 1) for v in (s.box.x1, s.box.y1, s.box.x2, s.box.y2)], "quality": round(s.quality, 3),
           "watchlist": s.watchlist, "person_id": s.person_id}
    if thumb:
        out["thumbnail"] = thumb
    return out


@_grpc_errors
def cmd_search(args: argparse.Namespace) -> int:
    from engine.service.proto import pb, spb

    with _client(args) as c:
        r = c.sightings.SearchSightings(spb.SearchSightingsRequest(
            image=pb.Image(encoded=_read(args.photo)), since=parse_since(args.since),
            until=parse_since(args.until), camera_ids=args.camera, top_k=args.top_k, min_score=args.min_score,
            include_thumbnails=bool(args.thumbnails)), metadata=c.metadata)
        for h in r.timeline:
            thumb = ""
            if args.thumbnails and h.sighting.thumbnail:
                out = Path(args.thumbnails)
                out.mkdir(parents=True, exist_ok=True)
                thumb = str(out / f"sighting-{h.sighting.sighting_id}.jpg")
                Path(thumb).write_bytes(h.sighting.thumbnail)
            if args.json:
                jprint(_hit_json(h, thumb))
            else:
                s = h.sighting
                who = f" [{s.watchlist}/{s.person_id}]" if s.person_id else ""
                print(f"{_fmt_time(s.first_seen)} .. {_fmt_time(s.last_seen)} camera={s.camera_id} "
                      f"score={h.score:.3f} track={s.track_id} sighting={s.sighting_id}{who}")
        if not r.hits and not args.json:
            print(f"not seen (no sighting scored {r.threshold:.3f} or more)")
    return 0


def _clusters(c: Any, args: argparse.Namespace, thumbnails: bool = False) -> Any:
    from engine.service.proto import spb

    return c.sightings.ListUnknownClusters(spb.ListClustersRequest(
        since=parse_since(args.since), until=parse_since(args.until),
        min_sightings=getattr(args, "min_sightings", 2), max_clusters=getattr(args, "max", 0) or 1000,
        include_thumbnails=thumbnails), metadata=c.metadata)


@_grpc_errors
def cmd_clusters(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = _clusters(c, args)
        for k in r.clusters:
            if args.json:
                jprint({"cluster_id": k.cluster_id, "sightings": k.sightings, "cameras": list(k.camera_ids),
                        "first_seen": k.first_seen, "last_seen": k.last_seen})
            else:
                print(f"{k.cluster_id} sightings={k.sightings} cameras={','.join(k.camera_ids)} "
                      f"{_fmt_time(k.first_seen)} .. {_fmt_time(k.last_seen)}")
        if not r.clusters and not args.json:
            print("no recurring unknowns")
    return 0


@_grpc_errors
def cmd_enroll(args: argparse.Namespace) -> int:
    from engine.service.proto import spb

    with _client(args) as c:
        found = [k for k in _clusters(c, args).clusters if k.cluster_id == args.cluster]
        if not found:
            raise OSError(f"no cluster {args.cluster!r} in that range (list them with `faceengine sightings "
                          "clusters` and the same --since; a new sighting changes a cluster's id)")
        r = c.sightings.EnrollCluster(spb.EnrollClusterRequest(
            sighting_ids=list(found[0].sighting_ids), watchlist=args.watchlist, person_id=args.person,
            display_name=args.name, max_templates=args.templates), metadata=c.metadata)
        if args.json:
            jprint({"watchlist": r.person.watchlist, "person_id": r.person.person_id,
                    "templates": r.person.template_count, "sightings_named": r.sightings_named})
        else:
            print(f"enrolled {r.person.display_name} [{r.person.watchlist}/{r.person.person_id}] with "
                  f"{r.person.template_count} templates; {r.sightings_named} sightings named")
    return 0


@_grpc_errors
def cmd_erase(args: argparse.Namespace) -> int:
    from engine.service.proto import spb

    with _client(args) as c:
        r = c.sightings.EraseSightings(spb.EraseSightingsRequest(
            since=parse_since(args.since), until=parse_since(args.until), camera_ids=args.camera, all=args.all),
            metadata=c.metadata)
        if args.json:
            jprint({"erased": r.erased})
        else:
            print(f"erased {r.erased} sightings")
    return 0
