"""Loading task splits (Hugging Face hub or a local mirror) and the papers' sampling protocols.

* ``mezo`` (MeZO, large_models/run.py): ``num_train + num_dev`` examples sampled from the train
  pool, ``num_eval`` test examples sampled from the eval split.
* ``kshot`` (LM-BFF, used by MeZO for RoBERTa-large): ``k`` examples per class for train and for
  dev, read from LM-BFF's split files ``<data_dir>/<task>/k-shot/<k>-<seed>/`` or, without them,
  drawn from the train pool the way LM-BFF's tools/generate_k_shot_data.py draws them.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataNotFoundError
from .spec import TaskSpec

log = logging.getLogger(__name__)

PROTOCOLS = ("mezo", "kshot")
KSHOT_SEEDS = (13, 21, 42, 87, 100)  # LM-BFF's data seeds
LMBFF_TEST_SEED = 42                 # generate_k_shot_data.py --mode k-shot-1k-test shuffles with 42


def _follow_link_stub(path: Path) -> Path:
    """The mirror's seed folders symlink ``test.jsonl`` to one shared copy; a checkout or copy made
    without symlink support (git ``core.symlinks=false``) leaves a small text file holding the
    target path (``../test.jsonl``) instead. Follow it like the symlink it stands for."""
    if path.stat().st_size > 512:
        return path
    target = path.read_text(encoding="utf-8").strip()
    if target.endswith(".jsonl") and not target.startswith("{") and "\n" not in target:
        return path.parent / target
    return path


def _read_jsonl(path: Path, what: str) -> list[dict]:
    if path.is_file():
        path = _follow_link_stub(path)
    if not path.is_file():
        present = sorted(p.name for p in path.parent.glob("*.jsonl")) if path.parent.is_dir() else []
        raise DataNotFoundError(
            f"data.dir: {path} not found ({what}); present there: {', '.join(present) or 'nothing'}; "
            "point data.dir / ZOBENCH_DATA_DIR at a mirror that has it, or unset it to load from the "
            "Hugging Face hub"
        )
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_split(spec: TaskSpec, split: str, data_dir: str | Path | None) -> list[dict]:
    """Rows of ``spec.splits[split]`` as dicts in the Hugging Face schema.

    With ``data_dir`` the rows come from ``<data_dir>/<task>/<hf split>.jsonl``; otherwise from
    ``datasets.load_dataset(**spec.dataset, split=...)`` (needs the hub or its cache). Rows whose
    label is in ``spec.skip_labels`` are dropped.
    """
    hf_split = spec.splits[split]
    if data_dir is not None:
        rows = _read_jsonl(Path(data_dir) / spec.name / f"{hf_split}.jsonl",
                           f"task {spec.name} reads its '{split}' pool from the '{hf_split}' split")
    else:
        rows = [dict(row) for row in _hub_rows(spec.name, spec.dataset["path"], spec.dataset.get("name"), hf_split)]
    return [row for row in rows if spec.keep(row)]


@functools.cache
def _hub_rows(task: str, path: str, name: str | None, hf_split: str) -> tuple[dict, ...]:
    """``datasets.load_dataset(path, name, split=hf_split)`` as rows, once per process (the
    pre-run source check and the run read it once). Without the hub, only the local HF cache is
    tried (datasets' own retries take ~40 s to give up), and a failure is one line saying how to
    point zobench at a local mirror instead."""
    import datasets  # deferred: importing datasets costs seconds and the mirror path needs none of it

    from ..models.loading import HubUnavailableError, hub_available

    offline = not hub_available()
    previous = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = previous or offline  # read at call time: cache only, no retries
    try:
        ds = datasets.load_dataset(path, name, split=hf_split)
    except (OSError, ValueError) as err:  # ConnectionError is an OSError; a missing cache entry, too
        where = "the Hugging Face hub cannot be reached (or HF_HUB_OFFLINE is set)" if offline else \
            str(err).strip().splitlines()[0]
        raise HubUnavailableError(
            f"data.dir=null: task {task} loads the dataset {path}{'/' + name if name else ''} ({hf_split}) with "
            f"datasets.load_dataset; {where} and the local HF cache does not hold it; set ZOBENCH_DATA_DIR or "
            f"data.dir=<mirror> (<mirror>/{task}/{hf_split}.jsonl), or fill the HF cache where the hub is "
            "reachable and set HF_HUB_OFFLINE=1") from err
    finally:
        datasets.config.HF_HUB_OFFLINE = previous
    return tuple(dict(row) for row in ds)


def sample_subset(rows: list, num: int, seed: int) -> list:
    """``num`` rows in the order of ``RandomState(seed).permutation`` (MeZO's ``sample_subset``)."""
    index = np.random.RandomState(seed).permutation(len(rows))[:num]
    return [rows[i] for i in index]


def sample_k_per_label(rows: list[dict], label_field: str, k: int, seed: int) -> tuple[list[dict], list[dict]]:
    """LM-BFF's tools/generate_k_shot_data.py: shuffle the pool with ``np.random.seed(seed)``,
    group by label in order of first appearance, take the first ``k`` of each label for train and
    the next ``k`` for dev (train/dev grouped by label, in that order)."""
    shuffled = list(rows)
    np.random.RandomState(seed).shuffle(shuffled)
    by_label: dict = {}
    for row in shuffled:
        by_label.setdefault(row[label_field], []).append(row)
    short = {lab: len(group) for lab, group in by_label.items() if len(group) < 2 * k}
    if short:
        log.warning("k-shot: fewer than 2k=%d examples for labels %s; taking what there is", 2 * k, short)
    train = [row for group in by_label.values() for row in group[:k]]
    dev = [row for group in by_label.values() for row in group[k:2 * k]]
    return train, dev


def lmbff_test_subset(rows: list, num_eval: int) -> list:
    """The whole test set when ``num_eval <= 0`` or it has no more rows (LM-BFF); otherwise
    ``num_eval`` rows as LM-BFF's ``k-shot-1k-test`` mode picks them (MeZO's RoBERTa runs):
    the file shuffled with seed 42, first ``num_eval`` kept."""
    if num_eval <= 0 or num_eval >= len(rows):
        return list(rows)
    return sample_subset(rows, num_eval, LMBFF_TEST_SEED)


@dataclass
class Splits:
    train: list[dict]
    dev: list[dict]
    test: list[dict]


def build_splits(spec: TaskSpec, data_dir, num_train: int, num_dev: int, num_eval: int,
                 seed: int, eval_seed: int = 0, protocol: str = "mezo", k: int = 16) -> Splits:
    """Train/dev/test rows of ``spec`` under ``protocol``.

    ``mezo``: ``num_train + num_dev`` examples sampled from the train pool with ``seed``, the last
    ``num_dev`` forming dev; ``num_eval`` test examples sampled from the eval split with
    ``eval_seed`` (by default ``data.seed``: MeZO samples its test set with the train seed,
    princeton-nlp/MeZO large_models/run.py:480; a fixed number tests every seed on the same rows). A pool smaller than
    asked for is used whole, with a warning. With ``num_train == num_dev == 0`` (zero-shot) the
    train pool is not loaded, so tasks whose mirror lacks a train split still evaluate.

    ``kshot``: ``k`` examples per class for train and dev (``num_train``/``num_dev`` are not used),
    ``seed`` being the data seed (13, 21, 42, 87, 100 in LM-BFF). Read from
    ``<data_dir>/<task>/k-shot/<k>-<seed>/{train,dev}.jsonl`` when that folder has a train file,
    else drawn from the train pool (``sample_k_per_label``). Test: that folder's ``test.jsonl``
    when present, else the eval split; all of it when ``num_eval <= 0`` (LM-BFF's full test set),
    else ``num_eval`` rows as LM-BFF's 1k-test mode picks them (``eval_seed`` is not used).
    """
    if protocol == "mezo":
        return _mezo_splits(spec, data_dir, num_train, num_dev, num_eval, seed, eval_seed)
    if protocol == "kshot":
        return _kshot_splits(spec, data_dir, num_eval, seed, k)
    raise ConfigError(f"data.protocol={protocol!r}: allowed {', '.join(PROTOCOLS)}")


def _mezo_splits(spec, data_dir, num_train, num_dev, num_eval, seed, eval_seed) -> Splits:
    picked = []
    if num_train + num_dev > 0:
        pool = load_split(spec, "train", data_dir)
        if num_train + num_dev > len(pool):
            log.warning("task %s: num_train + num_dev = %d > %d available; using all", spec.name,
                        num_train + num_dev, len(pool))
        picked = sample_subset(pool, num_train + num_dev, seed)
    dev = picked[len(picked) - num_dev:] if num_dev else []
    train = picked[: len(picked) - len(dev)]
    test = sample_subset(load_split(spec, "eval", data_dir), num_eval, eval_seed)
    return Splits(train=train, dev=dev, test=test)


def kshot_dir(data_dir, task: str, k: int, seed: int) -> Path:
    return Path(data_dir) / task / "k-shot" / f"{k}-{seed}"


def _kshot_splits(spec, data_dir, num_eval, seed, k) -> Splits:
    if not spec.label_field:
        raise ConfigError(f"data.protocol=kshot: task {spec.name} has no class label to sample k per class")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"data.k={k!r}: expected an integer >= 1")
    folder = kshot_dir(data_dir, spec.name, k, seed) if data_dir is not None else None
    if folder is not None and (folder / "train.jsonl").is_file():
        what = f"LM-BFF {k}-shot split, seed {seed}, of task {spec.name}"
        train = [r for r in _read_jsonl(folder / "train.jsonl", f"train of the {what}") if spec.keep(r)]
        dev = [r for r in _read_jsonl(folder / "dev.jsonl", f"dev of the {what}") if spec.keep(r)]
    else:
        log.info("task %s: no k-shot files for k=%d seed=%d; sampling them from the train pool", spec.name, k, seed)
        train, dev = sample_k_per_label(load_split(spec, "train", data_dir), spec.label_field, k, seed)
    if folder is not None and (folder / "test.jsonl").is_file():
        test = [r for r in _read_jsonl(folder / "test.jsonl", "k-shot test") if spec.keep(r)]
    else:
        test = load_split(spec, "eval", data_dir)
    return Splits(train=train, dev=dev, test=lmbff_test_subset(test, num_eval))
