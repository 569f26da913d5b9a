"""Offloaded models: blocks go into the store without the whole model ever being in memory.

* ``init_random_into``: a ``*-random`` model (``source: random``), built on the meta device under
  ``models.meta.Recorder`` (no memory; every tensor's writes taped with the generator state
  before each draw), then its resident tensors replayed and, block by block, each block's
  replayed, written to the store and released. Peak: the resident layers + one block. The
  weights are ``offload=none``'s for the same seed, bit for bit (the same tape that
  ``dist.mode=sharded`` loads by shards with, ``build/by_shards.py``).
* ``load_checkpoint_into``: safetensors checkpoints (a converted GGUF, a hub snapshot, a local
  folder) read tensor by tensor with ``safetensors.safe_open``: resident weights into the model,
  each block's into the store, one block in memory at a time.
* ``materialise``: the inverse of ``evict_into``, a stored model whole in memory again.
* ``evict_into``: a model already in memory (``offload=cpu``, where host RAM holds the model by
  definition): its blocks written to the store and released; the weights equal ``offload=none``'s.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..models.checkpoint_files import checkpoint_files, key_resolver
from ..models.meta import Recorder, Tape
from .blocks import find_blocks
from .executor import placeholder
from .store import BlockStore


def _materialise_resident(model: nn.Module, shell: nn.Module, blocks: nn.ModuleList) -> None:
    """Give ``model``'s non-block parameters and buffers the values (and memory) of ``shell``'s,
    a one-block model of the same config built for real; the blocks stay on meta."""
    block_ids = {id(m) for m in blocks.modules()}
    shell_state = dict(shell.named_parameters(remove_duplicate=False)) | dict(shell.named_buffers())
    for name, module in model.named_modules():
        if id(module) in block_ids:
            continue
        for key, value in list(module._parameters.items()):
            if value is not None:  # a meta tensor cannot take CPU data: a new Parameter
                real = shell_state[f"{name}.{key}" if name else key].detach()
                module._parameters[key] = nn.Parameter(real, requires_grad=False)
        for key, value in list(module._buffers.items()):
            if value is not None:
                module._buffers[key] = shell_state[f"{name}.{key}" if name else key].detach()


def _copy_buffers(block: nn.Module, template: nn.Module) -> None:
    """A block's buffers (non-trainable constants) from the template block: identical in every layer."""
    for name, buffer in template.named_buffers():
        owner, _, key = name.rpartition(".")
        target = block.get_submodule(owner) if owner else block
        target._buffers[key] = buffer.clone()


def _shell_blocks(shell: nn.Module) -> nn.ModuleList:
    """The one-block model's block list (``find_blocks`` needs two blocks to see a list)."""
    for module in shell.modules():
        if isinstance(module, nn.ModuleList) and len(module) == 1 and any(True for _ in module.parameters()):
            return module
    raise ValueError("offload: the one-block model has no block list")


def _skeleton(auto, config, dtype: torch.dtype) -> tuple[Any, nn.Module]:
    """``config``'s model with real resident layers and its blocks on meta (no memory), and the
    one-block model's block (the template of the blocks' buffers)."""
    with torch.device("meta"):
        model = auto.from_config(config, dtype=dtype)
    small = copy.deepcopy(config)
    small.num_hidden_layers = 1  # every causal/masked LM config of transformers names its depth so
    shell = auto.from_config(small, dtype=dtype)
    _, blocks = find_blocks(model)
    _materialise_resident(model, shell, blocks)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model, _shell_blocks(shell)[0]


def _fill_blocks(
    model: nn.Module, template: nn.Module, store: BlockStore, fill: Callable[[int, nn.Module], None] | None
):
    """Block by block: allocate it, ``fill(index, block)`` its weights, write it, release it.
    ``fill=None``: the store holds the blocks already (a resume): buffers and placeholders only."""
    _, blocks = find_blocks(model)
    for index, block in enumerate(blocks):
        _allocate(block, template)
        if fill is not None:
            with torch.no_grad():
                fill(index, block)
            store.write(index, {name: p.detach() for name, p in block.named_parameters()}, 0)
        _release(block)
    model.eval()
    model.requires_grad_(False)


def _allocate(block: nn.Module, template: nn.Module) -> None:
    block.to_empty(device="cpu")
    _copy_buffers(block, template)


def _release(block: nn.Module) -> None:
    """The block's weights dropped for placeholders on the CPU (``model.to(device)`` moves them)."""
    for module in block.modules():
        for key, p in list(module._parameters.items()):
            if p is not None:  # a new Parameter: a meta one cannot take CPU data
                placeholder = torch.zeros((), dtype=p.dtype).expand(p.shape)
                module._parameters[key] = nn.Parameter(placeholder, requires_grad=p.requires_grad)


def init_random_into(
    auto,
    config,
    dtype: torch.dtype,
    store_factory: Callable[[int], BlockStore],
    init_seed: int,
    fill: bool = True,
    device="cpu",
):
    """A random model with its blocks in a new store: ``(model, store)``, the weights
    ``offload=none`` draws with the same seed on ``device`` (``models/loading.py::_random_model``).
    The model is built on meta under ``models.meta.Recorder`` (each tensor's writes taped, the
    generator advanced as the in-memory build advances it), then every resident tensor is
    replayed, and block by block each block's (written to the store, released): one block in
    memory. ``fill=False``: the store's blocks are kept (a resume), only the resident layers are
    replayed."""
    torch.manual_seed(init_seed)  # as models/loading.py::_random_model seeds offload=none's draws
    with Recorder(device) as tape:
        model = auto.from_config(config, dtype=dtype)
    _, blocks = find_blocks(model)
    store = store_factory(config.num_hidden_layers)
    block_ids = {id(m) for m in blocks.modules()}
    with torch.no_grad():
        _replay_into(tape, [m for m in model.modules() if id(m) not in block_ids], parameters=True)
        for index, block in enumerate(blocks):
            _replay_into(tape, list(block.modules()), parameters=False)  # its buffers
            if fill:
                weights = {name: tape.replay(tape.ops_of(p), p) for name, p in block.named_parameters()}
                store.write(index, weights, 0)
                del weights
            _release(block)
    model.to("cpu")
    model.eval()
    model.requires_grad_(False)
    return model, store


def _replay_into(tape: Tape, modules: list[nn.Module], parameters: bool) -> None:
    """``modules``' meta buffers (and with ``parameters``, their meta parameters) replaced by
    their taped values; a tensor shared by two modules (a tied embedding / head) stays shared."""
    done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (the meta tensor: kept, its id its own; value)

    def real(t: torch.Tensor, parameter: bool) -> torch.Tensor:
        if id(t) not in done:
            value = tape.replay(tape.ops_of(t), t)
            done[id(t)] = (t, nn.Parameter(value, requires_grad=False) if parameter else value)
        return done[id(t)][1]

    for module in modules:
        for key, p in list(module._parameters.items()) if parameters else []:
            if p is not None and p.is_meta:  # a meta tensor cannot take real data: a new Parameter
                module._parameters[key] = cast(nn.Parameter, real(p, parameter=True))
        for key, b in list(module._buffers.items()):
            if b is not None and b.is_meta:  # torch.tensor / arange buffers are real already
                module._buffers[key] = real(b, parameter=False)


def load_checkpoint_into(
    auto, config, dtype: torch.dtype, path: Path, store_factory: Callable[[int], BlockStore], fill: bool = True
):
    """A checkpoint's model with its blocks in a new store, read lazily: ``(model, store)``;
    ``fill=False``: the store's blocks are kept (a resume), only the resident weights are read."""
    from safetensors import safe_open

    model, template = _skeleton(auto, config, dtype)
    prefix, _ = find_blocks(model)
    store = store_factory(config.num_hidden_layers)
    handles = [safe_open(str(f), framework="pt", device="cpu") for f in checkpoint_files(path)]
    where = {key: h for h in handles for key in h.keys()}
    resolve = key_resolver(where)

    def read(name: str) -> torch.Tensor:
        key = resolve(name)
        if key is None:
            raise KeyError(f"{path}: the checkpoint has no {name}")
        return where[key].get_tensor(key)

    with torch.no_grad():
        for names, p in _resident_parameters(model, prefix):
            # a tied weight is saved once, under any of its names (SmolLM2's GGUF: lm_head.weight only)
            found = next((name for name in names if resolve(name) is not None), None)
            if found is None:
                raise KeyError(f"{path}: the checkpoint has no {' / '.join(names)}")
            p.copy_(read(found))

    def fill_block(index: int, block: nn.Module) -> None:
        for name, p in block.named_parameters():
            p.copy_(read(f"{prefix}.{index}.{name}"))

    _fill_blocks(model, template, store, fill_block if fill else None)
    return model, store


def _resident_parameters(model: nn.Module, prefix: str) -> list[tuple[list[str], nn.Parameter]]:
    """The parameters outside the blocks, each with every name it has (a tied embedding / head
    is one parameter with two names)."""
    names: dict[int, tuple[list[str], nn.Parameter]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if not name.startswith(prefix + "."):
            names.setdefault(id(p), ([], p))[0].append(name)
    return list(names.values())


def evict_into(model: nn.Module, store_factory: Callable[[int], BlockStore]) -> BlockStore:
    """Write an in-memory model's blocks into a new store and release them."""
    _, blocks = find_blocks(model)
    store = store_factory(len(blocks))
    for index, block in enumerate(blocks):
        store.write(index, {name: p.detach() for name, p in block.named_parameters()}, 0)
        for _, p in block.named_parameters():
            p.data = placeholder(p)
    return store


def materialise(model: nn.Module, store: BlockStore) -> nn.Module:
    """The inverse of ``evict_into``: every block's weights from ``store`` put back in the model's
    parameters (the whole model in memory: replay and export of an ``offload=disk`` run)."""
    _, blocks = find_blocks(model)
    for index, block in enumerate(blocks):
        tensors = store.read(index)
        for name, p in block.named_parameters():
            p.data = tensors[name].clone() if not store.fresh_reads else tensors[name]
    return model
