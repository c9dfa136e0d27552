"""Steady-state closed forms: the simulator against queueing theory, with a tolerance taken
from the data.

Each check runs R independent replications (own seed for arrivals, sizes and service draws)
of N_TOTAL Poisson arrivals, drops the first N_WARMUP customers of each (the run starts
empty), and averages the rest. With m_r the mean of replication r,

    mean = (1/R) Σ m_r,   SE = sd(m_1..m_R) / √R,   assert |mean − theory| ≤ 4·SE.

Seeds are fixed, so CI is deterministic, while the tolerance comes from the spread of
independent replications (no seed-pinned constants, no ``places=1``).

| setup (prefill pool, batching off, output = 1 token)   | formula                              |
|---------------------------------------------------------|--------------------------------------|
| M/M/1: exponential cost, one instance                   | W_q = ρ / (μ − λ)                    |
| M/D/1: constant cost                                    | W_q = ρ / (2μ(1 − ρ))                |
| M/G/1: service a + b·tokens, tokens from a known pmf    | W_q = λ E[S²] / (2(1 − ρ))  (P–K)   |
| M/M/c: ``shared_queue`` (central queue)                 | W_q = C(c, a) / (cμ − λ), a = λ/μ    |
| random routing over c instances                         | c independent M/M/1 at λ/c           |
| fair-share KV link (one link, output = 2)               | M/G/1-PS: E[T] = E[S] / (1 − ρ)      |

Plus a Kolmogorov–Smirnov test that the synthetic Poisson gaps, as the simulator replays
them, are exponential with mean 1/λ (the check that catches a truncated generator).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from simdisagg.config import (
    ConstantCost,
    ExponentialCost,
    LinkConfig,
    PoolConfig,
    RouterConfig,
    RunConfig,
)
from simdisagg.hardware import ProfileStore
from simdisagg.rng import Streams
from simdisagg.sim.engine import simulate
from simdisagg.sim.recorder import STATUS_COMPLETED, RunResult
from simdisagg.trace import Trace, TraceBuilder

pytestmark = pytest.mark.slow

STORE = ProfileStore()
R = 20  # replications
N_WARMUP = 1_000  # customers dropped at the start of each replication
N_TOTAL = 6_000  # customers per replication (5k measured)
Z = 4.0  # |mean − theory| ≤ Z · SE
BIG_KV = 10**9
MU = 10.0  # prefill service rate, 1/s (mean service 0.1 s)
KV_BYTES_PER_TOKEN = 131072  # llama-3.1-8b
IB_BYTES_PER_S = 50e9  # ib-ndr-400 per GPU
IB_LATENCY_S = 1.5e-6

TokenSampler = Callable[[np.random.Generator, int], np.ndarray]


# ---------------------------------------------------------------------------------------
# Workload: Poisson arrivals and token sizes from named streams


def poisson_trace(lam: float, n: int, seed: int, tokens: TokenSampler | None = None, output: int = 1) -> Trace:
    """``n`` requests with exponential gaps of mean 1/λ from ``Streams(seed)["arrivals"]``
    and prompt sizes from ``Streams(seed)["tokens"]`` (100 tokens when no sampler)."""
    streams = Streams(seed)
    at = np.cumsum(streams["arrivals"].exponential(1.0 / lam, n))
    size = tokens(streams["tokens"], n) if tokens else np.full(n, 100, dtype=np.int64)
    b = TraceBuilder(f"poisson(lam={lam}, seed={seed})")
    for k, (t, s) in enumerate(zip(at.tolist(), size.tolist(), strict=True)):
        b.add(line=k + 1, timestamp_s=t, input_tokens=int(s), output_tokens=output)
    return b.build()


# A two-class size distribution with a high SCV: 80 % short prompts, 20 % long ones.
SHORT = np.arange(1, 201)
LONG = np.arange(1000, 4001)
SIZE_VALUES = np.concatenate([SHORT, LONG]).astype(np.float64)
SIZE_PROBS = np.concatenate([np.full(len(SHORT), 0.8 / len(SHORT)), np.full(len(LONG), 0.2 / len(LONG))])


def mixed_tokens(rng: np.random.Generator, n: int) -> np.ndarray:
    """Prompt sizes from the pmf (SIZE_VALUES, SIZE_PROBS)."""
    long = rng.random(n) < 0.2
    return np.where(long, rng.integers(1000, 4001, n), rng.integers(1, 201, n)).astype(np.int64)


def size_moments(a: float, b: float) -> tuple[float, float]:
    """E[S] and E[S²] for S = a + b·tokens under the size pmf (exact sums)."""
    s = a + b * SIZE_VALUES
    return float((SIZE_PROBS * s).sum()), float((SIZE_PROBS * s * s).sum())


# ---------------------------------------------------------------------------------------
# Replications and the assertion


def replicate(
    cfg: RunConfig,
    lam: float,
    metric: Callable[[RunResult], np.ndarray],
    *,
    tokens: TokenSampler | None = None,
    output: int = 1,
    base_seed: int = 1000,
) -> np.ndarray:
    """Per-replication means of ``metric`` over customers N_WARMUP.. (arrival order)."""
    means = np.empty(R)
    for r in range(R):
        seed = base_seed + r
        trace = poisson_trace(lam, N_TOTAL, seed, tokens, output)
        result = simulate(cfg.model_copy(update={"seed": seed}), trace, store=STORE)
        assert (result.recorder.status == STATUS_COMPLETED).all()
        means[r] = float(metric(result)[N_WARMUP:].mean())
    return means


def assert_matches(means: np.ndarray, theory: float, what: str) -> None:
    mean = float(means.mean())
    se = float(means.std(ddof=1) / math.sqrt(len(means)))
    msg = f"{what}: mean={mean:.6g} theory={theory:.6g} SE={se:.3g} (|diff|={abs(mean - theory) / se:.2f} SE)"
    print(msg)
    assert abs(mean - theory) <= Z * se, msg


def wq(result: RunResult) -> np.ndarray:
    """Prefill queueing delay W_q = prefill start − arrival, per request."""
    t = result.recorder.times
    return t["prefill_start_at"] - t["arrival_at"]


def prefill_pool(cost: ConstantCost | ExponentialCost, count: int = 1, policy: str = "round_robin") -> RunConfig:
    return RunConfig(
        prefill=PoolConfig(count=count, max_prefill_batch_requests=1, kv_capacity_tokens=BIG_KV),
        decode=PoolConfig(count=1, kv_capacity_tokens=BIG_KV),
        router=RouterConfig(prefill_policy=policy),  # type: ignore[arg-type]
        cost=cost,
    )


def erlang_c(c: int, a: float) -> float:
    """Probability of waiting in M/M/c with offered load a = λ/μ < c."""
    rho = a / c
    head = sum(a**k / math.factorial(k) for k in range(c))
    tail = a**c / (math.factorial(c) * (1 - rho))
    return tail / (head + tail)


# ---------------------------------------------------------------------------------------
# Tests


def test_poisson_gaps_are_exponential() -> None:
    """KS: the gaps between arrivals, as replayed by the simulator (arrival_at), are
    exponential with mean 1/λ; nothing truncates the tail (max gap ≫ mean)."""
    lam = 8.0
    trace = poisson_trace(lam, 5_000, seed=7)
    result = simulate(prefill_pool(ConstantCost(prefill_s=0.01)), trace, store=STORE)
    for gaps in (
        np.diff(trace.timestamp_s),
        np.diff(np.sort(result.recorder.times["arrival_at"])),
    ):
        ks = stats.kstest(gaps, "expon", args=(0.0, 1.0 / lam))
        assert ks.pvalue > 1e-3, f"KS statistic {ks.statistic:.4f}, p={ks.pvalue:.2e}"
        assert gaps.max() > 6.0 / lam  # P(max of 5k gaps < 6 mean) ≈ 5000·e^-6 ≈ 0 tail check
        assert abs(gaps.mean() * lam - 1.0) < 4.0 / math.sqrt(len(gaps))


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_mm1_exponential_cost(rho: float) -> None:
    """M/M/1: W_q = ρ/(μ − λ)."""
    lam = rho * MU
    means = replicate(prefill_pool(ExponentialCost(mean_prefill_s=1 / MU)), lam, wq)
    assert_matches(means, rho / (MU - lam), f"M/M/1 rho={rho}")


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_constant_cost(rho: float) -> None:
    """M/D/1: W_q = ρ/(2μ(1 − ρ))."""
    lam = rho * MU
    means = replicate(prefill_pool(ConstantCost(prefill_s=1 / MU)), lam, wq)
    assert_matches(means, rho / (2 * MU * (1 - rho)), f"M/D/1 rho={rho}")


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_mg1_pollaczek_khinchine(rho: float) -> None:
    """M/G/1 with S = a + b·tokens, tokens from a two-class pmf (SCV ≈ 1.6):
    Pollaczek–Khinchine W_q = λ E[S²] / (2(1 − ρ))."""
    a, b = 0.01, 1e-4
    es, es2 = size_moments(a, b)
    lam = rho / es
    cost = ConstantCost(prefill_s=a, prefill_s_per_token=b)
    means = replicate(prefill_pool(cost), lam, wq, tokens=mixed_tokens)
    assert_matches(
        means,
        lam * es2 / (2 * (1 - rho)),
        f"M/G/1 rho={rho} E[S]={es:.4g} E[S2]={es2:.4g}",
    )


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_mmc_shared_queue_erlang_c(rho: float) -> None:
    """M/M/c with one central queue (shared_queue), c = 3: W_q = C(c, a)/(cμ − λ)."""
    c = 3
    lam = rho * c * MU
    cfg = prefill_pool(ExponentialCost(mean_prefill_s=1 / MU), count=c, policy="shared_queue")
    means = replicate(cfg, lam, wq)
    assert_matches(means, erlang_c(c, lam / MU) / (c * MU - lam), f"M/M/{c} rho={rho}")


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_random_routing_is_independent_mm1(rho: float) -> None:
    """Random routing over c = 3 instances splits a Poisson stream into c Poisson streams
    at λ/c: each instance is M/M/1, W_q = ρ/(μ − λ/c) with ρ = λ/(cμ)."""
    c = 3
    lam = rho * c * MU
    cfg = prefill_pool(ExponentialCost(mean_prefill_s=1 / MU), count=c, policy="random")
    means = replicate(cfg, lam, wq)
    assert_matches(means, rho / (MU - lam / c), f"random over {c} x M/M/1 rho={rho}")


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_fair_share_link_is_mg1_ps(rho: float) -> None:
    """The fair-share KV link as M/G/1-PS: E[T] = E[S]/(1 − ρ), whatever the size
    distribution (two-class sizes here). Prefill takes 1 µs (batching off), so transfers
    reach the link as the Poisson arrivals do; T = send end − send start − link latency."""
    per_token_s = 1e-4  # bandwidth scaled so that one prompt token of KV takes 0.1 ms
    scale = KV_BYTES_PER_TOKEN / (per_token_s * IB_BYTES_PER_S)
    es, _ = size_moments(0.0, per_token_s)
    lam = rho / es
    cfg = RunConfig(
        prefill=PoolConfig(count=1, max_prefill_batch_requests=1, kv_capacity_tokens=BIG_KV),
        decode=PoolConfig(count=1, kv_capacity_tokens=BIG_KV, max_batch_size=1_000_000),
        link=LinkConfig(sharing="fair_share", bandwidth_scale=scale),
        cost=ConstantCost(prefill_s=1e-6, decode_step_s=1e-6),
    )

    def sojourn(result: RunResult) -> np.ndarray:
        t = result.recorder.times
        return t["kv_send_end_at"] - t["kv_send_start_at"] - IB_LATENCY_S

    means = replicate(cfg, lam, sojourn, tokens=mixed_tokens, output=2)
    assert_matches(means, es / (1 - rho), f"M/G/1-PS link rho={rho} E[S]={es:.4g}")
