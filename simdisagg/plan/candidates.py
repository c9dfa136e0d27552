"""The candidate space: every cluster a plan considers, and its enumeration from a budget.

A candidate is one cluster: prefill and decode instance counts, parallelism (TP, and for
mixture-of-experts models attention DP and EP) and GPU type per pool, decode max batch size and
KV link (disaggregated), or one aggregated pool with or without chunked prefill on the same
budget. Each (GPU, parallelism, batch, link) combination is a *family*; a family contributes
every split that leaves no room for one more instance of either pool. An instance of
parallelism ``tpT-dpD-epE`` takes ``T x D`` GPUs of the budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from simdisagg.config import RunConfig
from simdisagg.errors import ConfigError
from simdisagg.hardware import Parallelism, ProfileStore, check_parallelism

if TYPE_CHECKING:
    from simdisagg.plan.spec import PlanSpec

#: Most candidates one plan enumerates (a guard against budgets that explode the search).
MAX_CANDIDATES = 5000


@dataclass(frozen=True, slots=True)
class Candidate:
    """One cluster to evaluate. Aggregated candidates keep their pool in the ``decode_*``
    fields (``prefill_count`` is 0 and ``link`` is ``None``)."""

    mode: Literal["disaggregated", "aggregated"]
    prefill_count: int
    prefill_tp: int
    prefill_gpu: str
    decode_count: int
    decode_tp: int
    decode_gpu: str
    max_batch_size: int
    link: str | None = None
    chunked_prefill: bool = False
    prefill_dp: int = 1
    prefill_ep: int = 1
    decode_dp: int = 1
    decode_ep: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        """The candidate a :meth:`to_dict` produced."""
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON and pickle friendly)."""
        return asdict(self)

    @property
    def aggregated(self) -> bool:
        """Whether the candidate serves both phases on one pool."""
        return self.mode == "aggregated"

    @property
    def prefill_parallelism(self) -> Parallelism:
        """How one prefill instance spreads the model over its GPUs."""
        return Parallelism(self.prefill_tp, self.prefill_dp, self.prefill_ep)

    @property
    def decode_parallelism(self) -> Parallelism:
        """How one decode (or aggregated) instance spreads the model over its GPUs."""
        return Parallelism(self.decode_tp, self.decode_dp, self.decode_ep)

    @property
    def prefill_gpus(self) -> int:
        """GPUs of the prefill pool (0 for aggregated)."""
        return self.prefill_count * self.prefill_tp * self.prefill_dp

    @property
    def decode_gpus(self) -> int:
        """GPUs of the decode (or aggregated) pool."""
        return self.decode_count * self.decode_tp * self.decode_dp

    @property
    def gpus(self) -> int:
        """GPUs the candidate uses."""
        return self.prefill_gpus + self.decode_gpus

    @property
    def prefill_fraction(self) -> float:
        """Share of the GPUs in the prefill pool (NaN for aggregated)."""
        return math.nan if self.aggregated else self.prefill_gpus / self.gpus

    @property
    def ratio(self) -> str:
        """``3P:5D`` for a split, ``agg`` for aggregated serving."""
        return "agg" if self.aggregated else f"{self.prefill_count}P:{self.decode_count}D"

    @property
    def family(self) -> str:
        """Everything but the split: candidates of one family differ only in their ratio."""
        pp, dp = self.prefill_parallelism.label, self.decode_parallelism.label
        if self.aggregated:
            chunk = " chunked" if self.chunked_prefill else ""
            return f"aggregated {self.decode_gpu} {dp} b{self.max_batch_size}{chunk}"
        return f"{self.prefill_gpu} {pp} / {self.decode_gpu} {dp} b{self.max_batch_size} {self.link}"

    @property
    def hardware(self) -> str:
        """The family without the aggregated serving option (chunked prefill or not)."""
        if self.aggregated:
            return f"{self.decode_gpu} {self.decode_parallelism.label} b{self.max_batch_size}"
        return self.family

    @property
    def hardware_mix(self) -> str:
        """The GPU types and the link, without counts, TP or batch limits (``h100-sxm + ib-ndr-400``,
        ``h100-sxm/h200 + roce-200``, ``aggregated h100-sxm``): what one Pareto frontier covers."""
        if self.aggregated:
            return f"aggregated {self.decode_gpu}"
        gpus = self.prefill_gpu if self.prefill_gpu == self.decode_gpu else f"{self.prefill_gpu}/{self.decode_gpu}"
        return f"{gpus} + {self.link}"

    @property
    def label(self) -> str:
        """A short unique name, e.g. ``3P:5D h100-sxm tp1 / h100-sxm tp1 b256 ib-ndr-400``."""
        if self.aggregated:
            return f"{self.decode_count}x {self.family}"
        return f"{self.ratio} {self.family}"

    def price_per_hour_usd(self, store: ProfileStore) -> float:
        """What the candidate's GPUs cost per hour (NaN when one of them has no public price)."""
        cost = self.decode_gpus * _price(store, self.decode_gpu)
        if self.prefill_gpus:
            cost += self.prefill_gpus * _price(store, self.prefill_gpu)
        return cost

    def power_kw(self, store: ProfileStore) -> float:
        """The candidate's GPUs' rated power, kW."""
        watts = self.decode_gpus * store.gpu(self.decode_gpu).power_w.value
        if self.prefill_gpus:
            watts += self.prefill_gpus * store.gpu(self.prefill_gpu).power_w.value
        return watts / 1000.0

    def run_config(self, base: RunConfig) -> RunConfig:
        """``base`` with this candidate's cluster (validated)."""
        data = base.model_dump(mode="json")
        data["decode"].update(count=self.decode_count, tp=self.decode_tp, gpu=self.decode_gpu,
                              max_batch_size=self.max_batch_size, dp=self.decode_dp, ep=self.decode_ep)
        if self.aggregated:
            data["mode"] = "aggregated"
            data["prefill"].update(count=0, tp=self.decode_tp, gpu=self.decode_gpu, dp=self.decode_dp,
                                   ep=self.decode_ep)
            data["aggregated"].update(chunked_prefill=self.chunked_prefill, tp=None, gpu=None)
        else:
            data["mode"] = "disaggregated"
            data["prefill"].update(count=self.prefill_count, tp=self.prefill_tp, gpu=self.prefill_gpu,
                                   dp=self.prefill_dp, ep=self.prefill_ep)
            data["link"]["preset"] = self.link
        return RunConfig.model_validate(data)


def _dedupe(items: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _price(store: ProfileStore, gpu: str) -> float:
    price = store.gpu(gpu).price_per_hour_usd
    return math.nan if price is None else price.value


def make_candidate(
    mode: Literal["disaggregated", "aggregated"], prefill_count: int, prefill: Parallelism, prefill_gpu: str,
    decode_count: int, decode: Parallelism, decode_gpu: str, max_batch_size: int, link: str | None = None,
    chunked_prefill: bool = False,
) -> Candidate:
    """A :class:`Candidate` from each pool's :class:`Parallelism`."""
    return Candidate(
        mode, prefill_count, prefill.tp, prefill_gpu, decode_count, decode.tp, decode_gpu, max_batch_size, link,
        chunked_prefill, prefill.dp, prefill.ep, decode.dp, decode.ep,
    )


def budget_unit(spec: PlanSpec, store: ProfileStore, gpu: str) -> float:
    """Budget one GPU of type ``gpu`` takes: 1 with a GPU budget, else its price per hour
    (refused, naming the profile, when it has no public price)."""
    if spec.gpus is not None:
        return 1.0
    price = store.gpu(gpu).price_per_hour_usd
    if price is None:
        raise ConfigError(
            f"--budget-per-hour: {gpu} has no public price (see its profile); plan it with a device budget, --gpus N"
        )
    return price.value


def check_plan_prices(spec: PlanSpec, store: ProfileStore) -> None:
    """Refuse a dollar budget or a per-dollar ranking over a device without a public price."""
    for name in _dedupe(spec.prefill_gpus + spec.decode_gpus):
        if store.gpu(name).price_per_hour_usd is not None:
            continue
        if spec.budget_per_hour_usd is not None:
            budget_unit(spec.model_copy(update={"gpus": None}), store, name)
        if spec.rank_by == "per_dollar":
            raise ConfigError(
                f"--rank-by per_dollar: {name} has no public price (see its profile); rank by goodput or per_gpu"
            )


def check_plan_parallelisms(spec: PlanSpec, store: ProfileStore) -> None:
    """Refuse, in one line naming the option, a pool parallelism the model cannot be split by."""
    model = spec.base.model_shape(store)
    for pool in ("prefill", "decode"):
        for par in spec.pool_parallelisms(pool):
            check_parallelism(model, par.tp, f"--{pool}-parallelism {par.label}: tp", dp=par.dp, ep=par.ep)


def _splits(cost_p: float, cost_d: float, budget: float) -> list[tuple[int, int]]:
    """Every (prefill, decode) instance count pair within ``budget`` that leaves no room for
    one more instance of either pool (``cost_*``: budget one instance takes)."""
    eps = 1e-9 * max(budget, 1.0)
    out = []
    p = 1
    while p * cost_p + cost_d <= budget + eps:
        d = math.floor((budget - p * cost_p + eps) / cost_d)
        left = budget - p * cost_p - d * cost_d
        if left + eps < min(cost_p, cost_d):
            out.append((p, d))
        p += 1
    return out


def enumerate_candidates(spec: PlanSpec, store: ProfileStore) -> list[Candidate]:
    """Every candidate of the plan, aggregated baselines first, in a fixed order."""
    for name in _dedupe(spec.prefill_gpus + spec.decode_gpus):
        store.gpu(name)  # unknown names fail here, with the list of known ones
    for name in spec.links:
        store.link(name)
    store.model(spec.base.model)
    check_plan_parallelisms(spec, store)
    check_plan_prices(spec, store)

    def unit(gpu: str) -> float:
        return budget_unit(spec, store, gpu)

    budget = float(spec.gpus) if spec.gpus is not None else float(spec.budget_per_hour_usd or 0.0)
    out: list[Candidate] = []
    if spec.aggregated:
        for gpu in _dedupe(spec.prefill_gpus + spec.decode_gpus):
            for par in spec.pool_parallelisms("decode"):
                count = math.floor(budget / (par.gpus * unit(gpu)) + 1e-9)
                if count < 1:
                    continue
                for batch in _dedupe(spec.max_batch_sizes):
                    for chunked in (False, True):
                        out.append(make_candidate("aggregated", 0, par, gpu, count, par, gpu, batch, None, chunked))
    for gp in _dedupe(spec.prefill_gpus):
        for gd in _dedupe(spec.decode_gpus):
            for par_p in spec.pool_parallelisms("prefill"):
                for par_d in spec.pool_parallelisms("decode"):
                    pairs = _splits(par_p.gpus * unit(gp), par_d.gpus * unit(gd), budget)
                    for batch in _dedupe(spec.max_batch_sizes):
                        for link in _dedupe(spec.links):
                            for p, d in pairs:
                                out.append(make_candidate("disaggregated", p, par_p, gp, d, par_d, gd, batch, link))
                                if len(out) > MAX_CANDIDATES:
                                    raise ConfigError(
                                        f"the plan has more than {MAX_CANDIDATES} candidates; narrow the "
                                        "budget or the --tp/--*-parallelism/--max-batch/--link/GPU lists"
                                    )
    if not out:
        raise ConfigError("no candidate fits the budget (a split needs at least one instance per pool)")
    return out
