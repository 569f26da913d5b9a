"""FZOO: fast zeroth-order optimisation with N one-sided Rademacher directions and a step
normalised by the spread of the losses (Dang et al., "FZOO: Fast Zeroth-Order Optimizer for
Fine-Tuning Large Language Models towards Adam-Scale Speed", 2025, arXiv 2506.09034).

The authors' rule (DKmiyan/FZOO @d4f8a8b, trainer.py:757 σ, :760 the coefficients, :779 the update):

    u_i ∈ {-1, +1}^d (i = 1..N),  ℓ0 = L(θ),  ℓ_i = L(θ + ε u_i),  σ = std(ℓ_1 .. ℓ_N)  (population)
    θ ← (1 - ηλ) θ - (η / (N σ)) Σ_i (ℓ_i - ℓ0) u_i

There is no 1/ε: since ℓ_i - ℓ0 ≈ ε u_iᵀ∇L and σ ≈ ε‖∇L‖, the step is normalised SGD,
≈ (η/N) Σ_i (u_iᵀ∇L / ‖∇L‖) u_i, independent of ε, and the published learning rates (1e-5 with
ε 1e-3 in fzoo.sh, 5e-5 with ε 1e-4 in the OPT-13B README) are calibrated to it. (Dividing by ε
as well would make the step at lr η this rule's step at lr η/ε.) See docs/algorithms.md, "FZOO".

N+1 forward passes per step, no parameter-sized state.

Batched evaluation (the paper's speed claim): when the engine can evaluate replicas
(``engine.mode=virtual``, see ``VirtualEngine.replicas``) and the closure accepts a ``replicas``
argument, the N perturbed losses come from ONE model call on the batch repeated N times, replica
i at θ + εu_i: ``closure(replicas=N)`` must return the N losses as a tensor of shape (N,)
(``replicas_per_call`` > 0 splits them into calls of that many replicas, to bound memory).
Otherwise they are evaluated one after another. Both give the same losses up to rounding. The
gain is GPU occupancy (N× the rows per kernel); z is still generated once per replica per module,
so where drawing z dominates the step (a CPU) batching gains little.

FZOO-R (``reuse=true``, loss reuse): each step evaluates only N/2 new directions (N/2 + 1 passes)
and reuses the N/2 differences ℓ_j - ℓ0 of the previous step with their directions (regenerated
from that step's seed): the update sums over the N/2 fresh and N/2 reused directions, and σ is
the std of those N differences (within one step std(ℓ_i) = std(ℓ_i - ℓ0); across two steps only
the differences are comparable, their ℓ0 being on different weights and batches). The first
step has nothing to reuse and updates with its N/2 fresh directions. The N/2 differences and the
step they came from are kept in ``self.state`` (a few numbers), so resumes are bit-identical.
The paper presents this variant; the public code leaves it inactive, and this reading of it
(which half, how σ is pooled) is ours.

Options and choices, stated: ``std_ddof=0`` (default) is the authors' population std
(``torch.std(..., unbiased=False)``, trainer.py:757); ``std_ddof=1`` the sample std the paper is
reported to use (not verified). If σ = 0 (all ℓ_i equal; the reference divides by zero) only
weight decay acts.

Deviations from the authors' code:

* weight decay λ (decoupled, decay groups only; default 0): the reference has none (trainer.py:779).
* the learning rate follows the loop's schedule; the reference's ``_get_learning_rate`` returns the
  constant ``args.learning_rate`` whatever the scheduler (trainer.py:225-230).
* u_i comes from the engine's seeded Rademacher stream, not ``torch.manual_seed`` +
  ``torch.randint`` on the global RNG (trainer.py:724-729), and ℓ0 is evaluated before the
  perturbed losses (the reference evaluates it after, l.758: same θ, same value).
* their parallel path (a patched OPT forward that stacks N perturbed weight copies) does not run
  in the public release; here the replicas are computed inside each layer from the shared weights
  (x Wᵀ + ε x U_iᵀ), with no weight copy, for any model built of supported modules.
"""

from __future__ import annotations

import logging
import math
import statistics

import torch

from ..engine import Engine
from ._common import Closure, ZOOptimizer, accepts_replicas

log = logging.getLogger(__name__)


class FZOO(ZOOptimizer):
    """FZOO, optionally batched (one model call for the N directions) and with loss reuse (FZOO-R).

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        lr: learning rate η.
        eps: perturbation scale ε.
        num_directions: N (>= 2; even and >= 4 with ``reuse``).
        std_ddof: 0 population std (authors' code, default), 1 sample std (paper, reportedly).
        weight_decay: λ (decoupled, decay groups only).
        batched: evaluate the N directions in one call when engine and closure allow it.
        replicas_per_call: at most this many replicas per batched call (0: all N at once).
        reuse: FZOO-R, N/2 new directions per step plus the previous step's N/2.
        seed: base seed of this optimizer's direction stream.
        engine: perturbation engine; defaults to the in-place torch engine.
    """

    hyperparameters = {"num_directions": "count", "replicas_per_call": "natural"}
    splits_directions = True

    def __init__(
        self,
        params,
        lr: float = 1e-5,
        eps: float = 1e-3,
        num_directions: int = 8,
        std_ddof: int = 0,
        weight_decay: float = 0.0,
        batched: bool = True,
        replicas_per_call: int = 0,
        reuse: bool = False,
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                eps=eps,
                num_directions=num_directions,
                std_ddof=std_ddof,
                weight_decay=weight_decay,
                batched=bool(batched),
                replicas_per_call=replicas_per_call,
                reuse=bool(reuse),
            ),
            engine=engine,
            seed=seed,
        )
        n = int(num_directions)
        if n < 2:
            raise ValueError(f"num_directions={num_directions}: FZOO needs >= 2 to estimate a spread")
        if reuse and (n < 4 or n % 2):
            raise ValueError(
                f"num_directions={num_directions}: FZOO-R (reuse=true) needs an even N >= 4 "
                "(N/2 >= 2 fresh directions per step)"
            )
        if isinstance(std_ddof, bool) or std_ddof not in (0, 1):
            raise ValueError(f"std_ddof={std_ddof!r}: 0 (population, the authors' code) or 1 (sample)")
        self.forward_passes_per_step = (n // 2 if reuse else n) + 1
        self._sequential_reason_logged = False

    # -- evaluation ----------------------------------------------------------------------------
    def _batched_reason(self, closure) -> str | None:
        """None if this step can evaluate its directions batched, else why not."""
        if not self._shared("batched"):
            return "batched=false"
        if not accepts_replicas(closure):
            return "the closure takes no `replicas` argument"
        return self.engine.replica_support(self._all_params)

    def _perturbed_losses(self, closure, directions, eps: float) -> list[float]:
        """ℓ_i = L(θ + ε u_i) for every direction: batched when possible, else one by one."""
        reason = self._batched_reason(closure)
        if reason is None:
            chunk = self._shared("replicas_per_call") or len(directions)
            losses: list[float] = []
            for start in range(0, len(directions), chunk):
                part = directions[start : start + chunk]
                with self.engine.replicas(self._all_params, part, eps):
                    values = closure(replicas=len(part))
                values = torch.as_tensor(values).reshape(-1)
                if values.numel() != len(part):
                    raise ValueError(
                        f"closure(replicas={len(part)}) returned {values.numel()} losses; "
                        f"it must return one loss per replica, shape ({len(part)},)"
                    )
                losses.extend(float(v) for v in values)
            return losses
        if self._shared("batched") and not self._sequential_reason_logged:
            log.info("FZOO evaluates its directions sequentially: %s", reason)
            self._sequential_reason_logged = True
        losses = []
        for direction in directions:
            self.engine.perturb(self._all_params, direction, eps)
            losses.append(float(closure()))
        self.engine.restore(self._all_params)
        return losses

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        eps, n, reuse = self._shared("eps"), self._shared("num_directions"), self._shared("reuse")
        step = self._advance()
        loss_zero = float(closure())
        fresh = n // 2 if reuse else n
        directions = [self.direction(step, index, "rademacher") for index in range(fresh)]
        # every direction's loss; a direction-parallel run evaluates this rank's share and gathers
        losses = self._each_direction(
            fresh, lambda ids: self._perturbed_losses(closure, [directions[i] for i in ids], eps)
        )
        differences = [loss - loss_zero for loss in losses]
        std = statistics.stdev if self._shared("std_ddof") == 1 else statistics.pstdev
        if reuse:
            previous = self.state.get("fzoo_reuse")
            if previous is not None:
                directions = directions + [
                    self.direction(previous["step"], index, "rademacher")
                    for index in range(len(previous["differences"]))
                ]
                differences = differences + list(previous["differences"])
            self.state["fzoo_reuse"] = {"step": step, "differences": [loss - loss_zero for loss in losses]}
            spread = std(differences)
        else:
            spread = std(losses)
        self._record(loss_zero=loss_zero, loss_std=spread, projected_grad=(sum(losses) / fresh - loss_zero) / eps)
        if not (math.isfinite(spread) and all(math.isfinite(d) for d in differences) and math.isfinite(loss_zero)):
            if reuse:  # nothing non-finite may be reused by the next step either
                self.state.pop("fzoo_reuse", None)
            return torch.tensor(loss_zero)
        count = len(directions)
        for index, (direction, difference) in enumerate(zip(directions, differences)):
            for group, params in zip(self.param_groups, self._group_params):
                lr = group["lr"]
                decay = lr * group["weight_decay"] if index == 0 else 0.0
                # η/(Nσ) (ℓ_i - ℓ0), no 1/ε (trainer.py:760); σ = 0 (all losses equal): only the decay acts
                coeff = -lr / (count * spread) * difference if spread > 0 else 0.0
                self.engine.update(params, direction, coeff=coeff, decay=decay)
        return torch.tensor(loss_zero)
