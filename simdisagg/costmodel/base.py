"""The cost-model interface: how long a prefill batch, a decode step or a mixed step takes.

A cost model answers for one instance (one model on one GPU type with a tensor-parallel
degree). Times are in seconds. The simulator never asks per token: it asks per batch
iteration, and for decode fast-forward it asks for a whole run of steps at once.

Decode steps depend on the batch only through its size ``B`` and its total context ``C``
(the sum over the batch of each request's context tokens). Attention reads each request's own
KV, so its cost is linear in each context length and the sum is a sufficient statistic; no
padding to the longest request is implied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class CostModel(Protocol):
    """Step times for one serving instance. Implementations must be pure and deterministic
    (stochastic reference models draw from a stream given at construction).

    Optional faster paths a model may define, each with a default below:
    ``decode_run_times_list`` (:func:`short_run_times`), ``decode_times_bulk_s``
    (:func:`decode_times_bulk_s`) and ``verify_times_bulk_s`` for speculative decoding's
    verify steps (:func:`verify_times_bulk_s`)."""

    #: Short label shown in outputs, e.g. ``roofline`` or ``fitted:h100-sxm/llama-3.1-8b-tp1``.
    label: str

    def prefill_time_s(self, new_tokens: np.ndarray, cached_tokens: np.ndarray) -> float:
        """Time of one prefill iteration over prompts with ``new_tokens[i]`` tokens to compute
        on top of ``cached_tokens[i]`` tokens already in KV (prefix-cache hits or earlier
        chunks). Includes the LM head and sampling of each prompt's first token."""
        ...

    def decode_step_time_s(self, batch_size: int, context_tokens: int) -> float:
        """Time of one decode iteration: ``batch_size`` requests, each producing one token,
        whose contexts sum to ``context_tokens``."""
        ...

    def decode_run_times_s(self, batch_size: int, context_tokens: int, n_steps: int) -> np.ndarray:
        """Durations of ``n_steps`` consecutive decode steps of an unchanged batch: step ``j``
        has total context ``context_tokens + j * batch_size``. Must agree with
        :meth:`decode_step_time_s` element by element (fast-forward relies on it)."""
        ...

    def mixed_step_time_s(
        self,
        new_tokens: np.ndarray,
        cached_tokens: np.ndarray,
        decode_batch_size: int,
        decode_context_tokens: int,
    ) -> float:
        """Time of one iteration that runs prefill chunks and a decode batch together
        (chunked prefill in aggregated serving)."""
        ...


def short_run_times(cost: CostModel) -> Callable[[int, int, int], list[float]]:
    """The function giving :meth:`CostModel.decode_run_times_s` as a list of floats, for short
    runs: resolve it once, then call it per run.

    A numpy call costs microseconds however short the run, and most decode runs between two
    batch changes are a few steps long; models that can, compute short runs in plain floats
    (``decode_run_times_list``) with the same operations in the same order, so each element
    is bit for bit what the vectorised method returns."""
    fast = getattr(cost, "decode_run_times_list", None)
    if fast is not None:
        return fast  # type: ignore[no-any-return]
    return lambda batch, context, steps: cost.decode_run_times_s(batch, context, steps).tolist()


def decode_times_bulk_s(cost: CostModel, batch_sizes: np.ndarray, context_tokens: np.ndarray) -> np.ndarray:
    """Decode step times for many steps at once: element ``k`` is
    ``decode_run_times_s(batch_sizes[k], context_tokens[k], 1)[0]``, bit for bit.

    Used to recompute logged runs; models that can do it vectorised define
    ``decode_times_bulk_s`` (float arrays of equal length), others are asked step by step."""
    fast = getattr(cost, "decode_times_bulk_s", None)
    if fast is not None:
        return fast(np.asarray(batch_sizes, dtype=np.float64), np.asarray(context_tokens, dtype=np.float64))  # type: ignore[no-any-return]
    return np.array(
        [cost.decode_run_times_s(int(b), int(c), 1)[0] for b, c in zip(batch_sizes, context_tokens, strict=True)],
        dtype=np.float64,
    )


class StepwiseDecodeRuns:
    """Mixin: derive :meth:`decode_run_times_s` from :meth:`decode_step_time_s` by a loop.

    Correct for any model; vectorised models override it."""

    def decode_run_times_s(self, batch_size: int, context_tokens: int, n_steps: int) -> np.ndarray:
        step = self.decode_step_time_s  # type: ignore[attr-defined]
        return np.array(
            [step(batch_size, context_tokens + j * batch_size) for j in range(n_steps)], dtype=np.float64
        )


def verify_times_bulk_s(cost: CostModel, batch_size: int, context_tokens: np.ndarray, draft_tokens: int) -> np.ndarray:
    """Times of target-model steps that verify ``draft_tokens`` draft tokens per request
    (speculative decoding): element ``j`` is one step of ``batch_size`` requests whose contexts
    sum to ``context_tokens[j]``, each request scoring ``draft_tokens + 1`` query tokens (its
    last token and the drafts after it) against its context.

    With no draft tokens the step is a decode step, bit for bit
    (:func:`decode_times_bulk_s`), so speculation that drafts nothing changes nothing. Models
    that can time the verify step themselves define ``verify_times_bulk_s(batch_size,
    context_tokens, draft_tokens)``; for the others a verify step is a prefill (chunk)
    iteration of ``draft_tokens + 1`` new tokens per request on top of the rest of its context
    (:meth:`CostModel.prefill_time_s`): the weights are read once, the KV once, and the
    attention and projection work grows with the query tokens. The context is spread evenly
    over the requests (attention is linear in each request's context, so only the sum matters)."""
    contexts = np.asarray(context_tokens, dtype=np.float64)
    if draft_tokens == 0:
        return decode_times_bulk_s(cost, np.full(len(contexts), float(batch_size)), contexts)
    own = getattr(cost, "verify_times_bulk_s", None)
    if own is not None:
        return own(batch_size, contexts, draft_tokens)  # type: ignore[no-any-return]
    return verify_times_by_prefill_s(cost, batch_size, contexts, draft_tokens)


def verify_times_by_prefill_s(
    cost: CostModel, batch_size: int, context_tokens: np.ndarray, draft_tokens: int
) -> np.ndarray:
    """Verify steps timed one by one as prefill (chunk) iterations of ``draft_tokens + 1`` new
    tokens per request on top of the rest of its context (see :func:`verify_times_bulk_s`)."""
    contexts = np.asarray(context_tokens, dtype=np.float64)
    new = np.full(batch_size, draft_tokens + 1, dtype=np.int64)
    out = np.empty(len(contexts), dtype=np.float64)
    for j, total in enumerate(context_tokens.tolist() if isinstance(context_tokens, np.ndarray) else context_tokens):
        # The last token of each request is a query token of the step, not cached context.
        cached = spread_evenly(int(total) - batch_size, batch_size)
        out[j] = cost.prefill_time_s(new, cached)
    return out


def spread_evenly(total: int, parts: int) -> np.ndarray:
    """``parts`` non-negative integers that differ by at most one and sum to ``total``."""
    total = max(total, 0)
    out = np.full(parts, total // parts, dtype=np.int64)
    out[: total % parts] += 1
    return out
