"""``python -m zobench.bench``: time and memory of a MeZO step, zobench vs the authors' code."""

from .harness import markdown, run_benchmark

__all__ = ["markdown", "run_benchmark"]
