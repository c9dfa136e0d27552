"""Builds the cost model a pool runs on, from the run's cost config.

``auto`` uses a profile fitted to measured kernels for (GPU, model, TP, precision, framework)
whenever one exists under a profile root (``measured/<gpu>/<model>-tp<k>-<weights>-kv<kv>-<framework>/``
or, for BF16, one timed by ``calibrate gpu``: ``measured/<gpu>/<model>-tp<k>/``), and the
roofline model otherwise; the chosen model's ``label`` says which, and every output repeats it.
A profile composed from a kernel database gets the framework's fitted overheads
(:mod:`simdisagg.overheads`) on top of its kernels.
"""

from __future__ import annotations

from typing import Any

from simdisagg.costmodel.base import CostModel
from simdisagg.costmodel.reference import ConstantCostModel, ExponentialCostModel
from simdisagg.costmodel.roofline import RooflineCostModel, RooflineParams
from simdisagg.hardware import GPUProfile, ModelShape, ProfileStore, check_parallelism
from simdisagg.rng import Streams


def _roofline(cfg: Any, model: ModelShape, gpu: GPUProfile, tp: int, dp: int = 1, ep: int = 1) -> RooflineCostModel:
    params = RooflineParams(
        prefill_mfu=cfg.prefill_mfu,
        decode_mfu=cfg.decode_mfu,
        memory_bandwidth_utilisation=cfg.memory_bandwidth_utilisation,
        iteration_overhead_s=cfg.iteration_overhead_s,
        allreduce_latency_s=cfg.allreduce_latency_s,
        expert_imbalance=cfg.expert_imbalance,
    )
    return RooflineCostModel(model, gpu, tp, params, dp=dp, ep=ep)


def make_cost_model(
    cfg: Any,
    model: ModelShape,
    gpu: GPUProfile,
    tp: int,
    streams: Streams,
    store: ProfileStore,
    role: str,
    framework: str = "vllm",
    *,
    dp: int = 1,
    ep: int = 1,
) -> CostModel:
    """The cost model of one pool (``role`` names the pool; stochastic models get their own
    stream ``cost:<role>``). ``model`` carries its serving precision (``ModelShape.served_at``).
    ``tp`` GPUs per attention rank, ``dp`` attention data-parallel ranks per instance and
    experts spread ``ep`` ways (MoE models): a measured profile of exactly that parallelism is
    used, and its step times are the whole instance's (every rank's requests together).
    A parallelism the model cannot be split by is refused for every kind
    (:func:`~simdisagg.hardware.check_parallelism`): a reference model would otherwise time a
    cluster no engine can run."""
    check_parallelism(model, tp, f"{role} pool tp", dp=dp, ep=ep)
    if cfg.kind == "constant":
        return ConstantCostModel(
            cfg.prefill_s, cfg.decode_step_s, cfg.prefill_s_per_token, cfg.decode_step_s_per_context_token
        )
    if cfg.kind == "exponential":
        return ExponentialCostModel(cfg.mean_prefill_s, cfg.decode_step_s, streams[f"cost:{role}"])
    if cfg.kind == "auto":
        fitted = _find_fitted(store, gpu, model, tp, framework, dp, ep)
        if fitted is not None:
            return fitted
    return _roofline(cfg, model, gpu, tp, dp, ep)


def _find_fitted(
    store: ProfileStore, gpu_profile: GPUProfile, model: ModelShape, tp: int, framework: str, dp: int = 1, ep: int = 1
) -> CostModel | None:
    from simdisagg.costmodel import fitted

    path = fitted.find_fitted(
        store.roots, gpu_profile.name, model.name, tp, model.weight_format, model.kv_format, framework,
        dp, ep, model.expert_format,
    )
    if path is None:
        return None
    cost = fitted.FittedCostModel.from_file(path, gpu=gpu_profile)
    if cost.fit.get("source", {}).get("kind") == "kernel database":
        cost = fitted.FittedCostModel(
            cost.fit, gpu=gpu_profile, source=path, overheads=store.framework(framework)
        )
    return cost
