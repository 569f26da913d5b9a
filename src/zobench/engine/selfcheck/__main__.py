"""``python -m zobench.engine.selfcheck``: see ``cli.py``."""

import sys

from .cli import main

sys.exit(main())
