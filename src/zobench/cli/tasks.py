"""``python -m zobench.tasks list`` / ``show <task>``: the task registry at a glance.

``list`` prints each task's version, prompt families, causal-LM objective, metric, run settings
(the Hydra ``task`` node: ``max_length``, ...) and which of its splits the local mirror holds;
``show`` renders one example from the mirror exactly as the objective will see it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ConfigError
from ..tasks import available_tasks, load_split, load_task
from ..tasks.data import KSHOT_SEEDS, kshot_dir
from . import error


def mirror_status(spec, data_dir: Path | None) -> str:
    """'train validation k-shot(5 seeds)'-style summary of what ``data_dir`` holds for ``spec``."""
    if data_dir is None:
        return "(no data dir)"
    have = [
        f"{role}={split}" if (data_dir / spec.name / f"{split}.jsonl").is_file() else f"{role}=MISSING"
        for role, split in spec.splits.items()
    ]
    seeds = sum((kshot_dir(data_dir, spec.name, 16, s) / "train.jsonl").is_file() for s in KSHOT_SEEDS)
    if seeds:
        have.append(f"16-shot:{seeds}/{len(KSHOT_SEEDS)} seeds")
    return " ".join(have)


def cmd_list(data_dir: Path | None) -> None:
    header = ("task", "version", "families", "objective", "metric", "task.* settings", f"mirror ({data_dir})")
    rows = [header]
    for name in available_tasks():
        spec = load_task(name)
        rows.append(
            (
                name,
                str(spec.version),
                ",".join(spec.families),
                spec.objective,
                spec.metric,
                ",".join(f"{key}={value}" for key, value in spec.run_config().items() if key != "name"),
                mirror_status(spec, data_dir),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


def cmd_show(name: str, family: str, index: int, split: str, data_dir: Path | None) -> None:
    spec = load_task(name)
    if data_dir is None:
        raise ConfigError("show: no data dir; pass --data-dir or set ZOBENCH_DATA_DIR")
    rows = load_split(spec, split, data_dir)
    if not 0 <= index < len(rows):
        raise ConfigError(f"--index {index}: the {split} split of {name} has {len(rows)} rows")
    r = spec.render(rows[index], family)
    print(
        f"task {spec.name} v{spec.version}  family {family}  objective {spec.objective}  metric {spec.metric}  "
        f"{split}[{index}] of {len(rows)}"
    )
    print("--- prompt " + "-" * 60)
    print(r.prompt, end="" if r.prompt.endswith("\n") else "\n")
    print("--- candidates " + "-" * 56)
    for i, cand in enumerate(r.candidates):
        mark = "*" if i in r.gold_indices else " "
        print(f"{mark} {i}: {cand!r}")
    if r.answers:
        print(f"answers: {list(r.answers)!r}")
    if spec.generation:
        print(f"generation: {spec.generation}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zobench.tasks", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", default=os.environ.get("ZOBENCH_DATA_DIR"), help="local mirror (default: $ZOBENCH_DATA_DIR)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="tasks with version, families, objective, metric and mirror splits")
    show = sub.add_parser("show", help="render one example from the mirror")
    show.add_argument("task")
    show.add_argument("--family", default="causal", choices=("causal", "masked"))
    show.add_argument("--index", type=int, default=0)
    show.add_argument("--split", default="eval", choices=("train", "eval"))
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir) if args.data_dir else None
    try:
        if args.command == "list":
            cmd_list(data_dir)
        else:
            cmd_show(args.task, args.family, args.index, args.split, data_dir)
    except ConfigError as err:
        return error(str(err))
    return 0
