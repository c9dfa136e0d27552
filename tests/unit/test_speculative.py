"""Speculative decoding: acceptance draws, step times, and what a speculating decode pool does.

* settings: bad values are refused in one line naming the field;
* draws: every request emits exactly the tokens it owes, at most ``k + 1`` a step, the last
  step only what remains; the mean tokens per step match the closed form;
* no drafts: a pool that speculates with ``draft_tokens: 0`` (acceptance length 1, no draft
  cost) runs exactly as one that does not speculate, timestamp for timestamp;
* hand-computed scenarios: with a deterministic acceptance of ``a`` tokens, TPOT is the
  step time over ``1 + a``;
* fast-forward: a speculating batch gives the same timestamps with and without
  ``exact_steps``, and the same run twice gives the same result.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from strategies import Req, build_trace

from simdisagg.config import (
    ConstantCost,
    PoolConfig,
    RunConfig,
    SpeculativeConfig,
    resolve_config,
)
from simdisagg.costmodel.base import (
    decode_times_bulk_s,
    spread_evenly,
    verify_times_bulk_s,
)
from simdisagg.costmodel.reference import ConstantCostModel
from simdisagg.costmodel.roofline import RooflineCostModel
from simdisagg.errors import ConfigError
from simdisagg.hardware import Parallelism, ProfileStore
from simdisagg.metrics import request_latencies, summarize
from simdisagg.rng import Streams
from simdisagg.sim.engine import check_cluster, pool_cost_model, simulate
from simdisagg.sim.recorder import STATUS_COMPLETED, TIME_COLUMNS, RunResult
from simdisagg.sim.speculative import (
    Speculator,
    acceptance_survival,
    draft_memory,
    make_speculator,
    mean_length_of_rate,
    rate_of_mean_length,
    request_uniforms,
)
from simdisagg.trace import Trace

STORE = ProfileStore()

#: Summary keys that measure the simulator rather than the simulated system.
NOT_MODELLED = {"events", "wall_s"}


def spec(**kw: object) -> SpeculativeConfig:
    return SpeculativeConfig.model_validate(kw)


def small_trace(seed: int = 3, n: int = 40) -> Trace:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(0.05, n))
    inp = rng.integers(50, 3000, n)
    out = rng.integers(1, 300, n)
    return build_trace([Req(float(a), int(i), int(o)) for a, i, o in zip(t, inp, out, strict=True)])


def same_run(a: RunResult, b: RunResult, summary_rel: float = 0.0) -> None:
    """Same timestamps and statuses, bit for bit; the same summary (to ``summary_rel``: a
    step log filled in another order sums its mean in another order)."""
    for name in TIME_COLUMNS:
        assert np.array_equal(a.recorder.times[name], b.recorder.times[name], equal_nan=True), name
    assert np.array_equal(a.recorder.status, b.recorder.status)
    sa, sb = summarize(a, RunConfig().slo), summarize(b, RunConfig().slo)
    for key in sa.keys() - NOT_MODELLED:
        va, vb = sa[key], sb[key]
        if isinstance(va, float) and math.isnan(va):
            assert isinstance(vb, float) and math.isnan(vb), key
        elif summary_rel and isinstance(va, float):
            assert vb == pytest.approx(va, rel=summary_rel), key
        else:
            assert va == vb, key


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"acceptance_rate": 0.5, "acceptance_length": 1.5}, "give exactly one of"),
        ({"draft_tokens": 2}, "give exactly one of"),
        ({"draft_tokens": 2, "acceptance_length": 3.5}, "more than draft_tokens + 1 = 3"),
        ({"draft_tokens": 2, "acceptance_length": 0.5}, "greater than or equal to 1"),
        ({"acceptance_rate": 1.5}, "less than or equal to 1"),
        ({"acceptance_rate": -0.1}, "greater than or equal to 0"),
        ({"acceptance_rate": ".nan"}, "finite number"),
        ({"draft_tokens": 2, "position_acceptance": [0.9]}, "needs one per draft token (2)"),
        ({"draft_tokens": 1, "position_acceptance": [1.2]}, "less than or equal to 1"),
        ({"draft_tokens": -1, "acceptance_rate": 0.5}, "greater than or equal to 0"),
        ({"draft_tokens": 99, "acceptance_rate": 0.5}, "less than or equal to 16"),
        ({"draft_tokens": True, "acceptance_rate": 0.5}, "valid integer"),
        ({"method": "draft", "acceptance_rate": 0.5}, "draft_model is missing"),
        ({"method": "mtp", "draft_model": "llama-3.1-8b", "acceptance_rate": 0.5}, "applies to method 'draft' only"),
        ({"method": "eagle", "acceptance_rate": 0.5}, "'mtp' or 'draft'"),
        ({"acceptance_rate": 0.5, "draft_token": 2}, "did you mean 'draft_tokens'"),
    ],
)
def test_bad_settings_are_refused_in_one_line_naming_the_field(tmp_path: Path, setting: dict, message: str) -> None:
    path = tmp_path / "run.yaml"
    # JSON is YAML's flow style; YAML spells NaN .nan.
    flow = json.dumps(setting).replace('".nan"', ".nan")
    path.write_text(f"decode:\n  speculative: {flow}\n")
    with pytest.raises(ConfigError) as err:
        resolve_config(path, {})
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{path}:2: field 'decode.speculative"), text
    assert message in text, text


def test_a_prefill_pool_cannot_speculate() -> None:
    with pytest.raises(ConfigError, match=r"field 'prefill': speculative decoding applies to the decode pool"):
        resolve_config(None, {"prefill.speculative": {"acceptance_rate": 0.5}})


def test_mtp_needs_mtp_layers_and_draft_needs_a_known_model() -> None:
    no_mtp = RunConfig(decode=PoolConfig(speculative=spec(method="mtp", draft_tokens=2, acceptance_rate=0.6)))
    with pytest.raises(ConfigError, match=r"decode.speculative: method 'mtp' needs a model with MTP layers; Llama"):
        check_cluster(no_mtp, STORE)
    unknown = RunConfig(
        decode=PoolConfig(speculative=spec(method="draft", draft_model="tiny-nonesuch", acceptance_rate=0.6))
    )
    with pytest.raises(ConfigError, match=r"decode.speculative.draft_model: .*tiny-nonesuch"):
        check_cluster(unknown, STORE)
    split = RunConfig(
        model="llama-3.1-70b",
        decode=PoolConfig(
            tp=8, speculative=spec(method="draft", draft_model="qwen2.5-7b", draft_tokens=2, acceptance_rate=0.6)
        ),
    )
    with pytest.raises(ConfigError, match=r"decode.speculative.draft_model qwen2.5-7b at the pool's tp 8: .*28 attention"):
        make_speculator(split, split.decode, "decode", ConstantCostModel(0.1, 0.02), STORE, Streams(0))
    with pytest.raises(ConfigError, match="method 'mtp' needs a model with MTP layers"):
        simulate(no_mtp.as_aggregated(), small_trace(n=2), store=STORE)


# -- acceptance draws ------------------------------------------------------------------


def test_mean_length_and_rate_are_inverse() -> None:
    assert mean_length_of_rate(0.0, 3) == 1.0
    assert mean_length_of_rate(1.0, 3) == 4.0
    assert mean_length_of_rate(0.5, 2) == pytest.approx(1.75)
    for k in (1, 2, 4, 7):
        for length in (1.0, 1.3, 1.9, k + 0.5, k + 1.0):
            if length <= k + 1:
                assert mean_length_of_rate(rate_of_mean_length(length, k), k) == pytest.approx(length, abs=1e-12)
    # A named length gives the i.i.d. survival of its rate; positions give their products.
    assert acceptance_survival(spec(draft_tokens=2, position_acceptance=[0.8, 0.5])) == pytest.approx([0.8, 0.4])
    assert acceptance_survival(spec(draft_tokens=3, acceptance_length=4.0)) == pytest.approx([1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    "setting",
    [
        {"draft_tokens": 3, "acceptance_rate": 0.7},
        {"draft_tokens": 4, "acceptance_length": 2.4},
        {"draft_tokens": 2, "position_acceptance": [0.9, 0.3]},
        {"draft_tokens": 5, "acceptance_rate": 1.0},
        {"draft_tokens": 5, "acceptance_rate": 0.0},
    ],
)
def test_every_owed_token_is_emitted_once_and_the_last_step_emits_only_what_remains(setting: dict) -> None:
    cfg = spec(**setting)
    k = cfg.draft_tokens
    speculator = Speculator(cfg, ConstantCostModel(0.1, 0.02), key=7)
    for request, tokens in enumerate([0, 1, 2, 3, k, k + 1, k + 2, 17, 100, 1001]):
        emitted = speculator.emissions(request, tokens)
        assert emitted.sum() == tokens
        assert np.all(emitted >= 1) and np.all(emitted <= k + 1)
        # Every step but the last emitted a full draw; the last one what remained.
        assert len(emitted) == 0 or emitted[-1] == tokens - emitted[:-1].sum()


def test_tokens_per_step_match_the_acceptance_distribution() -> None:
    # Long answers, so that few steps are cut short at the end: the mean of the uncut steps
    # is 1 + sum_j P(a >= j); the tolerance is 4 standard errors of the sample mean.
    for setting in ({"draft_tokens": 3, "acceptance_rate": 0.7}, {"draft_tokens": 2, "position_acceptance": [0.9, 0.3]}):
        cfg = spec(**setting)
        speculator = Speculator(cfg, ConstantCostModel(0.1, 0.02), key=11)
        steps = np.concatenate([speculator.emissions(request, 5000)[:-1] for request in range(20)])
        expected = 1.0 + float(acceptance_survival(cfg).sum())
        se = steps.std() / math.sqrt(len(steps))
        assert abs(steps.mean() - expected) <= 4 * se, (steps.mean(), expected, se)
        assert speculator.mean_acceptance_length == pytest.approx(expected)


# -- step costs --------------------------------------------------------------------------


def test_a_verify_step_is_a_prefill_chunk_of_the_drafts_and_the_last_token() -> None:
    # A cost model without its own verify step: k + 1 new tokens per request on top of the
    # rest of its context, the context spread evenly (10,003 - 4 = 9,999 cached: 2,500 for
    # three requests, 2,499 for one).
    roofline = RooflineCostModel(STORE.model("llama-3.1-8b"), STORE.gpu("h100-sxm"))

    class PrefillOnly:
        label = "prefill only"

        def prefill_time_s(self, new_tokens: np.ndarray, cached_tokens: np.ndarray) -> float:
            return roofline.prefill_time_s(new_tokens, cached_tokens)

    got = verify_times_bulk_s(PrefillOnly(), 4, np.array([10_003]), 2)  # type: ignore[arg-type]
    assert got[0] == roofline.prefill_time_s(np.full(4, 3), np.array([2500, 2500, 2500, 2499]))


def test_verify_with_no_drafts_is_a_decode_step_and_drafts_cost_more() -> None:
    cfg = RunConfig()
    cost = pool_cost_model(cfg, cfg.decode, STORE)
    contexts = np.array([1000.0, 5000.0, 123456.0])
    plain = decode_times_bulk_s(cost, np.full(3, 8.0), contexts)
    assert np.array_equal(verify_times_bulk_s(cost, 8, contexts, 0), plain)
    verify = verify_times_bulk_s(cost, 8, contexts, 3)
    assert np.all(verify > plain)
    # Decode at this size is memory-bound: verifying 4 tokens per request costs far less than
    # 4 decode steps (the point of speculation).
    assert np.all(verify < 2 * plain)


# -- runs ----------------------------------------------------------------------------------


def with_speculation(cfg: RunConfig, setting: SpeculativeConfig | None) -> RunConfig:
    return cfg.model_copy(update={"decode": cfg.decode.model_copy(update={"speculative": setting})})


@pytest.mark.parametrize(
    "base",
    [
        RunConfig(prefill=PoolConfig(count=2), decode=PoolConfig(count=2, max_batch_size=16)),
        RunConfig(mode="aggregated", prefill=PoolConfig(count=1), decode=PoolConfig(count=2, max_batch_size=16)),
        RunConfig(
            mode="aggregated",
            aggregated={"chunked_prefill": True},
            prefill=PoolConfig(count=1),
            decode=PoolConfig(count=1, max_batched_tokens=2048),
        ),
        RunConfig(
            prefill=PoolConfig(count=1),
            decode=PoolConfig(count=1, max_batch_size=8),
            router={"conditional_prefill_tokens": 600},
        ),
        RunConfig(prefill=PoolConfig(count=1), decode=PoolConfig(count=1), exact_steps=True),
    ],
    ids=["disaggregated", "aggregated", "chunked", "conditional", "exact-steps"],
)
def test_speculation_with_no_draft_tokens_is_no_speculation_exactly(base: RunConfig) -> None:
    # Acceptance length 1 and no draft cost: the speculative code path (emission draws,
    # context bookkeeping, finish steps) must reproduce the plain run bit for bit.
    trace = small_trace()
    plain = simulate(base, trace, store=STORE)
    spec_cfg = with_speculation(base, spec(method="mtp", draft_tokens=0, acceptance_length=1.0))
    speculating = simulate(spec_cfg, trace, store=STORE)
    assert (plain.recorder.status == STATUS_COMPLETED).sum() > 30
    same_run(plain, speculating)


def one_request(out_tokens: int, setting: SpeculativeConfig | None, model: str = "llama-3.1-8b") -> RunResult:
    cfg = RunConfig(
        model=model,
        cost=ConstantCost(prefill_s=0.1, decode_step_s=0.02),
        decode=PoolConfig(count=1, kv_capacity_tokens=100_000, speculative=setting),
        prefill=PoolConfig(count=1, kv_capacity_tokens=100_000),
    )
    return simulate(cfg, build_trace([Req(0.0, 100, out_tokens)]), store=STORE)


@pytest.mark.parametrize(("out_tokens", "steps"), [(13, 4), (12, 4), (2, 1), (4, 1), (5, 2)])
def test_deterministic_acceptance_gives_tpot_of_step_over_tokens_per_step(out_tokens: int, steps: int) -> None:
    # A draft model proposes k = 3 tokens; positions 1 and 2 are always accepted, position 3
    # never: each full step emits 1 + a = 3 tokens. On the constant cost model a draft decode
    # step takes 0.02 s (three per step: 0.06 s) and so does the verify step (a step is a step
    # there): a step takes 0.08 s. After the first token the request
    # owes out - 1 tokens: 12 -> 4 steps of 3; 11 -> 3 + 3 + 3 + 2 (4 steps, the last emits
    # only what remains); 1 -> 1 step; 3 -> 1 step; 4 -> 3 + 1.
    setting = spec(method="draft", draft_model="llama-3.1-8b", draft_tokens=3, position_acceptance=[1.0, 1.0, 0.0])
    result = one_request(out_tokens, setting)
    t = result.recorder.times
    step_s = 3 * 0.02 + 0.02
    assert t["completed_at"][0] - t["decode_start_at"][0] == pytest.approx(steps * step_s, abs=1e-12)
    assert t["decode_first_token_at"][0] - t["decode_start_at"][0] == pytest.approx(step_s, abs=1e-12)
    tpot = request_latencies(result)["tpot_s"][0]
    assert tpot == pytest.approx(steps * step_s / (out_tokens - 1), abs=1e-12)
    if (out_tokens - 1) % 3 == 0:
        assert tpot == pytest.approx(step_s / (1 + 2), abs=1e-12)
    # One inter-token gap per step (the tokens of a step arrive together).
    summary = summarize(result, RunConfig().slo)
    assert summary["mean_itl_ms"] == pytest.approx(step_s * 1000, abs=1e-9)


def test_mtp_draft_costs_its_share_of_a_decode_step() -> None:
    # DeepSeek-V3 has 1 MTP layer over 61 layers: each of k = 2 MTP passes costs 1/61 of a
    # 0.02 s decode step; every draft accepted (rate 1): 3 tokens per step. 30 tokens owed
    # after the first -> 10 steps of 0.02 (verify) + 2 * 0.02 / 61 s.
    setting = spec(method="mtp", draft_tokens=2, acceptance_rate=1.0)
    result = one_request(31, setting, model="deepseek-v3")
    t = result.recorder.times
    step_s = 2 * (0.02 * (1 / 61)) + 0.02
    assert t["completed_at"][0] - t["decode_start_at"][0] == pytest.approx(10 * step_s, abs=1e-12)


def test_rejecting_every_draft_costs_time_and_saves_no_steps() -> None:
    # Acceptance rate 0: one token per step, as without speculation, but each step pays for
    # the drafts (two draft decode steps of 0.02 s) besides its verify step.
    plain = one_request(21, None)
    rejected = one_request(21, spec(method="draft", draft_model="llama-3.1-8b", draft_tokens=2, acceptance_rate=0.0))
    tp, tr = plain.recorder.times, rejected.recorder.times
    assert tp["completed_at"][0] - tp["decode_start_at"][0] == pytest.approx(20 * 0.02)
    assert tr["completed_at"][0] - tr["decode_start_at"][0] == pytest.approx(20 * (2 * 0.02 + 0.02))


@pytest.mark.parametrize("mode", ["disaggregated", "aggregated", "chunked"])
def test_speculating_runs_are_deterministic_and_fast_forward_matches_step_by_step(mode: str) -> None:
    base = RunConfig(
        mode="aggregated" if mode != "disaggregated" else "disaggregated",
        aggregated={"chunked_prefill": mode == "chunked"},
        prefill=PoolConfig(count=1),
        decode=PoolConfig(
            count=2,
            max_batch_size=12,
            speculative=spec(method="draft", draft_model="llama-3.1-8b", draft_tokens=3, acceptance_rate=0.7),
        ),
        model="llama-3.1-70b",
    )
    base = base.model_copy(
        update={"prefill": base.prefill.model_copy(update={"tp": 4}), "decode": base.decode.model_copy(update={"tp": 4})}
    )
    trace = small_trace(seed=5, n=50)
    fast = simulate(base, trace, store=STORE)
    again = simulate(base, trace, store=STORE)
    exact = simulate(base.model_copy(update={"exact_steps": True}), trace, store=STORE)
    assert (fast.recorder.status == STATUS_COMPLETED).all()
    same_run(fast, again)
    same_run(fast, exact, summary_rel=1e-12)
    # Every pool's KV is back to zero: nothing leaked.
    assert all(stats.kv.level == 0 for stats in fast.recorder.instances)


def test_speculation_shortens_tpot_when_drafts_are_cheap_and_mostly_accepted() -> None:
    cfg = RunConfig(
        model="llama-3.1-70b",
        prefill=PoolConfig(count=2, tp=4),
        decode=PoolConfig(count=1, tp=4, max_batch_size=8),
    )
    trace = small_trace(seed=9, n=30)
    plain = request_latencies(simulate(cfg, trace, store=STORE))["tpot_s"]
    fast = with_speculation(
        cfg, spec(method="draft", draft_model="llama-3.1-8b", draft_tokens=3, acceptance_length=3.0)
    )
    quick = request_latencies(simulate(fast, trace, store=STORE))["tpot_s"]
    assert np.nanmean(quick) < 0.75 * np.nanmean(plain)


def test_the_draft_takes_its_weights_and_kv_out_of_the_kv_memory() -> None:
    # Llama-3.1-70B on 4 H100s with Llama-3.1-8B as its draft: the draft's 16.06 GB of BF16
    # weights and its 131,072 bytes of KV per token (32 layers x 8 KV heads x 128 x 2 x 2)
    # beside the target's 327,680 shrink the KV blocks from
    # (4 x 80 GB x 0.9 - 141.1 GB) / (327,680 x 16) to (... - 16.06 GB) / (458,752 x 16).
    store = STORE
    target, draft = store.model("llama-3.1-70b"), store.model("llama-3.1-8b")
    hbm = store.gpu("h100-sxm").hbm_capacity_bytes.value
    free = 4 * hbm * 0.9 - target.weight_bytes
    plain_blocks = int(free // (target.kv_bytes_per_token * 16))
    with_draft_blocks = int((free - draft.weight_bytes) // ((target.kv_bytes_per_token + draft.kv_bytes_per_token) * 16))
    assert draft.kv_bytes_per_token == 131_072 and target.kv_bytes_per_token == 327_680
    cfg = RunConfig(model="llama-3.1-70b", prefill=PoolConfig(tp=4), decode=PoolConfig(tp=4), prefix_cache={"enabled": False})
    trace = small_trace(n=3)
    plain = simulate(cfg, trace, store=store).meta["kv_capacity_blocks"]
    drafting = with_speculation(
        cfg, spec(method="draft", draft_model="llama-3.1-8b", draft_tokens=3, acceptance_rate=0.7)
    )
    spec_blocks = simulate(drafting, trace, store=store).meta["kv_capacity_blocks"]
    assert plain == {"prefill": plain_blocks, "decode": plain_blocks}
    assert spec_blocks == {"prefill": plain_blocks, "decode": with_draft_blocks}
    assert with_draft_blocks < 0.72 * plain_blocks


def test_mtp_layers_take_an_average_layer_of_memory() -> None:
    # DeepSeek-V3's MTP module (one layer; the model card's 14 B parameters include the
    # embedding and LM head it shares with the model) at FP8: the 61 layers' 671 B less the
    # embedding and head, over 61, is about 11 GB; its KV is one MLA layer's latent and
    # rotary key, (512 + 64) x 1 byte per token.
    cfg = RunConfig(
        model="deepseek-v3",
        precision={"weights": "fp8_block", "kv_cache": "fp8"},
        decode=PoolConfig(speculative=spec(method="mtp", draft_tokens=1, acceptance_rate=0.8)),
    )
    weight_bytes, kv_bytes_per_token = draft_memory(cfg, cfg.decode, STORE)
    assert weight_bytes == pytest.approx(10.97e9, rel=1e-3)
    assert kv_bytes_per_token == 576
    assert draft_memory(cfg.model_copy(update={"decode": PoolConfig()}), PoolConfig(), STORE) == (0.0, 0.0)


def test_the_readme_settings_are_valid() -> None:
    import re

    import yaml

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Speculative decoding", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block, "the speculative decoding section has no yaml block"
    settings = yaml.safe_load(block.group(1))
    cfg = RunConfig.model_validate({"model": "llama-3.1-70b", **settings})
    assert cfg.decode.speculative == spec(
        method="draft", draft_model="llama-3.1-8b", draft_tokens=3, acceptance_length=2.5
    )
    alternative = re.search(r"# or, for DeepSeek-V3/R1: (\{.*\})", block.group(1))
    assert alternative
    mtp = RunConfig.model_validate(
        {"model": "deepseek-v3", "decode": {"speculative": yaml.safe_load(alternative.group(1))}}
    )
    speculator = make_speculator(mtp, mtp.decode, "decode", ConstantCostModel(0.1, 0.02), STORE, Streams(0))
    assert speculator is not None and speculator.mtp_fraction == 1 / 61


def test_a_request_draws_the_same_whichever_pool_or_order_serves_it() -> None:
    # The uniforms are a function of (key, request, position): a prefix of a longer draw is
    # the shorter draw, requests differ, and the key is the run's, the same in both modes.
    u = request_uniforms(123, 7, 1000)
    assert np.array_equal(u[:10], request_uniforms(123, 7, 10))
    assert not np.array_equal(u[:10], request_uniforms(123, 8, 10))
    assert not np.array_equal(u[:10], request_uniforms(124, 7, 10))
    assert 0.0 <= u.min() and u.max() < 1.0
    # Uniform: a Kolmogorov-Smirnov distance within the 1 % critical value for n = 20,000.
    sample = np.sort(np.concatenate([request_uniforms(5, r, 1000) for r in range(20)]))
    ks = np.max(np.abs(sample - np.arange(1, len(sample) + 1) / len(sample)))
    assert ks < 1.63 / math.sqrt(len(sample))
    setting = spec(method="draft", draft_model="llama-3.1-8b", draft_tokens=3, acceptance_rate=0.6)
    cfg = RunConfig(decode=PoolConfig(speculative=setting))
    cost = ConstantCostModel(0.1, 0.02)
    decode = make_speculator(cfg, cfg.decode, "decode", cost, STORE, Streams(cfg.seed))
    aggregated = make_speculator(cfg, cfg.aggregated_pool(), "aggregated", cost, STORE, Streams(cfg.seed))
    assert decode is not None and aggregated is not None
    assert np.array_equal(decode.emissions(3, 500), aggregated.emissions(3, 500))


TP1 = Parallelism(1)


def test_the_planner_screening_bounds_stay_bounds_under_speculation() -> None:
    # The screening's per-request TPOT alone and decode work per token are lower bounds (they
    # prune candidates and cap the rate search). A speculative step costs at least a decode
    # step and emits at most k + 1 tokens, so with k = 3 the bounds are the plain ones over 4.
    from simdisagg.plan.screening import Screener
    from simdisagg.plan.workload import trace_load

    base = RunConfig(cost={"kind": "roofline"}, slo={"ttft_s": 1.0, "tpot_s": 0.03})
    drafting = with_speculation(
        base, spec(method="draft", draft_model="llama-3.1-8b", draft_tokens=3, acceptance_rate=0.7)
    )
    load = trace_load(small_trace(n=20), False)
    plain, spec_screen = Screener(base, STORE, load), Screener(drafting, STORE, load)
    _, tpot_plain = plain._alone("h100-sxm", TP1, "decode")
    _, tpot_spec = spec_screen._alone("h100-sxm", TP1, "decode")
    assert np.array_equal(tpot_spec, tpot_plain / 4)
    assert spec_screen._decode_token_s("h100-sxm", TP1, "decode", 64) <= plain._decode_token_s("h100-sxm", TP1, "decode", 64) / 4
    # And they are bounds: each request's simulated TPOT, alone, is above its bound.
    trace = small_trace(n=20)
    for i in range(3):
        lone = build_trace([Req(0.0, int(trace.input_tokens[i]), int(trace.output_tokens[i]))])
        tpot = request_latencies(simulate(drafting, lone, store=STORE))["tpot_s"][0]
        assert math.isnan(tpot) or tpot >= tpot_spec[i]


def test_cost_scale_scales_the_draft_as_the_target() -> None:
    # Sensitivity runs multiply every step time: a speculating step (verify + draft) too.
    setting = spec(method="draft", draft_model="llama-3.1-8b", draft_tokens=3, position_acceptance=[1.0, 1.0, 0.0])
    cfg = RunConfig(
        cost=ConstantCost(prefill_s=0.1, decode_step_s=0.02),
        decode=PoolConfig(count=1, kv_capacity_tokens=100_000, speculative=setting),
        prefill=PoolConfig(count=1, kv_capacity_tokens=100_000),
    )
    trace = build_trace([Req(0.0, 100, 13)])
    times = [simulate(cfg, trace, store=STORE, cost_scale=x).recorder.times for x in (1.0, 1.5)]
    decode_s = [t["completed_at"][0] - t["decode_start_at"][0] for t in times]
    assert decode_s[0] == pytest.approx(4 * 0.08, abs=1e-12)
    assert decode_s[1] == pytest.approx(1.5 * decode_s[0], abs=1e-12)


@pytest.mark.parametrize("model", ["llama-3.1-8b", "qwen3-30b-a3b", "deepseek-v3"])
@pytest.mark.parametrize("tp", [1, 8])
def test_the_roofline_verify_step_is_its_prefill_chunk_bit_for_bit(model: str, tp: int) -> None:
    # The vectorised verify step must stay the prefill iteration it stands for: if the
    # roofline's prefill changes, this fails until the verify step follows.
    cost = RooflineCostModel(STORE.model(model).served_at("fp8", "fp8"), STORE.gpu("h200"), tp)
    for batch, k in [(1, 1), (7, 3), (64, 2), (256, 5)]:
        contexts = np.array([batch, batch + 1, 10 * batch + 3, 1000 * batch + 17, 100_000 * batch + 5])
        got = cost.verify_times_bulk_s(batch, contexts, k)
        for j, total in enumerate(contexts.tolist()):
            expected = cost.prefill_time_s(np.full(batch, k + 1), spread_evenly(total - batch, batch))
            assert got[j] == expected, (batch, k, total)


def test_instance_failures_under_speculation_are_refused() -> None:
    """A failed decode instance resumes its requests from the tokens each has received, which
    speculation does not keep per request: the combination is refused in one line; link faults
    and autoscaling are not."""
    spec = {"method": "draft", "draft_model": "llama-3.1-8b", "draft_tokens": 3, "acceptance_length": 2.0}
    base = {"model": "llama-3.1-70b", "prefill": {"count": 1, "tp": 4}, "decode": {"count": 1, "tp": 4, "speculative": spec}}
    failing = {"events": [{"kind": "instance", "pool": "decode", "index": 0, "at_s": 1.0}]}
    with pytest.raises(ValueError, match=r"instance failures with speculative decoding \(decode.speculative\)"):
        RunConfig.model_validate({**base, "faults": failing})
    link_only = {"events": [{"kind": "link", "at_s": 1.0, "duration_s": 1.0}]}
    RunConfig.model_validate({**base, "faults": link_only})
