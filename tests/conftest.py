"""Shared fixtures: the local data mirror, tiny models of every family, an isolated W&B dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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


TINY_ARCHS = {
    # family name -> (auto class, config kwargs): small enough to run in milliseconds
    "llama": (
        "causal",
        dict(
            model_type="llama",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=64,
            tie_word_embeddings=True,
        ),
    ),
    "opt": (
        "causal",
        dict(
            model_type="opt",
            hidden_size=16,
            ffn_dim=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=64,
            word_embed_proj_dim=16,
            max_position_embeddings=64,
        ),
    ),
    "phi": (
        "causal",
        dict(
            model_type="phi",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=64,
        ),
    ),
    "gemma3": (
        "causal",
        dict(
            model_type="gemma3_text",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            vocab_size=64,
            sliding_window=8,
        ),
    ),
    "roberta": (
        "masked",
        dict(
            model_type="roberta",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=64,
            max_position_embeddings=40,
        ),
    ),
}


def tiny_model(family: str, dtype=torch.float32, seed: int = 0):
    import transformers

    kind, kwargs = TINY_ARCHS[family]
    kwargs = dict(kwargs)
    config = transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    torch.manual_seed(seed)
    auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModelForMaskedLM
    model = auto.from_config(config, dtype=dtype).eval().requires_grad_(False)
    return model
