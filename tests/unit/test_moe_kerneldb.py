"""Mixture-of-experts and latent-attention steps composed from a synthetic kernel database whose
latencies follow known power laws (log-space interpolation is exact for them), so each
composed step time can be derived by hand from the documented op list; the named expert load
imbalance, the dispatch's link model, sliding-window attention, and the profile an import of a
MoE instance writes and the cost-model factory finds."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from simdisagg.costmodel.factory import make_cost_model
from simdisagg.costmodel.fitted import (
    FittedCostModel,
    ShardShape,
    fitted_candidates,
    profile_folder_name,
)
from simdisagg.errors import CalibrationError
from simdisagg.hardware import MLAShape, ModelShape, MoEShape, ProfileStore
from simdisagg.kerneldb.compose import (
    LINK_CALL_LATENCY_S,
    MoEStepComposer,
    _window_pairs,
)
from simdisagg.kerneldb.importer import ImportSpec, import_profile
from simdisagg.kerneldb.tables import KernelDatabase
from simdisagg.rng import Streams

#: Two layers: the first dense, the second MoE (8 experts, top 2, one shared expert).
TINY_MOE = ModelShape(
    name="tiny-moe",
    display_name="tiny MoE",
    provenance="datasheet",
    source="a test shape",
    num_layers=2,
    hidden_size=256,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    intermediate_size=512,
    vocab_size=1000,
    dtype_bytes=2,
    moe=MoEShape(experts=8, experts_per_token=2, expert_intermediate_size=128, shared_experts=1, dense_layers=1),
)
#: The same with latent attention (MLA) of 4 heads.
TINY_MLA = TINY_MOE.model_copy(
    update={
        "name": "tiny-mla",
        "num_kv_heads": 4,
        "head_dim": 96,
        "mla": MLAShape(kv_lora_rank=128, q_lora_rank=64, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64),
    }
)

# Synthetic kernel laws (milliseconds).
GEMM_MS_PER_MNK = 1e-9
CONTEXT_MS = 2e-6  # x batch x isl^2 x heads / kv_heads
GENERATION_MS = 3e-6  # x batch x context x heads / kv_heads
ALLREDUCE_MS = 4e-7  # x elements
MOE_MS = 5e-4  # x tokens / (moe_tp x moe_ep) x the load factor below
LOAD_FACTOR = {"balanced": 1.0, "power_law_1.01": 1.1, "power_law_1.2": 1.3}
CONTEXT_MLA_MS = 1e-6  # x batch x isl^2 x heads
GENERATION_MLA_MS = 2e-6  # x batch x context x heads
BMM_MS = {"mla_gen_pre": 1e-4, "mla_gen_post": 2e-4}  # x tokens x heads
#: (moe_tp, moe_ep) the synthetic MoE table measures.
MOE_PARALLELISM = ((1, 1), (2, 1), (1, 2), (1, 4))


def _powers(lo: int, hi: int) -> list[int]:
    return [2**i for i in range(int(math.log2(lo)), int(math.log2(hi)) + 1)]


def write_moe_database(root: Path, framework: str = "sglang") -> Path:
    """An AIConfigurator-layout database for ``h200`` with GEMM, attention, all-reduce, MoE and
    MLA tables whose latencies follow the laws above."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "SOURCE_COMMIT").write_text("1" * 40 + "\n")
    (root / "LICENSE").write_text("Apache License, Version 2.0\n")
    ms, ns = _powers(1, 16384), _powers(32, 8192)
    common = {"framework": "SGLang", "version": "0.1", "device": "Synthetic GPU", "kernel_source": "law"}
    tables: dict[tuple[str, str], list[dict]] = {
        ("gemm", "gemm_perf"): [
            {**common, "op_name": "gemm", "gemm_dtype": "bfloat16", "m": m, "n": n, "k": k,
             "latency": GEMM_MS_PER_MNK * m * n * k}
            for m in ms for n in ns for k in ns
        ],
        ("attention", "context_attention_perf"): [],
        ("attention", "generation_attention_perf"): [],
        ("comm", "custom_allreduce_perf"): [
            {**common, "kernel_source": src, "allreduce_dtype": "bfloat16", "num_gpus": g, "message_size": size,
             "latency": ALLREDUCE_MS * size}
            for src in ("x_graph", "x_eager") for g in (2, 4, 8) for size in _powers(128, 2**26)
        ],
        ("moe", "moe_perf"): [
            {**common, "op_name": "moe", "moe_dtype": "bfloat16", "num_tokens": t, "hidden_size": 256,
             "inter_size": 128, "topk": 2, "num_experts": 8, "moe_tp_size": mtp, "moe_ep_size": mep,
             "distribution": dist, "latency": MOE_MS * t / (mtp * mep) * factor}
            for t in ms for mtp, mep in MOE_PARALLELISM for dist, factor in LOAD_FACTOR.items()
        ],
        ("mla", "context_mla_perf"): [],
        ("mla", "generation_mla_perf"): [],
        ("mla_bmm", "mla_bmm_perf"): [
            {**common, "op_name": op, "bmm_dtype": "bfloat16", "num_tokens": t, "num_heads": heads,
             "latency": law * t * heads}
            for op, law in BMM_MS.items() for t in ms for heads in (1, 2, 4)
        ],
    }
    for heads, kv in ((2, 1), (4, 2), (1, 1)):
        for b in _powers(1, 256):
            for isl in _powers(1, 16384):
                tables[("attention", "context_attention_perf")].append(
                    {**common, "batch_size": b, "isl": isl, "num_heads": heads, "num_key_value_heads": kv,
                     "head_dim": 64, "attn_dtype": "bfloat16", "kv_cache_dtype": "bfloat16", "step": 0,
                     "window_size": 0, "latency": CONTEXT_MS * b * isl**2 * heads / kv}
                )
            for ctx in _powers(2, 131072):
                tables[("attention", "generation_attention_perf")].append(
                    {**common, "batch_size": b, "isl": 1, "num_heads": heads, "num_key_value_heads": kv,
                     "head_dim": 64, "attn_dtype": "bfloat16", "kv_cache_dtype": "bfloat16", "step": ctx - 1,
                     "window_size": 0, "latency": GENERATION_MS * b * ctx * heads / kv}
                )
    for heads in (1, 2, 4):
        for b in _powers(1, 256):
            for isl in _powers(1, 16384):
                tables[("mla", "context_mla_perf")].append(
                    {**common, "op_name": "mla_context", "mla_dtype": "bfloat16", "kv_cache_dtype": "bfloat16",
                     "num_heads": heads, "batch_size": b, "isl": isl, "tp_size": 4 // heads, "step": 0,
                     "latency": CONTEXT_MLA_MS * b * isl**2 * heads}
                )
            for ctx in _powers(2, 131072):
                tables[("mla", "generation_mla_perf")].append(
                    {**common, "op_name": "mla_generation", "mla_dtype": "bfloat16", "kv_cache_dtype": "bfloat16",
                     "num_heads": heads, "batch_size": b, "isl": 1, "tp_size": 4 // heads, "step": ctx - 1,
                     "latency": GENERATION_MLA_MS * b * ctx * heads}
                )
    for (family, table), rows in tables.items():
        folder = root / "h200_sxm" / family / framework / "0.1"
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(folder / f"{table}.parquet")
    return root


@pytest.fixture(scope="module")
def moe_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_moe_database(tmp_path_factory.mktemp("moe-kernels"))


def _gemm_s(m: float, n: float, k: float) -> float:
    return GEMM_MS_PER_MNK * 1e-3 * m * max(n, 32) * max(k, 32)


def _expected_decode(db: KernelDatabase, batch: int, mean_context: float, tp: int, dp: int, ep: int,
                     link_bandwidth: float = 0.0, distribution: str = "power_law_1.2") -> float:
    """One decode step of TINY_MOE by hand, from the MoE composer's documented op list."""
    m = TINY_MOE
    h, a = m.hidden_size, 2.0
    q, kv = m.num_heads // tp * m.head_dim, max(1, m.num_kv_heads // tp) * m.head_dim
    rank = math.ceil(batch / dp)
    bw, floor = db.streaming_bandwidth_bytes_per_s, db.smallest_kernel_s

    def small(nbytes: float) -> float:
        return max(nbytes / bw, floor)

    def allreduce(elements: float) -> float:
        return ALLREDUCE_MS * 1e-3 * elements if tp > 1 else 0.0

    # Attention projections, small ops and all-reduce of both layers.
    per_layer = _gemm_s(rank, q + 2 * kv, h) + _gemm_s(rank, h, q)
    per_layer += sum(small(rank * b) for b in (4 * h * a, 4 * h * a, 2 * (q + kv) * a, 2 * kv * (a + 2)))
    per_layer += allreduce(rank * h)
    heads_ratio = (m.num_heads // tp) / max(1, m.num_kv_heads // tp)
    per_layer += GENERATION_MS * 1e-3 * rank * mean_context * heads_ratio
    total = 2 * per_layer
    # The dense first layer's MLP.
    i = m.intermediate_size // tp
    total += _gemm_s(rank, 2 * i, h) + _gemm_s(rank, h, i) + small(rank * 3 * i * a) + allreduce(rank * h)
    # The MoE layer: router, routed experts at the instance's tokens, shared expert, communication.
    moe_tp = tp * dp // ep
    total += _gemm_s(rank, 8, h) + MOE_MS * 1e-3 * batch / (moe_tp * ep) * LOAD_FACTOR[distribution]
    total += small(rank * 8 * 4 * 2)
    s_i = 128 // tp
    total += _gemm_s(rank, 2 * s_i, h) + _gemm_s(rank, h, s_i) + small(rank * 3 * s_i * a)
    if dp == 1 and ep == 1:
        total += allreduce(rank * h)
    else:
        gpus = tp * dp
        elements = batch * min(2, ep) / ep * h * (gpus - 1) / gpus
        total += 2 * (elements * a / link_bandwidth + LINK_CALL_LATENCY_S) + allreduce(rank * h)
    # Embedding, final norm, LM head, logits gather and sampling of the rank's sequences.
    vocab = -(-m.vocab_size // tp)
    total += small(2 * rank * h * a) + small(2 * rank * h * a) + _gemm_s(rank, vocab, h)
    total += (ALLREDUCE_MS * 1e-3 * rank * vocab if tp > 1 else 0.0) + 2 * small(rank * vocab * tp * 4)
    return total


@pytest.mark.parametrize(("tp", "dp", "ep"), [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 2, 4)])
def test_moe_step_composed_from_a_synthetic_table_recovers_known_times(moe_db: Path, tp: int, dp: int, ep: int) -> None:
    db = KernelDatabase(moe_db, "h200", "sglang")
    link = 4.5e11
    composer = MoEStepComposer(db, TINY_MOE, tp, dp, ep, link_bandwidth_bytes_per_s=link)
    for batch, context in ((1, 100), (8, 1500), (64, 4000)):
        step = composer.decode(batch, batch * context)
        expected = _expected_decode(db, batch, context, tp, dp, ep, link)
        assert step.total_s == pytest.approx(expected, rel=1e-12), (batch, context)
    assert composer.dispatch_source.startswith("none" if (dp, ep) == (1, 1) else "modelled: link")


def test_the_named_expert_load_imbalance_scales_the_expert_kernel(moe_db: Path) -> None:
    db = KernelDatabase(moe_db, "h200", "sglang")
    times = {
        name: MoEStepComposer(db, TINY_MOE, 1, distribution=name).decode(32, 32 * 500).parts["experts"]
        for name in LOAD_FACTOR
    }
    for name, factor in LOAD_FACTOR.items():
        assert times[name] == pytest.approx(MOE_MS * 1e-3 * 32 * factor, rel=1e-12)
    with pytest.raises(CalibrationError, match="unknown expert load distribution 'zipf'"):
        db.moe_s(8, 256, 128, 2, 8, 1, 1, "bfloat16", "zipf")


def test_unmeasured_expert_shapes_are_refused_and_expert_tp_falls_back_to_ep(moe_db: Path) -> None:
    db = KernelDatabase(moe_db, "h200", "sglang")
    with pytest.raises(CalibrationError, match="no bfloat16 MoE of hidden 512"):
        db.moe_s(8, 512, 128, 2, 8, 1, 1, "bfloat16")
    # moe_tp 4 is not in the table: the same four GPUs holding whole experts (ep 4), counted.
    before = db.extrapolated["moe_tp_as_ep"]
    assert db.moe_s(16, 256, 128, 2, 8, 4, 1, "bfloat16") == pytest.approx(db.moe_s(16, 256, 128, 2, 8, 1, 4, "bfloat16"))
    assert db.extrapolated["moe_tp_as_ep"] == before + 1
    # Beyond the largest measured token count: linear in tokens.
    assert db.moe_s(32768, 256, 128, 2, 8, 1, 1, "bfloat16", "balanced") == pytest.approx(MOE_MS * 1e-3 * 32768, rel=1e-9)


def test_mla_decode_attention_and_batched_matmuls_come_from_their_tables(moe_db: Path) -> None:
    db = KernelDatabase(moe_db, "h200", "sglang")
    composer = MoEStepComposer(db, TINY_MLA, 2)
    step = composer.decode(16, 16 * 2048)
    heads = 2
    assert step.parts["attention"] == pytest.approx(2 * GENERATION_MLA_MS * 1e-3 * 16 * 2048 * heads, rel=1e-12)
    bmm = sum(BMM_MS.values()) * 1e-3 * 16 * heads
    assert step.parts["mla_bmm"] == pytest.approx(2 * bmm, rel=1e-12)
    # Prefill: the context kernel of the rank's prompts; a cached prefix adds its up-projection.
    alone = composer.prefill([512], [0])
    assert alone.parts["attention"] == pytest.approx(2 * CONTEXT_MLA_MS * 1e-3 * 512**2 * heads, rel=1e-12)
    assert "kv_b" in alone.parts and "mla_bmm" not in alone.parts


def test_sliding_window_pairs_match_a_brute_force_count() -> None:
    for new, cached, window in ((10, 0, 4), (5, 3, 4), (100, 50, 128), (3, 500, 128), (64, 0, 128)):
        brute = sum(min(position, window) for position in range(cached + 1, cached + new + 1))
        assert _window_pairs(new, cached, window) == pytest.approx(brute)


def test_moe_profile_names_parallelism_and_expert_precision() -> None:
    assert profile_folder_name("m", 8, "fp8", "fp8", "sglang") == "m-tp8-fp8-kvfp8-sglang"
    assert (profile_folder_name("m", 1, "fp8", "fp8", "trtllm", dp=8, ep=8, experts="fp8_block")
            == "m-tp1-dp8-ep8-fp8-fp8_blockexperts-kvfp8-trtllm")
    assert fitted_candidates("m", 2, "bf16", "bf16", "vllm", ep=2) == ["m-tp2-ep2-bf16-kvbf16-vllm"]
    shard = ShardShape.of(TINY_MOE, 2, 2, 4)
    assert (shard.dp, shard.ep) == (2, 4)
    # A decode step of one token reads its routed experts, not all of them.
    assert shard.read_weight_bytes(1) < shard.read_weight_bytes(1000) <= shard.weight_bytes


def test_import_of_a_moe_instance_is_found_by_the_factory(moe_db: Path, tmp_path: Path) -> None:
    from simdisagg.config import AutoCost
    from simdisagg.fit import fit_measured, write_fit

    spec = ImportSpec(TINY_MOE, "h200", 1, "bf16", "bf16", "sglang", dp=2, ep=2, link_bandwidth_bytes_per_s=4.5e11)
    out = tmp_path / "measured" / "h200" / spec.folder_name
    _, meta = import_profile(moe_db, spec, out, command_line="test")
    assert meta["parallelism"] == {"tp": 1, "dp": 2, "ep": 2}
    assert meta["method"]["dispatch_combine"].startswith("modelled: link")
    assert meta["method"]["expert_load_distribution"] == "power_law_1.2"
    result = fit_measured(out)
    write_fit(out, result, plot=False)
    for phase in ("prefill", "decode"):
        assert result.fit["phases"][phase]["held_out_error"]["median_ape"] < 0.03
    fitted = FittedCostModel.from_path(out)
    assert fitted.label == "measured:h200/tiny-moe-tp1-dp2-ep2-bf16-kvbf16-sglang"
    composer = MoEStepComposer(KernelDatabase(moe_db, "h200", "sglang"), TINY_MOE, 1, 2, 2,
                               link_bandwidth_bytes_per_s=4.5e11)
    assert fitted.decode_step_time_s(16, 16 * 1024) == pytest.approx(composer.decode(16, 16 * 1024).total_s, rel=1e-2)
    assert fitted.prefill_time_s([1024], [0]) == pytest.approx(composer.prefill([1024], [0]).total_s, rel=1e-2)

    store = ProfileStore()
    store.roots = [tmp_path, *store.roots]
    gpu = store.gpu("h200")
    cost = make_cost_model(AutoCost(), TINY_MOE.served_at(), gpu, 1, Streams(0), store, "decode", "sglang", dp=2, ep=2)
    assert cost.label.startswith("measured:h200/tiny-moe-tp1-dp2-ep2-bf16-kvbf16-sglang")
    # Another parallelism has no profile: the roofline.
    cost = make_cost_model(AutoCost(), TINY_MOE.served_at(), gpu, 2, Streams(0), store, "decode", "sglang")
    assert not cost.label.startswith("measured:")


ALLTOALL_MS = 6e-7  # x elements per GPU


def test_dispatch_uses_a_measured_all_to_all_table_where_the_database_has_one(tmp_path: Path) -> None:
    root = write_moe_database(tmp_path / "db")
    folder = root / "h200_sxm" / "comm" / "nccl" / "2.0"
    folder.mkdir(parents=True)
    pd.DataFrame(
        [{"framework": "TRTLLM", "version": "2.0", "device": "Synthetic GPU", "op_name": op, "kernel_source": "nccl",
          "nccl_dtype": "half", "num_gpus": g, "message_size": size,
          "latency": ALLTOALL_MS * size * (1 if op == "alltoall" else 2)}
         for op in ("alltoall", "all_gather") for g in (2, 4, 8) for size in _powers(256, 2**24)]
    ).to_parquet(folder / "nccl_perf.parquet")
    db = KernelDatabase(root, "h200", "sglang")
    assert db.has_alltoall
    assert db.alltoall_s(4, 4096) == pytest.approx(ALLTOALL_MS * 1e-3 * 4096, rel=1e-12)
    composer = MoEStepComposer(db, TINY_MOE, 1, 2, 2)  # no link bandwidth needed
    assert composer.dispatch_source == "measured: NCCL all-to-all table"
    step = composer.decode(8, 8 * 100)
    elements = 8 * min(2, 2) / 2 * 256 * (2 - 1) / 2
    assert step.parts["dispatch_combine"] == pytest.approx(2 * ALLTOALL_MS * 1e-3 * max(elements, 256), rel=1e-12)
    with pytest.raises(CalibrationError, match="no all-to-all over 16 GPUs"):
        db.alltoall_s(16, 4096)
