"""LoRA and prefix tuning through peft: what is trained, that it acts, and that ZO steps move only it."""

import pytest
import torch

from tests.helpers import tiny_model
from zobench.engine import VirtualEngine
from zobench.errors import ConfigError
from zobench.models import apply_tuning, hf_model, trainable
from zobench.optim.mezo import MeZO

LORA = {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "query", "value"]}
PREFIX = {"name": "prefix", "num_virtual_tokens": 5, "init_by_real_act": True}
FAMILIES = ["llama", "opt", "phi", "gemma3", "roberta"]


def _family(name):
    return "masked" if name == "roberta" else "causal"


def _logits(model, ids):
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # a left-padded row
    return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_only_the_query_value_factors(family):
    model = apply_tuning(tiny_model(family), LORA, _family(family), seed=0)
    names = [n for n, _ in trainable(model)]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert all(any(t in n for t in ("q_proj", "v_proj", "query", "value")) for n in names)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_is_one_trainable_embedding_that_changes_the_output(family):
    ids = torch.randint(5, 60, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = _logits(tiny_model(family), ids)
        model = apply_tuning(tiny_model(family), PREFIX, _family(family), seed=0)
        tuned = _logits(model, ids)
    ((name, p),) = trainable(model)
    assert "prompt_encoder" in name and p.shape[0] == 5
    assert tuned.shape == plain.shape and not torch.allclose(tuned, plain)


def test_prefix_initialised_from_real_activations():
    """The prefix equals the frozen model's keys/values for 5 random tokens (MeZO's init)."""
    model = apply_tuning(tiny_model("llama"), PREFIX, "causal", seed=3)
    base = hf_model(model)
    ids = torch.randint(0, base.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cache = base(input_ids=ids, use_cache=True).past_key_values
        prompt = model.get_prompt(batch_size=1)
    for layer in range(base.config.num_hidden_layers):
        assert torch.equal(prompt.layers[layer].keys, cache.layers[layer].keys)
        assert torch.equal(prompt.layers[layer].values, cache.layers[layer].values)


def test_lora_b_starts_at_zero_so_the_tuned_model_equals_the_base():
    ids = torch.randint(5, 60, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(
            _logits(apply_tuning(tiny_model("opt"), LORA, "causal"), ids), _logits(tiny_model("opt"), ids)
        )


@pytest.mark.parametrize("tuning", [LORA, PREFIX], ids=["lora", "prefix"])
def test_a_mezo_step_moves_only_the_trainable_parameters(tuning):
    model = apply_tuning(tiny_model("llama"), tuning, "causal", seed=0)
    before = {n: p.clone() for n, p in model.named_parameters()}
    ids = torch.randint(5, 60, (2, 6), generator=torch.Generator().manual_seed(2))

    def closure():
        return _logits(model, ids).float().logsumexp(-1).mean()

    optimizer = MeZO([p for _, p in trainable(model)], lr=1e-2, eps=1e-2, engine=VirtualEngine(model), seed=0)
    with torch.no_grad():
        optimizer.step(closure)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {n for n, _ in trainable(model)}
    assert optimizer.last_step_info["projected_grad"] != 0.0


def test_unknown_lora_targets_are_refused():
    with pytest.raises(ConfigError, match="tuning.target_modules"):
        apply_tuning(tiny_model("llama"), {**LORA, "target_modules": ["attn_qv"]}, "causal")
