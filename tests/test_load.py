"""A short run of benchmarks/load_test.py: gateways connecting and disconnecting while operators
query and a health probe polls. Asserts correctness only (no timings): zero unexpected errors
and the health check SERVING throughout."""

from __future__ import annotations

import importlib.util
import sys

from engine.config import Config
from engine.service.auth import create_token
from engine.service.server import FaceEngineServer
from tests.conftest import IMAGES, ROOT


def _load_test():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "benchmarks" / "load_test.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


def test_short_load_run(cfg: Config, analyzer) -> None:  # noqa: ANN001
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    cfg.server.max_workers = 16
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        token = create_token(srv.store, "load-admin", "admin")[0]
        out = _load_test().run_load(srv.address, token, gateways=6, frames=2, duration_s=3.0, max_sessions=40,
                                    operators=2, health_interval_s=0.05, images=IMAGES)
    finally:
        srv.stop(grace=2)
    assert out["unexpected_errors"] == {}
    assert out["health_not_serving"] == 0
    c, lat = out["counts"], out["latency_ms"]
    assert c["streams"] >= 6 and c["frames_ok"] + c.get("frames_dropped", 0) == 2 * c["streams"]
    assert c["matches"] > 0 and lat["health"]["n"] > 0
    assert lat["QueryMatches"]["n"] > 0 and lat["SearchByImage"]["n"] > 0
