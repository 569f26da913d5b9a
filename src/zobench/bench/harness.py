"""Benchmark one ZO training step: zobench vs the authors' MeZO step, in one process, one run.

zobench's step is the configured ``optimizer`` (MeZO by default; any zeroth-order method of
conf/optimizer, so that each method's time and memory, its state included, can be measured);
the baseline is always the authors' MeZO step, the like-for-like comparison only for MeZO.

For each variant: the step time (median over ``bench.repeats`` after ``bench.warmup``), split into
forward time (inside the model's forward, engine work excluded), engine time (generating z,
perturbing, restoring, updating: the engine's own timer, or the baseline's sweeps) and the rest
(building the batch, log-softmax, loss); the peak memory of a step and of an inference-only
forward of the same batch. Optionally the numerics: the weight drift after N lr=0 steps.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from ..engine import build_engine
from ..errors import ConfigError
from ..models import CandidateScorer, load_model, torch_dtype
from ..optim import MeZO, decay_groups
from ..run import resolve_device
from ..tasks import build_splits, load_task
from ..telemetry import PeakMemory
from .baseline import AuthorsMeZO, pairwise_loss

log = logging.getLogger(__name__)  # phase by phase, so that a stalled benchmark shows where


class ForwardTimer:
    """Seconds inside the model's forward calls, minus the engine seconds spent inside them."""

    def __init__(self, model, engine_seconds: Callable[[], float], sync) -> None:
        self.engine_seconds, self.sync = engine_seconds, sync
        self.seconds = 0.0
        self._handles = [
            model.register_forward_pre_hook(self._start),
            model.register_forward_hook(self._stop, always_call=True),
        ]

    def _start(self, module, args) -> None:
        self.sync()
        self._t0, self._e0 = time.perf_counter(), self.engine_seconds()

    def _stop(self, module, args, output) -> None:
        self.sync()
        self.seconds += (time.perf_counter() - self._t0) - (self.engine_seconds() - self._e0)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _median(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def _measure(
    step: Callable[[], None],
    model,
    memory: PeakMemory,
    engine_seconds: Callable[[], float],
    reset_engine: Callable[[], None],
    sync,
    warmup: int,
    repeats: int,
) -> dict:
    rows = []
    timer = ForwardTimer(model, engine_seconds, sync)
    try:
        for i in range(warmup + repeats):
            timer.seconds = 0.0
            reset_engine()
            memory.reset()
            sync()
            start = time.perf_counter()
            step()
            sync()
            step_s = time.perf_counter() - start
            engine_s = engine_seconds()
            # per step as it goes, split like the table, so a slow or stalled run shows where
            log.info(
                "step %d/%d%s: %.3f s = forward %.3f + engine %.3f + other %.3f",
                i + 1,
                warmup + repeats,
                " (warm-up)" if i < warmup else "",
                step_s,
                timer.seconds,
                engine_s,
                step_s - timer.seconds - engine_s,
            )
            if i >= warmup:
                rows.append(
                    {
                        "step_s": step_s,
                        "forward_s": timer.seconds,
                        "engine_s": engine_s,
                        "other_s": step_s - timer.seconds - engine_s,
                        "peak_memory_bytes": memory.peak(),
                    }
                )
    finally:
        timer.remove()
    out = _median(rows)
    out["engine_fraction"] = out["engine_s"] / out["step_s"]
    return out


def _inference_peak(loss_fn: Callable[[], torch.Tensor], memory: PeakMemory, sync) -> int:
    loss_fn()  # warm the allocator the way a training step would
    memory.reset()
    loss_fn()
    sync()
    return memory.peak()


def drift_after_lr0_steps(
    params: list[torch.Tensor], steps: int, eps: float, authors: bool, backend: str = "torch"
) -> dict:
    """Perturb/restore ``steps`` times with lr=0 (no forward needed: the loss does not enter);
    count the elements that no longer equal their start and the largest change. zobench's
    in-place engine is the configured ``backend``'s (``auto`` resolves on the tensors' device)."""
    start = [p.clone() for p in params]
    if authors:
        named = [(f"p{i}", p) for i, p in enumerate(params)]
        baseline = AuthorsMeZO(named, lr=0.0, eps=eps)
        for _ in range(steps):
            seed = np.random.randint(1_000_000_000)
            baseline._perturb(seed, 1)
            baseline._perturb(seed, -2)
            baseline._perturb(seed, 1)
            params = [p for _, p in baseline.named]  # the authors' sweeps replace the tensors
    else:
        holder = torch.nn.ParameterList([torch.nn.Parameter(p, requires_grad=False) for p in params])
        opt = MeZO(params, lr=0.0, eps=eps, engine=build_engine(backend, "inplace", holder))
        for _ in range(steps):
            opt.step(lambda: torch.tensor(0.0))
    changed = sum(int((p != s).sum()) for p, s in zip(params, start))
    max_abs = max(float((p.float() - s.float()).abs().max()) for p, s in zip(params, start))
    total = sum(p.numel() for p in params)
    return {
        "changed_elements": changed,
        "changed_fraction": changed / total,
        "max_abs_drift": max_abs,
        "elements": total,
    }


def virtual_lr0_drift(model, optimizer_step: Callable[[], None], steps: int) -> dict:
    """Run ``steps`` real MeZO steps (forwards included) with lr=0 on the virtual engine and
    compare every weight with its starting bits: the mode claims exact restoration."""
    start = [p.detach().to("cpu", copy=True) for p in model.parameters()]
    for _ in range(steps):
        optimizer_step()
    changed = sum(int((p.detach().cpu() != s).sum()) for p, s in zip(model.parameters(), start))
    return {"steps": steps, "changed_elements": changed, "elements": sum(s.numel() for s in start)}


def zo_optimizer(opt_cfg, named, engine, seed: int):
    """The configured zeroth-order method (conf/optimizer) on ``engine``, as the run loop builds
    it; first-order and probing baselines are refused with a one-line error."""
    kwargs = OmegaConf.to_container(opt_cfg, resolve=True)
    name = kwargs.pop("name")
    if kwargs.pop("first_order", False) or kwargs.pop("linear_probe", False):
        raise ConfigError(
            f"optimizer={name}: the benchmark times zeroth-order steps; "
            "allowed: a ZO method of conf/optimizer (mezo, hizoo, fzoo, zo_adam, ...)"
        )
    weight_decay = kwargs.pop("weight_decay", 0.0)
    cls = get_class(kwargs.pop("_target_"))
    groups = decay_groups(named, weight_decay, names=getattr(cls, "takes_names", False))  # LeZO's blocks
    return cls(groups, engine=engine, seed=seed, **kwargs)


def run_benchmark(cfg) -> dict:
    device = resolve_device(cfg.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    torch.set_grad_enabled(False)
    b = cfg.bench

    spec = load_task(cfg.task.name)
    splits = build_splits(spec, cfg.data.dir, b.batch_size, 0, 1, seed=cfg.data.seed)
    log.info("loading %s on %s", cfg.model.name, device)
    model, tokenizer = load_model(cfg.model, device, cfg.cache_dir)
    scorer = CandidateScorer(model, tokenizer, cfg.task.max_length, device)
    batch = [scorer.encode(spec.render(ex)) for ex in splits.train][: b.batch_size]
    memory = PeakMemory(device)
    named = list(model.named_parameters())
    # the baseline's MeZO hyperparameters: the configured method's lr and ε where it has them
    lr, eps = float(cfg.optimizer.lr), float(cfg.optimizer.get("eps", 1e-3))
    result = {
        "model": cfg.model.name,
        "task": cfg.task.name,
        "batch_size": len(batch),
        "dtype": cfg.model.dtype,
        "parameters": sum(p.numel() for _, p in named),
        "tokens_per_pair": statistics.mean(len(c) + len(o) for e in batch for c, o in zip(e.contexts, e.options)),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "transformers": __import__("transformers").__version__,
            "cuda": torch.version.cuda,
            "triton": _version("triton"),
        },
        "memory_source": memory.source,
        "repeats": b.repeats,
        "warmup": b.warmup,
    }

    # zobench: the run loop's objective and optimizer on the configured engine
    engine = build_engine(
        cfg.engine.backend, cfg.engine.mode, model, paired=cfg.engine.paired, fused_linear=cfg.engine.fused_linear
    )
    engine.enable_timing(sync if device.type == "cuda" else None)
    optimizer = zo_optimizer(cfg.optimizer, named, engine, cfg.seed)
    log.info(
        "zobench: inference peak, then %d + %d steps on %s/%s", b.warmup, b.repeats, cfg.engine.backend, cfg.engine.mode
    )
    result["zobench_inference_peak_memory_bytes"] = _inference_peak(lambda: scorer.loss(batch), memory, sync)

    def reset_engine():
        engine.seconds = 0.0

    def closure(replicas=1):  # the run loop's closure (objective.zo_closure): it can batch the ± pair
        return scorer.loss(batch, replicas=replicas)

    zobench = _measure(
        lambda: optimizer.step(closure), model, memory, lambda: engine.seconds, reset_engine, sync, b.warmup, b.repeats
    )
    zobench["peak_over_inference"] = zobench["peak_memory_bytes"] / result["zobench_inference_peak_memory_bytes"]
    zobench["engine"] = (
        f"{cfg.engine.backend}/{cfg.engine.mode}"
        + ("+paired" if cfg.engine.mode == "virtual" and cfg.engine.paired else "")
        + ("+fused" if cfg.engine.fused_linear else "")
    )
    zobench["optimizer"] = cfg.optimizer.name
    zobench["forward_passes_per_step"] = int(optimizer.forward_passes_per_step)
    zobench["state_buffers_per_param"] = int(getattr(optimizer, "state_buffers_per_param", 0))
    result["zobench"] = zobench
    if b.get("virtual_lr0_steps") and cfg.engine.mode == "virtual":  # measured, on the model's own dtype
        lr0 = MeZO(decay_groups(named, 0.0), lr=0.0, eps=eps, engine=engine, seed=cfg.seed + 1)
        log.info("virtual engine: %d lr=0 steps with forwards", b.virtual_lr0_steps)
        result["virtual_lr0"] = {
            "dtype": cfg.model.dtype,
            **virtual_lr0_drift(model, lambda: lr0.step(lambda: scorer.loss(batch)), int(b.virtual_lr0_steps)),
        }
    if hasattr(engine, "remove"):
        engine.remove()

    if b.baseline:  # the authors' step on the same model and batch
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        log.info("the authors' MeZO step (baseline)")
        authors = AuthorsMeZO(named, lr=lr, eps=eps)

        def pairwise_closure():  # one full forward per (example, candidate) pair, as the authors do
            return pairwise_loss(model, batch, pad, device)

        result["baseline_inference_peak_memory_bytes"] = _inference_peak(pairwise_closure, memory, sync)

        def reset_baseline():
            authors.seconds = 0.0

        baseline = _measure(
            lambda: authors.step(pairwise_closure, sync if device.type == "cuda" else None),
            model,
            memory,
            lambda: authors.seconds,
            reset_baseline,
            sync,
            b.warmup,
            b.repeats,
        )
        baseline["peak_over_inference"] = baseline["peak_memory_bytes"] / result["baseline_inference_peak_memory_bytes"]
        result["baseline"] = baseline
        result["step_time_ratio"] = zobench["step_s"] / baseline["step_s"]
        result["peak_memory_ratio"] = zobench["peak_memory_bytes"] / baseline["peak_memory_bytes"]

    if b.numerics_steps:
        log.info("numerics: %d lr=0 perturb/restore sweeps per dtype", b.numerics_steps)
        numerics = {}
        for dtype_name in b.numerics_dtypes:
            dtype = torch_dtype(dtype_name)
            subset, budget = [], int(b.numerics_max_elements)
            for _, p in named:
                if budget <= 0:
                    break
                subset.append(
                    p.detach()[: max(1, budget // max(1, p[0].numel()))].to(dtype).clone()
                    if p.ndim > 1
                    else p.detach().to(dtype).clone()
                )
                budget -= subset[-1].numel()
            numerics[dtype_name] = {
                "authors_inplace": drift_after_lr0_steps([t.clone() for t in subset], b.numerics_steps, eps, True),
                "zobench_inplace": drift_after_lr0_steps(
                    [t.clone() for t in subset], b.numerics_steps, eps, False, backend=cfg.engine.backend
                ),
                "zobench_virtual": "bit-identical by construction: weights are never written during an estimate "
                "(tests/engine/test_torch_backend.py checks lr=0 steps with real forwards)",
            }
        result["numerics"] = {"steps": b.numerics_steps, "eps": eps, **numerics}
    return result


def markdown(result: dict, command: str) -> str:
    mb = 2**20
    method = result["zobench"].get("optimizer", "mezo")
    title = "MeZO" if method == "mezo" else method
    lines = [
        f"# {title} step benchmark: {result['model']} / {result['task']}, batch {result['batch_size']}, "
        f"{result['dtype']}, {result['device']}",
        "",
        f"Command: `{command}`",
        "",
        f"{result['parameters'] / 1e6:.1f}M parameters, {result['tokens_per_pair']:.1f} tokens per "
        f"(example, candidate) pair, {result['threads']} threads, torch {result['versions']['torch']}, "
        f"transformers {result['versions']['transformers']}. Medians of {result['repeats']} steps after "
        f"{result['warmup']} warm-up step(s), all in one process.",
        "",
        "| variant | step (s) | forward (s) | engine (s) | other (s) | engine share | peak mem (MB) | "
        "inference peak (MB) | peak / inference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, key in (("zobench", "zobench"), ("authors' MeZO (baseline)", "baseline")):
        if key not in result:
            continue
        r = result[key]
        label = (
            name
            if "engine" not in r
            else f"{name} [{r['engine']}]"
            if method == "mezo"
            else f"{name} {method} [{r['engine']}]"
        )
        lines.append(
            f"| {label} | {r['step_s']:.3f} | {r['forward_s']:.3f} | {r['engine_s']:.3f} | "
            f"{r['other_s']:.3f} | {r['engine_fraction']:.1%} | {r['peak_memory_bytes'] / mb:.0f} | "
            f"{result[key + '_inference_peak_memory_bytes'] / mb:.0f} | {r['peak_over_inference']:.3f} |"
        )
    if method != "mezo":
        z = result["zobench"]
        lines += [
            "",
            f"zobench's step is {method}'s ({z['forward_passes_per_step']} forward passes, "
            f"{z['state_buffers_per_param']} parameter-sized state buffer(s)); the baseline is "
            "the authors' MeZO step (2 passes, no state), so the ratios below compare methods, "
            "not implementations.",
        ]
    if "step_time_ratio" in result:
        lines += [
            "",
            f"zobench / baseline: step time {result['step_time_ratio']:.2f}×, "
            f"peak memory {result['peak_memory_ratio']:.2f}×.",
        ]
    if "numerics" in result:
        n = result["numerics"]
        lines += [
            "",
            f"Numerics: weights after {n['steps']} lr=0 steps (eps {n['eps']}), "
            "fraction of elements changed / largest change:",
            "",
            "| dtype | authors' in-place | zobench in-place | zobench virtual |",
            "|---|---|---|---|",
        ]
        for dtype, d in n.items():
            if isinstance(d, dict):
                a, z = d["authors_inplace"], d["zobench_inplace"]
                lines.append(
                    f"| {dtype} | {a['changed_fraction']:.1%} / {a['max_abs_drift']:.2e} | "
                    f"{z['changed_fraction']:.1%} / {z['max_abs_drift']:.2e} | 0 (bit-identical) |"
                )
    if "virtual_lr0" in result:
        v = result["virtual_lr0"]
        lines += [
            "",
            f"Measured: {v['steps']} lr=0 MeZO steps with real forwards on the virtual engine "
            f"({v['dtype']} model): {v['changed_elements']} of {v['elements']} weights changed.",
        ]
    return "\n".join(lines) + "\n"
