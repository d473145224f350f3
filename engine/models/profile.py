"""onnxruntime's per-node profile (`SessionOptions.enable_profiling`, a Chrome trace) in a few figures:
calls, mean call time, and the operators that take the time, per provider. Used by the runner when
`runtime.profile_dir` is set and by the device kit to print the top operators of each GPU step.

>>> summarise_events([{"cat": "Session", "name": "model_run", "dur": 2000},
...                   {"cat": "Node", "name": "c_kernel_time", "dur": 1500, "args": {"op_name": "Conv",
...                    "provider": "CUDAExecutionProvider"}}])["top"][0]["op"]
'Conv'
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any


def summarise_events(events: list[dict[str, Any]], top: int = 15) -> dict[str, Any]:
    """Calls (`model_run` events), their mean ms, kernel time per operator type (ms, share, kernel
    launches, providers) largest first, and kernel time per provider."""
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    by_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    providers: dict[str, set[str]] = defaultdict(set)
    by_provider: dict[str, float] = defaultdict(float)
    for e in nodes:
        args = e.get("args") or {}
        op, prov = str(args.get("op_name", "?")), str(args.get("provider", "?"))
        by_op[op][0] += float(e.get("dur", 0))
        by_op[op][1] += 1
        providers[op].add(prov.removesuffix("ExecutionProvider"))
        by_provider[prov] += float(e.get("dur", 0))
    total = sum(v[0] for v in by_op.values()) or 1.0
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1][0])[:top]
    run_us = [float(e.get("dur", 0)) for e in runs]
    return {
        "runs": len(runs),
        "model_run_ms_mean": round(sum(run_us) / len(run_us) / 1000, 4) if run_us else None,
        "kernel_ms_total": round(total / 1000, 3),
        "top": [{"op": op, "ms": round(us / 1000, 3), "share": round(us / total, 4), "kernels": int(n),
                 "providers": sorted(providers[op])} for op, (us, n) in ranked],
        "by_provider_ms": {p: round(us / 1000, 3) for p, us in sorted(by_provider.items(), key=lambda kv: -kv[1])},
    }


def summarise_profile(path: str | Path, top: int = 15) -> dict[str, Any]:
    """`summarise_events` of one profile file, with its name."""
    events = json.loads(Path(path).read_text())
    return {"file": Path(path).name, **summarise_events(events, top)}
