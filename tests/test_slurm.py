"""The cluster path for real: a one-node Slurm cluster on localhost (munged, slurmctld, slurmd from
Debian's slurm-wlm and munge, all in a temporary folder), zobench sweeps submitted through
hydra-submitit-launcher (``hydra/launcher=local_slurm``).

* a 2-job smoke sweep completes both run dirs;
* a job cancelled with ``scancel`` (SIGTERM) after a checkpoint and submitted again resumes from it;
* a job sent submitit's preemption signal (SIGUSR2) checkpoints, is requeued by submitit and
  resumes in the same run dir without anyone resubmitting it, also when the requeue's SIGTERM
  reaches submitit's ``scontrol requeue`` before it exits.

Needs root (the daemons run as root here) and the Slurm and munge binaries; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[1]
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,  # a cluster's daemons, sbatch jobs in fresh interpreters
    pytest.mark.skipif(
        any(shutil.which(b) is None for b in BINARIES),
        reason="Slurm/munge binaries missing (apt-get install slurm-wlm munge)",
    ),
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the one-node test cluster runs its daemons as root"
    ),
]


class LocalCluster:
    """munged + slurmctld + slurmd on localhost, every file under ``root``; ``env`` points the
    Slurm clients (sbatch, squeue, ...) at it through SLURM_CONF."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen] = []
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)  # munged refuses keys and sockets in folders others can write
        for sub in ("state", "spool", "munge"):
            (root / sub).mkdir(exist_ok=True)
            os.chmod(root / sub, 0o700)
        self.socket = root / "munge" / "munge.socket"
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        host = socket.gethostname().split(".")[0]
        cpus = os.cpu_count() or 1
        self.conf = root / "slurm.conf"
        # cred_expire: a requeued job waits that long before it may start again (default 120 s)
        self.conf.write_text(f"""\
ClusterName=zobench
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket},cred_expire=10
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=20
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._start(
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={self.socket}",
                f"--key-file={key}",
                f"--pid-file={root / 'munge' / 'munged.pid'}",
                f"--log-file={root / 'munge' / 'munged.log'}",
                f"--seed-file={root / 'munge' / 'munged.seed'}",
            ],
            wait_for=self.socket,
        )
        self._start(["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._start(["slurmd", "-D", "-f", str(self.conf)])
        self._wait_until_idle()

    def _start(self, argv: list[str], wait_for: Path | None = None) -> None:
        log = open(self.root / f"{argv[0]}.out", "w")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env))
        deadline = time.monotonic() + 20
        while wait_for is not None and not wait_for.exists():
            if time.monotonic() > deadline or self.procs[-1].poll() is not None:
                raise RuntimeError(f"{argv[0]} did not start: {(self.root / f'{argv[0]}.out').read_text()}")
            time.sleep(0.1)

    def _wait_until_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=self.env)
            out = done.stdout.strip() + done.stderr.strip()
            if done.returncode == 0 and out in ("idle", "mix", "alloc"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the test cluster did not come up (sinfo: {out!r}); logs in {self.root}")

    def run(self, *argv: str) -> str:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env, check=True).stdout

    def jobs(self) -> list[tuple[str, str]]:
        """(job id, state) of every job Slurm still lists."""
        out = self.run("squeue", "-h", "-o", "%i %T")
        return [tuple(line.split()) for line in out.splitlines() if line.strip()]

    def stop(self) -> None:
        """Cancel what is left, let the jobs finish (a job step whose daemons vanish lingers), stop
        the daemons, then end any process still carrying this cluster's SLURM_CONF."""
        subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.jobs():
            time.sleep(0.5)
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for pid in self._leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _leftover_pids(self) -> list[int]:
        """Processes started by this cluster: they inherited its SLURM_CONF (slurmstepd, srun, jobs)."""
        marker = f"SLURM_CONF={self.conf}".encode() + b"\0"
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "environ").read_bytes() + b"\0":
                        pids.append(int(entry.name))
                except OSError:  # gone, or not ours to read
                    pass
        return pids


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("slurm"))
    yield c
    c.stop()


SMOKE_RUN = "data.num_dev=16,data.num_eval=32,data.num_train=32,model=tiny-llama,task=sst2,"


def smoke_sweep(sweep_dir: Path, data_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "zobench",
        "-m",
        "hydra/launcher=local_slurm",
        f"hydra.sweep.dir={sweep_dir}",
        "model=tiny-llama",
        "task=sst2",
        "logger=none",
        "data.num_train=32",
        "data.num_dev=16",
        "data.num_eval=32",
        f"data.dir={data_dir}",
        *overrides,
    ]


def submit(cluster: LocalCluster, argv: list[str], cwd: Path, extra_env: dict | None = None) -> subprocess.Popen:
    """The Hydra multirun process: it submits the jobs and waits for them (as a user would);
    its environment, ``extra_env`` included, is the jobs' (sbatch exports it)."""
    env = {**cluster.env, "PYTHONPATH": str(REPO / "src"), **(extra_env or {})}
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout: float, what: str, cluster: LocalCluster) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; jobs: {cluster.jobs()}; logs in {cluster.root}")
        time.sleep(0.5)


def summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def job_log(sweep_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((sweep_dir / ".submitit").rglob("*.err")))


def test_a_smoke_table_runs_through_the_cluster_and_reports(cluster, tmp_path, data_dir):
    """A 2-job smoke sweep of a paper table (experiment=sparse_mezo_smoke, one task: MeZO and
    Sparse-MeZO) through the submitit launcher, then its table from the run dirs."""
    sweep_dir = tmp_path / "sweep"
    argv = [
        sys.executable,
        "-m",
        "zobench",
        "-m",
        "experiment=sparse_mezo_smoke",
        "hydra/launcher=local_slurm",
        f"hydra.sweep.dir={sweep_dir}",
        "task=rte",
        "train.steps=6",
        "train.eval_every=3",
        f"data.dir={data_dir}",
    ]
    proc = submit(cluster, argv, tmp_path)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:] + job_log(sweep_dir)[-3000:]
    for optimizer in ("mezo", "sparse_mezo"):
        s = summary(sweep_dir / f"lr_step=high,optimizer={optimizer},task=rte,train.eval_every=3,train.steps=6")
        assert s.get("status") == "completed" and s["steps"] == 6 and s["optimizer"] == optimizer, (optimizer, s)
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "zobench.report",
            str(sweep_dir),
            "--table",
            "sparse_mezo",
            "--smoke",
            "--out",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert report.returncode == 0, report.stderr[-2000:]
    cells = {
        tuple(c.strip() for c in line.split("|")[1:4]) for line in report.stdout.splitlines() if line.startswith("| ")
    }
    filled = {(method, task) for method, task, ours in cells if ours not in ("—", "ours (%)")}
    assert filled == {("MeZO", "RTE"), ("Sparse-MeZO", "RTE")}, report.stdout


def test_scancelled_job_resumes_when_submitted_again(cluster, tmp_path, data_dir):
    sweep_dir = tmp_path / "sweep"  # the run's folder: its overrides (not data.dir, train.checkpoint_every)
    run_dir = sweep_dir / (SMOKE_RUN + "train.eval_every=100,train.steps=100")
    argv = smoke_sweep(sweep_dir, data_dir, "train.steps=100", "train.checkpoint_every=5", "train.eval_every=100")
    proc = submit(cluster, argv, tmp_path)
    wait_for(lambda: (run_dir / "checkpoint" / "latest").is_file(), 180, "a first checkpoint", cluster)
    ((job_id, _),) = cluster.jobs()
    cluster.run("scancel", job_id)  # SIGTERM: the run checkpoints after its step and exits
    wait_for(lambda: not cluster.jobs(), 60, "the cancelled job to leave the queue", cluster)
    # submitit learns a job's end from sacct, which this cluster lacks (no slurmdbd): for a job that
    # left no result the launcher would wait forever, so it is stopped here
    proc.terminate()
    proc.communicate(timeout=60)
    first = summary(run_dir)
    assert first.get("status") == "interrupted" and first["signal"] == "SIGTERM", first
    assert 0 < first["steps"] < 100

    again = submit(cluster, argv, tmp_path)  # the same command, the same sweep dir
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:] + job_log(sweep_dir)[-3000:]
    assert summary(run_dir)["status"] == "completed" and summary(run_dir)["steps"] == 100
    log = (run_dir / "__main__.log").read_text()
    assert f"resumed from step {first['steps']}" in log, log[-2000:]


def test_a_two_task_job_is_one_run_of_two_ranks(cluster, tmp_path, data_dir):
    """hydra.launcher.tasks_per_node=2: the two Slurm tasks find each other from the Slurm
    environment (zobench.dist.context) and make one run dir, written by rank 0."""
    sweep_dir = tmp_path / "sweep"
    argv = smoke_sweep(
        sweep_dir, data_dir, "train.steps=4", "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1"
    )
    proc = submit(cluster, argv, tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:] + job_log(sweep_dir)[-3000:]
    (run_dir,) = [p.parent for p in sweep_dir.rglob("summary.json")]
    result = summary(run_dir)
    assert result["status"] == "completed" and result["world_size"] == 2 and result["forward_passes"] == 8


def lingering_scontrol(folder: Path) -> dict:
    """An ``scontrol`` first on PATH whose ``requeue`` lingers after the real one has requeued the
    job: Slurm's SIGTERM to the requeued job's step then reaches it, as it did on CI's loaded cores
    (submitit's ``check_call`` raises; the job must still count as requeued)."""
    folder.mkdir()
    wrapper = folder / "scontrol"
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$1" = requeue ]; then {shutil.which("scontrol")} "$@" && exec sleep 60; fi\n'
        f'exec {shutil.which("scontrol")} "$@"\n'
    )
    wrapper.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("requeue", ["prompt", "outlived"])
def test_preempted_job_is_requeued_by_submitit_and_resumes(cluster, tmp_path, data_dir, requeue):
    sweep_dir = tmp_path / "sweep"
    run_dir = sweep_dir / (SMOKE_RUN + "train.eval_every=100,train.steps=100")
    argv = smoke_sweep(
        sweep_dir,
        data_dir,
        "train.steps=100",
        "train.checkpoint_every=1000",
        "train.eval_every=100",
        "train.log_every=5",
    )
    extra_env = lingering_scontrol(tmp_path / "bin") if requeue == "outlived" else {}
    proc = submit(cluster, argv, tmp_path, extra_env)
    wait_for(
        lambda: (run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").stat().st_size > 0,
        180,
        "training to start",
        cluster,
    )
    ((job_id, _),) = cluster.jobs()
    # what Slurm does signal_delay_s before a time limit, and what submitit's own tests send
    cluster.run("scancel", "--signal=USR2", job_id)
    out, _ = proc.communicate(timeout=300)  # the launcher waits through the requeue for the final result
    assert proc.returncode == 0, out[-3000:] + job_log(sweep_dir)[-3000:]
    s = summary(run_dir)
    assert s["status"] == "completed" and s["steps"] == 100, s
    log = (run_dir / "__main__.log").read_text()
    assert "received SIGUSR2: checkpointing after this step" in log
    assert "resumed from step" in log, log[-2000:]
    if requeue == "outlived":
        assert "scontrol requeue was ended by the requeue's own SIGTERM" in log, log[-2000:]
