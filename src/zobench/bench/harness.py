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

from ..config import validate_bench
from ..engine import build_engine
from ..errors import ConfigError
from ..models import CandidateScorer, load_model, torch_dtype
from ..optim import MeZO, decay_groups
from ..run import resolve_device
from ..tasks import build_splits, load_task
from ..telemetry import PeakMemory
from .baseline import AuthorsMeZO, pairwise_loss
from .page import markdown  # noqa: F401  (python -m zobench.bench writes it beside the JSON)

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


def virtual_lr0_drift(model, optimizer_step: Callable[[], object], steps: int) -> dict:
    """Run ``steps`` real MeZO steps (forwards included) with lr=0 on the virtual engine and
    compare every weight with its starting bits: the mode claims exact restoration."""
    start = [p.detach().to("cpu", copy=True) for p in model.parameters()]
    for _ in range(steps):
        optimizer_step()
    changed = sum(int((p.detach().cpu() != s).sum()) for p, s in zip(model.parameters(), start))
    return {"steps": steps, "changed_elements": changed, "elements": sum(s.numel() for s in start)}


def passes_per_step(optimizer) -> int | float:
    """The method's forward passes per step: an integer, or the average of the methods whose steps
    differ (DiZO's projection rounds, MeZO-SVRG's anchor steps), not truncated."""
    passes = float(optimizer.forward_passes_per_step)
    return int(passes) if passes.is_integer() else passes


def zo_optimizer(opt_cfg, named, engine, seed: int):
    """The configured zeroth-order method (conf/optimizer) on ``engine``, as the run loop builds
    it; first-order and probing baselines are refused with a one-line error."""
    kwargs = {str(k): v for k, v in dict(OmegaConf.to_container(opt_cfg, resolve=True)).items()}  # type: ignore[arg-type]  # a config mapping
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
    """One benchmark: zobench's configured step, then (``bench.baseline``) the authors' MeZO step
    and (``bench.numerics_steps``) the in-place drift, on one model, batch and process."""
    validate_bench(cfg)
    device = resolve_device(cfg.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    torch.set_grad_enabled(False)
    spec = load_task(cfg.task.name)
    splits = build_splits(spec, cfg.data.dir, cfg.bench.batch_size, 0, 1, seed=cfg.data.seed)
    log.info("loading %s on %s", cfg.model.name, device)
    model, tokenizer = load_model(cfg.model, device, cfg.cache_dir)
    scorer = CandidateScorer(model, tokenizer, cfg.task.max_length, device)
    batch = [scorer.encode(spec.render(ex)) for ex in splits.train][: cfg.bench.batch_size]
    memory = PeakMemory(device)
    named = list(model.named_parameters())
    # the baseline's MeZO hyperparameters: the configured method's lr and ε where it has them
    lr, eps = float(cfg.optimizer.lr), float(cfg.optimizer.get("eps", 1e-3))
    result = _describe(cfg, model, batch, device, memory)
    bench = _Bench(cfg, model, scorer, batch, memory, named, device, sync)
    result.update(bench.zobench(eps))
    if cfg.bench.baseline:  # the authors' step on the same model and batch
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        result.update(bench.baseline(lr, eps, pad, result["zobench"]))
    if cfg.bench.numerics_steps:
        result["numerics"] = _numerics(cfg, named, eps)
    return result


def _describe(cfg, model, batch, device: torch.device, memory: PeakMemory) -> dict:
    """The benchmark's setting: model, batch, device and the versions of what ran."""
    return {
        "model": cfg.model.name,
        "task": cfg.task.name,
        "batch_size": len(batch),
        "dtype": cfg.model.dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
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
        "repeats": cfg.bench.repeats,
        "warmup": cfg.bench.warmup,
    }


class _Bench:
    """The timed variants on one loaded model and batch."""

    def __init__(self, cfg, model, scorer, batch, memory, named, device, sync) -> None:
        self.cfg, self.model, self.scorer, self.batch = cfg, model, scorer, batch
        self.memory, self.named, self.device, self.sync = memory, named, device, sync

    def _measure(self, step, seconds, reset) -> dict:
        b = self.cfg.bench
        return _measure(step, self.model, self.memory, seconds, reset, self.sync, b.warmup, b.repeats)

    def zobench(self, eps: float) -> dict:
        """The run loop's objective and optimizer on the configured engine."""
        cfg, scorer, batch = self.cfg, self.scorer, self.batch
        engine = build_engine(
            cfg.engine.backend,
            cfg.engine.mode,
            self.model,
            paired=cfg.engine.paired,
            fused_linear=cfg.engine.fused_linear,
        )
        engine.enable_timing(self.sync if self.device.type == "cuda" else None)
        optimizer = zo_optimizer(cfg.optimizer, self.named, engine, cfg.seed)
        b = cfg.bench
        steps = (b.warmup, b.repeats, cfg.engine.backend, cfg.engine.mode)
        log.info("zobench: inference peak, then %d + %d steps on %s/%s", *steps)
        out: dict = {
            "zobench_inference_peak_memory_bytes": _inference_peak(lambda: scorer.loss(batch), self.memory, self.sync)
        }

        def reset_engine():
            engine.seconds = 0.0

        def closure(replicas=1):  # the run loop's closure (objective.zo_closure): it can batch the ± pair
            return scorer.loss(batch, replicas=replicas)

        zobench = self._measure(lambda: optimizer.step(closure), lambda: engine.seconds, reset_engine)
        zobench["peak_over_inference"] = zobench["peak_memory_bytes"] / out["zobench_inference_peak_memory_bytes"]
        zobench["engine"] = (
            f"{cfg.engine.backend}/{cfg.engine.mode}"
            + ("+paired" if cfg.engine.mode == "virtual" and cfg.engine.paired else "")
            + ("+fused" if cfg.engine.fused_linear else "")
        )
        zobench["optimizer"] = cfg.optimizer.name
        zobench["forward_passes_per_step"] = passes_per_step(optimizer)
        zobench["state_buffers_per_param"] = int(getattr(optimizer, "state_buffers_per_param", 0))
        out["zobench"] = zobench
        if b.get("virtual_lr0_steps") and cfg.engine.mode == "virtual":  # measured, on the model's own dtype
            lr0 = MeZO(decay_groups(self.named, 0.0), lr=0.0, eps=eps, engine=engine, seed=cfg.seed + 1)
            log.info("virtual engine: %d lr=0 steps with forwards", b.virtual_lr0_steps)
            drift = virtual_lr0_drift(
                self.model, lambda: lr0.step(lambda: scorer.loss(batch)), int(b.virtual_lr0_steps)
            )
            out["virtual_lr0"] = {"dtype": cfg.model.dtype, **drift}
        if hasattr(engine, "remove"):
            engine.remove()
        return out

    def baseline(self, lr: float, eps: float, pad: int, zobench: dict) -> dict:
        """The authors' MeZO step: one full forward per (example, candidate) pair, in-place sweeps."""
        log.info("the authors' MeZO step (baseline)")
        authors = AuthorsMeZO(self.named, lr=lr, eps=eps)

        def pairwise_closure():
            return pairwise_loss(self.model, self.batch, pad, self.device)

        peak = _inference_peak(pairwise_closure, self.memory, self.sync)

        def reset_baseline():
            authors.seconds = 0.0

        cuda_sync = self.sync if self.device.type == "cuda" else None
        baseline = self._measure(
            lambda: authors.step(pairwise_closure, cuda_sync), lambda: authors.seconds, reset_baseline
        )
        baseline["peak_over_inference"] = baseline["peak_memory_bytes"] / peak
        return {
            "baseline_inference_peak_memory_bytes": peak,
            "baseline": baseline,
            "step_time_ratio": zobench["step_s"] / baseline["step_s"],
            "peak_memory_ratio": zobench["peak_memory_bytes"] / baseline["peak_memory_bytes"],
        }


def _numerics(cfg, named, eps: float) -> dict:
    """Weight drift after ``bench.numerics_steps`` lr=0 perturb/restore sweeps, per dtype, on the
    first ``bench.numerics_max_elements`` elements: the authors' in-place arithmetic vs zobench's."""
    b = cfg.bench
    log.info("numerics: %d lr=0 perturb/restore sweeps per dtype", b.numerics_steps)
    numerics = {}
    for dtype_name in b.numerics_dtypes:
        dtype = torch_dtype(dtype_name)
        subset, budget = [], int(b.numerics_max_elements)
        for _, p in named:
            if budget <= 0:
                break
            rows = max(1, budget // max(1, p[0].numel()))
            subset.append(p.detach()[:rows].to(dtype).clone() if p.ndim > 1 else p.detach().to(dtype).clone())
            budget -= subset[-1].numel()
        numerics[dtype_name] = {
            "authors_inplace": drift_after_lr0_steps([t.clone() for t in subset], b.numerics_steps, eps, True),
            "zobench_inplace": drift_after_lr0_steps(
                [t.clone() for t in subset], b.numerics_steps, eps, False, backend=cfg.engine.backend
            ),
            "zobench_virtual": "bit-identical by construction: weights are never written during an estimate "
            "(tests/engine/test_torch_backend.py checks lr=0 steps with real forwards)",
        }
    return {"steps": b.numerics_steps, "eps": eps, **numerics}
