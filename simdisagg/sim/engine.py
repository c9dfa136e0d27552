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

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from simdisagg.config import PoolConfig, RunConfig
from simdisagg.costmodel.base import CostModel
from simdisagg.costmodel.factory import make_cost_model
from simdisagg.costmodel.scaled import ScaledCostModel
from simdisagg.errors import ConfigError
from simdisagg.hardware import ProfileStore
from simdisagg.rng import Streams
from simdisagg.sim.aggregated import AggregatedInstance
from simdisagg.sim.clock import call_later
from simdisagg.sim.decode import DecodeInstance, kv_capacity_blocks
from simdisagg.sim.link import KVLink
from simdisagg.sim.prefill import PrefillInstance, PrefillQueue, PrefixLookup
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

#: A factory that builds the prefix cache of a run (prefix caching plugs in here).
PrefixFactory = Callable[[RunConfig, Trace, Recorder], PrefixLookup]


@dataclass(slots=True, frozen=True)
class PoolPlan:
    """A pool's resolved hardware: cost model and KV capacity per instance."""

    cost: CostModel
    kv_capacity_blocks: int
    kv_block_tokens: int


def _plan_pool(
    cfg: RunConfig, pool: PoolConfig, role: str, store: ProfileStore, streams: Streams, cost_scale: float
) -> PoolPlan:
    model = store.model(cfg.model)
    gpu = store.gpu(pool.gpu)
    cost = make_cost_model(cfg.cost, model, gpu, pool.tp, streams, store, role=role)
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
    return PoolPlan(cost, blocks, pool.kv_block_tokens)


def simulate(
    cfg: RunConfig,
    trace: Trace,
    *,
    store: ProfileStore | None = None,
    prefix_factory: PrefixFactory | None = None,
    cost_scale: float = 1.0,
) -> RunResult:
    """Simulate ``trace`` on the cluster ``cfg`` describes. Same inputs and seed → same result.

    ``cost_scale`` multiplies every step time (sensitivity to the cost model's error)."""
    wall0 = time.perf_counter()
    store = store or ProfileStore()
    streams = Streams(cfg.seed)
    n = len(trace)
    rec = Recorder(n)
    env = simpy.Environment()
    inp: list[int] = trace.input_tokens.tolist()
    out: list[int] = trace.output_tokens.tolist()
    prefix = prefix_factory(cfg, trace, rec) if prefix_factory else PrefixLookup()
    router = Router(cfg.router.prefill_policy, cfg.router.decode_policy, streams["router"])
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
            if children:
                stack.extend((c, f"waits for rejected request {trace.request_ids[j]}") for c in children[j])

    def complete(i: int) -> None:
        t_done[i] = env.now
        status[i] = STATUS_COMPLETED
        if children:
            release_children(i)

    # Requests that can never be served, whatever the load.
    never: dict[int, str] = {}
    instances_stats: list[InstanceStats] = rec.instances

    if cfg.mode == "aggregated":
        pool = cfg.aggregated_pool()
        plan = _plan_pool(cfg, pool, "aggregated", store, streams, cost_scale)
        cost_label = plan.cost.label
        need = -(-(trace.input_tokens + trace.output_tokens) // plan.kv_block_tokens)
        for i in np.flatnonzero(need > plan.kv_capacity_blocks).tolist():
            never[i] = (
                f"needs {int(need[i])} KV blocks, more than an instance's {plan.kv_capacity_blocks}"
            )
        agg: list[AggregatedInstance] = []
        for k in range(pool.count):
            stats = InstanceStats("aggregated", k, pool.tp, LevelIntegral(plan.kv_capacity_blocks))
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
            agg[router.pick_prefill(agg, i)].enqueue(i)

        gpus = pool.gpus
    else:
        pplan = _plan_pool(cfg, cfg.prefill, "prefill", store, streams, cost_scale)
        dplan = _plan_pool(cfg, cfg.decode, "decode", store, streams, cost_scale)
        cost_label = pplan.cost.label if pplan.cost.label == dplan.cost.label else (
            f"prefill={pplan.cost.label}, decode={dplan.cost.label}"
        )
        need_p = -(-trace.input_tokens // pplan.kv_block_tokens)
        need_d = -(-(trace.input_tokens + trace.output_tokens) // dplan.kv_block_tokens)
        for i in np.flatnonzero(need_d > dplan.kv_capacity_blocks).tolist():
            never[i] = f"needs {int(need_d[i])} KV blocks, more than a decode instance's {dplan.kv_capacity_blocks}"
        for i in np.flatnonzero(need_p > pplan.kv_capacity_blocks).tolist():
            never[i] = f"prompt needs {int(need_p[i])} KV blocks, more than a prefill instance's {pplan.kv_capacity_blocks}"
        model = store.model(cfg.model)
        link_profile = store.link(cfg.link.preset)
        bandwidth = (
            link_profile.bandwidth_bytes_per_s.value
            * min(cfg.prefill.tp, cfg.decode.tp)
            * cfg.link.bandwidth_scale
        )
        kv_per_token = float(model.kv_bytes_per_token)
        decode: list[DecodeInstance] = []
        for k in range(cfg.decode.count):
            stats = InstanceStats("decode", k, cfg.decode.tp, LevelIntegral(dplan.kv_capacity_blocks))
            instances_stats.append(stats)
            decode.append(
                DecodeInstance(
                    env, k, dplan.cost, inp, out, rec, stats, cfg.exact_steps,
                    max_batch_size=cfg.decode.max_batch_size,
                    kv_capacity_blocks=dplan.kv_capacity_blocks,
                    kv_block_tokens=dplan.kv_block_tokens,
                    on_complete=complete,
                )
            )
        links = [
            KVLink(env, k, bandwidth, link_profile.latency_s.value, cfg.link.sharing, rec)
            for k in range(cfg.prefill.count)
        ]
        shared = PrefillQueue() if cfg.router.prefill_policy == "shared_queue" else None
        prefill: list[PrefillInstance] = []
        decode_of = rec.decode_instance

        def on_landed(i: int) -> None:
            prefill[int(rec.prefill_instance[i])].release(i)
            decode[int(decode_of[i])].join(i)

        def on_admitted(i: int) -> None:
            links[int(rec.prefill_instance[i])].send(i, inp[i] * kv_per_token, on_landed)

        def on_prefilled(inst: PrefillInstance, i: int) -> None:
            if out[i] <= 1:  # the first token was the whole answer: nothing to decode
                inst.release(i)
                complete(i)
                return
            d = router.pick_decode(decode, i)
            decode_of[i] = d
            decode[d].submit(i, on_admitted)

        for k in range(cfg.prefill.count):
            stats = InstanceStats("prefill", k, cfg.prefill.tp, LevelIntegral(pplan.kv_capacity_blocks))
            instances_stats.append(stats)
            prefill.append(
                PrefillInstance(
                    env, k, pplan.cost, shared or PrefillQueue(), inp, rec, stats,
                    max_batched_tokens=cfg.prefill.max_batched_tokens,
                    max_batch_requests=cfg.prefill.max_prefill_batch_requests,
                    kv_capacity_blocks=pplan.kv_capacity_blocks,
                    kv_block_tokens=pplan.kv_block_tokens,
                    prefix=prefix,
                    on_prefilled=on_prefilled,
                )
            )

        if shared is not None:
            for inst in prefill:
                inst.try_start()  # park every instance on the shared queue

            def route(i: int) -> None:
                shared.push(i)
        else:

            def route(i: int) -> None:
                prefill[router.pick_prefill(prefill, i)].enqueue(i)

        gpus = cfg.prefill.gpus + cfg.decode.gpus

    def arrive(i: int) -> None:
        now = env.now
        t_arrival[i] = now
        if status[i] == STATUS_REJECTED:
            return
        reason = never.get(i)
        if reason is not None:
            reject_chain(i, reason)
            return
        t_enq[i] = now
        route(i)

    # Open-loop arrivals are released in time order by one chain of events.
    open_idx = np.flatnonzero(n_waits == 0)
    order = open_idx[np.argsort(trace.timestamp_s[open_idx], kind="stable")]
    arrival_s = (trace.timestamp_s[order] / cfg.rate_scale).tolist()
    order_list = order.tolist()

    def release_open(k: int) -> None:
        arrive(order_list[k])
        k += 1
        if k < len(order_list):
            call_later(env, arrival_s[k] - env.now, release_open, k)

    if order_list:
        call_later(env, arrival_s[0], release_open, 0)
    env.run()
    rec.end_at = env.now
    for stats in instances_stats:
        stats.kv.close(env.now)
    if cfg.mode != "aggregated":
        rec.link_busy_s = [link.busy_s for link in links]
        rec.link_bytes = [link.bytes_sent for link in links]
    events = next(env._eid)  # SimPy's event counter: events scheduled in this run
    meta: dict[str, Any] = {"kv_capacity_blocks": {s.pool: s.kv.capacity for s in instances_stats}}
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
    )
