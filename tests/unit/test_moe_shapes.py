"""Mixture-of-experts, MLA and sliding-window model shapes against their published figures, and
the parallelisms they refuse.

Published figures (each test names its source):

* DeepSeek-V3: 671B total parameters, 37B activated per token (model card,
  huggingface.co/deepseek-ai/DeepSeek-V3, and the technical report, arXiv 2412.19437; the MTP
  module's 14B not included). KV cache 70.272 KB per token in BF16 (Zhao et al., "Insights into
  DeepSeek-V3: Scaling Challenges and Reflections on Hardware for AI Architectures", arXiv
  2505.09343, Table 1, beside LLaMA-3.1 405B at 516.096 KB and Qwen-2.5 72B at 327.680 KB).
* Qwen3-235B-A22B: 235B total, 22B activated (model card huggingface.co/Qwen/Qwen3-235B-A22B;
  Qwen3 technical report, arXiv 2505.09388, Table 2: 94 layers, 64 query and 4 KV heads, 128
  experts, 8 activated). Its KV per token follows from those: 2 x 94 x 4 x 128 x 2 bytes.
* gpt-oss-120b: 116.83B total, 5.13B active (gpt-oss model card, arXiv 2508.10925, Table 1:
  MLP 114.71B, attention 0.96B, embedding and unembedding 1.16B); MoE weights in MXFP4 so that the
  model fits one 80 GB GPU (same card); 36 layers alternating a 128-token banded window and full
  attention, 8 KV heads of 64.
"""

from __future__ import annotations

import pytest

from simdisagg.errors import ConfigError
from simdisagg.hardware import (
    Parallelism,
    ProfileStore,
    check_parallelism,
    instance_kv_memory,
)


@pytest.fixture(scope="module")
def store() -> ProfileStore:
    return ProfileStore()


def test_deepseek_v3_parameters_and_kv_match_the_published_figures(store: ProfileStore) -> None:
    m = store.model("deepseek-v3")
    assert m.total_params == pytest.approx(671e9, rel=0.005)
    # "37B activated": the card counts what a token passes through; the figure is rounded.
    assert m.active_params == pytest.approx(37e9, rel=0.03)
    # MLA: (kv_lora_rank 512 + qk_rope_head_dim 64) x 61 layers x 2 bytes = 70,272 bytes.
    assert m.served_at("fp8_block", "bf16").kv_bytes_per_token == 70_272
    assert m.served_at("fp8_block", "fp8").kv_bytes_per_token == 35_136
    # Served in FP8 with 128 x 128 block scales: about one byte a parameter.
    assert m.served_at("fp8_block").weight_bytes == pytest.approx(671e9, rel=0.01)


def test_qwen3_235b_parameters_and_kv_match_the_published_figures(store: ProfileStore) -> None:
    m = store.model("qwen3-235b-a22b")
    assert m.total_params == pytest.approx(235e9, rel=0.005)
    assert m.active_params == pytest.approx(22e9, rel=0.03)
    assert m.kv_bytes_per_token == 2 * 94 * 4 * 128 * 2
    assert m.served_at("fp8", "fp8").kv_bytes_per_token == 94 * 4 * 128 * 2


def test_gpt_oss_120b_parameters_and_kv_match_the_model_card(store: ProfileStore) -> None:
    m = store.model("gpt-oss-120b")
    # The shape leaves out projection biases and attention sinks (about 0.04B).
    assert m.total_params == pytest.approx(116.83e9, rel=0.001)
    assert m.active_params == pytest.approx(5.13e9, rel=0.005)
    assert m.expert_params_total == pytest.approx(114.71e9 - 36 * 2880 * 128, rel=0.001)
    # Only the 18 full-attention layers' KV grows with the context: 2 x 18 x 8 x 64 x 2 bytes.
    assert m.kv_bytes_per_token == 2 * 18 * 8 * 64 * 2
    # MXFP4 experts and BF16 elsewhere fit one 80 GB GPU, as the card says.
    served = m.served_at("bf16", "bf16", "mxfp4")
    assert 60e9 < served.weight_bytes < 80e9


def test_active_experts_read_grows_with_tokens_up_to_all_experts(store: ProfileStore) -> None:
    m = store.model("qwen3-235b-a22b").served_at("fp8")
    one, many = m.read_weight_bytes(1), m.read_weight_bytes(4096)
    assert one < m.weight_bytes / 5  # a token touches 8 of 128 experts
    assert many == pytest.approx(m.iteration_weight_bytes, rel=1e-3)  # a large batch touches all


@pytest.mark.parametrize(
    ("model", "tp", "dp", "ep", "why"),
    [
        ("deepseek-v3", 1, 8, 3, "ep 3 does not divide the instance's 8 GPUs"),
        ("qwen3-235b-a22b", 4, 3, 12, "ep 12 does not divide the 128 experts"),
        ("qwen3-235b-a22b", 3, 1, 1, "64 attention heads are not divisible by 3"),
        ("gpt-oss-120b", 1, 6, 6, "ep 6 does not divide the 128 experts"),
        ("llama-3.1-8b", 1, 2, 1, "apply to MoE models"),
    ],
)
def test_parallelisms_that_do_not_divide_are_refused_in_one_line(
    store: ProfileStore, model: str, tp: int, dp: int, ep: int, why: str
) -> None:
    with pytest.raises(ConfigError) as info:
        check_parallelism(store.model(model), tp, "decode.tp", dp=dp, ep=ep)
    message = str(info.value)
    assert why in message and "\n" not in message and message.startswith("decode.tp")


def test_expert_parallel_instance_spreads_experts_and_keeps_a_rank_s_kv(store: ProfileStore) -> None:
    m = store.model("deepseek-v3").served_at("fp8_block")
    dense_bytes, kv = instance_kv_memory(m, Parallelism(8))
    wide_bytes, kv_wide = instance_kv_memory(m, Parallelism(1, 8, 8))
    assert dense_bytes == pytest.approx(m.weight_bytes / 8)
    # Attention DP: every rank holds all non-expert weights, the experts are split 8 ways.
    expert_bytes = m.expert_params_total * m.expert_bytes_per_param
    assert wide_bytes == pytest.approx(m.weight_bytes - expert_bytes + expert_bytes / 8)
    # MLA's latent is whole on every GPU of a rank: 8 copies at tp 8, one at tp 1.
    assert kv == 8 * kv_wide == 8 * m.kv_bytes_per_token
