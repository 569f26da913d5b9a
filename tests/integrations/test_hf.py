"""ZOTrainer: a transformers.Trainer whose step is a zobench ZO step. The same method, batches and
seed give the same numbers as zobench's own loop; a checkpoint resumes to the uninterrupted run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import transformers
from torch.utils.data import SequentialSampler

from tests.helpers import SMOKE, compose_run
from zobench.errors import ConfigError
from zobench.integrations import ZOTrainer
from zobench.integrations.hf import SESSION_FILE


def _args(out, **kwargs) -> transformers.TrainingArguments:
    defaults = dict(
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        lr_scheduler_type="constant",
        disable_tqdm=True,
        seed=7,
    )
    return transformers.TrainingArguments(str(out), **{**defaults, **kwargs})


def _train_logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


class _RecipeBatches(ZOTrainer):
    """The recipe's objective as the Trainer's loss (a compute_loss override, as a user writes
    one), on the recipe's batches in the recipe's order."""

    def __init__(self, *args, objective, **kwargs) -> None:
        self.objective = objective
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return self.objective.loss(inputs["batch"])

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(self.train_dataset)


@pytest.mark.slow
def test_the_trainer_takes_the_recipes_steps_bit_for_bit(tmp_path, data_dir):
    """The recipe (``python -m zobench``'s loop, in process) steps MeZO on its batches; the same
    method config, engine and seed through ZOTrainer on the same batches give the same projected
    gradients, losses and weights, bit for bit."""
    from zobench.train import Recipe

    steps = 4
    cfg = compose_run(*SMOKE, f"data.dir={data_dir}", "engine=torch", "engine.paired=false", "optimizer.lr=1e-3")
    (tmp_path / "run").mkdir()
    recipe = Recipe(cfg, tmp_path / "run", [], SimpleNamespace(signum=None), lambda: 0.0)
    recipe.setup(None)
    start = {name: p.detach().clone() for name, p in recipe.named}
    batches = [recipe.next_batch() for _ in range(steps)]
    reference = [recipe.learner.step(batch) for batch in batches]
    expected = {name: p.detach().clone() for name, p in recipe.named}
    recipe.learner.engine.remove()  # the Trainer's engine hooks the same model
    with torch.no_grad():
        for name, p in recipe.named:
            p.copy_(start[name])

    trainer = _RecipeBatches(
        recipe.model,
        _args(tmp_path / "hf", max_steps=steps, per_device_train_batch_size=1, remove_unused_columns=False, seed=0),
        zo=cfg.optimizer,
        engine=cfg.engine,
        objective=recipe.objective,
        train_dataset=[{"batch": batch} for batch in batches],
        data_collator=lambda rows: rows[0],
    )
    assert cfg.seed == 0  # the recipe's direction seed is cfg.seed, the Trainer's args.seed
    trainer.train()
    logs = _train_logs(trainer)
    assert [log["zo_projected_grad"] for log in logs] == [info["projected_grad"] for _, info in reference]
    assert [log["loss"] for log in logs] == [float(torch.tensor(loss)) for loss, _ in reference]  # fp32 in tr_loss
    assert [log["forward_passes"] for log in logs] == [2, 4, 6, 8]
    for name, p in recipe.named:
        assert torch.equal(p, expected[name]), name


@pytest.mark.slow
def test_a_checkpoint_resumes_to_the_uninterrupted_run(tmp_path, llama, patterns):
    """Train 6 steps saving at 3 and 6; a fresh trainer on a fresh model resumes from
    checkpoint-3 and ends with the same weights, losses and forward-pass counts (HiZOO: its
    Hessian diagonal is optimizer state; a linear LR schedule: the scheduler's)."""
    data = patterns()
    args = dict(max_steps=6, save_strategy="steps", save_steps=3, lr_scheduler_type="linear", learning_rate=1e-3)
    zo = {"name": "hizoo", "eps": 1e-2}
    whole = ZOTrainer(llama, _args(tmp_path / "a", **args), zo=zo, train_dataset=data)
    whole.train()
    resumed_model = tiny_llama_fresh()
    resumed = ZOTrainer(resumed_model, _args(tmp_path / "b", **args), zo=zo, train_dataset=data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    for (name, p), q in zip(llama.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), name

    def stable(trainer):  # the log history (the resumed one: steps 1-3 from the checkpoint), RSS aside
        return [{k: v for k, v in log.items() if k != "peak_memory_bytes"} for log in _train_logs(trainer)]

    assert len(stable(whole)) == 6 and stable(resumed) == stable(whole)
    saved = json.loads((tmp_path / "a" / "checkpoint-3" / SESSION_FILE).read_text())
    assert saved["counts"] == {"train": 9}  # HiZOO: 3 passes a step


def tiny_llama_fresh():
    from tests.helpers import tiny_model

    return tiny_model("llama").requires_grad_(True)


@pytest.mark.slow
def test_accumulation_takes_one_step_on_several_batches_and_counts_their_passes(tmp_path, llama, patterns):
    """gradient_accumulation_steps=2: each step's closure evaluates both micro-batches (2 × 2
    passes a MeZO step); no gradient norm is logged (there is no gradient)."""
    data = patterns(16)
    seen = []

    class Counting(ZOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            seen.append(inputs["input_ids"][:, 0].tolist())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = Counting(
        llama, _args(tmp_path, max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2), zo="mezo",
        train_dataset=data,
    )  # fmt: skip
    trainer.train()
    logs = _train_logs(trainer)
    assert [log["forward_passes"] for log in logs] == [4, 8]
    # each evaluation (θ+εz, then θ-εz) runs both micro-batches of the step: [a, b, a, b] per step
    assert len(seen) == 8 and seen[0] == seen[2] and seen[1] == seen[3] and seen[0] != seen[1]
    assert seen[4] == seen[6] and seen[4] not in (seen[0], seen[1])
    assert "grad_norm" not in logs[0]


@pytest.mark.slow
def test_an_accumulated_estimate_is_the_estimate_on_the_joined_batch(tmp_path, patterns):
    """Batch 2 × 2 accumulated evaluates the loss of the batch of 4 (the token mean over the
    four rows, via num_items_in_batch): the same ℓ± and projected gradient, to rounding."""
    from tests.helpers import tiny_model

    infos = []
    for size, steps in ((2, 2), (4, 1)):
        model = tiny_model("llama").requires_grad_(True)
        args = _args(
            tmp_path / str(size), max_steps=1, per_device_train_batch_size=size, gradient_accumulation_steps=steps
        )
        trainer = ZOTrainer(model, args, zo={"name": "mezo", "eps": 1e-2}, train_dataset=patterns(8))
        trainer.train()
        infos.append(_train_logs(trainer)[0])
    for key in ("zo_loss_plus", "zo_loss_minus", "zo_projected_grad", "loss"):
        assert infos[0][key] == pytest.approx(infos[1][key], rel=1e-4), key


def test_the_method_comes_from_a_name_a_config_or_an_instance(tmp_path, llama):
    from zobench.engine import InPlaceEngine
    from zobench.optim import MeZO, ZOSGDMomentum

    by_name = ZOTrainer(llama, _args(tmp_path, max_steps=1, learning_rate=3e-4), zo="zo_sgd_momentum")
    optimizer = by_name.create_optimizer().zo
    assert isinstance(optimizer, ZOSGDMomentum) and optimizer.param_groups[0]["lr"] == 3e-4  # args' lr
    assert optimizer.param_groups[0]["seed"] == 7  # args.seed
    by_config = ZOTrainer(llama, _args(tmp_path, max_steps=1), zo={"name": "mezo", "lr": 1e-5, "seed": 3})
    optimizer = by_config.create_optimizer().zo
    assert optimizer.param_groups[0]["lr"] == 1e-5 and optimizer.param_groups[0]["seed"] == 3  # the config's
    mine = MeZO(llama.parameters(), lr=2e-5, engine=InPlaceEngine())
    assert ZOTrainer(llama, _args(tmp_path, max_steps=1), zo=mine).create_optimizer().zo is mine


@pytest.mark.parametrize(
    "zo, message",
    [
        ("adam", "zo.name=adam is not a zeroth-order method"),
        ("mezzo", "zo.name=mezzo: no such method; allowed "),
        ({"name": "mezo", "eps": -1}, "optimizer.eps=-1: must be a finite number > 0"),
        ({"eps": 1e-3}, "name the method"),
    ],
)
def test_a_bad_method_is_refused_in_one_line(tmp_path, llama, zo, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        ZOTrainer(llama, _args(tmp_path, max_steps=1), zo=zo)


def test_an_optimizers_tuple_beside_zo_is_refused(tmp_path, llama):
    sgd = torch.optim.SGD(llama.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="optimizers=: the optimizer of a ZO trainer is zo="):
        ZOTrainer(llama, _args(tmp_path, max_steps=1), zo="mezo", optimizers=(sgd, None))


@pytest.mark.slow
def test_logs_callbacks_and_evaluation_see_forward_passes_and_peak_memory(tmp_path, llama, patterns):
    """A TrainerCallback (what W&B's reporting is) receives the counts; evaluation forwards count
    as eval, not train; the loss decreases on a learnable task."""
    seen = []

    class Record(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    data = patterns()
    trainer = ZOTrainer(
        llama,
        _args(tmp_path, max_steps=60, eval_strategy="steps", eval_steps=30, logging_steps=10, learning_rate=3e-3),
        zo={"name": "mezo", "eps": 1e-2},
        train_dataset=data,
        eval_dataset=data[:8],
        callbacks=[Record()],
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 0.3, (before, after)
    train_logs = [log for log in seen if "loss" in log]
    assert [log["forward_passes"] for log in train_logs] == [20, 40, 60, 80, 100, 120]
    assert all(log["peak_memory_bytes"] > 0 for log in train_logs)
    evals = [log for log in seen if "eval_loss" in log]
    assert [log["forward_passes"] for log in evals] == [0, 60, 120, 120]  # evaluation adds no train passes
    assert [log["forward_passes_eval"] for log in evals] == [1, 2, 3, 4]  # 8 rows, one batch of 8 each


def test_a_lora_model_trains_its_adapter_and_leaves_the_base(tmp_path, patterns):
    """A peft model: the method's parameters are the trainable ones (the adapter), the counter
    hooks the transformers model inside the wrapper."""
    from peft import LoraConfig, get_peft_model

    from tests.helpers import tiny_model

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = ZOTrainer(model, _args(tmp_path, max_steps=3), zo="mezo", train_dataset=patterns(12))
    trainer.train()
    assert _train_logs(trainer)[-1]["forward_passes"] == 6
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name for name in trained)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != (name in trained), name  # lora_A moves, the base does not
