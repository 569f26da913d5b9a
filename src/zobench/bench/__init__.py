"""``python -m zobench.bench``: time and memory of a MeZO step, zobench vs the authors' code.

``markdown`` and ``run_benchmark`` are imported on first use, so that the light modules of this
package (``report``: the GPU check's environment and tables) load without torch.
"""

__all__ = ["markdown", "run_benchmark"]


def __getattr__(name):
    if name in __all__:
        if name == "markdown":
            from .page import markdown

            return markdown
        from .harness import run_benchmark

        return run_benchmark
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
