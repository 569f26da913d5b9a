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
