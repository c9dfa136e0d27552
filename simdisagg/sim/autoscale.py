"""Autoscaling: every ``interval_s`` each scaled pool's policy names a count of instances.

The policies (:mod:`simdisagg.config`: :class:`~simdisagg.config.LoadScaling`,
:class:`~simdisagg.config.SLOScaling`, :class:`~simdisagg.config.PredictiveScaling`) are pure
functions of a pool's :class:`Signals` (:func:`desired_count`), so they are tested without a
simulation. :class:`Autoscaler` measures the signals from the running instances and the
request columns, bounds the count by ``min_instances``/``max_instances``, and acts at most
once per ``cooldown_s`` per pool: it starts instances (serving after the pool's cold start)
or drains them (a starting instance is cancelled first; otherwise the least loaded serving
one takes no new work and leaves when its work is done). A pool below ``min_instances``
(instances failed) is topped up at once, cooldown or not.

What the signals are:

``queue_per_instance``  requests waiting for the pool now (prefill: prompts queued; decode:
                        requests waiting for KV memory; aggregated: prompts not yet admitted;
                        plus requests waiting because no instance served), per serving instance.
``kv_occupancy``        KV blocks in use over capacity, time mean over the last interval,
                        mean over the serving instances.
``batch_occupancy``     batch slots in use over ``max_batch_size`` (prefill, which has no
                        slots: the share of the time it computes), likewise.
``ttft_s``              the SLO policy's percentile of TTFT (prefill's first token) over the
                        requests whose first token came in the last ``window_s``, together with
                        those still waiting for it, at their age so far.
``itl_s``               the SLO policy's percentile, over the serving decode (or aggregated)
                        instances weighted by their iterations, of each one's mean iteration
                        time over the last interval (the inter-token latency its batch saw).
``forecast_rate``       the predictive policy's forecast: a least-squares line through the
                        arrival rates of the last ``history_windows`` windows of ``window_s``,
                        evaluated one cold start plus one interval ahead, never below zero.
``work_per_request_s``  instance-seconds a request needs, measured so far in the run: prefill,
                        busy seconds per prompt prefilled; decode, mean time from joining the
                        batch to completion over ``max_batch_size`` (Little's law: the batch
                        slots a request holds); aggregated, likewise from the start of prefill.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from simdisagg.config import (
    AutoscaleConfig,
    LoadScaling,
    PoolScaling,
    PredictiveScaling,
    RunConfig,
    SLOScaling,
)
from simdisagg.sim.clock import call_later
from simdisagg.sim.faults import ClusterControl
from simdisagg.sim.pools import Pool
from simdisagg.sim.recorder import STATUS_UNFINISHED, Recorder
from simdisagg.sim.states import STARTING


@dataclass(slots=True)
class Signals:
    """What a policy sees of one pool at a decision (NaN: not measured yet)."""

    serving: int
    provisioned: int  # serving + starting
    queue_per_instance: float = math.nan
    kv_occupancy: float = math.nan
    batch_occupancy: float = math.nan
    ttft_s: float = math.nan
    itl_s: float = math.nan
    forecast_rate: float = math.nan
    work_per_request_s: float = math.nan


def desired_count(policy: LoadScaling | SLOScaling | PredictiveScaling, pool: str, signals: Signals,
                  slo_ttft_s: float, slo_itl_s: float) -> int:
    """The count of instances ``policy`` asks for (before the pool's bounds)."""
    n = signals.provisioned
    if isinstance(policy, LoadScaling):
        ratios = [
            value / threshold
            for value, threshold in (
                (signals.queue_per_instance, policy.queue_per_instance),
                (signals.kv_occupancy, policy.kv_occupancy),
                (signals.batch_occupancy, policy.batch_occupancy),
            )
            if threshold is not None and not math.isnan(value)
        ]
        if not ratios:
            return n
        worst = max(ratios)
        if worst > 1.0:
            return max(n, math.ceil(max(signals.serving, 1) * worst))
        if worst < policy.scale_in_below:
            return n - 1
        return n
    if isinstance(policy, SLOScaling):
        metric = policy.metric
        if metric == "auto":
            metric = {"prefill": "ttft", "decode": "itl"}.get(pool, "both")
        ratios = []
        if metric in ("ttft", "both") and not math.isnan(signals.ttft_s):
            ratios.append(signals.ttft_s / slo_ttft_s)
        if metric in ("itl", "both") and not math.isnan(signals.itl_s):
            ratios.append(signals.itl_s / slo_itl_s)
        if not ratios:
            return n
        worst = max(ratios)
        if worst > 1.0:
            return n + 2
        if worst > policy.scale_out_above:
            return n + 1
        if worst < policy.scale_in_below:
            return n - 1
        return n
    if math.isnan(signals.forecast_rate) or math.isnan(signals.work_per_request_s):
        return n
    return math.ceil(signals.forecast_rate * signals.work_per_request_s / policy.target_utilisation - 1e-9)


def pool_scalings(cfg: RunConfig) -> dict[str, PoolScaling]:
    """The scaling setting of each pool of ``cfg`` that scales. An aggregated run without an
    ``aggregated`` setting scales with the decode (else the prefill) policy, bounded by as
    many GPUs as the disaggregated bounds together (a fixed pool counts at its size)."""
    settings = cfg.autoscale
    if settings is None:
        return {}
    if cfg.mode == "disaggregated":
        return {name: s for name in ("prefill", "decode") if (s := getattr(settings, name)) is not None}
    if settings.aggregated is not None:
        return {"aggregated": settings.aggregated}
    base = settings.decode or settings.prefill
    if base is None:
        return {}
    agg = cfg.aggregated_pool()
    per = agg.gpus_per_instance

    def bounds(name: str) -> tuple[int, int]:
        pool = getattr(cfg, name)
        s = getattr(settings, name)
        lo, hi = (s.min_instances, s.max_instances) if s is not None else (pool.count, pool.count)
        return lo * pool.gpus_per_instance, hi * pool.gpus_per_instance

    (p_lo, p_hi), (d_lo, d_hi) = bounds("prefill"), bounds("decode")
    lo, hi = min((p_lo + d_lo) // per, agg.count), max((p_hi + d_hi) // per, agg.count, 1)
    return {"aggregated": base.model_copy(update={"min_instances": lo, "max_instances": hi})}


class Autoscaler:
    """Takes a scaling decision for every scaled pool each ``interval_s``."""

    def __init__(
        self,
        control: ClusterControl,
        settings: AutoscaleConfig,
        scalings: dict[str, PoolScaling],
        rec: Recorder,
        waiting: dict[str, Callable[[], int]],
        slo_ttft_s: float,
        slo_itl_s: float,
    ) -> None:
        self.control, self.settings, self.scalings, self.rec = control, settings, scalings, rec
        self.env: simpy.Environment = control.env
        self.waiting = waiting
        self.slo_ttft_s, self.slo_itl_s = slo_ttft_s, slo_itl_s
        self._last: dict[int, tuple[float, float, float, float, float, int]] = {}
        self.scale_outs = 0
        self.scale_ins = 0
        self.decisions: list[tuple[float, str, int, int]] = []  # (time, pool, before, after)
        call_later(self.env, settings.interval_s, self._tick)

    # -- the decision ----------------------------------------------------------------------
    def _tick(self, _value: object = None) -> None:
        if self.control.all_done():
            return
        acted = False
        for name, scaling in self.scalings.items():
            acted |= self._decide(self.control.pools[name], scaling)
        if not acted and not self.env._queue and not any(
            inst.state == STARTING for pool in self.control.pools.values() for inst in pool.instances
        ):
            return  # nothing else will ever happen: the run is over
        call_later(self.env, self.settings.interval_s, self._tick)

    def _decide(self, pool: Pool, scaling: PoolScaling) -> bool:
        now = self.env.now
        signals = self.signals(pool, scaling)
        have = signals.provisioned
        want = desired_count(scaling.policy, pool.name, signals, self.slo_ttft_s, self.slo_itl_s)
        want = min(max(want, scaling.min_instances), scaling.max_instances)
        if have < scaling.min_instances:
            want = max(want, scaling.min_instances)  # top up after failures, cooldown or not
        elif now - pool.last_action_at < scaling.cooldown_s or want == have:
            return False
        if want == have:
            return False
        pool.last_action_at = now
        self.decisions.append((now, pool.name, have, want))
        if want > have:
            for _ in range(want - have):
                pool.start()
            self.scale_outs += 1
            return True
        for _ in range(have - want):
            starting = [x for x in pool.instances if x.state == STARTING]
            if starting:
                pool.drain(starting[-1])
            elif len(pool.live) > 1 or scaling.min_instances == 0:
                pool.drain(min(pool.live, key=_load))
        self.scale_ins += 1
        return True

    # -- measuring -------------------------------------------------------------------------
    def signals(self, pool: Pool, scaling: PoolScaling) -> Signals:
        """The signals of ``pool`` now, as :class:`Signals` documents them."""
        now = self.env.now
        live = pool.live
        serving = len(live)
        out = Signals(serving, pool.provisioned())
        out.queue_per_instance = self.waiting[pool.name]() / max(serving, 1)
        kv, batch, step_s, step_w = [], [], [], []
        for inst in live:
            st = inst.stats
            kv_int = st.kv.integral_at(now)
            # Prefill has no batch slots: its occupancy is the share of time it computes.
            batch_int = st.batch.integral_at(now) if math.isfinite(st.batch.capacity) else st.busy_s
            last = self._last.get(id(inst))
            self._last[id(inst)] = (now, kv_int, batch_int, st.busy_s, 0.0, st.iterations)
            if last is None or now <= last[0]:
                continue
            dt = now - last[0]
            kv.append((kv_int - last[1]) / (st.kv.capacity * dt))
            cap = st.batch.capacity if math.isfinite(st.batch.capacity) else 1.0
            batch.append(min((batch_int - last[2]) / (cap * dt), 1.0))
            iterations = st.iterations - last[5]
            if iterations > 0 and pool.name != "prefill":
                step_s.append((st.busy_s - last[3]) / iterations)
                step_w.append(iterations)
        if kv:
            out.kv_occupancy, out.batch_occupancy = float(np.mean(kv)), float(np.mean(batch))
        policy = scaling.policy
        if isinstance(policy, SLOScaling):
            out.ttft_s = self._ttft_percentile(now, policy.window_s, policy.percentile)
            if step_s:
                out.itl_s = _weighted_percentile(np.array(step_s), np.array(step_w, dtype=float), policy.percentile)
        elif isinstance(policy, PredictiveScaling):
            lead_s = pool.cold_start_s + self.settings.interval_s
            out.forecast_rate = self._forecast(now, policy.window_s, policy.history_windows, lead_s)
            out.work_per_request_s = self._work_per_request(pool)
        return out

    def _ttft_percentile(self, now: float, window_s: float, percentile: float) -> float:
        t = self.rec.times
        arrival, first = t["arrival_at"], t["first_token_at"]
        with np.errstate(invalid="ignore"):
            recent = first >= now - window_s
            waiting = np.isnan(first) & (arrival <= now) & (self.rec.status == STATUS_UNFINISHED)
        values = np.concatenate((first[recent] - arrival[recent], now - arrival[waiting]))
        return float(np.percentile(values, percentile)) if len(values) else math.nan

    def _forecast(self, now: float, window_s: float, windows: int, lead_s: float) -> float:
        span = min(windows, int(now // window_s))
        if span < 2:
            return math.nan
        arrival = self.rec.times["arrival_at"]
        start = now - span * window_s
        with np.errstate(invalid="ignore"):
            recent = arrival[(arrival >= start) & (arrival < now)]
        counts = np.histogram(recent, bins=span, range=(start, now))[0] / window_s
        centres = start + window_s * (np.arange(span) + 0.5)
        slope, intercept = np.polyfit(centres, counts, 1)
        return max(0.0, float(slope * (now + lead_s) + intercept))

    def _work_per_request(self, pool: Pool) -> float:
        t = self.rec.times
        if pool.name == "prefill":
            prompts = int(np.count_nonzero(~np.isnan(t["first_token_at"])))
            if prompts == 0:
                return math.nan
            return sum(inst.stats.busy_s for inst in pool.instances) / prompts
        # Little's law on the batch: decode from joining the batch, aggregated from the
        # start of prefill (the prompt holds a slot from then), to completion.
        begin = t["decode_start_at" if pool.name == "decode" else "prefill_start_at"]
        done = ~np.isnan(t["completed_at"]) & ~np.isnan(begin)
        if not done.any():
            return math.nan
        in_batch = float(np.mean(t["completed_at"][done] - begin[done]))
        return in_batch / pool.instances[0].max_batch_size


def _load(inst: Any) -> float:
    """How much work an instance holds (the one with least is drained first)."""
    return float(inst.outstanding_tokens) if hasattr(inst, "queue") else float(inst.load())


def _weighted_percentile(values: np.ndarray, weights: np.ndarray, percentile: float) -> float:
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    k = int(np.searchsorted(cum, percentile / 100.0 * cum[-1], side="left"))
    return float(values[order][min(k, len(values) - 1)])
