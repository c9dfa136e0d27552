"""The first token as the client sees it, and pool utilisation, on a hand-timed 2-request run.

One prefill instance (batching off) and one decode instance, constant costs: prefill 0.1 s,
decode step 0.02 s; the link sends one prompt token of KV per millisecond and lands
``IB_LATENCY_S`` later. r0 (t = 0, 100 in, 3 out) and r1 (t = 0.05, 100 in, 2 out):

* r0: prefill [0, 0.1]; admitted at once (0.1); KV [0.1, 0.2] lands at L0 = 0.2 + lat; joins
  the idle batch at L0; two steps: first decode token L0 + 0.02, done D0 = L0 + 0.04.
* r1: queues behind r0, prefill [0.1, 0.2]. With ``max_batch_size`` 1 the only slot is r0's
  until D0: r1 waits for a decode slot over [0.2, D0], is admitted at D0, KV [D0, D0 + 0.1]
  lands at L1 = D0 + 0.1 + lat, one step: done L1 + 0.02. With two slots it is admitted at
  0.2, its KV queues behind r0's on the FIFO link and goes [0.2, 0.3]: L1 = 0.3 + lat.

Client TTFT = join of the decode batch − arrival; DistServe's (``prefill_end``) = end of
prefill − arrival, and TPOT then runs from the end of prefill.
"""

from __future__ import annotations

import numpy as np
import pytest
from strategies import build_trace

from simdisagg.config import (
    ConstantCost,
    LinkConfig,
    MetricsConfig,
    PoolConfig,
    RunConfig,
    SLOConfig,
)
from simdisagg.hardware import ProfileStore
from simdisagg.metrics import (
    itl_percentiles,
    pool_utilisation,
    request_latencies,
    slo_met,
    summarize,
)
from simdisagg.sim.engine import simulate

STORE = ProfileStore()
KV_BYTES_PER_TOKEN = 131072  # llama-3.1-8b
IB_BYTES_PER_S = 50e9  # ib-ndr-400 preset, per GPU
IB_LATENCY_S = 1.5e-6
LAT = IB_LATENCY_S
TRACE = build_trace([(0.0, 100, 3), (0.05, 100, 2)])
#: Met by both requests when r1 need not wait for a decode slot, missed by r1 when it must:
#: client TTFT 0.25 s vs 0.29 s; prefill_end TPOT 0.12 s vs 0.16 s.
SLO = SLOConfig(ttft_s=0.27, tpot_s=0.13, attainment=0.5)


def cfg(ttft: str, slots: int) -> RunConfig:
    return RunConfig(
        prefill=PoolConfig(count=1, max_prefill_batch_requests=1, kv_capacity_tokens=10**9),
        decode=PoolConfig(count=1, max_batch_size=slots, kv_capacity_tokens=1600),  # 100 blocks
        link=LinkConfig(bandwidth_scale=KV_BYTES_PER_TOKEN * 1000.0 / IB_BYTES_PER_S),  # 1 ms per token
        cost=ConstantCost(prefill_s=0.1, decode_step_s=0.02),
        metrics=MetricsConfig(ttft=ttft),  # type: ignore[arg-type]
        slo=SLO,
    )


D0 = 0.2 + LAT + 0.04  # r0 done
L1 = D0 + 0.1 + LAT  # r1's KV lands (one slot)


def test_timestamps_of_the_two_request_run() -> None:
    """The simulated stages match the hand timing in the module docstring."""
    t = simulate(cfg("client", 1), TRACE, store=STORE).recorder.times
    expected = {
        "first_token_at": [0.1, 0.2],
        "decode_admit_at": [0.1, D0],
        "kv_send_end_at": [0.2 + LAT, L1],
        "decode_start_at": [0.2 + LAT, L1],
        "decode_first_token_at": [0.22 + LAT, L1 + 0.02],
        "completed_at": [D0, L1 + 0.02],
    }
    for col, want in expected.items():
        np.testing.assert_allclose(t[col], want, rtol=0, atol=1e-12, err_msg=col)


@pytest.mark.parametrize(
    ("ttft", "ttft_s", "tpot_s", "longest_gap_ms"),
    [
        # Client: first token when the request joins the decode batch; TPOT is pure decoding.
        ("client", [0.2 + LAT, L1 - 0.05], [0.02, 0.02], 20.0),
        # DistServe: first token at the end of prefill; TPOT carries the transfer and the wait.
        ("prefill_end", [0.1, 0.15], [(D0 - 0.1) / 2, L1 + 0.02 - 0.2], (L1 + 0.02 - 0.2) * 1e3),
    ],
)
def test_ttft_and_tpot_by_definition(ttft: str, ttft_s: list[float], tpot_s: list[float], longest_gap_ms: float) -> None:
    """TTFT and TPOT of both requests under each definition, against the hand timing; the
    summary says which definition it used; the longest gap between tokens is a decode step
    (client) or r1's only gap, from the end of its prefill to its one decode token
    (prefill_end)."""
    result = simulate(cfg(ttft, 1), TRACE, store=STORE)
    lat = request_latencies(result)
    np.testing.assert_allclose(lat["ttft_s"], ttft_s, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lat["tpot_s"], tpot_s, rtol=0, atol=1e-12)
    summary = summarize(result, SLO)
    assert summary["ttft_definition"] == ttft
    assert summary["mean_ttft_ms"] == pytest.approx(np.mean(ttft_s) * 1e3, abs=1e-9)
    _, pct = itl_percentiles(result)
    assert pct[-1] == pytest.approx(longest_gap_ms, abs=1e-9)  # p99 of three gaps: the longest


@pytest.mark.parametrize("ttft", ["client", "prefill_end"])
def test_waiting_for_a_decode_slot_counts_against_the_slo(ttft: str) -> None:
    """r1's 40 ms wait for the one decode slot makes it miss the SLO under either definition
    (client: in TTFT; prefill_end: in TPOT); with two slots it does not wait and both meet it."""
    one_slot = slo_met(simulate(cfg(ttft, 1), TRACE, store=STORE), SLO)
    two_slots = slo_met(simulate(cfg(ttft, 2), TRACE, store=STORE), SLO)
    assert one_slot.tolist() == [True, False]
    assert two_slots.tolist() == [True, True]


def test_pool_utilisation_of_the_two_request_run() -> None:
    """Time-weighted means over the run (first arrival 0 to last completion E = L1 + 0.02):

    * decode batch occupancy: r0 decodes [0.2 + lat, D0], r1 [L1, E] in a batch of one slot;
    * decode saturated: r1 waits for the slot over [0.2, D0];
    * decode KV: 7 blocks of 16 tokens each, r0 [0.1, D0] and r1 [D0, E], of 100 blocks;
    * prefill batch occupancy: 100 of 8,192 tokens for 0.2 s; saturated while r1 waits [0.05, 0.1];
    * busy reads the same for the decode pool whatever its load: only the steps are counted."""
    end = L1 + 0.02
    u = pool_utilisation(simulate(cfg("client", 1), TRACE, store=STORE))
    assert u["decode_batch_occupancy"] == pytest.approx(((D0 - 0.2 - LAT) + 0.02) / end, abs=1e-12)
    assert u["decode_saturated_fraction"] == pytest.approx((D0 - 0.2) / end, abs=1e-12)
    assert u["decode_kv_occupancy"] == pytest.approx(7 * ((D0 - 0.1) + (end - D0)) / (100 * end), abs=1e-12)
    assert u["prefill_batch_occupancy"] == pytest.approx(100 / 8192 * 0.2 / end, abs=1e-12)
    assert u["prefill_saturated_fraction"] == pytest.approx(0.05 / end, abs=1e-12)
    assert u["decode_busy_fraction"] == pytest.approx(0.06 / end, abs=1e-12)
