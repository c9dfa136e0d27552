"""Roofline cost model: FLOPs and bytes from the transformer shape over peak rates.

For one iteration of a dense model on a tensor-parallel shard of ``tp`` GPUs::

    t = max(flops / (tp * peak_flops * mfu), bytes / (tp * hbm_bw * mbu)) + overhead + all_reduce

FLOPs: ``2 * params`` per token for the projections and MLP; ``4 * layers * heads * head_dim``
per (query, key) pair for attention (QK^T and PV), with ``n*c + n(n+1)/2`` causal pairs for a
prompt of ``n`` new tokens on ``c`` cached ones, and ``C`` pairs for a decode batch of total
context ``C``; ``2 * hidden * vocab`` for each LM-head row (one per prompt, one per decode
request). Bytes: the weights once per iteration, KV read for cached/context tokens and KV
written for new tokens. All-reduce (tp > 1): two per layer of ``tokens * hidden * dtype`` bytes,
ring algorithm over the GPU's intra-node bandwidth, plus a per-call latency. This last term is
modelled, not measured.

Mixture-of-experts, latent-attention (MLA) and sliding-window models, and any instance with
attention data parallelism (``dp``) or expert parallelism (``ep``), take two phases per
iteration, each a roofline of its own:

* **attention phase**, on one attention rank of ``tp`` GPUs: every weight but the experts'
  (attention projections, norms, router, dense first layers, LM head), attention over the
  cache and the KV bytes. With ``dp`` ranks each rank serves its own requests and the step
  waits for the slowest: a decode batch of ``B`` puts ``ceil(B / dp)`` requests (and that share
  of the context) on the busiest rank; prefill prompts are spread over the ranks longest first
  (each to the least-loaded rank) and the rank with the most work sets the time. MLA attention
  reads the compressed latent (``kv_lora_rank + qk_rope_head_dim`` per token and layer);
  decode runs the absorbed form (``2 * heads * (2 * kv_lora_rank + qk_rope_head_dim)`` FLOPs
  per pair), prefill the expanded one (:attr:`ModelShape.attention_flops_per_pair`); each of
  a rank's GPUs reads the whole latent (it has no heads to split), so KV reads are ``tp`` copies.
  Sliding-window layers attend to at most ``sliding_window_tokens`` keys and hold that many
  tokens' KV per request (a decode step is taken to read the whole window).
* **expert phase**, on all ``tp x dp`` GPUs of the instance: FLOPs of the active experts
  (``experts_per_token`` routed plus the shared ones per token) and the bytes of every expert
  some token is routed to (:meth:`ModelShape.read_weight_bytes`: all of them once a batch is
  large), times the named ``expert_imbalance`` (the busiest GPU's expert load over the mean; 1
  is perfectly even routing, an assumption, not a measurement).

Communication for these models: the rank's all-reduces as above (two per layer; one per layer
plus one per dense layer when ``ep > 1``, the experts' outputs returning by the combine) and,
with ``ep > 1``, a dispatch and a combine all-to-all per MoE layer: each GPU sends its
``tokens / (tp x dp)`` tokens' hidden vectors (16-bit) to ``experts_per_token`` experts, the
``(ep - 1) / ep`` of them that live elsewhere, over the GPU's intra-node bandwidth inside one
8-GPU node and, for the share of peers beyond it, over a 400 Gb/s scale-out port per GPU (the
``ib-ndr-400`` link preset), plus the per-call latency. This is the link model, labelled as
modelled, not measured (kernel libraries such as DeepEP send the dispatch in FP8 and overlap
it with compute; neither is modelled). An accelerator whose profile has no public peer
bandwidth (``intra_node_bandwidth_bytes_per_s`` absent) gets no communication term at all and
its label says so: its times are then a lower bound.

The efficiencies (``prefill_mfu``, ``decode_mbu`` ...) are named parameters with assumed
defaults; a profile fitted to measured kernels (:mod:`.fitted`) replaces this model where one
exists.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simdisagg.costmodel.base import verify_times_by_prefill_s
from simdisagg.hardware import (
    GPUProfile,
    ModelShape,
    Parallelism,
    check_parallelism,
    peak_flops_per_s,
)

#: Bytes per activation element (BF16) in all-reduces, whatever the weights' precision.
ACTIVATION_BYTES = 2
#: GPUs one NVLink domain joins in the all-to-all of expert parallelism (an HGX node).
GPUS_PER_NODE = 8
#: Per-GPU scale-out bandwidth for all-to-all traffic that leaves the node: one 400 Gb/s
#: InfiniBand NDR port per GPU, 400e9 / 8 bytes/s line rate (``links/ib-ndr-400.yaml``).
SCALE_OUT_BANDWIDTH_BYTES_PER_S = 50.0e9


@dataclass(frozen=True, slots=True)
class RooflineParams:
    """Efficiency factors of the roofline model (fractions of peak; seconds for overheads).

    Defaults are assumptions typical of Hopper-class serving engines, not measurements."""

    prefill_mfu: float = 0.55
    decode_mfu: float = 0.55
    memory_bandwidth_utilisation: float = 0.80
    iteration_overhead_s: float = 2.0e-4
    allreduce_latency_s: float = 1.0e-5
    #: The busiest GPU's share of the expert work over the mean share (1: even routing).
    expert_imbalance: float = 1.0


class RooflineCostModel:
    """Step times of ``model`` on one instance of ``gpu``: ``dp`` attention ranks of ``tp``
    GPUs each, experts spread ``ep`` ways (see the module docstring), from FLOPs and bytes."""

    def __init__(
        self,
        model: ModelShape,
        gpu: GPUProfile,
        tp: int = 1,
        params: RooflineParams | None = None,
        *,
        dp: int = 1,
        ep: int = 1,
    ) -> None:
        check_parallelism(model, tp, dp=dp, ep=ep)
        p = params or RooflineParams()
        self.params = p
        self.model, self.gpu, self.tp, self.dp, self.ep = model, gpu, tp, dp, ep
        self.label = f"roofline:{gpu.name}/{model.name}-{Parallelism(tp, dp, ep).label}"
        #: Dense GQA models on one rank keep the single roofline of the module docstring.
        self._two_phase = (
            model.moe is not None or model.mla is not None or model.sliding_window_layers > 0 or dp > 1 or ep > 1
        )
        if self._two_phase:
            self._init_two_phase(model, gpu, p)
            return
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
        if tp > 1 and gpu.intra_node_bandwidth_bytes_per_s is None:
            self.label += " (no peer-link cost: no public figure)"
        if tp > 1 and gpu.intra_node_bandwidth_bytes_per_s is not None:
            ring = 2.0 * (tp - 1) / tp / gpu.intra_node_bandwidth_bytes_per_s.value
            # Activations stay 16-bit whatever the weights' precision.
            self._ar_s_per_token = 2.0 * m.num_layers * m.hidden_size * ACTIVATION_BYTES * ring
            self._ar_fixed_s = 2.0 * m.num_layers * p.allreduce_latency_s
        else:
            self._ar_s_per_token = 0.0
            self._ar_fixed_s = 0.0

    # -- two-phase model (MoE, MLA, sliding window, attention DP, EP) --------------------
    def _init_two_phase(self, m: ModelShape, gpu: GPUProfile, p: RooflineParams) -> None:
        """Constants of the attention and expert phases (see the module docstring)."""
        tp, dp, ep = self.tp, self.dp, self.ep
        gpus = tp * dp
        peak = peak_flops_per_s(gpu, m.weight_format)
        attention_slowdown = peak / gpu.dense_bf16_flops_per_s.value
        hbm = gpu.hbm_bandwidth_bytes_per_s.value * p.memory_bandwidth_utilisation
        # Attention phase: one rank of tp GPUs.
        self._inv_prefill_flops = 1.0 / (peak * tp * p.prefill_mfu)
        self._inv_decode_flops = 1.0 / (peak * tp * p.decode_mfu)
        self._inv_bw = 1.0 / (hbm * tp)
        # Expert phase: all the instance's GPUs; the busiest carries expert_imbalance x the mean.
        self._expert_inv_prefill_flops = p.expert_imbalance / (peak * gpus * p.prefill_mfu)
        self._expert_inv_decode_flops = p.expert_imbalance / (peak * gpus * p.decode_mfu)
        self._expert_inv_bw = p.expert_imbalance / (hbm * gpus)
        expert_params = float(m.expert_params_total)
        per_param = m.weight_bytes_per_param or m.dtype_bytes
        all_layers = float(m.num_layers * m.layer_params)
        self._linear_flops_per_token = 2.0 * (all_layers - expert_params)
        self._lm_head_flops_per_row = 2.0 * m.lm_head_params
        self._weight_bytes = (all_layers + m.lm_head_params - expert_params) * per_param
        if m.moe is not None:
            moe = m.moe
            self._expert_flops_per_token = 2.0 * m.moe_layers * (moe.experts_per_token + moe.shared_experts) * m.expert_params
            self._expert_layer_bytes = m.moe_layers * m.expert_params * m.expert_bytes_per_param
        else:
            self._expert_flops_per_token = 0.0
            self._expert_layer_bytes = 0.0
        # Attention FLOPs per (query, key) pair of all full-attention layers, in GEMM-peak units.
        full, window_layers = m.full_attention_layers, m.sliding_window_layers
        self._attn_flops_per_pair = full * m.attention_flops_per_pair * attention_slowdown
        if m.mla is not None:
            # Decode runs MLA absorbed: scores over the latent plus rotary key, values over the latent.
            absorbed = 2.0 * m.num_heads * (2 * m.mla.kv_lora_rank + m.mla.qk_rope_head_dim)
            self._decode_attn_flops_per_pair = full * absorbed * attention_slowdown
        else:
            self._decode_attn_flops_per_pair = self._attn_flops_per_pair
        self._window_tokens = float(m.sliding_window_tokens or 0)
        self._window_flops_per_pair = window_layers * m.attention_flops_per_pair * attention_slowdown
        element = m.kv_bytes_per_element or m.dtype_bytes
        # Every GPU of a rank reads its own copy of what it holds: MLA's latent whole on each,
        # grouped-query KV heads copied when tp exceeds them (as instance_kv_memory stores them).
        copies = float(tp) if m.mla is not None else max(1.0, tp / m.num_kv_heads)
        self._window_kv_bytes_per_token = 2.0 * window_layers * m.num_kv_heads * m.head_dim * element * copies
        self._kv_bytes_per_token = float(m.kv_bytes_per_token) * copies
        self._overhead_s = p.iteration_overhead_s
        self._decode_terms_cache: dict[int, tuple[float, float, float, float, float]] = {}
        # Communication (modelled, not measured).
        peer = gpu.intra_node_bandwidth_bytes_per_s
        self._ar_s_per_token = self._ar_fixed_s = 0.0
        self._a2a_s_per_token = self._a2a_fixed_s = 0.0
        if peer is None:
            if gpus > 1:
                self.label += " (no peer-link cost: no public figure)"
            return
        if tp > 1:
            calls = 2 * m.num_layers if ep == 1 else m.num_layers + (m.moe.dense_layers if m.moe else 0)
            ring = 2.0 * (tp - 1) / tp / peer.value
            self._ar_s_per_token = calls * m.hidden_size * ACTIVATION_BYTES * ring
            self._ar_fixed_s = calls * p.allreduce_latency_s
        if ep > 1 and m.moe is not None:
            # Per token of the instance, each GPU sends 1/gpus of it to experts_per_token experts,
            # (ep - 1)/ep of them elsewhere; dispatch and combine alike.
            bytes_per_token = m.moe.experts_per_token * m.hidden_size * ACTIVATION_BYTES * (ep - 1) / ep / gpus
            off_node = max(0.0, 1.0 - GPUS_PER_NODE / gpus)
            s_per_byte = max((1.0 - off_node) / peer.value, off_node / SCALE_OUT_BANDWIDTH_BYTES_PER_S)
            self._a2a_s_per_token = 2.0 * m.moe_layers * bytes_per_token * s_per_byte
            self._a2a_fixed_s = 2.0 * m.moe_layers * p.allreduce_latency_s

    def _expert_s(self, tokens: float, inv_flops: float) -> float:
        """The expert phase of an iteration over ``tokens`` tokens of the whole instance."""
        moe = self.model.moe
        if moe is None:
            return 0.0
        touched = moe.experts * (1.0 - (1.0 - moe.experts_per_token / moe.experts) ** max(tokens, 1.0))
        nbytes = (touched + moe.shared_experts) * self._expert_layer_bytes
        return max(self._expert_flops_per_token * tokens * inv_flops, nbytes * self._expert_inv_bw)

    def _window_pairs(self, new: float, cached: float) -> float:
        """(query, key) pairs of one sliding-window layer for ``new`` tokens after ``cached``:
        token ``p`` attends to ``min(p, window)`` keys."""
        w = self._window_tokens

        def upto(x: float) -> float:
            return x * (x + 1.0) * 0.5 if x <= w else w * (w + 1.0) * 0.5 + (x - w) * w

        return upto(cached + new) - upto(cached)

    def _ranks(self, new_tokens: Sequence[int], cached_tokens: Sequence[int]) -> list[list[int]]:
        """Prompts (indices) of each attention rank: longest first, each to the least-loaded rank."""
        if self.dp == 1:
            return [list(range(len(new_tokens)))]
        order = sorted(range(len(new_tokens)), key=lambda i: (-(new_tokens[i] + cached_tokens[i]), i))
        heap = [(0.0, r) for r in range(self.dp)]
        ranks: list[list[int]] = [[] for _ in range(self.dp)]
        for i in order:
            load, r = heapq.heappop(heap)
            ranks[r].append(i)
            heapq.heappush(heap, (load + new_tokens[i] + cached_tokens[i], r))
        return ranks

    def _attention_prefill_s(self, new: list[float], cached: list[float], inv_flops: float) -> float:
        """The attention phase of one rank's prompts (``new`` and ``cached`` tokens each)."""
        tokens = sum(new)
        pairs = window_pairs = window_tokens = 0.0
        for n_i, c_i in zip(new, cached, strict=True):
            pairs += n_i * c_i + n_i * (n_i + 1.0) * 0.5
            if self._window_tokens:
                window_pairs += self._window_pairs(n_i, c_i)
                window_tokens += n_i + min(c_i, self._window_tokens)
        flops = (
            self._linear_flops_per_token * tokens
            + self._attn_flops_per_pair * pairs
            + self._window_flops_per_pair * window_pairs
            + self._lm_head_flops_per_row * len(new)
        )
        nbytes = (
            self._weight_bytes
            + self._kv_bytes_per_token * (tokens + sum(cached))
            + self._window_kv_bytes_per_token * window_tokens
        )
        return max(flops * inv_flops, nbytes * self._inv_bw)

    def _two_phase_prefill_s(self, new_tokens: Sequence[float], cached_tokens: Sequence[float]) -> float:
        new = [float(x) for x in new_tokens]
        cached = [float(x) for x in cached_tokens]
        if self.dp == 1:
            attention = self._attention_prefill_s(new, cached, self._inv_prefill_flops) if new else 0.0
            rank_tokens = tokens = sum(new)
        else:
            attention = rank_tokens = 0.0
            for rank in self._ranks(new, cached):
                if rank:
                    n_r = [new[i] for i in rank]
                    attention = max(
                        attention, self._attention_prefill_s(n_r, [cached[i] for i in rank], self._inv_prefill_flops)
                    )
                    rank_tokens = max(rank_tokens, sum(n_r))
            tokens = sum(new)
        return attention + self._beyond_attention_s(tokens, rank_tokens, self._expert_inv_prefill_flops)

    def _beyond_attention_s(self, tokens: float, rank_tokens: float, expert_inv_flops: float) -> float:
        """Expert phase, overhead and communication of an iteration over ``tokens`` tokens of
        the instance, ``rank_tokens`` of them on the busiest rank."""
        return (
            self._expert_s(tokens, expert_inv_flops)
            + self._overhead_s
            + self._ar_fixed_s + self._ar_s_per_token * rank_tokens
            + self._a2a_fixed_s + self._a2a_s_per_token * tokens
        )

    def _two_phase_decode_terms(self, batch_size: int) -> tuple[float, float, float, float, float]:
        """Linear terms of the busiest rank's attention phase in the batch's total context, and
        everything that does not depend on the context (expert phase, communication); kept per
        batch size (a pool sees a few hundred sizes, each many times)."""
        terms = self._decode_terms_cache.get(batch_size)
        if terms is None:
            terms = self._decode_terms_cache[batch_size] = self._compute_decode_terms(batch_size)
        return terms

    def _compute_decode_terms(self, batch_size: int) -> tuple[float, float, float, float, float]:
        b = float(batch_size)
        rank_b = float(-(-batch_size // self.dp))
        share = rank_b / b if batch_size else 1.0
        f0 = (self._linear_flops_per_token + self._lm_head_flops_per_row) * rank_b
        f0 += self._window_flops_per_pair * self._window_tokens * rank_b
        f1 = self._decode_attn_flops_per_pair * share
        b0 = self._weight_bytes + (self._kv_bytes_per_token + self._window_kv_bytes_per_token * self._window_tokens) * rank_b
        b1 = self._kv_bytes_per_token * share
        fixed = self._beyond_attention_s(b, rank_b, self._expert_inv_decode_flops)
        return f0, f1, b0, b1, fixed

    # -- prefill -----------------------------------------------------------------------
    def prefill_time_s(self, new_tokens: Sequence[int] | np.ndarray, cached_tokens: Sequence[int] | np.ndarray) -> float:
        """One prefill iteration over a batch of prompts (see module docstring)."""
        if self._two_phase:
            return self._two_phase_prefill_s(list(new_tokens), list(cached_tokens))
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
        if self._two_phase:
            return self._two_phase_decode_terms(batch_size)
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
        if self._two_phase:
            terms: dict[int, tuple[float, float, float, float, float]] = {}
            for size in np.unique(batch_sizes).tolist():
                terms[int(size)] = self._decode_terms(int(size))
            rows = np.array([terms[int(size)] for size in batch_sizes.tolist()], dtype=np.float64).reshape(-1, 5)
            f0, f1, b0, b1, fixed = rows.T
            compute = (f0 + f1 * context_tokens) * self._inv_decode_flops
            memory = (b0 + b1 * context_tokens) * self._inv_bw
            return np.maximum(compute, memory) + fixed
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
        if self._two_phase:
            return np.array(
                [self._two_phase_prefill_s([n_i], [c_i]) for n_i, c_i in zip(np.asarray(new_tokens).tolist(),
                                                                             np.asarray(cached_tokens).tolist(), strict=True)],
                dtype=np.float64,
            )
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
        if self._two_phase:
            return self._two_phase_mixed_s(list(new_tokens), list(cached_tokens), decode_batch_size, decode_context_tokens)
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

    def _two_phase_mixed_s(
        self, new_tokens: list[float], cached_tokens: list[float], decode_batch_size: int, decode_context_tokens: int
    ) -> float:
        """A mixed iteration of the two-phase model: each rank runs its prompts (spread as in
        prefill) and ``ceil(B / dp)`` decode requests with that share of the context; the busiest
        rank sets the attention phase, the expert phase sees every token."""
        new = [float(x) for x in new_tokens]
        cached = [float(x) for x in cached_tokens]
        rank_b = float(-(-decode_batch_size // self.dp))
        share = rank_b / decode_batch_size if decode_batch_size else 0.0
        decode_flops = (
            (self._linear_flops_per_token + self._lm_head_flops_per_row) * rank_b
            + self._window_flops_per_pair * self._window_tokens * rank_b
            + self._decode_attn_flops_per_pair * share * decode_context_tokens
        )
        decode_bytes = (
            (self._kv_bytes_per_token + self._window_kv_bytes_per_token * self._window_tokens) * rank_b
            + self._kv_bytes_per_token * share * decode_context_tokens
        )
        attention = 0.0
        rank_tokens = rank_b
        for rank in self._ranks(new, cached):
            n_r = [new[i] for i in rank]
            c_r = [cached[i] for i in rank]
            tokens = sum(n_r)
            pairs = sum(n * c + n * (n + 1.0) * 0.5 for n, c in zip(n_r, c_r, strict=True))
            window_pairs = sum(self._window_pairs(n, c) for n, c in zip(n_r, c_r, strict=True)) if self._window_tokens else 0.0
            window_tokens = sum(n + min(c, self._window_tokens) for n, c in zip(n_r, c_r, strict=True)) if self._window_tokens else 0.0
            flops = decode_flops + (
                self._linear_flops_per_token * tokens
                + self._attn_flops_per_pair * pairs
                + self._window_flops_per_pair * window_pairs
                + self._lm_head_flops_per_row * len(n_r)
            )
            nbytes = self._weight_bytes + decode_bytes + (
                self._kv_bytes_per_token * (tokens + sum(c_r)) + self._window_kv_bytes_per_token * window_tokens
            )
            attention = max(attention, flops * self._inv_prefill_flops, nbytes * self._inv_bw)
            rank_tokens = max(rank_tokens, tokens + rank_b)
        all_tokens = sum(new) + decode_batch_size
        return attention + self._beyond_attention_s(all_tokens, rank_tokens, self._expert_inv_prefill_flops)

    # -- speculative decoding ----------------------------------------------------------------
    def verify_times_bulk_s(self, batch_size: int, context_tokens: np.ndarray, draft_tokens: int) -> np.ndarray:
        """Speculative verify steps, vectorised over the steps: element ``j`` is
        :meth:`prefill_time_s` of ``draft_tokens + 1`` new tokens per request on top of the
        rest of its context (``context_tokens[j] - batch_size`` cached tokens spread evenly),
        bit for bit (every sum there is of integers, exact in floats). The two-phase model
        (mixture-of-experts, MLA, attention DP/EP) times each step through its prefill."""
        if self._two_phase:
            return verify_times_by_prefill_s(self, batch_size, context_tokens, draft_tokens)
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
