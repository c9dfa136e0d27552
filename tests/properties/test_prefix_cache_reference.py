"""The segment-based prefix cache against a block-by-block reference.

:class:`StackReference` is the prefix cache's semantics written as plainly as possible: every
instance holds one list of blocks, most recent first, and a block's tier is fixed by its rank
(HBM is the first ``C0`` blocks, the next tier the next ``C1``, ...). A lookup finds the leading
blocks held locally, then continues in the shared store; the found blocks become the most
recent, and whatever falls past the last local tier goes to the shared store (oldest first) or
is dropped. :class:`~simdisagg.sim.prefixcache.PrefixCache` must agree with it exactly, counter
by counter, after every operation of random traces, tier layouts and call sequences.
"""

from __future__ import annotations

from collections import OrderedDict

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from simdisagg.sim.prefixcache import PrefixCache, TierSpec, TierStats
from simdisagg.trace import Trace, TraceBuilder

BLOCK_TOKENS = 4
BLOCK_BYTES = 100.0


class StackReference:
    """Block-level prefix caches: one recency-ordered list per instance plus a shared LRU."""

    def __init__(self, trace: Trace, n_instances: int, hbm_blocks: int, lower: list[TierSpec]) -> None:
        self.trace = trace
        self.specs = lower
        self.has_shared = bool(lower) and lower[-1].shared
        self.capacity = [hbm_blocks] + [t.capacity_blocks for t in lower if not t.shared]
        self.stack: list[list[int]] = [[] for _ in range(n_instances)]
        self.shared: OrderedDict[int, None] = OrderedDict()
        self.stats = [TierStats() for _ in range(1 + len(lower))]
        self.inserted = self.dropped = self.merged = 0

    def _tier_of_rank(self, rank: int) -> int:
        edge = 0
        for k, cap in enumerate(self.capacity):
            edge += cap
            if rank < edge:
                return k
        return len(self.capacity)  # past every local tier

    def _found(self, inst: int, hashes: list[int]) -> tuple[int, int]:
        held = set(self.stack[inst])
        local = 0
        while local < len(hashes) and hashes[local] in held:
            local += 1
        shared = 0
        while local + shared < len(hashes) and hashes[local + shared] in self.shared:
            shared += 1
        return local, shared

    def cached_tokens(self, inst: int, i: int) -> int:
        local, shared = self._found(inst, self.trace.hashes_of(i).tolist())
        hits = local + shared
        return min(hits * BLOCK_TOKENS, int(self.trace.input_tokens[i]) - 1) if hits else 0

    def _restack(self, inst: int, top: list[int]) -> None:
        """Put ``top`` (first = most recent) above the rest and settle the overflow."""
        old = self.stack[inst]
        old_tier = {b: self._tier_of_rank(r) for r, b in enumerate(old)}
        chosen = set(top)
        new = top + [b for b in old if b not in chosen]
        total = sum(self.capacity)
        kept, fallen = new[:total], new[total:]
        n_local = len(self.capacity)
        for r, b in enumerate(new):
            was = old_tier.get(b, 0)  # a block new to the instance starts in HBM
            now = self._tier_of_rank(r) if r < total else n_local
            for t in range(was, now):  # crossed from tier t down to t + 1
                self.stats[t].evicted_blocks += 1
                if t + 1 < len(self.stats):
                    self.stats[t + 1].bytes_written += BLOCK_BYTES
        for b in reversed(fallen):  # the oldest falls first
            if not self.has_shared:
                self.dropped += 1
            elif b in self.shared:
                self.shared.move_to_end(b)
                self.merged += 1
            else:
                self.shared[b] = None
                if len(self.shared) > self.specs[-1].capacity_blocks:
                    self.shared.popitem(last=False)
                    self.stats[-1].evicted_blocks += 1
                    self.dropped += 1
        self.stack[inst] = kept

    def use(self, inst: int, i: int) -> float:
        hashes = self.trace.hashes_of(i).tolist()
        local, shared = self._found(inst, hashes)
        found = local + shared
        usable = min(found * BLOCK_TOKENS, int(self.trace.input_tokens[i]) - 1)
        rank = {b: r for r, b in enumerate(self.stack[inst])}
        load_s = 0.0
        for n in range(found):
            k = self._tier_of_rank(rank[hashes[n]]) if n < local else len(self.stats) - 1
            st_ = self.stats[k]
            st_.hit_blocks += 1
            st_.saved_tokens += max(0, min(BLOCK_TOKENS, usable - n * BLOCK_TOKENS))
            if k > 0:
                st_.bytes_read += BLOCK_BYTES
                load_s += BLOCK_BYTES / self.specs[k - 1].read_bytes_per_s
        self.inserted += shared
        if found:
            self._restack(inst, hashes[:found])
        return load_s

    def insert(self, inst: int, i: int) -> None:
        hashes = self.trace.hashes_of(i).tolist()
        held = set(self.stack[inst])
        self.inserted += sum(1 for h in hashes if h not in held)
        if hashes:
            self._restack(inst, hashes)

    def census(self) -> dict[str, int]:
        names = ["hbm"] + [t.name for t in self.specs]
        counts = dict.fromkeys(names, 0)
        for stack in self.stack:
            for r in range(len(stack)):
                counts[names[self._tier_of_rank(r)]] += 1
        if self.has_shared:
            counts[names[-1]] = len(self.shared)
        return counts


@st.composite
def chained_traces(draw: st.DrawFn) -> Trace:
    """Requests whose hash lists are paths in one tree: each request keeps a prefix of an
    earlier request's list (or of nothing) and appends fresh blocks."""
    n = draw(st.integers(1, 10))
    lists: list[list[int]] = []
    fresh = 1000
    for _ in range(n):
        base: list[int] = draw(st.sampled_from(lists)) if lists and draw(st.booleans()) else []
        keep = draw(st.integers(0, len(base)))
        new = draw(st.integers(0 if keep else 1, 5))
        lists.append(base[:keep] + list(range(fresh, fresh + new)))
        fresh += new
    b = TraceBuilder("chained", hash_block_tokens=BLOCK_TOKENS)
    for k, hashes in enumerate(lists):
        extra = draw(st.integers(0, BLOCK_TOKENS - 1))
        b.add(line=k + 1, timestamp_s=float(k), input_tokens=max(1, len(hashes) * BLOCK_TOKENS + extra),
              output_tokens=1, hash_ids=hashes)  # fmt: skip
    return b.build()


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, list[TierSpec]]:
    hbm = draw(st.integers(0, 8))
    lower = [
        TierSpec(f"local{k}", draw(st.integers(0, 6)), draw(st.sampled_from([1e3, 1e4])), 1e4)
        for k in range(draw(st.integers(0, 2)))
    ]
    if draw(st.booleans()):
        lower.append(TierSpec("shared_store", draw(st.integers(0, 10)), 2e3, 1e4, shared=True))
    return hbm, lower


def _state(cache: PrefixCache | StackReference) -> tuple:
    stats = [(s.hit_blocks, s.saved_tokens, round(s.bytes_read), round(s.bytes_written), s.evicted_blocks)
             for s in cache.stats]
    if isinstance(cache, PrefixCache):
        return stats, cache.block_census(), cache.inserted_blocks, cache.dropped_blocks, cache.merged_blocks
    return stats, cache.census(), cache.inserted, cache.dropped, cache.merged


@settings(max_examples=300, deadline=None)
@given(
    trace=chained_traces(),
    layout=layouts(),
    n_instances=st.integers(1, 2),
    ops=st.lists(
        st.tuples(st.sampled_from(["use", "insert", "both"]), st.integers(0, 1), st.integers(0, 9)), max_size=30
    ),
)
def test_segment_cache_equals_block_reference(
    trace: Trace, layout: tuple[int, list[TierSpec]], n_instances: int, ops: list[tuple[str, int, int]]
) -> None:
    hbm, lower = layout
    cache = PrefixCache(trace, n_instances, hbm, lower, BLOCK_BYTES)
    ref = StackReference(trace, n_instances, hbm, lower)
    for op, inst, i in ops:
        inst %= n_instances
        i %= len(trace)
        for k in range(n_instances):
            assert cache.cached_tokens(k, i) == ref.cached_tokens(k, i)
        if op in ("use", "both"):
            assert cache.use(inst, i) == pytest.approx(ref.use(inst, i), rel=1e-12)
        if op in ("insert", "both"):
            cache.insert(inst, i, 0.0)
            ref.insert(inst, i)
        assert _state(cache) == _state(ref)
        census = cache.block_census()
        assert sum(census.values()) == cache.inserted_blocks - cache.dropped_blocks - cache.merged_blocks
