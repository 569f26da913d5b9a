"""``python -m zobench.replay <run dir> [--step N|best|last] [--out DIR] [--device D]``: the
trainable weights of a ZO run at a step, rebuilt from its base model and ``trajectory.bin`` with
no forward pass (``zobench.trajectory.replay``), written to ``DIR/trainable.safetensors``
(default ``<run dir>/replay/step-<N>``). A run that was offloaded (``--stream``, default auto) is
replayed block by block (``zobench.trajectory.stream``) and written to DIR as a sharded Hugging
Face checkpoint (``model.safetensors.index.json``, ``config.json``), never whole in memory.
Bad input: one ``zobench: error:`` line, exit 2."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from ..errors import ConfigError
from . import fail


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zobench.replay", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--step", default="last", help="a step number, best or last (default)")
    parser.add_argument("--out", default=None, help="default: <run dir>/replay/step-<N>")
    parser.add_argument("--device", default=None, help="default: the run's device (exact on the same kind)")
    parser.add_argument(
        "--stream",
        default="auto",
        choices=("auto", "on", "off"),
        help="replay block by block, never whole in memory (auto: when the run was offloaded)",
    )
    args = parser.parse_args(argv)
    from ..config import check_output_folder
    from ..trajectory.replay import replay
    from ..trajectory.stream import wants_stream

    started = time.perf_counter()
    try:  # where it will write and on what, before the seconds a replay takes
        if args.out is not None:
            check_output_folder("--out", args.out)
        else:
            check_output_folder("--out (default: the run dir's replay/)", args.run_dir / "replay")
        if wants_stream(args.run_dir, args.stream):
            streamed(args, started)
            return
        replayed = replay(args.run_dir, args.step, device=args.device)
    except ConfigError as err:
        fail(str(err))
    out = Path(args.out) if args.out is not None else args.run_dir / "replay" / f"step-{replayed.step}"
    write_whole(replayed, out, started)


def write_whole(replayed, out: Path, started: float) -> None:
    """The whole-model replay's trainable weights to ``out/trainable.safetensors``."""
    from ..checkpoint import save_tensors
    from ..config import output_error

    try:
        save_tensors(replayed.named, out / "trainable.safetensors")
    except OSError as err:
        fail(output_error("--out", err))
    print(f"{out / 'trainable.safetensors'}: step {replayed.step}, replayed in {time.perf_counter() - started:.1f} s")


def streamed(args, started: float) -> None:
    """Replay block by block (``trajectory.stream``) into a work folder beside the output, then
    write the sharded checkpoint under a temporary name and rename it into place: an output folder
    holding ``model.safetensors.index.json`` is whole."""
    from ..config import output_error
    from ..offload.export import save_sharded
    from ..trajectory.stream import replay_streamed

    parent = Path(args.out).parent if args.out is not None else args.run_dir / "replay"
    name = Path(args.out).name if args.out is not None else "stream"
    work = parent / f".{name}.work"
    shutil.rmtree(work, ignore_errors=True)
    try:
        try:
            replayed = replay_streamed(args.run_dir, args.step, work, device=args.device)
        except ConfigError as err:
            fail(str(err))
        out = Path(args.out) if args.out is not None else args.run_dir / "replay" / f"step-{replayed.step}"
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            fail(f"--out {out}: exists and is not empty; a streamed replay writes a new folder (choose another --out)")
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save_sharded(replayed.model, replayed.model.zobench_offloader, tmp)
            replayed.model.zobench_offloader.close()
            if out.exists():
                out.rmdir()
            tmp.rename(out)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            fail(output_error("--out", err))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    print(f"{out}: step {replayed.step}, streamed block by block in {seconds:.1f} s (model.safetensors.index.json)")
