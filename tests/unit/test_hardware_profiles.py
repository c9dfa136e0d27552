"""Shipped hardware profiles load and hold sane values; bad input gives a clear ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from simdisagg.errors import ConfigError
from simdisagg.hardware import GPUProfile, LinkProfile, ProfileStore, Sourced

EXPECTED_GPUS = {"h100-sxm", "h200", "a100-80gb", "b200", "l40s", "h20", "sn40l"}
EXPECTED_LINKS = {"nvlink4", "ib-ndr-400", "roce-200", "eth-100g", "pcie-gen5"}
EXPECTED_MODELS = {"llama-3.1-8b", "llama-3.1-70b", "qwen2.5-32b", "qwen2.5-7b"}
SHIPPED_H100 = Path(__file__).resolve().parents[2] / "hardware_profiles" / "gpus" / "h100-sxm.yaml"


@pytest.fixture(scope="module")
def store() -> ProfileStore:
    return ProfileStore()


def _sourced_fields(profile: GPUProfile | LinkProfile) -> dict[str, Sourced]:
    return {k: v for k, v in vars(profile).items() if isinstance(v, Sourced)}


def test_expected_profiles_are_present(store: ProfileStore) -> None:
    assert EXPECTED_GPUS <= set(store.names("gpus"))
    assert EXPECTED_LINKS <= set(store.names("links"))
    assert EXPECTED_MODELS <= set(store.names("models"))


@pytest.mark.parametrize("kind", ["gpus", "links", "models"])
def test_every_profile_loads_and_is_named_after_its_file(store: ProfileStore, kind: str) -> None:
    load = {"gpus": store.gpu, "links": store.link, "models": store.model}[kind]
    names = store.names(kind)
    assert names
    for name in names:
        profile = load(name)
        assert profile.name == name
        assert profile.display_name
        assert profile.provenance in {"datasheet", "measured", "derived"}


def test_gpu_values_are_plausible(store: ProfileStore) -> None:
    for name in store.names("gpus"):
        gpu = store.gpu(name)
        assert 1e14 <= gpu.dense_bf16_flops_per_s.value <= 1e16, name
        assert 1e11 < gpu.hbm_bandwidth_bytes_per_s.value < 2e13, name
        assert 16e9 <= gpu.hbm_capacity_bytes.value <= 300e9, name
        assert 50 <= gpu.power_w.value <= 1500, name
        # A price or a peer bandwidth may be absent only where no public figure exists, and the
        # profile says so.
        if gpu.price_per_hour_usd is None:
            assert "No public price" in gpu.notes, name
        else:
            assert 0.1 <= gpu.price_per_hour_usd.value <= 50, name
        if gpu.intra_node_bandwidth_bytes_per_s is None:
            assert "No public figure for the socket-to-socket" in gpu.notes, name
        else:
            assert 1e10 <= gpu.intra_node_bandwidth_bytes_per_s.value <= 2e12, name
        # Decode is memory-bound: the FLOP/byte ridge point of every listed GPU is in 30..1000.
        ridge = gpu.dense_bf16_flops_per_s.value / gpu.hbm_bandwidth_bytes_per_s.value
        assert 30 < ridge < 1000, (name, ridge)
        for field, sourced in _sourced_fields(gpu).items():
            assert len(sourced.source) > 20, (name, field)


def test_specific_datasheet_figures(store: ProfileStore) -> None:
    h100 = store.gpu("h100-sxm")
    assert h100.dense_bf16_flops_per_s.value == pytest.approx(989e12, rel=1e-3)
    assert h100.hbm_bandwidth_bytes_per_s.value == pytest.approx(3.35e12)
    assert h100.intra_node_bandwidth_bytes_per_s.value == pytest.approx(450e9)
    # H200 is H100 compute with more and faster memory.
    h200 = store.gpu("h200")
    assert h200.dense_bf16_flops_per_s.value == h100.dense_bf16_flops_per_s.value
    assert h200.hbm_bandwidth_bytes_per_s.value > h100.hbm_bandwidth_bytes_per_s.value
    assert h200.hbm_capacity_bytes.value > h100.hbm_capacity_bytes.value
    # The H20 trades compute for bandwidth; its price is an estimate and says so.
    h20 = store.gpu("h20")
    assert h20.dense_bf16_flops_per_s.value < 0.2 * h100.dense_bf16_flops_per_s.value
    assert h20.hbm_bandwidth_bytes_per_s.value > h100.hbm_bandwidth_bytes_per_s.value
    assert h20.price_per_hour_usd.source.startswith("estimate")


def test_link_values_are_plausible(store: ProfileStore) -> None:
    for name in store.names("links"):
        link = store.link(name)
        assert 1e9 <= link.bandwidth_bytes_per_s.value <= 2e12, name
        assert 1e-7 <= link.latency_s.value <= 1e-3, name
        assert "goodput" in link.notes, name
    ib = store.link("ib-ndr-400")
    assert ib.bandwidth_bytes_per_s.value == pytest.approx(400e9 / 8)
    assert store.link("roce-200").bandwidth_bytes_per_s.value == pytest.approx(200e9 / 8)
    assert store.link("eth-100g").bandwidth_bytes_per_s.value == pytest.approx(100e9 / 8)
    # Faster fabrics have no more latency than slower ones.
    order = ["nvlink4", "ib-ndr-400", "roce-200", "eth-100g"]
    bws = [store.link(n).bandwidth_bytes_per_s.value for n in order]
    lats = [store.link(n).latency_s.value for n in order]
    assert bws == sorted(bws, reverse=True)
    assert lats == sorted(lats)


@pytest.mark.parametrize(
    ("name", "published_params"),
    [
        ("llama-3.1-8b", 8.03e9),
        ("llama-3.1-70b", 70.6e9),
        ("qwen2.5-32b", 32.5e9),  # model card; biases are not modelled, the count is ~0.8% higher
        ("qwen2.5-7b", 7.61e9),
    ],
)
def test_model_param_counts_match_published_sizes(
    store: ProfileStore, name: str, published_params: float
) -> None:
    model = store.model(name)
    assert model.total_params == pytest.approx(published_params, rel=0.02)
    assert model.weight_bytes == model.total_params * model.dtype_bytes
    assert model.head_dim * model.num_heads == model.hidden_size
    assert model.num_heads % model.num_kv_heads == 0


def test_model_exact_counts(store: ProfileStore) -> None:
    assert store.model("llama-3.1-8b").total_params == 8_030_261_248
    assert store.model("llama-3.1-8b").kv_bytes_per_token == 131_072
    assert store.model("llama-3.1-70b").kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    assert store.model("qwen2.5-32b").kv_bytes_per_token == 2 * 64 * 8 * 128 * 2


@pytest.mark.parametrize(
    ("kind", "loader", "known"),
    [
        ("gpus", "gpu", "h100-sxm"),
        ("links", "link", "ib-ndr-400"),
        ("models", "model", "llama-3.1-8b"),
    ],
)
def test_unknown_name_lists_known_names(
    store: ProfileStore, kind: str, loader: str, known: str
) -> None:
    with pytest.raises(ConfigError) as info:
        getattr(store, loader)("no-such-thing")
    message = str(info.value)
    assert "no-such-thing" in message
    assert "known:" in message
    assert known in message


def _write_gpu(folder: Path, name: str, text: str) -> Path:
    (folder / "gpus").mkdir(parents=True, exist_ok=True)
    path = folder / "gpus" / f"{name}.yaml"
    path.write_text(text)
    return path


def test_profiles_dir_overrides_and_extends(tmp_path: Path) -> None:
    text = SHIPPED_H100.read_text().replace("name: h100-sxm", "name: my-gpu")
    _write_gpu(tmp_path, "my-gpu", text)
    store = ProfileStore(tmp_path)
    assert store.gpu("my-gpu").name == "my-gpu"
    assert "my-gpu" in store.names("gpus")
    assert store.gpu("h100-sxm").name == "h100-sxm"  # shipped profiles still found


def test_malformed_profile_names_file_and_field(tmp_path: Path) -> None:
    text = SHIPPED_H100.read_text().replace("name: h100-sxm", "name: broken")
    text = text.replace("  value: 3.35e12", "  value: -1")
    path = _write_gpu(tmp_path, "broken", text)
    with pytest.raises(ConfigError) as info:
        ProfileStore(tmp_path).gpu("broken")
    message = str(info.value)
    assert str(path.resolve()) in message
    assert "hbm_bandwidth_bytes_per_s.value" in message


def test_extra_field_is_rejected(tmp_path: Path) -> None:
    text = SHIPPED_H100.read_text().replace("name: h100-sxm", "name: extra") + "tdp_w: 700\n"
    path = _write_gpu(tmp_path, "extra", text)
    with pytest.raises(ConfigError) as info:
        ProfileStore(tmp_path).gpu("extra")
    assert "extra.yaml" in str(info.value)
    assert "tdp_w" in str(info.value)
    assert path.exists()


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = _write_gpu(tmp_path, "garbled", "name: garbled\nprovenance: [datasheet\n")
    with pytest.raises(ConfigError) as info:
        ProfileStore(tmp_path).gpu("garbled")
    message = str(info.value)
    assert "garbled.yaml" in message
    assert "not valid YAML" in message
    assert path.exists()


def test_profiles_dir_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a folder"):
        ProfileStore(tmp_path / "missing")


def test_every_shipped_model_has_a_context_window(store: ProfileStore) -> None:
    for name in store.names("models"):
        window = store.model(name).context_window_tokens
        assert window is not None and window >= 32_768, name


def test_request_beyond_the_context_window_is_rejected_with_a_reason() -> None:
    from simdisagg import RunConfig, simulate
    from simdisagg.sim.recorder import STATUS_COMPLETED, STATUS_REJECTED
    from simdisagg.trace import TraceBuilder

    b = TraceBuilder("window-test")
    b.add(line=1, timestamp_s=0.0, input_tokens=131_000, output_tokens=72)  # exactly 131,072: served
    b.add(line=2, timestamp_s=0.0, input_tokens=131_000, output_tokens=73)  # one token over
    trace = b.build()
    cfg = RunConfig(model="llama-3.1-8b", prefill={"count": 1, "tp": 2}, decode={"count": 1, "tp": 2})
    result = simulate(cfg, trace)
    status = result.recorder.status
    assert status[0] == STATUS_COMPLETED
    assert status[1] == STATUS_REJECTED
    assert "context window of 131072" in result.recorder.reject_reason[1]


def test_serving_precision_sets_weight_and_kv_bytes(store: ProfileStore) -> None:
    model = store.model("llama-3.1-8b")
    fp8 = model.served_at("fp8", "fp8")
    assert fp8.weight_bytes == model.total_params  # one byte per parameter
    assert fp8.kv_bytes_per_token * 2 == model.kv_bytes_per_token
    fp4 = model.served_at("fp4", "bf16")
    assert fp4.weight_bytes == pytest.approx(model.total_params * (0.5 + 1 / 16), abs=1)
    assert fp4.kv_bytes_per_token == model.kv_bytes_per_token
    with pytest.raises(ConfigError, match="unknown weight precision 'int3'"):
        model.served_at("int3")


def test_fp8_kv_cache_doubles_the_kv_capacity() -> None:
    from simdisagg import RunConfig
    from simdisagg.rng import Streams
    from simdisagg.sim.engine import _plan_pool

    store = ProfileStore()
    bf16 = RunConfig()
    fp8_kv = RunConfig(precision={"kv_cache": "fp8"})
    blocks = [
        _plan_pool(cfg, cfg.decode, "decode", store, Streams(0), 1.0).kv_capacity_blocks for cfg in (bf16, fp8_kv)
    ]
    assert blocks[1] == pytest.approx(2 * blocks[0], abs=1)


def test_sn40l_is_derived_from_the_published_system_figures(store: ProfileStore) -> None:
    """SambaNova SN40L: per-socket figures derived from the 16-socket system of the Hot Chips
    2024 talk (1 TB HBM at 25.6 TB/s, 24 TB DDR at 1.6 TB/s, 8 GB SRAM) and the 638 BF16 TFLOPS
    per socket of arXiv 2405.07518; no invented price or peer bandwidth."""
    rdu = store.gpu("sn40l")
    assert rdu.kind == "rdu" and rdu.provenance == "derived"
    assert rdu.dense_bf16_flops_per_s.value == 638e12
    assert rdu.hbm_bandwidth_bytes_per_s.value == pytest.approx(25.6e12 / 16)
    assert rdu.hbm_capacity_bytes.value * 16 == pytest.approx(1.024e12, rel=0.03)
    assert rdu.ddr_capacity_bytes is not None and rdu.ddr_capacity_bytes.value == pytest.approx(24e12 / 16)
    assert rdu.ddr_bandwidth_bytes_per_s is not None and rdu.ddr_bandwidth_bytes_per_s.value == pytest.approx(1.6e12 / 16)
    assert rdu.sram_capacity_bytes is not None and rdu.sram_capacity_bytes.value * 16 == pytest.approx(8e9, rel=0.05)
    for field in ("hbm_bandwidth_bytes_per_s", "ddr_capacity_bytes", "ddr_bandwidth_bytes_per_s", "power_w"):
        assert getattr(rdu, field).source.startswith("derived:"), field
    assert rdu.price_per_hour_usd is None and rdu.intra_node_bandwidth_bytes_per_s is None
    assert rdu.dense_fp8_flops_per_s is None  # FP8 GEMMs are timed at the BF16 rate
