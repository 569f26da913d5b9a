"""Executable documentation: every `python -m zobench ...` line of the README's Usage section and
every `#   python -m zobench ...` line of a conf/experiment/*.yaml header runs as written, from a
fresh working directory, and its runs land where the README says.

Each command keeps its own words; only cost overrides are appended: a tiny model of the same
family, few steps and examples, `logger=none` (W&B's start-up is seconds per run), and, for a
paper table's sweep, each key of its grid narrowed to its first value (`task=rte` after the grid's
`task: rte,wic,...`: Hydra lets the command line override a sweeper param) so a table's grid runs
one point. Lines that need Slurm (`hydra/launcher=...`) are composed with their launcher, not run:
tests/test_slurm.py runs the launcher. The report lines of the headers then run on the sweep dirs
the commands made (those whose sweeps all ran here).

The README's lines run as real processes; the experiment headers' sweeps run through the same
entry point (``zobench.__main__.main``, Hydra's multirun included) in this interpreter, which
spares each a torch + transformers start-up.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.helpers import zobench, zobench_in_process
from zobench.resources import conf_dir

REPO = Path(__file__).resolve().parents[1]
TINY = {"causal": "tiny-llama", "masked": "tiny-roberta"}
# key -> largest value a documented command runs with here (smaller ones are kept)
LIMITS = {
    "train.steps": 2,
    "train.eval_every": 1,
    "train.forward_budget": 6,
    "train.eval_every_passes": 3,
    "train.batch_size": 4,
    "train.eval_batch_size": 8,
    "data.num_train": 8,
    "data.num_dev": 8,
    "data.num_eval": 8,
    "data.k": 4,
    "icl.demos": 2,
}


def readme_usage_commands() -> list[str]:
    """`python -m zobench` lines of the ```bash blocks of the README's `## Usage` section."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Usage\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if re.match(r"(\w+=\S+ )*python -m zobench\b(?!\.)", line.strip())
    ]


def experiment_header_lines() -> list[tuple[str, str]]:
    """(experiment, line) for every `#   ... python -m zobench[.report] ...` line of a header."""
    found = []
    for path in sorted((conf_dir() / "experiment").glob("*.yaml")):
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            command = re.search(r"((\w+=\S+ )*python -m zobench(\.report)? .*)", line)
            if command:
                found.append((path.stem, command.group(1).strip()))
    return found


def split(command: str) -> tuple[dict, list[str]]:
    """``A=1 python -m zobench x=1  # note`` -> ({"A": "1"}, ["x=1"]) (the comment dropped)."""
    words = shlex.split(command, comments=True)
    env = {}
    while "=" in words[0]:
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[:3] in (["python", "-m", "zobench"], ["python", "-m", "zobench.report"]), command
    return env, words[3:]


def _first(value: str) -> str:
    return value.split(",")[0]


def size_overrides(args: list[str]) -> list[str]:
    """What is appended to a documented command: the grid narrowed to its first point, a tiny model
    of the run's family, and every LIMITS key the composed config exceeds set to its limit."""
    multirun = "-m" in args or "--multirun" in args
    overrides = [a for a in args if "=" in a and not a.startswith("-") and not a.startswith("hydra")]
    point = [f"{k}={_first(v)}" for k, v in (a.split("=", 1) for a in overrides)] if multirun else overrides
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="config", overrides=point, return_hydra_config=multirun)
    narrowed = []
    if multirun:
        params = OmegaConf.to_container(cfg.hydra.sweeper.params) if cfg.hydra.sweeper.params else {}
        narrowed = [f"{k}={_first(str(v))}" for k, v in params.items()]
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = compose(config_name="config", overrides=[*point, *narrowed])
    appended = [f"model={TINY[cfg.model.family]}", "logger=none"]
    for key, limit in LIMITS.items():
        value = OmegaConf.select(cfg, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            appended.append(f"{key}={limit}")
    return narrowed + appended


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data_dir) -> Path:
    """A fresh working directory with the data mirror at ../shared/data, as the README assumes."""
    root = tmp_path_factory.mktemp("docs")
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(data_dir)
    (root / "work").mkdir()
    return root / "work"


def _run(command: str, workdir: Path, data_dir: Path, extra: list[str], monkeypatch=None):
    """The command in a fresh interpreter, or, given ``monkeypatch``, through the same entry point
    in this one (an experiment's sweep: the seconds of a torch + transformers start-up each)."""
    env_vars, args = split(command)
    module = "zobench.report" if command.split("python -m ", 1)[1].startswith("zobench.report") else "zobench"
    env = {"ZOBENCH_DATA_DIR": str(data_dir), **env_vars}
    if monkeypatch is not None and module == "zobench":
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return zobench_in_process(*args, *extra, monkeypatch=monkeypatch, cwd=workdir)
    return zobench(*args, *extra, cwd=workdir, env=env, timeout=600, module=module)


RUNS = [("README", c) for c in readme_usage_commands()] + [
    (e, c) for e, c in experiment_header_lines() if "zobench.report" not in c
]
REPORTS = [(e, c) for e, c in experiment_header_lines() if "zobench.report" in c]


def test_the_documented_commands_are_found():
    assert len(readme_usage_commands()) >= 6 and any(c.startswith("python -m zobench -m ") for _, c in RUNS)
    assert {p.stem for p in (conf_dir() / "experiment").glob("*.yaml")} <= {e for e, _ in RUNS}  # each has one
    assert REPORTS


@pytest.mark.slow
@pytest.mark.parametrize("where, command", RUNS, ids=[f"{w}: {c}" for w, c in RUNS])
def test_documented_command_runs_as_written(where, command, workdir, data_dir, monkeypatch):
    _, args = split(command)
    if any(a.startswith("hydra/launcher=") for a in args):  # Slurm: compose only (Hydra has no --cfg with -m)
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = compose(
                config_name="config", overrides=[a for a in args if not a.startswith("-")], return_hydra_config=True
            )
        assert "submitit" in cfg.hydra.launcher._target_ and cfg.hydra.sweeper.params
        return
    before = set(workdir.rglob("summary.json"))
    in_process = monkeypatch if where != "README" else None  # the README's own lines: real processes
    result = _run(command, workdir, data_dir, [] if "--help" in args else size_overrides(args), in_process)
    assert result.returncode == 0, result.stderr[-3000:]
    made = sorted(set(workdir.rglob("summary.json")) - before)
    if "--help" in args:
        assert result.stdout.startswith("== zobench ==") and not made
        return
    assert made, "no run dir was written"
    closing = [line for line in result.stdout.splitlines() if line.startswith("zobench: ") and ": completed; " in line]
    assert len(closing) == len(made), result.stdout[-3000:]
    multirun = "-m" in args
    experiment = next((a.split("=", 1)[1] for a in args if a.startswith("experiment=")), None)
    for summary in made:
        rel = summary.parent.relative_to(workdir).parts
        if not multirun:  # the README: outputs/<task>/<model>/<optimizer>/<time>/
            assert rel[0] == "outputs" and len(rel) == 5, rel
        else:  # multirun/<experiment or time>/<key=value,...>/
            assert rel[0] == "multirun" and len(rel) == 3 and "=" in rel[2], rel
            assert experiment is None or rel[1] == experiment, rel
            if experiment is None:
                assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", rel[1]), rel
    if multirun:
        assert "tables: python -m zobench.report" in result.stdout, result.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("where, command", REPORTS, ids=[f"{w}: {c}" for w, c in REPORTS])
def test_documented_report_runs_on_the_sweeps_it_names(where, command, workdir, data_dir):
    _, args = split(command)
    dirs = [a for a in args if a.startswith("multirun/")]
    if not all((workdir / d).is_dir() for d in dirs):
        pytest.skip(f"{', '.join(d for d in dirs if not (workdir / d).is_dir())}: made on Slurm only")
    result = _run(command, workdir, data_dir, [])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("|") or "|" in result.stdout, result.stdout[-2000:]
