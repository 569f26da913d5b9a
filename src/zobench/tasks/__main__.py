"""``python -m zobench.tasks``: the address of ``zobench.cli.tasks``."""

import sys

from ..cli.tasks import main

if __name__ == "__main__":
    sys.exit(main())
