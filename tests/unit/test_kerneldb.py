"""Kernel-database import: grid interpolation, composition from a synthetic database whose
latencies follow known power laws (log-space interpolation is exact for them, so every
composed step time can be derived by hand), and the components fit of an import."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simdisagg.costmodel.fitted import FittedCostModel, ShardShape
from simdisagg.errors import CalibrationError
from simdisagg.hardware import ModelShape
from simdisagg.kerneldb.compose import StepComposer
from simdisagg.kerneldb.grid import LogGrid, OutsideGridError
from simdisagg.kerneldb.importer import ImportSpec, compose_rows, import_profile
from simdisagg.kerneldb.tables import KernelDatabase

TINY = ModelShape(
    name="tiny",
    display_name="tiny",
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
)

# Synthetic kernel laws (milliseconds): pure power laws, so log-space interpolation is exact.
GEMM_MS_PER_MNK = 1e-9
CONTEXT_MS = 2e-6  # x batch x isl^2 x heads / kv_heads
GENERATION_MS = 3e-6  # x batch x context x heads / kv_heads
ALLREDUCE_MS = 4e-7  # x elements


def _powers(lo: int, hi: int) -> list[int]:
    return [2**i for i in range(int(math.log2(lo)), int(math.log2(hi)) + 1)]


def write_synthetic_database(root: Path, framework: str = "vllm") -> Path:
    """An AIConfigurator-layout database for ``h200`` whose latencies follow the laws above."""
    (root / "SOURCE_COMMIT").parent.mkdir(parents=True, exist_ok=True)
    (root / "SOURCE_COMMIT").write_text("0" * 40 + "\n")
    (root / "LICENSE").write_text("Apache License, Version 2.0\n")
    base = root / "h200_sxm"
    ms, ns = _powers(1, 32768), _powers(32, 65536)
    gemm = pd.DataFrame(
        [
            {"framework": "VLLM", "version": "0.1", "device": "Synthetic GPU", "op_name": "gemm",
             "kernel_source": "law", "gemm_dtype": dt, "m": m, "n": n, "k": k,
             "latency": GEMM_MS_PER_MNK * m * n * k}
            for dt in ("bfloat16", "fp8")
            for m in ms
            for n in ns
            for k in ns
        ]
    )
    attention_rows = []
    generation_rows = []
    for heads, kv in ((2, 1), (4, 2), (8, 2), (1, 1)):
        for b in _powers(1, 256):
            for isl in _powers(1, 16384):
                attention_rows.append(
                    {"kernel_source": "law", "batch_size": b, "isl": isl, "num_heads": heads,
                     "num_key_value_heads": kv, "head_dim": 64, "attn_dtype": "bfloat16",
                     "kv_cache_dtype": "bfloat16", "step": 0, "window_size": 0,
                     "latency": CONTEXT_MS * b * isl**2 * heads / kv}
                )
            for ctx in _powers(2, 131072):
                generation_rows.append(
                    {"kernel_source": "law", "batch_size": b, "isl": 1, "num_heads": heads,
                     "num_key_value_heads": kv, "head_dim": 64, "attn_dtype": "bfloat16",
                     "kv_cache_dtype": "bfloat16", "step": ctx - 1, "window_size": 0,
                     "latency": GENERATION_MS * b * ctx * heads / kv}
                )
    ar = pd.DataFrame(
        [
            {"kernel_source": src, "allreduce_dtype": "bfloat16", "num_gpus": g, "message_size": size,
             "latency": ALLREDUCE_MS * size}
            for src in ("custom_graph", "custom_eager")
            for g in (2, 4, 8)
            for size in _powers(128, 2**29)
        ]
    )
    for family, table, frame in (
        ("gemm", "gemm_perf", gemm),
        ("attention", "context_attention_perf", pd.DataFrame(attention_rows)),
        ("attention", "generation_attention_perf", pd.DataFrame(generation_rows)),
        ("comm", "custom_allreduce_perf", ar),
    ):
        folder = base / family / framework / "0.1"
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(folder / f"{table}.parquet")
    return root


@pytest.fixture(scope="module")
def synthetic_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_database(tmp_path_factory.mktemp("kernels"))


# -- grid -------------------------------------------------------------------------------------
def test_grid_reproduces_points_and_power_laws_exactly() -> None:
    xs, ys = [1.0, 4.0, 16.0], [10.0, 100.0]
    values = np.array([[x * x * y for y in ys] for x in xs])
    grid = LogGrid(("x", "y"), (xs, ys), values, "law")
    for x in (1.0, 2.0, 3.7, 16.0):
        for y in (10.0, 31.6, 100.0):
            assert grid((x, y)) == pytest.approx(x * x * y, rel=1e-12)


@given(st.lists(st.floats(1.0, 64.0), min_size=2, max_size=20))
def test_grid_is_monotone_where_the_table_is(points: list[float]) -> None:
    """A table non-decreasing along an axis gives an interpolant non-decreasing along it,
    and never outside its neighbours' values (no overshoot)."""
    axis = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    values = np.array([1.0, 1.5, 1.5, 4.0, 9.0, 9.5, 30.0])
    grid = LogGrid(("x",), (axis,), values, "steps")
    xs = sorted(points)
    out = [grid((x,)) for x in xs]
    assert all(b >= a - 1e-12 for a, b in zip(out, out[1:], strict=False))
    assert min(out) >= 1.0 - 1e-12 and max(out) <= 30.0 + 1e-12


def test_grid_refuses_points_outside_its_range_naming_the_axis() -> None:
    grid = LogGrid(("m", "n"), ([1.0, 8.0], [32.0, 64.0]), np.ones((2, 2)), "gemm bf16")
    with pytest.raises(OutsideGridError, match=r"gemm bf16: m=9 is outside the measured range 1\.\.8"):
        grid((9.0, 40.0))
    holes = LogGrid(("b", "s"), ([1.0, 2.0], [1.0, 2.0]), np.array([[1.0, 2.0], [2.0, np.nan]]), "attn")
    with pytest.raises(OutsideGridError, match="did not measure"):
        holes((1.5, 1.5))
    assert holes((1.0, 2.0)) == 2.0  # on a measured edge next to the hole


# -- tables and composition -----------------------------------------------------------------------
def test_database_lookups_follow_the_laws(synthetic_db: Path) -> None:
    db = KernelDatabase(synthetic_db, "h200", "vllm")
    assert db.gemm_s(100, 300, 700, "bfloat16") == pytest.approx(GEMM_MS_PER_MNK * 100 * 300 * 700 * 1e-3, rel=1e-12)
    # Beyond the largest n: the sum of column blocks that lie in the table (exact for this law).
    assert db.gemm_s(4, 131072, 64, "fp8") == pytest.approx(GEMM_MS_PER_MNK * 4 * 131072 * 64 * 1e-3, rel=1e-12)
    assert db.extrapolated["gemm_split"] >= 1
    assert db.context_attention_s(3, 700, 4, 2, 64, "bfloat16") == pytest.approx(
        CONTEXT_MS * 3 * 700**2 * 2 * 1e-3, rel=1e-12
    )
    assert db.generation_attention_s(5, 3000, 4, 2, 64, "bfloat16") == pytest.approx(
        GENERATION_MS * 5 * 3000 * 2 * 1e-3, rel=1e-12
    )
    assert db.allreduce_s(4, 5000, graph=True) == pytest.approx(ALLREDUCE_MS * 5000 * 1e-3, rel=1e-12)
    assert db.allreduce_s(1, 5000, graph=True) == 0.0
    # A head count the table lacks (6 heads, 2 KV heads): linear between 4 and 8.
    assert db.context_attention_s(1, 256, 6, 2, 64, "bfloat16") == pytest.approx(
        CONTEXT_MS * 256**2 * 3 * 1e-3, rel=1e-12
    )
    assert db.streaming_bandwidth_bytes_per_s == pytest.approx(2.0 / (GEMM_MS_PER_MNK * 1e-3))
    assert db.smallest_kernel_s == pytest.approx(GEMM_MS_PER_MNK * 32 * 32 * 1e-3)


def test_unknown_tables_are_refused(synthetic_db: Path, tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="no folder for GPU 'b200'"):
        KernelDatabase(synthetic_db, "b200", "vllm")
    with pytest.raises(CalibrationError, match="no sglang GEMM tables"):
        KernelDatabase(synthetic_db, "h200", "sglang")
    with pytest.raises(CalibrationError, match="not a kernel database"):
        KernelDatabase(tmp_path, "h200", "vllm")
    db = KernelDatabase(synthetic_db, "h200", "vllm")
    with pytest.raises(CalibrationError, match="no 'nvfp4' GEMMs"):
        db.gemm_s(1, 64, 64, "nvfp4")


def _expected_step(db: KernelDatabase, tokens: int, rows: int, attention_s: float, tp: int, graph: bool) -> float:
    """A composed iteration of TINY by hand: the laws above, the composition's op list."""
    s = ShardShape.of(TINY, tp)
    h, q, kv, i = s.hidden_size, s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.intermediate_size
    gemm = GEMM_MS_PER_MNK * 1e-3 * tokens * ((q + 2 * kv) * h + h * q + 2 * i * h + h * i)
    bw, floor = db.streaming_bandwidth_bytes_per_s, db.smallest_kernel_s
    small = sum(max(tokens * b / bw, floor) for b in (4 * h * 2, 4 * h * 2, 2 * (q + kv) * 2, 2 * kv * 4, 3 * i * 2))
    allreduce = 2 * ALLREDUCE_MS * 1e-3 * tokens * h if tp > 1 else 0.0
    layers = s.num_layers * (gemm + small + allreduce + attention_s)
    embed = max(2 * tokens * h * 2 / bw, floor)
    head = max(2 * rows * h * 2 / bw, floor) + GEMM_MS_PER_MNK * 1e-3 * rows * s.vocab_size * h
    head += ALLREDUCE_MS * 1e-3 * rows * s.vocab_size if tp > 1 else 0.0
    head += 2 * max(rows * s.vocab_size * tp * 4 / bw, floor)
    del graph  # the synthetic all-reduce law is the same in graphs and eager
    return layers + embed + head


@pytest.mark.parametrize("tp", [1, 2])
def test_composition_recovers_known_step_times_exactly(synthetic_db: Path, tp: int) -> None:
    db = KernelDatabase(synthetic_db, "h200", "vllm")
    shard = ShardShape.of(TINY, tp)
    composer = StepComposer(db, shard)
    heads_ratio = shard.num_heads / shard.num_kv_heads
    # Two equal prompts, no prefix: each takes half of the batch-of-two attention kernel.
    attention = CONTEXT_MS * 1e-3 * 2 * 300**2 * heads_ratio
    step = composer.prefill([300, 300], [0, 0])
    assert step.total_s == pytest.approx(_expected_step(db, 600, 2, attention, tp, graph=False), rel=1e-12)
    # Decode: attention of the batch at its mean context.
    attention = GENERATION_MS * 1e-3 * 8 * 1500 * heads_ratio
    step = composer.decode(8, 8 * 1500)
    assert step.total_s == pytest.approx(_expected_step(db, 8, 8, attention, tp, graph=True), rel=1e-12)


def test_prefix_attention_uses_equal_pairs_and_never_less_than_a_read(synthetic_db: Path) -> None:
    """n new tokens on c cached: the compute of a prompt with the same causal pairs, but at
    least one pass over the prefix's KV (a decode-attention read of c + n)."""
    db = KernelDatabase(synthetic_db, "h200", "vllm")
    composer = StepComposer(db, ShardShape.of(TINY, 1))
    n, c = 64, 4096
    pairs = n * c + n * (n + 1) / 2
    isl_eq = (math.sqrt(1 + 8 * pairs) - 1) / 2
    compute = CONTEXT_MS * 1e-3 * isl_eq**2 * 2
    read = GENERATION_MS * 1e-3 * (c + n) * 2
    with_prefix = composer.prefill([n], [c]).attention_s
    assert with_prefix == pytest.approx(TINY.num_layers * max(compute, read), rel=1e-12)


# -- import and fit -------------------------------------------------------------------------------
def test_import_writes_raw_samples_the_fit_takes(synthetic_db: Path, tmp_path: Path) -> None:
    from simdisagg.fit import fit_measured, load_raw, write_fit

    spec = ImportSpec(TINY, "h200", 1, "bf16", "bf16", "vllm")
    out, meta = import_profile(synthetic_db, spec, tmp_path / spec.folder_name, command_line="test")
    assert (out / "raw.csv.gz").is_file() and not (out / "raw.csv").exists()
    rows, read_meta = load_raw(out)
    assert read_meta["source"]["kind"] == "kernel database"
    assert read_meta["source"]["source_commit"] == "0" * 40
    assert read_meta["provenance"] == "measured" and read_meta["device"] == "cuda"
    assert {r["phase"] for r in rows} == {"prefill", "decode"}
    with pytest.raises(CalibrationError, match="never overwritten"):
        import_profile(synthetic_db, spec, out)
    result = fit_measured(out)
    write_fit(out, result, plot=False)
    for phase in ("prefill", "decode"):
        spec_phase = result.fit["phases"][phase]
        assert set(spec_phase["held_out"]) == {"physical", "components"}
        assert spec_phase["n_held_out"] > 0
        # The laws are smooth, so the chosen predictor meets the held-out targets easily.
        assert spec_phase["held_out_error"]["median_ape"] < 0.03
        assert spec_phase["held_out_error"]["p95_ape"] < 0.10
    model = FittedCostModel.from_path(out)
    assert model.label == "measured:h200/tiny-tp1-bf16-kvbf16-vllm"
    # On the fitting grid the fitted model is the composition (decode through its table).
    composer = StepComposer(KernelDatabase(synthetic_db, "h200", "vllm"), ShardShape.of(TINY, 1))
    assert model.prefill_time_s([256] * 4, [1024] * 4) == pytest.approx(
        composer.prefill([256] * 4, [1024] * 4).total_s, rel=1e-2
    )
    assert model.decode_step_time_s(16, 16 * 1024) == pytest.approx(composer.decode(16, 16 * 1024).total_s, rel=1e-2)


def test_fitted_decode_paths_agree_bit_for_bit(synthetic_db: Path, tmp_path: Path) -> None:
    from simdisagg.costmodel.base import decode_times_bulk_s, short_run_times
    from simdisagg.fit import fit_measured, write_fit

    spec = ImportSpec(TINY, "h200", 2, "bf16", "bf16", "vllm")
    out, _ = import_profile(synthetic_db, spec, tmp_path / spec.folder_name)
    write_fit(out, fit_measured(out), plot=False)
    model = FittedCostModel.from_path(out)
    for batch, context, steps in ((1, 7, 300), (37, 37 * 900, 50), (700, 700 * 150_000, 20)):
        run = model.decode_run_times_s(batch, context, steps)
        assert run.tolist() == short_run_times(model)(batch, context, steps)
        bulk = decode_times_bulk_s(
            model, np.full(steps, batch), context + batch * np.arange(steps, dtype=np.float64)
        )
        assert run.tolist() == bulk.tolist()
        assert [model.decode_step_time_s(batch, context + batch * j) for j in range(steps)] == run.tolist()
        assert np.all(np.diff(run) >= 0)  # more context never makes a step faster


def test_compose_rows_count_their_extrapolations(synthetic_db: Path) -> None:
    db = KernelDatabase(synthetic_db, "h200", "vllm")
    rows = compose_rows(db, ImportSpec(TINY, "h200", 1))
    # Prompts past 16k tokens are scaled by pairs; decode batches past the table's 256 by batch.
    assert any("context_attention_flops" in r["extrapolations"] for r in rows)
    assert any("attention_batch_scaled" in r["extrapolations"] for r in rows)
    assert all(r["median_s"] > 0 for r in rows)


SHARED_DB = Path(__file__).resolve().parents[3] / "shared" / "kernels" / "aiconfigurator"


@pytest.mark.skipif(not (SHARED_DB / "SOURCE_COMMIT").is_file(), reason="../shared/kernels is not beside the checkout")
def test_import_of_the_shared_tables_meets_the_fit_targets(tmp_path: Path) -> None:
    """A real import: Llama-3.1-8B at TP 2 on H200 under vLLM, FP8 weights and KV cache."""
    from simdisagg.fit import fit_measured
    from simdisagg.hardware import ProfileStore

    spec = ImportSpec(ProfileStore().model("llama-3.1-8b"), "h200", 2, "fp8", "fp8", "vllm")
    out, meta = import_profile(SHARED_DB, spec, tmp_path / spec.folder_name)
    assert meta["source"]["device_name"] == "NVIDIA H200" and meta["source"]["version"] == "0.24.0"
    assert meta["source"]["source_commit"] == (SHARED_DB / "SOURCE_COMMIT").read_text().strip()
    result = fit_measured(out)
    for phase in ("prefill", "decode"):
        error = result.fit["phases"][phase]["held_out_error"]
        assert error["median_ape"] <= 0.03 and error["p95_ape"] <= 0.10, (phase, error)
    model = FittedCostModel(result.fit)
    # Decode is memory-bound at small batch: 8 GB of FP8 weights over two GPUs take at least
    # 0.8 ms at the H200's 4.8 TB/s; the measured kernels take more, but within a few times.
    step = model.decode_step_time_s(1, 1024)
    assert 0.8e-3 < step < 5e-3
