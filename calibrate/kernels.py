"""The kernels calibrate times: one tensor-parallel shard of a Llama-style decoder, in torch.

One *iteration* is three parts, timed separately so a short stack of layers can stand for the
whole model:

1. ``embed`` -- embedding rows of the new tokens and the rotary cos/sin of their positions;
2. ``layers`` -- ``k`` decoder layers of the shard (RMSNorm, fused QKV GEMM, rotary embedding,
   KV-cache write, attention over each request's own KV, output GEMM, RMSNorm, fused gate/up
   GEMM, SiLU-and-multiply, down GEMM, residual adds);
3. ``head`` -- final RMSNorm of each prompt's last row, LM-head GEMM over the shard's vocabulary
   slice and greedy sampling (argmax).

The whole-model time is ``embed + layers * num_layers / k + head``. Every layer has its own
weights and KV cache, so a stack whose weights exceed the L2 cache several times leaves nothing
of a layer in L2 by the time it runs again.

Attention reads each sequence's own keys and values from a packed per-sequence KV buffer
(sequence ``i`` owns ``c_i + n_i`` consecutive slots; no padding to the longest):

* ``flash_varlen`` (CUDA): FlashAttention-2's variable-length kernel,
  ``torch.ops.aten._flash_attention_forward`` with cumulative sequence offsets, native GQA and a
  causal mask aligned to the bottom right (a cached prefix is visible to every new token);
  decode is the same kernel with one query per sequence;
* ``sdpa_per_sequence`` (CPU, or CUDA fallback): ``scaled_dot_product_attention`` once per
  sequence with ``enable_gqa`` and a lower-right causal mask. On a GPU this adds one launch per
  sequence and layer, which the fit's per-prompt term absorbs.

Weights are random normal bf16 scaled by ``1/sqrt(fan_in)`` (never zeros: zeros make tensor
cores and memory compression look faster than they are). Tensor-parallel collectives are not
run (one GPU); the cost model adds them as a modelled term.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from simdisagg.costmodel.fitted import ShardShape

ATTENTION_METHODS: tuple[str, ...] = ("flash_varlen", "sdpa_per_sequence")
RMS_EPS = 1e-5
ROPE_THETA = 500000.0


# -- model shard -----------------------------------------------------------------------------
@dataclass
class LayerWeights:
    """One decoder layer's weights and KV cache on one shard."""

    norm1: torch.Tensor
    w_qkv: torch.Tensor
    w_o: torch.Tensor
    norm2: torch.Tensor
    w_gate_up: torch.Tensor
    w_down: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor


class ShardStack:
    """``layers`` decoder layers of ``shard`` with random weights, a KV cache of
    ``kv_tokens`` slots per layer, the embedding and LM-head slices, and rotary tables."""

    def __init__(
        self,
        shard: ShardShape,
        layers: int,
        kv_tokens: int,
        max_position: int,
        device: torch.device,
        dtype: torch.dtype = torch.bfloat16,
        seed: int = 0,
    ) -> None:
        self.shard, self.device, self.dtype = shard, device, dtype
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        h, d = shard.hidden_size, shard.head_dim
        hq, hkv, inter = shard.num_heads, shard.num_kv_heads, shard.intermediate_size

        def rand(*shape: int, fan_in: int) -> torch.Tensor:
            t = torch.randn(shape, generator=gen, device=device, dtype=dtype)
            return t.mul_(fan_in**-0.5)

        def norm_weight() -> torch.Tensor:
            return 1.0 + 0.1 * torch.randn((h,), generator=gen, device=device, dtype=dtype)

        kv_slots = max(1, kv_tokens)
        self.layers: list[LayerWeights] = [
            LayerWeights(
                norm1=norm_weight(),
                w_qkv=rand((hq + 2 * hkv) * d, h, fan_in=h),
                w_o=rand(h, hq * d, fan_in=hq * d),
                norm2=norm_weight(),
                w_gate_up=rand(2 * inter, h, fan_in=h),
                w_down=rand(h, inter, fan_in=inter),
                k_cache=rand(kv_slots, hkv, d, fan_in=1),
                v_cache=rand(kv_slots, hkv, d, fan_in=1),
            )
            for _ in range(layers)
        ]
        self.embed = rand(shard.vocab_size, h, fan_in=1)
        self.final_norm = norm_weight()
        self.lm_head = rand(shard.vocab_size, h, fan_in=h)
        inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
        angles = torch.outer(torch.arange(max(1, max_position), device=device, dtype=torch.float32), inv_freq)
        self.cos_table = angles.cos().to(dtype)
        self.sin_table = angles.sin().to(dtype)
        self.scale = d**-0.5

    @property
    def layer_weight_bytes(self) -> int:
        """Bytes of the timed layers' weights (what one iteration streams through L2)."""
        w = self.layers[0]
        per = sum(t.numel() * t.element_size() for t in (w.norm1, w.w_qkv, w.w_o, w.norm2, w.w_gate_up, w.w_down))
        return per * len(self.layers)


# -- batches ---------------------------------------------------------------------------------
@dataclass
class Batch:
    """Index tensors of one iteration over sequences with ``new[i]`` tokens to compute on top
    of ``cached[i]`` tokens already in the KV cache (a decode step is ``new = 1`` per request)."""

    new: list[int]
    cached: list[int]
    tokens: torch.Tensor
    positions: torch.Tensor
    kv_slots: torch.Tensor
    last_rows: torch.Tensor
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    q_offsets: list[int]
    k_offsets: list[int]
    max_q: int
    max_k: int
    masks: list[Any] = field(default_factory=list)

    @property
    def total_q(self) -> int:
        """New tokens in the batch."""
        return self.q_offsets[-1]

    @property
    def total_k(self) -> int:
        """KV slots the batch's sequences occupy."""
        return self.k_offsets[-1]


def make_batch(
    new: Sequence[int], cached: Sequence[int], vocab_size: int, device: torch.device, seed: int = 0
) -> Batch:
    """Pack sequences back to back: sequence ``i`` owns KV slots ``[k_i, k_i + c_i + n_i)`` and
    its new tokens are written at ``k_i + c_i ...``."""
    new, cached = [int(v) for v in new], [int(v) for v in cached]
    q_off, k_off = [0], [0]
    positions, slots, masks = [], [], []
    for n, c in zip(new, cached, strict=True):
        if n < 1 or c < 0:
            raise ValueError("each sequence needs >= 1 new token and >= 0 cached tokens")
        positions.append(np.arange(c, c + n))
        slots.append(k_off[-1] + c + np.arange(n))
        q_off.append(q_off[-1] + n)
        k_off.append(k_off[-1] + c + n)
        # Explicit lower-right causal masks (torch.nn.attention.bias would import torch._dynamo,
        # seconds of start-up); only the per-sequence SDPA path uses them.
        masks.append(None if n == 1 or c == 0 else _lower_right_mask(n, c, device))
    gen = np.random.default_rng(seed)

    def as_long(values: Any) -> torch.Tensor:
        return torch.tensor(values, device=device, dtype=torch.int64)

    def as_int(values: Any) -> torch.Tensor:
        return torch.tensor(values, device=device, dtype=torch.int32)

    return Batch(
        new=new,
        cached=cached,
        tokens=as_long(gen.integers(0, vocab_size, q_off[-1])),
        positions=as_long(np.concatenate(positions)),
        kv_slots=as_long(np.concatenate(slots)),
        last_rows=as_long(np.array(q_off[1:]) - 1),
        cu_q=as_int(q_off),
        cu_k=as_int(k_off),
        q_offsets=q_off,
        k_offsets=k_off,
        max_q=max(new),
        max_k=max(n + c for n, c in zip(new, cached, strict=True)),
        masks=masks,
    )


def _lower_right_mask(n: int, c: int, device: torch.device) -> torch.Tensor:
    """Boolean (n, c + n) mask: new token ``i`` sees the ``c`` cached tokens and new ``0..i``."""
    keys = torch.arange(c + n, device=device)[None, :]
    return keys <= (c + torch.arange(n, device=device))[:, None]


# -- attention ---------------------------------------------------------------------------------
def attention(
    method: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: Batch, scale: float
) -> torch.Tensor:
    """Causal attention of each sequence's new queries over its own packed keys/values.

    ``q``: (total_q, Hq, d); ``k``, ``v``: (total_k, Hkv, d). Returns (total_q, Hq, d)."""
    if method == "flash_varlen":
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, batch.cu_q, batch.cu_k, batch.max_q, batch.max_k, 0.0, batch.max_q > 1, False, scale=scale
        )
        result: torch.Tensor = out[0]
        return result
    out = torch.empty_like(q)
    for i, (n, c) in enumerate(zip(batch.new, batch.cached, strict=True)):
        q0, q1 = batch.q_offsets[i], batch.q_offsets[i + 1]
        k0, k1 = batch.k_offsets[i], batch.k_offsets[i + 1]
        qi = q[q0:q1].transpose(0, 1).unsqueeze(0)
        ki = k[k0:k1].transpose(0, 1).unsqueeze(0)
        vi = v[k0:k1].transpose(0, 1).unsqueeze(0)
        mask = batch.masks[i]
        oi = F.scaled_dot_product_attention(
            qi, ki, vi, attn_mask=mask, is_causal=(c == 0 and n > 1), scale=scale, enable_gqa=True
        )
        out[q0:q1] = oi.squeeze(0).transpose(0, 1)
    return out


def _reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: Batch, scale: float) -> torch.Tensor:
    """Float32 attention with explicit masks, for the self-check."""
    outs = []
    rep = q.shape[1] // k.shape[1]
    for i, (n, c) in enumerate(zip(batch.new, batch.cached, strict=True)):
        q0, q1 = batch.q_offsets[i], batch.q_offsets[i + 1]
        k0, k1 = batch.k_offsets[i], batch.k_offsets[i + 1]
        qi = q[q0:q1].float().transpose(0, 1)
        ki = k[k0:k1].float().repeat_interleave(rep, dim=1).transpose(0, 1)
        vi = v[k0:k1].float().repeat_interleave(rep, dim=1).transpose(0, 1)
        scores = qi @ ki.transpose(-1, -2) * scale
        allowed = _lower_right_mask(n, c, q.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
        outs.append((scores.softmax(-1) @ vi).transpose(0, 1))
    return torch.cat(outs)


def choose_attention(device: torch.device, shard: ShardShape, dtype: torch.dtype = torch.bfloat16) -> tuple[str, str]:
    """The attention method to time, and why: ``flash_varlen`` on CUDA when it runs and agrees
    with a float32 reference on a batch with cached prefixes and GQA, else ``sdpa_per_sequence``."""
    if device.type != "cuda":
        return "sdpa_per_sequence", "no CUDA device: per-sequence SDPA"
    try:
        gen = torch.Generator(device=device)
        gen.manual_seed(1)
        batch = make_batch([5, 17, 1, 64], [0, 30, 12, 200], 16, device)
        hq, hkv, d = shard.num_heads, shard.num_kv_heads, shard.head_dim
        q = torch.randn(batch.total_q, hq, d, generator=gen, device=device, dtype=dtype)
        k = torch.randn(batch.total_k, hkv, d, generator=gen, device=device, dtype=dtype)
        v = torch.randn(batch.total_k, hkv, d, generator=gen, device=device, dtype=dtype)
        scale = d**-0.5
        ref = _reference_attention(q, k, v, batch, scale)
        got = attention("flash_varlen", q, k, v, batch, scale).float()
        err = float((got - ref).abs().max())
        sdpa_err = float((attention("sdpa_per_sequence", q, k, v, batch, scale).float() - ref).abs().max())
    except Exception as exc:  # noqa: BLE001 - any failure means: do not use this kernel
        return "sdpa_per_sequence", f"flash_varlen unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    if not err < 0.05:
        return "sdpa_per_sequence", f"flash_varlen disagrees with reference (max abs err {err:.3g})"
    return (
        "flash_varlen",
        f"flash_varlen matches float32 reference (max abs err {err:.2g}; per-sequence SDPA {sdpa_err:.2g})",
    )


# -- one iteration ---------------------------------------------------------------------------
def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Iteration:
    """Static buffers and the three timed parts of one iteration of ``stack`` over ``batch``
    (static so that CUDA graphs can capture each part)."""

    def __init__(self, stack: ShardStack, batch: Batch, method: str) -> None:
        s = stack.shard
        self.stack, self.batch, self.method = stack, batch, method
        if batch.total_k > stack.layers[0].k_cache.shape[0]:
            raise ValueError(f"batch needs {batch.total_k} KV slots, stack has {stack.layers[0].k_cache.shape[0]}")
        t, dev, dt = batch.total_q, stack.device, stack.dtype
        self.x0 = torch.empty(t, s.hidden_size, device=dev, dtype=dt)
        self.x1 = torch.empty(t, s.hidden_size, device=dev, dtype=dt)
        self.cos = torch.empty(t, s.head_dim // 2, device=dev, dtype=dt)
        self.sin = torch.empty(t, s.head_dim // 2, device=dev, dtype=dt)
        self.next_tokens = torch.empty(len(batch.new), device=dev, dtype=torch.int64)

    def embed(self) -> None:
        """Embedding rows and rotary factors of the new tokens."""
        b, st = self.batch, self.stack
        torch.index_select(st.embed, 0, b.tokens, out=self.x0)
        torch.index_select(st.cos_table, 0, b.positions, out=self.cos)
        torch.index_select(st.sin_table, 0, b.positions, out=self.sin)

    def layers(self) -> None:
        """The timed decoder layers."""
        st, b, s = self.stack, self.batch, self.stack.shard
        t, hq, hkv, d = b.total_q, s.num_heads, s.num_kv_heads, s.head_dim
        cos, sin = self.cos.unsqueeze(1), self.sin.unsqueeze(1)
        x = self.x0
        for w in st.layers:
            h = F.rms_norm(x, (s.hidden_size,), w.norm1, RMS_EPS)
            q, k, v = torch.split(F.linear(h, w.w_qkv), [hq * d, hkv * d, hkv * d], dim=-1)
            q = _rope(q.view(t, hq, d), cos, sin)
            k = _rope(k.view(t, hkv, d), cos, sin)
            w.k_cache.index_copy_(0, b.kv_slots, k)
            w.v_cache.index_copy_(0, b.kv_slots, v.view(t, hkv, d))
            o = attention(self.method, q, w.k_cache[: b.total_k], w.v_cache[: b.total_k], b, st.scale)
            x = x + F.linear(o.reshape(t, hq * d), w.w_o)
            h = F.rms_norm(x, (s.hidden_size,), w.norm2, RMS_EPS)
            gate, up = F.linear(h, w.w_gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w.w_down)
        self.x1.copy_(x)

    def head(self) -> None:
        """Final norm, LM head over the vocabulary shard and greedy sampling."""
        st, s = self.stack, self.stack.shard
        h = F.rms_norm(self.x1.index_select(0, self.batch.last_rows), (s.hidden_size,), st.final_norm, RMS_EPS)
        self.next_tokens.copy_(F.linear(h, st.lm_head).argmax(dim=-1))

    def parts(self, num_layers: int) -> list[tuple[str, float, Callable[[], None]]]:
        """``(name, scale, fn)`` of each part; whole-model time is ``sum(scale * part time)``."""
        return [
            ("embed", 1.0, self.embed),
            ("layers", num_layers / len(self.stack.layers), self.layers),
            ("head", 1.0, self.head),
        ]


def capture_graphs(
    parts: list[tuple[str, float, Callable[[], None]]],
) -> tuple[list[tuple[str, float, Callable[[], None]]], list[Any]]:
    """Capture each part into its own CUDA graph (one shared memory pool); returns parts that
    replay the graphs, and the objects to keep alive while they are used."""
    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            for _, _, fn in parts:
                fn()
    torch.cuda.current_stream().wait_stream(stream)
    pool = torch.cuda.graph_pool_handle()
    graphs, out = [], []
    for name, scale, fn in parts:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            fn()
        graphs.append(graph)
        out.append((name, scale, graph.replay))
    torch.cuda.synchronize()
    return out, graphs


# -- transfers -------------------------------------------------------------------------------
class Copier:
    """Copies of ``nbytes`` messages of one kind, rotating over buffers so that the source is
    not in L2 from the previous repetition (pools of at least ``rotate_bytes``)."""

    def __init__(self, kind: str, nbytes: int, device: torch.device, rotate_bytes: int) -> None:
        self.kind, self.nbytes = kind, nbytes
        # One tensor of n_buf rows: small messages rotate over a pool of ~rotate_bytes.
        n_buf = max(1, math.ceil(rotate_bytes / nbytes)) if device.type == "cuda" else 1
        self.n_buf = n_buf
        pinned = device.type == "cuda"
        u8 = torch.uint8
        if kind == "d2d":
            self.src = torch.randint(0, 255, (n_buf, nbytes), device=device, dtype=u8)
            self.dst = torch.empty((n_buf, nbytes), device=device, dtype=u8)
        elif kind == "h2d":
            # Host contents do not matter to a DMA copy; pinning, not filling, is what costs.
            self.src = torch.empty((n_buf, nbytes), dtype=u8, pin_memory=pinned)
            self.dst = torch.empty((n_buf, nbytes), device=device, dtype=u8)
        elif kind == "d2h":
            self.src = torch.randint(0, 255, (n_buf, nbytes), device=device, dtype=u8)
            self.dst = torch.empty((n_buf, nbytes), dtype=u8, pin_memory=pinned)
        else:
            raise ValueError(f"unknown transfer kind '{kind}'")
        self._i = 0

    def copy(self) -> None:
        """One copy (asynchronous on CUDA)."""
        i = self._i % self.n_buf
        self._i += 1
        self.dst[i].copy_(self.src[i], non_blocking=True)


# -- timing ----------------------------------------------------------------------------------
@dataclass
class PointTiming:
    """Per-repetition whole-model times of one point and their summary."""

    reps_s: np.ndarray
    part_medians_s: dict[str, float]
    power_w: float
    wall_s: float

    def summary(self) -> dict[str, float]:
        """median, p10, p90, mean, std (ddof=1), min in seconds."""
        r = self.reps_s
        return {
            "median_s": float(np.median(r)),
            "p10_s": float(np.percentile(r, 10)),
            "p90_s": float(np.percentile(r, 90)),
            "mean_s": float(r.mean()),
            "std_s": float(r.std(ddof=1)) if r.size > 1 else 0.0,
            "min_s": float(r.min()),
        }


def measure(
    parts: list[tuple[str, float, Callable[[], None]]],
    device: torch.device,
    *,
    warmup_reps: int,
    min_reps: int,
    max_reps: int,
    target_s: float,
    meter: Any,
) -> PointTiming:
    """Warm up, size the repetition count to about ``target_s`` of timed work, then time each
    part of every repetition: CUDA events on a GPU (no synchronisation between repetitions),
    ``time.perf_counter`` on the CPU (whose kernels are synchronous)."""
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(warmup_reps):
        for _, _, fn in parts:
            fn()
    sync()
    t0 = time.perf_counter()
    for _, _, fn in parts:
        fn()
    sync()
    estimate = max(time.perf_counter() - t0, 1e-7)
    n = int(min(max_reps, max(min_reps, math.ceil(target_s / estimate))))
    scales = np.array([scale for _, scale, _ in parts])
    times = np.empty((n, len(parts)))
    meter.start()
    wall0 = time.perf_counter()
    if cuda:
        events = [
            [torch.cuda.Event(enable_timing=True) for _ in range(len(parts) + 1)]  # type: ignore[no-untyped-call]
            for _ in range(n)
        ]
        for ev in events:
            ev[0].record()
            for j, (_, _, fn) in enumerate(parts):
                fn()
                ev[j + 1].record()
        sync()
        for i, ev in enumerate(events):
            for j in range(len(parts)):
                times[i, j] = ev[j].elapsed_time(ev[j + 1]) / 1e3
    else:
        for i in range(n):
            t_prev = time.perf_counter()
            for j, (_, _, fn) in enumerate(parts):
                fn()
                t_now = time.perf_counter()
                times[i, j] = t_now - t_prev
                t_prev = t_now
    wall = time.perf_counter() - wall0
    power = meter.stop()
    return PointTiming(
        reps_s=times @ scales,
        part_medians_s={name: float(np.median(times[:, j])) for j, (name, _, _) in enumerate(parts)},
        power_w=power,
        wall_s=wall,
    )
