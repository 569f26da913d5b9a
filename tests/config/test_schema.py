"""The schema (zobench/config/schema.py): each group's types, ranges and choices, declared once,
refused with one line naming the key and what is allowed; stored in Hydra's ConfigStore."""

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from tests.helpers import compose_config, compose_run
from zobench.config import check_value, schema, validate, validate_bench
from zobench.errors import ConfigError

# one bad value per group and kind: (override, the one line)
BAD = [
    # top level
    ("seed=-1", "seed=-1: expected an integer in 0..4294967295"),
    ("device=tpu", "device='tpu': allowed auto, cpu, cuda, cuda:N"),
    ("debug=1", "debug=1: expected true or false"),
    ("objective=bleu", "objective='bleu': allowed loss, accuracy, f1"),
    # train
    ("train.log_every=0", "train.log_every=0: expected an integer >= 1"),
    ("train.checkpoint_every=-1", "train.checkpoint_every=-1: expected an integer >= 0"),
    ("train.forward_budget=0", "train.forward_budget=0: expected an integer >= 1"),
    ("train.checkpoint=tensors", "train.checkpoint='tensors': allowed trajectory, weights"),
    ("train.save_final=maybe", "train.save_final='maybe': expected true or false"),
    # data
    ("data.dir=5", "data.dir=5: expected a path or null"),
    ("data.num_dev=-1", "data.num_dev=-1: expected an integer >= 0"),
    ("data.on_bad_row=ignore", "data.on_bad_row='ignore': allowed error, skip"),
    # engine
    ("engine.backend=cuda", "engine.backend='cuda': allowed auto, torch, triton"),
    ("engine.self_check=1", "engine.self_check=1: allowed auto, true, false"),
    ("engine.watchdog_s=-1", "engine.watchdog_s=-1: expected seconds >= 0 (0 or null: no watchdog)"),
    # icl, model, task, tuning, optimizer
    ("icl.separator=5", "icl.separator=5: expected a string"),
    ("model.source=ftp", "model.source='ftp': allowed hub, gguf_package, random"),
    ("model.family=seq2seq", "model.family='seq2seq': allowed causal, masked"),
    ("+model.init_seed=-1", "model.init_seed=-1: expected an integer in 0..4294967295"),
    ("task.max_length=0", "task.max_length=0: expected an integer >= 1"),
    ("tuning.name=dora", "tuning.name='dora': allowed full, lora, prefix"),
    ("optimizer.eps=-1", "optimizer.eps=-1: expected a finite number > 0"),
    # dist
    ("dist.timeout_s=1e9", "dist.timeout_s=1000000000.0: expected seconds, a number > 0"),
]


@pytest.mark.parametrize("override, line", BAD, ids=[o for o, _ in BAD])
def test_each_groups_bad_value_is_its_one_line(override, line, run_config, with_override):
    with pytest.raises(ConfigError) as err:
        validate(with_override(run_config, override))
    assert str(err.value) == line


def test_the_shipped_configs_pass():
    validate(compose_run("data.dir=/m"))
    validate(compose_run("model=tiny-roberta", "task=rte", "data.protocol=kshot", "data.dir=/m"))
    validate_bench(compose_config("bench", "model=tiny-llama"))


def test_a_removed_key_is_missing_and_a_removed_optional_one_is_not():
    with pytest.raises(ConfigError, match=r"^train.steps is missing from the config$"):
        validate(compose_run("~train.steps", "data.dir=/m"))
    validate(compose_run("~engine.watchdog_s", "~train.checkpoint", "~dist", "data.dir=/m"))


def test_both_schemas_are_in_hydras_config_store():
    stored = ConfigStore.instance().list("/")
    assert {"zobench_schema.yaml", "zobench_bench_schema.yaml"} <= set(stored)
    node = OmegaConf.structured(schema.RunConfig)
    assert OmegaConf.is_missing(node.train, "steps") and node.train.forward_budget is None


def _required(node, prefix=""):
    """The dotted keys a schema node leaves MISSING (``???``): every shipped config must set them."""
    for key in node:
        if OmegaConf.is_missing(node, key):
            yield f"{prefix}{key}"
        elif OmegaConf.is_config(node[key]):
            yield from _required(node[key], f"{prefix}{key}.")


@pytest.mark.parametrize("name, node", [("config", schema.RunConfig), ("bench", schema.BenchConfig)])
def test_every_required_key_of_the_schema_is_in_the_shipped_config(name, node):
    """A key renamed in the YAML or in the schema alone fails here, not as "missing" in a run."""
    cfg = compose_config(name, "model=tiny-llama")
    required = list(_required(OmegaConf.structured(node)))
    assert "train.steps" in required or name == "bench"
    assert [key for key in required if OmegaConf.select(cfg, key, default="absent") == "absent"] == []


def test_the_code_dispatches_on_the_schemas_choices():
    from zobench import engine, models
    from zobench.dist import context
    from zobench.models import loading

    assert tuple(loading.DTYPES) == tuple(schema.DTYPE_NAMES) and models.TUNINGS is schema.TUNINGS
    assert engine.BACKENDS is schema.ENGINE_BACKENDS and engine.MODES is schema.ENGINE_MODES
    assert context.MODES is schema.DIST_MODES and models.ZO_OBJECTIVES is schema.ZO_OBJECTIVES
    with pytest.raises(ConfigError, match=r"^model.dtype='fp8': allowed float32, float16, bfloat16, fp32"):
        loading.torch_dtype("fp8")  # the library path: the schema's line, not a copy
    with pytest.raises(ConfigError, match=r"^engine.mode='lazy': allowed inplace, virtual$"):
        check_value("engine.mode", "lazy")
