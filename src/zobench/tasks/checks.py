"""What the splits of a run must hold, checked before any model is loaded: a train pool large
enough for the dev rows asked for (``check_pool_size``), and no empty test split or asked-for dev
split (``check_not_empty``). Each failure is one line naming the file and what to set."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)


def check_pool_size(spec, rows: int, num_train: int, num_dev: int) -> None:
    """Dev never takes rows train was promised without saying so, and never more than exist."""
    if rows >= num_train + num_dev:
        return
    need = num_dev + (1 if num_train > 0 else 0)
    if rows < need:
        most = rows - (1 if num_train > 0 else 0)
        hint = f"set data.num_dev <= {most}" if most > 0 else "point data.dir at a file with more rows"
        raise ConfigError(
            f"data.num_dev={num_dev}: task {spec.name}'s train pool has only {rows} rows, too few for "
            f"{num_dev} dev rows{' plus at least one training row' if num_train else ''}; {hint} "
            f"(data.num_train + data.num_dev <= {rows} uses no more rows than exist)"
        )
    log.warning(
        "task %s: num_train + num_dev = %d > %d rows in the train pool: dev takes its %d, train gets "
        "the other %d (not %d); set data.num_train=%d to ask for exactly that",
        spec.name,
        num_train + num_dev,
        rows,
        num_dev,
        rows - num_dev,
        num_train,
        rows - num_dev,
    )


def check_not_empty(spec, splits, data_dir, protocol: str, num_dev: int, folder: Path | None) -> None:
    """A run's result is its test metric, and its model selection needs the dev rows it asked
    for: a split left empty (an empty file, every row skipped as bad or dropped by the task's
    ``skip_labels``) is refused here, before any model is loaded, rather than reported as a
    completed run scoring ``nan (0 examples)``. Train is checked by the recipe, which knows
    whether the run takes steps (zero-shot runs need none). ``folder``: the k-shot split files'."""
    for name, rows, pool, wanted in (("test", splits.test, "eval", True), ("dev", splits.dev, "train", num_dev > 0)):
        if not rows and (wanted or protocol == "kshot"):
            kshot_file = folder if folder is not None and (folder / f"{name}.jsonl").is_file() else None
            where = _source(spec, pool, data_dir, kshot_file, name, splits)
            raise ConfigError(f"task {spec.name}: no {name} rows: {where}")


def _source(spec, split: str, data_dir, folder, name: str, splits) -> str:
    """Where an empty split's rows came from, and what was left out of it."""
    if folder is not None:
        where = str(folder / f"{name}.jsonl")
    elif data_dir is not None:
        where = str(Path(data_dir) / spec.name / f"{spec.splits[split]}.jsonl")
    else:
        where = f"the hub's {spec.dataset['path']} split {spec.splits[split]!r}"
    bad = sum(splits.skipped_rows.values())
    skipped = f" ({bad} bad rows skipped, data.on_bad_row=skip)" if bad else ""
    return f"{where} has none{skipped}; a run needs at least one: point data.dir at a mirror whose file has rows"


def check_family(spec, model_cfg) -> None:
    """The task has prompts for the model's family (causal / masked LM): the one rule of a model
    config against a task, checked before the hub probe (``models.loading.check_sources``) and
    when a run's components are built (``zobench.build``)."""
    if model_cfg.family not in spec.families:
        raise ConfigError(
            f"model={model_cfg.name} is a {model_cfg.family} LM; task={spec.name} has prompts for "
            f"{', '.join(spec.families)} LMs only"
        )
