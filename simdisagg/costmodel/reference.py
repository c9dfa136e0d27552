"""Reference cost models with textbook service times, for validating the simulator against
queueing theory: constant (M/D/1), proportional to tokens (M/G/1, Pollaczek-Khinchine) and
exponential (M/M/1, Erlang C)."""

from __future__ import annotations

import numpy as np


class ConstantCostModel:
    """Prefill takes ``prefill_s + prefill_s_per_token * new tokens``; a decode step takes
    ``decode_step_s + decode_step_s_per_context_token * context``. Deterministic."""

    def __init__(
        self,
        prefill_s: float,
        decode_step_s: float,
        prefill_s_per_token: float = 0.0,
        decode_step_s_per_context_token: float = 0.0,
    ) -> None:
        self.prefill_s, self.decode_step_s = prefill_s, decode_step_s
        self.prefill_s_per_token = prefill_s_per_token
        self.decode_step_s_per_context_token = decode_step_s_per_context_token
        self.label = "constant"

    def prefill_time_s(self, new_tokens: np.ndarray, cached_tokens: np.ndarray) -> float:
        """Fixed time per iteration plus a per-token term."""
        return self.prefill_s + self.prefill_s_per_token * float(np.sum(new_tokens))

    def decode_step_time_s(self, batch_size: int, context_tokens: int) -> float:
        """Fixed time per step plus a per-context-token term."""
        return self.decode_step_s + self.decode_step_s_per_context_token * context_tokens

    def decode_run_times_s(self, batch_size: int, context_tokens: int, n_steps: int) -> np.ndarray:
        """Vectorised steps (context grows by ``batch_size`` per step)."""
        ctx = context_tokens + batch_size * np.arange(n_steps, dtype=np.float64)
        return self.decode_step_s + self.decode_step_s_per_context_token * ctx

    def decode_run_times_list(self, batch_size: int, context_tokens: int, n_steps: int) -> list[float]:
        """:meth:`decode_run_times_s` in plain floats (the same arithmetic), for short runs."""
        c0, b, fixed, per = float(context_tokens), float(batch_size), self.decode_step_s, self.decode_step_s_per_context_token
        return [fixed + per * (c0 + b * j) for j in range(n_steps)]

    def decode_times_bulk_s(self, batch_sizes: np.ndarray, context_tokens: np.ndarray) -> np.ndarray:
        """One step per element (batch size, total context), the same arithmetic."""
        return self.decode_step_s + self.decode_step_s_per_context_token * context_tokens

    def verify_times_bulk_s(self, batch_size: int, context_tokens: np.ndarray, draft_tokens: int) -> np.ndarray:
        """Speculative verify steps: a decode step each, whatever the draft tokens (a step is
        a step in this model; deterministic, also under :class:`ExponentialCostModel`)."""
        return self.decode_step_s + self.decode_step_s_per_context_token * np.asarray(context_tokens, dtype=np.float64)

    def mixed_step_time_s(
        self, new_tokens: np.ndarray, cached_tokens: np.ndarray, decode_batch_size: int, decode_context_tokens: int
    ) -> float:
        """The longer of the prefill part and the decode step (they share one iteration)."""
        return max(
            self.prefill_time_s(new_tokens, cached_tokens),
            self.decode_step_time_s(decode_batch_size, decode_context_tokens),
        )


class ExponentialCostModel(ConstantCostModel):
    """Each prefill iteration draws an exponential time with mean ``mean_prefill_s`` from the
    given stream; decode steps are constant."""

    def __init__(self, mean_prefill_s: float, decode_step_s: float, rng: np.random.Generator) -> None:
        super().__init__(mean_prefill_s, decode_step_s)
        self._rng = rng
        self.label = "exponential"

    def prefill_time_s(self, new_tokens: np.ndarray, cached_tokens: np.ndarray) -> float:
        """An independent exponential draw per prefill iteration."""
        return float(self._rng.exponential(self.prefill_s))
