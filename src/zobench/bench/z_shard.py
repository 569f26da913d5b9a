"""``python -m zobench.bench.z_shard > results/bench/distributed/z_shard.json``: seconds to draw z
for one rank's half of a 28.3M-element parameter (SmolLM2-135M's embedding, 49152 x 576) against
the whole parameter's z, torch backend on CPU, 1 thread: what each rank pays per sweep when the
perturbation is applied to shards (``engine/sharded.py``) rather than to the gathered block
(where every rank draws the whole z)."""

from __future__ import annotations

import json
import time

import torch

from ..engine import Direction
from ..engine.sharded import z_range

SHAPE = (49152, 576)


def main() -> None:
    torch.set_num_threads(1)
    n, out = SHAPE[0] * SHAPE[1], {}
    for distribution in ("rademacher", "gaussian"):
        direction = Direction(7, distribution)
        for name, (start, stop) in {"whole": (0, n), "rank 0 half": (0, n // 2), "rank 1 half": (n // 2, n)}.items():
            began = time.perf_counter()
            for _ in z_range(direction, 0, SHAPE, "cpu", start, stop):
                pass
            out[f"{distribution}, {name}"] = round(time.perf_counter() - began, 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
