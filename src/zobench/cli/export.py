"""``python -m zobench.export <run dir> <out dir> [--step best|last|N] [--device D]``: the run's
fine-tuned model as a transformers model (full tuning) or a peft adapter (LoRA / prefix), with
its tokenizer and a model card (``zobench.trajectory.export``); a run that was offloaded is
replayed and written block by block (``--stream``, ``zobench.trajectory.stream``). Bad input: one
``zobench: error:`` line, exit 2."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from . import fail


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zobench.export", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", help="a new or empty folder")
    parser.add_argument("--step", default="best", help="best (default: the tested state), last or a step number")
    parser.add_argument("--device", default=None, help="default: the run's device (exact on the same kind)")
    parser.add_argument(
        "--stream",
        default="auto",
        choices=("auto", "on", "off"),
        help="replay block by block, never whole in memory (auto: when the run was offloaded)",
    )
    args = parser.parse_args(argv)
    from ..config import check_output_folder, output_error
    from ..trajectory.export import export

    try:  # where it will write and on what, before the model is loaded and replayed
        out = check_output_folder("the output folder", args.out)
        out = export(args.run_dir, out, args.step, device=args.device, stream=args.stream)
    except ConfigError as err:
        fail(str(err))
    except OSError as err:  # a full disk while writing: the folder is left under its temporary name
        fail(output_error("the output folder", err))
    print(f"{out}: exported")
