"""A zobench method in a Lightning module (manual optimisation: the mixin takes the ZO step)."""

import pytorch_lightning as pl  # or: import lightning.pytorch as pl
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from zobench.integrations import ZOLightningMixin


class CausalLM(ZOLightningMixin, pl.LightningModule):
    zo = {"name": "mezo", "lr": 3e-3, "eps": 1e-2}  # any method; zo_engine, zo_seed likewise

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model  # its forward calls are the counted forward passes

    def zo_loss(self, batch):  # the loss of a batch, forward only
        return self.model(input_ids=batch, labels=batch).loss


torch.manual_seed(0)
config = AutoConfig.for_model("llama", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, vocab_size=64)  # fmt: skip
module = CausalLM(AutoModelForCausalLM.from_config(config))  # or .from_pretrained(<name>)
rows = torch.tensor([3, 7, 11, 19])[torch.randint(0, 4, (64, 8))]
loader = torch.utils.data.DataLoader(rows, batch_size=8, shuffle=True)
trainer = pl.Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False)
trainer.fit(module, loader)
print({k: float(v) for k, v in trainer.logged_metrics.items()})  # train_loss, forward_passes, ...
