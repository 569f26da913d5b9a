"""launch/submit.sh: pinned code (a clean worktree at one commit), refusal of a dirty checkout."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def clone(tmp_path) -> Path:
    """A throwaway clone of this repository (its committed launch/ script), with one extra commit."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(repo)], check=True)
    # the script under test is the working copy's, committed in the clone
    (repo / "launch").mkdir(exist_ok=True)
    (repo / "launch" / "submit.sh").write_bytes((REPO / "launch" / "submit.sh").read_bytes())
    os.chmod(repo / "launch" / "submit.sh", 0o755)
    git(repo, "add", "launch/submit.sh")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "--allow-empty", "-m", "launch")
    return repo


def launch(repo: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the script with a stand-in python that prints its PYTHONPATH and arguments."""
    fake = repo.parent / "fake-python"
    fake.write_text('#!/bin/sh\necho "$PYTHONPATH"\necho "$@"\n')
    os.chmod(fake, 0o755)
    env = {**os.environ, "ZOBENCH_WORKTREES": str(repo.parent / "worktrees"), "PYTHON": str(fake)}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(repo / "launch" / "submit.sh"), *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_launch_runs_zobench_from_a_clean_worktree_at_the_commit(clone, tmp_path):
    head = git(clone, "rev-parse", "HEAD")
    first = git(clone, "rev-parse", "HEAD~1")
    done = launch(clone, "--commit", first, "--", "-m", "seed=0,1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    tree = tmp_path / "worktrees" / first[:12]
    assert git(tree, "rev-parse", "HEAD") == first != head
    assert done.stdout.splitlines() == [str(tree / "src"), "-m zobench -m seed=0,1"]  # the pinned code runs
    assert f"zobench at {first}" in done.stderr
    logged = (tree / "launches.log").read_text().split("\t")
    assert logged[1:] == [first, str(tmp_path), f"{tmp_path / 'fake-python'} -m zobench -m seed=0,1\n"]
    again = launch(clone, "--commit", first, "--dry-run", "--", "seed=2", cwd=tmp_path)  # the worktree is reused
    assert again.returncode == 0, again.stderr


def test_launch_refuses_a_dirty_checkout_unless_forced(clone, tmp_path):
    marker = "an uncommitted line 7f3a9c"
    (clone / "README.md").write_text(marker + "\n")
    refused = launch(clone, "--", "seed=0", cwd=tmp_path)
    assert refused.returncode == 2
    assert "has uncommitted changes" in refused.stderr and "--force" in refused.stderr
    forced = launch(clone, "--force", "--", "seed=0", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    tree = tmp_path / "worktrees" / git(clone, "rev-parse", "HEAD")[:12]
    assert marker not in (tree / "README.md").read_text()  # the uncommitted change is not launched


def test_launch_rejects_an_unknown_commit(clone, tmp_path):
    done = launch(clone, "--commit", "no-such-rev", "--", "seed=0", cwd=tmp_path)
    assert done.returncode == 2 and "--commit no-such-rev: no such commit" in done.stderr
