"""Cold starts: how long a new instance takes before it serves its first request.

A new instance (started by the autoscaler, or replacing a failed one) first reads the model's
weights, at the run's precision (:meth:`RunConfig.model_shape` ``.weight_bytes``), from a
named *weight source* (``hardware_profiles/weight_sources/<name>.yaml``: a bandwidth with its
source, per GPU or shared by the instance), then warms up its engine (``warmup_s``, an
assumption named in :class:`~simdisagg.config.ColdStartConfig`):

    cold start = weight bytes / (bandwidth x (TP if the source is per GPU, else 1)) + warm-up

A role switch (an instance of one pool taking the other pool's role when that pool is down)
keeps the weights in memory: it costs the warm-up only, unless the fault settings name
another time.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from simdisagg.config import PoolConfig, RunConfig
from simdisagg.errors import ConfigError
from simdisagg.hardware import ProfileStore, Provenance, Sourced, load_profile_file

#: The folder of ``hardware_profiles/`` that holds weight sources.
FOLDER = "weight_sources"


class WeightSourceProfile(BaseModel):
    """Where a starting instance reads the model's weights from, and how fast."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    display_name: str
    provenance: Provenance
    bandwidth_bytes_per_s: Sourced
    #: True when each GPU of an instance has its own path at this bandwidth (its own PCIe
    #: link); False when the instance's GPUs share it (one drive, one NIC).
    per_gpu: bool
    notes: str = ""


def weight_source(store: ProfileStore, name: str) -> WeightSourceProfile:
    """Load a weight source profile by name, e.g. ``nvme-gen4`` (``--profiles-dir`` first)."""
    for root in store.roots:
        for ext in (".yaml", ".yml"):
            path = root / FOLDER / f"{name}{ext}"
            if path.is_file():
                return load_profile_file(path, WeightSourceProfile)
    known = ", ".join(store.names(FOLDER)) or "none"
    raise ConfigError(f"autoscale.cold_start.weight_source: unknown weight source '{name}' (known: {known})")


@dataclass(frozen=True, slots=True)
class ColdStart:
    """The two parts of one pool's cold start, in seconds."""

    load_s: float
    warmup_s: float

    @property
    def total_s(self) -> float:
        """Seconds from the start of an instance to its first request."""
        return self.load_s + self.warmup_s


def cold_start(cfg: RunConfig, pool: PoolConfig, store: ProfileStore) -> ColdStart:
    """The cold start of a new instance of ``pool`` under ``cfg`` (the default cold-start
    settings when the config has no autoscaling)."""
    from simdisagg.config import ColdStartConfig

    settings = cfg.autoscale.cold_start if cfg.autoscale is not None else ColdStartConfig()
    source = weight_source(store, settings.weight_source)
    bandwidth = source.bandwidth_bytes_per_s.value * (pool.tp if source.per_gpu else 1)
    weight_bytes = float(cfg.model_shape(store).weight_bytes)
    return ColdStart(weight_bytes / bandwidth, settings.warmup_s)


def role_switch_s(cfg: RunConfig) -> float:
    """Seconds an instance needs to take the other pool's role (weights stay in memory)."""
    from simdisagg.config import ColdStartConfig

    if cfg.faults is not None and cfg.faults.role_switch_s is not None:
        return cfg.faults.role_switch_s
    settings = cfg.autoscale.cold_start if cfg.autoscale is not None else ColdStartConfig()
    return settings.warmup_s
