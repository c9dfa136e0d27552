"""simdisagg: simulate disaggregated (prefill/decode) LLM serving and plan its capacity.

The public API (the README's "Python API" section has a worked example)::

    import simdisagg as sd

    trace = sd.load_trace("traces/mooncake-conversation-5min.jsonl")  # any supported format
    cfg = sd.RunConfig(prefill={"count": 2}, decode={"count": 2})       # validated, frozen
    result = sd.simulate(cfg, trace)                                    # one simulation
    frame = sd.requests_frame(result, cfg.slo)                          # one row per request
    summary = sd.summarize(result, cfg.slo)                             # vLLM-style keys
    runs = sd.run_and_summarize(trace, cfg)                             # and the other mode
    best = sd.run_plan(trace, sd.PlanSpec(base=cfg, gpus=8)).best       # the best split

``PlanSpec`` and ``run_plan`` (:func:`simdisagg.plan.plan`) are imported when first used, so
``import simdisagg`` stays cheap.
"""

from typing import Any

from simdisagg._version import __version__
from simdisagg.api import RunSummary, run_and_summarize
from simdisagg.config import RunConfig, SLOConfig, resolve_config
from simdisagg.importers import import_trace, load_trace
from simdisagg.metrics import summarize
from simdisagg.output import requests_frame
from simdisagg.sim.engine import simulate
from simdisagg.trace import Trace, write_jsonl

__all__ = [
    "PlanSpec",
    "RunConfig",
    "RunSummary",
    "SLOConfig",
    "Trace",
    "__version__",
    "import_trace",
    "load_trace",
    "requests_frame",
    "resolve_config",
    "run_and_summarize",
    "run_plan",
    "simulate",
    "summarize",
    "write_jsonl",
]


def __getattr__(name: str) -> Any:
    # The planner is a larger module; it is imported on first use of its names.
    if name == "PlanSpec":
        from simdisagg.plan import PlanSpec

        return PlanSpec
    if name == "run_plan":
        from simdisagg.plan import plan

        return plan
    raise AttributeError(f"module 'simdisagg' has no attribute '{name}'")
