"""Speculative decoding: how many tokens each decode step emits, and what a step costs.

Each decode iteration of a speculating batch (vLLM's and SGLang's scheme, with one chain of
draft tokens, no trees):

1. the draft proposes ``k`` tokens per request, one after the other: ``k`` passes of the
   model's MTP layers (method ``mtp``) or ``k`` decode steps of a separate draft model
   (method ``draft``);
2. the target verifies them in one step of ``k + 1`` query tokens per request
   (:func:`~simdisagg.costmodel.base.verify_times_bulk_s`);
3. each request emits its accepted draft tokens plus the target's own next token: ``1 + a``
   tokens, ``a`` in ``0..k``, never more than it still owes (the last step emits only what
   remains).

Step time = draft time + verify time. The batch's total context then grows by the tokens
emitted, not by the batch size.

**Draws.** A request's accepted counts are drawn once, when it joins a batch, for all its
steps (:meth:`Speculator.emissions`): the number of steps it needs is then known at once and
the decode instance keeps its finish-step heap and its fast-forward runs. ``P(a >= j)`` is the
product of the first ``j`` position acceptance probabilities (all ``alpha`` for an i.i.d.
rate: a geometric count truncated at ``k``). The uniforms behind the draws are a function of
the request alone (:func:`request_uniforms`, keyed by one draw from the run's stream
``speculative``), not of the order requests join in: the same request accepts the same drafts
on any instance, in either serving mode and in fast-forward or step-by-step runs (common
random numbers across what-if runs).

**Draft cost.** ``mtp``: one MTP pass per draft token, timed as the pool's own decode step
scaled to the MTP layers (``mtp_layers / num_layers`` of a step of the same batch and
context), so a measured profile times its MTP passes as it times its layers. ``draft``: the
draft model's own cost model (same GPU, TP and precision as the pool) gives ``k`` decode
steps of the batch, the context growing by one token per request each.

**Memory.** The draft's weights and KV per token come out of each instance's KV memory
(:func:`draft_memory`).

**Not modelled** (the README's speculative-decoding section lists them): the KV slots of
rejected tokens, draft trees (EAGLE top-k > 1), acceptance that depends on the request or on
its position in the answer, and the draft catching up on the tokens it did not propose.
"""

from __future__ import annotations

import numpy as np

from simdisagg.config import PoolConfig, RunConfig, SpeculativeConfig
from simdisagg.costmodel.base import (
    CostModel,
    decode_times_bulk_s,
    spread_evenly,
    verify_times_bulk_s,
)
from simdisagg.errors import ConfigError
from simdisagg.hardware import ModelShape, ProfileStore, check_parallelism
from simdisagg.rng import Streams


def mean_length_of_rate(rate: float, draft_tokens: int) -> float:
    """Mean tokens a step emits when each of ``draft_tokens`` drafts is accepted with the
    i.i.d. chance ``rate`` (given the earlier ones were): ``(1 - rate^(k+1)) / (1 - rate)``."""
    return float(sum(rate**j for j in range(draft_tokens + 1)))


def rate_of_mean_length(length: float, draft_tokens: int) -> float:
    """The i.i.d. acceptance rate whose mean tokens per step is ``length`` (inverse of
    :func:`mean_length_of_rate`, by bisection; the mean rises strictly with the rate)."""
    if draft_tokens == 0 or length <= 1.0:
        return 0.0
    if length >= draft_tokens + 1:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if mean_length_of_rate(mid, draft_tokens) < length:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def iid_rate(cfg: SpeculativeConfig) -> float | None:
    """The i.i.d. acceptance rate a setting gives (named, or from its mean length); ``None``
    for per-position acceptance."""
    if cfg.position_acceptance is not None:
        return None
    if cfg.acceptance_rate is not None:
        return cfg.acceptance_rate
    return rate_of_mean_length(float(cfg.acceptance_length or 1.0), cfg.draft_tokens)


def acceptance_survival(cfg: SpeculativeConfig) -> np.ndarray:
    """``P(a >= j)`` for ``j = 1..k``: the chance that at least ``j`` drafts are accepted."""
    rate = iid_rate(cfg)
    if rate is None:
        per_position = np.array(cfg.position_acceptance, dtype=np.float64)
    else:
        per_position = np.full(cfg.draft_tokens, rate, dtype=np.float64)
    return np.cumprod(per_position)


def describe(cfg: SpeculativeConfig) -> str:
    """One line saying what a speculative-decoding setting does, for the settings a run prints."""
    drafter = "the model's MTP layers" if cfg.method == "mtp" else f"draft model {cfg.draft_model}"
    k = cfg.draft_tokens
    mean = 1.0 + float(acceptance_survival(cfg).sum())
    rate = iid_rate(cfg)
    if rate is None:
        how = "per-position acceptance " + "/".join(f"{p:g}" for p in cfg.position_acceptance or ())
    else:
        how = f"acceptance rate {rate:.3g} per draft token"
    return f"{k} draft token{'s' if k != 1 else ''} per step from {drafter}, {how} (mean {mean:.2f} tokens per step)"


_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele, Lea and Flood 2014), element-wise on uint64 (wrapping)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def request_uniforms(key: int, request: int, count: int) -> np.ndarray:
    """``count`` uniforms in [0, 1) for request ``request``: the SplitMix64 sequence seeded by
    ``key`` mixed with the request's index (counter-based, so independent of draw order)."""
    with np.errstate(over="ignore"):
        seed = _mix64(np.array([key], dtype=np.uint64) ^ (np.uint64(request) * _GOLDEN_GAMMA))
        z = _mix64(seed + np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN_GAMMA)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def mtp_fraction(model: ModelShape) -> float:
    """An MTP pass as a share of a decode step of the whole model: its layers over the model's."""
    return model.mtp_layers / model.num_layers


class Speculator:
    """A pool's speculative decoding: draws each request's emitted tokens per step, and times
    speculative decode steps of the pool's target cost model plus its draft."""

    def __init__(
        self,
        cfg: SpeculativeConfig,
        target: CostModel,
        key: int,
        *,
        draft: CostModel | None = None,
        mtp_fraction: float = 0.0,
    ) -> None:
        self.cfg = cfg
        self.draft_tokens = cfg.draft_tokens
        self.target, self.draft, self.mtp_fraction = target, draft, mtp_fraction
        self._key = key
        # Ascending P(a >= j), so that a = #{j : u < P(a >= j)} is one binary search.
        self._survival_ascending = acceptance_survival(cfg)[::-1].copy()
        self.mean_acceptance_length = 1.0 + float(self._survival_ascending.sum())

    def emissions(self, request: int, tokens: int) -> np.ndarray:
        """Tokens emitted at each decode step of request ``request``, which still owes
        ``tokens`` tokens: ``1 + accepted`` per step, the last step only what remains (sum =
        ``tokens``)."""
        k = self.draft_tokens
        if k == 0 or tokens <= 0:
            return np.ones(max(tokens, 0), dtype=np.int64)
        # At most one step per token: draw that many and cut where the tokens run out.
        u = request_uniforms(self._key, request, tokens)
        emitted = 1 + k - np.searchsorted(self._survival_ascending, u, side="right")
        total = np.cumsum(emitted)
        steps = int(np.searchsorted(total, tokens, side="left")) + 1
        out = emitted[:steps].astype(np.int64)
        out[-1] -= int(total[steps - 1]) - tokens
        return out

    def draft_times_s(self, batch_size: int, context_tokens: np.ndarray) -> np.ndarray:
        """Time the draft takes to propose ``k`` tokens per request, per step."""
        k = self.draft_tokens
        contexts = np.asarray(context_tokens, dtype=np.float64)
        out = np.zeros(len(contexts), dtype=np.float64)
        if k == 0:
            return out
        batch = np.full(len(contexts), float(batch_size))
        if self.draft is not None:
            # k decode steps of the draft model; each adds one token per request.
            for m in range(k):
                out = out + decode_times_bulk_s(self.draft, batch, contexts + float(m * batch_size))
            return out
        # k MTP passes, each a share of a target decode step at the same batch and context.
        for m in range(k):
            out = out + self.mtp_fraction * decode_times_bulk_s(self.target, batch, contexts + float(m * batch_size))
        return out

    def step_times_s(self, batch_size: int, context_tokens: np.ndarray) -> np.ndarray:
        """Durations of speculative decode steps of ``batch_size`` requests whose contexts sum
        to ``context_tokens[j]`` at step ``j``: the draft's proposals, then the verify step.
        With no draft tokens, a plain decode step, bit for bit."""
        verify = verify_times_bulk_s(self.target, batch_size, context_tokens, self.draft_tokens)
        if self.draft_tokens == 0:
            return verify
        return self.draft_times_s(batch_size, context_tokens) + verify

    def mixed_step_time_s(
        self, new_tokens: np.ndarray, cached_tokens: np.ndarray, decode_batch_size: int, decode_context_tokens: int
    ) -> float:
        """A chunked-prefill iteration whose decode requests speculate: their draft tokens ride
        in the iteration as chunks of ``k`` tokens on top of each request's context, and the
        draft's proposals come first."""
        k = self.draft_tokens
        if k == 0 or decode_batch_size == 0:
            return self.target.mixed_step_time_s(new_tokens, cached_tokens, decode_batch_size, decode_context_tokens)
        b = decode_batch_size
        new = np.concatenate([np.asarray(new_tokens, dtype=np.int64), np.full(b, k, dtype=np.int64)])
        cached = np.concatenate([np.asarray(cached_tokens, dtype=np.int64), spread_evenly(decode_context_tokens, b)])
        verify = self.target.mixed_step_time_s(new, cached, b, decode_context_tokens)
        draft = float(self.draft_times_s(b, np.array([float(decode_context_tokens)]))[0])
        return draft + verify


def draft_shape(cfg: RunConfig, spec: SpeculativeConfig, store: ProfileStore) -> ModelShape:
    """The draft model of method ``draft``, at the run's precision (an unknown name is refused
    naming the setting)."""
    assert spec.draft_model is not None
    try:
        return store.model(spec.draft_model).served_at(cfg.precision.weights, cfg.precision.kv_cache, cfg.precision.experts)
    except ConfigError as exc:
        raise ConfigError(f"decode.speculative.draft_model: {exc}") from None


def draft_memory(cfg: RunConfig, pool: PoolConfig, store: ProfileStore) -> tuple[float, float]:
    """``(weight bytes, KV bytes per token)`` the pool's draft adds to each instance's memory
    (both ``0.0`` without speculation).

    ``draft``: the draft model's weights and KV at the run's precision. ``mtp``: the MTP layers,
    each the size of an average layer of the model (DeepSeek-V3: about 11 B parameters beside
    the embedding and LM head it shares with the model), and their KV."""
    spec = pool.speculative
    if spec is None or spec.draft_tokens == 0:
        return 0.0, 0.0
    model = cfg.model_shape(store)
    if spec.method == "draft":
        draft = draft_shape(cfg, spec, store)
        return float(draft.weight_bytes), float(draft.kv_bytes_per_token)
    lm_head_bytes = model.lm_head_params * (model.weight_bytes_per_param or model.dtype_bytes)
    layer_bytes = (model.iteration_weight_bytes - lm_head_bytes) / model.num_layers
    kv_per_layer = model.kv_bytes_per_token / max(model.full_attention_layers, 1)
    return model.mtp_layers * layer_bytes, model.mtp_layers * kv_per_layer


def make_speculator(
    cfg: RunConfig,
    pool: PoolConfig,
    role: str,
    target: CostModel,
    store: ProfileStore,
    streams: Streams,
    cost_scale: float = 1.0,
) -> Speculator | None:
    """The speculator of a pool (``None`` when the pool does not speculate). Refuses MTP on a
    model without MTP layers, an unknown draft model and one the pool's TP cannot split,
    naming the setting. ``cost_scale`` multiplies the draft model's step times, as it does the
    target's (``target`` comes scaled already)."""
    spec = pool.speculative
    if spec is None:
        return None
    from simdisagg.costmodel.factory import make_cost_model

    model = cfg.model_shape(store)
    key = "decode.speculative"  # the aggregated baseline's pool inherits the decode pool's
    # One key for the run, whichever the pool: a request draws the same in either mode.
    draws_key = int(streams["speculative"].integers(0, 2**63))
    if spec.method == "mtp":
        if spec.draft_tokens and model.mtp_layers == 0:
            raise ConfigError(
                f"{key}: method 'mtp' needs a model with MTP layers; {model.display_name} has none "
                "(use method 'draft' with a draft_model)"
            )
        return Speculator(spec, target, draws_key, mtp_fraction=mtp_fraction(model))
    draft_model = draft_shape(cfg, spec, store)
    gpu = store.gpu(pool.gpu)
    # The draft runs on the pool's GPUs, split as the target is (TP only: a dense draft).
    check_parallelism(draft_model, pool.tp, f"{key}.draft_model {draft_model.name} at the pool's tp")
    draft = make_cost_model(
        cfg.cost, draft_model, gpu, pool.tp, streams, store, role=f"{role}-draft", framework=cfg.framework
    )
    if cost_scale != 1.0:
        from simdisagg.costmodel.scaled import ScaledCostModel

        draft = ScaledCostModel(draft, cost_scale)
    return Speculator(spec, target, draws_key, draft=draft)
