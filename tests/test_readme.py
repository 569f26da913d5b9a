"""The README's fresh-machine commands and .ci/run must not drift apart."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("```bash")
    block = lines[start + 1 : lines.index("```", start)]
    return [line for line in block if line and not line.startswith("#")]


def test_readme_opens_with_the_two_fresh_machine_commands():
    run_default, run_tests = _readme_commands()
    assert run_default.endswith("python -m zobench")
    assert run_tests.endswith("python -m pytest -q")
    assert run_default.rsplit("&&", 1)[0] == run_tests.rsplit("&&", 1)[0]  # the same setup


def test_ci_runs_the_readme_test_command_verbatim():
    _, run_tests = _readme_commands()
    assert run_tests in (REPO / ".ci" / "run").read_text().splitlines()
