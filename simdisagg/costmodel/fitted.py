"""Cost model fitted to measured kernels: step times read from a ``fit.json``.

``simdisagg calibrate`` times the real kernels of one tensor-parallel shard of a model on a GPU
and writes ``raw.csv``; ``simdisagg fit`` fits two candidate predictors per phase to it and keeps
the one that predicts better on held-out grid points (:mod:`simdisagg.fit`). This module is the
runtime side: it evaluates what ``fit.json`` holds.

**Physical terms** (linear, non-negative coefficients, one set per phase). For one iteration on
the shard (``L`` layers, per-shard weights; ``T`` new tokens in ``P`` prompts with ``Cc`` cached
tokens; a decode batch of ``B`` requests with total context ``C``)::

    prefill: t = a0 + a_gemm * gemm_flops + a_attn * attn_flops + a_kv * kv_bytes + a_p * P
      gemm_flops = 2 * L * layer_params * T + 2 * lm_head_params * P
      attn_flops = 4 * L * heads * head_dim * sum_i(n_i * c_i + n_i (n_i + 1) / 2)
      kv_bytes   = kv_bytes_per_token * (T + Cc)       (new KV written, cached KV read)
    decode:  t = a0 + a_gemm * gemm_flops + a_kv * kv_bytes
      gemm_flops = 2 * (L * layer_params + lm_head_params) * B
      kv_bytes   = kv_bytes_per_token * C              (each request reads its own KV)
    transfer: t = a0 + a_b * bytes

``a0`` holds the fixed per-iteration cost: launch overheads plus the part of the weight read
that no computation hides. Decode attention FLOPs are not a separate term: they are
proportional to ``C`` like the KV bytes, so the two cannot be told apart (decode attention is
memory-bound, and its cost sits in ``a_kv``).

**Interpolation** over the measured grid: the physical prediction times ``exp(r)``, where ``r``
is the log-residual ``log(measured / physical)`` interpolated piecewise-linearly in log
coordinates (Delaunay simplices; the nearest measured point outside their hull, so
extrapolation follows the physical terms). It reproduces every measured point exactly and
captures effects the linear terms cannot (tile quantisation, kernel switches).

**Tensor parallelism.** ``tp > 1`` shards are measured on one GPU, without their collectives.
Two all-reduces per layer of ``tokens * hidden * dtype`` bytes are added, ring algorithm over
the GPU's ``intra_node_bandwidth_bytes_per_s`` plus a per-call latency -- the same terms as the
roofline model. This part is *modelled*, not measured.
"""

from __future__ import annotations

import bisect
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simdisagg.costmodel.components import ComponentsModel
from simdisagg.errors import CalibrationError, ConfigError
from simdisagg.hardware import (
    GPUProfile,
    ModelShape,
    Parallelism,
    check_parallelism,
    instance_kv_memory,
)
from simdisagg.overheads import FrameworkOverheads, no_overheads

#: Version of the ``fit.json`` layout written by :mod:`simdisagg.fit` and read here.
FIT_SCHEMA_VERSION = 2

PREFILL_FEATURES: tuple[str, ...] = ("const", "gemm_flops", "attn_flops", "kv_bytes", "prompts")
DECODE_FEATURES: tuple[str, ...] = ("const", "gemm_flops", "kv_bytes")
TRANSFER_FEATURES: tuple[str, ...] = ("const", "bytes")

#: Unit of each physical coefficient (seconds per unit of its feature).
FEATURE_UNITS: dict[str, str] = {
    "const": "s",
    "gemm_flops": "s/FLOP",
    "attn_flops": "s/FLOP",
    "kv_bytes": "s/byte",
    "prompts": "s/prompt",
    "bytes": "s/byte",
}
#: Which hardware rate bounds each term; :mod:`simdisagg.derive` scales by it.
FEATURE_BOUND: dict[str, str] = {
    "const": "overhead",
    "gemm_flops": "compute",
    "attn_flops": "compute",
    "kv_bytes": "memory",
    "prompts": "overhead",
    "bytes": "memory",
}

#: Transfer kinds calibrate measures on one machine.
TRANSFER_KINDS: tuple[str, ...] = ("d2d", "h2d", "d2h")

#: Per-call latency of one all-reduce (the roofline model's assumption; modelled, not measured).
ALLREDUCE_LATENCY_S = 1.0e-5


# -- shapes ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ShardShape:
    """The slice of a model that one GPU holds under tensor parallelism of degree ``tp``.

    Heads, the MLP's intermediate size and the LM head's vocabulary rows are divided by ``tp``;
    KV heads too, but never below one (they are replicated when the model has fewer KV heads
    than ``tp``). The hidden size and the layer count are the model's.

    A mixture-of-experts or latent-attention model's shard also records its instance's
    attention data parallelism ``dp`` and expert parallelism ``ep``, the experts' precision
    when it differs from the other weights, and three figures the dense formulas would get
    wrong (zero for a dense model, whose properties follow from the fields above): the weights
    one GPU holds, the weights one token passes through per layer on one GPU (its routed
    experts, not all of them) and the KV one GPU stores per token of context.
    """

    model: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    dtype_bytes: int
    tp: int
    #: Bytes per weight parameter and per KV element at the serving precision.
    weight_bytes_per_param: float
    kv_bytes_per_element: float
    dp: int = 1
    ep: int = 1
    expert_format: str = ""
    weight_bytes_per_gpu: float = 0.0
    active_layer_params_per_gpu: float = 0.0
    kv_bytes_per_token_per_gpu: float = 0.0
    expert_weight_bytes_per_gpu: float = 0.0
    moe_experts: int = 0
    moe_experts_per_token: int = 0

    @classmethod
    def of(cls, model: ModelShape, tp: int, dp: int = 1, ep: int = 1) -> ShardShape:
        """The shard of ``model`` one GPU holds at tensor-parallel degree ``tp`` (per attention
        rank), ``dp`` attention data-parallel ranks and expert parallelism ``ep``."""
        check_parallelism(model, tp, dp=dp, ep=ep)
        extra: dict[str, Any] = {}
        if model.moe is not None or model.mla is not None:
            weights, kv_per_token = instance_kv_memory(model, Parallelism(tp, dp, ep))
            extra = {
                "dp": dp,
                "ep": ep,
                "expert_format": model.expert_format or "",
                "weight_bytes_per_gpu": float(weights),
                "active_layer_params_per_gpu": float(model.active_layer_params) / tp,
                "kv_bytes_per_token_per_gpu": float(kv_per_token) / tp,
                "expert_weight_bytes_per_gpu": model.expert_params_total * model.expert_bytes_per_param / (tp * dp),
                "moe_experts": model.moe.experts if model.moe else 0,
                "moe_experts_per_token": model.moe.experts_per_token if model.moe else 0,
            }
        return cls(
            model=model.name,
            num_layers=model.num_layers,
            hidden_size=model.hidden_size,
            num_heads=model.num_heads // tp,
            num_kv_heads=max(1, model.num_kv_heads // tp),
            head_dim=model.head_dim,
            intermediate_size=model.intermediate_size // tp,
            vocab_size=-(-model.vocab_size // tp),
            dtype_bytes=model.dtype_bytes,
            tp=tp,
            weight_bytes_per_param=float(model.weight_bytes_per_param or model.dtype_bytes),
            kv_bytes_per_element=float(model.kv_bytes_per_element or model.dtype_bytes),
            **extra,
        )

    @property
    def layer_params(self) -> float:
        """Weights of one layer's shard one token passes through: fused QKV, output projection,
        gated MLP (a MoE layer's routed and shared experts), two norms."""
        if self.active_layer_params_per_gpu > 0.0:
            return self.active_layer_params_per_gpu
        h, d = self.hidden_size, self.head_dim
        qkv = h * (self.num_heads + 2 * self.num_kv_heads) * d
        o = self.num_heads * d * h
        mlp = 3 * h * self.intermediate_size
        return qkv + o + mlp + 2 * h

    @property
    def lm_head_params(self) -> int:
        """The shard's slice of the output projection (vocabulary-parallel)."""
        return self.hidden_size * self.vocab_size

    @property
    def weight_bytes(self) -> float:
        """Bytes of weights read by every iteration: all layers plus the LM head (for a MoE
        model: every weight the GPU holds, all its experts)."""
        if self.weight_bytes_per_gpu > 0.0:
            return self.weight_bytes_per_gpu
        return float((self.num_layers * self.layer_params + self.lm_head_params) * self.weight_bytes_per_param)

    def read_weight_bytes(self, tokens: float) -> float:
        """Bytes of weights one iteration over ``tokens`` tokens reads on this GPU: all of them
        for a dense shard; of a MoE shard's experts only those some token is routed to, in
        expectation under uniform routing (``1 - (1 - k/E)^tokens`` of them)."""
        if self.moe_experts <= 0 or self.expert_weight_bytes_per_gpu <= 0.0:
            return self.weight_bytes
        touched = 1.0 - (1.0 - self.moe_experts_per_token / self.moe_experts) ** max(tokens, 1.0)
        return self.weight_bytes - self.expert_weight_bytes_per_gpu * (1.0 - touched)

    @property
    def kv_bytes_per_token_per_layer(self) -> float:
        """K and V of one token in one layer of the shard."""
        return 2.0 * self.num_kv_heads * self.head_dim * self.kv_bytes_per_element

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V of one token across all layers of the shard."""
        if self.kv_bytes_per_token_per_gpu > 0.0:
            return self.kv_bytes_per_token_per_gpu
        return self.num_layers * self.kv_bytes_per_token_per_layer

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping for ``fit.json`` / ``meta.yaml``."""
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardShape:
        """Inverse of :meth:`to_dict` (shards written before precisions were recorded are at
        their checkpoint's dtype)."""
        values = {name: data[name] for name in cls.__slots__ if name in data}
        values.setdefault("weight_bytes_per_param", float(data["dtype_bytes"]))
        values.setdefault("kv_bytes_per_element", float(data["dtype_bytes"]))
        return cls(**values)


# -- features and interpolation coordinates ----------------------------------------------------
def prefill_aggregates(new_tokens: np.ndarray, cached_tokens: np.ndarray) -> tuple[float, float, float, float]:
    """``(T, Cc, pairs, P)`` of one prefill batch: new tokens, cached tokens, causal
    (query, key) pairs ``sum(n*c + n(n+1)/2)`` and the number of prompts."""
    n = np.asarray(new_tokens, dtype=np.float64)
    c = np.asarray(cached_tokens, dtype=np.float64)
    if n.shape != c.shape:
        raise ValueError("new_tokens and cached_tokens must have the same length")
    return float(n.sum()), float(c.sum()), float((n * c + n * (n + 1.0) * 0.5).sum()), float(n.size)


def prefill_features(
    shard: ShardShape, tokens: np.ndarray, cached: np.ndarray, pairs: np.ndarray, prompts: np.ndarray
) -> np.ndarray:
    """Feature matrix (rows: iterations; columns: :data:`PREFILL_FEATURES`)."""
    t = np.asarray(tokens, dtype=np.float64)
    s = shard
    gemm = 2.0 * s.num_layers * s.layer_params * t + 2.0 * s.lm_head_params * np.asarray(prompts, dtype=np.float64)
    attn = 4.0 * s.num_layers * s.num_heads * s.head_dim * np.asarray(pairs, dtype=np.float64)
    kv = float(s.kv_bytes_per_token) * (t + np.asarray(cached, dtype=np.float64))
    return np.column_stack([np.ones_like(t), gemm, attn, kv, np.asarray(prompts, dtype=np.float64)])


def decode_features(shard: ShardShape, batch_size: np.ndarray, context_tokens: np.ndarray) -> np.ndarray:
    """Feature matrix (rows: iterations; columns: :data:`DECODE_FEATURES`)."""
    b = np.asarray(batch_size, dtype=np.float64)
    c = np.asarray(context_tokens, dtype=np.float64)
    b, c = np.broadcast_arrays(b, c)
    s = shard
    gemm = 2.0 * (s.num_layers * s.layer_params + s.lm_head_params) * b
    return np.column_stack([np.ones_like(c), gemm, float(s.kv_bytes_per_token) * c])


def transfer_features(nbytes: np.ndarray) -> np.ndarray:
    """Feature matrix (rows: transfers; columns: :data:`TRANSFER_FEATURES`)."""
    x = np.asarray(nbytes, dtype=np.float64)
    return np.column_stack([np.ones_like(x), x])


def prefill_coords(tokens: np.ndarray, cached: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """Interpolation coordinates of prefill iterations: ``log T``, ``log P`` and
    ``log(1 + Cc / P)`` (the mean cached prefix per prompt), so that batches of ``P`` equal
    prompts on equal prefixes lie on a rectilinear grid."""
    t = np.maximum(np.asarray(tokens, dtype=np.float64), 1.0)
    p = np.maximum(np.asarray(prompts, dtype=np.float64), 1.0)
    return np.column_stack([np.log(t), np.log(p), np.log1p(np.asarray(cached, dtype=np.float64) / p)])


def decode_coords(batch_size: np.ndarray, context_tokens: np.ndarray) -> np.ndarray:
    """Interpolation coordinates of decode steps: ``log B`` and ``log`` of the mean context."""
    b = np.maximum(np.asarray(batch_size, dtype=np.float64), 1.0)
    c = np.asarray(context_tokens, dtype=np.float64)
    b, c = np.broadcast_arrays(b, c)
    return np.column_stack([np.log(b), np.log(np.maximum(c / b, 1.0))])


def transfer_coords(nbytes: np.ndarray) -> np.ndarray:
    """Interpolation coordinate of a transfer: ``log bytes``."""
    return np.log(np.maximum(np.asarray(nbytes, dtype=np.float64), 1.0))[:, None]


# -- interpolation of log-residuals ------------------------------------------------------------
class LogResidualInterpolator:
    """Piecewise-linear interpolation of log-residuals over scattered or gridded points.

    Coordinates are scaled to ``[0, 1]`` per dimension (dimensions with a single value are
    dropped).

    * **Rectilinear grid** (the points are every crossing of a few values per dimension, as a
      kernel-database import writes them): multilinear on the grid cell; outside the grid each
      coordinate is clamped to the grid's range, so predictions fall back to the physical terms
      times the correction at the grid's edge. Evaluated in plain floats by :meth:`one`.
    * **Scattered points** (a GPU calibration grid): linear on Delaunay simplices inside the
      convex hull, the nearest point's value outside it.
    * One dimension: :func:`numpy.interp` (clamped ends).

    Evaluation of each query point is independent of the others, so vectorised and one-by-one
    calls agree exactly.
    """

    def __init__(self, points: np.ndarray, values: np.ndarray) -> None:
        pts = np.asarray(points, dtype=np.float64)
        vals = np.asarray(values, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[0] != vals.shape[0] or pts.shape[0] == 0:
            raise ValueError("points must be (n, d) with n >= 1 matching values")
        self.points, self.values = pts, vals
        self._lo = pts.min(axis=0)
        span = pts.max(axis=0) - self._lo
        self._keep = span > 1e-12
        self._span = np.where(self._keep, span, 1.0)
        z = self._scale(pts)
        self._dim = z.shape[1]
        self._linear: Any = None
        self._nearest: Any = None
        self._grid_axes: list[list[float]] | None = None
        self._grid_values: np.ndarray | None = None
        if self._dim == 0:
            self._const = float(np.mean(vals))
        elif self._dim == 1:
            order = np.argsort(z[:, 0], kind="stable")
            zs, vs = z[order, 0], vals[order]
            # Average duplicates so np.interp sees increasing abscissae.
            uniq, inverse = np.unique(zs, return_inverse=True)
            self._x1 = uniq
            self._y1 = np.bincount(inverse, weights=vs) / np.bincount(inverse)
        elif not self._try_grid(z, vals):
            from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator
            from scipy.spatial import Delaunay, QhullError

            self._nearest = NearestNDInterpolator(z, vals)
            if z.shape[0] >= self._dim + 2:
                try:
                    self._linear = LinearNDInterpolator(Delaunay(z), vals)
                except (QhullError, ValueError):
                    self._linear = None

    @property
    def kind(self) -> str:
        """``grid``, ``delaunay``, ``nearest``, ``1d`` or ``constant``."""
        if self._dim == 0:
            return "constant"
        if self._dim == 1:
            return "1d"
        if self._grid_axes is not None:
            return "grid"
        return "delaunay" if self._linear is not None else "nearest"

    def _try_grid(self, z: np.ndarray, vals: np.ndarray) -> bool:
        """Use multilinear interpolation when the points are exactly a full rectilinear grid."""
        axes = [np.unique(np.round(z[:, d], 12)) for d in range(z.shape[1])]
        if any(a.size < 2 for a in axes) or int(np.prod([a.size for a in axes])) != z.shape[0]:
            return False
        index = tuple(np.searchsorted(a, np.round(z[:, d], 12)) for d, a in enumerate(axes))
        grid = np.full(tuple(a.size for a in axes), np.nan)
        grid[index] = vals
        if np.isnan(grid).any():
            return False
        self._grid_axes = [a.tolist() for a in axes]
        self._grid_values = grid
        return True

    def _scale(self, pts: np.ndarray) -> np.ndarray:
        return np.asarray(((pts - self._lo) / self._span)[:, self._keep], dtype=np.float64)

    def _grid_one(self, z: list[float]) -> float:
        assert self._grid_axes is not None and self._grid_values is not None
        lo: list[int] = []
        frac: list[float] = []
        for axis, x in zip(self._grid_axes, z, strict=True):
            if x <= axis[0]:
                lo.append(0)
                frac.append(0.0)
            elif x >= axis[-1]:
                lo.append(len(axis) - 2)
                frac.append(1.0)
            else:
                j = bisect.bisect_right(axis, x) - 1
                lo.append(j)
                frac.append((x - axis[j]) / (axis[j + 1] - axis[j]))
        total = 0.0
        values = self._grid_values
        for corner in range(1 << len(lo)):
            weight = 1.0
            index = []
            for d, (j, f) in enumerate(zip(lo, frac, strict=True)):
                if (corner >> d) & 1:
                    weight *= f
                    index.append(j + 1)
                else:
                    weight *= 1.0 - f
                    index.append(j)
            if weight != 0.0:
                total += weight * float(values[tuple(index)])
        return total

    def one(self, point: Sequence[float]) -> float:
        """Interpolated log-residual at one point (plain floats on a grid)."""
        if self._grid_axes is None:
            return float(self(np.asarray([point], dtype=np.float64))[0])
        z = [(float(x) - lo) / span for x, lo, span, keep in zip(point, self._lo, self._span, self._keep, strict=True) if keep]
        return self._grid_one(z)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Interpolated log-residual at each row of ``points``."""
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        if self._dim == 0:
            return np.full(pts.shape[0], self._const)
        z = self._scale(pts)
        if self._dim == 1:
            return np.asarray(np.interp(z[:, 0], self._x1, self._y1), dtype=np.float64)
        if self._grid_axes is not None:
            return np.array([self._grid_one(row) for row in z.tolist()], dtype=np.float64)
        if self._linear is None:
            return np.asarray(self._nearest(z), dtype=np.float64)
        out = np.asarray(self._linear(z), dtype=np.float64)
        outside = np.isnan(out)
        if outside.any():
            out[outside] = self._nearest(z[outside])
        return out


def linear_terms(features: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """``features @ coefficients`` summed column by column in a fixed order.

    A BLAS matrix-vector product may order its sums differently for different row counts, so a
    row's result could change in the last bit with the batch it is evaluated in; this loop
    gives every row the same arithmetic however many rows there are."""
    x = np.asarray(features, dtype=np.float64)
    out = np.zeros(x.shape[0], dtype=np.float64)
    for j, c in enumerate(np.asarray(coefficients, dtype=np.float64)):
        if c != 0.0:
            out += x[:, j] * c
    return out


class PhaseModel:
    """One phase's predictor as stored in ``fit.json``: physical terms, and when the
    interpolation was chosen, a log-residual correction on top of them."""

    def __init__(self, spec: Mapping[str, Any], features: tuple[str, ...]) -> None:
        coef = spec["physical"]["coefficients"]
        self.features = features
        self.coefficients = np.array([float(coef.get(name, 0.0)) for name in features], dtype=np.float64)
        self.chosen: str = spec["chosen"]
        self.interpolator: LogResidualInterpolator | None = None
        if self.chosen == "interpolation":
            interp = spec["interpolation"]
            self.interpolator = LogResidualInterpolator(
                np.asarray(interp["points"], dtype=np.float64), np.asarray(interp["log_residuals"], dtype=np.float64)
            )
        elif self.chosen not in ("physical", "components"):
            raise CalibrationError(f"fit.json: unknown model kind '{self.chosen}'")

    def physical(self, features: np.ndarray) -> np.ndarray:
        """Prediction of the physical terms alone, seconds."""
        return linear_terms(features, self.coefficients)

    def predict(self, features: np.ndarray, coords: np.ndarray) -> np.ndarray:
        """Prediction of the chosen model, seconds."""
        base = self.physical(features)
        if self.interpolator is None:
            return base
        return np.asarray(base * np.exp(self.interpolator(coords)), dtype=np.float64)


# -- the cost model ---------------------------------------------------------------------------
def fit_label(fit: Mapping[str, Any]) -> str:
    """Label of a fit: ``measured:<gpu>/<profile>`` for a profile composed from a measured
    kernel database, ``fitted:<gpu>/<model>-tp<k>`` for one timed by ``calibrate gpu``;
    derived fits and CPU test fits say so."""
    folder = fit.get("profile") or f"{fit['shard']['model']}-tp{fit['shard']['tp']}"
    name = f"{fit['gpu']}/{folder}"
    if fit.get("provenance") == "derived":
        src = fit.get("derivation", {}).get("source_gpu", "?")
        return f"derived:{name}(from {src})"
    if fit.get("device") != "cuda":
        return f"fitted:{name}(device={fit.get('device')})"
    if fit.get("source", {}).get("kind") == "kernel database":
        return f"measured:{name}"
    return f"fitted:{name}"


#: Knots per doubling of the mean context in a decode table (see :class:`FittedCostModel`).
DECODE_KNOTS_PER_OCTAVE = 8


class FittedCostModel:
    """Step times of one shard from a fit of measured kernels (see module docstring), plus the
    framework's fitted per-iteration overheads (:mod:`simdisagg.overheads`).

    ``held_out_error[phase]`` holds the chosen model's error on points left out of the fit
    (``median_ape``, ``p95_ape``, ``max_ape`` as fractions: 0.05 is 5 %). ``power_w[phase]`` is
    the median measured GPU power of that phase's points, or ``None`` where NVML gave none.

    **Decode steps** are evaluated through one table per batch size ``B``: the fitted model at
    mean contexts ``2**(i/8)`` (up to the largest fitted context), linear in the total context
    between two knots, and beyond the last one linear with the fitted model's own slope there
    (its residual is constant past the grid). The table differs from the fitted formula by
    less than 0.1 % between knots (a power law between two knots an eighth of an octave apart),
    and it makes every decode path -- one step, a run as a list or an array, logged steps in
    bulk -- the same few float operations, hence bit for bit equal, with no logarithm per step.

    ``mixed_step_time_s`` = prefill part + decode part - one weight read: the two parts of a
    chunked-prefill iteration share one pass over the weights. The weight-read time comes from
    the measurement (``fit.json: weight_read``) and is capped by each part's own time; the
    result is never below the slower part.
    """

    def __init__(
        self,
        fit: Mapping[str, Any],
        gpu: GPUProfile | None = None,
        source: Path | None = None,
        overheads: FrameworkOverheads | None = None,
    ) -> None:
        version = fit.get("schema_version")
        if version != FIT_SCHEMA_VERSION:
            raise CalibrationError(f"{source or 'fit'}: schema_version {version} (expected {FIT_SCHEMA_VERSION})")
        self.fit = fit
        self.source = source
        self.shard = ShardShape.from_dict(fit["shard"])
        self.provenance: str = fit["provenance"]
        self.device: str = fit["device"]
        self.overheads = overheads or no_overheads(str(fit.get("framework") or "none"))
        label = fit_label(fit)
        self.label = label if self.overheads.provenance == "none" else f"{label}+{self.overheads.label}"
        phases = fit["phases"]
        if "prefill" not in phases or "decode" not in phases:
            raise CalibrationError(f"{source or 'fit'}: needs both a prefill and a decode phase")
        self._prefill = PhaseModel(phases["prefill"], PREFILL_FEATURES)
        self._decode = PhaseModel(phases["decode"], DECODE_FEATURES)
        self._transfers = {
            kind: PhaseModel(phases[f"transfer_{kind}"], TRANSFER_FEATURES)
            for kind in TRANSFER_KINDS
            if f"transfer_{kind}" in phases
        }
        self.chosen: dict[str, str] = {name: spec["chosen"] for name, spec in phases.items()}
        self.held_out_error: dict[str, dict[str, float]] = {
            name: {k: float(v) for k, v in spec["held_out_error"].items()} for name, spec in phases.items()
        }
        self.power_w: dict[str, float | None] = {
            name: (None if spec.get("power_w") is None else float(spec["power_w"]["median"]))
            for name, spec in phases.items()
        }
        weight_read = fit.get("weight_read") or {}
        self.weight_read_s = float(weight_read.get("weight_read_s") or 0.0)
        kernels = fit.get("kernels_per_iteration") or {}
        self.prefill_kernels = float(kernels.get("prefill") or 0.0)
        self.decode_kernels = float(kernels.get("decode") or 0.0)
        if fit.get("allreduce_in_samples"):
            self._ar_per_token_s, self._ar_fixed_s = 0.0, 0.0
        else:
            self._ar_per_token_s, self._ar_fixed_s = self._allreduce_terms(fit, gpu)
        s = self.shard
        coef = self._prefill.coefficients
        self._p_const, self._p_gemm, self._p_attn, self._p_kv, self._p_prompts = (float(c) for c in coef)
        self._gemm_per_token = 2.0 * s.num_layers * s.layer_params
        self._gemm_per_prompt = 2.0 * s.lm_head_params
        self._attn_per_pair = 4.0 * s.num_layers * s.num_heads * s.head_dim
        self._kv_per_token = float(s.kv_bytes_per_token)
        self._decode_tables: dict[int, tuple[list[float], list[float], list[float]]] = {}
        self._decode_table_arrays: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._components: ComponentsModel | None = None
        if "components" in (self._prefill.chosen, self._decode.chosen):
            if not fit.get("components"):
                raise CalibrationError(f"{source or 'fit'}: 'components' chosen but no components tables")
            self._components = ComponentsModel(fit["components"])
        if self._decode.chosen == "components":
            assert self._components is not None
            self._decode_max_mean_context = self._components.max_mean_context
        else:
            points = phases["decode"].get("interpolation", {}).get("points") or []
            contexts = [math.exp(p[1]) for p in points if len(p) > 1]
            self._decode_max_mean_context = max(contexts) if contexts else 131072.0

    @classmethod
    def from_path(
        cls, path: Path, gpu: GPUProfile | None = None, overheads: FrameworkOverheads | None = None
    ) -> FittedCostModel:
        """Load ``fit.json`` (or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "fit.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"{path}: cannot read fit ({exc})") from exc
        return cls(data, gpu=gpu, source=path, overheads=overheads)

    @classmethod
    def from_file(
        cls, path: Path, gpu: GPUProfile | None = None, overheads: FrameworkOverheads | None = None
    ) -> FittedCostModel:
        """Same as :meth:`from_path` (the name the cost-model factory uses)."""
        return cls.from_path(path, gpu=gpu, overheads=overheads)

    def _allreduce_terms(self, fit: Mapping[str, Any], gpu: GPUProfile | None) -> tuple[float, float]:
        s = self.shard
        if s.tp == 1:
            return 0.0, 0.0
        if gpu is not None:
            bw = gpu.intra_node_bandwidth_bytes_per_s.value
            latency = ALLREDUCE_LATENCY_S
        elif fit.get("allreduce"):
            bw = float(fit["allreduce"]["intra_node_bandwidth_bytes_per_s"])
            latency = float(fit["allreduce"]["latency_s"])
        else:
            raise ConfigError(
                f"{self.label}: tp={s.tp} needs the GPU's intra-node bandwidth for the modelled "
                "all-reduce; pass gpu= or refit with the GPU profile available"
            )
        ring_s_per_byte = 2.0 * (s.tp - 1) / s.tp / bw
        per_token = 2.0 * s.num_layers * s.hidden_size * s.dtype_bytes * ring_s_per_byte
        return per_token, 2.0 * s.num_layers * latency

    # -- prefill ---------------------------------------------------------------------------
    def _prefill_shard_s(self, new_tokens: Sequence[int] | np.ndarray, cached_tokens: Sequence[int] | np.ndarray) -> tuple[float, float, float]:
        """Seconds of the shard's kernels, new tokens and prompts of one prefill batch."""
        if self._prefill.chosen == "components":
            assert self._components is not None
            return self._components.prefill_s(new_tokens, cached_tokens)
        tokens = cached_sum = pairs = 0.0
        prompts = 0
        for n, c in zip(new_tokens, cached_tokens, strict=True):
            n, c = float(n), float(c)
            tokens += n
            cached_sum += c
            pairs += n * c + n * (n + 1.0) * 0.5
            prompts += 1
        if prompts == 0 or tokens == 0.0:
            return 0.0, 0.0, 0.0
        p = float(prompts)
        t = (
            self._p_const
            + self._p_gemm * (self._gemm_per_token * tokens + self._gemm_per_prompt * p)
            + self._p_attn * (self._attn_per_pair * pairs)
            + self._p_kv * (self._kv_per_token * (tokens + cached_sum))
            + self._p_prompts * p
        )
        t = max(t, 1e-12)
        interp = self._prefill.interpolator
        if interp is not None:
            t *= math.exp(interp.one((math.log(tokens), math.log(p), math.log1p(cached_sum / p))))
        return t, tokens, p

    def prefill_time_s(self, new_tokens: np.ndarray, cached_tokens: np.ndarray) -> float:
        """One prefill iteration (LM head and first-token sampling included, and the
        framework's per-iteration overhead); an empty batch takes no time."""
        shard_s, tokens, prompts = self._prefill_shard_s(new_tokens, cached_tokens)
        if tokens == 0:
            return 0.0
        return (
            shard_s
            + self._ar_fixed_s
            + self._ar_per_token_s * tokens
            + self.overheads.prefill_s(prompts, self.prefill_kernels)
        )

    # -- decode ----------------------------------------------------------------------------
    def _decode_shard_s(self, batch_size: np.ndarray, context_tokens: np.ndarray) -> np.ndarray:
        b = np.asarray(batch_size, dtype=np.float64)
        c = np.asarray(context_tokens, dtype=np.float64)
        b, c = np.broadcast_arrays(b, c)
        if self._decode.chosen == "components":
            assert self._components is not None
            decode_s = self._components.decode_s
            return np.array([decode_s(bi, ci) for bi, ci in zip(b.tolist(), c.tolist(), strict=True)])
        return self._decode.predict(decode_features(self.shard, b, c), decode_coords(b, c))

    def _decode_table(self, batch_size: int) -> tuple[list[float], list[float], list[float]]:
        """Knots (total context), times and slopes of the decode table of one batch size."""
        table = self._decode_tables.get(batch_size)
        if table is not None:
            return table
        if batch_size < 1:
            raise ValueError(f"decode batch_size must be >= 1, got {batch_size}")
        b = float(batch_size)
        octaves = math.log2(max(self._decode_max_mean_context, 2.0))
        count = int(math.ceil(octaves * DECODE_KNOTS_PER_OCTAVE))
        mean_ctx = np.exp2(np.arange(count + 1, dtype=np.float64) / DECODE_KNOTS_PER_OCTAVE)
        mean_ctx[-1] = max(mean_ctx[-1], self._decode_max_mean_context)
        knots = b * mean_ctx
        fixed = self._ar_fixed_s + self._ar_per_token_s * b + self.overheads.decode_s(b, self.decode_kernels)
        values = self._decode_shard_s(np.full_like(knots, b), knots) + fixed
        slopes = np.empty_like(values)
        slopes[:-1] = np.diff(values) / np.diff(knots)
        if self._decode.chosen == "components":
            assert self._components is not None
            slopes[-1] = self._components.decode_attention_slope_s(b)
            table = (knots.tolist(), values.tolist(), slopes.tolist())
            self._decode_tables[batch_size] = table
            return table
        # Past the last knot the residual is constant, so the fitted time is linear in context
        # with the physical slope times that residual's factor.
        edge = float(self._decode_shard_s(np.array([b]), knots[-1:])[0])
        physical_edge = float(self._decode.physical(decode_features(self.shard, np.array([b]), knots[-1:]))[0])
        factor = edge / physical_edge if physical_edge > 0 else 1.0
        slopes[-1] = float(self._decode.coefficients[2]) * self._kv_per_token * factor
        table = (knots.tolist(), values.tolist(), slopes.tolist())
        self._decode_tables[batch_size] = table
        return table

    def decode_step_time_s(self, batch_size: int, context_tokens: int) -> float:
        """One decode iteration of ``batch_size`` requests whose contexts sum to ``context_tokens``."""
        return self.decode_run_times_list(batch_size, context_tokens, 1)[0]

    def decode_run_times_list(self, batch_size: int, context_tokens: int, n_steps: int) -> list[float]:
        """``n_steps`` steps of an unchanged batch (step ``j`` has context ``C + j*B``) in plain
        floats: the same operations as :meth:`decode_run_times_s`, so bit for bit its values."""
        knots, values, slopes = self._decode_table(batch_size)
        c0, b = float(context_tokens), float(batch_size)
        last = len(knots) - 1
        j = max(bisect.bisect_right(knots, c0) - 1, 0)
        out = []
        for step in range(n_steps):
            ctx = c0 + b * step
            while j < last and ctx >= knots[j + 1]:
                j += 1
            out.append(values[j] + slopes[j] * (ctx - knots[j]))
        return out

    def _decode_arrays(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The decode table of one batch size as arrays (cached beside the lists)."""
        arrays = self._decode_table_arrays.get(batch_size)
        if arrays is None:
            knots, values, slopes = self._decode_table(batch_size)
            arrays = (np.asarray(knots), np.asarray(values), np.asarray(slopes))
            self._decode_table_arrays[batch_size] = arrays
        return arrays

    def _table_eval(self, batch_size: int, ctx: np.ndarray) -> np.ndarray:
        k, v, sl = self._decode_arrays(batch_size)
        idx = np.searchsorted(k, ctx, side="right") - 1
        idx[idx < 0] = 0
        return v[idx] + sl[idx] * (ctx - k[idx])

    def isolated_prefill_times_s(self, new_tokens: np.ndarray, cached_tokens: np.ndarray) -> np.ndarray:
        """Per request, its prefill alone on an idle instance (a batch of one)."""
        return np.array(
            [self.prefill_time_s([n], [c]) for n, c in zip(np.asarray(new_tokens).tolist(),
                                                             np.asarray(cached_tokens).tolist(), strict=True)],
            dtype=np.float64,
        )

    def isolated_decode_times_s(self, context_tokens: np.ndarray, n_steps: np.ndarray) -> np.ndarray:
        """Per request, the total of ``n_steps`` decode steps at batch size one from
        ``context_tokens``: :meth:`decode_run_times_s` summed, vectorised over requests.

        At batch size one the context grows by one token a step, and the table is linear in
        context on each segment, so each segment's steps sum in closed form (an arithmetic
        series); a run crosses a handful of segments."""
        k, v, sl = self._decode_arrays(1)
        first = np.asarray(context_tokens, dtype=np.float64)
        m = np.asarray(n_steps, dtype=np.float64)
        last = first + m - 1.0
        seg_first = np.maximum(np.searchsorted(k, first, side="right") - 1, 0)
        seg_last = np.maximum(np.searchsorted(k, last, side="right") - 1, 0)
        total = np.zeros_like(first)
        # Integer contexts on segment j: ceil(k[j]) .. ceil(k[j+1]) - 1 (the first segment also
        # takes everything below, the last everything above).
        lower = np.ceil(k)
        upper = np.append(np.ceil(k[1:]) - 1.0, np.inf)
        lower[0] = -np.inf
        for offset in range(int((seg_last - seg_first).max(initial=0)) + 1):
            j = np.minimum(seg_first + offset, len(k) - 1)
            active = (seg_first + offset <= seg_last) & (m > 0)
            lo = np.maximum(first, lower[j])
            hi = np.minimum(last, upper[j])
            count = np.where(active, np.maximum(hi - lo + 1.0, 0.0), 0.0)
            sum_x = (lo + hi) * count * 0.5
            total += np.where(count > 0, count * (v[j] - sl[j] * k[j]) + sl[j] * sum_x, 0.0)
        return total

    def decode_run_times_s(self, batch_size: int, context_tokens: int, n_steps: int) -> np.ndarray:
        """``n_steps`` steps of an unchanged batch, vectorised; element ``j`` equals
        ``decode_step_time_s(B, C + j*B)`` exactly."""
        ctx = float(context_tokens) + float(batch_size) * np.arange(n_steps, dtype=np.float64)
        return self._table_eval(batch_size, ctx)

    def decode_times_bulk_s(self, batch_sizes: np.ndarray, context_tokens: np.ndarray) -> np.ndarray:
        """One step per element (batch size, total context), the same arithmetic as
        :meth:`decode_run_times_s`."""
        b = np.asarray(batch_sizes, dtype=np.float64)
        ctx = np.asarray(context_tokens, dtype=np.float64)
        out = np.empty_like(ctx)
        for size in np.unique(b).tolist():
            sel = b == size
            out[sel] = self._table_eval(int(size), ctx[sel])
        return out

    # -- mixed -----------------------------------------------------------------------------
    def mixed_step_time_s(
        self,
        new_tokens: np.ndarray,
        cached_tokens: np.ndarray,
        decode_batch_size: int,
        decode_context_tokens: int,
    ) -> float:
        """Prefill chunks and a decode batch in one iteration: the sum of the two parts' kernels
        less one shared weight read (see class docstring), the all-reduce of all tokens, and the
        framework's overhead of one iteration with both kinds of sequences."""
        if decode_batch_size < 1:
            return self.prefill_time_s(new_tokens, cached_tokens)
        if self._components is not None and self._prefill.chosen == "components" and self._decode.chosen == "components":
            return self._mixed_components_s(new_tokens, cached_tokens, decode_batch_size, decode_context_tokens)
        prefill_s, tokens, prompts = self._prefill_shard_s(new_tokens, cached_tokens)
        decode_s = float(
            self._decode_shard_s(np.array([float(decode_batch_size)]), np.array([float(decode_context_tokens)]))[0]
        )
        if tokens == 0:
            return self.decode_step_time_s(decode_batch_size, decode_context_tokens)
        shared = min(self.weight_read_s, prefill_s, decode_s)
        combined = max(prefill_s + decode_s - shared, prefill_s, decode_s)
        overhead = self.overheads.mixed_s(prompts, decode_batch_size, self.prefill_kernels)
        all_tokens = tokens + float(decode_batch_size)
        return combined + self._ar_fixed_s + self._ar_per_token_s * all_tokens + overhead

    def _mixed_components_s(
        self, new_tokens: np.ndarray, cached_tokens: np.ndarray, decode_batch_size: int, decode_context_tokens: int
    ) -> float:
        """A mixed iteration from the parts: the layers see ``T + B`` rows, ``P + B`` rows are
        sampled, each prompt has its attention share and the decode sequences theirs."""
        comp = self._components
        assert comp is not None
        b = float(decode_batch_size)
        tokens = 0.0
        prompts = len(new_tokens)
        attention = 0.0
        for n, c in zip(new_tokens, cached_tokens, strict=True):
            tokens += float(n)
            attention += comp.prompt_attention_s(float(n), float(c), float(prompts))
        if prompts == 0 or tokens == 0.0:
            return self.decode_step_time_s(decode_batch_size, decode_context_tokens)
        attention += comp.decode_attention_s(b, max(decode_context_tokens / b, 1.0))
        rows = float(prompts) + b
        kernels_s = comp.prefill_linear_s(tokens + b, rows) + comp.prefill_head(rows) + attention
        overhead = self.overheads.mixed_s(prompts, b, self.prefill_kernels)
        return kernels_s + self._ar_fixed_s + self._ar_per_token_s * (tokens + b) + overhead

    # -- transfers (informational) ----------------------------------------------------------
    def transfer_time_s(self, kind: str, nbytes: float) -> float:
        """Measured-fit time of one copy of ``nbytes`` (``kind``: d2d, h2d or d2h)."""
        if kind not in self._transfers:
            raise KeyError(f"{self.label}: no fitted transfer of kind '{kind}'")
        x = transfer_features(np.array([float(nbytes)]))
        return float(self._transfers[kind].predict(x, transfer_coords(np.array([float(nbytes)])))[0])


def profile_folder_name(
    model: str,
    tp: int,
    weights: str,
    kv_cache: str,
    framework: str,
    dp: int = 1,
    ep: int = 1,
    experts: str | None = None,
) -> str:
    """Folder of a measured profile: ``<model>-tp<k>[-dp<d>][-ep<e>]-<weights>[-<experts>experts]-kv<kv>-<framework>``
    (attention data parallelism, expert parallelism and an expert precision of its own are
    named only where they apply, so dense profiles keep ``<model>-tp<k>-<weights>-kv<kv>-<framework>``)."""
    par = f"tp{tp}" + (f"-dp{dp}" if dp > 1 else "") + (f"-ep{ep}" if ep > 1 else "")
    precision = weights + (f"-{experts}experts" if experts and experts != weights else "")
    return f"{model}-{par}-{precision}-kv{kv_cache}-{framework}"


def fitted_candidates(
    model: str,
    tp: int,
    weights: str = "bf16",
    kv_cache: str = "bf16",
    framework: str | None = None,
    dp: int = 1,
    ep: int = 1,
    experts: str | None = None,
) -> list[str]:
    """Profile folder names that serve (model, parallelism, precision, framework), best first: a
    profile of exactly these settings (:func:`profile_folder_name`), then, for a dense BF16
    shard only, one timed by ``calibrate gpu`` on its own kernels (``<model>-tp<k>``)."""
    names = []
    if framework:
        names.append(profile_folder_name(model, tp, weights, kv_cache, framework, dp, ep, experts))
    if weights == "bf16" and kv_cache == "bf16" and dp == 1 and ep == 1 and not experts:
        names.append(f"{model}-tp{tp}")
    return names


def find_fitted(
    roots: list[Path],
    gpu: str,
    model: str,
    tp: int,
    weights: str = "bf16",
    kv_cache: str = "bf16",
    framework: str | None = None,
    dp: int = 1,
    ep: int = 1,
    experts: str | None = None,
) -> Path | None:
    """The ``fit.json`` to use for ``gpu``/``model``/parallelism at a precision and framework,
    or ``None``.

    Looks in each root in order for ``measured/<gpu>/<name>/fit.json``, for the names of
    :func:`fitted_candidates` in order, then the same under ``derived/`` (a measured fit beats a
    derived one). A fit made on the CPU (``device`` other than ``cuda``) is skipped with a
    warning unless ``gpu`` is ``cpu``: CPU timings must never stand in for a GPU.
    """
    names = fitted_candidates(model, tp, weights, kv_cache, framework, dp, ep, experts)
    for kind in ("measured", "derived"):
        for name in names:
            for root in roots:
                path = Path(root) / kind / gpu / name / "fit.json"
                if not path.is_file():
                    continue
                try:
                    device = json.loads(path.read_text()).get("device")
                except (OSError, json.JSONDecodeError):
                    warnings.warn(f"{path}: unreadable fit.json, ignored", stacklevel=2)
                    continue
                if device != "cuda" and gpu != "cpu":
                    warnings.warn(f"{path}: measured on device={device}, not used for GPU '{gpu}'", stacklevel=2)
                    continue
                return path
    return None


def ape_summary(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Absolute percentage errors summarised as fractions: median, p95, max and mean."""
    m = np.asarray(measured, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if m.size == 0:
        nan = math.nan
        return {"median_ape": nan, "p95_ape": nan, "max_ape": nan, "mean_ape": nan}
    ape = np.abs(p - m) / m
    return {
        "median_ape": float(np.median(ape)),
        "p95_ape": float(np.percentile(ape, 95)),
        "max_ape": float(ape.max()),
        "mean_ape": float(ape.mean()),
    }
