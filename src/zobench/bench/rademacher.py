"""FZOO's and MeZO's step before / after the Rademacher z from Philox bits, in ONE process.

Before: z = torch.randint(0, 2) per element from torch's CPU generator (one random integer per
sign), and no engine phase tracing. After: the code as it is (128 signs per Philox call,
``philox.rademacher_z``; every engine call a traced phase). "Before" is the old definition put
back by monkeypatching ``Direction`` and ``trace.phase``, so both run on the same model, batch
and process, alternating step by step (A B A B ...) so that load from other processes on the
machine falls on both alike (in A B, B A order). MeZO draws a Gaussian z: its "before" differs only by the tracing.

    OMP_NUM_THREADS=1 ZOBENCH_DATA_DIR=../shared/data python -m zobench.bench.rademacher [--steps N] [--warmup N]

(one thread: then the CPU seconds of the process are the step's cost even on a shared machine)

writes DIR/rademacher.json and DIR/README.md (``--out DIR``, default: results/bench/rademacher; the README is
remade from the JSON by ``python -m zobench.report regenerate results/bench``). The committed run
was made by this code when it was ``results/bench/rademacher/bench.py``, the command its JSON names.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from ..config import check_output_folder
from ..engine import build_engine, directions, trace
from ..errors import ConfigError
from ..models import CandidateScorer, load_model
from ..resources import conf_dir
from ..tasks import build_splits, load_task
from .harness import zo_optimizer
from .summaries import rademacher_readme

OUT = Path("results/bench/rademacher")


@contextlib.contextmanager
def old_definition():
    """The code before: Rademacher z from torch.randint, engine calls untraced."""
    Direction = directions.Direction
    generator, draw, phase = Direction._generator, Direction._draw, trace.phase

    def torch_generator(self, pid, device):
        gen = torch.Generator(device=device)
        gen.manual_seed(directions.mix_seed(self.seed, pid))
        return gen

    def randint_draw(self, gen, shape, device):
        if self.distribution == "gaussian":
            return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
        signs = torch.randint(0, 2, shape, generator=gen, device=device, dtype=torch.int8)
        return signs.to(torch.float32).mul_(2).sub_(1)

    Direction._generator, Direction._draw = torch_generator, randint_draw
    trace.phase = lambda name: contextlib.nullcontext()  # type: ignore[return-value]  # the old, untraced phase
    try:
        yield
    finally:
        Direction._generator, Direction._draw, trace.phase = generator, draw, phase


def _setup():
    """SmolLM2-135M on the CPU, one SST-2 batch of 16, the torch virtual engine (paired) timed."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose("bench", overrides=["model=smollm2-135m", "engine=torch", "engine.mode=virtual"])
    spec = load_task(cfg.task.name)
    splits = build_splits(spec, cfg.data.dir, 16, 0, 1, seed=cfg.data.seed)
    model, tokenizer = load_model(cfg.model, torch.device("cpu"), cfg.cache_dir)
    scorer = CandidateScorer(model, tokenizer, cfg.task.max_length, torch.device("cpu"))
    batch = [scorer.encode(spec.render(ex)) for ex in splits.train][:16]
    engine = build_engine("torch", "virtual", model, paired=True)
    engine.enable_timing()
    return cfg, model, scorer, batch, engine


def _time_method(method: str, optimizer, closure, engine, steps: int, warmup: int) -> dict:
    """{variant: {wall|cpu|engine: [seconds per step]}}, the variants alternating A B, B A, ..."""
    times: dict = {}
    for _ in range(warmup):  # allocator and caches warm before anything is timed
        optimizer.step(closure)
    for i in range(steps):  # A B, B A, ...: neither variant always goes first
        for variant in ("before", "after") if i % 2 == 0 else ("after", "before"):
            with old_definition() if variant == "before" else contextlib.nullcontext():
                engine.seconds = 0.0
                start, cpu = time.perf_counter(), time.process_time()
                optimizer.step(closure)
                seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            print(
                f"{method} {variant} step {i + 1}: {seconds:.2f} s wall, {cpu:.2f} s CPU, engine "
                f"{engine.seconds:.2f} s",
                file=sys.stderr,
                flush=True,
            )
            for key, value in (("wall", seconds), ("cpu", cpu), ("engine", engine.seconds)):
                times.setdefault(variant, {}).setdefault(key, []).append(value)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    parser.add_argument("--out", default=str(OUT), help=f"output folder (default {OUT})")
    args = parser.parse_args()
    try:  # where it will write, before the minutes of timing
        args.out = check_output_folder("--out", args.out)
    except ConfigError as err:
        print(f"zobench: error: {err}", file=sys.stderr)
        sys.exit(2)
    torch.set_grad_enabled(False)
    cfg, model, scorer, batch, engine = _setup()
    named = list(model.named_parameters())

    def closure(replicas=1):
        return scorer.loss(batch, replicas=replicas)

    times = {}
    for method in ("fzoo", "mezo"):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            opt_cfg = compose("bench", overrides=[f"optimizer={method}"]).optimizer
        optimizer = zo_optimizer(opt_cfg, named, engine, seed=0)
        times[method] = _time_method(method, optimizer, closure, engine, args.steps, args.warmup)
    median = {
        m: {v: {k: statistics.median(s) for k, s in kinds.items()} for v, kinds in by.items()}
        for m, by in times.items()
    }
    result = {
        "command": "OMP_NUM_THREADS=1 python -m zobench.bench.rademacher " + " ".join(sys.argv[1:]),
        "model": cfg.model.name,
        "batch_size": len(batch),
        "engine": "torch/virtual+paired",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "steps": args.steps,
        "warmup": args.warmup,
        "seconds": times,
        "median": median,
        "after_over_before": {
            m: {k: med["after"][k] / med["before"][k] for k in med["after"]} for m, med in median.items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rademacher.json").write_text(json.dumps(result, indent=2) + "\n")
    readme = rademacher_readme(result)
    (args.out / "README.md").write_text(readme)
    print(readme, end="")


if __name__ == "__main__":
    main()
