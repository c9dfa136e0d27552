"""The plan: enumerate, screen, simulate in two phases, rank; then the optional studies.

:class:`Planner` runs one plan. Its sweep enumerates the candidates of a budget
(:mod:`~simdisagg.plan.candidates`), screens them analytically
(:mod:`~simdisagg.plan.screening`), finds the sustainable goodput of the survivors by
simulation (:mod:`~simdisagg.plan.goodput_search`) in two phases (every aggregated baseline and
the most promising split of each family first; then the splits whose analytic bound can still
beat the best so far), and ranks them. With a target rate it first finds the budget
(:mod:`~simdisagg.plan.target_rate`). The sensitivity (:mod:`~simdisagg.plan.sensitivity`)
and traffic-window (:mod:`~simdisagg.plan.traffic_windows`) studies follow. Every evaluation
goes through one :class:`~simdisagg.plan.results_file.ResultsFile`, so a plan resumes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from simdisagg.config import RunConfig
from simdisagg.hardware import ProfileStore
from simdisagg.importers import load_trace
from simdisagg.plan.candidates import Candidate, enumerate_candidates
from simdisagg.plan.diagnosis import diagnose
from simdisagg.plan.results_file import ResultsFile, job_key
from simdisagg.plan.runner import Job, Runner
from simdisagg.plan.screening import Screener, Screening
from simdisagg.plan.spec import RANK_COLUMNS, PlanSpec
from simdisagg.plan.traffic_windows import split_windows
from simdisagg.plan.workload import (
    RunWindow,
    TraceLoad,
    extend_trace,
    trace_fingerprint,
    trace_load,
    window_trace,
)
from simdisagg.trace import Trace


@dataclass(slots=True)
class ProgressEvent:
    """Sent to the progress callback: evaluations done and known so far, and the last one."""

    done: int
    total: int
    description: str
    resumed: bool = False


@dataclass(slots=True)
class PlanResult:
    """Everything a plan found. ``rows`` has one dict per candidate, ranked (pruned last)."""

    spec: PlanSpec
    trace_label: str
    trace_fingerprint: str
    base_rate_rps: float
    rows: list[dict[str, Any]]
    verdict: str
    why: str
    pruned_summary: list[str]
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    sensitivity_summary: list[str] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)
    windows_summary: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    #: What a target-rate plan found: the target, the answer and the budgets checked below it.
    target: dict[str, Any] | None = None
    #: How the best candidate's goodput was judged at steady state (its window, said in words).
    steady_note: str = ""
    #: The best candidate re-run on its confirming window made three times as long, at its
    #: goodput rate and 1.25 times it (:meth:`Planner.verify`).
    verification: dict[str, Any] | None = None
    evaluations: int = 0
    resumed: int = 0
    simulations: int = 0

    @property
    def best(self) -> dict[str, Any] | None:
        """The answer: the top-ranked evaluated candidate with goodput > 0 (with a target rate,
        the one the target search chose)."""
        if self.target is not None:
            label = self.target.get("answer")
            return next((r for r in self.rows if r["label"] == label and r["status"] == "evaluated"), None)
        return next((r for r in self.rows if r["status"] == "evaluated" and r["goodput_rps"] > 0), None)

    def best_of(self, mode: str) -> dict[str, Any] | None:
        """The top-ranked evaluated candidate of a mode (``aggregated`` or ``disaggregated``)."""
        return next(
            (r for r in self.rows if r["mode"] == mode and r["status"] == "evaluated" and r["goodput_rps"] > 0), None
        )

    def frame(self) -> Any:
        """Every candidate as a pandas DataFrame (the CSV)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(CSV_COLUMNS))

    def best_config(self) -> RunConfig | None:
        """The run config of the best candidate at its goodput rate (what ``simdisagg run``
        needs to repeat it, on the trace window in ``best["window_copies"]``)."""
        best = self.best
        if best is None:
            return None
        cand = Candidate.from_dict(_cand_fields(best))
        return cand.run_config(self.spec.base).model_copy(update={"rate_scale": best["goodput_rate_scale"]})

    def record(self) -> dict[str, Any]:
        """A JSON-ready summary of the plan (what, best, verdict, pruning, sensitivity, windows)."""
        best_cfg = self.best_config()
        return {
            "trace": self.trace_label,
            "trace_fingerprint": self.trace_fingerprint,
            "base_rate_rps": self.base_rate_rps,
            "spec": self.spec.model_dump(mode="json"),
            "best": self.best,
            "best_config": None if best_cfg is None else best_cfg.model_dump(mode="json"),
            "best_disaggregated": self.best_of("disaggregated"),
            "best_aggregated": self.best_of("aggregated"),
            "verdict": self.verdict,
            "why": self.why,
            "steady_state": self.steady_note,
            "verification": self.verification,
            "target": self.target,
            "pruned": self.pruned_summary,
            "sensitivity": self.sensitivity,
            "sensitivity_summary": self.sensitivity_summary,
            "windows": self.windows,
            "windows_summary": self.windows_summary,
            "notes": self.notes,
            "evaluations": self.evaluations,
            "resumed": self.resumed,
            "simulations": self.simulations,
        }


#: Per-candidate figures (at the goodput rate unless named otherwise), in the CSV's order.
CSV_COLUMNS = (
    "rank", "label", "mode", "ratio", "prefill_count", "prefill_tp", "prefill_gpu", "decode_count", "decode_tp",
    "decode_gpu", "prefill_dp", "prefill_ep", "decode_dp", "decode_ep", "max_batch_size", "link", "chunked_prefill", "gpus", "prefill_fraction", "price_per_hour_usd",
    "power_kw", "status", "prune_reason", "goodput_rate_scale", "goodput_rps", "goodput_per_gpu",
    "goodput_per_dollar_hour", "goodput_per_kw", "output_tok_s", "output_tok_s_per_gpu", "tokens_per_s_per_user",
    "usd_per_million_output_tokens", "joules_per_output_token", "sustains_target", "bound_rps",
    "zero_load_attainment", "at_ceiling", "bottleneck", "why", "attainment", "mean_ttft_ms", "p90_ttft_ms",
    "mean_tpot_ms", "p90_tpot_ms", "prefill_batch_occupancy", "prefill_kv_occupancy", "prefill_saturated_fraction",
    "decode_batch_occupancy", "decode_kv_occupancy", "decode_saturated_fraction", "aggregated_batch_occupancy",
    "aggregated_kv_occupancy", "aggregated_saturated_fraction", "prefill_busy_fraction", "decode_busy_fraction",
    "aggregated_busy_fraction", "prefill_queue_ms", "decode_wait_ms", "link_queue_ms", "window_requests",
    "window_copies", "window_head", "window_s", "lifetime_p99_s", "simulations",
)
#: Figures copied from the goodput rate's long-window probe into a row.
_PROBE_COLUMNS = (
    "attainment", "mean_ttft_ms", "p90_ttft_ms", "mean_tpot_ms", "p90_tpot_ms", "output_tok_s", "output_tok_s_per_gpu",
    "tokens_per_s_per_user", "prefill_batch_occupancy", "prefill_kv_occupancy", "prefill_saturated_fraction",
    "decode_batch_occupancy", "decode_kv_occupancy", "decode_saturated_fraction", "aggregated_batch_occupancy",
    "aggregated_kv_occupancy", "aggregated_saturated_fraction", "prefill_busy_fraction", "decode_busy_fraction",
    "aggregated_busy_fraction", "prefill_queue_ms", "decode_wait_ms", "link_queue_ms", "lifetime_p99_s",
)


class Planner:
    """Runs one plan: enumerate, screen, simulate in two phases, rank, then the optional
    target, sensitivity and window studies. All evaluations go through one
    :class:`ResultsFile`."""

    def __init__(
        self,
        trace: Trace,
        spec: PlanSpec,
        *,
        results_path: Path | None = None,
        backend: Literal["process", "ray"] = "process",
        workers: int | None = None,
        address: str | None = None,
        profiles_dir: Path | None = None,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> None:
        self.trace, self.spec = trace, spec
        self.profiles_dir = str(profiles_dir) if profiles_dir else None
        self.store = ProfileStore(profiles_dir)
        self.base_dict = spec.base.model_dump(mode="json", exclude={"rate_scale"})
        self.slo_dict = spec.slo.model_dump(mode="json")
        self.results = ResultsFile(results_path)
        self.on_progress = on_progress
        self.backend, self.workers, self.address = backend, workers, address
        caching = bool(getattr(getattr(spec.base, "prefix_cache", None), "enabled", False))
        self.caching = caching
        self.load = trace_load(trace, caching)
        self.traces: dict[str, Trace] = {self.load.fingerprint: trace}
        # Window traces are cut up front so every worker receives them once, at start.
        self.window_parts = split_windows(trace, spec.windows) if spec.windows > 0 else []
        for _, _, sub in self.window_parts:
            if sub is not None:
                self.traces[trace_fingerprint(sub)] = sub
        self.runner: Runner | None = None
        self.screener = Screener(spec.base, self.store, self.load)
        #: The sweep's evaluations by candidate label (for the studies that follow it).
        self.sweep_results: dict[str, tuple[Candidate, dict[str, Any]]] = {}
        self.done = 0
        self.total = 0
        self.resumed = 0
        self.simulations = 0

    # -- plumbing ------------------------------------------------------------------------------
    def search_dict(
        self, start: float, screen: Screening | None = None, cost_scale: float = 1.0, extra: Sequence[float] = (),
        task: str = "goodput", rate_scale: float | None = None,
    ) -> dict[str, Any]:
        """The ``search`` of a job: the settings, where to start, the first window's lifetime
        hint, and the task (a goodput search, or a check of one rate)."""
        s = self.spec.search.model_dump(mode="json")
        s["start_rate_scale"] = float(start)
        s["cost_scale"] = float(cost_scale)
        s["extra_rates"] = [float(x) for x in extra]
        if screen is not None and math.isfinite(screen.lifetime_hint_s):
            s["lifetime_hint_s"] = float(screen.lifetime_hint_s)
        if task != "goodput":
            s["task"] = task
            s["rate_scale"] = float(rate_scale if rate_scale is not None else start)
        return s

    def job(self, kind: str, trace_fp: str, cand: Candidate, search: dict[str, Any]) -> Job:
        """One evaluation, keyed for the results file."""
        cd = cand.to_dict()
        return Job(kind, trace_fp, cd, search, job_key(trace_fp, cd, self.base_dict, search))

    def execute(self, jobs: Sequence[Job]) -> list[dict[str, Any]]:
        """Run ``jobs`` (those not already in the results file) and return their results in order."""
        assert self.runner is not None
        out: list[dict[str, Any] | None] = [None] * len(jobs)
        todo: list[int] = []
        self.total += len(jobs)
        for j, job in enumerate(jobs):
            cached = self.results.get(job.key)
            if cached is not None:
                out[j] = cached
                self.resumed += 1
                self._tick(job, resumed=True)
            else:
                todo.append(j)
        for k, res in self.runner.run([jobs[j] for j in todo]):
            j = todo[k]
            self.results.append(jobs[j].key, jobs[j].kind, res)
            self.simulations += int(res["simulations"])
            out[j] = res
            self._tick(jobs[j])
        return [r for r in out if r is not None]

    def _tick(self, job: Job, resumed: bool = False) -> None:
        self.done += 1
        if self.on_progress is not None:
            label = Candidate.from_dict(job.candidate).label
            self.on_progress(ProgressEvent(self.done, self.total, f"{job.kind}: {label}", resumed))

    def metric(self, cand: Candidate, goodput_rps: float) -> float:
        """The ranking metric of a goodput (``rank_by``)."""
        rank_by = self.spec.rank_by
        if rank_by == "per_gpu":
            return goodput_rps / cand.gpus
        if rank_by == "per_dollar":
            return goodput_rps / cand.price_per_hour_usd(self.store)
        if rank_by == "per_kw":
            return goodput_rps / cand.power_kw(self.store)
        return goodput_rps

    # -- the plan ------------------------------------------------------------------------------
    def run(self) -> PlanResult:
        """Search every candidate and return the ranked result."""
        from simdisagg.plan.sensitivity import sensitivity_study
        from simdisagg.plan.target_rate import find_target_budget, target_verdict
        from simdisagg.plan.traffic_windows import window_study

        notes: list[str] = list(self.results.warnings)
        for w in self.results.warnings:
            warnings.warn(w, stacklevel=2)
        with Runner(self.traces, self.base_dict, self.slo_dict, backend=self.backend, workers=self.workers,
                    address=self.address, profiles_dir=self.profiles_dir) as runner:
            self.runner = runner
            target = None
            spec = self.spec
            if spec.has_target:
                target = find_target_budget(self)
                if target["answer"] is not None:
                    budget = ({"gpus": target["gpus"], "budget_per_hour_usd": None} if target["objective"] == "gpus"
                              else {"gpus": None, "budget_per_hour_usd": target["price_per_hour_usd"]})
                    spec = spec.model_copy(update=budget)
            if target is not None and target["answer"] is None:
                result = self._empty_result(notes)
            else:
                cands, screens, results, dominated = self._sweep(spec)
                result = self._result(spec, cands, screens, results, dominated, notes)
            result.target = target
            if target is not None:
                for row in result.rows:
                    row["sustains_target"] = target["sustains"].get(row["label"],
                                                                  (row["goodput_rps"] or 0.0) >= target["target_rate_rps"])
                result.verdict, result.why = target_verdict(self, result)
            else:
                result.verdict, result.why = self._verdict(result)
            result.steady_note = self._steady_note(result)
            if self.spec.verify:
                result.verification = self.verify(result)
            sensitivity_study(self, result)
            window_study(self, result)
        result.evaluations = self.done
        result.resumed = self.resumed
        result.simulations = self.simulations
        return result

    def _sweep(
        self, spec: PlanSpec
    ) -> tuple[list[Candidate], list[Screening], dict[int, dict[str, Any]], dict[int, str]]:
        """Enumerate a budget's candidates, screen them, and search their goodput in two
        phases (see the module docstring)."""
        load = self.load
        cands = enumerate_candidates(spec, self.store)
        screens = [self.screener.screen(c, spec.search) for c in cands]
        live = [i for i, s in enumerate(screens) if s.reason is None or not spec.prune]
        # Phase 1: every aggregated baseline and, per family, the split with the highest bound.
        best_in_family: dict[str, int] = {}
        for i in live:
            c = cands[i]
            if c.aggregated:
                continue
            j = best_in_family.get(c.family)
            if j is None or screens[i].rate_bound > screens[j].rate_bound:
                best_in_family[c.family] = i
        phase1 = [i for i in live if cands[i].aggregated] + sorted(best_in_family.values())
        phase1 = sorted(set(phase1)) if spec.prune else live
        results: dict[int, dict[str, Any]] = {}
        dominated: dict[int, str] = {}
        jobs = [self.job("sweep", load.fingerprint, cands[i], self.search_dict(self.start(screens[i]), screens[i]))
                for i in phase1]
        for i, res in zip(phase1, self.execute(jobs), strict=True):
            results[i] = res
        if spec.prune:
            best_metric = max(
                (self.metric(cands[i], r["goodput_rate_scale"] * load.base_rate_rps) for i, r in results.items()),
                default=0.0,
            )
            phase2 = []
            for i in live:
                if i in results:
                    continue
                bound_rps = screens[i].rate_bound * load.base_rate_rps
                if best_metric > 0 and self.metric(cands[i], bound_rps) < best_metric:
                    dominated[i] = (
                        f"dominated: analytic bound {bound_rps:.3g} req/s cannot beat the best simulated in phase 1"
                    )
                else:
                    phase2.append(i)
            seeds = {cands[i].family: i for i in results if not cands[i].aggregated}
            jobs = [self.job("sweep", load.fingerprint, cands[i],
                             self.search_dict(self.start(screens[i], seeds.get(cands[i].family), screens, results),
                                              screens[i]))
                    for i in phase2]
            for i, res in zip(phase2, self.execute(jobs), strict=True):
                results[i] = res
        return cands, screens, results, dominated

    def _result(
        self, spec: PlanSpec, cands: list[Candidate], screens: list[Screening], results: dict[int, dict[str, Any]],
        dominated: dict[int, str], notes: list[str],
    ) -> PlanResult:
        result = PlanResult(
            spec=spec,
            trace_label=self.trace.source,
            trace_fingerprint=self.load.fingerprint,
            base_rate_rps=self.load.base_rate_rps,
            rows=self._rows(spec, cands, screens, results, dominated),
            verdict="",
            why="",
            pruned_summary=self._pruned_summary(spec, cands, screens, dominated),
            notes=notes,
            probes=self._probe_points(cands, results),
        )
        self.sweep_results = {cands[i].label: (cands[i], res) for i, res in results.items()}
        return result

    def _empty_result(self, notes: list[str]) -> PlanResult:
        self.sweep_results = {}
        return PlanResult(self.spec, self.trace.source, self.load.fingerprint, self.load.base_rate_rps, [], "", "",
                          [], notes=notes)

    def start(
        self, screen: Screening, seed: int | None = None, screens: Sequence[Screening] = (),
        results: dict[int, dict[str, Any]] | None = None,
    ) -> float:
        """Where a candidate's bracket starts: its family seed's goodput scaled by the ratio of
        their analytic bounds when a seed was simulated, else half its own bound."""
        if seed is not None and results is not None and seed in results:
            g = results[seed]["goodput_rate_scale"]
            b_seed = screens[seed].rate_bound
            if g > 0 and math.isfinite(b_seed) and math.isfinite(screen.rate_bound) and b_seed > 0:
                return float(g * screen.rate_bound / b_seed)
        return screen.rate_bound / 2.0 if math.isfinite(screen.rate_bound) and screen.rate_bound > 0 else 1.0

    def row(self, cand: Candidate, screen: Screening | None, res: dict[str, Any] | None, load: TraceLoad | None = None
            ) -> dict[str, Any]:
        """One candidate's row: its hardware and price, its bound, and (when evaluated) its
        goodput with the figures of its long-window probe at that rate."""
        rate = (load or self.load).base_rate_rps
        row: dict[str, Any] = {k: None for k in CSV_COLUMNS}
        row.update(cand.to_dict())
        price, kw = cand.price_per_hour_usd(self.store), cand.power_kw(self.store)
        row.update(
            label=cand.label, ratio=cand.ratio, gpus=cand.gpus, prefill_fraction=cand.prefill_fraction,
            price_per_hour_usd=price, power_kw=kw,
        )
        if screen is not None:
            row["bound_rps"] = screen.rate_bound * rate
            row["zero_load_attainment"] = screen.zero_load_attainment
        if res is None:
            return row
        g = res["goodput_rate_scale"] * rate
        bottleneck, why = diagnose(res, self.spec.slo)
        row.update(
            status="evaluated", goodput_rate_scale=res["goodput_rate_scale"], goodput_rps=g,
            goodput_per_gpu=g / cand.gpus, goodput_per_dollar_hour=g / price, goodput_per_kw=g / kw,
            at_ceiling=res["at_ceiling"], bottleneck=bottleneck, why=why, simulations=res["simulations"],
        )
        probe = res.get("pass") or res.get("fail") or {}
        for key in _PROBE_COLUMNS:
            row[key] = probe.get(key)
        window = probe.get("window") or {}
        row.update(window_requests=window.get("requests"), window_copies=window.get("copies"),
                   window_head=window.get("head"), window_s=window.get("window_s"))
        tok_s = probe.get("output_tok_s")
        if res.get("pass") and tok_s and tok_s > 0:
            # At the goodput rate: what a million output tokens cost, and the energy of one
            # token at the GPUs' rated power (W per token/s = J per token).
            row["usd_per_million_output_tokens"] = price / (tok_s * 3600.0) * 1e6
            row["joules_per_output_token"] = kw * 1000.0 / tok_s
        return row

    def _rows(
        self, spec: PlanSpec, cands: list[Candidate], screens: list[Screening], results: dict[int, dict[str, Any]],
        dominated: dict[int, str],
    ) -> list[dict[str, Any]]:
        rows = []
        for i, cand in enumerate(cands):
            row = self.row(cand, screens[i], results.get(i))
            row["_index"] = i
            if i not in results:
                reason = dominated.get(i) or screens[i].reason or "not evaluated"
                static = screens[i].reason is not None
                row.update(status="pruned", prune_reason=reason)
                if static:  # goodput is 0 for these, exactly or by the bound
                    row.update(goodput_rate_scale=0.0, goodput_rps=0.0, goodput_per_gpu=0.0,
                               goodput_per_dollar_hour=0.0, goodput_per_kw=0.0)
            rows.append(row)
        col = RANK_COLUMNS[spec.rank_by]

        def order(r: dict[str, Any]) -> tuple[int, float, int]:
            value = r[col]
            evaluated = r["status"] == "evaluated"
            return (0 if evaluated else 1, -(value if value is not None else -1.0), r["_index"])

        rows.sort(key=order)
        for k, r in enumerate(rows, start=1):
            r["rank"] = k
            del r["_index"]
        return rows

    def _pruned_summary(
        self, spec: PlanSpec, cands: list[Candidate], screens: list[Screening], dominated: dict[int, str]
    ) -> list[str]:
        out: list[str] = []
        static: dict[str, list[str]] = {}
        for i, s in enumerate(screens):
            if s.reason is not None and spec.prune:
                static.setdefault(s.reason, []).append(cands[i].label)
        for reason, labels in static.items():
            out.append(f"{len(labels)} pruned ({reason}): {', '.join(labels[:6])}{' ...' if len(labels) > 6 else ''}")
        if dominated:
            labels = [cands[i].label for i in sorted(dominated)]
            out.append(
                f"{len(labels)} pruned as dominated (analytic upper bound below the best phase-1 result, "
                f"ranked by {spec.rank_by}): {', '.join(labels[:6])}{' ...' if len(labels) > 6 else ''}"
            )
        return out

    def _probe_points(self, cands: list[Candidate], results: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        """Every long-window probe run to the end: its rate, verdict, per-user speed and
        throughput per GPU (the Pareto plot's points)."""
        pts = []
        for i in sorted(results):
            c = cands[i]
            for p in results[i]["probes"]:
                if p.get("stopped_early"):
                    continue  # its figures cover only the part simulated before it failed
                pts.append({
                    "label": c.label, "mode": c.mode, "hardware": c.hardware_mix, "rate_scale": p["rate_scale"],
                    "rate_rps": p["rate_scale"] * self.load.base_rate_rps,
                    "attainment": p["attainment"],
                    "meets_slo": bool(p["passed"]),
                    "tokens_per_s_per_user": p["tokens_per_s_per_user"],
                    "output_tok_s_per_gpu": p["output_tok_s_per_gpu"],
                })
        return pts

    def _steady_note(self, result: PlanResult) -> str:
        """How the best candidate's goodput was judged: its window, and whether the trace had
        to be tiled to reach it."""
        best = result.best
        if best is None or not best.get("window_requests"):
            return ""
        st = self.spec.search.steady
        n = self.load.requests
        copies, requests = int(best["window_copies"]), int(best["window_requests"])
        rule = (f"each rate passed only at steady state: an arrival window at least {st.window_lifetimes:g}x the "
                f"p99 end-to-end latency of the run and {st.min_requests:,} requests after a warm-up of its first "
                f"{st.warmup_fraction:.0%}, with no growing backlog in its second half")
        span_s = self.load.span_s / best["goodput_rate_scale"]
        if copies > 1:
            how = (f"the trace ({n:,} requests, {span_s:.3g} s at the goodput rate) is too short for that, so it was "
                   f"tiled {copies}x with fresh request ids, sessions and prefix hashes: {requests:,} requests over "
                   f"{best['window_s']:.3g} s")
        else:
            how = f"the trace's {requests:,} requests over {best['window_s']:.3g} s were enough"
        return (f"{best['label']}: {rule}; {how} (p99 end-to-end latency {best['lifetime_p99_s']:.3g} s).")

    def verify(self, result: PlanResult, longer: int = 3, above: float = 1.25) -> dict[str, Any] | None:
        """Re-run the best candidate as ``simdisagg run`` would: on the window its goodput was
        confirmed on, made ``longer`` times as long (more copies of the trace), at the goodput
        rate and at ``above`` times it; SLO attainment over every request, warm-up included.
        The answer holds when the first meets the target and the second does not."""
        from simdisagg.metrics import slo_met
        from simdisagg.sim.engine import simulate

        best = result.best
        cfg = result.best_config()
        if best is None or cfg is None or not best.get("window_requests"):
            return None
        copies = longer * int(best.get("window_copies") or 1)
        trace = extend_trace(self.trace, copies)
        out: dict[str, Any] = {"label": best["label"], "copies": copies, "requests": len(trace), "factor": above}
        for key, factor in (("attainment_at_goodput", 1.0), ("attainment_above", above)):
            run_cfg = cfg.model_copy(update={"rate_scale": best["goodput_rate_scale"] * factor})
            met = slo_met(simulate(run_cfg, trace, store=self.store), run_cfg.slo)
            out[key] = float(met.mean())
        target = self.spec.slo.attainment
        out["holds"] = out["attainment_at_goodput"] >= target - 1e-12 and out["attainment_above"] < target - 1e-12
        return out

    def _verdict(self, result: PlanResult) -> tuple[str, str]:
        col = RANK_COLUMNS[self.spec.rank_by]
        best = result.best
        if best is None:
            return (
                ("No candidate meets the SLO at any rate searched: relax the SLO, lower the attainment target, "
                "or add GPUs."),
                "",
            )
        dis, agg = result.best_of("disaggregated"), result.best_of("aggregated")
        name = self.namer(result)
        why = f"{name(best)}: {best['why']}"
        tol = self.spec.search.rel_tol
        unit = {"goodput": "req/s", "per_gpu": "req/s per GPU", "per_dollar": "req/s per $/h",
                "per_kw": "req/s per kW"}[self.spec.rank_by]
        if dis is None and agg is not None:
            return ((f"Aggregated serving wins: no disaggregated split meets the SLO; {name(agg)} "
                    f"sustains {agg['goodput_rps']:.3g} req/s."), why)
        if agg is None and dis is not None:
            if not self.spec.aggregated:
                return ((f"Best split {name(dis)} sustains {dis['goodput_rps']:.3g} req/s (aggregated baselines "
                        "not run)."), why)
            return ((f"Disaggregated serving wins: no aggregated baseline meets the SLO; {name(dis)} sustains "
                    f"{dis['goodput_rps']:.3g} req/s."), why)
        assert dis is not None and agg is not None
        a, d = agg[col], dis[col]
        if abs(a - d) <= tol * max(a, d):
            return (
                (f"A tie within the search tolerance (±{tol:.0%}): best disaggregated {name(dis)} {d:.3g} vs "
                f"best {name(agg)} {a:.3g} {unit}; the simpler aggregated deployment is enough."),
                why,
            )
        if a > d:
            return (
                (f"Aggregated serving wins on this trace: {name(agg)} sustains {a:.3g} {unit} within the SLO, "
                f"{a / d - 1:.0%} more than the best disaggregated split {name(dis)} ({d:.3g}). "
                "Disaggregation does not pay off here."),
                why,
            )
        return (
            (f"Disaggregation wins: {name(dis)} sustains {d:.3g} {unit} within the SLO, {d / a - 1:.0%} more than "
            f"the best aggregated baseline, {name(agg)} at {a:.3g}."),
            why,
        )

    def namer(self, result: PlanResult) -> Callable[[dict[str, Any]], str]:
        """Short names of rows (``3P:5D``, ``aggregated x8 (chunked prefill)``), with the
        hardware when a mode has more than one family."""
        families = {(r["mode"], Candidate.from_dict(_cand_fields(r)).hardware) for r in result.rows}
        multi = {m: sum(1 for mm, _ in families if mm == m) > 1 for m in ("aggregated", "disaggregated")}

        def name(r: dict[str, Any]) -> str:
            c = Candidate.from_dict(_cand_fields(r))
            if c.aggregated:
                text = f"aggregated x{c.decode_count} ({'chunked prefill' if c.chunked_prefill else 'no chunking'})"
            else:
                text = c.ratio
            return f"{text} [{c.hardware}]" if multi[c.mode] else text

        return name


def _cand_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in Candidate.__dataclass_fields__}


def plan(
    trace: Trace | str | Path,
    spec: PlanSpec,
    *,
    out_dir: Path | None = None,
    backend: Literal["process", "ray"] = "process",
    workers: int | None = None,
    address: str | None = None,
    profiles_dir: Path | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
) -> PlanResult:
    """Run a capacity plan. With ``out_dir``, finished evaluations go to
    ``out_dir/results.jsonl`` and a re-run resumes from it."""
    tr = trace if isinstance(trace, Trace) else load_trace(trace)
    path = Path(out_dir) / "results.jsonl" if out_dir is not None else None
    return Planner(
        tr, spec, results_path=path, backend=backend, workers=workers, address=address,
        profiles_dir=profiles_dir, on_progress=on_progress,
    ).run()


def row_window_trace(trace: Trace, row: dict[str, Any]) -> Trace:
    """The trace window a row's goodput was confirmed on (the trace tiled, or cut)."""
    copies = int(row.get("window_copies") or 1)
    head = int(row.get("window_head") or len(trace))
    window = RunWindow(copies, head, copies * head if copies > 1 else head, math.nan, False)
    return window_trace(trace, window)


def latency_samples(
    trace: Trace, row: dict[str, Any], spec: PlanSpec, store: ProfileStore | None = None
) -> dict[str, np.ndarray]:
    """Per-request TTFT and TPOT (seconds) of a plan row's candidate at its goodput rate, on
    the window its goodput was confirmed on."""
    from simdisagg.metrics import request_latencies
    from simdisagg.sim.engine import simulate

    cand = Candidate.from_dict(_cand_fields(row))
    cfg = cand.run_config(spec.base).model_copy(update={"rate_scale": row["goodput_rate_scale"]})
    lat = request_latencies(simulate(cfg, row_window_trace(trace, row), store=store or ProfileStore()))
    return {"ttft_s": lat["ttft_s"], "tpot_s": lat["tpot_s"]}
