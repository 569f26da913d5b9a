"""ZOLightningMixin: a LightningModule trained by a zobench ZO method in manual optimisation;
Lightning's step counter, logging, LR scheduler and checkpoints see the ZO steps."""

from __future__ import annotations

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning")

from zobench.integrations import ZOLightningMixin  # noqa: E402


class TinyLM(ZOLightningMixin, pl.LightningModule):
    def __init__(self, model, zo="mezo") -> None:
        super().__init__()
        self.model, self.zo = model, zo

    def zo_loss(self, batch) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.zo_loss(batch))


def _loader(patterns, n: int, batch_size: int = 8):
    return torch.utils.data.DataLoader(patterns(n), batch_size=batch_size)


def _trainer(tmp_path, **kwargs):
    defaults = dict(
        max_steps=40, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    return pl.Trainer(**{**defaults, **kwargs})


@pytest.mark.slow
def test_a_lightning_run_trains_and_logs_forward_passes(tmp_path, llama, patterns):
    module = TinyLM(llama, zo={"name": "mezo", "lr": 3e-3, "eps": 1e-2})
    trainer = _trainer(tmp_path, limit_val_batches=1)
    before = trainer.validate(module, _loader(patterns, 8), verbose=False)[0]["val_loss"]
    trainer.fit(module, _loader(patterns, 32))
    metrics = dict(trainer.logged_metrics)
    assert metrics["forward_passes"] == 80 and metrics["peak_memory_bytes"] > 0
    assert metrics["forward_passes_eval"] == 1  # the validation batch before fit
    assert "projected_grad" in metrics and "train_loss" in metrics
    assert trainer.global_step == 40  # Lightning counted the ZO steps
    after = trainer.validate(module, _loader(patterns, 8), verbose=False)[0]["val_loss"]
    assert after < before - 0.3, (before, after)


@pytest.mark.slow
def test_a_lightning_checkpoint_resumes_to_the_uninterrupted_run(tmp_path, llama, patterns):
    """fit(ckpt_path=...) from step 3 of a ZO-SGD-momentum run (momentum: optimizer state) ends
    where the uninterrupted 6 steps end, with the same forward-pass count. Step 3 ends an epoch
    (3 batches): Lightning restores a plain DataLoader's position only at epoch ends."""
    from tests.helpers import tiny_model

    zo = {"name": "zo_sgd_momentum", "lr": 1e-3, "eps": 1e-2}
    whole = TinyLM(llama, zo)
    saves = pl.callbacks.ModelCheckpoint(tmp_path / "ckpt", "{step}", every_n_train_steps=3, save_top_k=-1)
    _trainer(tmp_path, max_steps=6, enable_checkpointing=True, callbacks=[saves]).fit(whole, _loader(patterns, 24))
    resumed = TinyLM(tiny_model("llama").requires_grad_(True), zo)
    _trainer(tmp_path, max_steps=6).fit(resumed, _loader(patterns, 24), ckpt_path=tmp_path / "ckpt" / "step=3.ckpt")
    assert not torch.equal(llama.model.embed_tokens.weight, tiny_model("llama").model.embed_tokens.weight)
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    assert resumed.zo_session.counts()["forward_passes"] == whole.zo_session.counts()["forward_passes"] == 12
