"""Which pool limits a candidate's goodput, and why, in figures of load.

The figures are those of the first failing rate above the goodput (run to the end on the long
window) against those at the goodput, per pool: the share of time it was *saturated* (work
waiting that it could not start), its *batch occupancy* and its *KV occupancy* (see
:func:`simdisagg.metrics.pool_utilisation`), and the waits of each stage. "Busy" (a batch
running) is not used: it reads near 100 % on a nearly idle decode pool.

The limiting pool of a disaggregated candidate is the one saturated the larger share of the
time at the failing rate (the KV link when its transfers waited longer than either pool's
queue); when neither is saturated the decode pool limits by its step time (TPOT). For
aggregated serving: full batch slots or KV memory when they are (95 % or more), else the
phase whose SLO part breaks more (TTFT: prompts queue; TPOT: prefills stall the running
batches).
"""

from __future__ import annotations

import math
from typing import Any

from simdisagg.config import SLOConfig
from simdisagg.plan.candidates import Candidate
from simdisagg.plan.steady_state import SteadyState

#: Below this share of saturated time neither pool counts as the one that queues.
SATURATED_FLOOR = 0.05
#: A batch or KV occupancy at least this high counts as full.
FULL = 0.95


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0%}"


def pool_figures(probe: dict[str, Any], pool: str) -> str:
    """``saturated 81%, batch 64%, KV 97%`` of one pool in one probe."""
    return (
        f"saturated {_pct(probe.get(f'{pool}_saturated_fraction'))}, batch {_pct(probe.get(f'{pool}_batch_occupancy'))}, "
        f"KV {_pct(probe.get(f'{pool}_kv_occupancy'))}"
    )


def limiting_pool(probe: dict[str, Any], aggregated: bool) -> str:
    """The pool that limits in one probe's figures (see the module docstring)."""
    if aggregated:
        return "prefill" if probe["ttft_miss"] >= probe["tpot_miss"] else "decode"
    sat_p = probe.get("prefill_saturated_fraction") or 0.0
    sat_d = probe.get("decode_saturated_fraction") or 0.0
    waits = {k: probe.get(k) or 0.0 for k in ("prefill_queue_ms", "decode_wait_ms", "link_queue_ms")}
    if waits["link_queue_ms"] > max(waits["prefill_queue_ms"], waits["decode_wait_ms"]) and waits["link_queue_ms"] > 0:
        return "link"
    if max(sat_p, sat_d) < SATURATED_FLOOR:
        return "decode"
    return "prefill" if sat_p >= sat_d else "decode"


def diagnose(res: dict[str, Any], slo: SLOConfig) -> tuple[str, str]:
    """Which pool limits a candidate's goodput, and a sentence saying why (see the module
    docstring). A rate that failed on a growing backlog says how fast it grew."""
    cand = Candidate.from_dict(res["candidate"])
    ok, bad = res.get("pass"), res.get("fail")
    if res["at_ceiling"]:
        return "none", "meets the SLO up to the highest rate searched; raise max_rate_scale to find its limit"
    assert bad is not None
    if res["at_floor"]:
        if bad["rejected"] > 1.0 - slo.attainment:
            return "memory", f"{bad['rejected']:.0%} of requests never fit in an instance's KV memory"
        pool = limiting_pool(bad, cand.aggregated)
        return (
            pool,
            (f"misses the SLO even at the lowest rate searched ({bad['ttft_miss']:.0%} miss TTFT, "
             f"{bad['tpot_miss']:.0%} miss TPOT)"),
        )
    assert ok is not None
    rate = bad["rate_scale"] / ok["rate_scale"]
    if bad.get("failed_on") == "backlog":
        head = f"{rate - 1:.0%} past the goodput rate the {bad['reason']}"
    elif bad.get("failed_on") == "window":
        head = f"{rate - 1:.0%} past the goodput rate, {bad['reason']}"
    else:
        head = (
            f"{rate - 1:.0%} past the goodput rate, requests missing TTFT {ok['ttft_miss']:.0%}→"
            f"{bad['ttft_miss']:.0%}, missing TPOT {ok['tpot_miss']:.0%}→{bad['tpot_miss']:.0%}"
        )
        if bad.get("steady") and bad["steady"].get("growing"):
            head += f"; the {SteadyState(**bad['steady']).growth_text()}"
    pool = limiting_pool(bad, cand.aggregated)
    if cand.aggregated:
        if (bad.get("aggregated_batch_occupancy") or 0.0) >= FULL:
            pool, where = "decode", f"batch slots full (prompts wait for one of the {cand.max_batch_size} per instance)"
        elif (bad.get("aggregated_kv_occupancy") or 0.0) >= FULL:
            pool, where = "decode", "KV memory full (prompts wait for room)"
        elif pool == "prefill":
            where = "prefill phase (prompts queue behind running batches)"
        else:
            where = "decode phase (prefills stall the running batches)"
        return (
            pool,
            (f"{where}: {head}; there the pool is {pool_figures(bad, 'aggregated')} (at the goodput rate "
             f"{pool_figures(ok, 'aggregated')}), prefill queue {bad['prefill_queue_ms']:.0f} ms"),
        )
    waits = (f"prefill queue {bad['prefill_queue_ms']:.0f} ms, decode slot wait {bad['decode_wait_ms']:.0f} ms, "
             f"link queue {bad.get('link_queue_ms') or 0.0:.0f} ms")
    if pool == "link":
        return pool, f"link-bound: {head}; KV transfers wait for the link ({waits})"
    other = "decode" if pool == "prefill" else "prefill"
    step = ""
    if pool == "decode" and max(bad.get("prefill_saturated_fraction") or 0.0,
                                bad.get("decode_saturated_fraction") or 0.0) < SATURATED_FLOOR:
        step = f" (nothing queues: decode steps too slow for the TPOT target, p90 TPOT {bad['p90_tpot_ms']:.1f} ms)"
    return (
        pool,
        (f"{pool}-bound{step}: {head}; there {pool} {pool_figures(bad, pool)} vs {other} "
         f"{pool_figures(bad, other)}; at the goodput rate {pool} {pool_figures(ok, pool)}; {waits}"),
    )
