"""``models.meta.Recorder``: a model built on meta (no memory for its weights) whose every tensor
replays, alone, to the in-memory build's value bit for bit, the generator left where the
in-memory build leaves it (what ``dist.mode=sharded`` loads a ``*-random`` model and LoRA with)."""

from __future__ import annotations

import pytest
import torch
import transformers

from tests.helpers import TINY_ARCHS
from zobench.errors import ConfigError
from zobench.models import meta
from zobench.models.meta import Recorder


def _build(family: str, dtype: torch.dtype, seed: int = 3):
    kind, kwargs = TINY_ARCHS[family]
    kwargs = dict(kwargs)
    config = transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModelForMaskedLM
    torch.manual_seed(seed)
    return auto.from_config(config, dtype=dtype)


def _tensors(model) -> dict:
    return dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers())


def _assert_replays(meta, tape, reference) -> None:
    tensors = _tensors(meta)
    for name, expected in _tensors(reference).items():
        t = tensors[name]
        value = tape.replay(tape.ops_of(t), t) if t.is_meta else t  # small buffers (arange) stay real
        assert torch.equal(value, expected), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", sorted(TINY_ARCHS))
def test_every_tensor_replays_to_the_in_memory_build(family, dtype):
    reference = _build(family, dtype)
    after = torch.get_rng_state()
    with Recorder() as tape:
        meta = _build(family, dtype)
    assert torch.equal(torch.get_rng_state(), after)  # the same stream was drawn
    assert all(p.is_meta for p in meta.parameters())
    _assert_replays(meta, tape, reference)


def test_lora_adapters_built_on_meta_replay_to_apply_tunings_values():
    from zobench.models import apply_tuning

    lora = {"name": "lora", "r": 4, "alpha": 8}
    reference = apply_tuning(_build("llama", torch.float32), dict(lora), "causal", seed=7)
    with Recorder() as tape:
        meta = apply_tuning(_build("llama", torch.float32), dict(lora), "causal", seed=7)
    assert any("lora_A" in name for name, _ in meta.named_parameters())
    _assert_replays(meta, tape, reference)


def test_a_random_tensor_drawn_from_a_meta_one_is_refused():
    """An out-of-place draw (its value is no write on a recorded tensor): one line, not wrong weights."""
    with Recorder(), pytest.raises(ConfigError, match="cannot be replayed"):
        torch.bernoulli(torch.full((4,), 0.5))


def test_a_replay_runs_only_the_ops_from_the_last_whole_overwrite():
    """A constructor's draw that a later whole draw overwrites is not drawn again at replay (the
    recorded state restores the generator for the later one); a partial write after it is kept."""
    torch.manual_seed(4)
    expected = torch.empty(4, 3).uniform_()
    expected.normal_()
    expected[1].zero_()
    torch.manual_seed(4)
    with Recorder() as tape:
        t = torch.empty(4, 3)
        t.uniform_()
        t.normal_()
        t[1].zero_()
    live = meta._live(tape.ops_of(t), t.numel())
    assert [op.func._schema.name for op in live] == ["aten::normal_", "aten::zero_"]
    assert torch.equal(tape.replay(tape.ops_of(t), t), expected)
