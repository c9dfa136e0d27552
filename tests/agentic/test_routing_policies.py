"""Each routing policy does what its docstring in :mod:`simdisagg.sim.router` says.

One small purpose-built trace per policy, with constant service times so that every routing
decision can be derived by hand (each test's docstring derives it). A policy is checked
against a baseline that lacks the property (round robin or least outstanding tokens for
prefill, least loaded for decode, plain disaggregation for the conditional threshold), and
the test also asserts that the baseline *does* lack it on the same trace, so the trace can
tell a working policy from a broken one.

The last two tests guard two fixes: a prompt prefilled on its decode instance names no
prefill-pool instance, and least-loaded decode routing counts prompts queued there for
prefill.

Only public behaviour is used: :func:`simdisagg.simulate`, the summary of
:func:`simdisagg.summarize` and the per-request table that ``--out`` writes
(:func:`simdisagg.output.requests_frame`: ``prefill_instance``, ``decode_instance``,
``kv_bytes_sent`` and the stage timestamps).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from simdisagg import simulate, summarize
from simdisagg.config import (
    ConstantCost,
    PoolConfig,
    PrefixCacheConfig,
    RouterConfig,
    RunConfig,
)
from simdisagg.hardware import ProfileStore
from simdisagg.output import requests_frame
from simdisagg.trace import Trace, TraceBuilder

STORE = ProfileStore()
BLOCK_TOKENS = 64  # prefix-hash block of the test traces
BIG_KV_TOKENS = 1_000_000  # per instance: KV memory never binds unless a test says so
KV_BYTES_PER_TOKEN = STORE.model(RunConfig().model).kv_bytes_per_token

# Constant service times: a prefill iteration takes 10 ms + 10 µs per new token; a decode step
# 5 ms. Every test spaces its arrivals far enough apart (or close enough together) that the
# state each routing decision sees follows from these numbers.
PREFILL_S = 0.01
PREFILL_S_PER_TOKEN = 1e-5
DECODE_STEP_S = 0.005
COST = ConstantCost(prefill_s=PREFILL_S, prefill_s_per_token=PREFILL_S_PER_TOKEN, decode_step_s=DECODE_STEP_S)


@dataclass(frozen=True, slots=True)
class Row:
    """One request of a test trace (seconds, tokens; hash ids in ``BLOCK_TOKENS`` blocks)."""

    at_s: float
    input_tokens: int
    output_tokens: int
    session: str | None = None
    hash_ids: tuple[int, ...] | None = None


def make_trace(rows: Sequence[Row]) -> Trace:
    """A trace of ``rows`` in order; request ids are ``r0, r1, ...``."""
    builder = TraceBuilder("routing-test", BLOCK_TOKENS)
    for k, row in enumerate(rows):
        builder.add(
            line=k + 1,
            timestamp_s=row.at_s,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            request_id=f"r{k}",
            session_id=row.session,
            hash_ids=row.hash_ids,
        )
    return builder.build()


def cluster(
    *,
    prefill_policy: str = "round_robin",
    decode_policy: str = "least_loaded",
    prefill_count: int = 2,
    decode_count: int = 2,
    decode_kv_tokens: int = BIG_KV_TOKENS,
    decode_retain_fraction: float = 0.0,
    conditional_prefill_tokens: int | None = None,
    kv_overlap_weight: float = 1.0,
    one_prompt_per_batch: bool = False,
    seed: int = 0,
) -> RunConfig:
    """A small disaggregated cluster with constant costs and ample KV memory."""
    return RunConfig(
        prefill=PoolConfig(
            count=prefill_count,
            kv_capacity_tokens=BIG_KV_TOKENS,
            max_prefill_batch_requests=1 if one_prompt_per_batch else None,
        ),
        decode=PoolConfig(count=decode_count, kv_capacity_tokens=decode_kv_tokens),
        router=RouterConfig(
            prefill_policy=prefill_policy,  # type: ignore[arg-type]
            decode_policy=decode_policy,  # type: ignore[arg-type]
            conditional_prefill_tokens=conditional_prefill_tokens,
            kv_overlap_weight=kv_overlap_weight,
        ),
        prefix_cache=PrefixCacheConfig(hbm_fraction=0.5, decode_retain_fraction=decode_retain_fraction),
        cost=COST,
        seed=seed,
    )


def run(cfg: RunConfig, trace: Trace) -> tuple[dict[str, Any], pd.DataFrame]:
    """Simulate; return the summary and the per-request table (every request must complete)."""
    result = simulate(cfg, trace, store=STORE)
    summary = summarize(result, cfg.slo)
    frame = requests_frame(result, cfg.slo)
    assert (frame["status"] == "completed").all(), frame[frame["status"] != "completed"]
    return summary, frame


def instances_per_session(frame: pd.DataFrame, column: str) -> dict[int, set[int]]:
    """The set of ``column`` instances each session's requests used."""
    return {int(s): set(g[column].tolist()) for s, g in frame.groupby("session_index")}


# ---------------------------------------------------------------------------------------
# Prefill policies


def _group_rows(groups: int = 4, rounds: int = 6, prefix_blocks: int = 20) -> list[Row]:
    """Groups with their own ``prefix_blocks``-block shared prefix plus 2 blocks of each
    request's own. Round 0 brings every group's first request 1 ms apart (so they overlap in
    prefill); later rounds come one request a second, g0 g1 g2 g3 (each prefill ends long
    before the next arrival)."""
    rows = []
    for j in range(groups * rounds):
        g, k = j % groups, j // groups
        at_s = 0.001 * g if k == 0 else float(j)
        hashes = tuple(1000 * (g + 1) + b for b in range(prefix_blocks)) + (100_000 + 2 * j, 100_001 + 2 * j)
        rows.append(Row(at_s, len(hashes) * BLOCK_TOKENS, 2, hash_ids=hashes))
    return rows


def test_kv_aware_prefill_beats_round_robin_on_prefix_hits() -> None:
    """kv_aware minimises ``w·(uncached tokens on k) + tokens queued on k``.

    Four groups of 1,408-token prompts (a 1,280-token group prefix) on 3 prefill instances
    with room for every block, 6 rounds (see ``_group_rows``).

    * kv_aware, round 0: nothing is cached, so the least queued instance wins: g0 → 0,
      g1 → 1, g2 → 2, g3 → 0 (all queue 1,408 tokens; lowest index). Later rounds find every
      instance idle and go where the group's prefix is: 24 − 4 = 20 requests hit 1,280 tokens.
    * round_robin: request j goes to j mod 3, group j mod 4, so each group visits every
      instance twice and only the second visit hits: 24 − 12 = 12 requests hit.
    * Load alone (least outstanding tokens) would send every later request to idle
      instance 0 and miss g1's and g2's prefixes once each: 18 hits.
    """
    rows = _group_rows()
    trace = make_trace(rows)
    total_input = sum(r.input_tokens for r in rows)
    prefix_tokens = 20 * BLOCK_TOKENS

    aware, aware_frame = run(cluster(prefill_policy="kv_aware", prefill_count=3), trace)
    rr, _ = run(cluster(prefill_policy="round_robin", prefill_count=3), trace)
    lot, _ = run(cluster(prefill_policy="least_outstanding_tokens", prefill_count=3), trace)

    assert aware["prefill_prefill_tokens_saved"] == 20 * prefix_tokens
    assert rr["prefill_prefill_tokens_saved"] == 12 * prefix_tokens
    assert lot["prefill_prefill_tokens_saved"] == 18 * prefix_tokens
    assert aware["prefill_prefix_token_hit_fraction"] == pytest.approx(20 * prefix_tokens / total_input)
    assert aware["prefill_prefix_token_hit_fraction"] > rr["prefill_prefix_token_hit_fraction"]
    # Each group stayed where its prefix was cached, and the groups were spread.
    group_of = np.arange(len(rows)) % 4
    assert aware_frame.groupby(group_of)["prefill_instance"].nunique().eq(1).all()
    assert aware_frame["prefill_instance"].iloc[:4].tolist() == [0, 1, 2, 0]


def test_kv_aware_prefill_trades_prefix_overlap_against_load() -> None:
    """The cost is ``−w·cached + queued``: a cached prefix is worth ``w`` per token against the
    tokens already queued on the instance.

    r0 caches a 1,280-token prefix on instance 0 (both idle). At t = 1, r1 (100,000 tokens,
    1.01 s) starts on instance 0: its tokens are queued there (kv_aware with nothing cached
    picks the least queued, and ties go to index 0). At t = 1.1, r2 shares r0's prefix:
    with w = 1, instance 0 costs −1,280 + 100,000 and instance 1 costs 0, so r2 leaves its
    prefix behind; with w = 100, instance 0 costs −128,000 + 100,000 < 0 and r2 waits there
    for its cache. With w = 0, kv_aware is least outstanding tokens, request for request."""
    prefix = tuple(range(20))
    rows = [
        Row(0.0, 22 * BLOCK_TOKENS, 2, hash_ids=prefix + (900, 901)),
        Row(1.0, 100_000, 2),
        Row(1.1, 22 * BLOCK_TOKENS, 2, hash_ids=prefix + (902, 903)),
    ]
    trace = make_trace(rows)

    def routed(weight: float) -> list[int]:
        frame = run(cluster(prefill_policy="kv_aware", kv_overlap_weight=weight), trace)[1]
        return [int(k) for k in frame["prefill_instance"]]

    assert routed(1.0) == [0, 0, 1]
    assert routed(100.0) == [0, 0, 0]
    _, lot = run(cluster(prefill_policy="least_outstanding_tokens"), trace)
    assert routed(0.0) == lot["prefill_instance"].tolist()


def _session_rows(sessions: int = 3, rounds: int = 5, output_tokens: int = 300) -> list[Row]:
    """Sessions whose context grows by 8 blocks a step (each step resends the whole context).
    Round k brings one request of every session at k seconds, 1 ms apart, in an order that
    rotates (round k starts with session k mod 3), so that a policy choosing by load alone
    moves sessions between instances. Outputs of 300 tokens (1.5 s of decode) keep decode
    instances busy across rounds."""
    rows = []
    for k in range(rounds):
        for p in range(sessions):
            s = (k + p) % sessions
            blocks = 8 * (k + 1)
            hashes = tuple(10_000 * (s + 1) + b for b in range(blocks))
            rows.append(Row(k + 0.001 * p, blocks * BLOCK_TOKENS, output_tokens, f"s{s}", hashes))
    return rows


def test_session_affinity_keeps_sessions_on_one_instance_and_raises_hits() -> None:
    """session_affinity (prefill and decode): a session's requests go where its first request
    went, so each session sees one prefill and one decode instance.

    Three sessions on 2 + 2 instances (see ``_session_rows``). Round 0: s0 takes prefill
    instance 0, s1 arrives while s0 is in service and takes instance 1, s2 ties (lowest
    index, 0); decode spreads them likewise. Without affinity, least outstanding tokens
    (the first pick of session_affinity) follows the rotating arrival order and moves every
    session, and so does round robin; least-loaded decode moves them too.

    Prefix hits (tokens saved), with every block fitting in the cache: with affinity, step k
    of a session hits the 8k blocks of step k − 1: 512 × (1 + 2 + 3 + 4) = 5,120 tokens per
    session, 15,360 in all. Round robin sends request j to j mod 2, so s0 visits instances
    0 1 1 1 0, s1 1 1 0 0 0 and s2 0 0 0 1 1; a step hits the blocks of the session's latest
    step on the same instance: s0 0 + 1,024 + 1,536 + 512, s1 512 + 0 + 1,536 + 2,048,
    s2 512 + 1,024 + 0 + 2,048: 10,752 in all.
    """
    trace = make_trace(_session_rows())
    affinity, frame = run(cluster(prefill_policy="session_affinity", decode_policy="session_affinity"), trace)
    rr, rr_frame = run(cluster(prefill_policy="round_robin", decode_policy="least_loaded"), trace)
    lot, lot_frame = run(cluster(prefill_policy="least_outstanding_tokens", decode_policy="least_loaded"), trace)

    prefill_of = instances_per_session(frame, "prefill_instance")
    decode_of = instances_per_session(frame, "decode_instance")
    assert prefill_of == {0: {0}, 1: {1}, 2: {0}}
    assert decode_of == {0: {0}, 1: {1}, 2: {0}}
    # Without affinity the same trace splits every session (so the checks above can fail).
    for baseline in (rr_frame, lot_frame):
        assert all(len(k) > 1 for k in instances_per_session(baseline, "prefill_instance").values())
        assert all(len(k) > 1 for k in instances_per_session(baseline, "decode_instance").values())

    assert affinity["prefill_prefill_tokens_saved"] == 3 * 512 * (1 + 2 + 3 + 4)
    assert rr["prefill_prefill_tokens_saved"] == 10_752
    assert affinity["prefill_prefix_token_hit_fraction"] > rr["prefill_prefix_token_hit_fraction"]
    assert affinity["prefill_prefix_token_hit_fraction"] > lot["prefill_prefix_token_hit_fraction"]


def _one_huge_then_small(small: int = 6) -> list[Row]:
    """r0: 100,000 tokens at t = 0 (prefill 1.01 s); then small 200-token prompts every 0.1 s
    from t = 0.1 (prefill 12 ms each), all arriving while r0 is in service."""
    return [Row(0.0, 100_000, 2)] + [Row(0.1 * (k + 1), 200, 2) for k in range(small)]


def test_least_outstanding_tokens_steers_small_prompts_around_a_huge_one() -> None:
    """least_outstanding_tokens: the fewest prompt tokens queued or in service.

    r0 takes instance 0 (tie, lowest index) for 1.01 s. Each small prompt then sees 100,000
    outstanding tokens on instance 0 and at most 200 on instance 1, so all go to instance 1
    and start at once (prefill ends 12 ms after arrival). Round robin sends every other one to
    instance 0, where it waits for r0: TTFT ≥ 1.01 − 0.6 = 0.41 s.
    """
    trace = make_trace(_one_huge_then_small())
    _, lot = run(cluster(prefill_policy="least_outstanding_tokens"), trace)
    _, rr = run(cluster(prefill_policy="round_robin"), trace)

    small = slice(1, None)
    assert lot["prefill_instance"].iloc[0] == 0
    assert (lot["prefill_instance"].iloc[small] == 1).all()
    prefill_end_s = lot["first_token_at"] - lot["arrival_at"]
    assert prefill_end_s.iloc[small].max() == pytest.approx(PREFILL_S + 200 * PREFILL_S_PER_TOKEN)
    # Round robin queues some small prompts behind the huge one.
    behind = rr.iloc[small][rr["prefill_instance"].iloc[small] == 0]
    assert len(behind) == 3
    assert behind["ttft_s"].min() > 0.4


def _busy_gaps(frame: pd.DataFrame) -> dict[int, list[tuple[float, float]]]:
    """Idle gaps of each prefill instance between its first and last prefill (one prompt per
    iteration, so an iteration is ``[prefill_start_at, first_token_at]`` of one request)."""
    gaps: dict[int, list[tuple[float, float]]] = {}
    for k, g in frame.groupby("prefill_instance"):
        spans = g.sort_values("prefill_start_at")[["prefill_start_at", "first_token_at"]].to_numpy()
        gaps[int(k)] = [
            (float(end), float(start))
            for (_, end), (start, _) in itertools.pairwise(spans)
            if start > end + 1e-9
        ]
    return gaps


def _idled_while_work_waited(frame: pd.DataFrame, instances: int) -> list[tuple[int, int]]:
    """(request, instance) pairs where the request waited in a queue while that instance
    was idle (before its first prefill, between two, or after its last)."""
    gaps = _busy_gaps(frame)
    first = frame.groupby("prefill_instance")["prefill_start_at"].min()
    last = frame.groupby("prefill_instance")["first_token_at"].max()
    bad = []
    for i, row in frame.iterrows():
        wait_from, wait_to = row["prefill_enqueued_at"], row["prefill_start_at"]
        if wait_to <= wait_from + 1e-9:
            continue
        for k in range(instances):
            idle = list(gaps.get(k, []))
            idle.append((-math.inf, float(first.get(k, math.inf))))
            idle.append((float(last.get(k, -math.inf)), math.inf))
            if any(lo < wait_to - 1e-9 and hi > wait_from + 1e-9 for lo, hi in idle):
                bad.append((int(i), k))
    return bad


def test_shared_queue_never_idles_an_instance_while_a_prompt_waits() -> None:
    """shared_queue: every prefill instance pulls from one central queue when it is free, so
    (with KV memory never binding) no instance is idle while a prompt waits: work conserving.

    Skewed trace on 2 instances: prompts every 0.1 s alternating 30,000 tokens (0.31 s) and
    200 tokens (12 ms). Round robin puts every long prompt on instance 0 (1.55 s of work a
    second: its queue grows) while instance 1 idles; the shared queue spreads them (0.32 s of
    work per 0.2 s over two instances).
    """
    rows = [Row(0.1 * j, 30_000 if j % 2 == 0 else 200, 2) for j in range(24)]
    trace = make_trace(rows)
    shared, shared_frame = run(cluster(prefill_policy="shared_queue", one_prompt_per_batch=True), trace)
    rr, rr_frame = run(cluster(prefill_policy="round_robin", one_prompt_per_batch=True), trace)

    assert _idled_while_work_waited(shared_frame, 2) == []
    assert _idled_while_work_waited(rr_frame, 2) != []  # the trace does catch a non-conserving policy
    assert set(shared_frame["prefill_instance"]) == {0, 1}
    assert shared["mean_ttft_ms"] < rr["mean_ttft_ms"]
    assert shared["p99_ttft_ms"] < rr["p99_ttft_ms"]


def test_random_uses_every_instance_and_is_deterministic_per_seed() -> None:
    """random: uniform from the ``router`` stream of the run's seed. 40 prompts on 4
    instances reach all 4; the same seed gives the same assignment, another seed another one
    (the chance that two independent uniform assignments of 40 prompts agree is 4^-40), and
    it is not round robin's pattern."""
    trace = make_trace([Row(0.05 * j, 300, 2) for j in range(40)])
    _, a = run(cluster(prefill_policy="random", prefill_count=4, seed=7), trace)
    _, b = run(cluster(prefill_policy="random", prefill_count=4, seed=7), trace)
    _, c = run(cluster(prefill_policy="random", prefill_count=4, seed=8), trace)

    picks = a["prefill_instance"].to_numpy()
    assert set(picks.tolist()) == {0, 1, 2, 3}
    assert np.array_equal(picks, b["prefill_instance"].to_numpy())
    assert not np.array_equal(picks, c["prefill_instance"].to_numpy())
    assert not np.array_equal(picks, np.arange(40) % 4)
    # Roughly uniform: each instance gets 10 ± 3σ (σ = √(40 · 1/4 · 3/4) ≈ 2.7).
    counts = np.bincount(picks, minlength=4)
    assert (np.abs(counts - 10) <= 8).all(), counts


# ---------------------------------------------------------------------------------------
# Decode policies


def test_least_loaded_decode_sends_small_requests_away_from_a_full_instance() -> None:
    """least_loaded: the smallest fraction of KV memory reserved or asked for (ties: fewest
    requests in the batch, then lowest index).

    r0 (20,000 + 400 tokens, 2 s of decode) finds both decode instances empty: instance 0.
    The small requests (500 + 50 tokens) arrive during r0's decode; instance 0 holds 20,400 of
    100,000 tokens, instance 1 at most 550 (the previous small one), so all go to instance 1.
    """
    rows = [Row(0.0, 20_000, 400)] + [Row(0.5 + 0.1 * k, 500, 50) for k in range(4)]
    trace = make_trace(rows)
    _, frame = run(cluster(decode_kv_tokens=100_000), trace)
    assert frame["decode_instance"].iloc[0] == 0
    assert (frame["decode_instance"].iloc[1:] == 1).all()
    # The small requests really overlapped r0's decode (the choice was made under load).
    assert (frame["decode_admit_at"].iloc[1:] < frame["completed_at"].iloc[0]).all()


def _returning_session_rows() -> list[Row]:
    """A1 (8,192 tokens = 128 blocks, 4 out) at t = 0; C (1,024 tokens, 2,000 out: 10 s of
    decode) at t = 1; A2 (A1's 128 blocks + 8 new, 4 out) at t = 2."""
    a1 = tuple(range(128))
    c = tuple(range(5000, 5016))
    a2 = a1 + tuple(range(128, 136))
    return [
        Row(0.0, 8192, 4, "A", a1),
        Row(1.0, 1024, 2000, "C", c),
        Row(2.0, 8704, 4, "A", a2),
    ]


def test_kv_aware_decode_returns_a_session_to_its_retained_context() -> None:
    """kv_aware decode: minimise ``w·(context tokens not held on k) + KV tokens reserved on k``;
    with ``decode_retain_fraction`` > 0 a decode instance keeps finished contexts, and only
    the part it does not hold crosses the link.

    A1 decodes on instance 0 (both empty) and leaves its 8,192 tokens there. C takes
    instance 0 too (tie) and reserves 3,024 tokens. When A2 comes: kv_aware costs are
    instance 0: −8,192 + 3,024 < instance 1: 0, so it returns to instance 0 and sends 512
    tokens of KV. Least loaded picks the empty instance 1 and sends all 8,704.
    """
    trace = make_trace(_returning_session_rows())
    aware, aware_frame = run(cluster(decode_policy="kv_aware", decode_retain_fraction=0.5), trace)
    loaded, loaded_frame = run(cluster(decode_policy="least_loaded", decode_retain_fraction=0.5), trace)

    assert aware_frame["decode_instance"].tolist() == [0, 0, 0]
    assert loaded_frame["decode_instance"].tolist() == [0, 0, 1]
    assert aware_frame["kv_bytes_sent"].iloc[2] == 512 * KV_BYTES_PER_TOKEN
    assert loaded_frame["kv_bytes_sent"].iloc[2] == 8704 * KV_BYTES_PER_TOKEN
    assert aware["kv_bytes_sent"] < loaded["kv_bytes_sent"]
    assert aware["decode_retained_prefix_hbm_hit_rate"] > 0.0


def test_session_affinity_decode_returns_a_session_to_its_decode_instance() -> None:
    """decode session_affinity: a session returns to the decode instance of its previous
    request, even when another instance is less loaded.

    Same three growing sessions as the prefill test, with both pools' baselines fixed
    (prefill round robin) so that only the decode policy differs. Least loaded moves
    sessions between the two decode instances (their loads change as 1.5 s decodes
    overlap); session affinity never does.
    """
    trace = make_trace(_session_rows())
    _, sticky = run(cluster(prefill_policy="round_robin", decode_policy="session_affinity"), trace)
    _, loaded = run(cluster(prefill_policy="round_robin", decode_policy="least_loaded"), trace)

    sticky_of = instances_per_session(sticky, "decode_instance")
    assert all(len(k) == 1 for k in sticky_of.values()), sticky_of
    assert set().union(*sticky_of.values()) == {0, 1}
    assert any(len(k) > 1 for k in instances_per_session(loaded, "decode_instance").values())


# ---------------------------------------------------------------------------------------
# Conditional disaggregation


def _is_local(frame: pd.DataFrame) -> pd.Series:
    """Requests prefilled on their decode instance: no KV crossed a link."""
    return (frame["kv_bytes_sent"] == 0) & frame["kv_send_start_at"].isna()


def test_conditional_disaggregation_prefills_short_prompts_on_the_decode_instance() -> None:
    """conditional_prefill_tokens = 1,000: a request whose uncached part is at most 1,000
    tokens is prefilled on its decode instance (no KV transfer); longer ones go to the
    prefill pool and their whole prompt's KV crosses the link. 1,000 (at the threshold) and
    500 stay local; 1,001 and 4,000 go remote."""
    rows = [Row(0.0, 1000, 8), Row(1.0, 1001, 8), Row(2.0, 500, 8), Row(3.0, 4000, 8)]
    trace = make_trace(rows)
    _, frame = run(cluster(conditional_prefill_tokens=1000), trace)

    local = _is_local(frame)
    assert local.tolist() == [True, False, True, False]
    remote = frame[~local]
    assert (remote["kv_bytes_sent"] == remote["input_tokens"] * KV_BYTES_PER_TOKEN).all()
    assert remote["prefill_instance"].between(0, 1).all()
    assert frame["decode_instance"].between(0, 1).all()
    # A local request's first token comes from its decode instance: TTFT is that prefill.
    assert frame.loc[local, "ttft_s"].notna().all()


def test_conditional_disaggregation_uses_the_prefill_pool_only_above_the_threshold() -> None:
    """With every prompt at or below the threshold, the prefill pool does no work at all."""
    trace = make_trace([Row(0.5 * j, 400 + 100 * j, 8) for j in range(6)])
    summary, frame = run(cluster(conditional_prefill_tokens=1000), trace)
    assert _is_local(frame).all()
    assert summary["prefill_busy_fraction"] == 0.0
    assert summary["kv_bytes_sent"] == 0.0


def test_conditional_disaggregation_counts_only_the_part_the_decode_instance_lacks() -> None:
    """The threshold applies to the *uncached* part: A2 (8,704 tokens) is far above 600, but
    its decode instance still holds A1's 8,192 (decode_retain_fraction 0.5), so only 512 are
    new and it is prefilled there; A1 (all new) went remote."""
    a1 = tuple(range(128))
    rows = [Row(0.0, 8192, 4, "A", a1), Row(2.0, 8704, 4, "A", a1 + tuple(range(128, 136)))]
    _, frame = run(cluster(conditional_prefill_tokens=600, decode_retain_fraction=0.5), make_trace(rows))
    assert _is_local(frame).tolist() == [False, True]
    assert frame["decode_instance"].tolist() == [0, 0]
    assert frame["cached_tokens"].iloc[1] == 8192


def test_conditional_disaggregation_off_is_plain_disaggregation() -> None:
    """No threshold (None) is plain disaggregation; a threshold below every prompt's uncached
    part (1 token) routes nothing locally and gives the same run, request for request. A
    threshold of 0 is rejected (it would mean "never", which None already says)."""
    trace = make_trace(_session_rows(rounds=3))
    _, plain = run(cluster(), trace)
    _, below = run(cluster(conditional_prefill_tokens=1), trace)
    pd.testing.assert_frame_equal(plain, below)
    assert (plain["kv_bytes_sent"] > 0).all()
    with pytest.raises(ValidationError):
        RouterConfig(conditional_prefill_tokens=0)


def test_conditional_local_prefill_names_no_prefill_pool_instance() -> None:
    """In requests.csv, ``prefill_instance`` indexes the prefill pool. A request prefilled
    on decode instance 1 was not prefilled by prefill instance 1, so it should carry no
    prefill-pool index (-1, as for a request never prefilled)."""
    rows = [Row(0.0, 500, 8), Row(0.0, 500, 8)]  # concurrent: kv_aware spreads them
    _, frame = run(cluster(conditional_prefill_tokens=1000, decode_policy="kv_aware"), make_trace(rows))
    assert _is_local(frame).all()
    assert (frame["prefill_instance"] == -1).all(), frame[["prefill_instance", "decode_instance"]]


def test_least_loaded_counts_prompts_queued_for_local_prefill() -> None:
    """least_loaded picks the smallest fraction of KV memory *reserved or asked for*. Under
    conditional disaggregation a short prompt routed to a decode instance has asked for its
    KV there as soon as it is queued for local prefill.

    Four 500-token prompts (200 out) arrive together; threshold 1,000, so all stay local. r0
    goes to instance 0 (tie) and is admitted; r1 sees instance 0 loaded and goes to 1; r2
    ties again and goes to 0, where it queues behind r0's prefill. When r3 comes, instance
    0 has r0 and r2 (admitted or queued), instance 1 only r1: least loaded must pick
    instance 1, two and two. (kv_aware, which counts reserved tokens at enqueue, does split them 2/2.)"""
    trace = make_trace([Row(0.0, 500, 200) for _ in range(4)])
    _, frame = run(cluster(conditional_prefill_tokens=1000), trace)
    assert _is_local(frame).all()
    assert sorted(np.bincount(frame["decode_instance"], minlength=2).tolist()) == [2, 2], frame["decode_instance"]
