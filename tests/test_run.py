"""The loop end to end on a tiny random LM: run-dir contract, fixed losses, forward-pass counts."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from tests.helpers import SMOKE, compose_run
from zobench.run import run

SUMMARY_KEYS = {
    "task",
    "model",
    "optimizer",
    "tuning",
    "seed",
    "steps",
    "forward_passes",
    "dev_accuracy",
    "test_accuracy",
    "peak_memory_bytes",
    "inference_peak_memory_bytes",
    "wall_s",
    "git_sha",
    "zobench_version",
    "status",
}

# Losses of the 5-step smoke run below (tiny-llama, seed 0, torch 2.13.0 CPU). A change here means
# the numbers of every run changed: data sampling, prompt, tokenisation, objective, z or update.
EXPECTED_LOSSES = [0.6587902307510376, 0.7154525518417358, 0.6994509100914001, 0.6606125831604004, 0.7043571472167969]


def _events(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("smoke")
    cfg = compose_run(*SMOKE, "train.steps=5", "train.eval_every=2", "train.log_every=1", f"data.dir={data_dir}")
    summary = run(cfg, run_dir)
    return run_dir, summary


def test_five_step_smoke_run_has_fixed_losses(smoke_run):
    run_dir, _ = smoke_run
    losses = [e["loss"] for e in _events(run_dir) if e["event"] == "train"]
    assert losses == pytest.approx(EXPECTED_LOSSES, rel=1e-6, abs=1e-7)


def test_run_dir_contract(smoke_run):
    run_dir, summary = smoke_run
    assert SUMMARY_KEYS <= set(summary)
    assert json.loads((run_dir / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["status"] == "completed" and summary["steps"] == 5
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["name"] == "tiny-llama" and config["train"]["steps"] == 5
    assert "${" not in (run_dir / "config.yaml").read_text()  # resolved
    for event in _events(run_dir):
        assert {"step", "forward_passes"} <= set(event)
        if event["event"] == "train":
            assert {"loss", "lr", "wall_s"} <= set(event)
        else:
            assert event["event"] == "eval" and {"split", "accuracy"} <= set(event)
    assert not (run_dir / "best").exists()


def test_forward_passes_are_two_per_step_plus_eval_passes(smoke_run):
    run_dir, summary = smoke_run
    events = _events(run_dir)
    for e in events:
        if e["event"] == "train":
            assert e["forward_passes"] == 2 * e["step"]
    evals = [e for e in events if e["event"] == "eval"]
    # dev (16 examples / batch 8) at steps 2, 4, 5 and test (24 / 8) once: 2+2+2+3 eval forwards
    assert [e["forward_passes_eval"] for e in evals] == [2, 4, 6, 9]
    assert summary["forward_passes"] == 10 and summary["forward_passes_eval"] == 9
    assert summary["forward_passes_probe"] == 1
    assert events[-1]["forward_passes_total"] == 10 + 9 + 1


def test_best_dev_state_is_the_one_tested(smoke_run):
    run_dir, summary = smoke_run
    dev = {e["step"]: e["accuracy"] for e in _events(run_dir) if e.get("split") == "dev"}
    best_step = max(dev, key=lambda s: (dev[s], -s))
    assert summary["best_step"] == best_step and summary["dev_accuracy"] == dev[best_step]


def test_memory_is_measured(smoke_run):
    _, summary = smoke_run
    assert summary["inference_peak_memory_bytes"] > 50 * 2**20
    assert summary["peak_memory_bytes"] >= 0.9 * summary["inference_peak_memory_bytes"]


@pytest.mark.slow
def test_zero_shot_run(tmp_path, data_dir):
    summary = run(compose_run(*SMOKE, "train.steps=0", f"data.dir={data_dir}"), tmp_path)
    assert summary["forward_passes"] == 0 and summary["steps"] == 0 and summary["status"] == "completed"
    assert 0 <= summary["test_accuracy"] <= 1 and 0 <= summary["dev_accuracy"] <= 1


@pytest.mark.slow
def test_same_config_same_metrics(tmp_path, data_dir, smoke_run):
    other = tmp_path / "again"
    cfg = compose_run(*SMOKE, "train.steps=5", "train.eval_every=2", "train.log_every=1", f"data.dir={data_dir}")
    run(cfg, other)

    def strip(events):
        return [{k: v for k, v in e.items() if k != "wall_s" and "memory" not in k} for e in events]

    assert strip(_events(other)) == strip(_events(smoke_run[0]))


def test_failed_run_leaves_a_failed_summary(tmp_path):
    with pytest.raises(FileNotFoundError, match="sst2/train.jsonl not found"):
        run(compose_run(*SMOKE, "train.steps=2", f"data.dir={tmp_path / 'empty'}"), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "train.jsonl not found" in summary["error"]


@pytest.mark.parametrize("split", ["validation", "train"])
def test_a_run_with_an_empty_split_is_refused_before_training(tmp_path, data_dir, split):
    """No test rows (an empty validation.jsonl) or no train pool: refused before the model loads,
    never a completed run scoring nan on 0 examples."""
    (tmp_path / "mirror" / "sst2").mkdir(parents=True)
    for name in ("train", "validation"):
        text = "" if name == split else (data_dir / "sst2" / f"{name}.jsonl").read_text()
        (tmp_path / "mirror" / "sst2" / f"{name}.jsonl").write_text(text)
    message = "no test rows" if split == "validation" else "train pool has only 0 rows"
    with pytest.raises(ValueError, match=message):
        run(compose_run(*SMOKE, "train.steps=2", f"data.dir={tmp_path / 'mirror'}"), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] == 0 and "test_accuracy" not in summary


def test_masked_model_on_a_causal_task_is_refused(tmp_path, data_dir):
    with pytest.raises(ValueError, match="model=roberta-large is a masked LM"):
        run(compose_run("model=roberta-large", "task=copa", "logger=none", f"data.dir={data_dir}"), tmp_path)


@pytest.mark.slow
def test_default_offline_model_runs_end_to_end(tmp_path, data_dir):
    """The README's default config (SmolLM2-135M from its GGUF package), shortened."""
    cfg = compose_run(
        "logger=none",
        "data.num_train=16",
        "data.num_dev=8",
        "data.num_eval=16",
        "train.steps=2",
        "train.batch_size=4",
        f"data.dir={data_dir}",
    )
    summary = run(cfg, tmp_path)
    assert summary["model"] == "smollm2-135m" and summary["status"] == "completed"
    assert summary["forward_passes"] == 4 and summary["engine"] == "torch/virtual"  # auto on CPU


@pytest.mark.slow
def test_cli_runs_into_the_requested_dir(tmp_path, data_dir):
    run_dir = tmp_path / "cli"
    subprocess.run(
        [sys.executable, "-m", "zobench", *SMOKE, "train.steps=2", f"data.dir={data_dir}", f"hydra.run.dir={run_dir}"],
        check=True,
        timeout=300,
        capture_output=True,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["forward_passes"] == 4


def _optimizer_options():
    from tests.helpers import options as _options

    return _options("optimizer")


@pytest.mark.parametrize("optimizer", _optimizer_options())
@pytest.mark.slow
def test_every_optimizer_trains_through_the_loop_with_its_declared_passes(tmp_path, data_dir, optimizer):
    from omegaconf import OmegaConf

    from zobench.build import resolve_target

    if optimizer == "linear_probe":
        pytest.skip("linear probing takes no steps (test_linear_probing_run)")
    cfg = compose_run(*SMOKE, f"optimizer={optimizer}", "train.steps=2", "train.eval_every=2", f"data.dir={data_dir}")
    summary = run(cfg, tmp_path)
    opt_cfg = OmegaConf.to_container(cfg.optimizer)
    cls = resolve_target(opt_cfg["_target_"], "optimizer._target_")
    if opt_cfg.get("first_order"):
        declared = 1  # backprop: one forward (and one backward) per step
    elif optimizer == "fzoo":
        declared = int(opt_cfg["num_directions"]) + 1
    elif hasattr(cls, "forward_passes"):  # steps of unequal cost (DiZO's rounds, MeZO-SVRG's anchor)
        kwargs = {k: v for k, v in opt_cfg.items() if k not in ("name", "_target_", "weight_decay")}
        opt = cls([torch.nn.Parameter(torch.zeros(1))], **kwargs)
        if hasattr(opt, "bind_data"):
            opt.bind_data(lambda: None, cfg.train.batch_size)
        declared = opt.forward_passes(2) / 2
    else:
        declared = cls.forward_passes_per_step
    assert summary["status"] == "completed" and summary["forward_passes"] == 2 * declared


@pytest.mark.slow
def test_local_sweep_runs_every_job_into_its_own_dir(tmp_path, data_dir):
    """`python -m zobench -m ...`: Hydra's multirun, several runs in one process."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "zobench",
            "-m",
            *SMOKE,
            "train.steps=2",
            "optimizer=mezo,hizoo",
            f"data.dir={data_dir}",
            f"hydra.sweep.dir={tmp_path}",
        ],
        check=True,
        timeout=600,
        capture_output=True,
    )
    summaries = {
        json.loads(p.read_text())["optimizer"]: json.loads(p.read_text()) for p in tmp_path.glob("*/summary.json")
    }
    assert {k: (s["status"], s["forward_passes"]) for k, s in summaries.items()} == {
        "mezo": ("completed", 4),
        "hizoo": ("completed", 6),
    }


@pytest.mark.parametrize("tuning", ["lora", "prefix"])
@pytest.mark.slow
def test_peft_tuning_runs_and_checkpoints_only_the_trainable_parameters(tmp_path, data_dir, tuning):
    from safetensors.torch import load_file

    cfg = compose_run(
        *SMOKE,
        f"tuning={tuning}",
        "train.steps=3",
        "train.checkpoint_every=2",
        "train.save_final=true",
        "optimizer.lr=1e-2",
        f"data.dir={data_dir}",
    )
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["tuning"] == tuning and summary["forward_passes"] == 6
    saved = load_file(str(tmp_path / "final" / "trainable.safetensors"))
    marker = "lora_" if tuning == "lora" else "prompt_encoder"
    assert saved and all(marker in name for name in saved)


@pytest.mark.slow
def test_first_order_adam_lowers_the_training_loss(tmp_path, data_dir):
    cfg = compose_run(
        *SMOKE,
        "optimizer=adam",
        "optimizer.lr=1e-2",
        "train.steps=12",
        "train.log_every=1",
        "data.num_train=4",
        "train.batch_size=4",
        "train.eval_every=12",
        f"data.dir={data_dir}",
    )
    summary = run(cfg, tmp_path)
    losses = [e["loss"] for e in _events(tmp_path) if e["event"] == "train"]
    assert summary["status"] == "completed" and summary["forward_passes"] == 12
    assert losses[-1] < 0.5 * losses[0]  # one fixed batch of 4: backprop fits it


@pytest.mark.slow
def test_zo_on_the_batch_accuracy(tmp_path, data_dir):
    """objective=accuracy: the ZO loss is minus the batch accuracy, a non-differentiable objective."""
    cfg = compose_run(*SMOKE, "objective=accuracy", "train.steps=3", "train.log_every=1", f"data.dir={data_dir}")
    summary = run(cfg, tmp_path)
    losses = [e["loss"] for e in _events(tmp_path) if e["event"] == "train"]
    assert summary["status"] == "completed"
    assert all(-1 <= loss <= 0 and (loss * 4) == int(loss * 4) for loss in losses)  # batch of 4


@pytest.mark.slow
def test_icl_puts_demonstrations_before_every_prompt(tmp_path, data_dir, monkeypatch):
    from zobench.models import CandidateScorer
    from zobench.tasks import build_splits, load_task

    seen = []
    encode = CandidateScorer.encode
    monkeypatch.setattr(
        CandidateScorer, "encode", lambda self, example: seen.append(example.prompt) or encode(self, example)
    )
    cfg = compose_run(*SMOKE, "train.steps=0", "icl.demos=4", f"data.dir={data_dir}")
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["forward_passes"] == 0
    spec = load_task("sst2")
    splits = build_splits(spec, data_dir, 32, 16, 24, seed=0)
    shown = "\n\n".join((r.prompt + r.candidates[r.label]).strip() for r in map(spec.render, splits.train[:4]))
    tested = [spec.render(r).prompt for r in splits.test]
    assert len(seen) == 32 + 16 + 24
    assert seen[-24:] == [shown + "\n\n" + prompt for prompt in tested]


@pytest.mark.slow
def test_masked_lm_kshot_run_end_to_end(tmp_path, data_dir):
    """RoBERTa's path (LM-BFF prompt, verbaliser at <mask>, k-shot split) on a random RobertaForMaskedLM."""
    cfg = compose_run(
        "model=tiny-roberta",
        "task=sst2",
        "logger=none",
        "data.protocol=kshot",
        "data.k=16",
        "data.seed=13",
        "data.num_eval=40",
        "train.steps=4",
        "train.batch_size=8",
        "train.eval_every=2",
        f"data.dir={data_dir}",
    )
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["forward_passes"] == 8
    assert summary["num_train"] == 32 and summary["num_dev"] == 32 and summary["num_test"] == 40
    assert summary["metric"] == "accuracy" and 0 <= summary["test_accuracy"] <= 1


@pytest.mark.slow
def test_generation_task_zero_shot_reports_f1_and_em(tmp_path, data_dir):
    cfg = compose_run(
        *SMOKE,
        "task=squad",
        "train.steps=0",
        "data.num_train=0",
        "data.num_dev=0",
        "data.num_eval=6",
        "train.eval_batch_size=3",
        f"data.dir={data_dir}",
    )
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["metric"] == "f1"
    assert 0 <= summary["test_f1"] <= 1 and 0 <= summary["test_em"] <= summary["test_f1"]
    evals = [e for e in _events(tmp_path) if e["event"] == "eval"]
    assert [e["split"] for e in evals] == ["test"] and {"f1", "em"} <= set(evals[0])


@pytest.mark.slow
def test_batched_fzoo_through_the_loop_matches_sequential(tmp_path, data_dir):
    """FZOO's N perturbed losses from one replicated call (virtual engine) = N sequential calls,
    and the loop's counter still counts N+1 forward passes per step."""
    results = {}
    for batched in (True, False):
        run_dir = tmp_path / f"batched_{batched}"
        cfg = compose_run(
            *SMOKE,
            "optimizer=fzoo",
            "optimizer.num_directions=4",
            f"optimizer.batched={batched}",
            "train.steps=3",
            "train.log_every=1",
            "train.eval_every=3",
            f"data.dir={data_dir}",
        )
        results[batched] = run(cfg, run_dir), [e for e in _events(run_dir) if e["event"] == "train"]
    (summary_b, train_b), (summary_s, train_s) = results[True], results[False]
    assert summary_b["forward_passes"] == summary_s["forward_passes"] == 3 * 5
    assert [e["loss"] for e in train_b] == pytest.approx([e["loss"] for e in train_s], rel=1e-5)


@pytest.mark.slow
def test_linear_probing_run(tmp_path, data_dir):
    cfg = compose_run(*SMOKE, "optimizer=linear_probe", "train.steps=0", f"data.dir={data_dir}")
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["engine"] == "none" and summary["steps"] == 0
    assert summary["forward_passes"] == 32 // 8  # feature extraction of 32 training examples, batch 8
    assert 0 <= summary["test_accuracy"] <= 1 and 0 <= summary["dev_accuracy"] <= 1


def test_linear_probing_refuses_training_steps(tmp_path, data_dir):
    with pytest.raises(ValueError, match="optimizer=linear_probe fits a classifier .* set train.steps=0"):
        run(compose_run(*SMOKE, "optimizer=linear_probe", "train.steps=5", f"data.dir={data_dir}"), tmp_path)


@pytest.mark.parametrize("tuning, optimizer", [("lora", "hizoo"), ("prefix", "zo_adam"), ("lora", "adam")])
@pytest.mark.slow
def test_peft_tuning_with_other_methods(tmp_path, data_dir, tuning, optimizer):
    cfg = compose_run(
        *SMOKE,
        f"tuning={tuning}",
        f"optimizer={optimizer}",
        "train.steps=2",
        "train.eval_every=2",
        "optimizer.lr=1e-3",
        f"data.dir={data_dir}",
    )
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["tuning"] == tuning and summary["optimizer"] == optimizer


@pytest.mark.parametrize("optimizer, per_step", [("mezo", 2), ("hizoo", 3), ("fzoo", 9)])
@pytest.mark.slow
def test_forward_budget_gives_every_method_the_same_passes(tmp_path, data_dir, optimizer, per_step):
    """train.forward_budget=36: 18 MeZO steps, 12 HiZOO steps, 4 FZOO (N=8) steps; dev evaluated
    every 18 passes, i.e. at the same forward-pass counts whatever the method."""
    cfg = compose_run(
        *SMOKE,
        f"optimizer={optimizer}",
        "train.forward_budget=36",
        "train.eval_every_passes=18",
        "train.steps=1",
        f"data.dir={data_dir}",
    )
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["forward_passes"] == 36
    assert summary["steps"] == 36 // per_step
    dev = [e for e in _events(tmp_path) if e["event"] == "eval" and e["split"] == "dev"]
    assert [e["forward_passes"] for e in dev] == [18, 36]


def test_forward_budget_is_refused_for_first_order_baselines(tmp_path, data_dir):
    with pytest.raises(ValueError, match="train.forward_budget counts a ZO method's forward passes"):
        run(compose_run(*SMOKE, "optimizer=adam", "train.forward_budget=10", f"data.dir={data_dir}"), tmp_path)


def test_eval_every_passes_needs_a_forward_budget(tmp_path, data_dir):
    with pytest.raises(ValueError, match="train.eval_every_passes needs train.forward_budget"):
        run(compose_run(*SMOKE, "train.eval_every_passes=10", f"data.dir={data_dir}"), tmp_path)
