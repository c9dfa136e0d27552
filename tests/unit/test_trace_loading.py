"""The native trace reader: the columnar path gives exactly what the line-by-line path gives.

``load_jsonl`` reads lines in the written form as columns and falls back to reading line by
line (which names the first bad line) for anything else. The two must agree on every file:
the same trace, bit for bit, or the same error. Hypothesis writes traces in the columnar form
and then damages them (a byte changed, inserted or deleted), so both valid and invalid files
of that shape are compared.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simdisagg.errors import SimdisaggError, TraceError
from simdisagg.importers import import_trace, load_trace
from simdisagg.trace import Trace, load_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "traces" / "mooncake-conversation-5min.jsonl", ROOT / "traces" / "agentic-example.jsonl"]
COLUMNS = ("timestamp_s", "input_tokens", "output_tokens", "session_index", "tool_wait_s", "wait_offsets",
           "wait_indices", "hash_offsets", "hash_values", "line_numbers")  # fmt: skip


def assert_same(a: Trace, b: Trace) -> None:
    """Two traces are equal column by column, dtypes included."""
    assert a.request_ids == b.request_ids
    assert a.session_names == b.session_names
    assert (a.hash_block_tokens, a.source) == (b.hash_block_tokens, b.source)
    for name in COLUMNS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


def outcome(path: Path, columnar: bool) -> Trace | str:
    """The trace, or the error message, of one reading path."""
    try:
        return load_jsonl(path, columnar=columnar)
    except SimdisaggError as exc:
        return str(exc)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_columnar_and_line_by_line_agree_on_the_examples(path: Path) -> None:
    """Both shipped examples (Mooncake-shaped and agentic) read to the same trace both ways."""
    assert_same(load_jsonl(path), load_jsonl(path, columnar=False))


_ids = st.text(st.characters(codec="utf-8", exclude_characters='"\\', exclude_categories=("Cs", "Cc")), min_size=1, max_size=6)


@st.composite
def written_traces(draw: st.DrawFn) -> bytes:
    """A trace in the written form (with ", " and ": " separators or compact ones): some lines
    with ids, sessions, waits and hash lists."""
    n = draw(st.integers(1, 12))
    block = draw(st.sampled_from([16, 64, 512]))
    lines = ['{"format": "simdisagg-trace", "version": 1, "hash_block_tokens": %d}' % block] if draw(st.booleans()) else []
    if not lines:
        block = 512
    with_ids = draw(st.booleans())
    ids: list[str] = []
    for i in range(n):
        rid = f"{draw(_ids)}-{i}"
        inp = draw(st.integers(1, 5000))
        parts = []
        if with_ids:
            parts.append(f'"request_id": "{rid}"')
            ids.append(rid)
        ts = draw(st.one_of(st.integers(0, 10**9), st.floats(0, 1e9, allow_nan=False).map(lambda x: round(x, 3))))
        parts += [f'"timestamp": {ts}', f'"input_length": {inp}', f'"output_length": {draw(st.integers(1, 900))}']
        if draw(st.booleans()):
            parts.append(f'"session_id": "{draw(_ids)}"')
        if with_ids and ids[:-1] and draw(st.booleans()):
            waits = draw(st.lists(st.sampled_from(ids[:-1]), min_size=1, max_size=2, unique=True))
            parts.append('"wait_for": [%s], "tool_wait_ms": %s' % (", ".join(f'"{w}"' for w in waits), draw(st.integers(0, 5000))))
        if draw(st.booleans()):
            count = draw(st.sampled_from([inp // block, -(-inp // block)]))
            hashes = draw(st.lists(st.integers(0, 2**62), min_size=count, max_size=count))
            parts.append('"hash_ids": [%s]' % ", ".join(map(str, hashes)))
        lines.append("{" + ", ".join(parts) + "}")
    text = "\n".join(lines) + "\n"
    if draw(st.booleans()):  # the compact separators other writers use
        text = text.replace(", ", ",").replace('": ', '":')
    return text.encode()


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A written trace, sometimes with one byte changed, inserted or deleted."""
    data = bytearray(draw(written_traces()))
    how = draw(st.sampled_from(["none", "change", "insert", "delete"]))
    if how != "none" and data:
        at = draw(st.integers(0, len(data) - 1))
        byte = draw(st.sampled_from(list(b'0123456789-.e ,[]{}":nx\n\xff')))
        if how == "change":
            data[at] = byte
        elif how == "insert":
            data.insert(at, byte)
        else:
            del data[at]
    return bytes(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged())
def test_columnar_path_agrees_with_line_by_line_path(tmp_path: Path, data: bytes) -> None:
    """For any file of the written shape, valid or damaged: the same trace or the same error."""
    path = tmp_path / "t.jsonl"
    path.write_bytes(data)
    fast, slow = outcome(path, True), outcome(path, False)
    if isinstance(slow, str) or isinstance(fast, str):
        assert fast == slow
    else:
        assert_same(fast, slow)


def test_leading_zero_and_overlong_hash_ids_are_not_read_as_numbers(tmp_path: Path) -> None:
    """``[01]`` is not JSON and ``[99999999999999999999]`` does not fit 64 bits: both are
    refused (numpy's reader alone would read 1 and saturate)."""
    for body, needle in (("01", "not valid JSON"), ("99999999999999999999", "less than or equal")):
        path = tmp_path / "t.jsonl"
        path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 2, "hash_ids": [%s]}\n' % body)
        with pytest.raises(TraceError, match=needle):
            load_jsonl(path)


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark (Windows editors write one) is dropped, in JSONL and in CSV."""
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + EXAMPLES[0].read_bytes())
    assert_same(load_jsonl(jsonl), load_jsonl(jsonl, columnar=False))
    assert len(load_trace(jsonl)) == 918
    csv = tmp_path / "a.csv"
    csv.write_bytes(b"\xef\xbb\xbfTIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,100,10\n")
    assert import_trace(csv).format == "azure"


def test_a_fifo_is_read_once(tmp_path: Path) -> None:
    """A trace from a pipe or FIFO (``<(zcat trace.gz)``) is read once and gives the same
    trace as the file; errors still name the FIFO."""
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)

    def feed(data: bytes) -> threading.Thread:
        def write() -> None:
            with open(fifo, "wb") as handle:
                handle.write(data)

        thread = threading.Thread(target=write)
        thread.start()
        return thread

    writer = feed(EXAMPLES[1].read_bytes())
    trace = load_trace(fifo)
    writer.join()
    assert trace.source == str(fifo) and len(trace) == len(load_trace(EXAMPLES[1]))
    writer = feed(b'{"timestamp": 0, "input_length": 5}\n')
    with pytest.raises(TraceError, match=f"{fifo}:1: field 'output_length'"):
        load_trace(fifo)
    writer.join()


def test_repr_is_one_line() -> None:
    """A trace prints as one line: source, requests, sessions, closed loop, tokens, hashes."""
    text = repr(load_trace(EXAMPLES[1]))
    assert "\n" not in text and text.startswith("Trace(") and "459 requests" in text and "closed-loop" in text


def test_written_trace_reads_back_by_the_columnar_path(tmp_path: Path) -> None:
    """What write_jsonl writes, load_jsonl reads back to the same trace (columnar form)."""
    trace = load_jsonl(EXAMPLES[1])
    out = tmp_path / "copy.jsonl"
    write_jsonl(trace, out)
    again = load_jsonl(out)
    assert again.request_ids == trace.request_ids
    assert np.array_equal(again.hash_values, trace.hash_values)
    assert np.array_equal(again.wait_indices, trace.wait_indices)
    buffer = io.BytesIO(out.read_bytes())
    assert buffer.getvalue().count(b"\n") == len(trace) + 1
