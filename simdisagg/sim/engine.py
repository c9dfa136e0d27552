"""Wiring and running one simulation: the single place a SimPy Environment is created.

:func:`simulate` resolves profiles and cost models, builds the instances with their
collaborators passed in (nothing is assigned after construction), checks that every request
can ever be served (those that cannot are reported as rejected, never dropped), replays the
trace and returns columnar results.

Flow of a request (disaggregated): arrival → router → prefill queue → prefill batch (first
token) → router picks a decode instance → KV memory reserved there → KV crosses the prefill
instance's link → joins the decode batch at the next step boundary → completes. Aggregated:
arrival → router → instance (prefill, then decode in the same batch) → completes.

Closed loop: a request with ``wait_for`` arrives when the last request it waits for has
completed, plus its tool wait. A request that waits for a rejected request is rejected too
(the agent cannot go on without that answer).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from simdisagg.config import PoolConfig, RunConfig
from simdisagg.costmodel.base import CostModel
from simdisagg.costmodel.factory import make_cost_model
from simdisagg.costmodel.roofline import RooflineCostModel
from simdisagg.costmodel.scaled import ScaledCostModel
from simdisagg.errors import ConfigError
from simdisagg.hardware import ProfileStore
from simdisagg.rng import Streams
from simdisagg.sim.aggregated import AggregatedInstance, DecodeInstance
from simdisagg.sim.clock import call_later, run
from simdisagg.sim.decode import kv_capacity_blocks
from simdisagg.sim.link import KVLink
from simdisagg.sim.prefill import PrefillInstance, PrefillQueue, PrefixLookup
from simdisagg.sim.prefixcache import PrefixCache, TierSpec
from simdisagg.sim.recorder import (
    STATUS_COMPLETED,
    STATUS_REJECTED,
    InstanceStats,
    LevelIntegral,
    Recorder,
    RunResult,
)
from simdisagg.sim.router import Router
from simdisagg.trace import Trace


@dataclass(slots=True, frozen=True)
class PoolPlan:
    """A pool's resolved hardware: cost model and KV capacity per instance (for requests in
    flight, and for cached or retained prefix blocks)."""

    cost: CostModel
    kv_capacity_blocks: int
    kv_block_tokens: int
    cache_tokens: int = 0


def _plan_pool(
    cfg: RunConfig,
    pool: PoolConfig,
    role: str,
    store: ProfileStore,
    streams: Streams,
    cost_scale: float,
    cache_fraction: float = 0.0,
) -> PoolPlan:
    model = cfg.model_shape(store)
    gpu = store.gpu(pool.gpu)
    cost = make_cost_model(
        cfg.cost, model, gpu, pool.tp, streams, store, role=role, framework=cfg.framework, dp=pool.dp, ep=pool.ep
    )
    if cost_scale != 1.0:
        cost = ScaledCostModel(cost, cost_scale)
    blocks = kv_capacity_blocks(
        gpu.hbm_capacity_bytes.value,
        pool.tp,
        pool.gpu_memory_utilisation,
        model.weight_bytes,
        model.kv_bytes_per_token,
        pool.kv_block_tokens,
        pool.kv_capacity_tokens,
    )
    if blocks < 1:
        raise ConfigError(
            f"{role} pool: {model.display_name} ({model.weight_bytes / 1e9:.1f} GB of weights) leaves no KV "
            f"memory on {pool.tp} x {gpu.display_name}; raise --tp"
        )
    cache_blocks = int(blocks * cache_fraction)
    return PoolPlan(cost, blocks - cache_blocks, pool.kv_block_tokens, cache_blocks * pool.kv_block_tokens)


def _frontend_of(cost: CostModel) -> Any:
    """The framework overheads of a cost model when they put a delay in front of the scheduler
    (only profiles composed from measured kernels carry fitted framework overheads)."""
    while isinstance(cost, ScaledCostModel):
        cost = cost.inner
    overheads = getattr(cost, "overheads", None)
    return overheads if overheads is not None and overheads.has_frontend else None


def pool_cost_model(cfg: RunConfig, pool: PoolConfig, store: ProfileStore) -> CostModel:
    """The cost model a pool of ``cfg`` runs on (as :func:`simulate` builds it)."""
    return _plan_pool(cfg, pool, "estimate", store, Streams(cfg.seed), 1.0).cost


def _prefix_cache(
    cfg: RunConfig, trace: Trace, n_instances: int, cache_tokens: int, tp: int, kv_bytes_per_token: float,
    with_tiers: bool,
) -> PrefixCache:
    block_tokens = trace.hash_block_tokens
    block_bytes = block_tokens * kv_bytes_per_token
    tiers = []
    if with_tiers:
        for t in cfg.prefix_cache.tiers:
            shared = t.kind == "shared_store"
            capacity = t.capacity_bytes if shared else t.capacity_bytes * tp
            tiers.append(
                TierSpec(t.kind, int(capacity // block_bytes), t.read_bytes_per_s * (1 if shared else tp),
                         t.write_bytes_per_s, shared)
            )
    return PrefixCache(trace, n_instances, cache_tokens // block_tokens, tiers, block_bytes)


def simulate(
    cfg: RunConfig,
    trace: Trace,
    *,
    store: ProfileStore | None = None,
    cost_scale: float = 1.0,
    stop_after_misses: int | None = None,
    progress: Callable[[float, int, int], None] | None = None,
    measure_from_at: float | None = None,
) -> RunResult:
    """Simulate ``trace`` on the cluster ``cfg`` describes. Same inputs and seed → same result.

    ``cost_scale`` multiplies every step time (sensitivity to the cost model's error).

    ``stop_after_misses`` ends the run as soon as more than that many requests have certainly
    missed ``cfg.slo`` (rejected, first token later than the TTFT target or still waiting past
    it, or completed slower than the TPOT target). A search that only asks whether the SLO
    attainment target holds stops a run that cannot reach it there; the requests still in
    flight stay ``unfinished`` and ``meta["stopped_early_at_s"]`` says when it stopped. The
    checks only read state, so a run they do not stop is the run without them.

    ``progress(now_s, finished, total)`` is called every so many finished requests (completed
    or rejected), and at the end; it only reads state, so the run is the same without it.

    ``measure_from_at`` (simulated seconds) asks for a measurement window that leaves out a
    warm-up: every instance's counters (busy, KV, batch occupancy, saturated time) are
    recorded at the first open-loop arrival at or after that instant and at the last
    open-loop arrival (``recorder.snapshots``), inside those arrivals' own events, so the run
    is unchanged; and only the requests arriving at or after it count as misses for
    ``stop_after_misses``."""
    wall0 = time.perf_counter()
    store = store or ProfileStore()
    streams = Streams(cfg.seed)
    n = len(trace)
    rec = Recorder(n)
    env = simpy.Environment()
    inp: list[int] = trace.input_tokens.tolist()
    out: list[int] = trace.output_tokens.tolist()
    caching = cfg.prefix_cache.enabled and trace.has_hashes
    kv_per_token = float(cfg.model_shape(store).kv_bytes_per_token)
    caches: dict[str, PrefixCache] = {}
    router = Router(cfg.router, streams["router"], trace.session_index)
    status = rec.status
    t_arrival = rec.times["arrival_at"]
    t_enq = rec.times["prefill_enqueued_at"]
    t_done = rec.times["completed_at"]

    # Closed-loop bookkeeping: children of each request and how many parents remain.
    n_waits = np.diff(trace.wait_offsets)
    remaining: list[int] = n_waits.tolist()
    children: list[list[int]] = [[] for _ in range(n)] if trace.closed_loop.any() else []
    if children:
        for child in np.flatnonzero(n_waits):
            for parent in trace.waits_of(int(child)).tolist():
                children[parent].append(int(child))
    tool_wait: list[float] = trace.tool_wait_s.tolist()

    def release_children(i: int) -> None:
        for c in children[i]:
            remaining[c] -= 1
            if remaining[c] == 0:
                call_later(env, tool_wait[c], arrive, c)

    def reject_chain(i: int, reason: str) -> None:
        stack = [(i, reason)]
        while stack:
            j, why = stack.pop()
            if status[j] == STATUS_REJECTED:
                continue
            rec.reject(j, why)
            if progress is not None:
                report()
            if children:
                stack.extend((c, f"waits for rejected request {trace.request_ids[j]}") for c in children[j])

    watch = None if stop_after_misses is None else _MissWatch(
        env, cfg, trace, rec, stop_after_misses, -math.inf if measure_from_at is None else measure_from_at
    )
    report_every = max(1, n // 200)
    finished = [0]

    def report(count: int = 1) -> None:
        assert progress is not None
        before = finished[0]
        finished[0] += count
        if finished[0] // report_every != before // report_every:
            progress(env.now, finished[0], n)

    def complete(i: int) -> None:
        t_done[i] = env.now
        status[i] = STATUS_COMPLETED
        if children:
            release_children(i)
        if watch is not None:
            watch.tick()
        if progress is not None:
            report()

    # Requests that can never be served, whatever the load.
    never: dict[int, str] = {}
    window = cfg.model_shape(store).context_window_tokens
    if window is not None:
        # A serving engine refuses a request whose prompt plus answer pass max_model_len.
        total = trace.input_tokens + trace.output_tokens
        for i in np.flatnonzero(total > window).tolist():
            never[i] = f"prompt and answer need {int(total[i])} tokens, more than the model's context window of {window}"
    instances_stats: list[InstanceStats] = rec.instances

    if cfg.mode == "aggregated":
        pool = cfg.aggregated_pool()
        plan = _plan_pool(
            cfg, pool, "aggregated", store, streams, cost_scale, cfg.prefix_cache.hbm_fraction if caching else 0.0
        )
        cost_label = plan.cost.label
        prefix: PrefixLookup = PrefixLookup()
        if caching:
            prefix = caches["aggregated"] = _prefix_cache(
                cfg, trace, pool.count, plan.cache_tokens, pool.tp, kv_per_token, True
            )
        need = -(-(trace.input_tokens + trace.output_tokens) // plan.kv_block_tokens)
        for i in np.flatnonzero(need > plan.kv_capacity_blocks).tolist():
            never.setdefault(i, f"needs {int(need[i])} KV blocks, more than an instance's {plan.kv_capacity_blocks}")
        agg: list[AggregatedInstance] = []
        for k in range(pool.count):
            stats = InstanceStats("aggregated", k, pool.tp, LevelIntegral(plan.kv_capacity_blocks),
                                  batch=LevelIntegral(pool.max_batch_size))
            instances_stats.append(stats)
            agg.append(
                AggregatedInstance(
                    env, k, plan.cost, inp, out, rec, stats, cfg.exact_steps,
                    max_batch_size=pool.max_batch_size,
                    max_batched_tokens=pool.max_batched_tokens,
                    max_batch_requests=pool.max_prefill_batch_requests,
                    kv_capacity_blocks=plan.kv_capacity_blocks,
                    kv_block_tokens=plan.kv_block_tokens,
                    chunked_prefill=cfg.aggregated.chunked_prefill,
                    prefix=prefix,
                    on_complete=complete,
                )
            )
        if cfg.router.prefill_policy == "shared_queue":
            raise ConfigError("router.prefill_policy 'shared_queue' applies to disaggregated prefill pools only")

        def route(i: int) -> None:
            agg[router.pick_prefill(agg, i, prefix)].enqueue(i)

        gpus = pool.gpus
    else:
        pplan = _plan_pool(
            cfg, cfg.prefill, "prefill", store, streams, cost_scale, cfg.prefix_cache.hbm_fraction if caching else 0.0
        )
        retain = cfg.prefix_cache.decode_retain_fraction if caching else 0.0
        dplan = _plan_pool(cfg, cfg.decode, "decode", store, streams, cost_scale, retain)
        prefix = PrefixLookup()
        held: PrefixLookup = PrefixLookup()
        if caching:
            prefix = caches["prefill"] = _prefix_cache(
                cfg, trace, cfg.prefill.count, pplan.cache_tokens, cfg.prefill.tp, kv_per_token, True
            )
            if retain > 0:
                held = caches["decode_retained"] = _prefix_cache(
                    cfg, trace, cfg.decode.count, dplan.cache_tokens, cfg.decode.tp, kv_per_token, False
                )
        cost_label = pplan.cost.label if pplan.cost.label == dplan.cost.label else (
            f"prefill={pplan.cost.label}, decode={dplan.cost.label}"
        )
        need_p = -(-trace.input_tokens // pplan.kv_block_tokens)
        need_d = -(-(trace.input_tokens + trace.output_tokens) // dplan.kv_block_tokens)
        for i in np.flatnonzero(need_d > dplan.kv_capacity_blocks).tolist():
            never.setdefault(i, f"needs {int(need_d[i])} KV blocks, more than a decode instance's {dplan.kv_capacity_blocks}")
        for i in np.flatnonzero(need_p > pplan.kv_capacity_blocks).tolist():
            never.setdefault(
                i, f"prompt needs {int(need_p[i])} KV blocks, more than a prefill instance's {pplan.kv_capacity_blocks}"
            )
        link_profile = store.link(cfg.link.preset)
        bandwidth = (
            link_profile.bandwidth_bytes_per_s.value
            * min(cfg.prefill.tp, cfg.decode.tp)
            * cfg.link.bandwidth_scale
        )
        decode: list[DecodeInstance] = []
        for k in range(cfg.decode.count):
            stats = InstanceStats("decode", k, cfg.decode.tp, LevelIntegral(dplan.kv_capacity_blocks),
                                  batch=LevelIntegral(cfg.decode.max_batch_size))
            instances_stats.append(stats)
            decode.append(
                DecodeInstance(
                    env, k, dplan.cost, inp, out, rec, stats, cfg.exact_steps,
                    max_batch_size=cfg.decode.max_batch_size,
                    max_batched_tokens=cfg.decode.max_batched_tokens,
                    max_batch_requests=cfg.decode.max_prefill_batch_requests,
                    kv_capacity_blocks=dplan.kv_capacity_blocks,
                    kv_block_tokens=dplan.kv_block_tokens,
                    prefix=held,
                    on_complete=complete,
                )
            )
        links = [
            KVLink(env, k, bandwidth, link_profile.latency_s.value, cfg.link.sharing, rec)
            for k in range(cfg.prefill.count)
        ]
        shared = PrefillQueue(env) if cfg.router.prefill_policy == "shared_queue" else None
        prefill: list[PrefillInstance] = []
        decode_of = rec.decode_instance

        def on_landed(i: int) -> None:
            prefill[int(rec.prefill_instance[i])].release(i)
            decode[int(decode_of[i])].join(i)

        def on_admitted(i: int) -> None:
            # Only the part of the context the decode instance does not still hold is sent.
            d = int(decode_of[i])
            kept = held.cached_tokens(d, i)
            if kept:
                held.use(d, i)
            links[int(rec.prefill_instance[i])].send(i, (inp[i] - kept) * kv_per_token, on_landed)

        def on_prefilled(inst: PrefillInstance, i: int) -> None:
            if out[i] <= 1:  # the first token was the whole answer: nothing to decode
                inst.release(i)
                complete(i)
                return
            d = router.pick_decode(decode, i, held)
            decode_of[i] = d
            decode[d].submit(i, on_admitted)

        for k in range(cfg.prefill.count):
            queue = shared or PrefillQueue(env)
            stats = InstanceStats("prefill", k, cfg.prefill.tp, LevelIntegral(pplan.kv_capacity_blocks),
                                  saturated=queue.saturated)
            instances_stats.append(stats)
            prefill.append(
                PrefillInstance(
                    env, k, pplan.cost, queue, inp, rec, stats,
                    max_batched_tokens=cfg.prefill.max_batched_tokens,
                    max_batch_requests=cfg.prefill.max_prefill_batch_requests,
                    kv_capacity_blocks=pplan.kv_capacity_blocks,
                    kv_block_tokens=pplan.kv_block_tokens,
                    prefix=prefix,
                    on_prefilled=on_prefilled,
                )
            )

        conditional = cfg.router.conditional_prefill_tokens

        def route_remote(i: int) -> None:
            if shared is not None:
                shared.push(i)
            else:
                prefill[router.pick_prefill(prefill, i, prefix)].enqueue(i)

        if shared is not None:
            for inst in prefill:
                inst.try_start()  # park every instance on the shared queue

        if conditional is None:
            route = route_remote
        else:

            def route(i: int) -> None:
                # Conditional disaggregation: a short uncached part is prefilled on the decode
                # instance itself, with no KV transfer.
                d = router.pick_decode(decode, i, held)
                if out[i] > 1 and inp[i] - held.cached_tokens(d, i) <= conditional:
                    decode_of[i] = d
                    decode[d].enqueue(i)
                else:
                    route_remote(i)

        gpus = cfg.prefill.gpus + cfg.decode.gpus

    frontend = _frontend_of(plan.cost if cfg.mode == "aggregated" else pplan.cost)

    def enter(i: int) -> None:
        t_enq[i] = env.now
        route(i)

    def arrive(i: int) -> None:
        now = env.now
        t_arrival[i] = now
        if watch is not None:
            watch.tick()
        if status[i] == STATUS_REJECTED:
            return
        reason = never.get(i)
        if reason is not None:
            reject_chain(i, reason)
            return
        if frontend is None:
            enter(i)
        else:
            # The framework's front end (parsing, tokenising, routing) hands the request to
            # the scheduler this much later.
            call_later(env, frontend.frontend_s, enter, i)

    # Open-loop arrivals are released in time order by one chain of events.
    open_idx = np.flatnonzero(n_waits == 0)
    order = open_idx[np.argsort(trace.timestamp_s[open_idx], kind="stable")]
    arrival_s = (trace.timestamp_s[order] / cfg.rate_scale).tolist()
    order_list = order.tolist()
    # Open-loop arrivals at which the instance counters are recorded (the measurement window).
    snapshot_at: set[int] = set()
    if measure_from_at is not None and order_list:
        first = int(np.searchsorted(np.asarray(arrival_s), measure_from_at, side="left"))
        snapshot_at = {min(first, len(order_list) - 1), len(order_list) - 1}

    def release_open(k: int) -> None:
        if k in snapshot_at:
            rec.snapshot(env.now)
        arrive(order_list[k])
        k += 1
        if k < len(order_list):
            call_later(env, arrival_s[k] - env.now, release_open, k)

    if order_list:
        call_later(env, arrival_s[0], release_open, 0)
    run(env)
    rec.end_at = env.now
    if progress is not None:
        progress(env.now, finished[0], n)
    for stats in instances_stats:
        stats.kv.close(env.now)
    if cfg.mode != "aggregated":
        rec.link_busy_s = [link.busy_s for link in links]
        rec.link_bytes = [link.bytes_sent for link in links]
    if (trace.session_index >= 0).any() and trace.closed_loop.any():
        rec.unloaded_s = _unloaded_service_s(cfg, trace, rec, store, streams, cost_scale)
    events = next(env._eid)  # SimPy's event counter: events scheduled in this run
    meta: dict[str, Any] = {"kv_capacity_blocks": {s.pool: s.kv.capacity for s in instances_stats}}
    if watch is not None and watch.stopped_at is not None:
        meta["stopped_early_at_s"] = watch.stopped_at
    for name, cache in caches.items():
        meta[f"prefix_cache:{name}"] = cache.summary()
    return RunResult(
        request_ids=trace.request_ids,
        input_tokens=trace.input_tokens,
        output_tokens=trace.output_tokens,
        session_index=trace.session_index,
        recorder=rec,
        cost_label=cost_label,
        gpus=gpus,
        mode=cfg.mode,
        events=events,
        wall_s=time.perf_counter() - wall0,
        meta=meta,
        wait_offsets=trace.wait_offsets,
        wait_indices=trace.wait_indices,
        tool_wait_s=trace.tool_wait_s,
        ttft_definition=cfg.metrics.ttft,
    )


#: How often ``stop_after_misses`` checks, in arrivals and completions: each check costs a
#: few vectorised passes over the request columns, so a run checks about this many times.
MISS_CHECKS_PER_RUN = 64


class _MissWatch:
    """Counts the requests that have certainly missed the SLO, every so many arrivals and
    completions (no events of its own, so a run it does not stop is unchanged); once more
    than ``allowed`` have, it empties the event queue and the run ends there."""

    def __init__(
        self, env: simpy.Environment, cfg: RunConfig, trace: Trace, rec: Recorder, allowed: int, counted_from_at: float
    ) -> None:
        self.env, self.rec, self.allowed = env, rec, allowed
        self.counted_from_at = counted_from_at  # requests arriving earlier (a warm-up) do not count
        self.ttft_s, self.tpot_s = cfg.slo.ttft_s, cfg.slo.tpot_s
        # TPOT as metrics.request_latencies computes it, so that a request exactly at the
        # target is judged the same here and there.
        out = trace.output_tokens
        self.gaps = np.where(out > 1, out.astype(np.float64) - 1.0, np.nan)
        # The first token as the run's TTFT definition has it (metrics.first_token_times).
        self.first_column = "decode_start_at" if cfg.metrics.ttft == "client" else "first_token_at"
        self.streams_from_decode = out > 1
        self.every = max(1, 2 * len(trace) // MISS_CHECKS_PER_RUN)
        self.countdown = self.every
        self.stopped_at: float | None = None

    def tick(self) -> None:
        """Called on each arrival and completion."""
        self.countdown -= 1
        if self.countdown == 0:
            self.countdown = self.every
            self.check()

    def check(self) -> None:
        """Stop the run if the SLO attainment target is out of reach."""
        now = self.env.now
        t = self.rec.times
        arrival = t["arrival_at"]
        first = np.where(self.streams_from_decode, t[self.first_column], t["first_token_at"])
        with np.errstate(invalid="ignore"):
            late = (first - arrival > self.ttft_s) | (np.isnan(first) & (now - arrival > self.ttft_s))
            slow = (t["completed_at"] - first) / self.gaps > self.tpot_s
            counted = arrival >= self.counted_from_at
        missed = int(np.count_nonzero((late | slow | (self.rec.status == STATUS_REJECTED)) & counted))
        if missed > self.allowed:
            self.stopped_at = now
            self.env._queue.clear()


def _unloaded_service_s(
    cfg: RunConfig, trace: Trace, rec: Recorder, store: ProfileStore, streams: Streams, cost_scale: float
) -> np.ndarray:
    """Each request's time alone on an idle cluster, with the prefix hits it actually got:
    its prefill, its KV transfer (disaggregated) and its decode steps at batch size one."""
    pool_p = cfg.aggregated_pool() if cfg.mode == "aggregated" else cfg.prefill
    pool_d = cfg.aggregated_pool() if cfg.mode == "aggregated" else cfg.decode
    cost_p = _plan_pool(cfg, pool_p, "prefill-unloaded", store, streams, cost_scale).cost
    cost_d = _plan_pool(cfg, pool_d, "decode-unloaded", store, streams, cost_scale).cost
    out = np.zeros(len(trace))
    transfer_per_token = 0.0
    latency = 0.0
    if cfg.mode != "aggregated":
        link = store.link(cfg.link.preset)
        bw = link.bandwidth_bytes_per_s.value * min(cfg.prefill.tp, cfg.decode.tp) * cfg.link.bandwidth_scale
        transfer_per_token = cfg.model_shape(store).kv_bytes_per_token / bw
        latency = link.latency_s.value
    in_session = np.flatnonzero(trace.session_index >= 0)
    frontend = _frontend_of(cost_p)
    # An idle cluster's front end still takes its time, before every request's prefill.
    frontend_s = frontend.frontend_s if frontend is not None else 0.0
    if hasattr(cost_p, "isolated_prefill_times_s") and hasattr(cost_d, "isolated_decode_times_s"):
        n_in = trace.input_tokens[in_session]
        n_out = trace.output_tokens[in_session]
        cached = rec.cached_tokens[in_session]
        prefill_s = cost_p.isolated_prefill_times_s(n_in - cached, cached)
        decode_s = cost_d.isolated_decode_times_s(n_in + 1, np.maximum(n_out - 1, 0))
        transfer_s = np.where(n_out > 1, latency + n_in * transfer_per_token, 0.0)
        out[in_session] = frontend_s + prefill_s + decode_s + transfer_s
        return out
    for i in in_session.tolist():
        n_in, n_out, c = int(trace.input_tokens[i]), int(trace.output_tokens[i]), int(rec.cached_tokens[i])
        t = frontend_s + cost_p.prefill_time_s(np.array([n_in - c]), np.array([c]))
        if n_out > 1:
            t += float(cost_d.decode_run_times_s(1, n_in + 1, n_out - 1).sum())
            if cfg.mode != "aggregated":
                t += latency + n_in * transfer_per_token
        out[i] = t
    return out


def check_cluster(cfg: RunConfig, store: ProfileStore) -> dict[str, str]:
    """Everything :func:`simulate` would refuse about the cluster itself, without simulating:
    profiles, TP degrees, a model that leaves no KV memory, a router policy the mode lacks.
    Returns the cost model label of each pool (``{"prefill": ..., "decode": ...}``)."""
    streams = Streams(cfg.seed)
    if cfg.mode == "aggregated":
        if cfg.router.prefill_policy == "shared_queue":
            raise ConfigError("router.prefill_policy 'shared_queue' applies to disaggregated prefill pools only")
        return {"aggregated": _plan_pool(cfg, cfg.aggregated_pool(), "aggregated", store, streams, 1.0).cost.label}
    store.link(cfg.link.preset)
    return {
        "prefill": _plan_pool(cfg, cfg.prefill, "prefill", store, streams, 1.0).cost.label,
        "decode": _plan_pool(cfg, cfg.decode, "decode", store, streams, 1.0).cost.label,
    }

