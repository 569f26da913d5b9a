"""A real (tiny) run's trajectory: replay gives the tested weights, a different base is refused,
trajectory checkpoints hold no weights and resume bit-identically, and the export loads in
transformers / peft with the same logits (zobench/trajectory; the SIGKILL tests of
tests/test_resume.py run in both checkpoint modes)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import SMOKE, VOLATILE, compose_run, stable
from zobench.errors import CheckpointError
from zobench.run import run
from zobench.trajectory.export import export
from zobench.trajectory.replay import replay

RUN = ("train.steps=4", "train.eval_every=2", "train.log_every=1", "train.save_final=true")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """Completed 4-step runs: full tuning and LoRA (best-dev step 2 or 4, tested and saved)."""
    out = {}
    for tuning in ("full", "lora"):
        run_dir = tmp_path_factory.mktemp(tuning)
        run(compose_run(*SMOKE, *RUN, f"tuning={tuning}", "optimizer.lr=1e-3", f"data.dir={data_dir}"), run_dir)
        out[tuning] = run_dir
    return out


@pytest.mark.slow
@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_replay_of_the_best_step_is_the_tested_state(runs, tuning):
    final = load_file(runs[tuning] / "final" / "trainable.safetensors")
    replayed = replay(runs[tuning], "best")
    assert replayed.step == stable(runs[tuning] / "summary.json")["tested_step"]
    assert sorted(n for n, _ in replayed.named) == sorted(final)
    assert all(torch.equal(p, final[n]) for n, p in replayed.named)


@pytest.mark.slow
def test_the_default_zo_run_writes_no_weight_sized_file(runs, data_dir, tmp_path):
    run(compose_run(*SMOKE, *RUN[:-1], "train.checkpoint_every=1", f"data.dir={data_dir}"), tmp_path)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".safetensors", ".pt", ".bin") and p.name != "trajectory.bin"]
    assert (tmp_path / "trajectory.bin").stat().st_size < 400  # 4 steps: ~28 bytes each + the header


@pytest.mark.slow
def test_a_different_base_model_is_refused_in_one_line(runs, monkeypatch):
    from zobench.build import Components

    build = Components.build

    def changed_base(cfg, device, **kwargs):  # the model's files changed on disk since the run
        parts = build(cfg, device, **kwargs)
        parts.named[0][1].data.add_(1.0)
        return parts

    monkeypatch.setattr(Components, "build", changed_base)
    with pytest.raises(CheckpointError, match="base model's trainable weights differ from those the run started"):
        replay(runs["full"], "last")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["cut 5 bytes", "bit in record 2", "bit in the last record"])
def test_replay_and_export_of_a_damaged_completed_log_are_refused(runs, tmp_path, capsys, damage):
    """A completed run's trajectory.bin cut or with a flipped bit: never an earlier step's weights
    (the summary seals the log; a CRC failure with records after it is corruption anyway)."""
    import shutil

    from zobench.export import main as export_main
    from zobench.trajectory.log import read

    run_dir = tmp_path / "run"
    shutil.copytree(runs["full"], run_dir)
    path = run_dir / "trajectory.bin"
    assert stable(run_dir / "summary.json")["trajectory"]["records"] == 4
    ends, data = read(path).ends, bytearray(path.read_bytes())
    if damage == "cut 5 bytes":
        data = data[:-5]
    else:
        data[ends[0] + 6 if damage == "bit in record 2" else ends[2] + 6] ^= 0x01
    path.write_bytes(bytes(data))
    record = 2 if damage == "bit in record 2" else 4
    for step in ("last", "best", "1"):
        with pytest.raises(CheckpointError, match=rf"^{path}: .*record {record} \(step {record}\)"):
            replay(run_dir, step)
    with pytest.raises(SystemExit) as stop:
        export_main([str(run_dir), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and f"record {record} (step {record})" in err
    assert not (tmp_path / "out").exists()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.slow
def test_export_round_trips_through_transformers(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export(runs["full"], tmp_path / "model")
    card = (out / "README.md").read_text()
    assert "sst2" in card and "mezo" in card and "test accuracy" in card
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tested = replay(runs["full"], "best").model
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_logits(loaded, ids), _logits(tested, ids))


@pytest.mark.slow
def test_export_of_a_lora_run_is_a_peft_adapter_with_the_same_logits(runs, tmp_path):
    from peft import PeftModel

    from zobench.models import load_model
    from zobench.trajectory.replay import load_run_config

    out = export(runs["lora"], tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    cfg = load_run_config(runs["lora"])
    base, _ = load_model(cfg.model, "cpu", cfg.cache_dir)
    loaded = PeftModel.from_pretrained(base, out).eval()
    tested = replay(runs["lora"], "best").model
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_logits(loaded, ids), _logits(tested, ids))


@pytest.mark.slow
def test_a_trajectory_checkpoint_resumes_bit_identically(runs, data_dir, tmp_path, monkeypatch):
    import zobench.dist.strategy as writer  # the recipe's strategy calls save_checkpoint

    args = (*SMOKE, *RUN, "train.checkpoint_every=3", "optimizer=zo_adam", "optimizer.lr=1e-3", f"data.dir={data_dir}")
    reference = run(compose_run(*args), tmp_path / "reference")
    save = writer.save_checkpoint

    def save_then_die(*a, **k):
        save(*a, **k)
        raise SystemExit(9)

    monkeypatch.setattr(writer, "save_checkpoint", save_then_die)
    with pytest.raises(SystemExit):
        run(compose_run(*args), tmp_path / "run")
    monkeypatch.undo()
    ckpt = next((tmp_path / "run" / "checkpoint").glob("ckpt-*"))
    assert (ckpt / "trainable.safetensors").stat().st_size < 100 and (ckpt / "optimizer.pt").stat().st_size < 2000
    (tmp_path / "run" / "summary.json").unlink()
    resumed = run(compose_run(*args), tmp_path / "run")
    assert {k: v for k, v in resumed.items() if k not in VOLATILE} == {
        k: v for k, v in reference.items() if k not in VOLATILE
    }
    for name in ("trajectory.bin", "final/trainable.safetensors"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


@pytest.mark.slow
def test_a_first_order_run_exports_its_saved_final_weights(data_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    args = (*SMOKE, "train.steps=2", "train.eval_every=1", "optimizer=sgd", "train.save_final=true")
    run(compose_run(*args, f"data.dir={data_dir}"), tmp_path / "run")
    assert not (tmp_path / "run" / "trajectory.bin").exists()  # first-order: weight checkpoints, no log
    out = export(tmp_path / "run", tmp_path / "model")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    final = load_file(tmp_path / "run" / "final" / "trainable.safetensors")
    state = loaded.state_dict()
    shared = [name for name in final if name in state]
    assert len(shared) >= len(final) - 1  # a tied lm_head is saved once
    assert all(torch.equal(state[name], final[name]) for name in shared)
