"""``dist.mode=sharded`` with real processes (Gloo, CPU): ZO steps on FSDP2-sharded parameters over
2 ranks equal one process's in-place steps bit for bit (losses, every rank's local shards against
the same rows of the one-process weights, the methods' state shards), for MeZO (Gaussian and
Rademacher), HiZOO, ZO-Adam and FZOO, uneven row counts included; each rank holds half the
parameter bytes."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from tests.helpers import ShardTiny, finish_rank, free_port, shard_batch, spawn_ranks, z_chunk

#: method -> (optimizer class path, hyperparameters): each exercises another update path
METHODS = {
    "mezo": ("zobench.optim.mezo.MeZO", dict(lr=1e-2, eps=1e-2, weight_decay=0.1)),
    "mezo_rademacher": ("zobench.optim.mezo.MeZO", dict(lr=1e-2, eps=1e-2, distribution="rademacher")),
    "hizoo": ("zobench.optim.hizoo.HiZOO", dict(lr=1e-2, eps=1e-2, hessian_smooth=0.5)),
    "zo_adam": ("zobench.optim.zo_adam.ZOAdam", dict(lr=1e-2, eps=1e-2)),
    "fzoo": ("zobench.optim.fzoo.FZOO", dict(lr=1e-2, eps=1e-2, num_directions=4)),
    "zo_sgd_momentum": ("zobench.optim.zo_sgd_momentum.ZOSGDMomentum", dict(lr=1e-2, eps=1e-2)),
    "zo_sgd_sign": ("zobench.optim.zo_sgd_sign.ZOSGDSign", dict(lr=1e-2, eps=1e-2, sign="elementwise", base="adamw")),
    "zo_sgd_cons": ("zobench.optim.zo_sgd_cons.ZOSGDCons", dict(lr=1e-2, eps=1e-2)),
    # low-rank z: each rank forms only the row blocks of its shard from the small factors
    "lozo": ("zobench.optim.lozo.LOZO", dict(lr=1e-2, eps=1e-2, rank=2, lazy_steps=2)),
    "subzero": ("zobench.optim.subzero.SubZero", dict(lr=1e-2, eps=1e-2, rank=2, refresh_steps=2)),
    "tezo": ("zobench.optim.tezo.TeZO", dict(lr=1e-2, eps=1e-2, rank=2, variant="adam")),
    "lezo": ("zobench.optim.lezo.LeZO", dict(lr=1e-2, eps=1e-2, n_drop=1)),  # layers.0 or layers.1 left out
    # whole-tensor statistics on the gathered matrix: Sparse-MeZO's quantile, DiZO's distances (a round at step 2)
    "sparse_mezo": ("zobench.optim.sparse_mezo.SparseMeZO", dict(lr=1e-2, eps=1e-2, sparsity=0.5)),
    "dizo": (
        "zobench.optim.dizo.DiZO",
        dict(lr=1e-2, eps=1e-2, interval=2, projection_iters=2, projection_eps=0.1, projected=("layers.",)),
    ),
    "mezo_svrg": ("zobench.optim.mezo_svrg.MeZOSVRG", dict(lr=1e-2, eps=1e-2, q=2)),  # anchor, inner, anchor
    # forward-mode AD: each module's gathered weights made dual (θ, whole z) in its forward
    "forward_gradient": ("zobench.optim.forward_gradient.ForwardGradient", dict(lr=1e-2)),
}
STATE = {
    "hizoo": ["hessian"],
    "zo_adam": ["exp_avg", "exp_avg_sq"],
    "zo_sgd_momentum": ["momentum"],
    "zo_sgd_sign": ["exp_avg", "exp_avg_sq"],
    "dizo": ["theta0"],
    "mezo_svrg": ["theta_bar"],
}


def shard_state(optimizer, p, method: str) -> dict:
    """The parameter-sized state of ``p`` (a rank's shard when sharded) under ``STATE[method]``."""
    return {k: optimizer.state[p][k].clone() for k in STATE.get(method, []) if k in optimizer.state[p]}


STEPS = 3
ROOT_REPLICATED = ("mezo", "hizoo")  # dist.root=replicated: stateless and with parameter-sized state


Tiny = functools.partial(ShardTiny, 37, (5, 6))  # 37, 5, 6 and 3 rows: uneven over 2 ranks
batch = functools.partial(shard_batch, 37)


def fresh_optimizer(method: str, model: nn.Module, engine):
    from zobench.build import resolve_target

    path, hyper = METHODS[method]
    cls = resolve_target(path, "optimizer._target_")
    # methods that read names (LeZO's blocks, SubZero's adapters, DiZO's projected) get (name, p)
    params = list(model.named_parameters() if getattr(cls, "takes_names", False) else model.parameters())
    return cls(params, engine=engine, seed=5, **hyper)


def one_step(optimizer, model: nn.Module) -> float:
    ids, labels = batch()
    return float(optimizer.step(lambda: nn.functional.cross_entropy(model(ids), labels)))


def train(method: str, model: nn.Module, engine) -> list[float]:
    optimizer = fresh_optimizer(method, model, engine)
    losses = [one_step(optimizer, model) for _ in range(STEPS)]
    return losses, optimizer


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as tdist

    from zobench.dist.sharded import shard_model
    from zobench.engine import directions
    from zobench.engine.sharded import ShardedEngine, global_offset

    directions.Z_CHUNK = 32  # the embedding's z in several chunks: the sequential draw is exercised
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    with torch.no_grad():
        for method in METHODS:
            model = shard_model(Tiny(), world)
            losses, optimizer = train(method, model, ShardedEngine(model))
            named = list(model.named_parameters())
            results[method] = {
                "losses": losses,
                "shards": {n: (global_offset(p), p.to_local().clone()) for n, p in named},
                "state": {n: shard_state(optimizer, p, method) for n, p in named},
                "bytes": sum(p.to_local().numel() * p.element_size() for _, p in named),
            }
    # dist.root=replicated: the embedding and the head (the root's own parameters) whole on each rank
    from zobench.dist.sharded import gather_bytes
    from zobench.engine.sharded import is_sharded, local_tensor

    for method in ROOT_REPLICATED:
        model = shard_model(Tiny(), world, root="replicated")
        losses, optimizer = train(method, model, ShardedEngine())
        named = list(model.named_parameters())
        results[f"replicated_{method}"] = {
            "losses": losses,
            "shards": {n: (global_offset(p), local_tensor(p).clone()) for n, p in named},
            "state": {n: {k: optimizer.state[p][k].clone() for k in STATE.get(method, [])} for n, p in named},
            "sharded": {n: is_sharded(p) for n, p in named},
            "gathered": gather_bytes(model, world),
        }
    # a model of 403 MB in float32, built on the meta device and materialised shard by shard:
    # what each rank holds (no rank ever holds the whole model)
    with torch.device("meta"):
        big = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(6)])
    shard_model(big, world, device="cpu")
    big.to_empty(device="cpu")
    results["big"] = {
        "whole": sum(p.numel() * p.element_size() for p in big.parameters()),
        "local": sum(p.to_local().numel() * p.element_size() for p in big.parameters()),
        "storage": sum(p.to_local().untyped_storage().nbytes() for p in big.parameters()),
    }
    torch.save(results, Path(out) / f"rank{rank}.pt")
    finish_rank()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return spawn_ranks(_rank, 2, tmp_path_factory.mktemp("sharded"))


@pytest.fixture(scope="module")
def one_process():
    from zobench.engine import InPlaceEngine, VirtualEngine

    results = {}
    with z_chunk(32), torch.no_grad():
        for method in METHODS:
            model = Tiny()
            # the dual forward is the virtual engine's in one process (no weight is moved for it)
            engine = VirtualEngine(model) if method == "forward_gradient" else InPlaceEngine()
            losses, optimizer = train(method, model, engine)
            named = list(model.named_parameters())
            results[method] = {
                "losses": losses,
                "weights": {n: p.detach().clone() for n, p in named},
                "state": {n: shard_state(optimizer, p, method) for n, p in named},
                "bytes": sum(p.numel() * p.element_size() for _, p in named),
            }
    return results


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_two_sharded_ranks_equal_one_process_bit_for_bit(method, two_ranks, one_process):
    one = one_process[method]
    for rank in two_ranks:
        mine = rank[method]
        assert mine["losses"] == one["losses"]  # the same floats: the gathered weights are one process's
        for name, (offset, shard) in mine["shards"].items():
            whole = one["weights"][name].reshape(-1)
            assert torch.equal(shard.reshape(-1), whole[offset : offset + shard.numel()]), name
            assert mine["state"][name].keys() == one["state"][name].keys()
            for key, buffer in mine["state"][name].items():
                ref = one["state"][name][key].reshape(-1)
                assert torch.equal(buffer.reshape(-1), ref[offset : offset + buffer.numel()]), (name, key)
    # the shards cover every element once: together they are the whole model
    assert sum(r[method]["bytes"] for r in two_ranks) == one["bytes"]
    assert one["losses"][0] != one["losses"][-1]  # the steps moved the weights


@pytest.mark.slow
def test_each_rank_holds_about_half_the_parameter_bytes(two_ranks, one_process):
    whole = one_process["mezo"]["bytes"]
    for rank in two_ranks:
        assert 0.4 * whole <= rank["mezo"]["bytes"] <= 0.6 * whole
        big = rank["big"]  # 403 MB of Linear layers: each rank allocates half of it
        assert big["whole"] > 400e6 and big["local"] == big["whole"] // 2
        assert big["storage"] <= 0.51 * big["whole"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ROOT_REPLICATED)
def test_a_replicated_root_is_whole_on_every_rank_and_equals_one_process(method, two_ranks, one_process):
    """``dist.root=replicated``: the embedding and head stay whole plain tensors on both ranks (the
    same bits, state included), the blocks are sharded, the steps are one process's, and only the
    blocks count as gathered."""
    one = one_process[method]
    root = {"embed.weight", "head.weight", "head.bias"}
    for rank in two_ranks:
        mine = rank[f"replicated_{method}"]
        assert mine["losses"] == one["losses"]
        assert {n for n, sharded in mine["sharded"].items() if not sharded} == root
        for name, (offset, shard) in mine["shards"].items():
            whole = one["weights"][name].reshape(-1)
            if name in root:
                assert offset == 0 and shard.numel() == whole.numel(), name
            assert torch.equal(shard.reshape(-1), whole[offset : offset + shard.numel()]), name
            for key, buffer in mine["state"][name].items():
                ref = one["state"][name][key].reshape(-1)
                assert torch.equal(buffer.reshape(-1), ref[offset : offset + buffer.numel()]), (name, key)
        blocks = sum(w.numel() * w.element_size() for n, w in one["weights"].items() if n not in root)
        assert mine["gathered"] == blocks // 2


def test_a_root_placement_is_refused_outside_sharded_mode():
    from zobench.dist.choice import strategy_for
    from zobench.dist.context import DistContext
    from zobench.dist.sharded_strategy import Sharded
    from zobench.errors import ConfigError

    sharded = strategy_for(DistContext(rank=0, world_size=2, mode="sharded"), "mezo", {"root": "replicated"})
    assert isinstance(sharded, Sharded) and sharded.root == "replicated"
    for mode in ("data", "directions"):
        with pytest.raises(
            ConfigError, match=f"dist.root=replicated with dist.mode={mode}: .* applies to dist.mode=sharded"
        ):
            strategy_for(DistContext(rank=0, world_size=2, mode=mode), "mezo", {"root": "replicated"})
    with pytest.raises(ConfigError, match="dist.root=whole: expected one of sharded, replicated"):
        from zobench.dist.sharded import shard_model

        shard_model(Tiny(), 2, root="whole")


def test_sharded_is_refused_on_one_rank_and_with_another_engine():
    from zobench.build.optimizers import sharded_engine
    from zobench.dist.choice import strategy_for
    from zobench.dist.context import DistContext
    from zobench.dist.sharded_strategy import Sharded
    from zobench.dist.strategy import Single
    from zobench.engine.sharded import ShardedEngine
    from zobench.errors import ConfigError

    with pytest.raises(ConfigError, match="dist.mode=sharded needs several ranks"):
        Sharded(DistContext())
    with pytest.raises(ConfigError, match="dist.mode=sharded needs several ranks .* drop dist.mode=sharded"):
        strategy_for(DistContext(), "mezo", {"mode": "sharded"})
    assert isinstance(strategy_for(DistContext(), "mezo", {"mode": "data"}), Single)  # one process: dist ignored
    assert isinstance(strategy_for(DistContext(rank=0, world_size=2, mode="sharded"), "mezo"), Sharded)
    with pytest.raises(ConfigError, match="engine.mode=virtual: set engine.backend=torch engine.mode=inplace"):
        sharded_engine({"backend": "torch", "mode": "virtual"}, Tiny())
    with pytest.raises(ConfigError, match="got engine.backend=auto engine.mode=inplace"):
        sharded_engine({"backend": "auto", "mode": "inplace"}, Tiny())
    assert isinstance(sharded_engine({"backend": "torch", "mode": "inplace"}, Tiny()), ShardedEngine)


def test_sharded_refuses_a_first_order_learner_and_another_engine(monkeypatch):
    from types import SimpleNamespace

    from zobench.dist.context import DistContext
    from zobench.dist.sharded_strategy import Sharded
    from zobench.engine import InPlaceEngine
    from zobench.errors import ConfigError
    from zobench.train.learners import ZOLearner

    first_order = SimpleNamespace(optimizer=torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1))
    with pytest.raises(ConfigError, match="optimizer=sgd is a first-order baseline: it runs in one process"):
        Sharded(DistContext(rank=0, world_size=2), "sgd").attach(first_order, None, None)
    strategy = Sharded(DistContext(rank=0, world_size=2), "mezo")
    from zobench.optim.forward_gradient import ForwardGradient
    from zobench.optim.mezo import MeZO

    learner = ZOLearner.__new__(ZOLearner)
    learner.optimizer = MeZO([torch.zeros(2, requires_grad=True)], engine=InPlaceEngine())
    with pytest.raises(ConfigError, match="the engine is InPlaceEngine"):
        strategy.attach(learner, None, None)
    from zobench.dist import sharded

    monkeypatch.setitem(sharded.REFUSED, "forward_gradient", "why; run it in one process, offload=cpu")
    learner.optimizer = ForwardGradient.__new__(ForwardGradient)  # its class is what is refused
    with pytest.raises(ConfigError, match="optimizer=forward_gradient does not run on sharded .* offload=cpu"):
        strategy.attach(learner, None, None)


def test_every_zo_method_runs_sharded_or_is_refused_with_its_reason():
    """A new method must be added to ``sharded.METHODS`` with its case in ``METHODS`` here (the
    bit-for-bit test), or to ``sharded.REFUSED`` with why."""
    from zobench.dist.sharded import METHODS as RUN
    from zobench.dist.sharded import REFUSED
    from zobench.optim.registry import methods

    zo = {name for name, cls in methods().items() if cls.__module__.startswith("zobench.optim.")}
    assert zo == set(RUN) | set(REFUSED) and not set(RUN) & set(REFUSED)
    assert set(RUN) == {m.split("_rademacher")[0] for m in METHODS}


def test_blocks_are_the_outermost_no_split_modules_else_module_list_children():
    model = Tiny()
    from zobench.dist.sharded import blocks

    assert blocks(model) == list(model.layers)
    model._no_split_modules = ["Linear"]
    assert blocks(model) == [*model.layers, model.head]


# -- the mode end to end (zobench.run under 2 spawned ranks) -------------------------------------------
SHARDED = ("dist.mode=sharded", "engine.backend=torch", "engine.mode=inplace", "train.save_final=true")


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    # mezo: dev at steps 2, 4, 5: best/ written mid-run (streamed by rank 0), read back by rows
    [
        ("optimizer=mezo", "train.eval_every=2"),
        ("optimizer=zo_adam", "tuning=lora"),
        ("optimizer=hizoo", "dist.root=replicated"),
        ("optimizer=subzero", "tuning=lora"),  # low-rank z of LoRA's factors in their near-square shape
    ],
    ids=["mezo", "lora", "root_replicated", "subzero_lora"],
)
def test_sharded_runs_equal_one_process_run(extra, tmp_path):
    from tests.helpers import BASE, final_weights, run_ranks, run_single, train_losses

    overrides = [*BASE, *SHARDED, *extra]
    ranks = run_ranks(2, [(overrides, tmp_path / "two")], tmp_path / "out")
    one = run_single([o for o in overrides if not o.startswith("dist.")], tmp_path / "one")
    two = ranks[0][0]["summary"]
    assert train_losses(tmp_path / "two") == pytest.approx(train_losses(tmp_path / "one"), rel=1e-5, abs=1e-6)
    assert two["test_accuracy"] == one["test_accuracy"] and two["world_size"] == 2
    assert two["tested_step"] == one["tested_step"] and two["best_step"] == one["best_step"]
    whole, ref = final_weights(tmp_path / "two"), final_weights(tmp_path / "one")
    assert whole.keys() == ref.keys()
    for name in ref:  # one copy of the whole weights, gathered from the shards
        torch.testing.assert_close(whole[name], ref[name], rtol=1e-5, atol=1e-6)
    # rank 0's trajectory log replays in one process to the sharded run's weights, bit for bit
    from zobench.trajectory.replay import replay

    replayed = dict(replay(tmp_path / "two", two["tested_step"]).named)  # final/ holds the tested step
    assert two["trajectory"]["records"] == 5
    for name, tensor in whole.items():
        assert torch.equal(replayed[name].detach().cpu(), tensor), name
    # FSDP's all-gathers: half of every weight (frozen ones included) per forward, 2 forwards a step
    assert two["comm_bytes_per_step"] > two["comm_allgather_bytes_per_step"] > 0
    # loaded by shards (build/by_shards.py): each rank allocated half the parameters, never the whole
    assert two["load_peak_memory_bytes"] > 0 and one["load_peak_memory_bytes"] > 0
    assert 0 < two["pre_load_memory_bytes"] < two["peak_memory_bytes"]  # the process before the model
    if "dist.root=replicated" in extra:  # the embeddings, head and final norm whole on each rank
        root = sum(t.numel() * t.element_size() for n, t in whole.items() if ".layers." not in n)
        assert two["loaded_param_bytes_per_rank"] == (two["param_bytes"] - root) // 2 + root
        # HiZOO's 3 forwards a step, each gathering the other half of the blocks only
        assert two["comm_allgather_bytes_per_step"] == 3 * ((two["param_bytes"] - root) // 2)
        return
    assert abs(two["loaded_param_bytes_per_rank"] - two["param_bytes"] / 2) <= 0.01 * two["param_bytes"]
    if "tuning=lora" not in extra:  # every weight trained: the final file holds them all
        model_bytes = sum(t.numel() * t.element_size() for t in whole.values())
        assert two["comm_allgather_bytes_per_step"] == 2 * model_bytes // 2
        import transformers  # final/ loads as a Hugging Face model: the one-process final's weights

        loaded = dict(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final").named_parameters())
        assert all(torch.equal(loaded[name], tensor) for name, tensor in whole.items())
    else:  # adapters only: no model to load
        assert not (tmp_path / "two" / "final" / "model.safetensors.index.json").exists()


@pytest.mark.slow
def test_a_killed_sharded_rank_stops_both_and_the_run_resumes_on_2_ranks_or_1(tmp_path):
    """SIGKILL of rank 1 of a sharded ZO-Adam run: both exit in bounded time; the checkpoint (each
    rank's shards of the weights and moments: DCP) resumes under the same command and in one
    process, each to the uninterrupted one-process in-place run's weights."""
    from tests.helpers import SMOKE, kill_a_rank_and_resume

    args = [*SMOKE, "optimizer=zo_adam", "train.steps=12", "train.eval_every=12", "train.checkpoint_every=3"]
    args += ["train.save_final=true", "train.log_every=1", "engine.backend=torch", "engine.mode=inplace"]
    kill_a_rank_and_resume(tmp_path, args, ["dist.mode=sharded"], step=7)


def _hsdp_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as tdist

    from zobench.dist.context import DistContext
    from zobench.dist.sharded import shard_model
    from zobench.dist.sharded_strategy import Sharded
    from zobench.engine.sharded import ShardedEngine, global_offset

    tdist.init_process_group("gloo", rank=rank, world_size=world)
    strategy = Sharded(DistContext(rank=rank, world_size=world, mode="sharded"), "zo_adam", shard_size=2)
    results = {}
    with torch.no_grad():
        for method in ("mezo", "zo_adam"):
            model = shard_model(Tiny(), world, shard_size=2)
            losses, optimizer = train(method, model, ShardedEngine())
            named = list(model.named_parameters())
            # a DCP checkpoint of the (2, 2) mesh: the replicas' rows written once
            strategy.save_checkpoint(Path(out) / method, STEPS, named, optimizer, {"step": STEPS})
            results[method] = {
                "losses": losses,
                "shards": {n: (global_offset(p), p.to_local().clone()) for n, p in named},
                "state": {n: {k: optimizer.state[p][k].clone() for k in STATE.get(method, [])} for n, p in named},
            }
    torch.save(results, Path(out) / f"rank{rank}.pt")
    finish_rank()


@pytest.mark.slow
def test_hsdp_two_replicas_of_two_shards_equal_one_process(tmp_path, one_process):
    """4 ranks, ``shard_size=2`` (a (2, 2) mesh): ranks 0, 1 and ranks 2, 3 each shard one copy;
    ranks 0 and 2 (1 and 3) hold the same rows, bit-identical to one process's."""
    mp.spawn(_hsdp_rank, args=(4, free_port(), str(tmp_path)), nprocs=4, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(4)]
    for method in ("mezo", "zo_adam"):
        one = one_process[method]
        for r, rank in enumerate(ranks):
            assert rank[method]["losses"] == one["losses"]
            for name, (offset, shard) in rank[method]["shards"].items():
                assert torch.equal(shard.reshape(-1), one["weights"][name].reshape(-1)[offset : offset + shard.numel()])
                assert offset == ranks[r % 2][method]["shards"][name][0]  # the replica of rank r mod 2
                for key, buffer in rank[method]["state"][name].items():
                    ref = one["state"][name][key].reshape(-1)
                    assert torch.equal(buffer.reshape(-1), ref[offset : offset + buffer.numel()])
    from zobench.checkpoint import load_checkpoint
    from zobench.dist.checkpoints import load_distributed
    from zobench.engine import InPlaceEngine

    checkpoint = load_checkpoint(tmp_path / "zo_adam")  # read in one process: the whole model and state
    with torch.no_grad():
        model = Tiny()
        optimizer = fresh_optimizer("zo_adam", model, InPlaceEngine())
        optimizer.load_state_dict(
            load_distributed(checkpoint, list(model.named_parameters()), list(model.parameters()))
        )
        for name, p in model.named_parameters():
            assert torch.equal(p, one_process["zo_adam"]["weights"][name])
            assert all(torch.equal(optimizer.state[p][k], v) for k, v in one_process["zo_adam"]["state"][name].items())


# -- checkpoints, best/ and final/ without a whole copy on any rank ------------------------------------
CKPT_METHODS = ("zo_adam", "hizoo")  # parameter-sized state: DCP writes each rank's rows of it


def _vm(key: str) -> int:
    """This process's ``VmRSS`` / ``VmHWM`` (peak RSS since the last ``clear_refs``), bytes."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def _save_and_resume_rank(rank: int, world: int, port: int, out: str) -> None:
    """Per method: the streamed base hash, STEPS steps, a DCP checkpoint and a streamed weights
    file; a fresh sharded model resumed from the checkpoint takes one more step beside the
    original. Then a 403 MB model: the peak RSS of the hash, a checkpoint and a weights file."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as tdist

    from zobench.checkpoint import load_checkpoint, read_into
    from zobench.dist.checkpoints import load_distributed, streamed_sha256
    from zobench.dist.context import DistContext
    from zobench.dist.sharded import shard_model
    from zobench.dist.sharded_strategy import Sharded
    from zobench.engine import directions
    from zobench.engine.sharded import ShardedEngine

    directions.Z_CHUNK = 32
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    strategy = Sharded(DistContext(rank=rank, world_size=world, mode="sharded"), "zo_adam")
    root, results = Path(out), {}
    with torch.no_grad():
        for method in CKPT_METHODS:
            model = shard_model(Tiny(), world)
            named = list(model.named_parameters())
            base = streamed_sha256(named, rank == 0)
            losses, optimizer = train(method, model, ShardedEngine())
            strategy.save_checkpoint(root / method / "checkpoint", STEPS, named, optimizer, {"step": STEPS})
            strategy.write_weights(named, root / method / "final.safetensors")
            read = shard_model(Tiny(), world)  # best/'s way back: each rank reads its rows of the file
            read_into(list(read.named_parameters()), root / method / "final.safetensors")
            read_back = all(torch.equal(p.to_local(), q.to_local()) for (_, p), q in zip(named, read.parameters()))
            resumed = shard_model(Tiny(), world)  # the initial weights, then the checkpoint's
            again_named = list(resumed.named_parameters())
            again = fresh_optimizer(method, resumed, ShardedEngine())
            checkpoint = load_checkpoint(root / method / "checkpoint")
            again.load_state_dict(load_distributed(checkpoint, again_named, list(resumed.parameters())))
            extra = [one_step(optimizer, model), one_step(again, resumed)]
            results[method] = {
                "base": base,
                "losses": losses,
                "extra": extra,
                "read_back": read_back,
                "same": all(torch.equal(p.to_local(), q.to_local()) for (_n, p), (_m, q) in zip(named, again_named)),
            }
        # dist.root=replicated: the embedding and head are plain whole tensors in the DCP checkpoint
        from zobench.engine.sharded import local_tensor

        model = shard_model(Tiny(), world, root="replicated")
        named = list(model.named_parameters())
        _, optimizer = train("hizoo", model, ShardedEngine())
        strategy.save_checkpoint(root / "replicated" / "checkpoint", STEPS, named, optimizer, {"step": STEPS})
        resumed = shard_model(Tiny(), world, root="replicated")
        again_named, again = list(resumed.named_parameters()), fresh_optimizer("hizoo", resumed, ShardedEngine())
        checkpoint = load_checkpoint(root / "replicated" / "checkpoint")
        again.load_state_dict(load_distributed(checkpoint, again_named, list(resumed.parameters())))
        results["replicated"] = {
            "same": all(torch.equal(local_tensor(p), local_tensor(q)) for (_n, p), (_m, q) in zip(named, again_named)),
            "extra": [one_step(optimizer, model), one_step(again, resumed)],
        }
        # 403 MB of float32 weights (6 x 16.8M, each weight 67 MB): no rank holds more than its
        # shards and one whole parameter while hashing, checkpointing and writing a weights file
        with torch.device("meta"):
            big = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(6)])
        shard_model(big, world, device="cpu")
        big.to_empty(device="cpu")
        for p in big.parameters():
            p.to_local().normal_()
        big_named = list(big.named_parameters())
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here
        before = _vm("VmRSS")
        streamed_sha256(big_named, rank == 0)
        mezo = fresh_optimizer("mezo", big, ShardedEngine())
        strategy.save_checkpoint(root / "big" / "checkpoint", 1, big_named, mezo, {"step": 1})
        strategy.write_weights(big_named, root / "big" / "final.safetensors")
        results["big"] = {
            "rise": _vm("VmHWM") - before,
            "whole": sum(p.numel() * 4 for p in big.parameters()),
            "largest": max(p.numel() * 4 for p in big.parameters()),
        }
    torch.save(results, root / f"rank{rank}.pt")
    finish_rank()


@pytest.fixture(scope="module")
def saved_on_two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    return out, spawn_ranks(_save_and_resume_rank, 2, out)


@pytest.mark.slow
@pytest.mark.parametrize("method", CKPT_METHODS)
def test_a_dcp_checkpoint_of_two_ranks_resumes_on_two_ranks_and_in_one_process(method, saved_on_two_ranks, one_process):
    """Each rank wrote its shards of the weights and of the method's state (DCP): two fresh ranks
    and one process (no process group) read them back, and the next step equals the
    uninterrupted run's, bit for bit; the streamed base hash is one process's; the weights file
    rank 0 streamed is one process's weights."""
    from safetensors.torch import load_file

    from zobench.checkpoint import load_checkpoint
    from zobench.dist.checkpoints import load_distributed
    from zobench.engine import InPlaceEngine
    from zobench.trajectory.log import weights_sha256

    out, ranks = saved_on_two_ranks
    for rank in ranks:
        assert (
            rank[method]["same"]
            and rank[method]["read_back"]
            and rank[method]["losses"] == one_process[method]["losses"]
        )
        assert rank[method]["extra"][0] == rank[method]["extra"][1]  # resumed on 2 ranks: the same step
    assert (
        ranks[0][method]["base"] == weights_sha256(list(Tiny().named_parameters())) and ranks[1][method]["base"] == ""
    )
    checkpoint = load_checkpoint(out / method / "checkpoint")
    assert checkpoint.has_weights and not checkpoint.tensors and checkpoint.distributed.name == "weights"
    assert sorted(f.name for f in checkpoint.distributed.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    with z_chunk(32), torch.no_grad():
        model = Tiny()
        optimizer = fresh_optimizer(method, model, InPlaceEngine())
        named = list(model.named_parameters())
        optimizer.load_state_dict(load_distributed(checkpoint, named, list(model.parameters())))
        for name, p in named:
            assert torch.equal(p, one_process[method]["weights"][name]), name
            for key, value in one_process[method]["state"][name].items():
                assert torch.equal(optimizer.state[p][key], value), (name, key)
        assert one_step(optimizer, model) == ranks[0][method]["extra"][0]  # resumed in one process
    final = load_file(str(out / method / "final.safetensors"))
    assert final.keys() == one_process[method]["weights"].keys()
    for name, tensor in final.items():
        assert torch.equal(tensor, one_process[method]["weights"][name]), name


@pytest.mark.slow
def test_no_rank_holds_more_than_its_shards_and_one_parameter_while_saving(saved_on_two_ranks):
    """403 MB of weights over 2 ranks (each holds 201 MB): the streamed hash, a DCP checkpoint and
    rank 0's streamed weights file raise no rank's peak RSS by more than one whole parameter
    (67 MB) and the all-gather's receive buffer of it, plus slack (measured: 134 MB on each
    rank); gathering the model, as before, raised rank 0's by the whole 403 MB."""
    out, ranks = saved_on_two_ranks
    for rank in ranks:
        big = rank["big"]
        assert big["whole"] > 400e6 and big["rise"] <= 2 * big["largest"] + 32e6 < big["whole"] / 2, big
    from safetensors import safe_open

    with safe_open(str(out / "big" / "final.safetensors"), framework="pt") as f:
        assert len(list(f.keys())) == 12 and f.get_slice("0.weight").get_shape() == [4096, 4096]


@pytest.mark.slow
def test_a_damaged_dcp_checkpoint_is_refused_in_one_line(saved_on_two_ranks, tmp_path):
    import shutil

    from zobench.checkpoint import load_checkpoint
    from zobench.errors import CheckpointError

    out, _ = saved_on_two_ranks
    root = tmp_path / "checkpoint"
    shutil.copytree(out / "zo_adam" / "checkpoint", root)
    folder = root / (root / "latest").read_text().strip()
    shard = folder / "weights" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"weights/__1_0.distcp is corrupted .* delete .*checkpoint"):
        load_checkpoint(root)
    from zobench.dist.checkpoints import load_distributed

    other = ShardTiny(37, (5, 7))  # another model: its shapes are not the checkpoint's
    whole = load_checkpoint(out / "zo_adam" / "checkpoint")
    with pytest.raises(CheckpointError, match=r"checkpoint .*weights is unreadable \(\w+: .*\); delete"):
        load_distributed(whole, list(other.named_parameters()), list(other.parameters()))


@pytest.mark.slow
def test_a_dcp_checkpoint_with_a_replicated_root_resumes_on_two_ranks_and_in_one_process(
    saved_on_two_ranks, one_process
):
    """``dist.root=replicated`` (HiZOO: Σ of the root whole on each rank): the checkpoint holds the
    root once, two fresh ranks and one process read it back, and the next step is the sharded
    root's (the same math) on both."""
    from zobench.checkpoint import load_checkpoint
    from zobench.dist.checkpoints import load_distributed
    from zobench.engine import InPlaceEngine

    out, ranks = saved_on_two_ranks
    for rank in ranks:
        assert rank["replicated"]["same"]
        assert rank["replicated"]["extra"] == [ranks[0]["hizoo"]["extra"][0]] * 2
    checkpoint = load_checkpoint(out / "replicated" / "checkpoint")
    with z_chunk(32), torch.no_grad():
        model = Tiny()
        optimizer = fresh_optimizer("hizoo", model, InPlaceEngine())
        named = list(model.named_parameters())
        optimizer.load_state_dict(load_distributed(checkpoint, named, list(model.parameters())))
        for name, p in named:
            assert torch.equal(p, one_process["hizoo"]["weights"][name]), name
        assert one_step(optimizer, model) == ranks[0]["hizoo"]["extra"][0]
