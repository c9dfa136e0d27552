"""Synthetic traces: agentic coding sessions (closed loop) and open-loop chat, RAG and coding.

``generate_trace(kind, ...)`` returns a :class:`~simdisagg.trace.Trace` like the importers do.
Every distribution has named parameters in a frozen pydantic model (``AgenticParams``,
``ChatParams``, ``CodingParams``, ``RagParams``) whose defaults say where they come from:

* ``agentic`` defaults are fitted by :func:`fit_agentic_params` to the 710 recorded Claude
  Code sessions of ``shared/traces/kv-cache-tester/derived/kvct_requests_710_traces.csv``;
* ``chat`` and ``coding`` defaults are fitted by :func:`fit_open_loop_params` to the Azure
  LLM inference 2023 conversation and code CSVs;
* ``rag`` defaults are stated assumptions (no public RAG trace with prefix hashes was at hand).

Agentic model, per session (all lognormals are parameterised by the mean ``mu`` and standard
deviation ``sigma`` of the natural log, so ``exp(mu)`` is the median):

1. ``steps`` main-agent requests, ``round(LogNormal(steps_log_mu, steps_log_sigma)) >= 1``.
2. A session has a large context window with probability ``large_context_probability``
   (the 1M-token models of the recording), else a standard one. Step 0 is open-loop at the
   session's arrival; its context is ``LogNormal(first_context_log_*)`` tokens
   (``large_first_context_log_*`` for a large window: mostly resumed sessions), at least the
   system prompt plus one block and at most the window's limit.
3. After each step the next input is a tool result with probability ``p_tool_step`` (tool
   time ``LogNormal(tool_time_log_*)`` s, new tokens ``LogNormal(tool_result_tokens_log_*)``),
   else a user turn (think time ``LogNormal(user_think_log_*)`` s, new tokens
   ``LogNormal(user_turn_tokens_log_*)``). Context grows: previous context + previous output +
   new tokens. Compaction (Claude Code's ``/compact`` and auto-compact) shrinks the context to
   ``compaction_keep_fraction`` of its size, as a user turn whose only cached prefix is the
   system prompt: always when the next context would pass the window's limit
   (``context_limit_tokens`` or ``large_context_limit_tokens``), and with probability
   ``compaction_probability`` per step once the context is at least
   ``compaction_threshold_tokens`` (``large_compaction_*`` for a large window).
4. Prefix hashes, one per full ``hash_block_tokens`` block: a session's step reuses all full
   blocks of its previous context and adds fresh ids; the first ``system_prompt_tokens`` are
   one global prefix shared by all sessions (Claude Code's tool definitions + system prompt).
5. After a step that is followed by a tool result, with probability ``subagent_probability``
   the tool call spawns ``1 + Poisson(subagent_extra_mean)`` sub-agents (fan-out: several
   requests wait for one). Each is its own chain of tool steps starting
   ``subagent_start_delay_s`` after the spawning step completes, with its own shared prompt
   prefix; the parent's next step waits for the spawning step and every sub-agent's last
   request (fan-in).
6. Sessions arrive by a Markov-modulated Poisson process (MMPP) with two states: rate
   ``rate_low_per_s`` and ``rate_high_per_s``, leaving the low state at rate
   ``switch_to_high_per_s`` and the high state at ``switch_to_low_per_s``; or a Gamma renewal
   process (``arrival="gamma"``, mean rate ``arrival_rate_per_s``, inter-arrival CV
   ``interarrival_cv``; ``"poisson"`` is CV 1). These are *not* fitted: the recorded sessions
   have no common clock.

Recorded timestamps of closed-loop requests (ignored by a replay) use a nominal service time
``api_time_base_s + api_time_per_output_token_s × output`` fitted to the recorded ``api_time``.

Hash ids are renumbered 0, 1, 2, ... in order of first appearance once a trace is built.

Randomness: ``seed`` → ``SeedSequence(seed, spawn_key=(0,))`` for arrivals and
``SeedSequence(seed, spawn_key=(1, k))`` for session ``k``, so adding sessions or changing the
arrival process never changes the content of the other sessions.

Tenants (``tenants={"a": 0.7, "b": 0.3}``): each session (agentic) or request (open-loop
kinds) is drawn a tenant with those weights from ``SeedSequence(seed, spawn_key=(2,))``, so a
tenant mix leaves arrivals, lengths and hashes exactly as they are without one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simdisagg.errors import ConfigError
from simdisagg.prefixtree import PrefixTreeBuilder
from simdisagg.trace import Trace, TraceBuilder

Kind = Literal["agentic", "chat", "rag", "coding"]
KINDS: tuple[str, ...] = ("agentic", "chat", "rag", "coding")
ArrivalProcess = Literal["mmpp", "gamma", "poisson"]

# Ids of shared prompt blocks live in namespace 0; session k's own blocks in namespace k + 1,
# so sessions are independent of each other and never collide.
_NAMESPACE_STRIDE = 2**40


class _Params(BaseModel):
    """Base of the parameter models: unknown names are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ArrivalParams(_Params):
    """Arrival process of sessions (agentic) or requests (open-loop kinds).

    The MMPP defaults (0.02/s, bursting to 0.2/s) are sized for agentic sessions.
    """

    arrival: ArrivalProcess = "poisson"
    arrival_rate_per_s: float = Field(
        default=1.0, gt=0, description="mean rate of the gamma/poisson process (sessions or requests), 1/s"
    )
    interarrival_cv: float = Field(default=1.0, gt=0, description="CV of gamma inter-arrival gaps")
    rate_low_per_s: float = Field(default=0.02, ge=0, description="MMPP rate in the low state, 1/s")
    rate_high_per_s: float = Field(default=0.2, ge=0, description="MMPP rate in the high state, 1/s")
    switch_to_high_per_s: float = Field(default=1 / 600, gt=0, description="MMPP low→high switching rate, 1/s")
    switch_to_low_per_s: float = Field(default=1 / 60, gt=0, description="MMPP high→low switching rate, 1/s")


class AgenticParams(ArrivalParams):
    """Agentic coding sessions (Claude Code-like); see the module docstring for the model.

    The token, step and time defaults were produced by
    ``fit_agentic_params("shared/traces/kv-cache-tester/derived/kvct_requests_710_traces.csv")``
    on 2026-11-23 (710 sessions, 48,658 main-agent and 676 sub-agent requests), rounded to 4
    significant digits; ``system_prompt_tokens`` is the median ``tool_tokens + system_tokens`` of the
    kv-cache-tester files (README: ≈ 15,000). The arrival defaults are chosen, not fitted
    (the sessions have no common clock): an MMPP averaging ≈ 0.036 sessions/s, bursting to
    0.2/s for about a minute every 11 minutes.
    """

    arrival: ArrivalProcess = "mmpp"
    arrival_rate_per_s: float = Field(default=0.036, gt=0)
    hash_block_tokens: int = Field(default=64, ge=1, description="tokens per hashed block")
    system_prompt_tokens: int = Field(default=15_000, ge=0, description="global shared prefix, tokens")
    # --- fitted by fit_agentic_params on kvct_requests_710_traces.csv, 2026-11-23 ---
    steps_log_mu: float = 3.807
    steps_log_sigma: float = 0.9656
    large_context_probability: float = Field(default=0.2338, ge=0, le=1)
    first_context_log_mu: float = 9.937
    first_context_log_sigma: float = 1.314
    large_first_context_log_mu: float = 12.37
    large_first_context_log_sigma: float = 0.5914
    context_limit_tokens: int = Field(default=163_811, ge=1)
    large_context_limit_tokens: int = Field(default=894_371, ge=1)
    output_log_mu: float = 5.375
    output_log_sigma: float = 1.113
    p_tool_step: float = Field(default=0.8511, ge=0, le=1)
    tool_result_tokens_log_mu: float = 5.924
    tool_result_tokens_log_sigma: float = 1.674
    user_turn_tokens_log_mu: float = 5.513
    user_turn_tokens_log_sigma: float = 1.818
    tool_time_log_mu: float = 2.197
    tool_time_log_sigma: float = 1.566
    user_think_log_mu: float = 4.875
    user_think_log_sigma: float = 2.094
    compaction_threshold_tokens: int = Field(default=105_162, ge=1)
    compaction_probability: float = Field(default=0.0137, ge=0, le=1)
    large_compaction_threshold_tokens: int = Field(default=51_237, ge=1)
    large_compaction_probability: float = Field(default=0.002954, ge=0, le=1)
    compaction_keep_fraction: float = Field(default=0.2703, gt=0, le=1)
    subagent_probability: float = Field(default=0.0007925, ge=0, le=1)
    subagent_extra_mean: float = Field(default=0.6579, ge=0)
    subagent_prompt_tokens: int = Field(default=9984, ge=0)
    subagent_steps_log_mu: float = 2.398
    subagent_steps_log_sigma: float = 0.3397
    subagent_first_context_log_mu: float = 9.243
    subagent_first_context_log_sigma: float = 0.1278
    subagent_output_log_mu: float = 5.46
    subagent_output_log_sigma: float = 0.6265
    subagent_tool_result_tokens_log_mu: float = 7.723
    subagent_tool_result_tokens_log_sigma: float = 1.364
    subagent_tool_time_log_mu: float = 1.386
    subagent_tool_time_log_sigma: float = 1.546
    subagent_start_delay_s: float = Field(default=3.546, ge=0)
    api_time_base_s: float = Field(default=3.009, ge=0)
    api_time_per_output_token_s: float = Field(default=0.01527, ge=0)


class OpenLoopParams(ArrivalParams):
    """Open-loop single requests: lognormal input and output lengths, clipped to [1, max].

    The base of :class:`ChatParams` and :class:`CodingParams`, whose defaults are fitted; the
    length defaults here are only placeholders for a direct use.
    """

    hash_block_tokens: int = Field(default=64, ge=1)
    system_prompt_tokens: int = Field(default=0, ge=0, description="global shared prefix, tokens")
    input_log_mu: float = 6.9
    input_log_sigma: float = 1.0
    input_max_tokens: int = Field(default=8192, ge=1)
    output_log_mu: float = 5.0
    output_log_sigma: float = 1.0
    output_max_tokens: int = Field(default=2048, ge=1)


class ChatParams(OpenLoopParams):
    """Chat requests. Defaults: ``fit_open_loop_params`` on
    ``shared/traces/azure2023/AzureLLMInferenceTrace_conv.csv`` (19,366 requests), 2026-11-23:
    lognormals of ContextTokens and GeneratedTokens (median and p90 matched), their maxima, the
    mean arrival rate and the inter-arrival CV (Gamma renewal arrivals)."""

    arrival: ArrivalProcess = "gamma"
    arrival_rate_per_s: float = Field(default=5.53, gt=0)
    interarrival_cv: float = Field(default=1.094, gt=0)
    input_log_mu: float = 6.928
    input_log_sigma: float = 0.7695
    input_max_tokens: int = Field(default=14_050, ge=1)
    output_log_mu: float = 4.86
    output_log_sigma: float = 0.9285
    output_max_tokens: int = Field(default=1000, ge=1)


class CodingParams(OpenLoopParams):
    """Code-completion requests. Defaults: ``fit_open_loop_params`` on
    ``shared/traces/azure2023/AzureLLMInferenceTrace_code.csv`` (8,819 requests), 2026-11-23:
    lognormals of the lengths (median and p90 matched), their maxima, the mean arrival rate and
    the inter-arrival CV (a Gamma renewal process with CV 13: long quiet gaps between dense
    bursts)."""

    arrival: ArrivalProcess = "gamma"
    arrival_rate_per_s: float = Field(default=2.567, gt=0)
    interarrival_cv: float = Field(default=13.151, gt=0)
    input_log_mu: float = 7.292
    input_log_sigma: float = 0.9845
    input_max_tokens: int = Field(default=7437, ge=1)
    output_log_mu: float = 2.565
    output_log_sigma: float = 1.125
    output_max_tokens: int = Field(default=1899, ge=1)


class RagParams(ArrivalParams):
    """Retrieval-augmented requests. Defaults are assumptions, not fits (no public RAG trace
    with prefix hashes was available): Poisson arrivals at 2/s; an 800-token system prompt
    shared by all; ``docs_per_request`` chunks of ``chunk_tokens`` drawn without replacement
    from ``corpus_docs`` documents with Zipf(``zipf_exponent``) popularity, in draw order; a
    question of LogNormal(log 40, 0.6) tokens; answers of LogNormal(log 200, 0.8) tokens.
    Chunks are whole blocks, so a request reuses the cached KV of an earlier request exactly
    as far as the two share the system prompt and the same leading chunks in the same order."""

    arrival: ArrivalProcess = "poisson"
    arrival_rate_per_s: float = Field(default=2.0, gt=0)
    hash_block_tokens: int = Field(default=64, ge=1)
    system_prompt_tokens: int = Field(default=800, ge=0)
    docs_per_request: int = Field(default=4, ge=0)
    chunk_tokens: int = Field(default=512, ge=1)
    corpus_docs: int = Field(default=2_000, ge=1)
    zipf_exponent: float = Field(default=1.1, ge=0)
    query_log_mu: float = math.log(40)
    query_log_sigma: float = 0.6
    output_log_mu: float = math.log(200)
    output_log_sigma: float = 0.8
    output_max_tokens: int = Field(default=2_048, ge=1)


PARAMS_BY_KIND: dict[str, type[_Params]] = {
    "agentic": AgenticParams,
    "chat": ChatParams,
    "rag": RagParams,
    "coding": CodingParams,
}


def default_params(kind: str) -> Any:
    """The default parameter model of a kind (fitted or stated defaults)."""
    if kind not in PARAMS_BY_KIND:
        raise ConfigError(f"unknown trace kind '{kind}'; expected one of {', '.join(KINDS)}")
    return PARAMS_BY_KIND[kind]()


def make_params(kind: str, overrides: Mapping[str, Any] | None = None, base: Any | None = None) -> Any:
    """Defaults of ``kind`` (or ``base``) with ``overrides`` applied and validated.

    Values may be strings (from ``--param key=value``); pydantic converts and checks them.
    Unknown names and invalid values raise :class:`ConfigError` naming the parameter.
    """
    model = PARAMS_BY_KIND.get(kind)
    if model is None:
        raise ConfigError(f"unknown trace kind '{kind}'; expected one of {', '.join(KINDS)}")
    values = (base or model()).model_dump()
    values.update(overrides or {})
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "?"
        if err["type"] == "extra_forbidden":
            known = ", ".join(sorted(model.model_fields))
            raise ConfigError(f"unknown {kind} parameter '{name}'; known: {known}") from None
        raise ConfigError(f"{kind} parameter '{name}': {err['msg']}") from None


# --------------------------------------------------------------------------------------------
# Arrival processes


def arrival_times(count: int, params: ArrivalParams, rng: np.random.Generator) -> np.ndarray:
    """``count`` arrival instants, s, starting at 0 (the first arrival defines the origin).

    ``poisson``: exponential gaps at ``arrival_rate_per_s``. ``gamma``: Gamma renewal gaps with
    mean ``1/arrival_rate_per_s`` and CV ``interarrival_cv`` (shape ``1/cv²``). ``mmpp``: two-state
    Markov-modulated Poisson process started in its stationary distribution; in state ``i``
    arrivals come at rate ``λ_i`` and the state changes at rate ``r_i`` (competing exponentials).
    """
    if count <= 0:
        return np.zeros(0)
    if params.arrival in ("poisson", "gamma"):
        rate = params.arrival_rate_per_s
        cv = 1.0 if params.arrival == "poisson" else params.interarrival_cv
        shape = 1.0 / (cv * cv)
        gaps_s = rng.gamma(shape, 1.0 / (rate * shape), size=count - 1)
        return np.concatenate([[0.0], np.cumsum(gaps_s)])
    rates = (params.rate_low_per_s, params.rate_high_per_s)
    switch = (params.switch_to_high_per_s, params.switch_to_low_per_s)
    if max(rates) <= 0:
        raise ConfigError("mmpp needs a positive arrival rate in at least one state")
    p_high = switch[0] / (switch[0] + switch[1])
    state = int(rng.random() < p_high)
    now_s = 0.0
    times = np.empty(count)
    k = 0
    while k < count:
        total = rates[state] + switch[state]
        now_s += rng.exponential(1.0 / total)
        if rng.random() * total < rates[state]:
            times[k] = now_s
            k += 1
        else:
            state = 1 - state
    return times - times[0]


def _lognormal(rng: np.random.Generator, mu: float, sigma: float) -> float:
    return float(rng.lognormal(mu, sigma))


def _tokens(rng: np.random.Generator, mu: float, sigma: float, minimum: int = 1, maximum: int | None = None) -> int:
    value = max(minimum, int(round(_lognormal(rng, mu, sigma))))
    return value if maximum is None else min(value, maximum)


# --------------------------------------------------------------------------------------------
# Agentic sessions


class _Blocks:
    """The path of one agent's context in the generated prefix tree, extended as it grows.

    Requests name their prefix by the segment at the end of this path, so a generated trace
    never holds per-block hash lists (a 100k-token context is over 1,500 blocks of 64 tokens).
    """

    def __init__(self, block_tokens: int, tree: PrefixTreeBuilder, shared_segment: int, shared_tokens: int) -> None:
        self.block_tokens = block_tokens
        self.tree = tree
        self.shared_segment = shared_segment
        self.shared_tokens = shared_tokens
        self.end = -1  # last segment of the path (-1: empty)
        self.count = 0  # full blocks on the path

    def reset(self, context_tokens: int) -> int:
        """Context rebuilt from the shared prompt plus fresh content (start or compaction)."""
        shared_blocks = 0
        if self.shared_segment >= 0:
            shared_blocks = min(self.shared_tokens, context_tokens) // self.block_tokens
        self.end = self.tree.end_at(self.shared_segment, shared_blocks)
        self.count = shared_blocks
        return self.grow(context_tokens)

    def grow(self, context_tokens: int) -> int:
        """Context extended to ``context_tokens``: earlier full blocks kept, the rest fresh.

        The previous context's partial last block is completed with new content, so it is a
        fresh block like every block after it. Returns the path's last segment.
        """
        full = context_tokens // self.block_tokens
        if full > self.count:
            self.end = self.tree.extend(self.end, full - self.count)
            self.count = full
        return self.end


def _shared_segment(tree: PrefixTreeBuilder, tokens: int, block_tokens: int) -> int:
    """A root segment of the full blocks of a prompt shared by many requests (-1 if none)."""
    n_blocks = tokens // block_tokens
    return tree.extend(-1, n_blocks) if n_blocks else -1


class _Fresh:
    """Allocates hash ids that no other block uses."""

    def __init__(self, first_id: int) -> None:
        self.next_id = first_id

    def take(self, n: int) -> np.ndarray:
        """``n`` new ids."""
        start = self.next_id
        self.next_id += n
        return np.arange(start, start + n, dtype=np.int64)


def _api_time_s(p: AgenticParams, output_tokens: int) -> float:
    return p.api_time_base_s + p.api_time_per_output_token_s * output_tokens


def _agentic_session(
    emit: _Emitter,
    p: AgenticParams,
    k: int,
    start_s: float,
    seed: int,
    system_segment: int,
    subagent_segment: int,
) -> None:
    """Add session ``k`` (its main agent and sub-agents) to ``emit``."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, k)))
    name = f"s{k:05d}"
    block = p.hash_block_tokens
    steps = max(1, int(round(_lognormal(rng, p.steps_log_mu, p.steps_log_sigma))))
    tree = emit.builder.tree
    assert tree is not None
    blocks = _Blocks(block, tree, system_segment, p.system_prompt_tokens)
    min_context = p.system_prompt_tokens + block
    if rng.random() < p.large_context_probability:
        limit = max(min_context, p.large_context_limit_tokens)
        threshold = p.large_compaction_threshold_tokens
        p_compact = p.large_compaction_probability
        first = _tokens(rng, p.large_first_context_log_mu, p.large_first_context_log_sigma)
    else:
        limit = max(min_context, p.context_limit_tokens)
        threshold = p.compaction_threshold_tokens
        p_compact = p.compaction_probability
        first = _tokens(rng, p.first_context_log_mu, p.first_context_log_sigma)
    context = min(limit, max(min_context, first))
    ids = blocks.reset(context)
    out = _tokens(rng, p.output_log_mu, p.output_log_sigma)
    rid = f"{name}/main/0"
    emit.add(timestamp_s=start_s, input_tokens=context, output_tokens=out,
             request_id=rid, session_id=name, prefix_segment=ids)  # fmt: skip
    prev_id, prev_end_s, prev_out = rid, start_s + _api_time_s(p, out), out
    n_sub = 0
    for step in range(1, steps):
        tool_step = rng.random() < p.p_tool_step
        compact = context >= threshold and rng.random() < p_compact
        if tool_step:
            wait_s = _lognormal(rng, p.tool_time_log_mu, p.tool_time_log_sigma)
            new = _tokens(rng, p.tool_result_tokens_log_mu, p.tool_result_tokens_log_sigma)
        else:
            wait_s = _lognormal(rng, p.user_think_log_mu, p.user_think_log_sigma)
            new = _tokens(rng, p.user_turn_tokens_log_mu, p.user_turn_tokens_log_sigma)
        grown = context + prev_out + new
        if compact or grown > limit:
            # /compact or auto-compact: a user turn with a summarised context
            if tool_step:
                wait_s = _lognormal(rng, p.user_think_log_mu, p.user_think_log_sigma)
            tool_step = False
            context = min(limit, max(min_context, int(round(context * p.compaction_keep_fraction))))
            ids = blocks.reset(context)
        else:
            context = grown
            ids = blocks.grow(context)
        waits = [prev_id]
        ready_s = prev_end_s
        if tool_step and rng.random() < p.subagent_probability:
            fan_out = 1 + int(rng.poisson(p.subagent_extra_mean))
            for _ in range(fan_out):
                last_id, last_end_s = _subagent(emit, p, rng, name, n_sub, prev_id, prev_end_s, subagent_segment)
                n_sub += 1
                waits.append(last_id)
                ready_s = max(ready_s, last_end_s)
        out = _tokens(rng, p.output_log_mu, p.output_log_sigma)
        rid = f"{name}/main/{step}"
        at_s = ready_s + wait_s
        emit.add(timestamp_s=at_s, input_tokens=context, output_tokens=out, request_id=rid,
                 session_id=name, wait_for=waits, tool_wait_s=wait_s, prefix_segment=ids)  # fmt: skip
        prev_id, prev_end_s, prev_out = rid, at_s + _api_time_s(p, out), out


def _subagent(
    emit: _Emitter,
    p: AgenticParams,
    rng: np.random.Generator,
    session: str,
    index: int,
    spawner_id: str,
    spawner_end_s: float,
    subagent_segment: int,
) -> tuple[str, float]:
    """Add one sub-agent chain; returns its last request id and nominal completion time."""
    block = p.hash_block_tokens
    tree = emit.builder.tree
    assert tree is not None
    blocks = _Blocks(block, tree, subagent_segment, p.subagent_prompt_tokens)
    steps = max(1, int(round(_lognormal(rng, p.subagent_steps_log_mu, p.subagent_steps_log_sigma))))
    context = max(
        p.subagent_prompt_tokens + block,
        _tokens(rng, p.subagent_first_context_log_mu, p.subagent_first_context_log_sigma),
    )
    ids = blocks.reset(context)
    agent = f"{session}/agent_{index + 1:03d}"
    waits, wait_s, ready_s = [spawner_id], p.subagent_start_delay_s, spawner_end_s
    rid, end_s, out = "", ready_s, 0
    for step in range(steps):
        if step:
            wait_s = _lognormal(rng, p.subagent_tool_time_log_mu, p.subagent_tool_time_log_sigma)
            new = _tokens(rng, p.subagent_tool_result_tokens_log_mu, p.subagent_tool_result_tokens_log_sigma)
            context = context + out + new
            ids = blocks.grow(context)
            waits, ready_s = [rid], end_s
        out = _tokens(rng, p.subagent_output_log_mu, p.subagent_output_log_sigma)
        rid = f"{agent}/{step}"
        at_s = ready_s + wait_s
        emit.add(timestamp_s=at_s, input_tokens=context, output_tokens=out,
                    request_id=rid, session_id=session, wait_for=waits, tool_wait_s=wait_s, prefix_segment=ids)  # fmt: skip
        end_s = at_s + _api_time_s(p, out)
    return rid, end_s


class _Emitter:
    """A :class:`TraceBuilder` plus a request count (the position stands in for a file line)."""

    def __init__(self, builder: TraceBuilder) -> None:
        self.builder = builder
        self.count = 0

    def add(self, **request: Any) -> None:
        """Add one request (keyword arguments of :meth:`TraceBuilder.add`, without ``line``)."""
        self.count += 1
        self.builder.add(line=self.count, **request)


def _shared_ids(first_id: int, tokens: int, block_tokens: int) -> np.ndarray:
    return np.arange(first_id, first_id + tokens // block_tokens, dtype=np.int64)


def _generate_agentic(p: AgenticParams, num_sessions: int | None, num_requests: int | None, seed: int) -> Trace:
    source = f"generated:agentic:seed={seed}"
    tree = PrefixTreeBuilder()
    emit = _Emitter(TraceBuilder(source, p.hash_block_tokens, tree))
    system_segment = _shared_segment(tree, p.system_prompt_tokens, p.hash_block_tokens)
    subagent_segment = _shared_segment(tree, p.subagent_prompt_tokens, p.hash_block_tokens)
    arrivals_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    if num_sessions is not None:
        starts_s = arrival_times(num_sessions, p, arrivals_rng)
        for k, start_s in enumerate(starts_s):
            _agentic_session(emit, p, k, float(start_s), seed, system_segment, subagent_segment)
        return emit.builder.build()
    assert num_requests is not None
    # Sessions are added whole until there are enough requests; arrival instants are drawn in
    # growing batches from the same stream, so the result equals num_sessions=<count used>.
    starts_s = arrival_times(64, p, arrivals_rng)
    k = 0
    while emit.count < num_requests:
        if k == len(starts_s):
            raise ConfigError("internal: arrival batch exhausted")  # pragma: no cover
        _agentic_session(emit, p, k, float(starts_s[k]), seed, system_segment, subagent_segment)
        k += 1
        if k == len(starts_s):
            arrivals_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
            starts_s = arrival_times(2 * len(starts_s), p, arrivals_rng)
    return emit.builder.build()


# --------------------------------------------------------------------------------------------
# Open-loop kinds


def _generate_open_loop(kind: str, p: OpenLoopParams, count: int, seed: int) -> Trace:
    tree = PrefixTreeBuilder()
    builder = TraceBuilder(f"generated:{kind}:seed={seed}", p.hash_block_tokens, tree)
    arrivals = arrival_times(count, p, np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    inputs = np.clip(np.rint(rng.lognormal(p.input_log_mu, p.input_log_sigma, count)), 1, p.input_max_tokens)
    outputs = np.clip(np.rint(rng.lognormal(p.output_log_mu, p.output_log_sigma, count)), 1, p.output_max_tokens)
    shared = _shared_segment(tree, p.system_prompt_tokens, p.hash_block_tokens)
    for i in range(count):
        inp = int(max(inputs[i], min(p.system_prompt_tokens, p.input_max_tokens)))
        blocks = _Blocks(p.hash_block_tokens, tree, shared, p.system_prompt_tokens)
        builder.add(line=i + 1, timestamp_s=float(arrivals[i]), input_tokens=inp,
                    output_tokens=int(outputs[i]), request_id=f"r{i}", prefix_segment=blocks.reset(inp))  # fmt: skip
    return builder.build()


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return w / w.sum()


def _generate_rag(p: RagParams, count: int, seed: int) -> Trace:
    builder = TraceBuilder(f"generated:rag:seed={seed}", p.hash_block_tokens)
    arrivals = arrival_times(count, p, np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    block = p.hash_block_tokens
    # Chunks are padded to whole blocks so that equal leading chunks give equal block ids.
    chunk_blocks = max(1, math.ceil(p.chunk_tokens / block))
    shared = _shared_ids(0, p.system_prompt_tokens, block).tolist()
    sys_pad = p.system_prompt_tokens - len(shared) * block  # tail of the prompt, never shared
    weights = _zipf_weights(p.corpus_docs, p.zipf_exponent)
    k_docs = min(p.docs_per_request, p.corpus_docs)
    fresh = _Fresh(len(shared))
    path_ids: dict[tuple[int, ...], list[int]] = {}
    for i in range(count):
        docs = rng.choice(p.corpus_docs, size=k_docs, replace=False, p=weights) if k_docs else []
        ids = list(shared)
        path: tuple[int, ...] = ()
        if sys_pad == 0:
            for d in docs:
                path = path + (int(d),)
                if path not in path_ids:
                    path_ids[path] = fresh.take(chunk_blocks).tolist()
                ids.extend(path_ids[path])
        query = _tokens(rng, p.query_log_mu, p.query_log_sigma)
        inp = p.system_prompt_tokens + k_docs * chunk_blocks * block + query
        full = inp // block
        if full > len(ids):
            ids.extend(fresh.take(full - len(ids)).tolist())
        out = _tokens(rng, p.output_log_mu, p.output_log_sigma, maximum=p.output_max_tokens)
        builder.add(line=i + 1, timestamp_s=float(arrivals[i]), input_tokens=inp, output_tokens=out,
                    request_id=f"r{i}", hash_ids=ids[:full])  # fmt: skip
    return builder.build()


def _dense_hash_ids(trace: Trace) -> Trace:
    """Renumber hash ids 0, 1, 2, ... in order of first appearance (only equality matters).

    Keeps files small (ids of the per-session namespaces are ~13 digits) and keeps a prefix
    of sessions numbered the same when more sessions are added after it.
    """
    if trace.prefix_tree_only:
        return trace  # tree keys are already numbered in order of creation
    values = trace.hash_values
    if len(values):
        _, first_pos, inverse = np.unique(values, return_index=True, return_inverse=True)
        rank = np.empty(len(first_pos), dtype=np.int64)
        rank[np.argsort(first_pos, kind="stable")] = np.arange(len(first_pos), dtype=np.int64)
        trace.set_hash_values(rank[inverse])
    return trace


def assign_tenants(trace: Trace, weights: Mapping[str, float], seed: int) -> Trace:
    """Label ``trace``'s requests with tenants drawn with ``weights`` (every request of one
    session gets its session's tenant), from a stream of their own (see the module docstring).
    Weights must be positive and finite; they are normalised."""
    names = list(weights)
    if not names:
        return trace
    w = np.asarray([float(weights[k]) for k in names], dtype=np.float64)
    if not np.all(np.isfinite(w) & (w > 0)):
        raise ConfigError(f"tenant weights must be positive and finite, got {dict(weights)}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    sessions = trace.session_index
    n_units = int(sessions.max()) + 1 if (sessions >= 0).any() else 0
    # One draw per session (in session order), then one per request without a session.
    per_session = rng.choice(len(names), size=n_units, p=w / w.sum()) if n_units else np.zeros(0, dtype=np.int64)
    loose = np.flatnonzero(sessions < 0)
    per_loose = rng.choice(len(names), size=len(loose), p=w / w.sum())
    index = np.empty(len(trace), dtype=np.int64)
    has = sessions >= 0
    index[has] = per_session[sessions[has]]
    index[loose] = per_loose
    trace.tenant_index, trace.tenant_names = index, names
    return trace


def generate_trace(
    kind: Kind,
    *,
    num_sessions: int | None = None,
    num_requests: int | None = None,
    seed: int = 0,
    horizon_s: float | None = None,
    params: Any | None = None,
    tenants: Mapping[str, float] | None = None,
    **overrides: Any,
) -> Trace:
    """Generate a synthetic trace of ``kind``; deterministic for a given ``seed``.

    ``agentic`` takes ``num_sessions`` (default 10), or ``num_requests`` to add whole sessions
    until at least that many requests exist. The open-loop kinds take ``num_requests``
    (``num_sessions`` is accepted as a synonym; default 1,000). ``params`` is a parameter model
    of the kind (default: its fitted defaults); keyword ``overrides`` replace single fields, e.g.
    ``generate_trace("agentic", num_sessions=5, p_tool_step=0.9)``.

    ``horizon_s`` keeps only requests whose recorded (nominal) arrival is at most that many
    seconds after the first arrival: a window of the workload. Sessions still running at the
    horizon are cut there; since a request always comes after the requests it waits for, no
    kept request waits for a dropped one. (A replay times closed-loop requests by simulated
    completions, so it may stretch or shrink the window a little.)

    ``tenants`` labels requests with tenants drawn with these weights (:func:`assign_tenants`).
    """
    p = make_params(kind, overrides, base=params)
    if num_sessions is not None and num_requests is not None and kind == "agentic":
        raise ConfigError("give num_sessions or num_requests, not both")
    for name, value in (("num_sessions", num_sessions), ("num_requests", num_requests)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if horizon_s is not None and not horizon_s > 0:
        raise ConfigError(f"horizon_s must be > 0, got {horizon_s}")
    if kind == "agentic":
        if num_sessions is None and num_requests is None:
            num_sessions = 10
        trace = _generate_agentic(p, num_sessions, num_requests, seed)
    else:
        count = num_requests or num_sessions or 1000
        trace = _generate_rag(p, count, seed) if kind == "rag" else _generate_open_loop(kind, p, count, seed)
    if tenants:
        trace = assign_tenants(trace, tenants, seed)
    if horizon_s is not None:
        keep = np.flatnonzero(trace.timestamp_s <= trace.timestamp_s.min() + horizon_s)
        trace = trace.subset(keep)
    return _dense_hash_ids(trace)


# --------------------------------------------------------------------------------------------
# Fitting


LARGE_WINDOW_ABOVE_TOKENS = 200_000  # contexts beyond this need a 1M-token model
_Z90 = 1.2815515655446004  # standard normal 90th percentile


def _lognormal_fit(values: Any, floor: float = 0.0) -> tuple[float, float]:
    """Lognormal ``(mu, sigma)`` matching the median and 90th percentile of the values > ``floor``.

    Quantile matching, not maximum likelihood: the recorded samples are mixtures (e.g. fresh
    sessions plus resumed ones with huge contexts) whose log is skewed, and the MLE then puts
    the median up to 1.8× too high and the mean of a step's new tokens 20 % too high. Matching
    p50 and p90 keeps the typical value and the upper tail that drive prefill load.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[x > floor]
    if len(x) < 2:
        raise ConfigError(f"cannot fit a lognormal to {len(x)} positive values")
    p50, p90 = np.percentile(x, [50, 90])
    mu = float(np.log(p50))
    sigma = float(max(np.log(p90) - mu, 0.0) / _Z90)
    return mu, sigma


def fit_agentic_params(csv_path: str | Path) -> AgenticParams:
    """Fit :class:`AgenticParams` to the kv-cache-tester derived per-request CSV.

    Per session (``trace_id``), main-agent rows in file order; every lognormal matches the
    sample's median and 90th percentile (:func:`_lognormal_fit`):

    * steps = main-agent requests per session; output = ``out`` (> 0) of main-agent requests;
    * large window = a session whose context ever passed 200k tokens; first context = ``in`` of
      the first request, fitted per window class; context limit = the 99th percentile of ``in``
      in standard sessions (auto-compact fires around there; a few overshoot to 198k) and the
      largest ``in`` of all for large ones;
    * ``p_tool_step`` = share of later requests whose input is exactly ``tool_result``;
    * new tokens = ``in[k] − in[k−1] − out[k−1]``, fitted on the positive values (≤ 0 means
      thinking tokens were not kept in the context; 11 % of steps, mostly a few tokens) and
      split by tool-result vs user-turn input, leaving compactions out;
    * tool time / user think = ``think_time_s`` split the same way; zeros (recorded in whole
      seconds, so < 1 s) are taken as 0.5 s;
    * compaction: a step whose context falls below 0.7 × the previous one; per window class,
      threshold = the 10th percentile of the context before those falls and probability =
      falls / steps from a context at or above the threshold; keep fraction = median ratio
      over all falls;
    * sub-agents: spawn events = groups of sub-agents after the same main request;
      ``subagent_probability`` = events / later main-agent requests, ``subagent_extra_mean`` =
      sub-agents per event − 1; prompt = median positive ``cached_prefix_tokens`` of a
      sub-agent's first request; steps, first context, output, new tokens and tool time fitted
      like the main agent's; start delay = median gap between the spawning request's end
      (``t_s + api_time_s``) and the sub-agent's start estimated as in the importer;
    * nominal service time = least squares of ``api_time_s`` on ``out``.
    """
    import pandas as pd

    d = pd.read_csv(csv_path, keep_default_na=False, dtype={"subagent_type": str})
    d["row"] = np.arange(len(d))
    d["think"] = pd.to_numeric(d["think_time_s"], errors="coerce")
    d["api"] = pd.to_numeric(d["api_time_s"], errors="coerce")
    main = d[d["agent"] == "main"].copy()
    g = main.groupby("trace_id", sort=False)
    main["prev_in"] = g["in"].shift()
    main["prev_out"] = g["out"].shift()
    later = main[main["prev_in"].notna()].copy()
    later["delta"] = later["in"] - later["prev_in"] - later["prev_out"]
    is_tool = later["input_types"] == "tool_result"
    compacted = later["in"] < 0.7 * later["prev_in"]
    steps = g.size()
    first = g.first()
    think = later["think"].clip(lower=0.5)

    # Sessions whose context ever passed 200k tokens (the standard window) ran on 1M-token models.
    large = g["in"].max() > LARGE_WINDOW_ABOVE_TOKENS
    later_large = later["trace_id"].map(large).astype(bool)
    standard = later[~later_large]
    standard_drop = compacted[~later_large]
    threshold = float(np.percentile(standard.loc[standard_drop, "prev_in"], 10))
    at_risk = standard["prev_in"] >= threshold
    fit: dict[str, Any] = {}
    fit["steps_log_mu"], fit["steps_log_sigma"] = _lognormal_fit(steps)
    fit["large_context_probability"] = float(large.mean())
    fit["first_context_log_mu"], fit["first_context_log_sigma"] = _lognormal_fit(first.loc[~large, "in"])
    fit["large_first_context_log_mu"], fit["large_first_context_log_sigma"] = _lognormal_fit(first.loc[large, "in"])
    fit["context_limit_tokens"] = int(np.percentile(main.loc[~main["trace_id"].map(large).astype(bool), "in"], 99))
    fit["large_context_limit_tokens"] = int(main["in"].max())
    fit["output_log_mu"], fit["output_log_sigma"] = _lognormal_fit(main["out"])
    fit["p_tool_step"] = float(is_tool.mean())
    fit["tool_result_tokens_log_mu"], fit["tool_result_tokens_log_sigma"] = _lognormal_fit(
        later.loc[is_tool & ~compacted, "delta"]
    )
    fit["user_turn_tokens_log_mu"], fit["user_turn_tokens_log_sigma"] = _lognormal_fit(
        later.loc[~is_tool & ~compacted, "delta"]
    )
    fit["tool_time_log_mu"], fit["tool_time_log_sigma"] = _lognormal_fit(think[is_tool].dropna())
    fit["user_think_log_mu"], fit["user_think_log_sigma"] = _lognormal_fit(think[~is_tool].dropna())
    fit["compaction_threshold_tokens"] = int(round(threshold))
    fit["compaction_probability"] = float(standard_drop[at_risk].sum() / max(1, int(at_risk.sum())))
    large_drop = compacted[later_large]
    large_threshold = float(np.percentile(later.loc[later_large & compacted, "prev_in"], 10))
    large_at_risk = later.loc[later_large, "prev_in"] >= large_threshold
    fit["large_compaction_threshold_tokens"] = int(round(large_threshold))
    fit["large_compaction_probability"] = float(large_drop[large_at_risk].sum() / max(1, int(large_at_risk.sum())))
    fit["compaction_keep_fraction"] = float((later.loc[compacted, "in"] / later.loc[compacted, "prev_in"]).median())

    sub = d[d["agent"] != "main"].copy()
    agents = sub.groupby(["trace_id", "agent"], sort=False)
    sub_first = agents.first()
    # the main request before each sub-agent's first row, in file order
    main_rows = main[["trace_id", "row", "t_s", "api"]]
    spawners = []
    delays = []
    for (tid, _agent), rows in agents:
        before = main_rows[(main_rows["trace_id"] == tid) & (main_rows["row"] < rows["row"].iloc[0])]
        spawners.append((tid, int(before["row"].iloc[-1]) if len(before) else -1))
        entry_t_s = rows["t_s"].iloc[0]
        last = rows.iloc[-1]
        start_s = entry_t_s - (last["t_s"] - entry_t_s + (0.0 if math.isnan(last["api"]) else last["api"]))
        if len(before):
            b = before.iloc[-1]
            delays.append(start_s - (b["t_s"] + (0.0 if math.isnan(b["api"]) else b["api"])))
    events = len(set(spawners))
    fit["subagent_probability"] = float(events / len(later))
    fit["subagent_extra_mean"] = float(len(spawners) / events - 1.0)
    positive_prompt = sub_first["cached_prefix_tokens"][sub_first["cached_prefix_tokens"] > 0]
    fit["subagent_prompt_tokens"] = int(positive_prompt.median())
    fit["subagent_steps_log_mu"], fit["subagent_steps_log_sigma"] = _lognormal_fit(agents.size())
    fit["subagent_first_context_log_mu"], fit["subagent_first_context_log_sigma"] = _lognormal_fit(sub_first["in"])
    fit["subagent_output_log_mu"], fit["subagent_output_log_sigma"] = _lognormal_fit(sub["out"])
    sg = sub.groupby(["trace_id", "agent"], sort=False)
    sub = sub.assign(prev_in=sg["in"].shift(), prev_out=sg["out"].shift())
    sub_later = sub[sub["prev_in"].notna()]
    fit["subagent_tool_result_tokens_log_mu"], fit["subagent_tool_result_tokens_log_sigma"] = _lognormal_fit(
        sub_later["in"] - sub_later["prev_in"] - sub_later["prev_out"]
    )
    fit["subagent_tool_time_log_mu"], fit["subagent_tool_time_log_sigma"] = _lognormal_fit(
        sub_later["think"].clip(lower=0.5).dropna()
    )
    fit["subagent_start_delay_s"] = float(np.median([x for x in delays if x >= 0]))
    ok = main["api"].notna()
    design = np.vstack([np.ones(int(ok.sum())), main.loc[ok, "out"].to_numpy(dtype=np.float64)]).T
    (base_s, per_token_s), *_ = np.linalg.lstsq(design, main.loc[ok, "api"].to_numpy(), rcond=None)
    fit["api_time_base_s"] = float(base_s)
    fit["api_time_per_output_token_s"] = float(per_token_s)
    return AgenticParams(**fit)


class OpenLoopFit(BaseModel):
    """Lengths and arrival statistics of an open-loop CSV trace (Azure layout)."""

    model_config = ConfigDict(frozen=True)
    arrival_rate_per_s: float
    interarrival_cv: float
    input_log_mu: float
    input_log_sigma: float
    input_max_tokens: int
    output_log_mu: float
    output_log_sigma: float
    output_max_tokens: int


def fit_open_loop_params(csv_path: str | Path) -> OpenLoopFit:
    """Fit lognormal lengths (median and p90 matched), maxima, mean rate and inter-arrival CV
    to an Azure CSV.

    The result's fields are the ones :class:`ChatParams` / :class:`CodingParams` take, e.g.
    ``ChatParams(**fit_open_loop_params(path).model_dump())``.
    """
    from simdisagg.importers import import_azure

    trace = import_azure(csv_path).trace
    ts = np.sort(trace.timestamp_s)
    gaps = np.diff(ts)
    span_s = float(ts[-1] - ts[0])
    in_mu, in_sigma = _lognormal_fit(trace.input_tokens)
    out_mu, out_sigma = _lognormal_fit(trace.output_tokens)
    return OpenLoopFit(
        arrival_rate_per_s=len(trace) / span_s,
        interarrival_cv=float(gaps.std() / gaps.mean()),
        input_log_mu=in_mu,
        input_log_sigma=in_sigma,
        input_max_tokens=int(trace.input_tokens.max()),
        output_log_mu=out_mu,
        output_log_sigma=out_sigma,
        output_max_tokens=int(trace.output_tokens.max()),
    )
