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

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from simdisagg.config import RunConfig, SLOConfig
from simdisagg.errors import ConfigError
from simdisagg.hardware import ProfileStore
from simdisagg.importers import load_trace
from simdisagg.prefixtree import infinite_cache_hit_blocks
from simdisagg.trace import Trace

#: Version of the results-file records; bump when a record's meaning changes.
RESULT_SCHEMA = 1
#: Safety factor on the analytic rate bound (finite traces can run a little over capacity).
BOUND_MARGIN = 1.25
#: Most candidates one plan enumerates (a guard against budgets that explode the search).
MAX_CANDIDATES = 5000

RankBy = Literal["goodput", "per_gpu", "per_dollar", "per_kw"]
RANK_COLUMNS: dict[str, str] = {
    "goodput": "goodput_rps",
    "per_gpu": "goodput_per_gpu",
    "per_dollar": "goodput_per_dollar_hour",
    "per_kw": "goodput_per_kw",
}


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- candidates -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Candidate:
    """One cluster to evaluate. Aggregated candidates keep their pool in the ``decode_*``
    fields (``prefill_count`` is 0 and ``link`` is ``None``)."""

    mode: Literal["disaggregated", "aggregated"]
    prefill_count: int
    prefill_tp: int
    prefill_gpu: str
    decode_count: int
    decode_tp: int
    decode_gpu: str
    max_batch_size: int
    link: str | None = None
    chunked_prefill: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        """The candidate a :meth:`to_dict` produced."""
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON and pickle friendly)."""
        return asdict(self)

    @property
    def aggregated(self) -> bool:
        """Whether the candidate serves both phases on one pool."""
        return self.mode == "aggregated"

    @property
    def prefill_gpus(self) -> int:
        """GPUs of the prefill pool (0 for aggregated)."""
        return self.prefill_count * self.prefill_tp

    @property
    def decode_gpus(self) -> int:
        """GPUs of the decode (or aggregated) pool."""
        return self.decode_count * self.decode_tp

    @property
    def gpus(self) -> int:
        """GPUs the candidate uses."""
        return self.prefill_gpus + self.decode_gpus

    @property
    def prefill_fraction(self) -> float:
        """Share of the GPUs in the prefill pool (NaN for aggregated)."""
        return math.nan if self.aggregated else self.prefill_gpus / self.gpus

    @property
    def ratio(self) -> str:
        """``3P:5D`` for a split, ``agg`` for aggregated serving."""
        return "agg" if self.aggregated else f"{self.prefill_count}P:{self.decode_count}D"

    @property
    def family(self) -> str:
        """Everything but the split: candidates of one family differ only in their ratio."""
        if self.aggregated:
            chunk = " chunked" if self.chunked_prefill else ""
            return f"aggregated {self.decode_gpu} tp{self.decode_tp} b{self.max_batch_size}{chunk}"
        return (
            f"{self.prefill_gpu} tp{self.prefill_tp} / {self.decode_gpu} tp{self.decode_tp} "
            f"b{self.max_batch_size} {self.link}"
        )

    @property
    def hardware(self) -> str:
        """The family without the aggregated serving option (chunked prefill or not)."""
        if self.aggregated:
            return f"{self.decode_gpu} tp{self.decode_tp} b{self.max_batch_size}"
        return self.family

    @property
    def label(self) -> str:
        """A short unique name, e.g. ``3P:5D h100-sxm tp1 / h100-sxm tp1 b256 ib-ndr-400``."""
        if self.aggregated:
            return f"{self.decode_count}x {self.family}"
        return f"{self.ratio} {self.family}"

    def price_per_hour_usd(self, store: ProfileStore) -> float:
        """What the candidate's GPUs cost per hour."""
        cost = self.decode_gpus * store.gpu(self.decode_gpu).price_per_hour_usd.value
        if self.prefill_gpus:
            cost += self.prefill_gpus * store.gpu(self.prefill_gpu).price_per_hour_usd.value
        return cost

    def power_kw(self, store: ProfileStore) -> float:
        """The candidate's GPUs' rated power, kW."""
        watts = self.decode_gpus * store.gpu(self.decode_gpu).power_w.value
        if self.prefill_gpus:
            watts += self.prefill_gpus * store.gpu(self.prefill_gpu).power_w.value
        return watts / 1000.0

    def run_config(self, base: RunConfig) -> RunConfig:
        """``base`` with this candidate's cluster (validated)."""
        data = base.model_dump(mode="json")
        data["decode"].update(count=self.decode_count, tp=self.decode_tp, gpu=self.decode_gpu,
                              max_batch_size=self.max_batch_size)
        if self.aggregated:
            data["mode"] = "aggregated"
            data["prefill"].update(count=0, tp=self.decode_tp, gpu=self.decode_gpu)
            data["aggregated"].update(chunked_prefill=self.chunked_prefill, tp=None, gpu=None)
        else:
            data["mode"] = "disaggregated"
            data["prefill"].update(count=self.prefill_count, tp=self.prefill_tp, gpu=self.prefill_gpu)
            data["link"]["preset"] = self.link
        return RunConfig.model_validate(data)


# -- settings ---------------------------------------------------------------------------------
class SearchSettings(_Frozen):
    """How the goodput of one candidate is searched (rate scales are relative to the trace)."""

    rel_tol: float = Field(default=0.02, gt=0, lt=1, description="stop narrowing when hi/lo - 1 <= this")
    max_bisect_steps: int = Field(default=8, ge=0, le=60, description="most probes spent narrowing")
    bracket_factor: float = Field(default=2.0, gt=1, description="grow/shrink factor while bracketing")
    min_rate_scale: float = Field(default=1e-3, gt=0, description="goodput below this counts as 0")
    max_rate_scale: float = Field(default=1e4, gt=0, description="stop growing here (goodput >= it)")

    @model_validator(mode="after")
    def _check(self) -> SearchSettings:
        if self.min_rate_scale >= self.max_rate_scale:
            raise ValueError("min_rate_scale must be below max_rate_scale")
        return self


class PlanSpec(_Frozen):
    """What to search: the budget, the hardware choices, the SLO (in ``base.slo``) and options.

    Exactly one of ``gpus`` and ``budget_per_hour_usd`` sets the budget. Every (prefill GPU,
    decode GPU, prefill TP, decode TP, max batch, link) combination is a family; each family
    contributes every split that leaves no room for another instance of either pool."""

    base: RunConfig = RunConfig()
    gpus: int | None = Field(default=None, ge=2, le=100_000)
    budget_per_hour_usd: float | None = Field(default=None, gt=0)
    prefill_gpus: tuple[str, ...] = ("h100-sxm",)
    decode_gpus: tuple[str, ...] = ("h100-sxm",)
    tps: tuple[int, ...] = (1,)
    max_batch_sizes: tuple[int, ...] = (256,)
    links: tuple[str, ...] = ("ib-ndr-400",)
    aggregated: bool = Field(default=True, description="include the aggregated baselines")
    search: SearchSettings = SearchSettings()
    rank_by: RankBy = "goodput"
    prune: bool = True
    cost_error: float | None = Field(default=None, ge=0, lt=1, description="± step-time error to test")
    sensitivity_top: int = Field(default=3, ge=1)
    windows: int = Field(default=0, ge=0, le=1000)
    window_ratio: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _check(self) -> PlanSpec:
        if (self.gpus is None) == (self.budget_per_hour_usd is None):
            raise ValueError("give exactly one of gpus and budget_per_hour_usd")
        for name in ("prefill_gpus", "decode_gpus", "tps", "max_batch_sizes", "links"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        if any(t < 1 for t in self.tps) or any(b < 1 for b in self.max_batch_sizes):
            raise ValueError("tp and max batch sizes must be >= 1")
        return self

    @property
    def slo(self) -> SLOConfig:
        """The SLO every candidate is held to."""
        return self.base.slo


def _dedupe(items: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _splits(cost_p: float, cost_d: float, budget: float) -> list[tuple[int, int]]:
    """Every (prefill, decode) instance count pair within ``budget`` that leaves no room for
    one more instance of either pool (``cost_*``: budget one instance takes)."""
    eps = 1e-9 * max(budget, 1.0)
    out = []
    p = 1
    while p * cost_p + cost_d <= budget + eps:
        d = math.floor((budget - p * cost_p + eps) / cost_d)
        left = budget - p * cost_p - d * cost_d
        if left + eps < min(cost_p, cost_d):
            out.append((p, d))
        p += 1
    return out


def enumerate_candidates(spec: PlanSpec, store: ProfileStore) -> list[Candidate]:
    """Every candidate of the plan, aggregated baselines first, in a fixed order."""
    for name in _dedupe(spec.prefill_gpus + spec.decode_gpus):
        store.gpu(name)  # unknown names fail here, with the list of known ones
    for name in spec.links:
        store.link(name)
    store.model(spec.base.model)

    def unit(gpu: str) -> float:
        return 1.0 if spec.gpus is not None else store.gpu(gpu).price_per_hour_usd.value

    budget = float(spec.gpus) if spec.gpus is not None else float(spec.budget_per_hour_usd or 0.0)
    out: list[Candidate] = []
    if spec.aggregated:
        for gpu in _dedupe(spec.prefill_gpus + spec.decode_gpus):
            for tp in _dedupe(spec.tps):
                count = math.floor(budget / (tp * unit(gpu)) + 1e-9)
                if count < 1:
                    continue
                for batch in _dedupe(spec.max_batch_sizes):
                    for chunked in (False, True):
                        out.append(Candidate("aggregated", 0, tp, gpu, count, tp, gpu, batch, None, chunked))
    for gp in _dedupe(spec.prefill_gpus):
        for gd in _dedupe(spec.decode_gpus):
            for tp_p in _dedupe(spec.tps):
                for tp_d in _dedupe(spec.tps):
                    pairs = _splits(tp_p * unit(gp), tp_d * unit(gd), budget)
                    for batch in _dedupe(spec.max_batch_sizes):
                        for link in _dedupe(spec.links):
                            for p, d in pairs:
                                out.append(Candidate("disaggregated", p, tp_p, gp, d, tp_d, gd, batch, link))
                                if len(out) > MAX_CANDIDATES:
                                    raise ConfigError(
                                        f"the plan has more than {MAX_CANDIDATES} candidates; narrow the "
                                        "budget or the --tp/--max-batch/--link/GPU lists"
                                    )
    if not out:
        raise ConfigError("no candidate fits the budget (a split needs at least one instance per pool)")
    return out


# -- the trace as the planner sees it -----------------------------------------------------------
def trace_fingerprint(trace: Trace) -> str:
    """A hash of everything in a trace that changes a simulation (not its file name)."""
    h = hashlib.sha256()
    if trace.prefix_tree_only:  # never make the hash lists just to fingerprint them
        tree = trace.prefix_tree()
        hashes = (tree.parent, tree.blocks, tree.request_segment)
    else:
        hashes = (trace.hash_offsets, trace.hash_values)
    for arr in (
        trace.timestamp_s, trace.input_tokens, trace.output_tokens, trace.session_index, trace.tool_wait_s,
        trace.wait_offsets, trace.wait_indices, *hashes,
    ):
        a = np.ascontiguousarray(arr)
        h.update(str(a.dtype).encode())
        h.update(a.tobytes())
    h.update(str(trace.hash_block_tokens).encode())
    return h.hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class TraceLoad:
    """What the planner needs of a trace: its base rate and per-request token counts."""

    requests: int
    span_s: float
    base_rate_rps: float
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    #: Prompt tokens left to compute with an ideal (unbounded, cluster-wide) prefix cache.
    new_tokens: np.ndarray
    fingerprint: str


def trace_load(trace: Trace, prefix_caching: bool) -> TraceLoad:
    """Base rate (open-loop requests over their arrival span) and token counts of a trace."""
    open_loop = ~trace.closed_loop
    ts = trace.timestamp_s[open_loop]
    span = float(ts.max() - ts.min()) if len(ts) else 0.0
    if len(ts) < 2 or span <= 0:
        raise ConfigError(
            f"{trace.source}: the planner scales open-loop arrival times, and this trace has "
            f"{len(ts)} open-loop request(s) over {span:g} s"
        )
    inp = trace.input_tokens.astype(np.int64)
    new = inp.copy()
    if prefix_caching and trace.has_hashes:
        hits = infinite_cache_hit_blocks(trace.prefix_tree(), np.argsort(trace.timestamp_s, kind="stable"))
        new = inp - np.minimum(hits * trace.hash_block_tokens, inp - 1)
    return TraceLoad(
        requests=len(trace),
        span_s=span,
        base_rate_rps=len(ts) / span,
        input_tokens=inp,
        output_tokens=trace.output_tokens.astype(np.int64),
        new_tokens=new,
        fingerprint=trace_fingerprint(trace),
    )


# -- analytic screening -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Screening:
    """What can be told about a candidate without simulating it."""

    rate_bound: float  # upper bound on the goodput rate scale (inf: none)
    zero_load_attainment: float  # attainment bound from each request alone on an idle cluster
    limiting: str  # the pool whose work sets the bound
    reason: str | None  # set when the candidate is pruned without simulation


class Screener:
    """Analytic bounds of candidates on one trace (cost models built once per GPU/TP/role)."""

    def __init__(self, base: RunConfig, store: ProfileStore, load: TraceLoad) -> None:
        self.base, self.store, self.load = base, store, load
        self._models: dict[tuple[str, int, str], Any] = {}
        self._prefill_work: dict[tuple[str, int, str, int, int | None], np.ndarray] = {}
        self._alone_cache: dict[tuple[str, int, str], tuple[np.ndarray, np.ndarray]] = {}

    def _cost(self, gpu: str, tp: int, role: str) -> Any:
        key = (gpu, tp, role)
        if key not in self._models:
            from simdisagg.costmodel.factory import make_cost_model
            from simdisagg.rng import Streams

            self._models[key] = make_cost_model(
                self.base.cost, self.base.model_shape(self.store), self.store.gpu(gpu), tp,
                Streams(self.base.seed), self.store, role=role, framework=self.base.framework,
            )
        return self._models[key]

    def _kv_tokens(self, gpu: str, tp: int) -> int:
        from simdisagg.sim.decode import kv_capacity_blocks

        model = self.base.model_shape(self.store)
        pool = self.base.decode
        blocks = kv_capacity_blocks(
            self.store.gpu(gpu).hbm_capacity_bytes.value, tp, pool.gpu_memory_utilisation,
            model.weight_bytes, model.kv_bytes_per_token, pool.kv_block_tokens, pool.kv_capacity_tokens,
        )
        return blocks * pool.kv_block_tokens

    def cost_error(self, gpu: str, tp: int) -> float | None:
        """The cost model's held-out p95 error (fraction) for this GPU/TP, if it reports one."""
        err = getattr(self._cost(gpu, tp, "decode"), "held_out_error", None)
        if not isinstance(err, dict):
            return None
        worst = None
        for phase in ("prefill", "decode"):
            stats = err.get(phase) or {}
            value = stats.get("p95", stats.get("p95_ape"))
            if value is not None and math.isfinite(float(value)):
                worst = max(worst or 0.0, float(value))
        return worst

    def _prefill_lower_s(self, gpu: str, tp: int, role: str, token_budget: int, max_req: int | None) -> np.ndarray:
        """Per request: prefill seconds at the best batching the pool allows (a lower bound)."""
        key = (gpu, tp, role, token_budget, max_req)
        if key not in self._prefill_work:
            cm = self._cost(gpu, tp, role)
            uniq, inverse = np.unique(self.load.new_tokens, return_inverse=True)
            per = np.empty(len(uniq))
            for j, u in enumerate(uniq.tolist()):
                k = max(1, token_budget // max(u, 1))
                if max_req is not None:
                    k = min(k, max_req)
                per[j] = cm.prefill_time_s(np.full(k, u), np.zeros(k)) / k
            self._prefill_work[key] = per[inverse]
        return self._prefill_work[key]

    def _decode_token_s(self, gpu: str, tp: int, role: str, max_batch: int) -> float:
        """Seconds per generated token at the largest batch that fits in KV memory and keeps a
        step within the TPOT target (a lower bound on the decode work per token)."""
        cm = self._cost(gpu, tp, role)
        inp, out = self.load.input_tokens, self.load.output_tokens
        steps = np.maximum(out - 1, 0).astype(np.float64)
        if steps.sum() == 0:
            return 0.0
        ctx = float((steps * (inp + out / 2.0)).sum() / steps.sum())
        held = float(np.mean(inp + out))
        cap = max(1, min(max_batch, int(self._kv_tokens(gpu, tp) // max(held, 1.0))))
        tpot = self.base.slo.tpot_s
        lo, hi = 1, cap  # largest batch whose step meets the TPOT target
        if cm.decode_step_time_s(1, int(ctx)) <= tpot:
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if cm.decode_step_time_s(mid, int(mid * ctx)) <= tpot:
                    lo = mid
                else:
                    hi = mid - 1
        b = lo
        return float(cm.decode_step_time_s(b, int(b * ctx)) / b)

    def _pool_bound(self, work_s: np.ndarray, instances: int, slack_s: float) -> float:
        """Highest rate scale at which ``instances`` servers can do the work of the cheapest
        ``attainment`` share of requests within the (scaled) span plus ``slack_s``."""
        k = math.ceil(self.base.slo.attainment * len(work_s))
        w = float(np.sort(work_s)[:k].sum())
        denom = w - instances * slack_s
        return math.inf if denom <= 0 else instances * self.load.span_s / denom

    def _alone(self, gpu: str, tp: int, role: str) -> tuple[np.ndarray, np.ndarray]:
        """Per request, alone on an idle instance: TTFT with an ideal prefix cache, and the
        first decode step (both lower bounds of what the request sees under load)."""
        if (gpu, tp, role) in self._alone_cache:
            return self._alone_cache[(gpu, tp, role)]
        cm = self._cost(gpu, tp, role)
        load = self.load
        cached = load.input_tokens - load.new_tokens
        pairs = np.stack([load.new_tokens, cached], axis=1)
        uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
        ttft = np.array([cm.prefill_time_s(np.array([n]), np.array([c])) for n, c in uniq.tolist()])
        uin, inv_in = np.unique(load.input_tokens, return_inverse=True)
        tpot = np.array([cm.decode_step_time_s(1, int(n)) for n in uin.tolist()])
        out = (ttft[inverse.reshape(-1)], tpot[inv_in.reshape(-1)])
        self._alone_cache[(gpu, tp, role)] = out
        return out

    def _zero_load(self, ttft: np.ndarray, tpot: np.ndarray, kv_tokens: int) -> float:
        """Share of requests that could meet the SLO alone on an idle cluster (an upper bound
        of the attainment at any rate)."""
        load, slo = self.load, self.base.slo
        fits = load.input_tokens + load.output_tokens <= kv_tokens
        ok = fits & (ttft <= slo.ttft_s) & ((load.output_tokens <= 1) | (tpot <= slo.tpot_s))
        return float(ok.mean())

    def screen(self, cand: Candidate, search: SearchSettings) -> Screening:
        """Bounds and static pruning of one candidate."""
        slo, load = self.base.slo, self.load
        mean_out = float(load.output_tokens.mean())
        decode_slack = slo.ttft_s + slo.tpot_s * mean_out
        model = self.base.model_shape(self.store)
        for gpu, tp, n in ((cand.prefill_gpu, cand.prefill_tp, cand.prefill_count),
                           (cand.decode_gpu, cand.decode_tp, cand.decode_count)):
            if n and self._kv_tokens(gpu, tp) < 1:
                return Screening(0.0, 0.0, "memory", f"{model.display_name} does not fit on {tp} x {gpu}")
        if cand.aggregated:
            role = "aggregated"
            pool = self.base.decode
            work = self._prefill_lower_s(cand.decode_gpu, cand.decode_tp, role, pool.max_batched_tokens,
                                         pool.max_prefill_batch_requests)
            work = work + np.maximum(load.output_tokens - 1, 0) * self._decode_token_s(
                cand.decode_gpu, cand.decode_tp, role, cand.max_batch_size)
            bounds = {"aggregated": self._pool_bound(work, cand.decode_count, decode_slack)}
            ttft, tpot = self._alone(cand.decode_gpu, cand.decode_tp, role)
            zero = self._zero_load(ttft, tpot, self._kv_tokens(cand.decode_gpu, cand.decode_tp))
        else:
            pool = self.base.prefill
            pw = self._prefill_lower_s(cand.prefill_gpu, cand.prefill_tp, "prefill", pool.max_batched_tokens,
                                       pool.max_prefill_batch_requests)
            dw = np.maximum(load.output_tokens - 1, 0) * self._decode_token_s(
                cand.decode_gpu, cand.decode_tp, "decode", cand.max_batch_size)
            link = self.store.link(cand.link or self.base.link.preset)
            bw = link.bandwidth_bytes_per_s.value * min(cand.prefill_tp, cand.decode_tp) * self.base.link.bandwidth_scale
            lw = load.input_tokens * float(model.kv_bytes_per_token) / bw
            bounds = {
                "prefill": self._pool_bound(pw, cand.prefill_count, slo.ttft_s),
                "decode": self._pool_bound(dw, cand.decode_count, decode_slack),
                "link": self._pool_bound(lw, cand.prefill_count, decode_slack),
            }
            ttft, _ = self._alone(cand.prefill_gpu, cand.prefill_tp, "prefill")
            _, tpot = self._alone(cand.decode_gpu, cand.decode_tp, "decode")
            zero = self._zero_load(ttft, tpot, self._kv_tokens(cand.decode_gpu, cand.decode_tp))
        limiting = min(bounds, key=lambda k: bounds[k])
        bound = bounds[limiting] * BOUND_MARGIN
        reason = None
        if zero < slo.attainment:
            reason = (
                f"SLO out of reach even at zero load: at most {zero:.0%} of requests can meet "
                f"TTFT {slo.ttft_s * 1e3:g} ms / TPOT {slo.tpot_s * 1e3:g} ms alone on this hardware"
            )
        elif bound < search.min_rate_scale:
            reason = (
                f"{limiting} pool cannot keep up even at the lowest rate searched "
                f"({search.min_rate_scale:g}x the trace): its work exceeds its capacity"
            )
        return Screening(bound, zero, limiting, reason)


# -- evaluating one candidate (the unit of work) -------------------------------------------------
_STORES: dict[str | None, ProfileStore] = {}


def _store_for(profiles_dir: str | None) -> ProfileStore:
    if profiles_dir not in _STORES:
        _STORES[profiles_dir] = ProfileStore(Path(profiles_dir) if profiles_dir else None)
    return _STORES[profiles_dir]


def _nanmean_ms(values: np.ndarray) -> float:
    v = values[~np.isnan(values)]
    return float(v.mean() * 1000.0) if len(v) else math.nan


def _nanpct_ms(values: np.ndarray, q: float) -> float:
    v = values[~np.isnan(values)]
    return float(np.percentile(v, q) * 1000.0) if len(v) else math.nan


def probe_metrics(result: Any, slo: SLOConfig) -> dict[str, float]:
    """The few numbers the planner keeps of one run (same definitions as
    :func:`simdisagg.metrics.summarize`: durations from first arrival to last completion)."""
    from simdisagg.metrics import request_latencies, slo_met
    from simdisagg.sim.recorder import STATUS_COMPLETED, STATUS_REJECTED

    rec = result.recorder
    t = rec.times
    n = max(rec.n, 1)
    done = rec.status == STATUS_COMPLETED
    lat = request_latencies(result)
    arrivals = t["arrival_at"][~np.isnan(t["arrival_at"])]
    start = float(arrivals.min()) if len(arrivals) else 0.0
    end = float(np.nanmax(t["completed_at"])) if done.any() else start
    duration = max(end - start, 1e-12)
    with np.errstate(invalid="ignore"):
        ttft_ok = done & (lat["ttft_s"] <= slo.ttft_s)
        tpot_bad = done & (lat["tpot_s"] > slo.tpot_s)
    out: dict[str, float] = {
        "attainment": float(slo_met(result, slo).sum() / n),
        "ttft_miss": float(1.0 - ttft_ok.sum() / n),
        "tpot_miss": float(tpot_bad.sum() / n),
        "rejected": float((rec.status == STATUS_REJECTED).sum() / n),
        "mean_ttft_ms": _nanmean_ms(lat["ttft_s"]),
        "p90_ttft_ms": _nanpct_ms(lat["ttft_s"], 90),
        "mean_tpot_ms": _nanmean_ms(lat["tpot_s"]),
        "p90_tpot_ms": _nanpct_ms(lat["tpot_s"], 90),
        "request_throughput": float(done.sum() / duration),
        "output_tok_s_per_gpu": float(result.output_tokens[done].sum() / duration / max(result.gpus, 1)),
        "prefill_queue_ms": _nanmean_ms(t["prefill_start_at"] - t["prefill_enqueued_at"]),
        "decode_wait_ms": _nanmean_ms(t["decode_admit_at"] - t["first_token_at"]),
    }
    span = max(rec.end_at, 1e-12)
    for pool in ("prefill", "decode", "aggregated"):
        inst = [x for x in rec.instances if x.pool == pool]
        if inst:
            out[f"{pool}_busy"] = float(np.mean([x.busy_s for x in inst]) / duration)
            cap = sum(x.kv.capacity for x in inst)
            out[f"{pool}_kv_mean"] = float(sum(x.kv.integral for x in inst) / (cap * span)) if cap else math.nan
        else:
            out[f"{pool}_busy"] = math.nan
            out[f"{pool}_kv_mean"] = math.nan
    return out


def passes_target(attainment: float, target: float) -> bool:
    """Whether an SLO attainment meets the target (the one comparison every search uses)."""
    return attainment >= target - 1e-12


def allowed_misses(requests: int, target: float) -> int:
    """The most requests that may miss the SLO while attainment can still meet ``target``."""
    n = max(requests, 1)
    m = min(n, int(n * (1.0 - target)) + 2)
    while m > 0 and not passes_target((n - m) / n, target):
        m -= 1
    return m


def run_probe(
    cfg: RunConfig,
    trace: Trace,
    slo: SLOConfig,
    rate_scale: float,
    store: ProfileStore,
    cost_scale: float = 1.0,
    stop_when_failed: bool = False,
) -> dict[str, float]:
    """Simulate ``cfg`` at one rate scale and keep :func:`probe_metrics` of it.

    ``stop_when_failed`` ends the run as soon as it certainly fails by a clear margin: its
    attainment cannot reach the target less half the allowed miss rate (0.85 for a 0.9
    target; see :func:`simdisagg.sim.engine.simulate`'s ``stop_after_misses``). The pass/fail
    answer is the same as the full run's; the other figures cover only the part simulated,
    and ``stopped_early`` is 1. The margin spares the runs just past the goodput rate, whose
    figures explain the bottleneck and which would only stop near their end anyway."""
    from simdisagg.sim.engine import simulate

    run_cfg = cfg.model_copy(update={"rate_scale": rate_scale, "slo": slo})
    kwargs: dict[str, Any] = {}
    if cost_scale != 1.0:
        kwargs["cost_scale"] = cost_scale
    if stop_when_failed:
        kwargs["stop_after_misses"] = allowed_misses(len(trace), slo.attainment - (1.0 - slo.attainment) / 2.0)
    result = simulate(run_cfg, trace, store=store, **kwargs)
    stopped = "stopped_early_at_s" in result.meta
    return {"rate_scale": rate_scale, **probe_metrics(result, slo), "stopped_early": float(stopped)}


@dataclass(slots=True)
class GoodputSearch:
    """Outcome of :func:`find_goodput`: the highest passing rate scale ``lo`` (0 when even the
    lowest failed), the lowest failing one ``hi`` (inf when even the highest passed), and every
    probe in the order it ran."""

    lo: float
    hi: float
    probes: list[dict[str, Any]]

    @property
    def at_floor(self) -> bool:
        """Even the lowest rate searched failed."""
        return self.lo == 0.0

    @property
    def at_ceiling(self) -> bool:
        """Even the highest rate searched passed."""
        return math.isinf(self.hi)


def _log_odds(attainment: float) -> float:
    a = min(max(attainment, 1e-9), 1.0 - 1e-9)
    return math.log(a / (1.0 - a))


def find_goodput(
    probe: Callable[[float], dict[str, Any]], target: float, start: float, settings: SearchSettings
) -> GoodputSearch:
    """Highest rate scale with ``probe(s)['attainment'] >= target``: bracket geometrically from
    ``start`` (clamped to the search range), then narrow the bracket in log space to
    ``rel_tol``.

    Narrowing halves the bracket in log rate until it spans at most 25 % and its failing end
    is near the target (attainment within three times the allowed miss rate: a far end says
    little, as on a cliff). Then attainment falls smoothly with the rate (the miss fraction
    grows about as a power of the load), so the crossing is predicted from the line through
    the two ends' attainments as log-odds against log rate, and the next two probes go just
    below and just above it: when the prediction holds, they close the bracket to
    ``rel_tol`` at once. Each probe counts as a step of ``max_bisect_steps``.

    When the first probe fails, the search steps down; after a second failure far from the
    target (or a third), the lowest rate is probed: a candidate that misses the SLO even there
    has goodput 0 after three or four simulations instead of a long geometric descent."""
    lo_lim, hi_lim, f = settings.min_rate_scale, settings.max_rate_scale, settings.bracket_factor
    tol = settings.rel_tol
    probes: list[dict[str, Any]] = []
    attainment: dict[float, float] = {}

    def passes(s: float) -> bool:
        p = probe(s)
        probes.append(p)
        attainment[s] = p["attainment"]
        return passes_target(p["attainment"], target)

    s = min(max(start, lo_lim), hi_lim)
    lo, hi = 0.0, math.inf
    if passes(s):
        lo = s
        while math.isinf(hi) and lo < hi_lim:
            s = min(lo * f, hi_lim)
            if passes(s):
                lo = s
            else:
                hi = s
        if math.isinf(hi):
            return GoodputSearch(lo, hi, probes)
    else:
        hi = s
        failures, floor_probed = 1, False
        clearly_failing = target - 2.0 * (1.0 - target)
        while lo == 0.0 and hi > lo_lim:
            if not floor_probed and (failures >= 3 or (failures == 2 and attainment[hi] < clearly_failing)):
                floor_probed = True
                if not passes(lo_lim):
                    return GoodputSearch(0.0, lo_lim, probes)
                if hi / lo_lim - 1.0 <= tol:
                    lo = lo_lim
                    break
            s = max(hi / f, lo_lim)
            if passes(s):
                lo = s
            else:
                hi = s
                failures += 1
        if lo == 0.0:
            return GoodputSearch(0.0, hi, probes)
    # Narrow: halve the bracket (in log rate) until it is short and its failing end is near
    # the target, then predict the crossing and probe just either side of it.
    near = target - 3.0 * (1.0 - target)
    half = math.sqrt(1.0 + 0.9 * tol)
    pending: list[float] = []
    steps = 0
    while steps < settings.max_bisect_steps and hi / lo - 1.0 > tol:
        pending = [x for x in pending if lo < x < hi]
        if not pending:
            if hi / lo <= 1.25 and attainment[hi] >= near:
                odds_lo, odds_hi = _log_odds(attainment[lo]), _log_odds(attainment[hi])
                share = 0.5
                if odds_lo > odds_hi:
                    share = min(max((odds_lo - _log_odds(target)) / (odds_lo - odds_hi), 0.05), 0.95)
                crossing = math.exp(math.log(lo) + share * (math.log(hi) - math.log(lo)))
                pending = [x for x in (crossing / half, crossing * half) if lo < x < hi]
            if not pending:
                pending = [math.sqrt(lo * hi)]
        mid = pending.pop(0)
        steps += 1
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return GoodputSearch(lo, hi, probes)


def evaluate_candidate(
    trace: Trace | str | Path,
    candidate: dict[str, Any],
    slo: dict[str, Any],
    base: dict[str, Any],
    search: dict[str, Any],
    profiles_dir: str | None = None,
) -> dict[str, Any]:
    """Find one candidate's goodput on a trace by simulation (picklable; runs in any worker).

    ``search`` holds :class:`SearchSettings` fields plus ``start_rate_scale`` (where the bracket
    starts), ``cost_scale`` (step times multiplied by it) and ``extra_rates`` (rate scales to
    probe as well, e.g. a deployment load). Returns plain data: the goodput rate scale, the
    probes at the goodput rate (``pass``) and just above it (``fail``), every probe sorted by
    rate, and how many simulations it took."""
    wall0 = time.perf_counter()
    tr = trace if isinstance(trace, Trace) else load_trace(trace)
    store = _store_for(profiles_dir)
    slo_cfg = SLOConfig.model_validate(slo)
    base_cfg = RunConfig.model_validate({**base, "slo": slo})
    cand = Candidate.from_dict(candidate)
    cfg = cand.run_config(base_cfg)
    opts = dict(search)
    start = float(opts.pop("start_rate_scale", 1.0))
    cost_scale = float(opts.pop("cost_scale", 1.0))
    extra = [float(x) for x in opts.pop("extra_rates", [])]
    settings = SearchSettings.model_validate(opts)
    seen: dict[float, dict[str, Any]] = {}

    runs = 0

    def probe(s: float, stop_when_failed: bool = True) -> dict[str, Any]:
        # A failing run may stop as soon as it cannot pass; a probe whose other figures are
        # reported (the first failing rate, extra rates) is run to the end.
        nonlocal runs
        if s not in seen or (not stop_when_failed and seen[s]["stopped_early"]):
            seen[s] = run_probe(cfg, tr, slo_cfg, s, store, cost_scale, stop_when_failed)
            runs += 1
        return seen[s]

    found = find_goodput(probe, slo_cfg.attainment, start, settings)
    if not math.isinf(found.hi):
        probe(found.hi, stop_when_failed=False)
    extra_probes = [probe(s, stop_when_failed=False) for s in extra]
    by_rate = {p["rate_scale"]: seen[p["rate_scale"]] for p in found.probes}
    return {
        "candidate": cand.to_dict(),
        "goodput_rate_scale": found.lo,
        "fail_rate_scale": found.hi,
        "at_floor": found.at_floor,
        "at_ceiling": found.at_ceiling,
        "pass": by_rate.get(found.lo),
        "fail": by_rate.get(found.hi),
        "extra": extra_probes,
        "probes": sorted(seen.values(), key=lambda p: p["rate_scale"]),
        "simulations": runs,
        "stopped_early": int(sum(p["stopped_early"] for p in seen.values())),
        "cost_scale": cost_scale,
        "wall_s": time.perf_counter() - wall0,
    }


# -- bottleneck -----------------------------------------------------------------------------------
def diagnose(res: dict[str, Any], slo: SLOConfig) -> tuple[str, str]:
    """Which pool limits a candidate's goodput, and a sentence saying why.

    Compares the SLO misses at the first failing rate (TTFT → prefill, TPOT → decode; for
    aggregated serving the phase that breaks) and quotes busy fractions and queueing delays at
    the goodput rate."""
    cand = Candidate.from_dict(res["candidate"])
    ok, bad = res.get("pass"), res.get("fail")
    if res["at_ceiling"]:
        return "none", "meets the SLO up to the highest rate searched; raise max_rate_scale to find its limit"
    assert bad is not None
    if res["at_floor"]:
        if bad["rejected"] > 1.0 - slo.attainment:
            return "memory", f"{bad['rejected']:.0%} of requests never fit in an instance's KV memory"
        part = "TTFT" if bad["ttft_miss"] >= bad["tpot_miss"] else "TPOT"
        return (
            ("prefill" if part == "TTFT" else "decode"),
            (f"misses the SLO even at the lowest rate searched ({bad['ttft_miss']:.0%} miss TTFT, "
            f"{bad['tpot_miss']:.0%} miss TPOT)"),
        )
    assert ok is not None
    d_ttft = bad["ttft_miss"] - ok["ttft_miss"]
    d_tpot = bad["tpot_miss"] - ok["tpot_miss"]
    ttft_side = d_ttft >= d_tpot
    rate = bad["rate_scale"] / ok["rate_scale"]
    head = (
        f"going {rate - 1:.0%} past the goodput rate, requests missing TTFT {ok['ttft_miss']:.0%}→"
        f"{bad['ttft_miss']:.0%}, missing TPOT {ok['tpot_miss']:.0%}→{bad['tpot_miss']:.0%}"
    )
    if cand.aggregated:
        where = "prefill phase (prompts queue behind running batches)" if ttft_side else (
            "decode phase (prefills stall the running batches)")
        return (
            "prefill" if ttft_side else "decode",
            (f"{where}: {head}; at goodput busy {ok['aggregated_busy']:.0%}, "
            f"prefill queue {ok['prefill_queue_ms']:.0f} ms"),
        )
    pool = "prefill" if ttft_side else "decode"
    other = "decode" if ttft_side else "prefill"
    return (
        pool,
        (f"{pool}-bound: {head}; at goodput {pool} busy {ok[f'{pool}_busy']:.0%} vs {other} "
        f"{ok[f'{other}_busy']:.0%}, prefill queue {ok['prefill_queue_ms']:.0f} ms, "
        f"decode admission wait {ok['decode_wait_ms']:.0f} ms"),
    )


# -- results file ---------------------------------------------------------------------------------
def job_key(trace_fp: str, candidate: dict[str, Any], base: dict[str, Any], search: dict[str, Any]) -> str:
    """The identity of one evaluation: candidate, base config (SLO included), search, trace."""
    blob = json.dumps(
        {"v": RESULT_SCHEMA, "trace": trace_fp, "candidate": candidate, "base": base, "search": search},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class ResultsFile:
    """Append-only JSON-lines file of finished evaluations, keyed by :func:`job_key`.

    Each record is written as one line, flushed and fsynced before the next starts, so a crash
    can only tear the last line; a torn or unreadable last line is cut off (with a warning) and
    its evaluation runs again. ``path=None`` keeps results in memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        self.warnings: list[str] = []
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        data = path.read_bytes()
        good_end = 0
        pos = 0
        lines = data.split(b"\n")
        for k, raw in enumerate(lines):
            last = k == len(lines) - 1
            end = pos + len(raw) + (0 if last else 1)
            if raw.strip():
                try:
                    rec = json.loads(raw)
                    key = rec["key"]
                    if last:
                        raise ValueError("no newline after the last record")
                except (ValueError, KeyError, TypeError):
                    where = "last line" if last or not any(x.strip() for x in lines[k + 1 :]) else f"line {k + 1}"
                    self.warnings.append(f"{path}: {where} is torn or unreadable; ignored, its candidate runs again")
                    pos = end
                    continue
                self.records[key] = rec
                good_end = end
            pos = end
        if good_end < len(data):
            # Cut the torn tail so the next append starts on a clean line.
            with path.open("r+b") as handle:
                handle.truncate(good_end)
                handle.flush()
                os.fsync(handle.fileno())

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored result of an evaluation, or ``None``."""
        rec = self.records.get(key)
        return None if rec is None else rec["result"]

    def append(self, key: str, kind: str, result: dict[str, Any]) -> None:
        """Store one finished evaluation durably."""
        rec = {"key": key, "kind": kind, "schema": RESULT_SCHEMA, "result": result}
        self.records[key] = rec
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(rec) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


# -- running many evaluations ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Job:
    """One evaluation to run: a candidate on a trace (by fingerprint) with search settings."""

    kind: str
    trace_fp: str
    candidate: dict[str, Any]
    search: dict[str, Any]
    key: str


_WORKER_TRACES: dict[str, Trace] = {}


def _init_worker(traces: dict[str, Trace]) -> None:
    _WORKER_TRACES.update(traces)


def _run_in_worker(
    trace_fp: str, candidate: dict[str, Any], slo: dict[str, Any], base: dict[str, Any], search: dict[str, Any],
    profiles_dir: str | None,
) -> dict[str, Any]:
    return evaluate_candidate(_WORKER_TRACES[trace_fp], candidate, slo, base, search, profiles_dir)


class Runner:
    """Runs jobs serially, in a process pool, or on Ray; yields ``(job index, result)`` as jobs
    finish. Results do not depend on the backend: each job is deterministic on its own."""

    def __init__(
        self,
        traces: dict[str, Trace],
        base: dict[str, Any],
        slo: dict[str, Any],
        *,
        backend: Literal["process", "ray"] = "process",
        workers: int | None = None,
        address: str | None = None,
        profiles_dir: str | None = None,
    ) -> None:
        self.traces, self.base, self.slo = traces, base, slo
        self.backend, self.address, self.profiles_dir = backend, address, profiles_dir
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool: Any = None
        self._ray: Any = None
        self._ray_owned = False
        self._ray_refs: dict[str, Any] = {}
        self._remote: Any = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (and a Ray instance this runner started)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._ray is not None and self._ray_owned:
            self._ray.shutdown()
        self._ray = None

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Run ``jobs``; yield each result with its index as soon as it is done."""
        if not jobs:
            return
        if self.backend == "ray":
            yield from self._run_ray(jobs)
        elif self.workers == 1 or len(jobs) == 1:
            for i, job in enumerate(jobs):
                yield i, evaluate_candidate(
                    self.traces[job.trace_fp], job.candidate, self.slo, self.base, job.search, self.profiles_dir
                )
        else:
            yield from self._run_pool(jobs)

    def _run_pool(self, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        if self._pool is None:
            # spawn, not fork: the caller may run threads (a progress bar), and a forked child
            # would inherit their locks.
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.traces,),
            )
        futures = {
            self._pool.submit(
                _run_in_worker, job.trace_fp, job.candidate, self.slo, self.base, job.search, self.profiles_dir
            ): i
            for i, job in enumerate(jobs)
        }
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: futures[f]):
                    yield futures[fut], fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise

    def _run_ray(self, jobs: Sequence[Job]) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "--backend ray needs Ray: pip install 'simdisagg[ray]' (or pip install ray)"
            ) from None
        if self._ray is None:
            self._ray = ray
            if not ray.is_initialized():
                pkg_root = str(Path(__file__).resolve().parent.parent)
                path = os.pathsep.join([pkg_root, *[p for p in sys.path if p]])
                ray.init(
                    address=self.address,
                    include_dashboard=False,
                    log_to_driver=False,
                    runtime_env={"env_vars": {"PYTHONPATH": path}},
                )
                self._ray_owned = True
            self._remote = ray.remote(num_cpus=1)(evaluate_candidate)
            self._ray_refs = {fp: ray.put(tr) for fp, tr in self.traces.items()}
        refs = {
            self._remote.remote(
                self._ray_refs[job.trace_fp], job.candidate, self.slo, self.base, job.search, self.profiles_dir
            ): i
            for i, job in enumerate(jobs)
        }
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    yield refs[ref], ray.get(ref)
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise


# -- the plan -------------------------------------------------------------------------------------
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


def split_windows(trace: Trace, k: int) -> list[tuple[float, float, Trace | None]]:
    """``k`` consecutive equal-duration windows of a trace by recorded arrival time, each as a
    trace of its own whose timestamps start at the window's start (``None`` if empty)."""
    ts = trace.timestamp_s
    t0, t1 = float(ts.min()), float(ts.max())
    edges = np.linspace(t0, t1, k + 1)
    which = np.clip(np.searchsorted(edges, ts, side="right") - 1, 0, k - 1)
    out: list[tuple[float, float, Trace | None]] = []
    for w in range(k):
        idx = np.flatnonzero(which == w)
        if len(idx) == 0:
            out.append((float(edges[w]), float(edges[w + 1]), None))
            continue
        sub = trace.subset(idx)
        sub.timestamp_s = sub.timestamp_s - edges[w]
        sub.source = f"{trace.source}[window {w + 1}/{k}]"
        out.append((float(edges[w]), float(edges[w + 1]), sub))
    return out


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


def pareto_frontier(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats in both ``x`` and ``y`` (larger is better),
    sorted by ``x``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    order = ok[np.lexsort((-y[ok], -x[ok]))]  # x descending, then y descending
    keep = []
    best_y = -math.inf
    for i in order.tolist():
        if y[i] > best_y:
            keep.append(i)
            best_y = y[i]
    return np.array(sorted(keep, key=lambda i: x[i]), dtype=np.int64)
