"""Committed results are what their scripts make of the committed run dirs (no hand edits)."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TABLE_SCRIPTS = sorted(p.parent.name for p in (REPO / "results").glob("*/table.py"))


@pytest.mark.parametrize("name", TABLE_SCRIPTS)
@pytest.mark.slow
def test_results_readme_is_regenerated_from_its_run_dirs(name):
    folder = REPO / "results" / name
    assert f"python results/{name}/table.py" in (folder / "run.sh").read_text()
    made = subprocess.run(
        [sys.executable, f"results/{name}/table.py", f"results/{name}/runs"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert made == (folder / "README.md").read_text()


PLOTTING = [name for name in TABLE_SCRIPTS if "--plot" in (REPO / "results" / name / "table.py").read_text()]


@pytest.mark.parametrize("name", PLOTTING)
@pytest.mark.slow
def test_results_plot_is_drawn_from_its_run_dirs(name, tmp_path):
    image = tmp_path / "curves.png"
    subprocess.run(
        [sys.executable, f"results/{name}/table.py", f"results/{name}/runs", "--plot", str(image)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# runs dirs beside runs/ that hold a chosen part of the plan (run.sh ONLY=..., e.g. cpu_budget400/):
# their README is table.py's --subset --completed-only output, with the command it names
SUBSET_DIRS = sorted(
    str(readme.parent.relative_to(REPO))
    for name in TABLE_SCRIPTS
    if "--completed-only" in (REPO / "results" / name / "table.py").read_text()
    for readme in (REPO / "results" / name).glob("*/README.md")
    if (readme.parent / "plan.txt").is_file() and readme.parent.name != "runs"
)


@pytest.mark.parametrize("folder", SUBSET_DIRS)
@pytest.mark.slow
def test_subset_readme_is_regenerated_from_its_completed_runs(folder):
    readme = (REPO / folder / "README.md").read_text()
    command = re.search(r"Command: `([^`]*)`", readme)
    assert command, f"{folder}/README.md names no command"
    script = f"{Path(folder).parent}/table.py"
    made = subprocess.run(
        [sys.executable, script, folder, "--subset", "--completed-only", "--command", command[1]],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert made == readme


def test_passes_to_reach_and_the_interval_of_an_accuracy():
    table = _load_table_module("methods_smollm2_sst2")
    dev = [(40, 0.60), (80, 0.66), (120, 0.65), (160, 0.70)]
    assert [table.passes_to_reach(dev, t) for t in (0.60, 0.65, 0.70, 0.71)] == [40, 80, 160, None]
    assert table.half_width(0.5, 100) == pytest.approx(0.098)  # 1.96 * 0.5 / 10
    assert table.half_width(1.0, 10) == 0.0


def _load_table_module(name):
    spec = importlib.util.spec_from_file_location(f"table_{name}", REPO / "results" / name / "table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
