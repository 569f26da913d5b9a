"""``python -m zobench`` / ``zobench``: the Hydra entry point (nothing else lives here)."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .resources import conf_dir


def _app(cfg: DictConfig) -> None:
    from .run import run

    run(cfg, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    hydra.main(version_base=None, config_path=str(conf_dir()), config_name="config")(_app)()


if __name__ == "__main__":
    main()
