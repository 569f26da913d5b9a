"""The memory bound, enforced: an offloaded model 3× larger than an RLIMIT_AS budget trains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("memory_child.py")


@pytest.mark.slow
def test_offloaded_model_larger_than_the_limit_trains_under_it(tmp_path):
    # glibc: a fixed mmap threshold returns freed blocks to the OS at once (the dynamic one keeps
    # them in the heap, which RLIMIT_AS counts), two arenas (one per thread would reserve 64 MiB)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(CHILD), str(tmp_path / "store"), "64"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[0] == "ok"
    assert float(result.stdout.split()[1]) >= 3 * 64  # MiB of weights on disk
