"""``python -m zobench ... offload=...`` end to end (in process): cpu gives offload=none's losses
and test metric, disk completes with every stored block at the last step."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import SMOKE, zobench_in_process
from zobench.checkpoint import load_tensors
from zobench.offload import DiskStore
from zobench.trajectory.export import export
from zobench.trajectory.log import FILENAME, read
from zobench.trajectory.replay import replay

ARGS = (*SMOKE, "train.steps=3", "train.eval_every=3", "train.log_every=1", "train.keep_best=false")


def _run(tmp_path, monkeypatch, data_dir, name: str, *extra):
    run_dir = tmp_path / name
    result = zobench_in_process(
        *ARGS, f"data.dir={data_dir}", f"hydra.run.dir={run_dir}", *extra, monkeypatch=monkeypatch
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return (
        run_dir,
        [r["loss"] for r in rows if r.get("event") == "train"],
        json.loads((run_dir / "summary.json").read_text()),
    )


@pytest.mark.slow
def test_offloaded_runs_end_to_end(tmp_path, monkeypatch, data_dir):
    _, expected, summary = _run(tmp_path, monkeypatch, data_dir, "none", "train.save_final=true")
    _, losses, offloaded = _run(tmp_path, monkeypatch, data_dir, "cpu", "offload=cpu")
    assert losses == expected and len(losses) == 3
    assert offloaded["test_accuracy"] == summary["test_accuracy"]
    # the trajectory log hashes the stored base weights: offload=cpu's are offload=none's
    hashes = [read(tmp_path / name / FILENAME).header.base_sha256 for name in ("none", "cpu")]
    assert hashes[0] == hashes[1]
    # replay / export of an offload=cpu run: its base is the model loaded whole, as offload=none's,
    # and its replayed last step is the weights offload=none trained (equal to cpu's, bit for bit)
    trained = load_tensors(tmp_path / "none" / "final" / "trainable.safetensors")
    replayed = dict(replay(tmp_path / "cpu", "last").named)
    assert replayed.keys() == trained.keys() and all(torch.equal(replayed[k], v) for k, v in trained.items())
    out = export(tmp_path / "cpu", tmp_path / "exported", step="last")
    assert (out / "README.md").is_file() and any(out.glob("*.safetensors"))
    run_dir, losses, _ = _run(tmp_path, monkeypatch, data_dir, "disk", "offload=disk")
    store = DiskStore(run_dir / "offload", 2)  # the default place: under the run dir
    assert len(losses) == 3 and [store.step(i) for i in range(2)] == [3, 3]
    # replay of an offload=disk *-random run: its base drawn block by block as the run drew it
    replayed = dict(replay(run_dir, "last").named)
    for i in range(2):
        for name, t in store.read(i).items():
            assert torch.equal(replayed[f"model.layers.{i}.{name}"], t), name
    assert export(run_dir, tmp_path / "exported-disk", step="last").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dizo", "mezo_svrg"])
def test_method_with_extra_batches_runs_offloaded_end_to_end(method, tmp_path, monkeypatch, data_dir):
    """DiZO's projection round and MeZO-SVRG's anchor draw their own batches from the loop
    (``bind_data``) and rewrite the evaluated weights (``Engine.transformed``): streamed from
    host memory, the run's losses and test metric are offload=none's; from disk (DiZO) it
    completes with every block, and its θ0 beside it, at the last step."""
    extra = (
        [f"optimizer={method}", "optimizer.interval=2", "optimizer.projection_iters=1"]
        if method == "dizo"
        else [f"optimizer={method}", "optimizer.anchor_examples=4"]
    )
    _, expected, summary = _run(tmp_path, monkeypatch, data_dir, "none", *extra)
    _, losses, streamed = _run(tmp_path, monkeypatch, data_dir, "cpu", "offload=cpu", *extra)
    assert losses == expected and len(losses) == 3
    assert streamed["test_accuracy"] == summary["test_accuracy"]
    if method == "dizo":
        run_dir, losses, _ = _run(tmp_path, monkeypatch, data_dir, "disk", "offload=disk", *extra)
        store = DiskStore(run_dir / "offload", 2)
        assert len(losses) == 3 and [store.step(i) for i in range(2)] == [3, 3]
        assert any(name.endswith("::theta0") for name in store.read(0))
