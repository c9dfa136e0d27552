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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
        default=8192, ge=1, le=100_000_000, description="token budget of one prefill (or chunked) iteration"
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

    @model_validator(mode="after")
    def _check_expert_parallelism(self) -> PoolConfig:
        if (self.tp * self.dp) % self.ep:
            raise ValueError(
                f"ep {self.ep} must divide the instance's tp x dp = {self.tp * self.dp} GPUs (experts are spread over them)"
            )
        return self

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
        return self

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


def _known_fields(model: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    """The setting names the model accepts at ``path`` (for did-you-mean hints)."""
    fields: dict[str, Any] = dict(model.model_fields)
    for part in path:
        info = fields.get(part)
        if info is None:
            return []
        annotation = info.annotation
        sub = getattr(annotation, "model_fields", None)
        if sub is None:
            # A union of config models (cost): the names any member accepts.
            names: dict[str, Any] = {}
            for arg in getattr(annotation, "__args__", ()):
                names.update(getattr(arg, "model_fields", {}))
            if not names:
                return []
            sub = names
        fields = dict(sub)
    return list(fields)


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
            # A key pydantic names that the input lacks: a missing field, or a union member's tag.
            if key not in ("roofline", "auto", "constant", "exponential"):
                out.append(key)
    return tuple(out)


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
        known = _known_fields(model or RunConfig, path[:-1])
        close = difflib.get_close_matches(path[-1], known, n=1, cutoff=0.6) if path else []
        msg = f"unknown setting{f' (did you mean {close[0]!r}?)' if close else ''}; known: {', '.join(known)}"
    elif err["type"] == "missing":
        msg = "is missing"
    elif err["type"] in ("int_type", "bool_type", "float_type", "string_type") and "input" in err:
        msg = f"{msg}, got {err['input']!r}"
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
