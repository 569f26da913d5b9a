"""A run's task and examples: the task spec and its splits under the paper's protocol
(``data.*``), and the examples rendered and encoded for the run's objective."""

from __future__ import annotations

from omegaconf import DictConfig

from ..errors import ConfigError
from ..models import with_demonstrations
from ..tasks import Splits, TaskSpec, build_splits, load_task
from ..tasks.checks import check_family


def protocol(cfg: DictConfig) -> dict:
    """The data protocol keys, for configs that have them (``data.protocol``, ``data.k``)."""
    return {key: cfg.data[key] for key in ("protocol", "k") if key in cfg.data}


def build_task(cfg: DictConfig) -> tuple[TaskSpec, Splits]:
    """``(spec, splits)``: the task ``task.name``, checked against the model's family, and its
    train / dev / test examples (MeZO's 1000/500/1000 protocol, or ``data.protocol=kshot``)."""
    spec = load_task(cfg.task.name)
    check_family(spec, cfg.model)
    data = cfg.data
    splits = build_splits(
        spec,
        data.dir,
        data.num_train,
        data.num_dev,
        data.num_eval,
        seed=data.seed,
        eval_seed=data.eval_seed,
        on_bad_row=data.on_bad_row,
        **protocol(cfg),
    )
    if (cfg.train.steps > 0 or cfg.train.get("forward_budget")) and not splits.train:
        # mezo: the pool check of build_splits leaves train a row; kshot: its train file or pool is empty
        raise ConfigError(
            f"task={spec.name}: no training examples (data.protocol={data.get('protocol', 'mezo')}, "
            f"data.num_dev={data.num_dev}); a run that takes steps needs some: point data.dir at a mirror "
            "whose train split has rows, or set train.steps=0 to evaluate only"
        )
    return spec, splits


def encode_examples(cfg: DictConfig, spec: TaskSpec, splits: Splits, objective) -> dict[str, list]:
    """``{train, dev, test}``: each split's examples rendered with the model family's prompt and
    encoded for ``objective``, the first ``icl.demos`` training examples prepended as
    demonstrations (in-context learning; 0: none)."""
    family = cfg.model.family
    rendered = {
        name: [spec.render(ex, family=family) for ex in getattr(splits, name)] for name in ("train", "dev", "test")
    }
    demos = rendered["train"][: cfg.icl.demos]
    return {
        name: [objective.encode(with_demonstrations(r, demos, cfg.icl.separator)) for r in rows]
        for name, rows in rendered.items()
    }
