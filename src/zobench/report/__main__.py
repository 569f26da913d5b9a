"""``python -m zobench.report <dirs> --table <name> [--out DIR]`` (see ``zobench.report``), and
``python -m zobench.report regenerate [FOLDER ...] [--check] [--plots | --no-plots]``: every
generated file under ``results/`` remade from its run dirs (see ``zobench.report.regenerate``)."""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from pathlib import Path

from ..config import check_output_folder, output_error
from ..errors import ConfigError
from . import available_tables, make_report

EXIT_BAD_INPUT = 2


def regenerate_main(argv: list[str]) -> None:
    """The ``regenerate`` command: exit 0 when all is remade (or, with --check, the same), 1 when a
    committed file differs from what its run dirs make, 2 on bad input (a spec or a missing folder)."""
    from .regenerate import regenerate

    parser = argparse.ArgumentParser(
        prog="python -m zobench.report regenerate",
        description="Remake every generated file that the report.yaml files under FOLDER name, from the "
        "committed run dirs (run from the repository root).",
    )
    parser.add_argument("folders", nargs="*", type=Path, default=[Path("results")], help="default: results")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed file differs")
    parser.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw the PNG plots (default: when writing, not with --check; a checked PNG is compared by size)",
    )
    args = parser.parse_args(argv)
    plots = (not args.check) if args.plots is None else args.plots
    try:  # a damaged input file (committed run dirs, benchmark JSON): one line naming it
        outcomes = regenerate(args.folders, check=args.check, plots=plots)
    except ConfigError as err:
        print(f"zobench: error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except OSError as err:  # a generated file that cannot be written (full disk, read-only checkout)
        print(f"zobench: error: {output_error('regenerate', err)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    for outcome in outcomes:
        print(f"{outcome.state}: {outcome.path}" + (f" ({outcome.detail})" if outcome.detail else ""))
    bad = [o for o in outcomes if not o.ok]
    if bad:
        print(
            f"zobench: {len(bad)} of {len(outcomes)} generated files differ from what their run dirs make",
            file=sys.stderr,
        )
        sys.exit(1)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning (a run dir left out, a metrics file cut at a bad line) as one line."""
    print(f"zobench: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["regenerate"]:
        return regenerate_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m zobench.report", description=__doc__)
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs or sweep dirs holding run dirs")
    parser.add_argument(
        "--table", required=True, help=f"a shipped table ({', '.join(available_tables())}) or a path to a table YAML"
    )
    parser.add_argument("--out", default=None, help="output folder (default: <first dir>/report)")
    parser.add_argument(
        "--smoke", action="store_true", help="the table's smoke variant, for the runs of experiment=<table>_smoke"
    )
    args = parser.parse_args(argv)
    command = "python -m zobench.report " + " ".join(shlex.quote(a) for a in argv)
    option = "--out" if args.out is not None else "--out (default: <first dir>/report)"
    try:
        out = check_output_folder(option, args.out if args.out is not None else args.dirs[0] / "report")
        with warnings.catch_warnings():  # restores showwarning after
            warnings.simplefilter("always")
            warnings.showwarning = _warning_line
            written = make_report(args.dirs, args.table, out, command, smoke=args.smoke)
    except ConfigError as err:
        print(f"zobench: error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except OSError as err:  # a full disk while writing the tables
        print(f"zobench: error: {output_error(option, err)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    print(written["md"].read_text(), end="")
    for kind, path in written.items():
        print(f"wrote {kind}: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
