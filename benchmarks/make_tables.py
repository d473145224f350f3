#!/usr/bin/env python
"""Generate the performance tables of docs/performance.md and benchmarks/README.md from benchmarks/results/*.json.

The prose quotes no figure that is not in a committed result file: every table sits between
`<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->` and is rewritten from the JSON.

    python benchmarks/make_tables.py            # rewrite the tables in place
    python benchmarks/make_tables.py --check    # exit 1 if a page differs from what the JSON gives

tests/test_bench_tables.py runs the check.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGES = (ROOT / "docs" / "performance.md", ROOT / "benchmarks" / "README.md")
CLIPS = ("multiface_1080p", "stage_360p")
MARK = re.compile(r"(<!-- bench:(?P<name>[a-z0-9_-]+):start -->\n)(?P<body>.*?)(<!-- bench:(?P=name):end -->)",
                  re.S)


def load(results: Path = RESULTS) -> dict[str, Any]:
    """Every result file by stem (pipeline-multiface_1080p, memory, faiss, cluster, ...)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def _f(v: Any, nd: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}"


def _machine(m: dict[str, Any]) -> str:
    la = m.get("loadavg_at_start", ["?"])[0], m.get("loadavg_at_end", ["?"])[0]
    v = m.get("versions", {})
    vers = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "faiss", "numpy", "opencv") if v.get(k))
    return (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, GPU: {m.get('gpu', '?')}; Python {m.get('python')}, "
            f"{vers}; load average {la[0]} at start, {la[1]} at end; {m.get('measured_at', '')}")


def _ratio(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    out = f"{r['value']:.3f} ({r['numerator']} / {r['denominator']})"
    if "verdict" in r:
        out += f", target >= {r['target']}: **{r['verdict']}**"
    return out


def _pipelines(res: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The pipeline results: the two CPU clips first, then any other (e.g. pipeline-cuda from the device kit)."""
    named = [(c, res[f"pipeline-{c}"]) for c in CLIPS if f"pipeline-{c}" in res]
    others = sorted(k for k in res if k.startswith("pipeline-") and k[len("pipeline-"):] not in CLIPS)
    return named + [(k[len("pipeline-"):], res[k]) for k in others]


def summary_table(res: dict[str, Any]) -> str:
    """docs/performance.md: the headline figures, each naming both sides of its ratio."""
    pl = _pipelines(res)
    lines: list[str] = []
    if pl:
        head = "| | " + " | ".join(f"{c} ({s['meta']['size'][0]}x{s['meta']['size'][1]}, frames "
                                     f"{s['meta']['timed_frames'][0]}-{s['meta']['timed_frames'][1]}, "
                                     f"{s['meta']['rounds']} round(s))" for c, s in pl) + " |"
        lines += [head, "|---" * (len(pl) + 1) + "|"]

        def row(label: str, fn: Callable[[dict[str, Any]], str]) -> None:
            lines.append(f"| {label} | " + " | ".join(fn(s) for _, s in pl) + " |")

        def fps(s: dict[str, Any], m: str) -> str:
            return _f(s["modes"][m]["fps"]) if m in s["modes"] else "-"

        row("models (detector at its network side + embedder)", _models_cell)
        row("naive loop, 1 camera / N cameras (fps)",
            lambda s: f"{fps(s, 'naive1')} / {fps(s, 'naive' + str(s['cameras']))} ({s['cameras']} cameras)")
        row("engine in-process, pre-decoded frames, 1 / N cameras (fps)",
            lambda s: f"{fps(s, 'engine1')} / {fps(s, 'engine' + str(s['cameras']))}")
        row("speedup, 1 camera on both sides", lambda s: _ratio(s["ratios"].get("speedup_1_camera")))
        row("speedup, N cameras on both sides",
            lambda s: _ratio(s["ratios"].get(f"speedup_{s['cameras']}_cameras")))
        row("speedup, best of each", lambda s: _ratio(s["ratios"].get("speedup_best_of_each")))
        row("speedup against the peer, InsightFace FaceAnalysis (SCRFD-2.5G at 640 + the same embedder), 1 camera",
            lambda s: _ratio(s["ratios"].get("speedup_vs_insightface_1_camera")))
        row("engine in-process fed the gateways' JPEG, decoded as the server does (fps)",
            lambda s: fps(s, "engine-jpeg"))
        row("engine over gRPC, gateways in another process, same JPEG (fps)", lambda s: fps(s, "grpc-jpeg"))
        row("gRPC / in-process, same JPEG payloads and decode",
            lambda s: _ratio(s["ratios"].get("grpc_vs_inprocess_same_jpeg")))
        row("gRPC / in-process with pre-decoded frames", lambda s: _ratio(s["ratios"].get("grpc_vs_predecoded")))
        row("identities, every pass (each camera count, round, gRPC)", _identities_cell)
        for i, load_ in enumerate((0.5, 0.8, 1.0)):
            row(f"gRPC latency p50/p95/p99 at {load_:.0%} of measured gRPC capacity (ms)",
                lambda s, i=i: _latency_cell(s, i))
    mem = res.get("memory")
    if mem:
        lines += ["", "| server soak (`faceengine serve` over gRPC) | |", "|---|---|",
                  f"| run | {mem['meta']['cameras']} cameras, {mem['meta']['video']}, {mem['load']:.0%} of measured "
                  f"capacity ({_f(mem['offered_fps'])} fps), {mem['meta']['seconds']:g} s"
                  + (" (**shortened** from the default 600 s)" if mem["meta"].get("shortened") else "") + " |",
                  f"| server RSS after {mem['meta']['warmup_s']:g} s warm-up | {_f(mem['rss_first_mb'])} -> "
                  f"{_f(mem['rss_last_mb'])} MB, slope {_f(mem['slope_mb_per_min'], 2)} MB/min (target < "
                  f"{mem['target_slope_mb_per_min']}): **{mem['verdict']}** |",
                  f"| frames / dropped / errors | {mem['frames']} / {mem['dropped']} / {mem['errors']} |"]
    fa = res.get("faiss")
    if fa:
        lines += ["", "| FAISS 1:N | |", "|---|---|"]
        for r in fa.get("results_real", []):
            if r["method"] == "ivf":
                lines.append(f"| REAL: LFW embeddings ({r['enrolled_identities']} enrolled + {r['real_distractors']} "
                             f"real + {r['synthetic_distractors']:,} synthetic distractors), engine IVF | recall@1 "
                             f"(right person) {r['recall_at_1_identity']:.4f}, p99 {r['p99_ms']:.2f} ms |")
        t = fa.get("target", {})
        if t.get("status") not in (None, "not measured"):
            lines.append(f"| SYNTHETIC random vectors, 1M x 128-d, engine IVF | p99 {t['p99_ms']} ms, recall@1 vs "
                         f"exact {t['recall_at_1']}: **{t['status']}** |")
    return "\n".join(lines) + "\n"


def _models_cell(s: dict[str, Any]) -> str:
    c = s["meta"].get("config", {})
    det, models = c.get("detector", {}), c.get("models", ["?", "?"])
    side = f"up to {det.get('max_input_side')} (scale-aware)" if det.get("auto_scale") else f"{det.get('input_size')}"
    return f"{models[0]} at {side} + {models[1]}"


def _identities_cell(s: dict[str, Any]) -> str:
    ids = s["identities"]
    bad = [c for c in ids["passes"] if not c["ok"]]
    n = len(ids["reference"])
    out = (f"{len(ids['passes'])} passes, reference {n} person{'s' if n != 1 else ''}: "
           f"{'**all OK**' if ids['all_passes_ok'] else f'**{len(bad)} NOT OK**'}")
    if bad:  # which modes failed, so a peer's miss is not read as the engine's
        modes = sorted({c["mode"] for c in bad})
        out += " (" + ", ".join(f"{m} x{sum(c['mode'] == m for c in bad)}" for m in modes) + ")"
    return out + f" ({s['enrolled']['distractors']} distractors enrolled)"


def _latency_cell(s: dict[str, Any], i: int) -> str:
    lp = s.get("latency_at_load") or []
    if i >= len(lp):
        return "-"
    p = lp[i]
    return (f"{_f(p['p50_latency_ms'])} / {_f(p['p95_latency_ms'])} / {_f(p['p99_latency_ms'])} "
            f"({_f(p['offered_fps'])} fps, {p['dropped']} dropped)")


def detail_tables(res: dict[str, Any]) -> str:
    """benchmarks/README.md: every mode, every pass's identities, latency at load, soak, FAISS, cluster."""
    out: list[str] = []
    for clip, s in _pipelines(res):
        m = s["meta"]
        out += [f"#### {clip}: {m['size'][0]}x{m['size'][1]}, timed frames {m['timed_frames'][0]}-"
                f"{m['timed_frames'][1]}, enrolment from held-out frames {m['heldout_frames'][0]}-"
                f"{m['heldout_frames'][1]}, {s['cameras']} cameras, {m['rounds']} round(s), window {m['window']}",
                "", f"Machine: {_machine(m['machine'])}.", "",
                "| mode | cameras | fps (median) | fps per round | p50 / p95 / p99 ms | embeddings a pass |",
                "|---|---|---|---|---|---|"]
        for name, v in s["modes"].items():
            out.append(f"| {name} | {v['cameras']} | {_f(v['fps'])} | {', '.join(_f(x) for x in v['fps_rounds'])} | "
                       f"{_f(v['p50_latency_ms'])} / {_f(v['p95_latency_ms'])} / {_f(v['p99_latency_ms'])} | "
                       f"{_f(v['embeddings_per_pass'], 0)} |")
        out += ["", "| ratio | value |", "|---|---|"]
        out += [f"| {k} | {_ratio(r)} |" for k, r in s["ratios"].items()]
        ids = s["identities"]
        out += ["", f"Identities: reference {ids['reference']} ({ids['reference_from']}); peer: {s['peer']['note']}.",
                "", "| pass | round | cameras | found | missed | false matches | events per person | ok |",
                "|---|---|---|---|---|---|---|---|"]
        for c in ids["passes"]:
            ev = ", ".join(f"{k} {v}" for k, v in c["events"].items()) or "-"
            out.append(f"| {c['mode']} | {c['round'] or 'load'} | {c['cameras']} | {len(c['found'])} | "
                       f"{', '.join(c['missed']) or '-'} | {', '.join(c['false_matches']) or '-'} | {ev} | "
                       f"{'yes' if c['ok'] else '**NO**'} |")
        if s.get("latency_at_load"):
            out += ["", "| gRPC load | offered fps | achieved fps | p50 ms | p95 ms | p99 ms | dropped | errors |",
                    "|---|---|---|---|---|---|---|---|"]
            for p in s["latency_at_load"]:
                out.append(f"| {p['load']:.0%} of {_f(p['capacity_fps'])} | {_f(p['offered_fps'])} | "
                           f"{_f(p['achieved_fps'])} | {_f(p['p50_latency_ms'])} | {_f(p['p95_latency_ms'])} | "
                           f"{_f(p['p99_latency_ms'])} | {p['dropped']} | {p['errors']} |")
        st = s["stages"]

        def ms(key: str, st: dict[str, Any] = st) -> str:
            return _f(st.get(key), 2)

        out += _stage_table(s)
        out += ["", f"Stages (1 camera, sequential, ms a frame): detect {ms('engine_detect_ms_per_frame')} "
                f"(bare model {ms('raw_detector_ms_per_frame')} + letterbox "
                f"{ms('detector_preprocess_ms_per_frame')}), align {ms('engine_align_ms_per_frame')}, "
                f"embed {ms('engine_embed_ms_per_frame')}, search {ms('engine_search_ms_per_frame')}, "
                f"total {ms('engine_total_ms_per_frame')}; full JPEG decode {ms('jpeg_decode_ms_per_frame')}.", ""]
    for mem_name in sorted(k for k in res if k == "memory" or k.startswith("memory-")):
        mem = res[mem_name]
        out += ["#### Server soak" + ("" if mem_name == "memory" else f" ({mem_name}.json)"), "",
                f"Machine: {_machine(mem['meta']['machine'])}.", "",
                "| | |", "|---|---|",
                f"| process | {mem['meta']['process']} |",
                f"| capacity (saturated calibration, {mem['calibration']['seconds']:g} s) | "
                f"{_f(mem['capacity_fps'])} fps |",
                f"| soak | {mem['meta']['cameras']} cameras x {_f(mem['fps_per_camera'], 2)} fps = {mem['load']:.0%} "
                f"of capacity, {mem['meta']['seconds']:g} s" + (" (shortened; default 600 s)" if mem['meta'].get(
                    "shortened") else "") + " |",
                f"| RSS after warm-up: first / last / min / max | {_f(mem['rss_first_mb'])} / "
                f"{_f(mem['rss_last_mb'])} / "
                f"{_f(mem['rss_min_mb'])} / {_f(mem['rss_max_mb'])} MB |",
                f"| slope (least squares after {mem['meta']['warmup_s']:g} s) | "
                f"{_f(mem['slope_mb_per_min'], 3)} MB/min, "
                f"target < {mem['target_slope_mb_per_min']}: **{mem['verdict']}** |",
                f"| results / dropped / errors | {mem['frames']} / {mem['dropped']} / {mem['errors']} |",
                f"| latency p50 / p99 | {_f(mem['p50_latency_ms'])} / {_f(mem['p99_latency_ms'])} ms |",
                f"| events per person | {', '.join(f'{k} {v}' for k, v in mem['events_by_person'].items()) or '-'} |"]
        g = mem.get("gpu")
        if g:
            out.append(f"| GPU memory after warm-up ({g['source'] or '-'}) | " + (
                "no GPU" if g["gpu"] is None else f"{_f(g['first_mb'])} -> {_f(g['last_mb'])} MB, slope "
                f"{_f(g['slope_mb_per_min'], 3)} MB/min on {g['gpu']}: **{g['verdict']}**") + " |")
        out.append("")
    fa = res.get("faiss")
    if fa:
        if fa.get("results_real"):
            rm = fa["real"]
            out += ["#### FAISS on REAL embeddings", "", f"{rm['what']}. Embedder {rm['embedder']}, {rm['faces']} "
                    f"faces, match threshold {rm['match_threshold']}.", "",
                    "| method | gallery | enrolled + real + SYNTHETIC distractors | queries | recall@1 identity | "
                    "TAR / FAR at threshold | recall@1 vs exact | p50 / p99 ms |", "|---|---|---|---|---|---|---|---|"]
            for r in fa["results_real"]:
                out.append(f"| {r['method']} ({r['config']}) | {r['size']:,} | {r['enrolled_identities']} + "
                           f"{r['real_distractors']} + {r['synthetic_distractors']:,} | {r['queries']} | "
                           f"{r['recall_at_1_identity']:.4f} | {r['true_accept_rate']:.4f} / "
                           f"{r['false_accept_rate']:.4f} | {r['recall_at_1_vs_exact']:.4f} | "
                           f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} |")
            out.append("")
        if fa.get("results"):
            out += ["#### FAISS on SYNTHETIC vectors", "", f"{fa['meta']['query_model']}.", "",
                    "| dim | size | method | config | p50 / p99 ms | cpu p99 ms | recall@1 vs exact |",
                    "|---|---|---|---|---|---|---|"]
            for r in fa["results"]:
                if r.get("skipped"):
                    continue
                out.append(f"| {r['dim']} | {r['size']:,} | {r['method']} | {r['config']} | {r['p50_ms']:.2f} / "
                           f"{r['p99_ms']:.2f} | {r['cpu_p99_ms']:.2f} | {r['recall_at_1']:.4f} |")
            out.append("")
    for name in sorted(k for k in res if k.startswith("models")):
        out += _models_tables(name, res[name])
    for name in sorted(k for k in res if k.startswith("cluster")):
        c = res[name]
        out += [f"#### Cluster ({name}.json)", ""]
        if "scaling" in c:
            out += [f"Single process: {_f(c['single_process_fps'])} fps; same identities every pass: "
                    f"{c['same_identities_every_pass']}.", "",
                    "| workers | fps | vs single process | vs 1 worker |", "|---|---|---|---|"]
            for r in c["scaling"]:
                out.append(f"| {r['workers']} | {_f(r['fps'])} | {_f(r['vs_single_process'], 3)} | "
                           f"{_f(r['speedup_vs_1_worker'], 2)} |")
            if c.get("breakdown"):
                out += ["", f"Where the time went (runner {c.get('runner', 'onnx')}, steady state "
                        f"{_f(c.get('seconds_per_point'))} s a point after {_f(c.get('warmup_s'))} s warm-up):", "",
                        "| workers | front-end CPU ms a frame | frames a front-end core | queue ms a frame | "
                        "call ms = worker + Ray | frames a call | worker busy share | model threads / cores |",
                        "|---|---|---|---|---|---|---|---|"]
                for b in c["breakdown"]:
                    tb = b["thread_budget"]
                    out.append(f"| {b['workers']} | {_f(b['frontend_cpu_ms_per_frame'], 3)} | "
                               f"{_f(b.get('frontend_fps_per_cpu_core'))} | {_f(b['queue_wait_ms_per_frame'], 1)} | "
                               f"{_f(b['call_ms'], 1)} = {_f(b['worker_ms_per_call'], 1)} + "
                               f"{_f(b['ray_ms_per_call'], 1)} | {_f(b['frames_per_call'], 1)} | "
                               f"{', '.join(_f(x, 2) for x in b['worker_busy_share'])} | "
                               f"{tb['model_threads']} / {_f(tb['cores'])} |")
            if c.get("machine", {}).get("note"):
                out.append(f"\nMachine: {c['machine']['note']}.")
            for k, v in c.get("verdicts", {}).items():
                out.append(f"\n{k}: {v['value']:.3f} (target {v['target']}): **{'met' if v['met'] else 'MISSED'}**")
        elif "slope_mb_per_min" in c:
            half = c.get("slope_mb_per_min_second_half", {})
            out.append(f"Soak {c['seconds']:g} s, {c['workers']} workers: RSS slopes after warm-up "
                       f"{ {k: round(v, 3) for k, v in c['slope_mb_per_min'].items()} } MB/min, second half "
                       f"{ {k: round(v, 3) for k, v in half.items()} } MB/min: **{c['verdict']}**")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


STAGE_COLUMNS = ("decode", "preprocess", "detect_model", "detect_post", "track", "align", "embed", "search",
                 "record", "total")


def _gpu_cell(g: dict[str, Any] | None) -> str:
    if not g or g.get("gpu") is None:
        return "no GPU"
    if g.get("util_mean_pct") is None:
        return "no sample"
    return f"{g['util_mean_pct']:.0f} % (max {g['util_max_pct']:.0f}), {g['mem_used_max_mb']:,.0f} MB"


def _stage_table(s: dict[str, Any]) -> list[str]:
    """Per-stage worker ms a frame of every mode that has them (results from before they existed: none)."""
    rows = [(name, m) for name, m in s["modes"].items() if m.get("stages_ms_per_frame")]
    if not rows:
        return []
    out = ["", "Per-stage worker time, ms a frame (summed over worker threads; decode is the JPEG path's), and the "
           "GPU over the pass:", "", "| mode | " + " | ".join(STAGE_COLUMNS) + " | GPU util, memory |",
           "|---" * (len(STAGE_COLUMNS) + 2) + "|"]
    for name, m in rows:
        st = m["stages_ms_per_frame"]
        cells = " | ".join(_f(st.get(k), 2) for k in STAGE_COLUMNS)
        out.append(f"| {name} | {cells} | {_gpu_cell(m.get('gpu'))} |")
    return out


def _models_tables(name: str, s: dict[str, Any]) -> list[str]:
    """`bench models`: detector and embedder throughput per batch, and the issue-13 targets."""
    d = s["detector"]
    out = [f"#### Models ({name}.json): {d['model']} on {d['provider']}, {s['meta']['size'][0]}x"
           f"{s['meta']['size'][1]} frames", "", f"Machine: {_machine(s['meta']['machine'])}.", "",
           f"Detector: batched {d['batched']}, {'graph' if d['graph_preprocess'] else 'CPU'} letterbox to "
           f"{d['network_input'][0]}x{d['network_input'][1]}.", "",
           "| detector batch | frames/s | pre-process ms | model ms | post-process ms | GPU util, memory |",
           "|---|---|---|---|---|---|"]
    for p in d["points"]:
        out.append(f"| {p['batch']} | {_f(p['frames_per_s'])} | {_f(p['preprocess_ms_per_frame'], 2)} | "
                   f"{_f(p['model_ms_per_frame'], 2)} | {_f(p['postprocess_ms_per_frame'], 2)} | "
                   f"{_gpu_cell(p.get('gpu'))} |")
    out += ["", "| embedder | provider | batch | faces/s | blob ms a face | model ms a face | GPU util, memory |",
            "|---|---|---|---|---|---|---|"]
    for en, e in s["embedders"].items():
        for p in e["points"]:
            out.append(f"| {en} | {e['provider']} | {p['batch']} | {_f(p['faces_per_s'])} | "
                       f"{_f(p['blob_ms_per_face'], 3)} | {_f(p['model_ms_per_face'], 3)} | "
                       f"{_gpu_cell(p.get('gpu'))} |")
    out += ["", "| target (issue 13) | measured | target | verdict |", "|---|---|---|---|"]
    for t in s["targets"]:
        out.append(f"| {t['what']} | {_f(t['value'])} {t['unit']} on {t['provider']} | >= {t['target']:g} | "
                   f"**{t['verdict']}** |")
    return out + [""]


def machine_line(res: dict[str, Any]) -> str:
    ms = [s["meta"]["machine"] for _, s in _pipelines(res)]
    if not ms:
        return "No result files.\n"
    return f"Measured on: {_machine(ms[0])}.\n"


SECTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "summary": summary_table, "machine": machine_line, "details": detail_tables}


def render(text: str, res: dict[str, Any]) -> str:
    """`text` with every marked block replaced by what the results give."""
    def sub(m: re.Match[str]) -> str:
        fn = SECTIONS.get(m.group("name"))
        if fn is None:
            raise KeyError(f"unknown table {m.group('name')!r}")
        return m.group(1) + fn(res) + m.group(4)

    return MARK.sub(sub, text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if a page is out of date")
    a = p.parse_args(argv)
    res = load()
    stale = []
    for path in PAGES:
        old = path.read_text()
        new = render(old, res)
        if new != old:
            stale.append(path)
            if not a.check:
                path.write_text(new)
    if a.check and stale:
        print("out of date (run python benchmarks/make_tables.py): " + ", ".join(str(p) for p in stale))
        return 1
    print(("rewrote " + ", ".join(str(p) for p in stale)) if stale else "tables up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
