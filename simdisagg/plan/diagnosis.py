"""Which pool limits a candidate's goodput, and why."""

from __future__ import annotations

from typing import Any

from simdisagg.config import SLOConfig
from simdisagg.plan.candidates import Candidate


def diagnose(res: dict[str, Any], slo: SLOConfig) -> tuple[str, str]:
    """Which pool limits a candidate's goodput, and a sentence saying why.

    Compares the SLO misses at the first failing rate (TTFT → prefill, TPOT → decode; for
    aggregated serving the phase that breaks) and quotes busy fractions and queueing delays at
    the goodput rate."""
    cand = Candidate.from_dict(res["candidate"])
    ok, bad = res.get("pass"), res.get("fail")
    if res["at_ceiling"]:
        return "none", "meets the SLO up to the highest rate searched; raise max_rate_scale to find its limit"
    assert bad is not None
    if res["at_floor"]:
        if bad["rejected"] > 1.0 - slo.attainment:
            return "memory", f"{bad['rejected']:.0%} of requests never fit in an instance's KV memory"
        part = "TTFT" if bad["ttft_miss"] >= bad["tpot_miss"] else "TPOT"
        return (
            ("prefill" if part == "TTFT" else "decode"),
            (f"misses the SLO even at the lowest rate searched ({bad['ttft_miss']:.0%} miss TTFT, "
            f"{bad['tpot_miss']:.0%} miss TPOT)"),
        )
    assert ok is not None
    d_ttft = bad["ttft_miss"] - ok["ttft_miss"]
    d_tpot = bad["tpot_miss"] - ok["tpot_miss"]
    ttft_side = d_ttft >= d_tpot
    rate = bad["rate_scale"] / ok["rate_scale"]
    head = (
        f"going {rate - 1:.0%} past the goodput rate, requests missing TTFT {ok['ttft_miss']:.0%}→"
        f"{bad['ttft_miss']:.0%}, missing TPOT {ok['tpot_miss']:.0%}→{bad['tpot_miss']:.0%}"
    )
    if cand.aggregated:
        where = "prefill phase (prompts queue behind running batches)" if ttft_side else (
            "decode phase (prefills stall the running batches)")
        return (
            "prefill" if ttft_side else "decode",
            (f"{where}: {head}; at goodput busy {ok['aggregated_busy']:.0%}, "
            f"prefill queue {ok['prefill_queue_ms']:.0f} ms"),
        )
    pool = "prefill" if ttft_side else "decode"
    other = "decode" if ttft_side else "prefill"
    return (
        pool,
        (f"{pool}-bound: {head}; at goodput {pool} busy {ok[f'{pool}_busy']:.0%} vs {other} "
        f"{ok[f'{other}_busy']:.0%}, prefill queue {ok['prefill_queue_ms']:.0f} ms, "
        f"decode admission wait {ok['decode_wait_ms']:.0f} ms"),
    )
