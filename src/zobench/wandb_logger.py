"""The W&B mirror of a run's events (``logger=wandb``): which mode W&B is started in, and a quick
look at whether its server can be reached at all before ``wandb.init`` waits for it.

``logger.mode=auto`` follows what the user exported for W&B itself (``WANDB_MODE``,
``WANDB_DISABLED``), else is online when a key is configured; a server that refuses the connection
means offline at once (``wandb_unreachable``), not after ``logger.init_timeout`` seconds.
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import Any

from .redaction import redact, redact_argv

log = logging.getLogger(__name__)

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


OFFLINE_WARNING = "W&B unreachable (%s); logging offline instead: sync later with `wandb sync %s/wandb`"


def _run_id(run_dir: Path) -> str:
    """One W&B run per run dir: the id is drawn once and kept in ``<run_dir>/wandb_run_id``, so a
    resumed (or requeued) run continues the same W&B run."""
    id_file = run_dir / "wandb_run_id"
    if not id_file.is_file():
        alphabet = string.ascii_lowercase + string.digits
        id_file.write_text("".join(secrets.choice(alphabet) for _ in range(8)))
    return id_file.read_text().strip()


def _init(mode: str, init_timeout: float, kwargs: dict, run_dir: Path):
    """(``wandb.init(...)``'s run, the mode it runs in). An online init that fails (unreachable
    server, bad key) falls back to offline: never lose the metrics."""
    import wandb

    try:
        return wandb.init(mode=mode, settings=wandb.Settings(init_timeout=init_timeout), **kwargs), mode  # type: ignore[arg-type]  # wandb_mode gives one of its modes
    except Exception as err:  # unreachable server, bad key: never lose the metrics
        if mode != "online":
            raise
        log.warning(OFFLINE_WARNING, str(err).splitlines()[0], run_dir)
        # the failed init keeps the run id registered in W&B's service ("run ID ... is in
        # use"): tear the service down, then the offline run takes the same id, so that a
        # later `wandb sync` continues the run an online resume would have continued
        wandb.teardown()
        return wandb.init(mode="offline", **kwargs), "offline"


class WandbLogger:
    """Mirrors events to W&B: train events as ``train/<key>``, eval events as ``<split>/<key>``."""

    def __init__(self, cfg, run_dir: Path, config: dict, name: str) -> None:
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
                id=_run_id(Path(run_dir)),
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
            log.warning(OFFLINE_WARNING, unreachable, run_dir)
            mode = "offline"
        self.run, self.mode = _init(mode, init_timeout, kwargs, run_dir)
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

    @property
    def offset(self) -> int:
        """A resume does not cut W&B back (it drops rows whose step goes backwards): no offset."""
        return 0

    def sync(self) -> None:
        """W&B uploads (or, offline, writes) on its own schedule; ``finish`` waits for it."""

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
