"""End-to-end LFW verification through the CLI on the shipped five folds (real images, real models)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import TESTDATA
from tests.test_models_and_inputs import run_cli


def test_lfw_end_to_end_accuracy(model_dir: Path) -> None:
    out = run_cli("eval", "lfw", "--data", str(TESTDATA / "lfw-dev"), "--model-dir", str(model_dir), "--quiet",
                  timeout=600)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"accuracy=(0\.\d{4}) tar@far=1e-3:(0\.\d{4}) threshold=(-?0\.\d{4})", last)
    assert m, last
    accuracy, tar, threshold = map(float, m.groups())
    assert accuracy >= 0.985
    assert tar >= 0.9
    assert 0.1 < threshold < 0.6
    assert "no face found" in out.stdout
