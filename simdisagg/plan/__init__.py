"""Capacity planning: the best prefill:decode split of a GPU budget under latency SLOs, by simulation.

The planner answers "given N GPUs (or $X per hour), a trace and SLOs, how should I split the
GPUs between prefill and decode, and is disaggregation worth it at all?" by running the
simulator, never by a formula alone.

Terms (times in seconds, rates in requests per second):

* A **candidate** is one cluster: prefill and decode instance counts, TP degree and GPU type
  per pool, decode max batch size and KV link (disaggregated), or one aggregated pool with or
  without chunked prefill on the same budget.
* **Rate scale** ``s``: the trace's open-loop arrivals replayed ``s`` times faster
  (``RunConfig.rate_scale``). The trace's base rate ``λ₀`` = open-loop requests / arrival span.
* **Attainment** ``A(s)``: fraction of the trace's requests that complete with TTFT and TPOT
  within the SLO (:func:`simdisagg.metrics.slo_met`).
* **Goodput** of a candidate: ``G = s* · λ₀`` with ``s*`` the highest rate scale at which
  ``A(s) ≥ target`` still holds. Found by bracketing (grow or shrink ``s`` geometrically) and
  then narrowing in log space until ``hi/lo − 1 ≤ rel_tol`` (at most ``max_bisect_steps``
  probes: halving, then probes either side of an interpolated crossing; see
  :func:`find_goodput`); ``s*`` is the highest rate that *passed*. A probe that certainly fails
  by a clear margin stops early (:func:`run_probe`). Goodput per GPU, per dollar-hour (GPU
  ``price_per_hour_usd``) and per kilowatt (GPU ``power_w``) follow.
* **Bottleneck** of a candidate: at the first failing rate above its goodput, the SLO part
  that breaks more (TTFT → the prefill pool, TPOT → the decode pool), told with each pool's
  busy fraction and queueing delay at the goodput rate.
* **Analytic bound** ``s_ub``: an upper bound on ``s*`` from work and capacity alone. Each pool
  must do, for the cheapest ``target`` fraction of requests, at least the work of those
  requests at the most efficient batching its limits allow (prefill: a full token budget of
  identical prompts, with an ideal prefix cache; decode: the largest batch that fits in KV
  memory and keeps a step within the TPOT target; link: the KV bytes over its bandwidth),
  within the trace span plus the SLO slack. The bound carries a safety margin
  (:data:`BOUND_MARGIN`) for finite-trace effects. It seeds the bracket and prunes candidates
  that cannot beat the best one already simulated.

Pruning is deterministic, so results never depend on the number of workers or the backend:

1. *static*: the model does not fit on a pool's GPUs; or fewer than ``target`` of the requests
   could meet the SLO even alone on an idle cluster (goodput 0, exactly); or the analytic
   bound is below the lowest rate searched (the pool cannot keep up even then);
2. *dominated*: phase 1 simulates every aggregated baseline and, per family of splits, the
   split with the highest analytic bound; phase 2 skips any split whose bound (in the ranking
   metric) is below the best phase-1 result.

Every finished candidate is appended as one JSON line (flushed and fsynced) to a results file;
its key hashes the candidate, the base config, the search settings, the SLO and a fingerprint
of the trace, so an interrupted sweep resumes without re-running finished candidates and a
torn last line is dropped with a warning and re-run.

:func:`evaluate_candidate` is the unit of work: top-level and picklable, it runs in a process
pool (default) or on Ray (``backend="ray"``, an optional extra) and returns plain data.
"""


from simdisagg.plan.candidates import MAX_CANDIDATES, Candidate, enumerate_candidates
from simdisagg.plan.diagnosis import diagnose
from simdisagg.plan.goodput_search import (
    GoodputSearch,
    evaluate_candidate,
    find_goodput,
)
from simdisagg.plan.pareto import pareto_frontier
from simdisagg.plan.planner import (
    CSV_COLUMNS,
    Planner,
    PlanResult,
    ProgressEvent,
    latency_samples,
    plan,
)
from simdisagg.plan.probe import allowed_misses, passes_target, probe_metrics, run_probe
from simdisagg.plan.results_file import RESULT_SCHEMA, ResultsFile, job_key
from simdisagg.plan.runner import Job, Runner
from simdisagg.plan.screening import BOUND_MARGIN, Screener, Screening
from simdisagg.plan.spec import RANK_COLUMNS, PlanSpec, RankBy, SearchSettings
from simdisagg.plan.traffic_windows import split_windows
from simdisagg.plan.workload import TraceLoad, trace_fingerprint, trace_load

__all__ = [
    "BOUND_MARGIN",
    "CSV_COLUMNS",
    "MAX_CANDIDATES",
    "RANK_COLUMNS",
    "RESULT_SCHEMA",
    "Candidate",
    "GoodputSearch",
    "Job",
    "PlanResult",
    "PlanSpec",
    "Planner",
    "ProgressEvent",
    "RankBy",
    "ResultsFile",
    "Runner",
    "Screener",
    "Screening",
    "SearchSettings",
    "TraceLoad",
    "allowed_misses",
    "diagnose",
    "enumerate_candidates",
    "evaluate_candidate",
    "find_goodput",
    "job_key",
    "latency_samples",
    "pareto_frontier",
    "passes_target",
    "plan",
    "probe_metrics",
    "run_probe",
    "split_windows",
    "trace_fingerprint",
    "trace_load",
]
