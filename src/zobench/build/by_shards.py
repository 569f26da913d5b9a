"""A model loaded by shards (``dist.mode=sharded``): no rank ever holds more than its 1/W of the
weights plus one whole tensor.

``load_meta(cfg, device)`` builds the model on the meta device (``models.meta.Recorder``; no
memory) and returns it with a ``Source`` of every tensor's value: a ``*-random`` model's taped
initialisation (the in-memory build's values, bit for bit, the same seed's stream), or a
safetensors checkpoint's tensor (a converted GGUF, a hub snapshot), read by rows with
``safe_open(...).get_slice`` (with offload's ``load_checkpoint_into`` uses: its file list and
key resolver). The tuning (LoRA / prefix) is applied on meta under the same recorder, so its
adapters replay to the values ``apply_tuning``'s seed gives them. After ``fully_shard`` on meta,
``Source.materialise(model)`` allocates the local shards (``to_empty``) and fills each from its
source, one parameter at a time: a random tensor is replayed whole and sliced (one tensor in
memory), a checkpoint tensor is read by the rank's rows only.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..engine.sharded import global_offset, local_tensor
from ..errors import DataNotFoundError
from ..models import loading
from ..models.checkpoint_files import checkpoint_files, key_resolver
from ..models.meta import Op, Recorder, Tape


def meta_checkpoint(config, auto, dtype: torch.dtype) -> nn.Module:
    """A checkpoint's architecture (under a ``Recorder``: on meta), its init skipped (its weights
    come from the files)."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = auto.from_config(config, dtype=dtype)
    model.tie_weights()
    return model


def load_meta(cfg, device: torch.device | str, tune):
    """``(model, tokenizer)``: ``cfg.model`` built on meta and ``tune(model)`` applied under one
    recorder; ``model.zobench_source`` (a ``Source``) holds how each tensor gets its value."""
    model_cfg = cfg.model
    cache_dir = cfg.get("cache_dir") or loading.default_cache_dir()
    loading.check_value("model.source", model_cfg["source"])
    auto = loading._auto_class(model_cfg.get("family", "causal"))
    dtype = loading.torch_dtype(model_cfg["dtype"])
    path = None if model_cfg["source"] == "random" else loading.checkpoint_dir(model_cfg, cache_dir)
    if path is not None:
        _check_safetensors(model_cfg["name"], path)
    tokenizer = loading.load_tokenizer(model_cfg, cache_dir)
    device = torch.device(device)
    with Recorder(device if device.type == "cuda" else "cpu") as tape:
        if path is None:  # the one-process builder itself: its seed, its stream (on meta)
            model = loading._random_model(model_cfg, auto, tokenizer, dtype, device)
        else:
            model = meta_checkpoint(loading.checkpoint_config(model_cfg, path), auto, dtype)
        model.eval()
        model.requires_grad_(False)
        base_names = all_names(model)
        model = tune(model)
    model.zobench_source = Source(tape, model, base_names, path, device)
    return model, tokenizer


def _check_safetensors(name: str, path: Path) -> None:
    """One line, before anything is built, for a checkpoint without safetensors files (a
    ``pytorch_model.bin`` is a pickle: it cannot be read by rows)."""
    try:
        checkpoint_files(path)
    except FileNotFoundError as err:
        raise DataNotFoundError(
            f"model={name}: {path} holds no model.safetensors; dist.mode=sharded reads each rank's rows "
            "from safetensors files: convert the checkpoint to safetensors once, or use dist.mode=data"
        ) from err


def all_names(model: nn.Module) -> dict[int, list[str]]:
    """Every name of each parameter (a tied embedding / head is one parameter with two)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def shared_places(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """The (module, attribute) places of every parameter held in several (a tied embedding / head)."""
    places: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                places.setdefault(id(p), []).append((module, name))
    return [where for where in places.values() if len(where) > 1]


def retie(ties: list[list[tuple[nn.Module, str]]]) -> None:
    """Make each group of ``shared_places`` one parameter again (the first place's)."""
    for (first, name), *others in ties:
        for module, attribute in others:
            module._parameters[attribute] = first._parameters[name]


class Source:
    """Where each of a meta model's tensors gets its value (module docstring)."""

    def __init__(self, tape: Tape, model: nn.Module, base_names: dict, path: Path | None, device) -> None:
        self.tape, self.path, self.device = tape, path, torch.device(device)
        self.loaded_bytes = 0  # what this rank allocated for its parameters (its shards)
        self.params: dict[str, tuple[list[str], list[Op], torch.Tensor]] = {}
        for name, p in model.named_parameters():
            # a base weight of a checkpoint: from the files under its names before tuning; else replayed
            names = base_names.get(id(p), []) if path is not None else []
            self.params[name] = (names, tape.ops_of(p), p)
        self.buffers = {n: (tape.ops_of(b), b) if b.is_meta else b.clone() for n, b in model.named_buffers()}

    def materialise(self, model: nn.Module) -> nn.Module:
        """Allocate ``model``'s (sharded) parameters on the device and fill each from its source."""
        ties = shared_places(model)
        model.to_empty(device=self.device)
        retie(ties)  # to_empty gives each module its own new tensor; dist.root=replicated's tied head is plain
        reader = _Reader(self.path) if self.path is not None else None
        with torch.no_grad():
            for name, p in model.named_parameters():
                names, ops, like = self.params[name]
                local, start = local_tensor(p), global_offset(p)
                if names and reader is not None:  # a checkpoint's weight: this rank's rows only
                    local.copy_(reader.rows(names, start, local))
                else:  # replayed whole (one tensor in memory), then sliced
                    local.copy_(
                        self.tape.replay(ops, like).reshape(-1)[start : start + local.numel()].view(local.shape)
                    )
                self.loaded_bytes += local.numel() * local.element_size()
            for name, buffer in model.named_buffers():
                value = self.buffers[name]
                buffer.copy_(self.tape.replay(*value) if isinstance(value, tuple) else value)
        return model


class _Reader:
    """A safetensors checkpoint read by rows (``safe_open(...).get_slice``). Each tensor opens its
    file anew: the pages a read touches in the memory map count in the process's RSS until the
    map is closed (reading half of SmolLM2's rows through one open map: +531 MB of peak RSS;
    one map per tensor: +262 MB, the rows themselves)."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path, self.where = path, {}
        for file in checkpoint_files(path):
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                self.where.update(dict.fromkeys(handle.keys(), file))
        self.resolve = key_resolver(self.where)

    def rows(self, names: list[str], offset: int, local: torch.Tensor) -> torch.Tensor:
        """The rows of the tensor saved under any of ``names`` that ``local`` holds (its first
        element at global flat index ``offset``): only those rows are read."""
        from safetensors import safe_open

        key = next((k for k in map(self.resolve, names) if k is not None), None)
        if key is None:
            raise KeyError(f"{self.path}: the checkpoint has no {' / '.join(names)}")
        if local.numel() == 0:
            return local
        cols = math.prod(local.shape[1:]) if local.dim() > 1 else 1
        start = offset // cols
        with safe_open(str(self.where[key]), framework="pt", device="cpu") as handle:
            return handle.get_slice(key)[start : start + local.shape[0]].reshape(local.shape)
