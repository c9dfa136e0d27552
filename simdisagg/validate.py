"""End-to-end validation: simulate measured deployments and report the error.

A validation row (the layout of AIConfigurator's published ``silicon_sample.csv``, which
``../shared/validation/`` holds for H200) is one benchmark of one serving configuration:
model, GPU, framework, precision, aggregated or disaggregated, parallelism, a concurrency
(``batch_size``) and fixed input/output lengths, with the mean TTFT and TPOT measured.

**How a row is simulated** (:func:`row_config`, :func:`row_trace`; the rows do not say how
they were measured, so this is what we assume, the usual way such rows are taken):

* ``batch_size`` closed-loop streaming clients (per attention-DP rank where that is > 1; for
  disaggregated rows the decode pool's batch per rank and worker, or the row's
  ``silicon_concurrency``), each sending ``requests_per_client`` (10) requests one after
  another, every request exactly ``isl`` prompt tokens and ``osl`` answer tokens (output length
  forced, no early stop). No prefix caching (benchmark prompts are random tokens).
* **Burst, then steady state** (``client_start="burst"``): every client sends its first request
  at once, as a benchmark with a concurrency limit starts; each client's second request is
  then delayed by its phase in one request cycle (:func:`request_cycle_s`), so the loop runs
  spread out from there. A simulated loop of identical requests started at once would stay in
  lockstep for ever (every wave prefilled together), which the timing noise of real clients
  and servers breaks up. Every request counts in the means (no warm-up is left out by
  default): the rows' TTFT grows with concurrency the way the first wave's queue does (on the
  vLLM Llama-3.1-70B rows, mixing one burst into ten steady requests per client fits TTFT to a
  median 8 % where steady state alone misses it by 44 %). ``spread`` (no burst) and
  ``together`` (lockstep) are the alternatives, ``warmup_per_client`` leaves first requests out.
* TTFT and TPOT are averaged over requests, as vLLM's benchmark defines them.
* Aggregated rows: one instance of ``tp_size`` GPUs. Disaggregated rows: the row's prefill and
  decode worker counts and parallelism, linked by NVLink (one node) when they fit in 8 GPUs,
  else by InfiniBand NDR.
* The framework's scheduler defaults (``hardware_profiles/frameworks/<fw>.yaml``): whether
  prefill rides in decode iterations, the token budget, memory share; the decode batch is
  allowed every client (a benchmark of ``batch_size`` clients is configured to run them).
* Precision: the row's GEMM mode (``fp8``, ``fp8_block``; ``nvfp4`` only on B200). The rows do
  not name the KV-cache format: FP8 with per-tensor FP8 (or FP4) GEMMs, as AIConfigurator's
  quantisation inference pairs them (and as the Llama-3.1-70B rows show: at TP 1 the 1024/8192
  rows queue from 64 clients, not from 32, which only an FP8 cache of ~340k tokens explains);
  BF16 with ``fp8_block`` GEMMs (a BF16 checkpoint quantised block-wise when loaded).
  ``--kv-cache`` overrides it.

* Mixture-of-experts rows: the instance's ``tp_size`` GPUs per attention rank,
  ``attention_dp_size`` ranks (where it is empty but ``moe_tp_size x moe_ep_size`` exceeds
  ``tp_size``, vLLM's data parallelism without expert parallelism: their ratio) and
  ``moe_ep_size``-way expert parallelism (:func:`parallelism`); the step times are the whole
  instance's. The experts run in the checkpoint's own format where it ships one
  (:data:`CHECKPOINT_EXPERTS`: block-scaled FP8 for DeepSeek-V3/R1, MiniMax-M2.5 and
  Qwen3-235B-A22B-FP8; gpt-oss's MXFP4 experts, weight-only beside BF16 attention, for its
  "nvfp4" rows on a GPU without FP4 tensor cores).

Rows the simulator cannot run are kept with a ``status`` saying why (a model without a shape,
a precision not modelled, an instance across nodes, a disaggregated row without worker
counts, no measured profile...), counted, never dropped. A malformed row
(missing column, non-numeric value, unknown GPU or framework, a model no profile or list
names) is an error naming file, line and column.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simdisagg.config import RunConfig
from simdisagg.errors import ConfigError, SimdisaggError
from simdisagg.hardware import ModelShape, ProfileStore

#: Columns every validation CSV must have.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "model_path",
    "system",
    "backend",
    "precision",
    "mode",
    "isl",
    "osl",
    "batch_size",
    "silicon_ttft_ms",
    "silicon_tpot_ms",
)
#: Columns read as numbers where present (empty allowed unless required).
NUMERIC_COLUMNS: tuple[str, ...] = (
    "isl",
    "osl",
    "batch_size",
    "tp_size",
    "pp_size",
    "attention_dp_size",
    "moe_tp_size",
    "moe_ep_size",
    "prefill_batch_size",
    "prefill_num_workers",
    "prefill_tp_size",
    "prefill_pp_size",
    "prefill_attention_dp_size",
    "prefill_moe_tp_size",
    "prefill_moe_ep_size",
    "decode_batch_size",
    "decode_num_workers",
    "decode_tp_size",
    "decode_pp_size",
    "decode_attention_dp_size",
    "decode_moe_tp_size",
    "decode_moe_ep_size",
    "silicon_ttft_ms",
    "silicon_tpot_ms",
)
#: The database's GPU system names -> GPU profiles.
SYSTEMS: dict[str, str] = {"h100_sxm": "h100-sxm", "h200_sxm": "h200", "b200_sxm": "b200"}
#: Serving frameworks the rows name.
FRAMEWORKS: tuple[str, ...] = ("vllm", "sglang", "trtllm")
#: GEMM quantisation modes -> weight precision (``precision.weights``).
GEMM_MODES: dict[str, str] = {"fp8": "fp8", "fp8_block": "fp8_block", "nvfp4": "fp4", "bf16": "bf16", "bfloat16": "bf16"}

#: Models the published rows name that have no model shape yet, and why.
#: (Architectures from the published config.json files in ``../shared/kernels/aiconfigurator/model_configs``.)
NOT_MODELLED: dict[str, str] = {
    "moonshotai/Kimi-K2.5": "mixture-of-experts with multi-head latent attention (DeepSeek-V3 architecture), "
    "no model shape yet",
    "Qwen/Qwen3.5-397B-A17B": "mixture-of-experts with hybrid linear attention",
    "zhipuai/GLM-5": "mixture-of-experts (no published config in the shared folder)",
}

#: Expert precision of checkpoints whose experts ship quantised in a format of their own (by
#: Hugging Face id): the kernels the frameworks run for them whatever GEMM mode a row names.
#: DeepSeek-V3/R1 and MiniMax-M2.5 publish 128x128 block-scaled FP8 weights
#: (``quantization_config.weight_block_size: [128, 128]`` in their config.json, copies in
#: ``../shared/kernels/aiconfigurator/model_configs``), as does Qwen3-235B-A22B-FP8 (its model
#: card: "fine-grained fp8 quantization with block size of 128"); gpt-oss ships MXFP4 experts
#: beside BF16 attention, router, embeddings and LM head (its config.json's
#: ``quantization_config``), which a GPU without FP4 tensor cores runs weight-only (W4A16).
CHECKPOINT_EXPERTS: dict[str, str] = {
    "deepseek-ai/DeepSeek-V3": "fp8_block",
    "deepseek-ai/DeepSeek-R1": "fp8_block",
    "MiniMaxAI/MiniMax-M2.5": "fp8_block",
    "Qwen/Qwen3-235B-A22B-FP8": "fp8_block",
    "openai/gpt-oss-120b": "mxfp4",
}
#: Checkpoints that keep the non-expert weights in BF16 beside quantised experts.
CHECKPOINT_BF16_DENSE: frozenset[str] = frozenset({"openai/gpt-oss-120b"})
#: GPUs of one node: larger instances span nodes, which the kernel tables (8 GPUs at most) do
#: not measure.
GPUS_PER_NODE = 8

#: Partition columns of the error report.
PARTITION: tuple[str, ...] = ("model_path", "backend", "precision", "mode")


@dataclass
class ValidationRow:
    """One parsed row: the raw fields, where it came from, and what the simulator makes of it."""

    line: int
    fields: dict[str, str]
    numbers: dict[str, float]
    model: ModelShape | None = None
    gpu: str = ""
    framework: str = ""
    weights: str = ""
    kv_cache: str = ""
    #: Precision of a MoE model's experts where the checkpoint's differs (``None``: ``weights``).
    experts: str | None = None
    status: str = "ok"

    def number(self, column: str, default: float | None = None) -> float:
        """A numeric column (``default`` when empty)."""
        value = self.numbers.get(column, math.nan)
        if math.isnan(value):
            if default is None:
                raise ConfigError(f"line {self.line}: column '{column}' is empty")
            return default
        return value


def _model_index(store: ProfileStore) -> dict[str, ModelShape]:
    index: dict[str, ModelShape] = {}
    for name in store.names("models"):
        model = store.model(name)
        for hf_id in model.hf_ids:
            index.setdefault(hf_id, model)
    return index


def read_rows(path: Path, store: ProfileStore, kv_cache: str = "auto") -> list[ValidationRow]:
    """Parse a validation CSV; a malformed row raises :class:`ConfigError` naming file, line and
    column. Rows that are well-formed but not simulable get a ``status`` instead."""
    from simdisagg.inputs import read_text

    path = Path(path)
    # Read as UTF-8 once (a byte-order mark dropped, a bad byte named by line and column).
    handle = io.StringIO(read_text(path, "validation CSV"), newline="")
    models = _model_index(store)
    rows: list[ValidationRow] = []
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ConfigError(f"{path}:1: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        try:
            for raw in reader:
                line = reader.line_num
                rows.append(_parse_row(path, line, raw, models, kv_cache))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from exc
        except csv.Error as exc:
            raise ConfigError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from exc
    if not rows:
        raise ConfigError(f"{path}: no rows")
    return rows


def _parse_row(
    path: Path, line: int, raw: dict[str, Any], models: dict[str, ModelShape], kv_cache: str
) -> ValidationRow:
    fields = {k: ("" if v is None else str(v).strip()) for k, v in raw.items() if k is not None}
    numbers: dict[str, float] = {}
    for column in NUMERIC_COLUMNS:
        text = fields.get(column, "")
        if text == "":
            if column in REQUIRED_COLUMNS and column != "batch_size":
                raise ConfigError(f"{path}:{line}: column '{column}': empty")
            numbers[column] = math.nan
            continue
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{path}:{line}: column '{column}': '{text}' is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{path}:{line}: column '{column}': {text} is not a finite, non-negative number")
        numbers[column] = value
    for column in ("isl", "osl", "batch_size"):
        if math.isnan(numbers[column]):
            continue
        if numbers[column] < 1 or numbers[column] != int(numbers[column]):
            raise ConfigError(f"{path}:{line}: column '{column}': must be a whole number >= 1, got {fields[column]}")
    for column in ("silicon_ttft_ms", "silicon_tpot_ms"):
        if numbers[column] <= 0:
            raise ConfigError(f"{path}:{line}: column '{column}': a measured time must be > 0")
    row = ValidationRow(line, fields, numbers)
    system = fields["system"]
    if system not in SYSTEMS:
        raise ConfigError(f"{path}:{line}: column 'system': unknown GPU system '{system}' (known: {', '.join(SYSTEMS)})")
    row.gpu = SYSTEMS[system]
    backend = fields["backend"]
    if backend not in FRAMEWORKS:
        raise ConfigError(f"{path}:{line}: column 'backend': unknown framework '{backend}' (known: {', '.join(FRAMEWORKS)})")
    row.framework = backend
    mode = fields["mode"]
    if mode not in ("agg", "disagg"):
        raise ConfigError(f"{path}:{line}: column 'mode': '{mode}' (expected agg or disagg)")
    model_id = fields["model_path"]
    model = models.get(model_id)
    if model is None:
        if model_id not in NOT_MODELLED:
            raise ConfigError(
                f"{path}:{line}: column 'model_path': unknown model '{model_id}' (no model profile lists it in hf_ids)"
            )
        row.status = f"not modelled: {NOT_MODELLED[model_id]}"
        return row
    row.model = model
    gemm = fields.get("gemm_quant_mode") or fields["precision"]
    if gemm == "int4_wo":
        row.status = "not modelled: int4 weight-only quantisation"
        return row
    if gemm not in GEMM_MODES:
        raise ConfigError(f"{path}:{line}: column 'gemm_quant_mode': unknown mode '{gemm}'")
    row.weights = GEMM_MODES[gemm]
    row.kv_cache = kv_cache if kv_cache != "auto" else ("fp8" if row.weights in ("fp8", "fp4") else "bf16")
    if model.moe is not None and model_id in CHECKPOINT_EXPERTS:
        row.experts = CHECKPOINT_EXPERTS[model_id]
        if model_id in CHECKPOINT_BF16_DENSE and row.weights == "fp4" and row.gpu != "b200":
            row.weights = "bf16"
            row.kv_cache = kv_cache if kv_cache != "auto" else "bf16"
    if row.weights == "fp4" and row.gpu != "b200":
        row.status = "not modelled: FP4 GEMMs on a GPU without FP4 tensor cores"
        return row
    for column in ("pp_size", "prefill_pp_size", "decode_pp_size"):
        if row.number(column, 1.0) > 1:
            row.status = "not modelled: pipeline parallelism"
            return row
    if mode == "agg":
        for column in ("tp_size", "batch_size"):
            if math.isnan(row.numbers[column]):
                raise ConfigError(f"{path}:{line}: column '{column}': empty on an aggregated row")
    for prefix in (("",) if mode == "agg" else ("prefill_", "decode_")):
        reason = _parallelism_problem(row, prefix)
        if reason:
            row.status = f"not modelled: {reason}"
            return row
    if mode == "disagg":
        for column in ("prefill_tp_size", "decode_tp_size"):
            if math.isnan(row.numbers[column]):
                raise ConfigError(f"{path}:{line}: column '{column}': empty on a disaggregated row")
        # The published file leaves the worker counts of many disaggregated rows empty (its
        # README: "often empty"): the cluster is then unknown, and the row is kept with a status.
        missing = [c for c in ("prefill_num_workers", "decode_num_workers") if math.isnan(row.numbers[c])]
        if missing:
            row.status = f"not modelled: disaggregated row without {' and '.join(missing)} (cluster size unknown)"
            return row
        if concurrency(row) is None:
            raise ConfigError(
                f"{path}:{line}: column 'decode_batch_size': empty, and silicon_data_source names no "
                "silicon_concurrency: the row's concurrency is unknown"
            )
    return row


def parallelism(row: ValidationRow, prefix: str = "") -> tuple[int, int, int]:
    """``(tp, dp, ep)`` of an aggregated row's instance (``prefix`` ``""``) or a disaggregated
    row's prefill or decode workers (``"prefill_"``, ``"decode_"``).

    ``tp`` is the row's ``tp_size`` (GPUs per attention rank), ``dp`` its
    ``attention_dp_size`` and ``ep`` its ``moe_ep_size``. Where the attention-DP size is empty
    but the MoE layers span more GPUs than ``tp`` (``moe_tp x moe_ep > tp``: vLLM's data
    parallelism without expert parallelism), ``dp`` is that ratio."""
    tp = int(row.number(f"{prefix}tp_size", 1.0))
    if row.model is not None and row.model.moe is None:
        return tp, 1, 1  # attention DP and EP apply to MoE models only
    dp_value = row.numbers.get(f"{prefix}attention_dp_size", math.nan)
    ep = int(row.number(f"{prefix}moe_ep_size", 1.0))
    moe_tp = row.numbers.get(f"{prefix}moe_tp_size", math.nan)
    if not math.isnan(dp_value):
        dp = int(dp_value)
    elif not math.isnan(moe_tp) and moe_tp * ep > tp and (moe_tp * ep) % tp == 0:
        dp = int(moe_tp * ep) // tp
    else:
        dp = 1
    return tp, dp, ep


def _parallelism_problem(row: ValidationRow, prefix: str) -> str:
    """Why a row's parallelism cannot be simulated, or ``""``."""
    assert row.model is not None
    tp, dp, ep = parallelism(row, prefix)
    moe_tp = row.numbers.get(f"{prefix}moe_tp_size", math.nan)
    if row.model.moe is None:
        return ""
    if not math.isnan(moe_tp) and int(moe_tp) * ep != tp * dp:
        return f"{prefix}moe_tp x moe_ep = {int(moe_tp) * ep} differs from the instance's tp x dp = {tp * dp} GPUs"
    if tp * dp > GPUS_PER_NODE:
        return (f"an instance of {tp * dp} GPUs ({prefix}tp {tp} x dp {dp}) spans nodes; the kernel tables "
                f"measure at most {GPUS_PER_NODE} GPUs")
    from simdisagg.hardware import check_parallelism

    try:
        check_parallelism(row.model, tp, f"{prefix}tp", dp=dp, ep=ep)
    except ConfigError as exc:
        return str(exc)
    return ""


def concurrency(row: ValidationRow) -> int | None:
    """Clients of a row: ``batch_size`` x attention-DP ranks (aggregated); for disaggregated
    rows the decode pool's batch x its attention-DP ranks x its workers, else the
    ``silicon_concurrency`` its provenance string names."""
    if row.fields.get("mode") == "agg":
        return int(row.number("batch_size")) * int(row.number("attention_dp_size", 1.0))
    batch = row.numbers.get("decode_batch_size", math.nan)
    if not math.isnan(batch):
        return int(batch) * int(row.number("decode_attention_dp_size", 1.0)) * int(row.number("decode_num_workers", 1.0))
    for part in row.fields.get("silicon_data_source", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == "silicon_concurrency" and value.strip().isdigit():
            return int(value.strip())
    return None


@dataclass(frozen=True)
class ValidationOptions:
    """How rows are simulated (see module docstring)."""

    requests_per_client: int = 10
    warmup_per_client: int = 0
    #: ``burst``: all at once, then each client's second request is delayed by its phase in
    #: the cycle, so the loop runs spread out after the first wave (see module docstring);
    #: ``spread``: clients start evenly over one request cycle; ``together``: all at once.
    client_start: str = "burst"
    #: Mean of the exponential time a client takes from the end of one answer to its next
    #: request (seeded); 0 sends at once.
    client_turnaround_s: float = 0.0
    seed: int = 0
    cost: str = "auto"
    profiles_dir: Path | None = None
    #: Framework overheads to use instead of the profiles' (fitting tries candidates this way).
    overheads: Any = None

    def store(self) -> ProfileStore:
        """The profile store rows are simulated with."""
        store = ProfileStore(self.profiles_dir)
        return store.with_framework(self.overheads) if self.overheads is not None else store


def row_config(row: ValidationRow, store: ProfileStore, options: ValidationOptions) -> RunConfig:
    """The simulated cluster of one row (see module docstring)."""
    assert row.model is not None
    profile = store.framework(row.framework)
    sched = profile.scheduler
    tokens = sched.max_batched_tokens if sched else 8192
    memory = sched.gpu_memory_utilisation if sched else 0.9
    mixes = sched.mixes_prefill_into_decode if sched else True
    clients = concurrency(row) or 1
    cost: dict[str, Any] = {"kind": options.cost}
    base: dict[str, Any] = {
        "model": row.model.name,
        "framework": row.framework,
        "precision": {"weights": row.weights, "kv_cache": row.kv_cache,
                      **({"experts": row.experts} if row.experts and row.experts != row.weights else {})},
        "cost": cost,
        "prefix_cache": {"enabled": False},
    }
    if row.fields["mode"] == "agg":
        tp, dp, ep = parallelism(row)
        pool = {
            "count": 1, "gpu": row.gpu, "tp": tp, "dp": dp, "ep": ep, "max_batch_size": max(clients, 1),
            "max_batched_tokens": tokens, "gpu_memory_utilisation": memory,
        }
        return RunConfig.model_validate(
            {
                **base,
                "mode": "aggregated",
                "prefill": {**pool, "count": 0},
                "decode": pool,
                "aggregated": {"chunked_prefill": mixes, "tp": tp, "gpu": row.gpu},
            }
        )
    p_tp, p_dp, p_ep = parallelism(row, "prefill_")
    d_tp, d_dp, d_ep = parallelism(row, "decode_")
    p_n, d_n = int(row.number("prefill_num_workers")), int(row.number("decode_num_workers"))
    gpus = p_tp * p_dp * p_n + d_tp * d_dp * d_n
    return RunConfig.model_validate(
        {
            **base,
            "mode": "disaggregated",
            "prefill": {"count": p_n, "gpu": row.gpu, "tp": p_tp, "dp": p_dp, "ep": p_ep,
                        "max_batched_tokens": tokens, "gpu_memory_utilisation": memory},
            "decode": {"count": d_n, "gpu": row.gpu, "tp": d_tp, "dp": d_dp, "ep": d_ep,
                       "max_batch_size": max(clients, 1),
                       "max_batched_tokens": tokens, "gpu_memory_utilisation": memory},
            "link": {"preset": "nvlink4" if gpus <= 8 else "ib-ndr-400"},
        }
    )


def row_trace(row: ValidationRow, options: ValidationOptions, cycle_s: float = 0.0) -> Any:
    """Closed-loop clients of fixed-length requests (see module docstring). Client ``c`` is
    offset by ``c / clients`` of ``cycle_s``: its first request (``spread``), or its second
    (``burst``: every first request at once)."""
    from simdisagg.trace import TraceBuilder

    clients = concurrency(row) or 1
    isl, osl = int(row.number("isl")), int(row.number("osl"))
    builder = TraceBuilder(f"validation row {row.line}")
    rng = np.random.default_rng(np.random.SeedSequence([options.seed, row.line]))
    turnaround = (
        rng.exponential(options.client_turnaround_s, size=(clients, options.requests_per_client))
        if options.client_turnaround_s > 0
        else np.zeros((clients, options.requests_per_client))
    )
    line = 0
    for client in range(clients):
        previous: str | None = None
        for k in range(options.requests_per_client):
            line += 1
            rid = f"c{client}-{k}"
            phase = cycle_s * client / clients
            burst = options.client_start == "burst"
            wait = float(turnaround[client, k]) + (phase if burst and k == 1 else 0.0)
            builder.add(
                line=line, timestamp_s=0.0 if burst else phase, input_tokens=isl, output_tokens=osl,
                request_id=rid, session_id=f"c{client}", wait_for=(previous,) if previous else (),
                tool_wait_s=wait if previous else 0.0,
            )
            previous = rid
    return builder.build()


def request_cycle_s(row: ValidationRow, cfg: RunConfig, store: ProfileStore) -> float:
    """One client's request cycle on an otherwise steady system: its prefill alone, then its
    answer's decode steps in a batch of every client at their mean context."""
    from simdisagg.sim.engine import pool_cost_model

    pool = cfg.aggregated_pool() if cfg.mode == "aggregated" else cfg.decode
    prefill_pool = cfg.aggregated_pool() if cfg.mode == "aggregated" else cfg.prefill
    clients = min(concurrency(row) or 1, pool.max_batch_size)
    isl, osl = int(row.number("isl")), int(row.number("osl"))
    prefill = pool_cost_model(cfg, prefill_pool, store).prefill_time_s([isl], [0])
    decode = pool_cost_model(cfg, pool, store).decode_step_time_s(clients, int(clients * (isl + osl / 2)))
    return float(prefill + max(osl - 1, 0) * decode)


@dataclass
class RowResult:
    """The simulated means of one row, or why there are none."""

    predicted_ttft_ms: float = math.nan
    predicted_tpot_ms: float = math.nan
    status: str = "ok"
    cost_model: str = ""
    requests: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def simulate_row(row: ValidationRow, options: ValidationOptions, store: ProfileStore | None = None) -> RowResult:
    """Simulate one simulable row (see module docstring)."""
    from simdisagg.sim.engine import simulate
    from simdisagg.sim.recorder import STATUS_COMPLETED

    if row.status != "ok":
        return RowResult(status=row.status)
    store = store or options.store()
    try:
        cfg = row_config(row, store, options)
        spread = request_cycle_s(row, cfg, store) if options.client_start in ("spread", "burst") else 0.0
        trace = row_trace(row, options, spread)
        result = simulate(cfg, trace, store=store)
    except SimdisaggError as exc:
        return RowResult(status=f"cannot simulate: {exc}")
    if options.cost == "auto" and not result.cost_label.startswith("measured:"):
        prefix = "" if row.fields.get("mode") == "agg" else "decode_"
        tp, dp, ep = parallelism(row, prefix)
        par = f"tp {tp}" + (f" dp {dp}" if dp > 1 else "") + (f" ep {ep}" if ep > 1 else "")
        experts = f" experts {row.experts}" if row.experts and row.experts != row.weights else ""
        return RowResult(
            status=(
                f"no measured profile for {row.gpu}/{row.model.name if row.model else '?'} {par} "
                f"{row.weights}{experts}/kv {row.kv_cache} {row.framework} (simdisagg calibrate import)"
            ),
            cost_model=result.cost_label,
        )
    rec = result.recorder
    times = rec.times
    osl = int(row.number("osl"))
    per_client = options.requests_per_client
    keep = (np.arange(len(trace)) % per_client) >= options.warmup_per_client
    done = keep & (rec.status == STATUS_COMPLETED)
    if not done.any():
        reasons = sorted(set(rec.reject_reason.values()))[:1]
        return RowResult(status=f"nothing completed: {'; '.join(reasons) or 'unknown'}", cost_model=result.cost_label)
    ttft = times["first_token_at"][done] - times["arrival_at"][done]
    out = RowResult(
        predicted_ttft_ms=float(np.mean(ttft)) * 1e3,
        cost_model=result.cost_label,
        requests=int(done.sum()),
    )
    if osl > 1:
        tpot = (times["completed_at"][done] - times["first_token_at"][done]) / (osl - 1)
        out.predicted_tpot_ms = float(np.mean(tpot)) * 1e3
    return out


def _simulate_job(job: tuple[ValidationRow, ValidationOptions]) -> RowResult:
    row, options = job
    return simulate_row(row, options)


def simulate_rows(
    rows: Sequence[ValidationRow],
    options: ValidationOptions,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[RowResult]:
    """Every row's result, in row order (``workers`` processes; the result does not depend
    on how many)."""
    jobs = [(row, options) for row in rows]
    if workers <= 1:
        out = []
        store = options.store()
        for row in rows:
            out.append(simulate_row(row, options, store))
            if progress:
                progress(1)
        return out
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = []
        for result in pool.map(_simulate_job, jobs, chunksize=1):
            results.append(result)
            if progress:
                progress(1)
        return results


def results_frame(rows: Sequence[ValidationRow], results: Sequence[RowResult], header: Iterable[str]) -> Any:
    """Every input column, then the predictions, their signed % errors and the status."""
    import pandas as pd

    columns = list(header)
    records = []
    for row, res in zip(rows, results, strict=True):
        rec: dict[str, Any] = {c: row.fields.get(c, "") for c in columns}
        rec["predicted_ttft_ms"] = res.predicted_ttft_ms
        rec["predicted_tpot_ms"] = res.predicted_tpot_ms
        rec["ttft_error_pct"] = _signed_pct(res.predicted_ttft_ms, row.numbers["silicon_ttft_ms"])
        rec["tpot_error_pct"] = _signed_pct(res.predicted_tpot_ms, row.numbers["silicon_tpot_ms"])
        rec["status"] = res.status
        rec["cost_model"] = res.cost_model
        rec["simulated_requests"] = res.requests
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _signed_pct(predicted: float, measured: float) -> float:
    if not (math.isfinite(predicted) and math.isfinite(measured)) or measured <= 0:
        return math.nan
    return 100.0 * (predicted - measured) / measured


def error_summary(frame: Any, by: Sequence[str] = PARTITION) -> Any:
    """Per partition: rows, rows simulated, and for TTFT and TPOT the mean (MAPE), median and
    p90 of the absolute % error over the simulated rows."""
    import pandas as pd

    records = []
    groups = [((), frame)] if not by else frame.groupby(list(by), sort=True, dropna=False)
    for key, part in groups:
        ok = part[part["status"] == "ok"]
        rec: dict[str, Any] = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        rec["rows"] = len(part)
        rec["simulated"] = len(ok)
        for metric in ("ttft", "tpot"):
            err = ok[f"{metric}_error_pct"].abs().dropna()
            rec[f"{metric}_mape_pct"] = float(err.mean()) if len(err) else math.nan
            rec[f"{metric}_median_ape_pct"] = float(err.median()) if len(err) else math.nan
            rec[f"{metric}_p90_ape_pct"] = float(np.percentile(err, 90)) if len(err) else math.nan
        records.append(rec)
    return pd.DataFrame.from_records(records)


def profile_of(cost_label: str) -> str | None:
    """``<gpu>/<folder>`` of the measured profile a run's cost label names (``None`` for other
    cost models, and for runs whose two pools used different profiles)."""
    if not cost_label.startswith("measured:") or "," in cost_label:
        return None
    return cost_label.removeprefix("measured:").split("+", 1)[0]


def record_in_profiles(
    frame: Any, store: ProfileStore, *, source: str, command: str, date: str
) -> list[Path]:
    """Write each measured profile's end-to-end error (its simulated rows) into its folder as
    ``validation.json`` and refresh its ``fit_report.md``; returns the folders written."""
    from simdisagg.fit import VALIDATION_FILE, refresh_report
    from simdisagg.output import atomic_write_json

    ok = frame[frame["status"] == "ok"]
    written = []
    for profile, part in ok.groupby(ok["cost_model"].map(lambda c: profile_of(str(c)) or "")):
        if not profile:
            continue
        folder = next(
            (root / "measured" / profile for root in store.roots if (root / "measured" / profile / "fit.json").is_file()),
            None,
        )
        if folder is None:
            continue
        error = error_summary(part, ()).to_dict(orient="records")[0]
        atomic_write_json(
            folder / VALIDATION_FILE,
            {"source": source, "command": command, "date": date, "rows": len(part), "error": error,
             "row_ids": [str(x) for x in part.get("id", part.index)]},
        )
        refresh_report(folder)
        written.append(folder)
    return written


def status_counts(frame: Any) -> dict[str, int]:
    """Rows per status (the reasons rows were not simulated, and ``ok``)."""
    counts = frame["status"].map(lambda s: s if s == "ok" else s.split(":")[0] + ": " + s.split(":", 1)[-1].strip()[:80])
    return {str(k): int(v) for k, v in counts.value_counts().items()}


def default_workers() -> int:
    """Processes for row simulations: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
