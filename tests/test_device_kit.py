"""The device kit's packing (benchmarks/device/prepare.py): parts stay under the call limit, and the LFW
files it carries are exactly the ones the benchmarks read for their distractors. The whole kit is rehearsed
by benchmarks/device/dryrun.sh (minutes; not part of the suite)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.shared_data import SHARED

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def prepare(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("FACEENGINE_SHARED", str(SHARED))
    return _load(ROOT / "benchmarks" / "device" / "prepare.py", "device_prepare")


def test_lfw_subset_is_what_the_benchmarks_enrol(prepare: ModuleType) -> None:
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    import common

    want = [str(Path(p).relative_to(SHARED / "testdata")) for _, p, _ in common.lfw_faces(200, per_identity=1)]
    assert prepare.lfw_subset() == want and len(want) == 200


def test_parts_fit_the_budget_and_late_items_come_last(prepare: ModuleType, tmp_path: Path) -> None:
    sizes = {"ort": 56, "ray": 29, "site": 18, "testdata": 8, "model-mobilefacenet": 4, "model-yunet": 1,
             "model-sface": 37}
    items = {}
    for name, mb in sizes.items():
        f = tmp_path / name
        with f.open("wb") as fh:
            fh.truncate(mb * 2**20)
        items[name] = f
    budget = 61 * 2**20
    parts = prepare.pack(items, budget)
    assert sorted(n for p in parts for n in p) == sorted(sizes)  # each item once
    assert all(sum(sizes[n] for n in p) * 2**20 <= budget for p in parts)
    assert parts[-1] == ["model-sface"] and len(parts) == 3  # the end-to-end model travels in the last call
    with pytest.raises(SystemExit, match="alone exceeds"):
        prepare.pack({"ort": items["ort"]}, 50 * 2**20)
