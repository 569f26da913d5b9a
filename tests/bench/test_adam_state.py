"""zobench.bench.adam_state's simulation of ZO-Adam's v: in bfloat16 v never decays, so past
~1/(1-β2) steps its v̂ climbs above float32's and the effective learning rate η/√v̂ falls."""

import shutil
from pathlib import Path

import pytest

from zobench.bench import adam_state
from zobench.bench.adam_state import simulate

COMMITTED = Path(__file__).resolve().parents[2] / "results" / "zo_adam_state_dtype" / "runs" / "float32"


def test_bf16_v_hat_outgrows_fp32_and_the_effective_lr_falls():
    rows = simulate([30.0, -12.0, 5.0, 41.0], at=(50, 3000))
    early, late = rows[50], rows[3000]
    assert 0.95 < early["median_v_hat_bf16_over_fp32"] < 1.1  # increments still large against v
    assert late["median_v_hat_bf16_over_fp32"] > 1.5 * early["median_v_hat_bf16_over_fp32"]
    for row in rows.values():
        assert abs(row["effective_lr_bf16_over_fp32"] - row["median_v_hat_bf16_over_fp32"] ** -0.5) < 1e-12


def test_fp32_and_bf16_agree_when_beta2_is_coarse_enough_for_bf16():
    """β2 = 0.5 takes off far more than half an ulp: bf16's v decays too, and tracks fp32's."""
    rows = simulate([10.0, -3.0], beta2=0.5, at=(2000,))
    assert abs(rows[2000]["median_v_hat_bf16_over_fp32"] - 1) < 0.05


def test_a_damaged_run_dir_is_one_line_and_exit_2_before_any_replay(tmp_path, monkeypatch, capsys):
    run = Path(shutil.copytree(COMMITTED, tmp_path / "float32"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[3] = lines[3][:-7]  # a torn line in the middle
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "measure.json"
    monkeypatch.setattr("sys.argv", ["adam_state", str(run), "--out", str(out)])
    with pytest.raises(SystemExit) as exit_:
        adam_state.main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0
    assert err.startswith("zobench: error: ") and f"{run / 'metrics.jsonl'}:4: not a JSON object" in err
    assert not out.exists()
    (run / "config.yaml").unlink()  # not a run dir
    with pytest.raises(SystemExit):
        adam_state.main()
    assert "config.yaml: missing; not a zobench run dir" in capsys.readouterr().err
