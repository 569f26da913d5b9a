"""``python -m zobench.export``: the address of ``zobench.cli.export`` (a run as a transformers
model or peft adapter; the library is ``zobench.trajectory.export``)."""

from .cli.export import main

if __name__ == "__main__":
    main()
