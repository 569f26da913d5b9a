"""Forward counter, peak memory, and a W&B offline run whose logged keys are read back."""

import json
import struct
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import SMOKE, compose_run, tiny_model
from zobench.run import redact, run
from zobench.telemetry import ForwardCounter, JsonlLogger, Progress, wandb_mode


def test_forward_counter_counts_per_phase():
    model = tiny_model("llama")
    counter = ForwardCounter(model)
    ids = torch.randint(0, 64, (1, 4))
    model(input_ids=ids)
    with counter.phase("eval"):
        model(input_ids=ids)
        model(input_ids=ids)
    model(input_ids=ids)
    assert (counter["train"], counter["eval"], counter.total) == (2, 2, 4)


@pytest.mark.slow
def test_cpu_peak_memory_resets():
    """In a fresh process (a long-lived one may serve the allocation from resident free heap)."""
    import subprocess
    import sys

    probe = """
import torch
from zobench.telemetry import PeakMemory
memory = PeakMemory(torch.device("cpu"))
memory.reset()
before = memory.peak()
big = torch.ones(256 * 2**20 // 4)  # 256 MiB touched
with_big = memory.peak()
del big
memory.reset()
print(memory.source, before, with_big, memory.peak())
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    source, before, with_big, after = out.stdout.split()
    if source != "vmhwm":
        pytest.skip("peak RSS cannot be reset on this system")
    assert int(with_big) - int(before) > 200 * 2**20
    assert int(with_big) - int(after) > 200 * 2**20


def test_progress_bar_shows_step_loss_forward_rate_and_eta():
    import io

    out = io.StringIO()
    bar = Progress(total=10, file=out, disable=False)
    for step in range(1, 4):
        bar.update(loss=0.5, forward_passes=2 * step)
    bar.close()
    last = out.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "3/10" in last and "loss=0.5000" in last and "fwd_per_s=" in last and "<" in last  # "<" = ETA


def test_jsonl_writes_non_finite_as_null(tmp_path):
    logger = JsonlLogger(tmp_path / "m.jsonl")
    logger.log({"step": 1, "loss": float("nan")})
    logger.finish()
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"step": 1, "loss": None}


def test_wandb_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    assert wandb_mode("disabled") == "disabled"


@pytest.mark.parametrize(
    "env, mode",
    [
        ({"WANDB_MODE": "offline"}, "offline"),
        ({"WANDB_MODE": "dryrun"}, "offline"),
        ({"WANDB_MODE": "disabled"}, "disabled"),
        ({"WANDB_DISABLED": "true"}, "disabled"),
        ({"WANDB_MODE": "online"}, "online"),
        ({}, "online"),
    ],
)
def test_an_exported_wandb_mode_wins_over_auto(monkeypatch, tmp_path, env, mode):
    """With a key configured, auto is online, unless the user asked W&B itself for another mode;
    an explicit logger.mode stays what it says."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    for name in ("WANDB_MODE", "WANDB_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert wandb_mode("auto") == mode
    assert wandb_mode("online") == "online"


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:  # a port that was just free: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_wandb_server_is_found_at_once(monkeypatch):
    """A refused connection answers in milliseconds, not after W&B's init timeout; a listening
    server is reachable; with an HTTPS proxy exported, the proxy is what must answer."""
    import socket

    from zobench.telemetry import wandb_unreachable

    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    port = _closed_port()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    assert f"127.0.0.1:{port}" in wandb_unreachable()
    assert time.perf_counter() - started < 2
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert wandb_unreachable() is None
        monkeypatch.setenv("WANDB_BASE_URL", "https://api.wandb.invalid")
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert wandb_unreachable() is None  # the proxy answers for the server
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in wandb_unreachable()


@pytest.mark.parametrize("exported", [None, "offline"])
def test_the_wandb_logger_never_waits_for_a_server_it_cannot_reach(monkeypatch, tmp_path, caplog, exported):
    """A key set (online by auto) and a refused connection: W&B is started offline at once, with
    the warning; with WANDB_MODE=offline exported it is offline without a probe or a warning."""
    import wandb
    from omegaconf import OmegaConf

    from zobench.telemetry import WandbLogger

    started_with = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: started_with.append(kwargs["mode"]) or object())
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    if exported:
        monkeypatch.setenv("WANDB_MODE", exported)
    cfg = OmegaConf.create({"project": "p", "mode": "auto", "init_timeout": 90, "api_key": "k" * 40})
    monkeypatch.setenv("WANDB_API_KEY", "placeholder")  # restored after: the logger sets it from api_key
    started = time.perf_counter()
    logger = WandbLogger(cfg, tmp_path, {}, name="run")
    assert time.perf_counter() - started < 5
    assert started_with == ["offline"] and logger.mode == "offline"
    assert ("W&B unreachable" in caplog.text) == (exported is None)


def test_secrets_are_redacted():
    assert redact({"logger": {"api_key": "s3cret", "project": "p"}, "token": 1}) == {
        "logger": {"api_key": "<redacted>", "project": "p"},
        "token": "<redacted>",
    }


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "apikey",
        "api-key",
        "API_KEY",
        "hf_token",
        "token",
        "auth_token",
        "secret",
        "client_secret",
        "password",
        "db_passwd",
        "credentials",
        "access_key",
    ],
)
def test_every_credential_key_is_redacted(key):
    assert redact({"logger": {key: "value-123"}}) == {"logger": {key: "<redacted>"}}


@pytest.mark.parametrize(
    "key",
    [
        "tokenizer_from",
        "max_new_tokens",
        "tokens",
        "eos_token",
        "pad_token",
        "keep_best",
        "secretary",
        "passwords_seen",
        "key",
        "monkey",
    ],
)
def test_no_false_positives_on_words_that_contain_a_credential_name(key):
    assert redact({"model": {key: "smollm2-135m"}}) == {"model": {key: "smollm2-135m"}}


def test_credential_shaped_values_and_the_processes_own_keys_are_redacted(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "my-own-wandb-key-value")
    config = {
        "a": "hf_" + "A1b2" * 9,
        "b": "0123456789abcdef0123456789abcdef01234567",
        "c": "my-own-wandb-key-value",
        "d": ["sk-" + "x" * 30, "plain"],
        "e": "smollm2-135m",
    }
    assert redact(config) == {
        "a": "<redacted>",
        "b": "<redacted>",
        "c": "<redacted>",
        "d": ["<redacted>", "plain"],
        "e": "smollm2-135m",
    }


def test_a_credential_on_the_command_line_never_enters_hydras_config(monkeypatch):
    """It is moved to this process's environment before Hydra parses the command line: the
    composed config (what Hydra writes to .hydra/ and multirun.yaml, and prints) holds only the
    variable's name, and resolves to the key; a reference the user wrote is left alone."""
    from omegaconf import OmegaConf

    from zobench.redaction import hide_secret_overrides

    key, hf = "s3cret-api-value-1", "hf_" + "Zq9" * 12
    monkeypatch.delenv("ZOBENCH_SECRET_LOGGER_API_KEY", raising=False)  # restored after the test
    monkeypatch.delenv("ZOBENCH_SECRET_LOGGER_GROUP", raising=False)
    args = ["-m", f"+logger.api_key={key}", f"logger.group={hf}", "seed=0,1", "logger.project=${oc.env:PROJ}"]
    hidden = hide_secret_overrides(args)
    assert hidden == [
        "-m",
        "+logger.api_key=${oc.env:ZOBENCH_SECRET_LOGGER_API_KEY}",
        "logger.group=${oc.env:ZOBENCH_SECRET_LOGGER_GROUP}",
        "seed=0,1",
        "logger.project=${oc.env:PROJ}",
    ]
    cfg = compose_run("logger=wandb", *hidden[1:3])
    assert key not in OmegaConf.to_yaml(cfg) and hf not in OmegaConf.to_yaml(cfg)
    assert (cfg.logger.api_key, cfg.logger.group) == (key, hf)
    assert redact({"x": key}) == {"x": "<redacted>"}  # known as this process's credential from now on


def read_wandb_records(path: Path):
    """Decode a W&B transaction log (.wandb): a 7-byte header, then LevelDB-log records
    (crc32c:4, length:2 LE, type:1 in 32 KiB blocks) holding wandb_internal_pb2.Record messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a header: skip to the next block
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.mark.slow
def test_wandb_offline_run_logs_metrics_and_summary(tmp_path, data_dir):
    # 4 steps, dev at 2 and 4: the test event (logged for the best-dev step, possibly 2) must
    # still reach W&B, whose steps only go forward
    cfg = compose_run(
        *[o for o in SMOKE if o != "logger=none"],
        "logger=wandb",
        "train.steps=4",
        "train.eval_every=2",
        "train.log_every=1",
        f"data.dir={data_dir}",
        "logger.group=g1",
        "logger.tags=[a,b]",
        "logger.project=zb-test",
    )
    summary = run(cfg, tmp_path)
    files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, "expected one offline W&B run in the run dir"
    history, summary_keys, config_keys = set(), {}, set()
    for record in read_wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "summary":
            summary_keys.update(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.summary.update}
            )
            for item in record.summary.remove:
                summary_keys.pop(item.key or "/".join(item.nested_key), None)
        elif kind == "run":
            config_keys |= {item.key for item in record.run.config.update}
            assert (record.run.project, record.run.run_group, list(record.run.tags)) == ("zb-test", "g1", ["a", "b"])
    assert {
        "train/loss",
        "train/forward_passes",
        "train/projected_grad",
        "dev/accuracy",
        "test/accuracy",
        "dev/forward_passes_eval",
    } <= history
    # the summary names which dev value is which: the best (tested) one and the last one
    assert summary_keys["test/accuracy"] == pytest.approx(summary["test_accuracy"])
    assert summary_keys["best_dev/accuracy"] == pytest.approx(summary["dev_accuracy"])
    last_dev = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last_dev = [e["accuracy"] for e in last_dev if e.get("split") == "dev"][-1]
    assert summary_keys["last_dev/accuracy"] == pytest.approx(last_dev)
    assert "dev/accuracy" not in summary_keys and "dev_accuracy" not in summary_keys
    assert summary_keys["status"] == "completed" and summary_keys["forward_passes"] == 8
    assert {"model", "task", "optimizer", "train"} <= config_keys


def _plain_lines(caplog, prefix="step "):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


def test_without_a_terminal_progress_is_a_plain_line_every_log_every_steps(caplog):
    import io
    import logging

    out = io.StringIO()  # not a terminal (Slurm, CI, > log): no bar, no carriage returns in the log
    with caplog.at_level(logging.INFO, logger="zobench.telemetry"):
        progress = Progress(total=7, every=3, file=out)
        for step in range(1, 8):
            progress.update(loss=0.5, forward_passes=2 * step)
        progress.close()
    lines = _plain_lines(caplog)
    assert [line.split(" (")[0] for line in lines] == ["step 3/7", "step 6/7", "step 7/7"]  # and the last step
    assert lines[0].startswith("step 3/7 (42%): loss 0.5000, ") and " fwd/s, eta " in lines[0]
    assert lines[-1].endswith("eta 0:00:00") and out.getvalue() == ""


def test_a_resumed_progress_counts_from_the_resumed_step(caplog):
    import io
    import logging

    with caplog.at_level(logging.INFO, logger="zobench.telemetry"):
        progress = Progress(total=10, initial=4, forward_passes=8, every=2, file=io.StringIO())
        for step in range(5, 11):
            progress.update(loss=1.0, forward_passes=2 * step)
    assert [line.split(" (")[0] for line in _plain_lines(caplog)] == ["step 6/10", "step 8/10", "step 10/10"]


def test_clock_keeps_counting_hours_past_a_day():
    from zobench.telemetry import clock

    assert clock(0) == "0:00:00" and clock(61.9) == "0:01:01" and clock(25 * 3600 + 61) == "25:01:01"


def test_heartbeat_logs_while_the_block_runs_and_stops_with_it(caplog):
    import logging

    from zobench.telemetry import heartbeat

    with caplog.at_level(logging.INFO, logger="zobench.telemetry"):
        with heartbeat("evaluating dev (500 examples)", every=0.05, detail=lambda: "12 forward passes"):
            time.sleep(0.4)
        during = len(_plain_lines(caplog, "evaluating dev"))
        time.sleep(0.2)
    lines = _plain_lines(caplog, "evaluating dev")
    assert during >= 2 and len(lines) == during  # nothing after the block
    assert lines[0] == "evaluating dev (500 examples): 0:00:00 so far, 12 forward passes"
