"""The trajectory of a ZO run: the log of every step's closure values (``log.py``), the tape
that records and replays them (``tape.py``), the rebuild of the weights at any step
(``replay.py``), trajectory checkpoints (``checkpoints.py``) and the export of the fine-tuned
model (``export.py``). docs/design.md "Run directory" has the picture."""

from .log import FILENAME, Header, read, weights_sha256

__all__ = ["FILENAME", "Header", "read", "weights_sha256"]
