"""The start-up check of the Triton engine (issue 32), under Triton's interpreter: it passes on every
model config's shape classes in fp32 / fp16 / bf16, catches a kernel that adds an offset or draws
another z with one line naming shape, dtype and the largest difference, and under engine=auto
falls back to the torch engine with a warning; what ran is described for the summary."""

import os
import sys

import pytest
import torch
from omegaconf import OmegaConf

if "zobench.engine.triton.primitives" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined (see test_triton_backend.py)
pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[dev]')")

from tests.helpers import (  # noqa: E402
    CONFIGS,
    tiny_model,  # noqa: E402
    weight_shapes,
)
from zobench.engine import build_engine, mix_seed, selfcheck  # noqa: E402
from zobench.engine.selfcheck import Case, EngineCheckError, checked_engine, run_check  # noqa: E402
from zobench.engine.triton import engines as te  # noqa: E402
from zobench.engine.triton.primitives import interpreted  # noqa: E402
from zobench.errors import ConfigError  # noqa: E402

if not interpreted():
    pytest.skip("zobench.engine.triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _every_config_case(dtype):
    """Every shape class of every conf/model config, with each feature it can take."""
    cases = {}
    for path in CONFIGS:
        for shape in weight_shapes(OmegaConf.load(path)):
            features = ["update", "virtual", "paired"] + (["streamed", "fused_linear"] if len(shape) == 2 else [])
            cases.update({Case(shape, dtype, f): None for f in features})
    return list(cases)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_check_passes_on_every_model_configs_shape_classes(dtype):
    cases = _every_config_case(dtype)
    report = run_check(cases, "cpu", "gaussian" if dtype != torch.float16 else "rademacher")
    assert report.ok, report.mismatches[0].line()
    assert report.summary()["cases"] == len(cases) and report.seconds > 0


@pytest.mark.slow
def test_the_cases_follow_the_engine_features_in_use():
    model = tiny_model("llama", torch.bfloat16)
    params = list(model.parameters())
    plain = {c.feature for c in selfcheck.cases_for(build_engine("triton", "inplace", model), params)}
    assert plain == {"update"}
    fused = build_engine("triton", "virtual", model, paired=True, fused_linear=True)
    features = {c.feature for c in selfcheck.cases_for(fused, params)}
    fused.remove()
    assert features == {"update", "virtual", "paired", "streamed", "fused_linear"}  # fused: streamed too
    unpaired = build_engine("triton", "virtual", model, paired=False)
    cases = selfcheck.cases_for(unpaired, params)
    unpaired.remove()
    assert {c.feature for c in cases} == {"update", "virtual"}
    assert {(c.shape, c.dtype) for c in cases} == {(tuple(p.shape), p.dtype) for p in params}


def _broken_copy(monkeypatch, offset=1e-3):
    real = te.perturbed_copy
    monkeypatch.setattr(te, "perturbed_copy", lambda p, *a, **k: real(p, *a, **k) + offset)


@pytest.mark.slow
@pytest.mark.parametrize("breakage", ["offset", "other z"])
def test_a_broken_kernel_is_caught_with_one_line(breakage, monkeypatch):
    if breakage == "offset":
        _broken_copy(monkeypatch)
    else:  # every kernel of the provider draws under another key: another z
        monkeypatch.setattr(te, "_key", lambda direction, pid: mix_seed(direction.seed, pid) + 1)
    case = Case((576, 1536), torch.bfloat16, "virtual")
    report = run_check([Case((576,), torch.float32, "update"), case], "cpu")
    assert not report.ok
    line = report.mismatches[0].line()
    assert "\n" not in line and "engine=torch" in line and "largest difference" in line
    if breakage == "offset":
        assert "(576, 1536) bfloat16" in line and "θ+εz" in line
    else:
        assert "(576,) float32" in line and "(z)" in line
    assert report.summary()["passed"] is False and report.summary()["failure"] == line


def _engine_of(model, backend):
    def build(b):
        return build_engine(b, "virtual", model, paired=True)

    return checked_engine(build, backend, model, list(model.parameters()), "gaussian", setting=True)


@pytest.mark.slow
def test_triton_stops_and_auto_falls_back_to_torch_loudly(monkeypatch, capsys, tmp_path):
    model = tiny_model("llama")
    engine, info = _engine_of(model, "triton")  # a sound kernel: the Triton engine, checked
    engine.remove()
    assert isinstance(engine, te.TritonVirtualEngine) and info["check"]["passed"] and info["backend"] == "triton"
    assert info["triton"].endswith("(interpreter)") and info["device"] == "cpu" and info["paired"]
    _broken_copy(monkeypatch)
    with pytest.raises(EngineCheckError, match=r"^the Triton engine's virtual .* engine=torch") as err:
        _engine_of(model, "triton")
    assert "\n" not in str(err.value)
    # as on CUDA: auto resolves to triton
    monkeypatch.setattr("zobench.engine.resolve_backend", lambda b, model=None: "triton" if b == "auto" else b)
    engine, info = _engine_of(model, "auto")
    assert type(engine).__name__ == "VirtualEngine" and info["backend"] == "torch" and info["fallback"] == "torch"
    assert info["check"]["passed"] is False and info["triton"] is None
    warning = capsys.readouterr().err
    assert "engine=auto" in warning and "falling back to the torch engine" in warning and "WARNING" in warning
    assert "torch/virtual+paired (fell back from triton" in selfcheck.label(info)


def test_the_check_runs_only_for_a_triton_engine_on_cuda_unless_forced():
    model = tiny_model("llama")
    triton_engine = build_engine("triton", "inplace", model)
    assert not selfcheck.wanted("auto", triton_engine, model)  # CPU: auto does not check
    assert selfcheck.wanted(True, triton_engine, model)
    assert not selfcheck.wanted(False, triton_engine, model)
    assert not selfcheck.wanted(True, build_engine("torch", "inplace", model), model)  # nothing to check
    with pytest.raises(ConfigError, match="engine.self_check='sometimes': allowed auto, true, false"):
        selfcheck.wanted("sometimes", triton_engine, model)
    info = selfcheck.describe(build_engine("torch", "inplace", model), model)
    assert info == {
        "backend": "torch", "mode": "inplace", "paired": False, "fused_linear": False, "triton": None, "device": "cpu"
    }  # fmt: skip
    assert selfcheck.label(info) == "torch/inplace [cpu]"


@pytest.mark.slow
def test_the_command_checks_each_model_and_dtype_and_prints_one_json_line_each(capsys):
    import json

    assert selfcheck.main(["--models", "tiny-llama", "--dtypes", "float16,bfloat16", "device=cpu", "logger=none"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["model"], r["dtype"], r["passed"]) for r in rows] == [
        ("tiny-llama", "float16", True), ("tiny-llama", "bfloat16", True)
    ]  # fmt: skip
    assert rows[0]["features"] == ["paired", "update", "virtual"] and rows[0]["seconds"] > 0


def test_the_engine_guard_keys_are_validated():
    from tests.helpers import compose_run
    from zobench.config import validate

    for override, message in (
        ("engine.self_check=sometimes", "engine.self_check='sometimes': allowed auto, true, false"),
        ("engine.watchdog_s=-1", "engine.watchdog_s=-1: expected seconds >= 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            validate(compose_run(override, "device=cpu"))
    validate(compose_run("engine.watchdog_s=null", "engine.self_check=false", "device=cpu"))
