"""ZOSFTTrainer: TRL's SFTTrainer trained by a zobench ZO method (its own dataset processing,
collator and loss), the fused LM head's case for the in-place engine."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from zobench.errors import ConfigError  # noqa: E402
from zobench.integrations import ZOSFTTrainer  # noqa: E402


def _tokenizer(vocab: int = 64):
    """A word-level tokenizer of the tiny model's ids: word ``t<i>`` is id i (t0 pads, t1 ends)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab)}
    core = Tokenizer(models.WordLevel(words, unk_token="t2"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="t0", eos_token="t1", unk_token="t2")


def _config(out, **kwargs):
    from trl import SFTConfig

    defaults = dict(
        max_steps=40, per_device_train_batch_size=8, learning_rate=3e-3, logging_steps=10, report_to=[],
        save_strategy="no", use_cpu=True, lr_scheduler_type="constant", disable_tqdm=True, bf16=False,
        max_length=16, seed=0,
    )  # fmt: skip
    return SFTConfig(str(out), **{**defaults, **kwargs})


def _dataset(n: int = 32):
    from datasets import Dataset

    picks = torch.randint(0, 4, (n, 8), generator=torch.Generator().manual_seed(0))
    words = [("t3", "t7", "t11", "t19")[i] for i in picks.flatten().tolist()]
    return Dataset.from_dict({"text": [" ".join(words[i * 8 : (i + 1) * 8]) for i in range(n)]})


@pytest.mark.slow
def test_an_sft_run_trains_and_logs_forward_passes(tmp_path, llama):
    """Plain-text SFT through TRL's tokenisation and loss: the loss falls, every train log
    carries the forward passes (2 a MeZO step) and TRL's own metrics."""
    data = _dataset()
    trainer = ZOSFTTrainer(
        llama,
        args=_config(tmp_path),
        zo={"name": "mezo", "eps": 1e-2},
        train_dataset=data,
        eval_dataset=data.select(range(8)),
        processing_class=_tokenizer(),
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 0.3, (before, after)
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["forward_passes"] for log in logs] == [20, 40, 60, 80]
    assert all("mean_token_accuracy" in log for log in logs)  # TRL's metrics, filed under train
    assert type(trainer.zo_optimizer).__name__ == "MeZO"


def test_the_virtual_engine_is_refused_for_the_fused_lm_head(tmp_path, llama):
    with pytest.raises(ConfigError, match="engine.mode=virtual: TRL's fused LM head reads lm_head.weight"):
        ZOSFTTrainer(llama, args=_config(tmp_path), zo="mezo", engine="torch", train_dataset=_dataset(4),
                     processing_class=_tokenizer())  # fmt: skip


def test_the_fused_lm_head_escapes_a_virtual_perturbation(tmp_path, llama):
    """Why ZOSFTTrainer moves weights in place: at θ+εz, TRL's loss (fused LM head) under the
    virtual engine differs from the in-place value, while the model's own loss agrees."""
    from zobench.engine import Direction, InPlaceEngine, VirtualEngine

    trainer = ZOSFTTrainer(llama, args=_config(tmp_path), zo="mezo", train_dataset=_dataset(8),
                           processing_class=_tokenizer())  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    params = [(pid, p) for pid, p in enumerate(llama.parameters())]
    direction = Direction(1, "gaussian")

    def at_plus(engine, loss) -> float:
        engine.perturb(params, direction, 0.1)
        with torch.no_grad():
            value = float(loss())
        engine.restore(params)
        return value

    trl_loss = lambda: trainer.compute_loss(llama, dict(batch))  # noqa: E731
    own_loss = lambda: llama(input_ids=batch["input_ids"], labels=batch["labels"]).loss  # noqa: E731
    virtual = VirtualEngine(llama, paired=False)
    virtual_values = at_plus(virtual, trl_loss), at_plus(virtual, own_loss)
    virtual.remove()
    in_place = at_plus(InPlaceEngine(), trl_loss), at_plus(InPlaceEngine(), own_loss)
    assert abs(virtual_values[0] - in_place[0]) > 1e-2  # the head's perturbation is missing
    assert virtual_values[1] == pytest.approx(in_place[1], abs=1e-5)
