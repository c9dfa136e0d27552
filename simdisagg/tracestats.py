"""Descriptive statistics of a trace, computed the way ``shared/traces/README.md`` defines them.

Definitions (all vectorised numpy; percentiles are numpy's linear interpolation):

* **time span** = last − first recorded timestamp, s; **rate** = requests / span.
* **closed-loop fraction** = share of requests that wait for others (their timestamps are only
  the recorded times; in a replay they arrive when what they wait for completes).
* **prefix reuse** (the infinite-cache bound): requests in file order, every block of every
  earlier request is cached; a request's hit is the number of *leading* hash ids already seen
  (stops at the first miss). Block hit fraction = hit blocks / all blocks; token hit fraction
  = Σ min(hit_blocks × block_tokens, input) / Σ input. The cache starts cold.
* **burstiness** of open-loop arrivals: inter-arrival CV = std/mean of the gaps between sorted
  timestamps; count CV at w s = std/mean of the number of arrivals per w-second window, over
  every window from the first to the last arrival (empty windows included).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from simdisagg.prefixtree import infinite_cache_hit_blocks
from simdisagg.trace import Trace

PERCENTILES = (50, 90, 99)
COUNT_WINDOW_S = 10.0


def _summary(values: np.ndarray) -> dict[str, float]:
    """mean, p50, p90, p99 and max of a sample (NaN for an empty one)."""
    if len(values) == 0:
        return {"mean": math.nan, "p50": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan}
    v = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(v, PERCENTILES)
    return {"mean": float(v.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(v.max())}


def prefix_hits(trace: Trace) -> np.ndarray:
    """Leading hash blocks of each request already seen in an earlier request (infinite cache).

    A block id counts as seen when it occurs in a request with a smaller index; the count stops
    at the first block not seen. Vectorised: the first request holding each id is found with
    ``np.unique``, and each request's first miss with a search over the sorted miss positions.
    """
    n = len(trace)
    if trace.prefix_tree_only:  # generated traces: walk the tree, never the hash lists
        return infinite_cache_hit_blocks(trace.prefix_tree(), np.arange(n))
    values = trace.hash_values
    offsets = trace.hash_offsets
    if len(values) == 0:
        return np.zeros(n, dtype=np.int64)
    owner = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
    uniq, first_pos, inverse = np.unique(values, return_index=True, return_inverse=True)
    first_owner = owner[first_pos][inverse]
    missed = np.flatnonzero(first_owner >= owner)  # first seen in this request or later
    starts = offsets[:-1]
    ends = offsets[1:]
    k = np.searchsorted(missed, starts)
    first_miss = np.where(k < len(missed), missed[np.minimum(k, len(missed) - 1)], len(values))
    first_miss = np.minimum(first_miss, ends)
    return (first_miss - starts).astype(np.int64)


def _cv(x: np.ndarray) -> float:
    if len(x) < 2:
        return math.nan
    mean = float(x.mean())
    return float(x.std() / mean) if mean > 0 else math.nan


def count_cv(times_s: np.ndarray, window_s: float = COUNT_WINDOW_S) -> float:
    """Std/mean of the arrivals per ``window_s`` window from the first to the last arrival."""
    if len(times_s) < 2:
        return math.nan
    t = np.asarray(times_s, dtype=np.float64)
    bins = np.floor((t - t.min()) / window_s).astype(np.int64)
    counts = np.bincount(bins)
    return _cv(counts.astype(np.float64))


def trace_stats(trace: Trace) -> dict[str, Any]:
    """Summary statistics of a trace (see the module docstring for each definition).

    Keys: ``source, requests, time_span_s, rate_per_s, input_tokens{mean,p50,p90,p99,max},
    output_tokens{...}, total_input_tokens, total_output_tokens, sessions,
    steps_per_session{...}, closed_loop_fraction, tool_wait_s{...}`` (closed-loop requests),
    ``hash_block_tokens, has_hashes, token_hit_fraction, block_hit_fraction,
    open_loop_requests, interarrival_cv, count_cv_10s``. Undefined values are NaN.
    """
    n = len(trace)
    ts = trace.timestamp_s
    span_s = float(ts.max() - ts.min()) if n else 0.0
    closed = trace.closed_loop
    sessions = trace.session_index[trace.session_index >= 0]
    steps = np.bincount(sessions) if len(sessions) else np.zeros(0, dtype=np.int64)
    steps = steps[steps > 0]
    stats: dict[str, Any] = {
        "source": trace.source,
        "requests": n,
        "time_span_s": span_s,
        "rate_per_s": n / span_s if span_s > 0 else math.nan,
        "input_tokens": _summary(trace.input_tokens),
        "output_tokens": _summary(trace.output_tokens),
        "total_input_tokens": int(trace.input_tokens.sum()),
        "total_output_tokens": int(trace.output_tokens.sum()),
        "sessions": int(len(steps)),
        "steps_per_session": _summary(steps),
        "closed_loop_fraction": float(closed.mean()) if n else math.nan,
        "tool_wait_s": _summary(trace.tool_wait_s[closed]),
        "hash_block_tokens": int(trace.hash_block_tokens),
        "has_hashes": bool(trace.has_hashes),
        "token_hit_fraction": math.nan,
        "block_hit_fraction": math.nan,
    }
    if trace.has_hashes:
        hits = prefix_hits(trace)
        hit_tokens = np.minimum(hits * trace.hash_block_tokens, trace.input_tokens)
        stats["token_hit_fraction"] = float(hit_tokens.sum() / trace.input_tokens.sum())
        total_blocks = (
            int(trace.prefix_tree().path_lengths().sum()) if trace.prefix_tree_only else len(trace.hash_values)
        )
        stats["block_hit_fraction"] = float(hits.sum() / total_blocks)
    open_ts = np.sort(ts[~closed])
    stats["open_loop_requests"] = int(len(open_ts))
    stats["interarrival_cv"] = _cv(np.diff(open_ts))
    stats["count_cv_10s"] = count_cv(open_ts, COUNT_WINDOW_S)
    return stats


# (label, key, sub-key, format) rows of the table, in display order
_ROWS: tuple[tuple[str, str, str | None, str], ...] = (
    ("requests", "requests", None, "{:,.0f}"),
    ("time span, s", "time_span_s", None, "{:,.0f}"),
    ("rate, req/s", "rate_per_s", None, "{:.3g}"),
    ("input tokens mean", "input_tokens", "mean", "{:,.0f}"),
    ("input tokens p50 / p90 / p99", "input_tokens", "pcts", ""),
    ("input tokens max", "input_tokens", "max", "{:,.0f}"),
    ("output tokens mean", "output_tokens", "mean", "{:,.0f}"),
    ("output tokens p50 / p90 / p99", "output_tokens", "pcts", ""),
    ("output tokens max", "output_tokens", "max", "{:,.0f}"),
    ("sessions", "sessions", None, "{:,.0f}"),
    ("steps per session mean", "steps_per_session", "mean", "{:.1f}"),
    ("steps per session p50 / p90 / p99", "steps_per_session", "pcts", ""),
    ("closed-loop fraction", "closed_loop_fraction", None, "{:.3f}"),
    ("tool wait s p50 / p90 / p99", "tool_wait_s", "pcts", ""),
    ("token hit fraction (infinite cache)", "token_hit_fraction", None, "{:.3f}"),
    ("block hit fraction", "block_hit_fraction", None, "{:.3f}"),
    ("open-loop requests", "open_loop_requests", None, "{:,.0f}"),
    ("inter-arrival CV (open loop)", "interarrival_cv", None, "{:.2f}"),
    ("count CV at 10 s (open loop)", "count_cv_10s", None, "{:.2f}"),
)


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return spec.format(value)


def _cell(stats: dict[str, Any], key: str, sub: str | None, spec: str) -> str:
    value = stats.get(key)
    if sub is None:
        return _fmt(value, spec)
    if not isinstance(value, dict):
        return "–"
    if sub == "pcts":
        fmt = "{:,.3g}" if key == "tool_wait_s" else "{:,.0f}"
        return " / ".join(_fmt(value.get(p), fmt) for p in ("p50", "p90", "p99"))
    return _fmt(value.get(sub), spec)


def format_stats_table(stats: dict[str, Any], other: dict[str, Any] | None = None) -> Any:
    """A rich :class:`~rich.table.Table` of one trace's statistics, or two side by side."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="trace statistics", show_lines=False)
    table.add_column("statistic")
    columns = [stats] if other is None else [stats, other]
    for s in columns:  # a file name is text, not markup: trace[1].jsonl keeps its brackets
        table.add_column(escape(str(s.get("source", ""))), justify="right", overflow="fold")
    for label, key, sub, spec in _ROWS:
        table.add_row(label, *(_cell(s, key, sub, spec) for s in columns))
    return table
