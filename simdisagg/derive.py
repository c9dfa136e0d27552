"""Derived profiles: a measured fit carried over to a GPU that could not be measured.

A fit measured on one GPU (in practice a Hopper part) gives per-term efficiencies: seconds
per GEMM FLOP, per attention FLOP, per KV byte, plus fixed overheads. For a target GPU known
only from its datasheet, each physical term is scaled by the ratio of the rate that bounds it:

* compute-bound terms (``gemm_flops``, ``attn_flops``): by ``peak_flops(source) / peak_flops(target)``;
* memory-bound terms (``kv_bytes``, the d2d copy's ``bytes``): by ``hbm_bw(source) / hbm_bw(target)``;
* the fixed term ``const`` is split into the weight read (memory-bound, scaled by the
  bandwidth ratio) and the rest (launch and framework overheads, kept as measured);
* per-prompt overheads are kept.

This assumes the target reaches the same fraction of its datasheet peaks as the source did
(same kernels, same software). The result is labelled ``provenance: derived`` and always uses
the physical terms (the interpolated residuals describe the source's kernels, not the
target's). Its ``held_out_error`` is the *source's* physical held-out error, i.e. a lower
bound: nothing was measured on the target. Host-device transfers are dropped (their speed
depends on the host link, which the GPU datasheet does not give).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simdisagg.costmodel.fitted import (
    FEATURE_BOUND,
    FIT_SCHEMA_VERSION,
    ShardShape,
    fit_label,
)
from simdisagg.errors import CalibrationError
from simdisagg.hardware import GPUProfile


def _load(measured_fit_json: Mapping[str, Any] | Path | str) -> tuple[dict[str, Any], str]:
    if isinstance(measured_fit_json, Mapping):
        return copy.deepcopy(dict(measured_fit_json)), "<in memory>"
    path = Path(measured_fit_json)
    if path.is_dir():
        path = path / "fit.json"
    try:
        return json.loads(path.read_text()), str(path)
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{path}: cannot read fit ({exc})") from exc


def derive_fit(
    measured_fit_json: Mapping[str, Any] | Path | str, source_gpu: GPUProfile, target_gpu: GPUProfile
) -> dict[str, Any]:
    """A ``fit.json``-shaped dict for ``target_gpu`` derived from a measured fit on
    ``source_gpu`` (see module docstring for the scaling and its assumptions)."""
    src, where = _load(measured_fit_json)
    if src.get("schema_version") != FIT_SCHEMA_VERSION:
        raise CalibrationError(f"{where}: schema_version {src.get('schema_version')} (expected {FIT_SCHEMA_VERSION})")
    if src.get("provenance") != "measured":
        raise CalibrationError(f"{where}: can only derive from a measured fit (this one is {src.get('provenance')})")
    if src.get("device") != "cuda":
        raise CalibrationError(f"{where}: measured on device={src.get('device')}; derive needs a GPU measurement")
    if src.get("gpu") != source_gpu.name:
        raise CalibrationError(f"{where}: fit is for GPU '{src.get('gpu')}', source profile is '{source_gpu.name}'")
    flops_ratio = source_gpu.dense_bf16_flops_per_s.value / target_gpu.dense_bf16_flops_per_s.value
    bw_ratio = source_gpu.hbm_bandwidth_bytes_per_s.value / target_gpu.hbm_bandwidth_bytes_per_s.value
    scale = {"compute": flops_ratio, "memory": bw_ratio, "overhead": 1.0}
    shard = ShardShape.from_dict(src["shard"])

    weight_read = src.get("weight_read") or {}
    copy_bw = weight_read.get("hbm_copy_bandwidth_bytes_per_s")
    if copy_bw:
        src_weight_read_s = shard.weight_bytes / float(copy_bw)
        wr_basis = "measured copy bandwidth on the source"
    else:
        src_weight_read_s = shard.weight_bytes / source_gpu.hbm_bandwidth_bytes_per_s.value
        wr_basis = "source datasheet bandwidth (no copy measurement)"

    phases: dict[str, Any] = {}
    for name, spec in src["phases"].items():
        if name.startswith("transfer_") and name != "transfer_d2d":
            continue  # host links are not described by GPU datasheets
        coef = dict(spec["physical"]["coefficients"])
        new_coef: dict[str, float] = {}
        const_split = None
        for feat, value in coef.items():
            if feat == "const" and not name.startswith("transfer_"):
                weight_part = min(float(value), src_weight_read_s)
                overhead_part = float(value) - weight_part
                new_coef[feat] = overhead_part + weight_part * bw_ratio
                const_split = {"weight_read_s": weight_part, "overhead_s": overhead_part}
            else:
                new_coef[feat] = float(value) * scale[FEATURE_BOUND[feat]]
        source_error = {k: float(v) for k, v in spec["held_out"]["physical"].items() if k.endswith("_ape")}
        phases[name] = {
            "chosen": "physical",
            "criterion": "derived: physical terms only",
            "n_points": 0,
            "folds": 0,
            "physical": {**spec["physical"], "coefficients": new_coef},
            "source_coefficients": coef,
            "source_const_split": const_split,
            "held_out": {"physical": dict(spec["held_out"]["physical"])},
            "held_out_error": source_error,
            "held_out_error_note": f"source GPU ({source_gpu.name}) physical-model held-out error; "
            "not measured on the target, so a lower bound",
            "worst_point": spec["held_out"]["physical"].get("worst_point"),
            "power_w": None,
        }

    new_weight_read = {
        "weight_bytes": shard.weight_bytes,
        "hbm_copy_bandwidth_bytes_per_s": None if not copy_bw else float(copy_bw) / bw_ratio,
        "weight_read_s": src_weight_read_s * bw_ratio,
        "source": f"derived: source weight read ({wr_basis}) x HBM bandwidth ratio",
    }
    allreduce = None
    if shard.tp > 1:
        allreduce = {
            "provenance": "modelled",
            "intra_node_bandwidth_bytes_per_s": target_gpu.intra_node_bandwidth_bytes_per_s.value,
            "latency_s": (src.get("allreduce") or {}).get("latency_s", 1.0e-5),
            "source": f"ring all-reduce over {target_gpu.name} intra_node_bandwidth_bytes_per_s "
            f"({target_gpu.intra_node_bandwidth_bytes_per_s.source}); not measured",
        }
    out: dict[str, Any] = {
        "schema_version": FIT_SCHEMA_VERSION,
        "provenance": "derived",
        "device": "cuda",
        "gpu": target_gpu.name,
        "gpu_name": target_gpu.display_name,
        "shard": src["shard"],
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "derivation": {
            "source_gpu": source_gpu.name,
            "source_fit": where,
            "source_label": src.get("label"),
            "source_measured_at": src.get("measured_at"),
            "flops_ratio": flops_ratio,
            "bandwidth_ratio": bw_ratio,
            "reasoning": (
                f"Compute-bound terms scaled by {source_gpu.name}/{target_gpu.name} dense BF16 peak "
                f"({source_gpu.dense_bf16_flops_per_s.value:.4g} / {target_gpu.dense_bf16_flops_per_s.value:.4g} "
                f"FLOP/s = {flops_ratio:.4f}); memory-bound terms and the weight-read part of the fixed term by "
                f"the HBM bandwidth ratio ({source_gpu.hbm_bandwidth_bytes_per_s.value:.4g} / "
                f"{target_gpu.hbm_bandwidth_bytes_per_s.value:.4g} B/s = {bw_ratio:.4f}); launch overheads kept. "
                "Assumes the target reaches the same fraction of its datasheet peaks as the source."
            ),
            "target_sources": {
                "dense_bf16_flops_per_s": target_gpu.dense_bf16_flops_per_s.source,
                "hbm_bandwidth_bytes_per_s": target_gpu.hbm_bandwidth_bytes_per_s.source,
            },
        },
        "phases": phases,
        "weight_read": new_weight_read,
        "allreduce": allreduce,
        "notes": "Derived, not measured. Physical terms only; errors are the source's (a lower bound).",
    }
    out["label"] = fit_label(out)
    return out


def render_derivation(fit: Mapping[str, Any]) -> str:
    """A short ``derivation.md`` stating what was scaled and why."""
    d = fit["derivation"]
    lines = [
        f"# Derived profile: `{fit['label']}`",
        "",
        "**provenance: derived** -- no kernel was measured on this GPU.",
        "",
        f"- from: `{d['source_label']}` ({d['source_fit']}, measured {d['source_measured_at']})",
        f"- {d['reasoning']}",
        "",
        "| phase | term | bound | source | derived |",
        "|---|---|---|---|---|",
    ]
    for name, spec in fit["phases"].items():
        for feat, value in spec["physical"]["coefficients"].items():
            lines.append(
                f"| {name} | {feat} | {spec['physical']['bound'][feat]} | "
                f"{spec['source_coefficients'][feat]:.4g} | {value:.4g} {spec['physical']['units'][feat]} |"
            )
    lines += ["", "Held-out errors are the source GPU's physical-model errors (a lower bound).", ""]
    return "\n".join(lines)
