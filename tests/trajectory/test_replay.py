"""Replay is bit-identical to training for every registered ZO method (zobench/trajectory).

A tiny Llama is trained a few steps by each method through the learner the loop uses (its
closures recorded by the tape, the records round-tripped through the binary log format); a
second copy of the same base model is then driven by ``replay_steps`` on the logged values,
with no forward pass. Weights and optimizer state must be equal bit for bit (torch.equal), and
the trained weights must differ from the base (so the test can fail).
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import SMOKE, compose_run, tiny_model
from zobench.build import build_learner
from zobench.models import apply_tuning, trainable
from zobench.optim.registry import methods
from zobench.trajectory.log import decode_payload, encode_record
from zobench.trajectory.tape import ReplayTape, replay_steps

STEPS = 4
BATCH = 4
# short periods so that 4 steps reach every code path (DiZO's projection round, SVRG's anchor,
# SubZero's refresh); an lr large enough that bf16 weights move at all
EXTRA = {
    "dizo": ["optimizer.interval=2", "optimizer.projection_iters=2"],
    "mezo_svrg": ["optimizer.anchor_examples=8"],
    "subzero": ["optimizer.refresh_steps=2"],
}
VARIANTS = [  # (method, extra overrides): options that change which closures a step calls
    ("mezo", ["optimizer.one_sided=true", "optimizer.num_directions=2"]),
    ("mezo", ["engine.mode=inplace"]),
    ("fzoo", ["optimizer.reuse=true", "optimizer.batched=false"]),
    ("mezo", ["engine.paired=false"]),
    ("zo_sgd_sign", ["optimizer.base=adamw"]),
    ("zo_sgd_cons", ["optimizer.base=adamw"]),
    ("hizoo", ["optimizer.rule=2024", "optimizer.hessian_smooth=0.5"]),
    ("zo_adam", ["optimizer.state_dtype=bfloat16"]),
]


class TinyObjective:
    """A smooth loss of the tiny model's logits; ``replicas=N`` gives N losses (the batched
    contract of the closure), as the task objectives do."""

    def __init__(self, model) -> None:
        self.model = model

    def loss(self, batch, replicas=1):
        logits = self.model(input_ids=batch.repeat(replicas, 1)).logits.float()  # a bf16 loss rounds ℓ+ - ℓ- to 0
        losses = logits.logsumexp(-1).reshape(replicas, -1).mean(-1)
        return losses[0] if replicas == 1 else losses


def _learner(method: str, dtype, tuning: str, extra: list[str]):
    torch.set_grad_enabled(False)
    cfg = compose_run(*SMOKE, f"optimizer={method}", f"tuning={tuning}", "optimizer.lr=1e-2", "engine=torch", *extra)
    model = apply_tuning(tiny_model("llama", dtype), OmegaConf.to_container(cfg.tuning), "causal", seed=0)
    named = trainable(model)
    return cfg, build_learner(cfg, model, named, TinyObjective(model)), named


def _train_and_replay(method: str, dtype, tuning: str, extra: list[str]) -> None:
    cfg, learner, named = _learner(method, dtype, tuning, extra)
    base = [p.clone() for _, p in named]
    gen = torch.Generator().manual_seed(0)
    learner.bind_data(lambda: torch.randint(0, 64, (BATCH, 8), generator=gen), BATCH)
    records = []
    for step in range(1, STEPS + 1):
        learner.step(torch.randint(0, 64, (BATCH, 8), generator=gen))
        records.append(decode_payload(encode_record(step, learner.tape.calls)[4:-4]))
    assert any(not torch.equal(b, p) for b, (_, p) in zip(base, named)), "training left the weights unchanged"

    _, fresh, replayed = _learner(method, dtype, tuning, extra)
    replay_steps(fresh.optimizer, ReplayTape(learner.replicas), records, BATCH)
    for (name, p), (_, q) in zip(named, replayed):
        assert torch.equal(p, q), f"{method}: {name} differs after replay"
    trained, again = learner.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert trained.keys() == again.keys()
    for key, value in trained.items():
        for field, tensor in value.items() if isinstance(value, dict) else []:
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(tensor, again[key][field]), f"{method}: state {key}.{field} differs"


def _cases():
    slow = pytest.mark.slow
    for method in sorted(methods()):
        extra = EXTRA.get(method, [])
        yield pytest.param(method, torch.float32, "full", extra, id=f"{method}-fp32-full")
        yield pytest.param(method, torch.bfloat16, "full", extra, id=f"{method}-bf16-full", marks=slow)
        for tuning in ("lora", "prefix"):
            for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
                yield pytest.param(method, dtype, tuning, extra, id=f"{method}-{name}-{tuning}", marks=slow)
    for index, (method, extra) in enumerate(VARIANTS):
        yield pytest.param(method, torch.float32, "full", extra, id=f"{method}-variant{index}")


@pytest.mark.parametrize(("method", "dtype", "tuning", "extra"), list(_cases()))
def test_replay_is_bit_identical_to_training(method, dtype, tuning, extra):
    _train_and_replay(method, dtype, tuning, extra)


def test_replay_that_reads_more_values_than_logged_is_refused():
    from zobench.errors import CheckpointError

    _, fresh, _ = _learner("mezo", torch.float32, "full", [])
    with pytest.raises(CheckpointError, match="asked for more"):
        replay_steps(fresh.optimizer, ReplayTape(False), [(1, [(torch.tensor(1.0),)])], BATCH)
