"""The ``simdisagg calibrate`` group (``gpu``, ``import``, ``overheads``) and ``simdisagg fit``.

Thin typer commands: parse, resolve profiles, call :mod:`calibrate.harness` /
:mod:`simdisagg.kerneldb` / :mod:`simdisagg.overhead_fit` / :mod:`simdisagg.fit` /
:mod:`simdisagg.derive`, print. ``cli.py`` registers them on the main app
(``app.add_typer(calibrate_app, name="calibrate")``, ``app.command("fit")(fit_command)``);
errors are :class:`~simdisagg.errors.SimdisaggError` subclasses, turned into one line.
``python -m simdisagg.cli_calibrate calibrate gpu|import|overheads ...`` and ``... fit`` run
them on their own (used by ``calibrate/run_on_device.sh``, where the main CLI may not be
installed).

torch is imported only when a GPU calibration starts; nothing else needs it.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
import yaml

from simdisagg.errors import CalibrationError, ConfigError, SimdisaggError
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


calibrate_app = typer.Typer(
    help="Measure cost profiles: time this GPU's kernels (gpu), import a measured kernel database (import), "
    "fit framework overheads on end-to-end measurements (overheads).",
    no_args_is_help=True,
    add_completion=False,
)


def _guarded(body: Callable[[], None]) -> None:
    """Run a command body: a :class:`SimdisaggError` becomes one line and exit status 1."""
    try:
        body()
    except SimdisaggError as exc:
        if os.environ.get("SIMDISAGG_DEBUG") == "1":
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@calibrate_app.command("gpu")
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
    """Time the real kernels of a model shard on this GPU and write raw.csv + meta.yaml.

    Example: simdisagg calibrate gpu --model llama-3.1-8b --tp 1
    """
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


def _kernel_db(db: Path | None) -> Path:
    """The kernel database folder: ``--db``, else ``$SIMDISAGG_KERNEL_DB``."""
    if db is None:
        env = os.environ.get("SIMDISAGG_KERNEL_DB")
        if not env:
            raise ConfigError(
                "--db: give the kernel database folder (e.g. ../shared/kernels/aiconfigurator) or set SIMDISAGG_KERNEL_DB"
            )
        db = Path(env)
    if not (Path(db) / "SOURCE_COMMIT").is_file():
        raise ConfigError(f"--db: {db} is not a kernel database (no SOURCE_COMMIT file)")
    return Path(db)


def _check_fits(model: ModelShape, gpu: object, tp: int) -> None:
    """Refuse a profile whose weights leave no room for KV on ``tp`` GPUs (90 % usable)."""
    capacity = gpu.hbm_capacity_bytes.value * 0.9  # type: ignore[attr-defined]
    per_gpu = model.weight_bytes / tp
    if per_gpu >= capacity:
        raise ConfigError(
            f"{model.weight_bytes / 1e9:.0f} GB of {model.weight_format} weights over {tp} GPU(s) leave no KV memory "
            f"on {gpu.display_name}"  # type: ignore[attr-defined]
        )


@calibrate_app.command("import")
def import_command(
    model: Annotated[list[str], typer.Option("--model", help="Model profile name (repeatable).")],
    gpu: Annotated[list[str], typer.Option("--gpu", help="GPU profile: h100-sxm, h200 or b200 (repeatable).")],
    tp: Annotated[list[int], typer.Option("--tp", min=1, help="Tensor-parallel degree (repeatable).")],
    weights: Annotated[
        list[str], typer.Option("--weights", help="Weight precision: bf16, fp8, fp8_block, fp4 (repeatable).")
    ] = ["bf16"],  # noqa: B006 - typer needs a list default
    kv_cache: Annotated[list[str], typer.Option("--kv-cache", help="KV-cache precision: bf16, fp8 (repeatable).")] = [
        "bf16"
    ],  # noqa: B006
    framework: Annotated[
        list[str], typer.Option("--framework", help="Framework whose kernels: vllm, sglang, trtllm (repeatable).")
    ] = ["vllm"],  # noqa: B006
    db: Annotated[
        Path | None, typer.Option("--db", help="Kernel database folder (default: $SIMDISAGG_KERNEL_DB).")
    ] = None,
    root: Annotated[
        Path, typer.Option("--root", help="Profile root: writes measured/<gpu>/<model>-tp<k>-<w>-kv<kv>-<fw>/.")
    ] = Path("hardware_profiles"),
    fit: Annotated[bool, typer.Option("--fit/--no-fit", help="Fit each imported profile (simdisagg fit).")] = True,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out compositions.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace existing raw samples.")] = False,
    profiles_dir: Annotated[
        Path | None, typer.Option("--profiles-dir", help="Extra folder of hardware profiles, searched first.")
    ] = None,
) -> None:
    """Compose iteration times from a measured kernel database (AIConfigurator's tables) and
    write them as calibration samples, one profile per combination of the options.

    Combinations the database cannot serve (a GPU or precision without tables, a TP degree
    that does not divide the model's heads) are listed and skipped.

    Example: simdisagg calibrate import --db ../shared/kernels/aiconfigurator --gpu h200
    --model llama-3.1-8b --tp 1 --tp 2 --weights fp8 --kv-cache fp8 --framework vllm
    """

    def body() -> None:
        from simdisagg.costmodel.fitted import ShardShape
        from simdisagg.fit import fit_measured, write_fit
        from simdisagg.kerneldb.importer import ImportSpec, import_profile

        store = ProfileStore(profiles_dir)
        database = _kernel_db(db)
        models = [store.model(m) for m in model]
        for g in gpu:
            store.gpu(g)
        argv = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        done = skipped = 0
        for m in models:
            for g in gpu:
                for k in tp:
                    for w in weights:
                        for kv in kv_cache:
                            for fw in framework:
                                spec = ImportSpec(m, g, k, w, kv, fw)
                                out = root / "measured" / g / spec.folder_name
                                try:
                                    ShardShape.of(m, k)
                                    _check_fits(m.served_at(w, kv), store.gpu(g), k)
                                    import_profile(database, spec, out, command_line=argv, seed=seed, force=force)
                                except (CalibrationError, ConfigError) as exc:
                                    typer.echo(f"skip {g}/{spec.folder_name}: {exc}")
                                    skipped += 1
                                    continue
                                line = f"{g}/{spec.folder_name}: wrote {out}"
                                if fit:
                                    result = fit_measured(out, profiles_dir=profiles_dir)
                                    write_fit(out, result, plot=False, profiles_dir=profiles_dir)
                                    errors = ", ".join(
                                        f"{name} {100 * ph['held_out_error']['median_ape']:.1f}/"
                                        f"{100 * ph['held_out_error']['p95_ape']:.1f} %"
                                        for name, ph in result.fit["phases"].items()
                                    )
                                    line += f" (held-out median/p95: {errors})"
                                typer.echo(line)
                                done += 1
        typer.echo(f"{done} profile(s) imported, {skipped} skipped")
        if done == 0:
            raise CalibrationError("nothing imported")

    _guarded(body)


@calibrate_app.command("overheads")
def overheads_command(
    rows_csv: Annotated[Path, typer.Argument(help="Measured deployments (validation CSV).")],
    framework: Annotated[list[str], typer.Option("--framework", help="Framework to fit (repeatable).")],
    root: Annotated[
        Path, typer.Option("--root", help="Profile root: writes frameworks/<framework>.yaml there.")
    ] = Path("hardware_profiles"),
    terms: Annotated[
        str | None, typer.Option("--terms", help="Comma-separated overhead terms to fit (default: all fitted terms).")
    ] = None,
    max_evaluations: Annotated[int, typer.Option("--max-evaluations", min=2, help="Simulations of all rows.")] = 40,
    cross_validate: Annotated[
        bool, typer.Option("--cross-validate/--no-cross-validate", help="Leave each model+TP group out once.")
    ] = True,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Processes (default: all CPUs).")] = None,
    profiles_dir: Annotated[
        Path | None, typer.Option("--profiles-dir", help="Extra folder of hardware profiles, searched first.")
    ] = None,
) -> None:
    """Fit a framework's per-iteration and front-end overheads on end-to-end measurements
    (the rows' deployments simulated on measured profiles), and write them with their error.

    Example: simdisagg calibrate overheads ../shared/validation/aic-silicon-h200.csv --framework vllm
    """

    def body() -> None:
        import datetime as dt
        from dataclasses import replace

        from simdisagg.overhead_fit import FIT_TERMS, cross_validate as leave_group_out
        from simdisagg.overhead_fit import fit_overheads, summary
        from simdisagg.overheads import overheads_path, write_overheads
        from simdisagg.validate import ValidationOptions, default_workers, read_rows

        store = ProfileStore(profiles_dir)
        rows = read_rows(rows_csv, store)
        options = ValidationOptions(profiles_dir=profiles_dir)
        fitted_terms = tuple(t.strip() for t in terms.split(",")) if terms else tuple(FIT_TERMS)
        n_workers = workers or default_workers()
        for fw in framework:
            base = store.framework(fw)
            usable = [r for r in rows if r.framework == fw and r.status == "ok"]
            if not usable:
                raise CalibrationError(f"{rows_csv}: no simulable rows of framework '{fw}'")
            # Only rows with a measured profile say anything about the framework's overheads.
            from simdisagg.validate import simulate_rows

            probe = simulate_rows(usable, replace(options, overheads=base), n_workers)
            usable = [r for r, res in zip(usable, probe, strict=True) if res.status == "ok"]
            typer.echo(f"{fw}: fitting {', '.join(fitted_terms)} on {len(usable)} rows")
            outcome = fit_overheads(
                usable, base, options, terms=fitted_terms, workers=n_workers, max_evaluations=max_evaluations,
                progress=lambda n, e: typer.echo(f"  evaluation {n}: mean |log error| {e:.3f}"),
            )
            fit_info: dict[str, object] = {
                "rows": len(usable),
                "source": str(rows_csv),
                "terms": list(fitted_terms),
                "evaluations": outcome.evaluations,
                "fitted_rows_error": summary(usable, outcome.results),
                "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "protocol": {
                    "requests_per_client": options.requests_per_client,
                    "warmup_per_client": options.warmup_per_client,
                    "client_start": options.client_start,
                },
            }
            if cross_validate:
                held = leave_group_out(usable, base, options, outcome.overheads, terms=fitted_terms, workers=n_workers)
                if held:
                    ordered = [r for r in usable if r.line in held]
                    fit_info["held_out_groups_error"] = summary(ordered, [held[r.line] for r in ordered])
            result = outcome.overheads.model_copy(update={"provenance": "fitted", "fit": fit_info})
            path = overheads_path(root, fw)
            write_overheads(
                path, result,
                comment=f"{result.display_name or fw}: scheduler defaults and per-iteration overheads fitted on "
                "end-to-end measurements (see `fit`).",
            )
            typer.echo(f"{fw}: wrote {path}")
            for key in ("fitted_rows_error", "held_out_groups_error"):
                if key in fit_info:
                    e = fit_info[key]
                    typer.echo(
                        f"  {key.replace('_', ' ')}: TTFT MAPE {e['ttft_mape_pct']:.1f} % (median {e['ttft_median_ape_pct']:.1f}), "  # type: ignore[index]
                        f"TPOT MAPE {e['tpot_mape_pct']:.1f} % (median {e['tpot_median_ape_pct']:.1f})"  # type: ignore[index]
                    )

    _guarded(body)


def _standalone() -> typer.Typer:
    """An app with just these commands, for ``python -m simdisagg.cli_calibrate``."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, help="simdisagg calibrate / fit")
    app.add_typer(calibrate_app, name="calibrate")
    app.command("fit")(fit_command)
    return app


def main() -> None:
    """Run the standalone app, mapping simdisagg errors to one line and exit status 1."""
    try:
        _standalone()(standalone_mode=False)
    except SimdisaggError as exc:
        if os.environ.get("SIMDISAGG_DEBUG") == "1":
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except Exception as exc:  # click usage errors in standalone_mode=False
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
