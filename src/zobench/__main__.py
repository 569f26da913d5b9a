"""``python -m zobench`` / ``zobench``: the Hydra entry point.

Bad input (an unknown group option or key, a wrong value, a missing data file, an unreadable or
mismatched checkpoint) ends with one line naming the key and what is allowed, exit code 2, and
no traceback unless ``debug=true``. A run stopped by SIGTERM/SIGUSR1/SIGUSR2/SIGINT exits with
128+signal after checkpointing (start it again in the same run dir to resume). Under Slurm
through hydra-submitit-launcher (``hydra/launcher=<profile>``), the signal is then handed to
submitit's handler, which requeues the job: it starts again in the same run dir and resumes.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .errors import ConfigError
from .resources import conf_dir

GROUPS = ("model", "task", "optimizer", "tuning", "engine", "logger", "experiment")
EXIT_BAD_INPUT = 2


def _fail(message: str) -> None:
    print(f"zobench: error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def _precheck(args: list[str]) -> None:
    """Group options and overrides checked before Hydra, whose own errors span many lines."""
    if any(a.startswith("-") for a in args):  # --help, -m, --cfg ...: Hydra's business
        return
    overrides = [a for a in args if "=" in a]
    for arg in overrides:
        key, value = arg.lstrip("+~").split("=", 1)
        if key in GROUPS and value not in ("null", ""):
            allowed = sorted(p.stem for p in (conf_dir() / key).glob("*.yaml"))
            if value not in allowed:
                _fail(f"{key}={value}: no such option; allowed: {', '.join(allowed) or 'none yet'}")
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _fail(f"{first} (overrides: {' '.join(overrides)})")


def _app(cfg: DictConfig) -> None:
    from .run import run

    try:
        summary = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as err:
        if cfg.get("debug", False) is True:
            raise
        _fail(str(err))
    if summary.get("status") == "interrupted":
        signum = int(signal.Signals[summary["signal"]])
        _hand_over(signum)
        sys.exit(128 + signum)


def _hand_over(signum: int) -> None:
    """Give a stop signal to the handler that was installed before the run's own, now that the
    checkpoint is written: under submitit that is its SIGUSR2 handler, which dumps the job
    (hydra-submitit-launcher's ``checkpoint`` resubmits the same job, hence the same run dir),
    calls ``scontrol requeue`` and exits. Without one (SIG_DFL / SIG_IGN) nothing happens here."""
    handler = signal.getsignal(signum)
    if callable(handler) and handler is not signal.default_int_handler:  # not Python's KeyboardInterrupt
        handler(signum, None)


def main() -> None:
    _precheck(sys.argv[1:])
    hydra.main(version_base=None, config_path=str(conf_dir()), config_name="config")(_app)()


if __name__ == "__main__":
    main()
