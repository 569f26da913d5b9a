"""Data loading of every task against the local mirror, and the two sampling protocols."""

import json

import numpy as np
import pytest

from zobench.tasks import build_splits, load_split, load_task
from zobench.tasks.data import KSHOT_SEEDS, kshot_dir, lmbff_test_subset, sample_k_per_label

# (task, split role) -> rows in the mirror (../shared/data/README.md)
MIRROR_ROWS = {
    ("sst2", "train"): 67349, ("sst2", "eval"): 872,
    ("sst5", "train"): 8544, ("sst5", "eval"): 2210,
    ("snli", "eval"): 9824, ("mnli", "eval"): 9815,
    ("rte", "train"): 2490, ("rte", "eval"): 277,
    ("trec", "train"): 5452, ("trec", "eval"): 500,
    ("cb", "train"): 250, ("cb", "eval"): 56,
    ("copa", "train"): 400, ("copa", "eval"): 100,
    ("wic", "train"): 5428, ("wic", "eval"): 638,
    ("wsc", "train"): 554, ("wsc", "eval"): 104,
    ("boolq", "eval"): 3270, ("multirc", "eval"): 4848, ("squad", "eval"): 10570,
}
# splits the mirror lacks: the error must name the file
MIRROR_MISSING = [("snli", "train", "snli/train.jsonl"), ("mnli", "train", "mnli/train.jsonl"),
                  ("boolq", "train", "boolq/train.jsonl"), ("multirc", "train", "multirc/train.jsonl"),
                  ("record", "train", "record/train.jsonl"), ("record", "eval", "record/validation.jsonl"),
                  ("squad", "train", "squad/train.jsonl"), ("drop", "train", "drop/train.jsonl"),
                  ("drop", "eval", "drop/validation.jsonl")]
# LM-BFF k-shot sets in the mirror: task -> (classes, test rows)
KSHOT = {"sst2": (2, 872), "sst5": (5, 2210), "snli": (3, 9824), "mnli": (3, 9815), "rte": (2, 277),
         "trec": (6, 500)}


@pytest.mark.parametrize("task, role", sorted(MIRROR_ROWS))
def test_mirror_split_loads_and_every_row_renders(data_dir, task, role):
    spec = load_task(task)
    rows = load_split(spec, role, data_dir)
    assert len(rows) == MIRROR_ROWS[task, role]
    for row in rows[:50]:
        for family in spec.families:
            rendered = spec.render(row, family)
            assert rendered.prompt and all(rendered.candidates)


@pytest.mark.parametrize("task, role, path", MIRROR_MISSING)
def test_missing_mirror_split_names_the_file_and_the_split(data_dir, task, role, path):
    spec = load_task(task)
    with pytest.raises(FileNotFoundError, match=rf"data\.dir: .*{path} not found \(task {task} reads its "
                                                rf"'{role}' pool from the '{spec.splits[role]}' split\)"):
        load_split(spec, role, data_dir)


def test_record_error_lists_what_the_mirror_has(data_dir):
    with pytest.raises(FileNotFoundError, match="present there: dev32_fewglue.jsonl, train_fewglue32.jsonl"):
        load_split(load_task("record"), "eval", data_dir)


@pytest.mark.parametrize("task", ["boolq", "multirc", "squad"])
def test_zero_shot_does_not_touch_the_missing_train_pool(data_dir, task):
    splits = build_splits(load_task(task), data_dir, num_train=0, num_dev=0, num_eval=30, seed=0)
    assert (splits.train, splits.dev, len(splits.test)) == ([], [], 30)


def test_training_on_a_task_without_train_split_names_the_file(data_dir):
    with pytest.raises(FileNotFoundError, match=r"boolq/train\.jsonl not found"):
        build_splits(load_task("boolq"), data_dir, num_train=10, num_dev=0, num_eval=5, seed=0)


def test_hub_rows_without_gold_label_are_dropped(monkeypatch):
    import datasets

    rows = [{"premise": "A.", "hypothesis": "B.", "label": lab} for lab in (0, -1, 2)]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: rows)
    assert [r["label"] for r in load_split(load_task("snli"), "eval", None)] == [0, 2]


@pytest.mark.parametrize("task", sorted(KSHOT))
@pytest.mark.parametrize("seed", KSHOT_SEEDS)
def test_lmbff_kshot_files_give_k_per_class_and_the_full_test_set(data_dir, task, seed):
    spec = load_task(task)
    classes, test_rows = KSHOT[task]
    splits = build_splits(spec, data_dir, num_train=0, num_dev=0, num_eval=0, seed=seed, protocol="kshot", k=16)
    for part in (splits.train, splits.dev):
        labels = [row[spec.label_field] for row in part]
        assert sorted(set(labels)) == list(range(classes)) and all(labels.count(c) == 16 for c in range(classes))
    assert len(splits.test) == test_rows


def test_kshot_test_is_the_lmbff_file_when_the_seed_folder_has_one(data_dir):
    """SST-2's LM-BFF test set is the sentence-level text, not GLUE's validation split."""
    splits = build_splits(load_task("sst2"), data_dir, 0, 0, 0, seed=13, protocol="kshot")
    lmbff = [json.loads(line) for line in (data_dir / "sst2" / "k-shot" / "test.jsonl").open()]
    assert splits.test == lmbff
    assert splits.test != load_split(load_task("sst2"), "eval", data_dir)


@pytest.mark.parametrize("task", ["trec", "rte"])
def test_kshot_sampler_reproduces_lmbffs_published_splits(data_dir, task):
    """Sampling from the train pool the way generate_k_shot_data.py does gives LM-BFF's files."""
    spec = load_task(task)
    pool = load_split(spec, "train", data_dir)
    for seed in KSHOT_SEEDS:
        train, dev = sample_k_per_label(pool, spec.label_field, 16, seed)
        folder = kshot_dir(data_dir, task, 16, seed)
        for mine, name in ((train, "train"), (dev, "dev")):
            published = [json.loads(line) for line in (folder / f"{name}.jsonl").open()]
            key = "text" if task == "trec" else "hypothesis"
            assert [r[key] for r in mine] == [r[key] for r in published], (seed, name)


def test_kshot_without_files_samples_k_per_class_from_the_train_pool(data_dir):
    spec = load_task("trec")
    assert not kshot_dir(data_dir, "trec", 4, 21).exists()
    splits = build_splits(spec, data_dir, 0, 0, 0, seed=21, protocol="kshot", k=4)
    # LM-BFF: np.random.seed(seed); shuffle; group by label in order of first appearance
    np.random.seed(21)
    shuffled = load_split(spec, "train", data_dir)
    np.random.shuffle(shuffled)
    order = list(dict.fromkeys(r["coarse_label"] for r in shuffled))
    groups = {lab: [r for r in shuffled if r["coarse_label"] == lab] for lab in order}
    assert splits.train == [r for lab in order for r in groups[lab][:4]]
    assert splits.dev == [r for lab in order for r in groups[lab][4:8]]
    assert len(splits.test) == 500


def test_kshot_1k_test_subsample_matches_lmbffs_tsv_and_csv_paths():
    """generate_k_shot_data.py --mode k-shot-1k-test: tsv lines shuffled with seed 42, csv via
    DataFrame.sample(n, random_state=42); both are the first n of RandomState(42).permutation."""
    import pandas as pd

    rows = [{"i": i} for i in range(1500)]
    picked = lmbff_test_subset(rows, 1000)
    np.random.seed(42)
    lines = list(rows)
    np.random.shuffle(lines)
    assert picked == lines[:1000]
    assert [r["i"] for r in picked] == pd.DataFrame(rows).sample(n=1000, random_state=42)["i"].tolist()
    assert lmbff_test_subset(rows, 0) == rows and lmbff_test_subset(rows, 5000) == rows


def test_kshot_needs_a_class_label(data_dir):
    with pytest.raises(ValueError, match="data.protocol=kshot: task squad has no class label"):
        build_splits(load_task("squad"), data_dir, 0, 0, 0, seed=13, protocol="kshot")


def test_unknown_protocol_is_refused(data_dir):
    with pytest.raises(ValueError, match="data.protocol='lmbff': allowed mezo, kshot"):
        build_splits(load_task("sst2"), data_dir, 1, 1, 1, seed=0, protocol="lmbff")


def test_symlink_stub_is_followed(tmp_path):
    """A seed folder's test.jsonl copied without symlink support holds '../test.jsonl'."""
    task = tmp_path / "sst2"
    (task / "k-shot" / "16-13").mkdir(parents=True)
    row = {"sentence": "fine .", "label": 1, "idx": 0}
    (task / "k-shot" / "test.jsonl").write_text(json.dumps(row) + "\n")
    for name in ("train", "dev"):
        (task / "k-shot" / "16-13" / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    (task / "k-shot" / "16-13" / "test.jsonl").write_text("../test.jsonl")
    splits = build_splits(load_task("sst2"), tmp_path, 0, 0, 0, seed=13, protocol="kshot")
    assert splits.test == [row]


def test_missing_kshot_dev_file_names_it(tmp_path, data_dir):
    folder = tmp_path / "rte" / "k-shot" / "16-13"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text((kshot_dir(data_dir, "rte", 16, 13) / "train.jsonl").read_text())
    with pytest.raises(FileNotFoundError, match=r"16-13/dev\.jsonl not found \(dev of the LM-BFF 16-shot split, "
                                                r"seed 13, of task rte\)"):
        build_splits(load_task("rte"), tmp_path, 0, 0, 0, seed=13, protocol="kshot")
