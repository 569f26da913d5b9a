"""Torch reference backend: in-place and virtual perturbation modes.

In-place (MeZO semantics): the weights themselves are moved, θ → θ+εz → θ-εz → θ, each move one
sweep over the parameters with z regenerated from its seed. Floating-point addition is not
invertible: fl(fl(θ+εz) - εz) ≠ θ whenever the rounding of θ+εz lost bits of θ (measured: 46% of
elements of a N(0, 0.02²) fp32 weight differ after MeZO's +ε, -2ε, +ε sequence with ε=1e-3, and as
many in bf16/fp16). So in-place mode drifts by a few ulps per step, as the authors' code does.

Virtual (exact): the stored weights are never modified during an estimate. A forward pre-hook on
every module that owns trainable parameters swaps in θ + scale·z (computed with the same
arithmetic as in-place mode) for the duration of that module's forward and puts the original
tensor back afterwards. Restoration is exact in every dtype; the extra memory is one module's
parameters at a time.

Large matrices are streamed instead of swapped: a 2-D weight of ``stream_elements`` elements or
more (the embedding and LM head of a language model: 113 MB of SmolLM2's fp32 weights, 1 GB of
Llama-3-8B's fp16 ones) is never materialised whole as θ + εz. While its module runs, a torch
function mode catches the ``F.linear`` / ``F.embedding`` call on it and computes it one block of
rows at a time from ``_perturbed_blocks`` (the same θ + εz arithmetic, ~4 MB at a time): the
linear map column block by column block of its output, the lookup by gathering the rows its ids
fall in. Any other use of a streamed weight (a module that multiplies it by hand) gets the whole
θ + εz, as before. The lookup is bit-identical to the materialised path; the blocked matmul equals
it to float rounding (BLAS may sum in another order for another shape). A tied weight (embedding =
LM head) is streamed at each use, drawing its z twice per evaluation instead of keeping a
parameter-sized copy alive between the two.

The virtual engine's hooks also serve two other ways of evaluating the model:

* ``dual``: forward-mode AD. The same pre-hook puts ``fwAD.make_dual(θ, z)`` in the module's
  parameter slot instead of θ + εz, so the loss comes out as a dual number whose tangent is the
  directional derivative ∇L(θ)·z (no backward, no stored graph: memory ≈ inference plus one
  tangent per live activation). ``torch.no_grad`` does not disable forward AD;
  ``torch.inference_mode`` does (refused with an error). Attention runs on SDPA's math kernel
  inside ``dual`` (the fused CPU/CUDA kernels have no forward-AD formula).
* ``replicas``: N perturbations in ONE forward. The caller repeats its batch N times
  (replica-major: rows [iB, (i+1)B) are replica i) and every parametrised module computes replica
  i with θ + εz_i: ``nn.Linear`` and ``nn.Embedding`` (subclasses too: OPT's learned positions,
  Gemma's scaled embedding) have their ``F.linear`` / ``F.embedding`` call split by replica, each
  slice computed at its own fl(θ + εz_i) (streamed for large weights), any other module that
  owns parameters and has no parametrised submodule by calling it once per replica on its slice
  with θ + εz_i swapped in (``torch.func.functional_call``; norms are cheap).
  Modules that own parameters AND have parametrised submodules are not supported
  (``replica_support`` says so; callers fall back to sequential evaluation). Assumption: every
  parametrised module sees the batch as the leading dimension of its input (true of Hugging Face
  models; a sequence-first module would mix replicas). The result equals N sequential
  evaluations up to rounding (the rest of the model runs on a batch of N·B rows), not bit for bit.
* ``mirrored``: SPSA's pair L(θ + εz), L(θ - εz) in ONE forward of the batch repeated twice
  (rows [0, B) at +ε, [B, 2B) at -ε), each parameter's z drawn once for both halves: a MeZO
  step then draws z twice (the pair, the update) instead of three times. Linear and embedding
  layers (subclasses too: OPT's learned positions, Gemma's scaled embedding) have their
  ``F.linear`` / ``F.embedding`` call split by a torch function mode, each half computed with its
  own materialised (or streamed) fl(θ ± εz), the very values sequential evaluation swaps in;
  other modules that own parameters run once per half with θ ± εz swapped in, as for replicas.
  Same losses as the two sequential evaluations up to rounding (the rest of the model runs on a
  batch of 2B rows); the activations are those of a 2B batch. ``paired=False`` turns it off.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from . import directions as _directions
from . import launch
from .base import Engine, ZOParams
from .directions import Direction, add_z_, z_pieces

#: virtual mode streams 2-D weights of at least this many elements (see the module docstring):
#: 16 MB in float32, so a language model's embedding and LM head, and the layers of large models
STREAM_ELEMENTS = 1 << 22


def perturbed_value(p: torch.Tensor, pid: int, direction: Direction, scale: float) -> torch.Tensor:
    """θ + scale·z in θ's dtype: the one formula both modes use, so they agree bit for bit."""
    if not p.is_contiguous():
        out = p.clone(memory_format=torch.contiguous_format)
        add_z_(out, pid, direction, scale)
        return out
    # one pass per piece (read θ and z, write out) instead of a copy and then an in-place add:
    # torch.add(θ, z, alpha) is the kernel of θ.add_(z, alpha), so the bits are in-place mode's
    out = torch.empty_like(p)
    flat, out_flat = p.view(-1), out.view(-1)
    for start, stop, z in direction.chunks(pid, p):
        torch.add(flat[start:stop], z.to(p.dtype), alpha=scale, out=out_flat[start:stop])
    return out


def row_block(cols: int, multiple: int = 16, target: int | None = None) -> int:
    """Rows per streamed block: about ``target`` elements (default Z_CHUNK), rows·cols a multiple
    of ``multiple`` (16 for torch's CPU generator, see ``Direction.chunks``; the kernels' block
    for Triton)."""
    return launch.row_block(cols, multiple, _directions.Z_CHUNK if target is None else target)


class _StreamedWeights(TorchFunctionMode):
    """Active while a module that owns a streamed weight runs: its ``F.linear`` / ``F.embedding``
    call on that weight is computed block by block from the engine's perturbed blocks."""

    def __init__(self, engine: VirtualEngine) -> None:
        super().__init__()
        self.engine = engine

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        engine = self.engine
        if func is F.linear and len(args) > 1 and engine._is_streamed(args[1]):
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            return engine._streamed_linear(args[0], args[1], bias)
        if (
            func is F.embedding and len(args) > 1 and engine._is_streamed(args[1]) and kwargs.get("max_norm") is None
        ):  # max_norm renormalises rows in place: fall back
            return engine._streamed_embedding(args[0], args[1])
        if getattr(func, "__name__", "") == "__get__":  # .shape, .dtype, ... of the weight
            return func(*args, **kwargs)
        # any other use sees the whole θ + εz (correct; only not memory-lean)
        swap = lambda a: engine._whole_value(a) if engine._is_streamed(a) else a  # noqa: E731
        args = tuple(swap(a) for a in args)
        kwargs = {k: swap(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


class _SplitWeights(TorchFunctionMode):
    """Active while a linear / embedding layer runs inside ``VirtualEngine.mirrored`` (the batch's
    two halves at θ + εz and θ - εz) or ``VirtualEngine.replicas`` (its N replicas at θ + εz_i):
    an ``F.linear`` / ``F.embedding`` call on a parameter being evaluated (``touches``) goes to
    ``linear`` / ``embedding``, which compute each part of the batch at its own weights (its own
    product only: no shared product plus a perturbation product)."""

    def __init__(self, module: nn.Module, touches, linear, embedding, refusal: str) -> None:
        super().__init__()
        self.module, self.touches, self.linear, self.embedding, self.refusal = (
            module,
            touches,
            linear,
            embedding,
            refusal,
        )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        touched = any(self.touches(a) for a in args) or any(self.touches(v) for v in kwargs.values())
        if not touched or getattr(func, "__name__", "") == "__get__":
            return func(*args, **kwargs)
        if func is F.linear:
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            return self.linear(args[0], args[1], bias)
        if func is F.embedding and kwargs.get("max_norm") is None and not self.touches(args[0]):
            return self.embedding(args[0], args[1])
        raise RuntimeError(
            f"{type(self.module).__name__} uses its parameter in "
            f"{getattr(func, '__name__', func)}, which {self.refusal}"
        )


def _hook_mode(module: nn.Module, make_mode) -> list:
    """Hooks that keep ``make_mode(module)`` active while ``module`` runs (re-entrant)."""
    modes = []

    def enter(module, args):
        mode = make_mode(module)
        mode.__enter__()
        modes.append(mode)

    def leave(module, args, output):
        modes.pop().__exit__(None, None, None)
        return None

    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave, always_call=True)]


class InPlaceEngine(Engine):
    """MeZO's in-place perturbation; usable without a model (any list of tensors)."""

    exact_restore = False

    def __init__(self) -> None:
        self._applied: dict[int, tuple[torch.Tensor, Direction, float]] = {}

    @torch.no_grad()
    def perturb(self, params: ZOParams, direction: Direction, scale: float) -> None:
        with self._timed():
            self._perturb(params, direction, scale)

    def _perturb(self, params: ZOParams, direction: Direction, scale: float) -> None:
        for pid, p in params:
            current = self._applied.get(pid)
            if current is not None and current[1] is not direction:
                self._move(pid, p, current[1], -current[2])
                current = None
            delta = scale - (current[2] if current is not None else 0.0)
            # +ε then -ε costs one sweep of -2ε, as in MeZO (3 sweeps per estimate, not 4)
            self._move(pid, p, direction, delta)
            self._applied[pid] = (p, direction, scale)

    @torch.no_grad()
    def restore(self, params: ZOParams) -> None:
        with self._timed():
            for pid, _ in params:
                current = self._applied.pop(pid, None)
                if current is not None:
                    p, direction, scale = current
                    self._move(pid, p, direction, -scale)

    def _take_undo(self, pid: int, p: torch.Tensor, direction: Direction) -> float:
        """Forget parameter ``pid``'s applied perturbation and return the scale that removes it
        within a fused sweep along ``direction`` (a perturbation along another z is removed
        here, by its own sweep: it cannot be fused)."""
        current = self._applied.pop(pid, None)
        if current is not None and current[1] is not direction:
            self._move(pid, p, current[1], -current[2])
            current = None
        return -current[2] if current is not None else 0.0

    @torch.no_grad()
    def restore_and_update(self, params: ZOParams, direction: Direction, coeff: float, decay: float = 0.0) -> None:
        """One sweep, one z per parameter: the same operations in the same order as
        ``restore`` then ``update``, so the result is bit-identical to the unfused pair."""
        with self._timed():
            for pid, p in params:
                undo = self._take_undo(pid, p, direction)
                if undo == 0.0 and decay == 0.0 and coeff == 0.0:
                    continue
                for target, z in z_pieces(p, pid, direction):  # elementwise: piece by piece is bit-identical
                    if undo != 0.0:
                        target.add_(z, alpha=undo)
                    if decay != 0.0:
                        target.mul_(1.0 - decay)
                    if coeff != 0.0:
                        target.add_(z, alpha=coeff)

    @staticmethod
    def _move(pid: int, p: torch.Tensor, direction: Direction, delta: float) -> None:
        if delta != 0.0:
            add_z_(p, pid, direction, delta)


class VirtualEngine(Engine):
    """Exact perturbation: weights are swapped for θ + scale·z only inside their module's forward."""

    exact_restore = True

    def __init__(self, model: nn.Module, stream_elements: int | None = STREAM_ELEMENTS, paired: bool = True) -> None:
        # parameters are tracked by id(): holding the model keeps them alive, so an id can never
        # be reused by another tensor while this engine exists
        self.model = model
        #: whether ``mirrored`` (SPSA's ± pair in one batched forward) is offered to optimizers
        self.paired = bool(paired)
        self._mirror: dict[int, tuple[int, Direction, float]] = {}
        #: 2-D weights of at least this many elements are streamed, never materialised (None: off)
        self.stream_elements = stream_elements
        self._streamed: set[int] = set()
        self._stream_modes: dict[int, list[_StreamedWeights | None]] = {}
        self._active: dict[int, tuple[int, Direction, float]] = {}
        self._owned: set[int] = set()
        self._handles = []
        owners: dict[int, int] = {}
        for module in model.modules():
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            for p in own:
                owners[id(p)] = owners.get(id(p), 0) + 1
            self._owned.update(id(p) for p in own)
            self._handles.append(module.register_forward_pre_hook(self._swap_in))
            self._handles.append(module.register_forward_hook(self._swap_out, always_call=True))
        self._saved: dict[int, list[tuple[nn.Parameter, torch.Tensor]]] = {}
        # tied parameters (embedding = LM head) are used by several modules in one forward: their
        # perturbed value is computed once per evaluation and reused (the same z, the same bits)
        self._tied = {pid for pid, count in owners.items() if count > 1}
        self._tied_cache: dict[int, torch.Tensor] = {}
        # parameters currently swapped in: a parameter owned by nested modules (RoBERTa's
        # lm_head.bias is lm_head.decoder.bias) must be perturbed once, by the outermost one
        self._swapped: set[int] = set()
        # forward-mode evaluation: id(p) -> (pid, direction); parameter slots replaced per module
        self._dual: dict[int, tuple[int, Direction]] = {}
        self._dual_saved: dict[int, list[list[tuple[str, nn.Parameter]]]] = {}
        # replica evaluation: the hooks of the current ``replicas`` context, and a guard against
        # re-entering them while a module is re-run per replica
        self._replica_handles = []
        self._replaying = False
        self._replica: dict[int, tuple[int, Sequence[Direction], float]] = {}  # id(p) -> (pid, z_i's, ε)

    def perturb(self, params: ZOParams, direction: Direction, scale: float) -> None:
        missing = [pid for pid, p in params if id(p) not in self._owned]
        if missing:
            raise ValueError(
                f"engine.mode=virtual: parameters {missing[:5]} are not owned by any module of the "
                "model the engine was built for; use engine.mode=inplace or build the engine on that model"
            )
        self._active = {id(p): (pid, direction, scale) for pid, p in params}
        self._streamed = {id(p) for _, p in params if self._streams(p)}
        self._tied_cache = {}

    def restore(self, params: ZOParams) -> None:
        self._active = {}
        self._streamed = set()
        self._tied_cache = {}

    def _streams(self, p: torch.Tensor) -> bool:
        return (
            self.stream_elements is not None
            and p.dim() == 2
            and p.is_contiguous()
            and p.numel() >= self.stream_elements
        )

    def _is_streamed(self, value) -> bool:
        return isinstance(value, torch.Tensor) and id(value) in self._streamed and id(value) in self._active

    @torch.no_grad()
    def _swap_in(self, module: nn.Module, args) -> None:
        if self._dual:
            with self._timed():
                self._swap_in_dual(module)
            return
        if not self._active:
            return
        with self._timed():
            self._swap_in_timed(module)

    def _swap_in_timed(self, module: nn.Module) -> None:
        saved = []
        streams = False
        for p in module.parameters(recurse=False):
            entry = self._active.get(id(p))
            if entry is not None and id(p) in self._streamed:
                streams = True
            elif entry is not None and id(p) not in self._swapped:
                pid, direction, scale = entry
                saved.append((p, p.data))
                self._swapped.add(id(p))
                if id(p) in self._tied:
                    if id(p) not in self._tied_cache:
                        self._tied_cache[id(p)] = self._perturbed_value(p.data, pid, direction, scale)
                    p.data = self._tied_cache[id(p)]
                else:
                    p.data = self._perturbed_value(p.data, pid, direction, scale)
        if saved:
            self._saved.setdefault(id(module), []).append(saved)
        mode = None
        if streams:
            mode = _StreamedWeights(self)
            mode.__enter__()
        self._stream_modes.setdefault(id(module), []).append(mode)

    def _perturbed_blocks(self, p: torch.Tensor, pid: int, direction: Direction, scale: float):
        """``(first row, stop row, θ[rows] + scale·z[rows])`` for consecutive blocks of rows of a
        2-D ``p``, in order: the rows of ``_perturbed_value`` bit for bit, ~Z_CHUNK elements at a
        time (one block, the whole matrix, for a direction whose z is drawn whole)."""
        cols = p.shape[1]
        flat = p.view(-1)
        # blocks of a multiple of 64 elements: torch's elementwise kernels round their scalar
        # tail (bf16) differently from their vector loop, so this keeps every element's path
        for start, stop, z in direction.chunks(pid, p, size=row_block(cols, 64) * cols):
            block = torch.add(flat[start:stop], z.to(p.dtype), alpha=scale)
            yield start // cols, stop // cols, block.view(-1, cols)

    def _timed_items(self, items):
        """Yield from the generator ``items``, timing the making of each item as engine time
        (drawing z, building a block), not what the consumer does with it (the matmul)."""
        while True:
            with self._timed():
                item = next(items, None)
            if item is None:
                return
            yield item

    def _blocks_timed(self, weight: torch.Tensor):
        """The perturbed blocks of a streamed weight (engine time: see ``_timed_items``)."""
        return self._timed_items(self._perturbed_blocks(weight.detach(), *self._active[id(weight)]))

    @staticmethod
    def _check_ids(flat_ids: torch.Tensor, rows: int) -> None:
        """F.embedding's index check, for the lookups computed block by block."""
        if flat_ids.numel() and (int(flat_ids.min()) < 0 or int(flat_ids.max()) >= rows):
            raise IndexError(
                f"index out of range in self: ids in [{int(flat_ids.min())}, {int(flat_ids.max())}], "
                f"embedding of {rows} rows"
            )

    def _streamed_linear(self, x: torch.Tensor, weight: torch.Tensor, bias, blocks=None, out=None) -> torch.Tensor:
        """F.linear(x, θ + εz, bias), one column block of the output at a time (``blocks``: the
        perturbed blocks, default the active perturbation's; ``out``: where to write)."""
        out = x.new_empty(*x.shape[:-1], weight.shape[0]) if out is None else out
        for first, stop, block in self._blocks_timed(weight) if blocks is None else blocks:
            out[..., first:stop] = F.linear(x, block, None if bias is None else bias[first:stop])
        return out

    def _streamed_embedding(self, ids: torch.Tensor, weight: torch.Tensor, blocks=None) -> torch.Tensor:
        """F.embedding(ids, θ + εz): each row gathered from the block it falls in."""
        flat = ids.reshape(-1)
        self._check_ids(flat, weight.shape[0])
        out = weight.new_empty(flat.shape[0], weight.shape[1])
        for first, stop, block in self._blocks_timed(weight) if blocks is None else blocks:
            hit = ((flat >= first) & (flat < stop)).nonzero().squeeze(1)
            if hit.numel():
                out[hit] = block[flat[hit] - first]
        return out.view(*ids.shape, weight.shape[1])

    def _whole_value(self, weight: torch.Tensor) -> torch.Tensor:
        pid, direction, scale = self._active[id(weight)]
        with self._timed():
            return self._perturbed_value(weight.detach(), pid, direction, scale)

    def _perturbed_value(self, p: torch.Tensor, pid: int, direction: Direction, scale: float) -> torch.Tensor:
        """The tensor swapped in for θ (other backends compute it with their own kernel)."""
        return perturbed_value(p, pid, direction, scale)

    def _sample(self, direction: Direction, pid: int, p: torch.Tensor) -> torch.Tensor:
        """z for the dual and replica paths: this backend's z (others override it), so that what a
        batched or forward-mode evaluation measures is along the z the update then moves along."""
        return direction.sample(pid, p)

    def _swap_out(self, module: nn.Module, args, output) -> None:
        modes = self._stream_modes.get(id(module))
        if modes:
            mode = modes.pop()
            if mode is not None:
                mode.__exit__(None, None, None)
        slots = self._dual_saved.get(id(module))
        if slots:
            for name, original in slots.pop():
                module._parameters[name] = original
        stack = self._saved.get(id(module))
        if stack:
            with self._timed():
                for p, original in stack.pop():
                    p.data = original
                    self._swapped.discard(id(p))

    def remove(self) -> None:
        """Detach the hooks (the model then runs exactly as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- forward-mode (dual) evaluation -------------------------------------------------------
    supports_dual = True

    def _require_owned(self, params: ZOParams) -> None:
        missing = [pid for pid, p in params if id(p) not in self._owned]
        if missing:
            raise ValueError(
                f"engine.mode=virtual: parameters {missing[:5]} are not owned by any module of the "
                "model the engine was built for; build the engine on that model"
            )

    @contextmanager
    def dual(self, params: ZOParams, direction: Direction):
        """Inside this context the model evaluates L at the dual point (θ, z): read the
        directional derivative ∇L·z as ``fwAD.unpack_dual(loss).tangent`` before leaving it."""
        self._require_owned(params)
        if self._active:
            raise RuntimeError("VirtualEngine.dual: a perturbation is active; restore() first")
        self._dual = {id(p): (pid, direction) for pid, p in params}
        self._tied_cache = {}
        try:
            with fwAD.dual_level(), sdpa_kernel([SDPBackend.MATH]):
                yield
        finally:
            self._dual = {}
            self._tied_cache = {}

    def _swap_in_dual(self, module: nn.Module) -> None:
        saved = []
        for name, p in list(module._parameters.items()):
            entry = self._dual.get(id(p)) if p is not None else None
            if entry is None:
                continue
            # every owner swaps its own slot (a parameter shared by nested modules lives in
            # several slots); tied parameters share one dual per evaluation, others are made per
            # call so only one module's tangent is alive at a time
            value = self._tied_cache.get(id(p))
            if value is None:
                pid, direction = entry
                value = fwAD.make_dual(p.detach(), self._sample(direction, pid, p).to(p.dtype))
                if fwAD.unpack_dual(value).tangent is None:
                    raise RuntimeError(
                        "forward-mode AD is disabled here (torch.inference_mode?): "
                        "the closure must run under torch.no_grad, not inference_mode"
                    )
                if id(p) in self._tied:
                    self._tied_cache[id(p)] = value
            saved.append((name, p))
            module._parameters[name] = value
        if saved:
            self._dual_saved.setdefault(id(module), []).append(saved)

    # -- batched replica evaluation -----------------------------------------------------------
    def _replica_plan(self, params: ZOParams):
        """[(module, kind, [(name, parameter, pid)])] for every module that must perturb some of
        ``params``, or a string saying why a module cannot be evaluated per replica."""
        wanted = {id(p): pid for pid, p in params}
        plan = []
        for qualname, module in self.model.named_modules():
            own = [(n, p) for n, p in module._parameters.items() if p is not None and id(p) in wanted]
            if not own:
                continue
            if type(module) is nn.Linear:
                kind = "linear"
            elif isinstance(module, nn.Embedding) and module.max_norm is None:  # subclasses too (OPT's positions)
                kind = "embedding"
            else:
                below = {id(q) for child in module.children() for q in child.parameters()}
                # a parameter also owned by a submodule is perturbed there (RoBERTa's
                # lm_head.bias is lm_head.decoder.bias)
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

    def replica_support(self, params: ZOParams) -> str | None:
        missing = [pid for pid, p in params if id(p) not in self._owned]
        if missing:
            return f"parameters {missing[:5]} are not owned by any module of the model"
        plan = self._replica_plan(params)
        return plan if isinstance(plan, str) else None

    @contextmanager
    def replicas(self, params: ZOParams, directions: Sequence[Direction], scale: float):
        """Inside this context one forward of the batch repeated ``len(directions)`` times
        (replica-major) evaluates replica i at θ + scale·z_i; the closure returns N losses."""
        plan = self._replica_plan(params)
        if isinstance(plan, str):
            raise ValueError(f"engine.mode=virtual cannot evaluate replicas: {plan}")
        if self._active or self._dual:
            raise RuntimeError("VirtualEngine.replicas: another evaluation is active; restore() first")
        directions = list(directions)
        self._replica = {id(p): (pid, directions, scale) for pid, p in params}
        for module, kind, entries in plan:
            if kind in ("linear", "embedding"):  # split by replica inside F.linear / F.embedding
                self._replica_handles += _hook_mode(
                    module,
                    lambda m: _SplitWeights(
                        m,
                        self._is_replicated,
                        self._replica_split_linear,
                        self._replica_split_embedding,
                        "cannot be split by replica in a batched evaluation; evaluate one direction per "
                        "call (FZOO: optimizer.batched=false)",
                    ),
                )
                continue

            def hook(module, args, kwargs, output, _entries=entries):  # re-run per replica
                if self._replaying:
                    return None
                with torch.no_grad(), self._timed():
                    return self._replica_generic(module, args, kwargs, output, _entries, directions, scale)

            self._replica_handles.append(module.register_forward_hook(hook, with_kwargs=True))
        self.replica_count = len(directions)
        try:
            yield
        finally:
            for handle in self._replica_handles:
                handle.remove()
            self._replica_handles = []
            self._replica = {}
            self.replica_count = 1

    @staticmethod
    def _split(module: nn.Module, rows: int, n: int) -> None:
        if rows % n:
            raise ValueError(
                f"replicas: {type(module).__name__} got {rows} rows, not a multiple of the "
                f"{n} replicas; the closure must repeat its batch {n} times (replica-major)"
            )

    def _is_replicated(self, value) -> bool:
        return isinstance(value, torch.Tensor) and id(value) in self._replica

    def _replica_rows(self, x: torch.Tensor) -> int:
        n = len(next(iter(self._replica.values()))[1])
        if x.shape[0] % n:
            raise ValueError(
                f"replicas: a layer got {x.shape[0]} rows, not a multiple of the {n} replicas; "
                f"the closure must repeat its batch {n} times (replica-major)"
            )
        return n

    def _replica_value(self, value, i: int):
        """``value`` at θ + ε·z_i for a replica parameter, ``value`` itself for anything else."""
        if not self._is_replicated(value):
            return value
        pid, directions, scale = self._replica[id(value)]
        with self._timed():
            return self._perturbed_value(value.detach(), pid, directions[i], scale)

    def _replica_blocks(self, weight: torch.Tensor, i: int):
        pid, directions, scale = self._replica[id(weight)]
        return self._timed_items(self._perturbed_blocks(weight.detach(), pid, directions[i], scale))

    def _replica_split_linear(self, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
        n = self._replica_rows(x)
        out = x.new_empty(*x.shape[:-1], weight.shape[0])
        for i, (xi, oi) in enumerate(zip(x.chunk(n), out.chunk(n))):
            b = None if bias is None else self._replica_value(bias, i)
            if self._is_replicated(weight) and self._streams(weight):  # block by block of rows: no whole Z_i
                self._streamed_linear(xi, weight, b, self._replica_blocks(weight, i), out=oi)
            else:
                oi.copy_(F.linear(xi, self._replica_value(weight, i), b))
        return out

    def _replica_split_embedding(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n = self._replica_rows(ids)
        parts = []
        for i, ids_i in enumerate(ids.chunk(n)):
            if self._streams(weight):  # gathered from the perturbed blocks: no whole Z_i
                parts.append(self._streamed_embedding(ids_i, weight, self._replica_blocks(weight, i)))
            else:
                parts.append(F.embedding(ids_i, self._replica_value(weight, i)))
        return torch.cat(parts)

    def _replica_generic(self, module, args, kwargs, output, entries, directions, scale):
        if not isinstance(output, torch.Tensor) or output.ndim == 0:
            raise TypeError(
                f"replicas: {type(module).__name__} returns {type(output).__name__}, "
                "only modules returning one batch-shaped tensor can be evaluated per replica"
            )
        n, rows = len(directions), output.shape[0]
        self._split(module, rows, n)

        def piece(value, i):  # replica i's rows of every batch-shaped input, the rest unchanged
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows:
                return value.chunk(n)[i]
            return value

        outputs = []
        self._replaying = True
        try:
            for i, direction in enumerate(directions):
                swapped = {name: self._perturbed_value(p, pid, direction, scale) for name, p, pid in entries}
                outputs.append(
                    torch.func.functional_call(
                        module, swapped, tuple(piece(a, i) for a in args), {k: piece(v, i) for k, v in kwargs.items()}
                    )
                )
        finally:
            self._replaying = False
        return torch.cat(outputs)

    # -- mirrored (±) evaluation --------------------------------------------------------------
    def mirror_support(self, params: ZOParams) -> str | None:
        if not self.paired:
            return "engine.paired=false"
        return self.replica_support(params)

    @contextmanager
    def mirrored(self, params: ZOParams, direction: Direction, scale: float):
        """Inside this context one forward of the batch repeated twice evaluates its first half at
        θ + scale·z and its second at θ - scale·z; the closure returns the 2 losses."""
        plan = self._replica_plan(params)
        if isinstance(plan, str):
            raise ValueError(f"engine.mode=virtual cannot evaluate a mirrored pair: {plan}")
        if self._active or self._dual:
            raise RuntimeError("VirtualEngine.mirrored: another evaluation is active; restore() first")
        self._mirror = {id(p): (pid, direction, scale) for pid, p in params}
        self._tied_cache = {}
        handles = []
        for module, _kind, entries in plan:
            if type(module) is nn.Linear or (isinstance(module, nn.Embedding) and module.max_norm is None):
                handles += _hook_mode(
                    module,
                    lambda m: _SplitWeights(
                        m,
                        self._is_mirrored,
                        self._mirrored_linear,
                        self._mirrored_embedding,
                        "cannot be split by halves in a mirrored evaluation; set engine.paired=false",
                    ),
                )
            else:

                def rerun(module, args, kwargs, output, _entries=entries):
                    if self._replaying:
                        return None
                    return self._mirrored_generic(module, args, kwargs, output, _entries)

                handles.append(module.register_forward_hook(rerun, with_kwargs=True))
        self.replica_count = 2
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._mirror = {}
            self._tied_cache = {}
            self.replica_count = 1

    def _is_mirrored(self, value) -> bool:
        return isinstance(value, torch.Tensor) and id(value) in self._mirror

    def _perturbed_pair(self, p: torch.Tensor, pid: int, direction: Direction, scale: float):
        """(θ + scale·z, θ - scale·z) from one draw of z: the bits of ``_perturbed_value`` at
        ±scale (the same torch.add per piece)."""
        if not p.is_contiguous():
            return self._perturbed_value(p, pid, direction, scale), self._perturbed_value(p, pid, direction, -scale)
        plus, minus = torch.empty_like(p), torch.empty_like(p)
        flat = p.view(-1)
        for start, stop, z in direction.chunks(pid, p):
            z = z.to(p.dtype)
            torch.add(flat[start:stop], z, alpha=scale, out=plus.view(-1)[start:stop])
            torch.add(flat[start:stop], z, alpha=-scale, out=minus.view(-1)[start:stop])
        return plus, minus

    def _perturbed_pair_blocks(self, p: torch.Tensor, pid: int, direction: Direction, scale: float):
        """``(first row, stop row, θ[rows] + scale·z[rows], θ[rows] - scale·z[rows])`` block by
        block (see ``_perturbed_blocks``), one z per block for both."""
        cols = p.shape[1]
        flat = p.view(-1)
        for start, stop, z in direction.chunks(pid, p, size=row_block(cols, 64) * cols):
            z = z.to(p.dtype)
            yield (
                start // cols,
                stop // cols,
                torch.add(flat[start:stop], z, alpha=scale).view(-1, cols),
                torch.add(flat[start:stop], z, alpha=-scale).view(-1, cols),
            )

    def _pair(self, value):
        """(value at +ε, value at -ε) for a mirrored parameter, (value, value) for anything else."""
        if not self._is_mirrored(value):
            return value, value
        if id(value) in self._tied_cache:  # a tied weight's second use: the same pair
            return self._tied_cache[id(value)]
        pid, direction, scale = self._mirror[id(value)]
        with self._timed():
            pair = self._perturbed_pair(value.detach(), pid, direction, scale)
        if id(value) in self._tied:
            self._tied_cache[id(value)] = pair
        return pair

    def _pair_blocks_timed(self, weight: torch.Tensor):
        return self._timed_items(self._perturbed_pair_blocks(weight.detach(), *self._mirror[id(weight)]))

    @staticmethod
    def _halves(x: torch.Tensor) -> int:
        if x.shape[0] % 2:
            raise ValueError(
                f"mirrored evaluation: a layer got {x.shape[0]} rows, not the batch repeated "
                "twice; the closure must be called with replicas=2"
            )
        return x.shape[0] // 2

    def _mirrored_linear(self, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
        n = self._halves(x)
        halves = (x[:n], x[n:])
        biases = self._pair(bias) if bias is not None else (None, None)
        if self._is_mirrored(weight) and self._streams(weight):
            out = x.new_empty(*x.shape[:-1], weight.shape[0])
            outs = (out[:n], out[n:])
            for first, stop, *blocks in self._pair_blocks_timed(weight):
                for xi, oi, w, b in zip(halves, outs, blocks, biases):
                    oi[..., first:stop] = F.linear(xi, w, None if b is None else b[first:stop])
            return out
        weights = self._pair(weight)
        return torch.cat([F.linear(xi, w, b) for xi, w, b in zip(halves, weights, biases)])

    def _mirrored_embedding(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n = self._halves(ids)
        if not self._is_mirrored(weight):
            return F.embedding(ids, weight)
        if not self._streams(weight):
            plus, minus = self._pair(weight)
            return torch.cat([F.embedding(ids[:n], plus), F.embedding(ids[n:], minus)])
        flat = ids.reshape(-1)
        self._check_ids(flat, weight.shape[0])
        half = flat.numel() // 2
        out = weight.new_empty(flat.shape[0], weight.shape[1])
        for first, stop, plus, minus in self._pair_blocks_timed(weight):
            for offset, block in ((0, plus), (half, minus)):
                part = flat[offset : offset + half]
                hit = ((part >= first) & (part < stop)).nonzero().squeeze(1)
                if hit.numel():
                    out[offset + hit] = block[part[hit] - first]
        return out.view(*ids.shape, weight.shape[1])

    def _mirrored_generic(self, module, args, kwargs, output, entries):
        if not isinstance(output, torch.Tensor) or output.ndim == 0:
            raise TypeError(
                f"mirrored evaluation: {type(module).__name__} returns {type(output).__name__}, "
                "only modules returning one batch-shaped tensor can be split by halves"
            )
        rows = output.shape[0]
        n = self._halves(output)
        pairs = {name: self._pair(p) for name, p, _ in entries}

        def piece(value, i):
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows:
                return value[i * n : (i + 1) * n]
            return value

        outputs = []
        self._replaying = True
        try:
            for i in range(2):
                outputs.append(
                    torch.func.functional_call(
                        module,
                        {name: pair[i] for name, pair in pairs.items()},
                        tuple(piece(a, i) for a in args),
                        {k: piece(v, i) for k, v in kwargs.items()},
                    )
                )
        finally:
            self._replaying = False
        return torch.cat(outputs)
