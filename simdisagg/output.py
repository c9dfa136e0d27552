"""Writing results: atomic file writes, and an output folder written as one unit.

Every file is written to a temporary name in the same folder, flushed and fsynced, then
renamed over the target, so a crash or Ctrl-C never leaves a half-written file.

A run's folder (``summary.json``, ``requests.parquet``/``.csv``, ``config.json``,
``timeseries.parquet``, the baseline's ``baseline_*`` files) is written as one unit by
:func:`write_folder`: every file goes to a staging folder first; then the previous run's
``manifest.json`` is removed, the previous run's files that this run does not write are
removed, the new files are moved in, and ``manifest.json`` (run id, command, versions, wall
times, the SHA-256 of every file) is written last. A folder with a manifest holds exactly the
files it lists, all from one run; a folder without one was interrupted mid-write, and the
next run into it clears it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: The manifest of an output folder, written last.
MANIFEST = "manifest.json"
#: Files a run may write (``prefix`` ``""`` or ``"baseline_"``): removed from a folder that has
#: no manifest to list the previous run's files, so old and new files are never mixed.
RUN_FILES = tuple(
    f"{prefix}{name}"
    for prefix in ("", "baseline_")
    for name in ("summary.json", "requests.parquet", "requests.csv", "config.json", "timeseries.parquet")
)
_STAGING_PREFIX = ".simdisagg-staging-"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then atomically rename ``tmp_path`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        # mkstemp creates 0600; results are ordinary files (honour the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write text atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order, NaN written as null)."""
    atomic_write_text(path, json.dumps(_clean(data), indent=2) + "\n")


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if obj != obj or obj in (float("inf"), float("-inf")) else obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _clean(obj.item())
    return obj


def requests_frame(result: Any, slo: Any) -> Any:
    """One row per request: every timestamp (seconds), token counts, instances, status."""
    import pandas as pd

    from simdisagg.metrics import request_latencies, slo_met
    from simdisagg.sim.recorder import STATUS_NAMES, TIME_COLUMNS

    rec = result.recorder
    lat = request_latencies(result)
    cols: dict[str, Any] = {
        "request_id": result.request_ids,
        "session_index": result.session_index,
        "status": [STATUS_NAMES[int(x)] for x in rec.status],
        "reject_reason": [rec.reject_reason.get(i, "") for i in range(rec.n)],
        "input_tokens": result.input_tokens,
        "cached_tokens": rec.cached_tokens,
        "output_tokens": result.output_tokens,
    }
    for name in TIME_COLUMNS:
        cols[name] = rec.times[name]
    cols["ttft_s"] = lat["ttft_s"]
    cols["tpot_s"] = lat["tpot_s"]
    cols["e2e_s"] = lat["e2e_s"]
    cols["slo_met"] = slo_met(result, slo)
    cols["prefill_instance"] = rec.prefill_instance
    cols["decode_instance"] = rec.decode_instance
    cols["kv_bytes_sent"] = rec.kv_bytes_sent
    tenants = getattr(result, "tenants", None)
    if tenants is not None:
        import numpy as np

        # Requests that name no tenant get an empty name (index -1: the last entry).
        names = np.array([*tenants.names, ""], dtype=object)
        cols["tenant"] = names[tenants.index]
        cols["admitted_at"] = tenants.admitted_at
        cols["quota_wait_s"] = tenants.admitted_at - rec.times["arrival_at"]
        cols["tenant_slo_met"] = tenant_slo_met(result, slo)
    return pd.DataFrame(cols)


def tenant_slo_met(result: Any, slo: Any) -> Any:
    """Per request: completed within its tenant's SLO (the run's ``slo`` for tenants without
    one and requests without a tenant)."""
    import numpy as np

    from simdisagg.metrics import request_latencies
    from simdisagg.sim.recorder import STATUS_COMPLETED

    tenants = result.tenants
    lat = request_latencies(result)
    targets = [s or slo for s in tenants.slos] + [slo]
    ttft_s = np.array([x.ttft_s for x in targets])[tenants.index]
    tpot_s = np.array([x.tpot_s for x in targets])[tenants.index]
    ok_tpot = np.isnan(lat["tpot_s"]) | (lat["tpot_s"] <= tpot_s)
    return (result.recorder.status == STATUS_COMPLETED) & (lat["ttft_s"] <= ttft_s) & ok_tpot


def write_results(out_dir: Path, summary: dict[str, Any], frame: Any, config: dict[str, Any], prefix: str = "") -> None:
    """Write ``summary.json``, ``requests.parquet``, ``requests.csv`` and ``config.json``
    (each atomically) into ``out_dir``; ``prefix`` names a second run's files. A command
    writes a whole folder with :func:`write_folder` instead."""
    for name, write in result_files(summary, frame, config, prefix).items():
        atomic_write(Path(out_dir) / name, write)


def result_files(
    summary: dict[str, Any], frame: Any, config: dict[str, Any], prefix: str = "", timeseries: Any = None
) -> dict[str, Callable[[Path], None]]:
    """The writers of one run's files, by file name, for :func:`write_folder`; with
    ``timeseries`` (the frame of :func:`simdisagg.sim.timeseries.timeseries_frame`), its
    ``timeseries.parquet`` too."""
    files: dict[str, Callable[[Path], None]] = {
        f"{prefix}summary.json": lambda p: p.write_text(json.dumps(_clean(summary), indent=2) + "\n"),
        f"{prefix}requests.parquet": lambda p: frame.to_parquet(p, index=False),
        f"{prefix}requests.csv": lambda p: frame.to_csv(p, index=False),
        f"{prefix}config.json": lambda p: p.write_text(json.dumps(_clean(config), indent=2) + "\n"),
    }
    if timeseries is not None:
        files[f"{prefix}timeseries.parquet"] = lambda p: timeseries.to_parquet(p, index=False)
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _previous_files(out_dir: Path, known: tuple[str, ...]) -> list[str]:
    """Files an earlier run left: those its manifest lists, else every name a run may write."""
    try:
        listed = json.loads((out_dir / MANIFEST).read_text()).get("files", {})
        names = [n for n in listed if isinstance(n, str) and "/" not in n.strip("/") and not n.startswith(".")]
    except (OSError, ValueError, AttributeError):
        names = []
    return list(dict.fromkeys(names + list(known)))


def write_folder(
    out_dir: Path,
    files: Mapping[str, Callable[[Path], None]],
    record: Mapping[str, Any],
    known: tuple[str, ...] = RUN_FILES,
) -> dict[str, Any]:
    """Write ``files`` (name → writer of that file) into ``out_dir`` as one unit, the
    manifest last (see the module docstring); returns the manifest.

    ``record`` goes into the manifest (command, versions, wall times...). ``known`` are the
    names an earlier run of the same command may have left, removed when not written now."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"{_STAGING_PREFIX}*"):  # left by a run killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out_dir))
    try:
        digests: dict[str, dict[str, Any]] = {}
        for name, write in files.items():
            target = staging / name
            write(target)
            with target.open("rb") as handle:
                os.fsync(handle.fileno())
            digests[name] = {"sha256": _sha256(target), "bytes": target.stat().st_size}
        old = _previous_files(out_dir, known)
        # From here until the new manifest is written the folder has none: it is incomplete.
        (out_dir / MANIFEST).unlink(missing_ok=True)
        for name in old:
            if name not in files and name != MANIFEST:
                (out_dir / name).unlink(missing_ok=True)
        umask = os.umask(0)
        os.umask(umask)
        for name in files:
            os.chmod(staging / name, 0o666 & ~umask)
            os.replace(staging / name, out_dir / name)
        manifest = {
            "format": "simdisagg-output",
            "version": 1,
            "run_id": uuid.uuid4().hex,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **record,
            "files": digests,
        }
        atomic_write_json(out_dir / MANIFEST, manifest)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_ROWS: list[tuple[str, str, str]] = [
    ("requests completed / rejected", "completed", "{:d}"),
    ("TTFT mean / p50 / p90 / p99 (ms)", "ttft", "lat"),
    ("TPOT mean / p50 / p90 / p99 (ms)", "tpot", "lat"),
    ("ITL mean / p50 / p90 / p99 (ms)", "itl", "lat"),
    ("E2E mean / p50 / p90 / p99 (ms)", "e2el", "lat"),
    ("throughput req/s | out tok/s", "request_throughput", "thr"),
    ("output tok/s per GPU", "output_throughput_per_gpu", "{:.1f}"),
    ("SLO attainment", "slo_attainment", "{:.1%}"),
    ("goodput (req/s within SLO)", "request_goodput", "{:.2f}"),
    ("prefill busy | KV mean / peak", "prefill", "pool"),
    ("decode busy | KV mean / peak", "decode", "pool"),
    ("aggregated busy | KV mean / peak", "aggregated", "pool"),
    ("link busy | KV transfer mean / p99 (ms)", "link", "link"),
    ("prefill queue mean / p99 (ms)", "prefill_queue", "stage"),
    ("decode admission wait mean / p99 (ms)", "decode_admission_wait", "stage"),
    ("prefix-cached prompt tokens", "cached_prompt_tokens", "{:,d}"),
    ("prefix hit fraction (prompt tokens)", "prompt_prefix_hit_fraction", "{:.1%}"),
    ("session slowdown mean / p90", "session_slowdown", "session"),
    ("GPU-hours", "gpu_hours", "{:.2f}"),
    ("P95 TTFT | P95 ITL (ms)", "p95", "p95"),
    ("mean instances prefill | decode | aggregated", "instances", "instances"),
    ("failures | retries | recomputed tokens", "faults", "faults"),
]


def _fmt(x: Any, spec: str = "{:.1f}") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return spec.format(x)


def _cell(s: dict[str, Any], key: str, kind: str) -> str:
    if kind == "lat":
        return " / ".join(_fmt(s.get(f"{p}_{key}_ms")) for p in ("mean", "median", "p90", "p99"))
    if kind == "thr":
        return f"{_fmt(s.get('request_throughput'), '{:.2f}')} | {_fmt(s.get('output_throughput'), '{:,.0f}')}"
    if kind == "p95":
        return f"{_fmt(s.get('p95_ttft_ms'), '{:.0f}')} | {_fmt(s.get('p95_itl_ms'))}"
    if kind == "instances":
        if s.get("mean_prefill_instances") is None and s.get("mean_aggregated_instances") is None:
            return "-"
        return " | ".join(_fmt(s.get(f"mean_{p}_instances"), "{:.2f}") for p in ("prefill", "decode", "aggregated"))
    if kind == "faults":
        if s.get("instance_failures") is None:
            return "-"
        return f"{s['instance_failures']:d} | {s['retries']:d} | {s['recomputed_tokens']:,d}"
    if kind == "session":
        if s.get("mean_session_slowdown") is None:
            return "-"
        return f"{_fmt(s['mean_session_slowdown'], '{:.2f}')} / {_fmt(s.get('p90_session_slowdown'), '{:.2f}')}"
    if kind == "pool":
        if s.get(f"{key}_busy_fraction") is None:
            return "-"
        return (
            f"{_fmt(s[f'{key}_busy_fraction'], '{:.0%}')} | "
            f"{_fmt(s[f'{key}_kv_mean_fraction'], '{:.0%}')} / {_fmt(s[f'{key}_kv_peak_fraction'], '{:.0%}')}"
        )
    if kind == "link":
        if s.get("link_busy_fraction") is None:
            return "-"
        return (
            f"{_fmt(s['link_busy_fraction'], '{:.1%}')} | {_fmt(s.get('mean_kv_transfer_ms'), '{:.2f}')}"
            f" / {_fmt(s.get('p99_kv_transfer_ms'), '{:.2f}')}"
        )
    if kind == "stage":
        return f"{_fmt(s.get(f'mean_{key}_ms'))} / {_fmt(s.get(f'p99_{key}_ms'))}"
    if key == "completed":
        return f"{s['completed']:,d} / {s['rejected']:,d}"
    return _fmt(s.get(key), kind)


def summary_table(columns: dict[str, dict[str, Any]], title: str) -> Any:
    """A rich table with one column per run (e.g. disaggregated and aggregated). Text is
    taken literally (a label with ``[brackets]`` keeps them)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")
    table.add_column("metric", style="bold")
    for name in columns:
        table.add_column(escape(name), justify="right")
    for label, key, kind in _ROWS:
        cells = [_cell(s, key, kind) for s in columns.values()]
        if all(c == "-" for c in cells):
            continue
        table.add_row(label, *cells)
    return table


def tenant_table(summary: dict[str, Any], title: str) -> Any:
    """A rich table of one run's per-tenant figures (``summary["tenants"]``), a row each
    (times in ms, goodput in requests/s within the tenant's SLO)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")
    for name in ("tenant", "prio", "done/rej (quota)", "TTFT p50/p99", "TPOT p99", "quota wait", "SLO met (target)",
                 "goodput"):  # fmt: skip
        table.add_column(name, justify="left" if name == "tenant" else "right")
    for tenant, t in (summary.get("tenants") or {}).items():
        table.add_row(
            escape(tenant), str(t["priority"]),
            f"{t['completed']:,d}/{t['rejected']:,d} ({t['rejected_over_quota']:,d})",
            f"{_fmt(t['median_ttft_ms'], '{:.0f}')}/{_fmt(t['p99_ttft_ms'], '{:.0f}')}",
            _fmt(t["p99_tpot_ms"]),
            _fmt(t["mean_quota_wait_ms"], "{:.0f}"),
            f"{_fmt(t['slo_attainment'], '{:.1%}')} ({t['slo_attainment_target']:.0%})",
            _fmt(t["request_goodput"], "{:.2f}"),
        )  # fmt: skip
    return table
