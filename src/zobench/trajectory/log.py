"""The trajectory log of a ZO run: per step, the values its closure returned, in call order.

Why these values suffice (docs/design.md "Optimizer" contract; Malladi et al. 2023, MeZO §2:
"the trajectory is fully described by the step seeds and the projected gradients"): a ZO step
is a deterministic function of the optimizer's state (``state_dict``: step counter, seed,
Hessian diagonal, moments, ...), of directions it draws from its own seeded stream, and of the
numbers its closures return (ℓ+, ℓ-, ℓ0, the N losses of a batched call, a dual loss's tangent,
DiZO's projection-round losses, MeZO-SVRG's anchor losses). Replaying those numbers through the
same optimizer on the same base weights repeats the training's arithmetic exactly
(``replay.py``), with no forward pass.
Checked for every shipped method: no optimizer draws from a global RNG (LeZO's block subsets,
DiZO's round scalars and the low-rank factors come from generators seeded by (seed, step, ...)),
Sparse-MeZO's masks depend on the weights only, and extra batches come through ``bind_data``
closures, whose values are logged like the step's.

File ``<run dir>/trajectory.bin`` (little endian):

* header: ``b"ZOTRAJ\\x01\\n"``, u32 length, that many bytes of JSON (``Header``: config and
  base-weight hashes, method, whether the closure takes ``replicas``);
* one record per step: u32 payload length, payload, u32 CRC-32 of the payload. Payload: u32
  step, u16 number of closure calls, then per call: u8 dtype code (+128: a dual number, primal
  then tangent), u8 ndim, ndim × u32 sizes, the raw values in their own dtype (exact: nothing
  is rounded). A MeZO step whose ± pair is one batched call of fp32 losses: 28 bytes.

Writes are flushed at every step (they survive a kill -9 of the process) and fsynced with
metrics.jsonl (``sync``: before a checkpoint and the summary). A record cut by a kill fails its
length or CRC check: the reader stops at the last complete record and ``open_for_append``
truncates the file there.

Integrity (nothing silent): a kill only ever tears the *last* record, so the reader accepts a
damaged record only at the end of the file (a prefix of a record, or a last record failing its
CRC); a record failing its CRC with bytes after it, a length field that disagrees with the
record's own layout, or a step number out of sequence is corruption, refused in one line naming
the file, the record and its step. A completed run's log is whole: its summary.json records the
record count, byte size and sha256 (``seal``), which ``check_sealed`` compares before a replay,
so a cut or changed log is refused rather than replayed to an earlier step.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..checkpoint import writing
from ..errors import CheckpointError

FILENAME = "trajectory.bin"
MAGIC = b"ZOTRAJ\x01\n"
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.bool]
DUAL = 128
_LEN = struct.Struct("<I")
_HEAD = struct.Struct("<IH")  # step, calls
_CALL = struct.Struct("<BB")  # dtype code (+DUAL), ndim


@dataclass
class Header:
    """What a replay checks before it trusts the log: the run's config, the base weights it
    started from (sha256 of the trainable tensors before step 1), how the closure was called."""

    config_sha256: str
    base_sha256: str
    optimizer: str
    engine: str  # ``<backend>/<mode>``: z differs between backends
    replicas: bool  # the closure accepted ``replicas=N`` (methods branch on it)
    version: int = 1


def weights_sha256(named) -> str:
    """sha256 over the names, dtypes, shapes and raw bytes of ``(name, tensor)`` pairs."""
    digest = hashlib.sha256()
    for name, p in named:
        t = p.detach().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


# -- encoding ---------------------------------------------------------------------------------
def _raw(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def encode_call(call: tuple) -> bytes:
    """One closure return value, ``(primal,)`` or ``(primal, tangent)`` (``tape.as_call``): a
    tensor of any shape and a dtype of ``DTYPES``."""
    primal = call[0]
    code = DTYPES.index(primal.dtype) + (DUAL if len(call) == 2 else 0)
    head = _CALL.pack(code, primal.dim()) + b"".join(_LEN.pack(n) for n in primal.shape)
    return head + b"".join(_raw(t) for t in call)


def _decode_call(buf: bytes, at: int) -> tuple[tuple, int]:
    code, ndim = _CALL.unpack_from(buf, at)
    at += _CALL.size
    shape = tuple(_LEN.unpack_from(buf, at + 4 * i)[0] for i in range(ndim))
    at += 4 * ndim
    dtype = DTYPES[code & ~DUAL]
    numel = 1
    for n in shape:
        numel *= n
    size = numel * torch.empty((), dtype=dtype).element_size()
    parts = []
    for _ in range(2 if code & DUAL else 1):
        parts.append(torch.frombuffer(bytearray(buf[at : at + size]), dtype=torch.uint8).view(dtype).reshape(shape))
        at += size
    return tuple(parts), at


def encode_record(step: int, calls: list) -> bytes:
    payload = _HEAD.pack(step, len(calls)) + b"".join(encode_call(c) for c in calls)
    return _LEN.pack(len(payload)) + payload + _LEN.pack(zlib.crc32(payload))


def decode_payload(payload: bytes) -> tuple[int, list[tuple]]:
    """``(step, calls)``; each call a tuple ``(primal,)`` or ``(primal, tangent)``."""
    step, count = _HEAD.unpack_from(payload, 0)
    at, calls = _HEAD.size, []
    for _ in range(count):
        call, at = _decode_call(payload, at)
        calls.append(call)
    return step, calls


# -- reading ----------------------------------------------------------------------------------
@dataclass
class Trajectory:
    """A log read back: its header, the records of complete steps, the byte offset after the
    last complete record (``end``) and the bytes of a torn last record after it (``tail``,
    ignored: a kill mid-write)."""

    path: Path
    header: Header
    steps: list[tuple[int, list[tuple]]]
    start: int  # the byte offset after the header
    ends: list[int]  # the byte offset after each record
    end: int
    tail: int = 0

    @property
    def last_step(self) -> int:
        return self.steps[-1][0] if self.steps else 0


def _payload_size(buf: bytes, at: int) -> int | None:
    """The size of the payload starting at ``at`` as its own layout gives it (step, call count,
    each call's dtype and shape), or None where ``buf`` ends before the layout does."""
    try:
        _, count = _HEAD.unpack_from(buf, at)
        pos = at + _HEAD.size
        for _ in range(count):
            code, ndim = _CALL.unpack_from(buf, pos)
            shape = struct.unpack_from(f"<{ndim}I", buf, pos + _CALL.size)
            numel = 1
            for n in shape:
                numel *= n
            itemsize = torch.empty((), dtype=DTYPES[code & ~DUAL]).element_size()
            pos += _CALL.size + 4 * ndim + numel * itemsize * (2 if code & DUAL else 1)
    except struct.error:
        return None
    except IndexError:  # a dtype code no record has: the layout is garbage, not a prefix
        return -1
    return pos - at


def _zeros_from(buf: bytes, at: int) -> bool:
    """Whether ``buf`` holds only zero bytes from ``at`` on (what a file system leaves of data it
    allocated but never wrote before a power loss)."""
    return buf.count(0, at) == len(buf) - at


def _corrupted(path: Path, record: int, at: int, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: record {record} (step {record}) at byte {at} {why}: the log is corrupted (a kill only "
        f"tears the last record); steps from {record} on cannot be replayed"
    )


def read(path: Path, until: int | None = None) -> Trajectory:
    """The log at ``path`` (``until``: only the records up to that step, the rest unread). A torn
    last record (a kill mid-write) ends it; damage anywhere else is refused (``_corrupted``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no trajectory log (a ZO run of zobench writes one)")
    buf = path.read_bytes()
    if not buf.startswith(MAGIC) or len(buf) < len(MAGIC) + 4:
        raise CheckpointError(f"{path}: not a zobench trajectory log (bad magic)")
    (size,) = _LEN.unpack_from(buf, len(MAGIC))
    at = len(MAGIC) + 4 + size
    try:
        header = Header(**json.loads(buf[len(MAGIC) + 4 : at]))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable trajectory header ({err})") from None
    start, ends = at, []
    steps: list[tuple[int, list[tuple]]] = []
    while at + 4 <= len(buf) and (until is None or len(steps) < until):
        record = len(steps) + 1  # records are steps 1, 2, ... (a resume cuts the log back first)
        (size,) = _LEN.unpack_from(buf, at)
        end = at + 4 + size + 4
        if size == 0 and _zeros_from(buf, at):
            break  # no record is empty: a tail the file system extended and never wrote (power loss)
        if end > len(buf):
            implied = _payload_size(buf, at + 4)
            if implied is not None and (implied < 0 or at + 4 + implied + 4 <= len(buf)):
                # a torn record is a prefix of a whole one: this one's bytes hold more than a record
                raise _corrupted(path, record, at, f"says {size} bytes long, its contents {implied}")
            break  # torn: the process died while writing this record
        payload = buf[at + 4 : at + 4 + size]
        if _LEN.unpack_from(buf, end - 4)[0] != zlib.crc32(payload):
            if end == len(buf) or _zeros_from(buf, end):
                break  # the last record, garbled by the kill that ended the run
            raise _corrupted(path, record, at, f"fails its CRC check and {len(buf) - end} bytes follow it")
        try:
            step, calls = decode_payload(payload)
        except (struct.error, IndexError, RuntimeError, ValueError) as err:
            raise _corrupted(path, record, at, f"does not decode ({type(err).__name__})") from None
        if step != record:
            raise _corrupted(path, record, at, f"holds step {step}")
        steps.append((step, calls))
        ends.append(end)
        at = end
    tail = 0 if until is not None and len(steps) == until else len(buf) - at
    return Trajectory(path, header, steps, start, ends, at, tail)


def seal(path: Path) -> dict:
    """What summary.json records of a finished run's log: ``records``, ``bytes``, ``sha256``."""
    log = read(path)
    blob = Path(path).read_bytes()
    return {"records": len(log.steps), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def check_sealed(log: Trajectory, sealed: dict, asked) -> None:
    """A completed run's log is the one its summary sealed: same records, bytes and sha256;
    otherwise one line naming the file, the first record missing or changed, and the step asked."""
    size = log.path.stat().st_size
    if len(log.steps) == sealed["records"] and size == sealed["bytes"]:
        if hashlib.sha256(log.path.read_bytes()).hexdigest() == sealed["sha256"]:
            return
        what = "its sha256 differs from the one summary.json records (every record's CRC holds: the header changed)"
    else:
        record = len(log.steps) + 1
        damage = "is torn" if log.tail else "is missing"
        what = f"record {record} (step {record}) {damage}"
    raise CheckpointError(
        f"{log.path}: the completed run logged {sealed['records']} steps in {sealed['bytes']} bytes (summary.json); "
        f"this file holds {len(log.steps)} whole records in {size} bytes, {what}: the log was cut or changed since "
        f"the run, and --step {asked} would not replay the run's weights"
    )


# -- writing ----------------------------------------------------------------------------------
class TrajectoryWriter:
    """Appends step records; ``sync`` makes them durable."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path = Path(path)
        self._file = self.path.open("r+b")
        self._file.truncate(offset)
        self._file.seek(offset)

    def append(self, step: int, calls: list) -> None:
        with writing(self.path):  # a full disk: an OSError naming the log (a resume cuts the torn record)
            self._file.write(encode_record(step, calls))
            self._file.flush()  # in the OS's hands: survives a kill of this process

    def sync(self) -> None:
        if not self._file.closed:
            with writing(self.path):
                self._file.flush()
                os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()


def create(path: Path, header: Header) -> TrajectoryWriter:
    """A new log holding only ``header`` (an existing file is replaced)."""
    blob = json.dumps(asdict(header), sort_keys=True).encode()
    Path(path).write_bytes(MAGIC + _LEN.pack(len(blob)) + blob)
    return TrajectoryWriter(path, len(MAGIC) + 4 + len(blob))


def open_for_append(path: Path, step: int) -> tuple[Trajectory, TrajectoryWriter]:
    """The log of a resumed run, cut after the record of ``step`` (records after it belong to the
    steps the resumed run takes again; a torn tail goes too). Fewer records than ``step``: the
    log lost steps the checkpoint counts, which is refused in one line."""
    try:
        log = read(path, until=step)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; delete {Path(path).parent / 'checkpoint'} to start the run afresh") from None
    kept = [record for record in log.steps if record[0] <= step]
    if len(kept) != step or (kept and kept[-1][0] != step):
        raise CheckpointError(
            f"{path} holds {len(kept)} steps, the checkpoint is at step {step}: the log lost steps; "
            f"delete {path.parent / 'checkpoint'} to start the run afresh"
        )
    end = log.ends[step - 1] if step else log.start
    log.steps, log.ends, log.end = kept, log.ends[:step], end
    return log, TrajectoryWriter(path, end)
