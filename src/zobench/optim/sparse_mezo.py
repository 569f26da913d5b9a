"""Sparse-MeZO: perturb and update only the small-magnitude weights (Liu et al., "Sparse MeZO:
Less Parameters for Better Performance in Zeroth-Order LLM Fine-Tuning", 2024).

For every matrix θ_l: h_l = the (1 - s)-quantile of |θ_l| (s = ``sparsity``, the fraction left
out), m_l = 1[|θ_l| ≤ h_l], ẑ = m ⊙ z; vectors (biases, norms) are perturbed densely.

    g = (L(θ+εẑ) - L(θ-εẑ)) / 2ε,   θ ← (1 - ηλ) θ - η g ẑ

2 forward passes per step. The mask is recomputed from the current θ whenever z is drawn (one
threshold per matrix per step is all that is kept), so memory stays at inference. That needs
the unperturbed θ at every draw: ``engine.mode=virtual``. An in-place engine (``engine.mode=
inplace``; ``dist.mode=sharded``, whose ranks move their shards in place) would compute the mask
of θ+εz, so there the step takes the mask once from the unperturbed θ and keeps it for the step:
1 byte per matrix element (a quarter of fp32 weights; a rank's shards only when sharded).
Sharded, each matrix's threshold is taken on the whole matrix, gathered one at a time (a
quantile of partial counts would need another algorithm; this gives one process's bits).
The thresholds are taken through ``Engine.visit``: offloaded (``offload=cpu|disk``) block by
block, one read of every block (and the write of the previous
step's update) before the pair's read, 2 reads and 1 write per step (docs/offload.md).
See docs/algorithms.md, "Sparse-MeZO".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..engine import Direction, Engine, InPlaceEngine, directions
from ..engine.sharded import gathered, local_tensor
from ._common import Closure, ZOOptimizer


@dataclass(frozen=True, eq=False)
class MaskedDirection(Direction):
    """ẑ = 1[|θ| ≤ h] ⊙ z with the per-parameter thresholds h of this step; ``masks``
    (in-place engines): the flat masks 1[|θ| ≤ h] of the unperturbed θ, taken before the first
    move (elements indexed as ``like``'s: a rank's shard when sharded)."""

    thresholds: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)

    def transform(self, pid: int, like: torch.Tensor, start: int, stop: int, z: torch.Tensor) -> torch.Tensor:
        mask = self.masks.get(pid)
        if mask is not None:
            return z.mul_(mask[start:stop])
        h = self.thresholds.get(pid)
        # the mask of these elements only, from the unperturbed θ (virtual mode): nothing stored
        return z if h is None else z.mul_(like.reshape(-1)[start:stop].abs() <= h)


def magnitude_threshold(p: torch.Tensor, sparsity: float, chunk: int | None = None) -> float:
    """The (1 - sparsity)-quantile of |p|: its k-th smallest value, k = ⌈(1 - sparsity)·numel⌉,
    exactly ``p.abs().flatten().float().kthvalue(k)``, found without a parameter-sized copy.

    Radix selection on the float bits: for a float32 x ≥ 0 its int32 bit pattern orders like x,
    so four passes, each counting (``bincount``) one byte of the bits among the elements that
    share the bytes decided so far, find the k-th value's bits byte by byte. Each pass reads p
    ``chunk`` elements at a time (default Z_CHUNK): memory is O(chunk), where kthvalue needs a
    copy of |p| and int64 indices (3× the parameter in fp32; 340 MB for SmolLM2's embedding).
    """
    flat = p.detach().reshape(-1)
    n = flat.numel()
    chunk = directions.Z_CHUNK if chunk is None else int(chunk)
    rank = max(1, min(n, math.ceil((1.0 - sparsity) * n)))  # 1-based rank among the bucket's elements
    prefix = 0  # the bytes of the answer decided so far
    for shift in (24, 16, 8, 0):
        counts = torch.zeros(256, dtype=torch.int64, device=flat.device)
        for start in range(0, n, chunk):
            bits = flat[start : start + chunk].float().abs().view(torch.int32)
            if shift < 24:
                bits = bits[(bits >> (shift + 8)) == prefix]
            counts += torch.bincount((bits >> shift) & 0xFF, minlength=256)
        below = counts.cumsum(0)
        byte = int(torch.searchsorted(below, torch.tensor(rank, device=below.device)))  # first with ≥ rank
        rank -= int(below[byte - 1]) if byte else 0
        prefix = (prefix << 8) | byte
    return float(torch.tensor(prefix, dtype=torch.int32).view(torch.float32))


class SparseMeZO(ZOOptimizer):
    """MeZO on the small-magnitude weights of each matrix, the mask recomputed at every draw.

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        lr: learning rate η.
        eps: perturbation scale ε (shared by all groups).
        sparsity: s in [0, 1), the fraction of each matrix's weights (the largest |θ|) left out.
        weight_decay: λ (decay groups only).
        seed: base seed of this optimizer's direction stream.
        engine: a ``VirtualEngine`` (the mask of every draw taken from the unperturbed weights),
            or an in-place one (the step's mask kept, 1 byte per matrix element).
    """

    forward_passes_per_step = 2
    hyperparameters = {"sparsity": "fraction"}

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        sparsity: float = 0.75,
        weight_decay: float = 0.0,
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        super().__init__(
            params, dict(lr=lr, eps=eps, sparsity=sparsity, weight_decay=weight_decay), engine=engine, seed=seed
        )

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        step = self._advance()
        sparsity = self._shared("sparsity")
        thresholds: dict[int, float] = {}

        masks: dict[int, torch.Tensor] = {}
        keep = isinstance(self.engine, InPlaceEngine)  # it moves θ: the mask must be taken now

        def measure(entries) -> None:
            for pid, p in entries:
                # sharded: the whole matrix, gathered (a collective, same order on every rank)
                thresholds[pid] = magnitude_threshold(gathered(p), sparsity)
                if keep:
                    masks[pid] = local_tensor(p).detach().reshape(-1).abs() <= thresholds[pid]

        # Engine.visit: offloaded, block by block with each block resident (one read of the model)
        self.engine.visit([(pid, p) for pid, p in self._all_params if p.ndim >= 2], measure, writes=False)
        direction = MaskedDirection(self.direction(step).seed, thresholds=thresholds, masks=masks)
        return self._spsa_sgd(closure, direction)
