"""Streamed replay / export (``trajectory/stream.py``): an offloaded run's weights rebuilt block by
block and written as a sharded checkpoint equal, bit for bit, the whole-model replay and export."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from tests.helpers import SMOKE, zobench_in_process
from zobench.cli.replay import main as replay_main
from zobench.offload import DiskStore
from zobench.trajectory.export import export
from zobench.trajectory.replay import replay

ARGS = (*SMOKE, "train.steps=3", "train.eval_every=3", "train.log_every=1")


@pytest.fixture(scope="module")
def offloaded_run(tmp_path_factory, data_dir):
    """A 3-step ``offload=disk`` MeZO run of the tiny random Llama (in process)."""
    run_dir = tmp_path_factory.mktemp("stream") / "run"
    monkeypatch = pytest.MonkeyPatch()
    try:
        result = zobench_in_process(
            *ARGS, "offload=disk", f"data.dir={data_dir}", f"hydra.run.dir={run_dir}", monkeypatch=monkeypatch
        )
    finally:
        monkeypatch.undo()
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def _loaded(folder) -> dict[str, torch.Tensor]:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    return dict(model.state_dict())


@pytest.mark.slow
def test_streamed_replay_equals_the_whole_replay_and_the_trained_store(offloaded_run, tmp_path, capsys):
    whole = dict(replay(offloaded_run, "last").named)
    replay_main([str(offloaded_run), "--out", str(tmp_path / "streamed")])  # auto: the run was offloaded
    assert "streamed block by block" in capsys.readouterr().out
    folder = tmp_path / "streamed"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3  # resident layers + one shard per block
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # work and temporary folders gone
    loaded = _loaded(folder)
    for name, t in whole.items():
        assert torch.equal(loaded[name], t), name
    store = DiskStore(offloaded_run / "offload", 2)  # the run's trained blocks, step 3
    for i in range(2):
        for name, t in store.read(i).items():
            assert torch.equal(loaded[f"model.layers.{i}.{name}"], t), name
    # a step before the last, and the whole replay forced with --stream off
    replay_main([str(offloaded_run), "--step", "1", "--out", str(tmp_path / "s1")])
    replay_main([str(offloaded_run), "--step", "1", "--out", str(tmp_path / "w1"), "--stream", "off"])
    from safetensors.torch import load_file

    first = load_file(tmp_path / "w1" / "trainable.safetensors")
    loaded = _loaded(tmp_path / "s1")
    assert all(torch.equal(loaded[name], t) for name, t in first.items())
    assert any(not torch.equal(first[name], whole[name]) for name in first)  # step 1 is not step 3


@pytest.mark.slow
def test_streamed_export_equals_the_whole_export(offloaded_run, tmp_path):
    streamed = export(offloaded_run, tmp_path / "streamed", step="last")
    whole = export(offloaded_run, tmp_path / "whole", step="last", stream="off")
    assert (streamed / "model.safetensors.index.json").is_file() and (streamed / "README.md").is_file()
    assert (streamed / "tokenizer_config.json").is_file()
    a, b = _loaded(streamed), _loaded(whole)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_stream_refuses_a_run_whose_engine_does_not_stream(tmp_path, data_dir, monkeypatch, capsys):
    """``--stream on`` of a run whose config cannot stream: one line naming why, nothing written."""
    run_dir = tmp_path / "run"
    result = zobench_in_process(
        *SMOKE, "train.steps=1", "engine.mode=inplace", f"data.dir={data_dir}", f"hydra.run.dir={run_dir}",
        monkeypatch=monkeypatch,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with pytest.raises(SystemExit) as stop:
        replay_main([str(run_dir), "--out", str(tmp_path / "out"), "--stream", "on"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["zobench: error: --stream: a streamed replay needs engine.mode=virtual (got engine.mode=inplace)"]
    assert not (tmp_path / "out").exists() and not any(tmp_path.glob(".*"))


def test_stream_choice_is_checked(tmp_path):
    from zobench.errors import ConfigError
    from zobench.trajectory.stream import wants_stream

    with pytest.raises(ConfigError, match="--stream maybe: allowed auto, on, off"):
        wants_stream(tmp_path, "maybe")
