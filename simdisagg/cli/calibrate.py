"""The ``simdisagg calibrate`` and ``simdisagg fit`` commands.

Thin typer commands: parse, resolve profiles, call :mod:`calibrate.harness` /
:mod:`simdisagg.fit` / :mod:`simdisagg.derive`, print. :mod:`simdisagg.cli` registers them on the
main app (``app.command("calibrate")(calibrate_command)``, ``app.command("fit")(fit_command)``);
errors are :class:`~simdisagg.errors.SimdisaggError` subclasses, turned into one line by the
app's error mapping. ``python -m simdisagg calibrate|fit ...`` runs them from a checkout on
``PYTHONPATH`` (``calibrate/run_on_device.sh`` does, where the package may not be installed).

torch is imported only when a calibration starts; ``fit`` never needs it.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from simdisagg.errors import CalibrationError, ConfigError
from simdisagg.hardware import ModelShape, ProfileStore


def _resolve_model(model: str, store: ProfileStore) -> ModelShape:
    """A model profile by name, or a ``.yaml`` file holding one (e.g. a tiny test shape)."""
    path = Path(model)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        try:
            return ModelShape.model_validate(yaml.safe_load(path.read_text()))
        except Exception as exc:  # pydantic or YAML error: one line for the user
            raise ConfigError(f"{path}: not a valid model shape ({str(exc).splitlines()[0]})") from exc
    return store.model(model)


def calibrate_command(
    model: Annotated[
        str,
        typer.Option("--model", help="Model profile name (hardware_profiles/models/<name>.yaml) or a model YAML path."),
    ],
    tp: Annotated[
        int, typer.Option("--tp", min=1, help="Tensor-parallel degree: the shard measured is 1/tp of the model.")
    ] = 1,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder (default: hardware_profiles/measured/<gpu>/<model>-tp<tp>/)."),
    ] = None,
    grid: Annotated[str, typer.Option("--grid", help="Grid name in calibrate/grids/ or a grid YAML path.")] = "default",
    device: Annotated[
        str, typer.Option("--device", help="cuda, or cpu for the tiny-shape test path (output labelled cpu).")
    ] = "cuda",
    gpu: Annotated[
        str | None,
        typer.Option("--gpu", help="GPU profile name for the output (default: guessed from the device name)."),
    ] = None,
    layers: Annotated[
        int | None,
        typer.Option("--layers", min=1, help="Layers timed per iteration (scaled to the model) (default: grid)."),
    ] = None,
    budget_s: Annotated[
        float | None, typer.Option("--budget-s", help="Hard cap on measuring time in seconds (default: grid).")
    ] = None,
    cuda_graphs: Annotated[
        bool,
        typer.Option("--cuda-graphs/--no-cuda-graphs", help="Replay decode steps from CUDA graphs, as engines do."),
    ] = True,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights and token ids.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing raw.csv.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the points and the estimated time; measure nothing.")
    ] = False,
    profiles_dir: Annotated[
        Path | None, typer.Option("--profiles-dir", help="Extra folder of hardware profiles, searched first.")
    ] = None,
) -> None:
    """Time the real kernels of a model shard on this GPU and write raw.csv + meta.yaml."""
    store = ProfileStore(profiles_dir)
    shape = _resolve_model(model, store)
    if dry_run:
        _dry_run(shape, tp, grid, gpu, layers, store)
        return
    if device == "cpu" and out is None:
        raise CalibrationError("--device cpu needs --out: CPU timings never go into hardware_profiles/")
    from calibrate.harness import run_calibration

    argv = [Path(sys.argv[0]).name, *sys.argv[1:]]
    result = run_calibration(
        shape,
        tp,
        out,
        grid=grid,
        device=device,
        gpu_profile=gpu,
        known_gpu_profiles=store.names("gpus"),
        layers_timed=layers,
        budget_s=budget_s,
        cuda_graphs=cuda_graphs,
        seed=seed,
        force=force,
        command_line=shlex.join(argv),
    )
    typer.echo(f"wrote {result.out / 'raw.csv'} ({len(result.rows)} points) and meta.yaml")
    if not result.meta["complete"]:
        typer.echo(f"incomplete: {len(result.skipped)} skipped, {len(result.failed)} failed (see meta.yaml)")
    typer.echo(f"next: simdisagg fit {result.out}")


def _dry_run(shape: ModelShape, tp: int, grid: str, gpu: str | None, layers: int | None, store: ProfileStore) -> None:
    from calibrate.harness import (
        enumerate_points,
        estimate_seconds,
        kv_capacity_tokens,
        load_grid,
    )
    from simdisagg.costmodel.fitted import ShardShape

    shard = ShardShape.of(shape, tp)
    g, path = load_grid(grid)
    name = gpu or "h100-sxm"
    try:
        profile = store.gpu(name)
        memory = profile.hbm_capacity_bytes.value
        peak, bw = profile.dense_bf16_flops_per_s.value, profile.hbm_bandwidth_bytes_per_s.value
    except ConfigError:
        memory, peak, bw = 80e9, 989e12, 3.35e12
        name += " (profile not found: H100 SXM figures)"
    capacity = kv_capacity_tokens(g, shard, memory)
    points, skipped = enumerate_points(g, capacity)
    est = estimate_seconds(g, shard, points, peak_flops=peak, hbm_bytes_per_s=bw, layers_timed=layers)
    counts = {ph: sum(p.phase == ph for p in points) for ph in ("prefill", "decode", "transfer")}
    typer.echo(f"grid {path}: {counts} points on {name}, KV capacity {capacity:.0f} tokens")
    for s in skipped:
        typer.echo(f"  skip {s}")
    typer.echo("estimated seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in est.items()))


def _derived_root(folder: Path) -> Path:
    """``<root>`` of ``<root>/measured/<gpu>/<model>-tp<k>``; else the measured folder itself."""
    folder = folder.resolve()
    if folder.parent.parent.name == "measured":
        return folder.parent.parent.parent
    return folder


def fit_command(
    folder: Annotated[Path, typer.Argument(help="Measured folder holding raw.csv and meta.yaml.")],
    derive_to: Annotated[
        list[str] | None,
        typer.Option("--derive-to", help="GPU profile to derive a profile for from this fit (repeatable)."),
    ] = None,
    derived_root: Annotated[
        Path | None,
        typer.Option(
            "--derived-root", help="Root for derived/<gpu>/<model>-tp<k>/ (default: the root above measured/)."
        ),
    ] = None,
    folds: Annotated[int, typer.Option("--folds", min=2, help="Folds of the held-out split by grid point.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fold shuffle.")] = 0,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Draw fit_plot.png (matplotlib).")] = True,
    profiles_dir: Annotated[
        Path | None, typer.Option("--profiles-dir", help="Extra folder of hardware profiles, searched first.")
    ] = None,
) -> None:
    """Fit the cost model to raw.csv: write fit.json, fit_report.md and fit_plot.png beside it."""
    from simdisagg.fit import fit_measured, write_fit

    result = fit_measured(folder, profiles_dir=profiles_dir, folds=folds, seed=seed)
    written = write_fit(folder, result, plot=plot, profiles_dir=profiles_dir)
    typer.echo(f"{result.fit['label']}: wrote {', '.join(p.name for p in written)} in {folder}")
    for name, spec in result.fit["phases"].items():
        e = spec["held_out_error"]
        typer.echo(
            f"  {name:<13} {spec['chosen']:<13} held-out APE median {100 * e['median_ape']:.1f} % "
            f"p95 {100 * e['p95_ape']:.1f} % max {100 * e['max_ape']:.1f} %"
        )
    if not derive_to:
        return
    from simdisagg.derive import derive_fit, render_derivation

    store = ProfileStore(profiles_dir)
    source = store.gpu(result.fit["gpu"])
    root = derived_root or _derived_root(Path(folder))
    for target_name in derive_to:
        derived = derive_fit(result.fit, source, store.gpu(target_name))
        dest = root / "derived" / target_name / f"{result.fit['shard']['model']}-tp{result.fit['shard']['tp']}"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "fit.json").write_text(json.dumps(derived, indent=1) + "\n")
        (dest / "derivation.md").write_text(render_derivation(derived))
        typer.echo(f"{derived['label']}: wrote {dest / 'fit.json'} (provenance derived)")


def _standalone() -> typer.Typer:
    """An app with just these two commands (for tests that need no other command)."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, help="simdisagg calibrate / fit")
    app.command("calibrate")(calibrate_command)
    app.command("fit")(fit_command)
    return app
