"""The package's one-call entry points, shared by the CLI and notebooks."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simdisagg.config import RunConfig
from simdisagg.hardware import ProfileStore
from simdisagg.importers import load_trace
from simdisagg.metrics import summarize
from simdisagg.sim.engine import simulate
from simdisagg.sim.recorder import RunResult
from simdisagg.trace import Trace


@dataclass(slots=True)
class RunSummary:
    """One simulated configuration: its config, raw result and summary."""

    column: str
    cfg: RunConfig
    result: RunResult
    summary: dict[str, Any]
    trace_label: str
    notes: list[str] = field(default_factory=list)

    def frame(self) -> Any:
        """Per-request table (pandas)."""
        from simdisagg.output import requests_frame

        return requests_frame(self.result, self.cfg.slo)

    def config_record(self) -> dict[str, Any]:
        """The resolved config plus the versions and inputs that produced the results."""
        import numpy as np
        import simpy

        from simdisagg import __version__

        return {
            "config": self.cfg.model_dump(mode="json"),
            "trace": self.trace_label,
            "cost_model": self.result.cost_label,
            "versions": {
                "simdisagg": __version__,
                "python": platform.python_version(),
                "simpy": simpy.__version__,
                "numpy": np.__version__,
            },
        }

    def verdict_against(self, other: RunSummary) -> str:
        """A one-line comparison of this run with another on the same GPUs."""
        a, b = self.summary, other.summary
        ga, gb = a["request_goodput"], b["request_goodput"]
        att_a, att_b = a["slo_attainment"], b["slo_attainment"]
        if abs(att_a - att_b) < 0.005 and abs(ga - gb) <= 0.01 * max(ga, gb, 1e-9):
            return (
                f"Same GPUs, same trace: {self.column} and {other.column} meet the SLO equally "
                f"({att_a:.1%}); compare the latency rows."
            )
        win, lose = (self, other) if (att_a, ga) > (att_b, gb) else (other, self)
        return (
            f"Same GPUs, same trace: {win.column} meets the SLO for {win.summary['slo_attainment']:.1%} of "
            f"requests vs {lose.summary['slo_attainment']:.1%} for {lose.column} "
            f"(goodput {win.summary['request_goodput']:.2f} vs {lose.summary['request_goodput']:.2f} req/s)."
        )


def column_name(cfg: RunConfig) -> str:
    """A short label of a configuration, e.g. ``disagg 2P(tp1)+2D(tp1)`` or ``aggregated 4x tp1``."""
    if cfg.mode == "aggregated":
        pool = cfg.aggregated_pool()
        chunk = ", chunked" if cfg.aggregated.chunked_prefill else ""
        return f"aggregated {pool.count}x tp{pool.tp}{chunk}"
    return f"disagg {cfg.prefill.count}P(tp{cfg.prefill.tp})+{cfg.decode.count}D(tp{cfg.decode.tp})"


def run_config(trace: Trace, cfg: RunConfig, store: ProfileStore, label: str) -> RunSummary:
    """Simulate one config and summarise it."""
    result = simulate(cfg, trace, store=store)
    summary = summarize(result, cfg.slo)
    notes: list[str] = []
    if "roofline" in summary["cost_model"]:
        notes.append(
            f"{column_name(cfg)}: no measured profile for this GPU/model/TP; step times come from the "
            "roofline model with assumed efficiencies (see `simdisagg calibrate`)."
        )
    if summary["rejected"]:
        reasons = sorted(set(result.recorder.reject_reason.values()))[:3]
        notes.append(f"{column_name(cfg)}: {summary['rejected']} requests rejected, e.g. {'; '.join(reasons)}")
    return RunSummary(column_name(cfg), cfg, result, summary, label, notes)


def run_and_summarize(
    trace_path: Path | str | Trace,
    cfg: RunConfig,
    *,
    compare: bool = True,
    profiles_dir: Path | None = None,
) -> list[RunSummary]:
    """Run ``cfg`` on a trace and, with ``compare``, the other mode on the same GPUs."""
    store = ProfileStore(profiles_dir)
    trace = trace_path if isinstance(trace_path, Trace) else load_trace(trace_path)
    label = trace.source if isinstance(trace_path, Trace) else str(trace_path)
    runs = [run_config(trace, cfg, store, label)]
    if compare:
        other = (
            cfg.as_aggregated()
            if cfg.mode == "disaggregated"
            else cfg.model_copy(update={"mode": "disaggregated"})
        )
        try:
            RunConfig.model_validate(other.model_dump())
        except ValueError:
            return runs
        runs.append(run_config(trace, other, store, label))
    return runs
