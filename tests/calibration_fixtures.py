"""Shared inputs of the calibration, fit and derivation tests: Llama-3.1-8B's shape (from its
published config.json), Hopper-like step-time coefficients for synthetic measurements, and
GPU profiles with given datasheet figures."""

from __future__ import annotations

from typing import Any

from simdisagg.hardware import ModelShape

LLAMA_8B = ModelShape(
    name="llama-3.1-8b",
    display_name="Llama-3.1-8B",
    provenance="datasheet",
    source="meta-llama/Llama-3.1-8B config.json",
    num_layers=32,
    hidden_size=4096,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    intermediate_size=14336,
    vocab_size=128256,
    dtype_bytes=2,
)

#: Hopper-like efficiencies of the synthetic measurements: s/FLOP, s/byte, s.
TRUE = {
    "prefill": {
        "const": 4e-3,
        "gemm_flops": 1 / 600e12,
        "attn_flops": 1 / 400e12,
        "kv_bytes": 1 / 2e12,
        "prompts": 50e-6,
    },
    "decode": {"const": 6e-3, "gemm_flops": 1 / 300e12, "kv_bytes": 1 / 2.4e12},
    "transfer_d2d": {"const": 10e-6, "bytes": 2 / 2.8e12},
    "transfer_h2d": {"const": 10e-6, "bytes": 1 / 50e9},
}


def gpu_dict(
    name: str = "h100-sxm", flops: float = 989e12, bw: float = 3.35e12, nvlink: float = 450e9
) -> dict[str, Any]:
    """A GPU profile as YAML data, with the given datasheet figures (test values)."""
    s = {"source": "test figure"}
    return {
        "name": name,
        "display_name": name.upper(),
        "provenance": "datasheet",
        "dense_bf16_flops_per_s": {"value": flops, **s},
        "hbm_bandwidth_bytes_per_s": {"value": bw, **s},
        "hbm_capacity_bytes": {"value": 80e9, **s},
        "power_w": {"value": 700, **s},
        "price_per_hour_usd": {"value": 3.0, **s},
        "intra_node_bandwidth_bytes_per_s": {"value": nvlink, **s},
    }
