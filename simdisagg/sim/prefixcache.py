"""Prefix caching of KV blocks, keyed by block hash, with offload tiers below HBM.

Each prefill (or aggregated) instance keeps an LRU cache of KV blocks in HBM, sized as a
share (``hbm_fraction``) of its KV memory; the rest holds the KV of requests in flight. A
request's cached prefix is the run of its *leading* block hashes found in the cache (prefix
semantics: the first miss ends it), so only the remaining tokens are computed, and at least
one token always is (the engine must produce logits).

Blocks evicted from HBM go down the tiers configured below it, in order (for example host
DRAM, then local NVMe, per instance; and a ``shared_store`` tier, one for the whole cluster as
in Mooncake's store). A hit in a lower tier costs the time to read those blocks into HBM at
that tier's read bandwidth (added to the prefill iteration), and promotes them to HBM.

Accounting (per tier): blocks hit, prompt tokens saved, bytes read up and bytes written down.
Every block lives in at most one tier of an instance (plus possibly the shared store), so the
blocks per tier always add up to the blocks inserted minus the blocks dropped off the last
tier; :meth:`PrefixCache.block_census` exposes that for tests.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from simdisagg.sim.prefill import PrefixLookup
from simdisagg.trace import Trace


@dataclass(slots=True)
class TierSpec:
    """One storage tier: capacity in blocks and read bandwidth (bytes/s)."""

    name: str
    capacity_blocks: int
    read_bytes_per_s: float
    write_bytes_per_s: float
    shared: bool = False


@dataclass(slots=True)
class TierStats:
    """Counters of one tier, summed over instances."""

    hit_blocks: int = 0
    saved_tokens: int = 0
    bytes_read: float = 0.0
    bytes_written: float = 0.0
    evicted_blocks: int = 0


@dataclass(slots=True, eq=False)
class _LRU:
    capacity: int
    blocks: OrderedDict[int, None] = field(default_factory=OrderedDict)


class PrefixCache(PrefixLookup):
    """Per-instance LRU prefix caches (HBM plus lower tiers) for one run."""

    def __init__(
        self,
        trace: Trace,
        n_instances: int,
        hbm_capacity_blocks: int,
        lower_tiers: list[TierSpec],
        block_bytes: float,
    ) -> None:
        self._trace = trace
        self._block_tokens = trace.hash_block_tokens
        self._offsets = trace.hash_offsets
        self._values = trace.hash_values
        self._inp = trace.input_tokens
        self.block_bytes = block_bytes
        self.tier_names = ["hbm"] + [t.name for t in lower_tiers]
        self.specs = lower_tiers
        shared_lru: dict[int, _LRU] = {}
        self._tiers: list[list[_LRU]] = []
        for _ in range(n_instances):
            tiers = [_LRU(hbm_capacity_blocks)]
            for k, spec in enumerate(lower_tiers):
                if spec.shared:
                    tiers.append(shared_lru.setdefault(k, _LRU(spec.capacity_blocks)))
                else:
                    tiers.append(_LRU(spec.capacity_blocks))
            self._tiers.append(tiers)
        self.stats = [TierStats() for _ in self.tier_names]
        # Conservation: inserted == census + dropped + merged (see block_census).
        self.inserted_blocks = 0
        self.dropped_blocks = 0
        self.merged_blocks = 0  # an evicted block already present in a shared tier
        self.lookups = 0
        self.lookup_blocks = 0
        self.lookup_tokens = 0

    # -- the interface prefill uses -------------------------------------------------------
    def _hashes(self, i: int) -> np.ndarray:
        return self._values[self._offsets[i] : self._offsets[i + 1]]

    def _match(self, instance: int, i: int) -> list[int]:
        """Tier index of each leading block found (stops at the first miss)."""
        tiers = self._tiers[instance]
        found: list[int] = []
        for h in self._hashes(i).tolist():
            for k, lru in enumerate(tiers):
                if h in lru.blocks:
                    found.append(k)
                    break
            else:
                break
        return found

    def cached_tokens(self, instance: int, i: int) -> int:
        """Leading tokens of request ``i`` cached in any tier of ``instance`` (at most
        ``input − 1``)."""
        hits = len(self._match(instance, i))
        return min(hits * self._block_tokens, int(self._inp[i]) - 1) if hits else 0

    def use(self, instance: int, i: int) -> float:
        """Request ``i`` starts prefill on ``instance``: touch its cached blocks, promote the
        ones in lower tiers to HBM, count the hits; returns the seconds to load them."""
        self.lookups += 1
        self.lookup_blocks += int(self._offsets[i + 1] - self._offsets[i])
        self.lookup_tokens += int(self._inp[i])
        found = self._match(instance, i)
        if not found:
            return 0.0
        hashes = self._hashes(i).tolist()
        load_s = 0.0
        tiers = self._tiers[instance]
        usable = min(len(found) * self._block_tokens, int(self._inp[i]) - 1)
        # Touch from the last block to the first, so the first blocks are the most recent and
        # LRU evicts sequence tails before the prefixes they hang from (as vLLM's evictor does).
        # Tiers are looked up again for each block: promoting one block cascades evictions that
        # can move (or drop) the blocks found earlier.
        for n in range(len(found) - 1, -1, -1):
            h = hashes[n]
            k = next((j for j, lru in enumerate(tiers) if h in lru.blocks), -1)
            tier = k if k >= 0 else found[n]  # a block dropped meanwhile counts where it was found
            st = self.stats[tier]
            st.hit_blocks += 1
            st.saved_tokens += max(0, min(self._block_tokens, usable - n * self._block_tokens))
            if k == 0:
                tiers[0].blocks.move_to_end(h)
                continue
            spec = self.specs[tier - 1] if tier > 0 else None
            if spec is not None:
                load_s += self.block_bytes / spec.read_bytes_per_s
                st.bytes_read += self.block_bytes
            if k < 0 or spec is None or spec.shared:
                self.inserted_blocks += 1  # a new copy in HBM (dropped meanwhile, or shared store)
            else:
                del tiers[k].blocks[h]
            self._put(instance, 0, h)
        return load_s

    def insert(self, instance: int, i: int, now: float) -> None:
        """Request ``i``'s prompt KV now exists on ``instance``: cache all its blocks in HBM."""
        tiers = self._tiers[instance]
        hbm = tiers[0].blocks
        for h in reversed(self._hashes(i).tolist()):  # tails first: see use()
            if h in hbm:
                hbm.move_to_end(h)
                continue
            # A block also held lower down moves up: one copy per instance.
            for lru, spec in zip(tiers[1:], self.specs, strict=True):
                if not spec.shared and h in lru.blocks:
                    del lru.blocks[h]
                    break
            else:
                self.inserted_blocks += 1
            self._put(instance, 0, h)

    def _put(self, instance: int, k: int, h: int) -> None:
        """Place block ``h`` in tier ``k``, cascading evictions down the tiers."""
        tiers = self._tiers[instance]
        while True:
            lru = tiers[k]
            if h in lru.blocks:
                lru.blocks.move_to_end(h)
                if k > 0:
                    self.merged_blocks += 1
                return
            if lru.capacity <= 0:
                victim = h
            else:
                lru.blocks[h] = None
                if len(lru.blocks) <= lru.capacity:
                    return
                victim, _ = lru.blocks.popitem(last=False)
            self.stats[k].evicted_blocks += 1
            if k + 1 >= len(tiers):
                self.dropped_blocks += 1
                return
            self.stats[k + 1].bytes_written += self.block_bytes
            h, k = victim, k + 1

    # -- accounting -------------------------------------------------------------------------
    def block_census(self) -> dict[str, int]:
        """Blocks held per tier (shared tiers counted once)."""
        counts: dict[str, int] = {}
        seen: set[int] = set()
        for tiers in self._tiers:
            for name, lru in zip(self.tier_names, tiers, strict=True):
                if id(lru) in seen:
                    continue
                seen.add(id(lru))
                counts[name] = counts.get(name, 0) + len(lru.blocks)
        return counts

    def summary(self) -> dict[str, float]:
        """Hit rate per tier (blocks hit over blocks looked up), tokens saved, bytes moved."""
        out: dict[str, float] = {"prefix_lookup_blocks": self.lookup_blocks}
        saved = 0
        for name, st in zip(self.tier_names, self.stats, strict=True):
            out[f"prefix_{name}_hit_rate"] = st.hit_blocks / self.lookup_blocks if self.lookup_blocks else 0.0
            out[f"prefix_{name}_saved_tokens"] = st.saved_tokens
            out[f"prefix_{name}_bytes_read"] = st.bytes_read
            out[f"prefix_{name}_bytes_written"] = st.bytes_written
            saved += st.saved_tokens
        out["prefix_token_hit_fraction"] = saved / self.lookup_tokens if self.lookup_tokens else 0.0
        out["prefill_tokens_saved"] = saved
        return out
