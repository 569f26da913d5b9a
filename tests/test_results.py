"""Committed results are what their scripts make of the committed run dirs (no hand edits)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TABLE_SCRIPTS = sorted(p.parent.name for p in (REPO / "results").glob("*/table.py"))


@pytest.mark.parametrize("name", TABLE_SCRIPTS)
def test_results_readme_is_regenerated_from_its_run_dirs(name):
    folder = REPO / "results" / name
    assert f"python results/{name}/table.py" in (folder / "run.sh").read_text()
    made = subprocess.run([sys.executable, f"results/{name}/table.py", f"results/{name}/runs"], cwd=REPO,
                          capture_output=True, text=True, check=True, timeout=120).stdout
    assert made == (folder / "README.md").read_text()


PLOTTING = [name for name in TABLE_SCRIPTS if "--plot" in (REPO / "results" / name / "table.py").read_text()]


@pytest.mark.parametrize("name", PLOTTING)
def test_results_plot_is_drawn_from_its_run_dirs(name, tmp_path):
    image = tmp_path / "curves.png"
    subprocess.run([sys.executable, f"results/{name}/table.py", f"results/{name}/runs", "--plot", str(image)],
                   cwd=REPO, capture_output=True, text=True, check=True, timeout=120)
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
