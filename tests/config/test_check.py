"""The one-pass check (zobench/config/check.py): every bad key of a config, one line each."""

import pytest

from tests.helpers import zobench_in_process
from zobench.__main__ import _addable
from zobench.config import addable_keys, validate
from zobench.config.check import optional_keys, problems
from zobench.config.schema import RunConfig
from zobench.errors import ConfigError, ConfigErrors

THREE_BAD = ("train.steps=-5", "data.protocol=lmbff", "engine.paired=sometimes")
THREE_LINES = [
    "train.steps=-5: expected an integer >= 0",
    "data.protocol='lmbff': allowed mezo, kshot",
    "engine.paired='sometimes': expected true or false",
]


def test_every_bad_key_is_reported_in_the_schemas_order(run_config, with_override):
    with pytest.raises(ConfigErrors) as err:
        validate(with_override(run_config, *THREE_BAD))
    assert err.value.lines == THREE_LINES and str(err.value) == "\n".join(THREE_LINES)
    assert isinstance(err.value, ConfigError)  # every handler of one bad key handles several


def test_one_bad_key_is_one_plain_error(run_config, with_override):
    with pytest.raises(ConfigError) as err:
        validate(with_override(run_config, "train.steps=-5"))
    assert type(err.value) is ConfigError and str(err.value) == THREE_LINES[0]


def test_a_key_that_copies_a_bad_one_is_not_reported_again(run_config, with_override):
    """data.seed is ${seed}, data.eval_seed ${data.seed}: one bad seed is one line."""
    found = problems(RunConfig, with_override(run_config, "seed=-1"))
    assert [key for key, line in found if line] == ["seed"]
    assert {key for key, _ in found} == {"seed", "data.seed", "data.eval_seed"}  # still bad for the rules
    with pytest.raises(ConfigErrors) as err:  # a seed set apart from it is its own line
        validate(with_override(run_config, "seed=-1", "data.eval_seed=-2"))
    assert err.value.lines == [
        "seed=-1: expected an integer in 0..4294967295",
        "data.eval_seed=-2: expected an integer in 0..4294967295",
    ]


def test_a_rule_is_not_reported_on_top_of_its_keys_own_error(run_config, with_override):
    """train.steps='abc' is train.steps's error, not also data.num_train's or icl.demos's."""
    with pytest.raises(ConfigError) as err:
        validate(with_override(run_config, "train.steps=abc", "data.num_train=abc", "icl.demos=5000"))
    assert err.value.lines == [
        "train.steps='abc': expected an integer >= 0",
        "data.num_train='abc': expected an integer >= 0",
    ]


def test_the_plus_keys_are_the_schemas_optional_fields():
    keys = addable_keys()
    assert keys == optional_keys(RunConfig)
    # the keys the code reads when present but no shipped config sets (the old hand-kept list)
    for key in ("model.device_map", "model.init_seed", "task.masked_max_length", "tuning.target_modules",
                "tuning.init_by_real_act", "logger.api_key"):  # fmt: skip
        assert key in keys and _addable(key, {})
    assert not any(key.startswith("optimizer.") for key in keys)  # open: the method's constructor decides
    assert not any(key.split(".")[-1] in ("steps", "protocol", "backend") for key in keys)  # required
    tree = {"optimizer": {"_target_": "zobench.optim.MeZO"}}
    assert _addable("optimizer.num_directions", tree) and not _addable("optimizer.bogus", tree)


def test_the_cli_prints_one_line_per_bad_key_and_exits_2(tmp_path, data_dir, monkeypatch):
    result = zobench_in_process(
        "model=tiny-llama", "logger=none", f"data.dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}",
        *THREE_BAD, monkeypatch=monkeypatch,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("zobench: error:")]
    assert lines == [f"zobench: error: {line}" for line in THREE_LINES]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_an_added_key_the_schema_lacks_is_refused_with_the_closest(tmp_path, monkeypatch):
    result = zobench_in_process("+model.init_sed=3", "logger=none", monkeypatch=monkeypatch, cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.startswith("zobench: error:")]
    assert result.returncode == 2 and len(lines) == 1
    assert "model.init_sed is not a zobench config key (a key added with + would be ignored)" in lines[0]
    assert not (tmp_path / "outputs").exists()
