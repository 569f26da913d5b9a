"""HiZOO's and TeZO's paper tables: their grids are what ../shared/TARGETS.md states, their
published cells are exactly the verifiable ones (none guessed), and their smoke twins point at
the committed smoke runs."""

import pytest

from tests.helpers import compose_experiment as _compose
from tests.helpers import experiment_grid as _grid
from zobench.report.spec import load_table


@pytest.mark.slow
def test_hizoo_roberta_grid_is_the_public_codes_protocol():
    points = _grid("hizoo_roberta_k16")
    assert len(points) == 6 * 3 * 5
    configs = [_compose("hizoo_roberta_k16", p) for p in points if p["task"] == "rte"]
    assert {
        (c.optimizer.name, c.optimizer.lr, c.optimizer.eps, c.optimizer.hessian_smooth, c.optimizer.rule)
        for c in configs
    } == {("hizoo", lr, 1e-3, 1e-6, "2024") for lr in (1e-7, 1e-6, 1e-5)}  # the RoBERTa trainer's rule
    assert {c.seed for c in configs} == {13, 21, 42, 87, 100}
    c = configs[0]
    assert (c.model.name, c.train.steps, c.train.batch_size, c.train.eval_every, c.data.protocol, c.data.k) == (
        "roberta-large",
        100000,
        64,
        10000,
        "kshot",
        16,
    )


@pytest.mark.slow
def test_tezo_grid_is_its_table_7():
    points = _grid("tezo_opt13b")
    assert len(points) == 11 * 3 * 4
    configs = [_compose("tezo_opt13b", p) for p in points if p["task"] == "sst2"]
    lrs = {}
    for c in configs:
        lrs.setdefault(c.optimizer.variant, set()).add(c.optimizer.lr)
    assert lrs == {
        "plain": {1e-4, 1e-5, 1e-6, 1e-7},
        "momentum": {1e-4, 1e-5, 1e-6, 1e-7},
        "adam": {1e-4, 3e-5, 1e-5, 3e-6},
    }
    assert {(c.model.name, c.optimizer.name, c.optimizer.rank, c.train.batch_size) for c in configs} == {
        ("opt-13b", "tezo", 32, 16)
    }


def test_published_cells_are_the_verifiable_ones_only():
    hizoo = load_table("hizoo_roberta_k16")
    assert hizoo.published == {
        "MeZO": {"sst2": 90.5, "sst5": 45.5, "snli": 68.5, "mnli": 58.7, "rte": 64.0, "trec": 76.9, "avg": 67.4},
        "HiZOO": {"sst2": 93.2, "sst5": 46.2, "snli": 74.6, "mnli": 64.9, "rte": 66.8, "trec": 79.8, "avg": 70.9},
    }
    assert load_table("tezo_opt13b").published == {}  # TeZO's tables were not found: nothing to compare


def test_smoke_variants_select_the_smoke_runs():
    assert "tiny-roberta" in load_table("hizoo_roberta_k16", smoke=True).select
    tezo = load_table("tezo_opt13b", smoke=True)
    assert "tiny-llama" in tezo.select and tuple(tezo.columns) == ("sst2", "rte", "cb", "copa")


def test_hizoo_row_reads_only_runs_of_the_2024_rule():
    """The RoBERTa rows come from HiZOO's 2024 trainer: a run of the 2025 rule (or one made before
    ``optimizer.rule`` existed) is not reported as that row; Hydra's integer 2024 is."""
    import pandas as pd

    from zobench.report.cells import query

    row = next(r for r in load_table("hizoo_roberta_k16").rows if r.label == "HiZOO")
    frame = pd.DataFrame(
        {
            "optimizer": ["hizoo", "hizoo", "hizoo", "mezo"],
            "optimizer.rule": ["2024", 2024, "2025", None],
            "tuning": ["full"] * 4,
            "train.steps": [10] * 4,
        }
    )
    assert list(query(frame, row.where, "HiZOO").index) == [0, 1]
