"""Planner benchmark: a mixture-of-experts plan that searches TP, attention DP and EP per pool
against a dense plan with the same number of candidates (a script, not a test).

The issue's target: the MoE search runs within the same time budget as a dense plan with the
same candidate count. The two plans here differ only in the model and in what each pool tries:

* ``dense``: Llama-3.1-8B (8B parameters, all active), both pools TP 1, 2 or 4;
* ``moe``: Qwen3-30B-A3B (30B parameters, 3B active), prefill TP 1, 2 or 4, decode ``tp1``, ``tp1-dp2-ep2`` or
  ``tp1-dp4-ep4`` (instances of the same GPU counts, so the budget splits the same way and the
  candidate counts match);
* ``moe-tp``: Qwen3-30B-A3B with TP 1, 2 or 4 in both pools (the same model searched as a dense
  one is: what searching DP and EP adds, with the model's own speed taken out);

8 H200s, the roofline cost model, the first 5 minutes of the Mooncake conversation trace, the
default SLO (TTFT 2 s, TPOT 100 ms), steady state judged on a short window (6 lifetimes, 600 requests) and no re-run
check, one worker. Time the two with a whole-process timer, alternating, e.g.::

    python benchmarks/plan_moe_vs_dense.py moe
    python benchmarks/plan_moe_vs_dense.py dense

Each prints its candidate count, its simulations and its wall time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simdisagg.config import RooflineCost, RunConfig, SLOConfig  # noqa: E402
from simdisagg.importers import load_trace  # noqa: E402
from simdisagg.plan import PlanSpec, SearchSettings, plan  # noqa: E402
from simdisagg.plan.spec import SteadyStateSettings  # noqa: E402

TRACE = ROOT / "traces" / "mooncake-conversation-5min.jsonl"
#: The default SLO: both models have a goodput to search for in every family.
SLO = SLOConfig()
STEADY = SteadyStateSettings(window_lifetimes=6, min_requests=600, screen_min_requests=150)
COMMON = {"gpus": 8, "prefill_gpus": ("h200",), "decode_gpus": ("h200",), "max_batch_sizes": (128,),
          "search": SearchSettings(steady=STEADY), "verify": False}  # fmt: skip
SPECS = {
    "dense": PlanSpec(base=RunConfig(model="llama-3.1-8b", cost=RooflineCost(), slo=SLO), tps=(1, 2, 4), **COMMON),
    "moe-tp": PlanSpec(base=RunConfig(model="qwen3-30b-a3b", cost=RooflineCost(), slo=SLO), tps=(1, 2, 4), **COMMON),
    "moe": PlanSpec(
        base=RunConfig(model="qwen3-30b-a3b", cost=RooflineCost(), slo=SLO),
        prefill_parallelisms=("tp1", "tp2", "tp4"),
        decode_parallelisms=("tp1", "tp1-dp2-ep2", "tp1-dp4-ep4"),
        **COMMON,
    ),
}


def _count_simulated_requests() -> list[int]:
    """Count the requests of every simulation the plan runs (a faster model sustains higher
    rates, so its steady-state windows hold more requests: the work per plan differs)."""
    from simdisagg.sim import engine

    count = [0]
    inner = engine.simulate

    def counting(cfg, trace, **kwargs):  # type: ignore[no-untyped-def]
        count[0] += len(trace)
        return inner(cfg, trace, **kwargs)

    engine.simulate = counting  # type: ignore[assignment]
    return count


def main() -> None:
    """Run the plan named on the command line and print its size and wall time."""
    which = sys.argv[1] if len(sys.argv) > 1 else "moe"
    spec = SPECS[which]
    trace = load_trace(TRACE)
    simulated = _count_simulated_requests()
    start = time.perf_counter()
    result = plan(trace, spec, workers=1)
    wall_s = time.perf_counter() - start
    best = result.best["label"] if result.best else "none"
    goodput = result.best["goodput_rps"] if result.best else 0.0
    print(f"{which}: {len(result.rows)} candidates, {result.simulations} simulations, {wall_s:.1f} s; "
          f"best {best} at {goodput:.3g} req/s; {simulated[0]:,} requests simulated, "
          f"{simulated[0] / wall_s:,.0f} per second")


if __name__ == "__main__":
    main()
