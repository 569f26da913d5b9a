"""``python -m zobench.engine.selfcheck``: the address of ``zobench.cli.selfcheck``."""

import sys

from ...cli.selfcheck import main

if __name__ == "__main__":
    sys.exit(main())
