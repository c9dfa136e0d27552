"""Hypothesis strategies for small traces and run configs, plus plain trace builders.

Every policy and cost kind that :mod:`simdisagg.config` accepts has an entry in one of the
registries below (``PREFILL_POLICIES``, ``DECODE_POLICIES``, ``COST_KINDS``, ``LINK_SHARING``,
``MODES``); ``tests/properties/test_invariants.py::test_every_config_kind_has_a_strategy``
fails when config.py grows a kind that has none (after PyBaMM's parameter-set meta-tests), so
a new policy cannot ship untested by the property suite.

Traces are small (a dozen requests) so that each example simulates in milliseconds; KV
capacities are drawn small enough that admission control binds and some requests are
rejected outright.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from simdisagg.config import (
    AggregatedConfig,
    AutoCost,
    ConstantCost,
    ExponentialCost,
    LinkConfig,
    PoolConfig,
    PrefixCacheConfig,
    RooflineCost,
    RouterConfig,
    RunConfig,
    SpeculativeConfig,
    TierConfig,
)
from simdisagg.trace import Trace, TraceBuilder

# ---------------------------------------------------------------------------------------
# Plain builders (used by the fixtures and the hand-derived scenarios)


@dataclass(frozen=True, slots=True)
class Req:
    """One request row for :func:`build_trace` (times in seconds, sizes in tokens)."""

    at: float
    input_tokens: int
    output_tokens: int
    wait_for: tuple[str, ...] = ()
    tool_wait_s: float = 0.0
    session: str | None = None
    hash_ids: tuple[int, ...] | None = None


def build_trace(rows: Sequence[Req | tuple[float, int, int]], hash_block_tokens: int = 512) -> Trace:
    """A trace from rows; request ids are ``r0, r1, ...`` in row order."""
    b = TraceBuilder("test", hash_block_tokens)
    for k, row in enumerate(rows):
        r = row if isinstance(row, Req) else Req(*row)
        b.add(
            line=k + 1,
            timestamp_s=r.at,
            input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
            request_id=f"r{k}",
            session_id=r.session,
            wait_for=r.wait_for,
            tool_wait_s=r.tool_wait_s,
            hash_ids=r.hash_ids,
        )
    return b.build()


# ---------------------------------------------------------------------------------------
# Traces

#: Times are drawn as arbitrary floats (not only round numbers), so that distinct events
#: rarely coincide by accident; ``st.just(0.0)`` gaps still give simultaneous arrivals.
_gap = st.one_of(st.just(0.0), st.floats(1e-4, 0.25, allow_nan=False))
_tool = st.one_of(st.just(0.0), st.floats(1e-4, 0.3, allow_nan=False))


@st.composite
def traces(
    draw: st.DrawFn,
    *,
    min_requests: int = 1,
    max_requests: int = 12,
    max_input: int = 3000,
    max_output: int = 48,
    closed_loop: bool = True,
    sessions: bool = True,
    hashes: bool = True,
) -> Trace:
    """A small trace: open-loop arrivals, optionally closed-loop ``wait_for`` chains (fan-in
    of up to three earlier requests, with tool waits), sessions and prefix hashes (requests
    of a session share leading blocks; one small block size per trace)."""
    n = draw(st.integers(min_requests, max_requests))
    block = draw(st.sampled_from([16, 64])) if hashes else 512
    with_hashes = hashes and draw(st.booleans())
    rows: list[Req] = []
    t = 0.0
    for k in range(n):
        t += draw(_gap)
        inp = draw(st.integers(1, max_input))
        out = draw(st.integers(1, max_output))
        waits: tuple[str, ...] = ()
        tool = 0.0
        if closed_loop and k > 0 and draw(st.integers(0, 2)) == 0:
            parents = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=min(3, k), unique=True))
            waits = tuple(f"r{j}" for j in parents)
            tool = draw(_tool)
        session = None
        if sessions:
            s = draw(st.integers(-1, 2))
            session = None if s < 0 else f"s{s}"
        hash_ids = None
        if with_hashes:
            # Shared leading blocks per session (or a global "system prompt"), then fresh ones.
            group = 0 if session is None else 1 + int(session[1:])
            full = inp // block
            shared = draw(st.integers(0, full))
            hash_ids = tuple(
                [group * 100_000 + j for j in range(shared)] + [10_000_000 + k * 1000 + j for j in range(full - shared)]
            )
        rows.append(Req(t, inp, out, waits, tool, session, hash_ids))
    return build_trace(rows, block)


# ---------------------------------------------------------------------------------------
# Config registries: one strategy per kind that config.py accepts


def finite(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Finite floats in [lo, hi] (no NaN, no infinity)."""
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


#: Router fields each prefill policy reads (besides the policy name).
PREFILL_POLICIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "round_robin": st.just({}),
    "least_outstanding_tokens": st.just({}),
    "random": st.just({}),
    "shared_queue": st.just({}),
    "kv_aware": st.fixed_dictionaries({"kv_overlap_weight": finite(0.0, 4.0)}),
    "session_affinity": st.just({}),
}
#: Prefill policies that only apply to disaggregated pools.
DISAGGREGATED_ONLY_POLICIES = frozenset({"shared_queue"})

DECODE_POLICIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "least_loaded": st.just({}),
    "kv_aware": st.fixed_dictionaries({"kv_overlap_weight": finite(0.0, 4.0)}),
    "session_affinity": st.just({}),
}

COST_KINDS: dict[str, st.SearchStrategy[Any]] = {
    "constant": st.builds(
        ConstantCost,
        prefill_s=finite(1e-3, 0.2),
        prefill_s_per_token=st.one_of(st.just(0.0), finite(1e-6, 1e-4)),
        decode_step_s=finite(1e-3, 0.05),
        decode_step_s_per_context_token=st.one_of(st.just(0.0), finite(1e-8, 1e-5)),
    ),
    "exponential": st.builds(
        ExponentialCost,
        mean_prefill_s=finite(1e-3, 0.2),
        decode_step_s=finite(1e-3, 0.05),
    ),
    "roofline": st.builds(
        RooflineCost,
        prefill_mfu=finite(0.2, 0.8),
        decode_mfu=finite(0.2, 0.8),
        iteration_overhead_s=finite(0.0, 1e-3),
    ),
    "auto": st.just(AutoCost()),
}

LINK_SHARING: dict[str, st.SearchStrategy[LinkConfig]] = {
    sharing: st.builds(
        LinkConfig,
        sharing=st.just(sharing),
        preset=st.sampled_from(["ib-ndr-400", "eth-100g"]),
        # Slow links so that transfers overlap and queue (KV of 1k tokens: ~10 ms to ~3 s).
        bandwidth_scale=finite(1e-3, 1.0),
    )
    for sharing in ("fifo", "fair_share")
}

MODES = ("disaggregated", "aggregated")

_TIER_KINDS = ("host_dram", "nvme", "shared_store")

#: Draw lower KV tiers (host DRAM, NVMe, shared store). They once exposed stale tier
#: positions in ``PrefixCache.use`` (see the regressions at the end of
#: tests/properties/test_invariants.py); keep them drawn.
DRAW_PREFIX_TIERS = True


@st.composite
def prefix_cache_configs(draw: st.DrawFn) -> PrefixCacheConfig:
    """Prefix caching on or off, HBM share, decode retention, and up to two lower tiers."""
    tiers = draw(
        st.lists(
            st.builds(
                TierConfig,
                kind=st.sampled_from(_TIER_KINDS),
                capacity_bytes=finite(1e6, 1e9),
                read_bytes_per_s=finite(1e9, 1e11),
                write_bytes_per_s=finite(1e9, 1e11),
            ),
            max_size=2 if DRAW_PREFIX_TIERS else 0,
        )
    )
    # At most one shared store, and it goes last (below every instance's own tiers).
    local = [t for t in tiers if t.kind != "shared_store"]
    tiers = local + [t for t in tiers if t.kind == "shared_store"][:1]
    return PrefixCacheConfig(
        enabled=draw(st.booleans()),
        hbm_fraction=draw(st.sampled_from([0.0, 0.2, 0.5])),
        decode_retain_fraction=draw(st.sampled_from([0.0, 0.0, 0.3])),
        tiers=tuple(tiers),
    )


@st.composite
def pools(draw: st.DrawFn, max_count: int = 3) -> PoolConfig:
    """A small pool; the KV capacity is often small enough that admission binds."""
    block = draw(st.sampled_from([1, 16, 32]))
    cap = draw(st.one_of(st.none(), st.integers(1, 400).map(lambda b: b * 16)))
    if cap is not None and cap < block:
        cap = block
    return PoolConfig(
        count=draw(st.integers(1, max_count)),
        max_batch_size=draw(st.integers(1, 8)),
        max_batched_tokens=draw(st.sampled_from([16, 64, 512, 2048, 8192])),
        max_prefill_batch_requests=draw(st.one_of(st.none(), st.integers(1, 4))),
        kv_block_tokens=block,
        kv_capacity_tokens=cap,
    )


@st.composite
def speculative_configs(draw: st.DrawFn) -> SpeculativeConfig:
    """Speculative decoding for a decode pool: drafting nothing (the plain path must be
    reproduced), or a draft model (the default model's own profile) proposing 1 to 4 tokens
    with an i.i.d. rate, a mean length or per-position acceptance."""
    k = draw(st.integers(0, 4))
    if k == 0:
        return SpeculativeConfig(method="mtp", draft_tokens=0, acceptance_length=1.0)
    how = draw(st.sampled_from(["acceptance_rate", "acceptance_length", "position_acceptance"]))
    value: Any
    if how == "acceptance_rate":
        value = draw(finite(0.0, 1.0))
    elif how == "acceptance_length":
        value = draw(finite(1.0, k + 1.0))
    else:
        value = tuple(draw(st.lists(finite(0.0, 1.0), min_size=k, max_size=k)))
    return SpeculativeConfig(method="draft", draft_model="llama-3.1-8b", draft_tokens=k, **{how: value})


@st.composite
def run_configs(
    draw: st.DrawFn,
    *,
    mode: str | None = None,
    chunked: bool | None = None,
    exact_steps: bool | None = None,
    cost_kinds: Sequence[str] | None = None,
    prefix_cache: bool = True,
    speculative: bool = True,
) -> RunConfig:
    """A random small cluster: either mode, any router policy valid for the mode, any cost
    kind (or those given), fifo or fair-share links, chunked prefill on or off, small KV,
    and (one time in three) speculative decoding in the decode pool."""
    mode = mode or draw(st.sampled_from(MODES))
    policies = sorted(PREFILL_POLICIES)
    if mode == "aggregated":
        policies = [p for p in policies if p not in DISAGGREGATED_ONLY_POLICIES]
    pp = draw(st.sampled_from(policies))
    dp = draw(st.sampled_from(sorted(DECODE_POLICIES)))
    router_fields = {**draw(PREFILL_POLICIES[pp]), **draw(DECODE_POLICIES[dp])}
    conditional = draw(st.one_of(st.none(), st.integers(1, 2000))) if mode == "disaggregated" else None
    router = RouterConfig(
        prefill_policy=pp,  # type: ignore[arg-type]
        decode_policy=dp,  # type: ignore[arg-type]
        conditional_prefill_tokens=conditional,
        **router_fields,
    )
    kind = draw(st.sampled_from(sorted(cost_kinds or COST_KINDS)))
    cost = draw(COST_KINDS[kind])
    link = draw(LINK_SHARING[draw(st.sampled_from(sorted(LINK_SHARING)))])
    prefill = draw(pools())
    decode = draw(pools())
    cfg = RunConfig(
        mode=mode,  # type: ignore[arg-type]
        prefill=prefill,
        decode=decode,
        aggregated=AggregatedConfig(chunked_prefill=draw(st.booleans()) if chunked is None else chunked),
        link=link,
        router=router,
        prefix_cache=draw(prefix_cache_configs()) if prefix_cache else PrefixCacheConfig(enabled=False),
        cost=cost,
        seed=draw(st.integers(0, 2**16)),
        exact_steps=draw(st.booleans()) if exact_steps is None else exact_steps,
    )
    # Drawn last, so that the draws above stay those of the examples found before it existed.
    if speculative and draw(st.integers(0, 2)) == 0:
        cfg = cfg.model_copy(update={"decode": decode.model_copy(update={"speculative": draw(speculative_configs())})})
    return cfg
