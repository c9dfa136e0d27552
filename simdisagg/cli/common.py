"""What every ``simdisagg`` command shares: the error guard, duration parsing, the common
options and the dotted config keys they set.

The command modules (:mod:`simdisagg.cli` and its ``plan``, ``trace`` and ``calibrate``
modules) import from here and never from each other, so the package has no import circle.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from simdisagg.errors import ConfigError, SimdisaggError

_T = TypeVar("_T")


def _run_guarded(fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except SimdisaggError as exc:
        if os.environ.get("SIMDISAGG_DEBUG") == "1":
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*(ms|s|us)?\s*$", re.IGNORECASE)


def parse_duration_s(text: str | None, flag: str) -> float | None:
    """``500ms``, ``0.5s`` or ``0.5`` (seconds) → seconds."""
    if text is None:
        return None
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"{flag}: '{text}' is not a duration (e.g. 500ms, 0.5s)")
    value = float(m.group(1))
    unit = (m.group(2) or "s").lower()
    return value / 1000.0 if unit == "ms" else value / 1e6 if unit == "us" else value


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="cluster config (YAML or JSON)")]
PrefillOpt = Annotated[int | None, typer.Option("--prefill", help="prefill instances")]
DecodeOpt = Annotated[int | None, typer.Option("--decode", help="decode instances")]
GpuOpt = Annotated[str | None, typer.Option("--gpu", help="GPU profile of both pools, e.g. h100-sxm")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="model shape, e.g. llama-3.1-8b")]
TpOpt = Annotated[int | None, typer.Option("--tp", help="tensor-parallel GPUs per instance (both pools)")]
LinkOpt = Annotated[str | None, typer.Option("--link", help="KV link preset, e.g. ib-ndr-400")]
ModeOpt = Annotated[str | None, typer.Option("--mode", help="disaggregated | aggregated")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="random seed (default 0)")]
RateOpt = Annotated[float | None, typer.Option("--rate-scale", help="replay open-loop arrivals X times faster")]
SloTtftOpt = Annotated[str | None, typer.Option("--slo-ttft", help="TTFT target, e.g. 500ms")]
SloTpotOpt = Annotated[str | None, typer.Option("--slo-tpot", help="TPOT target, e.g. 50ms")]
ProfilesOpt = Annotated[Path | None, typer.Option("--profiles-dir", help="folder of hardware profiles")]


def build_overrides(
    *,
    prefill: int | None = None,
    decode: int | None = None,
    gpu: str | None = None,
    model: str | None = None,
    tp: int | None = None,
    link: str | None = None,
    mode: str | None = None,
    seed: int | None = None,
    rate_scale: float | None = None,
    slo_ttft: str | None = None,
    slo_tpot: str | None = None,
    chunked_prefill: bool | None = None,
    exact_steps: bool | None = None,
) -> dict[str, Any]:
    """Dotted config keys for the common CLI flags (``None`` = keep the file's value)."""
    return {
        "prefill.count": prefill,
        "decode.count": decode,
        "prefill.gpu": gpu,
        "decode.gpu": gpu,
        "model": model,
        "prefill.tp": tp,
        "decode.tp": tp,
        "link.preset": link,
        "mode": mode,
        "seed": seed,
        "rate_scale": rate_scale,
        "slo.ttft_s": parse_duration_s(slo_ttft, "--slo-ttft"),
        "slo.tpot_s": parse_duration_s(slo_tpot, "--slo-tpot"),
        "aggregated.chunked_prefill": chunked_prefill,
        "exact_steps": exact_steps,
    }
