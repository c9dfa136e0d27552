"""trace_stats on hand-made traces with known answers, and the README's Mooncake figure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from simdisagg.trace import Trace, TraceBuilder, load_jsonl
from simdisagg.tracestats import count_cv, format_stats_table, prefix_hits, trace_stats

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "traces"


def _trace(rows: list[tuple[float, int, int, list[int]]], block: int = 10, **extra: list) -> Trace:
    b = TraceBuilder("hand", block)
    for i, (t, inp, out, hashes) in enumerate(rows):
        kwargs = {k: v[i] for k, v in extra.items()}
        b.add(
            line=i + 1,
            timestamp_s=t,
            input_tokens=inp,
            output_tokens=out,
            request_id=f"r{i}",
            hash_ids=hashes,
            **kwargs,
        )
    return b.build()


def test_prefix_hits_count_leading_blocks_seen_earlier() -> None:
    """Hit = leading ids already seen in an earlier request; the count stops at the first miss.

    r0 [1,2,3]: nothing seen → 0.  r1 [1,2,4]: 1,2 seen, 4 not → 2.  r2 [5,1,2]: 5 unseen → 0.
    r3 [1,2,3,4,5]: all seen → 5.  r4 [9,9]: the repeat inside one request is not "earlier" → 0.
    """
    trace = _trace(
        [
            (0, 30, 1, [1, 2, 3]),
            (1, 35, 1, [1, 2, 4]),
            (2, 30, 1, [5, 1, 2]),
            (3, 45, 1, [1, 2, 3, 4, 5]),
            (4, 20, 1, [9, 9]),
        ]
    )
    assert prefix_hits(trace).tolist() == [0, 2, 0, 5, 0]
    stats = trace_stats(trace)
    # token hit = Σ min(hits × 10, input) / Σ input = (0 + 20 + 0 + 45 + 0) / 160
    assert stats["token_hit_fraction"] == pytest.approx(65 / 160)
    assert stats["block_hit_fraction"] == pytest.approx(7 / 16)


def test_requests_without_hashes_have_no_hit_fraction() -> None:
    stats = trace_stats(_trace([(0, 10, 1, []), (1, 10, 1, [])]))
    assert not stats["has_hashes"] and math.isnan(stats["token_hit_fraction"])
    hits = prefix_hits(_trace([(0, 10, 1, [1]), (1, 10, 1, []), (2, 10, 1, [1])]))
    assert hits.tolist() == [0, 0, 1]


def test_span_rate_percentiles_sessions_and_closed_loop() -> None:
    """Span = last − first timestamp; sessions and the closed-loop share from wait_for."""
    rows = [(0.0, 100, 10, []), (2.0, 200, 20, []), (4.0, 300, 30, []), (8.0, 400, 40, [])]
    trace = _trace(
        rows,
        session_id=["a", "a", "a", "b"],
        wait_for=[(), ("r0",), ("r1",), ()],
        tool_wait_s=[0.0, 1.5, 2.5, 0.0],
    )
    s = trace_stats(trace)
    assert s["requests"] == 4 and s["time_span_s"] == 8.0 and s["rate_per_s"] == 0.5
    assert s["input_tokens"]["p50"] == 250.0 and s["input_tokens"]["max"] == 400.0
    assert s["output_tokens"]["mean"] == 25.0
    assert s["sessions"] == 2 and s["steps_per_session"]["max"] == 3.0 and s["steps_per_session"]["p50"] == 2.0
    assert s["closed_loop_fraction"] == 0.5
    assert s["tool_wait_s"]["mean"] == 2.0
    assert s["open_loop_requests"] == 2
    assert s["total_input_tokens"] == 1000


def test_burstiness_of_open_loop_arrivals() -> None:
    """Evenly spaced arrivals have inter-arrival CV 0; counts per 10 s window [2, 0, 1] give CV √(2/3)."""
    even = _trace([(float(t), 1, 1, []) for t in range(5)])
    assert trace_stats(even)["interarrival_cv"] == pytest.approx(0.0)
    assert count_cv(np.array([0.0, 1.0, 25.0]), 10.0) == pytest.approx(math.sqrt(2 / 3))
    bursty = _trace([(0.0, 1, 1, []), (1.0, 1, 1, []), (25.0, 1, 1, [])])
    assert trace_stats(bursty)["count_cv_10s"] == pytest.approx(math.sqrt(2 / 3))
    # gaps 1 and 24: mean 12.5, std 11.5
    assert trace_stats(bursty)["interarrival_cv"] == pytest.approx(11.5 / 12.5)


def test_stats_table_shows_two_traces_side_by_side() -> None:
    a = trace_stats(_trace([(0, 10, 1, [1]), (1, 10, 1, [1])]))
    b = trace_stats(_trace([(0, 20, 2, []), (3, 30, 3, [])]))
    table = format_stats_table(a, b)
    assert len(table.columns) == 3
    console = Console(record=True, width=120)
    console.print(table)
    text = console.export_text()
    assert "token hit fraction" in text and "0.500" in text


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real traces not available: {SHARED} is absent")
def test_mooncake_conversation_token_hit_fraction_matches_readme() -> None:
    """shared/traces/README.md: token hit fraction 0.374, block hit fraction 0.366 (infinite cache)."""
    stats = trace_stats(load_jsonl(SHARED / "mooncake" / "conversation_trace.jsonl"))
    assert stats["token_hit_fraction"] == pytest.approx(0.374, abs=0.001)
    assert stats["block_hit_fraction"] == pytest.approx(0.366, abs=0.001)
    assert stats["count_cv_10s"] == pytest.approx(0.25, abs=0.005)
