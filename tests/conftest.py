"""Shared fixtures: the local data mirror and an isolated W&B dir (shared helpers: tests/helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# The tests' models are tiny: a second intra-op thread costs more in hand-offs than it computes
# (twice the CPU time of a smoke run on 2 cores, and spinning on a shared machine); the numbers
# are the same. Subprocesses inherit OMP_NUM_THREADS. An explicit setting is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(
    os.environ.get("ZOBENCH_DATA_DIR", REPO.parent / "shared" / "data")
).resolve()  # subprocesses run elsewhere


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "sst2" / "train.jsonl").is_file():
        pytest.fail(f"local data mirror not found at {DATA_DIR}; set ZOBENCH_DATA_DIR")
    return DATA_DIR


@pytest.fixture(autouse=True)
def _autograd_mode_restored():
    """A test that builds components or runs a recipe in process turns autograd off (zeroth
    order, process-wide); the next test in the same worker starts with the mode it had."""
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)
