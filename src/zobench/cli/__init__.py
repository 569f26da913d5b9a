"""The command lines, in one place, with one error path: bad input is one ``zobench: error: ...``
line on stderr and exit status 2 (:func:`fail`), nothing half-written.

``python -m zobench`` (``zobench.__main__``: the Hydra run), and the tools, each reached by its
documented ``python -m`` address (a few lines that call ``main`` here):

* ``replay.py``: ``python -m zobench.replay``, the weights of a ZO run at a step;
* ``export.py``: ``python -m zobench.export``, a run as a transformers model or peft adapter;
* ``report.py``: ``python -m zobench.report``, run dirs to paper tables; ``regenerate``;
* ``tasks.py``: ``python -m zobench.tasks``, the task registry at a glance;
* ``bench.py``: ``python -m zobench.bench``, zobench's step against the authors';
* ``selfcheck.py``: ``python -m zobench.engine.selfcheck``, the Triton start-up check alone.
"""

from __future__ import annotations

import sys
from typing import NoReturn

EXIT_BAD_INPUT = 2


def error(message: str) -> int:
    """``zobench: error: <message>`` on stderr; the exit status to return (2)."""
    print(f"zobench: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def fail(message: str) -> NoReturn:
    """The one error path of every command: ``zobench: error: <message>`` and exit 2."""
    sys.exit(error(message))
