"""A run's train / dev / test rows: ``build_splits`` under one of the papers' sampling protocols.

The jobs behind it, one module each: ``jsonl.py`` (reading lines, BOM, link stubs), ``rows.py``
(what a row must hold; the checked reader), ``source.py`` (mirror or hub: ``load_split``),
``sampling.py`` (the ``mezo`` and ``kshot`` protocols), ``checks.py`` (what the splits must hold).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import check_value
from ..config.schema import BAD_ROW_POLICIES, PROTOCOLS
from .checks import check_not_empty
from .rows import row_problem
from .sampling import KSHOT_SEEDS, kshot_dir, kshot_splits, mezo_splits, sample_subset
from .source import Source, load_split
from .spec import TaskSpec

__all__ = [
    "BAD_ROW_POLICIES",
    "KSHOT_SEEDS",
    "PROTOCOLS",
    "Splits",
    "build_splits",
    "kshot_dir",
    "load_split",
    "row_problem",
    "sample_subset",
]


@dataclass
class Splits:
    train: list[dict]
    dev: list[dict]
    test: list[dict]
    skipped_rows: dict = field(default_factory=dict)  # file -> bad rows left out (data.on_bad_row=skip)


def build_splits(
    spec: TaskSpec,
    data_dir,
    num_train: int,
    num_dev: int,
    num_eval: int,
    seed: int,
    eval_seed: int = 0,
    protocol: str = "mezo",
    k: int = 16,
    on_bad_row: str = "error",
) -> Splits:
    """Train/dev/test rows of ``spec`` under ``protocol``.

    ``mezo``: ``num_train + num_dev`` examples sampled from the train pool with ``seed``, the last
    ``num_dev`` forming dev; ``num_eval`` test examples sampled from the eval split with
    ``eval_seed`` (by default ``data.seed``: MeZO samples its test set with the train seed,
    princeton-nlp/MeZO large_models/run.py:480; a fixed number tests every seed on the same rows).
    A pool smaller than ``num_train + num_dev`` gives dev its ``num_dev`` first and train the rest
    (MeZO's rule: CB's 250 rows with 1000/100 give train 150 / dev 100), with a warning naming both
    counts; a pool that cannot give dev ``num_dev`` rows and train at least one (when
    ``num_train > 0``) is refused, naming the row count and what to set. With
    ``num_train == num_dev == 0`` (zero-shot) the train pool is not loaded, so tasks whose mirror
    lacks a train split still evaluate.

    ``kshot``: ``k`` examples per class for train and dev (``num_train``/``num_dev`` are not used),
    ``seed`` being the data seed (13, 21, 42, 87, 100 in LM-BFF). Read from
    ``<data_dir>/<task>/k-shot/<k>-<seed>/{train,dev}.jsonl`` when that folder has a train file,
    else drawn from the train pool (``sample_k_per_label``). Test: that folder's ``test.jsonl``
    when present, else the eval split; all of it when ``num_eval <= 0`` (LM-BFF's full test set),
    else ``num_eval`` rows as LM-BFF's 1k-test mode picks them (``eval_seed`` is not used).
    """
    source = Source(spec, data_dir, on_bad_row)
    if protocol == "mezo":
        train, dev, test = mezo_splits(source, num_train, num_dev, num_eval, seed, eval_seed)
    elif protocol == "kshot":
        train, dev, test = kshot_splits(source, num_eval, seed, k)
    else:
        check_value("data.protocol", protocol)  # the schema's choice and line
        raise AssertionError(protocol)  # unreachable: check_value raised
    splits = Splits(train=train, dev=dev, test=test, skipped_rows=source.skipped)
    folder = kshot_dir(data_dir, spec.name, k, seed) if protocol == "kshot" and data_dir is not None else None
    check_not_empty(spec, splits, data_dir, protocol, num_dev, folder)
    return splits
