"""The training recipe of a zobench run, after torchtune's recipes: ``setup`` (data, model,
learner, resume), ``train``, ``finish`` (test evaluation, final weights, the summary's numbers).

config → task splits (MeZO's 1000/500/1000 protocol) → model + objective → learner (a ZO method
on an engine, a backprop baseline, or a linear probe that takes no steps) → ``train.steps`` steps,
dev evaluations every ``train.eval_every`` keeping the best-dev state → test metric of that
state. The recipe owns the clock, the budget and the evaluation schedule; the method only updates
parameters (AlgoPerf's rule, Dahl et al. 2023). The run dir's life (lock, summary.json, clean-up)
is ``run.py``'s; the on-disk checkpoint is ``checkpoint.py``'s and holds ``LoopState``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf

from ..checkpoint import (
    best_name,
    copy_into,
    load_tensors,
    remove_stale_best,
    save_best,
    save_checkpoint,
    save_tensors,
)
from ..dist import hooks as dist
from ..dist.evaluation import sharded_evaluate
from ..engine import mix_seed, trace
from ..errors import CheckpointError, ConfigError
from ..models import apply_tuning, build_objective, hf_model, trainable, with_demonstrations
from ..tasks import build_splits, load_task
from ..tasks.batches import BatchStream
from ..telemetry import ForwardCounter, PeakMemory, Progress, clock, heartbeat
from ..trajectory.checkpoints import RunTrajectory, checkpoint_mode, has_log
from . import guard
from .learners import ZOLearner, build_learner, import_target
from .setup import load_model_or_explain, protocol, resolve_device, schedule
from .state import LoopState

log = logging.getLogger(__name__)


class Recipe:
    """One run's training and evaluation; ``emit`` sends events to the run's loggers, ``wall()``
    is the run's wall time so far (time before a resume included), ``stop`` a ``StopRequest``."""

    def __init__(self, cfg: DictConfig, run_dir: Path, loggers: list, stop, wall) -> None:
        self.cfg, self.run_dir, self.loggers, self.stop, self.wall = cfg, Path(run_dir), loggers, stop, wall
        self.device = resolve_device(cfg.device)
        self.state = LoopState()
        self.best_dir = self.run_dir / "best"
        self.learner: Any = None  # a Learner; None: linear probing takes no steps
        self.dist: Any = None  # the rank context (dist/context.py), set by dist.attach
        self.stream: BatchStream | None = None  # zero-shot / ICL evaluations may have no training examples
        self.trajectory: RunTrajectory | None = None  # ZO learners: the per-step log (zobench/trajectory)
        dist.attach(self)  # multi-rank runs (dist/): the stop request every rank agrees on

    # -- setup -----------------------------------------------------------------------------------
    def setup(self, checkpoint) -> None:
        """Everything before the first step; ``checkpoint``: ``load_checkpoint``'s, or None."""
        torch.set_grad_enabled(False)  # zeroth order: no autograd in the loop (backprop enables it per step)
        self.setup_data()
        self.setup_model()
        dist.prepare_model(self)  # dist.mode=sharded: FSDP2 shards, before the engine
        self.setup_learner()
        self.restore(checkpoint)
        dist.attach_learner(self)  # multi-rank: each rank evaluates its shard (or its directions)
        self.measure_inference_peak()
        optimizer = getattr(self.learner, "optimizer", None)
        self.steps, self.eval_every = schedule(self.cfg.train, optimizer, not isinstance(self.learner, ZOLearner))
        if self.state.step > self.steps:
            raise CheckpointError(
                f"{self.run_dir / 'checkpoint'} is at step {self.state.step}, past the {self.steps} steps this "
                "config trains for; raise train.steps / train.forward_budget, or use another hydra.run.dir"
            )

    def setup_data(self) -> None:
        """The task's train / dev / test examples under the paper's protocol (``data.*``)."""
        cfg = self.cfg
        self.spec = load_task(cfg.task.name)
        if cfg.model.family not in self.spec.families:
            raise ConfigError(
                f"model={cfg.model.name} is a {cfg.model.family} LM; task={self.spec.name} has prompts for "
                f"{', '.join(self.spec.families)} LMs only"
            )
        data = cfg.data
        self.splits = build_splits(
            self.spec,
            data.dir,
            data.num_train,
            data.num_dev,
            data.num_eval,
            seed=data.seed,
            eval_seed=data.eval_seed,
            on_bad_row=data.on_bad_row,
            **protocol(cfg),
        )
        if (cfg.train.steps > 0 or cfg.train.get("forward_budget")) and not self.splits.train:
            # mezo: the pool check of build_splits leaves train a row; kshot: its train file or pool is empty
            raise ConfigError(
                f"task={self.spec.name}: no training examples (data.protocol={data.get('protocol', 'mezo')}, "
                f"data.num_dev={data.num_dev}); a run that takes steps needs some: point data.dir at a mirror "
                "whose train split has rows, or set train.steps=0 to evaluate only"
            )

    def setup_model(self) -> None:
        """Model, tuning (full / LoRA / prefix), objective, and the examples encoded for it."""
        cfg, family = self.cfg, self.cfg.model.family
        with heartbeat(f"loading model {cfg.model.name}"):
            started = time.perf_counter()
            model, tokenizer = load_model_or_explain(cfg, self.device)
        log.info("loaded model %s in %s", cfg.model.name, clock(time.perf_counter() - started))
        self.model = apply_tuning(model, OmegaConf.to_container(cfg.tuning, resolve=True), family, seed=cfg.seed)
        # masked LMs have their own length (LM-BFF 128 / 256) where a task serves both families
        length = cfg.task.get("masked_max_length", cfg.task.max_length) if family == "masked" else cfg.task.max_length
        self.objective = build_objective(self.spec, family, self.model, tokenizer, length, self.device)
        if cfg.objective not in ("loss", self.objective.metric):
            raise ConfigError(
                f"objective={cfg.objective}: task metric is {self.objective.metric}; "
                f"allowed loss, {self.objective.metric}"
            )
        rendered = {
            name: [self.spec.render(ex, family=family) for ex in getattr(self.splits, name)]
            for name in ("train", "dev", "test")
        }
        demos = rendered["train"][: cfg.icl.demos]
        self.examples = {
            name: [self.objective.encode(with_demonstrations(r, demos, cfg.icl.separator)) for r in rows]
            for name, rows in rendered.items()
        }
        self.counter = ForwardCounter(hf_model(self.model))  # one call per forward, whatever the wrapper
        self.memory = PeakMemory(self.device)
        self.named = trainable(self.model)

    def setup_learner(self) -> None:
        """The learner ``optimizer=`` names, or (``optimizer=linear_probe``) the fitted probe,
        which replaces the objective for evaluation and takes no steps."""
        opt_cfg = cast(dict, OmegaConf.to_container(self.cfg.optimizer, resolve=True))
        opt_cfg.pop("name")
        if not opt_cfg.pop("linear_probe", False):
            self.learner = build_learner(self.cfg, opt_cfg, self.model, self.named, self.objective)
            if isinstance(self.learner, ZOLearner):  # a batched call evaluates several models
                self.counter.replicas = lambda: self.learner.engine.replica_count
                guard.arm_watchdog(self.cfg, self.learner, self.model)
            for logger in self.loggers:  # W&B: the engine that runs (the config says only what was asked)
                if self.learner.engine_info and hasattr(logger, "update_config"):
                    logger.update_config({"engine_used": self.learner.engine_info})
            return
        if self.cfg.train.steps != 0:
            raise ConfigError(
                f"optimizer=linear_probe fits a classifier on frozen features and takes no steps; "
                f"set train.steps=0 (got {self.cfg.train.steps})"
            )
        fit = import_target(opt_cfg.pop("_target_"))
        train = self.examples["train"]
        # the training examples' feature forwards are its training cost
        with self.counter.phase("train"), heartbeat(f"fitting the linear probe on {len(train)} examples"):
            self.objective = fit(self.objective, train, self.cfg.train.eval_batch_size, seed=self.cfg.seed, **opt_cfg)

    def restore(self, checkpoint) -> None:
        """The loop state, weights and optimizer state of ``checkpoint`` (if any); the data stream
        at the position they were saved at."""
        zo = isinstance(self.learner, ZOLearner)
        self.checkpoint_mode = checkpoint_mode(self.cfg, zo)
        logs = zo and self.dist.active and self.dist.mode in ("data", "sharded")  # rank 0 logs the global losses
        base = dist.whole(self) if logs else self.named  # the log hashes these; sharded: all gather, for rank 0
        if self.dist.active:  # several ranks checkpoint weights
            self.checkpoint_mode, zo = "weights", logs and self.dist.leader
            dist.refuse_weightless(checkpoint, self.run_dir)
        if zo and checkpoint is not None and self.checkpoint_mode == "weights":
            # resumed on another engine (engine=torch after the Triton one): the log stops at the checkpoint
            zo = not guard.log_of_another_engine(self.run_dir, self.learner, int(checkpoint[0]["step"]))
        if zo and (checkpoint is None or self.checkpoint_mode == "trajectory" or has_log(self.run_dir)):
            step = None if checkpoint is None else int(checkpoint[0]["step"])  # before its weights are loaded
            self.trajectory = RunTrajectory(self.cfg, self.run_dir, self.learner, self.model, base, step)
            self.trajectory.named = self.named  # the run's parameters (a sharded run's gathered copy is dropped)
        elif zo:  # a weight checkpoint of a zobench that wrote no log: resumed without one
            log.warning("%s has no trajectory.bin: this run resumes without a trajectory log", self.run_dir)
        if checkpoint is not None:
            saved, tensors, optimizer_state = checkpoint
            self.state = LoopState.from_dict(saved)
            if self.checkpoint_mode == "trajectory":
                assert self.trajectory is not None
                self.trajectory.replay_to(self.state.step)  # weights and optimizer state, no forward pass
            else:
                copy_into(self.named, tensors, self.run_dir / "checkpoint")
                self.learner.optimizer.load_state_dict(optimizer_state)
            self.counter.counts.update(self.state.counts)
            log.info("resumed from step %d", self.state.step)
            guard.note_checkpoint(self.checkpoint_mode, self.state.step)
        if dist.writes(self):
            remove_stale_best(self.best_dir, keep=self.state.best_file)
        train, batch_size = self.examples["train"], self.cfg.train.batch_size
        if train:
            seed = mix_seed(self.cfg.seed, 1)
            self.stream = BatchStream(len(train), batch_size, seed, self.state.epoch, self.state.offset)
            if isinstance(self.learner, ZOLearner):
                self.learner.bind_data(self.next_batch, batch_size)

    def measure_inference_peak(self) -> None:
        """Peak memory of one inference-only training batch (a counted ``probe``), once per run;
        zero-shot runs may have no training examples: the first test batch then."""
        if self.state.inference_peak is not None:
            return
        train, size = self.examples["train"], self.cfg.train.batch_size
        first = BatchStream(len(train), size, mix_seed(self.cfg.seed, 1)).next() if train else None
        batch = [train[i] for i in first] if first else self.examples["test"][:size]
        self.memory.reset()
        objective = getattr(self.learner, "objective", self.objective)  # data parallel: this rank's shard
        with self.counter.phase("probe"):
            objective.loss(batch)
        self.state.inference_peak = self.memory.peak()

    # -- the loop --------------------------------------------------------------------------------
    def train(self) -> str:
        """Steps ``state.step + 1 .. steps``; returns the status: completed, diverged or interrupted."""
        cfg, state, dev = self.cfg.train, self.state, self.examples["dev"]
        if self.steps == 0 and dev:  # zero-shot / ICL
            state.best_dev = self.evaluate("dev", 0)[self.metric]
        progress = Progress(self.steps, state.step, self.counter["train"], every=cfg.log_every)
        status = "completed"
        while state.step < self.steps:
            state.step += 1
            last = state.step == self.steps
            self.memory.reset()
            with trace.step(f"step {state.step}"):  # a stall inside it ends the run (engine.watchdog_s)
                loss, info = self.learner.step(self.next_batch())
            if self.trajectory is not None:
                self.trajectory.append(state.step, self.learner.tape.calls)
            state.train_peak = max(state.train_peak, self.memory.peak())
            progress.update(loss, self.counter["train"])
            finite = math.isfinite(loss) and all(math.isfinite(v) for v in info.values())
            if state.step % cfg.log_every == 0 or last or not finite:
                self.log_train(loss, info)
            if not finite and not self.skip_divergent(info):
                status = "diverged"
                break
            evaluating = bool(dev) and (state.step % self.eval_every == 0 or last)
            checkpointing = self.stop.signum is not None or (
                cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0
            )
            # weights are checked before anything is written from them (a blown-up weight that is not
            # written shows up as a non-finite loss at the next step): a sweep only when needed
            if (evaluating or checkpointing or last) and not all(bool(torch.isfinite(p).all()) for _, p in self.named):
                log.error("step %d: the weights hold NaN/inf; stopping without writing them", state.step)
                status = "diverged"
                break
            if evaluating:
                self.evaluate_dev()
            if checkpointing:
                self.save()
            if self.stop.signum is not None:
                status = "interrupted"
                break
        progress.close()
        trace.uninstall()  # the watchdog guards steps only
        return status

    def next_batch(self) -> list:
        assert self.stream is not None, "a run that takes steps has training examples (setup_data)"
        return [self.examples["train"][i] for i in self.stream.next()]

    def skip_divergent(self, info: dict) -> bool:
        """A non-finite loss or projected gradient: skip the step (the method refused the update)
        with ``train.on_divergence=skip``, else stop."""
        if self.cfg.train.on_divergence == "skip":
            self.state.skipped_steps += 1
            log.warning("step %d: non-finite loss or projected gradient %s; step skipped", self.state.step, info)
            return True
        log.error(
            "step %d: non-finite loss or projected gradient %s; stopping (train.on_divergence=stop)",
            self.state.step,
            info,
        )
        return False

    def evaluate_dev(self) -> None:
        """A dev evaluation; a new best is written to ``best/`` (unless it is the last step, whose
        weights are in memory when the test evaluation comes)."""
        state = self.state
        value = self.evaluate("dev", state.step)[self.metric]
        if state.best_dev is None or value > state.best_dev:
            state.best_dev, state.best_step = value, state.step
            if self.cfg.train.keep_best and state.step != self.steps and self.checkpoint_mode == "weights":
                writes, named = dist.writes(self), dist.whole(self)  # rank 0 writes, the others read it
                state.best_file = save_best(named, self.best_dir, state.step) if writes else best_name(state.step)

    def save(self) -> None:
        """A checkpoint of the weights, the optimizer state and ``LoopState``."""
        state = self.state
        state.epoch, state.offset = (self.stream.epoch, self.stream.offset) if self.stream else (0, 0)
        state.counts, state.metrics_offset, state.elapsed = (
            dict(self.counter.counts),
            self.loggers[0].offset,
            self.wall(),
        )
        self.loggers[0].sync()  # the events up to the offset the checkpoint records are on disk first
        if self.trajectory is not None:
            self.trajectory.sync()  # and the steps it will replay
        weights = self.checkpoint_mode == "weights"  # trajectory: resume replays the log instead
        optimizer_state = dist.whole_state(self) if weights else {}
        tensors = dict(dist.whole(self)) if weights else {}  # sharded: gathered on every rank
        dist.check(self, f"checkpoint at step {state.step}")  # the ranks' weights must be one copy
        if dist.writes(self):
            save_checkpoint(self.run_dir / "checkpoint", state.step, tensors, optimizer_state, state.to_dict())
            remove_stale_best(self.best_dir, keep=state.best_file)
        guard.note_checkpoint(self.checkpoint_mode, state.step)

    # -- evaluation and events -------------------------------------------------------------------
    @property
    def metric(self) -> str:
        return self.objective.metric

    def evaluate(self, split: str, step: int) -> dict:
        """The objective's metrics on ``split``, as an ``eval`` event (and a log line)."""
        examples, before, started = self.examples[split], self.counter["eval"], time.perf_counter()
        beat = heartbeat(
            f"step {step}: evaluating {split} ({len(examples)} examples)",
            detail=lambda: f"{self.counter['eval'] - before} forward passes",
        )
        with self.counter.phase("eval"), beat:
            values = sharded_evaluate(self.objective, examples, self.cfg.train.eval_batch_size, self.dist, self.counter)
        self.emit({"event": "eval", "split": split, "step": step, **values, **self.counts(), "wall_s": self.wall()})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float))
        log.info(
            "step %d: %s %s (%d examples, %s)", step, split, shown, len(examples), clock(time.perf_counter() - started)
        )
        return values

    def log_train(self, loss: float, info: dict) -> None:
        lr = self.learner.optimizer.param_groups[0]["lr"]
        event = {"event": "train", "step": self.state.step, "loss": loss, "lr": lr, **info, **self.counts()}
        self.emit({**event, "peak_memory_bytes": self.state.train_peak, "wall_s": self.wall()})

    def counts(self) -> dict:
        return {
            "forward_passes": self.counter["train"],
            "forward_passes_eval": self.counter["eval"],
            "forward_passes_total": self.counter.total,
        }

    def emit(self, event: dict) -> None:
        for logger in self.loggers:
            logger.log(event)

    # -- the end ---------------------------------------------------------------------------------
    def finish(self, status: str) -> dict:
        """Test evaluation of the best-dev state (``train.keep_best`` with a dev set; else the last
        step's), ``final/`` (``train.save_final``), and the summary's numbers. ``best/`` stays
        until run.py has written the summary: a kill before that resumes from the checkpoint,
        which needs the best-dev file it names."""
        cfg, state, completed, dev = self.cfg.train, self.state, status == "completed", self.examples["dev"]
        if self.trajectory is not None:
            self.trajectory.sync()
        if completed and cfg.keep_best and state.best_file and state.best_step != self.steps:
            copy_into(self.named, load_tensors(self.best_dir / state.best_file), self.best_dir)
        elif completed and cfg.keep_best and dev and self.trajectory and self.checkpoint_mode == "trajectory":
            if state.best_step != self.steps:  # the best-dev state is a step number: replayed, not stored
                self.trajectory.rebuild(state.best_step, self.device)
        tested_step = state.best_step if cfg.keep_best and dev else state.step
        tested = self.evaluate("test", tested_step) if completed else {self.metric: None}
        if completed:
            dist.check(self, "end of the run")
        named = dist.whole(self) if completed and cfg.save_final else []  # sharded: a collective
        if completed and cfg.save_final and dist.writes(self):
            save_tensors(named, self.run_dir / "final" / "trainable.safetensors")
        result = {
            "task_version": self.spec.version,
            "steps": state.step,
            "best_step": state.best_step if dev else None,
            "tested_step": tested_step if completed else None,
            "forward_passes": self.counter["train"],
            "forward_passes_eval": self.counter["eval"],
            "forward_passes_probe": self.counter["probe"],
            "metric": self.metric,
            f"dev_{self.metric}": state.best_dev,
            **{f"test_{name}": value for name, value in tested.items()},
            "skipped_steps": state.skipped_steps,
            "skipped_rows": sum(self.splits.skipped_rows.values()),
            **{f"num_{name}": len(rows) for name, rows in self.examples.items()},
            "peak_memory_bytes": state.train_peak if self.steps else state.inference_peak,
            "inference_peak_memory_bytes": state.inference_peak,
            "peak_memory_source": self.memory.source,
            "device": str(self.device),
            "engine": self.learner.engine_name if self.learner else "none",
            "engine_used": getattr(self.learner, "engine_info", None),  # backend, mode, fused, Triton, device
            "status": status,
        }
        if status == "interrupted":
            result["signal"] = self.stop.name
        if self.trajectory is not None:  # synced above: what replay and export check it against
            result["trajectory"] = self.trajectory.seal()
        result.update(dist.summary(self))
        return result
