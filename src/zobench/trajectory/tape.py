"""Recording a ZO step's closure values, and closures that give them back (``log.py`` says why
these values are all a step reads from the data).

``Tape.wrap(closure)`` returns a closure of the same kind (it takes ``replicas`` exactly when
the wrapped one does: methods choose batched or sequential evaluation by that) that appends
every value it returns. ``ReplayTape`` hands out closures that return the recorded values in
the recorded order and evaluate nothing; a method that draws extra batches (DiZO's projection
rounds, MeZO-SVRG's anchor: ``bind_data``) gets its closures from the same tape, so the order
of all calls of a step is the order of the log.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from ..errors import CheckpointError


def as_call(value) -> tuple:
    """``(primal,)`` or, for a dual number (read inside its dual level), ``(primal, tangent)``,
    as CPU tensors of the value's own dtype and shape."""
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    primal, tangent = fwAD.unpack_dual(t)  # (t, None) for a plain tensor
    primal = primal.detach().to("cpu", copy=True)
    return (primal,) if tangent is None else (primal, tangent.detach().to("cpu", dtype=primal.dtype, copy=True))


class Tape:
    """The closure values of the current step (``calls``, cleared by ``start``)."""

    def __init__(self) -> None:
        self.calls: list = []

    def start(self) -> None:
        self.calls = []

    def wrap(self, closure, replicas: bool):
        """``closure`` recording what it returns; ``replicas``: it takes ``replicas=N``."""
        calls = self.calls

        def record(value):
            calls.append(as_call(value))
            return value

        if replicas:
            return lambda replicas=1: record(closure(replicas=replicas))
        return lambda: record(closure())


class ReplayTape:
    """Closures returning one step's recorded values in order (``load`` the step first)."""

    def __init__(self, replicas: bool) -> None:
        self.replicas = replicas
        self._calls: list[tuple] = []
        self._next = 0
        self.step = 0

    def load(self, step: int, calls: list[tuple]) -> None:
        self.step, self._calls, self._next = step, calls, 0

    def done(self) -> None:
        """Every recorded call was consumed: else the optimizer is not the one that ran."""
        if self._next != len(self._calls):
            raise CheckpointError(
                f"trajectory step {self.step}: the optimizer read {self._next} of its {len(self._calls)} "
                "logged values; the log belongs to another method or config"
            )

    def _value(self):
        if self._next >= len(self._calls):
            raise CheckpointError(
                f"trajectory step {self.step}: the optimizer asked for more than the {len(self._calls)} "
                "logged values; the log belongs to another method or config"
            )
        call = self._calls[self._next]
        self._next += 1
        if len(call) == 2:  # a dual loss (forward gradient): only valid inside the engine's dual level
            return fwAD.make_dual(call[0], call[1])
        return call[0].clone()

    def closure(self):
        if self.replicas:
            return lambda replicas=1: self._value()
        return lambda: self._value()


def replay_steps(optimizer, tape: ReplayTape, steps, batch_size: int) -> None:
    """Run ``optimizer.step`` once per ``(step, calls)`` record on recorded values (no forward)."""
    if hasattr(optimizer, "bind_data"):
        optimizer.bind_data(tape.closure, batch_size)
    with torch.no_grad():
        for step, calls in steps:
            tape.load(step, calls)
            optimizer.step(tape.closure())
            tape.done()
