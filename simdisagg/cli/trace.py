"""``simdisagg trace``: convert public traces, generate synthetic ones, and describe them.

Thin typer commands (parse → call → print); the work is in :mod:`simdisagg.importers`,
:mod:`simdisagg.generate` and :mod:`simdisagg.tracestats`. Errors are raised as
:class:`~simdisagg.errors.SimdisaggError` subclasses; the main CLI (``simdisagg.cli``) mounts
``trace_app`` and turns them into a one-line message and exit status 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from simdisagg.errors import ConfigError
from simdisagg.trace import Trace, write_jsonl

trace_app = typer.Typer(
    name="trace",
    help="Convert public traces to the native JSONL format, generate synthetic traces, show statistics.",
    no_args_is_help=True,
    add_completion=False,
)

_console = Console()


def _summary_line(trace: Trace) -> str:
    sessions = len(set(trace.session_index[trace.session_index >= 0].tolist()))
    closed = int(trace.closed_loop.sum())
    return (
        f"{len(trace):,} requests, {sessions:,} sessions, {closed:,} closed-loop; "
        f"{int(trace.input_tokens.sum()):,} input / {int(trace.output_tokens.sum()):,} output tokens"
    )


@trace_app.command("convert")
def convert(
    source: Annotated[str, typer.Argument(help="trace file, folder or glob (kv-cache-tester sessions)")],
    out: Annotated[Path, typer.Argument(help="native JSONL file to write")],
    format: Annotated[
        str, typer.Option("--format", help="auto, native, azure, burstgpt, kvct, kvct-csv or tracelab")
    ] = "auto",
    session_rate: Annotated[
        float | None, typer.Option("--session-rate", help="agentic sessions per second (Poisson starts)")
    ] = None,
    session_arrival: Annotated[
        str | None, typer.Option("--session-arrival", help="poisson or recorded (agentic formats)")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the session arrival process")] = 0,
    zero_output: Annotated[
        str | None, typer.Option("--zero-output", help="error, skip or one (default depends on the format)")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="keep only this BurstGPT model")] = None,
    hash_block_tokens: Annotated[
        int | None, typer.Option("--hash-block-tokens", help="tokens per hash block (native/Azure/BurstGPT)")
    ] = None,
) -> None:
    """Convert a trace to native JSONL (written atomically) and say what was skipped or changed."""
    from simdisagg.importers import DEFAULT_SESSIONS_PER_S, import_trace

    result = import_trace(
        source,
        format=format,
        hash_block_tokens=hash_block_tokens,
        zero_output=zero_output,  # type: ignore[arg-type]
        model=model,
        session_arrival=session_arrival,  # type: ignore[arg-type]
        sessions_per_s=DEFAULT_SESSIONS_PER_S if session_rate is None else session_rate,
        seed=seed,
    )
    header: dict[str, Any] = {"converted_from": str(source), "source_format": result.format}
    if result.notes or result.changes:
        header["import_notes"] = list(result.notes) + list(result.changes)
    write_jsonl(result.trace, out, header=header)
    _console.print(f"wrote {out} ({result.format}): {_summary_line(result.trace)}")
    for note in result.notes:
        _console.print(f"  {note}")
    for change in result.changes:
        _console.print(f"  [yellow]{change}[/yellow]")
    if not result.changes:
        _console.print("  nothing skipped or changed")


def _jsonable(obj: Any) -> Any:
    """NaN and infinities become null so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _parse_params(items: list[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param expects key=value, got '{item}'")
        params[key.strip()] = value.strip()
    return params


@trace_app.command("generate")
def generate(
    out: Annotated[Path, typer.Option("--out", help="native JSONL file to write")],
    kind: Annotated[str, typer.Option("--kind", help="agentic, chat, rag or coding")] = "agentic",
    sessions: Annotated[
        int | None, typer.Option("--sessions", help="agentic sessions (default 10)")
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option("--requests", help="open-loop requests (default 1000); agentic: add sessions until this many"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="random seed")] = 0,
    horizon_s: Annotated[
        float | None,
        typer.Option("--horizon-s", help="keep only requests arriving within this many seconds (a window)"),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="override a generator parameter, key=value (repeatable)"),
    ] = None,
) -> None:
    """Generate a synthetic trace; the parameters used are recorded in the file's header line."""
    from simdisagg.generate import KINDS, generate_trace, make_params

    if kind not in KINDS:
        raise ConfigError(f"unknown --kind '{kind}'; expected one of {', '.join(KINDS)}")
    params = make_params(kind, _parse_params(param))
    trace = generate_trace(
        kind,  # type: ignore[arg-type]  # checked against KINDS above
        num_sessions=sessions,
        num_requests=requests,
        seed=seed,
        horizon_s=horizon_s,
        params=params,
    )
    header = {
        "generator": {
            "kind": kind,
            "seed": seed,
            "sessions": sessions,
            "requests": requests,
            "horizon_s": horizon_s,
            "params": params.model_dump(mode="json"),
        }
    }
    write_jsonl(trace, out, header=header)
    _console.print(f"wrote {out}: {_summary_line(trace)}")


@trace_app.command("stats")
def stats(
    file: Annotated[str, typer.Argument(help="trace (any supported format)")],
    other: Annotated[str | None, typer.Argument(help="a second trace to show side by side")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    session_rate: Annotated[
        float | None, typer.Option("--session-rate", help="agentic sessions per second (Poisson starts)")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the session arrival process")] = 0,
) -> None:
    """Show request counts, lengths, sessions, closed-loop share, prefix reuse and burstiness."""
    from simdisagg.importers import DEFAULT_SESSIONS_PER_S, import_trace
    from simdisagg.tracestats import format_stats_table, trace_stats

    rate = DEFAULT_SESSIONS_PER_S if session_rate is None else session_rate
    results = [import_trace(f, sessions_per_s=rate, seed=seed) for f in [file] + ([other] if other else [])]
    all_stats = [trace_stats(r.trace) for r in results]
    if as_json:
        payload: Any = all_stats[0] if other is None else all_stats
        typer.echo(json.dumps(_jsonable(payload), indent=2))
        return
    _console.print(format_stats_table(all_stats[0], all_stats[1] if other else None))
    for r in results:
        for change in r.changes:
            _console.print(f"[yellow]{r.trace.source}: {change}[/yellow]")
