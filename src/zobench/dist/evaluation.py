"""Sharded evaluation: each rank scores a share of the dev / test examples; the metric is computed
once over all of them, equal to the single-process value bit for bit.

The single-process evaluation (``models/causal.py::evaluate_accuracy``, ``GenerationObjective.
evaluate``) and this one cut batches with the same function, ``tasks/batches.py::eval_batches``
(length-sorted, runs of ``train.eval_batch_size``); one process averages a per-example value
(accuracy 1/0; SQuAD F1 and EM) in that order. Here batch c goes to rank ``c mod W``, so every
batch holds the same examples, padded the same way, as in one process (the same predictions, to
the bit); each rank returns its batches' per-example values
(``objective.example_scores``), ``all_gather_object`` brings them to every rank (a few floats per
example), and the sum is taken in the single-process order: the same floating-point result.
Objectives without ``example_scores`` (the linear probe) evaluate everything on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..tasks.batches import eval_batches
from .context import DistContext


def sharded_evaluate(objective, examples: Sequence, batch_size: int, ctx: DistContext, counter=None) -> dict:
    """``objective.evaluate(examples, batch_size)`` with the batches split over the ranks. The
    ``eval`` forward passes of ``counter`` (a ``ForwardCounter``) become the total over ranks."""
    if not ctx.active or not hasattr(objective, "example_scores") or not examples:
        return objective.evaluate(examples, batch_size)
    before = counter["eval"] if counter is not None else 0
    mine = {}
    for index, chunk in enumerate(eval_batches(examples, batch_size)):
        if index % ctx.world_size == ctx.rank:
            mine[index] = objective.example_scores([examples[i] for i in chunk])
    gathered: dict = {}
    for part in ctx.gather_objects(mine):
        gathered.update(part)
    if counter is not None:  # summary's forward_passes_eval: every rank's share of the passes
        import torch

        done = ctx.all_reduce(torch.tensor([counter["eval"] - before], dtype=torch.int64), phase="eval")
        counter.counts["eval"] = before + int(done[0])
    return combine([gathered[c] for c in sorted(gathered)], len(examples))


def combine(per_batch: list[dict], n: int) -> dict:
    """Metric means from per-batch per-example values, summed in batch order as one process does."""
    totals: dict = {}
    for scores in per_batch:
        for name, values in scores.items():
            for value in values:
                totals[name] = totals.get(name, 0.0) + value
    return {name: total / n for name, total in totals.items()}
