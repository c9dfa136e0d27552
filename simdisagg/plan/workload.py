"""The trace as the planner sees it: its base rate, token counts and fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from simdisagg.errors import ConfigError
from simdisagg.prefixtree import infinite_cache_hit_blocks
from simdisagg.trace import Trace


def trace_fingerprint(trace: Trace) -> str:
    """A hash of everything in a trace that changes a simulation (not its file name)."""
    h = hashlib.sha256()
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
