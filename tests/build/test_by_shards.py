"""``build.by_shards``: a model loaded straight into 2 ranks' FSDP2 shards (Gloo, CPU, real
processes): each rank's shards equal the same rows of the in-memory model, bit for bit (a
``*-random`` model from its taped init; a safetensors checkpoint read by rows, a tied weight saved
under its other name included), each rank allocates half the parameter bytes, and a 200 MB model
loads with a process peak well under the whole model's size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import transformers

from tests.helpers import TINY_ARCHS, finish_rank, free_port, tiny_model

#: a 200 MB float32 Llama (16 blocks of 9.4 MB, a 49 MB tied embedding): the memory check
BIG = dict(
    model_type="llama", hidden_size=384, intermediate_size=1536, num_hidden_layers=16, num_attention_heads=6,
    vocab_size=32000, tie_word_embeddings=True,
)  # fmt: skip


def _config(kwargs: dict):
    kwargs = dict(kwargs)
    return transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def _hwm() -> int:
    """This process's peak RSS (VmHWM), bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _load(config, path: Path | None, world: int):
    """The model by shards: on meta, sharded, then filled (random: seed 3's init; else ``path``)."""
    from zobench.build.by_shards import Source, all_names, meta_checkpoint
    from zobench.dist.sharded import shard_model
    from zobench.models.meta import Recorder

    auto = transformers.AutoModelForCausalLM
    with Recorder() as tape:
        torch.manual_seed(3)  # tiny_model's seed
        model = (
            auto.from_config(config, dtype=torch.float32)
            if path is None
            else meta_checkpoint(config, auto, torch.float32)
        )
    source = Source(tape, model, all_names(model), path, "cpu")
    shard_model(model, world, device="cpu")
    return source.materialise(model), source


def _shards(model) -> dict:
    from zobench.engine.sharded import global_offset

    return {n: (global_offset(p), p.to_local().clone()) for n, p in model.named_parameters()}


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as tdist

    tdist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    for family in ("llama", "opt"):
        config = _config(TINY_ARCHS[family][1])
        results[family] = _shards(_load(config, None, world)[0])
        results[f"{family}-checkpoint"] = _shards(_load(config, Path(out) / family, world)[0])
    # the modeling code is imported by now (the tiny Llama): 200 MB of RSS not counted against the load
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here
    before = _hwm()
    model, source = _load(_config(BIG), None, world)
    whole = sum(p.numel() * p.element_size() for p in model.parameters())
    results["big"] = {"whole": whole, "loaded": source.loaded_bytes, "peak_rise": _hwm() - before}
    torch.save(results, Path(out) / f"rank{rank}.pt")
    finish_rank()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    out = tmp_path_factory.mktemp("by_shards")
    for family in ("llama", "opt"):
        tiny_model(family, seed=11).save_pretrained(out / family)  # safetensors, tied embedding saved once
    mp.spawn(_rank, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["random", "checkpoint"])
@pytest.mark.parametrize("family", ["llama", "opt"])
def test_each_ranks_shards_are_the_in_memory_models_rows(family, source, loaded):
    reference = tiny_model(family, seed=3 if source == "random" else 11)
    weights = dict(reference.named_parameters())
    key = family if source == "random" else f"{family}-checkpoint"
    covered = {name: 0 for name in weights}
    for rank in loaded:
        for name, (offset, shard) in rank[key].items():
            assert torch.equal(shard.reshape(-1), weights[name].reshape(-1)[offset : offset + shard.numel()]), name
            covered[name] += shard.numel()
    assert covered == {name: p.numel() for name, p in weights.items()}  # every element, once


@pytest.mark.slow
def test_each_rank_loads_half_the_weights_and_never_the_whole_model(loaded):
    for rank in loaded:
        big = rank["big"]
        assert big["whole"] > 190e6 and abs(big["loaded"] - big["whole"] / 2) <= 0.01 * big["whole"]
        # the whole model in memory would be >= 1.0x; by shards: half + one whole tensor replayed
        assert big["peak_rise"] < 0.7 * big["whole"], big  # measured: 0.54


def test_a_checkpoint_without_safetensors_is_refused_in_one_line(tmp_path, monkeypatch):
    """A ``pytorch_model.bin`` (a pickle) cannot be read by rows: one line before anything is built."""
    from tests.helpers import compose_run
    from zobench.build.by_shards import load_meta
    from zobench.errors import DataNotFoundError
    from zobench.models import loading

    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    monkeypatch.setattr(loading, "checkpoint_dir", lambda cfg, cache_dir=None: tmp_path)
    monkeypatch.setattr(loading, "load_tokenizer", lambda *a: pytest.fail("the tokenizer was loaded first"))
    cfg = compose_run("model=smollm2-135m")
    with pytest.raises(
        DataNotFoundError, match=r"model=smollm2-135m: .* holds no model.safetensors; dist.mode=sharded"
    ):
        load_meta(cfg, "cpu", lambda m: pytest.fail("built"))
