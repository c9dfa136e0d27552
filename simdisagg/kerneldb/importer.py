"""Import a measured kernel database as calibration samples: ``raw.csv`` + ``meta.yaml``.

For one (GPU, model, tensor-parallel degree, precision, framework), iteration times are
composed from the database's kernels (:mod:`simdisagg.kerneldb.compose`) at the points a GPU
calibration would time, and written in the same ``raw.csv`` layout that ``simdisagg calibrate
gpu`` writes, so ``simdisagg fit`` and the fitted cost model take them unchanged.

Two sets of points:

* **the fitting points** (:func:`grid_points`): rectilinear grids of prefill batches and
  decode steps, plus every token and batch count the GEMM tables measure;
* **held-out compositions** (``holdout = 1``): random batches between and across the grid
  lines (mixed prompt lengths and prefixes, batch sizes and contexts off the grid), seeded.
  ``simdisagg fit`` never fits them; it reports its error on them.

Every row also carries its breakdown by op family (``gemm_s``, ``attention_s``,
``small_ops_s``, ``allreduce_s``, ``lm_head_s``), its kernel count, and which extrapolations
of :data:`~simdisagg.kerneldb.tables.EXTRAPOLATIONS` it needed.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from simdisagg.costmodel.fitted import ShardShape, profile_folder_name
from simdisagg.errors import CalibrationError
from simdisagg.hardware import ModelShape
from simdisagg.kerneldb.compose import MoEStepComposer, StepBreakdown, StepComposer
from simdisagg.kerneldb.grid import OutsideGridError
from simdisagg.kerneldb.tables import (
    DEFAULT_MOE_DISTRIBUTION,
    EXTRAPOLATIONS,
    KernelDatabase,
)

#: New tokens of each prompt of a prefill batch on the fitting grid.
PREFILL_NEW: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
#: Prompts in a prefill batch on the fitting grid.
PREFILL_PROMPTS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
#: Cached prefix of each prompt on the fitting grid.
PREFILL_CACHED: tuple[int, ...] = (0, 256, 1024, 4096, 16384, 65536, 131072)
#: Largest decode batch sampled (every size the GEMM table measures up to it is sampled).
DECODE_MAX_BATCH = 1024
#: Mean context per sequence of a decode step on the fitting grid.
DECODE_CONTEXT: tuple[int, ...] = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
#: Held-out compositions per phase.
HOLDOUT_POINTS = 80
#: Largest prefill batch (new tokens) of a held-out composition.
HOLDOUT_MAX_TOKENS = 32768

#: Columns of ``raw.csv`` beyond :data:`simdisagg.fit.RAW_REQUIRED_COLUMNS`.
EXTRA_COLUMNS: tuple[str, ...] = (
    "holdout",
    "gemm_s",
    "attention_s",
    "small_ops_s",
    "allreduce_s",
    "lm_head_s",
    "kernels",
    "extrapolations",
)


@dataclass(frozen=True, slots=True)
class ImportSpec:
    """What to import: a model instance at a precision, from one GPU's tables of one framework.

    ``tp`` GPUs per attention rank; for a mixture-of-experts model also ``dp`` attention
    data-parallel ranks, experts spread ``ep`` ways, the experts' own precision (``experts``,
    default the weights'), the expert load imbalance of the MoE table (``distribution``) and
    the bandwidth of the link model used for expert dispatch where the database measured no
    all-to-all (``link_bandwidth_bytes_per_s``: the GPU profile's NVLink figure)."""

    model: ModelShape
    gpu: str
    tp: int
    weights: str = "bf16"
    kv_cache: str = "bf16"
    framework: str = "vllm"
    dp: int = 1
    ep: int = 1
    experts: str | None = None
    distribution: str = DEFAULT_MOE_DISTRIBUTION
    link_bandwidth_bytes_per_s: float | None = None

    @property
    def served(self) -> ModelShape:
        """The model at this spec's precision."""
        return self.model.served_at(self.weights, self.kv_cache, self.experts)

    @property
    def is_moe_or_mla(self) -> bool:
        """Whether the model needs the mixture-of-experts / latent-attention composition."""
        return self.model.moe is not None or self.model.mla is not None

    @property
    def folder_name(self) -> str:
        """The profile's folder under ``measured/<gpu>/`` (:func:`~simdisagg.costmodel.fitted.profile_folder_name`)."""
        experts = self.experts if self.experts and self.experts != self.weights else None
        return profile_folder_name(self.model.name, self.tp, self.weights, self.kv_cache, self.framework,
                                   self.dp, self.ep, experts)


def grid_points(gemm_rows: Sequence[int]) -> tuple[list[tuple[list[int], list[int]]], list[tuple[int, int]]]:
    """The fitting points: prefill batches ``(new tokens, cached tokens)`` and decode ``(B, C)``.

    * a rectilinear prefill grid of ``P`` equal prompts of ``n`` new tokens on ``c`` cached
      (:data:`PREFILL_NEW` x :data:`PREFILL_PROMPTS` x :data:`PREFILL_CACHED`);
    * single prompts of every size in ``gemm_rows`` (the GEMM table's token counts, which
      sample its tile steps: ``m = 256`` and ``257`` differ) and batches of one-token prompts of
      every such count up to the largest batch, so the per-token and per-prompt parts are known
      wherever the GEMM tables are;
    * decode steps of every such batch size up to :data:`DECODE_MAX_BATCH` at each mean
      context of :data:`DECODE_CONTEXT`.
    """
    prefill = [([n] * p, [c] * p) for n in PREFILL_NEW for p in PREFILL_PROMPTS for c in PREFILL_CACHED]
    on_grid = {(n, 1, 0) for n in PREFILL_NEW} | {(1, p, 0) for p in PREFILL_PROMPTS}
    prefill += [([m], [0]) for m in gemm_rows if m <= PREFILL_NEW[-1] and (m, 1, 0) not in on_grid]
    prefill += [([1] * m, [0] * m) for m in gemm_rows if m <= PREFILL_PROMPTS[-1] and (1, m, 0) not in on_grid]
    batches = sorted({m for m in gemm_rows if m <= DECODE_MAX_BATCH} | {DECODE_MAX_BATCH})
    decode = [(b, b * ctx) for b in batches for ctx in DECODE_CONTEXT]
    return prefill, decode


def holdout_points(seed: int = 0) -> tuple[list[tuple[list[int], list[int]]], list[tuple[int, int]]]:
    """Random compositions off the grid lines, inside its ranges (seeded)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 12]))
    prefill: list[tuple[list[int], list[int]]] = []
    while len(prefill) < HOLDOUT_POINTS:
        prompts = int(rng.integers(1, 49))
        budget = float(np.exp(rng.uniform(np.log(max(64, prompts)), np.log(HOLDOUT_MAX_TOKENS))))
        shares = rng.dirichlet(np.ones(prompts))
        new = [max(1, int(round(budget * s))) for s in shares]
        cached = [0 if rng.random() < 0.4 else int(np.exp(rng.uniform(np.log(16), np.log(PREFILL_CACHED[-1])))) for _ in new]
        if sum(new) <= HOLDOUT_MAX_TOKENS:
            prefill.append((new, cached))
    decode = []
    for _ in range(HOLDOUT_POINTS):
        b = int(round(np.exp(rng.uniform(0.0, np.log(DECODE_MAX_BATCH)))))
        ctx = float(np.exp(rng.uniform(np.log(DECODE_CONTEXT[0]), np.log(DECODE_CONTEXT[-1]))))
        decode.append((b, int(round(b * ctx))))
    return prefill, decode


def _row(device: str, phase: str, step: StepBreakdown, used: Counter[str], **cols: Any) -> dict[str, Any]:
    t = step.total_s
    row: dict[str, Any] = {
        "device": device,
        "phase": phase,
        "batch_size": 1,
        "new_tokens_list": "",
        "cached_tokens_list": "",
        "context_tokens": 0,
        "bytes": 0,
        "transfer_kind": "",
        "n_reps": 1,
        "median_s": t,
        "p10_s": t,
        "p90_s": t,
        "mean_s": t,
        "std_s": 0.0,
        "power_w_mean": "nan",
        "gemm_s": step.gemm_s,
        "attention_s": step.attention_s,
        "small_ops_s": step.small_ops_s,
        "allreduce_s": step.allreduce_s,
        "lm_head_s": step.lm_head_s,
        "kernels": step.kernels,
        "extrapolations": ";".join(f"{k}={v}" for k, v in sorted(used.items())),
    }
    row.update(cols)
    return row


def compose_rows(db: KernelDatabase, spec: ImportSpec, seed: int = 0) -> list[dict[str, Any]]:
    """Every grid and held-out point of ``spec``, composed from ``db`` (raw.csv rows)."""
    composer = make_composer(db, spec)
    rows: list[dict[str, Any]] = []
    grid_p, grid_d = grid_points(sample_rows(db, composer))
    hold_p, hold_d = holdout_points(seed)
    for holdout, prefill, decode in ((0, grid_p, grid_d), (1, hold_p, hold_d)):
        for new, cached in prefill:
            before = db.extrapolated.copy()
            step = _compose(composer.prefill, new, cached)
            rows.append(
                _row(
                    "cuda", "prefill", step, db.extrapolated - before,
                    batch_size=len(new),
                    new_tokens_list=";".join(map(str, new)),
                    cached_tokens_list=";".join(map(str, cached)),
                    holdout=holdout,
                )
            )
        for b, c in decode:
            before = db.extrapolated.copy()
            step = _compose(composer.decode, b, c)
            rows.append(
                _row("cuda", "decode", step, db.extrapolated - before, batch_size=b, context_tokens=c, holdout=holdout)
            )
    return rows


def sample_rows(db: KernelDatabase, composer: StepComposer) -> list[int]:
    """Token counts sampled on their own: every ``m`` the GEMM table measures and, for a MoE
    model, every token count the MoE table measures (its kernel changes between them too)."""
    rows = set(db.gemm_rows(composer.gemm_dtype))
    if isinstance(composer, MoEStepComposer) and composer.model.moe is not None:
        rows |= set(composer.moe_token_counts())
    return sorted(rows)


def make_composer(db: KernelDatabase, spec: ImportSpec) -> StepComposer:
    """The composer of ``spec``: the dense one, or the mixture-of-experts / latent-attention one."""
    if spec.is_moe_or_mla:
        try:
            return MoEStepComposer(
                db, spec.served, spec.tp, spec.dp, spec.ep, spec.weights, spec.kv_cache,
                spec.distribution, spec.link_bandwidth_bytes_per_s,
            )
        except ValueError as exc:
            raise CalibrationError(f"{spec.folder_name}: {exc}") from exc
    if spec.dp > 1 or spec.ep > 1:
        raise CalibrationError(
            f"{spec.model.name}: attention data parallelism and expert parallelism apply to MoE models"
        )
    shard = ShardShape.of(spec.served, spec.tp)
    return StepComposer(db, shard, spec.weights, spec.kv_cache, qk_norm=spec.model.qk_norm)


def _compose(fn: Any, *args: Any) -> StepBreakdown:
    try:
        return fn(*args)  # type: ignore[no-any-return]
    except OutsideGridError as exc:
        raise CalibrationError(f"kernel database: {exc}") from exc


def import_profile(
    db_root: Path,
    spec: ImportSpec,
    out: Path,
    *,
    command_line: str = "",
    seed: int = 0,
    force: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Compose ``spec`` from the database at ``db_root`` and write ``out/raw.csv.gz`` (the
    ``raw.csv`` layout, compressed) and ``out/meta.yaml``, atomically; existing raw samples
    are replaced only with ``force``."""
    from simdisagg.fit import RAW_REQUIRED_COLUMNS

    out = Path(out)
    for name in ("raw.csv", "raw.csv.gz"):
        if (out / name).exists() and not force:
            raise CalibrationError(f"{out / name} exists: raw samples are never overwritten without --force")
    db = KernelDatabase(db_root, spec.gpu, spec.framework)
    if spec.is_moe_or_mla and spec.link_bandwidth_bytes_per_s is None and (spec.dp > 1 or spec.ep > 1):
        from dataclasses import replace

        from simdisagg.hardware import ProfileStore

        gpu = ProfileStore().gpu(spec.gpu)
        spec = replace(spec, link_bandwidth_bytes_per_s=gpu.intra_node_bandwidth_bytes_per_s.value)
    composer = make_composer(db, spec)
    rows = compose_rows(db, spec, seed)
    source = db.source
    used = Counter[str]()
    for r in rows:
        for part in filter(None, str(r["extrapolations"]).split(";")):
            name, count = part.split("=")
            used[name] += int(count)
    points_extrapolated = sum(1 for r in rows if r["extrapolations"])
    shard = ShardShape.of(spec.served, spec.tp, spec.dp, spec.ep)
    meta: dict[str, Any] = {
        "schema_version": 1,
        "kind": "simdisagg-calibration",
        "provenance": "measured",
        "device": "cuda",
        "gpu_profile": spec.gpu,
        "gpu_name": source.device_name,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command_line,
        "shard": shard.to_dict(),
        "tp": spec.tp,
        "parallelism": {"tp": spec.tp, "dp": spec.dp, "ep": spec.ep},
        "precision": {"weights": spec.weights, "kv_cache": spec.kv_cache,
                      **({"experts": spec.experts} if spec.experts and spec.experts != spec.weights else {})},
        "framework": spec.framework,
        "layers_timed": shard.num_layers,
        "grid": {
            "name": "kernel-database composition",
            "prefill_new_tokens": list(PREFILL_NEW),
            "prefill_prompts": list(PREFILL_PROMPTS),
            "prefill_cached_tokens": list(PREFILL_CACHED),
            "decode_batch_sizes": sorted({b for b, _ in grid_points(sample_rows(db, composer))[1]}),
            "decode_mean_context": list(DECODE_CONTEXT),
            "holdout_points_per_phase": HOLDOUT_POINTS,
            "holdout_seed": seed,
        },
        "source": {
            "kind": "kernel database",
            "database": "AIConfigurator measured kernel tables (ai-dynamo/aiconfigurator, "
            "aic-core/src/aiconfigurator_core/systems/data)",
            **source.to_dict(),
        },
        "method": {
            "composition": "per-iteration sum of measured kernels (simdisagg.kerneldb.compose): QKV, output, "
            "gate/up and down GEMMs; prefill/decode attention of the shard's heads; two TP all-reduces per "
            "layer; embedding, LM head, logits gather and sampling; small ops at the measured streaming "
            "bandwidth, never below the shortest measured kernel",
            "interpolation": "log-space multilinear over each table's grid, between measured neighbours only "
            "(no overshoot); splits and scalings beyond a table as listed under extrapolations "
            "(simdisagg.kerneldb.grid, simdisagg.kerneldb.tables)",
            **(_moe_method(composer, spec) if isinstance(composer, MoEStepComposer) else {}),
            "streaming_bandwidth_bytes_per_s": db.streaming_bandwidth_bytes_per_s,
            "smallest_kernel_s": db.smallest_kernel_s,
            "framework_overheads": "not included: fitted on end-to-end measurements and added at run time",
        },
        "extrapolations": {
            "points": points_extrapolated,
            "of_points": len(rows),
            "lookups": dict(sorted(used.items())),
            "meaning": {k: EXTRAPOLATIONS[k] for k in sorted(used)},
        },
        "complete": True,
    }
    out.mkdir(parents=True, exist_ok=True)
    columns = list(RAW_REQUIRED_COLUMNS) + list(EXTRA_COLUMNS)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _compact(k, v) for k, v in r.items()} for r in rows)
    tmp = out / "raw.csv.gz.tmp"
    # mtime=0: the same import gives the same bytes.
    tmp.write_bytes(gzip.compress(text.getvalue().encode(), mtime=0))
    meta_tmp = out / "meta.yaml.tmp"
    meta_tmp.write_text(yaml.safe_dump(meta, sort_keys=False))
    os.replace(meta_tmp, out / "meta.yaml")
    os.replace(tmp, out / "raw.csv.gz")
    stale = out / "raw.csv"
    if stale.exists():
        stale.unlink()
    return out, meta


def _moe_method(composer: MoEStepComposer, spec: ImportSpec) -> dict[str, Any]:
    """How a mixture-of-experts / latent-attention instance was composed (for ``meta.yaml``
    and the fit report)."""
    m = spec.model
    out: dict[str, Any] = {
        "composition": "per-iteration sum of measured kernels (simdisagg.kerneldb.compose.MoEStepComposer): "
        "attention projections, attention, dense-layer MLPs, router, routed experts (moe_perf), shared experts, "
        "TP all-reduces and expert dispatch/combine; embedding, LM head, logits gather and sampling; small ops "
        "at the measured streaming bandwidth, never below the shortest measured kernel",
        "instance": "iterations are the whole instance's (all attention-DP ranks); each rank has an even "
        "share of the prompts or sequences and the busiest rank sets the time "
        "(simdisagg.kerneldb.compose.MoEStepComposer)",
        "attention": ("latent attention (MLA): context_mla / generation_mla / mla_bmm tables"
                      if m.mla is not None else "grouped-query attention tables")
        + (f"; {m.sliding_window_layers} sliding-window layers ({m.sliding_window_tokens} tokens) at the "
           "full-attention kernel of equal (query, key) pairs or KV read" if m.sliding_window_layers else ""),
    }
    if m.moe is not None:
        out.update({
            "experts": f"moe_perf {composer.moe_dtype}, moe_tp {composer.moe_tp}, moe_ep {spec.ep}, at the instance's "
            f"tokens; {m.moe.dense_layers} dense first layers and {m.moe.shared_experts} shared expert(s) as GEMMs",
            "expert_load_distribution": spec.distribution,
            "dispatch_combine": composer.dispatch_source,
        })
        if spec.link_bandwidth_bytes_per_s and not composer.use_alltoall and (spec.dp > 1 or spec.ep > 1):
            out["link_bandwidth_bytes_per_s"] = spec.link_bandwidth_bytes_per_s
    return out


def _compact(column: str, value: Any) -> Any:
    """Times to six significant digits (a composed time is no more certain than that); the
    spread columns empty (a composition has no spread)."""
    if column in ("p10_s", "p90_s", "mean_s"):
        return ""
    if column.endswith("_s") and isinstance(value, float):
        return f"{value:.6g}"
    return value
