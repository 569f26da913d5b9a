"""``python -m zobench.replay``: the address of ``zobench.cli.replay`` (the weights of a ZO run at
a step; the library is ``zobench.trajectory.replay``)."""

from .cli.replay import main

if __name__ == "__main__":
    main()
