"""Helpers shared by several test modules: config composition, the smoke-run overrides, tiny
models of every family, the CLI (as a subprocess and in-process), runs interrupted by a signal,
and the engine's reference losses. Test modules import from here, never from one another."""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from zobench.resources import conf_dir

REPO = Path(__file__).resolve().parents[1]

# -- configs ---------------------------------------------------------------------------------------
SMOKE = (  # a tiny run: a random 2-layer Llama, a few dozen SST-2 rows, no W&B
    "model=tiny-llama",
    "logger=none",
    "data.num_train=32",
    "data.num_dev=16",
    "data.num_eval=24",
    "train.batch_size=4",
    "train.eval_batch_size=8",
)


def options(group: str) -> list[str]:
    """The options of a config group: conf/<group>/*.yaml, and the task group generated from tasks/."""
    from zobench.__main__ import group_options

    return sorted(group_options(group))


def compose_run(*overrides):
    """The run config `python -m zobench <overrides>` would get (without the hydra node)."""
    return compose_config("config", *overrides)


def compose_config(config_name: str, *overrides):
    """``conf/<config_name>.yaml`` composed with ``overrides`` (``bench``: `python -m zobench.bench`)."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def experiment_sweep(experiment) -> dict[str, list[str]]:
    """``hydra.sweeper.params`` of an experiment: swept key -> its values."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    return {key: str(params[key]).split(",") for key in sorted(params)}


def experiment_grid(experiment) -> list[dict]:
    """Every sweep point of an experiment (the cartesian product Hydra's basic sweeper launches)."""
    sweep = experiment_sweep(experiment)
    return [dict(zip(sweep, point)) for point in itertools.product(*sweep.values())]


def compose_experiment(experiment, point: dict):
    """The resolved run config of one sweep point of an experiment."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(
            config_name="config",
            overrides=[f"experiment={experiment}", "data.dir=/tmp/mirror", *(f"{k}={v}" for k, v in point.items())],
        )
    OmegaConf.resolve(cfg)
    return cfg


# -- tiny models -----------------------------------------------------------------------------------
TINY_ARCHS = {
    # family name -> (auto class, config kwargs): small enough to run in milliseconds
    "llama": (
        "causal",
        dict(
            model_type="llama",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=64,
            tie_word_embeddings=True,
        ),
    ),
    "opt": (
        "causal",
        dict(
            model_type="opt",
            hidden_size=16,
            ffn_dim=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=64,
            word_embed_proj_dim=16,
            max_position_embeddings=64,
        ),
    ),
    "phi": (
        "causal",
        dict(
            model_type="phi",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=64,
        ),
    ),
    "gemma3": (
        "causal",
        dict(
            model_type="gemma3_text",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            vocab_size=64,
            sliding_window=8,
        ),
    ),
    "roberta": (
        "masked",
        dict(
            model_type="roberta",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=64,
            max_position_embeddings=40,
        ),
    ),
}


def tiny_model(family: str, dtype=torch.float32, seed: int = 0):
    """A randomly initialised 2-layer model of ``family`` (see TINY_ARCHS), frozen, in eval mode."""
    import transformers

    kind, kwargs = TINY_ARCHS[family]
    kwargs = dict(kwargs)
    config = transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    torch.manual_seed(seed)
    auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModelForMaskedLM
    model = auto.from_config(config, dtype=dtype).eval().requires_grad_(False)
    return model


class Quadratic(nn.Module):
    """L(x) = ½ Σ a_i (x_i - x*_i)², condition number 4. Half the weights are large and already at
    their optimum, half are small and off it: fine-tuning's regime, and the one Sparse-MeZO is
    built for (it never perturbs weights that stay large, so on a quadratic whose large weights
    are wrong it stalls by design, not by a bug)."""

    def __init__(self, dim: int = 20) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        large = (3 + torch.rand(dim // 2, generator=gen)) * torch.sign(torch.randn(dim // 2, generator=gen))
        small_start, small_target = torch.randn(2, dim // 2, generator=gen) * 0.5
        self.x = nn.Parameter(torch.stack([large, small_start]))
        self.register_buffer("target", torch.stack([large, small_target]))
        self.register_buffer("a", torch.linspace(0.5, 2.0, dim).view(2, dim // 2))

    def forward(self):
        return 0.5 * (self.a * (self.x - self.target) ** 2).sum()


class ShardTiny(nn.Module):
    """An embedding of ``vocab`` rows, two linear layers of ``widths`` rows and a 3-row head: row
    counts 2 ranks split unevenly (``dist.mode=sharded``); the embedding's z is drawn in chunks."""

    def __init__(self, vocab: int, widths: tuple[int, int]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, 8)
        self.layers = nn.ModuleList([nn.Linear(8, widths[0]), nn.Linear(widths[0], widths[1])])
        self.head = nn.Linear(widths[1], 3)

    def forward(self, ids):
        h = self.embed(ids).mean(1)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return self.head(h)


def spawn_ranks(target, world: int, out: Path) -> list[dict]:
    """``target(rank, world, port, out)`` on ``world`` spawned processes (each saves
    ``out/rank<r>.pt``): every rank's saved results, in rank order."""
    mp.spawn(target, args=(world, free_port(), str(out)), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(world)]


@contextlib.contextmanager
def z_chunk(size: int):
    """``directions.Z_CHUNK`` at ``size`` inside (as the spawned ranks set it): ``ShardTiny``'s
    embedding's z drawn in several chunks, the sequential draw exercised."""
    from zobench.engine import directions

    saved, directions.Z_CHUNK = directions.Z_CHUNK, size
    try:
        yield
    finally:
        directions.Z_CHUNK = saved


def shard_batch(vocab: int):
    """``ShardTiny``'s fixed batch: 6 sequences of 4 token ids below ``vocab``, 6 labels of 3."""
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (6, 4), generator=gen), torch.randint(0, 3, (6,), generator=gen)


# -- engine reference losses -----------------------------------------------------------------------
def loss_of(model, ids):
    """A smooth scalar of a causal LM's logits (the engines' tests compare it, not a task loss)."""
    return model(input_ids=ids).logits.logsumexp(-1).mean()


def replica_losses(model, ids, n):
    """Per-replica losses of the batch repeated n times (the closure contract for replicas)."""
    logits = model(input_ids=ids.repeat(n, 1)).logits
    return logits.logsumexp(-1).reshape(n, -1).mean(-1)


def sequential_losses(engine, params, model, ids, directions, scales=1e-2):
    """The loss at θ + scale_i·z_i for each direction (``scales``: one for all, or one each), one
    perturbed forward each, restored after."""
    scales = [scales] * len(directions) if isinstance(scales, float) else list(scales)
    with torch.no_grad():
        losses = []
        for direction, scale in zip(directions, scales, strict=True):
            engine.perturb(params, direction, scale)
            losses.append(float(loss_of(model, ids)))
        engine.restore(params)
    return losses


# -- the command line ------------------------------------------------------------------------------
def zobench(*args, cwd=None, env=None, timeout=300, module="zobench") -> subprocess.CompletedProcess:
    """``python -m zobench <args>`` in a fresh interpreter; ``env`` values of None remove that
    variable. The source tree under test comes first on the path."""
    merged = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={k: v for k, v in merged.items() if v is not None},
    )


def zobench_in_process(*args, monkeypatch, cwd=None) -> subprocess.CompletedProcess:
    """``python -m zobench <args>`` through the same entry point (``zobench.__main__.main``) in this
    interpreter: the same parsing, checks, Hydra run and exit code, without the seconds an
    interpreter spends importing torch and transformers. Hydra's logging set-up is undone after."""
    import logging

    from zobench.__main__ import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.setattr(sys, "argv", ["zobench", *args])
    if cwd is not None:
        monkeypatch.chdir(cwd)
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    return subprocess.CompletedProcess(["zobench", *args], code, out.getvalue(), err.getvalue())


def one_error_line(result, message: str = "") -> str:
    """The contract for bad input: exit code 2, one `zobench: error:` line holding ``message``,
    no traceback. Returns the line."""
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("zobench: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


# -- runs stopped by a signal ----------------------------------------------------------------------
#: summary keys that measure time or memory (RSS), not numbers: a resumed run may differ there
VOLATILE = {
    "wall_s",
    "peak_memory_bytes",
    "inference_peak_memory_bytes",
    "load_peak_memory_bytes",
    "pre_load_memory_bytes",
}


def smoke_cli(run_dir, data_dir, *extra) -> list[str]:
    """The argv of an 8-step smoke run into ``run_dir`` that saves its final weights."""
    return [
        sys.executable,
        "-m",
        "zobench",
        *SMOKE,
        "train.steps=8",
        "train.eval_every=2",
        "train.log_every=1",
        "train.save_final=true",
        f"data.dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def stable(path: Path):
    """summary.json or metrics.jsonl without the keys that vary from run to run (VOLATILE)."""
    if path.suffix == ".json":
        return {k: v for k, v in json.loads(path.read_text()).items() if k not in VOLATILE}
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in path.read_text().splitlines()]


def run_until(cmd, metrics: Path, step: int, sig) -> int:
    """Start ``cmd``, send ``sig`` once the train event of ``step`` is in metrics.jsonl; its exit code."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and any(
            f'"step": {step},' in line and '"train"' in line for line in metrics.read_text().splitlines()
        ):
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    return proc.wait(timeout=240)


def signal_at_loss_call(monkeypatch, call: int, sig=signal.SIGUSR1) -> None:
    """Make this process receive ``sig`` in objective call number ``call`` (call 1 is the memory
    probe, so call 2 is inside step 1): the run's handler then checkpoints and stops, as it does
    for a scheduler's signal."""
    from zobench.models import CandidateScorer

    original, calls = CandidateScorer.loss, {"n": 0}

    @functools.wraps(original)  # the same signature: the loop batches replicas only if loss takes them
    def loss(self, batch, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), sig)
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(CandidateScorer, "loss", loss)


# -- the weight shapes of every conf/model config (tests/engine: launch plans, the start-up check) --------
CONF = REPO / "conf" / "model"
SMOLLM2_VOCAB = 49152  # the random configs' tokenizer (tokenizer_from: smollm2-135m)

# hub / GGUF configs: (model_type, vocab, hidden, ffn, q_dim, kv_dim, positions, proj_dim) from
# each model's config.json; q_dim = heads·head_dim (Gemma-3's 4·256 ≠ its hidden 640), kv_dim
# below it for grouped-query attention, proj_dim for OPT-350m's 512-wide embedding, positions the
# learned position table's rows (OPT's carry an offset of 2)
PUBLISHED = {
    "opt-125m": ("opt", 50272, 768, 3072, 768, 768, 2050, 768),
    "opt-350m": ("opt", 50272, 1024, 4096, 1024, 1024, 2050, 512),
    "opt-1.3b": ("opt", 50272, 2048, 8192, 2048, 2048, 2050, 2048),
    "opt-2.7b": ("opt", 50272, 2560, 10240, 2560, 2560, 2050, 2560),
    "opt-6.7b": ("opt", 50272, 4096, 16384, 4096, 4096, 2050, 4096),
    "opt-13b": ("opt", 50272, 5120, 20480, 5120, 5120, 2050, 5120),
    "opt-30b": ("opt", 50272, 7168, 28672, 7168, 7168, 2050, 7168),
    "opt-66b": ("opt", 50272, 9216, 36864, 9216, 9216, 2050, 9216),
    "llama-7b": ("llama", 32000, 4096, 11008, 4096, 4096, 0, 4096),
    "llama3-8b": ("llama", 128256, 4096, 14336, 4096, 1024, 0, 4096),
    "phi-2": ("phi", 51200, 2560, 10240, 2560, 2560, 0, 2560),
    "roberta-large": ("roberta", 50265, 1024, 4096, 1024, 1024, 514, 1024),
    "smollm2-135m": ("llama", 49152, 576, 1536, 576, 192, 0, 576),
    "gemma3-270m": ("gemma3", 262144, 640, 2048, 1024, 256, 0, 640),
}


def _architecture(cfg) -> tuple:
    """(model_type, vocab, hidden, ffn, q_dim, kv_dim, positions, proj_dim) of a config."""
    if "architecture" not in cfg:
        assert cfg.name in PUBLISHED, f"conf/model/{cfg.name}.yaml: add its shapes to PUBLISHED"
        return PUBLISHED[cfg.name]
    a = cfg.architecture
    hidden = a.hidden_size
    ffn = a.get("ffn_dim", a.get("intermediate_size"))
    heads = a.num_attention_heads
    kv = a.get("num_key_value_heads", heads) * (hidden // heads)
    positions = {"opt": a.get("max_position_embeddings", 0) + 2, "roberta": a.get("max_position_embeddings", 0)}.get(
        a.model_type, 0
    )
    return a.model_type, SMOLLM2_VOCAB, hidden, ffn, hidden, kv, positions, a.get("word_embed_proj_dim", hidden)


def weight_shapes(cfg) -> list[tuple[int, ...]]:
    """Every distinct parameter shape of a decoder layer, the embeddings and the LM head."""
    kind, vocab, hidden, ffn, q, kv, positions, proj = _architecture(cfg)
    shapes = {(vocab, proj), (q, hidden), (hidden, q), (kv, hidden), (ffn, hidden), (hidden, ffn), (hidden,), (ffn,)}
    if positions:
        shapes.add((positions, hidden))
    if proj != hidden:
        shapes |= {(hidden, proj), (proj, hidden)}  # OPT-350m's project_in / project_out
    if kind in ("llama", "gemma3"):
        shapes.add((kv,))
    return sorted(shapes)


CONFIGS = sorted(CONF.glob("*.yaml"))


# -- multi-rank runs (Gloo, real processes): tests/test_dist.py, tests/dist/ --------------------------
# Each pytest-xdist worker draws its ports from its own block of 1000 below Linux's ephemeral range
# (32768-60999). A port the kernel handed out (bind to port 0) and that was closed again is in that
# range, where every Gloo listener and connection of the other worker's ranks takes its port too: it
# could be taken between this check and the store's bind, and a rank of one test then reach another
# test's group: one of the two causes that fit CI's round-14 failure (rank 1 of two concurrent
# sharded tests aborted with SIGABRT; not reproduced here), ``finish_rank`` is the other.
_PORT_BLOCK = 1000
_port_offsets = itertools.count(os.getpid() % _PORT_BLOCK)  # two pytest sessions at once start apart


def free_port() -> int:
    """A TCP port no socket holds now, for a spawned group's store (``MASTER_PORT``): the next free
    one of this xdist worker's block (26000 + 1000 × worker), never one the kernel hands out nor
    the default of a Slurm job step (``dist/context.py``: 20000 + job id, ids from 1 in
    tests/test_slurm.py)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    base = 26000 + (int(worker) % 6 if worker.isdigit() else 0) * _PORT_BLOCK
    for _ in range(_PORT_BLOCK):
        port = base + next(_port_offsets) % _PORT_BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # held by a live socket (or in TIME_WAIT): the next one
                continue
            return port
    raise RuntimeError(f"no free TCP port in {base}..{base + _PORT_BLOCK - 1}")


def _rank(rank: int, world: int, port: int, jobs: list, out: str) -> None:
    """One rank of spawned runs: torchrun's environment, then ``zobench.run.run`` of each
    ``(overrides, run_dir)`` job in turn (one interpreter start for several runs)."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from zobench.dist import current
    from zobench.run import run

    results = []
    for overrides, run_dir in jobs:
        current().sent.clear()
        summary = run(compose_run(*overrides), Path(run_dir))
        results.append({"summary": summary, "sent": dict(current().sent)})
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    finish_rank()


def finish_rank() -> None:
    """End a spawned rank once its results are saved as a rank of ``python -m zobench`` ends
    (``__main__.end_rank``): barrier, leave the process group, ``os._exit(0)``, skipping the
    interpreter's teardown, where Gloo's threads aborted a finished rank now and then under load
    ("terminate called without an active exception": SIGABRT; one of the two causes that fit
    round 14's CI failure, ``free_port`` the other). A rank without a group returns."""
    from zobench.__main__ import end_rank

    end_rank(0, finished=True)  # every rank has saved its results: barrier, leave, os._exit(0)


def run_ranks(world: int, jobs: list, out: Path) -> list[list[dict]]:
    """``(overrides, run_dir)`` jobs run one after the other by ``world`` spawned ranks; per rank,
    each job's summary and bytes sent per phase."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(list(overrides), str(run_dir)) for overrides, run_dir in jobs]
    mp.spawn(_rank, args=(world, free_port(), jobs, str(out)), nprocs=world, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def run_single(overrides: list, run_dir: Path) -> dict:
    from zobench.run import run

    return run(compose_run(*overrides), run_dir)


def train_losses(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in lines if e["event"] == "train"]


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "trainable.safetensors"))


BASE = (*SMOKE, "train.batch_size=16", "train.steps=5", "train.log_every=1", "train.eval_every=5")


def torchrun(nproc: int, *args, cwd: Path, timeout: int = 240) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node <nproc> -m zobench <args>`` (one thread per rank),
    started in ``cwd`` with the source tree under test first on the path."""
    data = Path(os.environ.get("ZOBENCH_DATA_DIR", REPO.parent / "shared" / "data")).resolve()  # cwd changes
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "ZOBENCH_DATA_DIR": str(data)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.Popen(
        [*cmd, "-m", "zobench", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_step(proc: subprocess.Popen, metrics: Path, step: int) -> int:
    """The pid of rank 1 (torchrun's second child) once ``metrics`` holds the train event of ``step``."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and f'"step": {step},' in metrics.read_text():
            children = sorted(int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())
            return children[1]
        time.sleep(0.01)
    raise AssertionError(f"step {step} never came: {proc.poll()} {proc.stderr.read()[-2000:] if proc.stderr else ''}")


def kill_a_rank_and_resume(tmp_path: Path, args: list, ranked: list, step: int) -> tuple[dict, dict]:
    """SIGKILL one of 2 torchrun ranks at ``step``: every rank exits within 60 s, leaving a
    checkpoint and no final/; the same command (``args`` + ``ranked``) on 2 ranks and ``args`` in
    one process, each from a copy of the dir, then finish with the uninterrupted one-process run's
    test metric and final weights. Returns (that reference's summary, the one-process resume's)."""
    reference = run_single(args, tmp_path / "reference")
    killed = tmp_path / "killed"
    proc = torchrun(2, *args, *ranked, f"hydra.run.dir={killed}", cwd=tmp_path)
    victim = wait_for_step(proc, killed / "metrics.jsonl", step=step)
    started = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.monotonic() - started < 60
    assert (killed / "checkpoint" / "latest").is_file() and not (killed / "final").exists()
    shutil.copytree(killed, tmp_path / "one_rank")
    again = torchrun(2, *args, *ranked, f"hydra.run.dir={killed}", cwd=tmp_path)
    assert again.wait(timeout=240) == 0, again.stderr.read()[-3000:]
    alone = run_single(args, tmp_path / "one_rank")
    expected = final_weights(tmp_path / "reference")
    for run_dir in (killed, tmp_path / "one_rank"):
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["test_accuracy"] == reference["test_accuracy"]
        weights = final_weights(run_dir)
        for name in expected:
            torch.testing.assert_close(weights[name], expected[name], rtol=1e-4, atol=1e-6)
    return reference, alone
