"""A measured kernel database on disk: AIConfigurator's per-GPU, per-framework kernel tables.

Layout (as AIConfigurator ships it, ``systems/data/`` of ai-dynamo/aiconfigurator)::

    <root>/<gpu>/<op family>/<framework>/<version>/<table>.parquet   (+ collection_meta.yaml)
    <root>/SOURCE_COMMIT, <root>/LICENSE

:class:`KernelDatabase` answers one kernel's latency in **seconds** for a shape, from the
tables of one GPU and one framework version:

* ``gemm_s(m, n, k, dtype)`` -- ``gemm_perf``: ``m`` tokens (rows of the activation), ``n``
  output features, ``k`` input features; dtypes ``bfloat16``, ``fp8`` (per-tensor scales),
  ``fp8_block`` (128x128 block scales), ``nvfp4``.
* ``context_attention_s(batch, isl, heads, kv_heads, head_dim, kv_dtype)`` --
  ``context_attention_perf``: causal attention of ``batch`` prompts of ``isl`` new tokens each,
  heads of one GPU's shard.
* ``generation_attention_s(batch, context, heads, kv_heads, head_dim, kv_dtype)`` --
  ``generation_attention_perf``: one decode token per sequence over ``context`` tokens of KV
  (the table's ``isl + step``).
* ``allreduce_s(gpus, elements, graph)`` -- ``custom_allreduce_perf``: one all-reduce of
  ``elements`` BF16 values over ``gpus`` GPUs, from a CUDA graph (decode) or eager (prefill).
* ``moe_s(tokens, hidden, inter, topk, experts, moe_tp, moe_ep, dtype, distribution)`` --
  ``moe_perf``: one GPU's fused mixture-of-experts kernel (routing, gate/up and down GEMMs of the
  experts it holds) when ``tokens`` tokens enter the layer, experts spread ``moe_ep`` ways and
  each expert's MLP ``moe_tp`` ways; ``distribution`` names the expert load imbalance the table
  was measured under (:data:`MOE_DISTRIBUTIONS`).
* ``context_mla_s(batch, isl, heads, kv_dtype)`` / ``generation_mla_s(batch, context, heads,
  kv_dtype)`` -- ``context_mla_perf`` / ``generation_mla_perf``: DeepSeek-style latent attention
  of one GPU's ``heads`` (the table's ``num_heads`` is per GPU).
* ``mla_bmm_s(op, tokens, heads, dtype)`` -- ``mla_bmm_perf``: the per-head batched matmuls that
  absorb the latent up-projections into the query (``mla_gen_pre``) and the output
  (``mla_gen_post``) in decode.

Where a table has several kernels for the same operation (``kernel_source``), the one measured
on the most shapes is used: the framework's default path, measured on its full grid. Lookups
interpolate with :class:`~simdisagg.kerneldb.grid.LogGrid`. Going beyond a table is done only
in the ways listed in :data:`EXTRAPOLATIONS`, each counted in :attr:`KernelDatabase.extrapolated`
so that an import reports how many of its points needed it; anything else raises
:class:`~simdisagg.kerneldb.grid.OutsideGridError`.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simdisagg.errors import CalibrationError
from simdisagg.kerneldb.grid import LogGrid, OutsideGridError

#: GPU profile name -> the database's GPU folder.
GPU_FOLDERS: dict[str, str] = {"h100-sxm": "h100_sxm", "h200": "h200_sxm", "b200": "b200_sxm"}

#: Weight precision (``precision.weights``) -> the GEMM table's ``gemm_dtype``.
GEMM_DTYPES: dict[str, str] = {"bf16": "bfloat16", "fp8": "fp8", "fp8_block": "fp8_block", "fp4": "nvfp4"}

#: KV-cache precision -> the attention tables' ``kv_cache_dtype``.
KV_DTYPES: dict[str, str] = {"bf16": "bfloat16", "fp8": "fp8"}

#: Expert precision (``precision.experts``, else ``weights``) -> the MoE table's ``moe_dtype``.
MOE_DTYPES: dict[str, str] = {
    "bf16": "bfloat16",
    "fp8": "fp8",
    "fp8_block": "fp8_block",
    "fp4": "nvfp4",
    "mxfp4": "w4a16_mxfp4",
    "int4": "int4_wo",
}

#: Expert load imbalance the MoE table measures (its ``distribution`` column): tokens routed
#: uniformly, or by a power law of exponent 1.01 or 1.2 over the experts.
MOE_DISTRIBUTIONS: tuple[str, ...] = ("balanced", "power_law_1.01", "power_law_1.2")
#: The imbalance used unless one is named: the one AIConfigurator's own MoE model queries
#: (``aic-core/.../sdk/models`` MoE builder; see ``../shared`` notes on the kernel tables).
DEFAULT_MOE_DISTRIBUTION = "power_law_1.2"

#: The only ways a lookup goes beyond a measured table, each exact or a bound for the kernel:
EXTRAPOLATIONS: dict[str, str] = {
    "gemm_split": "GEMM larger than the table in m, n or k: the sum of equal blocks that lie in it "
    "(row, column or reduction blocks of one GEMM are independent GEMMs)",
    "gemm_small": "GEMM with n or k below the table's smallest (32): timed as the smallest (a smaller "
    "GEMM is not slower)",
    "attention_batch_scaled": "attention batch beyond the measured cells for its length: the largest "
    "measured batch at that length, scaled by the batch (sequences are independent and the kernel is "
    "already saturated there)",
    "context_attention_flops": "prompt longer than the table's longest: the longest measured time "
    "scaled by causal (query, key) pairs (compute-bound at that length)",
    "generation_attention_linear": "decode context longer than the table's longest: linear in context "
    "from the two longest measured (memory-bound KV streaming)",
    "heads_interpolated": "head count absent from the table: linear in heads between the nearest "
    "measured head counts with the same KV heads (or proportional to heads from the nearest)",
    "allreduce_small": "all-reduce message below the table's smallest: timed as the smallest",
    "allreduce_large": "all-reduce message above the table's largest: linear in size from the largest",
    "alltoall_small": "all-to-all message below the table's smallest: timed as the smallest",
    "alltoall_large": "all-to-all message above the table's largest: linear in size from the largest",
    "moe_tp_as_ep": "MoE expert tensor parallelism the table did not measure (moe_tp > 1): the same "
    "GPUs with whole experts spread over them (moe_tp 1, moe_ep = moe_tp x moe_ep), the same per-GPU work "
    "under even load",
    "moe_tokens_linear": "MoE layer with more tokens than the table's largest (16384): linear in tokens "
    "from the two largest measured (every expert already busy: the work grows with the tokens)",
    "mla_batch_scaled": "latent attention batch beyond the measured cells for its length: the largest "
    "measured batch at that length, scaled by the batch",
    "mla_length_scaled": "latent attention longer than the table's longest: prefill scaled by causal "
    "(query, key) pairs, decode linear in context from the two longest measured",
    "mla_bmm_tokens_linear": "latent-attention batched matmul with more tokens than measured: linear in tokens",
    "sliding_window_equivalent": "sliding-window attention layer: the full-attention kernel at the "
    "length with the same (query, key) pairs (prefill) or KV read (decode) as the window allows",
}


@dataclass(frozen=True, slots=True)
class DatabaseSource:
    """Where a set of tables comes from (written into every imported profile)."""

    root: str
    gpu_folder: str
    device_name: str
    framework: str
    version: str
    source_commit: str
    licence: str

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping for ``meta.yaml``."""
        return {name: getattr(self, name) for name in self.__slots__}


def _read_parquet(path: Path) -> Any:
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: cannot read kernel table ({exc})") from exc


def _only_version(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: no {what} in the kernel database")
    versions = sorted(p for p in folder.iterdir() if p.is_dir())
    if len(versions) != 1:
        names = ", ".join(p.name for p in versions) or "none"
        raise CalibrationError(f"{folder}: expected one version folder, found {names}")
    return versions[0]


class KernelDatabase:
    """Latencies of one GPU's kernels under one framework (see module docstring)."""

    def __init__(self, root: Path | str, gpu: str, framework: str) -> None:
        self.root = Path(root)
        if not (self.root / "SOURCE_COMMIT").is_file():
            raise CalibrationError(f"{self.root}: not a kernel database (no SOURCE_COMMIT file)")
        if gpu not in GPU_FOLDERS:
            raise CalibrationError(
                f"GPU '{gpu}' has no tables in the kernel database (known: {', '.join(GPU_FOLDERS)})"
            )
        self.gpu, self.framework = gpu, framework
        self.gpu_folder = GPU_FOLDERS[gpu]
        base = self.root / self.gpu_folder
        if not base.is_dir():
            raise CalibrationError(f"{base}: the kernel database has no folder for GPU '{gpu}'")
        self._gemm_dir = _only_version(base / "gemm" / framework, f"{framework} GEMM tables for {gpu}")
        self._attn_dir = _only_version(base / "attention" / framework, f"{framework} attention tables for {gpu}")
        self._comm_dir = _only_version(base / "comm" / framework, f"{framework} all-reduce tables for {gpu}")
        self.version = self._gemm_dir.name
        self._base = base
        #: How many lookups went beyond a table, by kind (keys of :data:`EXTRAPOLATIONS`).
        self.extrapolated: Counter[str] = Counter()

    # -- provenance -------------------------------------------------------------------------
    @functools.cached_property
    def source(self) -> DatabaseSource:
        """Database, framework, version, device and source commit of these tables."""
        gemm = self._table(self._gemm_dir / "gemm_perf.parquet")
        device = str(gemm["device"].iloc[0]) if "device" in gemm.columns and len(gemm) else self.gpu_folder
        licence_path = self.root / "LICENSE"
        licence = "Apache-2.0" if licence_path.is_file() and "Apache" in licence_path.read_text()[:2000] else "see LICENSE"
        return DatabaseSource(
            root=self.root.name,
            gpu_folder=self.gpu_folder,
            device_name=device,
            framework=self.framework,
            version=self.version,
            source_commit=(self.root / "SOURCE_COMMIT").read_text().strip(),
            licence=licence,
        )

    @functools.lru_cache(maxsize=32)  # noqa: B019 - one database object per import
    def _table(self, path: Path) -> Any:
        if not path.is_file():
            raise CalibrationError(f"{path}: kernel table missing")
        return _read_parquet(path)

    @staticmethod
    def _main_kernel(frame: Any) -> Any:
        """Rows of the kernel measured on the most shapes (the framework's default path)."""
        if "kernel_source" not in frame.columns or frame.empty:
            return frame
        counts = frame["kernel_source"].value_counts()
        top = counts.index[0]
        return frame[frame["kernel_source"] == top]

    # -- GEMM --------------------------------------------------------------------------------
    @functools.lru_cache(maxsize=16)  # noqa: B019
    def _gemm_grid(self, dtype: str) -> LogGrid:
        frame = self._table(self._gemm_dir / "gemm_perf.parquet")
        rows = self._main_kernel(frame[frame["gemm_dtype"] == dtype])
        if rows.empty:
            known = ", ".join(sorted(set(frame["gemm_dtype"]))) or "none"
            raise CalibrationError(
                f"{self._gemm_dir}: no '{dtype}' GEMMs for {self.gpu} under {self.framework} (tables have: {known})"
            )
        return _grid(rows, ("m", "n", "k"), f"{self.gpu}/{self.framework} gemm {dtype}")

    def gemm_rows(self, dtype: str) -> list[int]:
        """The token counts (``m``) the GEMM table measures at ``dtype``."""
        return [int(v) for v in self._gemm_grid(dtype).axes[0]]

    def gemm_s(self, m: int, n: int, k: int, dtype: str) -> float:
        """Seconds of one ``m x k`` by ``k x n`` GEMM at ``dtype`` (see :data:`GEMM_DTYPES`)."""
        grid = self._gemm_grid(dtype)
        pieces = 1
        dims = []
        for name, size in (("m", m), ("n", n), ("k", k)):
            lo, hi = grid.range_of(name)
            if size > hi:
                blocks = math.ceil(size / hi)
                pieces *= blocks
                size = size / blocks
                self.extrapolated["gemm_split"] += 1
            elif size < lo:
                size = lo
                self.extrapolated["gemm_small"] += 1
            dims.append(size)
        return pieces * self._gemm_cell(grid, dims) * 1e-3

    def _gemm_cell(self, grid: LogGrid, dims: list[float]) -> float:
        """Milliseconds at ``dims``; a shape in a cell with an unmeasured corner is split into
        two halves along its largest dimension (independent GEMMs) until it is measured."""
        try:
            return grid(dims)
        except OutsideGridError:
            axis = max(range(3), key=lambda d: dims[d] / grid.axes[d][0])
            if dims[axis] <= grid.axes[axis][0] * 2:
                raise
            self.extrapolated["gemm_split"] += 1
            half = list(dims)
            half[axis] = dims[axis] / 2.0
            return 2.0 * self._gemm_cell(grid, half)

    # -- attention ---------------------------------------------------------------------------
    def _attention_rows(self, table: str, head_dim: int, kv_dtype: str) -> Any:
        frame = self._table(self._attn_dir / f"{table}.parquet")
        rows = frame[(frame["head_dim"] == head_dim) & (frame["kv_cache_dtype"] == kv_dtype)]
        if "window_size" in rows.columns:
            rows = rows[rows["window_size"] == 0]
        if "attn_dtype" in rows.columns and (rows["attn_dtype"] == "bfloat16").any():
            rows = rows[rows["attn_dtype"] == "bfloat16"]
        if rows.empty:
            raise CalibrationError(
                f"{self._attn_dir / table}: no rows for head_dim {head_dim}, KV cache {kv_dtype} on {self.gpu}"
            )
        return self._main_kernel(rows)

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _attention_grid(self, table: str, heads: int, kv_heads: int, head_dim: int, kv_dtype: str) -> LogGrid | None:
        rows = self._attention_rows(table, head_dim, kv_dtype)
        rows = rows[(rows["num_heads"] == heads) & (rows["num_key_value_heads"] == kv_heads)]
        if rows.empty:
            return None
        rows = rows.assign(context=rows["isl"] + rows["step"])
        second = "isl" if table == "context_attention_perf" else "context"
        return _grid(
            rows, ("batch_size", second), f"{self.gpu}/{self.framework} {table} h{heads}/kv{kv_heads}/d{head_dim}"
        )

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _heads_available(self, table: str, kv_heads: int, head_dim: int, kv_dtype: str) -> list[int]:
        rows = self._attention_rows(table, head_dim, kv_dtype)
        return sorted(int(h) for h in set(rows.loc[rows["num_key_value_heads"] == kv_heads, "num_heads"]))

    def _attention_s(
        self, table: str, batch: int, length: float, heads: int, kv_heads: int, head_dim: int, kv_dtype: str
    ) -> float:
        grid = self._attention_grid(table, heads, kv_heads, head_dim, kv_dtype)
        if grid is not None:
            return self._attention_on_grid(grid, table, batch, length) * 1e-3
        available = self._heads_available(table, kv_heads, head_dim, kv_dtype)
        if not available:
            raise CalibrationError(
                f"{self._attn_dir / table}: no head counts measured with {kv_heads} KV heads, head_dim {head_dim}"
            )
        self.extrapolated["heads_interpolated"] += 1
        below = [h for h in available if h < heads]
        above = [h for h in available if h > heads]

        def at(h: int) -> float:
            g = self._attention_grid(table, h, kv_heads, head_dim, kv_dtype)
            assert g is not None
            return self._attention_on_grid(g, table, batch, length)

        if below and above:
            lo, hi = below[-1], above[0]
            t_lo, t_hi = at(lo), at(hi)
            return (t_lo + (t_hi - t_lo) * (heads - lo) / (hi - lo)) * 1e-3
        nearest = below[-1] if below else above[0]
        return at(nearest) * heads / nearest * 1e-3

    def _attention_on_grid(self, grid: LogGrid, table: str, batch: int, length: float) -> float:
        """Milliseconds at (batch, length), splitting or scaling beyond the grid as documented."""
        second = grid.names[1]
        lo_len, hi_len = grid.range_of(second)
        if length > hi_len:
            if table == "context_attention_perf":
                self.extrapolated["context_attention_flops"] += 1
                pairs = length * (length + 1.0)
                return self._attention_on_grid(grid, table, batch, hi_len) * pairs / (hi_len * (hi_len + 1.0))
            self.extrapolated["generation_attention_linear"] += 1
            axis = grid.axes[1]
            below = float(axis[-2]) if axis.size > 1 else hi_len / 2
            t_hi = self._attention_on_grid(grid, table, batch, hi_len)
            t_below = self._attention_on_grid(grid, table, batch, below)
            slope = max(t_hi - t_below, 0.0) / (hi_len - below)
            return t_hi + slope * (length - hi_len)
        length = max(length, lo_len)
        lo_b, hi_b = grid.range_of("batch_size")
        if batch < lo_b:
            batch = int(lo_b)
        if batch <= hi_b and grid.inside((batch, length)):
            return grid((batch, length))
        # The largest batch measured at this length, scaled up to ``batch``.
        for measured in reversed(grid.axes[0].tolist()):
            if measured < batch and grid.inside((measured, length)):
                self.extrapolated["attention_batch_scaled"] += 1
                return grid((measured, length)) * batch / measured
        return grid((batch, length))  # raises OutsideGridError naming the cell

    def context_attention_s(
        self, batch: int, isl: float, heads: int, kv_heads: int, head_dim: int, kv_dtype: str
    ) -> float:
        """Seconds of causal prefill attention over ``batch`` prompts of ``isl`` tokens each."""
        return self._attention_s("context_attention_perf", batch, isl, heads, kv_heads, head_dim, kv_dtype)

    def generation_attention_s(
        self, batch: int, context: float, heads: int, kv_heads: int, head_dim: int, kv_dtype: str
    ) -> float:
        """Seconds of one decode step's attention: ``batch`` sequences of ``context`` tokens each."""
        return self._attention_s("generation_attention_perf", batch, context, heads, kv_heads, head_dim, kv_dtype)

    # -- all-reduce --------------------------------------------------------------------------
    @functools.lru_cache(maxsize=16)  # noqa: B019
    def _allreduce_grid(self, gpus: int, graph: bool) -> LogGrid:
        frame = self._table(self._comm_dir / "custom_allreduce_perf.parquet")
        rows = frame[frame["num_gpus"] == gpus]
        if rows.empty:
            have = ", ".join(str(int(g)) for g in sorted(set(frame["num_gpus"])))
            raise CalibrationError(f"{self._comm_dir}: no all-reduce over {gpus} GPUs (measured: {have})")
        sources = sorted(set(rows["kernel_source"]))
        wanted = [s for s in sources if ("graph" in s.lower()) == graph]
        # TensorRT-LLM's table has one kernel (its own, used eager and in graphs alike).
        rows = rows[rows["kernel_source"] == (wanted or sources)[0]]
        return _grid(rows, ("message_size",), f"{self.gpu}/{self.framework} all-reduce x{gpus}")

    def allreduce_s(self, gpus: int, elements: float, graph: bool) -> float:
        """Seconds of one all-reduce of ``elements`` BF16 values across ``gpus`` GPUs."""
        if gpus <= 1:
            return 0.0
        return self._message_s(self._allreduce_grid(gpus, graph), elements, "allreduce")

    def _message_s(self, grid: LogGrid, elements: float, kind: str) -> float:
        """Seconds of one collective of ``elements`` values from its ``message_size`` table: the
        smallest measured time below the table, linear in size above it (counted as
        ``<kind>_small`` / ``<kind>_large``)."""
        lo, hi = grid.range_of("message_size")
        if elements < lo:
            self.extrapolated[f"{kind}_small"] += 1
            return grid((lo,)) * 1e-3
        if elements > hi:
            self.extrapolated[f"{kind}_large"] += 1
            return grid((hi,)) * elements / hi * 1e-3
        return grid((elements,)) * 1e-3

    # -- all-to-all (NCCL) ----------------------------------------------------------------------
    @functools.cached_property
    def has_alltoall(self) -> bool:
        """Whether the database measured NCCL all-to-all on this GPU (``comm/nccl``; the H200
        slice has none)."""
        folder = self._base / "comm" / "nccl"
        if not folder.is_dir():
            return False
        try:
            frame = self._table(_only_version(folder, "NCCL tables") / "nccl_perf.parquet")
        except CalibrationError:
            return False
        return bool((frame["op_name"] == "alltoall").any())

    @functools.lru_cache(maxsize=16)  # noqa: B019
    def _alltoall_grid(self, gpus: int) -> LogGrid:
        folder = _only_version(self._base / "comm" / "nccl", "NCCL tables")
        frame = self._table(folder / "nccl_perf.parquet")
        rows = frame[(frame["op_name"] == "alltoall") & (frame["num_gpus"] == gpus) & (frame["nccl_dtype"] == "half")]
        if rows.empty:
            have = ", ".join(str(int(g)) for g in sorted(set(frame.loc[frame["op_name"] == "alltoall", "num_gpus"])))
            raise CalibrationError(f"{folder}: no all-to-all over {gpus} GPUs (measured: {have or 'none'})")
        # Keys are measured two or three times; the first row is kept, as the tables' own loader does.
        rows = rows.drop_duplicates(subset=["message_size"], keep="first")
        return _grid(rows, ("message_size",), f"{self.gpu} nccl alltoall x{gpus}")

    def alltoall_s(self, gpus: int, elements: float) -> float:
        """Seconds of one NCCL all-to-all of ``elements`` BF16 values per GPU (each GPU's send
        buffer) across ``gpus`` GPUs, from the measured table."""
        if gpus <= 1:
            return 0.0
        return self._message_s(self._alltoall_grid(gpus), elements, "alltoall")

    # -- mixture of experts ------------------------------------------------------------------
    def _optional_dir(self, family: str) -> Path:
        return _only_version(self._base / family / self.framework, f"{self.framework} {family} tables for {self.gpu}")

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _moe_grid(
        self, dtype: str, hidden: int, inter: int, topk: int, experts: int, moe_tp: int, moe_ep: int, distribution: str
    ) -> LogGrid:
        folder = self._optional_dir("moe")
        frame = self._table(folder / "moe_perf.parquet")
        rows = frame[
            (frame["moe_dtype"] == dtype)
            & (frame["hidden_size"] == hidden)
            & (frame["inter_size"] == inter)
            & (frame["topk"] == topk)
            & (frame["num_experts"] == experts)
        ]
        if rows.empty:
            have = sorted(
                {f"{d} h{h}/i{i}/top{k}/e{e}" for d, h, i, k, e in frame[
                    ["moe_dtype", "hidden_size", "inter_size", "topk", "num_experts"]].itertuples(index=False)}
            )
            raise CalibrationError(
                f"{folder}: no {dtype} MoE of hidden {hidden}, expert size {inter}, top-{topk} of {experts} on "
                f"{self.gpu} under {self.framework} (measured: {', '.join(have)})"
            )
        rows = rows[(rows["moe_tp_size"] == moe_tp) & (rows["moe_ep_size"] == moe_ep) & (rows["distribution"] == distribution)]
        if rows.empty:
            raise CalibrationError(
                f"{folder}: {dtype} MoE h{hidden}/i{inter}/top{topk}/e{experts} not measured at moe_tp {moe_tp}, "
                f"moe_ep {moe_ep}, distribution {distribution} on {self.gpu} under {self.framework}"
            )
        rows = self._main_kernel(rows)
        return _grid(rows, ("num_tokens",), f"{self.gpu}/{self.framework} moe {dtype} h{hidden}/i{inter} tp{moe_tp}/ep{moe_ep}")

    def moe_token_counts(self, hidden: int, inter: int, topk: int, experts: int, dtype: str) -> list[int]:
        """Token counts (``num_tokens``) the MoE table measures for this expert shape."""
        frame = self._table(self._optional_dir("moe") / "moe_perf.parquet")
        rows = frame[(frame["moe_dtype"] == dtype) & (frame["hidden_size"] == hidden) & (frame["inter_size"] == inter)
                     & (frame["topk"] == topk) & (frame["num_experts"] == experts)]
        return sorted(int(t) for t in set(rows["num_tokens"]))

    def moe_s(
        self,
        tokens: float,
        hidden: int,
        inter: int,
        topk: int,
        experts: int,
        moe_tp: int,
        moe_ep: int,
        dtype: str,
        distribution: str = DEFAULT_MOE_DISTRIBUTION,
    ) -> float:
        """Seconds of one GPU's MoE kernel for a layer that ``tokens`` tokens enter (see module
        docstring); ``dtype`` is a ``moe_dtype`` (:data:`MOE_DTYPES`)."""
        if distribution not in MOE_DISTRIBUTIONS:
            raise CalibrationError(f"unknown expert load distribution '{distribution}' (known: {', '.join(MOE_DISTRIBUTIONS)})")
        try:
            grid = self._moe_grid(dtype, hidden, inter, topk, experts, moe_tp, moe_ep, distribution)
        except CalibrationError:
            if moe_tp == 1:
                raise
            # Expert tensor parallelism the table did not measure: the same GPUs holding whole
            # experts instead (each GPU does the same share of the work when the load is even).
            grid = self._moe_grid(dtype, hidden, inter, topk, experts, 1, moe_tp * moe_ep, distribution)
            self.extrapolated["moe_tp_as_ep"] += 1
        lo, hi = grid.range_of("num_tokens")
        tokens = max(float(tokens), lo)
        if tokens > hi:
            self.extrapolated["moe_tokens_linear"] += 1
            axis = grid.axes[0]
            below = float(axis[-2]) if axis.size > 1 else hi / 2
            t_hi, t_below = grid((hi,)), grid((below,))
            slope = max(t_hi - t_below, 0.0) / (hi - below)
            if slope == 0.0:
                slope = t_hi / hi
            return (t_hi + slope * (tokens - hi)) * 1e-3
        return grid((tokens,)) * 1e-3

    # -- latent attention (MLA) ---------------------------------------------------------------
    @functools.lru_cache(maxsize=32)  # noqa: B019
    def _mla_grid(self, table: str, heads: int, kv_dtype: str) -> LogGrid:
        folder = self._optional_dir("mla")
        frame = self._table(folder / f"{table}.parquet")
        rows = frame[(frame["num_heads"] == heads) & (frame["kv_cache_dtype"] == kv_dtype)]
        if rows.empty:
            have = ", ".join(str(int(h)) for h in sorted(set(frame["num_heads"])))
            raise CalibrationError(
                f"{folder / table}: no latent attention of {heads} heads per GPU with KV cache {kv_dtype} "
                f"(measured heads: {have})"
            )
        rows = self._main_kernel(rows)
        rows = rows.assign(context=rows["isl"] + rows["step"])
        second = "isl" if table == "context_mla_perf" else "context"
        return _grid(rows, ("batch_size", second), f"{self.gpu}/{self.framework} {table} h{heads}")

    def _mla_s(self, table: str, batch: int, length: float, heads: int, kv_dtype: str) -> float:
        grid = self._mla_grid(table, heads, kv_dtype)
        second = grid.names[1]
        lo_len, hi_len = grid.range_of(second)
        if length > hi_len:
            self.extrapolated["mla_length_scaled"] += 1
            at_top = self._mla_s(table, batch, hi_len, heads, kv_dtype)
            if table == "context_mla_perf":
                return at_top * length * (length + 1.0) / (hi_len * (hi_len + 1.0))
            axis = grid.axes[1]
            below = float(axis[-2]) if axis.size > 1 else hi_len / 2
            t_below = self._mla_s(table, batch, below, heads, kv_dtype)
            return at_top + max(at_top - t_below, 0.0) / (hi_len - below) * (length - hi_len)
        length = max(length, lo_len)
        batch = max(int(batch), int(grid.range_of("batch_size")[0]))
        if grid.inside((batch, length)):
            return grid((batch, length)) * 1e-3
        for measured in reversed(grid.axes[0].tolist()):
            if measured < batch and grid.inside((measured, length)):
                self.extrapolated["mla_batch_scaled"] += 1
                return grid((measured, length)) * batch / measured * 1e-3
        return grid((batch, length)) * 1e-3  # raises OutsideGridError naming the cell

    def context_mla_s(self, batch: int, isl: float, heads: int, kv_dtype: str) -> float:
        """Seconds of latent-attention prefill over ``batch`` prompts of ``isl`` new tokens."""
        return self._mla_s("context_mla_perf", batch, isl, heads, kv_dtype)

    def generation_mla_s(self, batch: int, context: float, heads: int, kv_dtype: str) -> float:
        """Seconds of one latent-attention decode step: ``batch`` sequences of ``context`` tokens."""
        return self._mla_s("generation_mla_perf", batch, context, heads, kv_dtype)

    @functools.lru_cache(maxsize=16)  # noqa: B019
    def _mla_bmm_grid(self, op: str, heads: int, dtype: str) -> LogGrid:
        folder = self._optional_dir("mla_bmm")
        frame = self._table(folder / "mla_bmm_perf.parquet")
        rows = frame[(frame["op_name"] == op) & (frame["num_heads"] == heads) & (frame["bmm_dtype"] == dtype)]
        if rows.empty:
            raise CalibrationError(f"{folder}: no {op} batched matmul of {heads} heads at {dtype}")
        return _grid(self._main_kernel(rows), ("num_tokens",), f"{self.gpu}/{self.framework} {op} h{heads} {dtype}")

    def mla_bmm_dtypes(self) -> set[str]:
        """The ``bmm_dtype`` values the latent-attention batched-matmul table measures."""
        frame = self._table(self._optional_dir("mla_bmm") / "mla_bmm_perf.parquet")
        return {str(d) for d in frame["bmm_dtype"]}

    def mla_bmm_s(self, op: str, tokens: float, heads: int, dtype: str) -> float:
        """Seconds of one ``mla_gen_pre`` or ``mla_gen_post`` batched matmul over ``tokens`` tokens."""
        grid = self._mla_bmm_grid(op, heads, dtype)
        lo, hi = grid.range_of("num_tokens")
        tokens = max(float(tokens), lo)
        if tokens > hi:
            self.extrapolated["mla_bmm_tokens_linear"] += 1
            return grid((hi,)) * tokens / hi * 1e-3
        return grid((tokens,)) * 1e-3

    # -- derived figures ---------------------------------------------------------------------
    @functools.cached_property
    def streaming_bandwidth_bytes_per_s(self) -> float:
        """The best weight-streaming bandwidth the BF16 GEMM table shows: ``n*k*2`` bytes over
        the time of a one-row GEMM (``m = 1`` reads the whole weight once), at its best shape.
        A measured achievable HBM bandwidth, used for the small memory-bound ops."""
        frame = self._table(self._gemm_dir / "gemm_perf.parquet")
        rows = self._main_kernel(frame[(frame["gemm_dtype"] == "bfloat16") & (frame["m"] == 1)])
        if rows.empty:
            raise CalibrationError(f"{self._gemm_dir}: no one-row BF16 GEMMs to read a bandwidth from")
        bw = rows["n"] * rows["k"] * 2.0 / (rows["latency"] * 1e-3)
        return float(bw.max())

    @functools.cached_property
    def smallest_kernel_s(self) -> float:
        """The shortest kernel in the GEMM table: a floor for any one kernel's time (launch and
        completion of a kernel that does almost nothing)."""
        frame = self._table(self._gemm_dir / "gemm_perf.parquet")
        return float(frame["latency"].min()) * 1e-3


def _grid(rows: Any, axes: tuple[str, ...], label: str) -> LogGrid:
    """A :class:`LogGrid` from table rows (duplicate shapes averaged)."""
    mean = rows.groupby(list(axes))["latency"].mean()
    values = [np.array(sorted(set(mean.index.get_level_values(i) if len(axes) > 1 else mean.index)), dtype=np.float64)
              for i in range(len(axes))]
    grid = np.full(tuple(v.size for v in values), np.nan)
    index = [np.searchsorted(v, np.asarray(mean.index.get_level_values(i) if len(axes) > 1 else mean.index, dtype=np.float64))
             for i, v in enumerate(values)]
    grid[tuple(index)] = mean.to_numpy(dtype=np.float64)
    return LogGrid(axes, values, grid, label)
