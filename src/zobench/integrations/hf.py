"""zobench's ZO methods in Hugging Face's ``Trainer``: ``ZOTrainer`` and the mixin it is made of.

``ZOTrainerMixin`` overrides the few hooks of ``transformers.Trainer`` (5.x) where a ZO method
differs from backpropagation, and nothing of its loop:

* ``create_optimizer``: the method (``zo=``) built by ``core.build_zo`` on the model's trainable
  parameters. ``self.optimizer`` is the Trainer's view of it (``core.HostView``): the same param
  groups and state, so the Trainer's LR scheduler, ``optimizer.pt`` and accelerate's wrapper work
  unchanged; its ``step()`` without a closure is a no-op, because the step already ran.
* ``training_step``: the ZO step, ``optimizer.step(closure)``, where the closure evaluates the
  Trainer's own loss (``compute_loss``: a subclass's override, TRL's loss, ``compute_loss_func``
  and label smoothing all apply) under ``torch.no_grad``, in train mode, as the Trainer's step
  would. No gradient is formed, so ``max_grad_norm`` clipping has nothing to clip (no grad_norm
  is logged).
* Gradient accumulation (``gradient_accumulation_steps = k``): several batches per estimate.
  The k micro-batches of an optimizer step are buffered and every closure call evaluates the
  loss the backprop Trainer would accumulate the gradient of (the mean of the k micro-batch
  losses, or their sum when they are normalised by ``num_items_in_batch``), so one ZO step sees
  k batches and costs k forward passes per evaluation. The logged loss is that loss.
* ``log``: every log (train and eval) carries ``forward_passes`` (of training steps, counted by
  a hook on the model, cumulative), ``forward_passes_eval`` and ``peak_memory_bytes`` (of the
  training steps: CUDA max allocated, or CPU peak RSS).
* ``_save_optimizer_and_scheduler`` / ``_load_optimizer_and_scheduler``: the checkpoint also
  holds ``zobench_session.json`` (the forward-pass counts and the peak). The method's state
  (seed, step counter, momenta, ...) is in the optimizer state the Trainer saves; the direction
  of step t is a function of (seed, t), and the dropout draws of a step are too
  (``core.ZOSession``), so a run resumed from a checkpoint equals the uninterrupted run.

The method is built when the trainer is (a bad ``zo=`` fails there, and an ``evaluate()`` before
``train()`` is already counted). Refused, with one line: a multi-process or multi-GPU Trainer
(each rank would estimate its own projected gradient from its own batch and the copies would
drift: zobench's ``dist`` package all-reduces the loss, the Trainer does not), an
``optimizers=`` tuple beside ``zo=``, and ``model_init=``.

Engines: ``engine.mode=virtual`` perturbs a weight while its module runs; a loss that reads a
weight outside its module's forward (TRL's fused LM head reads ``lm_head.weight``) needs
``engine={"mode": "inplace"}`` (``ZOSFTTrainer``'s default).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers import Trainer

from ..errors import ConfigError
from .core import HostView, ZOSession, build_zo

#: the file in a Trainer checkpoint that holds the session's counts
SESSION_FILE = "zobench_session.json"


class ZOTrainerMixin:
    """A ZO method as the optimizer of a ``transformers.Trainer`` subclass (see the module
    docstring); put it first in the bases: ``class MyTrainer(ZOTrainerMixin, SomeTrainer)``.

    Args:
        zo: the method: a name (``"mezo"``, a ``conf/optimizer`` file), a dict of its config
            (``{"name": "hizoo", "eps": 1e-3}``; keys as ``optimizer.*`` of ``python -m zobench``),
            or an optimizer instance built on the model's parameters (``MeZO(...)``). ``lr`` and
            ``weight_decay`` come from ``args`` unless the config gives them; the direction seed
            is ``args.seed`` unless the config gives ``seed``.
        engine: the perturbation engine: ``"auto"`` / ``"torch"`` / ``"triton"``
            (``conf/engine``), or a dict of ``backend`` / ``mode`` / ``paired`` / ``fused_linear``.
    """

    #: the engine when none is given (``ZOSFTTrainer``: in place, see the module docstring)
    default_engine: Any = "auto"
    zo_session: ZOSession | None

    def __init__(self, *args, zo: Any = "mezo", engine: Any = None, **kwargs) -> None:
        self.zo, self.zo_engine = zo, self.default_engine if engine is None else engine
        self.zo_session = None
        self._zo_pending: list = []
        self._zo_info: dict = {}
        super().__init__(*args, **kwargs)
        host: Any = self
        if host.optimizer is not None:
            raise ConfigError("optimizers=: the optimizer of a ZO trainer is zo=; pass the method there")
        if host.args.world_size > 1 or host.args.n_gpu > 1:
            raise ConfigError(
                f"ZO trainers run on one process and one device (got world_size={host.args.world_size}, "
                f"n_gpu={host.args.n_gpu}): each rank would estimate from its own batch and the copies "
                "would drift; use python -m zobench for multi-rank runs"
            )
        if host.model_init is not None:
            raise ConfigError("model_init=: a ZO trainer's method is built on the model it is given; pass model=")
        self.create_optimizer()  # now: a bad zo= fails here, and evaluate() before train() is counted

    # -- the optimizer ---------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        host: Any = self
        if host.optimizer is None:
            model = host.model if model is None else model
            zo = self.zo
            seed = host.args.seed
            if not isinstance(zo, (str, torch.optim.Optimizer)) and "seed" in zo:
                zo = {k: v for k, v in dict(zo).items() if k != "seed"}
                seed = int(self.zo["seed"])
            learner = build_zo(
                model, zo, engine=self.zo_engine, seed=seed, lr=host.args.learning_rate,
                weight_decay=host.args.weight_decay,
            )  # fmt: skip
            self.zo_session = ZOSession(model, learner, host.args.device)
            host.optimizer = HostView(learner.optimizer)
        return host.optimizer

    @property
    def zo_optimizer(self) -> torch.optim.Optimizer:
        """The ZO method itself (``self.optimizer`` is the Trainer's view of it)."""
        assert self.zo_session is not None, "create_optimizer() (train() calls it) builds the method"
        return self.zo_session.optimizer

    # -- the step --------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """Buffer the micro-batch; at the last one of the accumulation, take the ZO step on all."""
        host: Any = self
        assert self.zo_session is not None
        self._zo_pending.append((host._prepare_inputs(inputs), num_items_in_batch))
        if not host.accelerator.sync_gradients:  # more micro-batches of this step to come
            return torch.zeros((), device=host.args.device)
        batches, self._zo_pending = self._zo_pending, []
        model.train()  # the Trainer's mode for training (dropout: one mask per step, see core.py)
        loss, self._zo_info = self.zo_session.step(lambda: self._zo_loss(model, batches))
        return torch.tensor(loss, device=host.args.device)

    def _zo_loss(self, model, batches: list) -> torch.Tensor:
        """The loss the Trainer's ``training_step`` would backpropagate, summed over the
        micro-batches of one optimizer step (each scaled as the Trainer scales it)."""
        host: Any = self
        total = torch.zeros((), device=host.args.device)
        for inputs, num_items in batches:
            with host.compute_loss_context_manager():
                loss = host.compute_loss(model, inputs, num_items_in_batch=num_items)
            scaled = getattr(host, "loss_is_scaled_for_ga", None)  # transformers 5.x
            if scaled is None:  # as Trainer.training_step decides it
                by_items = host.model_accepts_loss_kwargs and num_items is not None
                scaled = by_items or host.compute_loss_func is not None
            total = total + (loss if scaled else loss / len(batches))
        return total

    def _clip_grad_norm(self, model):
        return None  # no gradients to clip

    def _get_grad_norm(self, model, grad_norm=None):
        return None  # none exists: nothing is logged as grad_norm

    # -- logs and checkpoints --------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.zo_session is not None:
            logs.update(self.zo_session.metrics())
            if "loss" in logs and self._zo_info:  # a train log: the last step's scalars
                logs.update({f"zo_{k}": v for k, v in self._zo_info.items()})
        super().log(logs, start_time)  # type: ignore[misc]  # a mixin: the Trainer follows in the MRO

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)  # type: ignore[misc]  # a mixin: the Trainer follows in the MRO
        host: Any = self
        if self.zo_session is not None and host.args.should_save:
            with open(os.path.join(output_dir, SESSION_FILE), "w") as f:
                json.dump(self.zo_session.state_dict(), f)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]  # a mixin: the Trainer follows in the MRO
        path = os.path.join(checkpoint, SESSION_FILE) if checkpoint else None
        if self.zo_session is not None and path and os.path.isfile(path):
            with open(path) as f:
                self.zo_session.load_state_dict(json.load(f))


class ZOTrainer(ZOTrainerMixin, Trainer):
    """``transformers.Trainer`` trained by a zobench ZO method:
    ``ZOTrainer(model, args, zo="mezo", train_dataset=..., ...)`` (see ``ZOTrainerMixin``)."""
