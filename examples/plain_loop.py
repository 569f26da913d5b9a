"""A zobench method in any training loop: a torch optimizer whose step takes a closure."""

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from zobench.engine import build_engine
from zobench.optim import MeZO
from zobench.telemetry import ForwardCounter

torch.manual_seed(0)
# a tiny random Llama, so this runs anywhere; or AutoModelForCausalLM.from_pretrained(<name>)
config = AutoConfig.for_model("llama", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, vocab_size=64)  # fmt: skip
model = AutoModelForCausalLM.from_config(config).eval()  # eval: no dropout noise in L(θ±εz)
rows = torch.tensor([3, 7, 11, 19])[torch.randint(0, 4, (64, 8))]  # a small task: which ids occur
loader = torch.utils.data.DataLoader(rows, batch_size=8, shuffle=True)

engine = build_engine("torch", "virtual", model)  # virtual: exact restore; "inplace": MeZO's arithmetic
optimizer = MeZO(model.parameters(), lr=3e-3, eps=1e-2, engine=engine, seed=0)
counter = ForwardCounter(model)  # counts every forward pass of the model

for epoch in range(5):
    for ids in loader:

        def closure():  # the loss at the current parameters; the method calls it under ±εz
            return model(input_ids=ids, labels=ids).loss

        with torch.no_grad():  # forward only: no graph, no gradients
            loss = optimizer.step(closure)
    print(f"epoch {epoch}: loss {float(loss):.3f}, forward passes {counter['train']}")
