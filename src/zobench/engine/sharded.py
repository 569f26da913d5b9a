"""ZO on FSDP2-sharded parameters (``dist.mode=sharded``): each rank perturbs and updates only
its own rows of every parameter, with z defined by the GLOBAL element index.

FSDP2 (``torch.distributed.fsdp.fully_shard``) keeps every parameter as a DTensor sharded on dim
0: rank r of W holds rows [r·c, min((r+1)·c, n₀)) with c = ⌈n₀/W⌉ (``torch.chunk``'s split; the
last ranks may hold fewer rows or none), and a module's forward all-gathers its block first.
z of parameter ``pid`` is a pure function of (step seed, pid, element index)
(``directions.py``); a shard whose rows start at global row a draws exactly the slice
z[a·cols : a·cols + local numel] of the z one process draws for the whole parameter, so every
elementwise move θ ← θ + δ·z, every update sweep and every stateful ``foreach`` on the local
shard gives the bits one process gives on those elements, whatever W.

The choice (docs/design.md "Distributed"): the perturbation is applied to the local shards
BEFORE the gather (in place, MeZO's +ε, -2ε, +ε), not to the gathered block inside its forward
(the virtual engine's hooks). Reasons:
* each rank draws z for its own 1/W of the elements only where z is random access
  (Rademacher; the Triton backend's Philox), where the hooks would draw every parameter's whole z
  on every rank in every forward;
* a method's parameter-sized state (HiZOO's Σ, which shapes the perturbation itself) stays a local
  shard: the hooks would need the whole Σ of the block being gathered;
* the engine needs no map from FSDP's gathered (unsharded) parameters, which are other tensor
  objects than the sharded ones the optimizer holds, back to parameter ids.
The cost: in-place mode's rounding drift (a few ulps per step, as MeZO's code), and two gathers
per SPSA pair where the virtual engine's mirrored pair would need one (``engine.paired``).

Torch's CPU Gaussian generator is sequential: a shard starting at element s draws (and drops)
the s elements before it, in Z_CHUNK pieces (the chunk invariance of ``Direction.chunks``). On
CUDA, torch's Gaussian z is drawn whole and sliced (one parameter's z at a time).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import torch

from ..errors import ConfigError
from . import directions as _directions
from .base import ZOParams
from .directions import _Z_SOURCE, Direction, Piece, mix_seed
from .inplace import InPlaceEngine
from .philox import rademacher_z
from .provider import TorchProvider

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


def is_sharded(p: torch.Tensor) -> bool:
    """Whether ``p`` is a DTensor (a parameter FSDP2 sharded)."""
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


def local_tensor(p: torch.Tensor) -> torch.Tensor:
    """This rank's shard of ``p`` (a view of the storage FSDP2 gathers from), or ``p`` itself."""
    return cast("DTensor", p).to_local() if is_sharded(p) else p


def global_offset(p: torch.Tensor) -> int:
    """The global flat index of this rank's first element of ``p`` (0 for a plain tensor)."""
    if not is_sharded(p):
        return 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    d = cast("DTensor", p)
    shape, offset = compute_local_shape_and_global_offset(d.shape, d.device_mesh, d.placements)
    if any(o for o in offset[1:]):
        raise ConfigError(f"dist.mode=sharded: a parameter sharded on {d.placements}; only dim 0 (Shard(0)) is")
    return int(offset[0]) * (math.prod(p.shape[1:]) if p.dim() > 1 else 1)


def shard_of(p: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """The elements of ``whole`` (a tensor shaped like the whole of ``p``) that this rank's shard
    of ``p`` holds, shaped like the shard; ``whole`` itself for a plain ``p``."""
    if not is_sharded(p):
        return whole
    local = local_tensor(p)
    start = global_offset(p)
    return whole.reshape(-1)[start : start + local.numel()].view(local.shape)


def shards_like(p: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """``local`` (a tensor laid out like this rank's shard of ``p``: a method's state, a buffer to
    read into) as a DTensor on ``p``'s mesh and placements, so a collective or DCP sees it as
    ``p``'s rows; ``local`` itself for a plain ``p``."""
    if not is_sharded(p):
        return local
    from torch.distributed.tensor import DTensor

    d = cast("DTensor", p)
    return DTensor.from_local(local, d.device_mesh, d.placements, shape=d.shape, stride=d.stride())


def gathered(p: torch.Tensor, local: torch.Tensor | None = None) -> torch.Tensor:
    """The whole tensor of ``local`` (a tensor laid out like this rank's shard of ``p``; default
    the shard itself), assembled from every rank's shard (``DTensor.full_tensor``: a collective,
    which every rank calls for the same parameters in the same order); ``local`` (or ``p``) itself
    for a plain ``p``. How a method's whole-tensor statistic (Sparse-MeZO's magnitude quantile,
    DiZO's distance to θ0) gets one process's bits: computed on the whole tensor, one parameter at
    a time, not from partial sums reduced in another order."""
    if not is_sharded(p):
        return p if local is None else local
    return cast("DTensor", p if local is None else shards_like(p, local)).full_tensor()


def _fixed_blocks(direction: Direction, pid: int, shape: Sequence[int], device):
    """A low-rank direction's z of parameter ``pid`` as its fixed blocks (``whole_blocks``), or
    None where that parameter's z is elementwise; one-line error for a direction without them."""
    blocks = getattr(direction, "whole_blocks", None)
    if blocks is None:
        raise ConfigError(
            f"dist.mode=sharded: {type(direction).__name__} draws a whole parameter's z at once and has "
            "no whole_blocks; allowed: elementwise z or fixed blocks of it (engine/sharded.py z_range)"
        )
    return blocks(pid, _shaped(shape, device))


def z_range(
    direction: Direction, pid: int, shape: Sequence[int], device, start: int, stop: int, size: int | None = None
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(s, e, z)``: the plain z (float32, before ``transform``) of the global flat elements
    [s, e) of parameter ``pid`` (of ``shape``), covering [start, stop) in order: the numbers
    ``direction.sample(pid, whole parameter)`` has there.

    Rademacher: counter-based, each element drawn alone. Gaussian on CPU: torch's generator fills
    a draw in order, and consecutive draws of multiples of 16 elements equal one long draw
    (``Direction.chunks``), so the elements before ``start`` (from the last multiple of 16 at or
    below it) are drawn and dropped. Elsewhere (CUDA's Gaussian; a backend's own z) the whole z
    is drawn and sliced."""
    n, size = math.prod(shape), _directions.Z_CHUNK if size is None else int(size)
    found = _fixed_blocks(direction, pid, shape, device) if type(direction).sample is not Direction.sample else None
    if found is not None:  # a low-rank z; None: this parameter's z is the plain one, elementwise (below)
        yield from _block_range(found, start, stop)
        return
    if stop <= start:
        return
    if direction.distribution == "rademacher" and _Z_SOURCE.get() is None:
        key = mix_seed(direction.seed, pid)
        for s in range(start, stop, size):
            e = min(stop, s + size)
            yield s, e, rademacher_z(key, s, e, device)
        return
    device = torch.device(device)
    if _Z_SOURCE.get() is not None or device.type != "cpu" or n < 32:
        whole = Direction.sample(Direction(direction.seed, direction.distribution), pid, _shaped(shape, device))
        yield start, stop, whole.reshape(-1)[start:stop]
        return
    gen = direction._generator(pid, device)
    position = min(start // 16 * 16, (n - 16) // 16 * 16)  # a multiple of 16, leaving a last draw >= 16
    done = 0
    while done < position:  # the elements before this shard: drawn and dropped
        count = min(size, position - done)
        direction._draw(gen, (count,), device)
        done += count
    while done < stop:
        end = min(done + size, n)
        if n - end < 16:  # the last draw absorbs a short tail, as Direction.chunks does
            end = n
        z = direction._draw(gen, (end - done,), device)
        lo, hi = max(done, start), min(end, stop)
        yield lo, hi, z[lo - done : hi - done]
        done = end


def _block_range(blocks, start: int, stop: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The elements [start, stop) of a z given as fixed blocks ``(s, e, compute)`` in order, with
    ``compute()`` the flat z[s:e] (``LowRankDirection.whole_blocks``): each block overlapping the
    range is computed as one process computes it (the same product of the same factors: the
    same bits) and sliced; the others are never computed."""
    for s, e, compute in blocks:
        if s >= stop:
            break
        if e > start:
            lo, hi = max(s, start), min(e, stop)
            yield lo, hi, compute()[lo - s : hi - s]


def _shaped(shape: Sequence[int], device) -> torch.Tensor:
    """A tensor with ``shape`` and ``device`` and no storage of that size (``Direction.sample``
    reads only those)."""
    return torch.empty((), device=device).expand(*shape)


def local_pieces(p: torch.Tensor, pid: int, direction: Direction) -> Iterator[Piece]:
    """``Piece``s covering this rank's shard of ``p``: flat views of the local elements and the
    direction's z there (global indices; ``transform`` sees the LOCAL shard and local indices, so
    a method's state kept as a local shard, HiZOO's Σ, is sliced as in one process)."""
    local = local_tensor(p)
    if not local.is_contiguous():
        raise ConfigError("dist.mode=sharded: a non-contiguous local shard; FSDP2's shards are contiguous")
    flat, offset = local.view(-1), global_offset(p)
    transformed = type(direction).transform is not Direction.transform
    for s, e, z in z_range(direction, pid, p.shape, local.device, offset, offset + local.numel()):
        a, b = s - offset, e - offset
        yield Piece(flat[a:b], direction.transform(pid, local, a, b, z) if transformed else z, a, b)


class ShardedProvider(TorchProvider):
    """The torch provider's moves and sweeps on this rank's shard only (elementwise: the same
    bits per element as one process's whole-tensor sweep, in float32)."""

    def move(self, p: torch.Tensor, pid: int, direction: Direction, delta: float) -> None:
        if delta != 0.0:
            for piece in local_pieces(p, pid, direction):
                piece.weights.add_(piece.z.to(piece.weights.dtype), alpha=delta)

    def sweep(self, p: torch.Tensor, pid: int, direction: Direction, undo: float, decay: float, coeff: float) -> None:
        for piece in local_pieces(p, pid, direction):
            target, z = piece.weights, piece.z.to(piece.weights.dtype)
            if undo != 0.0:
                target.add_(z, alpha=undo)
            if decay != 0.0:
                target.mul_(1.0 - decay)
            if coeff != 0.0:
                target.add_(z, alpha=coeff)


class ShardedEngine(InPlaceEngine):
    """MeZO's in-place perturbation of each rank's shards (module docstring): the next forward's
    all-gathers assemble θ + s·z. ``foreach`` hands stateful updates the local pieces, whose
    ``Piece.of`` slices a state buffer kept as a local shard (``ZOOptimizer._param_state``)."""

    def __init__(self, model: torch.nn.Module | None = None) -> None:
        super().__init__(ShardedProvider())
        self.model = model
        self.supports_dual = model is not None  # forward gradient: ``dual`` needs the modules

    @contextmanager
    def dual(self, params: ZOParams, direction: Direction):
        """Forwards inside see every parameter of ``params`` as the dual tensor (θ, z) of its WHOLE
        value: a forward pre-hook on each module owning one (run after FSDP2's, which gathered the
        block: FSDP prepends its own) puts ``make_dual(gathered θ, whole z)`` in the slot, and a
        post-hook (before FSDP's reshard) puts the gathered parameter back. z of the whole
        parameter, drawn by every rank (the virtual engine's ``dual`` draws the same z: one
        process's tangent bits); no weight is written."""
        import torch.autograd.forward_ad as fwAD
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if self.model is None:
            raise NotImplementedError("ShardedEngine.dual needs the model (ShardedEngine(model))")
        ids = {id(p): pid for pid, p in params}
        slots: dict[int, list[tuple[str, int]]] = {}
        for module in self.model.modules():  # the slots hold the sharded parameters between forwards
            for name, p in module._parameters.items():
                if p is not None and id(p) in ids:
                    slots.setdefault(id(module), []).append((name, ids[id(p)]))
        held: dict[int, list[tuple[str, torch.Tensor]]] = {}

        def enter(module, args):
            frame = []
            for name, pid in slots.get(id(module), []):
                whole = module._parameters[name]  # FSDP2's gathered (unsharded) parameter
                assert whole is not None
                z = self.provider.sample(whole, pid, direction)  # the whole parameter's z
                dual = fwAD.make_dual(whole.detach(), z.to(whole.dtype))
                module._parameters[name] = dual  # type: ignore[assignment]  # a dual tensor the forward only reads
                frame.append((name, whole))
            held[id(module)] = frame

        def leave(module, args, output):
            for name, whole in held.pop(id(module), []):
                module._parameters[name] = whole  # type: ignore[assignment]  # FSDP2's gathered tensor, back

        handles = []
        for module in self.model.modules():
            if id(module) in slots:
                handles.append(module.register_forward_pre_hook(enter))
                handles.append(module.register_forward_hook(leave, prepend=True))
        try:
            with fwAD.dual_level(), sdpa_kernel([SDPBackend.MATH]):
                yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def foreach(self, params: ZOParams, direction: Direction, fn) -> None:
        with self.timed(), self.provider.z_scope():
            for pid, p in params:
                for piece in local_pieces(p, pid, direction):
                    fn(pid, p, piece)
