"""A model built with no memory for its weights, whose every tensor can be materialised later,
alone, with the values an ordinary (in-memory) build gives it, bit for bit.

``Recorder`` is a context: inside it, the tensor factories a module constructor calls
(``torch.empty`` / ``zeros`` / ``ones`` / ``full`` / ``rand*``) return meta tensors (no memory),
and every in-place op on a meta tensor (``normal_``, ``uniform_``, ``zero_``, ``fill_``, a
``copy_`` from a real tensor: what ``nn.Linear.reset_parameters`` and transformers'
``_init_weights`` do) is recorded on that tensor's tape, with the random generator's state before
each random one. The generator is advanced as the ordinary build advances it: each random op is
also run on a scratch tensor of the same shape (one tensor at a time). So ``from_config`` under a
``Recorder`` draws the same stream as ``from_config`` in memory (the seeded ``*-random`` models of
``loading.py``; LoRA's adapters under ``apply_tuning``'s seed), and ``Tape.replay`` gives any one
tensor its ordinary-build value: the recorded ops rerun on a fresh tensor, each random one from
its recorded generator state (the same kernel on the same shape and strides draws the same bits).
``torch.tensor`` / ``arange`` stay real: transformers detects a meta build by them (and would skip
its weight init), and they make small buffers (rotary frequencies, position ids).

This is how PyTorch's FSDP2 and torchtitan build a model larger than one device ("meta-device
initialisation": ``fully_shard`` on meta, ``to_empty``, then initialise), with the one difference
that the values are the in-memory build's rather than a second init scheme's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from ..errors import ConfigError


@functools.lru_cache(1)
def _factories() -> frozenset:
    """The constructors a module's ``__init__`` makes its parameters with, sent to meta."""
    return frozenset({torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn})


@dataclass
class Op:
    """One recorded write to a tensor: ``func(view, *args, **kwargs)`` where ``view`` is the
    tensor's storage seen as ``geometry`` (size, stride, offset); ``state``: the generator's state
    before it (random ops); ``factory``: the op made the tensor (``torch.zeros(...)``)."""

    func: Any
    geometry: tuple
    args: tuple
    kwargs: dict
    state: torch.Tensor | None = None
    kind: str = "inplace"  # "factory": func made the tensor; "derived": func's result (of other tensors) copied in


@dataclass
class _Ref:
    """A meta tensor read by an op, as it was then: its tape so far (replayed when needed)."""

    ops: list
    like: torch.Tensor


@dataclass
class _Entry:
    ref: StorageWeakRef
    ops: list[Op] = field(default_factory=list)


def _is_random(func) -> bool:
    """An aten op that draws from a generator (its schema takes a ``Generator?``)."""
    return any("Generator" in str(arg.type) for arg in func._schema.arguments)


def _geometry(t: torch.Tensor) -> tuple:
    return tuple(t.shape), tuple(t.stride()), t.storage_offset()


#: in-place ops that write every element they are given, whatever its value was
_OVERWRITES = frozenset(
    {"normal_", "uniform_", "fill_", "zero_", "copy_", "random_", "bernoulli_", "exponential_", "cauchy_"}
    | {"geometric_", "log_normal_"}
)


def _whole(geometry: tuple, elements: int) -> bool:
    """Whether a view of this (size, stride, offset) is every element of a storage of ``elements``."""
    size, stride, offset = geometry
    expected = 1
    for n, s in reversed(list(zip(size, stride, strict=True))):
        if n != 1 and s != expected:
            return False
        expected *= n
    return offset == 0 and expected == elements


def _live(ops: list[Op], elements: int) -> list[Op]:
    """``ops`` from the last one that overwrites the whole storage (of ``elements``) on."""
    for i in range(len(ops) - 1, 0, -1):
        op = ops[i]
        name = op.func._schema.name.split("::")[-1] if op.kind == "inplace" else ""
        if (op.kind != "inplace" or name in _OVERWRITES) and _whole(op.geometry, elements):
            return ops[i:]
    return ops


class Tape:
    """The ops recorded per meta storage, and their replay on ``device``."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.entries: dict[int, _Entry] = {}
        self._scratch: torch.Tensor | None = None

    def _generator_state(self) -> torch.Tensor:
        if self.device.type == "cuda":
            return torch.cuda.get_rng_state(self.device)
        return torch.get_rng_state()

    def _set_generator_state(self, state: torch.Tensor) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state, self.device)
        else:
            torch.set_rng_state(state)

    def record(self, t: torch.Tensor, op: Op) -> None:
        """Append ``op`` to ``t``'s storage's tape (a dead storage's address reused: a new tape)."""
        ref = StorageWeakRef(t.untyped_storage())
        entry = self.entries.get(ref.cdata)
        if entry is None or entry.ref.expired():
            entry = self.entries[ref.cdata] = _Entry(ref)
        entry.ops.append(op)

    def ops_of(self, t: torch.Tensor) -> list[Op]:
        """The writes recorded on ``t``'s storage, in order ([] if none)."""
        entry = self.entries.get(StorageWeakRef(t.untyped_storage()).cdata)
        return [] if entry is None or entry.ref.expired() else list(entry.ops)

    def scratch(self, t: torch.Tensor) -> torch.Tensor:
        """A real tensor on ``device`` with ``t``'s storage size, dtype and geometry: a view of one
        buffer kept for every draw (grown to the largest), so that the allocator is not left with
        a heap fragmented by one freed scratch tensor per parameter (a 200 MB model: 80 MB more peak)."""
        nbytes = t.untyped_storage().nbytes()
        if self._scratch is None or self._scratch.numel() < nbytes:
            self._scratch = None
            self._scratch = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        base = self._scratch[:nbytes].view(t.dtype)
        return base.as_strided(*_geometry(t))

    def _resolve(self, arg):
        return self.replay(arg.ops, arg.like) if isinstance(arg, _Ref) else arg

    def reference(self, arg):
        """A meta tensor argument as a ``_Ref`` to its value now; anything else as it is."""
        return _Ref(self.ops_of(arg), arg) if isinstance(arg, torch.Tensor) and arg.is_meta else arg

    def replay(self, ops: list[Op], like: torch.Tensor) -> torch.Tensor:
        """A real tensor shaped like ``like`` (a meta tensor) holding what ``ops`` wrote: the
        in-memory build's value. The generator is left as it was. Only the ops from the last
        that writes the whole storage run (``_live``): what it overwrites cannot show, and each
        random op restores its own generator state (a constructor's Kaiming draw that
        ``_init_weights`` redraws is never drawn again)."""
        size = like.untyped_storage().nbytes() // like.element_size()
        base = torch.empty(size, dtype=like.dtype, device=self.device)
        kept = self._generator_state()
        try:
            for op in _live(ops, size):
                view = base.as_strided(*op.geometry)
                if op.state is not None:
                    self._set_generator_state(op.state)
                args, kwargs = tree_map(self._resolve, (op.args, op.kwargs))
                if op.kind == "factory":
                    view.copy_(op.func(*args, **{**kwargs, "device": self.device}))
                elif op.kind == "derived":
                    view.copy_(op.func(*args, **kwargs))
                else:
                    op.func(view, *args, **kwargs)
        finally:
            self._set_generator_state(kept)
        return base.as_strided(*_geometry(like))


class _Factories(TorchFunctionMode):
    """Parameter constructors to meta, each recorded as the tensor's first op."""

    def __init__(self, tape: Tape) -> None:
        super().__init__()
        self.tape = tape

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _factories() or kwargs.get("device") not in (None, "cpu", torch.device("cpu"), self.tape.device):
            return func(*args, **kwargs)
        random = func in (torch.rand, torch.randn)
        state = self.tape._generator_state() if random else None
        if random:  # the generator advanced as the real draw advances it
            func(*args, **{**kwargs, "device": self.tape.device})
        out = func(*args, **{**kwargs, "device": "meta"})
        plain = {k: v for k, v in kwargs.items() if k not in ("device", "out", "pin_memory")}
        self.tape.record(out, Op(func, _geometry(out), args, plain, state, kind="factory"))
        return out


class _Writes(TorchDispatchMode):
    """In-place ops on meta tensors recorded; random ones also run on a scratch tensor."""

    def __init__(self, tape: Tape) -> None:
        super().__init__()
        self.tape = tape

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        metas = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor) and a.is_meta]
        if not metas:
            return func(*args, **kwargs)
        schema = func._schema
        if schema.is_mutable and schema.arguments and schema.arguments[0].is_write and args and args[0].is_meta:
            return self._write(func, args, kwargs)
        out = func(*args, **kwargs)
        if not func.is_view and isinstance(out, torch.Tensor) and out.is_meta:  # a new tensor of others
            if _is_random(func):
                raise ConfigError(f"model: {func} draws a new tensor from a meta one; its build cannot be replayed")
            refs = tree_map(self.tape.reference, (args, kwargs))
            self.tape.record(out, Op(func, _geometry(out), refs[0], refs[1], kind="derived"))
        return out

    def _write(self, func, args, kwargs):
        """An in-place write on a meta tensor: recorded (random: after a scratch draw)."""
        target, rest = args[0], args[1:]
        state = None
        if _is_random(func):
            state = self.tape._generator_state()
            with torch._C.DisableTorchFunction():  # the scratch tensor is real, not a factory's meta one
                func(self.tape.scratch(target), *rest, **kwargs)
        refs = tree_map(self.tape.reference, (rest, kwargs))
        self.tape.record(target, Op(func, _geometry(target), refs[0], refs[1], state))
        return func(*args, **kwargs)


class Recorder:
    """``with Recorder(device) as tape:`` build a model: its factories on meta, its writes on
    ``tape`` (module docstring)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.tape = Tape(torch.device(device))
        self._modes = (_Factories(self.tape), _Writes(self.tape))

    def __enter__(self) -> Tape:
        for mode in self._modes:
            mode.__enter__()
        return self.tape

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self.tape._scratch = None  # the build is over: no more draws to advance
