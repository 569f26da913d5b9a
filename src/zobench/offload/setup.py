"""What a run needs to go offloaded: the config check, the model, the wrapped engine.

``offloaded(cfg)``: whether the config asks for it (its rules: ``config/rules.py::_offload``;
the method lists beside them). ``load_model(cfg, device, run_dir, load_whole)``: ``(model, tokenizer)``
with the model's blocks in the store (an ``Offloader`` attached as ``model.zobench_offloader``).
``wrap_engine(engine, model)`` / ``bind(optimizer)``: the engine with deferred block updates, and
the method check.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..config.rules import OFFLOAD_METHODS as METHODS
from ..config.rules import offload_refusal as refusal
from ..config.schema import OFFLOAD_MODES as MODES
from ..engine import Engine
from ..errors import CheckpointError, ConfigError
from ..models import loading
from .engine import OffloadEngine
from .executor import Offloader
from .store import PIN_MANIFEST, BlockStore, CpuStore, DiskStore

__all__ = ["METHODS", "MODES", "refusal"]  # the config's lists, read here by the tests


def mode_of(cfg: DictConfig) -> str:
    return str(OmegaConf.select(cfg, "offload.mode", default="none"))


def offloaded(cfg: DictConfig) -> bool:
    return mode_of(cfg) != "none"


def store_factory(cfg: DictConfig, run_dir: Path, device: torch.device):
    """``count -> BlockStore`` for ``offload.mode`` (disk: ``offload.dir`` or <run dir>/offload)."""
    mode = mode_of(cfg)
    if mode == "cpu":
        return lambda count: CpuStore(count, pin=device.type == "cuda")
    folder = OmegaConf.select(cfg, "offload.dir", default=None)
    root = Path(folder).expanduser() if folder else Path(run_dir) / "offload"
    return lambda count: DiskStore(root, count)


def load_model(
    cfg: DictConfig, device: torch.device, run_dir: Path, load_whole, resume: int | None = None
) -> tuple[nn.Module, object]:
    """``(model, tokenizer)`` with the blocks in the store ``cfg.offload`` names: ``*-random``
    models block by block (the weights ``offload=none`` draws with the same seed, on the device
    it draws them on: ``build.init_random_into``); converted/hub safetensors read lazily for
    ``offload=disk``; for ``offload=cpu`` a checkpoint is loaded as usual (host RAM holds it by
    definition) and its blocks moved into pinned host buffers. Either way the weights equal
    ``offload=none``'s bit for bit.
    ``resume`` (the checkpoint's step): ``offload=disk`` keeps the store, which the run trained
    (only the resident layers come from the source); ``resume_store`` brings it to that step."""
    from . import build

    factory = store_factory(cfg, run_dir, torch.device(device))
    model_cfg = cfg.model
    store: BlockStore
    if mode_of(cfg) == "cpu" and model_cfg["source"] != "random":
        model, tokenizer = load_whole(cfg, "cpu")  # the factory's loader (build/model.py)
        store = build.evict_into(model, factory)
    else:
        auto = loading._auto_class(model_cfg.get("family", "causal"))
        dtype = loading.torch_dtype(model_cfg["dtype"])
        tokenizer = loading.load_tokenizer(model_cfg, cfg.cache_dir)
        fill = resume is None or mode_of(cfg) == "cpu"  # a host store died with the process
        if model_cfg["source"] == "random":
            config = loading.random_config(model_cfg, tokenizer)
            seed = int(model_cfg.get("init_seed", 0))
            # drawn where offload=none draws them (models/loading.py::_random_model): the same weights
            where = device if torch.device(device).type == "cuda" else "cpu"
            model, store = build.init_random_into(auto, config, dtype, factory, seed, fill=fill, device=where)
        else:
            path = loading.checkpoint_dir(model_cfg, cfg.cache_dir)
            config = loading.checkpoint_config(model_cfg, path)
            model, store = build.load_checkpoint_into(auto, config, dtype, path, factory, fill=fill)
    model.to(device)  # the resident layers (the blocks hold one-element placeholders)
    offloader = Offloader(model, store, device, prefetch=bool(OmegaConf.select(cfg, "offload.prefetch", default=True)))
    if isinstance(store, DiskStore) and resume is not None:
        offloader.resume_step = resume  # resume_store restores the blocks before adopting them
    else:
        offloader.adopt()
    model.zobench_offloader = offloader  # what wrap_engine finds (nn.Module keeps plain attributes)
    return model, tokenizer


def reset_to_base(cfg: DictConfig, model: nn.Module, device: torch.device) -> None:
    """An offloaded ``model`` back at its base weights, in its own store and parameters (the
    rebuild of a best-dev step, ``train.keep_best``: the log then replays to it). The blocks are
    written again from the source block by block (``*-random``: the same draws; a checkpoint:
    read lazily) over the store's, stamped step 0, and the resident layers copied from the side
    build; pending updates are dropped. Never the whole model in memory: the side build holds the
    resident layers (twice, briefly: its one-block shell) and one block. ``offload=disk`` stays
    crash-consistent: a block at step 0 is older than any checkpoint, and a resume replays it."""
    from . import build

    offloader = cast(Offloader, model.zobench_offloader)
    offloader.wait()
    offloader.pending = [[] for _ in offloader.blocks]
    model_cfg, store = cfg.model, offloader.store
    auto = loading._auto_class(model_cfg.get("family", "causal"))
    dtype = loading.torch_dtype(model_cfg["dtype"])
    if model_cfg["source"] == "random":
        config = loading.random_config(model_cfg, loading.load_tokenizer(model_cfg, cfg.cache_dir))
        where = device if torch.device(device).type == "cuda" else "cpu"
        seed = int(model_cfg.get("init_seed", 0))
        side, _ = build.init_random_into(auto, config, dtype, lambda count: store, seed, device=where)
    else:
        path = loading.checkpoint_dir(model_cfg, cfg.cache_dir)
        config = loading.checkpoint_config(model_cfg, path)
        side, _ = build.load_checkpoint_into(auto, config, dtype, path, lambda count: store)
    base = dict(side.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not offloader.is_offloaded(p):
                p.copy_(base[name])
    offloader.adopt()


def save_final(model: nn.Module, folder: Path) -> None:
    """``train.save_final`` of an offloaded model: its weights (the tested ones) as a sharded
    Hugging Face checkpoint in ``folder`` (``offload/export.py``), written under a temporary name
    and renamed into place (a folder there is whole), one block in memory at a time."""
    from .export import save_sharded

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_sharded(model, cast(Offloader, model.zobench_offloader), tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)  # a restarted finish's earlier copy
    os.replace(tmp, folder)


def flush(model: nn.Module) -> None:
    """Bring every stored block of an offloaded ``model`` to its latest step (no-op otherwise)."""
    offloader = getattr(model, "zobench_offloader", None)
    if offloader is not None:
        offloader.flush()


def pin_folder(run_dir: Path, step: int) -> Path:
    """Where checkpoint ``step`` pins the disk store: inside the run's checkpoint folder, which
    the run removes with the checkpoints once its summary is written."""
    return Path(run_dir) / "checkpoint" / f"offload-{step:09d}"


def disk_offloader(model: nn.Module) -> Offloader | None:
    offloader = getattr(model, "zobench_offloader", None)
    return offloader if offloader is not None and isinstance(offloader.store, DiskStore) else None


def pin(model: nn.Module, run_dir: Path, step: int, base_sha256: str, weights: bool = False) -> None:
    """Before checkpoint ``step`` is written: pin an ``offload=disk`` store's files (its writes
    landed first) as that checkpoint's state (``DiskStore.pin``). ``weights`` (a
    ``train.checkpoint=weights`` checkpoint, which a resume does not replay): the blocks are
    flushed to ``step`` first, and an ``offload=cpu`` store, lost with the process, is written to
    the same folder as block files (``pin_copy``). No-op for a model that is not offloaded."""
    offloader = getattr(model, "zobench_offloader", None)
    if offloader is None:
        return
    if weights:
        offloader.flush()
    offloader.wait()
    if isinstance(offloader.store, DiskStore):
        offloader.store.pin(pin_folder(run_dir, step), step, base_sha256)
    elif weights:
        pin_copy(offloader.store, pin_folder(run_dir, step), step, base_sha256)


def pin_copy(store: BlockStore, folder: Path, step: int, base_sha256: str) -> None:
    """``store``'s blocks (optimizer state included) written as a pin folder: block files and the
    manifest, built aside and renamed into place (what ``DiskStore.pin`` links, copied)."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    files = DiskStore(tmp, len(store))
    for i in range(len(store)):
        files.write(i, store.read(i), store.step(i))
    manifest = {"step": int(step), "base_sha256": base_sha256, "stamps": [store.step(i) for i in range(len(store))]}
    (tmp / PIN_MANIFEST).write_text(json.dumps(manifest))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def restore_weights(model: nn.Module, run_dir: Path, step: int) -> None:
    """Resume from weights checkpoint ``step``: every block exactly at ``step`` from its pin
    (``offload=disk``: the current file where it is at ``step``, else the pinned one;
    ``offload=cpu``: the pinned block files read into the host store), then adopted. No-op for a
    model that is not offloaded."""
    offloader = getattr(model, "zobench_offloader", None)
    if offloader is None:
        return
    folder = pin_folder(run_dir, step)
    manifest = folder / PIN_MANIFEST
    if not manifest.is_file():
        raise CheckpointError(
            f"{manifest} is missing: the weights checkpoint of step {step} keeps its offloaded blocks there; "
            f"delete {folder.parent} to start the run afresh"
        )
    base = json.loads(manifest.read_text()).get("base_sha256", "")
    if isinstance(offloader.store, DiskStore):
        offloader.store.restore(folder, step, base, exact=True)
    else:
        pinned = DiskStore(folder, len(offloader.store))
        for i in range(len(pinned)):
            offloader.store.write(i, pinned.read(i), pinned.step(i))
    offloader.resume_step = None
    offloader.adopt()


def resident(model: nn.Module, named):
    """``named`` without the offloaded block parameters (what a weights checkpoint copies:
    the blocks are in its pin folder); ``named`` itself when ``model`` is not offloaded."""
    offloader = getattr(model, "zobench_offloader", None)
    return named if offloader is None else [(n, p) for n, p in named if not offloader.is_offloaded(p)]


def unpin_others(model: nn.Module, run_dir: Path, step: int) -> None:
    """After checkpoint ``step`` is written: remove the pins of older checkpoints."""
    if getattr(model, "zobench_offloader", None) is None:
        return
    keep = pin_folder(run_dir, step)
    for old in keep.parent.glob("offload-*"):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def resume_store(model: nn.Module, run_dir: Path, base_sha256: str) -> bool:
    """An ``offload=disk`` model loaded to resume (``load_model(resume=step)``): its store
    brought back to the checkpoint's step (``DiskStore.restore``: a block ahead of it from the
    pin; the pin must carry the log's ``base_sha256``) and adopted, each block skipping, in the
    replay, the updates it holds. Returns whether it did (False: not such a model)."""
    offloader = disk_offloader(model)
    step = getattr(offloader, "resume_step", None)
    if offloader is None or step is None:
        return False
    cast(DiskStore, offloader.store).restore(pin_folder(run_dir, step), step, base_sha256)
    offloader.adopt()
    offloader.resume_step = None
    return True


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
    if offloader is None or isinstance(engine, OffloadEngine):  # a rebuild's optimizer reuses the run's
        return engine
    return OffloadEngine(engine, offloader)


def bind(optimizer: Any, method: str) -> None:
    """Refuse a method that does not stream (one line), stamp deferred updates with its step."""
    engine = getattr(optimizer, "engine", None)  # a first-order optimizer has none
    if not isinstance(engine, OffloadEngine):
        return
    mode = "disk" if isinstance(engine.offloader.store, DiskStore) else "cpu"
    reason = refusal(method, mode)
    if reason:
        raise ConfigError(reason)
    engine.bind(optimizer)
