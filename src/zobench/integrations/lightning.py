"""A zobench ZO method in a Lightning ``LightningModule``: ``ZOLightningMixin``.

Manual optimisation, no Strategy of its own. The module says what the loss of a batch is
(``zo_loss``); the mixin's ``training_step`` takes the ZO step on it through ``ZOSession``
(forward only, counted), then calls Lightning's optimizer ``step()`` once, which does what a
step does for Lightning (its step counter, ``on_before_optimizer_step`` hooks, the LR scheduler
``configure_optimizers`` may return) without stepping the method again (``core.HostView``).
A scheduler (override ``configure_optimizers``: ``view = super().configure_optimizers()``,
return it with a scheduler on ``view``) is stepped once per step. ``configure_optimizers`` (or
the first validation) builds the method (``zo``, ``zo_engine``, ``zo_seed`` attributes); its
state is in Lightning's checkpoint (``optimizer_states``) and the forward-pass counts beside it
(``on_save_checkpoint``), so ``trainer.fit(ckpt_path=...)`` resumes. Logged each step:
``train_loss``, ``forward_passes``, ``forward_passes_eval``, ``peak_memory_bytes``.

It imports nothing of Lightning: it works on ``lightning.pytorch.LightningModule`` and on
``pytorch_lightning.LightningModule`` alike. Single device only (as ``ZOTrainer``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .core import HostView, ZOSession, build_zo

CHECKPOINT_KEY = "zobench_session"


class ZOLightningMixin:
    """Put first in the bases: ``class Module(ZOLightningMixin, LightningModule)``; implement
    ``zo_loss(batch) -> scalar tensor``; call ``super().__init__()``.

    Attributes (set them in ``__init__`` or on the class):
        zo: the method (a name, a config dict, or an optimizer instance; see ``build_zo``).
        zo_engine: the engine (``"auto"``, ``"torch"``, ``"triton"`` or a dict).
        zo_seed: the direction seed.
        zo_counted: the module whose forward calls are counted as forward passes (default: the
            attribute ``model`` if the module has one, else the module itself).
    """

    zo: Any = "mezo"
    zo_engine: Any = "auto"
    zo_seed: int = 0
    zo_counted: nn.Module | None = None
    automatic_optimization = False  # Lightning: the module steps its optimizer itself

    def zo_loss(self, batch) -> torch.Tensor:
        """The loss of ``batch`` at the current parameters (forward only)."""
        raise NotImplementedError(f"{type(self).__name__} must define zo_loss(batch)")

    def zo_build(self) -> ZOSession:
        """The method and its session, built once, on the device Lightning put the module on
        (``configure_optimizers``, or the first validation / test: so that its forwards count)."""
        session = getattr(self, "zo_session", None)
        if session is None:
            host: Any = self
            trainer = getattr(host, "_trainer", None)  # None: the module is used outside a Trainer
            if trainer is not None and trainer.world_size > 1:
                raise ConfigError(
                    f"ZOLightningMixin runs on one device (got world_size={trainer.world_size}): each rank "
                    "would estimate from its own batch and the copies would drift; use python -m zobench"
                )
            counted = self.zo_counted or getattr(host, "model", None) or host
            learner = build_zo(host, self.zo, engine=self.zo_engine, seed=self.zo_seed)
            session = self.zo_session = ZOSession(host, learner, host.device, counted=counted)
        pending = getattr(self, "_zo_pending_state", None)
        if pending is not None:  # a resume: on_load_checkpoint ran before the optimizer existed
            session.load_state_dict(pending)
            self._zo_pending_state = None
        return session

    def configure_optimizers(self):
        return HostView(self.zo_build().optimizer)

    def on_validation_start(self) -> None:
        self.zo_build()

    def on_test_start(self) -> None:
        self.zo_build()

    def training_step(self, batch, batch_idx):
        host: Any = self
        loss, info = self.zo_session.step(lambda: self.zo_loss(batch))
        host.optimizers().step()  # Lightning's step bookkeeping; the ZO step is taken
        scheduler = host.lr_schedulers()  # manual optimisation: the module steps its scheduler
        if scheduler is not None:
            scheduler.step()
        host.log("train_loss", loss, prog_bar=True)
        host.log_dict({k: float(v) for k, v in {**self.zo_session.metrics(), **info}.items()})
        return torch.tensor(loss)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.zo_session.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._zo_pending_state = checkpoint.get(CHECKPOINT_KEY)
        if getattr(self, "zo_session", None) is not None:
            self.zo_build()
