"""Linear maps and lookups computed block by block of a weight's rows, and the torch function
modes that route a module's ``F.linear`` / ``F.embedding`` calls to them.

A streamed weight (``virtual.py``: 2-D and large, the embedding and LM head of a language model)
is never materialised whole as θ + s·z: its products are computed from the provider's blocks
(``Provider.blocks``: consecutive rows of θ + s·z for each scale that shares one z), the linear
map column block by column block of its output, the lookup by gathering the rows its ids fall
in. The lookup is bit-identical to the materialised one; the blocked matmul equals it to float
rounding (BLAS may sum in another order for another shape).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .provider import Block


def check_ids(flat_ids: torch.Tensor, rows: int) -> None:
    """F.embedding's index check, for the lookups computed block by block."""
    if flat_ids.numel() and (int(flat_ids.min()) < 0 or int(flat_ids.max()) >= rows):
        raise IndexError(
            f"index out of range in self: ids in [{int(flat_ids.min())}, {int(flat_ids.max())}], "
            f"embedding of {rows} rows"
        )


def blocked_linear(
    xs: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    blocks: Iterable[Block],
    outs: Sequence[torch.Tensor],
) -> None:
    """outs[j] ← F.linear(xs[j], W_j, biases[j]), W_j's rows coming block by block (``blocks``:
    the j-th perturbed block of each is W_j's), one column block of each output at a time."""
    for first, stop, values in blocks:
        for x, bias, block, out in zip(xs, biases, values, outs):
            out[..., first:stop] = F.linear(x, block, None if bias is None else bias[first:stop])


def blocked_embedding(ids: Sequence[torch.Tensor], weight: torch.Tensor, blocks: Iterable[Block]) -> list[torch.Tensor]:
    """[F.embedding(ids[j], W_j)], each row gathered from the block of W_j it falls in."""
    rows, cols = weight.shape
    flats = [i.reshape(-1) for i in ids]
    for flat in flats:
        check_ids(flat, rows)
    outs = [weight.new_empty(flat.shape[0], cols) for flat in flats]
    for first, stop, values in blocks:
        for flat, out, block in zip(flats, outs, values):
            hit = ((flat >= first) & (flat < stop)).nonzero().squeeze(1)
            if hit.numel():
                out[hit] = block[flat[hit] - first]
    return [out.view(*i.shape, cols) for out, i in zip(outs, ids)]


class RoutedCalls(TorchFunctionMode):
    """Active while a module runs: an ``F.linear`` / ``F.embedding`` call on a parameter being
    evaluated (``touches``) goes to ``linear(x, weight, bias)`` / ``embedding(ids, weight)``;
    the module's other uses of such a parameter get ``other(func, args, kwargs)`` (default: a
    refusal naming ``refusal``). Reading attributes (``.shape``, ``.dtype``) always passes."""

    def __init__(
        self,
        module: nn.Module,
        touches: Callable[[Any], bool],
        linear: Callable[..., torch.Tensor],
        embedding: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        refusal: str = "",
        other: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.module, self.touches, self.linear, self.embedding = module, touches, linear, embedding
        self.refusal, self.other = refusal, other

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        touched = any(self.touches(a) for a in args) or any(self.touches(v) for v in kwargs.values())
        if not touched or getattr(func, "__name__", "") == "__get__":
            return func(*args, **kwargs)
        if func is F.linear:
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            return self.linear(args[0], args[1], bias)
        # max_norm renormalises rows in place: not a lookup of perturbed rows
        if func is F.embedding and len(args) > 1 and kwargs.get("max_norm") is None and not self.touches(args[0]):
            return self.embedding(args[0], args[1])
        if self.other is not None:
            return self.other(func, args, kwargs)
        raise RuntimeError(
            f"{type(self.module).__name__} uses its parameter in "
            f"{getattr(func, '__name__', func)}, which {self.refusal}"
        )


def hook_mode(module: nn.Module, make_mode: Callable[[nn.Module], TorchFunctionMode]) -> list:
    """Hooks that keep ``make_mode(module)`` active while ``module`` runs (re-entrant)."""
    modes: list[TorchFunctionMode] = []

    def enter(module, args):
        mode = make_mode(module)
        mode.__enter__()
        modes.append(mode)

    def leave(module, args, output):
        modes.pop().__exit__(None, None, None)
        return None

    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave, always_call=True)]
