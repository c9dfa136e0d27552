"""Prefix caching of KV blocks, keyed by block hash, with offload tiers below HBM.

Each prefill (or aggregated) instance keeps an LRU cache of KV blocks in HBM, sized as a
share (``hbm_fraction``) of its KV memory; the rest holds the KV of requests in flight. A
request's cached prefix is the run of its *leading* block hashes found in the cache (prefix
semantics: the first miss ends it), so only the remaining tokens are computed, and at least
one token always is (the engine must produce logits).

Blocks evicted from HBM go down the tiers configured below it, in order (for example host
DRAM, then local NVMe, per instance; and a ``shared_store`` tier, one for the whole cluster as
in Mooncake's store). A hit in a lower tier costs the time to read those blocks into HBM at
that tier's read bandwidth (added to the prefill iteration), and promotes them to HBM. The
shared store, when configured, is the last tier; a hit there copies the blocks into HBM and
the store keeps its own copy.

Hits are counted in the tier where the lookup found them; the found blocks are then touched
together, from the last to the first, so a sequence's tail is evicted before the prefix it
hangs from (as vLLM's evictor does), and what they displace cascades down the tiers.

Accounting (per tier): blocks hit, prompt tokens saved, bytes read up and bytes written down.
Every block lives in at most one tier of an instance (plus possibly the shared store), so the
blocks per tier always add up to the blocks inserted minus the blocks dropped off the last
tier; :meth:`PrefixCache.block_census` exposes that for tests.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

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


class PrefixCache(PrefixLookup):
    """Per-instance LRU prefix caches (HBM plus lower tiers) for one run.

    Blocks are held as runs of :class:`~simdisagg.prefixtree.PrefixTree` segments: each local
    tier of an instance is an ``OrderedDict`` from segment to the number of its leading blocks
    in that tier, least recently used first. This is exact, not an approximation: a request
    touches its blocks from the last to the first, so every segment's cached blocks share one
    touch, ancestors are never older than descendants, and the exclusive tiers together behave
    as one LRU stack cut at the tier capacities. A segment's blocks are therefore a prefix of
    it, split across tiers in tier order (HBM ``[0, a)``, the next tier ``[a, b)``, ...), and a
    segment cut by a tier boundary is the oldest entry of the upper tier and the newest of the
    lower one. Eviction trims the oldest segment's tail, a run of blocks at a time.

    The shared store keeps single blocks (keyed by the tree's global block key), because
    instances evict different runs of the same segment into it.
    """

    def __init__(
        self,
        trace: Trace,
        n_instances: int,
        hbm_capacity_blocks: int,
        lower_tiers: list[TierSpec],
        block_bytes: float,
    ) -> None:
        if any(spec.shared for spec in lower_tiers[:-1]):
            raise ValueError("a shared_store tier must be the last tier")
        tree = trace.prefix_tree()
        self._tree = tree
        self._blocks: list[int] = tree.blocks.tolist()
        self._start: list[int] = tree.start_block.tolist()
        self._key_base: list[int] = tree.key_base.tolist()
        self._block_tokens = trace.hash_block_tokens
        self._inp = trace.input_tokens
        self.block_bytes = block_bytes
        self.tier_names = ["hbm"] + [t.name for t in lower_tiers]
        self.specs = lower_tiers
        has_shared = bool(lower_tiers) and lower_tiers[-1].shared
        self._n_local = len(self.tier_names) - (1 if has_shared else 0)
        self._capacity = [hbm_capacity_blocks] + [t.capacity_blocks for t in lower_tiers[: self._n_local - 1]]
        self._tiers: list[list[OrderedDict[int, int]]] = [
            [OrderedDict() for _ in range(self._n_local)] for _ in range(n_instances)
        ]
        self._used: list[list[int]] = [[0] * self._n_local for _ in range(n_instances)]
        self._shared: OrderedDict[int, None] | None = OrderedDict() if has_shared else None
        self._shared_capacity = lower_tiers[-1].capacity_blocks if has_shared else 0
        self.stats = [TierStats() for _ in self.tier_names]
        # Conservation: inserted == census + dropped + merged (see block_census).
        self.inserted_blocks = 0
        self.dropped_blocks = 0
        self.merged_blocks = 0  # an evicted block already present in the shared store
        self.lookups = 0
        self.lookup_blocks = 0
        self.lookup_tokens = 0
        self._paths: dict[int, list[int]] = {}
        self._origin: dict[int, tuple[list[int], int]] = {}  # see _to_hbm
        # (instance, request, segments, local hits, shared hits) of the latest lookup, valid
        # until the cache next changes (use and insert clear it).
        self._last_lookup: tuple[int, int, int, int, int] | None = None
        # Touches of use(..., defer=True) not yet applied, per instance (see settle()).
        self._deferred: dict[int, list[tuple[list[int], int]]] = {}

    def add_instance(self) -> None:
        """A new instance joins the pool, with empty tiers (a dynamic cluster)."""
        self._tiers.append([OrderedDict() for _ in range(self._n_local)])
        self._used.append([0] * self._n_local)

    # -- lookup -------------------------------------------------------------------------------
    def _path(self, i: int) -> list[int]:
        path = self._paths.get(i)
        if path is None:
            path = self._paths[i] = self._tree.path(i)
        return path

    def _local_hits(self, instance: int, path: list[int]) -> tuple[int, int]:
        """``(segments, blocks)`` of the path's leading run held in local tiers: whole
        segments, then possibly part of the next one."""
        tiers = self._tiers[instance]
        blocks = self._blocks
        hit = 0
        if len(tiers) == 1:  # HBM only: the common case, kept lean
            get = tiers[0].get
            for n, s in enumerate(path):
                held = get(s, 0)
                hit += held
                if held < blocks[s]:
                    return n + (1 if held else 0), hit
            return len(path), hit
        for n, s in enumerate(path):
            held = 0
            for tier in tiers:
                held += tier.get(s, 0)
            hit += held
            if held < blocks[s]:
                return n + (1 if held else 0), hit
        return len(path), hit

    def _shared_hits(self, path: list[int], n_seg: int, local_blocks: int) -> int:
        """Blocks found in the shared store right after the local run."""
        shared = self._shared
        if not shared:
            return 0
        found = 0
        start, blocks, base = self._start, self._blocks, self._key_base
        n = max(n_seg - 1, 0)
        while n < len(path):
            s = path[n]
            first = local_blocks + found - start[s]
            if first >= blocks[s]:
                n += 1
                continue
            for b in range(first, blocks[s]):
                if base[s] + b not in shared:
                    return found
                found += 1
            n += 1
        return found

    def cached_tokens(self, instance: int, i: int) -> int:
        """Leading tokens of request ``i`` cached in any tier of ``instance`` (at most
        ``input − 1``)."""
        path = self._path(i)
        if not path:
            return 0
        n_seg, local = self._local_hits(instance, path)
        shared = self._shared_hits(path, n_seg, local)
        # Prefill asks for the hits, then uses them at once: keep the lookup for use().
        self._last_lookup = (instance, i, n_seg, local, shared)
        hits = local + shared
        return min(hits * self._block_tokens, int(self._inp[i]) - 1) if hits else 0

    # -- the interface prefill uses -------------------------------------------------------------
    @property
    def hbm_only(self) -> bool:
        """Whether HBM is the only tier (no host memory, disk or shared store below it)."""
        return self._n_local == 1 and self._shared is None

    def use(self, instance: int, i: int, defer: bool = False) -> float:
        """Request ``i`` starts prefill on ``instance``: count the hits where they were found,
        then make the found blocks the most recent in HBM (loading those held lower down);
        returns the seconds to load them.

        ``defer`` (HBM only): the hits are all in HBM already, so the touch only reorders;
        it is kept until :meth:`settle`, which applies it or drops it."""
        path = self._path(i)
        n_blocks = self._tree.path_blocks(i)
        self.lookups += 1
        self.lookup_blocks += n_blocks
        self.lookup_tokens += int(self._inp[i])
        if not path:
            return 0.0
        last = self._last_lookup
        self._last_lookup = None  # the cache changes below
        if last is not None and last[0] == instance and last[1] == i:
            _, _, n_seg, local, shared_found = last
        else:
            n_seg, local = self._local_hits(instance, path)
            shared_found = self._shared_hits(path, n_seg, local)
        found = local + shared_found
        if not found:
            return 0.0
        usable = min(found * self._block_tokens, int(self._inp[i]) - 1)
        tiers = self._tiers[instance]
        start = self._start
        # Hits, per tier, over the path positions each tier holds.
        hits = [0] * len(self.tier_names)
        if len(tiers) == 1:
            if local:
                self._count_hit(hits, 0, 0, local, usable)
        else:
            for s in path[:n_seg]:
                pos = start[s]
                for k, tier in enumerate(tiers):
                    c = tier.get(s, 0)
                    if c:
                        self._count_hit(hits, k, pos, c, usable)
                        pos += c
        if shared_found:
            self._count_hit(hits, len(self.tier_names) - 1, local, shared_found, usable)
        load_s = 0.0
        for k in range(1, len(self.tier_names)):
            if hits[k]:
                load_s += hits[k] * self.block_bytes / self.specs[k - 1].read_bytes_per_s
                self.stats[k].bytes_read += hits[k] * self.block_bytes
        # The blocks new to this instance are the copies of those found in the shared store,
        # which keeps its own.
        end_seg = n_seg
        while end_seg < len(path) and start[path[end_seg]] < found:
            end_seg += 1
        if defer and self.hbm_only:
            self._deferred.setdefault(instance, []).append((path[:end_seg], found))
        else:
            self.inserted_blocks += self._touch(instance, path[:end_seg], found)
        return load_s

    def settle(self, instance: int, superseded: bool) -> None:
        """Apply the touches deferred on ``instance``, in order, or drop them when
        ``superseded``: a prefill batch of one request, whose insert() at the batch's end
        touches a superset of its path before anything else touches this instance (the
        instance is busy meanwhile), leaving the same order and evicting the same blocks.

        A touch found entirely in HBM adds nothing and evicts nothing, so deferring it to the
        end of batch formation changes no lookup made in between."""
        pending = self._deferred.pop(instance, None)
        if pending is None or superseded:
            return
        for segments, found in pending:
            self.inserted_blocks += self._touch(instance, segments, found)

    def _count_hit(self, hits: list[int], k: int, first_block: int, count: int, usable_tokens: int) -> None:
        """``count`` blocks from path position ``first_block`` were found in tier ``k``."""
        st = self.stats[k]
        st.hit_blocks += count
        bt = self._block_tokens
        st.saved_tokens += max(0, min(count * bt, usable_tokens - first_block * bt))
        hits[k] += count

    def _touch(self, instance: int, segments: list[int], n_blocks: int) -> int:
        """Make the first ``n_blocks`` blocks along ``segments`` (a path from the root) the
        most recent in HBM, deepest segment first so that the first blocks end up newest, and
        let what they displace cascade down. Returns how many of them were not held locally."""
        tiers = self._tiers[instance]
        used = self._used[instance]
        start, blocks = self._start, self._blocks
        added = 0
        if not segments:
            return 0
        if len(tiers) == 1:  # HBM only: the common case, kept lean
            hbm = tiers[0]
            get, newest = hbm.get, hbm.move_to_end
            # Segments are contiguous along a path and end before n_blocks, so only the last
            # may be cut short.
            last = segments[-1]
            want = n_blocks - start[last]
            if want > blocks[last]:
                want = blocks[last]
            added = want - get(last, 0)
            hbm[last] = want
            newest(last)
            for k in range(len(segments) - 2, -1, -1):
                s = segments[k]
                whole = blocks[s]
                held = get(s, 0)
                if held != whole:
                    added += whole - held
                    hbm[s] = whole  # a new key lands at the newest end
                if held:
                    newest(s)
            used[0] += added
        else:
            for s in reversed(segments):
                added += self._to_hbm(tiers, used, s, min(blocks[s], n_blocks - start[s]))
        self._evict(instance, 0)
        self._origin.clear()
        return added

    def _to_hbm(self, tiers: list[OrderedDict[int, int]], used: list[int], s: int, want: int) -> int:
        """Move segment ``s``'s first ``want`` blocks to the newest end of HBM (taking them
        out of the lower tiers that hold them), remembering where they were. Returns how many
        were held in no local tier."""
        # Where the blocks were, as cumulative counts per tier: a block that is touched and
        # then settles back into the tier it came from was not written again.
        hbm = tiers[0]
        in_hbm = hbm.get(s, 0)
        held = in_hbm
        cum = [held]
        for k in range(1, len(tiers)):
            c = tiers[k].pop(s, 0)
            used[k] -= c
            held += c
            cum.append(held)
        self._origin[s] = (cum, held)
        hbm[s] = want
        hbm.move_to_end(s)
        used[0] += want - in_hbm
        return want - held

    def _moved_down(self, s: int, k: int, first: int, count: int) -> int:
        """Blocks of the run ``first .. first+count-1`` of segment ``s``, leaving tier ``k``,
        that were not below tier ``k`` before this operation (the ones really written down)."""
        origin = self._origin.get(s)
        if origin is None:
            return count
        cum, held = origin
        end = first + count
        return max(0, min(end, cum[k]) - first) + max(0, end - max(first, held))

    def insert(self, instance: int, i: int, now: float) -> None:
        """Request ``i``'s prompt KV now exists on ``instance``: cache all its blocks in HBM."""
        path = self._paths.pop(i, None) or self._tree.path(i)
        self._last_lookup = None  # the cache changes below
        if path:
            self.inserted_blocks += self._touch(instance, path, self._tree.path_blocks(i))

    def _evict(self, instance: int, k: int) -> None:
        """Trim the oldest runs of tier ``k`` (and, in cascade, of the tiers below) down to
        their capacities."""
        tiers = self._tiers[instance]
        used = self._used[instance]
        if self._n_local == 1 and self._shared is None:
            # HBM only, nothing below: the oldest runs are simply dropped.
            excess = used[0] - self._capacity[0]
            if excess <= 0:
                return
            hbm = tiers[0]
            dropped = excess
            while excess > 0:
                s, c = hbm.popitem(last=False)
                if c > excess:
                    hbm[s] = c - excess
                    hbm.move_to_end(s, last=False)
                    break
                excess -= c
            used[0] -= dropped
            self.stats[0].evicted_blocks += dropped
            self.dropped_blocks += dropped
            return
        while k < self._n_local:
            excess = used[k] - self._capacity[k]
            if excess <= 0:
                return
            tier = tiers[k]
            st = self.stats[k]
            nxt = k + 1
            while excess > 0:
                s, c = next(iter(tier.items()))
                take = c if c <= excess else excess
                if take == c:
                    del tier[s]
                else:
                    tier[s] = c - take
                used[k] -= take
                excess -= take
                # Path position of the run: the segment's blocks in the tiers above come first.
                first = c - take
                for j in range(k):
                    first += tiers[j].get(s, 0)
                moved = self._moved_down(s, k, first, take)
                st.evicted_blocks += moved
                if nxt < self._n_local:
                    lower = tiers[nxt]
                    # The run joins the newest end of the tier below, next to the part of
                    # this segment already there (which is that tier's newest entry).
                    lower[s] = lower.get(s, 0) + take
                    lower.move_to_end(s)
                    used[nxt] += take
                    self.stats[nxt].bytes_written += moved * self.block_bytes
                elif self._shared is not None:
                    self._to_shared(s, first, take)
                else:
                    self.dropped_blocks += take
            k = nxt

    def _to_shared(self, s: int, first: int, count: int) -> None:
        """Blocks ``first .. first+count-1`` of segment ``s`` drop into the shared store."""
        shared = self._shared
        assert shared is not None
        st = self.stats[-1]
        st.bytes_written += count * self.block_bytes
        base = self._key_base[s] + first
        # Tails are evicted first: add the run from its last block, as single evictions would.
        for key in range(base + count - 1, base - 1, -1):
            if key in shared:
                shared.move_to_end(key)
                self.merged_blocks += 1
                continue
            shared[key] = None
            if len(shared) > self._shared_capacity:
                shared.popitem(last=False)
                st.evicted_blocks += 1
                self.dropped_blocks += 1

    # -- accounting ---------------------------------------------------------------------------
    def block_census(self) -> dict[str, int]:
        """Blocks held per tier (the shared store counted once)."""
        counts = dict.fromkeys(self.tier_names, 0)
        for used in self._used:
            for name, n in zip(self.tier_names, used, strict=False):
                counts[name] += n
        if self._shared is not None:
            counts[self.tier_names[-1]] = len(self._shared)
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
