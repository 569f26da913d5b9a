"""Direction parallelism composed with sharding (``dist.mode=directions dist.shard_size=S``), with
real processes (Gloo, CPU): 4 ranks as a (2, 2) mesh, each row of 2 ranks one FSDP2-sharded copy,
the 2 rows splitting MeZO's q and FZOO's N directions, equal one in-place process bit for bit
(losses, every rank's shards); and full replicas on an in-place engine (``dist.mode=directions``,
S = 1), which replay the other ranks' moves so that they end on the one-process bits too."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import ShardTiny, finish_rank, shard_batch, spawn_ranks, z_chunk

#: method -> (optimizer class path, hyperparameters): q and N not multiples of the 2 groups
SPLIT = {
    "mezo": ("zobench.optim.mezo.MeZO", dict(lr=1e-2, eps=1e-2, num_directions=3, weight_decay=0.1)),
    "mezo_one_sided": ("zobench.optim.mezo.MeZO", dict(lr=1e-2, eps=1e-2, num_directions=3, one_sided=True)),
    "fzoo": ("zobench.optim.fzoo.FZOO", dict(lr=1e-2, eps=1e-2, num_directions=5)),
}
STEPS = 3


Tiny = functools.partial(ShardTiny, 41, (7, 5))  # 41, 7, 5 and 3 rows: uneven over 2 ranks
batch = functools.partial(shard_batch, 41)


def train(method: str, model: nn.Module, engine, share=None, replay=None):
    """``STEPS`` steps on the whole batch; the losses and the forwards this process made."""
    from zobench.build import resolve_target

    path, hyper = SPLIT[method]
    optimizer = resolve_target(path, "optimizer._target_")(list(model.parameters()), engine=engine, seed=5, **hyper)
    optimizer.share_directions(share)
    ids, labels = batch()
    forwards = [0]

    def closure():
        if replay is not None and replay.active:  # what ``directions.Replayable`` answers
            return torch.zeros(())
        forwards[0] += 1
        return nn.functional.cross_entropy(model(ids), labels)

    return [float(optimizer.step(closure)) for _ in range(STEPS)], forwards[0]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as tdist

    from zobench.dist.context import DistContext
    from zobench.dist.directions import DirectionShare, Replay
    from zobench.dist.sharded import shard_model
    from zobench.engine import InPlaceEngine, directions
    from zobench.engine.sharded import ShardedEngine, global_offset

    directions.Z_CHUNK = 32
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world_size=world, mode="directions", backend="gloo")
    results = {}
    with torch.no_grad():
        for method in SPLIT:
            replay = Replay()
            model = shard_model(Tiny(), world, shard_size=2)
            share = DirectionShare(ctx, shard_size=2, replay=replay)
            losses, forwards = train(method, model, ShardedEngine(), share, replay)
            shards = {n: (global_offset(p), p.to_local().clone()) for n, p in model.named_parameters()}
            results[method] = {"losses": losses, "forwards": forwards, "shards": shards}
            replay = Replay()  # full replicas on the in-place engine: every rank a group of its own
            model = Tiny()
            losses, forwards = train(method, model, InPlaceEngine(), DirectionShare(ctx, replay=replay), replay)
            weights = {n: p.detach().clone() for n, p in model.named_parameters()}
            results[f"{method}/replicas"] = {"losses": losses, "forwards": forwards, "weights": weights}
    torch.save(results, Path(out) / f"rank{rank}.pt")
    finish_rank()


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    return spawn_ranks(_rank, 4, tmp_path_factory.mktemp("sharded_directions"))


@pytest.fixture(scope="module")
def one_process():
    from zobench.engine import InPlaceEngine

    results = {}
    with z_chunk(32), torch.no_grad():
        for method in SPLIT:
            model = Tiny()
            losses, forwards = train(method, model, InPlaceEngine())
            weights = {n: p.detach().clone() for n, p in model.named_parameters()}
            results[method] = {"losses": losses, "forwards": forwards, "weights": weights}
    return results


@pytest.mark.slow
@pytest.mark.parametrize("method", list(SPLIT))
def test_two_groups_of_two_shards_split_the_directions_and_equal_one_process(method, four_ranks, one_process):
    one = one_process[method]
    assert one["losses"][0] != one["losses"][-1]  # the steps moved the weights
    for rank in four_ranks:
        mine = rank[method]
        assert mine["losses"] == one["losses"]  # the same floats: every group ends on one process's bits
        for name, (offset, shard) in mine["shards"].items():
            whole = one["weights"][name].reshape(-1)
            assert torch.equal(shard.reshape(-1), whole[offset : offset + shard.numel()]), name
    # the rows split the directions: together they made the one-process forwards, once each
    # (ℓ0, FZOO's and one-sided MeZO's, on every row)
    rows = [four_ranks[0][method]["forwards"], four_ranks[2][method]["forwards"]]
    assert four_ranks[1][method]["forwards"] == rows[0] and four_ranks[3][method]["forwards"] == rows[1]
    shared = STEPS if method != "mezo" else 0
    assert sum(rows) - shared == one["forwards"] and 0 < rows[0] < rows[1] < one["forwards"]


@pytest.mark.slow
@pytest.mark.parametrize("method", list(SPLIT))
def test_full_replicas_on_an_in_place_engine_replay_the_others_moves(method, four_ranks, one_process):
    """Without the replay, a rank would evaluate its first direction on θ without the rounding of
    the directions before it, and the replicas would drift apart by ulps."""
    one = one_process[method]
    for rank in four_ranks:
        mine = rank[f"{method}/replicas"]
        assert mine["losses"] == one["losses"]
        for name, tensor in mine["weights"].items():
            assert torch.equal(tensor, one["weights"][name]), name


@pytest.mark.slow
def test_a_run_of_two_groups_of_two_shards_equals_one_process_run(tmp_path):
    """``zobench.run`` on 4 ranks with ``dist.mode=directions dist.shard_size=2`` (FZOO, N = 4): each
    row computes its halves of the batch (losses reduced over the row), the rows split the
    directions; the losses, test accuracy and the final weights (gathered by rank 0) are the
    one-process in-place run's, the rows pass the replicas' guard, and the summary counts the
    one-process forwards and this rank's all-gathers."""
    from tests.helpers import BASE, final_weights, run_ranks, run_single, train_losses

    overrides = [*BASE, "optimizer=fzoo", "optimizer.num_directions=4", "engine.backend=torch", "engine.mode=inplace"]
    overrides += ["train.save_final=true"]
    dist = ["dist.mode=directions", "dist.shard_size=2"]
    ranks = run_ranks(4, [([*overrides, *dist], tmp_path / "four")], tmp_path / "out")
    one = run_single(overrides, tmp_path / "one")
    four = ranks[0][0]["summary"]
    assert four["world_size"] == 4 and four["dist_mode"] == "directions" and four["dist_direction_groups"] == 2
    assert train_losses(tmp_path / "four") == pytest.approx(train_losses(tmp_path / "one"), rel=1e-5, abs=1e-6)
    assert four["test_accuracy"] == one["test_accuracy"] and four["forward_passes"] == one["forward_passes"]
    whole, ref = final_weights(tmp_path / "four"), final_weights(tmp_path / "one")
    for name in ref:
        torch.testing.assert_close(whole[name], ref[name], rtol=1e-5, atol=1e-6)
    # a row's forwards: ℓ0 and 2 of the 4 directions, 3 a step; half of every weight gathered each
    model_bytes = sum(t.numel() * t.element_size() for t in whole.values())
    assert four["comm_allgather_bytes_per_step"] == 3 * model_bytes // 2
    assert "trajectory" not in four or not four["trajectory"]  # a row's closure values are its share


def test_shard_size_is_refused_where_it_cannot_apply():
    from zobench.dist.choice import strategy_for
    from zobench.dist.context import DistContext
    from zobench.dist.sharded_strategy import ShardedDirections
    from zobench.dist.strategy import DirectionParallel
    from zobench.errors import ConfigError

    four = DistContext(rank=0, world_size=4, mode="directions")
    assert isinstance(strategy_for(four, "fzoo", {"shard_size": 2}), ShardedDirections)
    assert isinstance(strategy_for(four, "fzoo", {"shard_size": None}), DirectionParallel)
    for size in (4, 3):  # one group of every rank; not a divisor
        with pytest.raises(
            ConfigError, match=f"dist.shard_size={size} with dist.mode=directions: .* is dist.mode=sharded"
        ):
            strategy_for(four, "fzoo", {"shard_size": size})
    data = DistContext(rank=0, world_size=4, mode="data")
    with pytest.raises(ConfigError, match="dist.shard_size=2 with dist.mode=data: a shard size applies to dist.mode"):
        strategy_for(data, "mezo", {"shard_size": 2})


def test_sharded_directions_refuses_a_method_with_one_direction():
    from types import SimpleNamespace

    from zobench.dist.context import DistContext
    from zobench.dist.sharded_strategy import ShardedDirections
    from zobench.engine.sharded import ShardedEngine
    from zobench.errors import ConfigError
    from zobench.optim.hizoo import HiZOO

    strategy = ShardedDirections(DistContext(rank=0, world_size=4, mode="directions"), "hizoo", 2)
    strategy.rows = object()  # as prepare_model leaves it (the objective is not built: refused before)
    learner = SimpleNamespace(
        optimizer=HiZOO([torch.zeros(2, requires_grad=True)], engine=ShardedEngine()), objective=None
    )
    with pytest.raises(ConfigError, match="HiZOO evaluates one direction per step; .* use dist.mode=sharded"):
        strategy.attach(learner, None, None)
    from zobench.optim.mezo import MeZO

    learner.optimizer = MeZO([torch.zeros(2, requires_grad=True)], engine=ShardedEngine())  # q = 1
    with pytest.raises(ConfigError, match="optimizer.num_directions=1 is one direction per step"):
        strategy.attach(learner, None, None)
