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
    """One GPU type: peak rates, memory, power and price (SI units)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    display_name: str
    provenance: Provenance
    dense_bf16_flops_per_s: Sourced
    #: Dense FP8 and FP4 tensor peaks, where the GPU has them (the floor of FP8/FP4 GEMMs).
    dense_fp8_flops_per_s: Sourced | None = None
    dense_fp4_flops_per_s: Sourced | None = None
    hbm_bandwidth_bytes_per_s: Sourced
    hbm_capacity_bytes: Sourced
    power_w: Sourced
    price_per_hour_usd: Sourced
    # Bandwidth each GPU has to its peers inside a node (used for tensor-parallel all-reduce).
    intra_node_bandwidth_bytes_per_s: Sourced
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
}
#: Bytes per KV-cache element of each KV precision.
KV_BYTES_PER_ELEMENT: dict[str, int] = {"bf16": 2, "fp8": 1}


class ModelShape(BaseModel):
    """A dense decoder-only transformer's shape, from its published config."""

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
    #: Serving precision, set by :meth:`served_at` (``None``: the checkpoint's ``dtype_bytes``).
    weight_bytes_per_param: float | None = Field(default=None, gt=0)
    kv_bytes_per_element: int | None = Field(default=None, gt=0)
    weight_format: str = "bf16"
    kv_format: str = "bf16"

    def served_at(self, weights: str = "bf16", kv_cache: str = "bf16") -> ModelShape:
        """This shape served with ``weights`` (bf16, fp8 or fp4) and a ``kv_cache`` (bf16 or
        fp8): bytes per weight and per KV element follow (:data:`WEIGHT_BYTES_PER_PARAM`)."""
        if weights not in WEIGHT_BYTES_PER_PARAM:
            raise ConfigError(f"unknown weight precision '{weights}' (known: {', '.join(WEIGHT_BYTES_PER_PARAM)})")
        if kv_cache not in KV_BYTES_PER_ELEMENT:
            raise ConfigError(f"unknown KV-cache precision '{kv_cache}' (known: {', '.join(KV_BYTES_PER_ELEMENT)})")
        return self.model_copy(
            update={
                "weight_bytes_per_param": WEIGHT_BYTES_PER_PARAM[weights],
                "kv_bytes_per_element": KV_BYTES_PER_ELEMENT[kv_cache],
                "weight_format": weights,
                "kv_format": kv_cache,
            }
        )

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer and KV head of one token, whole model (all TP shards)."""
        element = self.kv_bytes_per_element or self.dtype_bytes
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * element

    @property
    def layer_params(self) -> int:
        """Weights of one transformer layer: attention projections and a gated (SwiGLU) MLP."""
        q = self.hidden_size * self.num_heads * self.head_dim
        kv = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        o = self.num_heads * self.head_dim * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        return q + kv + o + mlp + 2 * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """The output projection to the vocabulary."""
        return self.hidden_size * self.vocab_size

    @property
    def total_params(self) -> int:
        """All weights, the input embedding included (counted once when tied)."""
        embed = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        return self.num_layers * self.layer_params + self.lm_head_params + embed + self.hidden_size

    @property
    def iteration_weight_bytes(self) -> float:
        """Bytes of weights every forward pass reads: all layers and the LM head (the input
        embedding is a gather of a few rows)."""
        per_param = self.weight_bytes_per_param or self.dtype_bytes
        return float((self.num_layers * self.layer_params + self.lm_head_params) * per_param)

    @property
    def weight_bytes(self) -> int:
        """Bytes of all weights at the serving precision (the checkpoint's dtype by default)."""
        per_param = self.weight_bytes_per_param or self.dtype_bytes
        return int(math.ceil(self.total_params * per_param))


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


def check_parallelism(model: ModelShape, tp: int, where: str = "tp") -> None:
    """Refuse a tensor-parallel degree the model's shape cannot be split by, as vLLM does.

    Each of ``tp`` GPUs holds ``num_heads / tp`` query heads and ``intermediate_size / tp`` of
    the MLP, so both must divide. KV heads are split when ``tp`` divides them and replicated
    when ``tp`` is a multiple of their count (``tp % num_kv_heads == 0``); anything else leaves
    GPUs with unequal shares, which vLLM refuses. ``where`` names the setting in the message.
    (The shipped models are dense: there is no expert parallelism to check.)"""
    problems = []
    if tp < 1:
        problems.append("must be >= 1")
    else:
        if model.num_heads % tp:
            problems.append(f"{model.num_heads} attention heads are not divisible by {tp}")
        if model.num_kv_heads % tp and tp % model.num_kv_heads:
            problems.append(
                f"{tp} neither divides the {model.num_kv_heads} KV heads nor is a multiple of them"
            )
        if model.intermediate_size % tp:
            problems.append(f"the MLP's {model.intermediate_size} columns are not divisible by {tp}")
    if problems:
        good = [k for k in range(1, 65) if not model.num_heads % k and not model.intermediate_size % k
                and not (model.num_kv_heads % k and k % model.num_kv_heads)]
        raise ConfigError(
            f"{where} {tp}: {model.name} cannot be split {tp} ways ({'; '.join(problems)}); "
            f"possible: {', '.join(map(str, good))}"
        )

