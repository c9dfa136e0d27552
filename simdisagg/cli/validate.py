"""The ``simdisagg validate`` command: simulate measured deployments, report the error.

A thin typer command over :mod:`simdisagg.validate`; :mod:`simdisagg.cli` registers it on the
main app.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from simdisagg.cli.common import command_line
from simdisagg.errors import ConfigError

#: ``--client-start`` values.
CLIENT_STARTS = ("burst", "spread", "together")


def validate_command(
    rows_csv: Annotated[Path, typer.Argument(help="Measured deployments, one per row (AIConfigurator's silicon CSV layout).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for rows.csv (every input column plus predictions) and summary.json.")],
    only: Annotated[
        str | None,
        typer.Option("--only", help="Keep rows whose model_path or backend matches this pattern (default: all)."),
    ] = None,
    requests_per_client: Annotated[
        int, typer.Option("--requests-per-client", min=2, help="Requests each closed-loop client sends.")
    ] = 10,
    warmup_per_client: Annotated[
        int, typer.Option("--warmup-per-client", min=0, help="First requests of each client left out of the means.")
    ] = 0,
    client_start: Annotated[
        str, typer.Option("--client-start", help="burst (all at once, then spread), spread, or together.")
    ] = "burst",
    kv_cache: Annotated[
        str, typer.Option("--kv-cache", help="KV-cache format: auto (from the GEMM mode), bf16 or fp8.")
    ] = "auto",
    cost: Annotated[
        str, typer.Option("--cost", help="auto (measured profiles; rows without one are reported) or roofline.")
    ] = "auto",
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Processes (default: all CPUs).")] = None,
    profiles_dir: Annotated[
        Path | None,
        typer.Option("--profiles-dir", help="Extra folder of hardware profiles, searched first (default: none)."),
    ] = None,
    record: Annotated[
        bool,
        typer.Option(
            "--record", help="Write each measured profile's error on its rows into its folder (validation.json, fit_report.md)."
        ),
    ] = False,
) -> None:
    """Simulate every row's benchmark and report TTFT and TPOT error per model, framework,
    precision and mode. Rows that cannot be simulated yet are kept with their reason.

    Example: simdisagg validate ../shared/validation/aic-silicon-h200.csv --out validation-out
    """
    _validate(rows_csv, out, only, requests_per_client, warmup_per_client, client_start, kv_cache, cost, workers,
              profiles_dir, record)


def _validate(
    rows_csv: Path,
    out: Path,
    only: str | None,
    requests_per_client: int,
    warmup_per_client: int,
    client_start: str,
    kv_cache: str,
    cost: str,
    workers: int | None,
    profiles_dir: Path | None,
    record: bool,
) -> None:
    import datetime as dt

    from rich.console import Console
    from rich.progress import Progress

    from simdisagg.hardware import ProfileStore
    from simdisagg.output import atomic_write, atomic_write_json
    from simdisagg.validate import (
        ValidationOptions,
        default_workers,
        error_summary,
        read_rows,
        results_frame,
        simulate_rows,
        status_counts,
    )

    if client_start not in CLIENT_STARTS:
        raise ConfigError(f"--client-start: '{client_start}' (expected {', '.join(CLIENT_STARTS)})")
    if kv_cache not in ("auto", "bf16", "fp8"):
        raise ConfigError(f"--kv-cache: '{kv_cache}' (expected auto, bf16 or fp8)")
    if cost not in ("auto", "roofline"):
        raise ConfigError(f"--cost: '{cost}' (expected auto or roofline)")
    if warmup_per_client >= requests_per_client:
        raise ConfigError("--warmup-per-client must be smaller than --requests-per-client")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a folder")
    pattern = None
    if only:
        try:
            pattern = re.compile(only)
        except re.error as exc:
            raise ConfigError(f"--only: not a regular expression ({exc})") from None
    store = ProfileStore(profiles_dir)
    rows = read_rows(rows_csv, store, kv_cache)
    header = list(rows[0].fields)
    if pattern is not None:
        rows = [r for r in rows if pattern.search(r.fields["model_path"]) or pattern.search(r.fields["backend"])]
        if not rows:
            raise ConfigError(f"--only: no row matches '{only}'")
    options = ValidationOptions(
        requests_per_client=requests_per_client,
        warmup_per_client=warmup_per_client,
        client_start=client_start,
        cost=cost,
        profiles_dir=profiles_dir,
    )
    n_workers = workers or default_workers()
    console = Console()
    simulable = sum(r.status == "ok" for r in rows)
    console.print(
        f"{rows_csv}: {len(rows)} rows, {simulable} of a model and precision the simulator can run; "
        f"clients: {client_start} start, {requests_per_client} requests each, {warmup_per_client} warm-up; "
        f"cost {cost}; {n_workers} worker(s)",
        markup=False,
    )
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("simulating rows", total=len(rows))
        results = simulate_rows(rows, options, n_workers, progress=lambda k: bar.advance(task, k))
    frame = results_frame(rows, results, header)
    by_partition = error_summary(frame)
    overall = error_summary(frame, ())
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "rows.csv", lambda p: frame.to_csv(p, index=False))
    summary: dict[str, Any] = {
        "source": str(rows_csv),
        "rows": len(frame),
        "simulated": int((frame["status"] == "ok").sum()),
        "status": status_counts(frame),
        "overall": overall.to_dict(orient="records")[0],
        "partitions": by_partition.to_dict(orient="records"),
        "options": {
            "requests_per_client": requests_per_client,
            "warmup_per_client": warmup_per_client,
            "client_start": client_start,
            "kv_cache": kv_cache,
            "cost": cost,
        },
    }
    atomic_write_json(out / "summary.json", summary)
    _print_summary(console, by_partition, summary)
    if record:
        from simdisagg.validate import record_in_profiles

        folders = record_in_profiles(
            frame, store, source=str(rows_csv), command=command_line(),
            date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        console.print(f"recorded the end-to-end error in {len(folders)} measured profile(s)", markup=False)
    console.print(f"wrote {out / 'rows.csv'} and {out / 'summary.json'}", markup=False)


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.1f}"


def _print_summary(console: Any, by_partition: Any, summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="absolute % error: mean (MAPE) / median / p90")
    for col in ("model", "framework", "precision", "mode", "rows", "simulated", "TTFT", "TPOT"):
        table.add_column(col, justify="right" if col in ("rows", "simulated", "TTFT", "TPOT") else "left")
    for rec in by_partition.to_dict(orient="records"):
        table.add_row(
            str(rec["model_path"]), str(rec["backend"]), str(rec["precision"]), str(rec["mode"]),
            str(rec["rows"]), str(rec["simulated"]),
            f"{_pct(rec['ttft_mape_pct'])} / {_pct(rec['ttft_median_ape_pct'])} / {_pct(rec['ttft_p90_ape_pct'])}",
            f"{_pct(rec['tpot_mape_pct'])} / {_pct(rec['tpot_median_ape_pct'])} / {_pct(rec['tpot_p90_ape_pct'])}",
        )
    o = summary["overall"]
    table.add_row(
        "all", "", "", "", str(o["rows"]), str(o["simulated"]),
        f"{_pct(o['ttft_mape_pct'])} / {_pct(o['ttft_median_ape_pct'])} / {_pct(o['ttft_p90_ape_pct'])}",
        f"{_pct(o['tpot_mape_pct'])} / {_pct(o['tpot_median_ape_pct'])} / {_pct(o['tpot_p90_ape_pct'])}",
    )
    console.print(table)
    for status, count in summary["status"].items():
        if status != "ok":
            console.print(f"  not simulated: {count} x {status}", markup=False)
