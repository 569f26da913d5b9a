"""``python -m zobench`` / ``zobench``: the Hydra entry point.

Bad input (an unknown group option or key, a wrong value, a missing data file, an unreadable or
mismatched checkpoint) ends with one line naming the key and what is allowed, exit code 2, and
no traceback unless ``debug=true``. A run stopped by SIGTERM/SIGUSR1/SIGUSR2/SIGINT exits with
128+signal after checkpointing (start it again in the same run dir to resume). Under Slurm
through hydra-submitit-launcher (``hydra/launcher=<profile>``), the signal is then handed to
submitit's handler, which requeues the job: it starts again in the same run dir and resumes.

Unknown keys, also added with ``+``, are refused with the closest valid ones (difflib) before
Hydra starts; a hub model or dataset that cannot be fetched is refused before the run writes
anything (``models.loading.check_sources``). Every run ends with one closing line (run dir,
status, best dev and test metric, forward passes, peak memory, wall time); sweep layout and the
end-of-sweep table: ``zobench.sweeps``.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import cast

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .errors import ConfigError
from .redaction import hide_secret_overrides
from .resources import conf_dir
from .sweeps import register_resolvers

GROUPS = ("model", "task", "optimizer", "tuning", "engine", "logger", "experiment")
EXIT_BAD_INPUT = 2
_HYDRA_FLAGS = (
    "-h",
    "--help",
    "--hydra-help",
    "--info",
    "-i",
    "--cfg",
    "-c",
    "--resolve",
    "--shell-completion",
    "-sc",
    "--version",
)
# Hydra's options that take the next argument as their value (``-cn bench``, ``--config-dir d``)
_HYDRA_VALUED = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun")


def fail(message: str) -> None:
    """Exit 2 with one ``zobench: error:`` line per problem (``ConfigErrors``: one per bad key)."""
    for line in str(message).splitlines() or [""]:
        print(f"zobench: error: {line}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def _split_override(arg: str) -> tuple[str, str, str]:
    """``+train.x=1`` -> ``("+", "train.x", "1")``."""
    key, value = arg.split("=", 1)
    prefix = key[: len(key) - len(key.lstrip("+~"))]
    return prefix, key[len(prefix) :], value


def _keys(tree, prefix: str = "", leaves: bool = False) -> list[str]:
    """Every dotted key of a (plain) config tree, inner nodes included unless ``leaves``."""
    out = []
    for key, value in tree.items():
        if not (leaves and isinstance(value, dict)):
            out.append(f"{prefix}{key}")
        if isinstance(value, dict):
            out.extend(_keys(value, f"{prefix}{key}.", leaves))
    return out


def _addable(key: str, tree: dict) -> bool:
    """A key that may be added with ``+``: an optional field of the config schema
    (``zobench.config.addable_keys``), or a keyword argument the chosen optimizer's constructor
    takes (``+optimizer.num_directions=4`` where the yaml omits it: the optimizer group is open)."""
    from .config import addable_keys

    if key in addable_keys():
        return True
    if key.startswith("optimizer.") and key.count(".") == 1:
        import inspect

        from .build import resolve_target
        from .errors import ConfigError

        target = str(tree.get("optimizer", {}).get("_target_", ""))
        try:  # a class (a method) or a function (the linear probe's fit): any callable
            params = inspect.signature(resolve_target(target, "optimizer._target_", kind="method")).parameters
        except (ConfigError, ValueError):  # a target that does not import is reported when the run builds it
            return False
        return key.split(".", 1)[1] in params
    return False


def _check_keys(overrides: list[str], multirun: bool, config_name: str = "config") -> None:
    """Every overridden key must exist in the config the group choices alone compose to (or be
    addable with ``+``): a typo gets the closest valid keys (difflib), not Hydra's multi-line error
    or, with ``+``, silence. For sweeps, and when ``_compose_once`` found something wrong."""
    import difflib

    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    groups = []  # the group choices (the first value of a swept one) decide which keys exist
    for arg in overrides:
        prefix, key, value = _split_override(arg)
        if (key in GROUPS or "/" in key) and "~" not in prefix:
            groups.append(f"{prefix}{key}={value.split(',')[0] if multirun else value}")
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            tree = OmegaConf.to_container(compose(config_name=config_name, overrides=groups), resolve=False)
    except (HydraException, OmegaConfBaseException):
        return  # a bad group choice is reported by the caller, in Hydra's words
    valid = _keys(tree)
    for arg in overrides:
        prefix, key, value = _split_override(arg)
        if _skipped(key, prefix) or key in valid:
            continue
        if prefix.startswith("+") and isinstance(tree, dict) and _addable(key, tree):
            continue
        close = difflib.get_close_matches(key, _keys(tree, leaves=True), n=3, cutoff=0.6)
        entry = "zobench" if config_name == "config" else f"zobench.{config_name}"
        hint = f"did you mean {', '.join(close)}?" if close else f"see `python -m {entry} --cfg job` for the keys"
        added = " (a key added with + would be ignored)" if prefix.startswith("+") else ""
        fail(f"{arg}: {key} is not a zobench config key{added}; {hint}")


def group_options(group: str) -> list[str]:
    """A config group's options: its ``conf/<group>/*.yaml`` files and its ConfigStore entries
    (the ``task`` group has only those, generated from ``tasks/``: ``zobench.tasks.configs``)."""
    from hydra.core.config_store import ConfigStore

    files = {p.stem for p in (conf_dir() / group).glob("*.yaml")}
    try:
        stored = {name.removesuffix(".yaml") for name in ConfigStore.instance().list(group)}
    except OSError:  # ConfigStore has no such group
        stored = set()
    return sorted(files | stored)


def _check_syntax(args: list[str]) -> None:
    """Every argument that is not one of Hydra's options is an override: ``key=value``,
    ``+key=value``, ``~key`` or ``~key=value`` (Hydra's own error for ``train.steps`` alone is four
    lines of grammar, exit 1)."""
    after_option = False
    for arg in args:
        if after_option:
            after_option = False
            continue
        if arg.startswith("-"):
            after_option = arg in _HYDRA_VALUED
            continue
        if "=" not in arg and not arg.startswith("~"):
            fail(
                f"{arg!r}: expected an override key=value (e.g. {_example(arg)}), "
                "+key=value to add a key or ~key to remove one"
            )


def _example(arg: str) -> str:
    """The override ``arg`` (given without a value) probably meant: ``optimizer=mezo`` for a group
    option, else ``<arg>=<value>``."""
    groups = [g for g in GROUPS if arg in group_options(g)]
    if groups:
        return f"{groups[0]}={arg}"
    return f"{arg}=<value>" if arg.lstrip("+") else "train.steps=200"


def precheck(args: list[str], config_name: str = "config") -> None:
    """Group options and overrides of ``conf/<config_name>.yaml`` checked before Hydra, whose own
    errors span many lines (also the entry of ``python -m zobench.bench``: ``bench.yaml``)."""
    if any(a.split("=", 1)[0] in _HYDRA_FLAGS for a in args if a.startswith("-")):
        return  # --help, --cfg ...: Hydra's business
    _check_syntax(args)
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    for arg in overrides:
        _, key, value = _split_override(arg)
        if key in GROUPS and "(" not in value:  # choice(...)/glob(...) sweeps: Hydra's syntax
            allowed = group_options(key)
            for option in value.split(",") if multirun else [value]:
                if option not in ("null", "") and option not in allowed:
                    fail(f"{key}={option}: no such option; allowed: {', '.join(allowed) or 'none yet'}")
    if multirun:  # sweep syntax (a=1,2) does not compose as one config; each job is checked by run()
        _check_keys(overrides, multirun, config_name)
        return
    _compose_once(overrides, config_name)


def _compose_once(overrides: list[str], config_name: str) -> None:
    """The one composition before Hydra's own: a config that composes and adds only addable keys
    passes; otherwise ``_check_keys`` (which composes the group choices alone) names an unknown
    key with the closest valid ones, and any other failure is Hydra's first line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            tree = OmegaConf.to_container(compose(config_name=config_name, overrides=overrides), resolve=False)
    except (HydraException, OmegaConfBaseException) as err:
        _check_keys(overrides, False, config_name)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        fail(f"{first} (overrides: {' '.join(overrides)})")
        return
    added = [_split_override(arg) for arg in overrides if arg.startswith("+")]
    # an added key that is no key of the schema's: named with the keys the groups alone have
    if any(not _skipped(key, prefix) and not _addable(key, cast(dict, tree)) for prefix, key, _ in added):
        _check_keys(overrides, False, config_name)


def _skipped(key: str, prefix: str) -> bool:
    """Overrides the key check leaves to Hydra: group choices, ``hydra.*``, removals."""
    return key in GROUPS or "/" in key or key.startswith("hydra.") or "~" in prefix


def _size(num_bytes) -> str:
    if not isinstance(num_bytes, (int, float)):
        return "?"
    return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.0f} MiB"


def closing_line(summary: dict, run_dir: Path) -> str:
    """The one line a run ends with: where it is, how it ended, what it scored and cost, and the
    engine that ran (``engine.selfcheck.label``: backend/mode, paired, fused, Triton, device)."""
    from .engine.selfcheck import label as engine_label

    metric = summary.get("metric")
    scores = []
    for split, label in (("dev", "best dev"), ("test", "test")):
        value = summary.get(f"{split}_{metric}") if metric else None
        if isinstance(value, (int, float)):
            step = f" (step {summary['best_step']})" if split == "dev" and "best_step" in summary else ""
            scores.append(f"{label} {metric} {value:.4f}{step}")
    wall = summary.get("wall_s")
    clock = f"{int(wall // 60)}m{wall % 60:04.1f}s" if isinstance(wall, (int, float)) else "?"
    status = summary.get("status", "?") + (f" ({summary['signal']})" if summary.get("signal") else "")
    engine = summary.get("engine_used")
    return (
        f"zobench: {run_dir}: {status}; {', '.join(scores) or 'no dev/test metric'}; "
        f"{summary.get('forward_passes', '?')} forward passes; "
        f"peak memory {_size(summary.get('peak_memory_bytes'))}; "
        f"wall {clock}" + (f"; engine {engine_label(engine)}" if isinstance(engine, dict) else "")
    )


def _app(cfg: DictConfig) -> None:
    from .checkpoint import write_error_line
    from .run import run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run(cfg, run_dir)  # validates the config, then checks its sources, then runs
    except ConfigError as err:
        if cfg.get("debug", False) is True:
            raise
        fail(str(err))
    except OSError as err:  # a full disk, a folder turned read-only: one line, and how to resume
        line = write_error_line(err, run_dir)
        if line is None or cfg.get("debug", False) is True:
            _print_closing_from_disk(run_dir)
            raise
        fail(line)
    except BaseException:
        _print_closing_from_disk(run_dir)
        raise
    from .dist import current

    if summary.get("signal") == "SIGINT":  # stopped by Ctrl-C and exiting: another is not a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if current().leader:  # one closing line per run, not one per rank
        print(closing_line(summary, run_dir), flush=True)
    if summary.get("status") == "interrupted":
        signum = int(signal.Signals[summary["signal"]])
        _hand_over(signum)
        sys.exit(128 + signum)


def _print_closing_from_disk(run_dir: Path) -> None:
    """A run that raised still wrote summary.json (status failed, with the error): say so."""
    import json

    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return
    if isinstance(summary, dict):
        print(closing_line(summary, run_dir), flush=True)


def _hand_over(signum: int) -> None:
    """Give a stop signal to the handler that was installed before the run's own, now that the
    checkpoint is written: under submitit that is its SIGUSR2 handler, which dumps the job
    (hydra-submitit-launcher's ``checkpoint`` resubmits the same job, hence the same run dir),
    calls ``scontrol requeue`` and exits. Without one (SIG_DFL / SIG_IGN) nothing happens here.

    ``scontrol requeue`` runs inside the job, and Slurm ends a requeued job by signalling every
    process of its step, that ``scontrol`` too when it has not exited yet (seen on 2 loaded cores,
    tests/test_slurm.py): submitit's ``check_call`` then raises, the job would write an error
    result and the sweep would report the run failed while Slurm starts it again. Killed by
    SIGTERM, the requeue went through: the job exits without a result, as submitit's does."""
    import subprocess

    handler = signal.getsignal(signum)
    if not callable(handler) or handler is signal.default_int_handler:  # not Python's KeyboardInterrupt
        return
    try:
        handler(signum, None)
    except subprocess.CalledProcessError as err:
        if not (_is_requeue(err.cmd) and err.returncode == -signal.SIGTERM):
            raise
        logging.getLogger(__name__).warning(
            "scontrol requeue was ended by the requeue's own SIGTERM: the job is requeued and resumes"
        )


def _is_requeue(cmd) -> bool:
    """``scontrol requeue <job>``, as submitit's Slurm environment runs it."""
    return isinstance(cmd, (list, tuple)) and list(cmd[:2]) == ["scontrol", "requeue"]


def main() -> None:
    register_resolvers()  # hydra.sweep.dir/subdir use them (imported above; idempotent)
    try:
        conf_dir()  # registers the task group generated from tasks/*.yaml; a bad spec is one line
    except ConfigError as err:
        fail(str(err))
    sys.argv[1:] = hide_secret_overrides(sys.argv[1:])  # before Hydra writes or prints any of it
    precheck(sys.argv[1:])
    app = hydra.main(version_base=None, config_path=str(conf_dir()), config_name="config")(_app)
    try:
        app()
    except SystemExit as stop:  # bad input (2), a stop signal (128 + signal), Hydra's own exit
        end_rank(stop.code, finished=False)
        raise
    end_rank(0, finished=True)


def end_rank(code: int | str | None, finished: bool) -> None:
    """A rank of a multi-rank launch (torchrun, srun) ends here: it leaves the process group (after
    a barrier when every rank ``finished`` its runs), flushes its logs and exits with ``code`` at
    once (``os._exit``), past the interpreter's teardown, where Gloo's threads, destroyed with the
    last references to the group, aborted a rank now and then after a completed run ("terminate
    called without an active exception": SIGABRT, and torchrun reported the job failed; seen on 2
    cores under load, tests/dist/test_dist.py). One process (no group) returns: Python exits as
    usual. A sweep's Slurm job never comes here (submitit's process calls the app)."""
    if "torch.distributed" not in sys.modules:  # --help, --cfg, an error before any run
        return
    import os

    from .dist.context import leave

    if not leave(barrier=finished):
        return
    if isinstance(code, str):  # sys.exit("message"): Python prints it and exits 1
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()  # Hydra's log file (what atexit would have flushed)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
