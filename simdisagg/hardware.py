"""Hardware profiles: GPUs, links and model shapes as data files with provenance.

Every number in ``hardware_profiles/`` is a :class:`Sourced` value: the value in SI units
plus a ``source`` saying where it comes from. Each file also states its ``provenance``:

* ``datasheet`` -- figures copied from a vendor datasheet or a published config;
* ``measured`` -- produced by ``simdisagg calibrate`` on a real GPU (with a ``meta.yaml``);
* ``derived``  -- computed from other figures, with the reasoning in ``source``.

Profiles are looked up in ``--profiles-dir`` when given, else in the copy shipped inside the
package (``simdisagg/_profiles``, force-included into the wheel), else in the checkout's
``hardware_profiles/`` folder.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simdisagg.errors import ConfigError

Provenance = Literal["datasheet", "measured", "derived"]


class Sourced(BaseModel):
    """A number with the place it comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    value: float = Field(gt=0)
    source: str = Field(min_length=3)


class GPUProfile(BaseModel):
    """One accelerator type: peak rates, memory, power and price (SI units).

    Most are GPUs; ``kind`` says otherwise (``rdu``: SambaNova's dataflow units). The simulator
    serves weights and KV from ``hbm_*`` (the tier the model runs from); ``ddr_*`` and
    ``sram_capacity_bytes`` describe other memory tiers where the accelerator has them, for the
    record. ``price_per_hour_usd`` is absent when no public price exists (plans then budget in
    device counts, ``--gpus``), and ``intra_node_bandwidth_bytes_per_s`` when no public figure
    gives the peer links (cost models then leave communication out and say so)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    display_name: str
    provenance: Provenance
    kind: Literal["gpu", "rdu"] = "gpu"
    dense_bf16_flops_per_s: Sourced
    #: Dense FP8 and FP4 tensor peaks, where the GPU has them (the floor of FP8/FP4 GEMMs).
    dense_fp8_flops_per_s: Sourced | None = None
    dense_fp4_flops_per_s: Sourced | None = None
    hbm_bandwidth_bytes_per_s: Sourced
    hbm_capacity_bytes: Sourced
    power_w: Sourced
    price_per_hour_usd: Sourced | None = None
    # Bandwidth each GPU has to its peers inside a node (used for tensor-parallel all-reduce).
    intra_node_bandwidth_bytes_per_s: Sourced | None = None
    ddr_capacity_bytes: Sourced | None = None
    ddr_bandwidth_bytes_per_s: Sourced | None = None
    sram_capacity_bytes: Sourced | None = None
    notes: str = ""


def peak_flops_per_s(gpu: GPUProfile, weights: str) -> float:
    """The dense tensor peak a GEMM at weight precision ``weights`` can reach on ``gpu``: FP8
    (and block-scaled FP8) run at the FP8 rate and FP4 at the FP4 rate where the GPU has one,
    else at the BF16 rate."""
    if weights in ("fp8", "fp8_block") and gpu.dense_fp8_flops_per_s is not None:
        return gpu.dense_fp8_flops_per_s.value
    if weights == "fp4":
        for rate in (gpu.dense_fp4_flops_per_s, gpu.dense_fp8_flops_per_s):
            if rate is not None:
                return rate.value
    return gpu.dense_bf16_flops_per_s.value


class LinkProfile(BaseModel):
    """A KV-transfer link preset: per-GPU bandwidth and one-way latency."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    display_name: str
    provenance: Provenance
    bandwidth_bytes_per_s: Sourced
    latency_s: Sourced
    notes: str = ""


#: Bytes per weight parameter of each serving precision. ``fp8`` has per-tensor scales
#: (negligible), ``fp8_block`` one FP32 scale per 128 x 128 block (DeepSeek-style), ``fp4``
#: (NVFP4) 4-bit values with one FP8 scale per 16 (0.5 + 1/16 bytes). Embeddings and norms are counted at the same rate (real FP8/FP4 checkpoints often
#: keep them in BF16: a small underestimate of weight bytes).
WEIGHT_BYTES_PER_PARAM: dict[str, float] = {
    "bf16": 2.0,
    "fp8": 1.0,
    "fp8_block": 1.0 + 4.0 / (128 * 128),  # one FP32 scale per 128 x 128 block
    "fp4": 0.5 + 1.0 / 16.0,
    "mxfp4": 0.5 + 1.0 / 32.0,  # OCP MXFP4: one 8-bit shared exponent per 32 values
    "int4": 0.5 + 2.0 / 32.0,  # weight-only INT4: one BF16 scale per group of 32
}
#: Bytes per KV-cache element of each KV precision.
KV_BYTES_PER_ELEMENT: dict[str, int] = {"bf16": 2, "fp8": 1}


class MoEShape(BaseModel):
    """The mixture-of-experts part of a model: each MoE layer routes every token to
    ``experts_per_token`` of ``experts`` experts (gated MLPs of ``expert_intermediate_size``),
    plus ``shared_experts`` that every token passes through; the first ``dense_layers``
    layers have a dense MLP of the model's ``intermediate_size`` instead."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    experts: int = Field(gt=0)
    experts_per_token: int = Field(gt=0)
    expert_intermediate_size: int = Field(gt=0)
    shared_experts: int = Field(default=0, ge=0)
    dense_layers: int = Field(default=0, ge=0)


class MLAShape(BaseModel):
    """Multi-head latent attention (DeepSeek-V2/V3): queries through a low-rank projection
    (``q_lora_rank``, or none), keys and values from one compressed latent of
    ``kv_lora_rank`` plus a shared rotary key of ``qk_rope_head_dim`` per token and layer --
    all the KV cache holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kv_lora_rank: int = Field(gt=0)
    q_lora_rank: int | None = Field(default=None, gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    qk_rope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)


class ModelShape(BaseModel):
    """A decoder-only transformer's shape, from its published config: dense or
    mixture-of-experts (``moe``), grouped-query or latent attention (``mla``), full or partly
    sliding-window attention."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    display_name: str
    provenance: Provenance
    source: str = Field(min_length=3)
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    dtype_bytes: int = Field(gt=0)
    tie_word_embeddings: bool = False
    #: RMSNorm on each head's queries and keys (Qwen3): two more small ops per layer.
    qk_norm: bool = False
    #: Hugging Face ids served with this shape (checkpoints in other precisions included), so
    #: measured deployments that name a checkpoint find the profile.
    hf_ids: tuple[str, ...] = ()
    #: Longest sequence (prompt plus answer) the model serves: ``max_position_embeddings`` of its
    #: config, as serving engines take it for ``max_model_len``. ``None`` only for test shapes.
    context_window_tokens: int | None = Field(default=None, gt=0)
    #: Mixture-of-experts layers (``None``: a dense model).
    moe: MoEShape | None = None
    #: Multi-head latent attention (``None``: grouped-query attention of ``num_kv_heads``).
    mla: MLAShape | None = None
    #: Layers that attend to the last ``sliding_window_tokens`` tokens only (gpt-oss alternates
    #: them with full-attention layers); their KV holds at most that many tokens per request.
    sliding_window_layers: int = Field(default=0, ge=0)
    sliding_window_tokens: int | None = Field(default=None, gt=0)
    #: Multi-token-prediction layers the checkpoint carries (a built-in speculative draft).
    mtp_layers: int = Field(default=0, ge=0)
    #: Serving precision, set by :meth:`served_at` (``None``: the checkpoint's ``dtype_bytes``).
    weight_bytes_per_param: float | None = Field(default=None, gt=0)
    kv_bytes_per_element: int | None = Field(default=None, gt=0)
    weight_format: str = "bf16"
    kv_format: str = "bf16"
    #: Precision of the routed and shared experts when it differs from the other weights
    #: (gpt-oss: MXFP4 experts, BF16 attention); ``None``: the same.
    expert_format: str | None = None

    def served_at(self, weights: str = "bf16", kv_cache: str = "bf16", experts: str | None = None) -> ModelShape:
        """This shape served with ``weights`` (bf16, fp8, fp8_block, fp4), a ``kv_cache`` (bf16
        or fp8) and, for a MoE model, ``experts`` in their own precision (default: the
        weights'): bytes per weight and per KV element follow (:data:`WEIGHT_BYTES_PER_PARAM`)."""
        for value, what in ((weights, "weight"), (experts, "expert")):
            if value is not None and value not in WEIGHT_BYTES_PER_PARAM:
                raise ConfigError(f"unknown {what} precision '{value}' (known: {', '.join(WEIGHT_BYTES_PER_PARAM)})")
        if kv_cache not in KV_BYTES_PER_ELEMENT:
            raise ConfigError(f"unknown KV-cache precision '{kv_cache}' (known: {', '.join(KV_BYTES_PER_ELEMENT)})")
        return self.model_copy(
            update={
                "weight_bytes_per_param": WEIGHT_BYTES_PER_PARAM[weights],
                "kv_bytes_per_element": KV_BYTES_PER_ELEMENT[kv_cache],
                "weight_format": weights,
                "kv_format": kv_cache,
                "expert_format": experts if experts != weights else None,
            }
        )

    @property
    def expert_bytes_per_param(self) -> float:
        """Bytes per parameter of the experts at the serving precision."""
        if self.expert_format is not None:
            return WEIGHT_BYTES_PER_PARAM[self.expert_format]
        return float(self.weight_bytes_per_param or self.dtype_bytes)

    @property
    def expert_params_total(self) -> int:
        """Parameters of all routed and shared experts of all MoE layers (0 for a dense model)."""
        if self.moe is None:
            return 0
        return self.moe_layers * (self.moe.experts + self.moe.shared_experts) * self.expert_params

    @property
    def full_attention_layers(self) -> int:
        """Layers whose KV grows with the whole context."""
        return self.num_layers - self.sliding_window_layers

    @property
    def kv_bytes_per_token(self) -> int:
        """KV of one token across the layers whose KV grows with the context, whole model (all
        TP shards): K and V of every KV head, or MLA's latent plus rotary key. Sliding-window
        layers hold at most their window per request and are not in this figure."""
        element = self.kv_bytes_per_element or self.dtype_bytes
        if self.mla is not None:
            return self.full_attention_layers * (self.mla.kv_lora_rank + self.mla.qk_rope_head_dim) * element
        return 2 * self.full_attention_layers * self.num_kv_heads * self.head_dim * element

    @property
    def attention_params(self) -> int:
        """Weights of one layer's attention projections."""
        h = self.hidden_size
        if self.mla is not None:
            m, heads = self.mla, self.num_heads
            qk = m.qk_nope_head_dim + m.qk_rope_head_dim
            q = (h * m.q_lora_rank + m.q_lora_rank * heads * qk) if m.q_lora_rank else h * heads * qk
            kv = h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank * heads * (m.qk_nope_head_dim + m.v_head_dim)
            return q + kv + heads * m.v_head_dim * h
        q = h * self.num_heads * self.head_dim
        kv = 2 * h * self.num_kv_heads * self.head_dim
        return q + kv + self.num_heads * self.head_dim * h

    @property
    def expert_params(self) -> int:
        """Weights of one routed (or shared) expert: a gated MLP."""
        assert self.moe is not None
        return 3 * self.hidden_size * self.moe.expert_intermediate_size

    @property
    def moe_layers(self) -> int:
        """Layers with a mixture-of-experts MLP."""
        return 0 if self.moe is None else self.num_layers - self.moe.dense_layers

    def _mlp_params(self, routed_experts: float) -> float:
        """Weights of every layer's MLP, with ``routed_experts`` of each MoE layer's experts."""
        dense = 3 * self.hidden_size * self.intermediate_size
        if self.moe is None:
            return float(self.num_layers * dense)
        m = self.moe
        moe_layer = (routed_experts + m.shared_experts) * self.expert_params + self.hidden_size * m.experts
        return float(m.dense_layers * dense + self.moe_layers * moe_layer)

    @property
    def layer_params(self) -> int:
        """Weights of one layer, averaged over the layers (all experts counted): attention
        projections, MLP (dense, or routed plus shared experts and the router) and two norms."""
        experts = self.moe.experts if self.moe else 0
        total = self.num_layers * (self.attention_params + 2 * self.hidden_size) + self._mlp_params(experts)
        return int(round(total / self.num_layers))

    @property
    def active_layer_params(self) -> float:
        """Weights one token passes through in a layer, averaged over the layers (for a MoE
        model: its ``experts_per_token`` routed experts, not all of them)."""
        experts = self.moe.experts_per_token if self.moe else 0
        total = self.num_layers * (self.attention_params + 2 * self.hidden_size) + self._mlp_params(experts)
        return total / self.num_layers

    def read_layer_params(self, tokens: float) -> float:
        """Weights one forward pass over ``tokens`` tokens reads per layer, averaged over the
        layers: every expert that at least one token is routed to, in expectation under
        uniform routing (``experts x (1 - (1 - k/experts)^tokens)``)."""
        if self.moe is None:
            return float(self.layer_params)
        m = self.moe
        touched = m.experts * (1.0 - (1.0 - m.experts_per_token / m.experts) ** max(tokens, 1.0))
        total = self.num_layers * (self.attention_params + 2 * self.hidden_size) + self._mlp_params(touched)
        return total / self.num_layers

    @property
    def attention_flops_per_pair(self) -> float:
        """FLOPs of one (query, key) pair of attention in one layer, all heads: the score and
        the weighted value."""
        if self.mla is not None:
            m = self.mla
            return 2.0 * self.num_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim)
        return 4.0 * self.num_heads * self.head_dim

    @property
    def lm_head_params(self) -> int:
        """The output projection to the vocabulary."""
        return self.hidden_size * self.vocab_size

    @property
    def total_params(self) -> int:
        """All weights, the input embedding included (counted once when tied); MTP layers are
        not counted (they are a draft, see :attr:`mtp_layers`)."""
        embed = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        return self.num_layers * self.layer_params + self.lm_head_params + embed + self.hidden_size

    @property
    def active_params(self) -> float:
        """Weights one token passes through: every layer's active part and the LM head (the
        input embedding is a lookup of one row, not counted, as model cards count)."""
        return self.num_layers * self.active_layer_params + self.lm_head_params + self.hidden_size

    def _bytes_of(self, params: float, expert_params: float) -> float:
        """Bytes of ``params`` weights of which ``expert_params`` are experts'."""
        per_param = self.weight_bytes_per_param or self.dtype_bytes
        return (params - expert_params) * per_param + expert_params * self.expert_bytes_per_param

    @property
    def iteration_weight_bytes(self) -> float:
        """Bytes of weights a forward pass of a dense model reads: all layers and the LM head
        (the input embedding is a gather of a few rows). For a MoE model, every expert
        (:meth:`read_weight_bytes` gives what a batch really touches)."""
        return self._bytes_of(self.num_layers * self.layer_params + self.lm_head_params, self.expert_params_total)

    def read_weight_bytes(self, tokens: float) -> float:
        """Bytes of weights a forward pass over ``tokens`` tokens reads: everything but the
        input embedding, and of each MoE layer only the experts some token is routed to (in
        expectation under uniform routing: ``experts x (1 - (1 - k/experts)^tokens)``) and
        the shared ones."""
        per_param = self.weight_bytes_per_param or self.dtype_bytes
        embed = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        non_expert = self.total_params - self.expert_params_total - embed
        if self.moe is None:
            return float(non_expert * per_param)
        m = self.moe
        touched = m.experts * (1.0 - (1.0 - m.experts_per_token / m.experts) ** max(tokens, 1.0))
        experts = self.moe_layers * (touched + m.shared_experts) * self.expert_params
        return float(non_expert * per_param + experts * self.expert_bytes_per_param)

    @property
    def weight_bytes(self) -> int:
        """Bytes of all weights at the serving precision (the checkpoint's dtype by default)."""
        return int(math.ceil(self._bytes_of(self.total_params, self.expert_params_total)))


@dataclass(frozen=True, slots=True)
class Parallelism:
    """How one instance spreads a model over its GPUs: ``dp`` attention data-parallel ranks of
    ``tp`` tensor-parallel GPUs each (each rank serves its own requests), and the MoE layers'
    experts spread ``ep`` ways across all ``tp x dp`` GPUs (expert tensor parallelism of
    ``tp x dp / ep`` within each expert group)."""

    tp: int = 1
    dp: int = 1
    ep: int = 1

    @property
    def gpus(self) -> int:
        """GPUs of the instance."""
        return self.tp * self.dp

    @property
    def moe_tp(self) -> int:
        """Tensor parallelism within an expert."""
        return self.gpus // self.ep

    @property
    def label(self) -> str:
        """``tp2``, ``tp1-dp8-ep8`` ...: how folder names and labels spell it."""
        return f"tp{self.tp}" + (f"-dp{self.dp}" if self.dp > 1 else "") + (f"-ep{self.ep}" if self.ep > 1 else "")


def instance_kv_memory(model: ModelShape, par: Parallelism) -> tuple[float, float]:
    """``(weight bytes per GPU, KV bytes stored per token of context)`` of one instance.

    Weights: attention, norms, embedding, LM head and dense MLPs are split over a rank's
    ``tp`` GPUs and held by every rank; the experts are split over all the instance's GPUs.
    KV: a request lives on one rank; grouped-query KV is split over its ``tp`` GPUs by KV head
    (copied when ``tp`` exceeds the KV heads), MLA's latent is held whole by every GPU of the
    rank (it has no heads to split)."""
    expert_bytes = model.expert_params_total * model.expert_bytes_per_param
    other_bytes = model.weight_bytes - expert_bytes
    per_gpu = other_bytes / par.tp + expert_bytes / par.gpus
    if model.mla is not None:
        copies = float(par.tp)
    else:
        copies = max(1.0, par.tp / model.num_kv_heads)
    return per_gpu, model.kv_bytes_per_token * copies


def _default_roots() -> list[Path]:
    roots: list[Path] = []
    try:
        shipped = resources.files("simdisagg") / "_profiles"
        if shipped.is_dir():
            roots.append(Path(str(shipped)))
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    checkout = Path(__file__).resolve().parent.parent / "hardware_profiles"
    if checkout.is_dir():
        roots.append(checkout)
    return roots


class ProfileStore:
    """Finds and validates profiles by name under one or more root folders.

    Later roots are fall-backs: a ``--profiles-dir`` given by the user comes first, then the
    profiles shipped with the package.
    """

    def __init__(self, profiles_dir: Path | None = None) -> None:
        self.roots: list[Path] = ([Path(profiles_dir)] if profiles_dir else []) + _default_roots()
        if profiles_dir is not None and not Path(profiles_dir).is_dir():
            raise ConfigError(f"{profiles_dir}: --profiles-dir is not a folder")
        #: Framework files given in memory (``with_framework``), in front of every root.
        self._frameworks: dict[str, Any] = {}

    def _find(self, kind: str, name: str) -> Path:
        for root in self.roots:
            for ext in (".yaml", ".yml"):
                path = root / kind / f"{name}{ext}"
                if path.is_file():
                    return path
        known = ", ".join(self.names(kind)) or "none"
        raise ConfigError(f"unknown {kind[:-1]} '{name}' (known: {known})")

    def names(self, kind: str) -> list[str]:
        """Names of every profile of a kind ('gpus', 'links', 'models') across the roots."""
        seen: dict[str, None] = {}
        for root in self.roots:
            folder = root / kind
            if folder.is_dir():
                for path in sorted(folder.glob("*.y*ml")):
                    seen.setdefault(path.stem, None)
        return list(seen)

    def root_of(self, kind: str, name: str) -> Path:
        """The root folder a profile was found in (measured profiles sit beside it)."""
        path = self._find(kind, name)
        return path.parent.parent

    def gpu(self, name: str) -> GPUProfile:
        """Load a GPU profile by name, e.g. ``h100-sxm``."""
        return _load(self._find("gpus", name), GPUProfile)

    def link(self, name: str) -> LinkProfile:
        """Load a link preset by name, e.g. ``ib-ndr-400``."""
        return _load(self._find("links", name), LinkProfile)

    def model(self, name: str) -> ModelShape:
        """Load a model shape by name, e.g. ``llama-3.1-8b``."""
        return _load(self._find("models", name), ModelShape)

    def framework(self, name: str) -> Any:
        """A serving framework's scheduler defaults and fitted overheads
        (:class:`simdisagg.overheads.FrameworkOverheads`; none fitted when no file names it)."""
        from simdisagg.overheads import FrameworkOverheads, no_overheads

        if name in self._frameworks:
            return self._frameworks[name]
        for root in self.roots:
            path = root / "frameworks" / f"{name}.yaml"
            if path.is_file():
                return _load(path, FrameworkOverheads)
        return no_overheads(name)

    def with_framework(self, overheads: Any) -> ProfileStore:
        """A copy of this store that answers ``framework(overheads.framework)`` with ``overheads``."""
        other = copy.copy(self)
        other._frameworks = {**self._frameworks, overheads.framework: overheads}
        return other


@functools.lru_cache(maxsize=256)
def _load_cached(path: Path, schema: type[BaseModel]) -> BaseModel:
    from simdisagg.inputs import load_settings

    data = load_settings(path, "profile")  # UTF-8, no duplicate keys; remembers key lines
    _refuse_booleans(data, schema, path, data.line_of)
    try:
        profile = schema.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        line = data.line_of(err["loc"])
        raise ConfigError(f"{path}{f':{line}' if line else ''}: field '{field}': {err['msg']}") from None
    name = getattr(profile, "name", path.stem)
    if name != path.stem:
        # Profiles are found by file name; a different name inside would label results wrongly.
        line = data.line_of(("name",))
        raise ConfigError(
            f"{path}{f':{line}' if line else ''}: field 'name': is '{name}' but the file is {path.name}; "
            "make them the same"
        )
    return profile


def _refuse_booleans(data: dict, schema: type[BaseModel], path: Path, line_of: Any) -> None:  # type: ignore[type-arg]
    """A boolean where a number belongs (``num_heads: yes``) would be read as 1: refuse it."""
    stack: list[tuple[Any, type[BaseModel], tuple[str, ...]]] = [(data, schema, ())]
    while stack:
        node, model, where = stack.pop()
        for key, value in node.items():
            info = model.model_fields.get(key)
            if info is None:
                continue
            sub = info.annotation
            if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
                stack.append((value, sub, where + (key,)))
            elif isinstance(value, bool) and sub is not bool:
                line = line_of(where + (key,))
                raise ConfigError(
                    f"{path}{f':{line}' if line else ''}: field '{'.'.join(where + (key,))}': "
                    f"{str(value).lower()} is not a number"
                )


_T = TypeVar("_T", bound=BaseModel)


def load_profile_file(path: Path, schema: type[_T]) -> _T:
    """Read and validate one profile file (cached by path); errors name file, line or field."""
    return _load(path, schema)


def _load(path: Path, schema: type[_T]) -> _T:
    result = _load_cached(path.resolve(), schema)
    assert isinstance(result, schema)
    return result


def check_parallelism(model: ModelShape, tp: int, where: str = "tp", dp: int = 1, ep: int = 1) -> None:
    """Refuse a parallelism the model's shape cannot be split by, as vLLM and SGLang do.

    Each of a rank's ``tp`` GPUs holds ``num_heads / tp`` query heads and ``intermediate_size /
    tp`` of a dense MLP, so both must divide. Grouped-query KV heads are split when ``tp``
    divides them and replicated when ``tp`` is a multiple of their count; anything else leaves
    GPUs with unequal shares (MLA has no KV heads: its latent is replicated). A MoE model's
    experts are spread ``ep`` ways (``ep`` must divide them) and each expert's MLP over the
    remaining ``tp x dp / ep`` GPUs (which must divide its columns). Attention data
    parallelism and expert parallelism apply to MoE models only. ``where`` names the setting."""
    problems = []
    if tp < 1 or dp < 1 or ep < 1:
        problems.append("tp, dp and ep must be >= 1")
    else:
        if model.num_heads % tp:
            problems.append(f"{model.num_heads} attention heads are not divisible by {tp}")
        if model.mla is None and model.num_kv_heads % tp and tp % model.num_kv_heads:
            problems.append(f"{tp} neither divides the {model.num_kv_heads} KV heads nor is a multiple of them")
        dense_mlp = model.moe is None or model.moe.dense_layers > 0
        if dense_mlp and model.intermediate_size % tp:
            problems.append(f"the MLP's {model.intermediate_size} columns are not divisible by {tp}")
        if model.moe is None:
            if dp > 1 or ep > 1:
                problems.append("attention data parallelism (dp) and expert parallelism (ep) apply to MoE models")
        else:
            gpus = tp * dp
            if gpus % ep:
                problems.append(f"ep {ep} does not divide the instance's {gpus} GPUs")
            elif model.moe.experts % ep:
                problems.append(f"ep {ep} does not divide the {model.moe.experts} experts")
            elif model.moe.expert_intermediate_size % (gpus // ep):
                problems.append(
                    f"each expert's {model.moe.expert_intermediate_size} columns are not divisible by "
                    f"tp x dp / ep = {gpus // ep}"
                )
    if problems:
        good = [k for k in range(1, 65) if not model.num_heads % k
                and (model.mla is not None or not (model.num_kv_heads % k and k % model.num_kv_heads))
                and (model.moe is not None and not model.moe.dense_layers or not model.intermediate_size % k)]
        raise ConfigError(
            f"{where} {tp}" + (f" dp {dp} ep {ep}" if dp > 1 or ep > 1 else "")
            + f": {model.name} cannot be split {tp * dp} ways ({'; '.join(problems)}); "
            f"possible tp: {', '.join(map(str, good))}"
        )

