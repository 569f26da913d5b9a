"""Several perturbations in ONE forward: the batch repeated N times, replica i at θ + s_i·z_i.

The caller repeats its batch N times (replica-major: rows [iB, (i+1)B) are replica i) and
every parametrised module computes replica i at its own weights. A replica is a pair
(direction, scale); replicas that share a direction form a group whose z is drawn once for all
of them (``Provider.values`` / ``blocks`` / ``linear`` take the group's scales). SPSA's mirrored
pair L(θ + εz), L(θ - εz) is the group [(d, ε), (d, -ε)] (``VirtualEngine.mirrored``); FZOO's
batch of N directions is N groups of one (``VirtualEngine.replicas``).

How each module is split: ``nn.Linear`` and ``nn.Embedding`` (subclasses too: OPT's learned
positions, Gemma's scaled embedding) have their ``F.linear`` / ``F.embedding`` call split by
replica, each slice computed at its own fl(θ + s_i·z_i) (streamed for large weights, fused in the
GEMM where the provider can); any other module that owns parameters and has no parametrised
submodule is called once per replica on its slice with θ + s_i·z_i swapped in
(``torch.func.functional_call``; norms are cheap). Modules that own parameters AND have
parametrised submodules are not supported (``replica_plan`` says why; callers fall back to
sequential evaluation). Assumption: every parametrised module sees the batch as the leading
dimension of its input (true of Hugging Face models). The result equals N sequential
evaluations up to rounding (the rest of the model runs on a batch of N·B rows), not bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .base import ZOParams
from .directions import Direction
from .provider import Provider
from .streamed import RoutedCalls, hook_mode


class ReplicaHost(Protocol):
    """What a batched evaluation needs of the engine that runs it (``VirtualEngine``): its
    provider, its timer, which weights it streams or shares between modules, and the streamed
    products. The engine builds the evaluation; the evaluation knows the engine only by this."""

    provider: Provider

    def timed(self) -> AbstractContextManager: ...

    def streams(self, p: torch.Tensor) -> bool: ...

    def is_tied(self, p: torch.Tensor) -> bool: ...

    def linear_at(
        self,
        xs: Sequence[torch.Tensor],
        weight: torch.Tensor,
        biases: Sequence[torch.Tensor | None],
        pid: int,
        direction: Direction,
        scales: Sequence[float],
        outs: Sequence[torch.Tensor],
    ) -> None: ...

    def embedding_at(
        self, ids: Sequence[torch.Tensor], weight: torch.Tensor, pid: int, direction: Direction, scales: Sequence[float]
    ) -> list[torch.Tensor]: ...


#: one module of a replica plan: (module, kind, [(name, parameter, pid)])
PlanEntry = tuple[nn.Module, str, list[tuple[str, nn.Parameter, int]]]


@dataclass
class Group:
    """Replicas that share one direction (one draw of z): their indices and scales."""

    direction: Direction
    indices: list[int] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)


def group_replicas(replicas: Sequence[tuple[Direction, float]]) -> list[Group]:
    """The replicas grouped by direction (the same object), in order of first appearance."""
    groups: dict[int, Group] = {}
    for i, (direction, scale) in enumerate(replicas):
        group = groups.setdefault(id(direction), Group(direction))
        group.indices.append(i)
        group.scales.append(scale)
    return list(groups.values())


def replica_plan(model: nn.Module, params: ZOParams) -> list[PlanEntry] | str:
    """[(module, kind, [(name, parameter, pid)])] for every module that must perturb some of
    ``params`` (kind: linear, embedding or generic), or a string saying why a module cannot be
    evaluated per replica."""
    wanted = {id(p): pid for pid, p in params}
    plan: list[PlanEntry] = []
    for qualname, module in model.named_modules():
        own = [(n, p) for n, p in module._parameters.items() if p is not None and id(p) in wanted]
        if not own:
            continue
        if type(module) is nn.Linear:
            kind = "linear"
        elif isinstance(module, nn.Embedding) and module.max_norm is None:  # subclasses too (OPT's positions)
            kind = "embedding"
        else:
            below = {id(q) for child in module.children() for q in child.parameters()}
            # a parameter also owned by a submodule is perturbed there (RoBERTa's lm_head.bias
            # is lm_head.decoder.bias)
            own = [(n, p) for n, p in own if id(p) not in below]
            if not own:
                continue
            if below:
                return (
                    f"module {qualname or type(module).__name__} ({type(module).__name__}) owns "
                    "parameters and has parametrised submodules"
                )
            kind = "generic"
        plan.append((module, kind, [(n, p, wanted[id(p)]) for n, p in own]))
    return plan


class ReplicaEvaluation:
    """The hooks and state of one batched evaluation (``VirtualEngine.replicas`` / ``mirrored``).

    Args:
        engine: the virtual engine (its provider computes the perturbed weights and products).
        params: the ``(pid, parameter)`` pairs being perturbed.
        replicas: ``(direction, scale)`` of replica i, i = 0..N-1.
        what: how errors name this evaluation ("replicas", "mirrored evaluation").
        refusal: the end of the error for a parameter used outside F.linear / F.embedding.
    """

    def __init__(
        self,
        engine: ReplicaHost,
        params: ZOParams,
        replicas: Sequence[tuple[Direction, float]],
        what: str,
        refusal: str,
    ) -> None:
        self.engine, self.what, self.refusal = engine, what, refusal
        self.pids = {id(p): pid for pid, p in params}
        self.count = len(replicas)
        self.groups = group_replicas(replicas)
        self.replaying = False  # a generic module re-run per replica must not re-enter its hook
        # a tied weight's values per group, kept for its other uses in this forward (one z per
        # direction); tied weights are only materialised below the streaming threshold
        self._tied: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.handles: list = []

    def install(self, plan: list[PlanEntry]) -> None:
        for module, kind, entries in plan:
            if kind in ("linear", "embedding"):  # split inside F.linear / F.embedding
                self.handles += hook_mode(
                    module, lambda m: RoutedCalls(m, self.touches, self.linear, self.embedding, self.refusal)
                )
            else:
                self.handles.append(module.register_forward_hook(self._generic_hook(entries), with_kwargs=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self._tied = {}

    def touches(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and id(value) in self.pids

    def _rows(self, rows: int, who: str = "a layer") -> None:
        n = self.count
        if rows % n:
            raise ValueError(
                f"{self.what}: {who} got {rows} rows, not a multiple of the {n} replicas; the closure must "
                f"repeat its batch {n} times (replica-major: replicas={n})"
            )

    def values(self, p: torch.Tensor, index: int) -> list[torch.Tensor]:
        """θ + s·z of group ``index``'s replicas for a perturbed ``p`` (``p`` itself otherwise);
        a tied weight's second use reuses the first's (one z per direction and evaluation)."""
        group = self.groups[index]
        if not self.touches(p):
            return [p] * len(group.scales)
        cached = self._tied.get((id(p), index))
        if cached is not None:
            return cached
        with self.engine.timed():
            values = self.engine.provider.values(p.detach(), self.pids[id(p)], group.direction, group.scales)
        if self.engine.is_tied(p):
            self._tied[(id(p), index)] = values
        return values

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """F.linear on replica-major rows, each replica's rows at its own weights."""
        self._rows(x.shape[0])
        out = x.new_empty(*x.shape[:-1], weight.shape[0])
        xs, outs = x.chunk(self.count), out.chunk(self.count)
        for index, group in enumerate(self.groups):
            gx, gout = [xs[i] for i in group.indices], [outs[i] for i in group.indices]
            biases = [None] * len(gx) if bias is None else self.values(bias, index)
            if self.touches(weight) and self.engine.streams(weight):  # fused or block by block: no whole W_i
                pid = self.pids[id(weight)]
                self.engine.linear_at(gx, weight, biases, pid, group.direction, group.scales, gout)
                continue
            for xi, w, b, oi in zip(gx, self.values(weight, index), biases, gout):
                oi.copy_(F.linear(xi, w, b))
        return out

    def embedding(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """F.embedding on replica-major rows of ids, each replica's rows from its own weights."""
        self._rows(ids.shape[0])
        parts = ids.chunk(self.count)
        results: list[torch.Tensor | None] = [None] * self.count
        for index, group in enumerate(self.groups):
            ids_g = [parts[i] for i in group.indices]
            if self.touches(weight) and self.engine.streams(weight):  # gathered: no whole W_i
                pid = self.pids[id(weight)]
                found = self.engine.embedding_at(ids_g, weight, pid, group.direction, group.scales)
            else:
                found = [F.embedding(i, w) for i, w in zip(ids_g, self.values(weight, index))]
            for i, result in zip(group.indices, found):
                results[i] = result
        return torch.cat(results)  # type: ignore[arg-type]  # every replica is in one group

    def _generic_hook(self, entries):
        def hook(module, args, kwargs, output):
            if self.replaying:
                return None
            with torch.no_grad():
                return self._generic(module, args, kwargs, output, entries)

        return hook

    def _generic(self, module: nn.Module, args, kwargs, output, entries) -> torch.Tensor:
        """The module re-run once per replica on its rows, its parameters at θ + s_i·z_i."""
        if not isinstance(output, torch.Tensor) or output.ndim == 0:
            raise TypeError(
                f"{self.what}: {type(module).__name__} returns {type(output).__name__}, "
                "only modules returning one batch-shaped tensor can be evaluated per replica"
            )
        rows, n = output.shape[0], self.count
        self._rows(rows, type(module).__name__)

        def piece(value, i):  # replica i's rows of every batch-shaped input, the rest unchanged
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows:
                return value.chunk(n)[i]
            return value

        outputs: list[torch.Tensor | None] = [None] * n
        self.replaying = True
        try:
            for index, group in enumerate(self.groups):
                values = {name: self.values(p, index) for name, p, _ in entries}
                for j, i in enumerate(group.indices):
                    swapped = {name: v[j] for name, v in values.items()}
                    outputs[i] = torch.func.functional_call(
                        module, swapped, tuple(piece(a, i) for a in args), {k: piece(v, i) for k, v in kwargs.items()}
                    )
        finally:
            self.replaying = False
        return torch.cat(outputs)  # type: ignore[arg-type]  # every replica is in one group
