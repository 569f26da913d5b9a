"""``python -m zobench.bench``: the address of ``zobench.cli.bench``."""

from ..cli.bench import main

if __name__ == "__main__":
    main()
