"""An offloaded model written as a sharded Hugging Face checkpoint, one block in memory at a time.

The layout is transformers' own for a checkpoint too large for one file (``save_pretrained``
with ``max_shard_size``): ``model-00001-of-0000N.safetensors`` shards and
``model.safetensors.index.json`` (``{"metadata": {"total_size"}, "weight_map": {name: shard}}``),
which ``from_pretrained`` reads shard by shard. Shard 1 holds the resident layers (embeddings,
final norm, LM head; a tied weight once, under its first name, as ``save_pretrained`` keeps it:
``from_pretrained`` ties it again), shard k + 2 block k, read from the store (the offloader is
flushed first: every block at its latest step). Beside them ``config.json`` (and
``generation_config.json`` for a generative model), so the folder loads with
``AutoModelForCausalLM.from_pretrained(folder)`` (``AutoModelForMaskedLM`` for an encoder).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..checkpoint import writing
from .executor import STATE, Offloader

INDEX = "model.safetensors.index.json"


def shard_name(index: int, count: int) -> str:
    """transformers' shard file name (``model-00001-of-00005.safetensors``), 1-based."""
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def resident_state(model: nn.Module, offloader: Offloader) -> dict[str, torch.Tensor]:
    """The model's state dict outside the blocks (tied weights once), persistent buffers included."""
    block_ids = {id(t) for named in offloader.params for _, t in named}
    prefix = offloader.prefix + "."
    out, seen = {}, set(block_ids)
    for name, t in model.state_dict(keep_vars=True).items():
        if name.startswith(prefix) or id(t) in seen:
            continue
        seen.add(id(t))
        out[name] = t.detach().to("cpu").contiguous()
    return out


def block_state(offloader: Offloader, index: int) -> dict[str, torch.Tensor]:
    """Block ``index``'s weights by qualified name, from the store (its optimizer state left out),
    with the block's persistent buffers (the same in every block: they are not trained)."""
    prefix = f"{offloader.prefix}.{index}."
    tensors = {prefix + n: t.contiguous() for n, t in offloader.store.read(index).items() if not n.startswith(STATE)}
    params = {id(p) for _, p in offloader.params[index]}
    for name, t in offloader.blocks[index].state_dict(keep_vars=True).items():
        if id(t) not in params and prefix + name not in tensors:
            tensors[prefix + name] = t.detach().to("cpu").contiguous()
    return tensors


def save_sharded(model: nn.Module, offloader: Offloader, folder: Path) -> Path:
    """Write ``model`` (offloaded by ``offloader``) to ``folder`` as a sharded checkpoint with
    its config (module docstring); the caller renames a temporary folder into place."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    offloader.flush()
    count = len(offloader.blocks) + 1
    weight_map: dict[str, str] = {}
    total = 0
    parts = [lambda: resident_state(model, offloader)] + [
        (lambda i=i: block_state(offloader, i)) for i in range(len(offloader.blocks))
    ]
    for k, part in enumerate(parts):
        tensors = part()  # one block in memory at a time
        name = shard_name(k, count)
        with writing(folder / name):
            save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    save_index(folder, weight_map, total, model)
    return folder


def save_index(folder: Path, weight_map: dict[str, str], total: int, model: nn.Module) -> None:
    """``model.safetensors.index.json`` (``weight_map``: each tensor's file, ``total``: their
    bytes) and ``model``'s ``config.json`` (and ``generation_config.json`` for a generative model)
    in ``folder``: what ``from_pretrained`` reads to load the safetensors files there."""
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    config = getattr(model, "config", None)
    if config is not None:
        config.save_pretrained(folder)
    generation = getattr(model, "generation_config", None)
    if generation is not None and getattr(model, "can_generate", lambda: False)():
        generation.save_pretrained(folder)
