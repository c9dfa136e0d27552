"""Request traces: the native JSONL format, validated at the boundary, held as columns inside.

The native format is JSONL in the shape of the public Mooncake traces, one request per line::

    {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2]}

Fields (``timestamp`` in milliseconds from the trace start; lengths in tokens):

``timestamp``      arrival time of an open-loop request, ms (required).
``input_length``   prompt tokens, >= 1 (required).
``output_length``  generated tokens, >= 1 (required).
``hash_ids``       prefix-cache block hashes, one per block of ``hash_block_tokens`` tokens
                   (512 for Mooncake, the default); equal ids mean reusable KV blocks.
``request_id``     string or integer id (default: the 1-based line number).
``session_id``     the agent session or conversation the request belongs to.
``tenant``         the tenant (customer, application) the request is served for: its
                   priority, quotas and SLO come from the run's ``tenants`` settings.
``wait_for``       ids of *earlier* requests this one waits for (closed loop).
``tool_wait_ms``   tool or think time after all of ``wait_for`` completed, ms (default 0).

A request with ``wait_for`` is closed-loop: it arrives when every request it waits for has
completed, plus ``tool_wait_ms``, in simulated time; its ``timestamp`` is then only the
recorded time and is ignored. An optional first line ``{"format": "simdisagg-trace", ...}``
may set ``hash_block_tokens`` and note the trace's origin.

Each line is validated with pydantic; inside the simulator a :class:`Trace` is plain numpy
columns plus CSR arrays for the variable-length lists, so a million requests stay compact.
"""

from __future__ import annotations

import codecs
import difflib
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
)

from simdisagg.errors import ConfigError, TraceError
from simdisagg.inputs import (
    DuplicateKey,
    is_regular_file,
    no_duplicate_keys,
    read_bytes,
    refuse_constant,
    strip_utf8_bom,
)
from simdisagg.prefixtree import (
    PrefixTree,
    PrefixTreeBuilder,
    build_prefix_tree,
    hash_lists,
    path_hashes,
)

DEFAULT_HASH_BLOCK_TOKENS = 512  # Mooncake's block size


#: Limits of a sane request line: a value past them is garbage or a unit mistake.
MAX_TOKENS = 100_000_000  # prompt or answer tokens of one request (no model serves 10**8)
MAX_TIME_MS = 1e13  # about 317 years in ms: admits epoch milliseconds, rules out garbage
MAX_HASH_BLOCK_TOKENS = 1 << 20
#: The native format's name and the newest version this code reads.
FORMAT_NAME = "simdisagg-trace"
FORMAT_VERSION = 1

_Id = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)] | Annotated[str, Field(strict=True)]
_HashId = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]


class TraceLine(BaseModel):
    """Schema of one JSONL request line (the boundary check of the per-line path).

    Unknown fields are refused (a misspelled ``wait_for`` must not make a request open-loop)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    timestamp: float = Field(ge=0, le=MAX_TIME_MS, allow_inf_nan=False)
    input_length: StrictInt = Field(ge=1, le=MAX_TOKENS)
    output_length: StrictInt = Field(ge=1, le=MAX_TOKENS)
    hash_ids: list[_HashId] | None = None
    request_id: _Id | None = None
    session_id: _Id | None = None
    tenant: _Id | None = None
    wait_for: list[_Id] | None = None
    tool_wait_ms: float = Field(default=0.0, ge=0, le=MAX_TIME_MS, allow_inf_nan=False)

    @field_validator("timestamp", "tool_wait_ms", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number of milliseconds")
        return value


#: The fields a request line may have, in the order :func:`write_jsonl` writes them.
FIELDS: tuple[str, ...] = tuple(TraceLine.model_fields)


class TraceHeader(BaseModel):
    """Optional first line of a native trace: format marker and trace-wide settings (other keys,
    such as ``generator`` or ``converted_from``, note where the trace came from)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    format: str
    version: int = Field(default=1, strict=True)
    hash_block_tokens: int = Field(default=DEFAULT_HASH_BLOCK_TOKENS, strict=True, ge=1, le=MAX_HASH_BLOCK_TOKENS)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value != FORMAT_NAME:
            raise ValueError(f"'{value}' is not a trace format simdisagg reads (expected '{FORMAT_NAME}')")
        return value

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if not 1 <= value <= FORMAT_VERSION:
            raise ValueError(
                f"version {value} is not one this simdisagg reads (it reads versions 1 to {FORMAT_VERSION}; "
                "a newer file needs a newer simdisagg)"
            )
        return value


@dataclass(slots=True, eq=False)
class Trace:
    """A request trace as columns. Index ``i`` is the request's position in the file.

    Variable-length lists (``hash_ids``, ``wait_for``) are CSR arrays: the entries of request
    ``i`` are ``values[offsets[i]:offsets[i+1]]``. ``wait_for`` entries are request indices.
    """

    source: str
    request_ids: list[str]
    timestamp_s: np.ndarray  # float64, recorded arrival (open-loop requests)
    input_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    session_index: np.ndarray  # int64, -1 when the request has no session
    session_names: list[str]
    tool_wait_s: np.ndarray  # float64
    wait_offsets: np.ndarray  # int64, len n+1
    wait_indices: np.ndarray  # int64
    _hash_offsets: np.ndarray | None  # int64, len n+1; None while only the tree is held
    _hash_values: np.ndarray | None  # int64
    hash_block_tokens: int = DEFAULT_HASH_BLOCK_TOKENS
    line_numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _prefix_tree: PrefixTree | None = field(default=None, repr=False)
    #: int64 per request, -1 when the request names no tenant; empty when no request does.
    tenant_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    tenant_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.request_ids)

    def __repr__(self) -> str:
        n = len(self)
        sessions = len(self.session_names)
        closed = int(self.closed_loop.sum()) if n else 0
        hashes = f"{self.hash_block_tokens}-token hash blocks" if self.has_hashes else "no prefix hashes"
        tenants = f"{len(self.tenant_names):,} tenants, " if self.has_tenants else ""
        return (
            f"Trace({self.source!r}: {n:,} requests, {sessions:,} sessions, {tenants}{closed:,} closed-loop, "
            f"{int(self.input_tokens.sum()):,} input / {int(self.output_tokens.sum()):,} output tokens, {hashes})"
        )

    @property
    def has_tenants(self) -> bool:
        """Whether any request names a tenant."""
        return len(self.tenant_index) == len(self) and bool(self.tenant_names)

    def tenant_of(self, i: int) -> str | None:
        """The tenant request ``i`` names (``None``: none)."""
        if not self.has_tenants or self.tenant_index[i] < 0:
            return None
        return self.tenant_names[int(self.tenant_index[i])]

    @property
    def closed_loop(self) -> np.ndarray:
        """Boolean mask of requests that wait for others."""
        return np.diff(self.wait_offsets) > 0

    @classmethod
    def from_prefix_tree(cls, tree: PrefixTree, **columns: Any) -> Trace:
        """A trace whose hashes are held only as a :class:`PrefixTree` (as the agentic
        generator makes them): its hash lists are made on demand, never all at once unless
        :attr:`hash_values` is asked for."""
        return cls(_hash_offsets=None, _hash_values=None, _prefix_tree=tree, **columns)

    @property
    def hash_offsets(self) -> np.ndarray:
        """CSR offsets of the hash lists (``len(trace) + 1``)."""
        if self._hash_offsets is None:
            self._materialize_hashes()
        assert self._hash_offsets is not None
        return self._hash_offsets

    @property
    def hash_values(self) -> np.ndarray:
        """All hash lists, concatenated (see :attr:`hash_offsets`)."""
        if self._hash_values is None:
            self._materialize_hashes()
        assert self._hash_values is not None
        return self._hash_values

    def _materialize_hashes(self) -> None:
        assert self._prefix_tree is not None
        self._hash_offsets, self._hash_values = hash_lists(self._prefix_tree)

    @property
    def prefix_tree_only(self) -> bool:
        """Whether the hashes are held only as a tree (no hash lists made yet)."""
        return self._hash_values is None

    def set_hash_values(self, values: np.ndarray) -> None:
        """Replace the hash ids (same lengths), e.g. to renumber them."""
        self._hash_values = values
        self._prefix_tree = None

    @property
    def has_hashes(self) -> bool:
        """Whether any request carries prefix-block hashes."""
        if self._hash_values is None:
            return bool((self.prefix_tree().request_segment >= 0).any())
        return len(self._hash_values) > 0

    def hashes_of(self, i: int) -> np.ndarray:
        """Prefix-block hashes of request ``i`` (may be empty)."""
        if self._hash_values is None:
            return path_hashes(self.prefix_tree(), i)
        assert self._hash_offsets is not None
        return self._hash_values[self._hash_offsets[i] : self._hash_offsets[i + 1]]

    def prefix_tree(self) -> PrefixTree:
        """The hash lists as a radix tree of block runs (built once, then kept)."""
        if self._prefix_tree is None:
            self._prefix_tree = build_prefix_tree(self.hash_offsets, self.hash_values)
        return self._prefix_tree

    def waits_of(self, i: int) -> np.ndarray:
        """Indices of the requests request ``i`` waits for."""
        return self.wait_indices[self.wait_offsets[i] : self.wait_offsets[i + 1]]

    def subset(self, indices: Sequence[int] | np.ndarray) -> Trace:
        """A new trace with only the given requests (waits on dropped requests are removed)."""
        idx = np.asarray(indices, dtype=np.int64)
        remap = np.full(len(self), -1, dtype=np.int64)
        remap[idx] = np.arange(len(idx))
        wait_lists = []
        for i in idx:
            mapped = remap[self.waits_of(int(i))]
            wait_lists.append(mapped[mapped >= 0])
        if self._hash_values is None:
            # Tree-held hashes: the subset shares the tree (unused segments cost nothing).
            tree = self.prefix_tree()
            hashes: dict[str, Any] = {
                "_hash_offsets": None,
                "_hash_values": None,
                "_prefix_tree": PrefixTree(tree.parent, tree.start_block, tree.blocks, tree.key_base,
                                           tree.request_segment[idx]),
            }
        else:
            lists = [self.hashes_of(int(i)) for i in idx]
            hashes = {"_hash_offsets": _offsets(lists), "_hash_values": _concat(lists)}
        return Trace(
            source=self.source,
            request_ids=[self.request_ids[int(i)] for i in idx],
            timestamp_s=self.timestamp_s[idx].copy(),
            input_tokens=self.input_tokens[idx].copy(),
            output_tokens=self.output_tokens[idx].copy(),
            session_index=self.session_index[idx].copy(),
            session_names=self.session_names,
            tool_wait_s=self.tool_wait_s[idx].copy(),
            wait_offsets=_offsets(wait_lists),
            wait_indices=_concat(wait_lists),
            hash_block_tokens=self.hash_block_tokens,
            line_numbers=self.line_numbers[idx].copy() if len(self.line_numbers) else self.line_numbers,
            tenant_index=self.tenant_index[idx].copy() if self.has_tenants else np.zeros(0, dtype=np.int64),
            tenant_names=self.tenant_names if self.has_tenants else [],
            **hashes,
        )


def _offsets(lists: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
    out = np.zeros(len(lists) + 1, dtype=np.int64)
    if lists:
        np.cumsum([len(x) for x in lists], out=out[1:])
    return out


def _concat(lists: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
    if not lists:
        return np.zeros(0, dtype=np.int64)
    flat = [x for x in lists if len(x)]
    return np.concatenate([np.asarray(x, dtype=np.int64) for x in flat]) if flat else np.zeros(0, dtype=np.int64)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _first_error(exc: ValidationError) -> tuple[str, str]:
    """The first validation error of a line as ``(field, message)``, in the user's words."""
    err = exc.errors()[0]
    loc = list(err["loc"])
    name = str(loc[0]) if loc else "?"
    # List positions are kept (hash_ids[3]); the names of union members pydantic adds are not.
    name += "".join(f"[{p}]" for p in loc[1:] if isinstance(p, int))
    msg = err["msg"].removeprefix("Value error, ")
    kind = err["type"]
    if kind == "missing":
        msg = "is missing"
    elif kind == "extra_forbidden":
        close = difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        msg = f"is not a field of a trace line{hint}; the fields are {', '.join(FIELDS)}"
    elif loc == ["wait_for"] and kind.endswith("_type"):
        msg = f"must be a list of request ids, got {_brief(err.get('input'))}"
    elif loc and loc[0] in ("request_id", "session_id", "tenant", "wait_for") and kind.endswith("_type"):
        msg = f"must be a string or an integer, got {_brief(err.get('input'))}"
    elif kind.endswith("_type") and "input" in err:
        msg = f"{msg}, got {_brief(err['input'])}"
    return name, msg


def hash_count_problem(n_hashes: int, input_tokens: int, block_tokens: int) -> str | None:
    """Why ``n_hashes`` block hashes cannot describe an ``input_tokens`` prompt (``None`` if
    they can): one hash per block of ``block_tokens``, the last partial block hashed or not."""
    if n_hashes == 0:
        return None
    low, high = input_tokens // block_tokens, -(-input_tokens // block_tokens)
    if low <= n_hashes <= high:
        return None
    expected = f"{low}" if low == high else f"{low} or {high}"
    return (
        f"has {n_hashes} block hashes, but a {input_tokens}-token prompt in {block_tokens}-token blocks "
        f"has {expected}; is hash_block_tokens ({block_tokens}) right?"
    )


def check_hash_counts(trace: Trace) -> None:
    """Refuse a trace whose hash lists do not fit their prompts (see :func:`hash_count_problem`)."""
    n_hashes = np.diff(trace.hash_offsets)
    block = trace.hash_block_tokens
    low, high = trace.input_tokens // block, -(-trace.input_tokens // block)
    bad = np.flatnonzero((n_hashes > 0) & ((n_hashes < low) | (n_hashes > high)))
    if len(bad):
        i = int(bad[0])
        line = int(trace.line_numbers[i]) if len(trace.line_numbers) else None
        problem = hash_count_problem(int(n_hashes[i]), int(trace.input_tokens[i]), block)
        raise TraceError(trace.source, line, "hash_ids", problem or "does not fit the prompt")


@dataclass(slots=True)
class _Columns:
    """Requests read from a trace file, before the cross-line checks of :func:`_finish`.

    ``ids``/``sessions`` hold ``None`` for a request without one (``ids=None``: no request has
    one); ``waits`` maps a request's position to the ids it waits for."""

    lines: np.ndarray
    ts_ms: np.ndarray
    inp: np.ndarray
    out: np.ndarray
    tool_ms: np.ndarray
    hash_offsets: np.ndarray
    hash_values: np.ndarray
    ids: list[str | None] | None = None
    sessions: list[str | None] | None = None
    waits: dict[int, list[str]] = field(default_factory=dict)
    tenants: list[str | None] | None = None


def _parse_line(raw: bytes, source: str, lineno: int) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TraceError(
            source, lineno, None, f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not UTF-8 text"
        ) from None
    # Without its line terminator, an error at the end of the line is at a column of the line
    # (with it, JSON reports line 2, column 1).
    text = text.rstrip("\r\n")
    try:
        obj = json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=refuse_constant)
    except DuplicateKey as exc:
        raise TraceError(source, lineno, exc.key, "appears twice on the line") from None
    except json.JSONDecodeError as exc:
        raise TraceError(source, lineno, None, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise TraceError(source, lineno, None, "nested too deeply to be a request") from None
    except ValueError as exc:  # NaN/Infinity, or an integer of thousands of digits
        raise TraceError(source, lineno, None, f"not valid JSON ({str(exc).split(':')[0]})") from None
    if not isinstance(obj, dict):
        raise TraceError(source, lineno, None, f"a request line must be a JSON object, not {type(obj).__name__}")
    return obj


def _header(obj: dict[str, Any], source: str, lineno: int) -> TraceHeader:
    try:
        return TraceHeader.model_validate(obj)
    except ValidationError as exc:
        name, msg = _first_error(exc)
        raise TraceError(source, lineno, name, msg) from None


def _read_checked(handle: Any, source: str, block_override: int | None) -> tuple[_Columns, int]:
    """Every line checked on its own (JSON, schema, duplicate keys, hash counts): the path that
    names the first bad line. Returns the columns and the hash block size."""
    block = block_override or DEFAULT_HASH_BLOCK_TOKENS
    seen_request = False
    lines: list[int] = []
    ts: list[float] = []
    inp: list[int] = []
    out: list[int] = []
    tool: list[float] = []
    hashes: list[Sequence[int] | np.ndarray] = []
    ids: list[str | None] = []
    sessions: list[str | None] = []
    tenants: list[str | None] = []
    waits: dict[int, list[str]] = {}
    validate = TraceLine.model_validate
    first_line = True
    for lineno, raw in enumerate(handle, start=1):
        if lineno == 1:
            raw = strip_utf8_bom(raw, source)
        if not raw.strip():
            continue
        obj = _parse_line(raw, source, lineno)
        if "format" in obj:
            if not first_line:
                raise TraceError(source, lineno, "format", "a header line may only be the first line of a trace")
            header = _header(obj, source, lineno)
            block = block_override or header.hash_block_tokens
            first_line = False
            continue
        first_line = False
        try:
            req = validate(obj)
        except ValidationError as exc:
            name, msg = _first_error(exc)
            raise TraceError(source, lineno, name, msg) from None
        if req.hash_ids:
            problem = hash_count_problem(len(req.hash_ids), req.input_length, block)
            if problem:
                raise TraceError(source, lineno, "hash_ids", problem)
        if req.wait_for:
            waits[len(lines)] = [str(w) for w in req.wait_for]
        lines.append(lineno)
        ts.append(req.timestamp)
        inp.append(req.input_length)
        out.append(req.output_length)
        tool.append(req.tool_wait_ms)
        # As int64 arrays, not lists of Python ints: a million lines of hash lists stay small.
        hashes.append(np.asarray(req.hash_ids, dtype=np.int64) if req.hash_ids else ())
        ids.append(None if req.request_id is None else str(req.request_id))
        sessions.append(None if req.session_id is None else str(req.session_id))
        tenants.append(None if req.tenant is None else str(req.tenant))
        seen_request = True
    if not seen_request:
        raise TraceError(source, None, None, "the trace has no requests")
    columns = _Columns(
        lines=np.asarray(lines, dtype=np.int64),
        ts_ms=np.asarray(ts, dtype=np.float64),
        inp=np.asarray(inp, dtype=np.int64),
        out=np.asarray(out, dtype=np.int64),
        tool_ms=np.asarray(tool, dtype=np.float64),
        hash_offsets=_offsets(hashes),
        hash_values=_concat(hashes),
        ids=ids if any(i is not None for i in ids) else None,
        sessions=sessions if any(s is not None for s in sessions) else None,
        waits=waits,
        tenants=tenants if any(t is not None for t in tenants) else None,
    )
    return columns, block


# The columnar path reads lines in the forms this module writes and the public Mooncake traces
# use (keys in this order, ", " or "," and ": " or ":" separators, strings without escapes)
# with one regular expression per chunk, numbers in bulk and hash lists with one numpy call. A
# line in any other form, or any value the checks below do not pass, sends the whole file to
# _read_checked, which names the line; a file the columnar path reads, _read_checked reads to
# the same trace.
_STR = rb'"[^"\\\x00-\x1f]*"'
_INT = rb"(?:0|[1-9][0-9]{0,17})"
_NUM = rb"(?:0|[1-9][0-9]{0,15})(?:\.[0-9]{1,17})?(?:[eE][-+]?[0-9]{1,2})?"
_COLUMNAR_LINE = re.compile(
    rb'^\{(?:"request_id": ?(' + _STR + rb"), ?)?"
    rb'"timestamp": ?(' + _NUM + rb'), ?"input_length": ?(' + _INT + rb'), ?"output_length": ?(' + _INT + rb")"
    rb'(?:, ?"session_id": ?(' + _STR + rb"))?"
    rb'(?:, ?"tenant": ?(' + _STR + rb"))?"
    rb'(?:, ?"wait_for": ?\[((?:' + _STR + rb"(?:, ?" + _STR + rb')*)?)\], ?"tool_wait_ms": ?(' + _NUM + rb"))?"
    rb'(?:, ?"hash_ids": ?\[([^\]]*)\])?'
    rb"\}\r?$",
    re.MULTILINE,
)
# The public Mooncake traces' form alone (no ids, sessions or waits): a shorter pattern with
# fewer groups, tried first.
_MOONCAKE_LINE = re.compile(
    rb'^\{"timestamp": ?(' + _NUM + rb'), ?"input_length": ?(' + _INT + rb'), ?"output_length": ?(' + _INT + rb")"
    rb'(?:, ?"hash_ids": ?\[([^\]]*)\])?\}\r?$',
    re.MULTILINE,
)
#: Where each column sits in a match of each pattern (``None``: the pattern has no such field).
#: Strings are captured with their quotes, so that an empty string is told from an absent key.
_GROUPS_ALL: dict[str, int | None] = {
    "rid": 0, "ts": 1, "inp": 2, "out": 3, "sess": 4, "tenant": 5, "wait": 6, "tool": 7, "hash": 8,
}  # fmt: skip
_GROUPS_MOONCAKE: dict[str, int | None] = {
    "rid": None, "ts": 0, "inp": 1, "out": 2, "sess": None, "tenant": None, "wait": None, "tool": None, "hash": 3,
}  # fmt: skip
_WAIT_SEPARATOR = re.compile(rb'", ?"')
_POWERS_OF_10 = 10 ** np.arange(1, 19, dtype=np.int64)
_CHUNK_BYTES = 32 << 20


def _digits(values: np.ndarray) -> int:
    """Decimal digits needed to write every (non-negative) value, summed."""
    return int((np.searchsorted(_POWERS_OF_10, values, side="right") + 1).sum())


def _strings(quoted: Sequence[bytes]) -> list[str | None]:
    """Quoted JSON strings without escapes (``b'"s1"'``) as text; ``b""`` (absent) as ``None``."""
    return [q[1:-1].decode("utf-8") if q else None for q in quoted]


def _columnar_chunk(buf: bytearray | bytes, start: int, end: int, first_line: int, block: int) -> _Columns | None:
    """The requests of ``buf[start:end]`` (whole lines, the first numbered ``first_line``), or
    ``None`` when a line is not in the columnar form or a value fails a check. The patterns
    read the buffer in place (no copy of the chunk)."""
    lines = buf.count(b"\n", start, end) + (0 if buf.endswith(b"\n", start, end) else 1)
    groups = _GROUPS_MOONCAKE
    # A failed pass costs a full scan, so the short pattern is tried only when it can match.
    matches = _MOONCAKE_LINE.findall(buf, start, end) if buf.startswith(b'{"timestamp":', start, end) else []
    if len(matches) != lines:
        groups = _GROUPS_ALL
        matches = _COLUMNAR_LINE.findall(buf, start, end)
    n = len(matches)
    if n == 0 or n != lines:
        return None  # some line has another form (or is blank)

    def column(name: str) -> list[bytes] | None:
        """A field's text on every line; ``None`` when no line has the field."""
        k = groups[name]
        if k is None or not any(map(itemgetter(k), matches)):
            return None
        return list(map(itemgetter(k), matches))

    hash_seg = column("hash") or [b""] * n
    rid_seg, sess_seg, tool_seg, tenant_seg = column("rid"), column("sess"), column("tool"), column("tenant")
    ts_at, inp_at, out_at = itemgetter(groups["ts"]), itemgetter(groups["inp"]), itemgetter(groups["out"])
    try:
        joined = b",".join(map(ts_at, matches))
        if b"." in joined or b"e" in joined or b"E" in joined:
            ts_ms = np.fromiter(map(float, map(ts_at, matches)), dtype=np.float64, count=n)
        else:  # whole milliseconds (below 2**53, so exact as floats): one numpy call
            ts_ms = np.fromstring(joined, dtype=np.int64, sep=",").astype(np.float64)
        # Token counts are at most 18 digits (the pattern), so int64 reads them exactly.
        inp = np.fromstring(b",".join(map(inp_at, matches)), dtype=np.int64, sep=",")
        out = np.fromstring(b",".join(map(out_at, matches)), dtype=np.int64, sep=",")
        ids = _strings(rid_seg) if rid_seg else None
        sessions = _strings(sess_seg) if sess_seg else None
        tenants = _strings(tenant_seg) if tenant_seg else None
    except (ValueError, OverflowError, UnicodeDecodeError):
        return None
    if not (np.all(ts_ms <= MAX_TIME_MS) and np.all((inp >= 1) & (inp <= MAX_TOKENS))
            and np.all((out >= 1) & (out <= MAX_TOKENS))):  # fmt: skip
        return None
    tool_ms = np.zeros(n)
    waits: dict[int, list[str]] = {}
    if tool_seg:  # a line with wait_for has tool_wait_ms after it (the written form)
        wait_at = itemgetter(groups["wait"])
        for i, tool in enumerate(tool_seg):
            if not tool:
                continue
            body = wait_at(matches[i])
            try:
                tool_ms[i] = float(tool)
                if body:
                    waits[i] = [w.decode("utf-8") for w in _WAIT_SEPARATOR.split(body[1:-1])]
            except (ValueError, UnicodeDecodeError):
                return None
        if not np.all(tool_ms <= MAX_TIME_MS):
            return None
    # The hash group is the body of the list: absent and empty both mean no hashes.
    if all(hash_seg):  # the common case, told without a pass in Python
        has_hashes = np.ones(n, dtype=bool)
    else:
        has_hashes = np.fromiter(map(len, hash_seg), dtype=np.int64, count=n) > 0
    counts = np.zeros(n, dtype=np.int64)
    values = np.zeros(0, dtype=np.int64)
    if has_hashes.any():
        if has_hashes.all():
            bodies = hash_seg
        else:
            bodies = [hash_seg[i] for i in np.flatnonzero(has_hashes).tolist()]
        counts[has_hashes] = np.fromiter(map(bytes.count, bodies, repeat(b",")), dtype=np.int64,
                                         count=len(bodies)) + 1  # fmt: skip
        body = b", ".join(bodies)
        if body.translate(None, b"0123456789, "):
            return None  # a sign, a decimal point, a line break: read line by line
        try:
            values = np.fromstring(body, dtype=np.int64, sep=",")
        except ValueError:
            return None  # an empty item, a stray space between digits
        commas = body.count(b",")
        # Every item read (no trailing comma), and exactly as many digits as the values need:
        # no leading zeros, and no number too large for 64 bits (numpy would saturate it).
        if len(values) != commas + 1 or len(body) - commas - body.count(b" ") != _digits(values):
            return None
        low, high = inp // block, -(-inp // block)
        if np.any(has_hashes & ((counts < low) | (counts > high))):
            return None
    return _Columns(
        lines=np.arange(first_line, first_line + n, dtype=np.int64),
        ts_ms=ts_ms,
        inp=inp,
        out=out,
        tool_ms=tool_ms,
        hash_offsets=np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
        hash_values=values,
        ids=ids,
        sessions=sessions,
        waits=waits,
        tenants=tenants,
    )


def _join(parts: list[_Columns]) -> _Columns:
    if len(parts) == 1:
        return parts[0]
    shift = np.cumsum([0] + [len(p.lines) for p in parts[:-1]])
    hash_shift = np.cumsum([0] + [int(p.hash_offsets[-1]) for p in parts[:-1]])
    any_ids = any(p.ids is not None for p in parts)
    any_sessions = any(p.sessions is not None for p in parts)
    any_tenants = any(p.tenants is not None for p in parts)
    return _Columns(
        lines=np.concatenate([p.lines for p in parts]),
        ts_ms=np.concatenate([p.ts_ms for p in parts]),
        inp=np.concatenate([p.inp for p in parts]),
        out=np.concatenate([p.out for p in parts]),
        tool_ms=np.concatenate([p.tool_ms for p in parts]),
        hash_offsets=np.concatenate(
            [parts[0].hash_offsets[:1]] + [p.hash_offsets[1:] + s for p, s in zip(parts, hash_shift, strict=True)]
        ),
        hash_values=np.concatenate([p.hash_values for p in parts]),
        ids=[x for p in parts for x in (p.ids or [None] * len(p.lines))] if any_ids else None,
        sessions=[x for p in parts for x in (p.sessions or [None] * len(p.lines))] if any_sessions else None,
        waits={i + int(s): w for p, s in zip(parts, shift, strict=True) for i, w in p.waits.items()},
        tenants=[x for p in parts for x in (p.tenants or [None] * len(p.lines))] if any_tenants else None,
    )


def _read_columnar(buf: bytearray | bytes, source: str, block_override: int | None) -> tuple[_Columns, int] | None:
    """The whole file, read into ``buf``, by the columnar path, chunk by chunk, or ``None`` if
    any chunk fails."""
    size = len(buf)
    strip_utf8_bom(bytes(buf[:4]), source)  # a UTF-16/32 or compressed file is refused here
    pos = 3 if bytes(buf[:3]) == codecs.BOM_UTF8 else 0
    line = 1
    while pos < size:  # leading blank lines
        end = buf.find(b"\n", pos)
        if end < 0 or bytes(buf[pos:end]).strip():
            break
        pos, line = end + 1, line + 1
    block = block_override or DEFAULT_HASH_BLOCK_TOKENS
    if bytes(buf[pos : pos + 9]) == b'{"format"':
        end = buf.find(b"\n", pos)
        if end < 0:
            return None
        try:
            obj = json.loads(bytes(buf[pos:end]), object_pairs_hook=no_duplicate_keys, parse_constant=refuse_constant)
            header = TraceHeader.model_validate(obj)
        except (ValueError, ValidationError, RecursionError):
            return None
        block = block_override or header.hash_block_tokens
        pos, line = end + 1, line + 1
    parts: list[_Columns] = []
    while pos < size:
        end = min(pos + _CHUNK_BYTES, size)
        if end < size:
            cut = buf.rfind(b"\n", pos, end)
            if cut < 0:  # one line longer than a chunk
                cut = buf.find(b"\n", end)
            end = size if cut < 0 else cut + 1
        part = _columnar_chunk(buf, pos, end, line, block)
        if part is None:
            return None
        parts.append(part)
        line += len(part.lines)
        pos = end
    if not parts:
        return None
    return _join(parts), block


def _finish(source: str, block: int, c: _Columns) -> Trace:
    """The cross-line checks (unique ids, waits on earlier requests) and the columnar trace."""
    n = len(c.lines)
    line_list = c.lines.tolist()
    if c.ids is None:
        ids = list(map(str, line_list))
    else:
        ids = [str(x) if rid is None else rid for rid, x in zip(c.ids, line_list, strict=True)]
    index_of: dict[str, int] = {}
    if c.ids is not None or c.waits:
        index_of = dict(zip(ids, range(n), strict=True))
        if len(index_of) != n:
            first: dict[str, int] = {}
            for i, rid in enumerate(ids):
                if rid in first:
                    raise TraceError(source, line_list[i], "request_id",
                                     f"duplicate id '{rid}' (also line {line_list[first[rid]]})")  # fmt: skip
                first[rid] = i
    counts = np.zeros(n, dtype=np.int64)
    wait_lists: list[list[int]] = []
    for i in sorted(c.waits):
        targets = []
        for wid in c.waits[i]:
            j = index_of.get(wid)
            if j == i:
                raise TraceError(source, line_list[i], "wait_for", f"request '{ids[i]}' waits for itself (a cycle)")
            if j is None or j > i:
                raise TraceError(
                    source, line_list[i], "wait_for",
                    f"names '{wid}', which is not an earlier request (unknown, later, or a cycle)",
                )  # fmt: skip
            targets.append(j)
        counts[i] = len(targets)
        wait_lists.append(targets)
    wait_offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    wait_indices = np.asarray([j for t in wait_lists for j in t], dtype=np.int64)
    session_index, session_names = _name_index(c.sessions, n)
    tenant_index, tenant_names = _name_index(c.tenants, n)
    if not tenant_names:
        tenant_index = np.zeros(0, dtype=np.int64)
    return Trace(
        source=source,
        request_ids=ids,
        timestamp_s=c.ts_ms / 1000.0,
        input_tokens=c.inp,
        output_tokens=c.out,
        session_index=session_index,
        session_names=session_names,
        tool_wait_s=c.tool_ms / 1000.0,
        wait_offsets=wait_offsets,
        wait_indices=wait_indices,
        _hash_offsets=c.hash_offsets,
        _hash_values=c.hash_values,
        hash_block_tokens=block,
        line_numbers=c.lines,
        tenant_index=tenant_index,
        tenant_names=tenant_names,
    )


def _name_index(names: list[str | None] | None, n: int) -> tuple[np.ndarray, list[str]]:
    """Names per request (``None``: none) as indices into the names in order of first
    appearance, -1 for none."""
    if names is None:
        return np.full(n, -1, dtype=np.int64), []
    order: dict[str, int] = {}
    index = np.fromiter((-1 if s is None else order.setdefault(s, len(order)) for s in names), dtype=np.int64, count=n)
    return index, list(order)


class TraceBuilder:
    """Accumulates validated requests and checks cross-line rules (ids, ``wait_for``).

    Importers feed it one request at a time with the location to blame in errors.
    """

    def __init__(
        self, source: str, hash_block_tokens: int = DEFAULT_HASH_BLOCK_TOKENS, tree: PrefixTreeBuilder | None = None
    ) -> None:
        self.source = source
        self.hash_block_tokens = hash_block_tokens
        self.tree = tree  # when given, requests name their prefix as a tree segment
        self._segments: list[int] = []
        self._ids: list[str] = []
        self._index_of: dict[str, int] = {}
        self._ts: list[float] = []
        self._inp: list[int] = []
        self._out: list[int] = []
        self._sess: list[int] = []
        self._sess_names: list[str] = []
        self._sess_index: dict[str, int] = {}
        self._tenants: list[str | None] = []
        self._tool: list[float] = []
        self._waits: list[list[int]] = []
        self._hashes: list[Sequence[int]] = []
        self._lines: list[int] = []

    def add(
        self,
        *,
        line: int,
        timestamp_s: float,
        input_tokens: int,
        output_tokens: int,
        request_id: str | None = None,
        session_id: str | None = None,
        wait_for: Iterable[str] = (),
        tool_wait_s: float = 0.0,
        hash_ids: Sequence[int] | None = None,
        prefix_segment: int = -1,
        tenant: str | None = None,
    ) -> int:
        """Add one request; returns its index. Raises :class:`TraceError` naming the line.

        With a tree builder, the request's hashes are the path to ``prefix_segment`` (-1: none)
        and ``hash_ids`` must not be given."""
        if self.tree is not None and hash_ids is not None:
            raise ValueError("a tree-built trace takes prefix_segment, not hash_ids")
        rid = str(line) if request_id is None else str(request_id)
        if rid in self._index_of:
            raise TraceError(self.source, line, "request_id", f"duplicate id '{rid}'")
        waits: list[int] = []
        for wid in wait_for:
            key = str(wid)
            if key == rid:
                raise TraceError(self.source, line, "wait_for", f"request '{rid}' waits for itself (a cycle)")
            j = self._index_of.get(key)
            if j is None:
                raise TraceError(
                    self.source,
                    line,
                    "wait_for",
                    f"names '{key}', which is not an earlier request (unknown, later, or a cycle)",
                )
            waits.append(j)
        index = len(self._ids)
        self._index_of[rid] = index
        self._ids.append(rid)
        self._ts.append(float(timestamp_s))
        self._inp.append(int(input_tokens))
        self._out.append(int(output_tokens))
        if session_id is None:
            self._sess.append(-1)
        else:
            key = str(session_id)
            s = self._sess_index.get(key)
            if s is None:
                s = self._sess_index[key] = len(self._sess_names)
                self._sess_names.append(key)
            self._sess.append(s)
        self._tool.append(float(tool_wait_s))
        self._tenants.append(None if tenant is None else str(tenant))
        self._waits.append(waits)
        if self.tree is None:
            self._hashes.append(hash_ids if hash_ids is not None else ())
        else:
            self._segments.append(prefix_segment)
        self._lines.append(line)
        return index

    def build(self) -> Trace:
        """Freeze the accumulated requests into a columnar :class:`Trace`."""
        if not self._ids:
            raise TraceError(self.source, None, None, "the trace has no requests")
        columns: dict[str, Any] = {
            "source": self.source,
            "request_ids": self._ids,
            "timestamp_s": np.asarray(self._ts, dtype=np.float64),
            "input_tokens": np.asarray(self._inp, dtype=np.int64),
            "output_tokens": np.asarray(self._out, dtype=np.int64),
            "session_index": np.asarray(self._sess, dtype=np.int64),
            "session_names": self._sess_names,
            "tool_wait_s": np.asarray(self._tool, dtype=np.float64),
            "wait_offsets": _offsets(self._waits),
            "wait_indices": _concat(self._waits),
            "hash_block_tokens": self.hash_block_tokens,
            "line_numbers": np.asarray(self._lines, dtype=np.int64),
        }
        if any(t is not None for t in self._tenants):
            columns["tenant_index"], columns["tenant_names"] = _name_index(self._tenants, len(self._ids))
        if self.tree is not None:
            return Trace.from_prefix_tree(self.tree.build(self._segments), **columns)
        trace = Trace(_hash_offsets=_offsets(self._hashes), _hash_values=_concat(self._hashes), **columns)
        check_hash_counts(trace)
        return trace


def load_jsonl(path: str | Path, hash_block_tokens: int | None = None, *, columnar: bool = True) -> Trace:
    """Load a native (Mooncake-shaped) JSONL trace, validating every line.

    ``hash_block_tokens`` overrides the header's (or the Mooncake default of 512). Lines in the
    form this module writes (and Mooncake's) are read as columns, tens of times faster than one
    by one; any other form, and any file with an error, is read line by line, which names the
    first bad line. ``columnar=False`` reads line by line only (the reference the columnar path
    must agree with). A pipe or FIFO is read once, into memory.
    """
    path = Path(path)
    source = str(path)
    if hash_block_tokens is not None and not 1 <= hash_block_tokens <= MAX_HASH_BLOCK_TOKENS:
        raise ConfigError(f"hash_block_tokens must be between 1 and {MAX_HASH_BLOCK_TOKENS}, got {hash_block_tokens}")
    data: bytes | None = None if is_regular_file(path) else read_bytes(path, "trace")

    def open_once() -> Any:
        if data is not None:
            return io.BytesIO(data)
        try:
            return path.open("rb")
        except OSError as exc:
            raise TraceError(source, None, None, f"cannot open: {exc.strerror}") from None

    if columnar:
        if data is not None:
            read = _read_columnar(data, source, hash_block_tokens)
        else:
            with open_once() as handle:
                whole = bytearray(os.fstat(handle.fileno()).st_size)
                got = handle.readinto(whole)
            read = _read_columnar(whole if got == len(whole) else whole[:got], source, hash_block_tokens)
            del whole
        if read is not None:
            return _finish(source, read[1], read[0])
    with open_once() as handle:
        columns, block = _read_checked(handle, source, hash_block_tokens)
    return _finish(source, block, columns)


def write_jsonl(trace: Trace, path: str | Path, header: dict[str, Any] | None = None) -> None:
    """Write a trace in the native format (atomically), optionally with a header line."""
    from simdisagg.output import atomic_write_text

    rows: list[str] = []
    head = {"format": "simdisagg-trace", "version": 1, "hash_block_tokens": trace.hash_block_tokens}
    if header:
        head.update(header)
    rows.append(json.dumps(head))
    for i in range(len(trace)):
        row: dict[str, Any] = {
            "request_id": trace.request_ids[i],
            "timestamp": _ms(trace.timestamp_s[i]),
            "input_length": int(trace.input_tokens[i]),
            "output_length": int(trace.output_tokens[i]),
        }
        if trace.session_index[i] >= 0:
            row["session_id"] = trace.session_names[int(trace.session_index[i])]
        tenant = trace.tenant_of(i)
        if tenant is not None:
            row["tenant"] = tenant
        waits = trace.waits_of(i)
        if len(waits):
            row["wait_for"] = [trace.request_ids[int(j)] for j in waits]
            row["tool_wait_ms"] = _ms(trace.tool_wait_s[i])
        hashes = trace.hashes_of(i)
        if len(hashes):
            row["hash_ids"] = hashes.tolist()
        rows.append(json.dumps(row))
    atomic_write_text(Path(path), "\n".join(rows) + "\n")


def _ms(seconds: float) -> float | int:
    ms = round(float(seconds) * 1000.0, 6)
    return int(round(ms)) if math.isclose(ms, round(ms)) else ms
