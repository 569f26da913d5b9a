"""Who this process is in a multi-rank run, and the process group it talks through.

A run is multi-rank when its launcher says so: ``torchrun`` sets ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``; a Slurm job step of several tasks (srun, or
hydra-submitit-launcher with ``tasks_per_node`` / ``nodes``) sets ``SLURM_PROCID`` /
``SLURM_NTASKS`` / ``SLURM_LOCALID``, and the rendezvous is the job's first node (submitit's
``JobEnvironment`` or ``scontrol show hostnames``) on a port derived from the job id, so every
task computes the same address without talking. Anything else is one process: no
``init_process_group`` at all, and every hook of this package is a no-op (the single-process path
is today's, bit for bit).

The process group (``torch.distributed.init_process_group``) uses NCCL on CUDA and Gloo on CPU
(``dist.backend=auto``), with ``timeout=dist.timeout_s``: a peer that died makes every collective
of the others raise within that time, so no rank hangs (docs/design.md "Distributed").
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import subprocess
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist

from ..config.schema import DIST_BACKENDS, DIST_MODES
from ..errors import ConfigError

log = logging.getLogger(__name__)

MODES = DIST_MODES  # dist.mode, dist.backend: the config's choices
BACKENDS = DIST_BACKENDS


@dataclass
class DistContext:
    """This process's place in the run: ``rank`` of ``world_size`` (``local_rank`` on its node);
    ``mode``: ``data`` or ``directions`` (``dist.mode=auto`` is ``data``); ``sent`` counts the
    payload bytes each phase's collectives moved (``train``: the step's loss reductions)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    mode: str = "data"
    backend: str = ""
    sent: dict = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        """Rank 0: the one process that writes the run dir."""
        return self.rank == 0

    def count(self, phase: str, tensor: torch.Tensor) -> None:
        self.sent[phase] = self.sent.get(phase, 0) + tensor.numel() * tensor.element_size()

    def all_reduce(self, tensor: torch.Tensor, op=None, phase: str = "other") -> torch.Tensor:
        """``tensor`` reduced over the ranks (SUM unless ``op``), in place on the backend's device."""
        device = self.device()
        moved = tensor.to(device)
        tdist.all_reduce(moved, op=op or tdist.ReduceOp.SUM)
        self.count(phase, moved)
        return moved.to(tensor.device)

    def gather_objects(self, obj) -> list:
        """``obj`` of every rank, in rank order (small Python objects: per-example predictions)."""
        out: list = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def device(self) -> torch.device:
        """Where collectives' tensors live: NCCL moves CUDA tensors only."""
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


_CURRENT = DistContext()


def current() -> DistContext:
    """The context of this process (world size 1 until ``setup`` found a multi-rank launch)."""
    return _CURRENT


def _int_env(env, name: str, default: int | None = None) -> int:
    """An integer the launcher set; anything else is one line naming the variable."""
    text = env.get(name)
    if text in (None, "") and default is not None:
        return default
    try:
        return int(str(text).strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected an integer (set by torchrun or Slurm)") from None


def launch_env(env=None) -> dict | None:
    """``{rank, world_size, local_rank, master_addr, master_port}`` from torchrun's or Slurm's
    environment, or None for a single process (a one-task Slurm job included). A value that
    cannot be (a rank that is not an integer, or not below the world size) is a ConfigError
    naming the variable: torch would otherwise wait for ranks that never come."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun (it also sets MASTER_ADDR / PORT)
        found = {
            "rank": _int_env(env, "RANK"),
            "world_size": _int_env(env, "WORLD_SIZE"),
            "local_rank": _int_env(env, "LOCAL_RANK", 0),
            "master_addr": env.get("MASTER_ADDR", "127.0.0.1"),
            "master_port": _int_env(env, "MASTER_PORT", 29500),
        }
        return _checked(found, ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"))
    if _int_env(env, "SLURM_NTASKS", 1) > 1 and "SLURM_PROCID" in env:
        job = _int_env(env, "SLURM_JOB_ID", 0)
        found = {
            "rank": _int_env(env, "SLURM_PROCID"),
            "world_size": _int_env(env, "SLURM_NTASKS"),
            "local_rank": _int_env(env, "SLURM_LOCALID", 0),
            "master_addr": env.get("MASTER_ADDR") or _first_slurm_node(env),
            # a port per job, the same on every task; 20000..31999 stays below Linux's ephemeral
            # range (32768-60999), where Gloo's listeners and connections take theirs
            "master_port": _int_env(env, "MASTER_PORT", 20000 + job % 12000),
        }
        return _checked(found, ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "MASTER_PORT"))
    return None


def _checked(found: dict, names: tuple[str, str, str, str]) -> dict:
    """``0 <= rank < world_size``, ``local_rank >= 0``, a TCP port: else one line naming the variable."""
    rank, world, local, port = names
    if found["world_size"] < 1:
        raise ConfigError(f"{world}={found['world_size']}: expected the number of ranks, >= 1")
    if not 0 <= found["rank"] < found["world_size"]:
        raise ConfigError(
            f"{rank}={found['rank']}: expected 0..{found['world_size'] - 1} ({world}={found['world_size']})"
        )
    if found["local_rank"] < 0:
        raise ConfigError(f"{local}={found['local_rank']}: expected an integer >= 0")
    if not 0 <= found["master_port"] <= 65535:
        raise ConfigError(f"{port}={found['master_port']}: expected a TCP port, 0..65535")
    return found


def _first_slurm_node(env) -> str:
    """The job's first host: submitit's JobEnvironment when present, else ``scontrol``."""
    try:
        import submitit

        return submitit.JobEnvironment().hostnames[0]
    except Exception:  # noqa: BLE001 - not under submitit: ask Slurm
        nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "localhost"
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
            return out.stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            return nodes.split(",")[0]


def check_nccl(local_rank: int) -> None:
    """NCCL needs a CUDA device per rank: on a machine without one (``dist.backend=nccl`` on CPU)
    or with fewer than ``LOCAL_RANK + 1``, one line instead of torch's error from ``set_device``."""
    if not torch.cuda.is_available():
        raise ConfigError("dist.backend=nccl needs CUDA, and this machine has none; use dist.backend=gloo (or auto)")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK={local_rank}: this node has {torch.cuda.device_count()} CUDA device(s); start at most "
            f"that many ranks per node with dist.backend=nccl"
        )


def resolve_backend(name: str) -> str:
    """``auto``: NCCL when this process has a GPU, Gloo otherwise."""
    if name != "auto":
        return name
    return "nccl" if torch.cuda.is_available() else "gloo"


def setup(dist_cfg, env=None) -> DistContext:
    """Join the process group the launcher describes (once per process; later calls return the
    same context). ``dist_cfg``: the ``dist`` config node (mode, backend, timeout_s)."""
    global _CURRENT
    found = launch_env(env)
    if found is None or found["world_size"] <= 1 or _CURRENT.active:
        return _CURRENT
    backend = resolve_backend(str(dist_cfg.backend))
    if backend == "nccl":
        check_nccl(found["local_rank"])
        torch.cuda.set_device(found["local_rank"])
    if not tdist.is_initialized():
        # torchrun: its agent's store (env://; its MASTER_PORT may be 0 with --master-port 0);
        # Slurm: rank 0 of the job opens the store at the derived address
        torchrun = "RANK" in (os.environ if env is None else env)
        address = "env://" if torchrun else f"tcp://{found['master_addr']}:{found['master_port']}"
        try:
            tdist.init_process_group(
                backend,
                init_method=address,
                rank=found["rank"],
                world_size=found["world_size"],
                timeout=datetime.timedelta(seconds=float(dist_cfg.timeout_s)),
            )
        except (RuntimeError, ValueError) as err:  # torch.distributed's errors are RuntimeErrors (DistError)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"rank {found['rank']} of {found['world_size']} could not join the process group at "
                f"{found['master_addr']}:{found['master_port']} ({first}); check MASTER_ADDR / MASTER_PORT "
                "and that every rank was started"
            ) from err
        # leave the group before the interpreter tears down (a run started through the API; the
        # command line exits past the teardown instead: ``zobench.__main__.end_rank``)
        atexit.register(leave)
    mode = "data" if dist_cfg.mode == "auto" else str(dist_cfg.mode)
    _CURRENT = DistContext(found["rank"], found["world_size"], found["local_rank"], mode, backend)
    if not _CURRENT.leader:  # the run's log is rank 0's; the others speak up for problems only
        logging.getLogger("zobench").setLevel(logging.WARNING)
    return _CURRENT


def leave(barrier: bool = False) -> bool:
    """Destroy the process group (at exit: registered by ``setup``), after a barrier if asked
    (every rank done with the store rank 0 serves); False if there was none."""
    if not tdist.is_initialized():
        return False
    if barrier:
        tdist.barrier()
    tdist.destroy_process_group()
    return True


def reset() -> None:
    """Leave the process group (tests, and the end of a run)."""
    global _CURRENT
    leave()
    _CURRENT = DistContext()
