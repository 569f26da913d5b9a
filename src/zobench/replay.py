"""``python -m zobench.replay <run dir> [--step N|best|last] [--out DIR] [--device D]``: the
trainable weights of a ZO run at a step, rebuilt from its base model and ``trajectory.bin`` with
no forward pass (``zobench.trajectory.replay``), written to ``DIR/trainable.safetensors``
(default ``<run dir>/replay/step-<N>``). Bad input: one ``zobench: error:`` line, exit 2."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import ConfigError

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zobench.replay", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--step", default="last", help="a step number, best or last (default)")
    parser.add_argument("--out", default=None, help="default: <run dir>/replay/step-<N>")
    parser.add_argument("--device", default=None, help="default: the run's device (exact on the same kind)")
    args = parser.parse_args(argv)
    from .checkpoint import save_tensors
    from .config import check_output_folder, output_error
    from .trajectory.replay import replay

    started = time.perf_counter()
    try:  # where it will write and on what, before the seconds a replay takes
        if args.out is not None:
            check_output_folder("--out", args.out)
        else:
            check_output_folder("--out (default: the run dir's replay/)", args.run_dir / "replay")
        replayed = replay(args.run_dir, args.step, device=args.device)
    except ConfigError as err:
        print(f"zobench: error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    out = Path(args.out) if args.out is not None else args.run_dir / "replay" / f"step-{replayed.step}"
    try:
        save_tensors(replayed.named, out / "trainable.safetensors")
    except OSError as err:
        print(f"zobench: error: {output_error('--out', err)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    print(f"{out / 'trainable.safetensors'}: step {replayed.step}, replayed in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
