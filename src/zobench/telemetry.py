"""What a run measures about itself: forward passes, peak memory, and where metrics go.

* ``ForwardCounter``: a forward pre-hook on the model counts every call, per phase
  (``train``, ``eval``, ``probe``), so no method and no logging path can under-report.
* ``PeakMemory``: GPU max allocated (``torch.cuda.max_memory_allocated``), or on CPU the peak
  resident set size of the process since the last ``reset()`` (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs``; where that is unavailable, the lifetime ``ru_maxrss``).
* ``JsonlLogger`` (always) and ``WandbLogger`` (``logger=wandb``) receive the same events.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import netrc
import os
import resource
import secrets
import string
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


# set while a model call continues a forward pass from its prompt's KV cache (prefix-shared
# candidate scoring): the prompt call and its continuation count as one forward pass
CONTINUATION: contextvars.ContextVar[bool] = contextvars.ContextVar("zobench_continuation", default=False)


class ForwardCounter:
    """Counts model forward passes per phase; ``with counter.phase("eval"): ...``.

    ``replicas`` (a callable) says how many forward passes one call is: a batched evaluation of
    N perturbed models (FZOO on the virtual engine) is one call but N forward passes."""

    def __init__(self, model: torch.nn.Module, replicas=None) -> None:
        self.counts: Counter[str] = Counter()
        self.current = "train"
        self.replicas = replicas or (lambda: 1)
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        if CONTINUATION.get():  # the second half of one forward pass split at a KV cache
            return
        self.counts[self.current] += self.replicas()

    @contextlib.contextmanager
    def phase(self, name: str):
        previous, self.current = self.current, name
        try:
            yield
        finally:
            self.current = previous

    def __getitem__(self, phase: str) -> int:
        return self.counts[phase]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def remove(self) -> None:
        self._handle.remove()


def _release_free_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), so that the RSS a CPU peak
    is measured from counts live memory, not whatever earlier work left cached in malloc's
    arenas (which moved inference peaks by ~100 MB between otherwise identical runs)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak is then an upper bound, as before
        pass


class PeakMemory:
    """Peak memory since ``reset()``: CUDA max allocated, or CPU peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.source = "cuda_max_allocated" if self.device.type == "cuda" else "vmhwm"
        if self.source == "vmhwm" and not self._clear_refs():
            self.source = "ru_maxrss"  # cannot reset: lifetime peak (an upper bound)

    @staticmethod
    def _clear_refs() -> bool:
        _release_free_heap()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # "5": reset the peak RSS (VmHWM) to the current RSS
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.source == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.source == "vmhwm":
            self._clear_refs()

    def peak(self) -> int:
        if self.source == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.source == "vmhwm":
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _finite(value):
    """JSON has no NaN/inf: they are written as null (and the run status says why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlLogger:
    """Appends one JSON object per event to ``metrics.jsonl``, flushed at once; ``sync()`` makes
    what was written durable (fsync), which the run does before a checkpoint records the offset
    and before the summary is written."""

    def __init__(self, path: Path, truncate_at: int = 0) -> None:
        from .errors import CheckpointError

        self.path = Path(path)
        size = self.path.stat().st_size if self.path.is_file() else 0
        if size < truncate_at:  # truncate() would pad with NUL bytes: events were lost, not replayable
            raise CheckpointError(
                f"{self.path} holds {size} bytes, fewer than the {truncate_at} the checkpoint "
                f"recorded: events before the checkpoint are lost; delete "
                f"{self.path.parent / 'checkpoint'} and {self.path} to start the run afresh"
            )
        self._file = self.path.open("a+", encoding="utf-8")
        # a resumed run replays the events after its checkpoint: cut them off first
        self._file.truncate(truncate_at)
        self._file.seek(truncate_at)

    @property
    def offset(self) -> int:
        """Bytes written so far (a checkpoint records it)."""
        return self._file.tell()

    def log(self, event: dict) -> None:
        from .checkpoint import writing

        with writing(self.path):  # a full disk: an OSError naming metrics.jsonl
            self._file.write(json.dumps({k: _finite(v) for k, v in event.items()}) + "\n")
            self._file.flush()

    def sync(self) -> None:
        from .checkpoint import writing

        with writing(self.path):
            self._file.flush()
            os.fsync(self._file.fileno())

    def summary(self, summary: dict) -> None:
        pass

    def finish(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()


# WANDB_MODE values (wandb's own names): "dryrun" is its old name for offline, "run" for online
_WANDB_ENV_MODES = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
}
PROBE_TIMEOUT_S = 5.0  # the longest the reachability probe waits for a TCP connection


def wandb_mode(requested: str) -> Any:  # wandb's Literal of modes; validated with the config
    """``auto`` -> the mode the user exported (``WANDB_MODE=offline|disabled|online``, or
    ``WANDB_DISABLED=true``: W&B's own variables, which an explicit ``mode=`` argument to
    ``wandb.init`` would override), else ``online`` when an API key is configured, else
    ``offline``. An explicit ``logger.mode`` is taken as it is."""
    if requested != "auto":
        return requested
    exported = os.environ.get("WANDB_MODE", "").strip().lower()
    if exported in _WANDB_ENV_MODES:
        return _WANDB_ENV_MODES[exported]
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("true", "1", "yes"):
        return "disabled"
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def wandb_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the W&B server (``WANDB_BASE_URL``, else api.wandb.ai) cannot be reached, or None: one
    TCP connection to it, or to the HTTP(S) proxy the environment names for it, within
    ``timeout`` seconds. A refused connection or an unknown host answers at once, where
    ``wandb.init`` would retry until its ``init_timeout`` (90 s by default)."""
    import socket
    import urllib.parse
    import urllib.request

    url = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host, port = url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parsed.hostname or host, parsed.port or 80
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:  # refused, unknown host, no route, timed out
        return f"{host}:{port}: {err.strerror or err}"
    return None


class WandbLogger:
    """Mirrors events to W&B: train events as ``train/<key>``, eval events as ``<split>/<key>``."""

    def __init__(self, cfg, run_dir: Path, config: dict, name: str) -> None:
        import wandb

        from .redaction import redact, redact_argv

        # one W&B run per run dir: a resumed (or requeued) run continues the same W&B run
        id_file = Path(run_dir) / "wandb_run_id"
        if not id_file.is_file():
            alphabet = string.ascii_lowercase + string.digits
            id_file.write_text("".join(secrets.choice(alphabet) for _ in range(8)))
        # W&B records project, group, tags and name beside the config: the same redaction for all
        kwargs = redact(
            dict(
                project=cfg.get("project"),
                entity=cfg.get("entity"),
                group=cfg.get("group"),
                tags=list(cfg.get("tags") or []),
                name=name,
                dir=str(run_dir),
                config=config,
                id=id_file.read_text().strip(),
                resume="allow",
            )
        )
        redact_argv()  # W&B records the command line; a credential passed as an override stays out
        if cfg.get("api_key"):  # +logger.api_key=...: this run's W&B key (redacted wherever it would be written)
            os.environ["WANDB_API_KEY"] = str(cfg.get("api_key"))
        mode = wandb_mode(cfg.get("mode", "auto"))
        init_timeout = float(cfg.get("init_timeout", 90))
        unreachable = wandb_unreachable(min(PROBE_TIMEOUT_S, init_timeout)) if mode == "online" else None
        if unreachable:  # no connection at all: offline at once, not after init_timeout seconds
            log.warning(
                "W&B unreachable (%s); logging offline instead: sync later with `wandb sync %s/wandb`",
                unreachable,
                run_dir,
            )
            mode = "offline"
        try:
            self.run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=init_timeout), **kwargs)
        except Exception as err:  # unreachable server, bad key: never lose the metrics
            if mode != "online":
                raise
            log.warning(
                "W&B unreachable (%s); logging offline instead: sync later with `wandb sync %s/wandb`",
                str(err).splitlines()[0],
                run_dir,
            )
            # the failed init keeps the run id registered in W&B's service ("run ID ... is in
            # use"): tear the service down, then the offline run takes the same id, so that a
            # later `wandb sync` continues the run an online resume would have continued
            wandb.teardown()
            mode = "offline"
            self.run = wandb.init(mode="offline", **kwargs)
        self.mode = mode
        self._step = 0

    def log(self, event: dict) -> None:
        prefix = event.get("split", "train") if event.get("event") == "eval" else "train"
        data = {
            f"{prefix}/{k}": v
            for k, v in event.items()
            if k not in ("event", "split") and isinstance(v, (int, float)) and v is not None
        }
        # W&B drops rows whose step goes backwards; the test event carries the (earlier) best-dev
        # step it evaluated, so it is logged at the current step with that step as a value
        self._step = max(self._step, int(event["step"]))
        if prefix == "dev":  # W&B's own summary of dev/* would be the last value: summary() names it
            if not getattr(self, "_dev_defined", False):
                self.run.define_metric("dev/*", summary="none")
                self._dev_defined = True
            self._last_dev = {f"last_dev/{k[4:]}": v for k, v in data.items()}
        self.run.log(data, step=self._step)

    def update_config(self, values: dict) -> None:
        """Add what is known only once the run is set up (``engine_used``: the engine that actually
        runs, after the start-up check) to the W&B run's config."""
        self.run.config.update(values, allow_val_change=True)

    def summary(self, summary: dict) -> None:
        """summary.json into the W&B summary, with names that say which value is which:
        ``best_dev/<metric>`` (the best dev evaluation, the state that was tested),
        ``last_dev/<metric>`` (the last one; W&B would otherwise show it as ``dev/<metric>``,
        its default summary of a logged key, beside the best) and ``test/<metric>``."""
        for key, value in getattr(self, "_last_dev", {}).items():
            self.run.summary[key] = value
        for key, value in summary.items():
            if key.startswith("dev_"):
                key = f"best_dev/{key[4:]}"
            elif key.startswith("test_"):
                key = f"test/{key[5:]}"
            self.run.summary[key] = value

    def finish(self) -> None:
        self.run.finish()


def clock(seconds: float) -> str:
    """``H:MM:SS`` (hours past 24 keep counting: a week-long ETA reads ``168:00:00``)."""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class Progress:
    """Training progress: step/total, loss, forward passes/s and the ETA.

    On a terminal a tqdm bar shows them (``disable=None``: drawn only on a terminal). When the
    output is a file or a pipe (Slurm, CI, ``> log``) a bar's carriage returns would fill the log,
    so instead one plain line ``step 20/200 (10%): loss 0.6931, 3.10 fwd/s, eta 0:09:40`` is
    logged every ``every`` steps (``train.log_every``) and at the last step, through logging
    (Hydra's: the console and ``<run dir>/__main__.log``). The rate counts the forward passes of
    this process only, so a resumed run's ETA is not skewed by the time before the resume."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        forward_passes: int = 0,
        every: int = 10,
        file=None,
        disable: bool | None = None,
    ) -> None:
        from tqdm.auto import tqdm

        file = file or sys.stderr
        self.plain = disable is None and not (hasattr(file, "isatty") and file.isatty())
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="step",
            disable=True if self.plain else disable,
            file=file,
            dynamic_ncols=True,
            mininterval=0,
        )
        self._t0 = time.perf_counter()
        self._passes0 = forward_passes
        self._total, self._step0, self._step = total, initial, initial
        self._every = max(1, int(every))

    def update(self, loss: float, forward_passes: int) -> None:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = (forward_passes - self._passes0) / elapsed
        self.bar.set_postfix(loss=f"{loss:.4f}", fwd_per_s=f"{rate:.2f}", refresh=False)
        self.bar.update(1)
        self._step += 1
        if self.plain and (self._step % self._every == 0 or self._step == self._total):
            eta = (self._total - self._step) * elapsed / max(self._step - self._step0, 1)
            log.info(
                "step %d/%d (%d%%): loss %.4f, %.2f fwd/s, eta %s",
                self._step,
                self._total,
                100 * self._step // max(self._total, 1),
                loss,
                rate,
                clock(eta),
            )

    def close(self) -> None:
        self.bar.close()


HEARTBEAT_S = 30.0  # the longest a log stays silent during a long evaluation or model load


@contextlib.contextmanager
def heartbeat(what: str, every: float | None = None, detail=None):
    """While the block runs, log ``<what>: 0:01:30 so far[, <detail()>]`` every ``every`` seconds,
    so a Slurm log is never silent for minutes (a dev evaluation of a large model, a model load).
    A daemon thread only sleeps and logs; ``detail`` (a callable, e.g. forward passes so far) is
    read from it, so it must only read plain counters."""
    import threading

    every = HEARTBEAT_S if every is None else every
    done, start = threading.Event(), time.perf_counter()

    def beat() -> None:
        while not done.wait(every):
            extra = f", {detail()}" if detail is not None else ""
            log.info("%s: %s so far%s", what, clock(time.perf_counter() - start), extra)

    thread = threading.Thread(target=beat, name="zobench-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
