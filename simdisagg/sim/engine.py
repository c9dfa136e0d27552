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

from simdisagg.coldstart import cold_start, role_switch_s
from simdisagg.config import PoolConfig, RunConfig
from simdisagg.costmodel.base import CostModel
from simdisagg.costmodel.factory import make_cost_model
from simdisagg.costmodel.scaled import ScaledCostModel
from simdisagg.errors import ConfigError
from simdisagg.hardware import ProfileStore, instance_kv_memory
from simdisagg.rng import Streams
from simdisagg.sim.aggregated import AggregatedInstance, DecodeInstance
from simdisagg.sim.autoscale import Autoscaler, pool_scalings
from simdisagg.sim.clock import call_later, run
from simdisagg.sim.decode import kv_capacity_blocks
from simdisagg.sim.faults import ClusterControl, Recovery, schedule_faults
from simdisagg.sim.link import KVLink
from simdisagg.sim.pools import Pool
from simdisagg.sim.prefill import PrefillInstance, PrefillQueue, PrefixLookup
from simdisagg.sim.prefixcache import PrefixCache, TierSpec
from simdisagg.sim.recorder import (
    STATUS_COMPLETED,
    STATUS_REJECTED,
    STATUS_UNFINISHED,
    InstanceStats,
    LevelIntegral,
    Recorder,
    RunResult,
    TenantColumns,
)
from simdisagg.sim.router import PriorityOrder, Router, TenantAdmission, tenant_indices
from simdisagg.sim.speculative import draft_memory, make_speculator
from simdisagg.sim.states import FAILED, SERVING, STARTING, STOPPED
from simdisagg.sim.timeseries import (
    DEFAULT_WINDOWS,
    MAX_SET_WINDOWS,
    TimeSeriesCollector,
    window_width_s,
)
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
    # Per GPU: its share of the weights (experts spread over the whole instance); per token:
    # the KV the instance stores, replicas of KV heads included; a speculative draft's weights
    # and KV (or the MTP layers') come on top.
    weight_bytes_per_gpu, kv_bytes_per_token = instance_kv_memory(model, pool.parallelism)
    gpus = pool.gpus_per_instance
    draft_weight_bytes, draft_kv_bytes_per_token = draft_memory(cfg, pool, store)
    blocks = kv_capacity_blocks(
        gpu.hbm_capacity_bytes.value,
        gpus,
        pool.gpu_memory_utilisation,
        weight_bytes_per_gpu * gpus + draft_weight_bytes,
        kv_bytes_per_token + draft_kv_bytes_per_token,
        pool.kv_block_tokens,
        pool.kv_capacity_tokens,
    )
    if blocks < 1:
        raise ConfigError(
            f"{role} pool: {model.display_name} ({model.weight_bytes / 1e9:.1f} GB of weights) leaves no KV "
            f"memory on {gpus} x {gpu.display_name} ({pool.parallelism.label}); raise --tp"
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
    # Tenants: each request's tenant (checked against the config's list), and the queue
    # order when their priorities differ (FIFO otherwise, as without tenants).
    tenant_of = tenant_indices(cfg.tenants, trace)
    priorities = {t.priority for t in cfg.tenants} | ({0} if (tenant_of < 0).any() else set())
    request_priority: list[int] = (
        [cfg.tenants[t].priority if t >= 0 else 0 for t in tenant_of.tolist()] if len(priorities) > 1 else []
    )
    gate: TenantAdmission | None = None

    def new_queue() -> PriorityOrder | None:
        """The order of a new queue: by priority when tenants have different ones."""
        return PriorityOrder(request_priority, t_arrival) if request_priority else None

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
            if gate is not None:
                gate.finished(j)
            if dynamic:
                finished_dynamic(j)
            if progress is not None:
                report()
            if children:
                stack.extend((c, f"waits for rejected request {trace.request_ids[j]}") for c in children[j])

    watch = None if stop_after_misses is None else _MissWatch(
        env, cfg, trace, rec, stop_after_misses, -math.inf if measure_from_at is None else measure_from_at
    )
    dynamic = cfg.autoscale is not None or cfg.faults is not None

    def finished_dynamic(i: int) -> None:
        if recovery.saved and status[i] == STATUS_COMPLETED:
            recovery.restore(i)  # a resumed request keeps the first token it streamed
        finished_count[0] += 1
        if finished_count[0] == n:
            env._queue.clear()  # instance and fault timers end with the last request

    def cold_start_of(pool: PoolConfig) -> float:
        return cold_start(cfg, pool, store).total_s if dynamic else 0.0

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
        if gate is not None:
            gate.finished(i)
        if dynamic:
            finished_dynamic(i)
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
    links: list[KVLink] = []

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
        speculator = make_speculator(cfg, pool, "aggregated", plan.cost, store, streams, cost_scale)

        def make_aggregated(k: int, state: str) -> AggregatedInstance:
            stats = InstanceStats("aggregated", k, pool.gpus_per_instance, LevelIntegral(plan.kv_capacity_blocks),
                                  batch=LevelIntegral(pool.max_batch_size))
            instances_stats.append(stats)
            if k >= pool.count and isinstance(prefix, PrefixCache):
                prefix.add_instance()
            return AggregatedInstance(
                env, k, plan.cost, inp, out, rec, stats, cfg.exact_steps,
                max_batch_size=pool.max_batch_size,
                max_batched_tokens=pool.instance_batched_tokens,
                max_batch_requests=pool.max_prefill_batch_requests,
                kv_capacity_blocks=plan.kv_capacity_blocks,
                kv_block_tokens=plan.kv_block_tokens,
                chunked_prefill=cfg.aggregated.chunked_prefill,
                prefix=prefix,
                on_complete=complete,
                waiting=new_queue(),
                speculator=speculator,
                state=state,
                on_idle=(lambda inst: apool.leave(inst)) if dynamic else None,
            )

        apool = Pool(env, "aggregated", pool.gpus_per_instance, make_aggregated, cold_start_of(pool), dynamic)
        apool.add_initial(pool.count)
        pools = {"aggregated": apool}
        agg = apool.live
        if cfg.router.prefill_policy == "shared_queue":
            raise ConfigError("router.prefill_policy 'shared_queue' applies to disaggregated prefill pools only")

        def route(i: int) -> None:
            if not agg:
                no_instance(apool, i)
                return
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
        speculator = make_speculator(cfg, cfg.decode, "decode", dplan.cost, store, streams, cost_scale)

        def make_decode(k: int, state: str) -> DecodeInstance:
            stats = InstanceStats("decode", k, cfg.decode.gpus_per_instance, LevelIntegral(dplan.kv_capacity_blocks),
                                  batch=LevelIntegral(cfg.decode.max_batch_size))
            instances_stats.append(stats)
            if k >= cfg.decode.count and isinstance(held, PrefixCache):
                held.add_instance()
            return DecodeInstance(
                env, k, dplan.cost, inp, out, rec, stats, cfg.exact_steps,
                max_batch_size=cfg.decode.max_batch_size,
                max_batched_tokens=cfg.decode.instance_batched_tokens,
                max_batch_requests=cfg.decode.max_prefill_batch_requests,
                kv_capacity_blocks=dplan.kv_capacity_blocks,
                kv_block_tokens=dplan.kv_block_tokens,
                prefix=held,
                on_complete=complete,
                waiting=new_queue(),
                speculator=speculator,
                state=state,
                on_idle=(lambda inst: dpool.leave(inst)) if dynamic else None,
            )

        dpool = Pool(env, "decode", cfg.decode.gpus_per_instance, make_decode, cold_start_of(cfg.decode), dynamic)
        dpool.add_initial(cfg.decode.count)
        decode: list[DecodeInstance] = dpool.instances
        decode_live: list[DecodeInstance] = dpool.live
        shared = PrefillQueue(env, new_queue()) if cfg.router.prefill_policy == "shared_queue" else None
        decode_of = rec.decode_instance
        prefill_of = rec.prefill_instance

        def on_landed(i: int) -> None:
            p = prefill[int(prefill_of[i])]
            d = decode[int(decode_of[i])]
            if d.state == FAILED or d.state == STOPPED:
                # The decode instance failed while the KV was on its way: the KV is still on
                # the prefill instance, which asks another decode instance.
                recovery.retried(i)
                to_decode(p, i)
                return
            p.release(i)
            d.join(i)

        def on_admitted(i: int) -> None:
            # Only the part of the context the decode instance does not still hold is sent.
            d = int(decode_of[i])
            kept = held.cached_tokens(d, i)
            if kept:
                held.use(d, i)
            links[int(prefill_of[i])].send(i, (inp[i] - kept) * kv_per_token, on_landed)

        def to_decode(inst: PrefillInstance, i: int) -> None:
            if not decode_live:
                no_instance(dpool, i)  # the KV waits on the prefill instance
                return
            d = decode_live[router.pick_decode(decode_live, i, held)]
            decode_of[i] = d.index
            d.submit(i, on_admitted)

        def on_prefilled(inst: PrefillInstance, i: int) -> None:
            if out[i] <= 1:  # the first token was the whole answer: nothing to decode
                inst.release(i)
                complete(i)
                return
            to_decode(inst, i)

        def make_prefill(k: int, state: str) -> PrefillInstance:
            queue = shared or PrefillQueue(env, new_queue())
            stats = InstanceStats("prefill", k, cfg.prefill.gpus_per_instance, LevelIntegral(pplan.kv_capacity_blocks),
                                  saturated=queue.saturated)
            instances_stats.append(stats)
            if k >= cfg.prefill.count and isinstance(prefix, PrefixCache):
                prefix.add_instance()
            links.append(KVLink(env, k, bandwidth, link_profile.latency_s.value, cfg.link.sharing, rec))
            return PrefillInstance(
                env, k, pplan.cost, queue, inp, rec, stats,
                max_batched_tokens=cfg.prefill.instance_batched_tokens,
                max_batch_requests=cfg.prefill.max_prefill_batch_requests,
                kv_capacity_blocks=pplan.kv_capacity_blocks,
                kv_block_tokens=pplan.kv_block_tokens,
                prefix=prefix,
                on_prefilled=on_prefilled,
                shared_queue=shared is not None,
                state=state,
                on_idle=(lambda inst: ppool.leave(inst)) if dynamic else None,
            )

        ppool = Pool(env, "prefill", cfg.prefill.gpus_per_instance, make_prefill, cold_start_of(cfg.prefill), dynamic)
        ppool.add_initial(cfg.prefill.count)
        pools = {"prefill": ppool, "decode": dpool}
        prefill: list[PrefillInstance] = ppool.instances
        prefill_live: list[PrefillInstance] = ppool.live
        conditional = cfg.router.conditional_prefill_tokens

        def route_remote(i: int) -> None:
            if not prefill_live:
                no_instance(ppool, i)
            elif shared is not None:
                shared.push(i)
            else:
                prefill_live[router.pick_prefill(prefill_live, i, prefix)].enqueue(i)

        if shared is not None:
            for inst in prefill:
                inst.try_start()  # park every instance on the shared queue

        if conditional is None:
            route = route_remote
        else:

            def route(i: int) -> None:
                # Conditional disaggregation: a short uncached part is prefilled on the decode
                # instance itself, with no KV transfer.
                if not decode_live:
                    route_remote(i)
                    return
                d = decode_live[router.pick_decode(decode_live, i, held)]
                if out[i] > 1 and inp[i] - held.cached_tokens(d.index, i) <= conditional:
                    decode_of[i] = d.index
                    d.enqueue(i)
                else:
                    route_remote(i)

        gpus = cfg.prefill.gpus + cfg.decode.gpus

    # -- dynamic clusters: instances that start, drain and fail --------------------------
    recovery = Recovery(rec)
    fallback = cfg.faults.fallback if cfg.faults is not None else "wait"
    # Requests waiting because no instance of a pool serves (fallback "wait"), in order.
    pending: dict[str, dict[int, None]] = {name: {} for name in pools}
    prompt_capacity_blocks = plan.kv_capacity_blocks if cfg.mode == "aggregated" else pplan.kv_capacity_blocks
    prompt_block_tokens = plan.kv_block_tokens if cfg.mode == "aggregated" else pplan.kv_block_tokens

    def no_instance(pool: Pool, i: int) -> None:
        """No instance of ``pool`` takes work now: the fallback policy decides."""
        if fallback == "reject":
            if pool.name == "decode":
                prefill[int(prefill_of[i])].release(i)
            reject_chain(i, f"no {pool.name} instance was serving (faults.fallback: reject)")
            return
        if fallback == "aggregated" and cfg.mode == "disaggregated":
            if pool.name == "prefill" and decode_live:
                # Decode instances prefill the prompt themselves, as aggregated serving does.
                d = decode_live[router.pick_decode(decode_live, i, held)]
                decode_of[i] = d.index
                recovery.fallback_prefills += 1
                d.enqueue(i)
                return
            if pool.name == "decode":
                switch_to_decode()
        pending[pool.name][i] = None

    def switch_to_decode() -> None:
        """Fallback ``aggregated`` with no decode instance: a prefill instance takes the decode
        role (it drains its prompts, and a decode instance on its GPUs serves after the role
        switch), unless one is on its way already."""
        if any(x.state == STARTING for x in dpool.instances) or len(prefill_live) == 0:
            return
        donor = min(prefill_live, key=lambda x: (x.outstanding_tokens, x.index))
        ppool.drain(donor, "switched")
        dpool.start(role_switch_s(cfg), switched=True)
        recovery.role_switches += 1

    def on_serving(pool: Pool, inst: Any) -> None:
        """An instance serves: the work that waited for its pool goes to it."""
        if pool.name == "prefill" and shared is not None:
            inst.try_start()
        if pool.name == "decode" and not pool.lives[inst.index].switched:
            # The pool has its own instance again: switched instances go back to prefill.
            for other in list(pool.instances):
                if pool.lives[other.index].switched and other.state in (SERVING, STARTING):
                    pool.drain(other, "switched")
                    ppool.start(role_switch_s(cfg), switched=True)
                    recovery.role_switches += 1
        waiting = pending[pool.name]
        pending[pool.name] = {}
        for i in waiting:
            if pool.name == "decode":
                to_decode(prefill[int(prefill_of[i])], i)
            else:
                route(i)
        if pool.name == "decode" and pending.get("prefill") and fallback == "aggregated":
            waiting = pending["prefill"]
            pending["prefill"] = {}
            for i in waiting:
                route(i)

    def resume(i: int, tokens: int) -> None:
        """Request ``i`` lost its KV after ``tokens`` tokens (the first one included): it goes
        back to prefill with its context so far (prompt and those tokens)."""
        recovery.retried(i, inp[i] + tokens - 1)
        recovery.keep_first_token(i, env.now)
        inp[i] += tokens
        out[i] -= tokens
        if -(-inp[i] // prompt_block_tokens) > prompt_capacity_blocks:
            reject_chain(i, f"its context after a failure ({inp[i]} tokens) no longer fits a prefill instance's KV memory")
            return
        route(i)

    def fail_instance(pool: Pool, inst: Any) -> None:
        """``inst`` fails now: everything it held is routed again."""
        recovery.failures += 1
        if inst.state == STARTING:
            pool.mark_failed(inst)
            return
        if pool.name == "prefill":
            queued, running, holding = inst.fail()
            links[inst.index].fail()
            pool.mark_failed(inst)
            for i in holding:
                pending["decode"].pop(i, None)
                d = int(decode_of[i])
                if d >= 0:
                    decode[d].cancel(i)
            for i in holding + running:
                recovery.retried(i, inp[i] - int(rec.cached_tokens[i]))
            for i in queued:
                recovery.retried(i)
            for i in holding + running + queued:
                route(i)
            if shared is not None and not prefill_live:
                waiting = list(shared.items)
                shared.items.clear()
                for i in waiting:
                    route_remote(i)
            return
        if pool.name == "decode":
            unstarted, lost, waiting_memory = inst.fail_decode()
        else:
            (unstarted, lost), waiting_memory = inst.fail(), []
        pool.mark_failed(inst)
        for i in waiting_memory:
            recovery.retried(i)
            to_decode(prefill[int(prefill_of[i])], i)
        for i, done in unstarted:
            recovery.retried(i, done)
            route(i)
        for i, tokens in lost:
            resume(i, tokens)
        if fallback == "aggregated" and pool.name == "decode" and not decode_live:
            switch_to_decode()

    def waiting_count(pool: Pool) -> Callable[[], int]:
        if pool.name == "prefill":
            if shared is not None:
                return lambda: len(shared.items) + len(pending["prefill"])
            return lambda: sum(len(x.queue.items) for x in pool.live) + len(pending["prefill"])
        if pool.name == "decode":
            return lambda: sum(len(x._admit_queue) for x in pool.live) + len(pending["decode"])
        return lambda: sum(len(x.waiting) for x in pool.live) + len(pending["aggregated"])

    finished_count = [0]

    def all_done() -> bool:
        return finished_count[0] >= n

    if dynamic:
        control = ClusterControl(env, pools, links, fail_instance, all_done, recovery)
        for pool_ in pools.values():
            pool_.on_serving = on_serving
        if cfg.faults is not None:
            open_at = trace.timestamp_s[n_waits == 0] / cfg.rate_scale
            schedule_faults(control, cfg.faults, streams["faults"], float(open_at.max()) if len(open_at) else 0.0)
        scalings = pool_scalings(cfg)
        autoscaler = (
            Autoscaler(control, cfg.autoscale, scalings, rec, {k: waiting_count(p) for k, p in pools.items()},
                       cfg.slo.ttft_s, cfg.slo.tpot_s)
            if cfg.autoscale is not None and scalings else None
        )

    frontend = _frontend_of(plan.cost if cfg.mode == "aggregated" else pplan.cost)

    def enter(i: int) -> None:
        t_enq[i] = env.now
        route(i)

    def admitted(i: int) -> None:
        if frontend is None:
            enter(i)
        else:
            call_later(env, frontend.frontend_s, enter, i)

    if any(t.max_in_flight is not None or t.max_tokens_per_s is not None for t in cfg.tenants):
        gate = TenantAdmission(env, cfg.tenants, tenant_of, (trace.input_tokens + trace.output_tokens).tolist(),
                               admitted, reject_chain)  # fmt: skip

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
        if gate is not None:
            gate.offer(i)  # the tenant's quotas: admitted, queued at the router or rejected
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
    first_at = arrival_s[0] if arrival_s else 0.0
    collector = TimeSeriesCollector(
        rec,
        # Every instance a pool ever had (those that left count in no state).
        {name: p.instances for name, p in pools.items()},
        first_at,
        window_width_s(cfg.timeseries.window_s, first_at, arrival_s[-1] if arrival_s else 0.0),
        router_queue=None if gate is None else (lambda: gate.queued),  # type: ignore[union-attr]
        max_windows=2 * DEFAULT_WINDOWS if cfg.timeseries.window_s is None else MAX_SET_WINDOWS,
    )
    run(env, collector)
    rec.end_at = env.now
    if dynamic and (watch is None or watch.stopped_at is None):
        # Nothing is lost: what still waits for a pool that never served again, or is held
        # anywhere when the cluster stops, is rejected, saying so.
        blocked = {name for name, waiting in pending.items() if waiting}
        for name, waiting in pending.items():
            for i in list(waiting):
                if name == "decode":
                    prefill[int(prefill_of[i])].release(i, start_next=False)
                reject_chain(i, f"waited for a {name} instance; none served again before the run ended")
        for i in np.flatnonzero(status == STATUS_UNFINISHED).tolist():
            if math.isnan(t_arrival[i]):
                continue
            if blocked:
                # Queued behind prompts whose KV held the prefill memory for a decode instance.
                reject_chain(i, f"queued behind work that waited for a {' and '.join(sorted(blocked))} instance; "
                                "none served again before the run ended")
            else:
                recovery.stranded += 1
                reject_chain(i, "still in the cluster when it stopped (its instance never finished it)")
    rec.timeseries = collector.finish(env.now)
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
    meta["gpu_hours"] = sum(p.gpu_seconds(env.now) for p in pools.values()) / 3600.0
    if dynamic:
        meta["instances"] = [life for p in pools.values() for life in p.lives]
        meta["mean_instances"] = {name: p.mean_instances(env.now) for name, p in pools.items()}
        meta["faults"] = recovery.summary()
        meta["retries"] = recovery.retries
        if autoscaler is not None:
            meta["autoscale"] = {
                "scale_outs": autoscaler.scale_outs, "scale_ins": autoscaler.scale_ins,
                "decisions": autoscaler.decisions,
            }
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
        tenants=_tenant_columns(cfg, trace, tenant_of, gate, rec),
    )


def _tenant_columns(
    cfg: RunConfig, trace: Trace, tenant_of: np.ndarray, gate: TenantAdmission | None, rec: Recorder
) -> TenantColumns | None:
    """The run's tenants for the metrics (``None`` when neither the config nor the trace
    names any). Without quotas a request passes the router when it arrives."""
    if not cfg.tenants and not trace.has_tenants:
        return None
    if cfg.tenants:
        names = [t.name for t in cfg.tenants]
        priority = [t.priority for t in cfg.tenants]
        slos: list[Any] = [t.slo for t in cfg.tenants]
    else:
        names, priority, slos = list(trace.tenant_names), [0] * len(trace.tenant_names), [None] * len(trace.tenant_names)
    if gate is not None:
        return TenantColumns(names, tenant_of, priority, slos, gate.admitted_at, list(gate.peak_in_flight),
                             list(gate.rejected))  # fmt: skip
    t = rec.times
    admitted_at = np.where(np.isnan(t["prefill_enqueued_at"]), np.nan, t["arrival_at"])
    return TenantColumns(names, tenant_of, priority, slos, admitted_at)


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
    if cfg.autoscale is not None or cfg.faults is not None:
        for pool in (cfg.aggregated_pool(),) if cfg.mode == "aggregated" else (cfg.prefill, cfg.decode):
            cold_start(cfg, pool, store)  # an unknown weight source is refused before the run
    if cfg.mode == "aggregated":
        if cfg.router.prefill_policy == "shared_queue":
            raise ConfigError("router.prefill_policy 'shared_queue' applies to disaggregated prefill pools only")
        cost = _plan_pool(cfg, cfg.aggregated_pool(), "aggregated", store, streams, 1.0).cost
        make_speculator(cfg, cfg.aggregated_pool(), "aggregated", cost, store, streams)
        return {"aggregated": cost.label}
    store.link(cfg.link.preset)
    prefill_label = _plan_pool(cfg, cfg.prefill, "prefill", store, streams, 1.0).cost.label
    decode_cost = _plan_pool(cfg, cfg.decode, "decode", store, streams, 1.0).cost
    make_speculator(cfg, cfg.decode, "decode", decode_cost, store, streams)
    return {"prefill": prefill_label, "decode": decode_cost.label}

