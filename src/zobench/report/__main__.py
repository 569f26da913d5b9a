"""``python -m zobench.report``: the address of ``zobench.cli.report``."""

from ..cli.report import main

if __name__ == "__main__":
    main()
