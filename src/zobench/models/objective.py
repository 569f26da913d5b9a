"""The objective of a run: what ``loss(batch)`` and ``evaluate(examples)`` mean for a task × model.

| model family | task objective            | class                 | eval metric            |
|--------------|---------------------------|-----------------------|------------------------|
| causal       | classification, lm        | ``CandidateScorer``   | accuracy               |
| causal       | generation (SQuAD, DROP)  | ``GenerationObjective`` | f1 (and em)          |
| masked       | classification            | ``MaskedScorer``      | accuracy               |

Every objective has ``encode(rendered)``, ``loss(batch)`` (a scalar tensor; differentiable when
grad is enabled, for the first-order baselines), ``batch_metric(batch)`` (the task metric on one
batch: the non-differentiable ZO objective ``objective=accuracy|f1``) and
``evaluate(examples, batch_size) -> {metric: value}``.

In-context learning (MeZO's ICL baseline, large_models/utils.py ``encode_prompt``): every
demonstration is its prompt followed by its gold candidate, stripped; they are joined by
``separator`` and put before the example's prompt:
``(sep.join(demos).strip() + sep + prompt).lstrip()``. Over-long inputs keep their last tokens,
so the demonstrations farthest from the example are the ones cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..config.schema import ZO_OBJECTIVES as ZO_OBJECTIVES  # objective: the config's choices
from ..errors import ConfigError
from ..tasks import Rendered
from .causal import CandidateScorer
from .generation import GenerationObjective
from .masked import MaskedScorer


def build_objective(spec, family: str, model, tokenizer, max_length: int, device):
    """The objective for ``spec`` (a TaskSpec) on a ``family`` model."""
    objective = getattr(spec, "objective", "classification")
    if family == "masked":
        if objective != "classification":
            raise ConfigError(
                f"task={spec.name} trains with objective {objective!r}; a masked LM only does "
                "classification with a verbaliser"
            )
        return MaskedScorer(model, tokenizer, max_length, device)
    if objective == "generation":
        options = dict(getattr(spec, "generation", None) or {})
        return GenerationObjective(
            model,
            tokenizer,
            max_length,
            device,
            max_new_tokens=options.get("max_new_tokens", 50),
            stop=options.get("stop", ["\n"]),
        )
    return CandidateScorer(model, tokenizer, max_length, device, objective=objective)


def with_demonstrations(example: Rendered, demos: Sequence[Rendered], separator: str = "\n\n") -> Rendered:
    """``example`` with ``demos`` (rendered train examples) prepended as MeZO's ICL does."""
    if not demos:
        return example
    shown = separator.join((d.prompt + d.candidates[d.label]).strip() for d in demos).strip()
    return replace(example, prompt=(shown + separator + example.prompt).lstrip())


def zo_closure(objective, batch, which: str):
    """The closure a ZO method calls: the task loss (``closure(replicas=N)`` gives N losses from
    one batched call, for methods that evaluate several perturbations at once), or minus the
    batch accuracy / F1 (a non-differentiable objective; one evaluation per call). An objective
    whose ``loss`` takes no ``replicas`` gets a plain closure: methods then evaluate one
    perturbation per call."""
    import inspect

    if which == "loss":
        if "replicas" not in inspect.signature(objective.loss).parameters:
            return lambda: objective.loss(batch)
        # replicas=1 calls loss(batch) as any objective takes it; only batched methods pass N
        return lambda replicas=1: objective.loss(batch) if replicas == 1 else objective.loss(batch, replicas=replicas)
    return lambda: zo_loss(objective, batch, which)


def check_objective(which: str, metric: str) -> None:
    """``objective=``: the task loss, or the task's own metric (its minus is minimised)."""
    if which not in ("loss", metric):
        raise ConfigError(f"objective={which}: task metric is {metric}; allowed loss, {metric}")


def zo_loss(objective, batch, which: str):
    """The scalar a ZO method minimises: the task loss, or minus the batch accuracy / F1."""
    import torch

    if which == "loss":
        return objective.loss(batch)
    check_objective(which, objective.metric)
    return torch.tensor(-objective.batch_metric(batch))
