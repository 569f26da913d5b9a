"""``python -m zobench.report regenerate [FOLDER ...] [--check] [--plots]``: every generated file
under ``results/`` remade from its committed run dirs.

A results folder says what in it is generated in a ``report.yaml`` beside its README (data, not
code): a list ``make`` of entries, each a ``kind`` (a generator below) with its inputs and
outputs, paths from the repository root (the command runs there, as the folder's ``run.sh``
does). The options a README's command line once carried (``--subset``, ``--completed-only``,
``--command``) are keys of its entry. Kinds:

* ``table``: a paper table (``zobench.report.make_report``): ``table``, ``runs`` (list), ``out``
  (folder), ``smoke``; Markdown, LaTeX, CSV and the plots.
* ``methods``: the methods-at-one-budget README and curves (``zobench.report.methods``): ``runs``,
  ``readme``, ``plot``, ``command`` (that made the runs), ``machine`` (said after it), ``subset``,
  ``completed_only``.
* ``mezo_vs_zero_shot`` / ``zero_shot``: ``runs``, ``readme`` (``zobench.report.zero_shot``).
* ``bench_runs`` (``dir``: each ``python -m zobench.bench`` run's ``.md`` from its ``.json``),
  ``bench_rademacher`` / ``bench_methods`` / ``bench_allocator``: the benchmark Markdown of
  ``results/bench/`` remade from its JSON files (``zobench.bench.readmes``).

``--check`` writes nothing: it remakes every text file in a temporary folder and exits 1 when
one differs from the committed file by a byte. PNG bytes depend on the matplotlib and libpng
versions, so plots are drawn only with ``--plots``, and then compared by image size (and said
whether byte-identical).
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..bench import readmes as bench
from ..errors import ConfigError, DataNotFoundError
from .files import read_yaml_mapping

SPEC_NAME = "report.yaml"

#: a generator: (entry, where the outputs go, draw plots?) → the committed paths it made
Maker = Callable[[dict, Callable[[str], Path], bool], list[str]]


@dataclass(frozen=True)
class Outcome:
    path: str  # the committed file, from the repository root
    state: str  # "wrote", "same", "differs", "missing", "same size" (a PNG of other bytes)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state in ("wrote", "same", "same size")


def _require(entry: dict, key: str, where: str):
    if key not in entry:
        raise ConfigError(f"{where}.{key}: required for kind {entry['kind']}")
    return entry[key]


def _runs_dir(entry: dict, where: str) -> Path:
    runs = Path(str(_require(entry, "runs", where)))
    if not runs.is_dir():
        raise DataNotFoundError(f"{where}.runs: {runs}: no such folder (run from the repository root)")
    return runs


def _make_table(entry: dict, dest: Callable[[str], Path], plots: bool, where: str) -> list[str]:
    from . import make_report

    runs, out, table = entry.get("runs") or [], str(_require(entry, "out", where)), _require(entry, "table", where)
    smoke = bool(entry.get("smoke", False))
    command = " ".join(["python -m zobench.report", *runs, "--table", table, *(["--smoke"] if smoke else [])])
    written = make_report([Path(r) for r in runs], table, dest(out), f"{command} --out {out}", smoke, plots=plots)
    return [str(Path(out) / path.name) for path in written.values()]


def _make_methods(entry: dict, dest: Callable[[str], Path], plots: bool, where: str) -> list[str]:
    from . import methods

    runs = _runs_dir(entry, where)
    rows = methods.load(runs)
    if entry.get("completed_only"):
        rows = methods.completed(rows)
    readme = str(_require(entry, "readme", where))
    command = str(_require(entry, "command", where))
    text = methods.readme(runs, rows, command, bool(entry.get("subset")), entry.get("machine"))
    dest(readme).write_text(text)
    made = [readme]
    if entry.get("plot") and plots:
        methods.plot(rows, dest(entry["plot"]))
        made.append(str(entry["plot"]))
    return made


def _summary_table(render: Callable[[Path], str]) -> Callable:
    def make(entry: dict, dest: Callable[[str], Path], plots: bool, where: str) -> list[str]:
        readme = str(_require(entry, "readme", where))
        dest(readme).write_text(render(_runs_dir(entry, where)))
        return [readme]

    return make


def _makers() -> dict[str, Callable]:
    from .zero_shot import mezo_vs_zero_shot_readme, zero_shot_readme

    return {
        "table": _make_table,
        "methods": _make_methods,
        "mezo_vs_zero_shot": _summary_table(mezo_vs_zero_shot_readme),
        "zero_shot": _summary_table(zero_shot_readme),
        "bench_runs": bench.make_bench_runs,
        "bench_rademacher": bench.make_rademacher,
        "bench_methods": bench.make_methods,
        "bench_allocator": bench.make_allocator,
    }


#: the keys each kind takes (besides ``kind``): a misspelt option is an error, not silently unused
KEYS = {
    "table": {"table", "runs", "out", "smoke"},
    "methods": {"runs", "readme", "plot", "command", "machine", "subset", "completed_only"},
    "mezo_vs_zero_shot": {"runs", "readme"},
    "zero_shot": {"runs", "readme"},
    "bench_runs": {"dir"},
    "bench_rademacher": {"json", "readme"},
    "bench_methods": {"dir", "readme", "order"},
    "bench_allocator": {"dir", "readme", "order"},
}


def load_spec(path: Path) -> list[dict]:
    """The ``make`` entries of one ``report.yaml``; a bad entry names the file and the key."""
    raw = read_yaml_mapping(path)
    if set(raw) != {"make"} or not isinstance(raw["make"], list):
        raise ConfigError(f"{path}: must hold exactly one key, make (a list of entries)")
    kinds = _makers()
    for i, entry in enumerate(raw["make"]):
        if not isinstance(entry, dict) or entry.get("kind") not in kinds:
            got = entry.get("kind") if isinstance(entry, dict) else entry
            raise ConfigError(f"{path}: make[{i}].kind={got!r}; allowed: {', '.join(kinds)}")
        unknown = sorted(set(entry) - {"kind"} - KEYS[entry["kind"]])
        if unknown:
            allowed = ", ".join(sorted(KEYS[entry["kind"]]))
            raise ConfigError(
                f"{path}: make[{i}].{unknown[0]}: unknown key for kind {entry['kind']}; allowed: {allowed}"
            )
    return raw["make"]


def find_specs(folders: list[Path]) -> list[Path]:
    """Every ``report.yaml`` under ``folders`` (a folder may also be the spec file itself)."""
    found: set[Path] = set()
    for folder in folders:
        if folder.is_file() and folder.name == SPEC_NAME:
            found.add(folder)
        elif folder.is_dir():
            found.update(p for p in folder.rglob(SPEC_NAME) if ".hydra" not in p.parts)
        else:
            raise DataNotFoundError(f"{folder}: no such folder (run from the repository root)")
    if not found:
        raise DataNotFoundError(f"{', '.join(map(str, folders))}: no {SPEC_NAME} found")
    return sorted(found)


def _png_size(path: Path) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk (bytes 16-24); None for a file cut shorter."""
    head = path.read_bytes()[:24]
    return struct.unpack(">II", head[16:24]) if len(head) == 24 else None


def _compare(path: str, made: Path) -> Outcome:
    committed = Path(path)
    if not committed.is_file():
        return Outcome(path, "missing", "not committed")
    if committed.read_bytes() == made.read_bytes():
        return Outcome(path, "same")
    size = _png_size(made) if committed.suffix == ".png" else None
    if size is not None and _png_size(committed) == size:
        return Outcome(path, "same size", "{}x{} PNG, other bytes".format(*size))
    return Outcome(path, "differs")


def regenerate(folders: list[Path], check: bool = False, plots: bool = True) -> list[Outcome]:
    """Remake every generated file the specs under ``folders`` name; ``check``: compare, write nothing."""
    kinds = _makers()
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:

        def dest(path: str) -> Path:
            target = Path(tmp) / path if check else Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            return target

        for spec in find_specs(folders):
            for i, entry in enumerate(load_spec(spec)):
                made = kinds[entry["kind"]](entry, dest, plots, f"{spec}: make[{i}]")
                for path in made:
                    if not check:
                        outcomes.append(Outcome(path, "wrote"))
                    elif Path(path).suffix != ".png" or plots:
                        outcomes.append(_compare(path, dest(path)))
    return outcomes
