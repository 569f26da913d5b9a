"""Where a task's rows come from: a local mirror (``<data_dir>/<task>/<hf split>.jsonl``, checked
row by row) or the Hugging Face hub (``datasets.load_dataset``, once per process)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from ..hub import HubUnavailableError, datasets_offline, hub_available
from .rows import read_jsonl
from .spec import TaskSpec


def load_split(
    spec: TaskSpec, split: str, data_dir: str | Path | None, on_bad_row: str = "error", skipped: dict | None = None
) -> list[dict]:
    """Rows of ``spec.splits[split]`` as dicts in the Hugging Face schema.

    With ``data_dir`` the rows come from ``<data_dir>/<task>/<hf split>.jsonl``, each checked as
    ``rows.read_jsonl`` says; otherwise from ``datasets.load_dataset(**spec.dataset, split=...)``
    (needs the hub or its cache). Rows whose label is in ``spec.skip_labels`` are dropped.
    """
    hf_split = spec.splits[split]
    if data_dir is not None:
        return read_jsonl(
            Path(data_dir) / spec.name / f"{hf_split}.jsonl",
            f"task {spec.name} reads its '{split}' pool from the '{hf_split}' split",
            spec,
            on_bad_row,
            skipped,
        )
    rows = [dict(row) for row in _hub_rows(spec.name, spec.dataset["path"], spec.dataset.get("name"), hf_split)]
    return [row for row in rows if spec.keep(row)]


@functools.cache
def _hub_rows(task: str, path: str, name: str | None, hf_split: str) -> tuple[dict, ...]:
    """``datasets.load_dataset(path, name, split=hf_split)`` as rows, once per process (the
    pre-run source check and the run read it once). Without the hub, only the local HF cache is
    tried (datasets' own retries take ~40 s to give up), and a failure is one line saying how to
    point zobench at a local mirror instead."""
    import datasets  # deferred: importing datasets costs seconds and the mirror path needs none of it

    offline = not hub_available()
    try:
        with datasets_offline(offline):  # cache only, no retries; put back after this one call
            ds = datasets.load_dataset(path, name, split=hf_split)
    except (OSError, ValueError) as err:  # ConnectionError is an OSError; a missing cache entry, too
        where = (
            "the Hugging Face hub cannot be reached (or HF_HUB_OFFLINE is set)"
            if offline
            else str(err).strip().splitlines()[0]
        )
        raise HubUnavailableError(
            f"data.dir=null: task {task} loads the dataset {path}{'/' + name if name else ''} ({hf_split}) with "
            f"datasets.load_dataset; {where} and the local HF cache does not hold it; set ZOBENCH_DATA_DIR or "
            f"data.dir=<mirror> (<mirror>/{task}/{hf_split}.jsonl), or fill the HF cache where the hub is "
            "reachable and set HF_HUB_OFFLINE=1"
        ) from err
    return tuple(dict(row) for row in ds)


@dataclass
class Source:
    """One task's rows as a run reads them: the spec, the mirror (None: the hub), what to do with a
    bad row, and the count of rows left out per file (``Splits.skipped_rows``). The sampling
    protocols take this one object instead of its four parts."""

    spec: TaskSpec
    data_dir: str | Path | None
    on_bad_row: str = "error"
    skipped: dict = field(default_factory=dict)

    def split(self, name: str) -> list[dict]:
        """The rows of the task's ``train`` or ``eval`` split."""
        return load_split(self.spec, name, self.data_dir, self.on_bad_row, self.skipped)

    def file(self, path: Path, what: str) -> list[dict]:
        """The checked rows of one file (an LM-BFF k-shot split)."""
        return read_jsonl(path, what, self.spec, self.on_bad_row, self.skipped)
