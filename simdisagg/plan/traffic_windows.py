"""Consecutive windows of a trace, for the fixed-ratio-against-traffic-shifts study."""

from __future__ import annotations

import numpy as np

from simdisagg.trace import Trace


def split_windows(trace: Trace, k: int) -> list[tuple[float, float, Trace | None]]:
    """``k`` consecutive equal-duration windows of a trace by recorded arrival time, each as a
    trace of its own whose timestamps start at the window's start (``None`` if empty)."""
    ts = trace.timestamp_s
    t0, t1 = float(ts.min()), float(ts.max())
    edges = np.linspace(t0, t1, k + 1)
    which = np.clip(np.searchsorted(edges, ts, side="right") - 1, 0, k - 1)
    out: list[tuple[float, float, Trace | None]] = []
    for w in range(k):
        idx = np.flatnonzero(which == w)
        if len(idx) == 0:
            out.append((float(edges[w]), float(edges[w + 1]), None))
            continue
        sub = trace.subset(idx)
        sub.timestamp_s = sub.timestamp_s - edges[w]
        sub.source = f"{trace.source}[window {w + 1}/{k}]"
        out.append((float(edges[w]), float(edges[w + 1]), sub))
    return out
