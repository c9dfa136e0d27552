"""The plan: enumerate, screen, simulate in two phases, rank; sensitivity and window studies."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from simdisagg.errors import ConfigError
from simdisagg.hardware import ProfileStore
from simdisagg.plan.candidates import Candidate, _dedupe, enumerate_candidates
from simdisagg.plan.diagnosis import diagnose
from simdisagg.plan.probe import passes_target
from simdisagg.plan.results_file import ResultsFile, job_key
from simdisagg.plan.runner import Job, Runner
from simdisagg.plan.screening import Screener, Screening
from simdisagg.plan.spec import RANK_COLUMNS, PlanSpec
from simdisagg.plan.traffic_windows import split_windows
from simdisagg.plan.workload import TraceLoad, trace_fingerprint, trace_load
from simdisagg.trace import Trace, load_trace


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
    evaluations: int = 0
    resumed: int = 0
    simulations: int = 0

    @property
    def best(self) -> dict[str, Any] | None:
        """The top-ranked evaluated candidate with goodput > 0."""
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

    def record(self) -> dict[str, Any]:
        """A JSON-ready summary of the plan (what, best, verdict, pruning, sensitivity, windows)."""
        return {
            "trace": self.trace_label,
            "trace_fingerprint": self.trace_fingerprint,
            "base_rate_rps": self.base_rate_rps,
            "spec": self.spec.model_dump(mode="json"),
            "best": self.best,
            "best_disaggregated": self.best_of("disaggregated"),
            "best_aggregated": self.best_of("aggregated"),
            "verdict": self.verdict,
            "why": self.why,
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


CSV_COLUMNS = (
    "rank", "label", "mode", "ratio", "prefill_count", "prefill_tp", "prefill_gpu", "decode_count", "decode_tp",
    "decode_gpu", "max_batch_size", "link", "chunked_prefill", "gpus", "prefill_fraction", "price_per_hour_usd",
    "power_kw", "status", "prune_reason", "goodput_rate_scale", "goodput_rps", "goodput_per_gpu",
    "goodput_per_dollar_hour", "goodput_per_kw", "bound_rps", "zero_load_attainment", "at_ceiling", "bottleneck",
    "why", "attainment", "mean_ttft_ms", "p90_ttft_ms", "mean_tpot_ms", "p90_tpot_ms", "output_tok_s_per_gpu",
    "prefill_busy", "decode_busy", "aggregated_busy", "prefill_queue_ms", "decode_wait_ms", "simulations",
)


class Planner:
    """Runs one plan: enumerate, screen, simulate in two phases, rank, then the optional
    sensitivity and window studies. All evaluations go through one :class:`ResultsFile`."""

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
        self.done = 0
        self.total = 0
        self.resumed = 0
        self.simulations = 0

    # -- plumbing ------------------------------------------------------------------------------
    def _search(self, start: float, cost_scale: float = 1.0, extra: Sequence[float] = ()) -> dict[str, Any]:
        s = self.spec.search.model_dump(mode="json")
        s["start_rate_scale"] = float(start)
        s["cost_scale"] = float(cost_scale)
        s["extra_rates"] = [float(x) for x in extra]
        return s

    def _job(self, kind: str, trace_fp: str, cand: Candidate, search: dict[str, Any]) -> Job:
        cd = cand.to_dict()
        return Job(kind, trace_fp, cd, search, job_key(trace_fp, cd, self.base_dict, search))

    def _execute(self, runner: Runner, jobs: Sequence[Job]) -> list[dict[str, Any]]:
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
        for k, res in runner.run([jobs[j] for j in todo]):
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

    def _metric(self, cand: Candidate, goodput_rps: float) -> float:
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
        spec, load = self.spec, self.load
        cands = enumerate_candidates(spec, self.store)
        screens = [self.screener.screen(c, spec.search) for c in cands]
        notes: list[str] = list(self.results.warnings)
        for w in self.results.warnings:
            warnings.warn(w, stacklevel=2)
        live = [i for i, s in enumerate(screens) if s.reason is None or not spec.prune]
        # Phase 1: every aggregated baseline and, per family, the split with the highest bound.
        best_in_family: dict[str, int] = {}
        for i in live:
            c = cands[i]
            fam = c.family
            if c.aggregated:
                continue
            j = best_in_family.get(fam)
            if j is None or screens[i].rate_bound > screens[j].rate_bound:
                best_in_family[fam] = i
        phase1 = [i for i in live if cands[i].aggregated] + sorted(best_in_family.values())
        phase1 = sorted(set(phase1)) if spec.prune else live
        results: dict[int, dict[str, Any]] = {}
        dominated: dict[int, str] = {}
        with Runner(self.traces, self.base_dict, self.slo_dict, backend=self.backend, workers=self.workers,
                    address=self.address, profiles_dir=self.profiles_dir) as runner:
            self.runner = runner
            jobs = [self._job("sweep", load.fingerprint, cands[i], self._search(self._start(screens[i])))
                    for i in phase1]
            for i, res in zip(phase1, self._execute(runner, jobs), strict=True):
                results[i] = res
            if spec.prune:
                best_metric = max(
                    (self._metric(cands[i], r["goodput_rate_scale"] * load.base_rate_rps) for i, r in results.items()),
                    default=0.0,
                )
                phase2 = []
                for i in live:
                    if i in results:
                        continue
                    bound_rps = screens[i].rate_bound * load.base_rate_rps
                    if best_metric > 0 and self._metric(cands[i], bound_rps) < best_metric:
                        dominated[i] = (
                            f"dominated: analytic bound {bound_rps:.3g} req/s cannot beat the best "
                            f"simulated in phase 1"
                        )
                    else:
                        phase2.append(i)
                seeds = {cands[i].family: i for i in results if not cands[i].aggregated}
                jobs = [self._job("sweep", load.fingerprint, cands[i],
                                  self._search(self._start(screens[i], seeds.get(cands[i].family), screens, results)))
                        for i in phase2]
                for i, res in zip(phase2, self._execute(runner, jobs), strict=True):
                    results[i] = res
            rows = self._rows(cands, screens, results, dominated)
            result = PlanResult(
                spec=spec,
                trace_label=self.trace.source,
                trace_fingerprint=load.fingerprint,
                base_rate_rps=load.base_rate_rps,
                rows=rows,
                verdict="",
                why="",
                pruned_summary=self._pruned_summary(cands, screens, dominated),
                notes=notes,
                probes=self._probe_points(cands, results),
            )
            result.verdict, result.why = self._verdict(result)
            self._sensitivity(result, cands, results)
            self._windows(result, cands, results)
        result.evaluations = self.done
        result.resumed = self.resumed
        result.simulations = self.simulations
        return result

    def _start(
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

    def _row(self, cand: Candidate, screen: Screening | None, res: dict[str, Any] | None) -> dict[str, Any]:
        rate = self.load.base_rate_rps
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
        for key in ("attainment", "mean_ttft_ms", "p90_ttft_ms", "mean_tpot_ms", "p90_tpot_ms",
                    "output_tok_s_per_gpu", "prefill_busy", "decode_busy", "aggregated_busy",
                    "prefill_queue_ms", "decode_wait_ms"):
            row[key] = probe.get(key)
        return row

    def _rows(
        self, cands: list[Candidate], screens: list[Screening], results: dict[int, dict[str, Any]],
        dominated: dict[int, str],
    ) -> list[dict[str, Any]]:
        rows = []
        for i, cand in enumerate(cands):
            row = self._row(cand, screens[i], results.get(i))
            row["_index"] = i
            if i not in results:
                reason = dominated.get(i) or screens[i].reason or "not evaluated"
                static = screens[i].reason is not None
                row.update(status="pruned", prune_reason=reason)
                if static:  # goodput is 0 for these, exactly or by the bound
                    row.update(goodput_rate_scale=0.0, goodput_rps=0.0, goodput_per_gpu=0.0,
                               goodput_per_dollar_hour=0.0, goodput_per_kw=0.0)
            rows.append(row)
        col = RANK_COLUMNS[self.spec.rank_by]

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
        self, cands: list[Candidate], screens: list[Screening], dominated: dict[int, str]
    ) -> list[str]:
        out: list[str] = []
        static: dict[str, list[str]] = {}
        for i, s in enumerate(screens):
            if s.reason is not None and self.spec.prune:
                static.setdefault(s.reason, []).append(cands[i].label)
        for reason, labels in static.items():
            out.append(f"{len(labels)} pruned ({reason}): {', '.join(labels[:6])}{' ...' if len(labels) > 6 else ''}")
        if dominated:
            labels = [cands[i].label for i in sorted(dominated)]
            out.append(
                f"{len(labels)} pruned as dominated (analytic upper bound below the best phase-1 result, "
                f"ranked by {self.spec.rank_by}): {', '.join(labels[:6])}{' ...' if len(labels) > 6 else ''}"
            )
        return out

    def _probe_points(self, cands: list[Candidate], results: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        pts = []
        for i in sorted(results):
            c = cands[i]
            for p in results[i]["probes"]:
                if p.get("stopped_early"):
                    continue  # its figures cover only the part simulated before it failed
                pts.append({
                    "label": c.label, "mode": c.mode, "rate_scale": p["rate_scale"],
                    "rate_rps": p["rate_scale"] * self.load.base_rate_rps,
                    "attainment": p["attainment"],
                    "meets_slo": passes_target(p["attainment"], self.spec.slo.attainment),
                    "tokens_per_s_per_user": 1000.0 / p["mean_tpot_ms"] if p["mean_tpot_ms"] else math.nan,
                    "output_tok_s_per_gpu": p["output_tok_s_per_gpu"],
                })
        return pts

    def _verdict(self, result: PlanResult) -> tuple[str, str]:
        col = RANK_COLUMNS[self.spec.rank_by]
        best = result.best
        if best is None:
            return (
                ("No candidate meets the SLO at any rate searched: relax the SLO, lower the attainment target, "
                "or add GPUs."),
                "",
            )
        families = {(r["mode"], Candidate.from_dict(_cand_fields(r)).hardware) for r in result.rows}
        multi = {m: sum(1 for mm, _ in families if mm == m) > 1 for m in ("aggregated", "disaggregated")}

        def name(r: dict[str, Any]) -> str:
            c = Candidate.from_dict(_cand_fields(r))
            if c.aggregated:
                text = f"aggregated x{c.decode_count} ({'chunked prefill' if c.chunked_prefill else 'no chunking'})"
            else:
                text = c.ratio
            return f"{text} [{c.hardware}]" if multi[c.mode] else text

        dis, agg = result.best_of("disaggregated"), result.best_of("aggregated")
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

    # -- sensitivity to the cost model's error -------------------------------------------------
    def _sensitivity(self, result: PlanResult, cands: list[Candidate], results: dict[int, dict[str, Any]]) -> None:
        spec = self.spec
        error = spec.cost_error
        source = "--cost-error"
        if error is None:
            found = [
                self.screener.cost_error(g, tp)
                for g in _dedupe(spec.prefill_gpus + spec.decode_gpus) for tp in _dedupe(spec.tps)
            ]
            known = [e for e in found if e is not None]
            if known:
                error, source = max(known), "the fitted cost model's held-out p95 error"
        if error is None:
            result.notes.append(
                "Sensitivity skipped: the cost model reports no held-out error (the roofline model has none); "
                "pass --cost-error 0.1 to re-run the top candidates with step times ±10 %."
            )
            return
        if error == 0:
            return
        index_of = {cands[i].label: i for i in results}
        top = [r for r in result.rows if r["status"] == "evaluated" and r["mode"] == "disaggregated"
               and r["goodput_rps"] > 0][: spec.sensitivity_top]
        agg = result.best_of("aggregated")
        chosen = [index_of[r["label"]] for r in top] + ([index_of[agg["label"]]] if agg else [])
        factors = (1.0 - error, 1.0 + error)
        jobs, where = [], []
        for i in chosen:
            nominal = results[i]["goodput_rate_scale"]
            for f in factors:
                jobs.append(self._job("sensitivity", self.load.fingerprint, cands[i], self._search(nominal / f, f)))
                where.append((i, f))
        assert self.runner is not None
        out = self._execute(self.runner, jobs)
        by: dict[int, dict[float, float]] = {}
        for (i, f), res in zip(where, out, strict=True):
            by.setdefault(i, {})[f] = res["goodput_rate_scale"] * self.load.base_rate_rps
        rows = []
        for i in chosen:
            c = cands[i]
            nominal = results[i]["goodput_rate_scale"] * self.load.base_rate_rps
            rows.append({
                "label": c.label, "mode": c.mode, "ratio": c.ratio, "goodput_rps": nominal,
                **{f"goodput_rps_x{f:g}": by[i][f] for f in factors},
            })
        result.sensitivity = rows
        lines = [(f"Step times scaled by ±{error:.0%} ({source}), top {len(top)} splits"
                 f"{' and the best aggregated baseline' if agg else ''} re-run:")]
        def best_by(key: str) -> dict[str, Any]:
            return max(rows, key=lambda r: self._metric(cands[index_of[r["label"]]], float(r[key])))

        nominal_best = best_by("goodput_rps")
        for f in factors:
            key = f"goodput_rps_x{f:g}"
            best = best_by(key)
            shift = "unchanged" if best["label"] == nominal_best["label"] else f"shifts from {nominal_best['ratio']}"
            lines.append(
                f"  steps {'slower' if f > 1 else 'faster'} (x{f:g}): best {best['ratio']} "
                f"({cands[index_of[best['label']]].family}) at {best[key]:.3g} req/s — {shift}"
            )
        result.sensitivity_summary = lines

    # -- a fixed ratio against windows of the trace ------------------------------------------------
    def _windows(self, result: PlanResult, cands: list[Candidate], results: dict[int, dict[str, Any]]) -> None:
        spec = self.spec
        if spec.windows <= 0:
            return
        best = result.best_of("disaggregated")
        if best is None and spec.window_ratio is None:
            result.notes.append("Windows skipped: no disaggregated split meets the SLO.")
            return
        if best is not None:
            proto = Candidate.from_dict(_cand_fields(best))
        else:
            proto = next(c for c in cands if not c.aggregated)
        if spec.window_ratio is not None:
            proto = Candidate(
                "disaggregated", spec.window_ratio[0], proto.prefill_tp, proto.prefill_gpu, spec.window_ratio[1],
                proto.decode_tp, proto.decode_gpu, proto.max_batch_size, proto.link,
            )
        # The load the ratio was sized for: its goodput on the whole trace.
        whole = next((r for i, r in results.items() if cands[i] == proto), None)
        assert self.runner is not None
        if whole is None:
            screen = self.screener.screen(proto, spec.search)
            whole = self._execute(self.runner, [self._job("sweep", self.load.fingerprint, proto,
                                                          self._search(self._start(screen)))])[0]
        deploy = whole["goodput_rate_scale"]
        jobs: list[Job] = []
        metas: list[tuple[int, float, float, Trace | None, TraceLoad | None]] = []
        for k, (t0, t1, sub) in enumerate(self.window_parts):
            if sub is None:
                metas.append((k, t0, t1, None, None))
                continue
            fp = trace_fingerprint(sub)
            try:
                sub_load = trace_load(sub, self.caching)
            except ConfigError:
                metas.append((k, t0, t1, sub, None))
                continue
            start = deploy * self.load.base_rate_rps / sub_load.base_rate_rps if deploy > 0 else 1.0
            jobs.append(self._job("window", fp, proto, self._search(start, extra=[deploy] if deploy > 0 else [])))
            metas.append((k, t0, t1, sub, sub_load))
        out = iter(self._execute(self.runner, jobs))
        rows = []
        for k, t0, t1, sub, window_load in metas:
            wl = window_load
            row: dict[str, Any] = {"window": k + 1, "start_s": t0, "end_s": t1,
                                   "requests": 0 if sub is None else len(sub)}
            if sub is None or wl is None:
                row["note"] = "too few requests to scale"
                rows.append(row)
                continue
            res = next(out)
            bottleneck, why = diagnose(res, spec.slo)
            ok = res.get("pass") or res.get("fail") or {}
            at_deploy = res["extra"][0] if res["extra"] else None
            stranded_p = 1.0 - ok.get("prefill_busy", math.nan)
            stranded_d = 1.0 - ok.get("decode_busy", math.nan)
            row.update(
                rate_rps=wl.base_rate_rps,
                mean_input_tokens=float(sub.input_tokens.mean()),
                mean_output_tokens=float(sub.output_tokens.mean()),
                attainment_at_deployed_load=None if at_deploy is None else at_deploy["attainment"],
                goodput_rps=res["goodput_rate_scale"] * wl.base_rate_rps,
                limiting_pool=bottleneck,
                prefill_busy=ok.get("prefill_busy"),
                decode_busy=ok.get("decode_busy"),
                stranded_prefill=stranded_p,
                stranded_decode=stranded_d,
                why=why,
            )
            rows.append(row)
        result.windows = rows
        limits = [str(r["limiting_pool"]) for r in rows if r.get("limiting_pool")]
        ratio_txt = f"{proto.ratio} ({proto.family})"
        lines = [
            (f"Fixed ratio {ratio_txt}, sized for {deploy * self.load.base_rate_rps:.3g} req/s on the whole trace, "
            f"against {len(rows)} consecutive windows:")
        ]
        if len(set(limits)) > 1:
            lines.append(
                f"  the limiting pool changes across windows ({', '.join(limits)}): a ratio fixed at deployment "
                "strands capacity in the other pool when the mix moves"
            )
        elif limits:
            lines.append(f"  the {limits[0]} pool limits every window")
        ev = [r for r in rows if r.get("stranded_prefill") is not None]
        if ev:
            worst = max(
                ev,
                key=lambda r: max(
                    r["stranded_prefill"] if r["limiting_pool"] != "prefill" else 0.0,
                    r["stranded_decode"] if r["limiting_pool"] != "decode" else 0.0,
                ),
            )
            other = "decode" if worst["limiting_pool"] == "prefill" else "prefill"
            lines.append(
                f"  worst: window {worst['window']} ({worst['limiting_pool']}-bound) leaves "
                f"{worst[f'stranded_{other}']:.0%} of the {other} pool idle at its goodput"
            )
        result.windows_summary = lines


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


def latency_samples(
    trace: Trace, row: dict[str, Any], spec: PlanSpec, store: ProfileStore | None = None
) -> dict[str, np.ndarray]:
    """Per-request TTFT and TPOT (seconds) of a plan row's candidate at its goodput rate."""
    from simdisagg.metrics import request_latencies
    from simdisagg.sim.engine import simulate

    cand = Candidate.from_dict(_cand_fields(row))
    cfg = cand.run_config(spec.base).model_copy(update={"rate_scale": row["goodput_rate_scale"]})
    lat = request_latencies(simulate(cfg, trace, store=store or ProfileStore()))
    return {"ttft_s": lat["ttft_s"], "tpot_s": lat["tpot_s"]}
