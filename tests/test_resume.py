"""Runs that survive: SIGKILL at random steps, SIGTERM, divergence; resumed = uninterrupted."""

import json
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import SMOKE, VOLATILE, compose_run
from tests.helpers import run_until as _run_until
from tests.helpers import smoke_cli as _cli
from tests.helpers import stable as _stable
from zobench.checkpoint import load_checkpoint, save_checkpoint
from zobench.errors import CheckpointError
from zobench.run import run


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """Uninterrupted runs, one per checkpoint period (trajectory checkpoints, the default)."""
    out = {}
    for every in (1, 3):
        run_dir = tmp_path_factory.mktemp(f"reference{every}")
        subprocess.run(
            _cli(run_dir, data_dir, f"train.checkpoint_every={every}"), check=True, timeout=300, capture_output=True
        )
        out[every] = run_dir
    return out


MODES = ["trajectory", "weights"]  # train.checkpoint: a run ends the same whichever its checkpoints hold


def _assert_same_run(run_dir: Path, reference: Path):
    assert _stable(run_dir / "summary.json") == _stable(reference / "summary.json")
    assert _stable(run_dir / "metrics.jsonl") == _stable(reference / "metrics.jsonl")
    final, expected = (
        load_file(run_dir / "final/trainable.safetensors"),
        load_file(reference / "final/trainable.safetensors"),
    )
    assert final.keys() == expected.keys()
    for name in final:  # bit-identical parameters
        assert torch.equal(final[name].view(torch.uint8), expected[name].view(torch.uint8)), name
    assert not (run_dir / "checkpoint").exists() and not (run_dir / "best").exists()
    # the log of the resumed run is the uninterrupted run's, byte for byte (replay gives its weights)
    assert (run_dir / "trajectory.bin").read_bytes() == (reference / "trajectory.bin").read_bytes()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.slow
def test_sigkill_at_random_steps_then_restart_is_bit_identical(tmp_path, data_dir, reference, every, mode):
    rng = random.Random(every)
    checked = []
    for trial, kill_step in enumerate(sorted(rng.sample(range(1, 8), 2))):
        run_dir = tmp_path / f"kill{trial}"
        cmd = _cli(run_dir, data_dir, f"train.checkpoint_every={every}", f"train.checkpoint={mode}")
        assert _run_until(cmd, run_dir / "metrics.jsonl", kill_step, signal.SIGKILL) == -signal.SIGKILL
        assert (
            not (run_dir / "summary.json").exists()
            or json.loads((run_dir / "summary.json").read_text())["status"] != "completed"
        )
        saved = load_checkpoint(run_dir / "checkpoint")
        subprocess.run(cmd, check=True, timeout=300, capture_output=True)
        if saved is not None:  # it resumed (a restart from scratch would end the same way, unseen)
            assert f"resumed from step {saved.step}" in (run_dir / "__main__.log").read_text()
            checked.append(saved.step)
        _assert_same_run(run_dir, reference[every])
    assert checked, "no kill landed after a checkpoint: the resume path went untested"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.slow
def test_sigterm_checkpoints_exits_143_and_resumes(tmp_path, data_dir, reference, mode):
    run_dir = tmp_path / "term"
    cmd = _cli(run_dir, data_dir, "train.checkpoint_every=0", f"train.checkpoint={mode}")  # only the signal ones
    assert _run_until(cmd, run_dir / "metrics.jsonl", 3, signal.SIGTERM) == 128 + signal.SIGTERM
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    loop = load_checkpoint(run_dir / "checkpoint").state
    assert loop["step"] >= 3
    subprocess.run(cmd, check=True, timeout=300, capture_output=True)
    # checkpoint periods differ from the reference only in when checkpoints are written
    assert _stable(run_dir / "metrics.jsonl") == _stable(reference[1] / "metrics.jsonl")
    final, expected = (
        load_file(run_dir / "final/trainable.safetensors"),
        load_file(reference[1] / "final/trainable.safetensors"),
    )
    assert all(torch.equal(final[k], expected[k]) for k in final)


@pytest.mark.slow
def test_a_completed_run_dir_is_left_alone(tmp_path, data_dir, reference):
    before = (reference[1] / "metrics.jsonl").read_text()
    subprocess.run(
        _cli(reference[1], data_dir, "train.checkpoint_every=1"), check=True, timeout=300, capture_output=True
    )
    assert (reference[1] / "metrics.jsonl").read_text() == before


def _completed_dir(run_dir: Path, *overrides) -> dict:
    """A run dir as a completed run leaves it (config.yaml and summary.json; nothing else is read)."""
    from omegaconf import OmegaConf

    run_dir.mkdir(parents=True)
    config = OmegaConf.to_container(compose_run(*SMOKE, *overrides), resolve=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    summary = {"status": "completed", "test_accuracy": 0.75, "steps": 2}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return summary


@pytest.mark.parametrize(
    "changed, named",
    [
        (["optimizer.lr=0.5"], "optimizer.lr: 3e-05 -> 0.5"),
        (["train.steps=9"], "train.steps: 2 -> 9"),  # a resume may extend the steps; a completed run may not
        (["task=rte"], "task.name: 'sst2' -> 'rte'"),
    ],
)
def test_a_completed_run_dir_refuses_another_config_naming_the_keys(tmp_path, data_dir, changed, named):
    _completed_dir(tmp_path / "run", "train.steps=2", f"data.dir={data_dir}")
    with pytest.raises(CheckpointError) as err:
        run(compose_run(*SMOKE, "train.steps=2", f"data.dir={data_dir}", *changed), tmp_path / "run")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'run'} holds a completed run of a different config (") and named in message
    assert "hydra.run.dir=<new dir>" in message and "\n" not in message
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test_accuracy"] == 0.75  # left as it was


def test_a_completed_run_dir_answers_its_own_config_whatever_the_logging_keys(tmp_path, data_dir):
    summary = _completed_dir(tmp_path / "run", "train.steps=2", f"data.dir={data_dir}")
    # where it logs and how often (the keys a resume may change too) do not change the result
    smoke = (*SMOKE, "train.steps=2", f"data.dir={data_dir}")
    again = run(compose_run(*smoke, "train.log_every=7", "logger=wandb"), tmp_path / "run")
    assert again == summary


def _nan_after(monkeypatch, calls_ok: int):
    """Make the objective return NaN once, in the call that evaluates forward pass number
    ``calls_ok + 1`` (a call of the ± pair evaluates two)."""
    from zobench.models import CandidateScorer

    original, count = CandidateScorer.loss, {"n": 0}

    def loss(self, batch, replicas=1):
        first = count["n"] + 1
        count["n"] += replicas
        value = original(self, batch, replicas=replicas)
        return torch.full_like(value, float("nan")) if first <= calls_ok + 1 <= count["n"] else value

    monkeypatch.setattr(CandidateScorer, "loss", loss)


@pytest.mark.slow
def test_diverging_run_stops_cleanly_with_its_files_intact(tmp_path, data_dir, monkeypatch):
    _nan_after(monkeypatch, calls_ok=1 + 2 * 2)  # the probe, steps 1-2; NaN in step 3
    summary = run(compose_run(*SMOKE, "train.steps=6", "train.checkpoint_every=1", f"data.dir={data_dir}"), tmp_path)
    assert summary["status"] == "diverged" and summary["steps"] == 3 and summary["test_accuracy"] is None
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["status"] == "diverged"
    events = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["step"] == 3 and events[-1]["projected_grad"] is None  # NaN is written as null
    saved = load_checkpoint(tmp_path / "checkpoint")
    loop, tensors = saved.state, saved.tensors
    assert loop["step"] == 2 and all(torch.isfinite(t).all() for t in tensors.values())


@pytest.mark.slow
def test_skip_policy_drops_the_bad_step_and_finishes(tmp_path, data_dir, monkeypatch):
    _nan_after(monkeypatch, calls_ok=1 + 2 * 2)
    summary = run(
        compose_run(
            *SMOKE, "train.steps=5", "train.on_divergence=skip", "train.save_final=true", f"data.dir={data_dir}"
        ),
        tmp_path,
    )
    assert summary["status"] == "completed" and summary["skipped_steps"] == 1 and summary["forward_passes"] == 10
    final = load_file(tmp_path / "final/trainable.safetensors")
    assert all(torch.isfinite(t).all() for t in final.values())


def test_exploding_weights_are_never_checkpointed(tmp_path, data_dir):
    summary = run(
        compose_run(*SMOKE, "train.steps=5", "train.checkpoint_every=1", "optimizer.lr=1e38", f"data.dir={data_dir}"),
        tmp_path,
    )
    assert summary["status"] == "diverged"
    checkpoint = load_checkpoint(tmp_path / "checkpoint")
    assert checkpoint is None or all(torch.isfinite(t).all() for t in checkpoint.tensors.values())


def test_checkpoint_round_trip_and_atomic_pointer(tmp_path):
    root = tmp_path / "checkpoint"
    save_checkpoint(root, 1, {"w": torch.ones(2)}, {"state": {}, "param_groups": []}, {"step": 1})
    save_checkpoint(root, 2, {"w": torch.zeros(2)}, {"state": {}, "param_groups": []}, {"step": 2})
    saved = load_checkpoint(root)
    loop, tensors = saved.state, saved.tensors
    assert loop == {"step": 2} and torch.equal(tensors["w"], torch.zeros(2))
    assert sorted(p.name for p in root.iterdir()) == ["ckpt-000000002", "latest"]  # older ones removed
    # a torn write (temp dir left by a kill) is ignored: the pointer still names a complete one
    (root / ".ckpt-000000003.tmp").mkdir()
    assert load_checkpoint(root).state == {"step": 2}


def test_a_checkpoint_is_one_dataclass_from_disk_to_the_recipe(tmp_path):
    """``load_checkpoint`` gives a ``Checkpoint``: the loop state, the weights, the optimizer
    state, and what the run reads of them (step, elapsed time, metrics offset, weights or not)."""
    from zobench.checkpoint import Checkpoint
    from zobench.train.state import LoopState

    state = LoopState(step=3, metrics_offset=120, elapsed=4.5).to_dict()
    optimizer_state = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    save_checkpoint(tmp_path / "weights", 3, {"w": torch.arange(3.0)}, optimizer_state, state)
    saved = load_checkpoint(tmp_path / "weights")
    assert isinstance(saved, Checkpoint) and saved.state == state and saved.optimizer_state == optimizer_state
    assert (saved.step, saved.elapsed, saved.metrics_offset, saved.has_weights) == (3, 4.5, 120, True)
    assert torch.equal(saved.tensors["w"], torch.arange(3.0))
    save_checkpoint(tmp_path / "trajectory", 3, {}, {}, state)  # train.checkpoint=trajectory: no weights
    weightless = load_checkpoint(tmp_path / "trajectory")
    assert weightless == Checkpoint(state) and not weightless.has_weights
    assert LoopState.from_dict(weightless.state) == LoopState.from_dict(state)


def test_unreadable_checkpoint_names_the_file(tmp_path):
    root = tmp_path / "checkpoint"
    save_checkpoint(root, 1, {"w": torch.ones(2)}, {"state": {}, "param_groups": []}, {"step": 1})
    (root / "ckpt-000000001" / "trainable.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"ckpt-000000001/trainable\.safetensors is corrupted"):
        load_checkpoint(root)


@pytest.mark.parametrize("name", ["trainable.safetensors", "optimizer.pt", "loop.json"])
def test_a_flipped_byte_in_any_checkpoint_file_is_caught_by_its_checksum(tmp_path, name):
    """A file that still parses (one byte of a weight changed) would resume silently without it."""
    root = tmp_path / "checkpoint"
    save_checkpoint(root, 1, {"w": torch.ones(4)}, {"state": {}, "param_groups": []}, {"step": 1, "x": 12345})
    path = root / "ckpt-000000001" / name
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's bytes / the pickle / the JSON number
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"ckpt-000000001/{re.escape(name)} is corrupted"):
        load_checkpoint(root)


@pytest.mark.parametrize("damage", ["manifest", "pointer"])
def test_damaged_checkpoint_side_files_are_one_clear_error(tmp_path, damage):
    root = tmp_path / "checkpoint"
    save_checkpoint(root, 1, {"w": torch.ones(2)}, {"state": {}, "param_groups": []}, {"step": 1})
    if damage == "manifest":
        (root / "ckpt-000000001" / "manifest.json").write_text("{not json")
    else:
        (root / "latest").write_text("ckpt-000000007")
    with pytest.raises(CheckpointError, match=r"is unreadable .*; delete .*checkpoint to start the run afresh"):
        load_checkpoint(root)


# trajectory: no best files; offload: offload=disk, each step's write-back of the store's blocks too
@pytest.mark.parametrize(("mode", "least"), [("weights", 25), ("trajectory", 15), ("offload", 40)])
@pytest.mark.slow
@pytest.mark.timeout(1800)  # 33 crash points x 2 tiny runs of ~4 CPU-seconds each: ~5 CPU-minutes
def test_every_write_of_checkpoints_and_finishing_survives_a_kill(tmp_path, data_dir, mode, least):
    """The crash-point test: a kill before each write (os.replace / unlink / rmtree / save_file /
    torch.save) of a 4-step run with 2 checkpoints, best-dev files and save_final, then a restart:
    the dir must end as the uninterrupted run did (summary, metrics, final weights byte for
    byte, no checkpoint/ or best/ left). Kills at random instants are the test above."""
    out = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "tests.crash_points", str(out), str(data_dir), str(tmp_path), mode],
        check=True,
        timeout=1800,
        capture_output=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    report = json.loads(out.read_text())
    assert report["writes"] >= least and report["done"] == report["writes"]  # the run's writes were all visited
    assert report["failures"] == []


@pytest.mark.slow
def test_a_completed_dir_with_leftovers_is_cleaned_and_stays_completed(tmp_path, data_dir):
    args = (*SMOKE, "train.steps=2", "train.checkpoint_every=1", f"data.dir={data_dir}")
    summary = run(compose_run(*args), tmp_path)
    # a kill after the summary and before the clean-up: checkpoint/ and best/ are still there
    (tmp_path / "checkpoint" / "ckpt-000000002").mkdir(parents=True)
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "step-000000001.safetensors").write_bytes(b"x")
    again = run(compose_run(*args), tmp_path)
    assert again == summary and not (tmp_path / "checkpoint").exists() and not (tmp_path / "best").exists()


def _stop_after_a_checkpoint(monkeypatch):
    """The run dies (as a kill would) right after writing its first checkpoint."""
    import zobench.dist.strategy as writer  # the recipe's strategy calls save_checkpoint

    save = writer.save_checkpoint

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise SystemExit(9)

    monkeypatch.setattr(writer, "save_checkpoint", save_then_die)


@pytest.mark.slow
def test_a_metrics_file_shorter_than_the_checkpoint_says_is_refused_not_padded(tmp_path, data_dir, monkeypatch):
    args = (*SMOKE, "train.steps=4", "train.checkpoint_every=2", "train.log_every=1", f"data.dir={data_dir}")
    _stop_after_a_checkpoint(monkeypatch)
    with pytest.raises(SystemExit):
        run(compose_run(*args), tmp_path)
    monkeypatch.undo()
    (tmp_path / "summary.json").unlink()
    metrics = tmp_path / "metrics.jsonl"  # loses its tail (a copy cut short, a file system without fsync)
    metrics.write_bytes(metrics.read_bytes()[:10])
    with pytest.raises(
        CheckpointError,
        match=r"metrics\.jsonl holds 10 bytes, fewer than the \d+ the checkpoint "
        r"recorded",
    ):
        run(compose_run(*args), tmp_path)
    assert metrics.read_bytes() == metrics.read_bytes()[:10] and b"\0" not in metrics.read_bytes()


@pytest.mark.slow
def test_resuming_with_fewer_steps_than_the_checkpoint_is_refused(tmp_path, data_dir, monkeypatch):
    args = (*SMOKE, "train.checkpoint_every=2", f"data.dir={data_dir}")
    _stop_after_a_checkpoint(monkeypatch)
    with pytest.raises(SystemExit):
        run(compose_run(*args, "train.steps=4"), tmp_path)
    monkeypatch.undo()
    with pytest.raises(
        CheckpointError,
        match=r"train\.steps=1: .*checkpoint is at step 2; resume it with "
        r"train\.steps >= 2",
    ):
        run(compose_run(*args, "train.steps=1"), tmp_path)
    summary = run(compose_run(*args, "train.steps=3"), tmp_path)  # more steps: resumed and finished
    assert summary["status"] == "completed" and summary["steps"] == 3


@pytest.mark.slow
def test_no_dev_set_reports_the_tested_step_honestly(tmp_path, data_dir):
    """num_dev=0: there is no best-dev state; the last step's weights are tested and said so."""
    summary = run(compose_run(*SMOKE, "train.steps=3", "data.num_dev=0", f"data.dir={data_dir}"), tmp_path)
    assert summary["best_step"] is None and summary["tested_step"] == 3 and summary["dev_accuracy"] is None
    test_event = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert test_event["split"] == "test" and test_event["step"] == 3
    with_dev = run(compose_run(*SMOKE, "train.steps=3", "train.eval_every=1", f"data.dir={data_dir}"), tmp_path / "d")
    assert with_dev["tested_step"] == with_dev["best_step"] is not None


@pytest.mark.slow
def test_metrics_are_fsynced_before_a_checkpoint_or_the_summary_vouches_for_them(tmp_path, data_dir, monkeypatch):
    """Durability where it is promised: a checkpoint records metrics.jsonl's length and the
    summary closes it, so the file is fsynced before each (else a power loss could leave a
    checkpoint pointing past the end of the metrics)."""
    import os

    events, fsync, replace = [], os.fsync, os.replace

    def recording_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def recording_replace(src, dst):
        events.append(("replace", str(dst)))
        return replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    run(
        compose_run(*SMOKE, "train.steps=4", "train.checkpoint_every=2", "train.log_every=1", f"data.dir={data_dir}"),
        tmp_path,
    )
    monkeypatch.undo()
    metrics = str(tmp_path / "metrics.jsonl")
    commits = [
        i
        for i, (op, path) in enumerate(events)
        if op == "replace" and (path.endswith("/checkpoint/latest") or path.endswith("/summary.json"))
    ]
    assert len(commits) == 3  # two checkpoints and the summary
    previous = 0
    for i in commits:
        assert ("fsync", metrics) in events[previous:i], events[previous:i]
        previous = i


@pytest.mark.slow
def test_a_checkpoint_whose_best_state_is_gone_starts_afresh_and_ends_the_same(tmp_path, data_dir, monkeypatch):
    """Dirs killed by an older zobench between removing best/ and writing the summary: the run
    neither fails forever nor resumes without its best-dev weights; it starts again (weight
    checkpoints: trajectory checkpoints keep a step number, no best-dev file)."""
    args = (*SMOKE, "train.steps=4", "train.eval_every=1", "train.checkpoint_every=2", "train.checkpoint=weights")
    args = (*args, f"data.dir={data_dir}")
    reference = run(compose_run(*args), tmp_path / "reference")
    _stop_after_a_checkpoint(monkeypatch)
    with pytest.raises(SystemExit):
        run(compose_run(*args), tmp_path / "run")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / "checkpoint").state["best_file"]
    shutil.rmtree(tmp_path / "run" / "best")
    summary = run(compose_run(*args), tmp_path / "run")
    assert {k: v for k, v in summary.items() if k not in VOLATILE} == {
        k: v for k, v in reference.items() if k not in VOLATILE
    }
