"""Virtual (exact) perturbation: the stored weights are never modified during an estimate.

A forward pre-hook on every module that owns trainable parameters swaps in θ + scale·z (the
provider's value, computed with the arithmetic of in-place mode) for the duration of that
module's forward and puts the original tensor back afterwards. Restoration is exact in every
dtype; the extra memory is one module's parameters at a time.

Large matrices are streamed instead of swapped: a 2-D weight of ``stream_elements`` elements or
more (the embedding and LM head of a language model: 113 MB of SmolLM2's fp32 weights, 1 GB of
Llama-3-8B's fp16 ones), or one the provider never materialises (Triton's fused GEMM), is never
formed whole as θ + εz. While its module runs, a torch function mode routes the ``F.linear`` /
``F.embedding`` call on it to ``linear_at`` / ``embedding_at`` (the provider's fused product, or
the product block by block of rows: ``streamed.py``). Any other use of a streamed weight (a
module that multiplies it by hand) gets the whole θ + εz. A tied weight (embedding = LM head) is
streamed at each use, drawing its z twice per evaluation instead of keeping a parameter-sized
copy alive between the two.

The same hooks serve two other ways of evaluating the model:

* ``dual``: forward-mode AD. The pre-hook puts ``fwAD.make_dual(θ, z)`` in the module's parameter
  slot instead of θ + εz, so the loss comes out as a dual number whose tangent is the directional
  derivative ∇L(θ)·z (no backward, no stored graph). ``torch.no_grad`` does not disable forward
  AD; ``torch.inference_mode`` does (refused with an error). Attention runs on SDPA's math kernel
  inside ``dual`` (the fused kernels have no forward-AD formula).
* ``replicas`` / ``mirrored``: several perturbations in one forward of a repeated batch
  (``replicas.py``); the mirrored ± pair is the replica pair [(z, +ε), (z, -ε)], z drawn once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from .base import Engine, ZOParams
from .directions import Direction
from .provider import STREAM_ELEMENTS, Provider, TorchProvider
from .replicas import ReplicaEvaluation, replica_plan
from .streamed import RoutedCalls, blocked_embedding, blocked_linear

#: the end of the error for a parameter used outside F.linear / F.embedding in a batched forward
_REPLICA_REFUSAL = "cannot be split by replica in a batched evaluation; evaluate one direction per call " + (
    "(FZOO: optimizer.batched=false)"
)
_MIRROR_REFUSAL = "cannot be split by halves in a mirrored evaluation; set engine.paired=false"


@dataclass
class _Frame:
    """What one call of a module changed, undone when it returns."""

    saved: list[tuple[nn.Parameter, torch.Tensor]] = field(default_factory=list)  # swapped .data
    slots: list[tuple[str, nn.Parameter]] = field(default_factory=list)  # dual parameter slots
    mode: TorchFunctionMode | None = None  # routing of streamed weights


class VirtualEngine(Engine):
    """Exact perturbation: weights are swapped for θ + scale·z only inside their module's forward.

    Args:
        model: the model whose modules are hooked (parameters are tracked by ``id``: holding the
            model keeps them alive, so an id is never reused while the engine exists).
        stream_elements: 2-D weights of at least this many elements are streamed (None: off).
        paired: whether ``mirrored`` (SPSA's ± pair in one batched forward) is offered.
        provider: how θ + s·z and its products are computed (default: ``TorchProvider``).
    """

    exact_restore = True
    supports_dual = True

    def __init__(
        self,
        model: nn.Module,
        stream_elements: int | None = STREAM_ELEMENTS,
        paired: bool = True,
        provider: Provider | None = None,
    ) -> None:
        self.model, self.paired, self.stream_elements = model, bool(paired), stream_elements
        self.provider: Provider = TorchProvider() if provider is None else provider
        self._active: dict[int, tuple[int, Direction, float]] = {}  # id(p) -> (pid, direction, scale)
        self._streamed: set[int] = set()
        self._dual: dict[int, tuple[int, Direction]] = {}  # id(p) -> (pid, direction)
        self._frames: dict[int, list[_Frame]] = {}  # id(module) -> its calls in progress
        # parameters currently swapped in: a parameter owned by nested modules (RoBERTa's
        # lm_head.bias is lm_head.decoder.bias) is perturbed once, by the outermost one
        self._swapped: set[int] = set()
        # tied parameters (embedding = LM head) are used by several modules in one forward: their
        # perturbed value is computed once per evaluation and reused (the same z, the same bits)
        self._tied_cache: dict[int, torch.Tensor] = {}
        self._evaluation: ReplicaEvaluation | None = None
        owners: dict[int, int] = {}
        self._handles: list = []
        for module in model.modules():
            own = list(module.parameters(recurse=False))
            for p in own:
                owners[id(p)] = owners.get(id(p), 0) + 1
            if own:
                self._handles.append(module.register_forward_pre_hook(self._swap_in))
                self._handles.append(module.register_forward_hook(self._swap_out, always_call=True))
        self._owned = set(owners)
        self._tied = {pid for pid, count in owners.items() if count > 1}

    # -- one perturbation per forward ----------------------------------------------------------
    def perturb(self, params: ZOParams, direction: Direction, scale: float) -> None:
        self._require_owned(params)
        self._active = {id(p): (pid, direction, scale) for pid, p in params}
        # which weights stream is decided when their module runs (``_value_frame``): an
        # offloaded block's weights are only there then (zobench/offload)
        self._streamed, self._tied_cache = set(), {}

    def restore(self, params: ZOParams) -> None:
        self._active, self._streamed, self._tied_cache = {}, set(), {}

    def _require_owned(self, params: ZOParams) -> None:
        missing = [pid for pid, p in params if id(p) not in self._owned]
        if missing:
            raise ValueError(
                f"engine.mode=virtual: parameters {missing[:5]} are not owned by any module of the "
                "model the engine was built for; use engine.mode=inplace or build the engine on that model"
            )

    def streams(self, p: torch.Tensor) -> bool:
        """Whether ``p`` is perturbed block by block / fused (no whole perturbed copy is made)."""
        big = self.stream_elements is not None and p.dim() == 2 and p.numel() >= self.stream_elements
        return (big and p.is_contiguous()) or self.provider.streams(p)

    def is_tied(self, p: torch.Tensor) -> bool:
        """Whether ``p`` is owned by more than one module (a tied embedding / LM head)."""
        return id(p) in self._tied

    def _is_streamed(self, value) -> bool:
        return isinstance(value, torch.Tensor) and id(value) in self._streamed and id(value) in self._active

    @torch.no_grad()
    def _swap_in(self, module: nn.Module, args) -> None:
        if not (self._active or self._dual):
            return
        with self.timed():
            frame = self._dual_frame(module) if self._dual else self._value_frame(module)
        self._frames.setdefault(id(module), []).append(frame)

    def _value_frame(self, module: nn.Module) -> _Frame:
        frame, streams = _Frame(), False
        for p in module.parameters(recurse=False):
            entry = self._active.get(id(p))
            if entry is not None and (id(p) in self._streamed or self.streams(p)):
                self._streamed.add(id(p))
                streams = True
            elif entry is not None and id(p) not in self._swapped:
                frame.saved.append((p, p.data))
                self._swapped.add(id(p))
                value = self._tied_cache.get(id(p))
                if value is None:
                    value = self.provider.values(p.data, entry[0], entry[1], [entry[2]])[0]
                    if id(p) in self._tied:
                        self._tied_cache[id(p)] = value
                p.data = value
        if streams:
            frame.mode = RoutedCalls(
                module, self._is_streamed, self._streamed_linear, self._streamed_embedding, other=self._whole_call
            )
            frame.mode.__enter__()
        return frame

    def _swap_out(self, module: nn.Module, args, output) -> None:
        frames = self._frames.get(id(module))
        if not frames:
            return
        frame = frames.pop()
        if frame.mode is not None:
            frame.mode.__exit__(None, None, None)
        for name, original in frame.slots:
            module._parameters[name] = original
        with self.timed():
            for p, data in frame.saved:
                p.data = data
                self._swapped.discard(id(p))

    def remove(self) -> None:
        """Detach the hooks (the model then runs exactly as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- products at perturbed weights: the provider's, else block by block ---------------------
    def _timed_items(self, items: Iterator) -> Iterator:
        """Yield from ``items``, timing the making of each item as engine time (drawing z,
        building a block), not what the consumer does with it (the matmul)."""
        while True:
            with self.timed():
                item = next(items, None)
            if item is None:
                return
            yield item

    def linear_at(
        self,
        xs: Sequence[torch.Tensor],
        weight: torch.Tensor,
        biases: Sequence[torch.Tensor | None],
        pid: int,
        direction: Direction,
        scales: Sequence[float],
        outs: Sequence[torch.Tensor],
    ) -> None:
        """outs[j] ← F.linear(xs[j], θ + scales[j]·z, biases[j]) for a streamed weight, z drawn
        once: the provider's fused product where it has one, else block by block of rows."""
        w = weight.detach()
        if not self.provider.linear(xs, w, biases, pid, direction, scales, outs):
            blocked_linear(xs, biases, self._timed_items(self.provider.blocks(w, pid, direction, scales)), outs)

    def embedding_at(
        self, ids: Sequence[torch.Tensor], weight: torch.Tensor, pid: int, direction: Direction, scales: Sequence[float]
    ) -> list[torch.Tensor]:
        """[F.embedding(ids[j], θ + scales[j]·z)] for a streamed weight: the provider's gather of
        the looked-up rows where it has one, else from the blocks of rows."""
        w = weight.detach()
        first = self.provider.gather(ids[0], w, pid, direction, scales[0])
        if first is not None:
            rest = [self.provider.gather(i, w, pid, direction, s) for i, s in zip(ids[1:], scales[1:])]
            return [first] + [r for r in rest if r is not None]
        return blocked_embedding(ids, w, self._timed_items(self.provider.blocks(w, pid, direction, scales)))

    def _streamed_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self._is_streamed(weight):  # only the bias is streamed (never in practice)
            return self._whole_call(F.linear, (x, weight, bias), {})
        pid, direction, scale = self._active[id(weight)]
        out = x.new_empty(*x.shape[:-1], weight.shape[0])
        self.linear_at([x], weight, [bias], pid, direction, [scale], [out])
        return out

    def _streamed_embedding(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if not self._is_streamed(weight):
            return self._whole_call(F.embedding, (ids, weight), {})
        pid, direction, scale = self._active[id(weight)]
        return self.embedding_at([ids], weight, pid, direction, [scale])[0]

    def _whole_call(self, func, args, kwargs):
        """``func`` with every streamed weight among its arguments at its whole θ + εz (correct;
        only not memory-lean)."""

        def whole(value):
            if not self._is_streamed(value):
                return value
            pid, direction, scale = self._active[id(value)]
            with self.timed():
                return self.provider.values(value.detach(), pid, direction, [scale])[0]

        return func(*(whole(a) for a in args), **{k: whole(v) for k, v in kwargs.items()})

    # -- forward-mode (dual) evaluation ---------------------------------------------------------
    @contextmanager
    def dual(self, params: ZOParams, direction: Direction):
        """Inside this context the model evaluates L at the dual point (θ, z): read the
        directional derivative ∇L·z as ``fwAD.unpack_dual(loss).tangent`` before leaving it."""
        self._require_owned(params)
        if self._active:
            raise RuntimeError("VirtualEngine.dual: a perturbation is active; restore() first")
        self._dual, self._tied_cache = {id(p): (pid, direction) for pid, p in params}, {}
        try:
            with fwAD.dual_level(), sdpa_kernel([SDPBackend.MATH]):
                yield
        finally:
            self._dual, self._tied_cache = {}, {}

    def _dual_frame(self, module: nn.Module) -> _Frame:
        frame = _Frame()
        for name, p in list(module._parameters.items()):
            entry = self._dual.get(id(p)) if p is not None else None
            if p is None or entry is None:
                continue
            # every owner swaps its own slot (a parameter shared by nested modules lives in
            # several slots); tied parameters share one dual per evaluation, others are made per
            # call so only one module's tangent is alive at a time
            value = self._tied_cache.get(id(p))
            if value is None:
                value = fwAD.make_dual(p.detach(), self.provider.sample(p, entry[0], entry[1]).to(p.dtype))
                if fwAD.unpack_dual(value).tangent is None:
                    raise RuntimeError(
                        "forward-mode AD is disabled here (torch.inference_mode?): "
                        "the closure must run under torch.no_grad, not inference_mode"
                    )
                if id(p) in self._tied:
                    self._tied_cache[id(p)] = value
            frame.slots.append((name, p))
            module._parameters[name] = value  # type: ignore[assignment]  # a dual tensor in the slot
        return frame

    # -- several perturbations in one forward (replicas.py) -------------------------------------
    def replica_support(self, params: ZOParams) -> str | None:
        missing = [pid for pid, p in params if id(p) not in self._owned]
        if missing:
            return f"parameters {missing[:5]} are not owned by any module of the model"
        plan = replica_plan(self.model, params)
        return plan if isinstance(plan, str) else None

    def replicas(self, params: ZOParams, directions: Sequence[Direction], scale: float):
        """Context manager: one forward of the batch repeated ``len(directions)`` times
        (replica-major) evaluates replica i at θ + scale·z_i; the closure returns N losses."""
        return self.batch(params, [(d, scale) for d in directions])

    def mirror_support(self, params: ZOParams) -> str | None:
        return "engine.paired=false" if not self.paired else self.replica_support(params)

    def mirrored(self, params: ZOParams, direction: Direction, scale: float):
        """Context manager: one forward of the batch repeated twice evaluates its first half at
        θ + scale·z and its second at θ - scale·z, z drawn once; the closure returns 2 losses."""
        return self.batch(params, [(direction, scale), (direction, -scale)], "mirrored", _MIRROR_REFUSAL)

    @contextmanager
    def batch(
        self,
        params: ZOParams,
        replicas: Sequence[tuple[Direction, float]],
        what: str = "replicas",
        refusal: str = _REPLICA_REFUSAL,
    ):
        """Context manager: one forward of the batch repeated ``len(replicas)`` times
        (replica-major) evaluates replica i = (direction, scale) at θ + scale·z; replicas that
        share a direction (the same object) share one draw of z. ``what`` / ``refusal``: how
        errors name this evaluation and what they advise."""
        plan = replica_plan(self.model, params)
        if isinstance(plan, str):
            pair = "a mirrored pair" if what == "mirrored" else what
            raise ValueError(f"engine.mode=virtual cannot evaluate {pair}: {plan}")
        if self._active or self._dual or self._evaluation is not None:
            raise RuntimeError(f"VirtualEngine.{what}: another evaluation is active; restore() first")
        label = "replicas" if what == "replicas" else "mirrored evaluation"
        evaluation = ReplicaEvaluation(self, params, list(replicas), label, refusal)
        evaluation.install(plan)
        self._evaluation, self.replica_count = evaluation, len(replicas)
        try:
            yield
        finally:
            evaluation.remove()
            self._evaluation, self.replica_count = None, 1
