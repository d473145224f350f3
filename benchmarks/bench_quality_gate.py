"""Quality gate (`pipeline.min_quality`) against match correctness, per embedder, on the same probes.

Runs `faceengine eval watchlist`'s protocol (engine.evaluation.watchlist.evaluate) once per embedder with
the same data, seed, probes and conditions, collecting every detected mated probe's quality factors and
whether its rank-1 was the mate. The quality factors depend on the detector and the frame only, so both
embedders see the same faces with the same scores (checked); only correctness differs. Then, per embedder
(engine.evaluation.quality_gate): the share of right and wrong rank-1s passing the gate, which factor
predicts a wrong rank-1, and the gate giving the same trade-off as the reference embedder at its gate.

Writes `<out>.json` (summary and machine) and `<out>-records.json` (the raw per-probe records, columnar),
so the analysis can be redone without the models (`--analyse-only`).

    .venv/bin/python benchmarks/bench_quality_gate.py --max-probes 200 --seed 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LFW, RESULTS, bench_config, loadavg, machine  # noqa: E402

from engine.evaluation.quality_gate import QUALITY_COLUMNS, analyse, load_records  # noqa: E402
from engine.evaluation.watchlist import CONDITIONS, evaluate, print_progress  # noqa: E402
from engine.vision.analyzer import FaceAnalyzer  # noqa: E402


def collect(embedders: Sequence[str], data: Path, max_probes: int, seed: int) -> dict[str, Any]:
    """Run the watchlist protocol per embedder; return the columnar records and per-embedder metadata."""
    columns: dict[str, list[Any]] = {}
    per: dict[str, Any] = {}
    for name in embedders:
        cfg = bench_config()
        cfg.models.embedder = name
        analyzer = FaceAnalyzer.from_config(cfg)
        recs: list[dict[str, object]] = []
        t0 = time.monotonic()
        res = evaluate(analyzer, cfg, data, list(CONDITIONS.values()), max_probes=max_probes, seed=seed,
                       progress=print_progress, records=recs)
        quality = {c: [round(float(r[c]), 5) if c != "condition" else r[c] for r in recs] for c in QUALITY_COLUMNS}
        if not columns:
            columns = quality
        elif quality["condition"] != columns["condition"] or any(
                max((abs(a - b) for a, b in zip(quality[c], columns[c], strict=True)), default=0.0) > 1e-4
                for c in QUALITY_COLUMNS if c != "condition"):
            raise RuntimeError(f"{name}: the probes' quality factors differ from {embedders[0]}'s (same seed)")
        columns[f"rank1_{name}"] = [bool(r["rank1"]) for r in recs]
        columns[f"top_{name}"] = [round(float(r["top"]), 5) for r in recs]
        per[name] = {"seconds": round(time.monotonic() - t0, 1), "match_threshold": res.threshold,
                     "detector": res.detector, "enrolled": res.enrolled,
                     "conditions": [c.__dict__ for c in res.conditions]}
        print(f"{name}: {len(recs)} records in {per[name]['seconds']} s", file=sys.stderr, flush=True)
    return {"columns": columns, "embedders": per}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(LFW), help="person/image.jpg folder (default: shared lfw-dev)")
    p.add_argument("--embedders", default="sface,mobilefacenet", help="comma list of manifest embedders")
    p.add_argument("--reference", default="mobilefacenet", help="embedder the gate was calibrated with")
    p.add_argument("--gate", type=float, default=0.30, help="the reference embedder's gate (min_quality)")
    p.add_argument("--max-probes", type=int, default=200, help="mated and stranger probes each, per condition")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "quality-gate"))
    p.add_argument("--analyse-only", action="store_true", help="re-analyse <out>-records.json, no models run")
    args = p.parse_args(argv)
    out = Path(args.out)
    rec_path = out.with_name(out.name + "-records.json")
    embedders = [e.strip() for e in args.embedders.split(",") if e.strip()]
    min_face = bench_config().pipeline.min_face_size
    if args.analyse_only:
        raw = json.loads(rec_path.read_text())
        summary = json.loads(out.with_name(out.name + ".json").read_text())
    else:
        meta_machine = machine()
        t0 = time.monotonic()
        raw = collect(embedders, Path(args.data), args.max_probes, args.seed)
        meta_machine["loadavg_at_end"] = loadavg()
        raw["meta"] = {"data": Path(args.data).name, "seed": args.seed, "max_probes": args.max_probes,
                       "conditions": list(CONDITIONS), "min_face_size": min_face}
        rec_path.write_text(json.dumps(raw, separators=(",", ":")) + "\n")
        summary = {"meta": {**raw["meta"], "machine": meta_machine, "total_s": round(time.monotonic() - t0, 1),
                            "command": "benchmarks/bench_quality_gate.py " + " ".join(argv or sys.argv[1:])}}
        out.with_name(out.name + ".json").write_text(json.dumps(summary, indent=2) + "\n")
    records = load_records(raw)
    thresholds = {n: float(e["match_threshold"]) for n, e in raw["embedders"].items()}
    summary["analysis"] = analyse(records, embedders, args.reference, args.gate, raw["meta"]["min_face_size"],
                                  thresholds)
    summary["embedders"] = raw["embedders"]
    out.with_name(out.name + ".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["analysis"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
