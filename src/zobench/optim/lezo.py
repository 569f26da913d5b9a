"""LeZO: layer-wise sparse MeZO (Wang et al., "Simultaneous Computation and Memory Efficient
Zeroth-Order Optimizer for Fine-Tuning Large Language Models", arXiv 2410.09823, 2024).

Each step t draws a random subset S_t of the transformer blocks, leaving ``n_drop`` of them out;
z' = z on the blocks of S_t and on every parameter outside the blocks (embeddings, final norm,
LM head: always perturbed, §5.3), 0 on the blocks left out:

    g = (L(θ + εz') - L(θ - εz')) / 2ε,     θ ← θ - η (g z' + λ θ)    (θ of the perturbed set only)

i.e. MeZO on a random block subset. 2 full forward passes per step (the forward does not get
cheaper); what shrinks is the perturb / update work, since every parameter's z has its own seed
(``mix_seed(step seed, parameter id)``) and a left-out block is never visited: no z is drawn for
it and its weights are not touched, bit for bit. The z of a perturbed parameter is the z MeZO
draws at the same step and seed. No optimizer state.

Blocks come from parameter names (the optimizer takes ``named_parameters()``-style groups:
``(name, p)`` pairs, which torch keeps as ``param_names``): a name containing
``.layers.<i>.`` / ``.layer.<i>.`` / ``.h.<i>.`` / ``.blocks.<i>.`` belongs to block i (llama,
OPT, phi, gemma3: ``layers``; RoBERTa: ``layer``; GPT-2: ``h``). Parameters given without names
are one block each. ``n_drop`` fixes the count; ``drop_rate`` (used when ``n_drop`` is None)
states it as a fraction of the model's blocks, so one config fits models of any depth.

No public code (WangFei-2019/LeZO holds only a README), so the rule is the paper's; the default
``n_drop`` is not published (the paper sweeps 0..40 of OPT-13B's 40 blocks): set it per model.
Weight decay, like the update, applies to the perturbed set only. See docs/algorithms.md, "LeZO".
"""

from __future__ import annotations

import math
import re

import torch

from ..engine import Engine, mix_seed
from ._common import Closure, ZOOptimizer, check_hyperparameters

#: a transformer block's index in a parameter name: ``model.layers.3.mlp...``, ``encoder.layer.3...``
BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")
_SUBSET_SALT = 0x1E20  # separates the block-subset stream from the z stream of the same step


def block_of(name: str) -> str | None:
    """The block key of a parameter name (its prefix up to the block index), or None for a
    parameter outside the blocks (embeddings, final norm, LM head)."""
    match = BLOCK_PATTERN.search(name)
    return None if match is None else name[: match.end()]


class LeZO(ZOOptimizer):
    """MeZO on a random subset of blocks (module docstring).

    Args:
        params: ``named_parameters()`` or groups of ``(name, p)`` pairs (blocks from the names);
            plain tensors make one block each.
        n_drop: blocks left out per step (0 = MeZO; at most the number of blocks); None: use
            ``drop_rate``, the fraction of the blocks left out (rounded half up: 0.5 of 30 is 15).
        lr, eps, weight_decay, distribution, seed, engine: as MeZO's.
    """

    forward_passes_per_step = 2
    takes_names = True  # the loop passes (name, p) pairs
    hyperparameters = {"n_drop": "natural", "drop_rate": "unit"}

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        n_drop: int | None = None,
        drop_rate: float | None = 0.5,
        weight_decay: float = 0.0,
        distribution: str = "gaussian",
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        # n_drop wins; drop_rate is read only when n_drop is null
        check_hyperparameters(
            self.hyperparameters, {"n_drop": n_drop} if n_drop is not None else {"drop_rate": drop_rate}
        )
        super().__init__(
            params, dict(lr=lr, eps=eps, weight_decay=weight_decay, distribution=distribution), engine=engine, seed=seed
        )
        self._block = {}  # pid -> block key (None: always perturbed)
        for group, entries in zip(self.param_groups, self._group_params):
            names = group.get("param_names")
            for index, (pid, _) in enumerate(entries):
                self._block[pid] = block_of(names[index]) if names else f"param{pid}"
        self.blocks = sorted(
            {b for b in self._block.values() if b is not None},
            key=lambda b: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", b)],
        )
        if n_drop is None:  # a fraction of this model's blocks, rounded half up
            assert drop_rate is not None  # check_hyperparameters refused a null drop_rate above
            n_drop = int(math.floor(drop_rate * len(self.blocks) + 0.5))
        if n_drop > len(self.blocks):
            raise ValueError(f"n_drop={n_drop}: must be at most the number of blocks ({len(self.blocks)})")
        for group in self.param_groups:
            group["n_drop"] = int(n_drop)

    def kept_blocks(self, step: int) -> set[str]:
        """The blocks perturbed at ``step``: all but ``n_drop``, chosen uniformly from a generator
        seeded by (seed, step), so a resumed run draws the same subsets."""
        n_drop = self._shared("n_drop")
        gen = torch.Generator().manual_seed(mix_seed(self.param_groups[0]["seed"], step, _SUBSET_SALT))
        order = torch.randperm(len(self.blocks), generator=gen).tolist()
        return {self.blocks[i] for i in order[n_drop:]}

    def _perturbed(self, params, kept: set[str]):
        return [(pid, p) for pid, p in params if self._block[pid] is None or self._block[pid] in kept]

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        eps = self._shared("eps")
        step = self._advance()
        direction = self.direction(step, distribution=self._shared("distribution"))
        kept = self.kept_blocks(step)
        active = self._perturbed(self._all_params, kept)
        g, loss_plus, loss_minus = self._two_sided(closure, direction, eps, params=active)
        self._record(projected_grad=g, loss_plus=loss_plus, loss_minus=loss_minus, blocks_perturbed=len(kept))
        if not math.isfinite(g):  # never write NaN/inf into the weights
            self.engine.restore(active)
        else:
            for group, params in zip(self.param_groups, self._group_params):
                lr = group["lr"]
                self.engine.restore_and_update(
                    self._perturbed(params, kept), direction, coeff=-lr * g, decay=lr * group["weight_decay"]
                )
        return torch.tensor((loss_plus + loss_minus) / 2)
