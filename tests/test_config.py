"""Config validation: every field checked (ranges, choices), errors name the field, the bad value
and where it came from (file, environment variable, command-line flag)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.cli.common import add_config_args, load_config
from engine.config import Config
from engine.errors import ConfigError
from tests.test_models_and_inputs import run_cli


def test_valid_file_loads(tmp_path: Path) -> None:
    f = tmp_path / "ok.toml"
    f.write_text('[runtime]\nprovider = "auto"\ndevice_id = 1\n[pipeline]\nworkers = 4\nbatch_size = 8\n'
                 '[detector]\nscore_threshold = 0.5\n[server]\nport = 0\n')
    c = Config.load(f, env={})
    assert c.runtime.provider == "auto" and c.runtime.device_id == 1
    assert c.pipeline.workers == 4 and c.pipeline.batch_size == 8 and c.detector.score_threshold == 0.5
    assert c.server.port == 0


@pytest.mark.parametrize(("toml", "field", "value"), [
    ("[pipeline]\nqueue_size = -1\n", "pipeline.queue_size", "-1"),
    ("[embedder]\nbatch_size = 0\n", "embedder.batch_size", "0"),
    ("[detector]\nscore_threshold = 1.5\n", "detector.score_threshold", "1.5"),
    ('[runtime]\nprovider = "gpu"\n', "runtime.provider", "'gpu'"),
    ('[runtime]\ngraph_optimization = "max"\n', "runtime.graph_optimization", "'max'"),
    ("[server]\nport = 70000\n", "server.port", "70000"),
    ('[pipeline]\nworkers = "many"\n', "pipeline.workers", "'many'"),
    ("[pipeline]\nworkers = 2.5\n", "pipeline.workers", "2.5"),
])
def test_bad_value_in_file_names_field_value_and_file(tmp_path: Path, toml: str, field: str, value: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as err:
        Config.load(f, env={})
    msg = str(err.value)
    assert f"config file {f}" in msg and f"{field} = {value}" in msg, msg


def test_bad_value_in_env_names_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        Config.load(env={"FACEENGINE_PIPELINE_BATCH_WAIT_MS": "-5"})
    msg = str(err.value)
    assert "environment variable FACEENGINE_PIPELINE_BATCH_WAIT_MS" in msg
    assert "pipeline.batch_wait_ms = '-5'" in msg and "greater than or equal to 0" in msg
    with pytest.raises(ConfigError, match=r"FACEENGINE_AUTH_ENABLED: auth.enabled = 'perhaps'"):
        Config.load(env={"FACEENGINE_AUTH_ENABLED": "perhaps"})
    ok = Config.load(env={"FACEENGINE_AUTH_ENABLED": "off", "FACEENGINE_SERVER_PORT": "7000"})
    assert ok.auth.enabled is False and ok.server.port == 7000


def test_bad_flag_names_the_flag() -> None:
    p = argparse.ArgumentParser()
    add_config_args(p)
    with pytest.raises(ConfigError, match=r"command-line flag --provider: runtime.provider = 'gpu' is invalid"):
        load_config(p.parse_args(["--provider", "gpu"]))
    with pytest.raises(ConfigError, match=r"command-line flag --threads: runtime.intra_op_threads = -2"):
        load_config(p.parse_args(["--threads", "-2"]))
    out = run_cli("config", "show", "--threads", "-2", timeout=60)
    assert out.returncode != 0 and "--threads" in out.stderr and "-2" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_names_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[pipeline]\nbatchsize = 4\n")
    with pytest.raises(ConfigError, match=r"unknown field pipeline.batchsize; \[pipeline\] has queue_size, batch_size"):
        Config.load(f, env={})


def test_a_bad_update_applies_nothing() -> None:
    c = Config.load(env={})
    with pytest.raises(ConfigError):
        c.update({"server": {"port": 6000, "max_workers": 0}}, source="test")
    assert c.server.port == 50051


def test_assignment_is_validated() -> None:
    c = Config.load(env={})
    c.pipeline.workers = 3
    with pytest.raises(ValidationError, match="workers"):
        c.pipeline.workers = 0
    with pytest.raises(ValidationError):
        c.runtime.provider = "gpu"  # type: ignore[assignment]
    assert c.pipeline.workers == 3 and c.runtime.provider == "cpu"


def test_every_field_is_described_and_every_number_bounded() -> None:
    c = Config()
    for sec_name in type(c).model_fields:
        section = getattr(c, sec_name)
        for name, info in type(section).model_fields.items():
            assert info.description, f"{sec_name}.{name} has no description"
            if info.annotation in (int, float):
                bounds = {type(m).__name__ for m in info.metadata}
                assert bounds & {"Ge", "Gt"} and bounds & {"Le", "Lt"}, f"{sec_name}.{name} has no range"


def test_config_show_lists_every_field() -> None:
    out = run_cli("config", "show", timeout=60)
    assert out.returncode == 0, out.stderr
    section = ""
    shown: set[str] = set()
    for line in out.stdout.splitlines():
        if m := re.match(r"\[(\w+)\]", line):
            section = m.group(1)
        elif m := re.match(r"(\w+) = ", line):
            shown.add(f"{section}.{m.group(1)}")
    assert shown == {name for name, _, _ in Config().describe()}
    # the printed file loads back unchanged
    assert 'batch_size = "auto"\n' in out.stdout and "# effective batching: 1 frames, 0 ms wait (CPU)" in out.stdout


def test_config_show_output_round_trips(tmp_path: Path) -> None:
    c = Config.load(env={})
    c.update({"runtime": {"provider": "cuda", "device_id": 2}, "pipeline": {"queue_size": 3}}, source="test")
    f = tmp_path / "round.toml"
    f.write_text(c.to_toml())
    back = Config.load(f, env={})
    assert back.describe() == c.describe()


def test_with_overrides_copies_and_validates() -> None:
    c = Config.load(env={})
    d = c.with_overrides({"server": {"port": 0}, "runtime": {"provider": "cuda"}}, source="bench")
    assert (d.server.port, d.runtime.provider) == (0, "cuda")
    assert (c.server.port, c.runtime.provider) == (50051, "cpu")
    with pytest.raises(ConfigError, match="bench: server.port = -1"):
        c.with_overrides({"server": {"port": -1}}, source="bench")
