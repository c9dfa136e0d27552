"""Framework overheads: what a serving engine adds to the sum of its kernels in an iteration.

A sum of measured kernels is not an iteration. The scheduler picks the batch and prepares its
metadata on the CPU, the sampler runs, tokens are detokenised and streamed, eager prefill pays
a launch gap per kernel, and a CUDA-graph replay of decode *removes* most of the gaps that a
kernel timed on its own includes. These costs depend on the framework, not on the GPU, so they
are named per framework and **fitted on end-to-end measurements** (``simdisagg validate
--fit-overheads``, :mod:`simdisagg.overhead_fit`), never guessed. Per iteration::

    prefill iteration:  + prefill_iteration_s + prefill_per_prompt_s x prompts
                        + eager_kernel_gap_s x kernels of the iteration
    decode iteration:   + decode_iteration_s + decode_per_sequence_s x batch size
                        + graph_kernel_gap_s x kernels of the iteration
    mixed iteration:    the prefill terms, + decode_per_sequence_s x decode sequences

and per request, before the scheduler sees it (the HTTP front end: parsing, tokenising,
routing, handing the request to the engine)::

    frontend delay:     frontend_s

``*_kernel_gap_s`` may be negative: a kernel timed alone includes its launch and the event
timing around it, which back-to-back kernels in a CUDA graph overlap. Files live in
``hardware_profiles/frameworks/<framework>.yaml`` with the rows, command and date of the fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

#: The named terms, in the order the fit reports them.
OVERHEAD_TERMS: tuple[str, ...] = (
    "prefill_iteration_s",
    "prefill_per_prompt_s",
    "eager_kernel_gap_s",
    "decode_iteration_s",
    "decode_per_sequence_s",
    "graph_kernel_gap_s",
    "frontend_s",
)


class SchedulerDefaults(BaseModel):
    """How a framework schedules by default (what a benchmark of it ran, unless it says
    otherwise), with the source of each value."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mixes_prefill_into_decode: bool = Field(
        description="prefill chunks ride in decode iterations (vLLM chunked prefill, TensorRT-LLM in-flight "
        "batching) rather than pausing decode for a prefill-only iteration (SGLang's default)"
    )
    max_batched_tokens: int = Field(gt=0, description="token budget of one iteration")
    max_batch_size: int = Field(gt=0, description="most sequences in a batch")
    gpu_memory_utilisation: float = Field(gt=0, le=1, description="share of GPU memory for weights and KV")
    source: str = Field(min_length=3)


class FrameworkOverheads(BaseModel):
    """Per-iteration costs of one serving framework on top of its kernels (see module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    framework: str
    display_name: str = ""
    scheduler: SchedulerDefaults | None = None
    provenance: str = Field(description="fitted (on end-to-end rows), or none")
    prefill_iteration_s: float = 0.0
    prefill_per_prompt_s: float = 0.0
    eager_kernel_gap_s: float = 0.0
    decode_iteration_s: float = 0.0
    decode_per_sequence_s: float = 0.0
    graph_kernel_gap_s: float = 0.0
    frontend_s: float = Field(default=0.0, ge=0)
    fit: dict[str, Any] = Field(default_factory=dict, description="rows, error and command of the fit")

    def prefill_s(self, prompts: float, kernels: float) -> float:
        """Overhead of one prefill iteration of ``prompts`` prompts."""
        return self.prefill_iteration_s + self.prefill_per_prompt_s * prompts + self.eager_kernel_gap_s * kernels

    def decode_s(self, batch_size: float, kernels: float) -> float:
        """Overhead of one decode iteration of ``batch_size`` sequences."""
        return self.decode_iteration_s + self.decode_per_sequence_s * batch_size + self.graph_kernel_gap_s * kernels

    def mixed_s(self, prompts: float, decode_batch_size: float, kernels: float) -> float:
        """Overhead of one iteration with ``prompts`` prompt chunks and a decode batch."""
        return self.prefill_s(prompts, kernels) + self.decode_per_sequence_s * decode_batch_size

    @property
    def has_frontend(self) -> bool:
        """Whether requests wait in a front end before the scheduler sees them."""
        return self.frontend_s > 0.0

    @property
    def label(self) -> str:
        """``overheads:<framework>`` plus how they were obtained."""
        return f"overheads:{self.framework}({self.provenance})"


def no_overheads(framework: str) -> FrameworkOverheads:
    """Kernels only (what the composition alone gives)."""
    return FrameworkOverheads(framework=framework, provenance="none")


def overheads_path(root: Path, framework: str) -> Path:
    """Where a framework's file lives under a profile root."""
    return Path(root) / "frameworks" / f"{framework}.yaml"


def read_overheads(path: Path) -> FrameworkOverheads:
    """Parse one framework file (one line naming file and field on error)."""
    from simdisagg.hardware import load_profile_file

    return load_profile_file(Path(path), FrameworkOverheads)


def write_overheads(path: Path, overheads: FrameworkOverheads, comment: str = "") -> None:
    """Write an overheads file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"# {line}\n" for line in comment.splitlines()) + yaml.safe_dump(
        overheads.model_dump(mode="json"), sort_keys=False
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
