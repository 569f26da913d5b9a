"""The README's "Using zobench's methods from your own training code" examples are the files
under examples/, verbatim, and each runs as written (in this interpreter, from a fresh working
directory: runpy, as `python examples/<file>` would, without a torch start-up each)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Using zobench's methods from your own training code"
EXAMPLES = ["plain_loop.py", "hf_trainer.py", "trl_sft.py", "lightning_module.py"]
NEEDS = {"trl_sft.py": "trl", "lightning_module.py": "pytorch_lightning"}


def readme_examples() -> dict[str, str]:
    """file name -> the ```python block that follows its `<!-- examples/<file> -->` marker."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"<!-- examples/(\S+) -->\n```python\n(.*?)```", section, flags=re.S)
    return dict(found)


def test_the_readme_shows_every_example_verbatim():
    shown = readme_examples()
    assert sorted(shown) == sorted(EXAMPLES)
    for name, block in shown.items():
        assert block == (REPO / "examples" / name).read_text(), f"README's examples/{name} differs from the file"


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_runs_as_written(name, tmp_path, monkeypatch, capsys):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(REPO / "examples" / name), run_name="__main__")
    out = capsys.readouterr().out
    assert "forward" in out and "passes" in out, out[-2000:]
