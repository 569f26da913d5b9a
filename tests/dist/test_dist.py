"""Multi-rank runs on torch.distributed (Gloo, CPU, real processes): data parallel equals one
process on the global batch, sharded evaluation equals the single-process metric, rank 0 alone
writes the run dir, the replicas stay bit-identical; and the fast in-process logic of each."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import (
    BASE,
    SMOKE,
    compose_run,
    final_weights,
    finish_rank,
    free_port,
    kill_a_rank_and_resume,
    run_ranks,
    run_single,
    torchrun,
    train_losses,
    wait_for_step,
)
from zobench.dist.context import DistContext, launch_env
from zobench.dist.data import ShardedObjective, global_mean, shard
from zobench.dist.evaluation import combine
from zobench.tasks.batches import eval_batches as batches


# -- fast: the logic in one process ----------------------------------------------------------------
def test_shards_cover_the_batch_in_order():
    batch = list(range(11))
    parts = [shard(batch, r, 3) for r in range(3)]
    assert sum(parts, []) == batch and {len(p) for p in parts} == {3, 4}


def test_launch_env_reads_torchrun_and_slurm_and_is_none_for_one_process():
    assert launch_env({}) is None
    assert launch_env({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None  # a one-task job is one process
    assert launch_env({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1234"})["rank"] == 1
    slurm = launch_env(
        {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "20007", "MASTER_ADDR": "n1"}
    )
    assert (slurm["rank"], slurm["world_size"], slurm["local_rank"], slurm["master_port"]) == (3, 4, 1, 28007)
    # the default port of any job id stays below Linux's ephemeral range (32768-60999), where the
    # kernel hands out the ports of Gloo's listeners and connections
    jobs = ({"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_ID": str(j)} for j in range(0, 10**6, 997))
    ports = {launch_env(job)["master_port"] for job in jobs}
    assert min(ports) >= 20000 and max(ports) < 32768


def test_free_port_is_free_and_below_the_ephemeral_range_in_this_workers_block():
    ports = [free_port() for _ in range(5)]
    assert len(set(ports)) == 5 and all(26000 <= p < 32000 for p in ports)
    block = {p // 1000 for p in ports}  # one xdist worker's block (a wrap-around stays in it)
    assert len(block) == 1
    with socket.socket() as held:  # a port a socket holds is never returned
        held.bind(("127.0.0.1", ports[-1] + 1 if ports[-1] % 1000 != 999 else ports[-1] - 999))
        assert held.getsockname()[1] not in [free_port() for _ in range(3)]


class FakeRanks(DistContext):
    """Two ranks in one process: ``all_reduce`` adds the other rank's packed vector."""

    def __init__(self, other: torch.Tensor | None = None) -> None:
        super().__init__(rank=0, world_size=2)
        self.other = other

    def all_reduce(self, tensor, op=None, phase="other"):
        self.count(phase, tensor)
        return tensor + self.other


class Mean:
    """An objective whose loss is the mean of its examples (numbers), R replicas scaled by r + 1."""

    metric = "accuracy"

    def loss(self, batch, replicas=1):
        values = torch.tensor([float(x) for x in batch])
        return values.mean() if replicas == 1 else torch.stack([(r + 1) * values.mean() for r in range(replicas)])

    def loss_count(self, batch):
        return len(batch)


def test_global_mean_weights_each_shard_by_its_count():
    batch = [1, 2, 3, 4, 10]  # rank 0 holds [1, 2], rank 1 [3, 4, 10]
    other = torch.tensor([17.0, 34.0, 3.0, 0.0], dtype=torch.float64)  # rank 1: sums of 2 replicas, count, no stop
    ctx = FakeRanks(other)
    loss = ShardedObjective(Mean(), ctx).loss(batch, replicas=2)
    assert loss.dtype == torch.float32 and loss.tolist() == pytest.approx([4.0, 8.0])
    assert ctx.sent == {"train": 4 * 8}  # 2 sums, a count and the stop flag, float64


def test_global_mean_carries_another_ranks_stop_request():
    from zobench.dist.data import SyncedStop

    class Request:
        signum = None

    stop = SyncedStop(Request())
    global_mean(FakeRanks(torch.tensor([1.0, 1.0, 15.0], dtype=torch.float64)), torch.tensor(1.0), 1.0, stop)
    assert stop.name == "SIGTERM"


def test_combined_metric_is_the_single_process_sum_in_batch_order():
    class Example:
        def __init__(self, length):
            self.length = length

    examples = [Example(n) for n in (5, 1, 3, 2, 4)]
    assert batches(examples, 2) == [[1, 3], [2, 4], [0]]
    values = [0.1, 0.7, 0.2, 0.3, 0.9]
    per_batch = [{"f1": [values[i] for i in chunk]} for chunk in batches(examples, 2)]
    expected = 0.0
    for chunk in batches(examples, 2):
        for i in chunk:
            expected += values[i]
    assert combine(per_batch, 5) == {"f1": expected / 5}


def test_guard_checksums_see_one_bit_and_a_swap():
    from zobench.dist.guard import checksums

    w = torch.randn(1000)
    flipped = w.clone()
    flipped[500] = torch.nextafter(flipped[500], torch.tensor(10.0))
    swapped = w.clone()
    swapped[[3, 4]] = w[[4, 3]]
    base = checksums([("w", w)])
    assert not torch.equal(base, checksums([("w", flipped)])) and not torch.equal(base, checksums([("w", swapped)]))
    assert torch.equal(base, checksums([("w", w.clone())]))


# -- slow: real ranks (Gloo) -------------------------------------------------------------------------
METHODS = ("mezo", "hizoo", "fzoo", "zo_adam")
SQUAD = (*SMOKE, "task=squad", "train.steps=0", "data.num_train=0", "data.num_dev=0", "data.num_eval=10")
SQUAD = (*SQUAD, "train.eval_batch_size=3")


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_global_batch(tmp_path):
    """2 ranks × 8 examples = 1 process × 16 for MeZO, HiZOO, FZOO, ZO-Adam: losses to the rounding of
    the shard sums, final weights within fp32 rounding, forward passes and test accuracy equal;
    the two ranks' weights bit-identical (the guard compares them at the end: status completed)."""
    jobs = [([*BASE, f"optimizer={m}", "train.save_final=true"], tmp_path / m / "two") for m in METHODS]
    jobs.append((list(SQUAD), tmp_path / "squad" / "two"))
    ranks = run_ranks(2, jobs, tmp_path / "out")
    # sharded generation (SQuAD): 4 batches of 3 over 2 ranks give the single-process F1 and EM exactly
    squad = json.loads((tmp_path / "squad" / "two" / "summary.json").read_text())
    single = run_single(list(SQUAD), tmp_path / "squad" / "one")
    assert (squad["test_f1"], squad["test_em"]) == (single["test_f1"], single["test_em"])
    assert squad["forward_passes_eval"] == single["forward_passes_eval"] > 0
    for (overrides, two), rank0, rank1 in zip(jobs[:-1], *ranks):
        single = run_single(overrides, two.parent / "one")
        assert rank0["summary"]["status"] == rank1["summary"]["status"] == "completed"
        assert rank0["sent"]["guard"] > 0
        assert train_losses(two) == pytest.approx(train_losses(two.parent / "one"), rel=1e-5, abs=1e-6)
        weights, expected = final_weights(two), final_weights(two.parent / "one")
        for name in expected:
            torch.testing.assert_close(weights[name], expected[name], rtol=1e-5, atol=1e-6)
        summary = json.loads((two / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["forward_passes"] == single["forward_passes"]
        assert summary["test_accuracy"] == single["test_accuracy"]
        assert summary["forward_passes_eval"] == single["forward_passes_eval"]
        # a few float64 per evaluation: (replicas + 2) × 8 bytes
        assert 0 < summary["comm_bytes_per_step"] <= 10 * 8 * 8
        assert not list(two.glob("*.log")) or len(list(two.glob("*.log"))) == 1


@pytest.mark.slow
def test_direction_parallel_fzoo_and_mezo_equal_one_process(tmp_path):
    """dist.mode=directions: FZOO N=4 (2 directions a rank) and MeZO q=3 (an uneven 2 + 1 split)
    on 2 ranks give the single-process losses and weights (each direction on the whole batch)."""
    methods = {"fzoo": "++optimizer.num_directions=4", "mezo": "++optimizer.num_directions=3"}
    jobs = [
        ([*BASE, f"optimizer={m}", extra, "train.save_final=true", "dist.mode=directions"], tmp_path / m / "two")
        for m, extra in methods.items()
    ]
    ranks = run_ranks(2, jobs, tmp_path / "out")
    for (overrides, two), rank0 in zip(jobs, ranks[0]):
        single = run_single(overrides, two.parent / "one")
        assert rank0["summary"]["status"] == "completed" and rank0["sent"]["train"] > 0
        assert rank0["summary"]["forward_passes"] == single["forward_passes"]
        assert train_losses(two) == pytest.approx(train_losses(two.parent / "one"), rel=1e-5, abs=1e-6)
        weights, expected = final_weights(two), final_weights(two.parent / "one")
        for name in expected:
            torch.testing.assert_close(weights[name], expected[name], rtol=1e-5, atol=1e-6)


def test_direction_shares_are_contiguous_and_a_split_step_equals_the_whole():
    """The method side of direction parallelism, in one process: MeZO's q=3 estimate evaluated as
    the shares [0] and [1, 2] (what two ranks would) gives the same step as the three at once."""
    from tests.helpers import Quadratic
    from zobench.dist.directions import share
    from zobench.optim import MeZO

    assert [share(5, r, 2) for r in range(2)] == [[0, 1], [2, 3, 4]] and share(1, 0, 2) == []
    results = []
    for split in (False, True):
        model = Quadratic()
        opt = MeZO(model.parameters(), lr=1e-2, eps=1e-3, num_directions=3, seed=7)
        if split:
            opt.share_directions(lambda count, evaluate: evaluate([0]) + evaluate([1, 2]))
        for _ in range(3):
            opt.step(model)
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_direction_mode_refuses_a_one_direction_method():
    from types import SimpleNamespace

    from zobench.dist.strategy import DirectionParallel
    from zobench.errors import ConfigError
    from zobench.optim import HiZOO

    learner = SimpleNamespace(optimizer=HiZOO([torch.nn.Parameter(torch.zeros(3))], lr=1e-3))
    with pytest.raises(ConfigError, match="dist.mode=directions: HiZOO"):
        DirectionParallel(DistContext(rank=0, world_size=2, mode="directions")).attach(learner, None, None)
    from zobench.optim import MeZO

    learner = SimpleNamespace(optimizer=MeZO([torch.nn.Parameter(torch.zeros(3))], lr=1e-3))  # q = 1
    with pytest.raises(ConfigError, match="optimizer.num_directions=1 is one direction per step, nothing to split"):
        DirectionParallel(DistContext(rank=0, world_size=2, mode="directions")).attach(learner, None, None)


def _rank_with_its_own_lr(rank: int, world: int, port: int, run_dir: str, out: str) -> None:
    """One rank started with ``optimizer.lr`` of its own: the start's error, as each rank sees it."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from zobench.errors import ConfigError
    from zobench.run import run

    try:
        run(compose_run(*SMOKE, "train.steps=2", f"optimizer.lr={1e-4 * (rank + 1)}"), Path(run_dir))
        message = "no error"
    except ConfigError as err:
        message = str(err)
    Path(out, f"rank{rank}.txt").write_text(message)
    finish_rank()


@pytest.mark.slow
def test_ranks_started_with_different_configs_all_stop_at_start_naming_the_keys(tmp_path):
    """One all-gather of the ranks' configs before any work: every rank stops with the same line
    (not a replica mismatch at the first checkpoint)."""
    mp.spawn(_rank_with_its_own_lr, args=(2, free_port(), str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert (
        messages[0]
        == messages[1]
        == ("rank 1's config differs from rank 0's in optimizer.lr; start every rank with the same overrides")
    )
    assert not (tmp_path / "run").exists()  # refused before rank 0 made the run dir


@pytest.mark.slow
def test_torchrun_cli_writes_one_run_dir_from_rank_0(tmp_path):
    """No hydra.run.dir: rank 0's time-stamped dir is every rank's; Hydra's files and the log come
    from rank 0 only; one closing line."""
    proc = torchrun(2, *SMOKE, "train.steps=4", "train.eval_every=2", cwd=tmp_path)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").rglob("summary.json")]
    assert len([p for p in (tmp_path / "outputs").rglob("*") if p.is_dir() and p.parent.name == "mezo"]) == 1
    assert sorted(p.name for p in run_dir.glob("*.log")) == ["__main__.log"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["forward_passes"] == 8
    assert summary["comm_bytes_per_step"] == 32  # MeZO's mirrored ± pair: 2 losses, a count, a flag (float64)
    assert out.count("zobench: ") == 1 and "completed" in out


@pytest.mark.slow
def test_a_killed_rank_stops_every_rank_and_the_run_resumes_on_2_or_1_ranks(tmp_path):
    """SIGKILL of rank 1 mid-run: torchrun and rank 0 exit non-zero in < 60 s; the same command
    (2 ranks) and a single process, each from a copy of the dir, finish with the uninterrupted
    single-process run's result."""
    args = [*SMOKE, "train.steps=40", "train.eval_every=20", "train.checkpoint_every=5", "train.save_final=true"]
    _, alone = kill_a_rank_and_resume(tmp_path, [*args, "train.log_every=1"], [], step=12)
    assert alone["steps"] == 40


@pytest.mark.slow
def test_a_stop_signal_to_one_rank_stops_both_at_one_step_and_resumes(tmp_path):
    """SIGTERM to rank 1 alone (a scheduler's signal that reached one task first): the flag rides in
    the step's all-reduce, both ranks checkpoint the same step (else the guard or a collective
    would fail) and stop; the same command resumes and completes."""
    run_dir = tmp_path / "run"
    args = [*SMOKE, "train.steps=40", "train.eval_every=40", "train.log_every=1", f"hydra.run.dir={run_dir}"]
    proc = torchrun(2, *args, cwd=tmp_path)
    os.kill(wait_for_step(proc, run_dir / "metrics.jsonl", step=8), signal.SIGTERM)
    proc.communicate(timeout=120)
    stopped = json.loads((run_dir / "summary.json").read_text())
    assert proc.returncode != 0 and stopped["status"] == "interrupted" and stopped["signal"] == "SIGTERM"
    assert (run_dir / "checkpoint" / f"ckpt-{stopped['steps']:09d}").is_dir() and stopped["steps"] < 40
    again = torchrun(2, *args, cwd=tmp_path)
    assert again.wait(timeout=240) == 0, again.stderr.read()[-3000:]
    done = json.loads((run_dir / "summary.json").read_text())
    assert done["status"] == "completed" and done["steps"] == 40
    assert f"resumed from step {stopped['steps']}" in (run_dir / "__main__.log").read_text()


def test_guard_names_the_first_parameter_that_differs_between_ranks():
    from zobench.dist.guard import ReplicaMismatch, check_replicas

    class SkewedRanks(DistContext):
        """The other rank's second parameter differs in its plain checksum."""

        def all_reduce(self, tensor, op=None, phase="other"):
            other = tensor.clone()
            other[1, 0] += 1
            return (
                torch.minimum(tensor, other) if op == torch.distributed.ReduceOp.MIN else torch.maximum(tensor, other)
            )

    named = [("a.weight", torch.ones(3)), ("b.weight", torch.ones(2)), ("c.bias", torch.zeros(1))]
    with pytest.raises(ReplicaMismatch, match="1 of 3 parameters, first b.weight"):
        check_replicas(named, SkewedRanks(rank=0, world_size=2), "checkpoint at step 4")
    check_replicas(named, DistContext(), "one process: nothing to compare")  # no collective at all


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("dist.mode", "both", "dist.mode='both': allowed auto, data, directions, sharded"),
        ("dist.backend", "mpi", "dist.backend='mpi': allowed auto, gloo, nccl"),
        ("dist.timeout_s", "0", "dist.timeout_s=0: expected seconds, a number > 0"),
        ("dist.shard_size", "0", "dist.shard_size=0: expected an integer >= 1"),
    ],
)
def test_bad_dist_keys_are_one_line_errors(key, value, message, tmp_path, monkeypatch):
    from tests.helpers import one_error_line, zobench_in_process

    result = zobench_in_process(*SMOKE, f"{key}={value}", f"hydra.run.dir={tmp_path / 'run'}", monkeypatch=monkeypatch)
    assert result.returncode == 2
    assert one_error_line(result) == f"zobench: error: {message}"
    assert not (tmp_path / "run").exists()  # refused before Hydra makes the run dir


def _launcher_cases():
    cases = [
        ({"RANK": "abc", "WORLD_SIZE": "2"}, [], "RANK='abc': expected an integer (set by torchrun or Slurm)"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, [], "RANK=2: expected 0..1 (WORLD_SIZE=2)"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, [], "WORLD_SIZE=0: expected the number of ranks, >= 1"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "99999"}, [], "MASTER_PORT=99999: expected a TCP port"),
        ({"SLURM_NTASKS": "2", "SLURM_PROCID": "x1"}, [], "SLURM_PROCID='x1': expected an integer"),
    ]
    if torch.cuda.is_available():  # more ranks on this node than it has GPUs
        local = str(torch.cuda.device_count())
        cases.append(
            ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": local}, ["dist.backend=nccl"], f"LOCAL_RANK={local}")
        )
    else:
        cases.append(({"RANK": "0", "WORLD_SIZE": "2"}, ["dist.backend=nccl"], "dist.backend=nccl needs CUDA"))
    return cases


@pytest.mark.parametrize(
    "env, extra, message", _launcher_cases(), ids=lambda v: str(v)[:40] if isinstance(v, str) else None
)
def test_a_launcher_environment_that_cannot_be_is_one_line(env, extra, message, tmp_path, monkeypatch):
    """A rank that is not an integer or not below the world size, a port out of range, NCCL on a
    machine without (enough) GPUs: one line, exit 2, at once (no wait for ranks that never come,
    no C++ frames), and no run dir."""
    from tests.helpers import one_error_line, zobench_in_process

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    started = time.perf_counter()
    result = zobench_in_process(*SMOKE, *extra, f"hydra.run.dir={tmp_path / 'run'}", monkeypatch=monkeypatch)
    assert time.perf_counter() - started < 30
    assert message in one_error_line(result)
    assert not (tmp_path / "run").exists()


def test_a_first_order_baseline_is_refused_on_several_ranks():
    from zobench.dist.choice import strategy_for
    from zobench.errors import ConfigError
    from zobench.train.learners import BackpropLearner

    learner = BackpropLearner(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]), None)
    for mode in ("data", "directions"):
        strategy = strategy_for(DistContext(rank=0, world_size=2, mode=mode), "adam")
        with pytest.raises(ConfigError, match="optimizer=adam is a first-order baseline: it runs in one process"):
            strategy.attach(learner, None, None)
    strategy_for(DistContext(), "adam").attach(learner, None, None)  # one process: the baseline runs


def test_a_multi_rank_start_on_a_weightless_trajectory_checkpoint_is_refused_in_one_line(tmp_path):
    from zobench.checkpoint import Checkpoint
    from zobench.dist.strategy import DataParallel, Single
    from zobench.errors import CheckpointError

    strategy = DataParallel(DistContext(rank=1, world_size=2))
    strategy.check_resumable(None, tmp_path)  # a fresh run
    strategy.check_resumable(Checkpoint({"step": 3}, {"w": torch.zeros(2)}, {}), tmp_path)  # a weight checkpoint
    with pytest.raises(CheckpointError, match=r"checkpoint: a trajectory checkpoint .* resumes in one process"):
        strategy.check_resumable(Checkpoint({"step": 3}), tmp_path)
    Single().check_resumable(Checkpoint({"step": 3}), tmp_path)  # one process replays it


# -- the strategies the recipe is given (dist/strategy.py) -------------------------------------------
class MirrorRanks(DistContext):
    """Two ranks in one process that hold the same numbers: a SUM doubles, a MAX keeps."""

    def __init__(self, rank: int = 0, mode: str = "data") -> None:
        super().__init__(rank=rank, world_size=2, mode=mode)

    def all_reduce(self, tensor, op=None, phase="other"):
        self.count(phase, tensor)
        return tensor if op == torch.distributed.ReduceOp.MAX else tensor * 2


def _zo_learner():
    from zobench.engine import InPlaceEngine
    from zobench.optim import MeZO
    from zobench.train.learners import ZOLearner

    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = MeZO(params, lr=1e-2, eps=1e-3, num_directions=2, engine=InPlaceEngine(), seed=1)
    return ZOLearner(optimizer, InPlaceEngine(), Mean(), "loss", "torch/inplace")


def test_the_single_strategy_is_the_plain_call_everywhere():
    from zobench.dist.choice import strategy_for
    from zobench.dist.strategy import Single
    from zobench.train.state import LoopState

    strategy = strategy_for(DistContext(), "mezo")
    assert type(strategy) is Single and strategy.name == "single" and strategy.leader
    stop, model, learner = object(), torch.nn.Linear(2, 1), _zo_learner()
    objective = learner.objective
    assert strategy.agreed_stop(stop) is stop and strategy.prepare_model(model) is model
    assert strategy.checkpoint_mode("trajectory") == "trajectory" and strategy.keeps_log()
    strategy.attach(learner, stop, None)
    assert learner.objective is objective and learner.optimizer._direction_share is None
    assert strategy.summary(LoopState(step=3), 3, 0) == {}
    named = list(model.named_parameters())  # what the leader writes: the parameters themselves
    assert strategy.base_sha256(named) is None  # the log hashes the parameters itself

    class Evaluates:
        def evaluate(self, examples, batch_size):
            return {"accuracy": len(examples) / batch_size}

        def example_scores(self, batch):  # a sharded evaluation would call this: one process does not
            raise AssertionError("no sharding in one process")

    assert strategy.evaluate(Evaluates(), [1, 2, 3], 4) == {"accuracy": 0.75}


def test_the_data_parallel_strategy_shards_the_objective_and_agrees_on_stop():
    from zobench.dist.choice import strategy_for
    from zobench.dist.data import SyncedStop
    from zobench.dist.strategy import DataParallel
    from zobench.train.state import LoopState

    leader, follower = strategy_for(MirrorRanks(0), "mezo"), strategy_for(MirrorRanks(1), "mezo")
    assert type(leader) is DataParallel and leader.name == "data" and leader.leader and not follower.leader
    assert leader.keeps_log() and not follower.keeps_log()  # rank 0's closure values are the global ones
    assert leader.checkpoint_mode("trajectory") == "weights"

    class Request:
        signum = None

    stop = leader.agreed_stop(Request())
    assert isinstance(stop, SyncedStop)
    learner = _zo_learner()
    inner = learner.objective
    leader.attach(learner, stop, None)
    assert isinstance(learner.objective, ShardedObjective) and learner.objective.inner is inner
    assert float(learner.objective.loss([1, 2, 3, 4])) == 1.5  # rank 0's shard [1, 2], mirrored
    state = LoopState(step=5, train_peak=7, inference_peak=3, load_peak=9, pre_load=2)
    summary = leader.summary(state, steps=5, first_step=1)
    assert summary == {
        "world_size": 2,
        "dist_mode": "data",
        "dist_backend": "",
        "comm_bytes_per_step": leader.ctx.sent["train"] / 4,
        "peak_memory_bytes": 7,
        "inference_peak_memory_bytes": 3,
        "load_peak_memory_bytes": 9,
        "pre_load_memory_bytes": 2,
    }


def test_the_direction_parallel_strategy_gives_the_optimizer_its_share():
    from zobench.dist.choice import strategy_for
    from zobench.dist.directions import DirectionShare
    from zobench.dist.strategy import DirectionParallel

    strategy = strategy_for(MirrorRanks(0, mode="directions"), "mezo")
    assert type(strategy) is DirectionParallel and strategy.name == "directions" and not strategy.keeps_log()
    learner = _zo_learner()
    objective = learner.objective
    strategy.attach(learner, None, None)
    share = learner.optimizer._direction_share
    assert isinstance(share, DirectionShare) and share.ctx is strategy.ctx
    # each rank evaluates its directions on the whole batch; on the in-place engine (θ ± εz written
    # into the weights) it replays the others' moves, the objective answering 0 without a forward
    assert learner.objective.inner is objective and share.replay is learner.objective.replay
    with share.replay():
        assert float(learner.objective.loss([1.0, 2.0])) == 0.0
    assert float(learner.objective.loss([1.0, 2.0])) == float(objective.loss([1.0, 2.0]))
    assert "share_directions" not in vars(learner.optimizer)  # a declared seam, not a patched method
    from zobench.engine import VirtualEngine

    learner = _zo_learner()
    objective, learner.optimizer.engine = learner.objective, VirtualEngine(torch.nn.Linear(1, 1))
    strategy.attach(learner, None, None)  # the virtual engine writes nothing: nothing to replay
    assert learner.objective is objective and learner.optimizer._direction_share.replay is None


class WordRanks(DistContext):
    """Rank 0's broadcasts, recorded; another rank receives ``word``."""

    def __init__(self, rank: int, word: dict | None = None) -> None:
        super().__init__(rank=rank, world_size=2)
        self.word, self.sent_words = word, []

    def broadcast_object(self, obj):
        if self.leader:
            self.sent_words.append(obj)
            return obj
        return self.word


def test_the_handshake_sends_rank_0s_word_once_and_its_error_before_it():
    from zobench.dist.rundir import Handshake
    from zobench.errors import ConfigError

    ctx = WordRanks(0)
    with Handshake(ctx) as word:
        assert word.ready({"status": "completed"}) == {"status": "completed"}
    with pytest.raises(ValueError), Handshake(ctx) as word:
        word.ready()
        raise ValueError("after the word: the other ranks meet it in a collective")
    with pytest.raises(ConfigError), Handshake(ctx):
        raise ConfigError("train.steps=-1: bad")
    assert ctx.sent_words == [
        {"error": None, "config": False, "done": {"status": "completed"}},
        {"error": None, "config": False, "done": None},
        {"error": "train.steps=-1: bad", "config": True, "done": None},
    ]
    follower = WordRanks(1, {"error": "train.steps=-1: bad", "config": True, "done": None})
    with pytest.raises(ConfigError, match=r"^rank 0: train.steps=-1: bad$"), Handshake(follower) as word:
        word.ready()
    assert Handshake(WordRanks(1, {"error": None, "config": False, "done": {"steps": 2}})).ready() == {"steps": 2}
    assert Handshake(DistContext()).ready() is None  # one process: no word at all


def test_changed_keys_name_the_differing_leaves_bar_the_exempt_ones():
    from zobench.configdiff import changed_keys

    saved = {"train": {"steps": 4, "lr": 1}, "cache_dir": "/a", "logger": {"name": "none"}}
    now = {"train": {"steps": 5, "lr": 1}, "cache_dir": "/b", "logger": {"name": "wandb"}, "new": 1}
    assert changed_keys(saved, now, ("cache_dir", "logger")) == ["new", "train.steps"]
