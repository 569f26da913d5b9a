"""Supervised fine-tuning with TRL's SFTTrainer, trained by a zobench method."""

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
from trl import SFTConfig

from zobench.integrations import ZOSFTTrainer

torch.manual_seed(0)
config = AutoConfig.for_model("llama", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, vocab_size=64)  # fmt: skip
model = AutoModelForCausalLM.from_config(config)  # or .from_pretrained(<name>) with its AutoTokenizer
words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(64)}, unk_token="t2"))  # word t<i> is id i
words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="t0", eos_token="t1", unk_token="t2")
texts = [" ".join(f"t{i}" for i in torch.tensor([3, 7, 11, 19])[torch.randint(0, 4, (8,))]) for _ in range(64)]
dataset = Dataset.from_dict({"text": texts})

args = SFTConfig(
    "out/zo-sft", max_steps=40, per_device_train_batch_size=8, learning_rate=3e-3, logging_steps=10,
    max_length=16, report_to="none", bf16=torch.cuda.is_available(),
)  # fmt: skip
trainer = ZOSFTTrainer(
    model, args=args, zo={"name": "mezo", "eps": 1e-2}, train_dataset=dataset, eval_dataset=dataset.select(range(16)),
    processing_class=tokenizer,
)  # fmt: skip
trainer.train()
print(trainer.evaluate())
