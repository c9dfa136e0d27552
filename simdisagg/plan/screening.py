"""Analytic screening: what can be told of a candidate without simulating it.

The analytic bound ``s_ub`` is an upper bound on the goodput rate scale from work and capacity
alone. Each pool must do, for the cheapest ``target`` fraction of requests, at least the work
of those requests at the most efficient batching its limits allow (prefill: a full token
budget of identical prompts, with an ideal prefix cache; decode: the largest batch that fits
in KV memory and keeps a step within the TPOT target; link: the KV bytes over its bandwidth),
within the trace span plus the SLO slack. The bound carries a safety margin
(:data:`BOUND_MARGIN`) for finite-trace effects. It seeds the bracket and prunes candidates
that cannot beat the best one already simulated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from simdisagg.config import RunConfig
from simdisagg.hardware import Parallelism, ProfileStore, instance_kv_memory
from simdisagg.plan.candidates import Candidate
from simdisagg.plan.spec import SearchSettings
from simdisagg.plan.workload import TraceLoad

#: Safety factor on the analytic rate bound (finite traces can run a little over capacity).
BOUND_MARGIN = 1.25


@dataclass(frozen=True, slots=True)
class Screening:
    """What can be told about a candidate without simulating it."""

    rate_bound: float  # upper bound on the goodput rate scale (inf: none)
    zero_load_attainment: float  # attainment bound from each request alone on an idle cluster
    limiting: str  # the pool whose work sets the bound
    reason: str | None  # set when the candidate is pruned without simulation
    #: A guess of the p99 end-to-end latency under load, which sizes the first run window:
    #: twice the p99 of each request alone on an idle cluster, at most the longest a request
    #: meeting the SLO may take.
    lifetime_hint_s: float = math.nan


class Screener:
    """Analytic bounds of candidates on one trace (cost models built once per GPU, parallelism
    and role; ``par`` below is a pool's :class:`~simdisagg.hardware.Parallelism`)."""

    def __init__(self, base: RunConfig, store: ProfileStore, load: TraceLoad) -> None:
        self.base, self.store, self.load = base, store, load
        self._models: dict[tuple[str, Parallelism, str], Any] = {}
        self._prefill_work: dict[tuple[str, Parallelism, str, int, int | None], np.ndarray] = {}
        self._alone_cache: dict[tuple[str, Parallelism, str], tuple[np.ndarray, np.ndarray]] = {}

    def _cost(self, gpu: str, par: Parallelism, role: str) -> Any:
        key = (gpu, par, role)
        if key not in self._models:
            from simdisagg.costmodel.factory import make_cost_model
            from simdisagg.rng import Streams

            self._models[key] = make_cost_model(
                self.base.cost, self.base.model_shape(self.store), self.store.gpu(gpu), par.tp,
                Streams(self.base.seed), self.store, role=role, framework=self.base.framework,
                dp=par.dp, ep=par.ep,
            )
        return self._models[key]

    def _kv_tokens(self, gpu: str, par: Parallelism) -> int:
        """KV tokens one instance holds (as the simulator sizes it)."""
        from simdisagg.sim.decode import kv_capacity_blocks

        model = self.base.model_shape(self.store)
        pool = self.base.decode
        weight_bytes_per_gpu, kv_bytes_per_token = instance_kv_memory(model, par)
        blocks = kv_capacity_blocks(
            self.store.gpu(gpu).hbm_capacity_bytes.value, par.gpus, pool.gpu_memory_utilisation,
            weight_bytes_per_gpu * par.gpus, kv_bytes_per_token, pool.kv_block_tokens, pool.kv_capacity_tokens,
        )
        return blocks * pool.kv_block_tokens

    def cost_error(self, gpu: str, par: Parallelism) -> float | None:
        """The cost model's held-out p95 error (fraction) for this GPU and parallelism, if it
        reports one."""
        err = getattr(self._cost(gpu, par, "decode"), "held_out_error", None)
        if not isinstance(err, dict):
            return None
        worst = None
        for phase in ("prefill", "decode"):
            stats = err.get(phase) or {}
            value = stats.get("p95", stats.get("p95_ape"))
            if value is not None and math.isfinite(float(value)):
                worst = max(worst or 0.0, float(value))
        return worst

    def _prefill_lower_s(self, gpu: str, par: Parallelism, role: str, token_budget: int, max_req: int | None) -> np.ndarray:
        """Per request: prefill seconds at the best batching the pool allows (a lower bound)."""
        key = (gpu, par, role, token_budget, max_req)
        if key not in self._prefill_work:
            cm = self._cost(gpu, par, role)
            uniq, inverse = np.unique(self.load.new_tokens, return_inverse=True)
            per = np.empty(len(uniq))
            for j, u in enumerate(uniq.tolist()):
                k = max(1, token_budget // max(u, 1))
                if max_req is not None:
                    k = min(k, max_req)
                per[j] = cm.prefill_time_s(np.full(k, u), np.zeros(k)) / k
            self._prefill_work[key] = per[inverse]
        return self._prefill_work[key]

    def _tokens_per_step(self) -> int:
        """Most tokens a decode step emits per request: 1, or ``draft_tokens + 1`` when the
        decode pool speculates (so that the step-time bounds below stay bounds: a verify step
        costs at least a decode step and emits at most that many)."""
        spec = self.base.decode.speculative
        return 1 if spec is None else spec.draft_tokens + 1

    def _decode_token_s(self, gpu: str, par: Parallelism, role: str, max_batch: int) -> float:
        """Seconds per generated token at the largest batch that fits in KV memory and keeps a
        step within the TPOT target (a lower bound on the decode work per token)."""
        cm = self._cost(gpu, par, role)
        inp, out = self.load.input_tokens, self.load.output_tokens
        steps = np.maximum(out - 1, 0).astype(np.float64)
        if steps.sum() == 0:
            return 0.0
        ctx = float((steps * (inp + out / 2.0)).sum() / steps.sum())
        held = float(np.mean(inp + out))
        cap = max(1, min(max_batch, int(self._kv_tokens(gpu, par) // max(held, 1.0))))
        per_step = self._tokens_per_step()
        tpot = self.base.slo.tpot_s * per_step
        lo, hi = 1, cap  # largest batch whose step meets the TPOT target
        if cm.decode_step_time_s(1, int(ctx)) <= tpot:
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if cm.decode_step_time_s(mid, int(mid * ctx)) <= tpot:
                    lo = mid
                else:
                    hi = mid - 1
        b = lo
        return float(cm.decode_step_time_s(b, int(b * ctx)) / (b * per_step))

    def _pool_bound(self, work_s: np.ndarray, instances: int, slack_s: float) -> float:
        """Highest rate scale at which ``instances`` servers can do the work of the cheapest
        ``attainment`` share of requests within the (scaled) span plus ``slack_s``."""
        k = math.ceil(self.base.slo.attainment * len(work_s))
        w = float(np.sort(work_s)[:k].sum())
        denom = w - instances * slack_s
        return math.inf if denom <= 0 else instances * self.load.span_s / denom

    def _alone(self, gpu: str, par: Parallelism, role: str) -> tuple[np.ndarray, np.ndarray]:
        """Per request, alone on an idle instance: TTFT with an ideal prefix cache, and the
        first decode step (both lower bounds of what the request sees under load)."""
        if (gpu, par, role) in self._alone_cache:
            return self._alone_cache[(gpu, par, role)]
        cm = self._cost(gpu, par, role)
        load = self.load
        cached = load.input_tokens - load.new_tokens
        pairs = np.stack([load.new_tokens, cached], axis=1)
        uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
        ttft = np.array([cm.prefill_time_s(np.array([n]), np.array([c])) for n, c in uniq.tolist()])
        uin, inv_in = np.unique(load.input_tokens, return_inverse=True)
        per_step = self._tokens_per_step()
        tpot = np.array([cm.decode_step_time_s(1, int(n)) / per_step for n in uin.tolist()])
        out = (ttft[inverse.reshape(-1)], tpot[inv_in.reshape(-1)])
        self._alone_cache[(gpu, par, role)] = out
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
        pp, dp = cand.prefill_parallelism, cand.decode_parallelism
        for gpu, par, n in ((cand.prefill_gpu, pp, cand.prefill_count), (cand.decode_gpu, dp, cand.decode_count)):
            if n and self._kv_tokens(gpu, par) < 1:
                return Screening(
                    0.0, 0.0, "memory", f"{model.display_name} does not fit on {par.gpus} x {gpu} ({par.label})"
                )
        if cand.aggregated:
            role = "aggregated"
            pool = self.base.decode
            # Each attention rank schedules its own token budget (PoolConfig.instance_batched_tokens).
            work = self._prefill_lower_s(cand.decode_gpu, dp, role, pool.max_batched_tokens * dp.dp,
                                         pool.max_prefill_batch_requests)
            work = work + np.maximum(load.output_tokens - 1, 0) * self._decode_token_s(
                cand.decode_gpu, dp, role, cand.max_batch_size)
            bounds = {"aggregated": self._pool_bound(work, cand.decode_count, decode_slack)}
            ttft, tpot = self._alone(cand.decode_gpu, dp, role)
            zero = self._zero_load(ttft, tpot, self._kv_tokens(cand.decode_gpu, dp))
        else:
            pool = self.base.prefill
            pw = self._prefill_lower_s(cand.prefill_gpu, pp, "prefill", pool.max_batched_tokens * pp.dp,
                                       pool.max_prefill_batch_requests)
            dw = np.maximum(load.output_tokens - 1, 0) * self._decode_token_s(
                cand.decode_gpu, dp, "decode", cand.max_batch_size)
            link = self.store.link(cand.link or self.base.link.preset)
            bw = link.bandwidth_bytes_per_s.value * min(pp.tp, dp.tp) * self.base.link.bandwidth_scale
            lw = load.input_tokens * float(model.kv_bytes_per_token) / bw
            bounds = {
                "prefill": self._pool_bound(pw, cand.prefill_count, slo.ttft_s),
                "decode": self._pool_bound(dw, cand.decode_count, decode_slack),
                "link": self._pool_bound(lw, cand.prefill_count, decode_slack),
            }
            ttft, _ = self._alone(cand.prefill_gpu, pp, "prefill")
            _, tpot = self._alone(cand.decode_gpu, dp, "decode")
            zero = self._zero_load(ttft, tpot, self._kv_tokens(cand.decode_gpu, dp))
        steps = np.maximum(load.output_tokens - 1, 0)
        alone_p99 = float(np.percentile(ttft + steps * tpot, 99))
        slo_p99 = float(np.percentile(slo.ttft_s + steps * slo.tpot_s, 99))
        hint = min(2.0 * alone_p99, slo_p99)
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
        return Screening(bound, zero, limiting, reason, hint)
