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
        grid = self._allreduce_grid(gpus, graph)
        lo, hi = grid.range_of("message_size")
        if elements < lo:
            self.extrapolated["allreduce_small"] += 1
            return grid((lo,)) * 1e-3
        if elements > hi:
            self.extrapolated["allreduce_large"] += 1
            return grid((hi,)) * elements / hi * 1e-3
        return grid((elements,)) * 1e-3

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
