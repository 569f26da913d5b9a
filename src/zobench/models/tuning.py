"""Which parameters a run trains: ``tuning=full | lora | prefix`` (MeZO §3, Table 1 / Table 18).

* ``full``: every parameter of the model.
* ``lora``: LoRA (Hu et al. 2022) through peft, ``W x + (α/r)·B A x`` on the attention query and
  value projections (MeZO: r=8, α=16); only A and B are trained. ``target_modules`` lists module
  name suffixes; the default covers every family in conf/model (``q_proj``/``v_proj`` for OPT,
  Llama, Phi, Gemma; ``query``/``value`` for RoBERTa).
* ``prefix``: prefix tuning (Li & Liang 2021) through peft: ``num_virtual_tokens`` trainable
  key/value vectors per layer, prepended to every attention (MeZO: 5 tokens, no
  reparameterisation MLP). With ``init_by_real_act`` (MeZO's ``--prefix_init_by_real_act``,
  the default in its scripts) the prefix starts as the keys/values the frozen model computes
  for ``num_virtual_tokens`` random vocabulary tokens, instead of peft's N(0, 1) embedding,
  which is far off the scale of real activations.

Only the trainable parameters are perturbed, updated and checkpointed: ``trainable(model)``
lists them, and ``requires_grad`` marks them (the ZO loop itself never builds a graph).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..config import check_value
from ..config.schema import TUNINGS as TUNINGS  # tuning.name: the config's choices
from ..errors import ConfigError

DEFAULT_LORA_TARGETS = ("q_proj", "v_proj", "query", "value")


def apply_tuning(model: nn.Module, cfg, family: str, seed: int = 0) -> nn.Module:
    """The model to train under ``cfg`` (a ``conf/tuning/*.yaml`` mapping); may wrap it in peft."""
    name = cfg["name"]
    check_value("tuning.name", name)
    if name == "full":
        model.requires_grad_(True)
        return model
    import peft

    if name == "lora":
        targets = list(cfg.get("target_modules") or DEFAULT_LORA_TARGETS)
        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        if not present & set(targets):
            raise ConfigError(
                f"tuning.target_modules={targets}: no module of {type(model).__name__} has such a "
                f"name; pick from its Linear layers, e.g. {sorted(present)[:8]}"
            )
        config: peft.PeftConfig = peft.LoraConfig(
            r=int(cfg["r"]),
            lora_alpha=float(cfg["alpha"]),  # type: ignore[arg-type]  # peft annotates int, scales by any number
            lora_dropout=0.0,
            target_modules=[t for t in targets if t in present],
            bias="none",
            task_type="CAUSAL_LM" if family == "causal" else None,
        )
        # peft initialises A (Kaiming) from the global RNG: seed it so the run is repeatable
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft calls transformers' deprecated helpers
            torch.manual_seed(seed)
            tuned: nn.Module = peft.get_peft_model(model, config)
    else:
        # peft has no masked-LM prefix class; FEATURE_EXTRACTION passes the prefix to the
        # MaskedLM model's own forward and returns its MLM logits
        config = peft.PrefixTuningConfig(
            num_virtual_tokens=int(cfg["num_virtual_tokens"]),
            prefix_projection=False,
            task_type="CAUSAL_LM" if family == "causal" else "FEATURE_EXTRACTION",
        )
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.manual_seed(seed)
            tuned = peft.get_peft_model(model, config)
            if cfg.get("init_by_real_act", True):
                _init_prefix_by_real_activations(tuned, seed)
    tuned.eval()
    return tuned


def trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, parameter)`` of every trained parameter, in module order."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


@torch.no_grad()
def _init_prefix_by_real_activations(tuned, seed: int) -> None:
    """Set the prefix to the per-layer keys/values of random tokens run through the frozen model.

    peft stores the prefix as one embedding of shape (T, 2·L·d_kv), read back as
    (T, 2L, heads, head_dim) with row 2l the keys and 2l+1 the values of layer l
    (``PeftModel.get_prompt``); a causal cache holds layer l's keys as (1, heads, T, head_dim).
    """
    base = tuned.get_base_model()
    weight = tuned.prompt_encoder[tuned.active_adapter].embedding.weight
    config = tuned.active_peft_config
    tokens = config.num_virtual_tokens
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, base.config.vocab_size, (1, tokens), generator=generator).to(weight.device)
    cache = base(input_ids=ids, use_cache=True).past_key_values if _is_causal(base) else None
    if cache is None or not hasattr(cache, "layers"):  # encoders return no cache: keep peft's init
        return
    heads, head_dim = config.num_attention_heads, config.token_dim // config.num_attention_heads
    view = weight.view(tokens, config.num_layers * 2, heads, head_dim)
    for layer, kv in enumerate(cache.layers):
        view[:, 2 * layer] = kv.keys[0].permute(1, 0, 2).to(weight.dtype)
        view[:, 2 * layer + 1] = kv.values[0].permute(1, 0, 2).to(weight.dtype)


def _is_causal(model) -> bool:
    return not getattr(model.config, "is_encoder_decoder", False) and "ForMaskedLM" not in type(model).__name__
