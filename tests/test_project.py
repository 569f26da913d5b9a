"""The habits of a maintained project: one version everywhere, docs whose links resolve,
optimizer docstrings with their arguments and in-repo citations, the lint and type checks in CI."""

import inspect
import re
from pathlib import Path

import yaml

import zobench
import zobench.optim

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
#: the packages whose docstrings must cite the repository's docs/, never files outside it
CITING = ("src/zobench",)
#: pages linked before they exist (a guide written on another branch); empty once they are merged
PENDING: set[str] = set()


def _pyproject(pattern: str) -> str:
    """One value of pyproject.toml (no tomllib: Python 3.10 is supported)."""
    match = re.search(pattern, (REPO / "pyproject.toml").read_text(), re.M | re.S)
    assert match, f"pyproject.toml: {pattern} not found"
    return match.group(1)


def test_one_version_in_pyproject_the_package_and_the_changelog():
    version = _pyproject(r'^version = "([^"]+)"$')
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert releases, "CHANGELOG.md has no '## [x.y.z] - YYYY-MM-DD' release heading"
    # summary.json's zobench_version is zobench.__version__: it must name the release
    assert version == zobench.__version__ == releases[0]


def test_relative_links_of_the_docs_resolve():
    for page in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or (page.parent / target).resolve().relative_to(REPO).as_posix() in PENDING:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)}: link to {target} does not resolve"


def test_the_docs_index_links_every_page():
    index = (REPO / "docs" / "README.md").read_text()
    for page in (REPO / "docs").glob("*.md"):
        assert page.name == "README.md" or f"]({page.name})" in index, f"docs/README.md does not link {page.name}"


def test_every_optimizer_class_documents_its_arguments():
    for name in zobench.optim.__all__:
        obj = getattr(zobench.optim, name)
        if inspect.isclass(obj):
            doc = inspect.getdoc(obj) or ""
            assert "\nArgs:\n" in f"\n{doc}", f"zobench.optim.{name}: no Args section in its docstring"
            for argument in inspect.signature(obj.__init__).parameters:
                if argument != "self":
                    assert re.search(rf"\b{argument}\b", doc.split("Args:")[1]), f"{name}: Args lacks {argument}"


def test_docstrings_cite_the_repository_not_files_outside_it():
    # ../shared/data is the data mirror's place in documented commands, not a citation
    stale = re.compile(r"\.\./shared/(?!data\b)|DESIGN\.md|ALGORITHMS\.md|\b[Ii]ssue \d+")
    for package in CITING:
        for path in sorted((REPO / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                assert not stale.search(line), f"{path.relative_to(REPO)}:{number}: {line.strip()}"


def test_ci_lints_and_type_checks_before_the_tests():
    lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if not line.startswith("#")]
    checks = next(i for i, line in enumerate(lines) if "ruff check ." in line)
    assert "ruff format --check ." in lines[checks] and "mypy" in lines[checks]
    tests = next(i for i, line in enumerate(lines) if "python -m pytest" in line)
    install = next(i for i, line in enumerate(lines) if 'pip install -e ".[dev]"' in line)
    assert install < checks < tests == len(lines) - 1


def test_mypy_checks_the_whole_package_and_every_ignore_says_why():
    assert _pyproject(r"^\[tool\.mypy\].*?^files = (\[.*?\])$") == '["src/zobench"]'
    bare = re.compile(r"# type: ignore(\[[a-z, -]+\])?\s*$")  # a reason follows as a comment
    for path in sorted((REPO / "src").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not bare.search(line), f"{path.relative_to(REPO)}:{number}: a type: ignore without its reason"


def test_pre_commit_hooks_are_local_and_run_the_ci_checks():
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    assert [repo["repo"] for repo in config["repos"]] == ["local"]  # nothing to download: works offline
    hooks = {hook["entry"].split(" --force-exclude")[0]: hook for hook in config["repos"][0]["hooks"]}
    assert set(hooks) == {"ruff check", "ruff format --check", "mypy"}
    assert all(hook["language"] == "system" for hook in hooks.values())
    dev = _pyproject(r"^dev = \[(.*?)\]$")
    assert '"ruff==' in dev and '"mypy' in dev  # the versions the hooks and CI run


def test_no_source_file_or_function_outgrows_a_screen_or_two():
    """The shape the codebase keeps: a reader finds each piece on a screen (functions ≤ 60 lines, files
    ≤ 400); a longer one should be cut where its steps are, as train/recipe.py is."""
    import ast

    for path in sorted((REPO / "src" / "zobench").rglob("*.py")):
        text = path.read_text()
        where = path.relative_to(REPO)
        assert len(text.splitlines()) <= 400, f"{where}: {len(text.splitlines())} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{where}:{node.lineno}: {node.name} is {length} lines"


def test_test_modules_share_helpers_through_tests_helpers_only():
    """Shared test code lives in tests/helpers.py (and conftest's fixtures): a test module that
    imports another test module breaks when that one is reorganised."""
    allowed = {"tests.helpers", "tests.tasks", "tests.crash_points"}
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found = re.match(r"\s*from (tests(?:\.\w+)*) import", line)
            assert not found or found.group(1) in allowed, f"{path.relative_to(REPO)}:{number}: {line.strip()}"
