"""What a run needs to go offloaded: the config check, the model, the wrapped engine.

``offloaded(cfg)``: whether the config asks for it. ``check_config(cfg)``: one-line errors
(``validation.py`` calls it). ``load_model(cfg, device, run_dir)``: ``(model, tokenizer)`` with the
model's blocks in the store (an ``Offloader`` attached as ``model.zobench_offloader``).
``wrap_engine(engine, model)`` / ``bind(optimizer)``: the engine with deferred block updates, and
the method check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..engine import Engine
from ..errors import ConfigError
from .engine import OffloadEngine
from .executor import Offloader
from .store import BlockStore, CpuStore, DiskStore

MODES = ("none", "cpu", "disk")

#: methods whose step streams with the results it has in memory (tests/offload/test_methods.py):
#: updates through ``Engine.update`` are deferred, through ``Engine.foreach`` (momentum, Adam
#: moments) applied at once with the block's state streamed beside it
METHODS = (
    "mezo",
    "lozo",
    "lezo",
    "subzero",
    "fzoo",
    "tezo",
    "zo_sgd_cons",
    "zo_sgd_sign",
    "forward_gradient",
    "zo_sgd_momentum",
    "zo_adam",
)

#: why the others do not stream yet (the refusal names it)
NOT_YET = {
    "hizoo": "its parameter-sized Σ, which the perturbation itself reads in every forward",
    "mezo_svrg": "its parameter-sized anchor weights and gradient",
    "dizo": "its projection rounds, which read the weights outside a forward",
    "sparse_mezo": "its masks, computed from the weights outside a forward",
}


def mode_of(cfg: DictConfig) -> str:
    return str(OmegaConf.select(cfg, "offload.mode", default="none"))


def offloaded(cfg: DictConfig) -> bool:
    return mode_of(cfg) != "none"


def refusal(method: str, mode: str) -> str | None:
    """The one-line reason ``optimizer=method`` cannot run with ``offload=mode``, or None."""
    if mode == "none" or method in METHODS:
        return None
    why = NOT_YET.get(method, "it is not among the methods checked to stream")
    return (
        f"optimizer={method} cannot run with offload={mode} yet: {why} does not stream; allowed: {', '.join(METHODS)}"
    )


def check_config(cfg: DictConfig) -> None:
    """``offload.*``: its values, and what it cannot be combined with (one ConfigError line)."""
    mode = mode_of(cfg)
    if mode not in MODES:
        raise ConfigError(f"offload.mode={mode!r}: allowed {', '.join(MODES)} (offload=none|cpu|disk)")
    directory = OmegaConf.select(cfg, "offload.dir", default=None)
    if directory is not None and not (isinstance(directory, str) and directory.strip()):
        raise ConfigError(f"offload.dir={directory!r}: expected a folder or null (<run dir>/offload)")
    prefetch = OmegaConf.select(cfg, "offload.prefetch", default=True)
    if not isinstance(prefetch, bool):
        raise ConfigError(f"offload.prefetch={prefetch!r}: expected true or false")
    if mode == "none":
        return
    name = str(OmegaConf.select(cfg, "optimizer.name", default=""))
    if OmegaConf.select(cfg, "optimizer.first_order", default=False) or name == "linear_probe":
        raise ConfigError(
            f"offload={mode} streams zeroth-order steps; optimizer={name} needs the whole model (offload=none)"
        )
    reason = refusal(name, mode)
    if reason:
        raise ConfigError(reason)
    if OmegaConf.select(cfg, "engine.mode", default="virtual") != "virtual":
        raise ConfigError(f"offload={mode} needs engine.mode=virtual (got engine.mode={cfg.engine.mode})")
    tuning = OmegaConf.select(cfg, "tuning.name", default="full")
    if tuning != "full":
        raise ConfigError(f"offload={mode} streams full-parameter tuning only; got tuning={tuning} (use tuning=full)")
    if OmegaConf.select(cfg, "model.device_map", default=None):
        raise ConfigError(f"offload={mode} and model.device_map place the model two ways; set model.device_map=null")
    for key, bad, allowed in (
        ("train.keep_best", True, "false"),
        ("train.checkpoint", "weights", "trajectory"),
        ("train.save_final", True, "false"),
    ):
        if OmegaConf.select(cfg, key, default=None) == bad:
            raise ConfigError(
                f"{key}={str(bad).lower()} reads the whole model's weights, which offload={mode} does not "
                f"provide yet; set {key}={allowed}"
            )


def store_factory(cfg: DictConfig, run_dir: Path, device: torch.device):
    """``count -> BlockStore`` for ``offload.mode`` (disk: ``offload.dir`` or <run dir>/offload)."""
    mode = mode_of(cfg)
    if mode == "cpu":
        return lambda count: CpuStore(count, pin=device.type == "cuda")
    folder = OmegaConf.select(cfg, "offload.dir", default=None)
    root = Path(folder).expanduser() if folder else Path(run_dir) / "offload"
    return lambda count: DiskStore(root, count)


def load_model(cfg: DictConfig, device: torch.device, run_dir: Path) -> tuple[nn.Module, object]:
    """``(model, tokenizer)`` with the blocks in the store ``cfg.offload`` names: ``*-random``
    models block by block, converted/hub safetensors read lazily, for ``offload=disk``; for
    ``offload=cpu`` the model is loaded as usual (host RAM holds it by definition) and its blocks
    moved into pinned host buffers, so its weights equal ``offload=none``'s bit for bit."""
    from ..models import loading
    from . import build

    factory = store_factory(cfg, run_dir, torch.device(device))
    model_cfg = cfg.model
    store: BlockStore
    if mode_of(cfg) == "cpu":
        model, tokenizer = loading.load_model(model_cfg, "cpu", cfg.cache_dir)
        store = build.evict_into(model, factory)
    else:
        auto = loading._auto_class(model_cfg.get("family", "causal"))
        dtype = loading.torch_dtype(model_cfg["dtype"])
        tokenizer = loading.load_tokenizer(model_cfg, cfg.cache_dir)
        if model_cfg["source"] == "random":
            config = loading.random_config(model_cfg, tokenizer)
            model, store = build.init_random_into(auto, config, dtype, factory, int(model_cfg.get("init_seed", 0)))
        else:
            path = loading.checkpoint_dir(model_cfg, cfg.cache_dir)
            config = loading.checkpoint_config(model_cfg, path)
            model, store = build.load_checkpoint_into(auto, config, dtype, path, factory)
    model.to(device)  # the resident layers (the blocks hold one-element placeholders)
    offloader = Offloader(model, store, device, prefetch=bool(OmegaConf.select(cfg, "offload.prefetch", default=True)))
    offloader.adopt()
    model.zobench_offloader = offloader  # what wrap_engine finds (nn.Module keeps plain attributes)
    return model, tokenizer


def load_for_run(cfg: DictConfig, device: torch.device, run_dir: Path, load_in_memory) -> tuple[nn.Module, object]:
    """The run's ``(model, tokenizer)``: offloaded (``load_model``) when ``offload`` asks for it,
    else ``load_in_memory(cfg, device)``."""
    return load_model(cfg, device, run_dir) if offloaded(cfg) else load_in_memory(cfg, device)


def flush(model: nn.Module) -> None:
    """Bring every stored block of an offloaded ``model`` to its latest step (no-op otherwise)."""
    offloader = getattr(model, "zobench_offloader", None)
    if offloader is not None:
        offloader.flush()


def stored_weights(model: nn.Module, named):
    """``named`` (``(name, parameter)`` pairs) with the values of offloaded block parameters read
    from the store, one block at a time (what the trajectory log hashes as the base weights);
    ``named`` itself when ``model`` is not offloaded."""
    offloader = getattr(model, "zobench_offloader", None)
    if offloader is None:
        return named
    if any(offloader.pending):
        raise RuntimeError("offload: the stored weights are read with updates pending; flush() first")

    def values():
        current, tensors = -1, {}
        for name, p in named:
            block = offloader.block_of.get(id(p))
            if block is None:
                yield name, p
                continue
            if block != current:
                current, tensors = block, offloader.store.read(block)
            local = next(n for n, q in offloader.params[block] if q is p)
            yield name, tensors[local]

    return values()


def wrap_engine(engine: Engine, model: nn.Module) -> Engine:
    """``engine`` with deferred block updates if ``model`` is offloaded, else ``engine`` itself."""
    offloader = getattr(model, "zobench_offloader", None)
    return engine if offloader is None else OffloadEngine(engine, offloader)


def bind(optimizer: Any, method: str) -> None:
    """Refuse a method that does not stream (one line), stamp deferred updates with its step."""
    engine = optimizer.engine
    if not isinstance(engine, OffloadEngine):
        return
    mode = "disk" if isinstance(engine.offloader.store, DiskStore) else "cpu"
    reason = refusal(method, mode)
    if reason:
        raise ConfigError(reason)
    engine.bind(optimizer)
