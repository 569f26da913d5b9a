"""Fixtures of the integration tests: a tiny causal LM and a small learnable language task."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_model


def pattern_data(n: int = 32, length: int = 8, tokens: tuple = (3, 7, 11, 19)) -> list[dict]:
    """``n`` sequences of ``length`` ids drawn from the few ``tokens``: a task whose loss a random
    2-layer model (near ln(vocab)) lowers within a few dozen ZO steps, by learning which ids occur."""
    picks = torch.randint(0, len(tokens), (n, length), generator=torch.Generator().manual_seed(0))
    rows = torch.tensor(tokens)[picks]
    return [{"input_ids": row, "labels": row} for row in rows]


@pytest.fixture
def patterns():
    """``pattern_data``, for the tests (test modules share code through fixtures, not imports)."""
    return pattern_data


@pytest.fixture
def llama():
    """A random 2-layer Llama (tests/helpers.py), trainable."""
    return tiny_model("llama").requires_grad_(True)
