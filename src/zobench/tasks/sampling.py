"""The papers' sampling protocols: which rows of a task's pools become train, dev and test.

* ``mezo`` (MeZO, large_models/run.py): ``num_train + num_dev`` examples sampled from the train
  pool, ``num_eval`` test examples sampled from the eval split.
* ``kshot`` (LM-BFF, used by MeZO for RoBERTa-large): ``k`` examples per class for train and for
  dev, read from LM-BFF's split files ``<data_dir>/<task>/k-shot/<k>-<seed>/`` or, without them,
  drawn from the train pool the way LM-BFF's tools/generate_k_shot_data.py draws them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .checks import check_pool_size
from .source import Source

log = logging.getLogger(__name__)

KSHOT_SEEDS = (13, 21, 42, 87, 100)  # LM-BFF's data seeds
LMBFF_TEST_SEED = 42  # generate_k_shot_data.py --mode k-shot-1k-test shuffles with 42

Rows = list[dict]


def sample_subset(rows: list, num: int, seed: int) -> list:
    """``num`` rows in the order of ``RandomState(seed).permutation`` (MeZO's ``sample_subset``)."""
    index = np.random.RandomState(seed).permutation(len(rows))[:num]
    return [rows[i] for i in index]


def sample_k_per_label(rows: list[dict], label_field: str, k: int, seed: int) -> tuple[list[dict], list[dict]]:
    """LM-BFF's tools/generate_k_shot_data.py: shuffle the pool with ``np.random.seed(seed)``,
    group by label in order of first appearance, take the first ``k`` of each label for train and
    the next ``k`` for dev (train/dev grouped by label, in that order)."""
    shuffled = list(rows)
    np.random.RandomState(seed).shuffle(shuffled)  # type: ignore[arg-type]  # a list, shuffled in place as LM-BFF does
    by_label: dict = {}
    for row in shuffled:
        by_label.setdefault(row[label_field], []).append(row)
    short = {lab: len(group) for lab, group in by_label.items() if len(group) < 2 * k}
    if short:
        log.warning("k-shot: fewer than 2k=%d examples for labels %s; taking what there is", 2 * k, short)
    train = [row for group in by_label.values() for row in group[:k]]
    dev = [row for group in by_label.values() for row in group[k : 2 * k]]
    return train, dev


def lmbff_test_subset(rows: list, num_eval: int) -> list:
    """The whole test set when ``num_eval <= 0`` or it has no more rows (LM-BFF); otherwise
    ``num_eval`` rows as LM-BFF's ``k-shot-1k-test`` mode picks them (MeZO's RoBERTa runs):
    the file shuffled with seed 42, first ``num_eval`` kept."""
    if num_eval <= 0 or num_eval >= len(rows):
        return list(rows)
    return sample_subset(rows, num_eval, LMBFF_TEST_SEED)


def kshot_dir(data_dir, task: str, k: int, seed: int) -> Path:
    """LM-BFF's split folder ``<data_dir>/<task>/k-shot/<k>-<seed>/``."""
    return Path(data_dir) / task / "k-shot" / f"{k}-{seed}"


def mezo_splits(
    source: Source, num_train: int, num_dev: int, num_eval: int, seed: int, eval_seed: int
) -> tuple[Rows, Rows, Rows]:
    """(train, dev, test) under MeZO's protocol (``data.build_splits`` states it)."""
    picked = []
    if num_train + num_dev > 0:
        pool = source.split("train")
        check_pool_size(source.spec, len(pool), num_train, num_dev)
        picked = sample_subset(pool, num_train + num_dev, seed)
    dev = picked[len(picked) - num_dev :] if num_dev else []
    train = picked[: len(picked) - len(dev)]
    return train, dev, sample_subset(source.split("eval"), num_eval, eval_seed)


def kshot_splits(source: Source, num_eval: int, seed: int, k: int) -> tuple[Rows, Rows, Rows]:
    """(train, dev, test) under LM-BFF's k-shot protocol (``data.build_splits`` states it)."""
    spec, data_dir = source.spec, source.data_dir
    if not spec.label_field:
        raise ConfigError(f"data.protocol=kshot: task {spec.name} has no class label to sample k per class")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"data.k={k!r}: expected an integer >= 1")
    folder = kshot_dir(data_dir, spec.name, k, seed) if data_dir is not None else None
    if folder is not None and (folder / "train.jsonl").is_file():
        what = f"LM-BFF {k}-shot split, seed {seed}, of task {spec.name}"
        train = source.file(folder / "train.jsonl", f"train of the {what}")
        dev = source.file(folder / "dev.jsonl", f"dev of the {what}")
    else:
        log.info("task %s: no k-shot files for k=%d seed=%d; sampling them from the train pool", spec.name, k, seed)
        train, dev = sample_k_per_label(source.split("train"), spec.label_field, k, seed)
    if folder is not None and (folder / "test.jsonl").is_file():
        test = source.file(folder / "test.jsonl", "k-shot test")
    else:
        test = source.split("eval")
    return train, dev, lmbff_test_subset(test, num_eval)
