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
* **Attainment** ``A(s)``: fraction of the requests measured in a run (those arriving after
  its warm-up) that complete with TTFT and TPOT within the SLO
  (:func:`simdisagg.metrics.slo_met`; TTFT as the client sees it by default).
* **Sustained**: a rate scale ``s`` is sustained when ``A(s) ≥ target`` *at steady state*: on
  an arrival window long against the requests' lifetimes (the trace tiled with fresh ids and
  sessions when it is too short), with the warm-up left out and no growing backlog in the
  second half of the window (:mod:`simdisagg.plan.steady_state`). A rate that meets the SLO
  only because a finite trace ends before its queues grow is not sustained.
* **Goodput** of a candidate: ``G = s* · λ₀`` with ``s*`` the highest sustained rate scale.
  Screened on short windows (bracketing, then narrowing in log space until
  ``hi/lo − 1 ≤ rel_tol``; see :func:`find_goodput`) and confirmed at the bracket's ends on
  the long window (:func:`~simdisagg.plan.goodput_search.confirm_goodput`). A probe that
  certainly fails by a clear margin stops early (:func:`~simdisagg.plan.probe.run_window`).
  Per candidate at its goodput: output tokens/s per GPU, tokens/s per user (1 / mean TPOT),
  $ per million output tokens (GPU ``price_per_hour_usd``) and joules per output token (GPU
  ``power_w`` over the output token rate).
* **Bottleneck** of a candidate: at the first failing rate above its goodput, the pool
  saturated the larger share of the time (work waiting it could not start), told with each
  pool's batch and KV occupancy and the waits of each stage (:mod:`~simdisagg.plan.diagnosis`).
* **Target rate**: the question turned around, the fewest GPUs (or the lowest $/h) that
  sustain a given rate (:mod:`~simdisagg.plan.target_rate`).
* **Analytic bound** ``s_ub``: an upper bound on ``s*`` from work and capacity alone. Each pool
  must do, for the cheapest ``target`` fraction of requests, at least the work of those
  requests at the most efficient batching its limits allow (prefill: a full token budget of
  identical prompts, with an ideal prefix cache; decode: the largest batch that fits in KV
  memory and keeps a step within the TPOT target; link: the KV bytes over its bandwidth),
  within the trace span plus the SLO slack. The bound carries a safety margin
  (:data:`BOUND_MARGIN`). It seeds the bracket and prunes candidates that cannot beat the best
  one already simulated.

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

The modules, in the order a plan uses them: :mod:`~simdisagg.plan.spec` (the question),
:mod:`~simdisagg.plan.candidates` (the candidate space), :mod:`~simdisagg.plan.workload` (the
trace and its windows), :mod:`~simdisagg.plan.screening` (analytic bounds),
:mod:`~simdisagg.plan.probe` and :mod:`~simdisagg.plan.steady_state` (one rate, judged at steady
state), :mod:`~simdisagg.plan.goodput_search` (one candidate), :mod:`~simdisagg.plan.runner` and
:mod:`~simdisagg.plan.results_file` (many, resumably), :mod:`~simdisagg.plan.planner` (the plan),
:mod:`~simdisagg.plan.diagnosis`, :mod:`~simdisagg.plan.target_rate`,
:mod:`~simdisagg.plan.sensitivity`, :mod:`~simdisagg.plan.traffic_windows` and
:mod:`~simdisagg.plan.pareto`.

:func:`evaluate_candidate` is the unit of work: top-level and picklable, it runs in a process
pool (default) or on Ray (``backend="ray"``, an optional extra) and returns plain data.
"""


from simdisagg.plan.candidates import MAX_CANDIDATES, Candidate, enumerate_candidates
from simdisagg.plan.diagnosis import diagnose
from simdisagg.plan.goodput_search import (
    GoodputSearch,
    check_rate,
    confirm_goodput,
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
from simdisagg.plan.spec import (
    RANK_COLUMNS,
    PlanSpec,
    RankBy,
    SearchSettings,
    SteadyStateSettings,
)
from simdisagg.plan.steady_state import SteadyState, analyse
from simdisagg.plan.traffic_windows import split_windows
from simdisagg.plan.workload import (
    TraceLoad,
    extend_trace,
    trace_fingerprint,
    trace_head,
    trace_load,
)

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
    "SteadyState",
    "SteadyStateSettings",
    "TraceLoad",
    "allowed_misses",
    "analyse",
    "check_rate",
    "confirm_goodput",
    "diagnose",
    "enumerate_candidates",
    "evaluate_candidate",
    "extend_trace",
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
    "trace_head",
    "trace_load",
]
