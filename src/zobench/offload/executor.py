"""The streaming executor: each block's weights are resident only while the block runs.

``Offloader(model, store, device)`` takes the model's blocks (``blocks.find_blocks``) out of
memory: every block parameter's ``.data`` becomes an empty placeholder (the ``nn.Parameter``
objects stay, so optimizers and the virtual engine keep tracking them by identity) and the
weights live in ``store``. Two hooks on each block:

* forward pre-hook (registered first, so it runs before any hook of the block's modules, the
  virtual engine's θ + s·z swap included): take block i's tensors (read ahead, or read now), put
  them in the parameters, apply the block's pending updates (see below), and start reading block
  i+1 on the reader thread: while block i computes, block i+1 is read from disk and, on CUDA,
  copied to the device on a side stream from pinned host memory.
* forward hook: if the block's weights changed since they were stored (an update was applied),
  hand them to the writer thread (the store's ``write``, stamped with the step of the last
  applied update); put the placeholders back.

The threads are ``transfer.BlockTransfer``'s: in memory at once are the block computing, one read
ahead and one being written (a slower writer makes the step wait; it does not queue blocks).

Deferred update (ZO2, Wang et al. 2025, zo2/model/base.py): the optimizer's update
θ ← (1 - decay)·θ + coeff·z of a block is not applied when the optimizer asks (the block is not
resident then) but recorded as ``(params, direction, coeff, decay, step)`` and applied by the
engine's own ``update``, with the same arithmetic as in memory, when the block next arrives:
the next step's forward. A step of MeZO then reads each block once and writes it once. Anything
that needs the weights outside a forward (a checkpoint, an export, the end of a run) calls
``flush()`` first, which brings every block with pending updates to its latest step.

Optimizer state (``STATE`` keys beside the weights: momentum, Adam moments, HiZOO's Σ, MeZO-SVRG's
θ̄, DiZO's θ0) is lent to the optimizer (``optimizer.state[p]``) while its block is resident, on
every arrival (the forward's too: HiZOO's perturbation reads Σ), and taken back when it leaves
(written with the block when the block changed). Three ways a method works on a block outside
the deferred update, each with the block and its state resident:

* ``with_state(i, fn)``: a stateful update now (``Engine.foreach``: momentum, Adam, HiZOO), or a
  whole-weight read / rewrite (``Engine.visit``: Sparse-MeZO's thresholds, SVRG's θ̄ ← θ, DiZO's
  distances): one read, and a write if the block changed.
* ``Transform`` (``Engine.transformed``): evaluations that see the weights rewritten in place
  (SVRG: θ̄ swapped in; DiZO: Δ rescaled). Applied when the block arrives for a forward; an exact
  one (a swap) is undone when it leaves (nothing written), an inexact one (DiZO's rescale and its
  inverse, a few ulps of drift as in memory) leaves the block rewritten in the store and queues
  its inverse as a ``PendingCall``, applied at the next arrival before anything else: the drift
  is the in-memory one, bit for bit, however many forwards the evaluation runs (none, in a
  replay: then the rewrite and its inverse are both queued).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..engine import Direction
from .blocks import block_parameters, check_private, find_blocks
from .store import BlockStore
from .transfer import BlockTransfer

#: store keys of optimizer state: ``state.<parameter name>::<state key>`` beside the weights
STATE, SEP = "state.", "::"

#: ``(pid, parameter)`` pairs, as the engines take them
Entries = list[tuple[int, torch.Tensor]]


@dataclass
class PendingUpdate:
    """θ ← (1 - decay)·θ + coeff·z over ``entries`` (one block's share of an engine update)."""

    entries: Entries
    direction: Direction
    coeff: float
    decay: float
    step: int


@dataclass
class PendingCall:
    """``fn(entries)`` on the resident block, in order with its pending updates (a ``Transform``'s
    inverse, or the rewrite and the inverse of an evaluation the block missed)."""

    entries: Entries
    fn: Callable[[Entries], None]


@dataclass
class Transform:
    """An evaluation's in-place rewrite of block weights (``Engine.transformed``): ``enter`` then,
    after the forward, ``leave``; ``exact``: ``leave`` restores the bits (module docstring)."""

    entries: dict[int, Entries]
    enter: Callable[[Entries], None]
    leave: Callable[[Entries], None]
    exact: bool
    entered: set[int]


class Offloader:
    """Streams the blocks of ``model`` through ``device`` from ``store`` (module docstring).

    Args:
        model: the model (its non-block parameters stay where they are).
        store: holds every block's weights; ``populate`` fills it from the model if it is empty.
        device: where blocks compute.
        prefetch: read block i+1 while block i computes (False: read on arrival, for debugging).
    """

    def __init__(self, model: nn.Module, store: BlockStore, device: torch.device | str = "cpu", prefetch: bool = True):
        self.model = model
        self.prefix, self.blocks = find_blocks(model)
        check_private(model, self.blocks)
        if len(store) != len(self.blocks):
            raise ValueError(f"offload store holds {len(store)} blocks; the model has {len(self.blocks)}")
        self.store, self.device = store, torch.device(device)
        self.params = [block_parameters(block) for block in self.blocks]
        self.index = {id(block): i for i, block in enumerate(self.blocks)}
        self.block_of = {id(p): i for i, named in enumerate(self.params) for _, p in named}
        self.pending: list[list[PendingUpdate | PendingCall]] = [[] for _ in self.blocks]
        #: the rewrite of the evaluation under way (``begin_transform``), None outside one
        self.transform: Transform | None = None
        self.stamps = [0] * len(self.blocks)  # the step of the weights each block holds (or will on arrival)
        #: the step each block's stored weights were at when adopted: a replay (a resume) skips the
        #: updates of steps <= it, which the block holds already (store.py, crash consistency)
        self.floor = [0] * len(self.blocks)
        self.dirty = [False] * len(self.blocks)
        self.resident = [False] * len(self.blocks)
        #: applies a pending update to resident weights: the inner engine's ``update`` (``OffloadEngine``)
        self.apply: Callable[[Entries, Direction, float, float], None] | None = None
        #: the optimizer's current step (``bind``): the stamp of a deferred update
        self.step_of: Callable[[], int] = lambda: 0
        #: ``load_model(resume=step)``: the checkpoint step the store is to be restored to (setup.resume_store)
        self.resume_step: int | None = None
        self.reads = self.writes = 0  # counts, for the benchmark's bytes per step
        #: the reads (one block ahead) and writes (one in flight) on their threads (transfer.py)
        self.transfer = BlockTransfer(store, self.device, prefetch)
        #: the optimizer state a block's parameters carry (``STATE`` keys in the store), in memory
        #: only while the block is resident
        self.optimizer_state: dict | None = None
        self._extras: list[dict[str, torch.Tensor]] = [{} for _ in self.blocks]
        self._handles = []
        for block in self.blocks:
            self._handles.append(block.register_forward_pre_hook(self._arrive_for_forward, prepend=True))
            self._handles.append(block.register_forward_hook(self._leave, always_call=True))

    # -- moving blocks in and out ----------------------------------------------------------------
    def evict(self, step: int = 0) -> None:
        """Write every block's current weights to the store (stamped ``step``) and release them:
        how a model built in memory becomes an offloaded one."""
        for i, named in enumerate(self.params):
            self.store.write(i, {name: p.detach() for name, p in named}, step)
            self.stamps[i] = step
            self._release(i)

    def adopt(self) -> None:
        """Use the blocks already in the store (written by ``build.py`` or a previous run): the
        model's block parameters are released (they may be placeholders already)."""
        for i in range(len(self.blocks)):
            self.stamps[i] = self.floor[i] = self.store.step(i)
            self._release(i)

    def _release(self, i: int) -> None:
        for _, p in self.params[i]:
            p.data = placeholder(p)
        self._extras[i] = {}
        self.resident[i] = False

    def _arrive(self, module: nn.Module, args, ahead: int | None = None) -> None:
        """Block ``module``'s tensors in; then read block ``ahead`` (default: the next one) ahead."""
        i = self.index[id(module)]
        if self.resident[i]:
            return
        if self.resume_step is not None:  # the blocks are not the checkpoint's yet: nothing may read them
            raise RuntimeError("offload: a block was read before the store was restored (setup.resume_store)")
        tensors = self.transfer.take(i)
        self.reads += 1
        for name, p in self.params[i]:
            p.data = tensors[name]
        self._extras[i] = {name: t for name, t in tensors.items() if name.startswith(STATE)}
        self.resident[i] = True
        self._lend_state(i)
        self._apply_pending(i)
        self.transfer.read_ahead(i + 1 if ahead is None else ahead)

    def _arrive_for_forward(self, module: nn.Module, args) -> None:
        i = self.index[id(module)]
        was_resident = self.resident[i]
        self._arrive(module, args)
        transform = self.transform
        if was_resident or transform is None or i not in transform.entries:
            return
        if transform.exact or i not in transform.entered:  # inexact: the store holds it rewritten already
            transform.enter(transform.entries[i])
        transform.entered.add(i)

    def _leave(self, module: nn.Module, args, output) -> None:
        i = self.index[id(module)]
        transform = self.transform
        if transform is not None and i in transform.entries:
            if transform.exact:
                transform.leave(transform.entries[i])
            else:  # kept rewritten until the evaluation ends (end_transform queues the inverse)
                self.dirty[i] = True
        self._store_and_release(i)

    def _lend_state(self, i: int) -> None:
        """The block's stored optimizer state into ``optimizer_state[p]`` while it is resident."""
        if self.optimizer_state is None:
            return
        for name, p in self.params[i]:
            prefix = f"{STATE}{name}{SEP}"
            for key, value in self._extras[i].items():
                if key.startswith(prefix):
                    self.optimizer_state[p][key[len(prefix) :]] = value

    def _take_state(self, i: int) -> dict[str, torch.Tensor]:
        """The block's optimizer state tensors out of ``optimizer_state``, by store key (what
        ``_lend_state`` lent, updated in place, and what the optimizer created meanwhile)."""
        taken: dict[str, torch.Tensor] = {}
        if self.optimizer_state is None:
            return taken
        for name, p in self.params[i]:
            state = self.optimizer_state.get(p) or {}  # .get: no entry made for a block never lent state
            for key in [k for k, v in state.items() if isinstance(v, torch.Tensor)]:
                taken[f"{STATE}{name}{SEP}{key}"] = state.pop(key)
        return taken

    def _store_and_release(self, i: int) -> None:
        state = self._take_state(i)
        if self.dirty[i]:
            tensors = {name: p.data for name, p in self.params[i]}  # never modified again: released below
            tensors.update(self._extras[i])
            tensors.update(state)
            self.transfer.write(i, tensors, self.stamps[i])
            self.dirty[i] = False
            self.writes += 1
        self._release(i)

    # -- deferred updates ------------------------------------------------------------------------
    def defer(self, entries: Entries, direction: Direction, coeff: float, decay: float) -> None:
        """Record an engine update of ``entries`` (block parameters), split by block."""
        by_block: dict[int, Entries] = {}
        for pid, p in entries:
            by_block.setdefault(self.block_of[id(p)], []).append((pid, p))
        step = self.step_of()
        for i, share in by_block.items():
            if 0 < self.floor[i] and step <= self.floor[i]:  # a replayed step the stored block holds already
                continue
            if self.resident[i]:
                raise RuntimeError(f"offload: an update of block {i} arrived while it was in use")
            self.pending[i].append(PendingUpdate(share, direction, coeff, decay, step))

    def _apply_pending(self, i: int) -> None:
        if not self.pending[i]:
            return
        if self.apply is None:
            raise RuntimeError("offload: pending updates but no engine to apply them (OffloadEngine)")
        for update in self.pending[i]:
            if isinstance(update, PendingCall):
                update.fn(update.entries)
                continue
            self.apply(update.entries, update.direction, update.coeff, update.decay)
            self.stamps[i] = update.step
        self.pending[i] = []
        self.dirty[i] = True

    def _replayed(self, i: int) -> bool:
        """Whether block i holds the current step already (a resume's replay: store.py)."""
        return 0 < self.floor[i] and self.step_of() <= self.floor[i]

    @torch.no_grad()
    def with_state(self, i: int, fn: Callable[[], None], update: bool = True, writes: bool = True) -> None:
        """Run ``fn`` with block i resident and its parameters' optimizer state
        (``self.optimizer_state[p]``) loaded from the store, then write weights and state back
        (``writes``; else only if a pending update was applied) and release both: the state
        streams with its block (one more read, and write, of the block than a deferred update).
        ``update``: ``fn`` is the step's update (the block is then at the current step); else a
        read or a rewrite that leaves the block at its step (``Engine.visit``)."""
        if self.optimizer_state is None:
            raise RuntimeError("offload: a stateful update but no optimizer state bound (OffloadEngine.bind)")
        if self._replayed(i):  # the stored block and state hold it
            return
        self._arrive(self.blocks[i], ())
        fn()
        if update:
            self.stamps[i] = self.step_of()
        self.dirty[i] = self.dirty[i] or writes
        self._store_and_release(i)

    # -- rewritten evaluations (``Engine.transformed``) ------------------------------------------
    def begin_transform(self, entries: dict[int, Entries], enter, leave, exact: bool) -> None:
        """The next forwards (until ``end_transform``) see block i's ``entries`` as ``enter`` leaves them."""
        if self.transform is not None:
            raise RuntimeError("offload: a rewritten evaluation inside another")
        self.transform = Transform(entries, enter, leave, exact, set())

    def end_transform(self) -> None:
        """The evaluation is over: an inexact rewrite's inverse is queued on the blocks it
        rewrote, and rewrite + inverse on those it missed (no forward reached them: a replay)."""
        transform, self.transform = self.transform, None
        if transform is None or transform.exact:
            return
        for i, entries in transform.entries.items():
            if i in transform.entered:
                self.pending[i].append(PendingCall(entries, transform.leave))
            elif not self._replayed(i):
                self.pending[i].append(PendingCall(entries, transform.enter))
                self.pending[i].append(PendingCall(entries, transform.leave))

    def is_offloaded(self, p: torch.Tensor) -> bool:
        return id(p) in self.block_of

    # -- whole-model views -----------------------------------------------------------------------
    @torch.no_grad()
    def flush(self) -> None:
        """Apply every pending update and write the blocks back: the store then holds the
        model's current weights, every block at its latest step."""
        due = [i for i in range(len(self.blocks)) if self.pending[i]]
        for i, ahead in zip(due, due[1:] + [len(self.blocks)]):  # read ahead the next block due
            self._arrive(self.blocks[i], (), ahead)
            self._store_and_release(i)
        self.wait()

    def wait(self) -> None:
        """Block until every write has landed (and surface a failed one)."""
        self.transfer.wait()

    @property
    def stalled_s(self) -> float:
        """Seconds the computing thread waited on storage: the step's time minus this is its
        compute (the benchmark's bound)."""
        return self.transfer.stalled_s

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights by qualified name (CPU copies for the blocks): for export and
        checkpoints; flushes first."""
        self.flush()
        block_ids = {id(p) for named in self.params for _, p in named}
        named = self.model.named_parameters(remove_duplicate=True)
        out = {name: p.detach() for name, p in named if id(p) not in block_ids}
        for i in range(len(self.blocks)):
            for name, t in self.store.read(i).items():
                if name.startswith(STATE):
                    continue
                out[f"{self.prefix}.{i}.{name}"] = t.clone() if not self.store.fresh_reads else t
        return out

    def close(self) -> None:
        """Finish the writes, stop the threads and remove the hooks."""
        self.transfer.close()
        for handle in self._handles:
            handle.remove()
        self._handles = []


def placeholder(p: torch.Tensor) -> torch.Tensor:
    """What a released parameter holds: one zero expanded to ``p``'s shape (one element of
    memory). Shape, dtype and device stay right for whoever inspects them (``decay_groups``
    splits by ``ndim``); an in-place write into it fails (its elements share one location)."""
    return torch.zeros((), dtype=p.dtype, device=p.device).expand(p.shape)
