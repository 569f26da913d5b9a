"""THE training / evaluation loop of a zobench run, readable top to bottom.

config → task splits (MeZO's 1000/500/1000 protocol) → model + objective → engine + optimizer →
train for ``train.steps`` (every step is ``optimizer.step(closure)``), evaluating dev every
``train.eval_every`` steps and keeping the best-dev state → test accuracy of that state →
``summary.json``.

Files in the run dir (DESIGN.md "Run directory"): ``config.yaml`` (resolved, secrets redacted),
``metrics.jsonl`` (one event per line), ``summary.json`` (written once, at the end, atomically,
with ``status`` completed / failed / diverged). The loop owns the clock, the budget and the
evaluation schedule; the method only updates parameters (AlgoPerf's rule).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import __version__
from .engine import build_engine, mix_seed
from .models import CandidateScorer, evaluate_accuracy, load_model
from .optim import decay_groups
from .tasks import build_splits, load_task
from .telemetry import ForwardCounter, JsonlLogger, PeakMemory, Progress, WandbLogger

log = logging.getLogger(__name__)

_SECRET = re.compile(r"(api[_-]?key|token|secret|password)", re.IGNORECASE)


# -- small helpers ------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def redact(value):
    """The config with every key that looks like a credential replaced by ``<redacted>``."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if _SECRET.search(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def git_sha() -> str | None:
    """HEAD of the source checkout zobench runs from (``-dirty`` if modified), or None."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class BatchStream:
    """Training batches: consecutive slices of epoch permutations; epoch e is
    ``RandomState(mix_seed(seed, e)).permutation(n)``, a pure function of (seed, epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n == 0:
            raise ValueError("data.num_train=0: training needs at least one example")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.offset = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.RandomState(mix_seed(self.seed, epoch) % 2**32).permutation(self.n)

    def next(self) -> list[int]:
        out = []
        while len(out) < self.batch_size:
            if self.offset == self.n:
                self.epoch, self.offset = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            take = min(self.batch_size - len(out), self.n - self.offset)
            out.extend(self._perm[self.offset:self.offset + take].tolist())
            self.offset += take
        return out


# -- the run ------------------------------------------------------------------------------------
def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Execute one run into ``run_dir``; returns the summary (also written to summary.json)."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = redact(OmegaConf.to_container(cfg, resolve=True))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    summary = {
        "task": cfg.task.name, "model": cfg.model.name, "optimizer": cfg.optimizer.name,
        "tuning": cfg.tuning.name, "seed": int(cfg.seed), "steps": 0, "git_sha": git_sha(),
        "zobench_version": __version__, "status": "failed",
    }
    loggers = [JsonlLogger(run_dir / "metrics.jsonl")]
    try:
        if cfg.logger.name == "wandb":
            loggers.append(WandbLogger(cfg.logger, run_dir, config, name=run_dir.name))
        summary.update(_train_and_evaluate(cfg, run_dir, loggers, started))
    except BaseException as err:  # record why, then let the error surface
        summary["error"] = f"{type(err).__name__}: {err}"
        summary["wall_s"] = time.perf_counter() - started
        write_json_atomic(run_dir / "summary.json", summary)
        for logger in loggers:
            logger.finish()
        raise
    summary["wall_s"] = time.perf_counter() - started
    for logger in loggers:
        logger.summary(summary)
        logger.finish()
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def _train_and_evaluate(cfg: DictConfig, run_dir: Path, loggers: list, started: float) -> dict:
    device = resolve_device(cfg.device)
    torch.set_grad_enabled(False)  # zeroth order: no autograd anywhere in the loop

    def emit(event: dict) -> None:
        for logger in loggers:
            logger.log(event)

    # data: MeZO's protocol
    spec = load_task(cfg.task.name)
    splits = build_splits(spec, cfg.data.dir, cfg.data.num_train, cfg.data.num_dev, cfg.data.num_eval,
                          seed=cfg.data.seed, eval_seed=cfg.data.eval_seed)
    if cfg.model.family != "causal":
        raise ValueError(f"model={cfg.model.name} is a {cfg.model.family} LM; task={spec.name} uses causal-LM "
                         "candidate scoring, which needs model.family=causal")

    # model and objective
    model, tokenizer = load_model(cfg.model, device, cfg.cache_dir)
    scorer = CandidateScorer(model, tokenizer, cfg.task.max_length, device)
    train, dev, test = ([scorer.encode(spec.render(ex)) for ex in rows]
                        for rows in (splits.train, splits.dev, splits.test))
    counter = ForwardCounter(model)
    memory = PeakMemory(device)

    # optimizer on the engine; tuning=full trains every parameter
    named = list(model.named_parameters())
    engine = build_engine(cfg.engine.backend, cfg.engine.mode, model)
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    opt_cfg.pop("name")
    optimizer_cls = _import(opt_cfg.pop("_target_"))
    weight_decay = opt_cfg.pop("weight_decay", 0.0)
    optimizer = optimizer_cls(decay_groups(named, weight_decay), engine=engine, seed=cfg.seed, **opt_cfg)

    def counts() -> dict:
        return {"forward_passes": counter["train"], "forward_passes_eval": counter["eval"],
                "forward_passes_total": counter.total}

    def evaluate(split: str, examples, step: int) -> float:
        with counter.phase("eval"):
            accuracy, _ = evaluate_accuracy(scorer, examples, cfg.train.eval_batch_size)
        emit({"event": "eval", "split": split, "step": step, "accuracy": accuracy, **counts(),
              "wall_s": time.perf_counter() - started})
        return accuracy

    # inference-only peak memory of one training batch (one counted forward, phase "probe")
    stream = BatchStream(len(train), cfg.train.batch_size, mix_seed(cfg.seed, 1))
    probe_batch = [train[i] for i in BatchStream(len(train), cfg.train.batch_size, mix_seed(cfg.seed, 1)).next()]
    memory.reset()
    with counter.phase("probe"):
        scorer.loss(probe_batch)
    inference_peak = memory.peak()

    steps = int(cfg.train.steps)
    status, best_dev, best_step, train_peak = "completed", float("nan"), 0, 0
    best_path = run_dir / "best" / "trainable.safetensors"
    if steps == 0:  # zero-shot
        best_dev = evaluate("dev", dev, 0) if dev else float("nan")
    progress = Progress(total=steps)
    for step in range(1, steps + 1):
        batch = [train[i] for i in stream.next()]
        memory.reset()
        loss = float(optimizer.step(lambda: scorer.loss(batch)))
        train_peak = max(train_peak, memory.peak())
        progress.update(loss, counter["train"])
        info = optimizer.last_step_info
        if not math.isfinite(loss) or not all(math.isfinite(v) for v in info.values()):
            status = "diverged"
            log.error("step %d: non-finite loss or projected gradient (%s); stopping", step, info)
        if step % cfg.train.log_every == 0 or step == steps or status != "completed":
            emit({"event": "train", "step": step, "loss": loss, "lr": optimizer.param_groups[0]["lr"], **info,
                  **counts(), "peak_memory_bytes": train_peak, "wall_s": time.perf_counter() - started})
        if status != "completed":
            break
        if dev and (step % cfg.train.eval_every == 0 or step == steps):
            accuracy = evaluate("dev", dev, step)
            if not accuracy <= best_dev:  # first evaluation, or strictly better
                best_dev, best_step = accuracy, step
                if cfg.train.keep_best and step != steps:
                    _save_trainable(named, best_path)
    progress.close()

    if status == "completed" and cfg.train.keep_best and steps > 0 and best_step not in (0, steps):
        _load_trainable(named, best_path)
    test_accuracy = evaluate("test", test, best_step if cfg.train.keep_best else steps) if status == "completed" \
        else float("nan")
    if best_path.exists():
        best_path.unlink()  # only needed until the best state is back in the model
        best_path.parent.rmdir()
    return {
        "task_version": spec.version, "steps": step if steps else 0, "best_step": best_step,
        "forward_passes": counter["train"], "forward_passes_eval": counter["eval"],
        "forward_passes_probe": counter["probe"], "dev_accuracy": best_dev, "test_accuracy": test_accuracy,
        "num_train": len(train), "num_dev": len(dev), "num_test": len(test),
        "peak_memory_bytes": train_peak if steps else inference_peak, "inference_peak_memory_bytes": inference_peak,
        "peak_memory_source": memory.source, "device": str(device),
        "engine": f"{cfg.engine.backend}/{cfg.engine.mode}", "status": status,
    }


def _import(target: str):
    module, _, name = target.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def _save_trainable(named, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({name: p.detach().contiguous() for name, p in named}, str(tmp))
    os.replace(tmp, path)


def _load_trainable(named, path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    for name, p in named:
        p.data.copy_(state[name])
