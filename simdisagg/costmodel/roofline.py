"""Roofline cost model: FLOPs and bytes from the transformer shape over peak rates.

For one iteration on a tensor-parallel shard of ``tp`` GPUs::

    t = max(flops / (tp * peak_flops * mfu), bytes / (tp * hbm_bw * mbu)) + overhead + all_reduce

FLOPs: ``2 * params`` per token for the projections and MLP; ``4 * layers * heads * head_dim``
per (query, key) pair for attention (QK^T and PV), with ``n*c + n(n+1)/2`` causal pairs for a
prompt of ``n`` new tokens on ``c`` cached ones, and ``C`` pairs for a decode batch of total
context ``C``; ``2 * hidden * vocab`` for each LM-head row (one per prompt, one per decode
request). Bytes: the weights once per iteration, KV read for cached/context tokens and KV
written for new tokens. All-reduce (tp > 1): two per layer of ``tokens * hidden * dtype`` bytes,
ring algorithm over the GPU's intra-node bandwidth, plus a per-call latency. This last term is
modelled, not measured.

The efficiencies (``prefill_mfu``, ``decode_mbu`` ...) are named parameters with assumed
defaults; a profile fitted to measured kernels (:mod:`.fitted`) replaces this model where one
exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simdisagg.hardware import (
    GPUProfile,
    ModelShape,
    check_parallelism,
    peak_flops_per_s,
)

#: Bytes per activation element (BF16) in all-reduces, whatever the weights' precision.
ACTIVATION_BYTES = 2


@dataclass(frozen=True, slots=True)
class RooflineParams:
    """Efficiency factors of the roofline model (fractions of peak; seconds for overheads).

    Defaults are assumptions typical of Hopper-class serving engines, not measurements."""

    prefill_mfu: float = 0.55
    decode_mfu: float = 0.55
    memory_bandwidth_utilisation: float = 0.80
    iteration_overhead_s: float = 2.0e-4
    allreduce_latency_s: float = 1.0e-5


class RooflineCostModel:
    """Step times of ``model`` on a ``tp``-GPU shard of ``gpu`` from FLOPs and bytes."""

    def __init__(self, model: ModelShape, gpu: GPUProfile, tp: int = 1, params: RooflineParams | None = None) -> None:
        check_parallelism(model, tp)
        p = params or RooflineParams()
        self.params = p
        self.model, self.gpu, self.tp = model, gpu, tp
        self.label = f"roofline:{gpu.name}/{model.name}-tp{tp}"
        # GEMMs run at the weights' precision peak (FP8 twice BF16 on Hopper); attention in BF16.
        peak = peak_flops_per_s(gpu, model.weight_format) * tp
        attention_slowdown = peak_flops_per_s(gpu, model.weight_format) / gpu.dense_bf16_flops_per_s.value
        bw = gpu.hbm_bandwidth_bytes_per_s.value * tp * p.memory_bandwidth_utilisation
        self._inv_prefill_flops = 1.0 / (peak * p.prefill_mfu)
        self._inv_decode_flops = 1.0 / (peak * p.decode_mfu)
        self._inv_bw = 1.0 / bw
        m = model
        # Per-token FLOPs of every dense projection (layers + LM head counted separately).
        self._linear_flops_per_token = 2.0 * m.num_layers * m.layer_params
        self._lm_head_flops_per_row = 2.0 * m.lm_head_params
        # Attention FLOPs expressed in GEMM-peak units (BF16 attention under FP8 weights is slower).
        self._attn_flops_per_pair = 4.0 * m.num_layers * m.num_heads * m.head_dim * attention_slowdown
        self._weight_bytes = m.iteration_weight_bytes
        self._kv_bytes_per_token = float(m.kv_bytes_per_token)
        self._overhead_s = p.iteration_overhead_s
        if tp > 1:
            ring = 2.0 * (tp - 1) / tp / gpu.intra_node_bandwidth_bytes_per_s.value
            # Activations stay 16-bit whatever the weights' precision.
            self._ar_s_per_token = 2.0 * m.num_layers * m.hidden_size * ACTIVATION_BYTES * ring
            self._ar_fixed_s = 2.0 * m.num_layers * p.allreduce_latency_s
        else:
            self._ar_s_per_token = 0.0
            self._ar_fixed_s = 0.0

    # -- prefill -----------------------------------------------------------------------
    def prefill_time_s(self, new_tokens: Sequence[int] | np.ndarray, cached_tokens: Sequence[int] | np.ndarray) -> float:
        """One prefill iteration over a batch of prompts (see module docstring)."""
        if isinstance(new_tokens, list) and isinstance(cached_tokens, list):
            # Batches are a few prompts: plain floats beat numpy's per-call overhead here.
            tokens = float(sum(new_tokens))
            cached_sum = float(sum(cached_tokens))
            pairs = 0.0
            for n_i, c_i in zip(new_tokens, cached_tokens, strict=True):
                pairs += n_i * c_i + n_i * (n_i + 1.0) * 0.5
            rows = len(new_tokens)
        else:
            n = np.asarray(new_tokens, dtype=np.float64)
            c = np.asarray(cached_tokens, dtype=np.float64)
            tokens = float(n.sum())
            cached_sum = float(c.sum())
            pairs = float((n * c + n * (n + 1.0) * 0.5).sum())
            rows = len(n)
        flops = (
            self._linear_flops_per_token * tokens
            + self._attn_flops_per_pair * pairs
            + self._lm_head_flops_per_row * rows
        )
        nbytes = self._weight_bytes + self._kv_bytes_per_token * (tokens + cached_sum)
        return (
            max(flops * self._inv_prefill_flops, nbytes * self._inv_bw)
            + self._overhead_s
            + self._ar_fixed_s
            + self._ar_s_per_token * tokens
        )

    # -- decode ------------------------------------------------------------------------
    def _decode_terms(self, batch_size: int) -> tuple[float, float, float, float, float]:
        b = float(batch_size)
        flops0 = (self._linear_flops_per_token + self._lm_head_flops_per_row) * b
        flops1 = self._attn_flops_per_pair
        bytes0 = self._weight_bytes + self._kv_bytes_per_token * b
        bytes1 = self._kv_bytes_per_token
        fixed = self._overhead_s + self._ar_fixed_s + self._ar_s_per_token * b
        return flops0, flops1, bytes0, bytes1, fixed

    def decode_step_time_s(self, batch_size: int, context_tokens: int) -> float:
        """One decode iteration of ``batch_size`` requests with total context ``context_tokens``."""
        f0, f1, b0, b1, fixed = self._decode_terms(batch_size)
        ctx = float(context_tokens)
        return max((f0 + f1 * ctx) * self._inv_decode_flops, (b0 + b1 * ctx) * self._inv_bw) + fixed

    def decode_run_times_s(self, batch_size: int, context_tokens: int, n_steps: int) -> np.ndarray:
        """``n_steps`` decode steps of an unchanged batch, vectorised."""
        f0, f1, b0, b1, fixed = self._decode_terms(batch_size)
        ctx = context_tokens + batch_size * np.arange(n_steps, dtype=np.float64)
        if self._memory_bound_run(batch_size, context_tokens, n_steps):
            return (b0 + b1 * ctx) * self._inv_bw + fixed
        compute = (f0 + f1 * ctx) * self._inv_decode_flops
        memory = (b0 + b1 * ctx) * self._inv_bw
        return np.maximum(compute, memory) + fixed

    def _memory_bound_run(self, batch_size: int, context_tokens: int, n_steps: int) -> bool:
        """Whether the memory term is the larger at every step of the run. Both terms are
        linear in the step, so it is when memory exceeds compute at both ends (by far more
        than rounding): the maximum is then the memory term, element for element, and a run
        needs half the arithmetic (the usual case for decode)."""
        f0, f1, b0, b1, _ = self._decode_terms(batch_size)
        inv_flops, inv_bw, margin = self._inv_decode_flops, self._inv_bw, 1.0 + 1e-9
        first = float(context_tokens)
        last = first + float(batch_size) * (n_steps - 1)
        return (b0 + b1 * first) * inv_bw > (f0 + f1 * first) * inv_flops * margin and (
            b0 + b1 * last
        ) * inv_bw > (f0 + f1 * last) * inv_flops * margin

    def decode_run_times_list(self, batch_size: int, context_tokens: int, n_steps: int) -> list[float]:
        """:meth:`decode_run_times_s` in plain floats (the same operations in the same order,
        so bit for bit the same values), for short runs where a numpy call costs more."""
        f0, f1, b0, b1, fixed = self._decode_terms(batch_size)
        inv_flops, inv_bw = self._inv_decode_flops, self._inv_bw
        c0, b = float(context_tokens), float(batch_size)
        if self._memory_bound_run(batch_size, context_tokens, n_steps):
            return [(b0 + b1 * (c0 + b * j)) * inv_bw + fixed for j in range(n_steps)]
        out = []
        for j in range(n_steps):
            ctx = c0 + b * j
            compute = (f0 + f1 * ctx) * inv_flops
            memory = (b0 + b1 * ctx) * inv_bw
            out.append((max(compute, memory)) + fixed)
        return out

    def decode_times_bulk_s(self, batch_sizes: np.ndarray, context_tokens: np.ndarray) -> np.ndarray:
        """One step per element (batch size, total context): :meth:`decode_run_times_s`'s
        arithmetic element by element (the same terms as :meth:`_decode_terms`)."""
        b = batch_sizes
        f0 = (self._linear_flops_per_token + self._lm_head_flops_per_row) * b
        b0 = self._weight_bytes + self._kv_bytes_per_token * b
        fixed = self._overhead_s + self._ar_fixed_s + self._ar_s_per_token * b
        compute = (f0 + self._attn_flops_per_pair * context_tokens) * self._inv_decode_flops
        memory = (b0 + self._kv_bytes_per_token * context_tokens) * self._inv_bw
        return np.maximum(compute, memory) + fixed

    def isolated_prefill_times_s(self, new_tokens: np.ndarray, cached_tokens: np.ndarray) -> np.ndarray:
        """Per request, its prefill alone on an idle instance (a batch of one), vectorised:
        :meth:`prefill_time_s` of each request on its own."""
        n = np.asarray(new_tokens, dtype=np.float64)
        c = np.asarray(cached_tokens, dtype=np.float64)
        flops = (
            self._linear_flops_per_token * n
            + self._attn_flops_per_pair * (n * c + n * (n + 1.0) * 0.5)
            + self._lm_head_flops_per_row
        )
        nbytes = self._weight_bytes + self._kv_bytes_per_token * (n + c)
        return (
            np.maximum(flops * self._inv_prefill_flops, nbytes * self._inv_bw)
            + self._overhead_s
            + self._ar_fixed_s
            + self._ar_s_per_token * n
        )

    def isolated_decode_times_s(self, context_tokens: np.ndarray, n_steps: np.ndarray) -> np.ndarray:
        """Per request, the total of ``n_steps`` decode steps at batch size one from
        ``context_tokens``: :meth:`decode_run_times_s` summed, vectorised over requests.

        A step's compute and memory times are both linear in the step index, so their maximum
        switches side at most once and each side is an arithmetic series."""
        f0, f1, b0, b1, fixed = self._decode_terms(1)
        ctx0 = np.asarray(context_tokens, dtype=np.float64)
        m = np.asarray(n_steps, dtype=np.float64)
        a_c, s_c = (f0 + f1 * ctx0) * self._inv_decode_flops, f1 * self._inv_decode_flops
        a_m, s_m = (b0 + b1 * ctx0) * self._inv_bw, b1 * self._inv_bw
        # First step index at which compute is at least memory (0..m).
        with np.errstate(divide="ignore", invalid="ignore"):
            cross = np.where(s_c != s_m, np.ceil((a_m - a_c) / (s_c - s_m)), np.where(a_c >= a_m, 0.0, m))
        compute_later = s_c >= s_m
        k = np.clip(np.nan_to_num(cross, nan=0.0, posinf=m, neginf=0.0), 0.0, m)

        def series(a: np.ndarray, slope: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
            count = hi - lo
            return count * a + slope * (lo + hi - 1.0) * count * 0.5

        if compute_later:  # memory-bound first, compute-bound from step k on
            decode = series(a_m, s_m, 0.0 * k, k) + series(a_c, s_c, k, m)
        else:
            decode = series(a_c, s_c, 0.0 * k, k) + series(a_m, s_m, k, m)
        return decode + fixed * m

    # -- mixed (chunked prefill) ---------------------------------------------------------
    def mixed_step_time_s(
        self,
        new_tokens: np.ndarray,
        cached_tokens: np.ndarray,
        decode_batch_size: int,
        decode_context_tokens: int,
    ) -> float:
        """One iteration with prefill chunks and a decode batch sharing the weight reads."""
        n = np.asarray(new_tokens, dtype=np.float64)
        c = np.asarray(cached_tokens, dtype=np.float64)
        tokens = float(n.sum()) + decode_batch_size
        pairs = float((n * c + n * (n + 1.0) * 0.5).sum()) + float(decode_context_tokens)
        flops = (
            self._linear_flops_per_token * tokens
            + self._attn_flops_per_pair * pairs
            + self._lm_head_flops_per_row * (len(n) + decode_batch_size)
        )
        nbytes = self._weight_bytes + self._kv_bytes_per_token * (
            tokens + float(c.sum()) + float(decode_context_tokens)
        )
        return (
            max(flops * self._inv_prefill_flops, nbytes * self._inv_bw)
            + self._overhead_s
            + self._ar_fixed_s
            + self._ar_s_per_token * tokens
        )

    # -- speculative decoding ----------------------------------------------------------------
    def verify_times_bulk_s(self, batch_size: int, context_tokens: np.ndarray, draft_tokens: int) -> np.ndarray:
        """Speculative verify steps, vectorised over the steps: element ``j`` is
        :meth:`prefill_time_s` of ``draft_tokens + 1`` new tokens per request on top of the
        rest of its context (``context_tokens[j] - batch_size`` cached tokens spread evenly),
        bit for bit (every sum there is of integers, exact in floats)."""
        b = float(batch_size)
        n = draft_tokens + 1.0
        cached = np.maximum(np.asarray(context_tokens, dtype=np.float64) - b, 0.0)
        tokens = b * n
        pairs = n * cached + b * (n * (n + 1.0) * 0.5)
        flops = (
            self._linear_flops_per_token * tokens
            + self._attn_flops_per_pair * pairs
            + self._lm_head_flops_per_row * b
        )
        nbytes = self._weight_bytes + self._kv_bytes_per_token * (tokens + cached)
        return (
            np.maximum(flops * self._inv_prefill_flops, nbytes * self._inv_bw)
            + self._overhead_s
            + self._ar_fixed_s
            + self._ar_s_per_token * tokens
        )
