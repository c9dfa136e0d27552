"""Metrics: pure functions from a run's columns to a summary with vLLM-style keys.

Definitions (times in seconds inside, milliseconds in the summary keys):

* First token: when the client receives it, by the run's ``metrics.ttft`` setting
  (:func:`first_token_times`). ``client`` (default): a request decoded on a decode instance
  (more than one output token, disaggregated) gets its first token when it joins that
  instance's running batch, after prefill, the wait for KV memory and a batch slot, and the
  KV transfer: the decode instance streams the answer (SGLang, Dynamo, vLLM's disaggregated
  serving). ``prefill_end`` (DistServe's definition): the end of prefill. In aggregated
  serving, and for one-token answers, both are the end of prefill.
* TTFT  = first token − arrival.
* TPOT  = (completion − first token) / (output tokens − 1), as vLLM's benchmark defines it
  (excludes the first token; undefined for one-token answers, which are left out of TPOT).
  With ``prefill_end`` it includes the KV hand-off and the wait for a decode slot, so that
  wait counts against the SLO under either definition.
* ITL   = each gap between consecutive tokens of a request (one decode iteration, or longer
  when the request waited: with ``prefill_end`` the gap after the first token includes the
  KV transfer and the wait for a decode slot). Under speculative decoding the tokens of one
  step arrive together and the step is one gap (vLLM's benchmark times streamed chunks).
* E2E   = completion − arrival.
* A request meets the SLO when TTFT <= ``slo.ttft_s`` and (TPOT <= ``slo.tpot_s`` or it has a
  single output token). Goodput = requests meeting the SLO per second of the run.
* The run lasts from the first arrival to the last completion.
* Utilisation per pool (:func:`pool_utilisation`), time-weighted means over the run:
  *batch occupancy* (decode and aggregated: requests decoding / ``max_batch_size``; prefill:
  prompt tokens of the running iteration / token budget), *KV occupancy* (KV blocks in use /
  capacity), *saturated* (share of time work waited at an instance that it could not start:
  see :class:`~simdisagg.sim.recorder.InstanceStats`) and *busy* (a batch running, however
  small: it reads near 100 % on a nearly idle decode pool, so it explains nothing alone).

No SimPy and no I/O here: everything takes arrays and returns plain dicts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from simdisagg.config import SLOConfig
from simdisagg.sim.recorder import STATUS_COMPLETED, STATUS_REJECTED, RunResult

PERCENTILES = (50, 90, 95, 99)


def weighted_percentiles(values: np.ndarray, weights: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """Percentiles of a multiset given as values with integer multiplicities.

    Multiplicities may be negative for a value as long as the total per distinct value is not
    (used to replace one step's duration by a longer gap). Uses the inverted-CDF definition."""
    if len(values) == 0:
        return [math.nan for _ in qs]
    uniq, inverse = np.unique(values, return_inverse=True)
    w = np.bincount(inverse, weights=weights.astype(np.float64), minlength=len(uniq))
    keep = w > 0.5
    uniq, w = uniq[keep], w[keep]
    if len(uniq) == 0:
        return [math.nan for _ in qs]
    cum = np.cumsum(w)
    total = cum[-1]
    out = []
    for q in qs:
        k = int(np.searchsorted(cum, q / 100.0 * total, side="left"))
        out.append(float(uniq[min(k, len(uniq) - 1)]))
    return out


def _stats(prefix: str, values_s: np.ndarray, out: dict[str, Any]) -> None:
    v = values_s[~np.isnan(values_s)] * 1000.0
    if len(v) == 0:
        out[f"mean_{prefix}_ms"] = math.nan
        out[f"median_{prefix}_ms"] = math.nan
        for p in PERCENTILES[1:]:
            out[f"p{p}_{prefix}_ms"] = math.nan
        return
    out[f"mean_{prefix}_ms"] = float(v.mean())
    pct = np.percentile(v, PERCENTILES)
    out[f"median_{prefix}_ms"] = float(pct[0])
    for p, x in zip(PERCENTILES[1:], pct[1:], strict=True):
        out[f"p{p}_{prefix}_ms"] = float(x)


def first_token_times(result: RunResult) -> np.ndarray:
    """When each request's first token reaches the client (seconds; NaN: not yet), by the
    run's TTFT definition (see the module docstring)."""
    t = result.recorder.times
    if result.ttft_definition == "prefill_end":
        return t["first_token_at"]
    # A request with more than one output token streams from the batch it decodes in: on a
    # decode instance from when it joins the batch; in aggregated serving that is the end of
    # its prefill (the same instant).
    return np.where(result.output_tokens > 1, t["decode_start_at"], t["first_token_at"])


def request_latencies(result: RunResult) -> dict[str, np.ndarray]:
    """Per-request TTFT, TPOT and E2E in seconds (NaN where not defined)."""
    t = result.recorder.times
    done = result.recorder.status == STATUS_COMPLETED
    first = first_token_times(result)
    ttft = np.where(done, first - t["arrival_at"], np.nan)
    e2e = np.where(done, t["completed_at"] - t["arrival_at"], np.nan)
    n_out = result.output_tokens.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(done & (n_out > 1), (t["completed_at"] - first) / (n_out - 1), np.nan)
    return {"ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e}


POOLS = ("prefill", "decode", "aggregated")


def pool_utilisation(result: RunResult, window: tuple[int, int] | None = None) -> dict[str, float]:
    """Per pool, time-weighted means: ``{pool}_batch_occupancy``, ``{pool}_kv_occupancy``,
    ``{pool}_saturated_fraction`` and ``{pool}_busy_fraction`` (fractions; pools the run
    does not have are left out).

    Over the whole run (first arrival to last completion) by default; ``window`` names two
    entries of ``recorder.snapshots`` to measure between them instead (e.g. a measurement
    window that leaves out a warm-up and the drain after the last arrival)."""
    rec = result.recorder
    if window is None:
        t = rec.times
        arrivals = t["arrival_at"][~np.isnan(t["arrival_at"])]
        start = float(arrivals.min()) if len(arrivals) else 0.0
        done = rec.status == STATUS_COMPLETED
        end = float(np.nanmax(t["completed_at"])) if done.any() else start
        # Counters start at zero, and nothing is in use before the first arrival.
        begin_counters = [(0.0, 0.0, 0.0, 0.0, 0.0)] * len(rec.instances)
        end_counters = [x.counters_at(rec.end_at) for x in rec.instances]
        span = max(end - start, 1e-12)
    else:
        (t0, begin_counters), (t1, end_counters) = rec.snapshots[window[0]], rec.snapshots[window[1]]
        span = max(t1 - t0, 1e-12)
    out: dict[str, float] = {}
    for pool in POOLS:
        idx = [k for k, x in enumerate(rec.instances) if x.pool == pool]
        if not idx:
            continue
        diff = np.array([np.subtract(end_counters[k], begin_counters[k]) for k in idx])
        busy, kv_block_s, batch_request_s, token_share_s, saturated_s = diff.sum(axis=0)
        kv_capacity = sum(rec.instances[k].kv.capacity for k in idx)
        batch_capacity = sum(rec.instances[k].batch.capacity for k in idx)
        n = len(idx)
        lives = result.meta.get("instances")
        if lives is not None and window is None:
            # A dynamic cluster: each instance counts for the time it was there (its share of
            # the span), not the whole span.
            share = _present_shares(lives, pool, start, end)  # type: ignore[arg-type]
            n = float(sum(share.get(rec.instances[k].index, 0.0) for k in idx))
            kv_capacity = sum(rec.instances[k].kv.capacity * share.get(rec.instances[k].index, 0.0) for k in idx)
            batch_capacity = sum(rec.instances[k].batch.capacity * share.get(rec.instances[k].index, 0.0) for k in idx)
            n = max(n, 1e-12)
        out[f"{pool}_busy_fraction"] = float(busy / (n * span))
        out[f"{pool}_kv_occupancy"] = float(kv_block_s / (kv_capacity * span)) if kv_capacity else math.nan
        if pool == "prefill":
            out[f"{pool}_batch_occupancy"] = float(token_share_s / (n * span))
        else:
            out[f"{pool}_batch_occupancy"] = float(batch_request_s / (batch_capacity * span))
        out[f"{pool}_saturated_fraction"] = float(saturated_s / (n * span))
    return out


def _present_shares(lives: Any, pool: str, start: float, end: float) -> dict[int, float]:
    """Per instance of ``pool`` (by index), the share of ``[start, end]`` it was serving or
    draining (a dynamic cluster's instance lives, ``meta["instances"]``)."""
    span = max(end - start, 1e-12)
    out: dict[int, float] = {}
    for life in lives:
        if life.pool != pool or math.isnan(life.serving_at):
            continue
        stop = end if math.isnan(life.ended_at) else min(life.ended_at, end)
        out[life.index] = max(0.0, stop - max(life.serving_at, start)) / span
    return out


def slo_met(result: RunResult, slo: SLOConfig) -> np.ndarray:
    """Boolean per request: completed and within both targets."""
    lat = request_latencies(result)
    ok_tpot = np.isnan(lat["tpot_s"]) | (lat["tpot_s"] <= slo.tpot_s)
    return (result.recorder.status == STATUS_COMPLETED) & (lat["ttft_s"] <= slo.ttft_s) & ok_tpot


def itl_percentiles(result: RunResult) -> tuple[float, list[float]]:
    """Mean and percentiles (ms) of inter-token latency, from the decode step log.

    Each logged step counts once per request in its batch; each request's first decode step
    is replaced by its real first gap (first decode token − first token). Exact while the log
    is (a few million steps); past that, within a bucket's width (see :class:`StepLog`)."""
    rec = result.recorder
    t = rec.times
    has_first = ~np.isnan(rec.first_step_s)
    first_gap = (t["decode_first_token_at"] - first_token_times(result))[has_first]
    values, w = rec.steps.distribution(
        np.concatenate([rec.first_step_s[has_first], first_gap]),
        np.concatenate([-np.ones(int(has_first.sum()), np.int64), np.ones(len(first_gap), np.int64)]),
    )
    total_w = w.sum()
    if total_w <= 0:
        return math.nan, [math.nan for _ in PERCENTILES]
    mean = float((values * w).sum() / total_w) * 1000.0
    return mean, [x * 1000.0 for x in weighted_percentiles(values, w, PERCENTILES)]


def summarize(result: RunResult, slo: SLOConfig) -> dict[str, Any]:
    """The run's summary: latency statistics, throughput, SLO attainment, utilisation."""
    rec = result.recorder
    t = rec.times
    status = rec.status
    done = status == STATUS_COMPLETED
    n_done = int(done.sum())
    arrivals = t["arrival_at"][~np.isnan(t["arrival_at"])]
    start = float(arrivals.min()) if len(arrivals) else 0.0
    end = float(np.nanmax(t["completed_at"])) if n_done else start
    duration = max(end - start, 1e-12)
    out_tokens = int(result.output_tokens[done].sum())
    in_tokens = int(result.input_tokens[done].sum())
    s: dict[str, Any] = {
        "mode": result.mode,
        "cost_model": result.cost_label,
        "gpus": result.gpus,
        "gpu_hours": float(result.meta.get("gpu_hours", math.nan)),  # type: ignore[arg-type]
        "total_requests": len(status),
        "completed": n_done,
        "rejected": int((status == STATUS_REJECTED).sum()),
        "unfinished": int(len(status) - n_done - (status == STATUS_REJECTED).sum()),
        "duration_s": duration,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": n_done / duration,
        "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "output_throughput_per_gpu": out_tokens / duration / max(result.gpus, 1),
        "cached_prompt_tokens": int(rec.cached_tokens[done].sum()),
    }
    lat = request_latencies(result)
    _stats("ttft", lat["ttft_s"], s)
    _stats("tpot", lat["tpot_s"], s)
    _stats("e2el", lat["e2e_s"], s)
    itl_mean, itl_pct = itl_percentiles(result)
    s["mean_itl_ms"] = itl_mean
    s["median_itl_ms"] = itl_pct[0]
    for p, x in zip(PERCENTILES[1:], itl_pct[1:], strict=True):
        s[f"p{p}_itl_ms"] = x
    met = slo_met(result, slo)
    s["slo_ttft_ms"] = slo.ttft_s * 1000.0
    s["slo_tpot_ms"] = slo.tpot_s * 1000.0
    s["slo_attainment"] = float(met.sum() / len(status)) if len(status) else math.nan
    s["request_goodput"] = float(met.sum()) / duration
    # Queueing delay of each stage (ms, mean and p99 over the requests that went through it).
    stages = {
        "prefill_queue": t["prefill_start_at"] - t["prefill_enqueued_at"],
        "decode_admission_wait": t["decode_admit_at"] - t["first_token_at"],
        "kv_link_queue": t["kv_send_start_at"] - t["decode_admit_at"],
        "kv_transfer": t["kv_send_end_at"] - t["kv_send_start_at"],
        "decode_join_wait": t["decode_start_at"] - t["kv_send_end_at"],
    }
    for name, d in stages.items():
        d = d[~np.isnan(d)]
        s[f"mean_{name}_ms"] = float(d.mean() * 1000.0) if len(d) else math.nan
        s[f"p99_{name}_ms"] = float(np.percentile(d, 99) * 1000.0) if len(d) else math.nan
    # Utilisation per pool: batch and KV occupancy, saturated share, busy fraction
    # (time-weighted means), KV memory in use (mean and peak).
    s.update(pool_utilisation(result))
    s["ttft_definition"] = result.ttft_definition
    for pool in POOLS:
        inst = [x for x in rec.instances if x.pool == pool]
        if not inst:
            continue
        cap = sum(x.kv.capacity for x in inst)
        span = max(rec.end_at, 1e-12)
        s[f"{pool}_kv_mean_fraction"] = float(sum(x.kv.integral for x in inst) / (cap * span))
        s[f"{pool}_kv_peak_fraction"] = float(max(x.kv.peak / x.kv.capacity for x in inst))
        s[f"{pool}_kv_final_blocks"] = float(sum(x.kv.level for x in inst))
    if rec.link_busy_s:
        s["link_busy_fraction"] = float(np.mean(rec.link_busy_s) / duration)
        s["kv_bytes_sent"] = float(sum(rec.link_bytes))
    for key, value in result.meta.items():
        if key.startswith("prefix_cache:"):
            pool = key.split(":", 1)[1]
            for k, v in value.items():  # type: ignore[attr-defined]
                s[f"{pool}_{k}"] = v
    if result.recorder.unloaded_s is not None:
        s.update(session_summary(session_metrics(result)))
    if result.tenants is not None:
        s["tenants"] = tenant_metrics(result, slo, lat, duration)
    s.update(dynamic_summary(result))
    s["events"] = result.events
    s["wall_s"] = result.wall_s
    return s


#: The group of requests that name no tenant, in :func:`tenant_metrics`.
NO_TENANT = "(none)"


def tenant_metrics(
    result: RunResult, slo: SLOConfig, latencies: dict[str, np.ndarray] | None = None, duration_s: float | None = None
) -> dict[str, dict[str, Any]]:
    """Per tenant (and :data:`NO_TENANT` for requests that name none, when there are any):
    requests, completed, rejected (and of those, over a quota at the router), TTFT, TPOT and
    E2E statistics (ms), the wait at the router for the quota (ms), and SLO attainment and
    goodput under the tenant's own SLO (the run's when it has none), goodput per second of
    the whole run (so tenants' goodputs add up)."""
    tenants = result.tenants
    if tenants is None:
        return {}
    lat = latencies if latencies is not None else request_latencies(result)
    rec = result.recorder
    t = rec.times
    if duration_s is None:
        arrivals = t["arrival_at"][~np.isnan(t["arrival_at"])]
        done_any = rec.status == STATUS_COMPLETED
        start = float(arrivals.min()) if len(arrivals) else 0.0
        duration_s = max((float(np.nanmax(t["completed_at"])) if done_any.any() else start) - start, 1e-12)
    wait = tenants.admitted_at - t["arrival_at"]
    groups: list[tuple[str, int]] = [(name, k) for k, name in enumerate(tenants.names)]
    if (tenants.index < 0).any():
        groups.append((NO_TENANT, -1))
    out: dict[str, dict[str, Any]] = {}
    for name, k in groups:
        mine = tenants.index == k
        status = rec.status[mine]
        done = status == STATUS_COMPLETED
        target = (tenants.slos[k] if k >= 0 else None) or slo
        ttft, tpot = lat["ttft_s"][mine], lat["tpot_s"][mine]
        met = done & (ttft <= target.ttft_s) & (np.isnan(tpot) | (tpot <= target.tpot_s))
        n = int(mine.sum())
        row: dict[str, Any] = {
            "priority": tenants.priority[k] if k >= 0 else 0,
            "requests": n,
            "completed": int(done.sum()),
            "rejected": int((status == STATUS_REJECTED).sum()),
            "rejected_over_quota": tenants.rejected_over_quota[k] if k >= 0 and tenants.rejected_over_quota else 0,
            "output_tokens": int(result.output_tokens[mine][done].sum()),
        }
        _stats("ttft", ttft, row)
        _stats("tpot", tpot, row)
        _stats("e2el", lat["e2e_s"][mine], row)
        w = wait[mine]
        w = w[~np.isnan(w)]
        row["mean_quota_wait_ms"] = float(w.mean() * 1000.0) if len(w) else math.nan
        row["p99_quota_wait_ms"] = float(np.percentile(w, 99) * 1000.0) if len(w) else math.nan
        if k >= 0 and tenants.peak_in_flight:
            row["peak_in_flight"] = tenants.peak_in_flight[k]
        row["slo_ttft_ms"] = target.ttft_s * 1000.0
        row["slo_tpot_ms"] = target.tpot_s * 1000.0
        row["slo_attainment"] = float(met.sum() / n) if n else math.nan
        row["slo_attainment_target"] = target.attainment
        row["request_goodput"] = float(met.sum()) / duration_s
        row["output_throughput"] = row["output_tokens"] / duration_s
        out[name] = row
    return out


def dynamic_summary(result: RunResult) -> dict[str, Any]:
    """Summary keys of a run whose cluster changed (autoscaling, faults): the time-mean count
    of instances per pool, scaling actions, failures, retries and recomputed tokens (empty
    for a fixed cluster)."""
    meta = result.meta
    if "faults" not in meta:
        return {}
    out: dict[str, Any] = {}
    for pool, mean in meta["mean_instances"].items():  # type: ignore[attr-defined]
        out[f"mean_{pool}_instances"] = float(mean)
    scaling = meta.get("autoscale")
    if scaling is not None:
        out["scale_outs"] = scaling["scale_outs"]  # type: ignore[index]
        out["scale_ins"] = scaling["scale_ins"]  # type: ignore[index]
    faults = meta["faults"]
    for key in ("instance_failures", "retries", "retried_requests", "recomputed_tokens", "role_switches",
                "fallback_prefills"):  # fmt: skip
        out[key] = faults[key]  # type: ignore[index]
    return out


def session_metrics(result: RunResult) -> Any:
    """Per-session table (pandas): end-to-end time, the agent's critical path, how much of
    that path was queueing, and its slowdown against an idle cluster.

    The critical path ends at the session's last completion and walks back, at each step, to
    the request it waited for that completed last (the one that released it). Along it:
    ``critical_path_s`` = last completion − arrival of the path's first request;
    ``queueing_s`` = the path's waits in queues (prefill queue, decode admission, link queue,
    batch join); ``unloaded_s`` = the path's service times alone on an idle cluster plus its
    tool waits; ``slowdown`` = critical_path_s / unloaded_s."""
    import pandas as pd

    rec = result.recorder
    t = rec.times
    sess = result.session_index
    if result.wait_offsets is None or not (sess >= 0).any():
        return pd.DataFrame()
    waits_off, waits_idx = result.wait_offsets, result.wait_indices
    assert waits_idx is not None and result.tool_wait_s is not None
    done_at = t["completed_at"]
    queue = np.zeros(len(sess))
    for a, b in (
        ("prefill_enqueued_at", "prefill_start_at"),
        ("first_token_at", "decode_admit_at"),
        ("decode_admit_at", "kv_send_start_at"),
        ("kv_send_end_at", "decode_start_at"),
    ):
        d = t[b] - t[a]
        queue += np.where(np.isnan(d), 0.0, d)
    unloaded = rec.unloaded_s if rec.unloaded_s is not None else np.full(len(sess), np.nan)
    rows = []
    order = np.argsort(sess, kind="stable")
    bounds = np.searchsorted(sess[order], np.arange(sess.max() + 2))
    for s in range(int(sess.max()) + 1):
        members = order[bounds[s] : bounds[s + 1]]
        if len(members) == 0:
            continue
        ok = rec.status[members] == STATUS_COMPLETED
        row: dict[str, Any] = {"session_index": s, "requests": len(members), "completed": int(ok.sum())}
        if ok.all():
            last = int(members[np.argmax(done_at[members])])
            path = [last]
            while waits_off[path[-1] + 1] > waits_off[path[-1]]:
                parents = waits_idx[waits_off[path[-1]] : waits_off[path[-1] + 1]]
                path.append(int(parents[np.argmax(done_at[parents])]))
            p = np.array(path)
            first = int(p[-1])
            row["e2e_s"] = float(done_at[members].max() - np.nanmin(t["arrival_at"][members]))
            row["critical_path_s"] = float(done_at[last] - t["arrival_at"][first])
            row["critical_path_requests"] = len(p)
            row["queueing_s"] = float(queue[p].sum())
            tool = float(result.tool_wait_s[p[:-1]].sum())
            row["unloaded_s"] = float(unloaded[p].sum()) + tool
            row["slowdown"] = row["critical_path_s"] / row["unloaded_s"] if row["unloaded_s"] > 0 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def session_summary(frame: Any) -> dict[str, float]:
    """Summary keys of the per-session table (empty when the trace has no sessions)."""
    if len(frame) == 0 or "critical_path_s" not in frame:
        return {}
    f = frame.dropna(subset=["critical_path_s"])
    return {
        "sessions": int(len(frame)),
        "mean_session_e2e_s": float(f["e2e_s"].mean()),
        "p90_session_e2e_s": float(f["e2e_s"].quantile(0.9)),
        "mean_critical_path_s": float(f["critical_path_s"].mean()),
        "critical_path_queueing_fraction": float(f["queueing_s"].sum() / f["critical_path_s"].sum()),
        "mean_session_slowdown": float(f["slowdown"].mean()),
        "p90_session_slowdown": float(f["slowdown"].quantile(0.9)),
    }
