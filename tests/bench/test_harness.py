"""The benchmark compares like with like: same loss, and figures that add up."""

import json
import re
import subprocess
import sys

import pytest
import torch

from tests.helpers import compose_config
from zobench.bench.baseline import AuthorsMeZO, pairwise_loss
from zobench.bench.harness import drift_after_lr0_steps
from zobench.models import CandidateScorer, load_model
from zobench.models.loading import model_config
from zobench.tasks import build_splits, load_task


@pytest.fixture(scope="module")
def setup(data_dir):
    model, tokenizer = load_model(model_config("tiny-llama"))
    scorer = CandidateScorer(model, tokenizer, 256, "cpu")
    spec = load_task("rte")  # multi-token contexts, long prompts
    batch = [scorer.encode(spec.render(ex)) for ex in build_splits(spec, data_dir, 6, 0, 1, seed=0).train]
    return model, tokenizer, scorer, batch


@pytest.mark.slow
def test_the_authors_per_pair_loss_equals_zobenchs_shared_prefix_loss(setup):
    model, tokenizer, scorer, batch = setup
    torch.testing.assert_close(
        pairwise_loss(model, batch, tokenizer.pad_token_id, "cpu"), scorer.loss(batch), rtol=1e-5, atol=1e-5
    )


def test_authors_step_restores_and_updates_like_mezo():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 4.0]))
    opt = AuthorsMeZO([("w", p)], lr=0.0, eps=0.5)
    loss = opt.step(lambda: (p * p).sum())
    assert loss > 0 and opt.seconds > 0
    assert torch.allclose(p, torch.tensor([1.0, -2.0, 4.0]), atol=1e-6)


def test_passes_per_step_keeps_the_average_of_methods_whose_steps_differ():
    from zobench.bench.harness import passes_per_step
    from zobench.optim import DiZO, HiZOO

    weight = torch.nn.Parameter(torch.zeros(3))
    assert passes_per_step(HiZOO([weight])) == 3 and isinstance(passes_per_step(HiZOO([weight])), int)
    assert passes_per_step(DiZO([weight], projection_iters=10, interval=50)) == 2.4


@pytest.mark.slow
def test_drift_is_counted_for_both_in_place_implementations():
    weights = [torch.randn(1000, dtype=torch.bfloat16) * 0.02]
    for authors in (True, False):
        drift = drift_after_lr0_steps([w.clone() for w in weights], steps=3, eps=1e-3, authors=authors)
        assert drift["elements"] == 1000 and 0 < drift["changed_fraction"] <= 1 and drift["max_abs_drift"] > 0


@pytest.mark.slow
def test_bench_cli_writes_json_and_markdown(tmp_path, data_dir):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "zobench.bench",
            "model=tiny-llama",
            "bench.repeats=1",
            "bench.numerics_steps=2",
            "bench.numerics_max_elements=5000",
            "bench.virtual_lr0_steps=3",
            f"bench.out={tmp_path}",
            "bench.name=t",
            f"data.dir={data_dir}",
        ],
        check=True,
        timeout=600,
        capture_output=True,
        cwd=tmp_path,
    )  # Hydra's outputs/bench/<time>/ goes there, not into the checkout
    result = json.loads((tmp_path / "t.json").read_text())
    for variant in ("zobench", "baseline"):
        r = result[variant]
        assert r["step_s"] == pytest.approx(r["forward_s"] + r["engine_s"] + r["other_s"])
        assert r["forward_s"] > 0 and r["engine_s"] > 0 and r["peak_memory_bytes"] > 0
    assert result["step_time_ratio"] == pytest.approx(result["zobench"]["step_s"] / result["baseline"]["step_s"])
    assert result["command"].startswith("python -m zobench.bench model=tiny-llama")
    assert "| zobench [auto/virtual+paired] |" in (tmp_path / "t.md").read_text()
    assert result["numerics"]["bfloat16"]["authors_inplace"]["changed_fraction"] > 0
    # the virtual engine's lr=0 steps, forwards included, leave every weight as it was
    assert result["virtual_lr0"] == {
        "dtype": "float32",
        "steps": 3,
        "changed_elements": 0,
        "elements": result["parameters"],
    }
    assert "Measured: 3 lr=0 MeZO steps" in (tmp_path / "t.md").read_text()


@pytest.mark.slow
def test_bench_times_the_configured_zo_method(tmp_path, data_dir):
    """``optimizer=...`` picks zobench's step (HiZOO: 3 passes and its Σ); the baseline stays the
    authors' MeZO and the Markdown says the ratios then compare methods."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "zobench.bench",
            "model=tiny-llama",
            "optimizer=hizoo",
            "bench.repeats=1",
            "bench.baseline=false",
            f"bench.out={tmp_path}",
            "bench.name=h",
            f"data.dir={data_dir}",
        ],
        check=True,
        timeout=600,
        capture_output=True,
        cwd=tmp_path,
    )
    result = json.loads((tmp_path / "h.json").read_text())
    z = result["zobench"]
    assert (z["optimizer"], z["forward_passes_per_step"], z["state_buffers_per_param"]) == ("hizoo", 3, 1)
    text = (tmp_path / "h.md").read_text()
    assert text.startswith("# hizoo step benchmark") and "| zobench hizoo [auto/virtual+paired] |" in text
    assert "compare methods, not implementations" in text


@pytest.mark.slow
def test_bench_refuses_a_first_order_optimizer(tmp_path, data_dir):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "zobench.bench",
            "model=tiny-llama",
            "optimizer=adam",
            f"bench.out={tmp_path / 'out'}",
            "bench.name=a",
            f"data.dir={data_dir}",
        ],
        timeout=600,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(
        "zobench: error: optimizer=adam: the benchmark times zeroth-order steps"
    )
    assert "Traceback" not in done.stderr
    out = tmp_path / "out"
    assert not out.exists() or not list(out.iterdir())  # nothing half-written (Hydra's own log dir aside)


@pytest.mark.parametrize(
    "override, message",
    [
        ("task=nosuch", "zobench: error: task=nosuch: no such option; allowed: boolq, "),
        ("bench.repeat=3", "zobench: error: bench.repeat=3: bench.repeat is not a zobench config key; did you mean"),
    ],
)
def test_the_bench_cli_refuses_bad_overrides_in_one_line_before_hydra(override, message, capsys):
    from zobench.__main__ import precheck

    with pytest.raises(SystemExit) as stop:
        precheck(["model=tiny-llama", override], config_name="bench")
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(message)


@pytest.mark.parametrize(
    "override, message",
    [
        ("bench.repeats=three", "bench.repeats='three': expected an integer >= 1"),
        ("bench.warmup=-1", "bench.warmup=-1: expected an integer >= 0"),
        ("bench.baseline=maybe", "bench.baseline='maybe': expected true or false"),
        ("bench.numerics_dtypes=[float8]", "bench.numerics_dtypes=['float8']: expected a list of"),
        ("optimizer.lr=nan", "optimizer.lr=nan: expected a finite number > 0"),
        ("engine.mode=sideways", "engine.mode='sideways': allowed"),
    ],
)
def test_the_bench_config_is_validated_before_any_work(override, message):
    from zobench.config import validate_bench
    from zobench.errors import ConfigError

    validate_bench(compose_config("bench", "model=tiny-llama"))  # the shipped defaults pass
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_bench(compose_config("bench", "model=tiny-llama", override))
