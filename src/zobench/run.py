"""THE training / evaluation loop of a zobench run, readable top to bottom.

config → task splits (MeZO's 1000/500/1000 protocol) → model + objective → engine + optimizer →
train for ``train.steps`` (every step is ``optimizer.step(closure)``), evaluating dev every
``train.eval_every`` steps and keeping the best-dev state → test accuracy of that state →
``summary.json``.

Files in the run dir (DESIGN.md "Run directory"): ``config.yaml`` (resolved, secrets redacted),
``metrics.jsonl`` (one event per line), ``summary.json`` (written once, at the end, atomically,
with ``status`` completed / failed / diverged / interrupted), ``checkpoint/`` (every
``train.checkpoint_every`` steps and on SIGTERM / SIGUSR1 / SIGUSR2 / SIGINT), ``.lock`` (held
by the one process running in the dir, ``lock.py``). A run started in a dir that holds a
checkpoint resumes from it and ends bit-identical to an uninterrupted run; a completed run dir
is left as it is (bar leftovers of its clean-up). The finishing sequence is: test evaluation →
``final/`` → summary.json → remove ``checkpoint/`` → remove ``best/``; each step is restartable,
so a kill between any two leaves a dir that the next start resumes or completes. The loop owns
the clock, the budget and the evaluation schedule; the method only updates parameters
(AlgoPerf's rule).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import __version__
from .checkpoint import fsync_dir, load_checkpoint, save_checkpoint, write_text_atomic
from .engine import build_engine, mix_seed, resolve_backend
from .errors import CheckpointError, ConfigError
from .lock import RunDirLock
from .models import apply_tuning, build_objective, hf_model, load_model, trainable, with_demonstrations, zo_closure
from .optim import decay_groups
from .redaction import redact, redact_hydra_files  # noqa: F401 - redact: part of run's API (tests, report)
from .tasks import build_splits, load_task
from .telemetry import ForwardCounter, JsonlLogger, PeakMemory, Progress, WandbLogger
from .validation import RESUMABLE_KEYS, validate

log = logging.getLogger(__name__)

# SIGUSR1: Slurm's usual preemption warning; SIGUSR2: submitit's (hydra-submitit-launcher), sent
# signal_delay_s before the time limit or on preemption
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


# -- small helpers ------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def git_sha() -> str | None:
    """HEAD of the source checkout zobench runs from (``-dirty`` if modified), or None."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _flat(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        out.update(_flat(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


class BatchStream:
    """Training batches: consecutive slices of epoch permutations; epoch e is
    ``RandomState(mix_seed(seed, e)).permutation(n)``, a pure function of (seed, epoch), so the
    position (epoch, offset) is all a checkpoint needs."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, offset: int = 0) -> None:
        if n <= 0:
            raise ValueError("a batch stream needs at least one example")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.offset = epoch, offset
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.RandomState(mix_seed(self.seed, epoch) % 2**32).permutation(self.n)

    def next(self) -> list[int]:
        out = []
        while len(out) < self.batch_size:
            if self.offset == self.n:
                self.epoch, self.offset = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            take = min(self.batch_size - len(out), self.n - self.offset)
            out.extend(self._perm[self.offset : self.offset + take].tolist())
            self.offset += take
        return out


class StopRequest:
    """SIGTERM / SIGUSR1 / SIGUSR2 (Slurm, submitit) / SIGINT: finish the step, checkpoint, stop.
    Further stop signals are noted, not acted on (a KeyboardInterrupt mid-checkpoint would leave
    a failed run behind); SIGKILL still stops at once and the last checkpoint resumes.

    The handlers installed before (submitit's requeue handler, for one) are restored on exit, so
    the caller can hand the signal on once the checkpoint is safe (``__main__``)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second Ctrl-C while the checkpoint is written must not tear it
            log.warning(
                "received %s again: still finishing the step and its checkpoint (SIGKILL stops at "
                "once; the last checkpoint is then resumed)",
                signal.Signals(signum).name,
            )
            return
        self.signum = signum
        log.warning("received %s: checkpointing after this step", signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# -- the run ------------------------------------------------------------------------------------
def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Execute (or resume) one run into ``run_dir``; returns the summary (also in summary.json).
    One process at a time per run dir (``RunDirLock``): a second one is refused with one line."""
    started = time.perf_counter()
    validate(cfg)
    run_dir = Path(run_dir)
    with RunDirLock(run_dir):
        redact_hydra_files(run_dir)
        return _run(cfg, run_dir, started)


def _run(cfg: DictConfig, run_dir: Path, started: float) -> dict:
    summary_path = run_dir / "summary.json"
    previous = _previous_summary(summary_path)
    if previous.get("status") == "completed":
        log.info("%s holds a completed run; nothing to do", run_dir)
        _clean_up_finished(run_dir)  # a kill during the clean-up of the finished run left some of it
        return previous
    config = redact(OmegaConf.to_container(cfg, resolve=True))
    checkpoint = _without_lost_best_state(load_checkpoint(run_dir / "checkpoint"), run_dir)
    if checkpoint is not None:
        _check_resumable(config, run_dir / "config.yaml")
        _check_steps(cfg, checkpoint[0]["step"], run_dir)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
    summary = {
        "task": cfg.task.name,
        "model": cfg.model.name,
        "optimizer": cfg.optimizer.name,
        "tuning": cfg.tuning.name,
        "seed": int(cfg.seed),
        "steps": 0,
        "git_sha": git_sha(),
        "zobench_version": __version__,
        "status": "failed",
        "seeds": {
            "optimizer": int(cfg.seed),
            "data": int(cfg.data.seed),
            "eval_data": int(cfg.data.eval_seed),
            "batch_order": mix_seed(cfg.seed, 1),
            "model_init": cfg.model.get("init_seed"),
        },
    }
    # events after the checkpoint are replayed, so the log is cut back to where the checkpoint was
    metrics = JsonlLogger(run_dir / "metrics.jsonl", truncate_at=checkpoint[0]["metrics_offset"] if checkpoint else 0)
    loggers = [metrics]
    elapsed_before = checkpoint[0]["elapsed"] if checkpoint else 0.0
    try:
        if cfg.logger.name == "wandb":
            loggers.append(WandbLogger(cfg.logger, run_dir, config, name=run_dir.name))
        with StopRequest() as stop:
            summary.update(_train_and_evaluate(cfg, run_dir, loggers, checkpoint, stop, started, elapsed_before))
    except BaseException as err:  # record why, then let the error surface
        summary["error"] = f"{type(err).__name__}: {err}"
        summary["wall_s"] = elapsed_before + time.perf_counter() - started
        metrics.sync()
        write_json_atomic(summary_path, summary)
        for logger in loggers:
            logger.finish()
        raise
    summary["wall_s"] = elapsed_before + time.perf_counter() - started
    for logger in loggers:
        logger.summary(summary)
        logger.finish()  # metrics.jsonl fsynced before the summary that vouches for it
    write_json_atomic(summary_path, summary)
    if summary["status"] == "completed":  # checkpoint and best state are not needed once the summary is safe
        _clean_up_finished(run_dir)
    return summary


def _previous_summary(path: Path) -> dict:
    """summary.json of an earlier start ({} if none); it is written atomically, so an unreadable
    one was damaged from outside and is refused rather than overwritten."""
    if not path.is_file():
        return {}
    try:
        previous = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise CheckpointError(
            f"{path} is unreadable ({type(err).__name__}: {err}); move it away to run again in this dir"
        ) from None
    if not isinstance(previous, dict):
        raise CheckpointError(f"{path} is not a JSON object; move it away to run again in this dir")
    return previous


def _clean_up_finished(run_dir: Path) -> None:
    """The last steps of the finishing sequence, in order, each one safe to repeat: the
    checkpoint first (its weights are the large part), then the best-dev state it refers to."""
    for name in ("checkpoint", "best"):
        if (run_dir / name).exists():
            shutil.rmtree(run_dir / name)
            fsync_dir(run_dir)


def _without_lost_best_state(checkpoint, run_dir: Path):
    """A checkpoint whose best-dev file is gone cannot give the run its test score. zobench
    removes best/ only after the summary, but an older version removed it before: a dir killed
    in that window is started afresh (runs are deterministic: the same result), not failed."""
    best_file = checkpoint[0].get("best_file") if checkpoint is not None else None
    if best_file is None or (run_dir / "best" / best_file).is_file():
        return checkpoint
    log.warning("%s: the checkpoint's best-dev state %s is gone; starting the run afresh", run_dir, best_file)
    shutil.rmtree(run_dir / "checkpoint")
    return None


def _check_steps(cfg: DictConfig, checkpoint_step: int, run_dir: Path) -> None:
    """A checkpoint past ``train.steps`` cannot be resumed into a run of fewer steps (it would
    report more steps than its config says, with weights trained past them)."""
    if cfg.train.get("forward_budget"):
        return  # steps follow from the budget: checked once the method's passes per step are known
    if checkpoint_step > int(cfg.train.steps):
        raise CheckpointError(
            f"train.steps={cfg.train.steps}: {run_dir / 'checkpoint'} is at step {checkpoint_step}; "
            f"resume it with train.steps >= {checkpoint_step}, or use another hydra.run.dir"
        )


def _check_resumable(config: dict, saved_path: Path) -> None:
    """A checkpoint is resumed only under the config it was written with (bar RESUMABLE_KEYS)."""
    if not saved_path.is_file():
        raise CheckpointError(
            f"{saved_path.parent / 'checkpoint'} has no config.yaml beside it; cannot tell which config it belongs to"
        )
    saved = _flat(OmegaConf.to_container(OmegaConf.load(saved_path)))
    now = _flat(config)
    changed = sorted(
        k
        for k in set(saved) | set(now)
        if saved.get(k) != now.get(k) and not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)
    )
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise CheckpointError(
            f"{saved_path.parent} holds a checkpoint of a different config ({detail}); "
            "use another hydra.run.dir or restore those values"
        )


def _train_and_evaluate(
    cfg: DictConfig, run_dir: Path, loggers: list, checkpoint, stop: StopRequest, started: float, elapsed_before: float
) -> dict:
    device = resolve_device(cfg.device)
    torch.set_grad_enabled(False)  # zeroth order: no autograd in the loop (FT baselines enable it per step)

    def emit(event: dict) -> None:
        for logger in loggers:
            logger.log(event)

    def wall() -> float:
        return elapsed_before + time.perf_counter() - started

    # data: the paper's protocol
    spec = load_task(cfg.task.name)
    family = cfg.model.family
    if family not in spec.families:
        raise ConfigError(
            f"model={cfg.model.name} is a {family} LM; task={spec.name} has prompts for "
            f"{', '.join(spec.families)} LMs only"
        )
    splits = build_splits(
        spec,
        cfg.data.dir,
        cfg.data.num_train,
        cfg.data.num_dev,
        cfg.data.num_eval,
        seed=cfg.data.seed,
        eval_seed=cfg.data.eval_seed,
        on_bad_row=cfg.data.on_bad_row,
        **_protocol(cfg),
    )
    if (cfg.train.steps > 0 or cfg.train.get("forward_budget")) and not splits.train:
        raise ConfigError(
            f"task={spec.name}: no training examples are left once data.num_dev={cfg.data.num_dev} "
            "dev examples are taken from its training pool; lower data.num_dev"
        )

    # model, tuning, objective
    model, tokenizer = _load_model(cfg, device)
    model = apply_tuning(model, OmegaConf.to_container(cfg.tuning, resolve=True), family, seed=cfg.seed)
    # masked LMs have their own length (LM-BFF 128 / 256) where a task serves both families
    max_length = cfg.task.get("masked_max_length", cfg.task.max_length) if family == "masked" else cfg.task.max_length
    objective = build_objective(spec, family, model, tokenizer, max_length, device)
    if cfg.objective not in ("loss", objective.metric):
        raise ConfigError(
            f"objective={cfg.objective}: task metric is {objective.metric}; allowed loss, {objective.metric}"
        )
    rendered = {
        name: [spec.render(ex, family=family) for ex in rows]
        for name, rows in (("train", splits.train), ("dev", splits.dev), ("test", splits.test))
    }
    demos = rendered["train"][: cfg.icl.demos]
    train, dev, test = (
        [objective.encode(with_demonstrations(r, demos, cfg.icl.separator)) for r in rendered[name]]
        for name in ("train", "dev", "test")
    )
    counter = ForwardCounter(hf_model(model))  # one call per forward, whatever the wrapper or objective
    memory = PeakMemory(device)

    # optimizer: a ZO method on the engine, a first-order torch optimizer (FT baselines), or a
    # linear probe fitted on the frozen model's features (LP baseline, no steps)
    named = trainable(model)
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    opt_cfg.pop("name")
    optimizer_cls = _import(opt_cfg.pop("_target_"))
    weight_decay = opt_cfg.pop("weight_decay", 0.0)
    first_order = bool(opt_cfg.pop("first_order", False))
    probing = bool(opt_cfg.pop("linear_probe", False))
    if probing:
        if cfg.train.steps != 0:
            raise ConfigError(
                f"optimizer=linear_probe fits a classifier on frozen features and takes no steps; "
                f"set train.steps=0 (got {cfg.train.steps})"
            )
        with counter.phase("train"):  # the training examples' feature forwards are its training cost
            objective = optimizer_cls(objective, train, cfg.train.eval_batch_size, seed=cfg.seed, **opt_cfg)
        optimizer = None
    elif first_order:
        optimizer = _build_optimizer(cfg, optimizer_cls, decay_groups(named, weight_decay), **opt_cfg)
    else:
        engine = build_engine(
            cfg.engine.backend, cfg.engine.mode, model, paired=cfg.engine.paired, fused_linear=cfg.engine.fused_linear
        )
        counter.replicas = lambda: engine.replica_count  # a batched call evaluates several models
        groups = decay_groups(named, weight_decay, names=getattr(optimizer_cls, "takes_names", False))
        optimizer = _build_optimizer(cfg, optimizer_cls, groups, engine=engine, seed=cfg.seed, **opt_cfg)
    metric = objective.metric

    # the loop's own state: all of it goes into a checkpoint
    loop = {
        "step": 0,
        "epoch": 0,
        "offset": 0,
        "counts": {},
        "best_dev": None,
        "best_step": 0,
        "best_file": None,
        "train_peak": 0,
        "inference_peak": None,
        "skipped_steps": 0,
    }
    if checkpoint is not None:
        saved_loop, tensors, optimizer_state = checkpoint
        loop.update({k: saved_loop[k] for k in loop})
        _copy_into(named, tensors, run_dir / "checkpoint")
        optimizer.load_state_dict(optimizer_state)
        counter.counts.update(loop["counts"])
        log.info("resumed from step %d", loop["step"])
    best_dir = run_dir / "best"
    _remove_stale_best(best_dir, keep=loop["best_file"])
    stream = (
        BatchStream(len(train), cfg.train.batch_size, mix_seed(cfg.seed, 1), loop["epoch"], loop["offset"])
        if train
        else None
    )  # zero-shot / ICL evaluations may have no training examples
    if stream is not None and hasattr(optimizer, "bind_data"):  # methods that take extra batches
        # (DiZO's projection rounds, MeZO-SVRG's anchor) draw them from the loop's stream, so a
        # resumed run sees the same batches; their forwards are counted like the step's
        optimizer.bind_data(
            lambda: zo_closure(objective, [train[i] for i in stream.next()], cfg.objective), cfg.train.batch_size
        )

    def counts() -> dict:
        return {
            "forward_passes": counter["train"],
            "forward_passes_eval": counter["eval"],
            "forward_passes_total": counter.total,
        }

    def evaluate(split: str, examples, step: int) -> dict:
        with counter.phase("eval"):
            values = objective.evaluate(examples, cfg.train.eval_batch_size)
        emit({"event": "eval", "split": split, "step": step, **values, **counts(), "wall_s": wall()})
        return values

    def save(step: int) -> None:
        loop.update(
            step=step,
            epoch=stream.epoch if stream else 0,
            offset=stream.offset if stream else 0,
            counts=dict(counter.counts),
            metrics_offset=loggers[0].offset,
            elapsed=wall(),
        )
        loggers[0].sync()  # the events up to the offset the checkpoint records are on disk first
        save_checkpoint(run_dir / "checkpoint", step, dict(named), optimizer.state_dict(), loop)

    if loop["inference_peak"] is None:  # inference-only peak of one training batch (a counted "probe")
        # zero-shot runs may have no training examples: probe the first test batch instead
        probe = (
            [train[i] for i in BatchStream(len(train), cfg.train.batch_size, mix_seed(cfg.seed, 1)).next()]
            if train
            else test[: cfg.train.batch_size]
        )
        memory.reset()
        with counter.phase("probe"):
            objective.loss(probe)
        loop["inference_peak"] = memory.peak()

    steps, eval_every = _schedule(cfg.train, optimizer, first_order or probing)
    if loop["step"] > steps:
        raise CheckpointError(
            f"{run_dir / 'checkpoint'} is at step {loop['step']}, past the {steps} steps this config "
            "trains for; raise train.steps / train.forward_budget, or use another hydra.run.dir"
        )
    status, step = "completed", loop["step"]
    if steps == 0:  # zero-shot / ICL
        loop["best_dev"] = evaluate("dev", dev, 0)[metric] if dev else None
    progress = Progress(total=steps, initial=step, forward_passes=counter["train"])
    while step < steps:
        step += 1
        batch = [train[i] for i in stream.next()]
        memory.reset()
        if first_order:
            loss, info = _first_order_step(optimizer, objective, batch)
        else:
            loss = float(optimizer.step(zo_closure(objective, batch, cfg.objective)))
            info = optimizer.last_step_info
        loop["train_peak"] = max(loop["train_peak"], memory.peak())
        progress.update(loss, counter["train"])
        finite = math.isfinite(loss) and all(math.isfinite(v) for v in info.values())
        if step % cfg.train.log_every == 0 or step == steps or not finite:
            emit(
                {
                    "event": "train",
                    "step": step,
                    "loss": loss,
                    "lr": optimizer.param_groups[0]["lr"],
                    **info,
                    **counts(),
                    "peak_memory_bytes": loop["train_peak"],
                    "wall_s": wall(),
                }
            )
        if not finite:
            if cfg.train.on_divergence == "skip":  # the optimizer refused the update; go on
                loop["skipped_steps"] += 1
                log.warning("step %d: non-finite loss or projected gradient %s; step skipped", step, info)
            else:
                status = "diverged"
                log.error(
                    "step %d: non-finite loss or projected gradient %s; stopping (train.on_divergence=stop)", step, info
                )
                break
        evaluating = bool(dev) and (step % eval_every == 0 or step == steps)
        checkpointing = stop.signum is not None or (
            cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0
        )
        # weights are checked before anything is written from them (a blown-up weight that is not
        # written shows up as a non-finite loss at the next step): a sweep only when needed
        if (evaluating or checkpointing or step == steps) and not _all_finite(named):
            status = "diverged"
            log.error("step %d: the weights hold NaN/inf; stopping without writing them", step)
            break
        if evaluating:
            value = evaluate("dev", dev, step)[metric]
            if loop["best_dev"] is None or value > loop["best_dev"]:
                loop["best_dev"], loop["best_step"] = value, step
                if cfg.train.keep_best and step != steps:
                    loop["best_file"] = _save_best(named, best_dir, step)
        if checkpointing:
            save(step)
            _remove_stale_best(best_dir, keep=loop["best_file"])
        if stop.signum is not None:
            status = "interrupted"
            break
    progress.close()

    if status == "completed" and cfg.train.keep_best and loop["best_file"] and loop["best_step"] != steps:
        _copy_into(named, _load_tensors(best_dir / loop["best_file"]), best_dir)
    # the weights tested: the best-dev state (keep_best with a dev set), else the last step's
    tested_step = loop["best_step"] if cfg.train.keep_best and dev else step
    tested = evaluate("test", test, tested_step) if status == "completed" else {metric: None}
    if status == "completed" and cfg.train.save_final:
        _save_tensors(named, run_dir / "final" / "trainable.safetensors")
    # best/ stays until the summary is written (run): a kill before that resumes from the
    # checkpoint, which needs the best-dev file it names
    result = {
        "task_version": spec.version,
        "steps": step,
        "best_step": loop["best_step"] if dev else None,
        "tested_step": tested_step if status == "completed" else None,
        "forward_passes": counter["train"],
        "forward_passes_eval": counter["eval"],
        "forward_passes_probe": counter["probe"],
        "metric": metric,
        f"dev_{metric}": loop["best_dev"],
        **{f"test_{name}": value for name, value in tested.items()},
        "skipped_steps": loop["skipped_steps"],
        "skipped_rows": sum(splits.skipped_rows.values()),
        "num_train": len(train),
        "num_dev": len(dev),
        "num_test": len(test),
        "peak_memory_bytes": loop["train_peak"] if steps else loop["inference_peak"],
        "inference_peak_memory_bytes": loop["inference_peak"],
        "peak_memory_source": memory.source,
        "device": str(device),
        "engine": (
            "autograd"
            if first_order
            else "none"
            if probing
            else f"{resolve_backend(cfg.engine.backend, model)}/{cfg.engine.mode}"
        ),
        "status": status,
    }
    if status == "interrupted":
        result["signal"] = signal.Signals(stop.signum).name
    return result


def _load_model(cfg: DictConfig, device: torch.device):
    """``load_model``, with a cache dir that cannot be written or holds a damaged converted model
    or tokenizer reported in one line naming it (the fix: another ``cache_dir``, or delete the
    damaged folder so that it is converted again)."""
    cache = Path(os.path.expanduser(cfg.cache_dir))
    try:
        return load_model(cfg.model, device, cfg.cache_dir)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - only what comes from the cache dir becomes one line
        if isinstance(err, OSError) and err.filename and str(err.filename).startswith(str(cache)):
            raise ConfigError(
                f"cache_dir={cfg.cache_dir}: cannot use {err.filename} ({err.strerror}); set cache_dir / "
                "ZOBENCH_CACHE to a writable folder"
            ) from err
        damaged = [str(f) for f in _cached_folders(cfg.model, cache)]
        if not damaged:  # not from a cached conversion: a bug, keep the traceback
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"cache_dir={cfg.cache_dir}: loading the converted model in {' / '.join(damaged)} failed "
            f"({type(err).__name__}: {first[:200]}); delete that folder to convert it again"
        ) from err


def _cached_folders(model_cfg, cache: Path) -> list[Path]:
    """The converted copies under ``<cache>/models/`` a model config reads (its own, and that of
    the model it borrows a tokenizer from)."""
    names = [model_cfg.name, *([model_cfg.tokenizer_from] if model_cfg.get("tokenizer_from") else [])]
    return [cache / "models" / name for name in names if (cache / "models" / name).is_dir()]


def _schedule(train_cfg: DictConfig, optimizer, not_zo: bool) -> tuple[int, int]:
    """``(steps, eval_every)``: from ``train.steps`` / ``train.eval_every``, or, with
    ``train.forward_budget``, from the method's declared forward passes per step, so that methods
    of 2 (MeZO), 3 (HiZOO) or N+1 (FZOO) passes per step get the same budget and, with
    ``train.eval_every_passes``, dev evaluations at the same forward-pass counts."""
    budget = train_cfg.get("forward_budget")
    if not budget:
        return int(train_cfg.steps), int(train_cfg.eval_every)
    if not_zo:
        raise ConfigError(
            "train.forward_budget counts a ZO method's forward passes; first-order and "
            "linear-probe baselines take train.steps (set train.forward_budget=null)"
        )
    exact = getattr(optimizer, "forward_passes", None)  # methods whose steps differ in cost
    per_step = optimizer.forward_passes_per_step  # (DiZO, MeZO-SVRG): an average, not an int
    steps = max(1, int(budget // per_step))
    if exact is not None:  # the most steps whose exact passes fit the budget (at least one)
        steps = 1
        while exact(steps + 1) <= budget:
            steps += 1
    every = train_cfg.get("eval_every_passes")
    return steps, max(1, int(int(every) // per_step)) if every else int(train_cfg.eval_every)


def _protocol(cfg: DictConfig) -> dict:
    """The data protocol keys, for configs that have them (``data.protocol``, ``data.k``)."""
    return {key: cfg.data[key] for key in ("protocol", "k") if key in cfg.data}


def _first_order_step(optimizer, objective, batch) -> tuple[float, dict]:
    """One backprop step (the FT baselines): loss, backward, update; a non-finite loss is not applied."""
    optimizer.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = objective.loss(batch)
        if not torch.isfinite(loss):
            return float(loss), {}
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # gradients are parameter-sized: free them between steps
    return float(loss), {}


def _import(target: str):
    module, _, name = target.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def _build_optimizer(cfg: DictConfig, optimizer_cls, params, **kwargs):
    """The optimizer, its hyperparameter checks (ValueError, "key=value: why") turned into the
    one-line config error of the key they name (optimizer.key=value: why)."""
    try:
        return optimizer_cls(params, **kwargs)
    except ValueError as error:
        message = str(error)
        named_key = re.match(r"\w+=", message) and message.split("=", 1)[0] in kwargs
        raise ConfigError(
            f"optimizer.{message}" if named_key else f"optimizer={cfg.optimizer.name}: {message}"
        ) from None


def _all_finite(named) -> bool:
    return all(bool(torch.isfinite(p).all()) for _, p in named)


def _save_tensors(named, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({name: p.detach().contiguous() for name, p in named}, str(tmp))
    os.replace(tmp, path)


def _load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:
        raise CheckpointError(f"{path} is unreadable ({type(err).__name__}: {err})") from err


def _copy_into(named, tensors: dict, where: Path) -> None:
    missing = [name for name, _ in named if name not in tensors]
    if missing:
        raise CheckpointError(f"{where} lacks parameters {missing[:3]}: it belongs to another model or tuning")
    for name, p in named:
        p.data.copy_(tensors[name])


def _save_best(named, best_dir: Path, step: int) -> str:
    """The best-dev state, one file per step, so a checkpoint always names a file that exists."""
    name = f"step-{step:09d}.safetensors"
    _save_tensors(named, best_dir / name)
    return name


def _remove_stale_best(best_dir: Path, keep: str | None) -> None:
    """Best-dev files other than ``keep``: superseded, or written after the checkpoint resumed from."""
    for path in best_dir.glob("step-*.safetensors"):
        if path.name != keep:
            path.unlink()
