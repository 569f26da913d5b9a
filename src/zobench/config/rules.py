"""The rules between keys: each written once, here (the keys themselves: ``schema.py``).

A rule reads only keys whose own check passed (``ok``): a bad ``train.steps`` is reported as
such, not as a consequence in ``data.num_train``. Rules that are a key's bound
(``num_train_minimum``) are named in that key's field; the others return their one line.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import OmegaConf


def _value(cfg, key: str):
    return OmegaConf.select(cfg, key, throw_on_missing=False, default=None)


def _count(cfg, key: str) -> int | None:
    value = _value(cfg, key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def num_train_minimum(cfg) -> int:
    """``data.num_train``: the mezo protocol samples the training set, so a run that trains
    (``train.steps`` > 0 or a ``train.forward_budget``) needs one; kshot takes k per class."""
    training = (_count(cfg, "train.steps") or 0) > 0 or _value(cfg, "train.forward_budget") is not None
    return 1 if training and _value(cfg, "data.protocol") == "mezo" else 0


def num_eval_minimum(cfg) -> int:
    """``data.num_eval``: kshot's 0 is LM-BFF's full test set; mezo samples >= 1 test examples."""
    return 0 if _value(cfg, "data.protocol") == "kshot" else 1


def fused_linear(backend: str, mode: str, resolved: str | None = None) -> str | None:
    """``engine.fused_linear=true`` perturbs inside the Triton matmul of virtual mode: the line
    refusing it with ``backend`` / ``mode``, or None. ``resolved``: the backend ``auto`` became
    (known once the model is placed, ``engine.build_engine``); None: the config alone decides."""
    if resolved is None:
        if backend != "torch" and mode == "virtual":
            return None
        return (
            "engine.fused_linear=true needs engine.backend=triton (or auto on CUDA) and "
            f"engine.mode=virtual; got engine.backend={backend}, engine.mode={mode}"
        )
    if resolved == "triton" and mode == "virtual":
        return None
    return (
        f"engine.fused_linear=true needs the Triton backend in virtual mode; got "
        f"engine.backend={backend} (resolved: {resolved}), engine.mode={mode}"
    )


def _fused_linear(cfg) -> str | None:
    if _value(cfg, "engine.fused_linear") is not True:
        return None
    return fused_linear(_value(cfg, "engine.backend"), _value(cfg, "engine.mode"))


def _passes_need_budget(cfg) -> str | None:
    if _value(cfg, "train.eval_every_passes") is not None and _value(cfg, "train.forward_budget") is None:
        return "train.eval_every_passes needs train.forward_budget (otherwise use train.eval_every)"
    return None


def _demos_from_train(cfg) -> str | None:
    demos, pool = _count(cfg, "icl.demos"), _count(cfg, "data.num_train")
    if demos is not None and pool is not None and demos > pool:
        return f"icl.demos={demos} > data.num_train={pool}: demonstrations are drawn from the training examples"
    return None


#: methods whose step streams with the results it has in memory (tests/offload/test_methods.py):
#: the methods checked to stream (tests/offload/test_methods.py: bit-equal to in memory).
#: Updates through ``Engine.update`` are deferred; through ``Engine.foreach`` (momentum, Adam
#: moments, HiZOO's Σ) and ``Engine.visit`` (Sparse-MeZO's thresholds, MeZO-SVRG's θ̄, DiZO's
#: distances) applied at once, block by block, with the block's state streamed beside it;
#: ``Engine.transformed`` (MeZO-SVRG at θ̄, DiZO's rescaled evaluations) while a block is resident.
#: Passes over storage per step: docs/offload.md.
OFFLOAD_METHODS = (
    "mezo",
    "lozo",
    "lezo",
    "subzero",
    "fzoo",
    "tezo",
    "zo_sgd_cons",
    "zo_sgd_sign",
    "forward_gradient",
    "zo_sgd_momentum",
    "zo_adam",
    "hizoo",
    "mezo_svrg",
    "dizo",
    "sparse_mezo",
)


def offload_refusal(method: str, mode: str) -> str | None:
    """The one-line reason ``optimizer=method`` cannot run with ``offload=mode``, or None: every
    registered method streams today; a new one is refused until it is added to
    ``OFFLOAD_METHODS`` with its equivalence test."""
    if mode == "none" or method in OFFLOAD_METHODS:
        return None
    why = "it is not among the methods checked to stream"
    return f"optimizer={method} cannot run with offload={mode} yet: {why}; allowed: {', '.join(OFFLOAD_METHODS)}"


def _offload(cfg) -> str | None:
    """``offload=cpu|disk`` streams full-parameter ZO steps of the methods that stream, on the
    virtual engine, never holding the whole model (docs/offload.md). ``train.keep_best``,
    ``train.save_final`` and ``train.checkpoint=weights`` stream too (block by block)."""
    mode = _value(cfg, "offload.mode")
    if mode in (None, "none"):
        return None
    name = str(_value(cfg, "optimizer.name"))
    if _value(cfg, "optimizer.first_order") or name == "linear_probe":
        return f"offload={mode} streams zeroth-order steps; optimizer={name} needs the whole model (offload=none)"
    refused = offload_refusal(name, mode)
    if refused:
        return refused
    if _value(cfg, "engine.mode") != "virtual":
        return f"offload={mode} needs engine.mode=virtual (got engine.mode={_value(cfg, 'engine.mode')})"
    if _value(cfg, "tuning.name") not in (None, "full"):
        tuning = _value(cfg, "tuning.name")
        return f"offload={mode} streams full-parameter tuning only; got tuning={tuning} (use tuning=full)"
    return None


#: the offload rule by name: whether a config streams (a streamed replay checks the run's config)
offload_problem = _offload


#: (the keys a rule reads, the rule): a rule runs when every key it reads passed its own check
RUN_RULES: tuple[tuple[tuple[str, ...], Callable], ...] = (
    (("train.eval_every_passes", "train.forward_budget"), _passes_need_budget),
    (("icl.demos", "data.num_train"), _demos_from_train),
    (("engine.fused_linear", "engine.backend", "engine.mode"), _fused_linear),
    (("offload.mode", "offload.dir", "optimizer.name", "engine.mode", "tuning.name"), _offload),
)
BENCH_RULES = RUN_RULES[2:3]  # engine.fused_linear


def broken(cfg, bad: set[str], rules=RUN_RULES) -> list[str]:
    """The one line of every rule broken by ``cfg`` whose keys are not ``bad`` themselves."""
    lines = []
    for keys, rule in rules:
        if not bad.intersection(keys):
            line = rule(cfg)
            if line:
                lines.append(line)
    return lines
