"""Whole runs of mixture-of-experts models with attention DP and EP pools, and of a non-GPU
decode pool: the invariants every run keeps (conservation, KV within capacity and back to 0,
fast-forward equal to step by step), pool KV sized from the instance's shape, and the GPU
counts of DP instances."""

from __future__ import annotations

import numpy as np
import pytest
from test_invariants import assert_same_run, check_invariants, run

from simdisagg.config import PoolConfig, PrecisionConfig, RooflineCost, RunConfig
from simdisagg.hardware import ProfileStore, instance_kv_memory
from simdisagg.rng import Streams
from simdisagg.sim.engine import _plan_pool
from simdisagg.trace import Trace, TraceBuilder

STORE = ProfileStore()


def _trace(n: int = 60, rate_rps: float = 6.0, seed: int = 3) -> Trace:
    rng = np.random.default_rng(seed)
    builder = TraceBuilder("moe-synthetic")
    t = 0.0
    for line in range(1, n + 1):
        t += float(rng.exponential(1.0 / rate_rps))
        builder.add(line=line, timestamp_s=t, input_tokens=int(rng.integers(200, 6000)),
                    output_tokens=int(rng.integers(2, 300)))
    return builder.build()


DEEPSEEK_WIDE_EP = RunConfig(
    model="deepseek-v3",
    precision=PrecisionConfig(weights="fp8_block"),
    cost=RooflineCost(expert_imbalance=1.2),
    prefill=PoolConfig(count=1, gpu="h200", tp=8),
    decode=PoolConfig(count=2, gpu="h200", tp=1, dp=8, ep=8, max_batch_size=64),
)
GPT_OSS_ON_SN40L = RunConfig(
    model="gpt-oss-120b",
    precision=PrecisionConfig(weights="bf16", experts="mxfp4"),
    cost=RooflineCost(),
    prefill=PoolConfig(count=1, gpu="b200", tp=1),
    decode=PoolConfig(count=1, gpu="sn40l", tp=2),
)


@pytest.mark.parametrize("cfg", [DEEPSEEK_WIDE_EP, GPT_OSS_ON_SN40L], ids=["deepseek-dp8-ep8", "gpt-oss-sn40l"])
def test_moe_runs_keep_the_invariants(cfg: RunConfig) -> None:
    trace = _trace()
    result = run(cfg, trace)
    check_invariants(cfg, trace, result)
    assert_same_run(cfg, trace)
    aggregated = cfg.as_aggregated()
    check_invariants(aggregated, trace, run(aggregated, trace))


def test_dp_instances_count_their_gpus_and_size_kv_from_their_shape() -> None:
    cfg = DEEPSEEK_WIDE_EP
    result = run(cfg, _trace(20))
    decode = [inst for inst in result.recorder.instances if inst.pool == "decode"]
    assert [inst.gpus for inst in decode] == [8, 8]
    model = cfg.model_shape(STORE)
    plan = _plan_pool(cfg, cfg.decode, "decode", STORE, Streams(0), 1.0)
    weights_per_gpu, kv_per_token = instance_kv_memory(model, cfg.decode.parallelism)
    free = 8 * (STORE.gpu("h200").hbm_capacity_bytes.value * cfg.decode.gpu_memory_utilisation - weights_per_gpu)
    assert plan.kv_capacity_blocks == int(free // (kv_per_token * cfg.decode.kv_block_tokens))
    # Attention DP keeps one copy of the MLA latent per rank; TP 8 keeps eight.
    tp8 = _plan_pool(cfg, cfg.prefill, "prefill", STORE, Streams(0), 1.0)
    assert plan.kv_capacity_blocks > 4 * tp8.kv_capacity_blocks
    assert plan.cost.label == "roofline:h200/deepseek-v3-tp1-dp8-ep8"
