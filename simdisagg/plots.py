"""Figures of plans and runs, shared by the CLI (``simdisagg plan --plots``) and the notebooks.

matplotlib is imported inside each function, and only its object-oriented API is used
(:class:`matplotlib.figure.Figure` with ``savefig``): importing :mod:`simdisagg` stays cheap and
no global backend or pyplot state is touched. Each function takes plain data (lists of dicts,
numpy arrays), writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simdisagg.output import atomic_write

_DISAGG_COLOUR = "#1f77b4"
_AGG_COLOUR = "#d62728"


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png"))
    return path


def goodput_vs_prefill_fraction(
    rows: Sequence[Mapping[str, Any]], path: Path, title: str = "", target_rps: float | None = None
) -> Path:
    """Goodput (req/s sustained within the SLO) of every simulated split against its prefill
    share of the GPUs, one line per family; aggregated baselines as horizontal lines; the best
    marked; ``target_rps`` (a target rate) as a dotted line."""
    fig = _figure()
    ax = fig.add_subplot()
    fams: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["mode"] == "disaggregated" and r["status"] == "evaluated":
            name = r["label"].split(" ", 1)[1]
            fams.setdefault(name, []).append((r["prefill_fraction"], r["goodput_rps"]))
    for name, pts in fams.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    styles = ["--", ":", "-.", (0, (5, 1))]
    aggs = [r for r in rows if r["mode"] == "aggregated" and r["status"] == "evaluated"]
    for k, r in enumerate(aggs):
        ax.axhline(r["goodput_rps"], color=_AGG_COLOUR, linestyle=styles[k % len(styles)], linewidth=1.2,
                   label=r["label"])
    if target_rps is not None:
        ax.axhline(target_rps, color="black", linestyle=":", linewidth=1.5, label=f"target {target_rps:.3g} req/s")
    best = next((r for r in rows if r["status"] == "evaluated" and r["goodput_rps"] > 0), None)
    if best is not None and best["mode"] == "disaggregated":
        ax.plot([best["prefill_fraction"]], [best["goodput_rps"]], marker="*", markersize=16, color="gold",
                markeredgecolor="black", linestyle="none", label=f"best: {best['ratio']}")
    ax.set_xlabel("prefill share of the GPUs")
    ax.set_ylabel("goodput (req/s sustained within the SLO)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(_wrap(title or "goodput against the prefill:decode split"), fontsize=8)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def _wrap(text: str, width: int = 110) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def pareto(points: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Output tokens/s per GPU against tokens/s per user (1 / mean TPOT) of every rate the
    search simulated to the end on its long window. Filled markers met the SLO at steady
    state, hollow ones did not; each link/GPU mix (``hardware``) gets one labelled frontier,
    drawn only through the points that met the SLO."""
    from simdisagg.plan import pareto_frontier

    fig = _figure()
    ax = fig.add_subplot()
    mixes = list(dict.fromkeys(p.get("hardware") or p["mode"] for p in points))
    cmap = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    for k, mix in enumerate(mixes):
        colour = cmap[k % len(cmap)]
        pts = [p for p in points if (p.get("hardware") or p["mode"]) == mix]
        x = np.array([p["tokens_per_s_per_user"] for p in pts], dtype=float)
        y = np.array([p["output_tok_s_per_gpu"] for p in pts], dtype=float)
        met = np.array([bool(p["meets_slo"]) for p in pts])
        ax.scatter(x[met], y[met], s=14, color=colour, alpha=0.6)
        ax.scatter(x[~met], y[~met], s=14, facecolors="none", edgecolors=colour, alpha=0.4)
        ok = np.flatnonzero(met)
        front = ok[pareto_frontier(x[ok], y[ok])] if len(ok) else ok
        if len(front):
            ax.plot(x[front], y[front], color=colour, linewidth=1.8, marker="o", markersize=3,
                    label=f"{mix}: frontier of SLO-meeting rates")
        else:
            ax.plot([], [], color=colour, label=f"{mix}: no rate met the SLO")
    ax.scatter([], [], s=14, color="grey", label="meets the SLO (filled) / misses it (hollow)")
    ax.set_xlabel("tokens/s per user (1 / mean TPOT)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.grid(alpha=0.3)
    ax.set_title(_wrap(title or "throughput per GPU against per-user speed, rates simulated"), fontsize=8)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def _cdf(ax: Any, values: np.ndarray, label: str, colour: str, scale: float) -> None:
    v = np.sort(values[~np.isnan(values)]) * scale
    if len(v) == 0:
        return
    ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", color=colour, label=label)


def latency_cdfs(
    samples: Mapping[str, Mapping[str, np.ndarray]], path: Path, slo_ttft_s: float, slo_tpot_s: float,
    title: str = "",
) -> Path:
    """TTFT and TPOT CDFs (ms) of a few configurations (e.g. the best disaggregated and the best
    aggregated, each at its goodput rate), with the SLO targets as vertical lines."""
    fig = _figure(10.0, 4.2)
    ax_ttft, ax_tpot = fig.subplots(1, 2)
    colours = [_DISAGG_COLOUR, _AGG_COLOUR, "#2ca02c", "#9467bd"]
    for k, (label, lat) in enumerate(samples.items()):
        colour = colours[k % len(colours)]
        _cdf(ax_ttft, np.asarray(lat["ttft_s"], dtype=float), label, colour, 1000.0)
        _cdf(ax_tpot, np.asarray(lat["tpot_s"], dtype=float), label, colour, 1000.0)
    for ax, slo, name in ((ax_ttft, slo_ttft_s, "TTFT"), (ax_tpot, slo_tpot_s, "TPOT")):
        ax.axvline(slo * 1000.0, color="black", linestyle="--", linewidth=1, label=f"SLO {slo * 1000:g} ms")
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_xscale("log")
    fig.suptitle(_wrap(title or "latency at each configuration's goodput rate"), fontsize=8)
    return _save(fig, path)


def window_bars(windows: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Per trace window: the goodput of the fixed ratio and of the window's own best split, with
    the share of time each pool of the fixed ratio was saturated at its goodput."""
    fig = _figure()
    ax = fig.add_subplot()
    rows = [w for w in windows if w.get("goodput_rps") is not None]
    x = np.arange(len(rows))
    width = 0.38
    ax.bar(x - width / 2, [w["goodput_rps"] for w in rows], width, label="fixed ratio", color=_DISAGG_COLOUR)
    ax.bar(x + width / 2, [w["best_goodput_rps"] for w in rows], width, label="best split of the window",
           color="#2ca02c")
    ax.set_xticks(x, [f"w{w['window']}: {w['best_split']}\n{w['limiting_pool']}" for w in rows])
    ax.set_ylabel("goodput (req/s sustained within the SLO)")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(x, [w.get("prefill_saturated") or math.nan for w in rows], color="#ff7f0e", marker="o",
             label="prefill saturated (fixed ratio)")
    ax2.plot(x, [w.get("decode_saturated") or math.nan for w in rows], color="black", marker="s",
             label="decode saturated (fixed ratio)")
    ax2.set_ylabel("share of time saturated at the goodput")
    ax2.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="upper left")
    ax2.legend(fontsize=7, loc="upper right")
    ax.set_title(_wrap(title or "a fixed ratio against consecutive windows of the trace"), fontsize=8)
    return _save(fig, path)


def _interval_integral(starts: np.ndarray, ends: np.ndarray, weights: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """For each bin of ``edges``, the integral over it of ``sum_i weights[i] * [starts[i] <= t < ends[i]]``.

    Uses ``F(t) = sum_{s_i<=t} w_i (t - s_i) - sum_{e_i<=t} w_i (t - e_i)``, the integral from
    0 to ``t``, evaluated at every edge with sorted prefix sums."""
    ok = np.isfinite(starts) & np.isfinite(ends) & (ends > starts)
    s, e, w = starts[ok], ends[ok], weights[ok]

    def part(points: np.ndarray) -> np.ndarray:
        order = np.argsort(points)
        p, wp = points[order], w[order]
        cw = np.concatenate(([0.0], np.cumsum(wp)))
        cwp = np.concatenate(([0.0], np.cumsum(wp * p)))
        k = np.searchsorted(p, edges, side="right")
        return edges * cw[k] - cwp[k]

    total = part(s) - part(e)
    return np.diff(total)


def _busy_segments(starts: np.ndarray, ends: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The union, per owner, of the intervals ``[starts, ends)``: when each instance is busy."""
    ok = np.isfinite(starts) & np.isfinite(ends) & (ends > starts) & (owners >= 0)
    s, e, o = starts[ok], ends[ok], owners[ok]
    if len(s) == 0:
        return np.zeros(0), np.zeros(0)
    order = np.lexsort((s, o))
    s, e, o = s[order], e[order], o[order]
    # Within an owner, a new segment starts where an interval begins after every earlier one
    # ended: a running maximum of the ends, kept per owner by lifting each owner's times above
    # the previous owner's.
    lift = (o - o.min()) * (float(np.max(e)) + 1.0)
    running = np.maximum.accumulate(e + lift) - lift
    prev_end = np.r_[-np.inf, running[:-1]]
    prev_end[np.r_[True, o[1:] != o[:-1]]] = -np.inf
    new = s > prev_end
    seg_id = np.cumsum(new) - 1
    seg_start = s[new]
    seg_end = np.full(len(seg_start), -np.inf)
    np.maximum.at(seg_end, seg_id, e)
    return seg_start, seg_end


def run_timelines(runs: Sequence[tuple[str, Any, Any]], path: Path, bins: int = 200, title: str = "") -> Path:
    """Per pool over simulated time: busy fraction of its instances, mean queue length and KV
    memory held by requests in flight (fraction of the pool's capacity), one line per pool of
    each run (``runs``: ``(label, RunResult, RunConfig)``). Derived from the per-request
    timestamps: a prefill instance is busy while it computes a prompt, a decode instance while
    it has a request in its batch; KV is each request's blocks from allocation to release."""
    fig = _figure(9.0, 8.0)
    ax_busy, ax_queue, ax_kv = fig.subplots(3, 1, sharex=True)
    end = 0.0
    for _, result, _ in runs:
        t = result.recorder.times["completed_at"]
        if np.isfinite(t).any():
            end = max(end, float(np.nanmax(t)))
    edges = np.linspace(0.0, max(end, 1e-9), bins + 1)
    mids = 0.5 * (edges[1:] + edges[:-1])
    width = np.diff(edges)
    styles = ["-", "--"]
    colours = {"prefill": "#ff7f0e", "decode": _DISAGG_COLOUR, "aggregated": _AGG_COLOUR}
    for k, (label, result, cfg) in enumerate(runs):
        rec = result.recorder
        t = rec.times
        inp = result.input_tokens.astype(np.float64)
        out = result.output_tokens.astype(np.float64)
        caps = result.meta.get("kv_capacity_blocks", {})
        if cfg.mode == "aggregated":
            pool = cfg.aggregated_pool()
            pools = {
                "aggregated": (
                    pool.count, t["prefill_start_at"], t["completed_at"], rec.prefill_instance,
                    (t["prefill_enqueued_at"], t["prefill_start_at"]), np.ceil((inp + out) / pool.kv_block_tokens),
                    t["prefill_start_at"], t["completed_at"],
                ),
            }
        else:
            release = np.fmax(t["kv_send_end_at"], t["first_token_at"])
            pools = {
                "prefill": (
                    cfg.prefill.count, t["prefill_start_at"], t["first_token_at"], rec.prefill_instance,
                    (t["prefill_enqueued_at"], t["prefill_start_at"]), np.ceil(inp / cfg.prefill.kv_block_tokens),
                    t["prefill_start_at"], release,
                ),
                "decode": (
                    cfg.decode.count, t["decode_start_at"], t["completed_at"], rec.decode_instance,
                    (t["first_token_at"], t["decode_admit_at"]), np.ceil((inp + out) / cfg.decode.kv_block_tokens),
                    t["decode_admit_at"], t["completed_at"],
                ),
            }
        for name, (count, s, e, owners, (qs, qe), blocks, ks, ke) in pools.items():
            tag = f"{label}: {name}"
            style = styles[k % len(styles)]
            seg_s, seg_e = _busy_segments(s, e, np.asarray(owners, dtype=np.float64))
            busy = _interval_integral(seg_s, seg_e, np.ones(len(seg_s)), edges) / (width * max(count, 1))
            ax_busy.plot(mids, busy, style, color=colours[name], label=tag)
            queue = _interval_integral(qs, qe, np.ones(len(qs)), edges) / width
            ax_queue.plot(mids, queue, style, color=colours[name], label=tag)
            capacity = float(caps.get(name, 0)) * count
            if capacity > 0:
                kv = _interval_integral(ks, ke, blocks, edges) / width / capacity
                ax_kv.plot(mids, kv, style, color=colours[name], label=tag)
    ax_busy.set_ylabel("instances busy")
    ax_busy.set_ylim(0, 1.05)
    ax_queue.set_ylabel("requests waiting")
    ax_kv.set_ylabel("KV of requests in flight\n(fraction of pool)")
    ax_kv.set_xlabel("simulated time (s)")
    for ax in (ax_busy, ax_queue, ax_kv):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title or "pools over simulated time")
    return _save(fig, path)


_STATE_STYLES = {"serving": "-", "starting": ":", "draining": "--", "failed": "-."}
_POOL_COLOURS = {"prefill": "#ff7f0e", "decode": _DISAGG_COLOUR, "aggregated": _AGG_COLOUR}


def timeseries(runs: Sequence[tuple[str, Any]], path: Path, title: str = "") -> Path:
    """A run's per-window time series (``runs``: ``(label, frame)`` with the frames of
    :func:`simdisagg.sim.timeseries.timeseries_frame`), one panel each on a shared time axis:
    arrivals and completions per second; instances per pool by state; busy fraction and
    batch occupancy; KV occupancy; requests waiting; P50/P95 TTFT; P50/P95 ITL."""
    fig = _figure(9.0, 15.0)
    axes = fig.subplots(7, 1, sharex=True)
    ax_rate, ax_inst, ax_busy, ax_kv, ax_queue, ax_ttft, ax_itl = axes
    styles = ["-", "--"]
    for k, (label, frame) in enumerate(runs):
        if len(frame) == 0:
            continue
        style = styles[k % len(styles)]
        mid = 0.5 * (frame["window_start_s"].to_numpy() + frame["window_end_s"].to_numpy())
        width = np.maximum(frame["window_end_s"].to_numpy() - frame["window_start_s"].to_numpy(), 1e-12)
        ax_rate.plot(mid, frame["arrivals"] / width, style, color="black", label=f"{label}: arrivals")
        ax_rate.plot(mid, frame["completions"] / width, style, color="#2ca02c", label=f"{label}: completions")
        for pool, colour in _POOL_COLOURS.items():
            if f"{pool}_serving" not in frame:
                continue
            for state, state_style in _STATE_STYLES.items():
                counts = frame[f"{pool}_{state}"]
                if state == "serving" or counts.any():
                    ax_inst.step(mid, counts, state_style, where="mid", color=colour, label=f"{label}: {pool} {state}")
            ax_busy.plot(mid, frame[f"{pool}_busy_fraction"], style, color=colour, label=f"{label}: {pool} busy")
            ax_busy.plot(mid, frame[f"{pool}_batch_occupancy"], style, color=colour, alpha=0.5,
                         label=f"{label}: {pool} batch occupancy")
            ax_kv.plot(mid, frame[f"{pool}_kv_occupancy"], style, color=colour, label=f"{label}: {pool}")
            ax_queue.plot(mid, frame[f"{pool}_queue_length"], style, color=colour, label=f"{label}: {pool}")
        if frame["router_queue_length"].any():
            ax_queue.plot(mid, frame["router_queue_length"], style, color="grey", label=f"{label}: router (quota)")
        for q, alpha in (("p50", 1.0), ("p95", 0.5)):
            ax_ttft.plot(mid, frame[f"{q}_ttft_ms"] / 1000.0, style, color="#9467bd", alpha=alpha,
                         label=f"{label}: {q.upper()}")
            ax_itl.plot(mid, frame[f"{q}_itl_ms"], style, color="#8c564b", alpha=alpha, label=f"{label}: {q.upper()}")
    ax_rate.set_ylabel("requests / s")
    ax_inst.set_ylabel("instances")
    ax_busy.set_ylabel("busy, batch\noccupancy")
    ax_busy.set_ylim(0, 1.05)
    ax_kv.set_ylabel("KV occupancy")
    ax_kv.set_ylim(0, 1.05)
    ax_queue.set_ylabel("requests waiting")
    ax_ttft.set_ylabel("TTFT (s)")
    ax_itl.set_ylabel("ITL (ms)")
    if ax_itl.has_data():
        ax_itl.set_yscale("log")  # a stalled step is orders of magnitude above the others
    ax_itl.set_xlabel("simulated time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=6, loc="upper right", ncol=2)
    fig.suptitle(title or "per-window time series")
    return _save(fig, path)
