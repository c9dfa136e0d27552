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
from simdisagg.kerneldb.tables import GEMM_DTYPES, KV_DTYPES, KernelDatabase

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
