"""Fixtures of the config tests: the shipped run config composed once, and one override set on it."""

import pytest
from omegaconf import OmegaConf

from tests.helpers import compose_run


@pytest.fixture(scope="module")
def run_config():
    """The shipped run config, composed once per module (a composition costs a few hundred ms)."""
    return compose_run("data.dir=/m")


def _with_override(cfg, *overrides: str):
    """A copy of ``cfg`` with ``key=value`` (or ``+key=value``) overrides set, each value parsed as
    YAML as Hydra does."""
    cfg = cfg.copy()
    for override in overrides:
        key, value = override.lstrip("+").split("=", 1)
        OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"v={value}"]).v, force_add=True)
    return cfg


@pytest.fixture
def with_override():
    return _with_override
