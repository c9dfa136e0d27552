"""Iteration times of a dense transformer shard, composed from measured kernels.

One prefill or decode iteration of one tensor-parallel shard is the sum of the kernels it
launches, each timed from the database (:class:`~simdisagg.kerneldb.tables.KernelDatabase`).
Per layer, for ``T`` tokens in the iteration (``P`` prompts; ``T = P = B`` in decode):

========================  =====================================================================
op                        time
========================  =====================================================================
QKV projection            GEMM ``m=T, n=(heads + 2 kv_heads) head_dim, k=hidden`` (shard heads)
attention                 prefill: ``context_attention`` per prompt (see below); decode:
                          ``generation_attention(B, mean context)``
output projection         GEMM ``m=T, n=hidden, k=heads head_dim``
gate/up projection        GEMM ``m=T, n=2 intermediate/tp, k=hidden``
down projection           GEMM ``m=T, n=hidden, k=intermediate/tp``
TP all-reduce (tp > 1)    two per layer of ``T x hidden`` BF16 values (CUDA-graph kernel in
                          decode, eager in prefill)
small ops                 two fused residual-add + RMSNorm, rotary on q and k, KV-cache write,
                          SiLU x up, (Qwen3) q/k norms, (FP8/FP4 weights) activation quantisation
                          of each GEMM input: ``max(bytes / bandwidth, smallest kernel)`` each
========================  =====================================================================

plus, per iteration: the embedding gather (``T`` rows), the final norm and the LM head
(``m=P`` rows, BF16, the shard's vocabulary slice), for ``tp > 1`` the gather of the logits
(timed as an all-reduce of the same size, an upper bound), and greedy sampling (read the
logits once, two kernels).

**Attention of a prompt on a cached prefix** (``n`` new tokens over ``c`` cached): the table
has no prefix column. The prompt's causal (query, key) pairs ``n c + n (n+1)/2`` are those of a
prompt of ``isl_eq`` tokens with no prefix, ``isl_eq (isl_eq+1)/2`` = the same; its time is
``max(context_attention(isl_eq), generation_attention(c + n))``: the compute of the same pairs,
but never less than one pass over the prefix's KV. In a batch of ``P`` prompts each prompt
takes ``context_attention(P, its length) / P`` (exact for equal prompts).

**Bandwidth of the small ops** is measured, not assumed: the best weight-streaming bandwidth
of the database's own one-row BF16 GEMMs; and no kernel is shorter than the shortest the GEMM
table holds.

Framework overheads (scheduler, CPU, launch gaps) are not here: they are fitted on end-to-end
measurements (:mod:`simdisagg.overheads`) and added on top.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from simdisagg.costmodel.fitted import ShardShape
from simdisagg.hardware import ModelShape
from simdisagg.kerneldb.tables import (
    DEFAULT_MOE_DISTRIBUTION,
    GEMM_DTYPES,
    KV_DTYPES,
    MOE_DTYPES,
    KernelDatabase,
)

#: Bytes of one activation element (BF16) whatever the weights' precision.
ACTIVATION_BYTES = 2.0
#: Bytes per quantised activation element of each weight precision (FP8 GEMMs take FP8 inputs).
QUANTISED_ACTIVATION_BYTES: dict[str, float] = {"fp8": 1.0, "fp8_block": 1.0, "fp4": 0.5 + 1.0 / 16.0}


@dataclass(slots=True)
class StepBreakdown:
    """Seconds of one iteration by op family (their sum is :attr:`total_s`).

    ``gemm_s``, ``small_ops_s`` and ``allreduce_s`` depend on the iteration's token count only;
    ``lm_head_s`` (final norm, LM head, logits gather, sampling) on the rows sampled only;
    ``attention_s`` on each sequence's lengths."""

    gemm_s: float = 0.0
    attention_s: float = 0.0
    small_ops_s: float = 0.0
    allreduce_s: float = 0.0
    lm_head_s: float = 0.0
    kernels: int = 0
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        """The iteration's time: every kernel, back to back."""
        return self.gemm_s + self.attention_s + self.small_ops_s + self.allreduce_s + self.lm_head_s


class StepComposer:
    """Composes iteration times of ``shard`` at a serving precision from ``db``'s kernels."""

    def __init__(
        self,
        db: KernelDatabase,
        shard: ShardShape,
        weights: str = "bf16",
        kv_cache: str = "bf16",
        qk_norm: bool = False,
    ) -> None:
        if weights not in GEMM_DTYPES:
            raise ValueError(f"unknown weight precision '{weights}'")
        if kv_cache not in KV_DTYPES:
            raise ValueError(f"unknown KV-cache precision '{kv_cache}'")
        self.db, self.shard = db, shard
        self.weights, self.kv_cache = weights, kv_cache
        self.gemm_dtype = GEMM_DTYPES[weights]
        self.kv_dtype = KV_DTYPES[kv_cache]
        self.kv_element_bytes = 1.0 if kv_cache == "fp8" else 2.0
        self.qk_norm = qk_norm
        self.bandwidth = db.streaming_bandwidth_bytes_per_s
        self.min_kernel_s = db.smallest_kernel_s
        s = shard
        self._q = s.num_heads * s.head_dim
        self._kv = s.num_kv_heads * s.head_dim

    # -- pieces ----------------------------------------------------------------------------
    def _small(self, nbytes: float) -> float:
        return max(nbytes / self.bandwidth, self.min_kernel_s)

    def _layer_linear(self, out: StepBreakdown, tokens: int, graph: bool) -> None:
        """Everything of one layer except attention, for ``tokens`` rows, added to ``out``."""
        s, db, dt = self.shard, self.db, self.gemm_dtype
        h, i = s.hidden_size, s.intermediate_size
        gemms = {
            "qkv": db.gemm_s(tokens, self._q + 2 * self._kv, h, dt),
            "o_proj": db.gemm_s(tokens, h, self._q, dt),
            "gate_up": db.gemm_s(tokens, 2 * i, h, dt),
            "down": db.gemm_s(tokens, h, i, dt),
        }
        a = ACTIVATION_BYTES
        small = [
            4.0 * h * a,  # residual add + RMSNorm before attention (read x, residual; write both)
            4.0 * h * a,  # ... and before the MLP
            2.0 * (self._q + self._kv) * a,  # rotary on q and k
            2.0 * self._kv * (a + self.kv_element_bytes),  # K and V written into the cache
            3.0 * i * a,  # SiLU(gate) x up
        ]
        if self.qk_norm:
            small.append(2.0 * (self._q + self._kv) * a)
        if self.weights in QUANTISED_ACTIVATION_BYTES:
            q = QUANTISED_ACTIVATION_BYTES[self.weights]
            small += [(h + self._q + h + i) * (a + q)]  # one quantisation pass per GEMM input
            out.kernels += 3  # the other three are fused with the norms and the activation
        out.gemm_s += sum(gemms.values())
        out.small_ops_s += sum(self._small(tokens * b) for b in small)
        out.kernels += 4 + len(small)
        for name, value in gemms.items():
            out.parts[name] = out.parts.get(name, 0.0) + value
        if s.tp > 1:
            ar = 2.0 * db.allreduce_s(s.tp, tokens * h, graph)
            out.allreduce_s += ar
            out.kernels += 2

    def _head(self, out: StepBreakdown, tokens: int, rows: int, graph: bool) -> None:
        """Embedding of ``tokens`` rows; final norm, LM head, logits gather and sampling of ``rows``."""
        s, db = self.shard, self.db
        h, vocab = s.hidden_size, s.vocab_size
        a = ACTIVATION_BYTES
        out.small_ops_s += self._small(2.0 * tokens * h * a)  # embedding gather
        final_norm = self._small(2.0 * rows * h * a)
        lm = db.gemm_s(rows, vocab, h, "bfloat16")
        gather = db.allreduce_s(s.tp, rows * vocab, graph) if s.tp > 1 else 0.0
        sampling = 2.0 * self._small(rows * vocab * s.tp * 4.0)
        # Everything that depends on the rows sampled (not on the tokens) is the head's.
        out.lm_head_s += final_norm + lm + gather + sampling
        out.parts["lm_head"] = out.parts.get("lm_head", 0.0) + lm
        out.kernels += 5

    def _prefill_attention_s(self, new: Sequence[int], cached: Sequence[int]) -> float:
        s, db = self.shard, self.db
        batch = len(new)
        total = 0.0
        cache: dict[tuple[int, int], float] = {}
        for n, c in zip(new, cached, strict=True):
            key = (int(n), int(c))
            if key not in cache:
                pairs = n * c + n * (n + 1) / 2.0
                isl_eq = (math.sqrt(1.0 + 8.0 * pairs) - 1.0) / 2.0
                compute = db.context_attention_s(batch, isl_eq, s.num_heads, s.num_kv_heads, s.head_dim, self.kv_dtype)
                t = compute / batch
                if c > 0:
                    read = db.generation_attention_s(
                        batch, c + n, s.num_heads, s.num_kv_heads, s.head_dim, self.kv_dtype
                    ) / batch
                    t = max(t, read)
                cache[key] = t
            total += cache[key]
        return total

    # -- iterations ------------------------------------------------------------------------
    def prefill(self, new_tokens: Sequence[int], cached_tokens: Sequence[int]) -> StepBreakdown:
        """One prefill iteration over prompts of ``new_tokens[i]`` on ``cached_tokens[i]``."""
        if len(new_tokens) != len(cached_tokens) or not new_tokens:
            raise ValueError("one cached count per prompt, and at least one prompt")
        tokens = int(sum(new_tokens))
        out = StepBreakdown()
        self._layer_linear(out, tokens, graph=False)
        attention = self._prefill_attention_s(new_tokens, cached_tokens)
        out.attention_s += attention
        out.parts["attention"] = attention
        out.kernels += 1
        self._scale_layers(out)
        self._head(out, tokens, len(new_tokens), graph=False)
        return out

    def decode(self, batch_size: int, context_tokens: float) -> StepBreakdown:
        """One decode iteration: ``batch_size`` sequences whose contexts sum to ``context_tokens``."""
        if batch_size < 1:
            raise ValueError("decode batch_size must be >= 1")
        s = self.shard
        out = StepBreakdown()
        self._layer_linear(out, batch_size, graph=True)
        mean_context = max(context_tokens / batch_size, 1.0)
        attention = self.db.generation_attention_s(
            batch_size, mean_context, s.num_heads, s.num_kv_heads, s.head_dim, self.kv_dtype
        )
        out.attention_s += attention
        out.parts["attention"] = attention
        out.kernels += 1
        self._scale_layers(out)
        self._head(out, batch_size, batch_size, graph=True)
        return out

    def _scale_layers(self, out: StepBreakdown) -> None:
        """The per-layer sums so far, times the layer count."""
        layers = self.shard.num_layers
        out.gemm_s *= layers
        out.attention_s *= layers
        out.small_ops_s *= layers
        out.allreduce_s *= layers
        out.kernels *= layers
        out.parts = {k: v * layers for k, v in out.parts.items()}


#: Per-call latency of one expert dispatch or combine when no all-to-all table is measured
#: (the link model; the same per-call figure the modelled all-reduce uses).
LINK_CALL_LATENCY_S = 1.0e-5


def _window_pairs(new: float, cached: float, window: float) -> float:
    """Causal (query, key) pairs of ``new`` tokens on ``cached`` when each query sees at most
    the last ``window`` positions (itself included)."""
    first, last = cached + 1.0, cached + new
    if last <= window:
        return new * cached + new * (new + 1.0) / 2.0
    full = max(0.0, min(last, window) - first + 1.0)  # queries that still see every earlier key
    start = first
    pairs = (start + start + full - 1.0) * full / 2.0 if full > 0 else 0.0
    return pairs + (new - full) * window


def _isl_of_pairs(pairs: float) -> float:
    """The prompt length with ``pairs`` causal (query, key) pairs and no prefix."""
    return (math.sqrt(1.0 + 8.0 * pairs) - 1.0) / 2.0


class MoEStepComposer(StepComposer):
    """Iteration times of one instance of a mixture-of-experts and/or latent-attention model
    (tensor parallelism ``tp`` per attention rank, ``dp`` attention data-parallel ranks,
    experts spread ``ep`` ways), composed from measured kernels.

    The iteration's arguments are the **whole instance's**: every prompt or sequence of all its
    ranks. Requests are spread evenly over the ranks, and a step lasts as long as its busiest
    rank: in prefill ``P`` prompts of ``T`` tokens keep ``min(dp, P)`` ranks busy with
    ``T / min(dp, P)`` tokens each; in decode each rank has ``B / dp`` sequences (rounded up).
    Per layer of one GPU:

    ======================  ======================================================================
    op                      time
    ======================  ======================================================================
    attention projections   grouped-query: QKV and output GEMMs of the rank's tokens (as the dense
                            model); latent (MLA): fused ``q_a``/``kv_a`` GEMM, ``q_b``, in prefill
                            the ``kv_b`` up-projection of new tokens (a cached prefix's with its
                            prompt's attention), in decode the
                            ``mla_gen_pre``/``mla_gen_post`` batched matmuls, output GEMM
    attention               the rank's prompts / sequences: ``context_attention`` /
                            ``generation_attention`` of the shard's heads, or ``context_mla`` /
                            ``generation_mla``; sliding-window layers at the length with the same
                            (query, key) pairs or KV read as the window allows
    dense MLP               the first ``dense_layers`` layers: gate/up and down GEMMs
    router                  GEMM ``m = tokens, n = experts, k = hidden`` (BF16)
    routed experts          ``moe_perf`` at the instance's tokens (every rank's tokens enter the
                            layer), ``moe_tp = tp x dp / ep``, ``moe_ep = ep``, the named expert
                            load imbalance (``distribution``)
    shared experts          gate/up and down GEMMs of the rank's tokens, split over ``tp``
    communication           ``tp > 1``: an all-reduce after attention, and after the MLP (pure TP);
                            ``dp > 1`` or ``ep > 1``: expert dispatch and combine, each GPU
                            receiving its experts' share of the instance's tokens -- NCCL
                            all-to-all from the database where it is measured, else the link
                            model (bytes over the GPU's NVLink bandwidth plus a per-call latency)
    ======================  ======================================================================

    Small ops (norms, rotary, KV writes, activation, quantisation) are timed as in
    :class:`StepComposer`; the embedding, final norm and LM head are the rank's.
    """

    def __init__(
        self,
        db: KernelDatabase,
        model: ModelShape,
        tp: int,
        dp: int = 1,
        ep: int = 1,
        weights: str = "bf16",
        kv_cache: str = "bf16",
        distribution: str = DEFAULT_MOE_DISTRIBUTION,
        link_bandwidth_bytes_per_s: float | None = None,
    ) -> None:
        shard = ShardShape.of(model, tp, dp, ep)
        super().__init__(db, shard, weights, kv_cache, qk_norm=model.qk_norm)
        self.model, self.tp, self.dp, self.ep = model, tp, dp, ep
        self.moe_tp = tp * dp // ep
        self.gpus = tp * dp
        experts = model.expert_format or weights
        if model.moe is not None and experts not in MOE_DTYPES:
            raise ValueError(f"unknown expert precision '{experts}'")
        self.moe_dtype = MOE_DTYPES[experts] if model.moe is not None else ""
        self.distribution = distribution
        self.use_alltoall = db.has_alltoall
        if (dp > 1 or ep > 1) and model.moe is not None and not self.use_alltoall and not link_bandwidth_bytes_per_s:
            raise ValueError("expert dispatch needs an all-to-all table or the GPU's link bandwidth")
        self.link_bandwidth = float(link_bandwidth_bytes_per_s or 0.0)
        #: How the dispatch/combine communication is timed (for the import's report).
        self.dispatch_source = (
            "none (pure tensor parallelism: all-reduce)" if (dp == 1 and ep == 1) or model.moe is None
            else "measured: NCCL all-to-all table" if self.use_alltoall
            else "modelled: link (bytes / intra-node bandwidth + per-call latency), no all-to-all table"
        )
        # FP8 latent-attention matmuls with FP8 weights, where the framework's table has them.
        fp8_bmm = model.mla is not None and weights != "bf16" and "fp8" in db.mla_bmm_dtypes()
        self.bmm_dtype = "fp8" if fp8_bmm else "bfloat16"

    def moe_token_counts(self) -> list[int]:
        """The token counts the MoE table measures for this model and parallelism."""
        moe = self.model.moe
        assert moe is not None
        return self.db.moe_token_counts(self.shard.hidden_size, moe.expert_intermediate_size,
                                        moe.experts_per_token, moe.experts, self.moe_dtype)

    # -- per-rank work -------------------------------------------------------------------------
    def _prefill_ranks(self, prompts: int) -> int:
        return max(1, min(self.dp, prompts))

    def _add_gemm(self, out: StepBreakdown, name: str, seconds: float, layers: float) -> None:
        out.gemm_s += seconds * layers
        out.parts[name] = out.parts.get(name, 0.0) + seconds * layers
        out.kernels += int(layers)

    def _attention_projections(self, out: StepBreakdown, tokens: int, decode: bool) -> None:
        """Every layer's attention projections, small ops and TP all-reduce for ``tokens`` rows."""
        m, s, db, dt = self.model, self.shard, self.db, self.gemm_dtype
        h, a, layers = s.hidden_size, ACTIVATION_BYTES, m.num_layers
        small: list[float] = [4.0 * h * a, 4.0 * h * a]  # residual add + RMSNorm before attention and MLP
        if m.mla is None:
            self._add_gemm(out, "qkv", db.gemm_s(tokens, self._q + 2 * self._kv, h, dt), layers)
            self._add_gemm(out, "o_proj", db.gemm_s(tokens, h, self._q, dt), layers)
            small += [2.0 * (self._q + self._kv) * a, 2.0 * self._kv * (a + self.kv_element_bytes)]
            if self.qk_norm:
                small.append(2.0 * (self._q + self._kv) * a)
            quantised_inputs = h + self._q
        else:
            mla, heads = m.mla, s.num_heads
            qk = mla.qk_nope_head_dim + mla.qk_rope_head_dim
            latent = mla.kv_lora_rank + mla.qk_rope_head_dim
            if mla.q_lora_rank:
                self._add_gemm(out, "qkv_a", db.gemm_s(tokens, mla.q_lora_rank + latent, h, dt), layers)
                self._add_gemm(out, "q_b", db.gemm_s(tokens, heads * qk, mla.q_lora_rank, dt), layers)
                small.append(2.0 * mla.q_lora_rank * a)  # q_a norm
            else:
                self._add_gemm(out, "qkv_a", db.gemm_s(tokens, heads * qk + latent, h, dt), layers)
            small += [2.0 * mla.kv_lora_rank * a, 2.0 * heads * qk * a, latent * (a + self.kv_element_bytes)]
            if decode:
                pre = db.mla_bmm_s("mla_gen_pre", tokens, heads, self.bmm_dtype)
                post = db.mla_bmm_s("mla_gen_post", tokens, heads, self.bmm_dtype)
                self._add_gemm(out, "mla_bmm", pre + post, layers)
                out.kernels += layers
            else:
                # The new tokens' keys and values; a cached prefix's are up-projected with its
                # prompt's attention (:meth:`_prompt_attention_s`).
                up = db.gemm_s(tokens, heads * (mla.qk_nope_head_dim + mla.v_head_dim), mla.kv_lora_rank, dt)
                self._add_gemm(out, "kv_b", up, layers)
            self._add_gemm(out, "o_proj", db.gemm_s(tokens, h, heads * mla.v_head_dim, dt), layers)
            quantised_inputs = h + heads * mla.v_head_dim
        if self.weights in QUANTISED_ACTIVATION_BYTES:
            small.append(quantised_inputs * (a + QUANTISED_ACTIVATION_BYTES[self.weights]))
        out.small_ops_s += layers * sum(self._small(tokens * b) for b in small)
        out.kernels += layers * len(small)
        if self.tp > 1:
            out.allreduce_s += layers * db.allreduce_s(self.tp, tokens * h, decode)
            out.kernels += layers

    def _mlp(self, out: StepBreakdown, tokens: int, instance_tokens: int, decode: bool) -> None:
        """Every layer's MLP: the dense first layers, the MoE layers (router, routed and shared
        experts, dispatch and combine)."""
        m, s, db, dt = self.model, self.shard, self.db, self.gemm_dtype
        h, a = s.hidden_size, ACTIVATION_BYTES
        quant = QUANTISED_ACTIVATION_BYTES.get(self.weights)
        moe = m.moe
        dense_layers = m.num_layers if moe is None else moe.dense_layers
        if dense_layers:
            i = m.intermediate_size // self.tp
            self._add_gemm(out, "gate_up", db.gemm_s(tokens, 2 * i, h, dt), dense_layers)
            self._add_gemm(out, "down", db.gemm_s(tokens, h, i, dt), dense_layers)
            small = [3.0 * i * a] + ([(h + i) * (a + quant)] if quant else [])
            out.small_ops_s += dense_layers * sum(self._small(tokens * b) for b in small)
            out.kernels += dense_layers * len(small)
            if self.tp > 1:
                out.allreduce_s += dense_layers * db.allreduce_s(self.tp, tokens * h, decode)
                out.kernels += dense_layers
        if moe is None:
            return
        layers = m.moe_layers
        self._add_gemm(out, "router", db.gemm_s(tokens, moe.experts, h, "bfloat16"), layers)
        routed = db.moe_s(
            instance_tokens, h, moe.expert_intermediate_size, moe.experts_per_token, moe.experts,
            self.moe_tp, self.ep, self.moe_dtype, self.distribution,
        )
        self._add_gemm(out, "experts", routed, layers)
        small = [tokens * moe.experts * 4.0 * 2.0]  # router softmax and top-k over FP32 logits
        if moe.shared_experts:
            i = moe.shared_experts * moe.expert_intermediate_size // self.tp
            self._add_gemm(out, "shared_experts", db.gemm_s(tokens, 2 * i, h, dt) + db.gemm_s(tokens, h, i, dt), layers)
            out.kernels += layers
            small.append(tokens * 3.0 * i * a)
            if quant:
                small.append(tokens * (h + i) * (a + quant))
        out.small_ops_s += layers * sum(self._small(b) for b in small)
        out.kernels += layers * len(small)
        if self.dp == 1 and self.ep == 1:
            if self.tp > 1:
                out.allreduce_s += layers * db.allreduce_s(self.tp, tokens * h, decode)
                out.kernels += layers
            return
        comm = 2.0 * self._dispatch_s(instance_tokens)
        if moe.shared_experts and self.tp > 1:
            comm += db.allreduce_s(self.tp, tokens * h, decode)
        out.allreduce_s += layers * comm
        out.parts["dispatch_combine"] = out.parts.get("dispatch_combine", 0.0) + layers * comm
        out.kernels += 2 * layers

    def _dispatch_s(self, instance_tokens: int) -> float:
        """One expert dispatch (or combine): each GPU receives the hidden states of the tokens
        routed to its experts, ``tokens x min(topk, ep) / ep`` of them (all tokens when the
        experts are not split, ``ep = 1``), less its own share."""
        moe = self.model.moe
        assert moe is not None
        h = self.shard.hidden_size
        fanout = min(moe.experts_per_token, self.ep) / self.ep
        elements = instance_tokens * fanout * h * (self.gpus - 1) / self.gpus
        if self.use_alltoall:
            return self.db.alltoall_s(self.gpus, elements)
        return elements * ACTIVATION_BYTES / self.link_bandwidth + LINK_CALL_LATENCY_S

    # -- attention -------------------------------------------------------------------------------
    def _prompt_attention_s(self, n: float, c: float, batch: int, window: float | None) -> float:
        """One prompt's share of a layer's attention over ``batch`` prompts of its rank."""
        s, db, m = self.shard, self.db, self.model
        if window is not None:
            pairs = _window_pairs(n, c, window)
            self.db.extrapolated["sliding_window_equivalent"] += 1
            read_len = min(c + n, window)
        else:
            pairs = n * c + n * (n + 1) / 2.0
            read_len = c + n
        isl_eq = _isl_of_pairs(pairs)
        if m.mla is not None:
            t = db.context_mla_s(batch, isl_eq, s.num_heads, self.kv_dtype) / batch
            if c > 0:
                t = max(t, db.generation_mla_s(batch, read_len, s.num_heads, self.kv_dtype) / batch)
                # Keys and values of the cached prefix, up-projected from its latent.
                mla = m.mla
                t += db.gemm_s(int(min(c, read_len)), s.num_heads * (mla.qk_nope_head_dim + mla.v_head_dim),
                               mla.kv_lora_rank, self.gemm_dtype)
            return t
        t = db.context_attention_s(batch, isl_eq, s.num_heads, s.num_kv_heads, s.head_dim, self.kv_dtype) / batch
        if c > 0:
            read = db.generation_attention_s(batch, read_len, s.num_heads, s.num_kv_heads, s.head_dim, self.kv_dtype)
            t = max(t, read / batch)
        return t

    def _layer_kinds(self) -> list[tuple[int, float | None]]:
        """``(layers, window)`` of the full-attention and sliding-window layers."""
        m = self.model
        kinds: list[tuple[int, float | None]] = [(m.full_attention_layers, None)]
        if m.sliding_window_layers and m.sliding_window_tokens:
            kinds.append((m.sliding_window_layers, float(m.sliding_window_tokens)))
        return [(n, w) for n, w in kinds if n > 0]

    def _decode_attention_s(self, batch: int, mean_context: float, window: float | None) -> float:
        s, db = self.shard, self.db
        ctx = mean_context if window is None else min(mean_context, window)
        if window is not None:
            db.extrapolated["sliding_window_equivalent"] += 1
        if self.model.mla is not None:
            return db.generation_mla_s(batch, ctx, s.num_heads, self.kv_dtype)
        return db.generation_attention_s(batch, ctx, s.num_heads, s.num_kv_heads, s.head_dim, self.kv_dtype)

    # -- iterations ------------------------------------------------------------------------------
    def prefill(self, new_tokens: Sequence[int], cached_tokens: Sequence[int]) -> StepBreakdown:
        """One prefill iteration of the instance over prompts ``new_tokens[i]`` on ``cached_tokens[i]``."""
        if len(new_tokens) != len(cached_tokens) or not new_tokens:
            raise ValueError("one cached count per prompt, and at least one prompt")
        prompts = len(new_tokens)
        ranks = self._prefill_ranks(prompts)
        total = int(sum(new_tokens))
        tokens = int(math.ceil(total / ranks))
        rank_prompts = int(math.ceil(prompts / ranks))
        out = StepBreakdown()
        self._attention_projections(out, tokens, decode=False)
        self._mlp(out, tokens, total, decode=False)
        attention = 0.0
        for layers, window in self._layer_kinds():
            memo: dict[tuple[int, int], float] = {}
            share_sum = 0.0
            for n, c in zip(new_tokens, cached_tokens, strict=True):
                key = (int(n), int(c))
                if key not in memo:
                    memo[key] = self._prompt_attention_s(float(n), float(c), rank_prompts, window)
                share_sum += memo[key]
            attention += layers * share_sum / ranks
        out.attention_s += attention
        out.parts["attention"] = attention
        out.kernels += self.model.num_layers
        self._head(out, tokens, rank_prompts, graph=False)
        return out

    def decode(self, batch_size: int, context_tokens: float) -> StepBreakdown:
        """One decode iteration of the instance: ``batch_size`` sequences (all ranks) whose
        contexts sum to ``context_tokens``."""
        if batch_size < 1:
            raise ValueError("decode batch_size must be >= 1")
        rank_batch = int(math.ceil(batch_size / self.dp))
        out = StepBreakdown()
        self._attention_projections(out, rank_batch, decode=True)
        self._mlp(out, rank_batch, batch_size, decode=True)
        mean_context = max(context_tokens / batch_size, 1.0)
        attention = sum(layers * self._decode_attention_s(rank_batch, mean_context, window)
                        for layers, window in self._layer_kinds())
        out.attention_s += attention
        out.parts["attention"] = attention
        out.kernels += self.model.num_layers
        self._head(out, rank_batch, rank_batch, graph=True)
        return out
