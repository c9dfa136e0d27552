"""Deferring the prefix-cache touches of a prefill batch changes nothing.

A prefill instance lets the cache keep a batch's touches (found prefixes made most recent)
until the batch is formed, and drop them for a batch of one, whose own insert at the end
touches a superset first. With HBM as the only tier a touch only reorders, so every lookup,
eviction and timestamp must be what touching at once gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simdisagg import simulate
from simdisagg.config import RunConfig
from simdisagg.generate import generate_trace
from simdisagg.sim.prefill import PrefillInstance
from simdisagg.sim.prefixcache import PrefixCache
from simdisagg.sim.recorder import TIME_COLUMNS
from simdisagg.trace import Trace, TraceBuilder, load_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _run(cfg: RunConfig, trace: Trace, defer: bool, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Simulate, and capture the prefill prefix cache's final state: its counters and every
    tier's LRU order."""
    caches: list[PrefixCache] = []
    original = PrefixCache.__init__

    def capture(self: PrefixCache, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        caches.append(self)

    monkeypatch.setattr(PrefillInstance, "defer_touches", defer)
    monkeypatch.setattr(PrefixCache, "__init__", capture)
    result = simulate(cfg, trace)
    state = [
        (c.inserted_blocks, c.dropped_blocks, c.merged_blocks, [[list(t.items()) for t in tiers] for tiers in c._tiers])
        for c in caches
    ]
    return result, state


def _families(seed: int) -> Trace:
    """Bursts of prompts that share one of a few long prefixes, each with a short tail of its
    own, against a cache of a few prompts: prefill batches of several prompts, hits, and
    evictions that depend on which found prefix was touched last."""
    rng = np.random.default_rng(seed)
    b = TraceBuilder(f"families-{seed}", hash_block_tokens=64)
    next_hash = 1000
    t = 0.0
    for line in range(1, 301):
        t += float(rng.exponential(0.0005))
        family = int(rng.integers(0, 12))
        prefix = [family * 10 + k for k in range(4)]
        tail = list(range(next_hash, next_hash + int(rng.integers(1, 4))))
        next_hash += len(tail)
        hashes = prefix + tail
        b.add(line=line, timestamp_s=t, input_tokens=64 * len(hashes), output_tokens=int(rng.integers(2, 20)),
              hash_ids=hashes)
    return b.build()


def _cases() -> list[tuple[str, RunConfig, Trace]]:
    mooncake = load_jsonl(ROOT / "traces" / "mooncake-conversation-5min.jsonl")
    agentic = generate_trace("agentic", num_sessions=40, seed=3)
    small_hbm = {"enabled": True, "hbm_fraction": 0.02}
    tiny = {"count": 2, "kv_capacity_tokens": 64 * 40, "kv_block_tokens": 64, "max_batched_tokens": 4096}
    return [
        ("families, tiny cache", RunConfig.model_validate({
            "prefill": tiny, "decode": {"count": 1}, "prefix_cache": {"enabled": True, "hbm_fraction": 0.4}}),
         _families(1)),
        # Batches of several prompts (a large token budget), a cache small enough to evict.
        ("mooncake, multi-request batches", RunConfig.model_validate({
            "prefill": {"count": 2, "max_batched_tokens": 65_536}, "decode": {"count": 2},
            "prefix_cache": small_hbm, "rate_scale": 4.0}), mooncake),
        ("agentic, 1M-context model", RunConfig.model_validate({
            "model": "qwen2.5-7b-instruct-1m", "prefill": {"count": 3, "tp": 2},
            "decode": {"count": 1, "tp": 2}, "prefix_cache": small_hbm}), agentic),
        ("agentic, host-memory tier (touches at once)", RunConfig.model_validate({
            "model": "qwen2.5-7b-instruct-1m", "prefill": {"count": 3, "tp": 2},
            "decode": {"count": 1, "tp": 2},
            "prefix_cache": {**small_hbm, "tiers": [{"kind": "host_dram", "capacity_bytes": 20e9,
                                                      "read_bytes_per_s": 50e9, "write_bytes_per_s": 50e9}]}}),
         agentic),
    ]


@pytest.mark.parametrize("case", range(4))
def test_deferred_touches_leave_every_result_unchanged(case: int, monkeypatch: pytest.MonkeyPatch) -> None:
    name, cfg, trace = _cases()[case]
    at_once, state_at_once = _run(cfg, trace, False, monkeypatch)
    deferred, state_deferred = _run(cfg, trace, True, monkeypatch)
    assert state_at_once == state_deferred, name
    for col in TIME_COLUMNS:
        assert np.array_equal(at_once.recorder.times[col], deferred.recorder.times[col], equal_nan=True), (name, col)
    assert np.array_equal(at_once.recorder.cached_tokens, deferred.recorder.cached_tokens), name
    assert np.array_equal(at_once.recorder.prefill_instance, deferred.recorder.prefill_instance), name
    assert at_once.meta == deferred.meta, name
    # The case exercises what it says: hits, evictions, and batches of more than one prompt.
    assert at_once.recorder.cached_tokens.sum() > 0, name
    cache = next(v for k, v in at_once.meta.items() if k.startswith("prefix_cache"))
    assert cache, name
