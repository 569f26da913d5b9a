"""The consistency guard: every rank must hold bit-identical trainable weights.

Data- and direction-parallel ZO keep the replicas identical without sending any weight: each
rank applies the same update from the same reduced scalars. A nondeterministic kernel, a rank
that resumed from another file or a bug would make them drift apart silently, so at every
checkpoint and at the end the ranks compare, per parameter, two exact checksums of the weights'
bit patterns: Σ_i b_i and Σ_i b_i·(i mod 65521 + 1) over the elements' integer bits b_i, summed
in int64 (integer addition wraps modulo 2^64 and is associative: the same checksum whatever the
order or the device's reduction). Two all-reduces (MIN, MAX) of 2·P integers find any
parameter whose checksums differ between ranks; the run stops naming the first one.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist

from .context import DistContext

_CHUNK = 1 << 22  # elements per piece: the int64 copy of a piece is 32 MiB, never a whole layer
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class ReplicaMismatch(RuntimeError):
    """The ranks' weights differ: the run cannot go on (its ranks would disagree on the update)."""


def checksums(named) -> torch.Tensor:
    """(P, 2) int64: the two checksums of every parameter in ``named`` ((name, tensor) pairs)."""
    rows = []
    for _, p in named:
        flat = p.detach().reshape(-1)
        bits = flat.view(_BITS[flat.element_size()])
        plain = weighted = torch.zeros((), dtype=torch.int64, device=flat.device)
        for start in range(0, bits.numel(), _CHUNK):
            piece = bits[start : start + _CHUNK].to(torch.int64)
            index = torch.arange(start, start + piece.numel(), device=flat.device, dtype=torch.int64)
            plain = plain + piece.sum()
            weighted = weighted + (piece * (index % 65521 + 1)).sum()
        rows.append(torch.stack([plain, weighted]).cpu())
    return torch.stack(rows) if rows else torch.zeros((0, 2), dtype=torch.int64)


def check_replicas(named, ctx: DistContext, where: str) -> None:
    """Raise ``ReplicaMismatch`` naming the first parameter whose weights differ between ranks."""
    if not ctx.active:
        return
    named = list(named)
    local = checksums(named)
    low = ctx.all_reduce(local.clone(), op=tdist.ReduceOp.MIN, phase="guard")
    high = ctx.all_reduce(local.clone(), op=tdist.ReduceOp.MAX, phase="guard")
    differ = (low != high).any(dim=1).nonzero()
    if len(differ):
        first = named[int(differ[0])][0]
        raise ReplicaMismatch(
            f"{where}: the ranks' weights differ ({len(differ)} of {len(named)} parameters, first {first}); "
            "a nondeterministic kernel or a rank restored from another state: the run stops (resume it "
            "from the last checkpoint)"
        )
