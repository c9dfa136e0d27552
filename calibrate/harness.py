"""The calibration run: grid -> measured points -> ``raw.csv`` + ``meta.yaml``.

A grid (``calibrate/grids/*.yaml``) lists prefill batches, decode batches and copies to time.
Points whose KV would not fit on a serving instance of this shard (GPU memory x
``memory_fraction`` less the shard's weights and an activation reserve) are skipped, and the
rest are timed with :func:`calibrate.kernels.measure`. Each phase has a share of the grid's time
budget; if a phase overruns it, its remaining points are skipped and listed in ``meta.yaml``.

Only :func:`run_calibration` touches torch (imported inside it), so grids can be loaded,
checked and estimated without it.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import math
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simdisagg.costmodel.fitted import ShardShape
from simdisagg.errors import CalibrationError
from simdisagg.hardware import ModelShape

GRIDS_DIR = Path(__file__).resolve().parent / "grids"
META_SCHEMA_VERSION = 1

#: ``raw.csv`` columns, in order.
RAW_COLUMNS: tuple[str, ...] = (
    "device",
    "phase",
    "point_id",
    "transfer_kind",
    "batch_size",
    "new_tokens",
    "cached_tokens",
    "context_tokens",
    "max_seq_tokens",
    "new_tokens_list",
    "cached_tokens_list",
    "bytes",
    "layers_timed",
    "num_layers",
    "n_reps",
    "median_s",
    "p10_s",
    "p90_s",
    "mean_s",
    "std_s",
    "min_s",
    "power_w_mean",
    "embed_median_s",
    "layers_median_s",
    "head_median_s",
    "attention_method",
    "cuda_graph",
    "timer",
    "wall_s",
)


# -- grid ------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimingSpec(_Strict):
    """Repetitions per point: warm-ups, then enough timed repetitions for ``target_point_s``."""

    warmup_reps: int = Field(default=3, ge=0)
    min_reps: int = Field(default=5, ge=2)
    max_reps: int = Field(default=300, ge=2)
    target_point_s: float = Field(default=0.4, gt=0)


class MixedPrefill(_Strict):
    """One batch of prompts of different lengths (``cached`` defaults to zeros)."""

    new: list[int] = Field(min_length=1)
    cached: list[int] | None = None

    @model_validator(mode="after")
    def _lengths(self) -> MixedPrefill:
        if self.cached is not None and len(self.cached) != len(self.new):
            raise ValueError("cached must have one entry per prompt")
        return self


class PrefillGrid(_Strict):
    """Prefill points: single prompts, prompts on a cached prefix, equal and mixed batches."""

    single: list[int] = []
    cached: list[tuple[int, int]] = []
    uniform: list[tuple[int, int]] = []
    mixed: list[MixedPrefill] = []


class MixedDecode(_Strict):
    """A decode batch whose contexts are spaced geometrically from min to max."""

    batch_size: int = Field(ge=1)
    min_context: int = Field(ge=1)
    max_context: int = Field(ge=1)


class DecodeGrid(_Strict):
    """Decode points: every batch size x context per request, plus mixed-context batches."""

    batch_sizes: list[int] = []
    context_tokens_per_request: list[int] = []
    mixed: list[MixedDecode] = []


class TransferGrid(_Strict):
    """Copies measurable on one machine, by kind and message size."""

    kinds: list[Literal["d2d", "h2d", "d2h"]] = []
    sizes_bytes: list[int] = []


class Grid(_Strict):
    """A measurement grid file (``calibrate/grids/<name>.yaml``)."""

    schema_version: Literal[1]
    name: str
    description: str = ""
    layers_timed: int = Field(default=4, ge=1)
    budget_s: float = Field(default=480.0, gt=0)
    phase_budget_share: dict[str, float] = {"prefill": 0.5, "decode": 0.35, "transfer": 0.15}
    memory_fraction: float = Field(default=0.9, gt=0, le=1)
    activation_reserve_bytes: int = Field(default=0, ge=0)
    cuda_graphs: dict[str, bool] = {"prefill": False, "decode": True}
    timing: TimingSpec = TimingSpec()
    prefill: PrefillGrid = PrefillGrid()
    decode: DecodeGrid = DecodeGrid()
    transfer: TransferGrid = TransferGrid()


def load_grid(name_or_path: str | Path) -> tuple[Grid, Path]:
    """A grid by name (``calibrate/grids/<name>.yaml``) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = GRIDS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in GRIDS_DIR.glob("*.yaml")))
        raise CalibrationError(f"{path}: no such grid (known: {known})")
    try:
        data = yaml.safe_load(path.read_text())
        return Grid.model_validate(data), path
    except yaml.YAMLError as exc:
        raise CalibrationError(f"{path}: not valid YAML") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise CalibrationError(f"{path}: field '{loc}': {err['msg']}") from exc


# -- points ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """One measured point: a prefill batch, a decode batch or a copy."""

    phase: str
    new: tuple[int, ...] = ()
    cached: tuple[int, ...] = ()
    contexts: tuple[int, ...] = ()
    transfer_kind: str = ""
    nbytes: int = 0

    @property
    def kv_tokens(self) -> int:
        """KV slots the point occupies (whole sequences)."""
        if self.phase == "prefill":
            return sum(self.new) + sum(self.cached)
        return sum(self.contexts)

    @property
    def max_seq_tokens(self) -> int:
        """Longest sequence (cached + new, or decode context)."""
        if self.phase == "prefill":
            return max(n + c for n, c in zip(self.new, self.cached, strict=True))
        return max(self.contexts) if self.contexts else 0

    def describe(self) -> str:
        """Short human description."""
        if self.phase == "prefill":
            return f"prefill new={list(self.new)} cached={list(self.cached)}"[:120]
        if self.phase == "decode":
            return f"decode B={len(self.contexts)} C={sum(self.contexts)}"
        return f"transfer {self.transfer_kind} {self.nbytes} B"


def enumerate_points(grid: Grid, kv_capacity_tokens: float) -> tuple[list[Point], list[str]]:
    """All grid points in measuring order (prefill, decode, transfer), and the skipped ones
    with the reason."""
    points: list[Point] = []
    g = grid.prefill
    points += [Point("prefill", (n,), (0,)) for n in g.single]
    points += [Point("prefill", (n,), (c,)) for n, c in g.cached]
    points += [Point("prefill", (n,) * b, (0,) * b) for b, n in g.uniform]
    points += [Point("prefill", tuple(m.new), tuple(m.cached or [0] * len(m.new))) for m in g.mixed]
    d = grid.decode
    points += [Point("decode", contexts=(c,) * b) for b in d.batch_sizes for c in d.context_tokens_per_request]
    for m in d.mixed:
        ctx = np.rint(np.geomspace(m.min_context, m.max_context, m.batch_size)).astype(int)
        points.append(Point("decode", contexts=tuple(int(c) for c in ctx)))
    points += [
        Point("transfer", transfer_kind=k, nbytes=s) for k in grid.transfer.kinds for s in grid.transfer.sizes_bytes
    ]
    kept, skipped = [], []
    for p in points:
        if p.phase != "transfer" and p.kv_tokens > kv_capacity_tokens:
            skipped.append(f"{p.describe()}: KV of {p.kv_tokens} tokens exceeds capacity {kv_capacity_tokens:.0f}")
        else:
            kept.append(p)
    return kept, skipped


def kv_capacity_tokens(grid: Grid, shard: ShardShape, memory_bytes: float | None) -> float:
    """KV tokens a serving instance of this shard can hold next to its weights (``inf`` when
    the device memory is unknown, as on the CPU)."""
    if memory_bytes is None:
        return math.inf
    embed_bytes = shard.vocab_size * shard.hidden_size * shard.dtype_bytes
    free = memory_bytes * grid.memory_fraction - shard.weight_bytes - embed_bytes - grid.activation_reserve_bytes
    return max(0.0, free / shard.kv_bytes_per_token)


# -- estimate --------------------------------------------------------------------------------
def estimate_seconds(
    grid: Grid,
    shard: ShardShape,
    points: Sequence[Point],
    *,
    peak_flops: float = 989e12,
    hbm_bytes_per_s: float = 3.35e12,
    layers_timed: int | None = None,
) -> dict[str, float]:
    """Rough wall time of a run per phase (s), from a roofline of each point at 60 % of peak
    FLOP/s and 80 % of HBM bandwidth plus 40 us of launches per layer (defaults: H100 SXM)."""
    k = min(layers_timed or grid.layers_timed, shard.num_layers)
    frac = k / shard.num_layers
    t_cfg = grid.timing
    out: dict[str, float] = {"setup": 25.0, "prefill": 0.0, "decode": 0.0, "transfer": 0.0}
    for p in points:
        if p.phase == "transfer":
            bw = hbm_bytes_per_s / 2 if p.transfer_kind == "d2d" else 50e9
            rep = 10e-6 + p.nbytes / bw
            overhead = 0.02 + 3 * p.nbytes / 10e9  # buffer allocation and random fill
        else:
            n = np.array(p.new if p.phase == "prefill" else (1,) * len(p.contexts), dtype=float)
            c = np.array(p.cached if p.phase == "prefill" else tuple(x - 1 for x in p.contexts), dtype=float)
            tokens, pairs = n.sum(), (n * c + n * (n + 1) / 2).sum()
            flops = (
                2 * shard.num_layers * shard.layer_params * tokens
                + 4 * shard.num_layers * shard.num_heads * shard.head_dim * pairs
            )
            nbytes = shard.weight_bytes + shard.kv_bytes_per_token * (c.sum() + tokens)
            full = max(flops / (0.6 * peak_flops), nbytes / (0.8 * hbm_bytes_per_s)) + 40e-6 * shard.num_layers
            rep = full * frac + 2 * shard.lm_head_params * shard.dtype_bytes / (0.8 * hbm_bytes_per_s)
            overhead = 0.05
        reps = min(t_cfg.max_reps, max(t_cfg.min_reps, math.ceil(t_cfg.target_point_s / rep)))
        out[p.phase] += (t_cfg.warmup_reps + 1 + reps) * rep + overhead
    out["total"] = sum(out.values())
    return out


# -- run -------------------------------------------------------------------------------------
def guess_gpu_profile(device_name: str, known: Sequence[str] = ()) -> str:
    """A GPU profile name for a CUDA device name, e.g. ``NVIDIA H100 80GB HBM3`` -> ``h100-sxm``.
    Prefers names in ``known`` (the profiles on disk); falls back to a slug of the name."""
    name = device_name.lower()
    rules = [
        ("gh200", ["gh200"]),
        ("h200", ["h200", "h200-sxm"]),
        ("h100 nvl", ["h100-nvl"]),
        ("h100 pcie", ["h100-pcie"]),
        ("h100", ["h100-sxm", "h100"]),
        ("gb200", ["gb200"]),
        ("b200", ["b200"]),
        ("b100", ["b100"]),
        ("a100", ["a100-80gb", "a100-sxm-80gb", "a100"]),
        ("h20", ["h20"]),
        ("l40s", ["l40s"]),
    ]
    for token, candidates in rules:
        if token in name:
            for cand in candidates:
                if cand in known:
                    return cand
            return candidates[0]
    return re.sub(r"[^a-z0-9]+", "-", name.replace("nvidia", "")).strip("-") or "unknown-gpu"


@dataclass
class RunResult:
    """What a calibration run wrote and measured."""

    out: Path
    rows: list[dict[str, Any]]
    meta: dict[str, Any]
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise CalibrationError(
            "calibrate needs torch: pip install 'simdisagg[calibrate]' (torch==2.13.0, nvidia-ml-py)"
        ) from exc
    return torch


def _pci_bus_id(props: Any) -> str | None:
    """NVML's bus-id string (``00000000:1B:00.0``) of a torch device, so power is read from the
    same GPU whatever CUDA_VISIBLE_DEVICES does; ``None`` if torch does not say."""
    try:
        return f"{int(props.pci_domain_id):08X}:{int(props.pci_bus_id):02X}:{int(props.pci_device_id):02X}.0"
    except (AttributeError, TypeError, ValueError):
        return None


def _fmt_list(values: Sequence[int]) -> str:
    return ";".join(str(v) for v in values)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_calibration(
    model: ModelShape,
    tp: int,
    out: Path | None = None,
    *,
    grid: str | Path = "default",
    device: str = "cuda",
    gpu_profile: str | None = None,
    known_gpu_profiles: Sequence[str] = (),
    layers_timed: int | None = None,
    budget_s: float | None = None,
    cuda_graphs: bool = True,
    seed: int = 0,
    force: bool = False,
    command_line: str | None = None,
    log: Any = None,
) -> RunResult:
    """Measure ``model``'s ``tp`` shard on ``device`` over a grid; write ``raw.csv`` and
    ``meta.yaml`` into ``out`` (default ``hardware_profiles/measured/<gpu>/<model>-tp<tp>``).

    ``device='cpu'`` runs the same code with ``time.perf_counter``; its output says
    ``device: cpu`` everywhere and is for tests only."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC)
    torch = _import_torch()
    if device not in ("cuda", "cpu"):
        raise CalibrationError(f"--device must be cuda or cpu, got '{device}'")
    if device == "cuda" and not torch.cuda.is_available():
        raise CalibrationError("no CUDA GPU visible to torch; calibrate needs one (use --device cpu only for tests)")
    from calibrate import kernels
    from calibrate.power import PowerMeter

    shard = ShardShape.of(model, tp)
    g, grid_path = load_grid(grid)
    dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    facts: dict[str, Any] = {}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        gpu_name = str(props.name)
        memory_bytes: float | None = float(props.total_memory)
        l2_bytes = int(getattr(props, "L2_cache_size", 50 * 2**20))
        facts = {
            "gpu_memory_bytes": int(props.total_memory),
            "sm_count": int(props.multi_processor_count),
            "compute_capability": f"{props.major}.{props.minor}",
            "l2_cache_bytes": l2_bytes,
        }
        meter = PowerMeter(dev.index or 0, pci_bus_id=_pci_bus_id(props))
        profile = gpu_profile or guess_gpu_profile(gpu_name, known_gpu_profiles)
    else:
        # Tiny shapes gain nothing from threads, and one thread keeps test timings steadier.
        torch.set_num_threads(1)
        gpu_name = f"cpu: {_cpu_name()}"
        memory_bytes, l2_bytes = None, 0
        meter = PowerMeter(None)
        profile = gpu_profile or "cpu"
    out = Path(out) if out is not None else Path("hardware_profiles") / "measured" / profile / f"{model.name}-tp{tp}"
    if (out / "raw.csv").exists() and not force:
        raise CalibrationError(
            f"{out / 'raw.csv'}: exists (raw data is never overwritten; use --force or another --out)"
        )

    capacity = kv_capacity_tokens(g, shard, memory_bytes)
    points, skipped = enumerate_points(g, capacity)
    if not any(p.phase == "prefill" for p in points) or not any(p.phase == "decode" for p in points):
        raise CalibrationError(f"{grid_path}: no prefill or no decode point fits (KV capacity {capacity:.0f} tokens)")

    k = min(layers_timed or g.layers_timed, shard.num_layers)
    if dev.type == "cuda":
        # L2 defence: deepen the stack until one iteration streams >= 4x L2 of distinct weights.
        per_layer = shard.layer_params * shard.dtype_bytes
        k = min(shard.num_layers, max(k, math.ceil(4 * l2_bytes / per_layer)))
    kv_tokens = max(p.kv_tokens for p in points if p.phase != "transfer")
    max_pos = max(p.max_seq_tokens for p in points if p.phase != "transfer")
    clocks_at_start = meter.device_facts()
    say(f"calibrate: {model.name} tp{tp} on {gpu_name} ({profile}); {len(points)} points, {k} layers timed")
    stack = kernels.ShardStack(shard, k, kv_tokens, max_pos, dev, seed=seed)
    method, method_reason = kernels.choose_attention(dev, shard)
    say(f"calibrate: attention {method}: {method_reason}")
    budget = budget_s if budget_s is not None else g.budget_s
    t_cfg = g.timing
    use_graphs = {
        ph: bool(g.cuda_graphs.get(ph, False)) and cuda_graphs and dev.type == "cuda" for ph in ("prefill", "decode")
    }
    timer = "cuda_events" if dev.type == "cuda" else "perf_counter"

    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    graph_failures: list[str] = []
    phase_started: dict[str, float] = {}
    interrupted = False
    loop_started = time.perf_counter()  # the budget counts measuring, not start-up
    for idx, p in enumerate(points):
        if interrupted:
            skipped.append(f"{p.describe()}: run interrupted")
            continue
        now = time.perf_counter()
        phase_started.setdefault(p.phase, now)
        share = g.phase_budget_share.get(p.phase, 1.0) * budget
        if now - phase_started[p.phase] > share or now - loop_started > budget:
            skipped.append(f"{p.describe()}: time budget of phase {p.phase} ({share:.0f} s) spent")
            continue
        try:
            row = _measure_point(
                p, idx, kernels, torch, stack, dev, method, use_graphs, t_cfg, meter, l2_bytes, graph_failures
            )
        except KeyboardInterrupt:  # SIGINT (e.g. timeout -s INT): keep what was measured
            interrupted = True
            skipped.append(f"{p.describe()}: run interrupted")
            say("calibrate: interrupted; writing the points measured so far")
            continue
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory: record, go on
            failed.append(f"{p.describe()}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            say(f"calibrate: FAILED {failed[-1]}")
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            continue
        row.update(
            device=dev.type,
            point_id=idx,
            layers_timed=k,
            num_layers=shard.num_layers,
            attention_method=method if p.phase != "transfer" else "",
            timer=timer,
        )
        rows.append(row)
    for phase in ("prefill", "decode"):
        if not any(r["phase"] == phase for r in rows):
            raise CalibrationError(f"no {phase} point could be measured; see the messages above")

    elapsed = time.perf_counter() - started
    meta: dict[str, Any] = {
        "schema_version": META_SCHEMA_VERSION,
        "kind": "simdisagg-calibration",
        "device": dev.type,
        "gpu_profile": profile,
        "gpu_name": gpu_name,
        **facts,
        "driver_version": clocks_at_start.get("driver_version"),
        "cuda_version": None if torch.version.cuda is None else str(torch.version.cuda),
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "platform": platform.platform(),
        "clocks_at_start": {k_: v for k_, v in clocks_at_start.items() if k_ != "driver_version"},
        "clocks_at_end": {k_: v for k_, v in meter.device_facts().items() if k_ != "driver_version"},
        "power_method": meter.method,
        "date": started_at.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "command_line": command_line or " ".join(sys.argv),
        "grid": {"name": g.name, "path": str(grid_path), "sha256": hashlib.sha256(grid_path.read_bytes()).hexdigest()},
        "model": model.model_dump(mode="json"),
        "tp": tp,
        "shard": shard.to_dict(),
        "layers_timed": k,
        "dtype": "bfloat16",
        "kv_capacity_tokens": None if math.isinf(capacity) else int(capacity),
        "method": {
            "scaling": f"whole-shard time = embed + layers x {shard.num_layers}/{k} + head, per repetition",
            "attention": method,
            "attention_check": method_reason,
            "kv_layout": "packed per-sequence KV buffer (cu_seqlens), each sequence reads only its own KV; no padding",
            "timer": timer,
            "cuda_graphs": use_graphs,
            "cuda_graph_failures": graph_failures,
            "repetitions": f"{t_cfg.warmup_reps} warm-ups, then {t_cfg.min_reps}..{t_cfg.max_reps} timed to about "
            f"{t_cfg.target_point_s} s; median, p10, p90, mean, std kept",
            "l2": "every layer has its own weights and KV; the stack streams >= 4x L2 of weights per repetition; "
            "copies rotate over pools >= 4x L2",
            "weights": "random normal bf16 scaled by 1/sqrt(fan_in), never zeros",
            "sampling": "greedy argmax over the shard's vocabulary slice",
            "not_measured": "tensor-parallel all-reduce (the fit models it from the GPU's intra-node bandwidth)",
        },
        "points": {"measured": len(rows), "skipped": skipped, "failed": failed},
        "complete": not failed and not interrupted and not any("budget" in s for s in skipped),
    }
    if dev.type == "cpu":
        meta["warning"] = "device=cpu: timings of the CPU test path, not a GPU profile"
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "raw.csv", rows)
    tmp = out / "meta.yaml.tmp"
    tmp.write_text(yaml.safe_dump(meta, sort_keys=False, width=120))
    os.replace(tmp, out / "meta.yaml")
    say(
        f"calibrate: wrote {len(rows)} points to {out} in {elapsed:.0f} s ({len(skipped)} skipped, {len(failed)} failed)"
    )
    return RunResult(out, rows, meta, skipped, failed)


def _measure_point(
    p: Point,
    idx: int,
    kernels: Any,
    torch: Any,
    stack: Any,
    dev: Any,
    method: str,
    use_graphs: dict[str, bool],
    t_cfg: TimingSpec,
    meter: Any,
    l2_bytes: int,
    graph_failures: list[str],
) -> dict[str, Any]:
    timing_kw = {
        "warmup_reps": t_cfg.warmup_reps,
        "min_reps": t_cfg.min_reps,
        "max_reps": t_cfg.max_reps,
        "target_s": t_cfg.target_point_s,
        "meter": meter,
    }
    row: dict[str, Any] = {c: "" for c in RAW_COLUMNS}
    row["phase"] = p.phase
    if p.phase == "transfer":
        copier = kernels.Copier(p.transfer_kind, p.nbytes, dev, rotate_bytes=4 * l2_bytes)
        timing = kernels.measure([("copy", 1.0, copier.copy)], dev, **timing_kw)
        del copier
        row.update(transfer_kind=p.transfer_kind, bytes=p.nbytes, batch_size=1, cuda_graph=0)
    else:
        if p.phase == "prefill":
            new, cached = list(p.new), list(p.cached)
        else:
            new, cached = [1] * len(p.contexts), [c - 1 for c in p.contexts]
        batch = kernels.make_batch(new, cached, stack.shard.vocab_size, dev, seed=idx)
        it = kernels.Iteration(stack, batch, method)
        parts = it.parts(stack.shard.num_layers)
        graphs: list[Any] = []
        graph_used = False
        if use_graphs[p.phase]:
            try:
                parts, graphs = kernels.capture_graphs(parts)
                graph_used = True
            except Exception as exc:  # noqa: BLE001 - capture can fail for many reasons; eager still measures
                graph_failures.append(f"{p.describe()}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                torch.cuda.synchronize()
                parts = it.parts(stack.shard.num_layers)
        timing = kernels.measure(parts, dev, **timing_kw)
        del graphs
        row.update(
            batch_size=len(new),
            new_tokens=sum(p.new) if p.phase == "prefill" else len(p.contexts),
            cached_tokens=sum(p.cached) if p.phase == "prefill" else 0,
            context_tokens=sum(p.contexts) if p.phase == "decode" else 0,
            max_seq_tokens=p.max_seq_tokens,
            new_tokens_list=_fmt_list(p.new) if p.phase == "prefill" else "",
            cached_tokens_list=_fmt_list(p.cached) if p.phase == "prefill" else "",
            cuda_graph=int(graph_used),
            embed_median_s=timing.part_medians_s["embed"],
            layers_median_s=timing.part_medians_s["layers"],
            head_median_s=timing.part_medians_s["head"],
        )
    row.update(timing.summary())
    row.update(n_reps=int(timing.reps_s.size), power_w_mean=timing.power_w, wall_s=round(timing.wall_s, 4))
    return row


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(RAW_COLUMNS), extrasaction="raise")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: _cell(r.get(c, "")) for c in RAW_COLUMNS})
    os.replace(tmp, path)


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v
