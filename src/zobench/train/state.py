"""``LoopState``: everything the training loop carries from step to step besides the weights and
the optimizer's own state, and exactly what a checkpoint's ``loop.json`` holds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class LoopState:
    """The loop's position and bookkeeping; ``to_dict`` is ``loop.json`` (keys in this order).

    Args:
        step: steps taken (the next step is ``step + 1``).
        epoch, offset: the ``BatchStream`` position (``tasks/batches.py``).
        counts: forward passes per phase (``train``, ``eval``, ``probe``; ``ForwardCounter``).
        best_dev: the best dev metric so far (None before the first dev evaluation).
        best_step: the step it was reached at.
        best_file: ``best/<file>`` holding that state (``train.keep_best``), or None.
        train_peak: peak memory of the training steps so far (bytes).
        inference_peak: peak memory of one inference-only batch (bytes), measured once.
        load_peak: peak memory while this process loaded the model (bytes; set by each process
            after its restore: a resumed run's is its own load's).
        pre_load: memory the process held when the load began (bytes: on CPU the RSS of the
            interpreter, libraries and data; set as load_peak is): peaks minus it are the model's.
        skipped_steps: steps whose update was dropped (``train.on_divergence=skip``).
        metrics_offset: bytes of ``metrics.jsonl`` written when the checkpoint was taken (a resumed
            run cuts the file back there and replays the events after it).
        elapsed: wall seconds of the run up to the checkpoint (``wall_s`` counts on from there).
    """

    step: int = 0
    epoch: int = 0
    offset: int = 0
    counts: dict = field(default_factory=dict)
    best_dev: float | None = None
    best_step: int = 0
    best_file: str | None = None
    train_peak: int = 0
    inference_peak: int | None = None
    load_peak: int = 0
    pre_load: int = 0
    skipped_steps: int = 0
    metrics_offset: int = 0
    elapsed: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> LoopState:
        """The state of a ``loop.json``; keys a later zobench added default, unknown ones are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})
