import json

import pytest

from zobench.models.checkpoint_files import checkpoint_files, key_resolver


def test_checkpoint_files_reads_the_index_or_the_single_file_and_names_a_folder_without_either(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert checkpoint_files(tmp_path) == [tmp_path / "model.safetensors"]
    weight_map = {
        "a": "model-00002-of-00002.safetensors",
        "b": "model-00001-of-00002.safetensors",
        "c": "model-00001-of-00002.safetensors",
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    # the index wins over a stray single file; each shard once, in order
    assert checkpoint_files(tmp_path) == [tmp_path / f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no model.safetensors"):
        checkpoint_files(empty)


def test_key_resolver_finds_a_parameter_saved_with_or_without_the_lm_prefix():
    base = key_resolver({"layers.0.weight": 0, "model.norm.weight": 0})  # saved from the base model / with one more
    assert base("model.layers.0.weight") == "layers.0.weight"
    assert base("norm.weight") == "model.norm.weight"
    assert base("lm_head.weight") is None
    assert key_resolver({"lm_head.weight": 0})("lm_head.weight") == "lm_head.weight"
