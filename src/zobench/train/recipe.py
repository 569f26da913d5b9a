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

import torch
from omegaconf import DictConfig

from ..build import (
    build_learner,
    build_model,
    build_objective,
    build_task,
    encode_examples,
    fit_linear_probe,
    is_linear_probe,
)
from ..checkpoint import Checkpoint, best_name, copy_into, read_into, remove_stale_best
from ..dist.checkpoints import load_distributed
from ..dist.strategy import Single, Strategy
from ..engine import mix_seed, trace
from ..errors import CheckpointError
from ..models import hf_model, trainable
from ..offload import setup as offload
from ..offload.export import save_index
from ..tasks.batches import BatchStream
from ..telemetry import ForwardCounter, NullLogger, PeakMemory, Progress, Sink, clock, heartbeat
from ..trajectory.checkpoints import RunTrajectory, checkpoint_mode
from . import guard
from .learners import BackpropLearner, ZOLearner
from .setup import resolve_device, schedule
from .state import LoopState

log = logging.getLogger(__name__)


class Recipe:
    """One run's training and evaluation; ``emit`` sends events to the run's ``loggers`` (sinks),
    ``metrics`` is the one whose offset a checkpoint records (metrics.jsonl), ``wall()`` the run's
    wall time so far (time before a resume included), ``stop`` a ``StopRequest``, ``strategy``
    how the run is spread over processes (``dist/strategy.py``; one process by default)."""

    model: torch.nn.Module  # setup_model's (tuned, then the strategy's)
    counter: ForwardCounter

    def __init__(
        self, cfg: DictConfig, run_dir: Path, loggers: list, stop, wall, strategy: Strategy | None = None, metrics=None
    ) -> None:
        self.cfg, self.run_dir, self.loggers, self.wall = cfg, Path(run_dir), loggers, wall
        self.strategy: Strategy = strategy if strategy is not None else Single()
        self.stop = self.strategy.agreed_stop(stop)  # several ranks: the request every rank agrees on
        self.metrics: Sink = metrics if metrics is not None else NullLogger()  # where metrics.jsonl's offset is
        self.device = resolve_device(cfg.device)
        self.state = LoopState()
        self.first_step = 0  # the step this process starts from (after restore)
        self.load_peak, self.pre_load = 0, 0  # peak memory while the model was loaded, and before (setup_model)
        self.best_dir = self.run_dir / "best"
        self.learner: ZOLearner | BackpropLearner | None = None  # None: linear probing takes no steps
        self.stream: BatchStream | None = None  # zero-shot / ICL evaluations may have no training examples
        self.trajectory: RunTrajectory | None = None  # ZO learners: the per-step log (zobench/trajectory)

    # -- setup -----------------------------------------------------------------------------------
    def setup(self, checkpoint: Checkpoint | None) -> None:
        """Everything before the first step; ``checkpoint``: ``load_checkpoint``'s, or None."""
        torch.set_grad_enabled(False)  # zeroth order: no autograd in the loop (backprop enables it per step)
        self.setup_data()
        self.setup_model(None if checkpoint is None else checkpoint.step)
        self.setup_learner()
        self.restore(checkpoint)
        self.state.load_peak, self.state.pre_load = self.load_peak, self.pre_load
        self.first_step = self.state.step
        self.strategy.attach(self.learner, self.stop, self.counter)  # each rank: its shard (or directions)
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
        self.spec, self.splits = build_task(self.cfg)

    def setup_model(self, resume: int | None = None) -> None:
        """Model, tuning (full / LoRA / prefix), objective, and the examples encoded for it
        (``resume``: the checkpoint's step; an ``offload=disk`` store is then the run's)."""
        self.memory = PeakMemory(self.device)  # from here: the load's peak
        self.pre_load, cfg = self.memory.resident(), self.cfg  # what the process held before the model
        self.model, tokenizer = build_model(
            cfg,
            self.device,
            prepare_model=self.strategy.prepare_model,
            run_dir=self.run_dir,
            resume=resume,
            by_shards=self.strategy.loads_by_shards,
        )
        self.objective = build_objective(cfg, self.spec, self.model, tokenizer, self.device)
        self.examples = encode_examples(cfg, self.spec, self.splits, self.objective)
        self.counter = ForwardCounter(hf_model(self.model))  # one call per forward, whatever the wrapper
        self.load_peak = self.memory.peak()
        self.named = trainable(self.model)

    def setup_learner(self) -> None:
        """The learner ``optimizer=`` names, or (``optimizer=linear_probe``) the fitted probe,
        which replaces the objective for evaluation and takes no steps."""
        if is_linear_probe(self.cfg):
            self.objective = fit_linear_probe(self.cfg, self.objective, self.examples["train"], self.counter)
            return
        self.learner = build_learner(self.cfg, self.model, self.named, self.objective)
        if isinstance(self.learner, ZOLearner):  # a batched call evaluates several models
            self.counter.replicas = lambda: self.learner.engine.replica_count
            guard.arm_watchdog(self.cfg, self.learner, self.model)
        for logger in self.loggers:  # W&B: the engine that runs (the config says only what was asked)
            if self.learner.engine_info and hasattr(logger, "update_config"):
                logger.update_config({"engine_used": self.learner.engine_info})

    def restore(self, checkpoint: Checkpoint | None) -> None:
        """The loop state, weights and optimizer state of ``checkpoint`` (if any); the data stream
        at the position they were saved at."""
        requested = checkpoint_mode(self.cfg, isinstance(self.learner, ZOLearner))
        self.checkpoint_mode = self.strategy.checkpoint_mode(requested)  # several ranks: weights
        self.strategy.check_resumable(checkpoint, self.run_dir)
        zo = isinstance(self.learner, ZOLearner)
        # the log header's hash of the base weights (sharded: streamed, a collective every rank calls)
        base = self.strategy.base_sha256(self.named) if zo else None
        if zo and self.strategy.keeps_log():  # the closure values are the step's
            step = None if checkpoint is None else checkpoint.step
            where = (self.cfg, self.run_dir, self.learner, self.model, self.named)
            self.trajectory = guard.open_log(*where, step, self.checkpoint_mode, base)
        if checkpoint is not None:
            self.load(checkpoint)
        if self.strategy.leader:
            remove_stale_best(self.best_dir, keep=self.state.best_file)
        train, batch_size = self.examples["train"], self.cfg.train.batch_size
        if train:
            seed = mix_seed(self.cfg.seed, 1)
            self.stream = BatchStream(len(train), batch_size, seed, self.state.epoch, self.state.offset)
            if isinstance(self.learner, ZOLearner):
                self.learner.bind_data(self.next_batch, batch_size)

    def load(self, checkpoint: Checkpoint) -> None:
        """The checkpoint's loop state, and its weights and optimizer state (replayed from the log
        for a trajectory checkpoint, which holds none)."""
        self.state = LoopState.from_dict(checkpoint.state)
        if self.checkpoint_mode == "trajectory":
            assert self.trajectory is not None
            self.trajectory.replay_to(self.state.step)  # weights and optimizer state, no forward pass
        else:
            assert self.learner is not None, "a checkpoint is written by a run that takes steps"
            resident, optimizer = offload.resident(self.model, self.named), self.learner.optimizer
            if checkpoint.distributed is not None:  # a sharded run's (DCP): each rank reads its rows
                params = [p for group in optimizer.param_groups for p in group["params"]]
                optimizer_state = load_distributed(checkpoint, resident, params)
            else:
                copy_into(resident, checkpoint.tensors, self.run_dir / "checkpoint")
                optimizer_state = checkpoint.optimizer_state
            offload.restore_weights(self.model, self.run_dir, self.state.step)  # offloaded: the pinned blocks
            optimizer.load_state_dict(optimizer_state)
            # load_state_dict replaces optimizer.state: the offloader streams block state into the new one
            offload.bind(self.learner.optimizer, str(self.cfg.optimizer.name))
        self.counter.counts.update(self.state.counts)
        log.info("resumed from step %d", self.state.step)
        guard.note_checkpoint(self.checkpoint_mode, self.state.step)

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
                assert self.learner is not None, "a run that takes steps has a learner (setup_learner)"
                loss, info = self.learner.step(self.next_batch())
            if self.trajectory is not None:  # a ZO learner's: the closure values of the step
                self.trajectory.append(state.step, self.trajectory.learner.tape.calls)
            state.train_peak = max(state.train_peak, self.memory.peak())
            progress.update(loss, self.counter["train"])
            finite = math.isfinite(loss) and all(math.isfinite(v) for v in info.values())
            if state.step % cfg.log_every == 0 or last or not finite:
                self.log_train(loss, info)
            if not finite and not guard.skip_divergent(cfg.on_divergence, state, info):
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

    def evaluate_dev(self) -> None:
        """A dev evaluation; a new best is written to ``best/`` (unless it is the last step, whose
        weights are in memory when the test evaluation comes)."""
        state = self.state
        value = self.evaluate("dev", state.step)[self.metric]
        if state.best_dev is None or value > state.best_dev:
            state.best_dev, state.best_step = value, state.step
            # offloaded: no whole copy; the test evaluation rebuilds the step from the log
            copy = self.checkpoint_mode == "weights" and not offload.offloaded(self.cfg)
            if self.cfg.train.keep_best and state.step != self.steps and copy:
                state.best_file = best_name(state.step)  # the leader writes it (sharded: streamed, a collective)
                self.strategy.write_weights(self.named, self.best_dir / state.best_file)

    def save(self) -> None:
        """A checkpoint of the weights, the optimizer state and ``LoopState``."""
        state = self.state
        state.epoch, state.offset = (self.stream.epoch, self.stream.offset) if self.stream else (0, 0)
        state.counts, state.metrics_offset, state.elapsed = dict(self.counter.counts), self.metrics.offset, self.wall()
        self.metrics.sync()  # the events up to the offset the checkpoint records are on disk first
        if self.trajectory is not None:
            self.trajectory.sync()  # and the steps it will replay
        weights = self.checkpoint_mode == "weights"  # trajectory: resume replays the log instead
        assert self.learner is not None, "only a run that takes steps checkpoints"
        # offloaded: the resident layers (the blocks go to the pin below)
        named = offload.resident(self.model, self.named) if weights else []
        self.strategy.check(self.named, f"checkpoint at step {state.step}")  # the ranks' weights must be one copy
        if self.strategy.leader and (self.trajectory is not None or weights):  # offloaded: the store as its state
            base = self.trajectory.log.header.base_sha256 if self.trajectory is not None else ""
            offload.pin(self.model, self.run_dir, state.step, base, weights=weights)
        optimizer = self.learner.optimizer if weights else None
        # sharded: each rank writes its shards (a collective); else the leader writes the whole
        self.strategy.save_checkpoint(self.run_dir / "checkpoint", state.step, named, optimizer, state.to_dict())
        if self.strategy.leader:
            offload.unpin_others(self.model, self.run_dir, state.step)
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
            values = self.strategy.evaluate(self.objective, examples, self.cfg.train.eval_batch_size, self.counter)
        self.emit({"event": "eval", "split": split, "step": step, **values, **self.counts(), "wall_s": self.wall()})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float))
        log.info(
            "step %d: %s %s (%d examples, %s)", step, split, shown, len(examples), clock(time.perf_counter() - started)
        )
        return values

    def log_train(self, loss: float, info: dict) -> None:
        assert self.learner is not None
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
        state, completed, dev = self.state, status == "completed", self.examples["dev"]
        offload.flush(self.model)  # offload=cpu|disk: every stored block at the last step's weights
        if self.trajectory is not None:
            self.trajectory.sync()
        tested_step = self.load_tested_weights() if completed else None
        tested = self.evaluate("test", tested_step) if tested_step is not None else {self.metric: None}
        if completed:
            self.strategy.check(self.named, "end of the run")
            if self.cfg.train.save_final and offload.offloaded(self.cfg):
                if self.strategy.leader:  # a sharded checkpoint, block by block (from_pretrained loads it)
                    offload.save_final(self.model, self.run_dir / "final")
            elif self.cfg.train.save_final:
                self.save_final(self.run_dir / "final")
        result = {
            "task_version": self.spec.version,
            "steps": state.step,
            "best_step": state.best_step if dev else None,
            "tested_step": tested_step,
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
            "load_peak_memory_bytes": state.load_peak,
            "pre_load_memory_bytes": state.pre_load,
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
        result.update(self.strategy.summary(state, self.steps, self.first_step))
        return result

    def save_final(self, folder: Path) -> None:
        """``train.save_final``: the tested weights to ``folder / trainable.safetensors`` (sharded:
        streamed by rank 0, one gathered parameter at a time); a full fine-tune's also load with
        ``from_pretrained(folder)``: beside the file, transformers' index (every tensor in it)
        and the model's config (``offload.export.save_index``)."""
        self.strategy.write_weights(self.named, folder / "trainable.safetensors")
        model = hf_model(self.model)
        names = [name for name, _ in self.named]
        if self.strategy.leader and names == [name for name, _ in model.named_parameters()]:
            total = sum(p.numel() * p.element_size() for _, p in self.named)
            save_index(folder, dict.fromkeys(names, "trainable.safetensors"), total, model)

    def load_tested_weights(self) -> int:
        """The weights the test evaluates, in the parameters; returns their step. With
        ``train.keep_best`` and a dev set, the best-dev state: in memory when it is the last
        step's, else read from ``best/`` or (a trajectory checkpoint keeps a step number, not a
        copy) replayed from the log. Otherwise the last step's, in memory."""
        state = self.state
        if not (self.cfg.train.keep_best and self.examples["dev"]):
            return state.step
        if state.best_step != self.steps and state.best_file:
            read_into(self.named, self.best_dir / state.best_file)  # sharded: each rank its rows
        elif state.best_step != self.steps and self.trajectory is not None and self.checkpoint_mode == "trajectory":
            self.trajectory.rebuild(state.best_step, self.device)
        elif state.best_step != self.steps and offload.offloaded(self.cfg):  # weights checkpoints: no best/ copy
            if self.trajectory is None:  # a weights checkpoint resumed without a log (another engine's)
                raise CheckpointError(
                    f"train.keep_best: the best-dev step {state.best_step} of this offloaded run is rebuilt from "
                    f"{self.run_dir / 'trajectory.bin'}, which this resume could not extend; set train.keep_best=false"
                )
            self.trajectory.rebuild(state.best_step, self.device)
        return state.best_step
