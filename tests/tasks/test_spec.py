"""Task specs: exact prompt strings (MeZO Table 14), data loading, MeZO's sampling protocol."""

import numpy as np
import pytest

from tests.tasks import PAPER_TASKS
from zobench.tasks import TaskSpec, available_tasks, build_splits, load_split, load_task, sample_subset

SST2_ROW = {"sentence": "it 's a charming and often affecting journey . ", "label": 1, "idx": 0}
RTE_ROW = {
    "premise": "No Weapons of Mass Destruction Found in Iraq Yet.",
    "hypothesis": "Weapons of Mass Destruction Found in Iraq.",
    "idx": 0,
    "label": 1,
}


def test_sst2_renders_exactly_as_mezo():
    rendered = load_task("sst2").render(SST2_ROW)
    assert rendered.prompt == "it 's a charming and often affecting journey . It was"
    assert rendered.candidates == (" terrible", " great")
    assert rendered.label == 1


def test_rte_renders_exactly_as_mezo():
    rendered = load_task("rte").render(RTE_ROW)
    assert rendered.prompt == (
        "No Weapons of Mass Destruction Found in Iraq Yet.\nDoes this mean that "
        '"Weapons of Mass Destruction Found in Iraq." is true? Yes or No?\n'
    )
    assert rendered.candidates == ("Yes", "No")
    assert rendered.label == 1


def test_every_task_spec_parses_and_has_a_version():
    assert PAPER_TASKS <= set(available_tasks())
    for name in available_tasks():
        spec = load_task(name)
        assert spec.name == name and isinstance(spec.version, int)


def test_unknown_task_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"task='sst3'.*available: .*sst2"):
        load_task("sst3")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: [d.pop("causal"), d.pop("masked")], "no prompt family"),
        (lambda d: d.update(metric="bleu"), "metric='bleu'"),
        (lambda d: d.update(objective="rl"), "objective='rl'"),
        (lambda d: d.update(colour="red"), "unknown keys"),
        (lambda d: d.update(splits={"train": "train"}), "splits must name"),
        (lambda d: d.update(gold_field="answers"), "exactly one of label_field, gold_field, answers_field"),
        (
            lambda d: d["masked"].update(prompt="{{ sentence }} It was"),
            "masked.prompt must contain <mask> exactly once",
        ),
        (lambda d: d["causal"].update(candidates=[]), "causal.candidates: expected a non-empty list"),
        (lambda d: d["causal"].update(template="x"), "causal: expected exactly the keys prompt and candidates"),
        (lambda d: d.update(objective="generation"), "objective generation goes with answers_field"),
        (
            lambda d: d["causal"].update(candidates={"for_each": "words", "template": "{{ candidate }}"}),
            "gold_field goes with candidates: {for_each, template}",
        ),
        (lambda d: d.pop("max_length"), r"missing keys \['max_length'\]"),
        (lambda d: d.update(max_length=0), "max_length=0; a positive integer is needed"),
        (lambda d: d.update(num_dev="100"), "num_dev='100'; a positive integer is needed"),
        (lambda d: d.update(masked_max_length=True), "masked_max_length=True; a positive integer"),
        (lambda d: d.pop("masked"), "masked_max_length goes with a masked prompt"),
        # what is written with every result, and what loading the data reads
        (lambda d: d.update(version="1.2"), r"version='1.2'; a positive integer is needed"),
        (lambda d: d.update(version=1.5), r"version=1.5; a positive integer is needed"),
        (lambda d: d.update(version=True), r"version=True; a positive integer is needed"),
        (lambda d: d.update(name=["sst2"]), r"name=\['sst2'\]; expected the file's name"),
        (lambda d: d.update(dataset="glue"), r"dataset='glue'; expected \{path: <hub dataset>"),
        (lambda d: d.update(splits={"train": "train", "eval": 3}), r"splits=.*each split is the name"),
        (lambda d: d.update(label_field=["label"]), r"label_field=\['label'\]; expected a field name"),
        (lambda d: d.update(skip_labels=-1), r"skip_labels=-1; expected a list"),
        # every template compiles when the spec loads: one line naming the field, not a traceback
        (
            lambda d: d["causal"].update(prompt="{{ sentence }"),
            r"bad\.yaml: causal\.prompt: Jinja syntax error at template line 1: unexpected '}'",
        ),
        (lambda d: d["causal"].update(prompt="{{ sentence | }}"), r"causal\.prompt: Jinja syntax error"),
        (lambda d: d["causal"].update(candidates=[" ok", " {% if %}"]), r"causal\.candidates\[1\]: Jinja syntax error"),
        (lambda d: d["masked"].update(prompt=5), r"masked\.prompt=5; expected a Jinja template string"),
    ],
)
def test_bad_specs_are_refused_with_the_key_named(tmp_path, edit, message):
    import yaml

    raw = yaml.safe_load(open(load_task("sst2").source_file).read())
    edit(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=message):
        TaskSpec.from_yaml(path)


def test_a_template_the_example_does_not_fit_is_one_line(tmp_path):
    """An expression that compiles but cannot run on the example (a string plus a number)."""
    import yaml

    raw = yaml.safe_load(open(load_task("sst2").source_file).read())
    raw["causal"]["prompt"] = "{{ sentence + 1 }}"
    path = tmp_path / "sst2.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"task sst2 \(causal prompt\): example does not fit the template"):
        TaskSpec.from_yaml(path).render(SST2_ROW)


def test_invalid_yaml_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndescription: a: b\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: not valid YAML \(mapping values"):
        TaskSpec.from_yaml(path)


def test_label_outside_the_candidates_is_refused():
    with pytest.raises(ValueError, match="label 2 outside 0..1"):
        load_task("sst2").render({**SST2_ROW, "label": 2})


def test_mirror_split_loads_in_hub_schema(data_dir):
    rows = load_split(load_task("rte"), "eval", data_dir)
    assert len(rows) == 277
    assert list(rows[0]) == ["premise", "hypothesis", "idx", "label"]


def test_missing_mirror_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.dir: .*sst2/train\.jsonl not found"):
        load_split(load_task("sst2"), "train", tmp_path)


def test_hub_source_asks_datasets_for_the_specs_ids(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or [SST2_ROW])
    rows = load_split(load_task("sst2"), "eval", None)
    assert calls == [(("glue", "sst2"), {"split": "validation"})]
    assert rows == [SST2_ROW]


def test_sampling_follows_mezos_protocol(data_dir):
    spec = load_task("sst2")
    splits = build_splits(spec, data_dir, num_train=100, num_dev=20, num_eval=50, seed=3, eval_seed=0)
    pool = load_split(spec, "train", data_dir)
    order = np.random.RandomState(3).permutation(len(pool))[:120]
    assert splits.train == [pool[i] for i in order[:100]]
    assert splits.dev == [pool[i] for i in order[100:]]  # dev = the last num_dev of the sample
    valid = load_split(spec, "eval", data_dir)
    assert splits.test == [valid[i] for i in np.random.RandomState(0).permutation(len(valid))[:50]]
    # the test set does not depend on the training seed
    assert build_splits(spec, data_dir, 100, 20, 50, seed=4).test == splits.test


def test_small_pool_is_used_whole():
    rows = [{"x": i} for i in range(5)]
    assert sorted(r["x"] for r in sample_subset(rows, 10, 0)) == list(range(5))
