"""A zobench method as the optimizer of a Hugging Face Trainer."""

import torch
from transformers import AutoConfig, AutoModelForCausalLM, TrainingArguments

from zobench.integrations import ZOTrainer

torch.manual_seed(0)
config = AutoConfig.for_model("llama", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, vocab_size=64)  # fmt: skip
model = AutoModelForCausalLM.from_config(config)  # or .from_pretrained(<name>)
rows = torch.tensor([3, 7, 11, 19])[torch.randint(0, 4, (64, 8))]
dataset = [{"input_ids": row, "labels": row} for row in rows]

args = TrainingArguments(
    "out/zo-trainer", max_steps=40, per_device_train_batch_size=8, learning_rate=3e-3, logging_steps=10,
    save_steps=20, report_to="none",  # report_to="wandb" sends the same logs to W&B
)  # fmt: skip
trainer = ZOTrainer(
    model, args, zo={"name": "mezo", "eps": 1e-2},  # any method: "hizoo", {"name": "fzoo", ...}, ...
    train_dataset=dataset, eval_dataset=dataset[:16],
)  # fmt: skip
trainer.train()  # trainer.train(resume_from_checkpoint=True) continues exactly
print(trainer.evaluate())  # eval_loss, forward_passes, forward_passes_eval, peak_memory_bytes
