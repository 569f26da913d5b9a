"""The files of a ``dist.mode=sharded`` run, with no whole copy of the model on any rank.

* Checkpoints: ``torch.distributed.checkpoint`` (DCP) in ``ckpt-<step>/weights/``
  (``checkpoint.py``'s layout): each rank writes its shards of the weights and of the
  parameter-sized optimizer state (``distributed_state``, ``save_distributed``) and reads its
  rows back on any number of ranks, or the whole tensors in one process (``load_distributed``).
* The trajectory header's base hash (``streamed_sha256``) and the safetensors files of ``best/``
  and ``final/`` (``write_streamed``): every rank gathers one parameter at a time, in the same
  order, and rank 0 hashes it or appends it to the file (``checkpoint.save_streamed``) and
  drops it before the next: a rank holds its shards and one whole parameter, never the model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import torch
import torch.distributed as tdist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.tensor import DTensor

from ..checkpoint import (
    DCP_KEYS,
    WEIGHTS,
    Checkpoint,
    fsync_dir,
    fsync_file,
    publish,
    save_streamed,
    sha256,
    unreadable,
    write_text_atomic,
    writing,
)
from ..engine.sharded import is_sharded, local_tensor, shards_like
from ..trajectory.log import weights_sha256


def gathered(named, keep: bool) -> Iterator[tuple[str, torch.Tensor | None]]:
    """``(name, whole tensor)`` for each of ``named`` ((name, parameter) pairs), one at a time, on
    the rank that ``keep``s them (``(name, None)`` on the others). A collective: every rank runs
    the iteration to its end, in the same order; each whole tensor is dropped before the next is
    gathered, so no rank ever holds more than its shards and one whole parameter."""
    for name, p in named:
        whole = cast(DTensor, p).full_tensor() if is_sharded(p) else p.detach()
        yield name, (whole if keep else None)
        del whole


def specs(named) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """``(name, dtype, whole shape)`` of each of ``named``: a file's header, without a gather."""
    return [(name, p.dtype, tuple(p.shape)) for name, p in named]


def streamed_sha256(named, keep: bool) -> str:
    """``trajectory.log.weights_sha256`` of the whole tensors of ``named`` on the rank that
    ``keep``s it ('' on the others), gathered one parameter at a time (a collective): the digest
    a one-process run of the same weights writes in its log header, bit for bit (the same
    function over the same names and bytes)."""
    stream = gathered(named, keep)
    if keep:
        return weights_sha256(cast("Iterator[tuple[str, torch.Tensor]]", stream))
    for _ in stream:
        pass
    return ""


def distributed_state(named, optimizer) -> tuple[dict, dict]:
    """What a sharded checkpoint holds (``checkpoint.save_distributed``): ``(tensors, rest)``.
    ``tensors``: ``weights/<name>`` (each parameter as it is: a DTensor of its shards) and
    ``optimizer/<index>/<key>`` (each parameter-sized local shard of the optimizer state:
    HiZOO's Σ, ZO-Adam's m and v, ... wrapped as a DTensor on its parameter's mesh and
    placements, so DCP writes each rank's rows and reshards them on load); ``rest``: the state
    dict without those tensors, with ``checkpoint.DCP_KEYS``: ``[(index, key, dtype)]``."""
    tensors: dict = {f"weights/{name}": p.detach() for name, p in named}
    state = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    rest = {**state, "state": dict(state["state"]), DCP_KEYS: []}
    for index, p in enumerate(params):
        entry = state["state"].get(index)
        if not isinstance(entry, dict):
            continue
        shape, kept = local_tensor(p).shape, {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape == shape:
                value = shards_like(p, value)
                tensors[f"optimizer/{index}/{key}"] = value
                rest[DCP_KEYS].append((index, key, str(value.dtype).removeprefix("torch.")))
                value = None
            kept[key] = value
        rest["state"][index] = kept
    return tensors, rest


def write_streamed(named, path: Path, leader: bool) -> None:
    """The whole weights of ``named`` to the safetensors file ``path``, written by the
    ``leader`` as each gathered parameter arrives (``checkpoint.save_streamed``); a collective
    that returns on every rank once the file is in place (any rank may read it next)."""
    stream = (tensor for _, tensor in gathered(named, leader))
    if leader:
        save_streamed(specs(named), stream, path)
    else:
        for _ in stream:
            pass
    tdist.barrier()


def save_distributed(root: Path, step: int, tensors: dict, optimizer_state: dict, loop: dict) -> Path | None:
    """A sharded run's checkpoint (module docstring), a collective every rank calls: ``tensors``
    (``{key: DTensor or tensor}``: the weights and the parameter-sized optimizer state, each rank
    holding its shards) go to ``weights/`` through ``torch.distributed.checkpoint.save``, each
    rank writing its own; rank 0 writes ``optimizer_state`` (the state dict without those tensors)
    and ``loop``, and publishes the folder as ``save_checkpoint`` does (temp name, manifest last,
    rename, ``latest``). Returns the folder on rank 0, None on the others."""
    rank = tdist.get_rank()
    name = f"ckpt-{step:09d}"
    tmp = root / f".{name}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / WEIGHTS).mkdir(parents=True)
    tdist.barrier()  # the folder exists before any rank writes into it
    with writing(tmp / WEIGHTS):
        try:
            dcp.save(tensors, checkpoint_id=tmp / WEIGHTS)  # its writer fsyncs each file it writes
        except CheckpointException as err:  # a full disk: the OSError, for the one-line write error
            raise cause(err) from err
    # each rank reads back (hashes) the files it wrote: no rank reads the whole model
    mine = {f"{WEIGHTS}/{f.name}": sha256(f) for f in sorted((tmp / WEIGHTS).glob(f"__{rank}_*"))}
    every: list = [None] * tdist.get_world_size()
    tdist.all_gather_object(every, mine)
    folder = None
    if rank == 0:
        with writing(tmp / "optimizer.pt"):
            torch.save(optimizer_state, tmp / "optimizer.pt")
        write_text_atomic(tmp / "loop.json", json.dumps(loop, indent=1))
        for file in (f"{WEIGHTS}/.metadata", "optimizer.pt"):
            fsync_file(tmp / file)
        fsync_dir(tmp / WEIGHTS)
        digests = {k: v for part in every for k, v in part.items()}
        digests.update({f: sha256(tmp / f) for f in (f"{WEIGHTS}/.metadata", "optimizer.pt", "loop.json")})
        folder = publish(root, tmp, name, digests)
    tdist.barrier()  # every rank goes on with the checkpoint published
    return folder


def load_distributed(checkpoint: Checkpoint, named, params: list) -> dict:
    """Read a sharded checkpoint (``checkpoint.distributed``) into the parameters of ``named``,
    a DTensor its own rows and a plain tensor the whole (on any number of ranks, one process
    without a process group included: DCP reshards on load); returns the optimizer state dict
    with its parameter-sized tensors filled (this rank's rows for a sharded one of ``params``, the
    optimizer's parameters in ``state_dict`` order), for ``optimizer.load_state_dict``."""
    folder = cast(Path, checkpoint.distributed)
    state = checkpoint.optimizer_state
    keys = state.get(DCP_KEYS, [])
    template = {f"weights/{name}": p.detach() for name, p in named}
    for index, key, dtype in keys:
        template[f"optimizer/{index}/{key}"] = _empty_like_param(params[index], getattr(torch, dtype))
    try:
        with torch.no_grad():
            # one process (no process group): DCP reads every shard into the whole tensors
            dcp.load(template, checkpoint_id=folder, no_dist=not tdist.is_initialized())
    except (Exception, CheckpointException) as err:  # a DCP folder it cannot read: one line naming it
        raise unreadable(folder, folder.parent.parent, cause(err)) from err
    out = {k: v for k, v in state.items() if k != DCP_KEYS}
    out["state"] = {i: dict(entry) if isinstance(entry, dict) else entry for i, entry in state["state"].items()}
    for index, key, _ in keys:
        value = template[f"optimizer/{index}/{key}"]
        out["state"][index][key] = value.to_local() if hasattr(value, "to_local") else value
    return out


def cause(err: BaseException) -> BaseException:
    """The first rank's own exception inside DCP's ``CheckpointException`` (a ``BaseException``
    that gathers every rank's failure with its traceback), else ``err``."""
    failures = getattr(err, "failures", None) or {}
    return next((failure[0] for failure in failures.values()), err)


def _empty_like_param(p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What DCP reads a parameter-sized state tensor into: this rank's rows of ``p``'s shape (a
    DTensor on ``p``'s mesh) for a sharded ``p``, else the whole shape."""
    local = local_tensor(p)
    return shards_like(p, torch.empty(local.shape, dtype=dtype, device=local.device))
