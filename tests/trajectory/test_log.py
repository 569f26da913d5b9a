"""The trajectory log's format: round trip, a torn or corrupted last record after a kill, the
cut-back of a resumed run, and the replay CLI's one-line errors (zobench/trajectory/log.py)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import SMOKE, compose_run, one_error_line
from zobench.errors import CheckpointError
from zobench.trajectory import log
from zobench.trajectory.replay import config_sha256

HEADER = log.Header(config_sha256="c", base_sha256="b", optimizer="mezo", engine="torch/virtual", replicas=True)


def _calls(step: int) -> list:
    return [(torch.tensor([0.5, float(step)]),), (torch.tensor(1.0, dtype=torch.bfloat16), torch.tensor(2.0))]


def _write(path, steps: int):
    writer = log.create(path, HEADER)
    for step in range(1, steps + 1):
        writer.append(step, _calls(step))
    writer.close()


def test_records_round_trip_exactly(tmp_path):
    _write(tmp_path / "t.bin", 3)
    read = log.read(tmp_path / "t.bin")
    assert read.header == HEADER and [s for s, _ in read.steps] == [1, 2, 3]
    step, calls = read.steps[1]
    assert torch.equal(calls[0][0], torch.tensor([0.5, 2.0]))
    assert calls[1][0].dtype == torch.bfloat16 and calls[1][0].shape == () and len(calls[1]) == 2  # a dual
    assert read.end == (tmp_path / "t.bin").stat().st_size


@pytest.mark.parametrize("damage", ["torn", "crc", "length only", "zero-filled"])
def test_a_torn_or_corrupted_last_record_ends_the_log_there(tmp_path, damage):
    path = tmp_path / "t.bin"
    _write(path, 3)
    data = bytearray(path.read_bytes())
    full = log.read(path)
    if damage == "torn":  # killed mid-write
        data = data[: full.ends[2] - 5]
    elif damage == "crc":
        data[full.ends[2] - 6] ^= 0xFF
    elif damage == "zero-filled":  # power loss: the last record's blocks allocated, never written
        data[full.ends[1] + 5 :] = bytes(len(data) - full.ends[1] - 5 + 40)
    else:
        data = data[: full.ends[1] + 2]
    path.write_bytes(bytes(data))
    read = log.read(path)
    assert [s for s, _ in read.steps] == [1, 2] and read.end == full.ends[1]
    # a resumed run at step 2 appends after the last complete record, dropping the torn tail
    _, writer = log.open_for_append(path, 2)
    writer.append(3, _calls(3))
    writer.close()
    assert path.read_bytes() == bytes(bytearray(log.read(path).path.read_bytes()))
    assert [s for s, _ in log.read(path).steps] == [1, 2, 3] and path.stat().st_size == full.end


def test_a_resume_cuts_the_steps_after_its_checkpoint_and_refuses_a_short_log(tmp_path):
    path = tmp_path / "t.bin"
    _write(path, 4)
    read, writer = log.open_for_append(path, 2)
    writer.close()
    assert [s for s, _ in read.steps] == [1, 2] and path.stat().st_size == read.end
    with pytest.raises(CheckpointError, match="holds 2 steps, the checkpoint is at step 3"):
        log.open_for_append(path, 3)


def test_not_a_log_is_one_clear_error(tmp_path):
    (tmp_path / "t.bin").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a zobench trajectory log"):
        log.read(tmp_path / "t.bin")


def _fake_run_dir(tmp_path):
    """A run dir with a config and a 3-step log (enough for the CLI's checks before any model)."""
    from omegaconf import OmegaConf

    cfg = compose_run(*SMOKE)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    header = log.Header(config_sha256(cfg), "b", "mezo", "torch/virtual", True)
    writer = log.create(tmp_path / log.FILENAME, header)
    for step in (1, 2, 3):
        writer.append(step, _calls(step))
    writer.close()
    return tmp_path


def _cli(module, *args, capsys):
    import importlib

    with pytest.raises(SystemExit) as stop:
        importlib.import_module(f"zobench.{module}").main([str(a) for a in args])
    import subprocess

    return subprocess.CompletedProcess(args, stop.value.code, "", capsys.readouterr().err)


@pytest.mark.parametrize("module", ["replay", "export"])
def test_bad_cli_input_is_one_line_exit_2(tmp_path, capsys, module):
    out = [tmp_path / "out"] if module == "export" else []
    one_error_line(_cli(module, tmp_path / "missing", *out, capsys=capsys), "no such run dir")
    run_dir = _fake_run_dir(tmp_path / "run")
    one_error_line(_cli(module, run_dir, *out, "--step", "9", capsys=capsys), "--step 9: ")
    one_error_line(_cli(module, run_dir, *out, "--step", "soon", capsys=capsys), "allowed best, last")
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("seed: 0", "seed: 1", 1))
    one_error_line(_cli(module, run_dir, *out, capsys=capsys), "differ from the run's")


def test_the_config_hash_resolves_interpolations_that_read_outside_their_node():
    """An experiment's ``optimizer.lr: ${...${optimizer.name}}`` reads keys beside the optimizer
    node: the hash resolves it against the whole config, and a different lr is a different hash."""
    from tests.helpers import experiment_sweep

    point = [f"{key}={values[0]}" for key, values in experiment_sweep("fzoo_averages_smoke").items()]
    cfg = compose_run("experiment=fzoo_averages_smoke", *point)  # unresolved, as a run gets it
    assert "${" in str(OmegaConf.to_container(cfg.optimizer, resolve=False))  # the case under test
    other = compose_run("experiment=fzoo_averages_smoke", *point, "optimizer.lr=0.125")
    assert config_sha256(cfg) != config_sha256(other)


# -- integrity: a torn tail only at the end of an unfinished run's log --------------------------
def _damaged(path, damage: str) -> tuple[int, int]:
    """A 5-step log with ``damage``; (the record it hits, its byte offset)."""
    _write(path, 5)
    full = log.read(path)
    data = bytearray(path.read_bytes())
    starts = [full.start, *full.ends[:-1]]
    record, where = {
        "payload of record 2": (2, starts[1] + 4 + 3),
        "CRC of record 3": (3, full.ends[2] - 2),
        "length of record 2, larger": (2, starts[1]),
        "length of record 4, smaller": (4, starts[3]),
        "payload of record 1": (1, starts[0] + 9),
    }[damage]
    data[where] ^= 0x10 if "smaller" not in damage else 0x08  # one bit
    if "smaller" in damage:
        assert data[where] < path.read_bytes()[where]
    path.write_bytes(bytes(data))
    return record, starts[record - 1]


@pytest.mark.parametrize(
    "damage",
    [
        "payload of record 1",
        "payload of record 2",
        "CRC of record 3",
        "length of record 2, larger",
        "length of record 4, smaller",
    ],
)
def test_damage_before_the_last_record_is_corruption_named_by_file_record_and_step(tmp_path, damage):
    record, at = _damaged(tmp_path / "t.bin", damage)
    with pytest.raises(CheckpointError) as err:
        log.read(tmp_path / "t.bin")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 't.bin'}: record {record} (step {record}) at byte {at} ")
    assert "the log is corrupted" in message and "\n" not in message
    # a resume past the damage refuses too (and says how to start afresh); one before it cuts it away
    with pytest.raises(CheckpointError, match="delete .*checkpoint to start the run afresh"):
        log.open_for_append(tmp_path / "t.bin", 5)
    if record > 1:
        kept, writer = log.open_for_append(tmp_path / "t.bin", record - 1)
        writer.close()
        assert kept.last_step == record - 1 and log.read(tmp_path / "t.bin").last_step == record - 1


def test_a_record_out_of_sequence_is_corruption(tmp_path):
    path = tmp_path / "t.bin"
    _write(path, 2)
    with path.open("ab") as f:
        f.write(log.encode_record(7, _calls(7)))  # a whole record, valid CRC, the wrong step
    with pytest.raises(CheckpointError, match=r"record 3 \(step 3\) at byte \d+ holds step 7"):
        log.read(path)


def test_a_damaged_header_is_refused(tmp_path):
    path = tmp_path / "t.bin"
    _write(path, 2)
    data = bytearray(path.read_bytes())
    data[len(log.MAGIC) + 4] ^= 0x01  # the JSON's opening brace
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="unreadable trajectory header"):
        log.read(path)


@pytest.mark.parametrize("damage", ["cut 5 bytes", "cut 1 record", "bit in the last record", "bit in the header"])
def test_a_completed_runs_log_must_be_the_one_its_summary_sealed(tmp_path, damage):
    """The last record of an unfinished run may be torn (read ends before it); a completed run's
    log is whole: a cut, a garbled last record or a changed header is refused, naming the record."""
    path = tmp_path / "t.bin"
    _write(path, 5)
    sealed = log.seal(path)
    assert sealed["records"] == 5 and sealed["bytes"] == path.stat().st_size
    log.check_sealed(log.read(path), sealed, "last")  # whole: accepted
    data = bytearray(path.read_bytes())
    if damage == "cut 5 bytes":
        data = data[:-5]
    elif damage == "cut 1 record":
        data = data[: log.read(path).ends[3]]
    elif damage == "bit in the last record":
        data[-7] ^= 0x04
    else:
        data[data.index(b'"mezo"') + 2] ^= 0x20  # "mezo" -> "mEzo": the JSON still parses
    path.write_bytes(bytes(data))
    damaged = log.read(path)  # as an unfinished run's log: steps 1..4 (or all 5), no error
    assert damaged.last_step == (5 if damage == "bit in the header" else 4)
    expected = "its sha256 differs" if damage == "bit in the header" else r"record 5 \(step 5\) is (torn|missing)"
    with pytest.raises(CheckpointError, match=rf"^{path}: the completed run logged 5 steps .*{expected}.*--step best"):
        log.check_sealed(damaged, sealed, "best")
