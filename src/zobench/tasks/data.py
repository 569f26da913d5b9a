"""Loading task splits (Hugging Face hub or a local mirror) and MeZO's sampling protocol."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError
from .spec import TaskSpec

log = logging.getLogger(__name__)


def load_split(spec: TaskSpec, split: str, data_dir: str | Path | None) -> list[dict]:
    """Rows of ``spec.splits[split]`` as dicts in the Hugging Face schema.

    With ``data_dir`` the rows come from ``<data_dir>/<task>/<hf split>.jsonl``; otherwise from
    ``datasets.load_dataset(**spec.dataset, split=...)`` (needs the hub or its cache).
    """
    hf_split = spec.splits[split]
    if data_dir is not None:
        path = Path(data_dir) / spec.name / f"{hf_split}.jsonl"
        if not path.is_file():
            raise DataNotFoundError(
                f"data.dir: {path} not found (task {spec.name} reads its '{split}' pool from the "
                f"'{hf_split}' split); point data.dir / ZOBENCH_DATA_DIR at a mirror that has it, "
                "or unset it to load from the Hugging Face hub"
            )
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    import datasets  # deferred: importing datasets costs seconds and the mirror path needs none of it

    ds = datasets.load_dataset(spec.dataset["path"], spec.dataset.get("name"), split=hf_split)
    return [dict(row) for row in ds]


def sample_subset(rows: list, num: int, seed: int) -> list:
    """``num`` rows in the order of ``RandomState(seed).permutation`` (MeZO's ``sample_subset``)."""
    index = np.random.RandomState(seed).permutation(len(rows))[:num]
    return [rows[i] for i in index]


@dataclass
class Splits:
    train: list[dict]
    dev: list[dict]
    test: list[dict]


def build_splits(spec: TaskSpec, data_dir, num_train: int, num_dev: int, num_eval: int,
                 seed: int, eval_seed: int = 0) -> Splits:
    """MeZO's protocol (large_models/run.py): ``num_train + num_dev`` examples sampled from the
    train pool with ``seed``, the last ``num_dev`` of them forming dev; ``num_eval`` test
    examples sampled from the eval split with a fixed ``eval_seed`` so every seed of a sweep is
    tested on the same examples. A pool smaller than asked for is used whole, with a warning.
    """
    pool = load_split(spec, "train", data_dir)
    if num_train + num_dev > len(pool):
        log.warning("task %s: num_train + num_dev = %d > %d available; using all", spec.name,
                    num_train + num_dev, len(pool))
    picked = sample_subset(pool, num_train + num_dev, seed)
    dev = picked[len(picked) - num_dev:] if num_dev else []
    train = picked[: len(picked) - len(dev)]
    test = sample_subset(load_split(spec, "eval", data_dir), num_eval, eval_seed)
    return Splits(train=train, dev=dev, test=test)
