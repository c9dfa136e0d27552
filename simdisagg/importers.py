"""Importers: public trace formats turned into a :class:`~simdisagg.trace.Trace`.

Every importer feeds :class:`~simdisagg.trace.TraceBuilder` one request at a time, so a bad row
is an error naming ``file:line: field 'x'`` and never a skipped row. The only requests that do
not reach the trace are the ones an option explicitly asks to leave out (failed BurstGPT
requests, a model filter); each importer counts them and says so in
:attr:`ImportResult.notes`, and :func:`load_any` repeats those notes as
:class:`TraceImportWarning` warnings, so nothing is dropped silently.

Formats (the names :func:`detect_format` returns):

``native``    simdisagg / Mooncake JSONL (``timestamp`` ms, ``input_length``, ``output_length``,
              ``hash_ids``); delegated to :func:`simdisagg.trace.load_jsonl`.
``azure``     Azure LLM inference CSV, 2023 (``2023-11-16 18:17:03.9799600``) and 2024
              (``2024-05-10 00:00:00.009930+00:00``): ``TIMESTAMP,ContextTokens,GeneratedTokens``.
``burstgpt``  BurstGPT CSV, ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type``
              and the ``BurstGPT_3`` layout with ``Session ID`` and ``Elapsed time``.
``kvct``      kv-cache-tester agentic session JSON: one session per file, a folder of them, or a
              glob pattern; replayed as closed-loop chains (see :func:`import_kvct_sessions`).
``kvct-csv``  the derived per-request CSV of kv-cache-tester sessions (no hashes).
``tracelab``  TraceLab round JSONL (``session_id``, ``round_index``, ``input_tokens_total`` ...).

Zero-output requests (``zero_output``): ``"error"`` rejects them, ``"skip"`` leaves them out and
counts them, ``"one"`` counts their output as one token (the prefill still happened). Defaults
follow what the data means: Azure has none, so one is an error; a BurstGPT row with
``Response tokens`` 0 is a failed request, skipped and reported; in agentic sessions an empty
response is still a step that later requests wait for, so it becomes one token (``"skip"`` is
refused there because it would cut a closed-loop chain).
"""

from __future__ import annotations

import csv
import glob
import json
import math
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from simdisagg.errors import ConfigError, TraceError
from simdisagg.inputs import (
    cell,
    csv_rows,
    header_index,
    is_regular_file,
    parse_float,
    parse_int,
    read_bytes,
    strip_utf8_bom,
)
from simdisagg.trace import (
    DEFAULT_HASH_BLOCK_TOKENS,
    MAX_HASH_BLOCK_TOKENS,
    MAX_TIME_MS,
    MAX_TOKENS,
    Trace,
    TraceBuilder,
    load_jsonl,
)

FORMATS: tuple[str, ...] = ("native", "azure", "burstgpt", "kvct", "kvct-csv", "tracelab")
ZeroOutput = Literal["error", "skip", "one"]
SessionArrival = Literal["poisson", "recorded"]

# Sessions of the agentic formats have no common clock (kv-cache-tester removed the dates), so
# their start times come from a Poisson process. One new session every 20 s on average starts
# the 57-session kv-cache-tester slice within about 20 minutes; pass ``sessions_per_s`` to
# choose the load.
DEFAULT_SESSIONS_PER_S = 0.05

# Hash ids of kv-cache-tester sessions restart at 1 in every file; session k's ids are moved to
# k * 2**40 + id so that two sessions never share a block (ids in a session stay far below 2**40).
SESSION_HASH_STRIDE = 2**40

# Recorded start times of main-agent requests are whole seconds, so "finished before" checks
# between recorded instants allow this much slack.
_RECORDED_SLACK_S = 1.0

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_REQUIRED = ("Timestamp", "Model", "Request tokens", "Response tokens")
KVCT_CSV_COLUMNS = (
    "trace_id", "agent", "subagent_type", "req_idx", "t_s", "type", "model", "in", "out",
    "cached_prefix_tokens", "think_time_s", "api_time_s", "stop", "input_types", "output_types",
)  # fmt: skip


class TraceImportWarning(UserWarning):
    """Requests an import option left out or changed (the counts are in the message)."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    """A trace plus what the import did beyond copying rows.

    ``skipped_requests`` were left out on request (failed requests, a model filter);
    ``adjusted_requests`` had a zero output counted as one token; ``changes`` says both in
    words. ``notes`` holds facts about the source worth printing (sessions, arrival process,
    cached-prefix totals the trace cannot hold).
    """

    trace: Trace
    format: str
    notes: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()
    skipped_requests: int = 0
    adjusted_requests: int = 0
    num_sessions: int = 0


# --------------------------------------------------------------------------------------------
# Format detection and dispatch


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


#: A CSV header or a JSON first line longer than this is not a header: refuse, do not guess.
_HEADER_LIMIT_BYTES = 64 << 10


def _first_line(path: Path, limit_bytes: int = 1 << 20) -> str:
    """The first non-blank line of a file, cut at ``limit_bytes`` (JSON session files are one
    line). A UTF-8 byte-order mark is dropped; a UTF-16/32 or compressed file is an error."""
    try:
        with path.open("rb") as handle:
            first = True
            while True:
                raw = handle.readline(limit_bytes)
                if first:
                    raw = strip_utf8_bom(raw, path)
                    first = False
                if not raw:
                    return ""
                if raw.strip():
                    return raw.decode("utf-8", errors="replace").strip()
    except OSError as exc:
        raise TraceError(str(path), None, None, f"cannot open: {exc.strerror}") from exc


def detect_format(path: str | Path) -> str:
    """Name the format of a trace file, folder or glob pattern (one of :data:`FORMATS`).

    Decided by a peek at the content (the first line, CSV header or JSON keys), with the
    extension only breaking ties; a folder or a glob means kv-cache-tester session files. A
    first line that is neither JSON nor a short CSV header is refused, never guessed."""
    text = str(path)
    p = Path(path)
    if not p.exists():
        if _is_glob(text):
            return "kvct"
        raise TraceError(text, None, None, "no such file or folder")
    if p.is_dir():
        return "kvct"
    head = _first_line(p)
    if not head:
        raise TraceError(text, None, None, "the file is empty")
    if head.startswith("{"):
        if '"block_size"' in head and '"requests"' in head:
            return "kvct"
        try:
            obj = json.loads(head)
        except (json.JSONDecodeError, RecursionError, ValueError):
            obj = None
        if isinstance(obj, dict):
            if "round_index" in obj and "input_tokens_total" in obj:
                return "tracelab"
            if "requests" in obj and ("block_size" in obj or "hash_id_scope" in obj):
                return "kvct"
            return "native"
        if p.suffix == ".json":
            return "kvct"
        return "native"
    if head.startswith("["):
        raise TraceError(
            text, 1, None,
            "a JSON array is not a trace format simdisagg reads: write one request object per line (JSONL)",
        )  # fmt: skip
    if len(head) > _HEADER_LIMIT_BYTES or "," not in head:
        raise TraceError(
            text, 1, None,
            "unknown trace format: the first line is neither JSON nor a CSV header "
            f"({len(head):,} characters: {head[:60]!r}...)",
        )  # fmt: skip
    try:
        columns = [c.strip() for c in next(csv.reader([head]))]
    except csv.Error:
        columns = []
    if tuple(columns[:3]) == AZURE_COLUMNS:
        return "azure"
    if all(c in columns for c in BURSTGPT_REQUIRED):
        return "burstgpt"
    if tuple(columns[:5]) == KVCT_CSV_COLUMNS[:5]:
        return "kvct-csv"
    raise TraceError(
        text, 1, None,
        "unknown trace format: expected native JSONL, an Azure or BurstGPT CSV header, the "
        f"kv-cache-tester derived CSV, TraceLab JSONL or kv-cache-tester JSON (header: {head[:80]!r})",
    )  # fmt: skip


def check_import_options(
    *,
    format: str = "auto",
    zero_output: str | None = None,
    session_arrival: str | None = None,
    sessions_per_s: float | None = DEFAULT_SESSIONS_PER_S,
    seed: int = 0,
    hash_block_tokens: int | None = None,
    names: dict[str, str] | None = None,
) -> None:
    """Refuse import options no import can use; ``names`` says how to call each option in the
    message (the CLI passes its flags, ``{"zero_output": "--zero-output"}``)."""
    name = {"format": "format", "zero_output": "zero_output", "session_arrival": "session_arrival",
            "sessions_per_s": "sessions_per_s", "seed": "seed", "hash_block_tokens": "hash_block_tokens",
            **(names or {})}  # fmt: skip
    if hash_block_tokens is not None and (
        isinstance(hash_block_tokens, bool) or not 1 <= hash_block_tokens <= MAX_HASH_BLOCK_TOKENS
    ):
        raise ConfigError(
            f"{name['hash_block_tokens']}: must be between 1 and {MAX_HASH_BLOCK_TOKENS}, got {hash_block_tokens}"
        )
    if format != "auto" and format not in FORMATS:
        raise ConfigError(f"{name['format']}: '{format}' is not auto or one of {', '.join(FORMATS)}")
    if zero_output is not None and zero_output not in ("error", "skip", "one"):
        raise ConfigError(f"{name['zero_output']}: '{zero_output}' is not error, skip or one")
    if session_arrival is not None and session_arrival not in ("poisson", "recorded"):
        raise ConfigError(f"{name['session_arrival']}: '{session_arrival}' is not poisson or recorded")
    rate = sessions_per_s
    if rate is not None and (isinstance(rate, bool) or not 0 < rate <= MAX_SESSIONS_PER_S):
        raise ConfigError(
            f"{name['sessions_per_s']}: must be above 0 and at most {MAX_SESSIONS_PER_S:g} sessions per second, "
            f"got {sessions_per_s}"
        )
    if isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ConfigError(f"{name['seed']}: must be between 0 and 2**63 - 1, got {seed}")


def import_trace(
    path: str | Path,
    *,
    format: str = "auto",
    hash_block_tokens: int | None = None,
    zero_output: ZeroOutput | None = None,
    model: str | None = None,
    session_arrival: SessionArrival | None = None,
    sessions_per_s: float = DEFAULT_SESSIONS_PER_S,
    seed: int = 0,
) -> ImportResult:
    """Import any supported trace and report what was skipped or adjusted.

    ``format`` is one of :data:`FORMATS` or ``"auto"``. ``zero_output`` and
    ``session_arrival`` default per format (see the module docstring; sessions of the agentic
    formats start as a Poisson process unless ``"recorded"``); ``model`` filters
    BurstGPT rows by their ``Model`` column; ``sessions_per_s`` and ``seed`` drive the Poisson
    session starts of the agentic formats.
    """
    check_import_options(
        format=format, zero_output=zero_output, session_arrival=session_arrival, sessions_per_s=sessions_per_s,
        seed=seed, hash_block_tokens=hash_block_tokens,
    )  # fmt: skip
    p = Path(path)
    if p.exists() and not p.is_dir() and not is_regular_file(p):
        return _import_once(
            p, format=format, hash_block_tokens=hash_block_tokens, zero_output=zero_output, model=model,
            session_arrival=session_arrival, sessions_per_s=sessions_per_s, seed=seed,
        )  # fmt: skip
    fmt = detect_format(path) if format == "auto" else format
    if model is not None and fmt != "burstgpt":
        raise ConfigError(f"a model filter applies to BurstGPT traces only, and {path} is {fmt}")
    if fmt == "native":
        if zero_output not in (None, "error"):
            raise ConfigError("native traces require output_length >= 1; zero_output does not apply")
        trace = load_jsonl(path, hash_block_tokens)
        return ImportResult(trace, "native", num_sessions=len(trace.session_names))
    if fmt == "azure":
        return import_azure(path, zero_output=zero_output or "error", hash_block_tokens=hash_block_tokens)
    if fmt == "burstgpt":
        return import_burstgpt(
            path, zero_output=zero_output or "skip", model=model, hash_block_tokens=hash_block_tokens
        )
    agentic: dict[str, Any] = {
        "zero_output": zero_output or "one",
        "sessions_per_s": sessions_per_s,
        "seed": seed,
        "hash_block_tokens": hash_block_tokens,
    }
    if fmt == "kvct":
        return import_kvct_sessions(path, session_arrival=session_arrival or "poisson", **agentic)
    if fmt == "kvct-csv":
        return import_kvct_csv(path, session_arrival=session_arrival or "poisson", **agentic)
    return import_tracelab(path, session_arrival=session_arrival or "poisson", **agentic)


#: Highest Poisson session start rate accepted, per second.
MAX_SESSIONS_PER_S = 1e6


def _import_once(path: Path, **options: Any) -> ImportResult:
    """Import a pipe, FIFO or device (``<(zcat trace.gz)``, ``/dev/stdin``): read it once into
    a temporary file, since detecting the format and reading it each need the start; errors
    and the trace still name ``path``."""
    data = read_bytes(path, "trace")
    label = str(path)
    with tempfile.TemporaryDirectory(prefix="simdisagg-") as folder:
        copy = Path(folder) / (path.name or "trace")
        copy.write_bytes(data)
        try:
            result = import_trace(copy, **options)
        except TraceError as exc:
            raise TraceError(label, exc.line, exc.field, exc.message.replace(str(copy), label)) from None
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(str(copy), label)) from None
    result.trace.source = label
    return result


def load_trace(path: str | Path, hash_block_tokens: int | None = None) -> Trace:
    """Load any supported trace, detecting its format from the file.

    Native JSONL (:func:`simdisagg.trace.load_jsonl`), Azure and BurstGPT CSV, agentic session
    JSON and TraceLab; requests an import option left out or changed are reported as
    :class:`TraceImportWarning` warnings (see :func:`load_any`).
    """
    return load_any(path, hash_block_tokens=hash_block_tokens)


def load_any(path: str | Path, hash_block_tokens: int | None = None, **options: Any) -> Trace:
    """Load any supported trace (format auto-detected unless ``format=`` is given).

    Options are those of :func:`import_trace`. Requests left out or changed by an option are
    reported as :class:`TraceImportWarning` warnings; use :func:`import_trace` to get the counts.
    """
    result = import_trace(path, hash_block_tokens=hash_block_tokens, **options)
    for change in result.changes:
        warnings.warn(f"{path}: {change}", TraceImportWarning, stacklevel=2)
    return result.trace


# --------------------------------------------------------------------------------------------
# Shared helpers


@dataclass(slots=True)
class _ZeroPolicy:
    """Applies ``zero_output`` to one importer's rows and counts what it did."""

    policy: ZeroOutput
    source: str
    field_name: str
    skipped: int = 0
    adjusted: int = 0

    def output(self, value: int, line: int | None, field_name: str | None = None) -> int | None:
        """The output tokens to use, or ``None`` when the request is to be skipped."""
        if value >= 1:
            return value
        name = field_name or self.field_name
        if value < 0:
            raise TraceError(self.source, line, name, f"must be >= 0 output tokens, got {value}")
        if self.policy == "one":
            self.adjusted += 1
            return 1
        if self.policy == "skip":
            self.skipped += 1
            return None
        raise TraceError(
            self.source, line, name,
            "0 output tokens; use zero_output='one' to count it as 1 token or 'skip' to leave it out",
        )  # fmt: skip


def _check_zero_policy(policy: str, closed_loop: bool) -> None:
    if policy not in ("error", "skip", "one"):
        raise ConfigError(f"zero_output must be 'error', 'skip' or 'one', got '{policy}'")
    if closed_loop and policy == "skip":
        raise ConfigError(
            "zero_output='skip' would cut closed-loop chains in an agentic trace; use 'one' or 'error'"
        )


#: Largest time a source file may give, s (about 317 years: anything past it is garbage).
_MAX_TIME_S = MAX_TIME_MS / 1000.0


def _parse_int(text: str, source: str, line: int, name: str, minimum: int) -> int:
    """A token count in a CSV cell: a whole number in ``[minimum, MAX_TOKENS]``."""
    return parse_int(text, source, line, name, minimum, MAX_TOKENS)


def _parse_float(text: str, source: str, line: int, name: str) -> float:
    """A time in seconds in a CSV cell: finite and within :data:`_MAX_TIME_S`."""
    return parse_float(text, source, line, name, _MAX_TIME_S)


_csv_rows = csv_rows
_header_index = header_index
_cell = cell


def _session_starts(
    count: int, session_arrival: str, sessions_per_s: float, seed: int
) -> np.ndarray:
    """Start time of each session, s: a Poisson process whose first session starts at 0, or all 0.

    Gaps are exponential with mean ``1 / sessions_per_s`` drawn from
    ``default_rng(SeedSequence(seed))``; ``"recorded"`` keeps each session's own clock.
    """
    if session_arrival == "recorded":
        return np.zeros(count)
    if session_arrival != "poisson":
        raise ConfigError(f"session_arrival must be 'poisson' or 'recorded', got '{session_arrival}'")
    if not (sessions_per_s > 0 and math.isfinite(sessions_per_s)):
        raise ConfigError(f"sessions_per_s must be a positive number, got {sessions_per_s}")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    gaps_s = rng.exponential(1.0 / sessions_per_s, size=count)
    starts = np.concatenate([[0.0], np.cumsum(gaps_s[:-1])]) if count else np.zeros(0)
    return starts


def _notes_for(zero: _ZeroPolicy, what: str) -> list[str]:
    notes = []
    if zero.skipped:
        notes.append(f"skipped {zero.skipped} {what} with 0 output tokens (zero_output='skip')")
    if zero.adjusted:
        notes.append(f"counted {zero.adjusted} zero-output requests as 1 output token (zero_output='one')")
    return notes


# --------------------------------------------------------------------------------------------
# Azure LLM inference traces (2023 and 2024)


def _parse_azure_time(text: str, source: str, line: int) -> tuple[datetime, bool]:
    """The instant (naive UTC when the text has a zone) and whether the text had a zone."""
    # datetime.fromisoformat (3.11+) reads 7 fractional digits (2023) and "+00:00" with any
    # number of digits (2024); aware instants are moved to naive UTC so they subtract.
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise TraceError(
            source, line, "TIMESTAMP", f"'{text}' is not a time like 2023-11-16 18:17:03.9799600"
        ) from None
    if value.tzinfo is None:
        return value, False
    return value.astimezone(timezone.utc).replace(tzinfo=None), True


def import_azure(
    path: str | Path, *, zero_output: ZeroOutput = "error", hash_block_tokens: int | None = None
) -> ImportResult:
    """Import an Azure LLM inference CSV (2023 or 2024 layout) as open-loop requests.

    Arrival times become seconds from the *earliest* row; rows keep their file order even where
    the file is not sorted by time. Azure traces carry no prefix hashes and no sessions.
    """
    _check_zero_policy(zero_output, closed_loop=False)
    path = Path(path)
    source = str(path)
    zero = _ZeroPolicy(zero_output, source, "GeneratedTokens")
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise TraceError(source, None, None, "the file is empty")
    _, header = first
    if tuple(h.strip() for h in header[:3]) != AZURE_COLUMNS:
        raise TraceError(source, 1, None, f"expected the header {','.join(AZURE_COLUMNS)}, got {','.join(header)}")
    parsed: list[tuple[int, datetime, int, int]] = []
    aware: bool | None = None
    for line, row in rows:
        if len(row) != 3:
            raise TraceError(source, line, None, f"expected 3 fields, got {len(row)}")
        stamp, row_aware = _parse_azure_time(row[0], source, line)
        if aware is None:
            aware = row_aware
        elif aware != row_aware:
            raise TraceError(source, line, "TIMESTAMP", "mixes time-zone-aware and naive timestamps")
        inp = _parse_int(row[1], source, line, "ContextTokens", 1)
        out = zero.output(_parse_int(row[2], source, line, "GeneratedTokens", 0), line)
        if out is not None:
            parsed.append((line, stamp, inp, out))
    if not parsed:
        raise TraceError(source, None, None, "the trace has no requests")
    origin = min(p[1] for p in parsed)
    builder = TraceBuilder(source, hash_block_tokens or DEFAULT_HASH_BLOCK_TOKENS)
    for line, stamp, inp, out in parsed:
        builder.add(
            line=line,
            timestamp_s=(stamp - origin).total_seconds(),
            input_tokens=inp,
            output_tokens=out,
        )
    trace = builder.build()
    return ImportResult(
        trace, "azure", changes=tuple(_notes_for(zero, "requests")),
        skipped_requests=zero.skipped, adjusted_requests=zero.adjusted,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# BurstGPT


def import_burstgpt(
    path: str | Path,
    *,
    zero_output: ZeroOutput = "skip",
    model: str | None = None,
    hash_block_tokens: int | None = None,
) -> ImportResult:
    """Import a BurstGPT CSV (``BurstGPT_1/2`` or the ``_3`` layout with sessions) as open loop.

    ``Timestamp`` is seconds; arrivals are taken from the earliest kept row. A row whose
    ``Response tokens`` is 0 is a *failed* request: skipped and counted by default
    (``zero_output="skip"``), or ``"one"`` / ``"error"``. ``model`` keeps only rows whose
    ``Model`` equals it (``ChatGPT`` or ``GPT-4``); the rows it leaves out are counted too.
    ``Session ID`` (``_3`` layout) becomes the request's session; requests stay open-loop
    because the file does not say which request waited for which.
    """
    _check_zero_policy(zero_output, closed_loop=False)
    path = Path(path)
    source = str(path)
    zero = _ZeroPolicy(zero_output, source, "Response tokens")
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise TraceError(source, None, None, "the file is empty")
    index = _header_index(first[1], BURSTGPT_REQUIRED, source)
    has_session = "Session ID" in index
    filtered = 0
    models_seen: dict[str, int] = {}
    parsed: list[tuple[int, float, int, int, str | None]] = []
    for line, row in rows:
        row_model = _cell(row, index, "Model", source, line)
        models_seen[row_model] = models_seen.get(row_model, 0) + 1
        if model is not None and row_model != model:
            filtered += 1
            continue
        t_s = _parse_float(_cell(row, index, "Timestamp", source, line), source, line, "Timestamp")
        if t_s < 0:
            raise TraceError(source, line, "Timestamp", f"must be >= 0 s, got {t_s}")
        out = zero.output(
            _parse_int(_cell(row, index, "Response tokens", source, line), source, line, "Response tokens", 0),
            line,
        )
        if out is None:
            continue
        inp = _parse_int(_cell(row, index, "Request tokens", source, line), source, line, "Request tokens", 1)
        session = _cell(row, index, "Session ID", source, line) if has_session else None
        parsed.append((line, t_s, inp, out, session))
    if not parsed:
        detail = f" (models in the file: {', '.join(sorted(models_seen))})" if model is not None else ""
        raise TraceError(source, None, None, f"no requests left to import{detail}")
    origin = min(p[1] for p in parsed)
    builder = TraceBuilder(source, hash_block_tokens or DEFAULT_HASH_BLOCK_TOKENS)
    for line, t_s, inp, out, session in parsed:
        builder.add(line=line, timestamp_s=t_s - origin, input_tokens=inp, output_tokens=out, session_id=session)
    changes = []
    if filtered:
        changes.append(f"left out {filtered} requests of other models (model filter '{model}')")
    changes += _notes_for(zero, "failed requests")
    trace = builder.build()
    return ImportResult(
        trace, "burstgpt", changes=tuple(changes), skipped_requests=zero.skipped + filtered,
        adjusted_requests=zero.adjusted, num_sessions=len(trace.session_names),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Agentic sessions: shared closed-loop chaining
#
# A session is a list of items in recorded order: requests of the main agent, and sub-agent
# entries that hold their own item lists. All times are seconds from the session's start.
#
# Chaining rules (the same for the JSON files and the derived CSV):
# * The first request of the main agent is open-loop at the session's start time.
# * Each later request of an agent waits for that agent's previous request. Its tool wait is
#   the recorded ``think_time`` (tool execution or the human): the time from the previous
#   response's end to this request.
# * A sub-agent runs as its own chain. Its first request waits for the "spawning" request: the
#   latest earlier request of the enclosing agent that had finished (recorded start + api_time)
#   by the sub-agent's start; the tool wait is the recorded gap between the two, clamped at 0.
#   When no such request exists the sub-agent starts open-loop at its recorded start.
# * A request of the enclosing agent ALSO waits for a sub-agent's last request when the
#   sub-agent had finished before that request started in the recording (it consumed the
#   sub-agent's result); this is the first such request after the sub-agent entry. Sub-agents
#   that had not finished run concurrently with it. When a request waits for more than its
#   predecessor, its tool wait is the recorded gap from the latest recorded completion among
#   the requests it waits for (clamped at 0), so the sub-agent's run time is not counted twice.
#
# Where a sub-agent starts: kv-cache-tester writes a sub-agent entry's ``t`` when the
# sub-agent *ends*. In every entry of the shared slice, ``t - duration_ms/1000`` falls 0.6-1 s
# after the end of the parent's preceding request (the Task tool call), and ``t`` itself falls
# before the parent's next request; with ``t`` taken as the start, the sub-agents would begin
# 2-310 s after the tool call and outlive the parent's next request. So the start is
# ``t - duration`` (duration from ``duration_ms``, else estimated as the end of the sub-agent's
# last request: its ``t`` + ``api_time``), and sub-agent request times are offsets from it.


@dataclass(slots=True)
class _AgentRequest:
    """One recorded request, with the location to blame in errors."""

    line: int
    where: str  # JSON path or CSV column prefix for errors
    request_id: str
    t_s: float  # recorded start, s from the session start
    api_s: float | None
    think_s: float | None
    input_tokens: int
    output_tokens: int
    hash_ids: np.ndarray | None

    @property
    def end_s(self) -> float:
        """Recorded completion: start + api_time (start alone when api_time is missing)."""
        return self.t_s + (self.api_s or 0.0)


@dataclass(slots=True)
class _SubAgent:
    """A sub-agent entry: its own items, started at ``start_s`` and finished at ``end_s``."""

    agent_id: str
    start_s: float
    end_s: float
    items: list[_AgentRequest | _SubAgent] = field(default_factory=list)


@dataclass(slots=True)
class _Chained:
    request: _AgentRequest
    waits: list[str]
    tool_wait_s: float


def _last_request(items: Sequence[_AgentRequest | _SubAgent]) -> _AgentRequest | None:
    for item in reversed(items):
        if isinstance(item, _AgentRequest):
            return item
    return None


def _chain_agent(
    items: Sequence[_AgentRequest | _SubAgent],
    anchor: _AgentRequest | None,
    out: list[_Chained],
) -> None:
    """Append the chained requests of one agent (and, recursively, its sub-agents) to ``out``."""
    prev: _AgentRequest | None = None
    emitted: list[_AgentRequest] = []  # this agent's requests so far, for choosing a spawner
    pending: list[_AgentRequest] = []  # last requests of sub-agents not yet joined
    for item in items:
        if isinstance(item, _SubAgent):
            if sum(_count_requests(item.items)) == 0:
                continue  # an entry without requests has nothing to replay
            spawner = None
            for candidate in reversed(emitted):
                if candidate.end_s <= item.start_s + _RECORDED_SLACK_S:
                    spawner = candidate
                    break
            if spawner is None and not emitted:
                spawner = anchor
            _chain_agent(item.items, spawner, out)
            last = _last_sub_request(item)
            if last is not None:
                pending.append(last)
            continue
        req = item
        if prev is None:
            if anchor is None:
                out.append(_Chained(req, [], 0.0))
            else:
                out.append(_Chained(req, [anchor.request_id], max(0.0, req.t_s - anchor.end_s)))
        else:
            joined = [p for p in pending if p.end_s <= req.t_s + _RECORDED_SLACK_S]
            pending = [p for p in pending if p.end_s > req.t_s + _RECORDED_SLACK_S]
            if not joined and req.think_s is not None:
                tool_wait_s = req.think_s
            else:
                latest_end_s = max([prev.end_s] + [p.end_s for p in joined])
                tool_wait_s = max(0.0, req.t_s - latest_end_s)
            out.append(_Chained(req, [prev.request_id] + [p.request_id for p in joined], tool_wait_s))
        prev = req
        emitted.append(req)


def _last_sub_request(sub: _SubAgent) -> _AgentRequest | None:
    """The request whose completion ends a sub-agent (its own last request)."""
    return _last_request(sub.items)


def _build_sessions(
    source: str,
    sessions: Sequence[tuple[str, list[_AgentRequest | _SubAgent]]],
    starts_s: np.ndarray,
    hash_block_tokens: int,
) -> Trace:
    """Feed chained sessions to a :class:`TraceBuilder`, session after session."""
    builder = TraceBuilder(source, hash_block_tokens)
    for (name, items), start_s in zip(sessions, starts_s, strict=True):
        chained: list[_Chained] = []
        _chain_agent(items, None, chained)
        for c in chained:
            r = c.request
            builder.add(
                line=r.line,
                timestamp_s=float(start_s) + r.t_s,
                input_tokens=r.input_tokens,
                output_tokens=r.output_tokens,
                request_id=r.request_id,
                session_id=name,
                wait_for=c.waits,
                tool_wait_s=c.tool_wait_s,
                hash_ids=r.hash_ids,
            )
    return builder.build()


def _count_requests(items: Iterable[_AgentRequest | _SubAgent]) -> tuple[int, int]:
    main = subs = 0
    for item in items:
        if isinstance(item, _SubAgent):
            m, s = _count_requests(item.items)
            subs += m + s
        else:
            main += 1
    return main, subs


# --------------------------------------------------------------------------------------------
# kv-cache-tester session JSON


def _session_files(path: str | Path) -> list[Path]:
    text = str(path)
    p = Path(path)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.suffix == ".json" and q.is_file())
    elif p.exists():
        files = [p]
    elif _is_glob(text):
        files = sorted(Path(q) for q in glob.glob(text) if Path(q).is_file())
    else:
        raise TraceError(text, None, None, "no such file or folder")
    if not files:
        raise TraceError(text, None, None, "no kv-cache-tester session files (*.json) found")
    return files


def _num(
    obj: dict[str, Any], key: str, source: str, where: str, *, required: bool, minimum: float = 0.0
) -> float | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise TraceError(source, None, f"{where}.{key}", "is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TraceError(source, None, f"{where}.{key}", f"must be a number, got {value!r}")
    if not minimum <= value <= _MAX_TIME_S * 1000.0:
        limit = _MAX_TIME_S * 1000.0
        raise TraceError(source, None, f"{where}.{key}", f"must be between {minimum:g} and {limit:g}, got {value:g}")
    return float(value)


def _int(obj: dict[str, Any], key: str, source: str, where: str, minimum: int) -> int:
    value = obj.get(key)
    if value is None:
        raise TraceError(source, None, f"{where}.{key}", "is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TraceError(source, None, f"{where}.{key}", f"must be an integer, got {value!r}")
    if not minimum <= value <= MAX_TOKENS:
        shown = value if abs(value) < 10**30 else "a number beyond 64 bits"
        raise TraceError(source, None, f"{where}.{key}", f"must be between {minimum} and {MAX_TOKENS:,}, got {shown}")
    return value


def _kvct_items(
    requests: Any,
    source: str,
    where: str,
    prefix: str,
    offset_s: float,
    hash_offset: int,
    zero: _ZeroPolicy,
    agent_path: str,
) -> list[_AgentRequest | _SubAgent]:
    if not isinstance(requests, list):
        raise TraceError(source, None, where, "must be a list of requests")
    items: list[_AgentRequest | _SubAgent] = []
    for i, obj in enumerate(requests):
        at = f"{where}[{i}]"
        if not isinstance(obj, dict):
            raise TraceError(source, None, at, "must be a JSON object")
        t_s = _num(obj, "t", source, at, required=True)
        assert t_s is not None
        if obj.get("type") == "subagent":
            agent_id = str(obj.get("agent_id") or f"sub{i}")
            duration_s = _num(obj, "duration_ms", source, at, required=False)
            sub_items_raw = obj.get("requests", [])
            if duration_s is not None:
                duration_s /= 1000.0
            else:
                duration_s = _estimated_duration(sub_items_raw, source, at)
            start_s = offset_s + t_s - duration_s
            sub = _SubAgent(agent_id, start_s, offset_s + t_s)
            sub.items = _kvct_items(
                sub_items_raw, source, f"{at}.requests", prefix, start_s, hash_offset, zero,
                f"{agent_path}/{agent_id}" if agent_path != "main" else agent_id,
            )  # fmt: skip
            items.append(sub)
            continue
        inp = _int(obj, "in", source, at, 1)
        raw_out = _int(obj, "out", source, at, 0)
        out = zero.output(raw_out, None, f"{at}.out")
        assert out is not None  # "skip" is refused for agentic traces
        hashes = obj.get("hash_ids")
        hash_arr: np.ndarray | None = None
        if hashes is not None:
            # One numpy conversion checks the element type of thousands of ids at once.
            try:
                hash_arr = np.asarray(hashes) if isinstance(hashes, list) and hashes else np.zeros(0, np.int64)
            except (OverflowError, ValueError):
                hash_arr = np.zeros(0, dtype=object)
            if not isinstance(hashes, list) or hash_arr.ndim != 1 or hash_arr.dtype.kind not in "iu":
                raise TraceError(source, None, f"{at}.hash_ids", "must be a list of integers")
            hash_arr = hash_arr.astype(np.int64, copy=False)
            if len(hash_arr) and (hash_arr.min() < 0 or hash_arr.max() >= SESSION_HASH_STRIDE):
                raise TraceError(source, None, f"{at}.hash_ids", "ids must lie in [0, 2**40)")
            hash_arr = hash_arr + hash_offset
        items.append(
            _AgentRequest(
                line=1,
                where=at,
                request_id=f"{prefix}/{agent_path}/{i}",
                t_s=offset_s + t_s,
                api_s=_num(obj, "api_time", source, at, required=False),
                think_s=_num(obj, "think_time", source, at, required=False),
                input_tokens=inp,
                output_tokens=out,
                hash_ids=hash_arr,
            )
        )
    return items


def _estimated_duration(requests: Any, source: str, where: str) -> float:
    """A sub-agent's run time when ``duration_ms`` is missing: the end of its last request."""
    if not isinstance(requests, list) or not requests:
        return 0.0
    ends = []
    for i, obj in enumerate(requests):
        if isinstance(obj, dict):
            t_s = _num(obj, "t", source, f"{where}.requests[{i}]", required=True) or 0.0
            api_s = _num(obj, "api_time", source, f"{where}.requests[{i}]", required=False) or 0.0
            ends.append(t_s + api_s)
    return max(ends, default=0.0)


def import_kvct_sessions(
    path: str | Path,
    *,
    session_arrival: SessionArrival = "poisson",
    sessions_per_s: float = DEFAULT_SESSIONS_PER_S,
    seed: int = 0,
    zero_output: ZeroOutput = "one",
    hash_block_tokens: int | None = None,
) -> ImportResult:
    """Import kv-cache-tester session JSON files (one file, a folder, or a glob) as closed loops.

    Each file is one session; sessions are taken in file-name order and start at the times of
    a Poisson process (``sessions_per_s``, seeded by ``seed``; the first at 0), or all at 0 with
    ``session_arrival="recorded"`` (the files have no common clock). Requests are chained as
    described above this function in the source. Hash ids of session ``k`` are shifted by
    ``k * 2**40`` so sessions never share blocks; sub-agents share their session's ids, as in
    the files. The block size is the files' ``block_size`` (64), which must agree across files.
    """
    _check_zero_policy(zero_output, closed_loop=True)
    files = _session_files(path)
    source = str(path)
    block: int | None = None
    sessions: list[tuple[str, list[_AgentRequest | _SubAgent]]] = []
    seen: dict[str, Path] = {}
    zero = _ZeroPolicy(zero_output, source, "out")
    main_requests = sub_requests = 0
    for k, file in enumerate(files):
        fsource = str(file)
        zero.source = fsource
        try:
            data = json.loads(strip_utf8_bom(read_bytes(file, "session file"), fsource))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TraceError(fsource, getattr(exc, "lineno", None), None, f"not valid JSON ({exc})") from None
        except RecursionError:
            raise TraceError(fsource, None, None, "nested too deeply to be a session file") from None
        except ValueError as exc:  # an integer of thousands of digits
            raise TraceError(fsource, None, None, f"not valid JSON ({str(exc).split(':')[0]})") from None
        if not isinstance(data, dict) or "requests" not in data:
            raise TraceError(fsource, None, "requests", "is missing: not a kv-cache-tester session file")
        file_block = data.get("block_size", 64)
        if isinstance(file_block, bool) or not isinstance(file_block, int) or file_block < 1:
            raise TraceError(fsource, None, "block_size", f"must be a positive integer, got {file_block!r}")
        if block is None:
            block = file_block
        elif file_block != block:
            raise TraceError(fsource, None, "block_size", f"is {file_block}, but earlier files use {block}")
        name = str(data.get("id") or file.stem)
        if name in seen:
            raise TraceError(fsource, None, "id", f"session '{name}' also comes from {seen[name]}")
        seen[name] = file
        items = _kvct_items(
            data["requests"], fsource, "requests", name, 0.0, k * SESSION_HASH_STRIDE, zero, "main"
        )
        m, s = _count_requests(items)
        if m + s == 0:
            raise TraceError(fsource, None, "requests", "the session has no requests")
        main_requests += m
        sub_requests += s
        sessions.append((name, items))
    assert block is not None
    if hash_block_tokens is not None and hash_block_tokens != block:
        raise ConfigError(
            f"{source}: the session files hash {block}-token blocks; hash_block_tokens={hash_block_tokens} "
            "would misread their hash ids"
        )
    starts_s = _session_starts(len(sessions), session_arrival, sessions_per_s, seed)
    trace = _build_sessions(source, sessions, starts_s, block)
    notes = [
        f"{len(sessions)} sessions: {main_requests} main-agent and {sub_requests} sub-agent requests; "
        + _arrival_note(session_arrival, sessions_per_s, seed)
    ]
    return ImportResult(
        trace, "kvct", tuple(notes), tuple(_notes_for(zero, "requests")),
        zero.skipped, zero.adjusted, len(sessions),
    )  # fmt: skip


def _arrival_note(session_arrival: str, sessions_per_s: float, seed: int) -> str:
    if session_arrival == "recorded":
        return "sessions start at their recorded times"
    return f"sessions start as a Poisson process at {sessions_per_s:g}/s (seed {seed})"


# --------------------------------------------------------------------------------------------
# kv-cache-tester derived CSV


def import_kvct_csv(
    path: str | Path,
    *,
    session_arrival: SessionArrival = "poisson",
    sessions_per_s: float = DEFAULT_SESSIONS_PER_S,
    seed: int = 0,
    zero_output: ZeroOutput = "one",
    hash_block_tokens: int | None = None,
) -> ImportResult:
    """Import the derived kv-cache-tester CSV (one row per request) with the same chaining.

    Rows of a session need not be contiguous; sessions are taken in order of first appearance,
    requests of a session in file order, and a sub-agent's rows (``agent`` ≠ ``main``) sit where
    its first row is. The CSV has no ``duration_ms``: a sub-agent's run time is estimated as the
    end of its last request (``t_s`` offset + ``api_time_s``), and since its rows' ``t_s`` are
    offsets from the entry's ``t`` (the sub-agent's end), the start is that ``t`` minus the
    estimate. There are no hash lists, so requests carry no ``hash_ids``;
    ``cached_prefix_tokens`` is only summarised in a note.
    """
    _check_zero_policy(zero_output, closed_loop=True)
    path = Path(path)
    source = str(path)
    zero = _ZeroPolicy(zero_output, source, "out")
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise TraceError(source, None, None, "the file is empty")
    index = _header_index(first[1], ("trace_id", "agent", "t_s", "in", "out", "think_time_s", "api_time_s"), source)
    # session -> ordered list of ("main", request) or ("sub", agent_id) markers
    order: dict[str, list[tuple[str, Any]]] = {}
    subs: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
    cached_tokens = 0
    input_tokens = 0
    has_cached = "cached_prefix_tokens" in index
    for line, row in rows:
        sid = _cell(row, index, "trace_id", source, line)
        agent = _cell(row, index, "agent", source, line)
        t_s = _parse_float(_cell(row, index, "t_s", source, line), source, line, "t_s")
        if t_s < 0:
            raise TraceError(source, line, "t_s", f"must be >= 0 s, got {t_s}")
        inp = _parse_int(_cell(row, index, "in", source, line), source, line, "in", 1)
        out = zero.output(_parse_int(_cell(row, index, "out", source, line), source, line, "out", 0), line)
        think = _optional_float(row, index, "think_time_s", source, line)
        api = _optional_float(row, index, "api_time_s", source, line)
        if has_cached:
            cached_tokens += _parse_int(
                _cell(row, index, "cached_prefix_tokens", source, line), source, line, "cached_prefix_tokens", 0
            )
        input_tokens += inp
        req_idx = row[index["req_idx"]].strip() if "req_idx" in index and index["req_idx"] < len(row) else ""
        rec = {"line": line, "t_s": t_s, "in": inp, "out": out, "think": think, "api": api, "idx": req_idx}
        markers = order.setdefault(sid, [])
        if agent == "main":
            markers.append(("main", rec))
        else:
            key = (sid, agent)
            if key not in subs:
                subs[key] = []
                markers.append(("sub", agent))
            subs[key].append((line, rec))
    if not order:
        raise TraceError(source, None, None, "the trace has no requests")
    sessions: list[tuple[str, list[_AgentRequest | _SubAgent]]] = []
    main_requests = sub_requests = 0
    for sid, markers in order.items():
        items: list[_AgentRequest | _SubAgent] = []
        n_main = 0
        for kind, value in markers:
            if kind == "main":
                items.append(_csv_request(value, source, f"{sid}/main/{value['idx'] or n_main}", 0.0))
                n_main += 1
                main_requests += 1
                continue
            recs = subs[(sid, value)]
            entry_t_s = recs[0][1]["t_s"]
            last = recs[-1][1]
            duration_s = max(0.0, last["t_s"] - entry_t_s + (last["api"] or 0.0))
            shift_s = -duration_s  # rows are offsets from the end; move them to the start
            sub = _SubAgent(value, entry_t_s - duration_s, entry_t_s)
            for j, (_, rec) in enumerate(recs):
                sub.items.append(_csv_request(rec, source, f"{sid}/{value}/{rec['idx'] or j}", shift_s))
            sub_requests += len(recs)
            items.append(sub)
        sessions.append((sid, items))
    starts_s = _session_starts(len(sessions), session_arrival, sessions_per_s, seed)
    trace = _build_sessions(source, sessions, starts_s, hash_block_tokens or 64)
    notes = [
        f"{len(sessions)} sessions: {main_requests} main-agent and {sub_requests} sub-agent requests; "
        + _arrival_note(session_arrival, sessions_per_s, seed)
    ]
    if has_cached and input_tokens:
        notes.append(
            f"no hash lists in this CSV; its cached_prefix_tokens column gives a per-session "
            f"infinite-cache token hit fraction of {cached_tokens / input_tokens:.3f}"
        )
    return ImportResult(
        trace, "kvct-csv", tuple(notes), tuple(_notes_for(zero, "requests")),
        zero.skipped, zero.adjusted, len(sessions),
    )  # fmt: skip


def _optional_float(row: list[str], index: dict[str, int], name: str, source: str, line: int) -> float | None:
    i = index.get(name)
    if i is None or i >= len(row) or not row[i].strip():
        return None
    value = _parse_float(row[i], source, line, name)
    if value < 0:
        raise TraceError(source, line, name, f"must be >= 0 s, got {value}")
    return value


def _csv_request(rec: dict[str, Any], source: str, request_id: str, shift_s: float) -> _AgentRequest:
    return _AgentRequest(
        line=rec["line"],
        where=f"line {rec['line']}",
        request_id=request_id,
        t_s=rec["t_s"] + shift_s,
        api_s=rec["api"],
        think_s=rec["think"],
        input_tokens=rec["in"],
        output_tokens=rec["out"],
        hash_ids=None,
    )


# --------------------------------------------------------------------------------------------
# TraceLab


def _iso_s(text: Any, source: str, line: int, name: str) -> float:
    if not isinstance(text, str):
        raise TraceError(source, line, name, f"must be an ISO-8601 time, got {text!r}")
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TraceError(source, line, name, f"'{text}' is not an ISO-8601 time") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def import_tracelab(
    path: str | Path,
    *,
    session_arrival: SessionArrival = "poisson",
    sessions_per_s: float = DEFAULT_SESSIONS_PER_S,
    seed: int = 0,
    zero_output: ZeroOutput = "one",
    hash_block_tokens: int | None = None,
) -> ImportResult:
    """Import TraceLab round JSONL as one closed-loop chain per ``session_id``.

    Rounds are ordered by ``round_index`` within a session. Round 0 is open-loop at its first
    timing event; round ``k`` waits for round ``k-1`` with a tool wait equal to the *sum* of
    round ``k-1``'s ``tools[].tool_wall_latency_ms`` (tools run in parallel make this an upper
    bound), plus, when round ``k`` opens with a ``user_message``, the human's gap from round
    ``k-1``'s last timing event to that message (clamped at 0). Sessions start as a Poisson
    process like the other agentic formats; TraceLab has a common UTC clock, so
    ``session_arrival="recorded"`` keeps each session's recorded start instead (the two example
    sessions lie 72 days apart). No prefix hashes.
    """
    _check_zero_policy(zero_output, closed_loop=True)
    path = Path(path)
    source = str(path)
    zero = _ZeroPolicy(zero_output, source, "output_tokens")
    rounds: dict[str, list[dict[str, Any]]] = {}
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise TraceError(source, None, None, f"cannot open: {exc.strerror}") from exc
    with handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise TraceError(source, line, None, f"not valid JSON ({exc})") from None
            except RecursionError:
                raise TraceError(source, line, None, "nested too deeply to be a round") from None
            except ValueError as exc:  # an integer of thousands of digits
                raise TraceError(source, line, None, f"not valid JSON ({str(exc).split(':')[0]})") from None
            if not isinstance(obj, dict):
                raise TraceError(source, line, None, "a round must be a JSON object")
            sid = obj.get("session_id")
            if not isinstance(sid, str | int) or isinstance(sid, bool) or sid == "":
                raise TraceError(source, line, "session_id", "is missing or not a string")
            rnd = obj.get("round_index")
            if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
                raise TraceError(source, line, "round_index", f"must be an integer >= 0, got {rnd!r}")
            inp = obj.get("input_tokens_total")
            if isinstance(inp, bool) or not isinstance(inp, int) or inp < 1:
                raise TraceError(source, line, "input_tokens_total", f"must be an integer >= 1, got {inp!r}")
            out_raw = obj.get("output_tokens")
            if isinstance(out_raw, bool) or not isinstance(out_raw, int):
                raise TraceError(source, line, "output_tokens", f"must be an integer, got {out_raw!r}")
            out = zero.output(out_raw, line)
            events = obj.get("timing_events") or []
            if not isinstance(events, list):
                raise TraceError(source, line, "timing_events", "must be a list")
            times = []
            first_user_s: float | None = None
            for j, ev in enumerate(events):
                if not isinstance(ev, dict):
                    raise TraceError(source, line, f"timing_events[{j}]", "must be an object")
                at_s = _iso_s(ev.get("timestamp"), source, line, f"timing_events[{j}].timestamp")
                times.append(at_s)
                if ev.get("event_type") == "user_message" and first_user_s is None:
                    first_user_s = at_s
            if not times:
                raise TraceError(source, line, "timing_events", "is empty: the round has no time")
            tools = obj.get("tools") or []
            if not isinstance(tools, list):
                raise TraceError(source, line, "tools", "must be a list")
            tool_ms = 0.0
            for j, tool in enumerate(tools):
                value = tool.get("tool_wall_latency_ms") if isinstance(tool, dict) else None
                if value is None:
                    continue  # a tool without a measured latency adds nothing
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise TraceError(
                        source, line, f"tools[{j}].tool_wall_latency_ms", f"must be >= 0 ms, got {value!r}"
                    )
                tool_ms += float(value)
            rec = {
                "line": line, "round": rnd, "in": inp, "out": out, "start_s": min(times),
                "last_s": max(times), "user_s": first_user_s, "tool_s": tool_ms / 1000.0,
            }  # fmt: skip
            rounds.setdefault(str(sid), []).append(rec)
    if not rounds:
        raise TraceError(source, None, None, "the trace has no requests")
    origin_s = min(r["start_s"] for recs in rounds.values() for r in recs)
    names = list(rounds)
    if session_arrival == "recorded":
        starts_s = np.asarray([min(r["start_s"] for r in rounds[n]) - origin_s for n in names])
    else:
        starts_s = _session_starts(len(names), session_arrival, sessions_per_s, seed)
    builder = TraceBuilder(source, hash_block_tokens or 64)
    for name, start_s in zip(names, starts_s, strict=True):
        recs = sorted(rounds[name], key=lambda r: r["round"])
        for a, b in zip(recs, recs[1:], strict=False):
            if a["round"] == b["round"]:
                raise TraceError(
                    source, b["line"], "round_index", f"round {b['round']} of '{name}' repeats line {a['line']}"
                )
        session_origin_s = recs[0]["start_s"]
        prev = None
        for rec in recs:
            rid = f"{name}#{rec['round']}"
            waits: list[str] = []
            tool_wait_s = 0.0
            if prev is not None:
                waits = [f"{name}#{prev['round']}"]
                tool_wait_s = prev["tool_s"]
                if rec["user_s"] is not None:
                    tool_wait_s += max(0.0, rec["user_s"] - prev["last_s"])
            builder.add(
                line=rec["line"],
                timestamp_s=float(start_s) + rec["start_s"] - session_origin_s,
                input_tokens=rec["in"],
                output_tokens=rec["out"],
                request_id=rid,
                session_id=name,
                wait_for=waits,
                tool_wait_s=tool_wait_s,
            )
            prev = rec
    trace = builder.build()
    notes = [f"{len(names)} sessions, {len(trace)} rounds; " + _arrival_note(session_arrival, sessions_per_s, seed)]
    return ImportResult(
        trace, "tracelab", tuple(notes), tuple(_notes_for(zero, "rounds")),
        zero.skipped, zero.adjusted, len(names),
    )  # fmt: skip
