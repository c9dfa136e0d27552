"""A cost model with every step time multiplied by a factor (sensitivity analysis)."""

from __future__ import annotations

import numpy as np

from simdisagg.costmodel.base import (
    CostModel,
    decode_times_bulk_s,
    short_run_times,
    verify_times_bulk_s,
)


class ScaledCostModel:
    """Wraps a cost model and multiplies all its times by ``scale`` (e.g. 1 ± held-out error)."""

    def __init__(self, inner: CostModel, scale: float) -> None:
        if scale <= 0:
            raise ValueError("scale must be > 0")
        self.inner, self.scale = inner, scale
        self._inner_short_run = short_run_times(inner)
        self.label = f"{inner.label}×{scale:g}"

    def prefill_time_s(self, new_tokens: np.ndarray, cached_tokens: np.ndarray) -> float:
        """The inner prefill time, scaled."""
        return self.scale * self.inner.prefill_time_s(new_tokens, cached_tokens)

    def decode_step_time_s(self, batch_size: int, context_tokens: int) -> float:
        """The inner decode step time, scaled."""
        return self.scale * self.inner.decode_step_time_s(batch_size, context_tokens)

    def decode_run_times_s(self, batch_size: int, context_tokens: int, n_steps: int) -> np.ndarray:
        """The inner decode run, scaled."""
        return self.scale * self.inner.decode_run_times_s(batch_size, context_tokens, n_steps)

    def decode_run_times_list(self, batch_size: int, context_tokens: int, n_steps: int) -> list[float]:
        """The inner decode run in plain floats, scaled (for short runs)."""
        scale = self.scale
        return [scale * x for x in self._inner_short_run(batch_size, context_tokens, n_steps)]

    def decode_times_bulk_s(self, batch_sizes: np.ndarray, context_tokens: np.ndarray) -> np.ndarray:
        """The inner model's steps in bulk, scaled."""
        return self.scale * decode_times_bulk_s(self.inner, batch_sizes, context_tokens)

    def verify_times_bulk_s(self, batch_size: int, context_tokens: np.ndarray, draft_tokens: int) -> np.ndarray:
        """The inner model's speculative verify steps, scaled."""
        return self.scale * verify_times_bulk_s(self.inner, batch_size, context_tokens, draft_tokens)

    def mixed_step_time_s(
        self, new_tokens: np.ndarray, cached_tokens: np.ndarray, decode_batch_size: int, decode_context_tokens: int
    ) -> float:
        """The inner mixed step, scaled."""
        return self.scale * self.inner.mixed_step_time_s(
            new_tokens, cached_tokens, decode_batch_size, decode_context_tokens
        )
