"""Models built straight into a block store: random block by block, checkpoints read lazily."""

from __future__ import annotations

import pytest
import torch
import transformers

from tests.helpers import TINY_ARCHS, tiny_model
from zobench.offload import CpuStore, DiskStore, Offloader
from zobench.offload.build import evict_into, init_random_into, load_checkpoint_into


def _config(family: str):
    kwargs = dict(TINY_ARCHS[family][1])
    return transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_checkpoint_read_lazily_into_the_store_equals_the_model(family, tmp_path):
    reference = tiny_model(family)
    reference.save_pretrained(tmp_path / "ckpt")  # safetensors
    model, store = load_checkpoint_into(
        transformers.AutoModelForCausalLM,
        _config(family),
        torch.float32,
        tmp_path / "ckpt",
        lambda n: DiskStore(tmp_path / "store", n),
    )
    assert all(p.untyped_storage().nbytes() <= 4 for block in store_blocks(model) for p in block.parameters())
    offloader = Offloader(model, store)
    offloader.adopt()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_logits(model, ids), _logits(reference, ids))
    weights = offloader.state_dict()
    for name, p in reference.named_parameters():
        assert torch.equal(weights[name], p), name
    offloader.close()


@pytest.mark.parametrize("saved_as", ["lm_head.weight", "missing"])
def test_a_tied_weight_saved_under_its_other_name_is_read_or_refused(saved_as, tmp_path):
    """SmolLM2's GGUF conversion saves its tied embedding once, as ``lm_head.weight``: it must be
    read under that name (it was once skipped, leaving the embedding random); a checkpoint with
    neither name is refused, naming both."""
    from safetensors.torch import load_file, save_file

    reference = tiny_model("llama")  # tie_word_embeddings
    reference.save_pretrained(tmp_path / "ckpt")
    file = tmp_path / "ckpt" / "model.safetensors"
    tensors = load_file(file)
    embedding = tensors.pop("model.embed_tokens.weight")
    tensors.pop("lm_head.weight", None)
    if saved_as != "missing":
        tensors[saved_as] = embedding
    save_file(tensors, file, metadata={"format": "pt"})
    build = lambda: load_checkpoint_into(  # noqa: E731
        transformers.AutoModelForCausalLM, _config("llama"), torch.float32, tmp_path / "ckpt", CpuStore
    )
    if saved_as == "missing":
        with pytest.raises(KeyError, match="model.embed_tokens.weight / lm_head.weight"):
            build()
        return
    model, store = build()
    offloader = Offloader(model, store)
    offloader.adopt()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_logits(model, ids), _logits(reference, ids))
    offloader.close()


def store_blocks(model):
    from zobench.offload import find_blocks

    return find_blocks(model)[1]


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_random_model_is_initialised_block_by_block(family, tmp_path):
    model, store = init_random_into(
        transformers.AutoModelForCausalLM, _config(family), torch.float32, lambda n: DiskStore(tmp_path, n), init_seed=0
    )
    assert len(store) == 2 and [store.step(i) for i in range(2)] == [0, 0]
    blocks = [store.read(i) for i in range(2)]
    matrices = [name for name, t in blocks[0].items() if t.ndim == 2]
    std = _config(family).initializer_range if hasattr(_config(family), "initializer_range") else 0.02
    for name in matrices:  # the model's own _init_weights: N(0, initializer_range), blocks differ
        assert abs(blocks[0][name].std().item() - std) < std / 2, name
        assert not torch.equal(blocks[0][name], blocks[1][name])
    offloader = Offloader(model, store)
    offloader.adopt()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    logits = _logits(model, ids)
    assert torch.isfinite(logits).all()
    offloader.close()
    _, again = init_random_into(  # the same seed draws the same blocks, whatever the store
        transformers.AutoModelForCausalLM, _config(family), torch.float32, lambda n: CpuStore(n, pin=False), init_seed=0
    )
    for i in range(2):
        assert all(torch.equal(again.read(i)[name], t) for name, t in blocks[i].items())


def test_evict_into_keeps_the_weights(tmp_path):
    reference, model = tiny_model("llama"), tiny_model("llama")
    store = evict_into(model, lambda n: CpuStore(n))
    offloader = Offloader(model, store)
    offloader.adopt()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_logits(model, ids), _logits(reference, ids))


@pytest.mark.parametrize("source", ["checkpoint", "random"])
def test_a_resume_build_keeps_the_store_and_draws_only_the_resident_layers(source, tmp_path):
    """``fill=False`` (a resumed offload=disk run): the store's blocks, trained by the run, are not
    overwritten by the source's; the resident layers are the source's, as in the first build."""
    family, factory = "llama", lambda n: DiskStore(tmp_path / "store", n)
    if source == "checkpoint":
        tiny_model(family).save_pretrained(tmp_path / "ckpt")
        args = (transformers.AutoModelForCausalLM, _config(family), torch.float32, tmp_path / "ckpt", factory)
        build = lambda fill: load_checkpoint_into(*args, fill=fill)  # noqa: E731
    else:
        args = (transformers.AutoModelForCausalLM, _config(family), torch.float32, factory, 3)
        build = lambda fill: init_random_into(*args, fill=fill)  # noqa: E731
    first, store = build(True)
    store.write(0, {name: t + 1 for name, t in store.read(0).items()}, 5)  # the run's step 5
    trained = store.read(0)
    again, store = build(False)
    assert store.step(0) == 5 and all(torch.equal(store.read(0)[k], v) for k, v in trained.items())
    resident = [(n, p) for n, p in again.named_parameters() if ".layers." not in n]
    assert resident and all(torch.equal(p, dict(first.named_parameters())[n]) for n, p in resident)
