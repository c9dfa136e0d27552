"""Run configuration: pydantic models, validated once, frozen, written next to the results.

A :class:`RunConfig` is the whole story of a run. It can come from a YAML or JSON file
(``--config``) and a handful of CLI flags override it; :func:`resolve_config` is the one place
the two meet. Defaults live here, never at the point of use. Times are in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from simdisagg.errors import ConfigError

if TYPE_CHECKING:
    from simdisagg.hardware import ModelShape, ProfileStore


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolConfig(_Frozen):
    """One pool of identical instances (prefill, decode, or aggregated)."""

    count: int = Field(default=1, ge=0, le=100_000, description="instances in the pool")
    gpu: str = Field(default="h100-sxm", description="GPU profile name")
    tp: int = Field(default=1, ge=1, le=64, description="tensor-parallel GPUs per instance")
    max_batch_size: int = Field(default=256, ge=1, description="most requests in a decode batch")
    max_batched_tokens: int = Field(
        default=8192, ge=1, description="token budget of one prefill (or chunked) iteration"
    )
    max_prefill_batch_requests: int | None = Field(
        default=None, ge=1, description="most prompts in one prefill batch (1 = no batching)"
    )
    gpu_memory_utilisation: float = Field(
        default=0.90, gt=0, le=1, description="fraction of HBM the engine may use (vLLM's default)"
    )
    kv_block_tokens: int = Field(default=16, ge=1, description="tokens per paged-attention KV block")
    kv_capacity_tokens: int | None = Field(
        default=None, ge=1, description="override the KV capacity derived from memory (tokens)"
    )

    @property
    def gpus(self) -> int:
        """GPUs in the whole pool."""
        return self.count * self.tp


class LinkConfig(_Frozen):
    """How KV caches cross from prefill to decode instances.

    ``fifo``: each prefill instance's NICs send one transfer at a time, in order.
    ``fair_share``: the NICs' bandwidth is split evenly among that instance's transfers in
    flight (processor sharing). Per-GPU bandwidth is multiplied by ``min(tp_prefill,
    tp_decode)``: each GPU sends its own shard of the KV over its own NIC.
    """

    preset: str = "ib-ndr-400"
    sharing: Literal["fifo", "fair_share"] = "fifo"
    bandwidth_scale: float = Field(default=1.0, gt=0, description="scale the preset's bandwidth")


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
    kv_overlap_weight: float = Field(default=1.0, ge=0, description="kv_aware: weight of tokens to compute vs queued")
    conditional_prefill_tokens: int | None = Field(default=None, ge=1)


class TierConfig(_Frozen):
    """A KV storage tier below HBM. Capacities are per GPU (an instance of ``tp`` GPUs gets
    ``tp`` times as much), except for ``shared_store``, one store for the whole cluster."""

    kind: Literal["host_dram", "nvme", "shared_store"]
    capacity_bytes: float = Field(gt=0, description="per GPU, or total for shared_store")
    read_bytes_per_s: float = Field(gt=0)
    write_bytes_per_s: float = Field(gt=0)


class PrefixCacheConfig(_Frozen):
    """Prefix caching (active when the trace carries ``hash_ids``).

    ``hbm_fraction`` of each prefill/aggregated instance's KV memory holds cached prefix
    blocks (LRU); ``decode_retain_fraction`` of each decode instance's KV memory keeps the
    context of finished requests, so a returning session's KV need not cross the link again."""

    enabled: bool = True
    hbm_fraction: float = Field(default=0.5, ge=0, lt=1)
    decode_retain_fraction: float = Field(default=0.0, ge=0, lt=1)
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

    ttft_s: float = Field(default=2.0, gt=0)
    tpot_s: float = Field(default=0.10, gt=0)
    attainment: float = Field(default=0.90, gt=0, le=1, description="target fraction of requests")


class RooflineCost(_Frozen):
    """Roofline model with named efficiency factors (assumed defaults, not measurements)."""

    kind: Literal["roofline"] = "roofline"
    prefill_mfu: float = Field(default=0.55, gt=0, le=1)
    decode_mfu: float = Field(default=0.55, gt=0, le=1)
    memory_bandwidth_utilisation: float = Field(default=0.80, gt=0, le=1)
    iteration_overhead_s: float = Field(default=2.0e-4, ge=0)
    allreduce_latency_s: float = Field(default=1.0e-5, ge=0)


class AutoCost(RooflineCost):
    """A fitted profile for (GPU, model, TP) when one exists, else the roofline model."""

    kind: Literal["auto"] = "auto"  # type: ignore[assignment]


class ConstantCost(_Frozen):
    """Fixed service times, for queueing validation (M/D/1, M/D/c)."""

    kind: Literal["constant"] = "constant"
    prefill_s: float = Field(default=0.1, gt=0)
    prefill_s_per_token: float = Field(default=0.0, ge=0, description="adds tokens × this (M/G/1)")
    decode_step_s: float = Field(default=0.02, gt=0)
    decode_step_s_per_context_token: float = Field(default=0.0, ge=0)


class ExponentialCost(_Frozen):
    """Exponentially distributed prefill service times (M/M/1, M/M/c); constant decode steps."""

    kind: Literal["exponential"] = "exponential"
    mean_prefill_s: float = Field(default=0.1, gt=0)
    decode_step_s: float = Field(default=0.02, gt=0)


CostConfig = Annotated[AutoCost | RooflineCost | ConstantCost | ExponentialCost, Field(discriminator="kind")]


class PrecisionConfig(_Frozen):
    """Number formats the model is served in: weights (and the GEMMs that read them) and the
    KV cache. ``fp8`` weights are 1 byte per parameter; ``fp4`` (NVFP4) 0.5 byte plus one
    FP8 scale per 16 parameters; ``fp8`` KV is 1 byte per element."""

    weights: Literal["bf16", "fp8", "fp4"] = "bf16"
    kv_cache: Literal["bf16", "fp8"] = "bf16"


Framework = Literal["vllm", "sglang", "trtllm"]


class AggregatedConfig(_Frozen):
    """Options of the aggregated baseline (instances that do both phases)."""

    chunked_prefill: bool = Field(default=False, description="mix prefill chunks into decode iterations")
    tp: int | None = Field(default=None, ge=1, description="TP per instance (default: the decode pool's)")
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
    seed: int = Field(default=0, ge=0)
    rate_scale: float = Field(default=1.0, gt=0, description="replay open-loop arrivals this many times faster")
    exact_steps: bool = Field(default=False, description="one event per decode iteration (reference mode)")

    @model_validator(mode="after")
    def _check_counts(self) -> RunConfig:
        if self.mode == "disaggregated" and (self.prefill.count < 1 or self.decode.count < 1):
            raise ValueError("disaggregated mode needs at least one prefill and one decode instance")
        if self.mode == "aggregated" and self.aggregated_pool().count < 1:
            raise ValueError("aggregated mode needs at least one instance")
        return self

    @property
    def total_gpus(self) -> int:
        """GPUs the run uses."""
        if self.mode == "aggregated":
            return self.aggregated_pool().gpus
        return self.prefill.gpus + self.decode.gpus

    def aggregated_pool(self) -> PoolConfig:
        """The aggregated pool on the same GPUs as the disaggregated prefill + decode pools."""
        tp = self.aggregated.tp or self.decode.tp
        gpus = self.prefill.gpus + self.decode.gpus
        return self.decode.model_copy(
            update={"count": gpus // tp, "tp": tp, "gpu": self.aggregated.gpu or self.decode.gpu}
        )

    def model_shape(self, store: ProfileStore) -> ModelShape:
        """The model's shape from ``store``, served at this run's precision."""
        return store.model(self.model).served_at(self.precision.weights, self.precision.kv_cache)

    def as_aggregated(self) -> RunConfig:
        """The aggregated baseline of this config on the same GPUs."""
        return self.model_copy(update={"mode": "aggregated"})


#: Keys of the ``config.json`` that ``simdisagg run --out`` writes besides the run config itself
#: (see :meth:`simdisagg.api.RunSummary.config_record`).
_RECORD_KEYS = frozenset({"config", "trace", "cost_model", "versions"})


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (validated later, with the overrides).

    A ``config.json`` written by ``simdisagg run --out`` (the run config under ``config``,
    beside the trace, cost model and versions that produced it) yields its run config, so a
    recorded run can be repeated with ``--config``."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = getattr(exc, "lineno", None) or (mark.line + 1 if mark else None)
        where = f":{line}" if line else ""
        raise ConfigError(f"{path}{where}: not valid {'JSON' if str(path).endswith('.json') else 'YAML'}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of settings")
    if "config" in data and set(data) <= _RECORD_KEYS:
        if not isinstance(data["config"], dict):
            raise ConfigError(f"{path}: field 'config' of a recorded run must be a mapping of settings")
        return data["config"]
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


def resolve_config(config_file: Path | None, overrides: dict[str, Any]) -> RunConfig:
    """Merge a config file and dotted CLI overrides (``None`` = not given) into a RunConfig."""
    data: dict[str, Any] = load_config_file(config_file) if config_file else {}
    for key, value in overrides.items():
        if value is not None:
            _set_path(data, key, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        where = f"{config_file}: " if config_file else ""
        raise ConfigError(f"{where}field '{field or 'config'}': {err['msg']}") from None
