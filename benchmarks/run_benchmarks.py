"""Simulation-speed benchmark suite (a script, not a test).

Simulates standard cases and prints, for each: requests simulated per wall-second, events per
second, peak memory (each case runs in its own process, so ``ru_maxrss`` is that case's
peak), and, where asked, the step-by-step (``--exact-steps``) vs fast-forward ratio on the same
run. Writes a JSON of every figure (``--json``) so that changes can be compared.

Cases: the agentic generator and the real Mooncake conversation trace (tiled end to end with
fresh ids and hashes to reach the request count), 10k / 100k / 1M requests, on clusters of 8,
64 and 512 H100 GPUs, disaggregated (half prefill, half decode) and aggregated; and a capacity
plan (``simdisagg plan``'s search: 120 candidates on 16 GPUs, each searched for the goodput it
sustains at steady state, then the best one re-run on its window made 3x longer) on the first
10k Mooncake requests, on as many workers as the machine has cores. The open-loop rate is scaled with the cluster so that every case runs at a
comparable, realistic load (``--load-per-gpu`` requests/s per GPU).

    python benchmarks/run_benchmarks.py --preset quick --json benchmarks/results/latest.json
    python benchmarks/run_benchmarks.py --preset targets --json benchmarks/results/targets.json
    python benchmarks/run_benchmarks.py --preset full
    python benchmarks/run_benchmarks.py --preset load --json benchmarks/results/load.json

The ``load`` preset times reading and validating a trace file before any simulation: a
1M-line Mooncake-shaped file (the conversation trace tiled, as written by ``trace convert``)
and a 20k-line agentic one (closed loop, ids, sessions, hash lists of thousands of ids: about
20 KB a line), each loaded ``--repeats`` times with ``load_trace`` (the medians of wall and
CPU time are reported), and once line by line (``load_jsonl(columnar=False)``, the path that
names a bad line) for the ratio.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "traces"

#: The planner case: every split of 16 GPUs at TP 1 and 2 with three decode batch limits
#: (120 candidates, none pruned), each searched for its goodput on 10k Mooncake requests
#: (Llama-3.1-8B and the default SLO: the planner's defaults).
PLAN_CASE = ("mooncake", 10_000, 16, "planner", False)
PLAN_GRID = {"tps": (1, 2), "max_batch_sizes": (64, 128, 256), "links": ("ib-ndr-400",)}

PRESETS = {
    "quick": [
        ("agentic", 10_000, 64, "disaggregated", True),
        ("agentic", 10_000, 64, "aggregated", False),
        ("mooncake", 10_000, 64, "disaggregated", True),
        ("agentic", 100_000, 64, "disaggregated", False),
        ("mooncake", 100_000, 64, "disaggregated", False),
    ],
    # The targets: the quick cases plus a million requests of each trace.
    "targets": [
        ("agentic", 10_000, 64, "disaggregated", True),
        ("agentic", 10_000, 64, "aggregated", False),
        ("mooncake", 10_000, 64, "disaggregated", True),
        ("agentic", 100_000, 64, "disaggregated", False),
        ("mooncake", 100_000, 64, "disaggregated", False),
        ("agentic", 1_000_000, 64, "disaggregated", False),
        ("mooncake", 1_000_000, 64, "disaggregated", False),
        PLAN_CASE,
    ],
    # The planner target alone: a capacity search on 10k requests.
    "plan": [PLAN_CASE],
    # Reading and validating trace files (no simulation): lines per second.
    "load": [("mooncake", 1_000_000, 0, "load", True), ("agentic", 20_000, 0, "load", True)],
    "full": [
        (kind, n, gpus, mode, n == 10_000)
        for kind in ("agentic", "mooncake")
        for n in (10_000, 100_000, 1_000_000)
        for gpus in (8, 64, 512)
        for mode in ("disaggregated", "aggregated")
    ],
}


def _tile(trace, count: int):  # type: ignore[no-untyped-def]
    """Repeat an open-loop trace end to end (fresh request ids and hash ids each copy) up to
    ``count`` requests, as whole columns (a million requests built through Python lists
    would weigh more than the simulation)."""
    from simdisagg.trace import Trace

    if trace.closed_loop.any():
        raise ValueError("tiling is for open-loop traces")
    n = len(trace)
    copies = -(-count // n)
    idx = np.tile(np.arange(n), copies)[:count]
    copy = np.repeat(np.arange(copies), n)[:count]
    span = float(trace.timestamp_s.max()) + 1.0
    lengths = np.diff(trace.hash_offsets)[idx]
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    # Each request's hash list: its source's list shifted by the copy's offset.
    hash_shift = int(trace.hash_values.max()) + 1 if trace.has_hashes else 0
    starts = np.repeat(trace.hash_offsets[:-1][idx], lengths)
    within = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], lengths)
    values = trace.hash_values[starts + within] + np.repeat(copy, lengths) * hash_shift
    return Trace(
        source=f"{trace.source} (tiled)",
        request_ids=[f"r{k}" for k in range(count)],
        timestamp_s=trace.timestamp_s[idx] + copy * span,
        input_tokens=trace.input_tokens[idx].copy(),
        output_tokens=trace.output_tokens[idx].copy(),
        session_index=np.full(count, -1, dtype=np.int64),
        session_names=[],
        tool_wait_s=np.zeros(count),
        wait_offsets=np.zeros(count + 1, dtype=np.int64),
        wait_indices=np.zeros(0, dtype=np.int64),
        _hash_offsets=offsets,
        _hash_values=values.astype(np.int64),
        hash_block_tokens=trace.hash_block_tokens,
        line_numbers=np.arange(1, count + 1, dtype=np.int64),
    )


def _make_trace(kind: str, count: int):  # type: ignore[no-untyped-def]
    from simdisagg.generate import generate_trace
    from simdisagg.trace import load_jsonl

    if kind == "agentic":
        return generate_trace("agentic", num_requests=count, seed=1).subset(np.arange(count))
    path = SHARED / "mooncake" / "conversation_trace.jsonl"
    if not path.is_file():
        path = ROOT / "traces" / "mooncake-conversation-5min.jsonl"
    return _tile(load_jsonl(path), count)


def _case(kind: str, count: int, gpus: int, mode: str, exact: bool, load_per_gpu: float, model: str,
          tp: int, cost: str, q: mp.Queue) -> None:  # fmt: skip
    from simdisagg import RunConfig, simulate

    trace = _make_trace(kind, count)
    open_loop = ~trace.closed_loop
    ts = trace.timestamp_s[open_loop]
    base_rate = open_loop.sum() / max(float(ts.max() - ts.min()), 1e-9)
    # Closed-loop requests follow their sessions; scale the open-loop starts to the target load.
    target = load_per_gpu * gpus * (open_loop.sum() / len(trace))
    cfg = RunConfig.model_validate(
        {
            "mode": mode,
            "model": model,
            "prefill": {"count": gpus // 2 // tp, "tp": tp},
            "decode": {"count": (gpus - gpus // 2) // tp, "tp": tp},
            "rate_scale": target / base_rate,
            "exact_steps": exact,
            "cost": {"kind": cost},
        }
    )
    t0 = time.perf_counter()
    result = simulate(cfg, trace)
    wall = time.perf_counter() - t0
    status = result.recorder.status
    q.put(
        {
            "wall_s": wall,
            "events": result.events,
            "completed": int((status == 1).sum()),
            "rejected": int((status == 2).sum()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "completed_at": result.recorder.times["completed_at"],
            "cost_model": result.cost_label,
        }
    )


def _plan_case(kind: str, count: int, gpus: int, workers: int, q: mp.Queue) -> None:
    from simdisagg.plan import PlanSpec, plan

    trace = _make_trace(kind, count)
    spec = PlanSpec(gpus=gpus, prune=False, **PLAN_GRID)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    result = plan(trace, spec, workers=workers)
    wall = time.perf_counter() - t0
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    q.put({
        "wall_s": wall, "candidates": len(result.rows), "simulations": result.simulations,
        "peak_rss_mb": peak / 1024.0, "best": result.best["label"] if result.best else None,
    })


def _load_case(kind: str, count: int, repeats: int, with_checked: bool, q: mp.Queue) -> None:
    import statistics
    import tempfile

    from simdisagg.importers import load_trace
    from simdisagg.trace import load_jsonl, write_jsonl

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{kind}-{count}.jsonl"
        write_jsonl(_make_trace(kind, count), path)
        size = path.stat().st_size
        walls, cpus = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            trace = load_trace(path)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        assert len(trace) == count
        checked = math.nan
        if with_checked:
            t0 = time.perf_counter()
            load_jsonl(path, columnar=False)
            checked = time.perf_counter() - t0
    median = statistics.median(walls)
    cpu = statistics.median(cpus)
    q.put({"walls_s": walls, "cpus_s": cpus, "median_s": median, "median_cpu_s": cpu, "lines_per_s": count / median,
           "lines_per_cpu_s": count / cpu, "mb_per_s": size / 1e6 / median, "file_mb": size / 1e6,
           "checked_s": checked, "checked_over_columnar": checked / median,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0})


def run_case(kind: str, count: int, gpus: int, mode: str, exact: bool, load: float, model: str, tp: int,
             repeats: int = 5, cost: str = "auto") -> dict:  # fmt: skip
    """Run one case in a fresh process (so peak memory is its own)."""
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    if mode == "load":
        p = ctx.Process(target=_load_case, args=(kind, count, repeats, exact, q))
        p.start()
        res = q.get()
        p.join()
        return res
    if mode == "planner":
        p = ctx.Process(target=_plan_case, args=(kind, count, gpus, mp.cpu_count(), q))
        p.start()
        res = q.get()
        p.join()
        return res
    p = ctx.Process(target=_case, args=(kind, count, gpus, mode, exact, load, model, tp, cost, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--load-per-gpu", type=float, default=1.0, help="open-loop requests/s per GPU")
    ap.add_argument("--json", type=Path, default=None, help="write figures here")
    ap.add_argument("--model", default="qwen2.5-7b-instruct-1m",
                    help="model profile (default: a 1M-token-context model, so that the agentic "
                         "generator's long resumed sessions are servable)")
    ap.add_argument("--tp", type=int, default=2,
                    help="tensor parallelism of every instance (default 2: the longest agentic "
                         "prompts need two H100s of KV memory)")
    ap.add_argument("--only", default=None, help="run only cases whose name contains this text")
    ap.add_argument("--repeats", type=int, default=5, help="loads per case of the load preset (median reported)")
    ap.add_argument("--cost", choices=("auto", "roofline"), default="auto",
                    help="cost model: auto (the measured profile where one exists, as users run) or roofline")
    args = ap.parse_args()
    rows = []
    print(f"{'case':44s} {'req/s':>10s} {'events/s':>11s} {'peak MB':>8s} {'wall s':>7s} {'exact/ff':>8s} "
          f"{'rejected':>8s}")
    for kind, count, gpus, mode, with_exact in PRESETS[args.preset]:
        name = f"{kind} {count:>9,d} req, {gpus:>3d} GPUs, {mode}"
        if args.only and args.only not in name:
            continue
        if mode == "load":
            res = run_case(kind, count, gpus, mode, with_exact, args.load_per_gpu, args.model, args.tp, args.repeats)
            rows.append({"trace": kind, "requests": count, "mode": mode, **res})
            print(f"{name:44s} load {res['file_mb']:.0f} MB: median {res['median_s']:.2f} s wall, "
                  f"{res['median_cpu_s']:.2f} s CPU ({res['lines_per_s']:,.0f} lines/s, {res['lines_per_cpu_s']:,.0f} "
                  f"per CPU-s, {res['mb_per_s']:.0f} MB/s; runs {', '.join(f'{w:.2f}' for w in res['walls_s'])} s); "
                  f"line by line {res['checked_s']:.1f} s ({res['checked_over_columnar']:.1f}x)", flush=True)
            continue
        ff = run_case(kind, count, gpus, mode, False, args.load_per_gpu, args.model, args.tp, cost=args.cost)
        if mode == "planner":
            row = {"trace": kind, "requests": count, "gpus": gpus, "mode": mode, **ff,
                   "simulations_per_candidate": ff["simulations"] / ff["candidates"],
                   "wall_s_per_100_candidates": ff["wall_s"] * 100.0 / ff["candidates"], "grid": PLAN_GRID}
            rows.append(row)
            print(f"{name:44s} plan of {ff['candidates']} candidates, {ff['simulations']} simulations "
                  f"({row['simulations_per_candidate']:.1f} each) on {mp.cpu_count()} workers: {ff['wall_s']:.1f} s "
                  f"({row['wall_s_per_100_candidates']:.1f} s per 100 candidates), peak {ff['peak_rss_mb']:.0f} MB",
                  flush=True)
            continue
        row = {
            "trace": kind, "requests": count, "gpus": gpus, "mode": mode,
            "wall_s": ff["wall_s"], "requests_per_s": count / ff["wall_s"],
            "events_per_s": ff["events"] / ff["wall_s"], "events": ff["events"],
            "peak_rss_mb": ff["peak_rss_mb"], "completed": ff["completed"], "rejected": ff["rejected"],
            "cost_model": ff["cost_model"],
        }
        if with_exact:
            ex = run_case(kind, count, gpus, mode, True, args.load_per_gpu, args.model, args.tp, cost=args.cost)
            row["exact_wall_s"] = ex["wall_s"]
            row["exact_over_ff"] = ex["wall_s"] / ff["wall_s"]
            a, b = ff["completed_at"], ex["completed_at"]
            row["max_abs_diff_completed_at_s"] = float(np.nanmax(np.abs(a - b))) if len(a) else 0.0
        rows.append(row)
        ratio = f"{row.get('exact_over_ff', float('nan')):8.1f}"
        print(f"{name:44s} {row['requests_per_s']:10,.0f} {row['events_per_s']:11,.0f} "
              f"{row['peak_rss_mb']:8.0f} {row['wall_s']:7.2f} {ratio} {row['rejected']:8d}", flush=True)
    if args.json:
        from simdisagg.output import atomic_write_json

        atomic_write_json(args.json, {
            "machine": {"python": platform.python_version(), "platform": platform.platform(),
                        "cpus": mp.cpu_count(), "processor": platform.processor()},
            "date": time.strftime("%Y-%m-%d"), "preset": args.preset, "load_per_gpu": args.load_per_gpu,
            "model": args.model, "tp": args.tp, "cost": args.cost,
            "rows": rows,
        })


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
