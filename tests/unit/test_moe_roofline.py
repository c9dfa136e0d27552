"""The roofline's two-phase model of mixture-of-experts, MLA and sliding-window models with
attention data parallelism and expert parallelism: hand-computed step times, the named expert
imbalance, the busiest rank, the all-to-all, and the vectorised paths agreeing bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from simdisagg.costmodel.roofline import RooflineCostModel, RooflineParams
from simdisagg.hardware import ProfileStore


@pytest.fixture(scope="module")
def store() -> ProfileStore:
    return ProfileStore()


def test_a_dense_model_keeps_the_single_roofline(store: ProfileStore) -> None:
    cost = RooflineCostModel(store.model("llama-3.1-8b"), store.gpu("h100-sxm"), 2)
    assert cost.label == "roofline:h100-sxm/llama-3.1-8b-tp2"
    assert not cost._two_phase


def test_moe_decode_step_by_hand(store: ProfileStore) -> None:
    """gpt-oss-120b on one H200 (no communication), batch of 1 at 1,000 tokens of context:
    attention phase (non-expert weights, KV of the full layers, the sliding window) plus the
    expert phase (the 4 routed experts of each layer), each memory-bound, plus the overhead."""
    m = store.model("gpt-oss-120b").served_at("bf16", "bf16", "mxfp4")
    gpu = store.gpu("h200")
    p = RooflineParams()
    cost = RooflineCostModel(m, gpu, 1, p)
    bw = gpu.hbm_bandwidth_bytes_per_s.value * p.memory_bandwidth_utilisation
    non_expert = (m.num_layers * m.layer_params + m.lm_head_params - m.expert_params_total) * 2.0
    window_kv = 2 * 18 * 8 * 64 * 2 * 128  # every sliding layer's window of 128 tokens
    attention = (non_expert + m.kv_bytes_per_token * 1001 + window_kv) / bw
    experts = 4 * m.moe_layers * m.expert_params * m.expert_bytes_per_param / bw
    expected = attention + experts + p.iteration_overhead_s
    assert cost.decode_step_time_s(1, 1000) == pytest.approx(expected, rel=1e-9)
    assert cost.label == "roofline:h200/gpt-oss-120b-tp1"


def test_expert_imbalance_scales_the_expert_phase_only(store: ProfileStore) -> None:
    m = store.model("qwen3-235b-a22b").served_at("fp8")
    gpu = store.gpu("h200")
    even = RooflineCostModel(m, gpu, 4, RooflineParams(expert_imbalance=1.0))
    skewed = RooflineCostModel(m, gpu, 4, RooflineParams(expert_imbalance=1.5))
    for batch in (1, 64):
        expert = even._expert_s(float(batch), even._expert_inv_decode_flops)
        extra = skewed.decode_step_time_s(batch, batch * 2000) - even.decode_step_time_s(batch, batch * 2000)
        assert extra == pytest.approx(0.5 * expert, rel=1e-9)


def test_attention_data_parallel_step_waits_for_the_busiest_rank(store: ProfileStore) -> None:
    """With 8 ranks, batches of 1 to 8 put one request on the busiest rank: the attention phase
    is that of one request; the 9th puts a second on it (and so up to 16)."""
    m = store.model("deepseek-v3").served_at("fp8_block")
    cost = RooflineCostModel(m, store.gpu("h200"), 1, dp=8, ep=8)
    assert cost.label == "roofline:h200/deepseek-v3-tp1-dp8-ep8"
    ctx = 4000

    def attention(batch: int) -> float:
        f0, f1, b0, b1, _ = cost._decode_terms(batch)
        c = ctx * batch
        return max((f0 + f1 * c) * cost._inv_decode_flops, (b0 + b1 * c) * cost._inv_bw)

    assert attention(8) == pytest.approx(attention(1), rel=1e-12)
    assert attention(9) > attention(8)
    assert attention(16) == pytest.approx(attention(9), rel=1e-12)
    # The second request adds its KV reads and writes: 4,000 context tokens and one new one.
    assert attention(9) - attention(8) == pytest.approx(m.kv_bytes_per_token * 4001 * cost._inv_bw, rel=1e-6)
    # Prefill: two prompts on two ranks take as long as the longer alone in the attention phase.
    one = cost._attention_prefill_s([3000.0], [0.0], cost._inv_prefill_flops)
    assert cost._ranks([3000, 1000], [0, 0]) == [[0], [1]] + [[]] * 6
    both = cost.prefill_time_s([3000, 1000], [0, 0])
    alone = cost.prefill_time_s([3000], [0])
    expert_gap = cost._expert_s(4000.0, cost._expert_inv_prefill_flops) - cost._expert_s(3000.0, cost._expert_inv_prefill_flops)
    a2a_gap = cost._a2a_s_per_token * 1000
    assert both - alone == pytest.approx(expert_gap + a2a_gap, rel=1e-9)
    assert one < alone


def test_expert_parallel_all_to_all_is_modelled_and_slower_across_nodes(store: ProfileStore) -> None:
    m = store.model("deepseek-v3").served_at("fp8_block")
    gpu = store.gpu("h200")
    in_node = RooflineCostModel(m, gpu, 1, dp=8, ep=8)
    across = RooflineCostModel(m, gpu, 1, dp=16, ep=16)
    assert in_node._a2a_fixed_s == 2 * m.moe_layers * RooflineParams().allreduce_latency_s
    per_byte_in = 1.0 / gpu.intra_node_bandwidth_bytes_per_s.value
    bytes_per_token = 8 * m.hidden_size * 2 * (7 / 8) / 8
    assert in_node._a2a_s_per_token == pytest.approx(2 * m.moe_layers * bytes_per_token * per_byte_in)
    # Half of a 16-GPU instance's peers are in the other node, behind a 50 GB/s port.
    assert across._a2a_s_per_token / across._a2a_s_per_token > 0
    assert across._a2a_s_per_token > in_node._a2a_s_per_token * 2


def test_mla_decode_reads_the_latent_per_context_token(store: ProfileStore) -> None:
    m = store.model("deepseek-v3").served_at("fp8_block")
    gpu = store.gpu("h200")
    cost = RooflineCostModel(m, gpu, 8)
    # Each of the 8 GPUs reads the whole latent: a context token costs its KV bytes at one GPU's
    # bandwidth, not at eight GPUs'.
    bw_per_gpu = gpu.hbm_bandwidth_bytes_per_s.value * RooflineParams().memory_bandwidth_utilisation
    slope = (cost.decode_step_time_s(32, 200_000) - cost.decode_step_time_s(32, 100_000)) / 100_000
    assert slope == pytest.approx(m.kv_bytes_per_token / bw_per_gpu, rel=1e-6)
    assert m.kv_bytes_per_token == 61 * 576 * 2


def test_sliding_window_layers_bound_long_prompt_attention(store: ProfileStore) -> None:
    m = store.model("gpt-oss-120b").served_at("bf16", "bf16", "mxfp4")
    full = m.model_copy(update={"sliding_window_layers": 0, "sliding_window_tokens": None})
    gpu = store.gpu("h200")
    windowed = RooflineCostModel(m, gpu, 1).prefill_time_s([32_000], [0])
    all_full = RooflineCostModel(full, gpu, 1).prefill_time_s([32_000], [0])
    assert windowed < 0.8 * all_full
    # Pairs of a windowed layer: token p attends to min(p, 128) keys.
    cost = RooflineCostModel(m, gpu, 1)
    assert cost._window_pairs(300, 0) == sum(min(p, 128) for p in range(1, 301))
    assert cost._window_pairs(10, 100) == sum(min(p, 128) for p in range(101, 111))


@pytest.mark.parametrize(("model", "tp", "dp", "ep"), [
    ("deepseek-v3", 8, 1, 1), ("deepseek-v3", 2, 4, 8), ("qwen3-235b-a22b", 1, 4, 4), ("gpt-oss-120b", 2, 1, 2),
])
def test_vectorised_paths_agree_bit_for_bit(store: ProfileStore, model: str, tp: int, dp: int, ep: int) -> None:
    formats = {"deepseek-v3": ("fp8_block", None), "qwen3-235b-a22b": ("fp8", None), "gpt-oss-120b": ("bf16", "mxfp4")}
    weights, experts = formats[model]
    cost = RooflineCostModel(store.model(model).served_at(weights, "bf16", experts), store.gpu("h200"), tp, dp=dp, ep=ep)
    for batch, ctx in ((1, 500), (7, 9000), (96, 300_000)):
        run = cost.decode_run_times_s(batch, ctx, 6)
        assert run.tolist() == cost.decode_run_times_list(batch, ctx, 6)
        assert run.tolist() == [cost.decode_step_time_s(batch, ctx + j * batch) for j in range(6)]
        bulk = cost.decode_times_bulk_s(np.full(6, float(batch)), ctx + batch * np.arange(6.0))
        assert bulk.tolist() == run.tolist()
    iso = cost.isolated_decode_times_s(np.array([100, 5000]), np.array([1, 40]))
    assert iso[1] == pytest.approx(sum(cost.decode_step_time_s(1, 5000 + j) for j in range(40)), rel=1e-9)
    prefill = cost.isolated_prefill_times_s(np.array([100, 5000]), np.array([0, 64]))
    assert prefill[1] == cost.prefill_time_s([5000], [64])
    assert cost.mixed_step_time_s(np.array([2000]), np.array([0]), 0, 0) == pytest.approx(
        cost.prefill_time_s([2000], [0]), rel=1e-9)


def test_an_accelerator_without_public_peer_bandwidth_says_so(store: ProfileStore) -> None:
    m = store.model("deepseek-r1").served_at("fp8_block")
    cost = RooflineCostModel(m, store.gpu("sn40l"), 16)
    assert "no peer-link cost" in cost.label
    assert cost._ar_s_per_token == cost._ar_fixed_s == cost._a2a_s_per_token == 0.0


def test_each_attention_rank_has_its_own_prefill_token_budget() -> None:
    """With attention DP each rank schedules its own ``max_batched_tokens`` (SGLang, TensorRT-LLM):
    two prompts that each fill one rank's budget, queued behind a running one, start together
    on a DP-2 instance, and one after the other at DP 1."""
    from simdisagg.config import RunConfig
    from simdisagg.sim.engine import simulate
    from simdisagg.trace import TraceBuilder

    builder = TraceBuilder("two prompts")
    for k in range(3):
        builder.add(timestamp_s=0.001 * (k > 0), input_tokens=1000, output_tokens=2, request_id=f"r{k}", line=k + 1)
    trace = builder.build()

    def starts(dp: int) -> list[float]:
        pool = {"count": 1, "gpu": "h100-sxm", "tp": 1, "dp": dp, "ep": dp, "max_batched_tokens": 1000}
        cfg = RunConfig.model_validate({
            "model": "qwen3-30b-a3b", "cost": {"kind": "roofline"}, "prefix_cache": {"enabled": False},
            "prefill": pool, "decode": {**pool, "dp": 1, "ep": 1},
        })
        assert cfg.prefill.instance_batched_tokens == 1000 * dp
        return sorted(simulate(cfg, trace).recorder.times["prefill_start_at"].tolist())

    one_rank, two_ranks = starts(1), starts(2)
    assert two_ranks[0] < two_ranks[1] == two_ranks[2]
    assert one_rank[0] < one_rank[1] < one_rank[2]
