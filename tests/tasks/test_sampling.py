"""MeZO's data protocol: the test rows are sampled with the train seed, as MeZO's run.py does
(princeton-nlp/MeZO @552cb1b large_models/run.py:473-480: ``task.sample_subset(data_split="valid",
seed=train_set_seed, num=args.num_eval)``), unless ``data.eval_seed`` fixes them."""

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from zobench.resources import conf_dir
from zobench.tasks.data import sample_subset


def _data(*overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg.data, resolve=True)


def _mezo_sample_subset(samples, seed, num):
    """MeZO large_models/tasks.py:91-100 (exclude=None): a permutation under temp_seed(seed)."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        index = np.random.permutation(len(samples)).tolist()[:num]
    finally:
        np.random.set_state(state)
    return [samples[i] for i in index]


def test_eval_seed_follows_the_train_seed_by_default():
    for seed in (0, 3):
        data = _data(f"seed={seed}", "data.dir=/tmp/mirror")
        assert data["seed"] == seed and data["eval_seed"] == seed


def test_eval_seed_can_be_fixed_across_seeds():
    assert _data("seed=3", "data.eval_seed=0", "data.dir=/tmp/mirror")["eval_seed"] == 0


def test_the_test_rows_are_mezos_for_each_train_seed():
    rows = list(range(872))  # SST-2's validation split size
    for seed in (0, 1, 42):
        assert sample_subset(rows, 500, seed) == _mezo_sample_subset(rows, seed, 500)
    assert sample_subset(rows, 500, 1) != sample_subset(rows, 500, 0)
