"""``python -m zobench.bench.offload``: one mode measured in process on the tiny model."""

from __future__ import annotations

import pytest

from zobench.bench.offload import measure


@pytest.mark.parametrize("mode", ["none", "disk"])
def test_measure_reports_time_memory_and_traffic(mode, tmp_path, monkeypatch):
    monkeypatch.setattr("zobench.bench.offload.BANDWIDTH_BYTES", 4 << 20)
    result = measure("tiny-llama", mode, steps=1, batch=1, length=4, dtype=None, folder=tmp_path)
    assert result["mode"] == mode and result["step_s"] > 0 and len(result["step_s_each"]) == 1
    assert 0 < result["peak_anon_rss_mib"] <= result["peak_rss_mib"]
    if mode == "disk":  # one read and one write of every block per step
        assert result["blocks"] == 2 and result["io_per_step_bytes"] == 2 * result["block_bytes"] > 0
        # the two bounds of the goal: compute (the step minus its waits on storage) and storage
        assert 0 <= result["stall_s"] <= result["step_s"] and result["compute_s"] == pytest.approx(
            result["step_s"] - result["stall_s"], abs=2e-3
        )
        assert result["disk_read_mb_s"] > 0 and result["storage_s"] > 0 and result["step_over_bound"] > 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["block-00000.safetensors", "block-00001.safetensors"]
    else:
        assert "blocks" not in result


def test_device_cuda_is_one_line_on_a_machine_without_cuda(monkeypatch, capsys):
    from zobench.bench import offload

    monkeypatch.setattr(offload.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        offload.main(["--device", "cuda", "--model", "tiny-llama", "--modes", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert err[0].startswith("zobench: error: --device cuda: this machine has no CUDA device")
    offload.check_device("cpu")  # the default needs nothing
    with pytest.raises(SystemExit) as stop:  # argparse's own refusal of another device
        offload.main(["--device", "gpu"])
    assert stop.value.code == 2 and "invalid choice: 'gpu'" in capsys.readouterr().err


def test_each_offloaded_mode_gets_its_ratio_to_the_in_memory_step():
    from zobench.bench.offload import add_ratios

    results = [{"mode": "none", "step_s": 2.0}, {"mode": "cpu", "step_s": 2.5}, {"mode": "disk", "step_s": 7.0}]
    add_ratios(results)
    assert [r.get("step_over_none") for r in results] == [None, 1.25, 3.5]
    alone = [{"mode": "cpu", "step_s": 2.5}]  # nothing to compare with: no ratio
    add_ratios(alone)
    assert "step_over_none" not in alone[0]


def test_the_cpu_device_reports_no_gpu_keys(tmp_path):
    """``--device cpu`` (the default) is the path measured on this machine: no GPU key appears,
    and the device is recorded."""
    result = measure("tiny-llama", "cpu", steps=1, batch=1, length=4, dtype=None, folder=tmp_path, device="cpu")
    assert result["device"] == "cpu" and result["step_s"] > 0
    assert not [key for key in result if "gpu" in key]


def test_the_2_gpu_benchmark_skips_in_one_line_with_fewer_gpus(monkeypatch, capsys, tmp_path):
    """``python -m zobench.bench.sharded --device cuda`` with 0 or 1 visible GPUs: one line naming
    what it needs and what this machine has, exit 77 (gpu.sh: ``skipped``), nothing written."""
    from zobench.bench import sharded

    for count in (0, 1):
        monkeypatch.setattr(sharded, "gpus_visible", lambda count=count: count)
        assert sharded.main([str(tmp_path / "out"), "--device", "cuda", "--model", "opt-1.3b-random"]) == sharded.SKIP
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"zobench.bench.sharded: skipped: sharded vs data on 2 GPUs needs 2 visible CUDA devices, "
            f"this machine has {count}"
        ]
    assert not (tmp_path / "out").exists()
    # the overrides of both runs: the model and device asked for, the in-place torch engine
    args = sharded.run_args("opt-1.3b-random", "cuda")
    assert args[0] == "model=opt-1.3b-random" and "device=cuda" in args and "engine.mode=inplace" in args
    assert not [a for a in args[1:] if a.startswith("model=")]
