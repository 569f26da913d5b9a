"""``python -m zobench.report <dirs> --table <name> [--out DIR]`` (see ``zobench.report``)."""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from pathlib import Path

from ..errors import ConfigError
from . import available_tables, make_report

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m zobench.report", description=__doc__)
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs or sweep dirs holding run dirs")
    parser.add_argument(
        "--table", required=True, help=f"a shipped table ({', '.join(available_tables())}) or a path to a table YAML"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <first dir>/report)")
    parser.add_argument(
        "--smoke", action="store_true", help="the table's smoke variant, for the runs of experiment=<table>_smoke"
    )
    args = parser.parse_args(argv)
    out = args.out or args.dirs[0] / "report"
    command = "python -m zobench.report " + " ".join(shlex.quote(a) for a in argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            written = make_report(args.dirs, args.table, out, command, smoke=args.smoke)
    except ConfigError as err:
        print(f"zobench: error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    print(written["md"].read_text(), end="")
    for kind, path in written.items():
        print(f"wrote {kind}: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
