"""What a plan is asked: the budget, the hardware choices, the SLO, the search settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simdisagg.config import RunConfig, SLOConfig

RankBy = Literal["goodput", "per_gpu", "per_dollar", "per_kw"]
RANK_COLUMNS: dict[str, str] = {
    "goodput": "goodput_rps",
    "per_gpu": "goodput_per_gpu",
    "per_dollar": "goodput_per_dollar_hour",
    "per_kw": "goodput_per_kw",
}


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

class SearchSettings(_Frozen):
    """How the goodput of one candidate is searched (rate scales are relative to the trace)."""

    rel_tol: float = Field(default=0.02, gt=0, lt=1, description="stop narrowing when hi/lo - 1 <= this")
    max_bisect_steps: int = Field(default=8, ge=0, le=60, description="most probes spent narrowing")
    bracket_factor: float = Field(default=2.0, gt=1, description="grow/shrink factor while bracketing")
    min_rate_scale: float = Field(default=1e-3, gt=0, description="goodput below this counts as 0")
    max_rate_scale: float = Field(default=1e4, gt=0, description="stop growing here (goodput >= it)")

    @model_validator(mode="after")
    def _check(self) -> SearchSettings:
        if self.min_rate_scale >= self.max_rate_scale:
            raise ValueError("min_rate_scale must be below max_rate_scale")
        return self


class PlanSpec(_Frozen):
    """What to search: the budget, the hardware choices, the SLO (in ``base.slo``) and options.

    Exactly one of ``gpus`` and ``budget_per_hour_usd`` sets the budget. Every (prefill GPU,
    decode GPU, prefill TP, decode TP, max batch, link) combination is a family; each family
    contributes every split that leaves no room for another instance of either pool."""

    base: RunConfig = RunConfig()
    gpus: int | None = Field(default=None, ge=2, le=100_000)
    budget_per_hour_usd: float | None = Field(default=None, gt=0)
    prefill_gpus: tuple[str, ...] = ("h100-sxm",)
    decode_gpus: tuple[str, ...] = ("h100-sxm",)
    tps: tuple[int, ...] = (1,)
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

    @model_validator(mode="after")
    def _check(self) -> PlanSpec:
        if (self.gpus is None) == (self.budget_per_hour_usd is None):
            raise ValueError("give exactly one of gpus and budget_per_hour_usd")
        for name in ("prefill_gpus", "decode_gpus", "tps", "max_batch_sizes", "links"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        if any(t < 1 for t in self.tps) or any(b < 1 for b in self.max_batch_sizes):
            raise ValueError("tp and max batch sizes must be >= 1")
        return self

    @property
    def slo(self) -> SLOConfig:
        """The SLO every candidate is held to."""
        return self.base.slo
