"""What a plan is asked: the budget, the hardware choices, the SLO, the search settings."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from simdisagg.config import RunConfig, SLOConfig
from simdisagg.errors import ConfigError
from simdisagg.hardware import Parallelism

RankBy = Literal["goodput", "per_gpu", "per_dollar", "per_kw"]
RANK_COLUMNS: dict[str, str] = {
    "goodput": "goodput_rps",
    "per_gpu": "goodput_per_gpu",
    "per_dollar": "goodput_per_dollar_hour",
    "per_kw": "goodput_per_kw",
}


_PARALLELISM = re.compile(r"tp(\d+)(?:-dp(\d+))?(?:-ep(\d+))?")


def parse_parallelism(label: str, where: str = "parallelism") -> Parallelism:
    """``tp8``, ``tp2-dp4``, ``tp1-dp8-ep8`` (as :attr:`Parallelism.label` spells them) to a
    :class:`Parallelism`; anything else is refused in one line naming ``where``."""
    match = _PARALLELISM.fullmatch(label.strip().lower())
    if match is None:
        raise ConfigError(f"{where}: '{label}' is not a parallelism such as tp8, tp2-dp4 or tp1-dp8-ep8")
    tp, dp, ep = (int(g) if g else 1 for g in match.groups())
    if min(tp, dp, ep) < 1:
        raise ConfigError(f"{where}: '{label}': tp, dp and ep must be >= 1")
    if (tp * dp) % ep:
        raise ConfigError(f"{where}: '{label}': ep {ep} must divide the instance's tp x dp = {tp * dp} GPUs")
    return Parallelism(tp, dp, ep)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SteadyStateSettings(_Frozen):
    """When a run at one rate counts as sustained (see :mod:`simdisagg.plan.steady_state`).

    A rate passes only at steady state: the arrival window is long against the requests'
    lifetimes (at least ``window_lifetimes`` times the p99 end-to-end latency the run itself
    measures, and ``min_requests`` requests after the warm-up; a shorter trace is tiled with
    fresh ids and sessions until it is), the first ``warmup_fraction`` of the window is left
    out of every figure, and over the second half of the window the backlog does not grow:
    the time requests wait in queues rises by at most ``max_growth`` seconds per second, or
    not significantly, while the requests in flight (arrivals less completions) do not rise
    with it, tested by the trends of ``bins`` batch means at a t statistic of
    ``significance``. The search screens on a short window (``screen_window_lifetimes``,
    ``screen_min_requests``) and confirms on the long one."""

    window_lifetimes: float = Field(default=20.0, ge=2, description="confirming window / p99 E2E latency")
    min_requests: int = Field(default=5000, ge=50, description="requests measured in a confirming run")
    screen_window_lifetimes: float = Field(default=3.0, ge=1, description="screening window / p99 E2E")
    screen_min_requests: int = Field(default=300, ge=20, description="requests measured in a screening run")
    warmup_fraction: float = Field(default=0.2, ge=0, lt=0.5, description="leading share of the window left out")
    max_growth: float = Field(default=0.005, gt=0, lt=1, description="rise of waits allowed, s per s")
    significance: float = Field(default=3.0, gt=0, description="t statistic a growth trend must reach")
    bins: int = Field(default=16, ge=4, le=64, description="batches of the second half for the trend")
    max_extensions: int = Field(default=2, ge=0, le=10, description="re-runs on a longer window per probe")
    max_requests: int = Field(default=400_000, ge=1000, description="most requests one run may simulate")


class SearchSettings(_Frozen):
    """How the goodput of one candidate is searched (rate scales are relative to the trace)."""

    rel_tol: float = Field(default=0.02, gt=0, lt=1, description="stop narrowing when hi/lo - 1 <= this")
    max_bisect_steps: int = Field(default=8, ge=0, le=60, description="most probes spent narrowing")
    max_confirm_probes: int = Field(default=8, ge=1, le=60, description="most probes on the long window")
    bracket_factor: float = Field(default=2.0, gt=1, description="grow/shrink factor while bracketing")
    min_rate_scale: float = Field(default=1e-3, gt=0, description="goodput below this counts as 0")
    max_rate_scale: float = Field(default=1e4, gt=0, description="stop growing here (goodput >= it)")
    steady: SteadyStateSettings = SteadyStateSettings()

    @model_validator(mode="after")
    def _check(self) -> SearchSettings:
        if self.min_rate_scale >= self.max_rate_scale:
            raise ValueError("min_rate_scale must be below max_rate_scale")
        return self


class PlanSpec(_Frozen):
    """What to search: the budget, the hardware choices, the SLO (in ``base.slo``) and options.

    Without a target rate, exactly one of ``gpus`` and ``budget_per_hour_usd`` sets the budget.
    Every (prefill GPU, decode GPU, prefill parallelism, decode parallelism, max batch, link)
    combination is a family (a pool's parallelisms: ``prefill_parallelisms`` /
    ``decode_parallelisms``, else TP only from ``tps``); each family contributes every split that leaves no room for another instance of
    either pool.

    With a target rate (``target_rate_rps``, or ``target_rate_scale`` times the trace's rate)
    the question turns around: the fewest GPUs (at most ``gpus``, else ``max_gpus``), or with
    ``budget_per_hour_usd`` the lowest price per hour within it, that sustain that rate within
    the SLO (:mod:`simdisagg.plan.target_rate`)."""

    base: RunConfig = RunConfig()
    gpus: int | None = Field(default=None, ge=2, le=100_000)
    budget_per_hour_usd: float | None = Field(default=None, gt=0)
    prefill_gpus: tuple[str, ...] = ("h100-sxm",)
    decode_gpus: tuple[str, ...] = ("h100-sxm",)
    tps: tuple[int, ...] = (1,)
    #: Parallelisms each pool tries (``tp8``, ``tp1-dp8-ep8`` ...; ``None``: ``tpN`` for each of
    #: ``tps``): attention DP and EP are searched per pool for mixture-of-experts models.
    prefill_parallelisms: tuple[str, ...] | None = None
    decode_parallelisms: tuple[str, ...] | None = None
    max_batch_sizes: tuple[int, ...] = (256,)
    links: tuple[str, ...] = ("ib-ndr-400",)
    aggregated: bool = Field(default=True, description="include the aggregated baselines")
    search: SearchSettings = SearchSettings()
    rank_by: RankBy = "goodput"
    prune: bool = True
    cost_error: float | None = Field(default=None, ge=0, lt=1, description="± step-time error to test")
    sensitivity_top: int = Field(default=3, ge=1)
    windows: int = Field(default=0, ge=0, le=1000)
    window_ratio: tuple[int, int] | None = None
    target_rate_rps: float | None = Field(default=None, gt=0, description="rate to sustain, requests/s")
    target_rate_scale: float | None = Field(default=None, gt=0, description="rate to sustain, x the trace's")
    max_gpus: int = Field(default=1024, ge=2, le=100_000, description="largest GPU count a target search tries")
    verify: bool = Field(
        default=True, description="re-run the best candidate on its window made 3x longer, at its goodput and 1.25x"
    )

    @model_validator(mode="after")
    def _check(self) -> PlanSpec:
        if self.target_rate_rps is not None and self.target_rate_scale is not None:
            raise ValueError("give the target rate in requests/s or as a rate scale, not both")
        if self.has_target:
            if self.gpus is not None and self.budget_per_hour_usd is not None:
                raise ValueError("with a target rate, give at most one of gpus (a cap) and budget_per_hour_usd")
        elif (self.gpus is None) == (self.budget_per_hour_usd is None):
            raise ValueError("give exactly one of gpus and budget_per_hour_usd")
        for name in ("prefill_gpus", "decode_gpus", "tps", "max_batch_sizes", "links"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        if any(t < 1 for t in self.tps) or any(b < 1 for b in self.max_batch_sizes):
            raise ValueError("tp and max batch sizes must be >= 1")
        return self

    @field_validator("prefill_parallelisms", "decode_parallelisms")
    @classmethod
    def _check_parallelisms(cls, labels: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if labels is not None:
            if not labels:
                raise ValueError("give one or more parallelisms, e.g. tp8 or tp1-dp8-ep8")
            for label in labels:
                try:
                    parse_parallelism(label)
                except ConfigError as exc:
                    raise ValueError(str(exc).removeprefix("parallelism: ")) from None
        return labels

    def pool_parallelisms(self, pool: Literal["prefill", "decode"]) -> list[Parallelism]:
        """The parallelisms a pool tries, in the order given, without repeats."""
        labels = getattr(self, f"{pool}_parallelisms")
        if labels is None:
            return [Parallelism(tp) for tp in dict.fromkeys(self.tps)]
        return list(dict.fromkeys(parse_parallelism(label) for label in labels))

    @property
    def slo(self) -> SLOConfig:
        """The SLO every candidate is held to."""
        return self.base.slo

    @property
    def has_target(self) -> bool:
        """Whether the plan asks for the cheapest cluster that sustains a target rate."""
        return self.target_rate_rps is not None or self.target_rate_scale is not None

    def target_rps(self, base_rate_rps: float) -> float:
        """The target rate in requests per second, given the trace's base rate."""
        if self.target_rate_rps is not None:
            return self.target_rate_rps
        assert self.target_rate_scale is not None
        return self.target_rate_scale * base_rate_rps
