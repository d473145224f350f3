"""Offline, in-process commands: models, config, enroll-local, identify, eval."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from engine.cli.common import jprint, load_config
from engine.cli.progress import note, progress_bar
from engine.errors import FaceEngineError, InvalidImageError
from engine.models.registry import ModelRegistry

VIDEO_EXT = {".mp4", ".avi", ".mkv", ".mov", ".gif", ".webm", ".m4v", ".ts"}


def _registry(cfg) -> ModelRegistry:  # noqa: ANN001
    return ModelRegistry.from_config(cfg.models)


def cmd_models_list(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    reg = _registry(cfg)
    rows = []
    for name, spec in reg.specs.items():
        status = reg.status(name)
        if args.json:
            jprint({"name": name, "task": spec.task, "file": spec.file, "status": status, "size": spec.size,
                    "sha256": spec.sha256, "license": spec.license, "dim": spec.dim})
        else:
            rows.append((name, spec.task, status, f"{spec.size / 1e6:.1f} MB", spec.license))
    if not args.json:
        print(f"model directory: {reg.model_dir}")
        print(f"{'name':<14}{'task':<10}{'status':<10}{'size':<10}licence")
        for r in rows:
            print(f"{r[0]:<14}{r[1]:<10}{r[2]:<10}{r[3]:<10}{r[4]}")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    reg = _registry(cfg)
    names = args.names or None
    if names is None and not (args.mirror or cfg.models.mirror):
        names = [cfg.models.detector, cfg.models.embedder]
    reg.fetch(names, mirror=args.mirror or cfg.models.mirror or None, progress=lambda m: print(m, file=sys.stderr),
              force=args.force)
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from engine.gallery.calibration import effective_min_quality, effective_threshold
    from engine.models.registry import load_manifest
    from engine.settings import Batching, DevicePlan

    cfg = load_config(args)
    print(cfg.to_toml())
    device = DevicePlan.resolve(cfg.runtime)
    b = Batching.resolve(cfg.pipeline, device)
    where = "GPU" if device.gpu else "CPU"
    print(f"# effective batching: {b.batch_size} frames, {b.batch_wait_ms:g} ms wait ({where})")
    spec = load_manifest().get(cfg.models.embedder)
    if spec is None:
        print(f"# effective quality gate: unknown embedder {cfg.models.embedder!r}")
        print(f"# effective match threshold: unknown embedder {cfg.models.embedder!r}")
    else:
        q, qhow = effective_min_quality(cfg, spec)
        print(f"# effective quality gate: {q:.2f} ({qhow})")
        thr, how = effective_threshold(cfg, spec)
        print(f"# effective match threshold: {thr:.4f} ({how})")
    return 0


def _open_gallery(cfg, analyzer):  # noqa: ANN001, ANN202
    from engine.gallery.gallery import Gallery
    from engine.store import open_store

    store = open_store(cfg.store.target(), cfg.store)
    return Gallery(store, analyzer.dim, analyzer.model_name, cfg.gallery.index)


def cmd_enroll_local(args: argparse.Namespace) -> int:
    """Offline enrolment through the same `WatchlistService` as gRPC EnrollPerson: the same checks and
    refusals, and the person's photo is kept."""
    from engine.errors import InvalidArgumentError, NotFoundError
    from engine.runtime import build_runtime
    from engine.vision.analyzer import FaceAnalyzer
    from engine.vision.image import read_image

    cfg = load_config(args)
    meta: dict[str, str] = {}
    for kv in args.meta or []:
        key, eq, value = kv.partition("=")
        if not eq:
            raise InvalidArgumentError(f"--meta {kv[:64]!r} must be key=value")
        meta[key] = value
    lim = cfg.limits
    images = [(str(path), lambda path=path: read_image(path, lim.max_image_side, lim.max_image_pixels))
              for path in args.images]
    rt = build_runtime(cfg, analyzer=FaceAnalyzer.from_config(cfg, _registry(cfg)), engine=False)
    try:
        service = rt.watchlists
        if args.create and not any(w.name == args.watchlist for w in rt.gallery.list_watchlists()):
            service.create_watchlist(args.watchlist)
        try:
            done = service.enroll(args.watchlist, args.person, images, args.name or "", meta, strict=args.strict,
                                  replace=args.replace, add_to_existing=args.add_to_existing,
                                  on_note=lambda text: print(f"note: {text}", file=sys.stderr))
        except NotFoundError as exc:
            if args.create:
                raise
            raise NotFoundError(f"{exc}; add --create to create it") from None
    finally:
        rt.close()
    person = done.person
    print(f"enrolled {person.person_id} ({person.display_name}) in {args.watchlist}: "
          f"{person.template_count} templates", file=sys.stderr)
    if args.json:
        jprint({"watchlist": args.watchlist, "person_id": person.person_id, "templates": person.template_count,
                "notes": done.notes})
    return 0


def _faces_json(res, gallery, cfg) -> list[dict]:  # noqa: ANN001
    from engine.gallery.calibration import configured_threshold

    faces = []
    thr = configured_threshold(cfg)
    matches = gallery.search(res.embeddings, 1, thr) if gallery else [[]] * len(
        res.detections)
    for i in range(len(res.detections)):
        face = {"box": [round(float(v), 1) for v in res.detections.boxes[i]],
                "score": round(float(res.detections.scores[i]), 4),
                "landmarks": res.detections.landmarks[i].round(1).tolist(), "match": None}
        if matches[i]:
            m = matches[i][0]
            face["match"] = {"watchlist": m.watchlist, "person_id": m.person_id, "name": m.display_name,
                             "score": round(m.score, 4)}
        faces.append(face)
    return faces


def cmd_identify(args: argparse.Namespace) -> int:
    from engine.vision.analyzer import FaceAnalyzer
    from engine.vision.image import read_image

    cfg = load_config(args)
    if args.gallery:
        cfg.store.url = args.gallery
    analyzer = FaceAnalyzer.from_config(cfg, _registry(cfg))
    target = cfg.store.target()
    gallery = _open_gallery(cfg, analyzer) if "://" in target or Path(target).exists() else None
    path = Path(args.input)
    if not path.exists():
        raise InvalidImageError(f"{path}: no such file")
    if path.suffix.lower() not in VIDEO_EXT:
        res = analyzer.analyze(read_image(path, cfg.limits.max_image_side, cfg.limits.max_image_pixels))
        faces = _faces_json(res, gallery, cfg)
        if args.json:
            jprint({"source": str(path), "faces": faces})
        else:
            _print_faces(str(path), faces)
        return 0
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InvalidImageError(f"{path}: cannot open as a video")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 0
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frame_no = 0
    bar = progress_bar(args, total, path.name, "frame")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            bar.update(1)
            if args.every > 1 and frame_no % args.every:
                frame_no += 1
                continue
            res = analyzer.analyze(frame)
            if len(res.detections):
                faces = _faces_json(res, gallery, cfg)
                if args.json:
                    jprint({"frame": frame_no, "time_s": round(frame_no / fps, 3), "faces": faces})
                else:
                    _print_faces(f"frame {frame_no} ({frame_no / fps:.2f}s)", faces)
            frame_no += 1
    finally:
        bar.close()
        cap.release()
    return 0


def _print_faces(label: str, faces: list[dict]) -> None:
    print(f"{label}: {len(faces)} face(s)")
    for f in faces:
        m = f["match"]
        who = f"{m['name']} [{m['watchlist']}/{m['person_id']}] score={m['score']:.3f}" if m else "no match"
        print(f"  box={f['box']} det={f['score']:.2f} -> {who}")


def _advance(bar: Any) -> Callable[[int, int], None]:
    """A (done, total) callback that moves `bar` to `done` of `total`."""
    def advance(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return advance


def cmd_eval_lfw(args: argparse.Namespace) -> int:
    from engine.evaluation.lfw import evaluate
    from engine.vision.analyzer import FaceAnalyzer

    cfg = load_config(args)
    cfg.detector.input_size = args.det_size
    cfg.detector.score_threshold = args.det_threshold
    cfg.detector.min_face_size = 10
    cfg.embedder.flip_augment = args.flip
    analyzer = FaceAnalyzer.from_config(cfg, _registry(cfg))
    data = Path(args.data)
    if not (data / "pairs.txt").is_file():
        raise FaceEngineError(f"{data}/pairs.txt not found: --data must hold pairs.txt and images/")
    t0 = time.monotonic()
    with progress_bar(args, None, "embedding", "image") as bar:
        res, _, _ = evaluate(analyzer, data, args.mode, progress=_advance(bar))
    dt = time.monotonic() - t0
    print(f"model: detector={analyzer.detector.name} embedder={analyzer.embedder.name} mode={args.mode} "
          f"flip={args.flip}")
    print(f"pairs: {res.pairs} in {res.folds} folds, images: {res.images}, time: {dt:.1f}s")
    print("fold accuracies: " + " ".join(f"{a:.4f}" for a in res.fold_accuracies))
    print(f"accuracy: {res.accuracy:.4f} +- {res.accuracy_std:.4f}")
    print(f"TAR@FAR=1e-3: {res.tar_at_far:.4f} at threshold {res.far_threshold:.4f}")
    print(f"no face found (fallback alignment used): {len(res.no_face)}"
          + (": " + ", ".join(res.no_face[:10]) + (" ..." if len(res.no_face) > 10 else "") if res.no_face else ""))
    if args.json:
        jprint({"accuracy": res.accuracy, "accuracy_std": res.accuracy_std, "tar_at_far_1e-3": res.tar_at_far,
                "far_threshold": res.far_threshold, "threshold": res.threshold, "no_face": res.no_face,
                "folds": res.fold_accuracies})
    print(res.summary_line())
    return 0


def cmd_eval_watchlist(args: argparse.Namespace) -> int:
    """Open-set 1:N evaluation; the last line is one JSON object."""
    from engine.evaluation.watchlist import CONDITIONS, evaluate, format_table
    from engine.vision.analyzer import FaceAnalyzer

    cfg = load_config(args)
    names = list(CONDITIONS) if args.conditions == "all" else [c.strip() for c in args.conditions.split(",") if c]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise FaceEngineError(f"unknown condition(s) {', '.join(unknown)}; known: {', '.join(CONDITIONS)}")
    data = Path(args.data)
    if not data.is_dir():
        raise FaceEngineError(f"{data} is not a folder of person/image.jpg")
    analyzer = FaceAnalyzer.from_config(cfg, _registry(cfg))
    with progress_bar(args, None, "watchlist", "face") as bar:
        res = evaluate(analyzer, cfg, data, [CONDITIONS[n] for n in names], args.max_probes, args.max_gallery,
                       args.seed, args.per_frame, lambda msg: note(bar, msg), step=_advance(bar))
    if args.table:
        print(format_table(res))
    jprint(res.as_dict())
    return 0
