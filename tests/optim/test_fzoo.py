"""Method-specific checks of FZOO's batched and loss-reuse paths (the shared contract is in test_conformance.py)."""

import statistics

import pytest
import torch

from tests.helpers import Quadratic, tiny_model
from zobench.engine import VirtualEngine
from zobench.optim import FZOO


class ReplicaClosure:
    """A closure following the batched contract: closure(replicas=N) returns N losses of the batch
    repeated N times; counts forward passes the way the loop must (replicas per call)."""

    def __init__(self, model, engine, ids):
        self.model, self.engine, self.ids, self.passes, self.calls = model, engine, ids, 0, 0

    def __call__(self, replicas=1):
        self.calls += 1
        self.passes += self.engine.replica_count
        logits = self.model(input_ids=self.ids.repeat(replicas, 1)).logits
        losses = logits.logsumexp(-1).reshape(replicas, -1).mean(-1)
        return losses if replicas > 1 else losses[0]


def _run_fzoo(batched, steps=3, **kwargs):
    model = tiny_model("llama")
    engine = VirtualEngine(model)
    ids = torch.randint(3, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    opt = FZOO(
        model.parameters(), lr=1e-3, eps=1e-2, num_directions=4, batched=batched, seed=5, engine=engine, **kwargs
    )
    closure = ReplicaClosure(model, engine, ids)
    infos = []
    for _ in range(steps):
        opt.step(closure)
        infos.append(opt.last_step_info)
    return model, closure, infos, opt


@pytest.mark.parametrize("reuse", [False, True])
def test_fzoo_batched_equals_sequential(reuse):
    seq_model, seq_closure, seq_infos, opt = _run_fzoo(batched=False, reuse=reuse)
    bat_model, bat_closure, bat_infos, _ = _run_fzoo(batched=True, reuse=reuse)
    chunk_model, chunk_closure, _, _ = _run_fzoo(batched=True, reuse=reuse, replicas_per_call=1)
    for a, b in zip(seq_infos, bat_infos):
        assert a["loss_zero"] == pytest.approx(b["loss_zero"], rel=1e-5)
        assert a["loss_std"] == pytest.approx(b["loss_std"], rel=1e-3)
    # the updates agree to 1e-3 of their size: the float32 loss differences (~1e-3 of the loss) that
    # the σ-normalised step divides carry ~1e-4 relative rounding, batched or not
    start = tiny_model("llama")
    for (name, p0), p, q, r in zip(
        start.named_parameters(), seq_model.parameters(), bat_model.parameters(), chunk_model.parameters()
    ):
        size = float((p - p0).abs().max())
        assert size > 0
        torch.testing.assert_close(q - p0, p - p0, rtol=0, atol=1e-3 * size, msg=name)
        torch.testing.assert_close(r - p0, p - p0, rtol=0, atol=1e-3 * size, msg=name)
    fresh = 2 if reuse else 4
    # same declared passes either way; the batched run makes 2 model calls per step, not fresh+1
    assert seq_closure.passes == bat_closure.passes == chunk_closure.passes == 3 * opt.forward_passes_per_step
    assert seq_closure.calls == 3 * (fresh + 1) and bat_closure.calls == 3 * 2
    assert chunk_closure.calls == 3 * (fresh + 1)


def test_fzoo_batched_refuses_a_closure_that_returns_one_loss():
    model = tiny_model("llama")
    opt = FZOO(model.parameters(), num_directions=2, seed=0, engine=VirtualEngine(model))
    ids = torch.randint(0, 64, (1, 4))
    with pytest.raises(ValueError, match="one loss per replica"):
        opt.step(lambda replicas=1: model(input_ids=ids.repeat(replicas, 1)).logits.mean())


def test_fzoo_r_update_sums_fresh_and_reused_directions():
    model = Quadratic()
    eps, lr = 1e-3, 1e-1  # the authors' rule: no 1/ε, population std (std_ddof=0, the default)
    opt = FZOO(model.parameters(), lr=lr, eps=eps, num_directions=4, reuse=True, seed=2, engine=VirtualEngine(model))
    assert opt.forward_passes_per_step == 3
    opt.step(model)
    first = opt.state["fzoo_reuse"]
    before = model.x.detach().clone()
    opt.step(model)
    second = opt.state["fzoo_reuse"]
    assert first["step"] == 1 and second["step"] == 2 and len(second["differences"]) == 2
    differences = second["differences"] + first["differences"]
    directions = [opt.direction(2, i, "rademacher") for i in range(2)] + [
        opt.direction(1, i, "rademacher") for i in range(2)
    ]
    sigma = statistics.pstdev(differences)
    expected = before - sum(lr / (4 * sigma) * d * u.sample(0, before) for d, u in zip(differences, directions))
    torch.testing.assert_close(model.x.detach(), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="even N >= 4"):
        FZOO(model.parameters(), num_directions=3, reuse=True)
