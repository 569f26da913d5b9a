"""Data loading of every task against the local mirror, and the two sampling protocols."""

import json
from pathlib import Path

import numpy as np
import pytest

from zobench.errors import ConfigError
from zobench.tasks import build_splits, load_split, load_task
from zobench.tasks.data import KSHOT_SEEDS, kshot_dir, row_problem
from zobench.tasks.rows import read_jsonl
from zobench.tasks.sampling import lmbff_test_subset, sample_k_per_label

# (task, split role) -> rows in the mirror (../shared/data/README.md)
MIRROR_ROWS = {
    ("sst2", "train"): 67349,
    ("sst2", "eval"): 872,
    ("sst5", "train"): 8544,
    ("sst5", "eval"): 2210,
    ("snli", "eval"): 9824,
    ("mnli", "eval"): 9815,
    ("rte", "train"): 2490,
    ("rte", "eval"): 277,
    ("trec", "train"): 5452,
    ("trec", "eval"): 500,
    ("cb", "train"): 250,
    ("cb", "eval"): 56,
    ("copa", "train"): 400,
    ("copa", "eval"): 100,
    ("wic", "train"): 5428,
    ("wic", "eval"): 638,
    ("wsc", "train"): 554,
    ("wsc", "eval"): 104,
    ("boolq", "eval"): 3270,
    ("multirc", "eval"): 4848,
    ("squad", "eval"): 10570,
}
# splits the mirror lacks: the error must name the file
MIRROR_MISSING = [
    ("snli", "train", "snli/train.jsonl"),
    ("mnli", "train", "mnli/train.jsonl"),
    ("boolq", "train", "boolq/train.jsonl"),
    ("multirc", "train", "multirc/train.jsonl"),
    ("record", "train", "record/train.jsonl"),
    ("record", "eval", "record/validation.jsonl"),
    ("squad", "train", "squad/train.jsonl"),
    ("drop", "train", "drop/train.jsonl"),
    ("drop", "eval", "drop/validation.jsonl"),
]
# LM-BFF k-shot sets in the mirror: task -> (classes, test rows)
KSHOT = {"sst2": (2, 872), "sst5": (5, 2210), "snli": (3, 9824), "mnli": (3, 9815), "rte": (2, 277), "trec": (6, 500)}


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
    with pytest.raises(
        FileNotFoundError,
        match=rf"data\.dir: .*{path} not found \(task {task} reads its "
        rf"'{role}' pool from the '{spec.splits[role]}' split\)",
    ):
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
    with pytest.raises(
        FileNotFoundError,
        match=r"16-13/dev\.jsonl not found \(dev of the LM-BFF 16-shot split, "
        r"seed 13, of task rte\)",
    ):
        build_splits(load_task("rte"), tmp_path, 0, 0, 0, seed=13, protocol="kshot")


# -- hostile data files: every bad row is named by file and line, before any model loads ----------
SST2_ROW = {"sentence": "a fine film .", "label": 1, "idx": 0}
# (task, bad line, what the one line must say): every schema the tasks/*.yaml read
BAD_ROWS = [
    ("sst2", '{"sentence": "x", "label": 0', "not valid JSON"),
    ("sst2", "[1, 2]", "expected a JSON object, got list"),
    ("sst2", '"just a string"', "expected a JSON object, got str"),
    ("sst2", '{"label": 1}', "field 'sentence' is missing or null"),
    ("sst2", '{"sentence": null, "label": 1}', "field 'sentence' is missing or null"),
    ("sst2", '{"sentence": "x"}', "label field 'label' is missing"),
    ("sst2", '{"sentence": "x", "label": "1"}', 'label="1": task sst2 labels are the integers 0..1'),
    ("sst2", '{"sentence": "x", "label": null}', "label=null: task sst2 labels are the integers 0..1"),
    ("sst2", '{"sentence": "x", "label": 1.7}', "label=1.7: task sst2 labels are the integers 0..1"),
    ("sst2", '{"sentence": "x", "label": 1.0}', "label=1.0: task sst2 labels are the integers 0..1"),
    ("sst2", '{"sentence": "x", "label": true}', "label=true: task sst2 labels are the integers 0..1"),
    ("sst2", '{"sentence": "x", "label": 2}', "label=2: task sst2 labels are the integers 0..1"),
    ("sst2", '{"sentence": "x", "label": -1}', "label=-1: task sst2 labels are the integers 0..1"),
    ("sst2", b'{"sentence": "caf\xe9", "label": 1}', "not UTF-8 (byte 0xe9 at column 18)"),
    ("trec", '{"text": "who?", "coarse_label": 6}', "coarse_label=6: task trec labels are the integers 0..5"),
    ("copa", '{"premise": "p.", "choice1": "a", "question": "cause", "label": 0}', "field 'choice2' is missing"),
    (
        "snli",
        '{"premise": "p.", "hypothesis": "h.", "label": 3}',
        "label=3: task snli labels are the integers 0..2 (or -1: no gold label, dropped)",
    ),
    (
        "squad",
        '{"title": "t", "context": "c", "question": "q?", "answers": {"text": []}}',
        "answers.text=[]: the reference answers must be a non-empty list of strings",
    ),
    ("squad", '{"title": "t", "context": "c", "question": "q?"}', "field 'answers' is missing"),
    (
        "drop",
        '{"passage": "p", "question": "q", "answers_spans": {"spans": "two"}}',
        'answers_spans.spans="two": the reference answers must be a non-empty list of strings',
    ),
    (
        "record",
        '{"passage": "p", "query": "@placeholder won", "entities": "A", "answers": ["A"]}',
        'entities="A": the candidates must be a non-empty list of strings',
    ),
    (
        "record",
        '{"passage": "p", "query": "@placeholder won", "entities": ["A"], "answers": ["B"]}',
        "gold answers ['B'] are not among the candidates",
    ),
]


def _good_row(task: str) -> dict:
    return {
        "sst2": SST2_ROW,
        "trec": {"text": "who?", "coarse_label": 3},
        "copa": {"premise": "p.", "choice1": "a", "choice2": "b", "question": "cause", "label": 0},
        "snli": {"premise": "p.", "hypothesis": "h.", "label": 0},
        "squad": {"title": "t", "context": "c", "question": "q?", "answers": {"text": ["c"]}},
        "drop": {"passage": "p", "question": "q", "answers_spans": {"spans": ["two"]}},
        "record": {"passage": "p", "query": "@placeholder won", "entities": ["A", "B"], "answers": ["A"]},
    }[task]


def _mirror(tmp_path, task: str, role: str, lines: list) -> tuple:
    spec = load_task(task)
    path = tmp_path / task / f"{spec.splits[role]}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(l if isinstance(l, bytes) else l.encode() for l in lines) + b"\n")
    return spec, path


@pytest.mark.parametrize("task, line, message", BAD_ROWS, ids=[f"{t}:{m[:30]}" for t, _, m in BAD_ROWS])
def test_a_bad_row_is_named_by_file_and_line(tmp_path, task, line, message):
    good = json.dumps(_good_row(task))
    spec, path = _mirror(tmp_path, task, "eval", [good, good, line, good])
    spec.render(_good_row(task))  # the good row really is good: only line 3 is wrong
    with pytest.raises(ConfigError) as info:
        load_split(spec, "eval", tmp_path)
    assert str(info.value).startswith(f"{path}:3: ") and message in str(info.value), str(info.value)
    # skipping instead: the bad row is left out, counted per file
    skipped = {}
    rows = load_split(spec, "eval", tmp_path, on_bad_row="skip", skipped=skipped)
    assert len(rows) == 3 and skipped == {str(path): 1}


@pytest.mark.slow
def test_every_row_of_the_mirror_passes_the_checks(data_dir):
    """No false alarms: the checks accept every file the tasks read from the mirror."""
    for task in ("boolq", "cb", "copa", "multirc", "rte", "snli", "squad", "sst2", "sst5", "trec", "wic", "wsc"):
        spec = load_task(task)
        for path in sorted((data_dir / task).rglob("*.jsonl")):
            if path.name == "test.jsonl" and path.parent.name == task and spec.splits["eval"] != "test":
                continue  # GLUE's unlabeled test split (label -1), which no task reads
            assert all(row_problem(spec, r) is None for r in read_jsonl(path, "check", spec))


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    spec, _ = _mirror(tmp_path, "sst2", "eval", [b"\xef\xbb\xbf" + json.dumps(SST2_ROW).encode(), json.dumps(SST2_ROW)])
    assert load_split(spec, "eval", tmp_path) == [SST2_ROW, SST2_ROW]


def test_snli_rows_without_gold_label_are_dropped_not_refused(tmp_path):
    spec, _ = _mirror(
        tmp_path,
        "snli",
        "eval",
        [json.dumps({"premise": "p.", "hypothesis": "h.", "label": lab}) for lab in (0, -1, 2)],
    )
    assert [r["label"] for r in load_split(spec, "eval", tmp_path)] == [0, 2]


def test_bad_rows_in_kshot_files_are_named_too(tmp_path):
    folder = tmp_path / "sst2" / "k-shot" / "16-13"
    folder.mkdir(parents=True)
    for name in ("train", "dev", "test"):
        (folder / f"{name}.jsonl").write_text(json.dumps(SST2_ROW) + "\n")
    (folder / "dev.jsonl").write_text(json.dumps(SST2_ROW) + "\n" + '{"sentence": "x", "label": 7}\n')
    with pytest.raises(ConfigError, match=r"16-13/dev\.jsonl:2: label=7"):
        build_splits(load_task("sst2"), tmp_path, 0, 0, 0, seed=13, protocol="kshot")
    splits = build_splits(load_task("sst2"), tmp_path, 0, 0, 0, seed=13, protocol="kshot", on_bad_row="skip")
    assert splits.skipped_rows == {str(folder / "dev.jsonl"): 1} and len(splits.dev) == 1


def test_unknown_bad_row_policy_is_refused(tmp_path):
    _mirror(tmp_path, "sst2", "eval", [json.dumps(SST2_ROW)])
    with pytest.raises(ConfigError, match="data.on_bad_row='ignore': allowed error, skip"):
        load_split(load_task("sst2"), "eval", tmp_path, on_bad_row="ignore")


# -- tiny train pools: dev never silently eats train ---------------------------------------------
def _sst2_pool(tmp_path, rows: int):
    lines = [json.dumps({"sentence": f"s{i}", "label": i % 2, "idx": i}) for i in range(rows)]
    _mirror(tmp_path, "sst2", "train", lines)
    _mirror(tmp_path, "sst2", "eval", lines[:4])


def test_a_pool_too_small_for_dev_and_one_training_row_is_refused(tmp_path):
    _sst2_pool(tmp_path, 12)  # 12 rows, 32 + 16 asked: dev 16 cannot be had (today: train 8 / dev 4)
    with pytest.raises(
        ConfigError,
        match=r"data.num_dev=16: task sst2's train pool has only 12 rows, too few for "
        r"16 dev rows plus at least one training row; set data.num_dev <= 11",
    ):
        build_splits(load_task("sst2"), tmp_path, 32, 16, 4, seed=0)
    with pytest.raises(ConfigError, match="only 12 rows"):
        build_splits(load_task("sst2"), tmp_path, 32, 12, 4, seed=0)  # dev would take every row


def test_a_short_pool_gives_dev_its_rows_and_train_the_rest_with_a_warning(tmp_path, caplog):
    _sst2_pool(tmp_path, 20)  # MeZO's rule (CB: 250 rows, 1000/100 -> 150/100), said out loud
    splits = build_splits(load_task("sst2"), tmp_path, 32, 16, 4, seed=0)
    assert (len(splits.train), len(splits.dev)) == (4, 16)
    assert not {r["idx"] for r in splits.train} & {r["idx"] for r in splits.dev}
    assert "dev takes its 16, train gets the other 4 (not 32)" in caplog.text
    # enough rows: exactly what was asked, no warning
    caplog.clear()
    splits = build_splits(load_task("sst2"), tmp_path, 4, 16, 4, seed=0)
    assert (len(splits.train), len(splits.dev)) == (4, 16) and "train gets" not in caplog.text
    # zero-shot with a dev set: dev may take the whole pool
    assert len(build_splits(load_task("sst2"), tmp_path, 0, 20, 4, seed=0).dev) == 20


def _sst2_mirror(tmp_path, data_dir, eval_text: str) -> Path:
    """An SST-2 mirror: 40 train rows, and ``eval_text`` as its validation file."""
    (tmp_path / "sst2").mkdir(parents=True)
    rows = (data_dir / "sst2" / "train.jsonl").read_text().splitlines(keepends=True)[:40]
    (tmp_path / "sst2" / "train.jsonl").write_text("".join(rows))
    (tmp_path / "sst2" / "validation.jsonl").write_text(eval_text)
    return tmp_path


@pytest.mark.parametrize(
    "eval_text, on_bad_row, extra",
    [("", "error", ""), ('{"sentence": "x", "label": 7}\n', "skip", " (1 bad rows skipped, data.on_bad_row=skip)")],
)
def test_an_empty_test_split_is_refused_naming_its_file(tmp_path, data_dir, eval_text, on_bad_row, extra):
    """An empty eval file, or one whose every row is left out, gives no test metric: refused."""
    mirror = _sst2_mirror(tmp_path, data_dir, eval_text)
    with pytest.raises(ConfigError) as err:
        build_splits(load_task("sst2"), mirror, 8, 4, 10, seed=0, on_bad_row=on_bad_row)
    assert str(err.value) == (
        f"task sst2: no test rows: {mirror}/sst2/validation.jsonl has none{extra}; a run needs at least one: "
        "point data.dir at a mirror whose file has rows"
    )


def test_an_empty_kshot_dev_file_is_refused_naming_it(tmp_path, data_dir):
    mirror = _sst2_mirror(tmp_path, data_dir, (data_dir / "sst2" / "validation.jsonl").read_text())
    folder = kshot_dir(mirror, "sst2", 16, 13)
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text((mirror / "sst2" / "train.jsonl").read_text())
    (folder / "dev.jsonl").write_text("")
    with pytest.raises(ConfigError, match=f"task sst2: no dev rows: {folder}/dev.jsonl has none"):
        build_splits(load_task("sst2"), mirror, 0, 0, 10, seed=13, protocol="kshot")
