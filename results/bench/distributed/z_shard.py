"""Seconds to draw z for one rank's half of a 28.3M-element parameter (SmolLM2-135M's embedding,
49152 x 576) against the whole parameter's z, torch backend on CPU, 1 thread: what each rank pays
per sweep when the perturbation is applied to shards (engine/sharded.py) rather than to the
gathered block (every rank draws the whole z). Run: python results/bench/distributed/z_shard.py"""

import json
import time

import torch

from zobench.engine import Direction
from zobench.engine.sharded import z_range

torch.set_num_threads(1)
shape, out = (49152, 576), {}
n = shape[0] * shape[1]
for distribution in ("rademacher", "gaussian"):
    direction = Direction(7, distribution)
    for name, (start, stop) in {"whole": (0, n), "rank 0 half": (0, n // 2), "rank 1 half": (n // 2, n)}.items():
        began = time.perf_counter()
        for _ in z_range(direction, 0, shape, "cpu", start, stop):
            pass
        out[f"{distribution}, {name}"] = round(time.perf_counter() - began, 3)
print(json.dumps(out, indent=1))
