"""zobench.bench.adam_state's simulation of ZO-Adam's v: in bfloat16 v never decays, so past
~1/(1-β2) steps its v̂ climbs above float32's and the effective learning rate η/√v̂ falls."""

from zobench.bench.adam_state import simulate


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
