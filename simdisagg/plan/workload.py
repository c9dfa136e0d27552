"""The trace as the planner sees it: its base rate, token counts and fingerprint, and the
windows its runs replay (a leading part of it, or copies of it end to end).

A steady-state answer needs an arrival window long against the requests' lifetimes
(:mod:`simdisagg.plan.steady_state`). A trace shorter than that is extended by
:func:`extend_trace`: copies placed end to end, one mean arrival gap apart, each with fresh
request ids, sessions and prefix-cache hashes (a copy is new traffic of the same kind, not a
replay that would hit the first copy's cache); a longer trace is cut to the window a
screening run needs by :func:`trace_head`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from simdisagg.errors import ConfigError
from simdisagg.prefixtree import PrefixTree, infinite_cache_hit_blocks
from simdisagg.trace import Trace


def trace_fingerprint(trace: Trace) -> str:
    """A hash of everything in a trace that changes a simulation (not its file name)."""
    h = hashlib.sha256()
    hashes: tuple[np.ndarray, ...]
    if trace.prefix_tree_only:  # never make the hash lists just to fingerprint them
        tree = trace.prefix_tree()
        hashes = (tree.parent, tree.blocks, tree.request_segment)
    else:
        hashes = (trace.hash_offsets, trace.hash_values)
    for arr in (
        trace.timestamp_s, trace.input_tokens, trace.output_tokens, trace.session_index, trace.tool_wait_s,
        trace.wait_offsets, trace.wait_indices, *hashes,
    ):
        a = np.ascontiguousarray(arr)
        h.update(str(a.dtype).encode())
        h.update(a.tobytes())
    h.update(str(trace.hash_block_tokens).encode())
    return h.hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class TraceLoad:
    """What the planner needs of a trace: its base rate and per-request token counts."""

    requests: int
    span_s: float
    base_rate_rps: float
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    #: Prompt tokens left to compute with an ideal (unbounded, cluster-wide) prefix cache.
    new_tokens: np.ndarray
    fingerprint: str


def trace_load(trace: Trace, prefix_caching: bool) -> TraceLoad:
    """Base rate (open-loop requests over their arrival span) and token counts of a trace."""
    open_loop = ~trace.closed_loop
    ts = trace.timestamp_s[open_loop]
    span = float(ts.max() - ts.min()) if len(ts) else 0.0
    if len(ts) < 2 or span <= 0:
        raise ConfigError(
            f"{trace.source}: the planner scales open-loop arrival times, and this trace has "
            f"{len(ts)} open-loop request(s) over {span:g} s"
        )
    inp = trace.input_tokens.astype(np.int64)
    new = inp.copy()
    if prefix_caching and trace.has_hashes:
        hits = infinite_cache_hit_blocks(trace.prefix_tree(), np.argsort(trace.timestamp_s, kind="stable"))
        new = inp - np.minimum(hits * trace.hash_block_tokens, inp - 1)
    return TraceLoad(
        requests=len(trace),
        span_s=span,
        base_rate_rps=len(ts) / span,
        input_tokens=inp,
        output_tokens=trace.output_tokens.astype(np.int64),
        new_tokens=new,
        fingerprint=trace_fingerprint(trace),
    )


def _open_loop_times(trace: Trace) -> np.ndarray:
    return trace.timestamp_s[~trace.closed_loop]


def copy_period_s(trace: Trace) -> float:
    """Recorded seconds from the start of one copy to the start of the next in
    :func:`extend_trace`: the open-loop span plus one mean gap, so that the extended trace keeps
    the trace's arrival rate."""
    ts = _open_loop_times(trace)
    span = float(ts.max() - ts.min())
    return span + span / max(len(ts) - 1, 1)


def extend_trace(trace: Trace, copies: int) -> Trace:
    """``copies`` copies of ``trace`` end to end, :func:`copy_period_s` apart, as one trace.

    Every copy has fresh request ids (``<id>~<copy>``), sessions (``<session>~<copy>``) and
    prefix-cache hashes, and its ``wait_for`` links stay within the copy. Copy 0 keeps the
    original ids. Built as whole columns, so a long extension costs no Python loop per hash."""
    if copies < 1:
        raise ValueError("copies must be >= 1")
    if copies == 1:
        return trace
    n = len(trace)
    idx = np.tile(np.arange(n), copies)
    copy = np.repeat(np.arange(copies, dtype=np.int64), n)
    period = copy_period_s(trace)
    sessions = trace.session_index[idx].copy()
    in_session = sessions >= 0
    sessions[in_session] += copy[in_session] * len(trace.session_names)
    session_names = [name if c == 0 else f"{name}~{c}" for c in range(copies) for name in trace.session_names]
    request_ids = [rid if c == 0 else f"{rid}~{c}" for c in range(copies) for rid in trace.request_ids]
    wait_counts = np.diff(trace.wait_offsets)
    wait_indices = np.tile(trace.wait_indices, copies) + np.repeat(
        np.arange(copies, dtype=np.int64) * n, len(trace.wait_indices)
    )
    hashes: dict[str, object]
    if trace.prefix_tree_only:
        # Copy the tree: segment ids and block keys shifted per copy, so no copy shares a block.
        tree = trace.prefix_tree()
        segs = tree.num_segments
        key_span = int((tree.key_base + tree.blocks).max()) if segs else 0
        seg_shift = np.repeat(np.arange(copies, dtype=np.int64) * segs, segs)
        parent = np.tile(tree.parent, copies)
        parent = np.where(parent >= 0, parent + seg_shift, -1)
        request_segment = tree.request_segment[idx].copy()
        has = request_segment >= 0
        request_segment[has] += copy[has] * segs
        hashes = {
            "_hash_offsets": None,
            "_hash_values": None,
            "_prefix_tree": PrefixTree(
                parent, np.tile(tree.start_block, copies), np.tile(tree.blocks, copies),
                np.tile(tree.key_base, copies) + np.repeat(np.arange(copies, dtype=np.int64) * key_span, segs),
                request_segment,
            ),
        }
    else:
        values = trace.hash_values
        shift = int(values.max()) + 1 if len(values) else 0
        counts = np.diff(trace.hash_offsets)
        hashes = {
            "_hash_offsets": np.concatenate(([0], np.cumsum(np.tile(counts, copies)))).astype(np.int64),
            "_hash_values": np.tile(values, copies) + np.repeat(np.arange(copies, dtype=np.int64) * shift, len(values)),
        }
    return Trace(
        source=f"{trace.source} (x{copies}, tiled)",
        request_ids=request_ids,
        timestamp_s=trace.timestamp_s[idx] + copy * period,
        input_tokens=trace.input_tokens[idx].copy(),
        output_tokens=trace.output_tokens[idx].copy(),
        session_index=sessions,
        session_names=session_names,
        tool_wait_s=trace.tool_wait_s[idx].copy(),
        wait_offsets=np.concatenate(([0], np.cumsum(np.tile(wait_counts, copies)))).astype(np.int64),
        wait_indices=wait_indices.astype(np.int64),
        hash_block_tokens=trace.hash_block_tokens,
        line_numbers=trace.line_numbers[idx].copy() if len(trace.line_numbers) else trace.line_numbers,
        **hashes,  # type: ignore[arg-type]
    )


def trace_head(trace: Trace, count: int) -> Trace:
    """The first ``count`` requests by recorded arrival (all of them if fewer), as a trace.

    A request waits only for earlier ones, so a time-ordered trace is cut by slicing its
    columns; an unordered one goes through :meth:`Trace.subset`."""
    n = len(trace)
    if count >= n:
        return trace
    ts = trace.timestamp_s
    if not np.all(ts[1:] >= ts[:-1]):
        order = np.argsort(ts, kind="stable")
        return trace.subset(np.sort(order[:count]))
    k = count
    hashes: dict[str, object]
    if trace.prefix_tree_only:
        tree = trace.prefix_tree()
        hashes = {
            "_hash_offsets": None,
            "_hash_values": None,
            "_prefix_tree": PrefixTree(tree.parent, tree.start_block, tree.blocks, tree.key_base,
                                       tree.request_segment[:k]),
        }
    else:
        offsets = trace.hash_offsets
        hashes = {"_hash_offsets": offsets[: k + 1], "_hash_values": trace.hash_values[: offsets[k]]}
    return Trace(
        source=f"{trace.source} (first {k})",
        request_ids=trace.request_ids[:k],
        timestamp_s=ts[:k],
        input_tokens=trace.input_tokens[:k],
        output_tokens=trace.output_tokens[:k],
        session_index=trace.session_index[:k],
        session_names=trace.session_names,
        tool_wait_s=trace.tool_wait_s[:k],
        wait_offsets=trace.wait_offsets[: k + 1],
        wait_indices=trace.wait_indices[: trace.wait_offsets[k]],
        hash_block_tokens=trace.hash_block_tokens,
        line_numbers=trace.line_numbers[:k] if len(trace.line_numbers) else trace.line_numbers,
        **hashes,  # type: ignore[arg-type]
    )


@dataclass(frozen=True, slots=True)
class RunWindow:
    """The trace one run replays: ``copies`` end to end (tiled) or its first ``head``
    requests, and what it holds at the run's rate scale."""

    copies: int
    head: int
    requests: int
    window_s: float  # simulated seconds from the first to the last open-loop arrival
    capped: bool  # the window asked for needed more than the request cap allows


def plan_window(trace: Trace, rate_scale: float, window_s: float, requests: int, cut: bool, max_requests: int) -> RunWindow:
    """The smallest replay of ``trace`` at ``rate_scale`` whose arrival window lasts at least
    ``window_s`` simulated seconds and holds at least ``requests`` requests: the whole trace
    when it does; its first requests when ``cut`` allows and they do; else copies end to end.
    Never more than ``max_requests`` requests (``capped`` then says so)."""
    n = len(trace)
    ts = _open_loop_times(trace)
    t0 = float(ts.min())
    span_s = (float(ts.max()) - t0) / rate_scale
    if span_s >= window_s and n >= requests:
        if not cut:
            return RunWindow(1, n, n, span_s, False)
        ordered = np.sort(trace.timestamp_s)
        by_time = int(np.searchsorted(ordered, t0 + window_s * rate_scale, side="left")) + 1
        head = min(n, max(requests, by_time))
        return RunWindow(1, head, head, (float(ordered[head - 1]) - t0) / rate_scale, False)
    period_s = copy_period_s(trace) / rate_scale
    copies = max(math.ceil((window_s - span_s) / period_s) + 1, math.ceil(requests / n), 1)
    capped = copies * n > max_requests
    if capped:
        copies = max(1, max_requests // n)
    return RunWindow(copies, n, copies * n, span_s + (copies - 1) * period_s, capped)


def window_trace(trace: Trace, window: RunWindow) -> Trace:
    """The trace a :class:`RunWindow` describes."""
    if window.copies > 1:
        return extend_trace(trace, window.copies)
    return trace_head(trace, window.head)
