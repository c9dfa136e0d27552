"""simdisagg: simulate disaggregated (prefill/decode) LLM serving and plan its capacity.

Public API::

    from simdisagg import RunConfig, load_trace, simulate, summarize
    trace = load_trace("traces/agentic-example.jsonl")
    result = simulate(RunConfig(), trace)
    print(summarize(result, RunConfig().slo)["p99_ttft_ms"])
"""

from simdisagg.config import RunConfig, resolve_config
from simdisagg.importers import load_trace
from simdisagg.metrics import summarize
from simdisagg.sim.engine import simulate
from simdisagg.trace import Trace

__all__ = ["RunConfig", "Trace", "load_trace", "resolve_config", "simulate", "summarize"]
__version__ = "0.1.0"
