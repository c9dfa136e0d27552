"""Run configuration: pydantic models, validated once, frozen, written next to the results.

A :class:`RunConfig` is the whole story of a run. It can come from a YAML or JSON file
(``--config``) and a handful of CLI flags override it; :func:`resolve_config` is the one place
the two meet. Defaults live here, never at the point of use. Times are in seconds.

Every number is checked against a sane range and its type is strict: a count is an integer
(``true``, ``2.0`` or ``"2"`` are refused, not read as 1 or 2), a switch is a boolean, and a
rate, time or size is a finite number. An error names the file and line of the setting, or the
flag that set it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from simdisagg.errors import ConfigError

if TYPE_CHECKING:
    from simdisagg.hardware import ModelShape, Parallelism, ProfileStore


#: Sane limits: a value past them is a typo or a unit mistake, never a real setting.
MAX_TTFT_TARGET_S = 600.0
MAX_TPOT_TARGET_S = 10.0
MAX_RATE_SCALE = 1e6


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _count(*, ge: int, le: int, **kw: Any) -> Any:
    """A strict integer field in ``[ge, le]`` (booleans, floats and strings are refused)."""
    return Field(strict=True, ge=ge, le=le, **kw)


def _number(**kw: Any) -> Any:
    """A strict, finite number field (an int is accepted, a boolean or a string is not)."""
    return Field(strict=True, allow_inf_nan=False, **kw)


Switch = Annotated[bool, Field(strict=True)]

#: Most draft tokens one speculative step may propose (engines use 1 to about 8).
MAX_DRAFT_TOKENS = 16


class SpeculativeConfig(_Frozen):
    """Speculative decoding in a decode (or aggregated) pool: each decode iteration a draft
    proposes ``draft_tokens`` tokens per request, the target model verifies them in one step
    (``draft_tokens + 1`` query tokens per request) and the request emits the accepted ones
    plus the target's own next token.

    ``method``: ``mtp`` drafts with the model's multi-token-prediction layers (its
    ``mtp_layers``; one MTP pass per draft token); ``draft`` with a separate draft model, the
    profile named by ``draft_model``, one decode step of it per draft token.

    Acceptance, exactly one of:

    * ``acceptance_length``: the mean tokens a step emits (accepted drafts + 1, what vLLM and
      SGLang report as the mean acceptance length), between 1 and ``draft_tokens + 1``; each
      draft token is accepted with the i.i.d. rate that gives this mean.
    * ``acceptance_rate``: the i.i.d. rate alpha at which each draft token is accepted, given
      the ones before it were: the accepted count is a geometric truncated at ``draft_tokens``,
      with mean length ``(1 - alpha^(k+1)) / (1 - alpha)``.
    * ``position_acceptance``: one probability per draft position, each the chance that
      position is accepted given every earlier one was (``[1, 1, 0]``: exactly two accepted).

    Draws are keyed by the run's seeded stream ``speculative`` and by the request, so a run is
    reproducible and a request accepts the same drafts whichever instance or mode serves it."""

    method: Literal["mtp", "draft"] = "mtp"
    draft_model: str | None = Field(default=None, description="draft model profile name (method 'draft')")
    draft_tokens: int = _count(
        default=1, ge=0, le=MAX_DRAFT_TOKENS, description="draft tokens proposed per request per step (k)"
    )
    acceptance_length: float | None = _number(
        default=None, ge=1, le=MAX_DRAFT_TOKENS + 1, description="mean tokens emitted per step (accepted + 1)"
    )
    acceptance_rate: float | None = _number(
        default=None, ge=0, le=1, description="i.i.d. chance each draft token is accepted"
    )
    position_acceptance: tuple[Annotated[float, Field(strict=True, ge=0, le=1, allow_inf_nan=False)], ...] | None = (
        Field(default=None, description="chance each draft position is accepted, given the earlier ones were")
    )

    @model_validator(mode="after")
    def _check(self) -> SpeculativeConfig:
        given = [
            name
            for name in ("acceptance_length", "acceptance_rate", "position_acceptance")
            if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of acceptance_length, acceptance_rate, position_acceptance"
                + (f" (got {', '.join(given)})" if given else "")
            )
        k = self.draft_tokens
        if self.acceptance_length is not None and self.acceptance_length > k + 1:
            raise ValueError(
                f"acceptance_length {self.acceptance_length:g} is more than draft_tokens + 1 = {k + 1} "
                "(a step emits at most its draft tokens and one of its own)"
            )
        if self.position_acceptance is not None and len(self.position_acceptance) != k:
            raise ValueError(
                f"position_acceptance has {len(self.position_acceptance)} values; it needs one per draft token ({k})"
            )
        if self.method == "draft" and self.draft_model is None:
            raise ValueError("draft_model is missing: method 'draft' needs the draft model's profile name")
        if self.method == "mtp" and self.draft_model is not None:
            raise ValueError("draft_model applies to method 'draft' only (method 'mtp' drafts with the model's own MTP layers)")
        return self


class PoolConfig(_Frozen):
    """One pool of identical instances (prefill, decode, or aggregated)."""

    count: int = _count(default=1, ge=0, le=100_000, description="instances in the pool")
    gpu: str = Field(default="h100-sxm", description="GPU profile name")
    tp: int = _count(default=1, ge=1, le=64, description="tensor-parallel GPUs per instance (per attention rank)")
    dp: int = _count(
        default=1, ge=1, le=256,
        description="attention data-parallel ranks per instance, each of tp GPUs serving its own requests "
        "(MoE models); the instance has tp x dp GPUs",
    )
    ep: int = _count(
        default=1, ge=1, le=1024,
        description="expert-parallel degree of the MoE layers across the instance's tp x dp GPUs",
    )
    max_batch_size: int = _count(default=256, ge=1, le=1_000_000, description="most requests in a decode batch")
    max_batched_tokens: int = _count(
        default=8192, ge=1, le=100_000_000,
        description="token budget of one prefill (or chunked) iteration, per attention rank",
    )
    max_prefill_batch_requests: int | None = _count(
        default=None, ge=1, le=1_000_000, description="most prompts in one prefill batch (1 = no batching)"
    )
    gpu_memory_utilisation: float = _number(
        default=0.90, gt=0, le=1, description="fraction of HBM the engine may use (vLLM's default)"
    )
    kv_block_tokens: int = _count(default=16, ge=1, le=65_536, description="tokens per paged-attention KV block")
    kv_capacity_tokens: int | None = _count(
        default=None, ge=1, le=10**13, description="override the KV capacity derived from memory (tokens)"
    )
    speculative: SpeculativeConfig | None = Field(
        default=None, description="speculative decoding (decode and aggregated pools; None: off)"
    )

    @model_validator(mode="after")
    def _check_expert_parallelism(self) -> PoolConfig:
        if (self.tp * self.dp) % self.ep:
            raise ValueError(
                f"ep {self.ep} must divide the instance's tp x dp = {self.tp * self.dp} GPUs (experts are spread over them)"
            )
        return self

    @property
    def instance_batched_tokens(self) -> int:
        """Token budget of one iteration of the whole instance: with attention data parallelism
        each of the ``dp`` ranks schedules its own ``max_batched_tokens`` (as SGLang and
        TensorRT-LLM do), and the iteration waits for the slowest rank."""
        return self.max_batched_tokens * self.dp

    @property
    def gpus_per_instance(self) -> int:
        """GPUs of one instance: ``tp`` per attention rank, ``dp`` ranks."""
        return self.tp * self.dp

    @property
    def parallelism(self) -> Parallelism:
        """This pool's :class:`~simdisagg.hardware.Parallelism`."""
        from simdisagg.hardware import Parallelism

        return Parallelism(self.tp, self.dp, self.ep)

    @property
    def gpus(self) -> int:
        """GPUs in the whole pool."""
        return self.count * self.tp * self.dp


class LinkConfig(_Frozen):
    """How KV caches cross from prefill to decode instances.

    ``fifo``: each prefill instance's NICs send one transfer at a time, in order.
    ``fair_share``: the NICs' bandwidth is split evenly among that instance's transfers in
    flight (processor sharing). Per-GPU bandwidth is multiplied by ``min(tp_prefill,
    tp_decode)``: each GPU sends its own shard of the KV over its own NIC.
    """

    preset: str = "ib-ndr-400"
    sharing: Literal["fifo", "fair_share"] = "fifo"
    bandwidth_scale: float = _number(default=1.0, gt=0, le=1e6, description="scale the preset's bandwidth")


PrefillPolicy = Literal[
    "round_robin", "least_outstanding_tokens", "random", "shared_queue", "kv_aware", "session_affinity"
]


class RouterConfig(_Frozen):
    """Routing policies by name (see :mod:`simdisagg.sim.router` for each one's rule).

    ``conditional_prefill_tokens``: with a value, a request whose uncached prompt part is at
    most that many tokens is prefilled on its decode instance itself (no KV transfer);
    longer ones are prefilled remotely (conditional disaggregation)."""

    prefill_policy: PrefillPolicy = "least_outstanding_tokens"
    decode_policy: Literal["least_loaded", "kv_aware", "session_affinity"] = "least_loaded"
    kv_overlap_weight: float = _number(default=1.0, ge=0, le=1e6, description="kv_aware: weight of tokens to compute vs queued")
    conditional_prefill_tokens: int | None = _count(default=None, ge=1, le=100_000_000)


class TierConfig(_Frozen):
    """A KV storage tier below HBM. Capacities are per GPU (an instance of ``tp`` GPUs gets
    ``tp`` times as much), except for ``shared_store``, one store for the whole cluster."""

    kind: Literal["host_dram", "nvme", "shared_store"]
    capacity_bytes: float = _number(gt=0, le=1e18, description="per GPU, or total for shared_store")
    read_bytes_per_s: float = _number(gt=0, le=1e15)
    write_bytes_per_s: float = _number(gt=0, le=1e15)


class PrefixCacheConfig(_Frozen):
    """Prefix caching (active when the trace carries ``hash_ids``).

    ``hbm_fraction`` of each prefill/aggregated instance's KV memory holds cached prefix
    blocks (LRU); ``decode_retain_fraction`` of each decode instance's KV memory keeps the
    context of finished requests, so a returning session's KV need not cross the link again."""

    enabled: Switch = True
    hbm_fraction: float = _number(default=0.5, ge=0, lt=1)
    decode_retain_fraction: float = _number(default=0.0, ge=0, lt=1)
    tiers: tuple[TierConfig, ...] = ()

    @field_validator("tiers")
    @classmethod
    def _shared_store_last(cls, tiers: tuple[TierConfig, ...]) -> tuple[TierConfig, ...]:
        # The cluster-wide store sits below every instance's own tiers (as Mooncake's does).
        if any(t.kind == "shared_store" for t in tiers[:-1]):
            raise ValueError("a shared_store tier must be the last tier, and there can be only one")
        return tiers


class SLOConfig(_Frozen):
    """Latency targets. A request meets the SLO when both its TTFT and TPOT are within them."""

    ttft_s: float = _number(default=2.0, gt=0, description="TTFT target, seconds")
    tpot_s: float = _number(default=0.10, gt=0, description="TPOT target, seconds")
    attainment: float = _number(default=0.90, gt=0, le=1, description="target fraction of requests")

    @field_validator("ttft_s", "tpot_s")
    @classmethod
    def _sane_target(cls, value: float, info: Any) -> float:
        # Seconds: a target of thousands of seconds is almost always milliseconds typed as seconds.
        limit = MAX_TTFT_TARGET_S if info.field_name == "ttft_s" else MAX_TPOT_TARGET_S
        if value > limit:
            raise ValueError(
                f"{value:g} s is over the {limit:g} s limit; the unit is seconds (did you mean {value / 1000:g} s?)"
            )
        return value


class RooflineCost(_Frozen):
    """Roofline model with named efficiency factors (assumed defaults, not measurements)."""

    kind: Literal["roofline"] = "roofline"
    prefill_mfu: float = _number(default=0.55, gt=0, le=1)
    decode_mfu: float = _number(default=0.55, gt=0, le=1)
    memory_bandwidth_utilisation: float = _number(default=0.80, gt=0, le=1)
    iteration_overhead_s: float = _number(default=2.0e-4, ge=0, le=10)
    allreduce_latency_s: float = _number(default=1.0e-5, ge=0, le=1)
    expert_imbalance: float = _number(
        default=1.0, ge=1, le=64,
        description="MoE: the busiest GPU's expert load over the mean (1: even routing; an assumption)",
    )


class AutoCost(RooflineCost):
    """A fitted profile for (GPU, model, TP) when one exists, else the roofline model."""

    kind: Literal["auto"] = "auto"  # type: ignore[assignment]


class ConstantCost(_Frozen):
    """Fixed service times, for queueing validation (M/D/1, M/D/c)."""

    kind: Literal["constant"] = "constant"
    prefill_s: float = _number(default=0.1, gt=0, le=3600)
    prefill_s_per_token: float = _number(default=0.0, ge=0, le=10, description="adds tokens × this (M/G/1)")
    decode_step_s: float = _number(default=0.02, gt=0, le=3600)
    decode_step_s_per_context_token: float = _number(default=0.0, ge=0, le=10)


class ExponentialCost(_Frozen):
    """Exponentially distributed prefill service times (M/M/1, M/M/c); constant decode steps."""

    kind: Literal["exponential"] = "exponential"
    mean_prefill_s: float = _number(default=0.1, gt=0, le=3600)
    decode_step_s: float = _number(default=0.02, gt=0, le=3600)


CostConfig = Annotated[AutoCost | RooflineCost | ConstantCost | ExponentialCost, Field(discriminator="kind")]


class PrecisionConfig(_Frozen):
    """Number formats the model is served in: weights (and the GEMMs that read them) and the
    KV cache. ``fp8`` weights are 1 byte per parameter (per-tensor scales), ``fp8_block`` the
    same with 128 x 128 block scales; ``fp4`` (NVFP4) 0.5 byte plus one FP8 scale per 16
    parameters; ``fp8`` KV is 1 byte per element."""

    weights: Literal["bf16", "fp8", "fp8_block", "fp4"] = "bf16"
    kv_cache: Literal["bf16", "fp8"] = "bf16"
    #: MoE experts in their own format (``None``: as ``weights``): gpt-oss ships MXFP4 experts
    #: beside BF16 attention; ``int4`` is weight-only INT4 (group 32).
    experts: Literal["bf16", "fp8", "fp8_block", "fp4", "mxfp4", "int4"] | None = None


Framework = Literal["vllm", "sglang", "trtllm"]


class AggregatedConfig(_Frozen):
    """Options of the aggregated baseline (instances that do both phases)."""

    chunked_prefill: Switch = Field(default=False, description="mix prefill chunks into decode iterations")
    tp: int | None = _count(default=None, ge=1, le=64, description="TP per instance (default: the decode pool's)")
    gpu: str | None = Field(default=None, description="GPU type (default: the decode pool's)")


TtftDefinition = Literal["client", "prefill_end"]


class MetricsConfig(_Frozen):
    """How latency metrics are defined (the README's metric definitions give them in full).

    ``ttft``: ``client`` (the default) is the first token as the client sees it. A
    disaggregated cluster streams the answer from the decode instance (vLLM's disaggregated
    serving, SGLang, Dynamo), so the first token reaches the client when the request, its KV
    transferred, joins the decode instance's running batch: after prefill, the wait for a
    decode slot and KV memory, and the KV transfer. ``prefill_end`` is DistServe's definition:
    the end of prefill. Either way the wait for a decode slot counts against the SLO: in TTFT
    (``client``) or in TPOT, which then runs from the end of prefill (``prefill_end``)."""

    ttft: TtftDefinition = "client"


# -- dynamic clusters: autoscaling, faults, tenants, time series ---------------------------

PoolName = Literal["prefill", "decode", "aggregated"]


class ColdStartConfig(_Frozen):
    """How long a new instance takes before it serves: the model's weights (at the run's
    precision) read from a named source at its bandwidth (``hardware_profiles/weight_sources/``,
    each figure with its source), then the engine's warm-up.

    ``warmup_s`` is an assumption, not a measurement made here: 35 s is vLLM's engine
    initialisation (memory profiling, torch.compile loaded from its cache, CUDA graph capture,
    KV cache allocation) reported as 34.1 s in vllm-project/vllm#20264 for an 8B-class model
    with the compile cache reused; without that cache it was 91 s in
    run-ai/runai-model-streamer#67."""

    weight_source: str = Field(default="nvme-gen4", description="weight source profile name")
    warmup_s: float = _number(default=35.0, ge=0, le=3600, description="engine warm-up after the weights load, s")


class LoadScaling(_Frozen):
    """Scale on load thresholds, measured over the last decision interval: prompts or requests
    waiting per serving instance (instantaneous), KV occupancy and batch occupancy (time
    means over the serving instances). A metric above its threshold scales out to the count
    that brings the highest metric back to its threshold (``ceil(n * metric / threshold)``);
    when every metric is below ``scale_in_below`` times its threshold, one instance drains.
    ``None`` leaves a metric out."""

    kind: Literal["load"] = "load"
    queue_per_instance: float | None = _number(default=4.0, gt=0, le=1e9, description="waiting requests per instance")
    kv_occupancy: float | None = _number(default=0.85, gt=0, le=1, description="KV blocks in use / capacity")
    batch_occupancy: float | None = _number(default=0.85, gt=0, le=1, description="batch slots in use (prefill: share of time computing)")
    scale_in_below: float = _number(default=0.5, gt=0, lt=1, description="fraction of every threshold")

    @model_validator(mode="after")
    def _some_metric(self) -> LoadScaling:
        if self.queue_per_instance is None and self.kv_occupancy is None and self.batch_occupancy is None:
            raise ValueError("the load policy needs at least one of queue_per_instance, kv_occupancy, batch_occupancy")
        return self


class SLOScaling(_Frozen):
    """Scale on observed latency: a percentile of TTFT (requests whose first token came in the
    last ``window_s``, plus those still waiting for it, at their age so far) and of ITL (the
    mean iteration time of each serving decode or aggregated instance over the last decision
    interval, the percentile taken over instances weighted by their iterations) against the
    run's SLO targets (``slo.ttft_s``; ``slo.tpot_s`` for ITL). Above ``scale_out_above`` times the target: one instance more (two when over the
    target itself); below ``scale_in_below`` times it: one instance drains. ``metric``
    ``auto`` watches TTFT for prefill pools, ITL for decode pools and both for aggregated ones."""

    kind: Literal["slo"] = "slo"
    metric: Literal["auto", "ttft", "itl"] = "auto"
    percentile: float = _number(default=90.0, gt=0, lt=100)
    window_s: float = _number(default=60.0, gt=0, le=86_400)
    scale_out_above: float = _number(default=0.8, gt=0, le=100, description="fraction of the SLO target")
    scale_in_below: float = _number(default=0.3, ge=0, le=100, description="fraction of the SLO target")

    @model_validator(mode="after")
    def _band(self) -> SLOScaling:
        if self.scale_in_below >= self.scale_out_above:
            raise ValueError(
                f"scale_in_below ({self.scale_in_below:g}) must be below scale_out_above ({self.scale_out_above:g})"
            )
        return self


class PredictiveScaling(_Frozen):
    """Provision for a forecast: a least-squares line through the arrival rates of the last
    ``history_windows`` windows of ``window_s`` is evaluated one cold start plus one decision
    interval ahead (never below zero), and the pool gets the instances that rate needs at
    ``target_utilisation``: prefill, the forecast rate times the busy seconds per prompt the
    pool has measured; decode and aggregated, by Little's law, the forecast rate times the
    measured time a request spends in the batch, over ``max_batch_size``."""

    kind: Literal["predictive"] = "predictive"
    history_windows: int = _count(default=6, ge=2, le=10_000)
    window_s: float = _number(default=60.0, gt=0, le=86_400)
    target_utilisation: float = _number(default=0.7, gt=0, le=1)


ScalingPolicy = Annotated[LoadScaling | SLOScaling | PredictiveScaling, Field(discriminator="kind")]


class PoolScaling(_Frozen):
    """Autoscaling of one pool: bounds, the time between two scaling actions, the policy."""

    min_instances: int = _count(default=1, ge=0, le=100_000)
    max_instances: int = _count(default=16, ge=1, le=100_000)
    cooldown_s: float = _number(default=60.0, ge=0, le=86_400, description="between two actions on this pool")
    policy: ScalingPolicy = LoadScaling()

    @model_validator(mode="after")
    def _bounds(self) -> PoolScaling:
        if self.min_instances > self.max_instances:
            raise ValueError(f"min_instances ({self.min_instances}) is above max_instances ({self.max_instances})")
        return self


class AutoscaleConfig(_Frozen):
    """Pools that scale independently. Every ``interval_s`` each pool with a scaling setting
    asks its policy for a count; a pool grows by starting instances (serving after the cold
    start) and shrinks by draining them (an instance takes no new work and leaves when its
    work is done). An aggregated run without an ``aggregated`` setting scales with the decode
    pool's setting (else the prefill pool's), with bounds of as many GPUs as the prefill and
    decode bounds together (a pool without a setting counts at its size), widened to hold the
    initial count. See :mod:`simdisagg.sim.autoscale` for what each policy measures."""

    interval_s: float = _number(default=10.0, gt=0, le=86_400, description="between two decisions")
    prefill: PoolScaling | None = None
    decode: PoolScaling | None = None
    aggregated: PoolScaling | None = None
    cold_start: ColdStartConfig = ColdStartConfig()


class InstanceFailure(_Frozen):
    """An instance of ``pool`` (its ``index``: the initial instances are 0, 1, ..., later ones
    numbered on in the order they start) fails at ``at_s``; after ``repair_s`` (``None``:
    never) a replacement starts, with a cold start."""

    kind: Literal["instance"] = "instance"
    pool: PoolName
    index: int = _count(ge=0, le=100_000)
    at_s: float = _number(ge=0, le=1e9)
    repair_s: float | None = _number(default=None, gt=0, le=1e9)


class LinkFault(_Frozen):
    """The KV link of prefill instance ``prefill_instance`` (``None``: every link) runs at
    ``bandwidth_scale`` of its bandwidth from ``at_s`` for ``duration_s``; 0 is an outage
    (transfers stop, and resume when it ends)."""

    kind: Literal["link"] = "link"
    prefill_instance: int | None = _count(default=None, ge=0, le=100_000)
    at_s: float = _number(ge=0, le=1e9)
    duration_s: float = _number(gt=0, le=1e9)
    bandwidth_scale: float = _number(default=0.0, ge=0, lt=1)


FaultEvent = Annotated[InstanceFailure | LinkFault, Field(discriminator="kind")]


class RandomInstanceFaults(_Frozen):
    """Every instance of ``pool`` (``all``: of every pool) fails after an exponential time of
    mean ``mtbf_s`` from its start, and its replacement starts after an exponential repair of
    mean ``mttr_s`` (then cold-starts). Drawn from the run's ``faults`` random stream; random
    faults strike until the trace's last open-loop arrival, after which the cluster is only
    repaired (so that a run whose instances fail faster than they start still ends)."""

    kind: Literal["instance"] = "instance"
    pool: PoolName | Literal["all"] = "all"
    mtbf_s: float = _number(gt=0, le=1e12)
    mttr_s: float = _number(gt=0, le=1e12)


class RandomLinkFaults(_Frozen):
    """Every KV link degrades (``bandwidth_scale``; 0 is an outage) after exponential times of
    mean ``mtbf_s``, for exponential times of mean ``mttr_s``."""

    kind: Literal["link"] = "link"
    mtbf_s: float = _number(gt=0, le=1e12)
    mttr_s: float = _number(gt=0, le=1e12)
    bandwidth_scale: float = _number(default=0.0, ge=0, lt=1)


RandomFaults = Annotated[RandomInstanceFaults | RandomLinkFaults, Field(discriminator="kind")]


class FaultsConfig(_Frozen):
    """Instance failures and link faults, scheduled (``events``) or random (``random``).

    Nothing is lost: prompts queued or running on a failed prefill instance are routed again;
    prompts whose KV waited there for a transfer are prefilled again; requests whose KV
    was on a failed decode instance go back to prefill with their context so far (the prompt
    and the tokens already streamed; prefix-cache tiers that still hold the prompt's blocks
    serve them), and requests whose KV had not yet landed there are sent to another decode
    instance. ``fallback`` decides what happens while a whole pool is down:

    ``wait``        requests wait for an instance of that pool (rejected at the end if none returns);
    ``reject``      requests that need that pool are rejected, saying why;
    ``aggregated``  the other pool serves both phases: decode instances prefill prompts
                    themselves, and prefill instances switch role to serve decode as well
                    (after ``role_switch_s``, the warm-up by default: the weights stay in memory),
                    switching back once the pool has an instance again. One prefill instance
                    switches at a time (the least loaded); it finishes the prompts it holds
                    before it leaves the prefill pool, and its GPUs count in both pools while
                    it does (GPU-hours are slightly overstated then).

    What is left waiting when the run ends (no instance of the pool came back) is rejected,
    saying so; the run's summary counts retries and recomputed tokens."""

    events: tuple[FaultEvent, ...] = ()
    random: tuple[RandomFaults, ...] = ()
    fallback: Literal["wait", "reject", "aggregated"] = "wait"
    role_switch_s: float | None = _number(default=None, ge=0, le=3600)


class TenantConfig(_Frozen):
    """One tenant (the ``tenant`` field of trace lines): priority in every queue (higher first,
    arrival order within a priority), quotas enforced at the router and its own SLO.

    ``max_in_flight``: requests admitted and not finished. ``max_tokens_per_s``: a token bucket
    on each request's prompt plus answer tokens, holding ``burst_tokens`` (default: one second's
    worth); a request is admitted when the bucket holds its tokens (or is full, for a request
    larger than the bucket, which then owes the difference). Requests over a quota wait at the
    router in arrival order (``over_quota: queue``) or are rejected (``reject``). When tenants
    are listed, every tenant a trace names must be among them (an unlisted name is refused,
    naming its line); requests that name no tenant have priority 0, no quota and the run's
    SLO. A trace's tenants with none listed here get per-tenant metrics, and nothing else."""

    name: str = Field(strict=True, min_length=1, max_length=200)
    priority: int = _count(default=0, ge=-1_000_000, le=1_000_000)
    max_in_flight: int | None = _count(default=None, ge=1, le=10**9)
    max_tokens_per_s: float | None = _number(default=None, gt=0, le=1e12)
    burst_tokens: float | None = _number(default=None, gt=0, le=1e15)
    over_quota: Literal["queue", "reject"] = "queue"
    slo: SLOConfig | None = None

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> TenantConfig:
        if self.burst_tokens is not None and self.max_tokens_per_s is None:
            raise ValueError("burst_tokens applies only with max_tokens_per_s")
        return self


class TimeSeriesConfig(_Frozen):
    """Per-window time series of a run (``--out``'s ``timeseries.parquet``, ``--plots``)."""

    window_s: float | None = _number(default=None, gt=0, le=1e9, description="window width; None: about 200 windows")


class RunConfig(_Frozen):
    """Everything that defines one simulation run."""

    model: str = "llama-3.1-8b"
    mode: Literal["disaggregated", "aggregated"] = "disaggregated"
    prefill: PoolConfig = PoolConfig(count=1)
    decode: PoolConfig = PoolConfig(count=1)
    aggregated: AggregatedConfig = AggregatedConfig()
    link: LinkConfig = LinkConfig()
    router: RouterConfig = RouterConfig()
    prefix_cache: PrefixCacheConfig = PrefixCacheConfig()
    slo: SLOConfig = SLOConfig()
    cost: CostConfig = AutoCost()
    precision: PrecisionConfig = PrecisionConfig()
    metrics: MetricsConfig = MetricsConfig()
    framework: Framework = Field(
        default="vllm", description="serving framework whose measured kernels and overheads a measured profile uses"
    )
    seed: int = _count(default=0, ge=0, le=2**63 - 1)
    rate_scale: float = _number(
        default=1.0, gt=0, le=MAX_RATE_SCALE, description="replay open-loop arrivals this many times faster"
    )
    exact_steps: Switch = Field(default=False, description="one event per decode iteration (reference mode)")
    autoscale: AutoscaleConfig | None = Field(default=None, description="pools that scale (none: a fixed cluster)")
    faults: FaultsConfig | None = Field(default=None, description="instance failures and link faults")
    tenants: tuple[TenantConfig, ...] = ()
    timeseries: TimeSeriesConfig = TimeSeriesConfig()

    @field_validator("prefill")
    @classmethod
    def _prefill_does_not_speculate(cls, pool: PoolConfig) -> PoolConfig:
        if pool.speculative is not None:
            raise ValueError("speculative decoding applies to the decode pool (a prefill pool does not decode)")
        return pool

    @model_validator(mode="after")
    def _check_counts(self) -> RunConfig:
        if self.mode == "disaggregated" and (self.prefill.count < 1 or self.decode.count < 1):
            raise ValueError(
                "disaggregated mode needs at least one prefill and one decode instance "
                f"(prefill.count {self.prefill.count}, decode.count {self.decode.count})"
            )
        if self.mode == "aggregated" and self.aggregated_pool().count < 1:
            pool = self.aggregated_pool()
            raise ValueError(
                f"aggregated mode needs at least one instance: {self.prefill.gpus + self.decode.gpus} GPUs "
                f"(prefill.count x prefill.tp + decode.count x decode.tp) do not make one TP-{pool.tp} instance"
            )
        self._check_dynamic()
        return self

    def _check_dynamic(self) -> None:
        """Autoscaling bounds that hold the initial counts, faults on pools the mode has, and
        tenant names given once."""
        pools = ("aggregated",) if self.mode == "aggregated" else ("prefill", "decode")
        counts = {"prefill": self.prefill.count, "decode": self.decode.count,
                  "aggregated": self.aggregated_pool().count}  # fmt: skip
        if self.autoscale is not None:
            for name in ("prefill", "decode", "aggregated"):
                scaling = getattr(self.autoscale, name)
                if scaling is None or name not in pools:
                    continue
                if not scaling.min_instances <= counts[name] <= scaling.max_instances:
                    raise ValueError(
                        f"autoscale.{name}: the pool starts with {counts[name]} instances, outside "
                        f"min_instances {scaling.min_instances} .. max_instances {scaling.max_instances}"
                    )
        if self.faults is not None:
            for k, event in enumerate(self.faults.events):
                if isinstance(event, InstanceFailure) and event.pool not in pools:
                    raise ValueError(
                        f"faults.events.{k}: a {self.mode} cluster has no {event.pool} pool "
                        f"(its pools: {', '.join(pools)})"
                    )
                if isinstance(event, LinkFault) and self.mode == "aggregated":
                    raise ValueError(f"faults.events.{k}: an aggregated cluster has no KV links")
            for k, random in enumerate(self.faults.random):
                if isinstance(random, RandomInstanceFaults) and random.pool not in (*pools, "all"):
                    raise ValueError(f"faults.random.{k}: a {self.mode} cluster has no {random.pool} pool")
            fails = any(isinstance(e, InstanceFailure) for e in self.faults.events) or any(
                isinstance(r, RandomInstanceFaults) for r in self.faults.random
            )
            if fails and self.decode.speculative is not None and self.decode.speculative.draft_tokens > 0:
                # A failed decode instance resumes its requests from the tokens they received;
                # under speculation that count is per request per step, which is not kept.
                raise ValueError(
                    "faults: instance failures with speculative decoding (decode.speculative) are not "
                    "modelled; drop one of the two"
                )
        seen: set[str] = set()
        for k, tenant in enumerate(self.tenants):
            if tenant.name in seen:
                raise ValueError(f"tenants.{k}: tenant '{tenant.name}' is listed twice")
            seen.add(tenant.name)

    @property
    def dynamic(self) -> bool:
        """Whether the run needs the dynamic cluster: autoscaling, faults or tenants."""
        return self.autoscale is not None or self.faults is not None or bool(self.tenants)

    def fixed(self) -> RunConfig:
        """This config without autoscaling, faults and tenants (a fixed cluster)."""
        return self.model_copy(update={"autoscale": None, "faults": None, "tenants": ()})

    @property
    def total_gpus(self) -> int:
        """GPUs the run uses."""
        if self.mode == "aggregated":
            return self.aggregated_pool().gpus
        return self.prefill.gpus + self.decode.gpus

    def aggregated_pool(self) -> PoolConfig:
        """The aggregated pool on the same GPUs as the disaggregated prefill + decode pools
        (instances shaped like the decode pool's unless ``aggregated.tp`` says otherwise)."""
        tp = self.aggregated.tp or self.decode.tp
        gpus = self.prefill.gpus + self.decode.gpus
        per_instance = tp * self.decode.dp
        return self.decode.model_copy(
            update={"count": gpus // per_instance, "tp": tp, "gpu": self.aggregated.gpu or self.decode.gpu}
        )

    def model_shape(self, store: ProfileStore) -> ModelShape:
        """The model's shape from ``store``, served at this run's precision."""
        return store.model(self.model).served_at(
            self.precision.weights, self.precision.kv_cache, self.precision.experts
        )

    def as_aggregated(self) -> RunConfig:
        """The aggregated baseline of this config on the same GPUs."""
        return self.model_copy(update={"mode": "aggregated"})


#: Keys of the ``config.json`` that ``simdisagg run --out`` writes besides the run config itself
#: (see :meth:`simdisagg.api.RunSummary.config_record`).
_RECORD_KEYS = frozenset({"config", "trace", "cost_model", "versions"})


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (validated later, with the overrides).

    The dict remembers the line of each key (:class:`~simdisagg.inputs.Settings`), so that a
    validation error names it; duplicate keys, deep nesting and non-UTF-8 text are refused.

    A ``config.json`` written by ``simdisagg run --out`` (the run config under ``config``,
    beside the trace, cost model and versions that produced it) yields its run config, so a
    recorded run can be repeated with ``--config``."""
    from simdisagg.inputs import Settings, load_settings

    data = load_settings(path, "config")
    if "config" in data and set(data) <= _RECORD_KEYS:
        inner = data["config"]
        if not isinstance(inner, dict):
            raise ConfigError(f"{path}: field 'config' of a recorded run must be a mapping of settings")
        settings = Settings(inner)
        settings.source = data.source
        settings.lines = {key[1:]: line for key, line in data.lines.items() if key[:1] == ("config",) and len(key) > 1}
        return settings
    return data


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation holds: itself, or the members of an optional, a
    union, an annotated type or a tuple of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        out.extend(m for m in _models_in(arg) if m not in out)
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and not getattr(annotation, "__args__", None):
        out.extend(m for m in _models_in(origin) if m not in out)
    return out


def _known_fields(model: type[BaseModel], path: tuple[str, ...], data: Any = None) -> list[str]:
    """The setting names the model accepts at ``path`` (for did-you-mean hints). List positions
    in the path are stepped over; in a union of config models, the member the input's ``kind``
    names, else the names any member accepts."""
    models: list[type[BaseModel]] = [model]
    node = data
    for part in path:
        if isinstance(node, list | tuple) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if part.isdigit() and node is None:
            continue
        infos = [m.model_fields[part] for m in models if part in m.model_fields]
        if not infos:
            return []
        node = node.get(part) if isinstance(node, Mapping) else None
        models = [m for info in infos for m in _models_in(info.annotation)]
        if isinstance(node, list | tuple):
            continue
        if not models:
            return []
    if isinstance(node, Mapping) and len(models) > 1:
        tagged = [m for m in models if "kind" in m.model_fields and m.model_fields["kind"].default == node.get("kind")]
        models = tagged or models
    names: dict[str, None] = {}
    for m in models:
        names.update(dict.fromkeys(m.model_fields))
    return list(names)


def _setting_path(loc: tuple[Any, ...], data: Mapping[str, Any]) -> tuple[str, ...]:
    """The keys of a pydantic error location that exist in the input (drops union tags)."""
    out: list[str] = []
    node: Any = data
    for part in loc:
        key = str(part)
        if key.startswith("function-"):
            continue
        if isinstance(node, Mapping) and key in node:
            out.append(key)
            node = node[key]
        elif isinstance(node, list | tuple) and key.isdigit() and int(key) < len(node):
            out.append(key)
            node = node[int(key)]
        elif isinstance(node, Mapping):
            # A key pydantic names that the input lacks: a missing field, or a union member's
            # tag (the value of the input's "kind").
            if key not in ("roofline", "auto", "constant", "exponential") and node.get("kind") != key:
                out.append(key)
    return tuple(out)


#: A message that starts with the dotted setting it is about.
_NAMED_SETTING = re.compile(r"^([a-z_]+(?:\.[a-z0-9_]+)+): (.+)$", re.DOTALL)


def config_error(
    exc: ValidationError,
    data: Mapping[str, Any],
    config_file: Path | None,
    flags: Mapping[str, str] | None = None,
    model: type[BaseModel] | None = None,
) -> ConfigError:
    """The first validation error as one line naming the flag that set the value, or the
    config file and line of the setting."""
    err = exc.errors()[0]
    path = _setting_path(tuple(err["loc"]), data)
    dotted = ".".join(path)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        known = _known_fields(model or RunConfig, path[:-1], data)
        close = difflib.get_close_matches(path[-1], known, n=1, cutoff=0.6) if path else []
        msg = f"unknown setting{f' (did you mean {close[0]!r}?)' if close else ''}; known: {', '.join(known)}"
    elif err["type"] == "missing":
        msg = "is missing"
    elif err["type"] in ("int_type", "bool_type", "float_type", "string_type") and "input" in err:
        msg = f"{msg}, got {err['input']!r}"
    named = _NAMED_SETTING.match(msg) if not dotted else None
    if named is not None and named.group(1).split(".")[0] in RunConfig.model_fields:
        # A check across settings that names the one it refuses ("autoscale.decode: ...").
        dotted, msg = named.group(1), named.group(2)
        path = tuple(dotted.split("."))
    for key, flag in (flags or {}).items():
        if key == dotted or (not dotted and key in msg):
            return ConfigError(f"{flag}: {msg}")
    if not dotted:
        given = [flag for key, flag in (flags or {}).items() if key.split(".")[-1] in msg]
        if given:
            return ConfigError(f"{'/'.join(dict.fromkeys(given))}: {msg}")
    where = ""
    if config_file is not None:
        lines = getattr(data, "lines", None)
        line = data.line_of(path) if lines is not None else None  # type: ignore[attr-defined]
        where = f"{config_file}:{line}: " if line is not None else f"{config_file}: "
    return ConfigError(f"{where}field '{dotted or 'config'}': {msg}")


def check_hardware(cfg: RunConfig, store: ProfileStore, where: Mapping[str, str] | None = None) -> None:
    """Check a config against the hardware profiles before any work: the model, GPU and link
    profiles exist, and every pool's TP degree splits the model
    (:func:`~simdisagg.hardware.check_parallelism`), the aggregated baseline's included.

    ``where`` names the flag or file that set a dotted key, for the message."""
    from simdisagg.hardware import check_parallelism

    names = where or {}
    model = cfg.model_shape(store)
    for key in ("prefill.gpu", "decode.gpu"):
        store.gpu(cfg.prefill.gpu if key == "prefill.gpu" else cfg.decode.gpu)
    if cfg.aggregated.gpu is not None:
        store.gpu(cfg.aggregated.gpu)
    store.link(cfg.link.preset)
    pools = [("prefill.tp", cfg.prefill), ("decode.tp", cfg.decode)]
    if cfg.aggregated.tp is not None:
        pools.append(("aggregated.tp", cfg.aggregated_pool()))
    for key, pool in pools:
        check_parallelism(model, pool.tp, names.get(key, key), dp=pool.dp, ep=pool.ep)


def resolve_config(
    config_file: Path | None,
    overrides: dict[str, Any],
    flags: Mapping[str, str] | None = None,
    store: ProfileStore | None = None,
) -> RunConfig:
    """Merge a config file and dotted CLI overrides (``None`` = not given) into a RunConfig.

    ``flags`` names the option that set each dotted key (``{"prefill.count": "--prefill"}``),
    so that an error about a value from the command line names the flag. With a profile
    ``store``, the result is also checked against the hardware (:func:`check_hardware`)."""
    data: dict[str, Any] = load_config_file(config_file) if config_file else {}
    for key, value in overrides.items():
        if value is not None:
            _set_path(data, key, value)
    given = {k: v for k, v in (flags or {}).items() if overrides.get(k) is not None}
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, data, config_file, given) from None
    if store is not None:
        where = {}
        for key in ("prefill.tp", "decode.tp", "aggregated.tp"):
            if key in given:
                where[key] = given[key]
            elif config_file is not None:
                line = data.line_of(tuple(key.split("."))) if hasattr(data, "line_of") else None
                where[key] = f"{config_file}:{line}: {key}" if line else f"{config_file}: {key}"
        check_hardware(cfg, store, where)
    return cfg
