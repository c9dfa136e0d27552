"""Prefix-cache accounting: blocks are conserved across tiers, and hit rates respect the
infinite-cache bound of :mod:`simdisagg.tracestats`.

* Tier accounting (Hypothesis, through the public :class:`PrefixCache` API): after any
  sequence of ``use``/``insert`` calls on random small traces and tier layouts,
  ``Σ block_census() == inserted_blocks − dropped_blocks − merged_blocks``; no tier holds
  more than its capacity; hits never exceed lookups; the tokens saved are exactly the cached
  tokens each lookup saw; the load time ``use`` returns is the bytes it read over each tier's
  bandwidth.
* The bound on a real Mooncake slice: requests in file order, every earlier block cached; a
  request's hit is its run of leading blocks seen before (``tracestats.prefix_hits``). The
  simulator caps a request's cached tokens at ``input − 1`` (one token is always computed),
  so the token bound is ``Σ min(hits × block, input − 1)``, slightly below ``trace stats``'
  ``Σ min(hits × block, input)``. With one prefill instance, one prompt per iteration and a
  cache that never evicts, every request looks up after all earlier ones were inserted, so
  the simulator must reach the bound exactly; with any routing and realistic capacities it
  must stay at or below it (each instance serves its queue in arrival order, which is file
  order for these open-loop traces, and without a shared tier an instance only sees its own
  earlier requests' blocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simdisagg import simulate, summarize
from simdisagg.config import (
    ConstantCost,
    PoolConfig,
    PrefixCacheConfig,
    RouterConfig,
    RunConfig,
    TierConfig,
)
from simdisagg.hardware import ProfileStore
from simdisagg.sim.prefixcache import PrefixCache, TierSpec
from simdisagg.trace import Trace, TraceBuilder, load_jsonl
from simdisagg.tracestats import prefix_hits, trace_stats

STORE = ProfileStore()
REPO = Path(__file__).resolve().parents[2]
MOONCAKE_SLICE = REPO / "traces" / "mooncake-conversation-5min.jsonl"
SHARED = REPO.parent / "shared" / "traces"
needs_shared = pytest.mark.skipif(
    not (SHARED / "mooncake").is_dir(),
    reason=f"real traces not available: {SHARED / 'mooncake'} is absent (shared/ beside the repo)",
)

# ---------------------------------------------------------------------------------------
# Tier accounting on random small traces

#: Lower-tier layouts below HBM (names are distinct so each has its own census entry; the
#: shared store, when present, is the last tier, one for the whole cluster).
LAYOUTS: dict[str, tuple[tuple[str, bool], ...]] = {
    "hbm": (),
    "hbm+dram": (("host_dram", False),),
    "hbm+dram+nvme": (("host_dram", False), ("nvme", False)),
    "hbm+shared": (("shared_store", True),),
    "hbm+dram+shared": (("host_dram", False), ("shared_store", True)),
    "hbm+dram+nvme+shared": (("host_dram", False), ("nvme", False), ("shared_store", True)),
}
BLOCK_BYTES = 1000.0


@st.composite
def tree_traces(draw: st.DrawFn) -> Trace:
    """A small trace whose hash lists are root-to-node paths of one random tree of blocks.

    Real prefix hashes have this shape: a block's id fixes every block before it (equal ids
    mean equal prefixes), so ids are drawn as a tree (node v's parent is an earlier node,
    often one of the last three, or none for a root) and each request takes the path to one node. Inputs span from just past
    the second-to-last block to just short of one more block (a partial last block, or
    unhashed tokens after the last full one); some requests carry no hashes."""
    block = draw(st.sampled_from([4, 16]))
    n_nodes = draw(st.integers(1, 24))
    # Mostly a recent node as parent, so paths get deeper than the small HBM capacities.
    parent = [-1] + [draw(st.one_of(st.integers(max(0, v - 3), v - 1), st.integers(-1, v - 1))) for v in range(1, n_nodes)]
    builder = TraceBuilder("accounting", block)
    for k in range(draw(st.integers(1, 10))):
        if draw(st.integers(0, 7)) == 0:
            path: list[int] = []
            inp = draw(st.integers(1, 3 * block))
        else:
            v = draw(st.integers(0, n_nodes - 1))
            path = []
            while v >= 0:
                path.append(v)
                v = parent[v]
            path.reverse()
            inp = draw(st.integers((len(path) - 1) * block + 1, (len(path) + 1) * block - 1))
        builder.add(line=k + 1, timestamp_s=float(k), input_tokens=inp, output_tokens=1, hash_ids=path or None)
    return builder.build()


@st.composite
def tier_setups(draw: st.DrawFn) -> tuple[int, int, list[TierSpec]]:
    """(instances, HBM blocks, lower tiers): small capacities (0 included) so that evictions
    cascade through every tier; distinct read bandwidths per tier."""
    layout = LAYOUTS[draw(st.sampled_from(sorted(LAYOUTS)))]
    tiers = [
        TierSpec(name, draw(st.integers(0, 6)), read_bytes_per_s=1e6 * (k + 2), write_bytes_per_s=1e6, shared=shared)
        for k, (name, shared) in enumerate(layout)
    ]
    return draw(st.integers(1, 3)), draw(st.integers(0, 6)), tiers


def _hits_and_tokens(cache: PrefixCache) -> tuple[float, float]:
    """Blocks hit (all tiers) and tokens saved so far, from the public summary."""
    s = cache.summary()
    hit_blocks = sum(s[f"prefix_{name}_hit_rate"] for name in cache.block_census()) * s["prefix_lookup_blocks"]
    return hit_blocks, s["prefill_tokens_saved"]


@settings(max_examples=50, deadline=None)
@given(trace=tree_traces(), setup=tier_setups(), data=st.data())
def test_tier_accounting_conserves_blocks(
    trace: Trace, setup: tuple[int, int, list[TierSpec]], data: st.DataObject
) -> None:
    """After every call: Σ census = inserted − dropped − merged; each tier within capacity
    (per instance for local tiers, once for the shared store); Σ hits ≤ blocks looked up;
    tokens saved = Σ of ``cached_tokens`` just before each ``use``; ``use``'s load time =
    Σ over tiers of bytes read / read bandwidth; and right after ``insert``, a request whose
    blocks fit in HBM finds all of them, and with HBM alone a longer one finds its first
    ``capacity`` blocks (cached tokens capped at input − 1)."""
    n_instances, hbm_blocks, tiers = setup
    cache = PrefixCache(trace, n_instances, hbm_blocks, tiers, BLOCK_BYTES)
    capacity = {"hbm": hbm_blocks * n_instances}
    for spec in tiers:
        capacity[spec.name] = spec.capacity_blocks * (1 if spec.shared else n_instances)
    bandwidth = {spec.name: spec.read_bytes_per_s for spec in tiers}
    n_blocks = np.diff(trace.hash_offsets)
    block_tokens = trace.hash_block_tokens

    ops = data.draw(
        st.lists(
            st.tuples(
                st.sampled_from(["use", "insert", "use+insert"]),
                st.integers(0, n_instances - 1),
                st.integers(0, len(trace) - 1),
            ),
            max_size=30,
        ),
        label="ops",
    )
    expected_saved = 0
    expected_lookup_blocks = 0
    for step, (op, instance, i) in enumerate(ops):
        if op in ("use", "use+insert"):
            before = cache.summary()
            expected_saved += cache.cached_tokens(instance, i)
            expected_lookup_blocks += int(n_blocks[i])
            load_s = cache.use(instance, i)
            after = cache.summary()
            read_s = sum(
                (after[f"prefix_{name}_bytes_read"] - before[f"prefix_{name}_bytes_read"]) / bw
                for name, bw in bandwidth.items()
            )
            assert load_s == pytest.approx(read_s, abs=1e-12), (step, op)
            assert after["prefix_hbm_bytes_read"] == 0.0  # HBM hits need no load
        if op in ("insert", "use+insert"):
            cache.insert(instance, i, float(step))
            # Inserted blocks are the most recent, the first ones most of all (tails are
            # evicted before the prefixes they hang from): HBM keeps the leading ones.
            kept = int(n_blocks[i]) if tiers else min(int(n_blocks[i]), hbm_blocks)
            if int(n_blocks[i]) <= hbm_blocks or not tiers:
                expected = min(kept * block_tokens, int(trace.input_tokens[i]) - 1) if kept else 0
                assert cache.cached_tokens(instance, i) == expected, (step, op)

        census = cache.block_census()
        assert sum(census.values()) == cache.inserted_blocks - cache.dropped_blocks - cache.merged_blocks, (
            step,
            census,
        )
        for name, held in census.items():
            assert 0 <= held <= capacity[name], (step, name, held, capacity[name])
        assert min(cache.inserted_blocks, cache.dropped_blocks, cache.merged_blocks) >= 0
        hit_blocks, saved = _hits_and_tokens(cache)
        summary = cache.summary()
        assert summary["prefix_lookup_blocks"] == expected_lookup_blocks
        assert hit_blocks <= expected_lookup_blocks + 1e-9
        assert saved == expected_saved, (step, saved, expected_saved)
        assert 0.0 <= summary["prefix_token_hit_fraction"] <= 1.0


def test_a_short_hbm_keeps_the_leading_blocks_and_evicts_tails_first() -> None:
    """Blocks are touched from the last to the first, so a sequence's tail is evicted before
    the prefix it hangs from. HBM of 2 blocks, no tier below: inserting r0 = [1, 2, 3] keeps
    [1, 2] (2 blocks cached) and drops block 3. r1 = [1, 2, 4] then hits [1, 2]; its own
    insert keeps [1, 2] again (4 is its tail), so r0 still finds 2 blocks."""
    builder = TraceBuilder("lru", 16)
    builder.add(line=1, timestamp_s=0.0, input_tokens=48, output_tokens=1, hash_ids=[1, 2, 3])
    builder.add(line=2, timestamp_s=1.0, input_tokens=48, output_tokens=1, hash_ids=[1, 2, 4])
    cache = PrefixCache(builder.build(), 1, 2, [], BLOCK_BYTES)
    cache.insert(0, 0, 0.0)
    assert cache.cached_tokens(0, 0) == 32
    assert cache.block_census() == {"hbm": 2} and cache.dropped_blocks == 1
    assert cache.cached_tokens(0, 1) == 32
    cache.use(0, 1)
    cache.insert(0, 1, 1.0)
    assert cache.cached_tokens(0, 0) == 32 and cache.cached_tokens(0, 1) == 32
    assert cache.summary()["prefill_tokens_saved"] == 32


# ---------------------------------------------------------------------------------------
# The infinite-cache bound on real Mooncake traces


def bound(trace: Trace) -> tuple[int, int]:
    """(hit blocks, tokens saved) of an infinite cache in file order, with the simulator's
    cap of ``input − 1`` cached tokens per request."""
    hits = prefix_hits(trace)
    tokens = np.minimum(hits * trace.hash_block_tokens, trace.input_tokens - 1)
    return int(hits.sum()), int(tokens.sum())


def prefix_figures(cfg: RunConfig, trace: Trace) -> dict[str, Any]:
    """Run ``cfg`` and return the prefill (or aggregated) pool's prefix-cache figures:
    ``hit_blocks``, ``saved`` (tokens), ``fraction`` (tokens saved / input), plus the
    run's ``rejected`` count and ``cached_prompt_tokens``."""
    s = summarize(simulate(cfg, trace, store=STORE), cfg.slo)
    pool = "aggregated" if cfg.mode == "aggregated" else "prefill"
    tiers = [k for k in s if k.startswith(f"{pool}_prefix_") and k.endswith("_hit_rate")]
    lookup_blocks = s[f"{pool}_prefix_lookup_blocks"]
    return {
        "hit_blocks": round(sum(s[k] for k in tiers) * lookup_blocks),
        "saved": s[f"{pool}_prefill_tokens_saved"],
        "fraction": s[f"{pool}_prefix_token_hit_fraction"],
        "rejected": s["rejected"],
        "cached_prompt_tokens": s["cached_prompt_tokens"],
    }


def never_evicting(trace: Trace) -> RunConfig:
    """One prefill instance, one prompt per iteration, and a prefix cache (90 % of a KV
    memory set to 4 × the trace's distinct blocks) that never evicts; constant costs (the
    hit accounting does not depend on timing here, only on order). The model has a 1M-token
    window: the shared synthetic trace has prompts beyond Llama-3.1's 128k."""
    distinct_tokens = len(np.unique(trace.hash_values)) * trace.hash_block_tokens
    return RunConfig(
        model="qwen2.5-7b-instruct-1m",
        prefill=PoolConfig(count=1, max_prefill_batch_requests=1, kv_capacity_tokens=4 * distinct_tokens),
        prefix_cache=PrefixCacheConfig(hbm_fraction=0.9),
        cost=ConstantCost(prefill_s=1e-3, decode_step_s=1e-3),
    )


def _check_reaches_bound(trace: Trace) -> None:
    hit_blocks, saved = bound(trace)
    got = prefix_figures(never_evicting(trace), trace)
    assert got["rejected"] == 0
    assert got["hit_blocks"] == hit_blocks
    assert got["saved"] == saved
    assert got["cached_prompt_tokens"] == saved
    assert got["fraction"] == pytest.approx(saved / int(trace.input_tokens.sum()), rel=1e-12)
    # The cap makes the simulator's bound a little lower than trace stats' figure.
    assert got["fraction"] <= trace_stats(trace)["token_hit_fraction"]


def test_one_instance_with_a_never_evicting_cache_reaches_the_bound_on_the_mooncake_slice() -> None:
    """traces/mooncake-conversation-5min.jsonl: 918 requests, 24,752 blocks. The bound is
    5,034 hit blocks and 2,575,267 tokens (10 fewer than trace stats' uncapped 2,575,277:
    ten requests' cached prefix covers their whole prompt); the simulator must hit exactly
    that."""
    trace = load_jsonl(MOONCAKE_SLICE)
    assert bound(trace) == (5034, 2_575_267)
    _check_reaches_bound(trace)


ROUTINGS = [
    pytest.param("disaggregated", "kv_aware", (), id="disagg-kv_aware"),
    pytest.param("disaggregated", "least_outstanding_tokens", (), id="disagg-least_outstanding"),
    pytest.param("disaggregated", "kv_aware", ("host_dram",), id="disagg-kv_aware-dram"),
    pytest.param("aggregated", "kv_aware", (), id="aggregated-kv_aware"),
]


def routed(mode: str, policy: str, tiers: Sequence[str]) -> RunConfig:
    """Four prefill (or 2 + 2 aggregated) H100 instances of the default model, roofline
    costs, realistic KV memory (half of it prefix cache), optional 8 GB host DRAM tier."""
    return RunConfig(
        mode=mode,  # type: ignore[arg-type]
        prefill=PoolConfig(count=4 if mode == "disaggregated" else 2),
        decode=PoolConfig(count=2),
        router=RouterConfig(prefill_policy=policy),  # type: ignore[arg-type]
        prefix_cache=PrefixCacheConfig(
            tiers=tuple(
                TierConfig(kind=kind, capacity_bytes=8e9, read_bytes_per_s=2.5e10, write_bytes_per_s=2.5e10)  # type: ignore[arg-type]
                for kind in tiers
            )
        ),
    )


@pytest.mark.parametrize(("mode", "policy", "tiers"), ROUTINGS)
def test_hit_rate_never_exceeds_the_bound_on_the_mooncake_slice(mode: str, policy: str, tiers: Sequence[str]) -> None:
    """Any routing, realistic capacities (evictions happen): hit blocks and tokens saved are
    at most the bound's, and so is the token hit fraction (no request rejected, so the
    fractions have the same denominator)."""
    trace = load_jsonl(MOONCAKE_SLICE)
    hit_blocks, saved = bound(trace)
    got = prefix_figures(routed(mode, policy, tiers), trace)
    assert got["rejected"] == 0
    assert 0 < got["hit_blocks"] <= hit_blocks
    assert 0 < got["saved"] <= saved
    assert got["fraction"] <= saved / int(trace.input_tokens.sum())


@needs_shared
@pytest.mark.parametrize("name", ["synthetic_trace.jsonl", pytest.param("conversation_trace.jsonl", marks=pytest.mark.slow)])
def test_one_instance_reaches_the_bound_on_the_shared_mooncake_traces(name: str) -> None:
    """The whole Mooncake traces of shared/traces/mooncake (conversation: 12,031 requests,
    bound 105,710 blocks; synthetic: 3,993 requests, 77,953 blocks, the multi-turn one)."""
    trace = load_jsonl(SHARED / "mooncake" / name)
    assert bound(trace)[0] == {"conversation_trace.jsonl": 105_710, "synthetic_trace.jsonl": 77_953}[name]
    _check_reaches_bound(trace)


@needs_shared
@pytest.mark.slow
def test_kv_aware_stays_within_the_bound_on_the_shared_synthetic_trace() -> None:
    """kv_aware on four instances over the whole synthetic trace (65 % reusable): at most
    the bound. A 1M-window model: ten of its prompts pass Llama-3.1's 128k."""
    trace = load_jsonl(SHARED / "mooncake" / "synthetic_trace.jsonl")
    hit_blocks, saved = bound(trace)
    cfg = routed("disaggregated", "kv_aware", ()).model_copy(update={"model": "qwen2.5-7b-instruct-1m"})
    got = prefix_figures(cfg, trace)
    assert got["rejected"] == 0
    assert 0 < got["hit_blocks"] <= hit_blocks
    assert 0 < got["saved"] <= saved
