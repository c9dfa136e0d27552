"""The capacity planner (:mod:`simdisagg.plan`) on synthetic traces whose answer is known.

Traces are built with :class:`~simdisagg.trace.TraceBuilder`: Poisson arrivals and token
counts drawn from a seeded generator, a few hundred requests each. The cluster is 4-6 H100s
running llama-3.1-8b on the roofline cost model, with a decode batch of at most 8 so that the
pools saturate at modest rates. The plans here judge steady state on shorter windows than the
defaults (``LIGHT``: 600 measured requests, 6 lifetimes) and skip the re-run check of the
best candidate, which keeps these tests fast; the defaults are exercised in
``test_targets.py`` and ``test_steady_state.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from simdisagg.config import RooflineCost, RunConfig, SLOConfig
from simdisagg.errors import ConfigError
from simdisagg.hardware import ProfileStore
from simdisagg.plan import (
    Candidate,
    PlanSpec,
    ResultsFile,
    Screener,
    SearchSettings,
    allowed_misses,
    enumerate_candidates,
    evaluate_candidate,
    find_goodput,
    pareto_frontier,
    passes_target,
    plan,
    probe_metrics,
    run_probe,
    trace_load,
)
from simdisagg.plan.probe import run_window
from simdisagg.plan.spec import SteadyStateSettings
from simdisagg.plan.workload import extend_trace
from simdisagg.trace import Trace, TraceBuilder, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
BASE = RunConfig(cost=RooflineCost(), slo=SLOConfig(ttft_s=1.0, tpot_s=0.03, attainment=0.9))
LIGHT = SteadyStateSettings(window_lifetimes=6, min_requests=600, screen_min_requests=150)
SPEC = PlanSpec(base=BASE, gpus=6, max_batch_sizes=(8,), search=SearchSettings(steady=LIGHT), verify=False)

#: (input token range, output token range) of each load shape.
SHAPES = {
    "prefill": ((3000, 6000), (1, 6)),  # long prompts, 1-5 output tokens
    "balanced": ((1500, 3000), (100, 200)),
    "decode": ((50, 200), (200, 400)),  # short prompts, long answers
}


def synthetic(kinds: list[str], n: int = 240, rate_rps: float = 4.0, seed: int = 1) -> Trace:
    """``n`` Poisson arrivals per entry of ``kinds``, one shape after the other in time."""
    rng = np.random.default_rng(seed)
    builder = TraceBuilder(f"synthetic-{'-'.join(kinds)}")
    t = 0.0
    line = 0
    for kind in kinds:
        (i0, i1), (o0, o1) = SHAPES[kind]
        for _ in range(n):
            t += float(rng.exponential(1.0 / rate_rps))
            line += 1
            builder.add(line=line, timestamp_s=t, input_tokens=int(rng.integers(i0, i1)),
                        output_tokens=int(rng.integers(o0, o1)))
    return builder.build()


@pytest.fixture(scope="module")
def plans() -> dict[str, object]:
    return {kind: plan(synthetic([kind]), SPEC, workers=1) for kind in SHAPES}


def _spec(**update: object) -> PlanSpec:
    return PlanSpec.model_validate({**SPEC.model_dump(), **update})


# -- the answer moves with the load ----------------------------------------------------------
def test_best_split_moves_the_way_the_load_does(plans: dict) -> None:
    """Prefill-heavy load gets the most prefill GPUs, decode-heavy the fewest, balanced between."""
    frac = {k: p.best_of("disaggregated")["prefill_fraction"] for k, p in plans.items()}
    assert frac["prefill"] > frac["decode"], frac
    assert frac["prefill"] >= frac["balanced"] >= frac["decode"], frac
    assert plans["prefill"].best_of("disaggregated")["ratio"] == "5P:1D"
    assert plans["decode"].best_of("disaggregated")["ratio"] == "1P:5D"
    # the winner's limit is the pool the load stresses
    assert plans["prefill"].best_of("disaggregated")["bottleneck"] == "prefill"
    assert plans["decode"].best_of("disaggregated")["bottleneck"] == "decode"


def test_pruning_keeps_the_winner_and_the_bound_holds(plans: dict) -> None:
    """Every simulated goodput is below its analytic bound, so pruning by the bound never drops
    the best candidate: an unpruned sweep finds the same winner at the same goodput."""
    for kind, pruned in plans.items():
        full = plan(synthetic([kind]), _spec(prune=False), workers=1)
        for row in full.rows:
            assert row["status"] == "evaluated"
            assert row["goodput_rps"] <= row["bound_rps"] * (1 + 1e-9), (kind, row["label"])
        assert full.best["label"] == pruned.best["label"]
        assert full.best["goodput_rps"] == pruned.best["goodput_rps"]
    assert any(r["status"] == "pruned" for p in plans.values() for r in p.rows), "nothing was pruned"
    assert any("dominated" in line for p in plans.values() for line in p.pruned_summary)


def test_aggregated_verdict_is_stated(plans: dict) -> None:
    """The verdict names the winning mode; every plan ran both aggregated baselines."""
    for p in plans.values():
        aggs = [r for r in p.rows if r["mode"] == "aggregated"]
        assert {r["chunked_prefill"] for r in aggs} == {False, True}
        assert all(r["status"] == "evaluated" for r in aggs)
        assert p.verdict.startswith(("Disaggregation wins", "Aggregated serving wins", "A tie"))


# -- goodput bisection ----------------------------------------------------------------------
def test_find_goodput_brackets_and_bisects_a_known_threshold() -> None:
    """On a step-shaped attainment the search returns lo <= threshold < hi, hi/lo - 1 <= tol;
    a threshold below the floor gives 0 in three probes; above the ceiling it stops there."""
    settings = SearchSettings(rel_tol=0.01, max_bisect_steps=20, min_rate_scale=0.01, max_rate_scale=100.0)
    for threshold, start in ((3.7, 1.0), (3.7, 50.0), (0.02, 5.0)):
        found = find_goodput(lambda s, th=threshold: {"rate_scale": s, "attainment": float(s <= th)}, 0.9,
                             start, settings)
        assert found.lo <= threshold < found.hi
        assert found.hi / found.lo - 1 <= 0.01
    floor = find_goodput(lambda s: {"rate_scale": s, "attainment": 0.0}, 0.9, 5.0, settings)
    assert floor.lo == 0.0 and floor.at_floor and len(floor.probes) == 3
    ceiling = find_goodput(lambda s: {"rate_scale": s, "attainment": 1.0}, 0.9, 5.0, settings)
    assert ceiling.at_ceiling and ceiling.lo == 100.0


def test_interpolation_narrows_a_smooth_curve_in_fewer_steps_than_bisection() -> None:
    """Attainment falling smoothly with the rate (as near a real goodput): the search still
    brackets the true crossing to the tolerance, in fewer probes than halving the bracket
    would take; on a cliff (a step) it falls back to bisection and still converges."""
    settings = SearchSettings(rel_tol=0.02, max_bisect_steps=30)
    root = 5.0 * (1.0 / 9.0) ** (1.0 / 8.0)  # where 1 / (1 + (s/5)^8) = 0.9

    def smooth(s: float) -> dict[str, float]:
        return {"rate_scale": s, "attainment": 1.0 / (1.0 + (s / 5.0) ** 8)}

    bracket_only = settings.model_copy(update={"max_bisect_steps": 0})
    for start in (1.0, 3.0, 20.0, 200.0):
        found = find_goodput(smooth, 0.9, start, settings)
        assert found.lo <= root * (1 + 1e-9) and root < found.hi and found.hi / found.lo - 1 <= 0.02
        bracket = find_goodput(smooth, 0.9, start, bracket_only)
        halvings = math.ceil(math.log2(math.log(bracket.hi / bracket.lo) / math.log(1.02)))
        narrowing = len(found.probes) - len(bracket.probes)
        assert narrowing < halvings, (start, [round(p["rate_scale"], 3) for p in found.probes])
    cliff = find_goodput(lambda s: {"rate_scale": s, "attainment": 0.95 if s <= 3.7 else 0.1}, 0.9, 1.0, settings)
    assert cliff.lo <= 3.7 < cliff.hi and cliff.hi / cliff.lo - 1 <= 0.02


def test_search_agrees_with_a_direct_sweep_of_rates() -> None:
    """The search's goodput matches the highest rate of a fine geometric sweep of confirming
    probes (all lower rates passing) to within the sweep's spacing plus the search tolerance."""
    trace = synthetic(["balanced"])
    cand = Candidate("disaggregated", 3, 1, "h100-sxm", 3, 1, "h100-sxm", 8, "ib-ndr-400")
    search = {**SPEC.search.model_dump(), "start_rate_scale": 1.0}
    res = evaluate_candidate(trace, cand.to_dict(), BASE.slo.model_dump(), BASE.model_dump(mode="json"), search)
    lo, hi = res["goodput_rate_scale"], res["fail_rate_scale"]
    tol = SPEC.search.rel_tol
    assert 0 < lo < hi <= lo * (1 + tol) * (1 + 1e-12)
    q = 2 ** (1 / 32)
    grid = q ** np.arange(math.floor(math.log(lo / 1.15, q)), math.ceil(math.log(hi * 1.15, q)) + 1)
    cfg = cand.run_config(BASE)
    store = ProfileStore()
    hint = res["pass"]["lifetime_p99_s"]
    passes = [run_probe(cfg, trace, BASE.slo, float(s), store, LIGHT, lifetime_hint_s=hint)["passed"] for s in grid]
    first_fail = passes.index(False)
    assert first_fail > 0 and all(passes[:first_fail])
    swept = grid[first_fail - 1]
    assert abs(math.log(swept / lo)) <= math.log(q) + math.log(1 + tol), (swept, lo, hi)


def test_stopping_failed_runs_early_changes_no_verdict() -> None:
    """A run that stops as soon as the attainment target is out of reach gives the same
    pass/fail answer as the full run at every rate; it stops only runs that fail, and only
    those; a run it does not stop is the full run, figure for figure."""
    trace = extend_trace(synthetic(["balanced"]), 4)
    cand = Candidate("disaggregated", 3, 1, "h100-sxm", 3, 1, "h100-sxm", 8, "ib-ndr-400")
    cfg = cand.run_config(BASE)
    store = ProfileStore()
    stopped = 0
    target = BASE.slo.attainment
    for s in 2.0 ** np.arange(-1, 7, 0.5):
        full, warm_full = run_window(cfg, trace, BASE.slo, float(s), store, LIGHT)
        early, warm_early = run_window(cfg, trace, BASE.slo, float(s), store, LIGHT, stop_when_failed=True)
        a_full = probe_metrics(full, BASE.slo, warm_full)
        a_early = probe_metrics(early, BASE.slo, warm_early)
        assert passes_target(a_early["attainment"], target) == passes_target(a_full["attainment"], target), s
        if "stopped_early_at_s" in early.meta:
            stopped += 1
            assert not passes_target(a_full["attainment"], target)
        else:
            assert a_early == a_full
    assert stopped >= 3, "no probe was far enough past the goodput rate to stop early"


def test_allowed_misses_is_the_largest_count_that_can_still_pass() -> None:
    for n in (1, 7, 240, 10_000, 123_457):
        for target in (0.5, 0.9, 0.95, 0.99, 1.0):
            m = allowed_misses(n, target)
            assert passes_target((n - m) / n, target)
            assert m == n or not passes_target((n - m - 1) / n, target)


# -- determinism across workers and backends -------------------------------------------------
def test_same_results_with_one_and_two_workers() -> None:
    """The process pool returns exactly the serial results (every evaluation is deterministic)."""
    trace = synthetic(["balanced"])
    one = plan(trace, SPEC, workers=1)
    two = plan(trace, SPEC, workers=2)
    pd.testing.assert_frame_equal(one.frame(), two.frame())
    assert one.verdict == two.verdict


def test_ray_backend_gives_the_same_results() -> None:
    """A local Ray instance (2 CPUs) returns exactly the serial results."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'simdisagg[ray]'")
    trace = synthetic(["balanced"])
    serial = plan(trace, SPEC, workers=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        on_ray = plan(trace, SPEC, backend="ray")
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(serial.frame(), on_ray.frame())


# -- resumable sweeps ------------------------------------------------------------------------
class _Killed(Exception):
    pass


def test_killed_and_resumed_sweep_gives_the_same_table(tmp_path: Path) -> None:
    """A sweep killed after three candidates, whose last record was then torn mid-line, resumes
    with a warning, re-runs only what is missing and gives the same table as an uninterrupted
    sweep; a third run re-runs nothing."""
    trace = synthetic(["balanced"])
    whole = plan(trace, SPEC, workers=1)

    def kill_after_three(ev: object) -> None:
        if ev.done == 3:  # type: ignore[attr-defined]
            raise _Killed

    out = tmp_path / "sweep"
    with pytest.raises(_Killed):
        plan(trace, SPEC, out_dir=out, workers=1, on_progress=kill_after_three)
    results = out / "results.jsonl"
    lines = results.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3 and all(json.loads(x)["key"] for x in lines)
    results.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # torn by a crash
    with pytest.warns(UserWarning, match="torn"):
        resumed = plan(trace, SPEC, out_dir=out, workers=2)
    assert resumed.resumed == 2 and resumed.simulations > 0
    pd.testing.assert_frame_equal(whole.frame(), resumed.frame())
    text = results.read_text()
    assert text.endswith("\n") and all(json.loads(x) for x in text.splitlines())
    again = plan(trace, SPEC, out_dir=out, workers=1)
    assert again.simulations == 0 and again.resumed == again.evaluations
    pd.testing.assert_frame_equal(whole.frame(), again.frame())


def test_a_subset_sweep_is_reused_by_the_full_one(tmp_path: Path) -> None:
    """Finished candidates are keyed by candidate, config, search, SLO and trace, so a sweep
    without the aggregated baselines is reused by the full sweep; a new SLO re-runs all."""
    trace = synthetic(["prefill"])
    part = plan(trace, _spec(aggregated=False), out_dir=tmp_path, workers=1)
    full = plan(trace, SPEC, out_dir=tmp_path, workers=1)
    assert full.resumed >= 1 and full.resumed <= part.evaluations
    pd.testing.assert_frame_equal(full.frame(), plan(trace, SPEC, workers=1).frame())
    other = _spec(base=BASE.model_copy(update={"slo": SLOConfig(ttft_s=1.5, tpot_s=0.03)}).model_dump())
    assert plan(trace, other, out_dir=tmp_path, workers=1).resumed == 0


def test_results_file_drops_a_torn_last_line(tmp_path: Path) -> None:
    """A torn last record is reported and cut off; the next append starts on a clean line."""
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"key": "a", "result": {"x": 1}}) + "\n" + '{"key": "b", "res')
    store = ResultsFile(path)
    assert store.get("a") == {"x": 1} and store.get("b") is None
    assert len(store.warnings) == 1 and "last line" in store.warnings[0]
    store.append("c", "sweep", {"x": 3})
    assert [json.loads(x)["key"] for x in path.read_text().splitlines()] == ["a", "c"]


# -- static pruning, enumeration --------------------------------------------------------------
def test_static_pruning_needs_no_simulation() -> None:
    """An SLO nobody meets even alone, or a model that does not fit, prunes every candidate
    without simulating, with goodput 0 and the reason stated."""
    trace = synthetic(["balanced"], n=60)
    tight = _spec(base=BASE.model_copy(update={"slo": SLOConfig(ttft_s=0.001, tpot_s=0.03)}).model_dump())
    res = plan(trace, tight, workers=1)
    assert res.simulations == 0 and res.best is None
    assert all(r["status"] == "pruned" and r["goodput_rps"] == 0 for r in res.rows)
    assert "zero load" in res.pruned_summary[0] and res.verdict.startswith("No candidate")
    big = _spec(base=BASE.model_copy(update={"model": "llama-3.1-70b"}).model_dump())
    res = plan(trace, big, workers=1)
    assert res.simulations == 0 and "does not fit" in res.pruned_summary[0]


def test_enumeration_uses_the_whole_budget() -> None:
    """Every split leaves less than one instance of either pool unused; aggregated baselines come
    with and without chunked prefill; a dollar budget buys what the GPU count would."""
    store = ProfileStore()
    spec = _spec(gpus=8, tps=(1, 2))
    cands = enumerate_candidates(spec, store)
    for c in cands:
        assert c.gpus <= 8
        if not c.aggregated:
            assert 8 - c.gpus < min(c.prefill_tp, c.decode_tp)
    assert sum(c.aggregated for c in cands) == 4
    assert {(c.prefill_count, c.decode_count) for c in cands if not c.aggregated and c.prefill_tp == c.decode_tp == 1} == {
        (p, 8 - p) for p in range(1, 8)
    }
    price = store.gpu("h100-sxm").price_per_hour_usd.value
    by_budget = enumerate_candidates(_spec(gpus=None, budget_per_hour_usd=8 * price, tps=(1, 2)), store)
    assert by_budget == cands
    mixed = enumerate_candidates(_spec(decode_gpus=("h200", "h20")), store)
    assert {c.decode_gpu for c in mixed if not c.aggregated} == {"h200", "h20"}
    with pytest.raises(ConfigError):
        enumerate_candidates(_spec(links=("no-such-link",)), store)


# -- a target rate ----------------------------------------------------------------------------
def test_target_rate_under_a_budget_finds_the_cheapest_cluster() -> None:
    """``target_rate`` with a budget per hour: the cheapest cluster within it that sustains the
    rate. Every cheaper cluster within the budget was checked at the target (or is below it by
    its analytic bound) and fails; the answer costs no more than the budget."""
    trace = synthetic(["balanced"])
    price = ProfileStore().gpu("h100-sxm").price_per_hour_usd.value
    res = plan(trace, _spec(gpus=None, budget_per_hour_usd=6 * price, target_rate_rps=12.0), workers=2)
    target = res.target
    assert target is not None and target["objective"] == "cost"
    best = res.best
    assert best is not None and target["sustains"][best["label"]]
    assert best["price_per_hour_usd"] == pytest.approx(target["price_per_hour_usd"])
    assert best["price_per_hour_usd"] <= 6 * price + 1e-9
    cheaper = [c for c in target["checked"] if c["price_per_hour_usd"] < best["price_per_hour_usd"] - 1e-9]
    assert cheaper and not any(c["sustains"] for c in cheaper)
    assert res.verdict.startswith("Lowest price per hour that sustain 12 req/s")


# -- sensitivity and windows ------------------------------------------------------------------
def test_sensitivity_reruns_the_top_candidates_with_scaled_steps() -> None:
    """Slower steps never raise goodput and faster steps never lower it (within tolerance)."""
    res = plan(synthetic(["balanced"]), _spec(cost_error=0.2, sensitivity_top=2), workers=2)
    assert len(res.sensitivity) == 3  # two splits and the best aggregated baseline
    tol = 1 + 2 * SPEC.search.rel_tol
    for row in res.sensitivity:
        assert row["goodput_rps_x1.2"] <= row["goodput_rps"] * tol
        assert row["goodput_rps_x0.8"] * tol >= row["goodput_rps"]
    assert any("x1.2" in line for line in res.sensitivity_summary)


def test_held_out_error_of_a_fitted_model_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cost model exposing ``held_out_error`` sets the sensitivity error (worst phase p95)."""

    class Fitted:
        held_out_error: ClassVar[dict[str, dict[str, float]]] = {"prefill": {"median_ape": 0.02, "p95_ape": 0.07}, "decode": {"median": 0.03, "p95": 0.12}}

    screener = Screener(BASE, ProfileStore(), trace_load(synthetic(["balanced"], n=20), False))
    monkeypatch.setattr(screener, "_cost", lambda gpu, tp, role: Fitted())
    assert screener.cost_error("h100-sxm", 1) == pytest.approx(0.12)


def test_windows_find_each_windows_split_and_the_gpu_hours_a_fixed_ratio_strands() -> None:
    """A fixed 2P:2D ratio against a trace whose first half is prefill-heavy and second half
    decode-heavy: each window is searched for its own best split (more prefill instances in
    the first, fewer in the second); the fixed ratio is prefill-bound in the first and
    decode-bound in the second, and delivers less than the window's best split in both, so it
    strands GPU-hours, stated in hours and as a share of the hours it runs."""
    trace = synthetic(["prefill", "decode"], n=200)
    res = plan(trace, _spec(gpus=4, windows=2, window_ratio=(2, 2)), workers=2)
    w = res.windows
    assert [x["limiting_pool"] for x in w] == ["prefill", "decode"]
    first, second = (int(x["best_split"].split("P")[0]) for x in w)
    assert first > 2 > second, [x["best_split"] for x in w]
    for x in w:
        assert 0 < x["fixed_share_of_best"] < 1
        hours = (x["end_s"] - x["start_s"]) / 3600.0
        assert x["stranded_gpu_hours"] == pytest.approx(4 * hours * (1 - x["fixed_share_of_best"]))
    total = sum(x["stranded_gpu_hours"] for x in w)
    deployed = sum(4 * (x["end_s"] - x["start_s"]) / 3600.0 for x in w)
    assert any(f"{total:.3g} of the {deployed:.3g} GPU-hours" in line and f"({total / deployed:.1%})" in line
               for line in res.windows_summary)
    assert any("changes across windows" in line for line in res.windows_summary)


# -- helpers and the command ------------------------------------------------------------------
def test_pareto_frontier() -> None:
    """The frontier keeps exactly the points no other point beats in both coordinates."""
    x = np.array([1.0, 2.0, 3.0, 2.5, 0.5, np.nan])
    y = np.array([5.0, 4.0, 1.0, 2.0, 6.0, 9.0])
    assert pareto_frontier(x, y).tolist() == [4, 0, 1, 3, 2]
    assert pareto_frontier(np.array([1.0, 2.0]), np.array([1.0, 2.0])).tolist() == [1]


def test_plan_command_writes_table_csv_and_plots(tmp_path: Path) -> None:
    """``simdisagg plan`` prints the ranked table and verdict and writes every output file."""
    from typer.testing import CliRunner

    from simdisagg.cli import app

    trace_path = tmp_path / "t.jsonl"
    write_jsonl(synthetic(["prefill"], n=120), trace_path)
    out = tmp_path / "out"
    args = ["plan", str(trace_path), "--gpus", "4", "--slo-ttft", "1s", "--slo-tpot", "30ms", "--max-batch", "8",
            "--workers", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for text in ("Verdict:", "Best:", "Steady state:", "Repeat the best candidate at its goodput rate: simdisagg run"):
        assert text in result.output, text
    for name in ("results.jsonl", "candidates.csv", "plan.json", "best-config.json", "goodput_vs_prefill_fraction.png",
                 "pareto.png", "latency_cdf.png"):
        assert (out / name).is_file(), name
    frame = pd.read_csv(out / "candidates.csv")
    assert len(frame) == 5 and frame["rank"].tolist() == [1, 2, 3, 4, 5]
    best = frame.iloc[0]
    for column in ("goodput_rps", "output_tok_s_per_gpu", "tokens_per_s_per_user", "usd_per_million_output_tokens",
                   "joules_per_output_token"):
        assert best[column] > 0, column
    bad = CliRunner().invoke(app, ["plan", str(trace_path), "--slo-ttft", "1s"])
    assert bad.exit_code == 1 and "exactly one of --gpus" in bad.output
    bad = CliRunner().invoke(app, ["plan", str(trace_path), "--target-rate", "fast"])
    assert bad.exit_code == 1 and "--target-rate" in bad.output
