"""The planner's answers hold when deployed: checked on its own best candidates, with the
default steady-state settings.

* **Re-run check.** For every best candidate a plan here reports, ``simdisagg run`` of the
  config the plan writes (``best-config.json``) on a trace 3x longer than the window the
  goodput was confirmed on (the trace tiled three times as often, fresh ids and sessions) at
  the reported rate meets the SLO attainment target, and at 1.25x that rate does not.
* **DistServe's direction** (Zhong et al., OSDI '24): prompt-heavy traffic under a tight TPOT
  target favours disaggregation; short prompts with long answers under a loose TPOT target
  favour aggregated serving with chunked prefill.
* **Target rate.** ``plan --target-rate`` returns the smallest GPU count that sustains the
  rate; one GPU fewer, no candidate does (a full plan of that budget confirms it).

4 H100s, Llama-3.1-8B on the roofline cost model, Poisson traces of 300 requests (the plans tile
them to their steady-state windows). Marked slow: each plan simulates tens of thousands of
requests. The plans check their own answer the same way (``PlanResult.verification``); the
command is run for the prompt-heavy plan, and its figures must equal the plan's check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from simdisagg.cli import app
from simdisagg.config import RooflineCost, RunConfig, SLOConfig
from simdisagg.plan import PlanResult, PlanSpec, plan
from simdisagg.plan.planner import row_window_trace
from simdisagg.plan.workload import extend_trace
from simdisagg.trace import Trace, TraceBuilder, write_jsonl

pytestmark = pytest.mark.slow


def poisson(n: int, inputs: tuple[int, int], outputs: tuple[int, int], name: str, seed: int = 1) -> Trace:
    """``n`` Poisson arrivals at 10 req/s, token counts uniform in the given ranges."""
    rng = np.random.default_rng(seed)
    builder = TraceBuilder(name)
    t = 0.0
    for i in range(n):
        t += float(rng.exponential(0.1))
        builder.add(line=i + 1, timestamp_s=t, input_tokens=int(rng.integers(*inputs)),
                    output_tokens=int(rng.integers(*outputs)))
    return builder.build()


PROMPT_HEAVY = poisson(300, (2000, 4000), (50, 150), "prompt-heavy")
LONG_ANSWERS = poisson(300, (100, 300), (150, 300), "long-answers")
TIGHT = SLOConfig(ttft_s=1.0, tpot_s=0.025)
LOOSE = SLOConfig(ttft_s=2.0, tpot_s=0.1)


def spec(slo: SLOConfig, **kw: Any) -> PlanSpec:
    return PlanSpec(base=RunConfig(cost=RooflineCost(), slo=slo), **kw)


@pytest.fixture(scope="module")
def distserve() -> dict[str, PlanResult]:
    return {
        "prompt-heavy, tight TPOT": plan(PROMPT_HEAVY, spec(TIGHT, gpus=4), workers=2),
        "long answers, loose TPOT": plan(LONG_ANSWERS, spec(LOOSE, gpus=4), workers=2),
    }


def rerun_attainment(tmp: Path, trace: Trace, result: PlanResult, factor: float) -> float:
    """SLO attainment of ``simdisagg run`` with the plan's best config on a trace 3x longer than
    its confirming window, at ``factor`` times the reported rate."""
    best = result.best
    assert best is not None
    copies = 3 * int(best["window_copies"])
    path = tmp / f"x{copies}.jsonl"
    if not path.exists():
        write_jsonl(extend_trace(trace, copies), path)
    cfg = result.best_config()
    assert cfg is not None
    cfg_path = tmp / "best-config.json"
    cfg_path.write_text(json.dumps(cfg.model_dump(mode="json")))
    out = tmp / f"run-{factor:g}"
    args = ["run", str(path), "--config", str(cfg_path), "--no-compare", "--out", str(out),
            "--rate-scale", repr(best["goodput_rate_scale"] * factor)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return float(json.loads((out / "summary.json").read_text())["slo_attainment"])


def assert_holds_when_deployed(tmp: Path, trace: Trace, result: PlanResult) -> None:
    """The re-run check with ``simdisagg run``, and the plan's own check agrees with it."""
    target = result.spec.slo.attainment
    at_rate = rerun_attainment(tmp, trace, result, 1.0)
    above = rerun_attainment(tmp, trace, result, 1.25)
    assert at_rate >= target, (result.best["label"], at_rate)
    assert above < target, (result.best["label"], above)
    check = result.verification
    assert check is not None and check["holds"]
    assert check["attainment_at_goodput"] == pytest.approx(at_rate) and check["attainment_above"] == pytest.approx(above)


def test_distserve_direction(distserve: dict[str, PlanResult]) -> None:
    """Prompt-heavy under a tight TPOT target: a disaggregated split wins. Short prompts and
    long answers under a loose one: aggregated serving with chunked prefill wins."""
    heavy, long_answers = distserve["prompt-heavy, tight TPOT"], distserve["long answers, loose TPOT"]
    assert heavy.best["mode"] == "disaggregated", heavy.verdict
    assert heavy.verdict.startswith("Disaggregation wins") or "no aggregated baseline" in heavy.verdict
    assert long_answers.best["mode"] == "aggregated" and long_answers.best["chunked_prefill"], long_answers.verdict


def test_best_candidates_hold_on_a_longer_trace(distserve: dict[str, PlanResult], tmp_path: Path) -> None:
    """The re-run check (module docstring) of both DistServe plans' best candidates: with
    ``simdisagg run`` for the prompt-heavy one, and by the plans' own check for both."""
    heavy = distserve["prompt-heavy, tight TPOT"]
    assert row_window_trace(PROMPT_HEAVY, heavy.best) is not None
    assert_holds_when_deployed(tmp_path, PROMPT_HEAVY, heavy)
    for result in distserve.values():
        check = result.verification
        target = result.spec.slo.attainment
        assert check is not None and check["label"] == result.best["label"]
        assert check["attainment_at_goodput"] >= target > check["attainment_above"], check


def test_target_rate_returns_the_fewest_gpus() -> None:
    """``--target-rate``: the smallest GPU count whose best candidate sustains the rate; with one
    GPU fewer no candidate does (the planner checked every one, and a full plan of that budget
    finds no goodput reaching the target); the answer holds when deployed."""
    trace = PROMPT_HEAVY
    rate = 30.0
    result = plan(trace, spec(TIGHT, target_rate_rps=rate, max_gpus=16), workers=2)
    target = result.target
    assert target is not None and target["objective"] == "gpus"
    n = target["gpus"]
    best = result.best
    assert best is not None and best["gpus"] == n and target["sustains"][best["label"]]
    assert best["goodput_rps"] >= rate * (1 - result.spec.search.rel_tol)
    below = target["below"]
    assert below["gpus"] == n - 1 and below["passed"] == []
    fewer = plan(trace, spec(TIGHT, gpus=n - 1, verify=False), workers=2)
    assert all((r["goodput_rps"] or 0.0) < rate for r in fewer.rows), [(r["label"], r["goodput_rps"]) for r in fewer.rows]
    assert result.verdict.startswith(f"Fewest GPUs that sustain {rate:.3g} req/s")
    check = result.verification
    assert check is not None and check["holds"], check
