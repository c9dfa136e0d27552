"""The ``components`` predictor: iteration times as the sum of measured parts, tabulated.

A profile imported from a kernel database (:mod:`simdisagg.kerneldb`) records, for every
composed iteration, its time by op family. An iteration's kernels split into parts that each
depend on few variables:

* prefill, ``T`` new tokens in ``P`` prompts (``n_i`` new on ``c_i`` cached each)::

      t = linear(T) + head(P) + sum_i attention(n_i, c_i, P)

  (with attention data parallelism over ``dp`` ranks, ``linear`` also depends on how many
  ranks the ``P`` prompts keep busy, ``min(dp, P)``, and is tabulated per such count)

  ``linear`` is every GEMM, small op and all-reduce of the layers (they see the batch as ``T``
  rows); ``head`` the LM head, logits gather and sampling of the ``P`` last tokens;
  ``attention`` one prompt's share of the batch's attention kernel.
* decode, ``B`` sequences with total context ``C``::

      t = linear(B) + attention(B, C / B)

The fit tabulates each part from the samples: ``linear`` and ``head`` over every distinct
token or prompt count sampled (the import samples every size the GEMM tables measure, so the
GEMM tile steps are kept), ``attention`` over the rectilinear grid of the import. Between
samples, log-space linear (multilinear for the grids); beyond the largest sample, the physical
scaling of the part: linear in tokens or prompts; prefill attention by causal (query, key)
pairs past the longest prompt and linear in the prefix past the longest prefix; decode
attention linear in context, and proportional to batch past the largest batch. These are the
composition's own rules (:data:`simdisagg.kerneldb.tables.EXTRAPOLATIONS`), so a table and its
samples agree wherever both exist.

Evaluation is in plain floats: a few bisections and a dozen multiplications per call.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any


class Curve:
    """A positive function of one positive size, log-log linear between samples, linear
    (slope of the last two samples) above the last one, constant below the first."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        pairs = sorted({float(x): float(y) for x, y in zip(xs, ys, strict=True)}.items())
        if not pairs or any(x <= 0 or y <= 0 for x, y in pairs):
            raise ValueError("a curve needs positive samples")
        self.xs = [p[0] for p in pairs]
        self.ys = [p[1] for p in pairs]
        self._lx = [math.log(x) for x in self.xs]
        self._ly = [math.log(y) for y in self.ys]
        self._tail = (self.ys[-1] - self.ys[-2]) / (self.xs[-1] - self.xs[-2]) if len(self.xs) > 1 else 0.0
        self._tail = max(self._tail, 0.0)

    def __call__(self, x: float) -> float:
        xs = self.xs
        if x <= xs[0]:
            return self.ys[0]
        if x >= xs[-1]:
            return self.ys[-1] + self._tail * (x - xs[-1])
        j = bisect.bisect_right(xs, x) - 1
        w = (math.log(x) - self._lx[j]) / (self._lx[j + 1] - self._lx[j])
        return math.exp(self._ly[j] + w * (self._ly[j + 1] - self._ly[j]))

    def to_dict(self) -> dict[str, list[float]]:
        """Samples, for ``fit.json``."""
        return {"x": self.xs, "y": self.ys}


class Grid:
    """A positive function on a rectilinear grid, multilinear in log coordinates (coordinates
    are ``axis + offset`` so that zero can be an axis value), clamped to the grid."""

    def __init__(self, axes: Sequence[Sequence[float]], values: Sequence[Any], offsets: Sequence[float]) -> None:
        self.axes = [[float(v) for v in axis] for axis in axes]
        self.offsets = [float(o) for o in offsets]
        self.values = values
        self._log_axes = [[math.log(v + o) for v in axis] for axis, o in zip(self.axes, self.offsets, strict=True)]
        flat: list[float] = []
        _flatten_logs(values, len(self.axes), flat)
        self._flat = flat
        sizes = [len(a) for a in self.axes]
        if math.prod(sizes) != len(flat):
            raise ValueError("grid values do not match the axes")
        strides = [1] * len(sizes)
        for d in range(len(sizes) - 2, -1, -1):
            strides[d] = strides[d + 1] * sizes[d + 1]
        self._strides = strides
        if len(sizes) not in (2, 3):
            raise ValueError(f"grids of {len(sizes)} dimensions are not supported (2 or 3)")

    def _locate(self, d: int, x: float) -> tuple[int, float]:
        axis = self.axes[d]
        if len(axis) == 1 or x <= axis[0]:
            return 0, 0.0
        if x >= axis[-1]:
            return len(axis) - 2, 1.0
        j = bisect.bisect_right(axis, x) - 1
        log_axis = self._log_axes[d]
        return j, (math.log(x + self.offsets[d]) - log_axis[j]) / (log_axis[j + 1] - log_axis[j])

    def log_at(self, point: Sequence[float]) -> float:
        """``log`` of the value at ``point`` (each coordinate clamped to its axis)."""
        flat = self._flat
        strides = self._strides
        if len(point) == 2:
            j0, f0 = self._locate(0, point[0])
            j1, f1 = self._locate(1, point[1])
            base = j0 * strides[0] + j1
            s0 = strides[0] if len(self.axes[0]) > 1 else 0
            s1 = 1 if len(self.axes[1]) > 1 else 0
            lo = flat[base] * (1.0 - f1) + flat[base + s1] * f1
            hi = flat[base + s0] * (1.0 - f1) + flat[base + s0 + s1] * f1
            return lo * (1.0 - f0) + hi * f0
        if len(point) == 3:
            j0, f0 = self._locate(0, point[0])
            j1, f1 = self._locate(1, point[1])
            j2, f2 = self._locate(2, point[2])
            base = j0 * strides[0] + j1 * strides[1] + j2
            s0 = strides[0] if len(self.axes[0]) > 1 else 0
            s1 = strides[1] if len(self.axes[1]) > 1 else 0
            s2 = 1 if len(self.axes[2]) > 1 else 0
            g2 = 1.0 - f2
            a = flat[base] * g2 + flat[base + s2] * f2
            b = flat[base + s1] * g2 + flat[base + s1 + s2] * f2
            c = flat[base + s0] * g2 + flat[base + s0 + s2] * f2
            e = flat[base + s0 + s1] * g2 + flat[base + s0 + s1 + s2] * f2
            g1 = 1.0 - f1
            return (a * g1 + b * f1) * (1.0 - f0) + (c * g1 + e * f1) * f0
        raise ValueError(f"grids of {len(point)} dimensions are not supported (2 or 3)")

    def __call__(self, point: Sequence[float]) -> float:
        return math.exp(self.log_at(point))


def _flatten_logs(values: Any, depth: int, out: list[float]) -> None:
    if depth == 0:
        value = float(values)
        if value <= 0:
            raise ValueError("grid values must be positive")
        out.append(math.log(value))
        return
    for v in values:
        _flatten_logs(v, depth - 1, out)


#: Prompt-attention shares remembered before the memo is cleared (bounded memory).
ATTENTION_CACHE_SIZE = 65536


class ComponentsModel:
    """Runtime side of a ``components`` fit (see module docstring); times in seconds."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        p, d = spec["prefill"], spec["decode"]
        self.prefill_linear = Curve(p["linear"]["x"], p["linear"]["y"])
        #: Attention data-parallel ranks of the instance (1: one rank).
        self.dp = int(spec.get("dp", 1))
        by_ranks = p.get("linear_by_ranks")
        self._rank_counts: list[float] = []
        self._rank_curves: list[Curve] = []
        if by_ranks:
            self._rank_counts = [float(r) for r in by_ranks["ranks"]]
            self._rank_curves = [Curve(c["x"], c["y"]) for c in by_ranks["curves"]]
        self.prefill_head = Curve(p["head"]["x"], p["head"]["y"])
        att = p["attention"]
        self.prefill_attention = Grid(
            [att["new_tokens"], att["prompts"], att["cached_tokens"]], att["seconds"], (0.0, 0.0, 1.0)
        )
        self._max_new = float(att["new_tokens"][-1])
        self._cached_axis = [float(c) for c in att["cached_tokens"]]
        self.decode_linear = Curve(d["linear"]["x"], d["linear"]["y"])
        datt = d["attention"]
        self.decode_attention = Grid([datt["batch_size"], datt["mean_context"]], datt["seconds"], (0.0, 0.0))
        self._max_batch = float(datt["batch_size"][-1])
        self._ctx_axis = [float(c) for c in datt["mean_context"]]
        # Prompt lengths repeat (fixed-length benchmarks, agent loops): remember recent shares.
        self._attention_cache: dict[tuple[float, float, float], float] = {}

    # -- prefill -----------------------------------------------------------------------------
    def prefill_linear_s(self, tokens: float, prompts: float) -> float:
        """The per-token part of an iteration of ``tokens`` tokens in ``prompts`` sequences.

        With attention data parallelism (``dp > 1``) the sequences are spread over
        ``min(dp, prompts)`` ranks and each rank's layers see its share of the tokens, so the
        part is tabulated per count of busy ranks (log-linear between counts)."""
        if not self._rank_curves:
            return self.prefill_linear(tokens)
        ranks = min(float(self.dp), max(float(prompts), 1.0))
        counts = self._rank_counts
        if ranks <= counts[0]:
            return self._rank_curves[0](tokens)
        if ranks >= counts[-1]:
            return self._rank_curves[-1](tokens)
        j = bisect.bisect_right(counts, ranks) - 1
        lo, hi = self._rank_curves[j](tokens), self._rank_curves[j + 1](tokens)
        w = (math.log(ranks) - math.log(counts[j])) / (math.log(counts[j + 1]) - math.log(counts[j]))
        return math.exp(math.log(lo) + w * (math.log(hi) - math.log(lo)))

    def prompt_attention_s(self, new: float, cached: float, prompts: float) -> float:
        """One prompt's share of a prefill batch's attention (see module docstring)."""
        key = (new, cached, prompts)
        hit = self._attention_cache.get(key)
        if hit is not None:
            return hit
        if len(self._attention_cache) >= ATTENTION_CACHE_SIZE:
            self._attention_cache.clear()
        value = self._attention_cache[key] = self._prompt_attention_s(new, cached, prompts)
        return value

    def _prompt_attention_s(self, new: float, cached: float, prompts: float) -> float:
        grid = self.prefill_attention
        if new > self._max_new:
            # Past the longest sampled prompt: scale by causal (query, key) pairs.
            base = self._prompt_attention_s(self._max_new, cached, prompts)
            return base * (new * cached + new * (new + 1.0) / 2.0) / (
                self._max_new * cached + self._max_new * (self._max_new + 1.0) / 2.0
            )
        top = self._cached_axis[-1]
        if cached > top and len(self._cached_axis) > 1:
            # Past the longest sampled prefix: linear in the prefix (reading or attending to it).
            below = self._cached_axis[-2]
            t_top = grid((new, prompts, top))
            t_below = grid((new, prompts, below))
            return t_top + max(t_top - t_below, 0.0) / (top - below) * (cached - top)
        return grid((new, prompts, cached))

    def prefill_s(self, new_tokens: Sequence[float], cached_tokens: Sequence[float]) -> tuple[float, float, float]:
        """Seconds of one prefill iteration's kernels, its new tokens and its prompts."""
        tokens = 0.0
        prompts = len(new_tokens)
        if prompts == 0:
            return 0.0, 0.0, 0.0
        attention = 0.0
        p = float(prompts)
        seen: dict[tuple[float, float], float] = {}
        for n, c in zip(new_tokens, cached_tokens, strict=True):
            n, c = float(n), float(c)
            tokens += n
            key = (n, c)
            share = seen.get(key)
            if share is None:
                share = seen[key] = self.prompt_attention_s(n, c, p)
            attention += share
        if tokens == 0.0:
            return 0.0, 0.0, 0.0
        return self.prefill_linear_s(tokens, p) + self.prefill_head(p) + attention, tokens, p

    # -- decode ------------------------------------------------------------------------------
    def decode_attention_s(self, batch_size: float, mean_context: float) -> float:
        """One decode step's attention over ``batch_size`` sequences of ``mean_context`` tokens."""
        scale = 1.0
        if batch_size > self._max_batch:
            scale = batch_size / self._max_batch
            batch_size = self._max_batch
        top = self._ctx_axis[-1]
        grid = self.decode_attention
        if mean_context > top and len(self._ctx_axis) > 1:
            below = self._ctx_axis[-2]
            t_top = grid((batch_size, top))
            t_below = grid((batch_size, below))
            return scale * (t_top + max(t_top - t_below, 0.0) / (top - below) * (mean_context - top))
        return scale * grid((batch_size, mean_context))

    def decode_s(self, batch_size: float, context_tokens: float) -> float:
        """Seconds of one decode step's kernels."""
        b = float(batch_size)
        return self.decode_linear(b) + self.decode_attention_s(b, max(context_tokens / b, 1.0))

    @property
    def max_mean_context(self) -> float:
        """Longest sampled mean decode context."""
        return self._ctx_axis[-1]

    def decode_attention_slope_s(self, batch_size: float) -> float:
        """Seconds per token of total context past the longest sampled context."""
        scale = 1.0
        b = float(batch_size)
        if b > self._max_batch:
            scale, b = b / self._max_batch, self._max_batch
        if len(self._ctx_axis) < 2:
            return 0.0
        top, below = self._ctx_axis[-1], self._ctx_axis[-2]
        t_top = self.decode_attention((b, top))
        t_below = self.decode_attention((b, below))
        # The step's time per token of mean context, over the sequences: per token of total context.
        return scale * max(t_top - t_below, 0.0) / (top - below) / float(batch_size)
