"""DiZO: divergence-driven zeroth-order optimisation (Tan et al., "Harmony in Divergence: Towards
Fast, Accurate, and Memory-efficient Zeroth-order LLM Fine-tuning", arXiv 2502.03304, 2025;
code: Skilteee/DiZO, ``large_models/trainer.py``).

MeZO steps (``MeZO``'s rule, 2 passes), and every κ steps (``interval``; trainer.py:1408, after
the step's update) a projection round over the projected matrices l, with θ0 the pre-trained
weights, Δ_l = θ_l - θ0_l and t_l = ‖Δ_l‖_F:

    γ_l ← t_l                                                      (each round, l.435-437, 566)
    10 times (``projection_iters``, l.914), on a fresh batch each (l.569-573):
        z_l ~ N(0, 1), clipped to |z_l| ≤ τ t_l / ε_p               (one scalar per matrix, l.399-400)
        ℓ± = L(θ with θ_l = θ0_l + (γ_l ± ε_p z_l) Δ_l / (t_l + 1e-8) for all l)     (l.439-449)
        g = (ℓ+ - ℓ-) / 2ε_p;  γ_l ← clip(γ_l - s t_l g z_l, (1-τ) t_l, (1+τ) t_l)   (l.452-457)
    θ_l ← θ0_l + γ_l Δ_l / (t_l + 1e-8)                           (l.582 → l.264-278, 300-310)

so each matrix's accumulated update Δ_l is rescaled by a factor in [1-τ, 1+τ] learnt by SPSA on
the scalars γ. Passes: 2 per step plus 2·``projection_iters`` per round, 2 + 20/κ per step on
average (``forward_passes_per_step`` is that average; ``forward_passes(steps)`` the exact count
the loop uses for ``train.forward_budget``). State: θ0 of the projected matrices only
(``state_buffers_per_param = 1`` for those; other parameters keep none).

Offloaded (``offload=cpu|disk``): θ0 is stored beside its block (taken at step 1 by an
``Engine.visit``: one more read and write); a round reads the distances t_l block by block
(``Engine.visit``), evaluates with the blocks rewritten while resident (``Engine.transformed``,
inexact: the inverse map is applied at the block's next arrival, so the drift is the in-memory
one bit for bit) and rescales (``Engine.visit``). A step costs MeZO's read and write of every
block; a round's step 2·``projection_iters`` + 3 of each (docs/offload.md).

Projected matrices: parameters whose name contains one of ``projected`` (default: the
attention key / value weights, as the reference projects OPT's k_proj and v_proj, l.899-906, plus
``lora_`` factors, the reference's LoRA case, l.901); parameters given without names: every
matrix. The round's batches come from the loop (``bind_data``); unbound (library use), the
round re-evaluates the step's closure.

Deviations from the authors' code:

* The reference keeps every step's z in ``self.random_vector`` (l.1209): a parameter-sized
  buffer; here z is regenerated from the seed as in MeZO.
* Non-OPT full fine-tuning in the reference projects nothing (l.900-901: exclude_list is every
  non-LoRA key) and OPT's embedding is frozen (l.906); here the names decide, for every family,
  and nothing is frozen.
* The scalar z_l of each round are drawn from a generator seeded by (seed, step, iteration),
  not the global RNG; the γ ± ε_p z perturbation is formed directly instead of by +1, -2, +1
  in-place moves of γ (l.439-451; equal up to an ulp of γ).
* The projected weights are written in place for the round's evaluations and put back by the
  inverse map, as in the reference (l.273-296): a few ulps of drift on those matrices per round.

The reference defaults and its other faults: docs/algorithms.md, "DiZO".
"""

from __future__ import annotations

import logging
import math

import torch

from ..engine import Engine, directions, mix_seed
from ..engine.sharded import gathered, is_sharded, local_tensor
from ._common import check_hyperparameters
from .mezo import MeZO

log = logging.getLogger(__name__)
_ROUND_SALT = 0xD120  # separates the rounds' scalar z from the steps' z streams
DEFAULT_PROJECTED = ("k_proj.weight", "v_proj.weight", "self.key.weight", "self.value.weight", "lora_")


def _distance(p: torch.Tensor, theta0: torch.Tensor) -> float:
    """‖p - θ0‖_F, a Z_CHUNK-element piece at a time (no matrix-sized temporary). An
    FSDP2-sharded p (``dist.mode=sharded``; θ0 its local shard): the differences of the local
    rows (elementwise, one process's bits) are gathered whole (a collective, one matrix at a
    time) and summed in one process's pieces and order, so every rank gets one process's t_l."""
    if is_sharded(p):
        diff = gathered(p, local_tensor(p).float() - theta0.float()).reshape(-1)
        return math.sqrt(sum(_square_sums(diff, None)))
    return math.sqrt(sum(_square_sums(p.reshape(-1), theta0.reshape(-1))))


def _square_sums(a: torch.Tensor, b: torch.Tensor | None):
    """Σ (a - b)² over each Z_CHUNK piece in order, in float64 (b None: a is the difference)."""
    for start in range(0, a.numel(), directions.Z_CHUNK):
        stop = start + directions.Z_CHUNK
        diff = a[start:stop].float() if b is None else a[start:stop].float() - b[start:stop].float()
        yield float(diff.square().sum(dtype=torch.float64))


class DiZO(MeZO):
    """MeZO plus DiZO's per-matrix projection rounds (module docstring).

    Args:
        params: ``named_parameters()``-style (names choose the projected matrices) or tensors.
        lr, eps, weight_decay, distribution, seed, engine: MeZO's.
        interval: κ, steps between projection rounds (reference default 50).
        projection_iters: SPSA iterations per round (10).
        projection_eps: ε_p, the perturbation of γ (0.1).
        projection_lr: s, the step on γ, relative to t_l (2).
        clip_range: τ, γ stays in [(1-τ)t, (1+τ)t] (0.2).
        projected: name substrings of the projected matrices.
    """

    forward_passes_per_step = 2 + 2 * 10 / 50  # the defaults' average; the instance sets its own
    state_buffers_per_param = 1
    takes_names = True  # the loop passes (name, p) pairs
    hyperparameters = {
        "interval": "count",
        "projection_iters": "natural",
        "projection_eps": "positive",
        "projection_lr": "nonnegative",
        "clip_range": "unit",
    }

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        interval: int = 50,
        projection_iters: int = 10,
        projection_eps: float = 0.1,
        projection_lr: float = 2.0,
        clip_range: float = 0.2,
        projected=DEFAULT_PROJECTED,
        distribution: str = "gaussian",
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        check_hyperparameters(
            self.hyperparameters,
            dict(
                interval=interval,
                projection_iters=projection_iters,
                projection_eps=projection_eps,
                projection_lr=projection_lr,
                clip_range=clip_range,
            ),
        )
        if not clip_range < 0.5:  # γ ± ε_p z ≥ (1 - 2τ) t > 0: the inverse map exists
            raise ValueError(f"clip_range={clip_range}: must be in [0, 0.5)")
        super().__init__(
            params, lr=lr, eps=eps, weight_decay=weight_decay, distribution=distribution, seed=seed, engine=engine
        )
        for group in self.param_groups:
            group.update(
                interval=int(interval),
                projection_iters=int(projection_iters),
                projection_eps=float(projection_eps),
                projection_lr=float(projection_lr),
                clip_range=float(clip_range),
            )
        self.forward_passes_per_step = 2 + 2 * int(projection_iters) / int(interval)
        self._projected = self._select_projected(tuple(projected))  # (pid, p) of the projected matrices
        self._sample = None  # the loop's fresh-batch closures (bind_data)
        self._anchored = False  # θ0 taken (first step of this instance; a loaded state keeps its own)

    def _select_projected(self, patterns: tuple[str, ...]) -> list:
        """(pid, p) of the parameters whose name contains one of ``patterns`` (without names: the
        matrices, ndim >= 2)."""
        chosen = []
        for group, entries in zip(self.param_groups, self._group_params):
            names = group.get("param_names")
            for index, (pid, p) in enumerate(entries):
                if any(s in names[index] for s in patterns) if names else p.ndim >= 2:
                    chosen.append((pid, p))
        if not chosen:  # e.g. prefix tuning: no name matches, so no round has work
            log.warning("DiZO: no trainable parameter matches optimizer.projected=%s; it runs as MeZO", list(patterns))
        return chosen

    def bind_data(self, sample, batch_size: int | None = None) -> None:
        """``sample()`` returns a closure over the next training batch (the loop's stream): the
        projection rounds take one per iteration, as the reference's dataloader (l.569-573)."""
        self._sample = sample

    def forward_passes(self, steps: int) -> int:
        """Exact forward passes of steps 1..``steps``: 2 each, plus a round every κ-th step."""
        return 2 * steps + 2 * self._shared("projection_iters") * (steps // self._shared("interval"))

    def _anchor(self, p: torch.Tensor) -> torch.Tensor:
        """θ0 of a projected matrix: its value at the first step (the pre-trained weights)."""
        state = self.state[p]
        if "theta0" not in state:  # sharded (dist.mode=sharded): this rank's rows only
            state["theta0"] = local_tensor(p).detach().clone(memory_format=torch.contiguous_format)
        return state["theta0"]

    def _set_anchors(self, entries) -> None:
        for _, p in entries:
            self._anchor(p)

    @torch.no_grad()
    def step(self, closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        if not self._anchored:  # θ0 before the first update (offloaded: into each block's stored state)
            self.engine.visit(self._projected, self._set_anchors)
            self._anchored = True
        loss = super().step(closure)
        step = self.param_groups[0]["step"]
        if step % self._shared("interval") == 0 and self._projected:
            self._projection_round(closure, step)
        return loss

    def _projection_round(self, closure, step: int) -> None:
        eps_p, s, tau = self._shared("projection_eps"), self._shared("projection_lr"), self._shared("clip_range")
        layers = self._projected
        t = self._distances(layers)
        gamma = list(t)
        for it in range(self._shared("projection_iters")):
            evaluate = self._sample() if self._sample is not None else closure
            gen = torch.Generator().manual_seed(mix_seed(self.param_groups[0]["seed"], step, _ROUND_SALT, it))
            z = torch.randn(len(layers), generator=gen, dtype=torch.float64).tolist()
            z = [min(max(zl, -tau / eps_p * tl), tau / eps_p * tl) for zl, tl in zip(z, t)]
            loss_plus = self._evaluate_scaled(evaluate, layers, t, [g + eps_p * zl for g, zl in zip(gamma, z)])
            loss_minus = self._evaluate_scaled(evaluate, layers, t, [g - eps_p * zl for g, zl in zip(gamma, z)])
            grad = (loss_plus - loss_minus) / (2 * eps_p)
            if not math.isfinite(grad):
                continue  # a non-finite evaluation leaves γ as it is
            gamma = [min(max(g - s * tl * grad * zl, (1 - tau) * tl), (1 + tau) * tl) for g, tl, zl in zip(gamma, t, z)]
        # θ_l ← θ0_l + γ_l Δ_l / (‖Δ_l‖ + 1e-8), the norm of the current Δ (reference l.300-310)
        final = {pid: g for (pid, _), g in zip(layers, gamma)}

        def rescale(entries) -> None:
            for pid, p in entries:
                theta0 = self._anchor(p)
                norm = _distance(p, theta0)
                if norm > 0:  # elementwise: a sharded p rescales its own rows
                    local_tensor(p).sub_(theta0).mul_(final[pid] / (norm + 1e-8)).add_(theta0)

        self.engine.visit(layers, rescale)
        self._record(**self.last_step_info, projection_scale=sum(gamma) / max(sum(t), 1e-30))

    def _distances(self, layers) -> list[float]:
        """t_l = ‖θ_l - θ0_l‖_F of every projected matrix (``Engine.visit``: offloaded, block by
        block). A block a resume's replay skips (it holds this round already) reads 0: its γ is
        then never applied."""
        found: dict[int, float] = {}

        def measure(entries) -> None:
            for pid, p in entries:
                found[pid] = _distance(p, self._anchor(p))

        self.engine.visit(layers, measure, writes=False)
        return [found.get(pid, 0.0) for pid, _ in layers]

    def _evaluate_scaled(self, closure, layers, t, gamma) -> float:
        """L with every projected θ_l = θ0_l + γ_l Δ_l / (t_l + 1e-8), written in place and put
        back by the inverse map (reference l.273-296); matrices with Δ = 0 are left alone.
        ``Engine.transformed`` (inexact: the inverse drifts by ulps, as in the reference):
        offloaded, each block is rewritten while resident for the forward."""
        ratios = {pid: g / (tl + 1e-8) for (pid, _), g, tl in zip(layers, gamma, t) if tl > 0}

        def enter(entries) -> None:
            for pid, p in entries:
                if pid in ratios:
                    theta0 = self._anchor(p)
                    local_tensor(p).sub_(theta0).mul_(ratios[pid]).add_(theta0)

        def leave(entries) -> None:
            for pid, p in entries:
                if pid in ratios:
                    theta0 = self._anchor(p)
                    local_tensor(p).sub_(theta0).div_(ratios[pid]).add_(theta0)

        with self.engine.transformed(layers, enter, leave, exact=False):
            return float(closure())
