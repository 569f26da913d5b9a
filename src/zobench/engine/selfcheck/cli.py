"""``python -m zobench.engine.selfcheck``: the start-up check alone, for a config's model in
each dtype asked for (``results/bench/gpu.sh`` runs it first and records its time)."""

from __future__ import annotations

import sys

import torch
from torch import nn

from ...errors import ConfigError
from .choose import describe, label
from .compare import cases_for, run_check


def model_parameters(cfg) -> list[torch.Tensor]:
    """The parameters of ``cfg.model`` with their real shapes and dtype: a ``random`` config's
    on the meta device (no memory, no initialisation: a 30B config's in a second), any other
    loaded as a run loads it."""
    from ...models import loading

    if cfg.model.source != "random":
        from ...train.setup import load_model_or_explain, resolve_device

        return list(load_model_or_explain(cfg, resolve_device(cfg.device))[0].parameters())
    import transformers

    tokenizer = loading.load_tokenizer(cfg.model, cfg.cache_dir)
    arch = dict(cfg.model.architecture)
    config = transformers.AutoConfig.for_model(arch.pop("model_type"), vocab_size=len(tokenizer), **arch)
    with torch.device("meta"):
        model = loading._auto_class(cfg.model.get("family", "causal")).from_config(
            config, dtype=loading.torch_dtype(cfg.model.dtype)
        )
    return list(model.parameters())


def main(argv: list[str] | None = None) -> int:
    """``python -m zobench.engine.selfcheck [--models a,b] [--dtypes float16,bfloat16] [overrides]``:
    the start-up check of the Triton engine a run with these overrides (``model=``, ``engine.*``,
    ``optimizer.distribution=``, ``device=``) would use, on each model's shape classes in each
    dtype; one JSON line per (model, dtype): cases, the check's own seconds, passed, the failure."""
    import argparse

    from ...__main__ import fail, precheck

    parser = argparse.ArgumentParser(prog="python -m zobench.engine.selfcheck")
    parser.add_argument("--models", default=None, help="comma-separated conf/model names (default: model=)")
    parser.add_argument("--dtypes", default=None, help="comma-separated model.dtype values (default: the config's)")
    known, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    precheck(overrides)
    failures = []
    for model in known.models.split(",") if known.models else [None]:
        for dtype in known.dtypes.split(",") if known.dtypes else [None]:
            extra = ([f"model={model}"] if model else []) + ([f"model.dtype={dtype}"] if dtype else [])
            line = _check_config([*overrides, *extra], fail)
            failures += [line] if line else []
    if failures:
        fail(failures[0])
    return 0


def _check_config(overrides: list[str], fail) -> str | None:
    """The check for one composed config: prints its JSON line, returns the failure's line."""
    import json

    from hydra import compose, initialize_config_dir

    from ...config import validate
    from ...resources import conf_dir
    from ...train.setup import resolve_device
    from ..triton import TritonInPlaceEngine, TritonVirtualEngine

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    try:
        validate(cfg)
        device = resolve_device(cfg.device)
        if device.type != "cuda" and not _interpreted():
            raise ConfigError(f"device={cfg.device}: the check compares the compiled Triton kernels; it needs CUDA")
        params = model_parameters(cfg)
    except ConfigError as err:
        fail(str(err))
    holder = nn.Module()  # the engine's view of the model: only the parameters' shapes matter
    holder.weights = nn.ParameterList([nn.Parameter(p, requires_grad=False) for p in params])
    e = cfg.engine
    engine: TritonVirtualEngine | TritonInPlaceEngine
    if e.mode == "virtual":
        engine = TritonVirtualEngine(holder, paired=bool(e.paired), fused_linear=bool(e.fused_linear))
    else:
        engine = TritonInPlaceEngine()
    cases = cases_for(engine, params)
    distribution = str(cfg.optimizer.get("distribution", "gaussian"))
    report = run_check(cases, device, distribution)
    row = {
        "model": cfg.model.name,
        "dtype": cfg.model.dtype,
        "distribution": distribution,
        "features": sorted({c.feature for c in cases}),
        "shape_classes": len({(c.shape, c.dtype) for c in cases}),
        **report.summary(),
        "engine": label({**describe(engine, None), "device": str(device), "check": report.summary()}),
    }
    print(json.dumps(row), flush=True)
    return None if report.ok else report.mismatches[0].line()


def _interpreted() -> bool:
    from ..triton.primitives import interpreted

    return interpreted()
