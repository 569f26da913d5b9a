"""SubZero: random subspace zeroth-order optimisation (Yu et al., "SubZero: Random Subspace
Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning", 2024).

For each weight matrix, U ∈ R^{m×r} and V ∈ R^{n×r} with orthonormal columns (QR of Gaussian
matrices), redrawn every ``refresh_steps`` steps; each step draws Z̃ ∈ R^{r×r} ~ N(0, I):

    Z = √(mn)/r · U Z̃ Vᵀ,   g = (L(θ+εZ) - L(θ-εZ)) / 2ε,   θ ← (1 - ηλ) θ - η g Z

(non-matrix parameters: Gaussian z). 2 forward passes per step, no state. This is the authors'
rule (zimingyy/SubZero @cf6effd, large_models/trainer.py): U, V from ``fast_svd_method_v2``
(l.1195-1205), redrawn when global_step % update_interval == 0 (l.894-908), Z = U z0 Vᵀ·√(mn/r²)
(l.756-758, l.987-989), θ ← θ - η g Z through SGD (l.324-325, l.995-996). The √(mn)/r factor gives Z's
entries unit variance on average, so ε means what it means for MeZO. Defaults: rank 8 and a
refresh every 2000 steps, the reference's run.py:94-95. See docs/algorithms.md, "SubZero".

Adapters (LoRA, prefix): the reference draws U and V for each trainable tensor of a lora / prefix
/ prompt run in the near-square shape (a, b) = ``reshape_matrix(numel)`` (a·b = numel, b - a
least; l.896-901, l.1207-1213), and Z = √(ab)/r · U Z̃ Vᵀ is read back in the tensor's shape
(``.view``, l.758). ``adapter_shape="square"`` (default) does the same for every tensor whose name
is a peft adapter's (``lora_``, ``prompt_encoder``: what zobench trains in a lora / prefix run);
``"tensor"`` uses the tensor's own (m, n). The per-entry variance is the same, the subspace is not:
a LoRA A of 8 × 576 gets 64 × 72 factors (a rank-r Z of that shape is not of rank r as 8 × 576).

Deviations from the authors' code: r is capped at min(m, n) (``rank_for``; the reference's
r × r core would not fit a thinner matrix); U, V, z0 are float32 draws from per-parameter seeded
generators, not the global ``torch.manual_seed`` stream; weight decay is decoupled, on decay groups
(the reference passes none to its SGD in its scripts); the reference's choice of low-rank tensors
is ``squeeze(p).ndim == 2``, here ``p.ndim == 2``.
"""

from __future__ import annotations

import math

import torch

from ..engine import Engine
from ._common import Closure, ZOOptimizer
from ._lowrank import LowRankDirection, factor_seed, gaussian, near_square

#: ``adapter_shape`` options; the name parts of peft's adapter tensors (LoRA's A/B, the prefix)
ADAPTER_SHAPES = ("square", "tensor")
ADAPTER_NAMES = ("lora_", "prompt_encoder")


def is_adapter(name: str | None) -> bool:
    return name is not None and any(part in name for part in ADAPTER_NAMES)


class SubZero(ZOOptimizer):
    """SubZero: SPSA in a random r × r subspace of each matrix, U and V refreshed periodically.

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        lr: learning rate η.
        eps: perturbation scale ε (shared by all groups).
        rank: r, capped per matrix at min(m, n).
        refresh_steps: steps between two draws of the orthonormal U and V.
        adapter_shape: ``square`` (the reference: LoRA / prefix tensors in their near-square
            shape) or ``tensor`` (their own shape).
        weight_decay: λ (decoupled, decay groups only).
        seed: base seed of this optimizer's factors and direction stream.
        engine: perturbation engine; defaults to the in-place torch engine.
    """

    forward_passes_per_step = 2
    hyperparameters = {"rank": "count", "refresh_steps": "count"}
    takes_names = True  # the loop passes (name, p) pairs: adapter tensors are told by name

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        rank: int = 8,
        refresh_steps: int = 2000,
        weight_decay: float = 0.0,
        adapter_shape: str = "square",
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        if adapter_shape not in ADAPTER_SHAPES:
            raise ValueError(f"adapter_shape={adapter_shape!r}: allowed {', '.join(ADAPTER_SHAPES)}")
        super().__init__(
            params,
            dict(lr=lr, eps=eps, rank=rank, refresh_steps=refresh_steps, weight_decay=weight_decay),
            engine=engine,
            seed=seed,
        )
        self._square: set[int] = set()  # pids of the tensors drawn in their near-square shape
        for group, entries in zip(self.param_groups, self._group_params):
            names = group.get("param_names")
            for index, (pid, _) in enumerate(entries):
                if adapter_shape == "square" and names and is_adapter(names[index]):
                    self._square.add(pid)

    def matrix_shape(self, pid: int, like: torch.Tensor) -> tuple[int, int]:
        """The (m, n) U and V are drawn for: near-square for an adapter tensor, else its own."""
        if pid in self._square:
            return near_square(like.numel())
        rows, cols = like.shape
        return rows, cols

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        step = self._advance()
        base, rank = self.param_groups[0]["seed"], self._shared("rank")
        period = (step - 1) // self._shared("refresh_steps")

        def factors(pid, like):
            m, n = self.matrix_shape(pid, like)
            r = max(1, min(rank, m, n))
            u = torch.linalg.qr(gaussian(factor_seed(base, pid, 0, period), (m, r), like)).Q
            v = torch.linalg.qr(gaussian(factor_seed(base, pid, 1, period), (n, r), like)).Q
            core = gaussian(factor_seed(base, pid, 2, step), (r, r), like) * (math.sqrt(m * n) / r)
            return u @ core, v

        direction = LowRankDirection(self.direction(step).seed, factors=factors, matrix_shape=self.matrix_shape)
        return self._spsa_sgd(closure, direction)
