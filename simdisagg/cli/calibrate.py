"""The ``simdisagg calibrate`` group (``gpu``, ``import``, ``overheads``) and ``simdisagg fit``.

Thin typer commands: parse, resolve profiles, call :mod:`calibrate.harness` /
:mod:`simdisagg.kerneldb` / :mod:`simdisagg.overhead_fit` / :mod:`simdisagg.fit` /
:mod:`simdisagg.derive`, print. :mod:`simdisagg.cli` registers them on the main app
(``app.add_typer(calibrate_app, name="calibrate")``, ``app.command("fit")(fit_command)``);
errors are :class:`~simdisagg.errors.SimdisaggError` subclasses, turned into one line by the
app's error mapping. ``python -m simdisagg calibrate gpu|import|overheads ...`` and ``... fit``
run them from a checkout on ``PYTHONPATH`` (``calibrate/run_on_device.sh`` does, where the
package may not be installed).

torch is imported only when a GPU calibration starts; nothing else needs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from simdisagg.cli.common import _run_guarded, command_line, guarded, make_app
from simdisagg.costmodel.fitted import ShardShape
from simdisagg.errors import CalibrationError, ConfigError
from simdisagg.hardware import ModelShape, ProfileStore


def _resolve_model(model: str, store: ProfileStore) -> ModelShape:
    """A model profile by name, or a ``.yaml`` file holding one (e.g. a tiny test shape)."""
    from simdisagg.inputs import load_settings

    path = Path(model)
    if path.suffix in (".yaml", ".yml") and path.exists():
        data = load_settings(path, "model shape")  # UTF-8, no duplicate keys, lines kept
        try:
            return ModelShape.model_validate(dict(data))
        except ValidationError as exc:
            err = exc.errors()[0]
            line = data.line_of(err["loc"])
            field = ".".join(str(x) for x in err["loc"])
            raise ConfigError(f"{path}{f':{line}' if line else ''}: field '{field}': {err['msg']}") from None
    return store.model(model)


def _check_calibrate_options(
    *, device: str, budget_s: float | None, dry_run: bool, force: bool, out: Path | None, seed: int
) -> None:
    """Options refused before any measuring: unknown devices, impossible budgets, an output
    folder that cannot be written, options that do nothing with --dry-run."""
    from simdisagg.inputs import check_output_dir

    if device not in ("cuda", "cpu"):
        raise CalibrationError(f"--device: '{device}' is not cuda or cpu")
    if budget_s is not None and not (0 < budget_s <= 7 * 86400):
        raise CalibrationError(f"--budget-s: must be above 0 and at most a week (604800 s), got {budget_s}")
    if not 0 <= seed < 2**63:
        raise CalibrationError(f"--seed: must be between 0 and 2**63 - 1, got {seed}")
    if dry_run:
        given = [flag for flag, on in (("--force", force), ("--budget-s", budget_s is not None)) if on]
        if given:
            raise CalibrationError(f"{' and '.join(given)} apply to a measurement, and --dry-run measures nothing")
    if out is not None and not dry_run:
        check_output_dir(out, "--out")


calibrate_app = make_app(
    "calibrate",
    "Measure cost profiles: time this GPU's kernels (gpu), import a measured kernel database (import), "
    "fit framework overheads on end-to-end measurements (overheads).",
)

#: A command body whose errors end in one line (the shared guard of every command).
_guarded = _run_guarded


@calibrate_app.command("gpu")
@guarded
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
        Path | None,
        typer.Option("--profiles-dir", help="Extra folder of hardware profiles, searched first (default: none)."),
    ] = None,
) -> None:
    """Time the real kernels of a model shard on this GPU and write raw.csv + meta.yaml.

    Example: simdisagg calibrate gpu --model llama-3.1-8b --tp 1
    """
    _check_calibrate_options(device=device, budget_s=budget_s, dry_run=dry_run, force=force, out=out, seed=seed)
    store = ProfileStore(profiles_dir)
    shape = _resolve_model(model, store)
    ShardShape.of(shape, tp)  # a TP the model cannot be split by is refused here
    if dry_run:
        _dry_run(shape, tp, grid, gpu, layers, store)
        return
    if device == "cpu" and out is None:
        raise CalibrationError("--device cpu needs --out: CPU timings never go into hardware_profiles/")
    from calibrate.harness import run_calibration

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
        command_line=command_line(),
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


def _check_fit_inputs(
    folder: Path, derive_to: list[str] | None, derived_root: Path | None, seed: int, profiles_dir: Path | None
) -> None:
    """What ``fit`` reads and writes, checked before any fitting: the folder and its files
    (UTF-8, meta.yaml without duplicate keys), the GPUs to derive for, the output folders."""
    from simdisagg.inputs import check_output_dir, load_settings, read_text

    if not folder.is_dir():
        raise CalibrationError(f"{folder}: {'is not a folder' if folder.exists() else 'no such folder'}")
    if not 0 <= seed < 2**63:
        raise CalibrationError(f"--seed: must be between 0 and 2**63 - 1, got {seed}")
    if derived_root is not None and not derive_to:
        raise CalibrationError("--derived-root says where --derive-to writes: give --derive-to too")
    raw, meta = folder / "raw.csv", folder / "meta.yaml"
    if raw.exists():
        read_text(raw, "raw.csv")
    if meta.exists():
        load_settings(meta, "meta.yaml")
    check_output_dir(folder, "FOLDER")
    if derive_to:
        store = ProfileStore(profiles_dir)
        for name in derive_to:
            store.gpu(name)
        if derived_root is not None:
            check_output_dir(derived_root, "--derived-root")


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
        typer.Option("--derive-to", help="GPU profile to derive a profile for, repeatable (default: none)."),
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
        Path | None,
        typer.Option("--profiles-dir", help="Extra folder of hardware profiles, searched first (default: none)."),
    ] = None,
) -> None:
    """Fit the cost model to raw.csv: write fit.json, fit_report.md and fit_plot.png beside it."""
    from simdisagg.fit import fit_measured, write_fit

    _check_fit_inputs(folder, derive_to, derived_root, seed, profiles_dir)

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


def _check_fits(model: ModelShape, gpu: object, tp: int, dp: int = 1, ep: int = 1) -> None:
    """Refuse a profile whose weights leave no room for KV on an instance of ``tp x dp`` GPUs
    (90 % usable; experts spread over all of them)."""
    from simdisagg.hardware import Parallelism, instance_kv_memory

    capacity = gpu.hbm_capacity_bytes.value * 0.9  # type: ignore[attr-defined]
    per_gpu, _ = instance_kv_memory(model, Parallelism(tp, dp, ep))
    if per_gpu >= capacity:
        raise ConfigError(
            f"{model.weight_bytes / 1e9:.0f} GB of {model.weight_format} weights over {tp * dp} GPU(s) leave no KV "
            f"memory on {gpu.display_name}"  # type: ignore[attr-defined]
        )


@calibrate_app.command("import")
def import_command(
    model: Annotated[list[str], typer.Option("--model", help="Model profile name (repeatable).")],
    gpu: Annotated[list[str], typer.Option("--gpu", help="GPU profile: h100-sxm, h200 or b200 (repeatable).")],
    tp: Annotated[list[int], typer.Option("--tp", min=1, help="Tensor-parallel degree (repeatable).")],
    weights: Annotated[
        list[str], typer.Option("--weights", help="Weight precision: bf16, fp8, fp8_block, fp4 (repeatable).")
    ] = ["bf16"],  # noqa: B006 - typer needs a list default
    kv_cache: Annotated[
        list[str], typer.Option("--kv-cache", help="KV-cache precision: bf16, fp8 (repeatable).")
    ] = ["bf16"],  # noqa: B006
    framework: Annotated[
        list[str], typer.Option("--framework", help="Framework whose kernels: vllm, sglang, trtllm (repeatable).")
    ] = ["vllm"],  # noqa: B006
    dp: Annotated[
        list[int], typer.Option("--dp", min=1, help="Attention data-parallel ranks per instance, MoE models (repeatable).")
    ] = [1],  # noqa: B006
    ep: Annotated[
        list[int], typer.Option("--ep", min=1, help="Expert-parallel degree, MoE models (repeatable).")
    ] = [1],  # noqa: B006
    experts: Annotated[
        str | None,
        typer.Option(
            "--experts",
            help="Precision of a MoE model's experts when it differs from --weights: mxfp4, int4, ... "
            "(default: as --weights).",
        ),
    ] = None,
    expert_load: Annotated[
        str,
        typer.Option(
            "--expert-load", help="Expert load imbalance of the MoE table: balanced, power_law_1.01, power_law_1.2."
        ),
    ] = "power_law_1.2",
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
        Path | None,
        typer.Option("--profiles-dir", help="Extra folder of hardware profiles, searched first (default: none)."),
    ] = None,
) -> None:
    """Compose iteration times from a measured kernel database (AIConfigurator's tables) and
    write them as calibration samples, one profile per combination of the options.

    Combinations the database cannot serve (a GPU or precision without tables, a TP degree
    that does not divide the model's heads) are listed and skipped. Mixture-of-experts models
    take --dp and --ep (attention data parallelism, expert parallelism) and are composed from
    the MoE and MLA tables as well.

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
        done = skipped = 0
        parallel = [(d, e) for d in dp for e in ep]
        for m in models:
            for g in gpu:
                for k, (d, e) in ((k, de) for k in tp for de in parallel):
                    if m.moe is None and (d, e) != (1, 1):
                        continue
                    for w in weights:
                        for kv in kv_cache:
                            for fw in framework:
                                spec = ImportSpec(
                                    m, g, k, w, kv, fw, d, e, experts, expert_load,
                                    store.gpu(g).intra_node_bandwidth_bytes_per_s.value,
                                )
                                out = root / "measured" / g / spec.folder_name
                                try:
                                    ShardShape.of(m, k, d, e)
                                    _check_fits(spec.served, store.gpu(g), k, d, e)
                                    import_profile(database, spec, out, command_line=command_line(), seed=seed, force=force)
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
    max_evaluations: Annotated[
        int, typer.Option("--max-evaluations", min=2, help="Simulations of all rows in the fit.")
    ] = 30,
    cv_evaluations: Annotated[
        int, typer.Option("--cv-evaluations", min=2, help="Simulations per left-out group in the cross-validation.")
    ] = 12,
    cross_validate: Annotated[
        bool, typer.Option("--cross-validate/--no-cross-validate", help="Leave each model+TP group out once.")
    ] = True,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Processes (default: all CPUs).")] = None,
    profiles_dir: Annotated[
        Path | None,
        typer.Option("--profiles-dir", help="Extra folder of hardware profiles, searched first (default: none)."),
    ] = None,
) -> None:
    """Fit a framework's per-iteration and front-end overheads on end-to-end measurements
    (the rows' deployments simulated on measured profiles), and write them with their error.

    Example: simdisagg calibrate overheads ../shared/validation/aic-silicon-h200.csv --framework vllm
    """

    def body() -> None:
        import datetime as dt
        from dataclasses import replace

        from simdisagg.overhead_fit import FIT_TERMS, fit_overheads, summary
        from simdisagg.overhead_fit import cross_validate as leave_group_out
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
                "command": command_line(),
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "protocol": {
                    "requests_per_client": options.requests_per_client,
                    "warmup_per_client": options.warmup_per_client,
                    "client_start": options.client_start,
                },
            }
            if cross_validate:
                held = leave_group_out(
                    usable, base, options, outcome.overheads, terms=fitted_terms, workers=n_workers,
                    max_evaluations=cv_evaluations,
                )
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
    """An app with just these commands (for tests that need no other command)."""
    app = make_app("simdisagg", "simdisagg calibrate / fit")
    app.add_typer(calibrate_app, name="calibrate")
    app.command("fit")(guarded(fit_command))
    return app
