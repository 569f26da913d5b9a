"""``offload=none``'s random initialisation, drawn block by block (never the whole model in memory).

``offload=none`` builds a ``*-random`` model with ``torch.manual_seed(init_seed)`` and
``auto.from_config`` (``models/loading.py::_random_model``): the module constructors draw first
(``nn.Linear.reset_parameters``' Kaiming-uniform, ``nn.Embedding``'s normal), then
``post_init`` redraws every weight with the model's ``_init_weights`` (N(0, initializer_range),
norms filled with 1, biases zeroed), module by module. One RNG stream, so the values of block k
depend on everything drawn before it. To reproduce them without the model in memory:

1. **Record** the initialisation of a one-block copy of the config (the shell, built for real)
   under a ``TorchDispatchMode``: every aten op that draws from the RNG or writes a tensor in
   place, with the storage it writes (a parameter of the block, a resident parameter, or
   something else: a temporary, a buffer, a weight replaced when tied).
2. **Expand** the one-block trace to ``num_hidden_layers`` blocks: each stretch of the block's
   ops (its construction, its ``_init_weights``) is repeated once per block, in order, as the
   n-block constructor and ``post_init`` run them.
3. **Replay** it from the same seed, on the same device as ``offload=none`` draws: an op whose
   result a later op overwrites whole (the constructor's draw, redrawn by ``_init_weights``) or
   that writes no parameter runs on a scratch tensor of the same geometry (it only advances the
   RNG by the same amount); the others write the real parameters. A block is allocated at its
   first real op and written to the store and released after its last, so memory holds the
   resident layers, the shell, one block and one scratch tensor.

The weights equal ``offload=none``'s bit for bit (tests/offload/test_random_init.py: llama, opt,
phi, gemma3, roberta). An architecture whose block parameter is written from a computed tensor
(not a draw or a constant) cannot be replayed this way and is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import ConfigError

#: aten op names (without the overload) that draw from the RNG
_RNG_WORDS = ("normal", "uniform", "rand", "bernoulli", "exponential", "cauchy", "geometric", "random", "multinomial")
#: in-place ops that overwrite every element they are given (what earlier writes cannot survive)
_OVERWRITES = {
    "normal_",
    "uniform_",
    "fill_",
    "zero_",
    "random_",
    "bernoulli_",
    "exponential_",
    "cauchy_",
    "geometric_",
    "log_normal_",
    "copy_",
}


@dataclass
class Op:
    """One recorded aten op: ``func(target, *args, **kwargs)`` (in place) or ``func(*args, **kwargs)``."""

    func: torch._ops.OpOverload
    args: tuple
    kwargs: dict
    rng: bool
    #: the written view: (storage pointer, offset, size, stride, dtype, storage elements); None: not in place
    view: tuple | None = None
    #: what it writes: ("block", name) | ("resident", name) | ("other", None); after ``expand``, the block index
    where: tuple = ("other", None)
    block: int = -1

    @property
    def name(self) -> str:
        return self.func._schema.name.split("::")[-1]


class _Recorder(TorchDispatchMode):
    """Records the RNG draws and in-place writes of the code it runs around."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[Op] = []
        self.keep: list[torch.Tensor] = []  # the written tensors stay alive: their storage pointers stay theirs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        rng = any(word in name for word in _RNG_WORDS)
        in_place = name.endswith("_") and bool(args) and isinstance(args[0], torch.Tensor)
        if rng or in_place:
            view = None
            if in_place:
                t = args[0]
                storage = t.untyped_storage()
                view = (
                    storage.data_ptr(),
                    t.storage_offset(),
                    tuple(t.shape),
                    tuple(t.stride()),
                    t.dtype,
                    storage.nbytes() // t.element_size(),
                )
                self.keep.append(t)
            self.ops.append(Op(func, tuple(args[1:] if in_place else args), dict(kwargs), rng, view))
        return func(*args, **kwargs)


def record(
    build: Callable[[], nn.Module], blocks_of: Callable[[nn.Module], nn.ModuleList]
) -> tuple[nn.Module, list[Op]]:
    """``build()`` (the shell) and the ops its construction and initialisation ran;
    ``blocks_of(shell)``: its one-block list."""
    recorder = _Recorder()
    with recorder:
        shell = build()
    _classify(shell, blocks_of(shell), recorder.ops)
    return shell, recorder.ops


def _classify(shell: nn.Module, blocks: nn.ModuleList, ops: list[Op]) -> None:
    """Name what each op writes: a block parameter (by its name in the block), a resident one, or other."""
    prefix = next(name for name, module in shell.named_modules() if module is blocks)
    owner: dict[int, tuple] = {}
    for name, p in shell.named_parameters(remove_duplicate=False):
        if not p.is_contiguous() or p.storage_offset() != 0:
            raise ConfigError(f"offload: the random initialisation of {name} cannot be replayed (a strided weight)")
        local = name[len(prefix) + 3 :] if name.startswith(prefix + ".0.") else None
        owner.setdefault(p.untyped_storage().data_ptr(), ("block", local) if local else ("resident", name))
    for op in ops:
        if op.view is not None:
            op.where = owner.get(op.view[0], ("other", None))


def expand(ops: list[Op], count: int) -> list[Op]:
    """The one-block trace as the ``count``-block model runs it: every stretch of block ops (from
    a block op to the last block op before the next resident one, other ops inside included)
    repeated for blocks 0..count-1."""
    out: list[Op] = []
    i = 0
    while i < len(ops):
        if ops[i].where[0] != "block":
            out.append(ops[i])
            i += 1
            continue
        end = i  # the stretch: up to the last block op before a resident op or the end
        j = i
        while j < len(ops) and ops[j].where[0] != "resident":
            if ops[j].where[0] == "block":
                end = j
            j += 1
        stretch = ops[i : end + 1]
        for k in range(count):
            out.extend(Op(op.func, op.args, op.kwargs, op.rng, op.view, op.where, k) for op in stretch)
        i = end + 1
    return out


def advance_only(op: Op) -> Op:
    """``op`` made to write nothing kept (a block op run on scratch): a resume's blocks are the store's."""
    return Op(op.func, op.args, op.kwargs, op.rng, op.view) if op.block >= 0 else op


def _key(op: Op) -> tuple | None:
    kind, name = op.where
    return ("block", op.block, name) if kind == "block" else (("resident", name) if kind == "resident" else None)


def _overwrites(op: Op) -> bool:
    """Whether ``op`` writes every element of its (whole, contiguous) parameter."""
    if op.view is None or op.name not in _OVERWRITES:
        return False
    _, offset, size, stride, _, elements = op.view
    return offset == 0 and torch.Size(size).numel() == elements and stride == torch.empty(size, device="meta").stride()


def _scratch(op: Op, device) -> None:
    """Run ``op`` on a throwaway tensor of its geometry: the RNG advances as it did, nothing is kept."""
    if op.view is None:
        op.func(*op.args, **op.kwargs)
        return
    _, offset, size, stride, dtype, elements = op.view
    scratch = torch.empty(elements, dtype=dtype, device=device).as_strided(size, stride, offset)
    op.func(scratch, *op.args, **op.kwargs)


def replay(
    ops: list[Op],
    resident: dict[str, torch.Tensor],
    open_block: Callable[[int], dict[str, torch.Tensor]],
    close_block: Callable[[int], None],
    device,
) -> None:
    """Run the expanded trace (module docstring, step 3). ``resident``: the model's resident
    parameters by name; ``open_block(k)``: allocate block k, its parameters by name;
    ``close_block(k)``: block k is final (write it, release it). The caller seeds the RNG."""
    last_full: dict[tuple, int] = {}
    last_op: dict[int, int] = {}
    for i, op in enumerate(ops):
        key = _key(op)
        if key is not None and _overwrites(op):
            last_full[key] = i
        if op.where[0] == "block":
            last_op[op.block] = i
    open_blocks: dict[int, dict[str, torch.Tensor]] = {}
    for i, op in enumerate(ops):
        key = _key(op)
        if key is None or last_full.get(key, 0) > i:  # not a parameter, or overwritten later
            if op.rng:
                _scratch(op, device)
        else:
            if key[0] == "block":
                if op.block not in open_blocks:
                    open_blocks[op.block] = open_block(op.block)
                target = open_blocks[op.block][key[2]]
            else:
                target = resident[key[1]]
            if any(isinstance(a, torch.Tensor) for a in (*op.args, *op.kwargs.values())):
                raise ConfigError(
                    f"offload: the random initialisation writes {key[-1]} from a computed tensor ({op.name}), "
                    "which cannot be replayed block by block; use offload=cpu"
                )
            assert op.view is not None, "a parameter write is in place"  # _key is None otherwise
            _, offset, size, stride, _, _ = op.view
            op.func(target.as_strided(size, stride, offset), *op.args, **op.kwargs)
        if op.where[0] == "block" and last_op[op.block] == i:
            if op.block not in open_blocks:  # only scratch draws: its weights were never written
                raise ConfigError(f"offload: block {op.block}'s random initialisation writes no weight")
            unset = [name for name in open_blocks[op.block] if ("block", op.block, name) not in last_full]
            if unset:  # torch.empty's bytes would be trained
                raise ConfigError(f"offload: the random initialisation never writes block {op.block}'s {unset[0]}")
            close_block(op.block)
            del open_blocks[op.block]
