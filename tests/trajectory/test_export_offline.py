"""Export of the offline models (SmolLM2-135M, Gemma-3-270M: loaded from the GGUF their PyPI
packages ship): the folder loads with plain transformers and scores on the run's test rows what
the run reported (zobench/trajectory/export.py; models/loading.py drops the GGUF quantizer that
made ``save_pretrained`` refuse these models)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.helpers import compose_run
from zobench.build import protocol
from zobench.models import build_objective, with_demonstrations
from zobench.models.loading import model_config
from zobench.run import run
from zobench.tasks import build_splits, load_task
from zobench.trajectory.export import export

OFFLINE = ["smollm2-135m", "gemma3-270m"]
WEIGHT = "model.layers.0.mlp.down_proj.weight"  # one the run trains (full tuning)


def _installed(name: str) -> bool:
    return importlib.util.find_spec(model_config(name)["package"]) is not None


def _test_metric(cfg, model, tokenizer) -> dict:
    """The metric of ``model`` on the run's test rows, encoded as the run encodes them."""
    spec = load_task(cfg.task.name)
    data = cfg.data
    splits = build_splits(
        spec, data.dir, data.num_train, data.num_dev, data.num_eval, seed=data.seed, eval_seed=data.eval_seed,
        on_bad_row=data.on_bad_row, **protocol(cfg),
    )  # fmt: skip
    objective = build_objective(spec, "causal", model, tokenizer, cfg.task.max_length, torch.device("cpu"))
    demos = [spec.render(ex, family="causal") for ex in splits.train][: cfg.icl.demos]
    rows = [
        objective.encode(with_demonstrations(spec.render(ex, family="causal"), demos, cfg.icl.separator))
        for ex in splits.test
    ]
    return objective.evaluate(rows, int(cfg.train.eval_batch_size))


@pytest.mark.slow
@pytest.mark.parametrize("name", OFFLINE)
def test_an_offline_gguf_model_exports_and_scores_what_the_run_reported(name, data_dir, tmp_path):
    if not _installed(name):
        pytest.skip(f"{model_config(name)['package']} is not installed (README: offline models)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    overrides = (
        f"model={name}", "logger=none", "data.num_train=8", "data.num_dev=0", "data.num_eval=8",
        "train.steps=2", "train.batch_size=4", "train.eval_batch_size=8", "optimizer.lr=1e-4",
        f"data.dir={data_dir}",
    )  # fmt: skip
    summary = run(compose_run(*overrides), tmp_path / "run")
    assert summary["status"] == "completed" and summary["num_test"] == 8
    out = export(tmp_path / "run", tmp_path / "model")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    # trained weights (not the base ones) were exported; test_run_trajectory checks they are bit-identical
    state = model.state_dict()
    cfg = compose_run(*overrides)
    cached = Path(cfg.cache_dir).expanduser() / "models" / name / "model.safetensors"
    with safe_open(cached, "pt") as base:
        assert not torch.equal(base.get_tensor(WEIGHT), state[WEIGHT])
    assert _test_metric(cfg, model, tokenizer)["accuracy"] == summary["test_accuracy"]
