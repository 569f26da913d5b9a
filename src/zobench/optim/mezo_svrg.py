"""MeZO-SVRG: variance-reduced zeroth-order fine-tuning (Gautam et al., "Variance-reduced
Zeroth-Order Methods for Fine-Tuning Language Models", ICML 2024, arXiv 2404.08080; code:
amazon-science/mezo_svrg, ``models/llm_module.py`` and ``finetune_llm.py``).

Steps t = 1, 2, ...; every q-th (t - 1 ≡ 0 mod q, finetune_llm.py:328-331) an anchor step on a
large batch D (``anchor_examples`` n, evaluated in chunks of the training batch), else an inner
step on the minibatch B, with ĝ_X(θ; z) = (L_X(θ+εz) - L_X(θ-εz)) / 2ε · z:

    anchor:  g = ĝ_D(θ; z_a),  θ̄ ← θ,  θ ← θ - η1 g                       (llm_module.py:412-418)
    inner:   θ ← θ - η2 [ĝ_B(θ; z) - ĝ_B(θ̄; z) + g]                        (llm_module.py:419-426)

with the SAME z and the SAME batch B at θ and at θ̄, so that the two estimates' noise (the
direction, the batch) cancels and only the drift θ - θ̄ is left: that is what makes the
estimate's variance drop (tests/optim/test_reference_steps.py measures it).

Passes: anchor 2⌈n/|B|⌉ (one per chunk and sign), inner 4; ``forward_passes(steps)`` is the exact
count (the loop uses it for ``train.forward_budget``), ``forward_passes_per_step`` the average.
The authors' query counter counts otherwise: ``self.query.append(2*n)`` once per step, n the
step's batch size (llm_module.py:431, :377, :315), so an inner step counts 2|B| where 4 passes of
|B| run, and the logging forward of every step (l.432-439) is not counted. A query axis of the
paper's plots is therefore about half of zobench's forward passes (exactly: per inner step 2 of
4), where inner steps dominate (q=2: half the steps).
State: θ̄, one parameter-sized buffer (``state_buffers_per_param = 1``); g is one SPSA
direction, so it is kept as two numbers, the anchor step's seed and its projected gradient, and
regenerated like any z. Evaluating at θ̄ swaps θ and θ̄ in place, a piece at a time (exact).
Offloaded (``offload=cpu|disk``): θ̄ is stored beside its block; θ̄ ← θ is an ``Engine.visit``
(a read and a write of every block), the evaluation at θ̄ an exact ``Engine.transformed`` (the
swap made while each block is resident). Passes over storage: anchor ⌈n/|B|⌉ + 1 reads and 1 write
(2 when the previous step's update is applied), inner 2 reads and 1 write (docs/offload.md).

Deviations from the authors' code (each a fault docs/algorithms.md lists under "MeZO-SVRG"):

* The reference's θ̄ is ``parameters.copy()`` (l.415), a shallow copy of a list of (name,
  tensor) pairs that aliases θ: its ĝ_B(θ̄) is taken at the current θ, already moved by the first
  estimate's in-place update (l.422-423); and each SPSA call draws a fresh seed (l.485), so the
  two estimates use independent z. Nothing cancels: the inner step is two independent MeZO
  steps plus η2 g. Here θ̄ is a real copy and the pair shares z and B.
* The reference stores g parameter-sized (``full_grad``, l.414); here two scalars.
* No learning-rate annealing (l.394-400, both lrs ÷ ``anneal`` when the windowed mean loss
  rises >5%: a schedule, not the method) and no logging forward (l.432).
"""

from __future__ import annotations

import math

import torch

from ..engine import Direction, Engine, directions
from ..engine.sharded import local_tensor
from ._common import Closure, ZOOptimizer, accepts_replicas


def _swap(a: torch.Tensor, b: torch.Tensor) -> None:
    """Exchange the values of two same-shaped contiguous tensors, a Z_CHUNK piece at a time."""
    if not a.is_contiguous():  # rare (a transposed parameter): one whole-tensor exchange
        held = a.clone()
        a.copy_(b)
        b.copy_(held)
        return
    fa, fb = a.view(-1), b.view(-1)
    for start in range(0, fa.numel(), directions.Z_CHUNK):
        stop = start + directions.Z_CHUNK
        held = fa[start:stop].clone()
        fa[start:stop].copy_(fb[start:stop])
        fb[start:stop].copy_(held)


def average_closure(closures):
    """One closure over several batches: the mean of their losses (equal-sized batches: the mean
    over all their examples); passes ``replicas`` on when every one of them takes it."""
    if all(accepts_replicas(c) for c in closures):

        def closure(replicas=1):
            losses = [torch.as_tensor(c() if replicas == 1 else c(replicas=replicas)).float() for c in closures]
            return sum(losses) / len(losses)

        return closure
    return lambda: sum(torch.as_tensor(c()).float() for c in closures) / len(closures)


class MeZOSVRG(ZOOptimizer):
    """MeZO-SVRG with the anchor and the inner pair done as the paper states (module docstring).

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        lr: η2, the inner steps' learning rate.
        anchor_lr: η1, the anchor steps' (None: η2).
        eps: perturbation scale ε (shared by all groups).
        q: steps per anchor (an anchor every q-th step, the first included).
        anchor_examples: n, the anchor batch (the loop supplies ⌈n/|B|⌉ training batches).
        weight_decay, distribution, seed, engine: as MeZO's.
    """

    forward_passes_per_step = (2 + 4) / 2  # unbound, q=2: the instance updates it in bind_data
    state_buffers_per_param = 1
    hyperparameters = {"anchor_lr": "nonnegative", "q": "count", "anchor_examples": "count"}

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        anchor_lr: float | None = None,
        eps: float = 1e-3,
        q: int = 2,
        anchor_examples: int = 512,
        weight_decay: float = 0.0,
        distribution: str = "gaussian",
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        anchor_lr = lr if anchor_lr is None else anchor_lr
        defaults = dict(
            lr=lr,
            anchor_lr=anchor_lr,
            eps=eps,
            q=q,
            anchor_examples=anchor_examples,
            weight_decay=weight_decay,
            distribution=distribution,
        )
        super().__init__(params, defaults, engine=engine, seed=seed)
        self._sample, self._anchor_batches = None, 1
        self._update_average()

    # -- the loop's data -------------------------------------------------------------------------
    def bind_data(self, sample, batch_size: int) -> None:
        """``sample()`` returns a closure over the next training batch of ``batch_size`` examples:
        the anchor takes ⌈n / batch_size⌉ of them (unbound: the anchor uses the step's batch)."""
        self._sample = sample
        self._anchor_batches = max(1, math.ceil(self._shared("anchor_examples") / int(batch_size)))
        self._update_average()

    def forward_passes(self, steps: int) -> int:
        """Exact forward passes of steps 1..``steps``."""
        q = self._shared("q")
        anchors = (steps + q - 1) // q
        return 2 * self._anchor_batches * anchors + 4 * (steps - anchors)

    def _update_average(self) -> None:
        q = self._shared("q")
        self.forward_passes_per_step = (2 * self._anchor_batches + 4 * (q - 1)) / q

    # -- the step --------------------------------------------------------------------------------
    def _theta_bar(self, p: torch.Tensor) -> torch.Tensor:
        return self._param_state(p, "theta_bar", dtype=p.dtype)

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        step = self._advance()
        if (step - 1) % self._shared("q") == 0 or "svrg" not in self.state:
            return self._anchor_step(closure, step)
        return self._inner_step(closure, step)

    def _anchor_step(self, closure: Closure, step: int) -> torch.Tensor:
        direction = self.direction(step, distribution=self._shared("distribution"))
        batch = (
            average_closure([self._sample() for _ in range(self._anchor_batches)])
            if self._sample is not None
            else closure
        )
        g, loss_plus, loss_minus = self._two_sided(batch, direction, self._shared("eps"))
        self.engine.restore(self._all_params)
        self._record(projected_grad=g, loss_plus=loss_plus, loss_minus=loss_minus, anchor=1.0)
        if not math.isfinite(g):  # no anchor from a non-finite estimate: the next step retries
            self.state.pop("svrg", None)
            return torch.tensor((loss_plus + loss_minus) / 2)
        self.engine.visit(self._all_params, self._set_anchor)  # θ̄ ← θ, before the anchor's own update
        self.state["svrg"] = {"anchor_step": step, "anchor_grad": g}
        for group, params in zip(self.param_groups, self._group_params):
            lr = group["anchor_lr"]
            self.engine.update(params, direction, coeff=-lr * g, decay=lr * group["weight_decay"])
        return torch.tensor((loss_plus + loss_minus) / 2)

    def _inner_step(self, closure: Closure, step: int) -> torch.Tensor:
        eps, distribution = self._shared("eps"), self._shared("distribution")
        direction = self.direction(step, distribution=distribution)
        g_now, loss_plus, loss_minus = self._two_sided(closure, direction, eps)
        self.engine.restore(self._all_params)
        g_bar = self._at_anchor(closure, direction, eps)
        anchor = self.state["svrg"]
        anchor_dir = self.direction(anchor["anchor_step"], distribution=distribution)
        self._record(
            projected_grad=g_now - g_bar,
            loss_plus=loss_plus,
            loss_minus=loss_minus,
            projected_grad_anchor=g_bar,
            anchor=0.0,
        )
        if math.isfinite(g_now) and math.isfinite(g_bar):
            # θ ← θ - η2 [(g(θ) - g(θ̄)) z + g_a z_a]: the shared z's two terms in one sweep
            for group, params in zip(self.param_groups, self._group_params):
                lr = group["lr"]
                self.engine.update(params, direction, coeff=-lr * (g_now - g_bar), decay=lr * group["weight_decay"])
                self.engine.update(params, anchor_dir, coeff=-lr * anchor["anchor_grad"])
        return torch.tensor((loss_plus + loss_minus) / 2)

    def _set_anchor(self, entries) -> None:
        # elementwise: an FSDP2-sharded p (dist.mode=sharded) copies and swaps its own rows with
        # its shard of θ̄ (``_param_state``), the bits one process moves there
        for _, p in entries:
            self._theta_bar(p).copy_(local_tensor(p))

    def _swap_anchor(self, entries) -> None:
        for _, p in entries:
            _swap(local_tensor(p), self._theta_bar(p))

    def _at_anchor(self, closure: Closure, direction: Direction, eps: float) -> float:
        """ĝ_B(θ̄; z): the same batch and the same z, evaluated with θ̄ swapped into the weights
        (``Engine.transformed``: offloaded, each block's θ̄ swapped in while it is resident)."""
        with self.engine.transformed(self._all_params, self._swap_anchor, self._swap_anchor, exact=True):
            g, _, _ = self._two_sided(closure, direction, eps)
            self.engine.restore(self._all_params)
        return g
