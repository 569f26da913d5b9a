"""A ``*-random`` model draws the same weights whatever ``offload`` (issue 29): the offloaded
build replays offload=none's initialisation block by block (``offload/build.py``: the
model built on meta under ``models.meta.Recorder``, each block's tapes replayed in turn)."""

from __future__ import annotations

import pytest
import torch
import transformers

from tests.helpers import TINY_ARCHS, compose_run, tiny_model
from zobench.build.model import load_model_or_explain
from zobench.offload import CpuStore, find_blocks
from zobench.offload.build import init_random_into
from zobench.offload.setup import load_model


def _stored(model, store) -> dict[str, torch.Tensor]:
    """Every weight of an offloaded model by qualified name, the blocks' from the store."""
    prefix, blocks = find_blocks(model)
    out = {n: p for n, p in model.named_parameters(remove_duplicate=False) if not n.startswith(prefix + ".")}
    for i in range(len(blocks)):
        out.update({f"{prefix}.{i}.{n}": t for n, t in store.read(i).items()})
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", sorted(TINY_ARCHS))
def test_block_by_block_init_draws_offload_none_weights(family, dtype):
    kind, kwargs = TINY_ARCHS[family]
    kwargs = {**kwargs, "num_hidden_layers": 3}  # more blocks than the one-block trace: its expansion is tested
    config = transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModelForMaskedLM
    torch.manual_seed(5)
    reference = auto.from_config(config, dtype=dtype)
    model, store = init_random_into(auto, config, dtype, lambda n: CpuStore(n, pin=False), init_seed=5)
    weights = _stored(model, store)
    expected = dict(reference.named_parameters(remove_duplicate=False))
    assert weights.keys() == expected.keys()
    for name, p in expected.items():
        assert torch.equal(weights[name], p), name
    for (name, b), (_, c) in zip(model.named_buffers(), reference.named_buffers(), strict=True):
        assert torch.equal(b, c), name
    assert torch.get_rng_state().equal(_rng_after(auto, config, dtype, 5))  # the stream left where none leaves it


def _rng_after(auto, config, dtype, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    auto.from_config(config, dtype=dtype)
    return torch.get_rng_state()


def test_resume_build_draws_offload_none_resident_layers():
    """``fill=False`` (a resume): the blocks' draws only advance the RNG; the resident layers,
    drawn after them, are offload=none's."""
    reference = tiny_model("opt", seed=2)
    kwargs = dict(TINY_ARCHS["opt"][1])
    config = transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    auto = transformers.AutoModelForCausalLM
    model, store = init_random_into(auto, config, torch.float32, lambda n: CpuStore(n, pin=False), 2, fill=False)
    prefix, _ = find_blocks(model)
    resident = [(n, p) for n, p in reference.named_parameters() if not n.startswith(prefix + ".")]
    assert resident and all(torch.equal(dict(model.named_parameters())[n], p) for n, p in resident)


def test_offload_none_cpu_and_disk_start_from_the_same_weights(tmp_path):
    """Through the run's loader: ``model=tiny-llama`` (a ``*-random`` model) with offload none,
    cpu and disk holds the same weights, bit for bit."""
    device = torch.device("cpu")
    cfg = compose_run("model=tiny-llama", "device=cpu")
    whole, _ = load_model_or_explain(cfg, device)
    expected = dict(whole.named_parameters(remove_duplicate=False))
    for mode in ("cpu", "disk"):
        cfg = compose_run("model=tiny-llama", "device=cpu", f"offload={mode}")
        model, _ = load_model(cfg, device, tmp_path / mode, load_model_or_explain)
        offloader = model.zobench_offloader
        weights = _stored(model, offloader.store)
        assert weights.keys() == expected.keys()
        assert all(torch.equal(weights[n], p) for n, p in expected.items()), mode
        offloader.close()
