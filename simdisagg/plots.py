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


def goodput_vs_prefill_fraction(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Goodput (req/s within the SLO) of every simulated split against its prefill share of the
    GPUs, one line per family; aggregated baselines as horizontal lines; the best marked."""
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
    best = next((r for r in rows if r["status"] == "evaluated" and r["goodput_rps"] > 0), None)
    if best is not None and best["mode"] == "disaggregated":
        ax.plot([best["prefill_fraction"]], [best["goodput_rps"]], marker="*", markersize=16, color="gold",
                markeredgecolor="black", linestyle="none", label=f"best: {best['ratio']}")
    ax.set_xlabel("prefill share of the GPUs")
    ax.set_ylabel("goodput (req/s meeting the SLO target)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(title or "goodput against the prefill:decode split")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def pareto(points: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Output tokens/s per GPU against tokens/s per user (1 / mean TPOT) over every rate the
    search simulated, with the Pareto frontier of each mode; filled markers met the SLO target."""
    from simdisagg.plan import pareto_frontier

    fig = _figure()
    ax = fig.add_subplot()
    for mode, colour in (("disaggregated", _DISAGG_COLOUR), ("aggregated", _AGG_COLOUR)):
        pts = [p for p in points if p["mode"] == mode]
        if not pts:
            continue
        x = np.array([p["tokens_per_s_per_user"] for p in pts], dtype=float)
        y = np.array([p["output_tok_s_per_gpu"] for p in pts], dtype=float)
        met = np.array([bool(p["meets_slo"]) for p in pts])
        ax.scatter(x[met], y[met], s=14, color=colour, alpha=0.6, label=f"{mode}: meets SLO target")
        ax.scatter(x[~met], y[~met], s=14, facecolors="none", edgecolors=colour, alpha=0.4,
                   label=f"{mode}: misses it")
        front = pareto_frontier(x, y)
        if len(front):
            ax.plot(x[front], y[front], color=colour, linewidth=1.8, label=f"{mode} frontier")
    ax.set_xlabel("tokens/s per user (1 / mean TPOT)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.grid(alpha=0.3)
    ax.set_title(title or "throughput per GPU against per-user speed, all rates simulated")
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
    fig.suptitle(title or "latency at each configuration's goodput rate")
    return _save(fig, path)


def window_bars(windows: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Per trace window: busy fraction of each pool at the window's goodput, and the goodput."""
    fig = _figure()
    ax = fig.add_subplot()
    rows = [w for w in windows if w.get("goodput_rps") is not None]
    x = np.arange(len(rows))
    width = 0.38
    pb = [w.get("prefill_busy") or math.nan for w in rows]
    db = [w.get("decode_busy") or math.nan for w in rows]
    ax.bar(x - width / 2, pb, width, label="prefill busy", color="#ff7f0e")
    ax.bar(x + width / 2, db, width, label="decode busy", color=_DISAGG_COLOUR)
    ax.set_xticks(x, [f"w{w['window']}\n{w['limiting_pool']}" for w in rows])
    ax.set_ylabel("busy fraction at the window's goodput")
    ax.set_ylim(0, 1.05)
    ax2 = ax.twinx()
    ax2.plot(x, [w["goodput_rps"] for w in rows], color="black", marker="o", label="goodput")
    ax2.set_ylabel("goodput (req/s)")
    ax2.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title or "a fixed ratio against consecutive windows of the trace")
    return _save(fig, path)
