"""``python -m zobench ... offload=...`` end to end (in process): cpu and disk give offload=none's
losses, best-dev step, test metric (of the best step, rebuilt block by block: ``train.keep_best``)
and saved weights (``train.save_final``: a sharded checkpoint written block by block); the methods
that draw their own batches (DiZO, MeZO-SVRG) stream end to end."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from tests.helpers import SMOKE, zobench_in_process
from zobench.checkpoint import load_tensors
from zobench.offload import DiskStore
from zobench.trajectory.export import export
from zobench.trajectory.log import FILENAME, read
from zobench.trajectory.replay import replay

# dev evaluations every step, keep_best (the default) and save_final: the best-dev step (1 on this
# data) is before the last, so the test evaluation rebuilds it
ARGS = (*SMOKE, "train.steps=3", "train.eval_every=1", "train.log_every=1", "train.save_final=true")


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
    _, expected, summary = _run(tmp_path, monkeypatch, data_dir, "none")
    assert summary["best_step"] == summary["tested_step"] < 3  # the rebuild is what is tested
    _, losses, offloaded = _run(tmp_path, monkeypatch, data_dir, "cpu", "offload=cpu")
    assert losses == expected and len(losses) == 3
    _same_result(offloaded, summary, tmp_path / "none" / "final", tmp_path / "cpu" / "final")
    # the trajectory log hashes the stored base weights: offload=cpu's are offload=none's
    hashes = [read(tmp_path / name / FILENAME).header.base_sha256 for name in ("none", "cpu")]
    assert hashes[0] == hashes[1]
    # replay / export of an offload=cpu run: its base is the model loaded whole, as offload=none's,
    # and its replayed last step is the weights offload=none trained (equal to cpu's, bit for bit)
    tested = load_tensors(tmp_path / "none" / "final" / "trainable.safetensors")
    replayed = dict(replay(tmp_path / "cpu", "best").named)
    assert replayed.keys() == tested.keys() and all(torch.equal(replayed[k], v) for k, v in tested.items())
    out = export(tmp_path / "cpu", tmp_path / "exported", step="last")
    assert (out / "README.md").is_file() and any(out.glob("*.safetensors"))
    run_dir, losses, offloaded = _run(tmp_path, monkeypatch, data_dir, "disk", "offload=disk")
    assert losses == expected
    _same_result(offloaded, summary, tmp_path / "none" / "final", run_dir / "final")
    store = DiskStore(run_dir / "offload", 2)  # the default place: under the run dir
    # the store holds the tested (best) step's blocks: the test evaluation's rebuild wrote them
    assert [store.step(i) for i in range(2)] == [summary["best_step"]] * 2
    replayed = dict(replay(run_dir, "best").named)  # whole, from offload=none's base
    for i in range(2):
        for name, t in store.read(i).items():
            assert torch.equal(replayed[f"model.layers.{i}.{name}"], t), name
    assert export(run_dir, tmp_path / "exported-disk", step="last").is_dir()


def _same_result(offloaded: dict, summary: dict, none_final, final) -> None:
    """An offloaded run's best step, test metric and ``final/`` (a sharded checkpoint) are
    offload=none's (``final/trainable.safetensors``)."""
    assert (offloaded["best_step"], offloaded["tested_step"]) == (summary["best_step"], summary["tested_step"])
    assert offloaded["test_accuracy"] == summary["test_accuracy"]
    assert (final / "model.safetensors.index.json").is_file() and not (final / "trainable.safetensors").exists()
    saved = dict(transformers.AutoModelForCausalLM.from_pretrained(final).named_parameters())
    tested = load_tensors(none_final / "trainable.safetensors")
    assert tested.keys() <= saved.keys() and all(torch.equal(saved[k], v) for k, v in tested.items())


@pytest.mark.slow
@pytest.mark.parametrize(("method", "mode"), [("mezo", "disk"), ("zo_adam", "cpu")])
def test_weights_checkpoint_of_an_offloaded_run_resumes_as_offload_none(method, mode, tmp_path, data_dir, caplog):
    """``train.checkpoint=weights`` with offload: the checkpoint holds the resident layers and the
    optimizer state, its pin folder the blocks flushed to its step (offload=cpu: written there);
    a run stopped by a signal mid-way and resumed (no replay) ends as the uninterrupted
    offload=none run: metrics, best step, test metric, final weights. ZO-Adam: its moments stream
    in the block files, so they are in the pin too."""
    from tests.helpers import compose_run, signal_at_loss_call, stable
    from zobench.run import run

    args = (
        *SMOKE,
        f"optimizer={method}",
        "train.steps=5",
        "train.eval_every=1",
        "train.log_every=1",
        "train.save_final=true",
        "train.checkpoint=weights",
        "train.checkpoint_every=0",  # only the signal's checkpoint
        f"data.dir={data_dir}",
    )
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    expected = run(compose_run(*args), reference)
    with pytest.MonkeyPatch.context() as patch:
        signal_at_loss_call(patch, 4)
        stopped = run(compose_run(*args, f"offload={mode}"), resumed)
    assert stopped["status"] == "interrupted" and 1 <= stopped["steps"] < 5, stopped
    pinned = resumed / "checkpoint" / f"offload-{stopped['steps']:09d}"
    assert sorted(p.name for p in pinned.iterdir()) == [
        "block-00000.safetensors",
        "block-00001.safetensors",
        "store.json",
    ]
    with caplog.at_level("INFO", logger="zobench"):
        summary = run(compose_run(*args, f"offload={mode}"), resumed)
    assert f"resumed from step {stopped['steps']}" in caplog.text
    assert summary["status"] == "completed" and summary["best_step"] == expected["best_step"]
    assert summary["test_accuracy"] == expected["test_accuracy"]
    assert stable(resumed / "metrics.jsonl") == stable(reference / "metrics.jsonl")
    _same_result(summary, expected, reference / "final", resumed / "final")
    assert not (resumed / "checkpoint").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dizo", "mezo_svrg"])
def test_method_with_extra_batches_runs_offloaded_end_to_end(method, tmp_path, monkeypatch, data_dir):
    """DiZO's projection round and MeZO-SVRG's anchor draw their own batches from the loop
    (``bind_data``) and rewrite the evaluated weights (``Engine.transformed``): streamed from
    host memory, the run's losses and test metric are offload=none's; from disk (DiZO) it
    completes with every block, and its θ0 beside it, at the tested step (``keep_best`` rebuilt
    the best-dev step in the store)."""
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
        run_dir, losses, stored = _run(tmp_path, monkeypatch, data_dir, "disk", "offload=disk", *extra)
        store = DiskStore(run_dir / "offload", 2)
        assert losses == expected and stored["test_accuracy"] == summary["test_accuracy"]
        assert [store.step(i) for i in range(2)] == [stored["tested_step"]] * 2
        assert any(name.endswith("::theta0") for name in store.read(0))
