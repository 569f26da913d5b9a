"""Credentials never reach a file: the run's config.yaml, Hydra's ``.hydra/*.yaml``, a sweep's
``multirun.yaml``, Slurm job pickles, W&B, the terminal.

A credential is recognised by its key's whole name (``api_key``, ``logger.api_key``,
``hf_token``, ``password``, ``client_secret``; not ``tokenizer_from``, ``max_new_tokens`` or a
tokenizer's ``eos_token``), by its shape (``hf_…`` Hugging Face tokens, 40-hex W&B keys, ``sk-…``)
or because it is the value of a credential variable of this process's environment
(``WANDB_API_KEY``, ``HF_TOKEN``, ...). Its value is replaced by ``<redacted>``.

A credential given on the command line (``+logger.api_key=...``) never enters Hydra's config:
:func:`hide_secret_overrides` moves its value to a ``ZOBENCH_SECRET_<KEY>`` variable of this
process's environment (inherited by sweep jobs, torchrun ranks and Slurm jobs) before Hydra
parses the command line, and the override becomes ``+logger.api_key=${oc.env:ZOBENCH_SECRET_...}``,
so every file Hydra writes (also before the run's first line of code, also when killed then)
and every line it prints holds the variable's name, never the value; the run resolves it.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from .checkpoint import write_text_atomic

# credential key names, matched against a whole key name (``api_key``, ``hf_token``, ``password``),
# never inside another word: ``tokenizer_from`` and ``max_new_tokens`` are not credentials
_SECRET = re.compile(
    r"(?:^|.*[_\-.])(?:api[_\-]?key|apikey|token|secret|password|passwd|credentials?|"
    r"access[_\-]?key)$",
    re.IGNORECASE,
)
# values that are credentials whatever their key: Hugging Face tokens, W&B / OpenAI style keys
_SECRET_VALUE = re.compile(
    r"^(?:hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_\-]{20,}|local-[0-9a-f]{40,}|[0-9a-f]{40}|"
    r"wandb_v\d+_[A-Za-z0-9_]{20,})$"
)
_SPECIAL_TOKEN = re.compile(r"(?:^|.*[_\-.])(?:bos|eos|pad|unk|mask|sep|cls)_token$", re.IGNORECASE)  # a tokenizer's
REDACTED = "<redacted>"


def _secret_key(key) -> bool:
    return bool(_SECRET.match(str(key))) and not _SPECIAL_TOKEN.match(str(key))


SECRET_ENV_PREFIX = "ZOBENCH_SECRET_"


def _known_secrets() -> set[str]:
    """Credentials this process holds in its environment (never to be written anywhere)."""
    names = ["WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY"]
    names += [n for n in os.environ if n.startswith(SECRET_ENV_PREFIX)]  # moved here from the command line
    return {os.environ[n] for n in names if len(os.environ.get(n, "")) >= 8}


def _secret_value(value) -> bool:
    return isinstance(value, str) and (bool(_SECRET_VALUE.match(value)) or value in _known_secrets())


def redact(value):
    """The config with every credential replaced by ``<redacted>``: values under a key named like
    one (whole name: ``api_key``, ``logger.api_key``, ``hf_token``; not ``tokenizer_from``), values
    shaped like one (``hf_…`` tokens, 40-hex W&B keys) and the process's own credentials."""
    if isinstance(value, dict):
        return {k: (REDACTED if _secret_key(k) and value[k] is not None else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return REDACTED if _secret_value(value) else value


def redact_override(text: str) -> str:
    """``+logger.api_key=abc`` -> ``+logger.api_key=<redacted>`` (an override or argv item)."""
    key, sep, value = text.partition("=")
    if sep and (_secret_key(key.lstrip("+~")) or _secret_value(value)):
        return f"{key}={REDACTED}"
    return REDACTED if _secret_value(text) else text


def secret_override(text: str) -> bool:
    """A ``key=value`` command-line item whose value is a credential (by its key's name or by its
    shape); an interpolation (``${oc.env:MY_KEY}``) is a reference, not a credential."""
    key, sep, value = text.partition("=")
    if not sep or text.startswith("-") or not value or "${" in value:
        return False
    return _secret_key(key.lstrip("+~")) or _secret_value(value)


def hide_secret_overrides(args: list[str]) -> list[str]:
    """``+logger.api_key=abc`` -> ``+logger.api_key=${oc.env:ZOBENCH_SECRET_LOGGER_API_KEY}``, with
    ``abc`` put in that variable of this process's environment: what Hydra then writes
    (``.hydra/*.yaml``, ``multirun.yaml``, a Slurm job's pickle) and prints (a sweep's job list)
    holds no credential, while the composed config resolves to it in this process and in every
    process it starts (sweep jobs, Slurm jobs started by ``sbatch``, which exports the environment)."""
    out = []
    for arg in args:
        if secret_override(arg):
            key, _, value = arg.partition("=")
            name = SECRET_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", key.lstrip("+~")).upper()
            os.environ[name] = value
            arg = f"{key}=${{oc.env:{name}}}"
        out.append(arg)
    return out


def redact_hydra_files(run_dir: Path) -> None:
    """Hydra writes ``.hydra/{config,hydra,overrides}.yaml`` (config and command line, credentials
    included) before the run starts; rewrite them redacted, atomically, the first thing a run does."""
    folder = run_dir / ".hydra"
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        except Exception:  # noqa: BLE001 - not ours to judge: leave a file we cannot parse as it is
            continue
        clean = _redact_hydra(data)
        if clean != data:
            write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(clean)))


def _redact_hydra(data):
    """``redact`` plus the override strings Hydra keeps (``overrides.yaml``, ``hydra.overrides``,
    ``hydra.job.override_dirname``)."""
    if isinstance(data, list):
        return [redact_override(v) if isinstance(v, str) else _redact_hydra(v) for v in data]
    if isinstance(data, dict):
        return {
            k: (
                REDACTED
                if _secret_key(k) and v is not None
                else ",".join(redact_override(p) for p in v.split(","))
                if k == "override_dirname" and isinstance(v, str)
                else _redact_hydra(v)
            )
            for k, v in data.items()
        }
    return redact(data)


def redact_argv() -> None:
    """This process's ``sys.argv`` with credentials redacted, in place: W&B records the command
    line of the run (its metadata), and Hydra has parsed it already."""
    sys.argv[:] = [redact_override(a) for a in sys.argv]
