"""``python -m zobench.bench [overrides]``: writes <bench.out>/<name>.json and .md (see conf/bench.yaml)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ..__main__ import fail, precheck
from ..errors import ConfigError
from ..redaction import hide_secret_overrides
from ..resources import conf_dir


def _app(cfg: DictConfig) -> None:
    from . import markdown, run_benchmark

    try:
        result = run_benchmark(cfg)
    except ConfigError as err:  # bad input: one line, exit 2, nothing written (as `python -m zobench`)
        fail(str(err))
    command = "python -m zobench.bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result["command"] = command
    name = cfg.bench.name or (
        f"{result['model']}_{result['task']}_bs{result['batch_size']}_{result['dtype']}_{result['device_type']}"
    )
    out = Path(cfg.bench.out)  # checked before the benchmark (validate_bench); a full disk now: one line
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / f"{name}.md").write_text(markdown(result, command))
    except OSError as err:
        from ..config import output_error

        fail(output_error("bench.out", err))
    print(markdown(result, command))


def main() -> None:
    try:
        conf_dir()  # registers the task group generated from tasks/*.yaml; a bad spec is one line
    except ConfigError as err:
        fail(str(err))
    sys.argv[1:] = hide_secret_overrides(sys.argv[1:])  # before Hydra writes or prints any of it
    precheck(sys.argv[1:], config_name="bench")
    hydra.main(version_base=None, config_path=str(conf_dir()), config_name="bench")(_app)()


if __name__ == "__main__":
    main()
