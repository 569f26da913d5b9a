"""Reading a JSONL file line by line: each line one JSON value, a UTF-8 byte-order mark at the
start accepted, and the mirror's symlink stubs followed. What a row must hold is ``rows.py``'s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def follow_link_stub(path: Path) -> Path:
    """The mirror's seed folders symlink ``test.jsonl`` to one shared copy; a checkout or copy made
    without symlink support (git ``core.symlinks=false``) leaves a small text file holding the
    target path (``../test.jsonl``) instead. Follow it like the symlink it stands for."""
    if path.stat().st_size > 512:
        return path
    target = path.read_bytes().decode("utf-8", errors="replace").strip()  # a bad byte is the reader's to report
    if target.endswith(".jsonl") and not target.startswith("{") and "\n" not in target:
        return path.parent / target
    return path


def parse_line(raw: bytes, number: int):
    """One JSON value from one line of bytes; ValueError says what is wrong. A UTF-8 byte-order
    mark at the start of the file is accepted (editors on Windows write one) and dropped."""
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg} at column {err.colno})") from None


def lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of every non-blank line of ``path``."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                yield number, raw
